//! Evaluation chunks: the plan of an evaluation (a range of items x one
//! model each) and the state of every piece, which is what makes the work
//! recoverable from PostgreSQL alone.
//!
//! A chunk moves `pending` -> `queued` (pushed under a fresh job id) ->
//! `running` (a worker holds its lease, renewed while it runs) -> `done`
//! (every run of its range has a result row); `canceled` when its evaluation
//! is canceled or fails ([`ChunkStatus`], the moves in [`super::states::chunk_moves`]).
//! A worker that dies leaves an expired lease, which the next delivery of
//! the job (or the sweeper) takes over. This file holds planning, queueing
//! and leases; moves that change the evaluation too are in [`super::lifecycle`].
//!
//! Fairness: an evaluation keeps at most [`QUEUED_PER_EVALUATION`] chunk in
//! the queue. Each chunk that starts queues the next one of its evaluation,
//! so the queue interleaves the evaluations that are running: a small
//! evaluation submitted behind a huge one waits for one chunk of it, not
//! for all of it. Workers fetch a chunk only when they are about to run out
//! of work, so one queued chunk per evaluation keeps every replica busy.
//!
//! Short evaluations first: the first chunk of each model travels one
//! priority level above its evaluation, both in the queues and for LLM
//! permits. An evaluation that fits in those chunks finishes about as fast
//! as it would alone; a long one runs its first chunks raised, then settles
//! at its own level (the idea of a multi-level feedback queue).
//!
//! Lock order, everywhere: the evaluation's row, then its chunks' rows.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Int8, Interval, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::evaluations::Evaluation;
pub use super::states::ChunkStatus;
use super::states::{chunk_moves, evaluation_moves};
use crate::db::schema::{evaluation_chunks, evaluations as evaluations_table};
use crate::domain::Priority;
use crate::ids::{EvaluationId, TenantId};
use crate::queue::{ChunkJob, Push};

/// Chunks of one evaluation in the queue at once.
pub const QUEUED_PER_EVALUATION: i64 = 1;

/// Runs (items x repeats) per chunk when not configured: large enough that
/// queue and bookkeeping cost per item is small, small enough that every
/// replica gets work and a crash redoes little.
pub const DEFAULT_RUNS_PER_CHUNK: i32 = 250;

/// Chunks per live worker an evaluation is cut into at least, when that
/// keeps chunks above [`MIN_RUNS_PER_CHUNK`]: a worker takes chunks as its
/// permits free up, so with many small chunks per worker the replicas end
/// within about one chunk of each other. With 250-run chunks, a 1,000-run
/// evaluation on two workers has 4 chunks, and a worker that takes three of
/// them does 75% of the calls while the other idles.
pub const CHUNKS_PER_WORKER: i64 = 8;

/// Chunks are never cut smaller than this (unless the configured size is
/// smaller): each chunk costs a queue round trip, a lease and a transaction.
pub const MIN_RUNS_PER_CHUNK: i32 = 25;

/// Runs per chunk for an evaluation of `total_runs` runs (over all models)
/// with `live_workers` workers heartbeating: the configured size, shrunk so
/// that every live worker gets about [`CHUNKS_PER_WORKER`] chunks, but not
/// below [`MIN_RUNS_PER_CHUNK`]. Large evaluations keep the configured size
/// (20,000 runs on 4 workers: 625 > 250), and with no live worker known
/// (Redis unreachable, none started yet) nothing changes.
///
/// Worked example: 1,000 runs, 2 workers: ceil(1000 / 16) = 63 runs per
/// chunk, 16 chunks; 1 worker: 125 runs, 8 chunks.
pub fn spread_runs_per_chunk(configured: i32, total_runs: i64, live_workers: u64) -> i32 {
    let configured = configured.max(1);
    if live_workers == 0 || total_runs <= 0 {
        return configured;
    }
    let wanted = i64::try_from(live_workers)
        .unwrap_or(i64::MAX)
        .saturating_mul(CHUNKS_PER_WORKER);
    // Both positive here (`i64::div_ceil` is not stable for signed integers).
    let runs = (total_runs - 1) / wanted + 1;
    let floor = MIN_RUNS_PER_CHUNK.min(configured);
    i32::try_from(runs)
        .unwrap_or(i32::MAX)
        .clamp(floor, configured)
}

/// How an evaluation is split into chunks.
#[derive(Debug, Clone, Copy)]
pub struct Planning {
    /// Items in its dataset.
    pub items: i32,
    /// Runs (items x repeats) per chunk.
    pub runs_per_chunk: i32,
}

impl Planning {
    /// The same planning with chunks shrunk for `live_workers` (see
    /// [`spread_runs_per_chunk`]); `total_runs` counts every model.
    pub fn spread_over(self, total_runs: i64, live_workers: u64) -> Self {
        Self {
            runs_per_chunk: spread_runs_per_chunk(self.runs_per_chunk, total_runs, live_workers),
            ..self
        }
    }

    /// Chunks the plan of an evaluation with `repeats` and `models` has.
    pub fn chunks(&self, repeats: i32, models: usize) -> i64 {
        let items_per_chunk = (self.runs_per_chunk / repeats.max(1)).max(1);
        let items = i64::from(self.items.max(0));
        (items + i64::from(items_per_chunk) - 1) / i64::from(items_per_chunk) * models as i64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = evaluation_chunks, check_for_backend(diesel::pg::Pg))]
pub struct Chunk {
    pub evaluation_id: EvaluationId,
    pub chunk_index: i32,
    pub tenant_id: TenantId,
    pub model: String,
    pub first_position: i32,
    pub last_position: i32,
    pub status: ChunkStatus,
    pub job_id: Option<Uuid>,
    pub queued_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub starts: i32,
    pub priority: String,
    pub finished_at: Option<DateTime<Utc>>,
    /// Times a run of it ended with its worker gone (see [`Start::Poisoned`]).
    pub crashes: i32,
}

impl Chunk {
    pub fn items(&self) -> i32 {
        self.last_position - self.first_position + 1
    }

    /// The queue it travels on, and the priority of its LLM calls.
    pub fn priority(&self) -> Priority {
        self.priority.parse().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = evaluation_chunks)]
pub struct NewChunk {
    pub evaluation_id: EvaluationId,
    pub chunk_index: i32,
    pub tenant_id: TenantId,
    pub model: String,
    pub first_position: i32,
    pub last_position: i32,
    pub priority: String,
}

/// Splits `items` x `models` x `repeats` into chunks of about
/// `runs_per_chunk` runs, one model each; models interleave so that they
/// progress together, and the first chunk of each model is raised one
/// priority level above the evaluation's.
pub fn plan(
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    models: &[String],
    items: i32,
    repeats: i32,
    runs_per_chunk: i32,
    priority: Priority,
) -> Vec<NewChunk> {
    let items_per_chunk = (runs_per_chunk / repeats.max(1)).max(1);
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < items {
        let last = (first + items_per_chunk - 1).min(items - 1);
        for model in models {
            chunks.push(NewChunk {
                evaluation_id,
                chunk_index: i32::try_from(chunks.len()).unwrap_or(i32::MAX),
                tenant_id,
                model: model.clone(),
                first_position: first,
                last_position: last,
                priority: if first == 0 {
                    priority.raised()
                } else {
                    priority
                }
                .as_str()
                .to_owned(),
            });
        }
        first = last + 1;
    }
    chunks
}

/// Writes a plan (in the caller's transaction).
pub async fn insert_plan(conn: &mut AsyncPgConnection, chunks: &[NewChunk]) -> QueryResult<()> {
    // 7 columns: 5,000 rows stay far below the 65,535 bind parameters.
    for batch in chunks.chunks(5_000) {
        diesel::insert_into(evaluation_chunks::table)
            .values(batch)
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[derive(QueryableByName)]
struct QueuedRow {
    #[diesel(sql_type = Int4)]
    chunk_index: i32,
    #[diesel(sql_type = Text)]
    priority: String,
}

/// Queues up to `room` pending chunks of an evaluation, in plan order, each
/// under a fresh job id (UUIDv7: the queue orders ties by id, so by time).
/// Runs in the caller's transaction; push the result after it commits.
pub async fn queue_pending(
    conn: &mut AsyncPgConnection,
    evaluation: &Evaluation,
    room: i64,
) -> QueryResult<Vec<Push>> {
    if room <= 0 {
        return Ok(Vec::new());
    }
    let picked: Vec<QueuedRow> = diesel::sql_query(format!(
        "SELECT chunk_index, priority FROM evaluation_chunks
         WHERE evaluation_id = $1 AND status IN ({from})
         ORDER BY chunk_index LIMIT $2 FOR UPDATE SKIP LOCKED",
        from = ChunkStatus::sql_list(chunk_moves::QUEUE.from),
    ))
    .bind::<SqlUuid, _>(evaluation.id)
    .bind::<Int8, _>(room)
    .load(conn)
    .await?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let indices: Vec<i32> = picked.iter().map(|row| row.chunk_index).collect();
    let job_ids: Vec<Uuid> = indices.iter().map(|_| Uuid::now_v7()).collect();
    mark_queued(conn, evaluation.id, &indices, &job_ids).await?;
    Ok(picked
        .iter()
        .zip(job_ids)
        .map(|(row, job_id)| Push {
            job: ChunkJob::new(evaluation.tenant_id, evaluation.id, row.chunk_index)
                .with_request_id(evaluation.request_id.as_deref()),
            priority: row.priority.parse().unwrap_or_default(),
            job_id,
        })
        .collect())
}

/// The assignments that drop a chunk's lease, made by every transition out
/// of `running` (done, queued again, canceled, reopened).
pub(super) type NoLease = (
    diesel::dsl::Eq<evaluation_chunks::lease_owner, Option<String>>,
    diesel::dsl::Eq<evaluation_chunks::lease_expires_at, Option<DateTime<Utc>>>,
);

pub(super) fn no_lease() -> NoLease {
    (
        evaluation_chunks::lease_owner.eq(None),
        evaluation_chunks::lease_expires_at.eq(None),
    )
}

/// Sets `indices` of an evaluation queued under `job_ids`.
async fn mark_queued(
    conn: &mut AsyncPgConnection,
    evaluation_id: EvaluationId,
    indices: &[i32],
    job_ids: &[Uuid],
) -> QueryResult<()> {
    diesel::sql_query(format!(
        "UPDATE evaluation_chunks c
         SET status = '{to}', job_id = u.job_id, queued_at = now(),
             lease_owner = NULL, lease_expires_at = NULL
         FROM unnest($2::int4[], $3::uuid[]) AS u(chunk_index, job_id)
         WHERE c.evaluation_id = $1 AND c.chunk_index = u.chunk_index",
        to = chunk_moves::QUEUE.to,
    ))
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<Array<Int4>, _>(indices)
    .bind::<Array<SqlUuid>, _>(job_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// A lease's length as PostgreSQL reads it. Leases end at `now() + lease`
/// on PostgreSQL's clock, the one every lease is compared with, whatever
/// the workers' clocks say.
fn interval(lease: std::time::Duration) -> diesel::data_types::PgInterval {
    diesel::data_types::PgInterval::from_microseconds(
        i64::try_from(lease.as_micros()).unwrap_or(i64::MAX),
    )
}

/// `now() + lease`, for a lease that starts now.
pub(super) fn lease_until(
    lease: std::time::Duration,
) -> diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>> {
    diesel::dsl::sql(&format!(
        "now() + interval '{} microseconds'",
        interval(lease).microseconds
    ))
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = SqlUuid)]
    evaluation_id: EvaluationId,
    #[diesel(sql_type = Int4)]
    chunk_index: i32,
}

/// Extends `owner`'s leases on `chunks` (the ones its process runs) and
/// returns those it still holds: a chunk missing from the answer was
/// canceled, or taken over after its lease expired, and must stop.
pub async fn renew_leases(
    conn: &mut AsyncPgConnection,
    owner: &str,
    chunks: &[(EvaluationId, i32)],
    lease: std::time::Duration,
) -> QueryResult<Vec<(EvaluationId, i32)>> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, indices): (Vec<EvaluationId>, Vec<i32>) = chunks.iter().copied().unzip();
    let held: Vec<Held> = diesel::sql_query(format!(
        "UPDATE evaluation_chunks c
         SET lease_expires_at = now() + $4
         FROM unnest($2::uuid[], $3::int4[]) AS u(evaluation_id, chunk_index)
         WHERE c.evaluation_id = u.evaluation_id AND c.chunk_index = u.chunk_index
           AND c.status = '{running}' AND c.lease_owner = $1
         RETURNING c.evaluation_id, c.chunk_index",
        running = ChunkStatus::Running,
    ))
    .bind::<Text, _>(owner)
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Array<Int4>, _>(&indices)
    .bind::<Interval, _>(interval(lease))
    .load(conn)
    .await?;
    Ok(held
        .into_iter()
        .map(|row| (row.evaluation_id, row.chunk_index))
        .collect())
}

/// Crashes of one chunk before its remaining runs are given up when not
/// configured (`ASSAY_MAX_CHUNK_CRASHES`): a crash or two is an operator
/// killing workers; a third in a row is the chunk.
pub const DEFAULT_MAX_CRASHES: i32 = 3;

/// Items read per page when giving a chunk up.
const GIVE_UP_PAGE: i32 = 500;

/// Writes an `errored` row with `reason` for every run of the chunk that has
/// no result yet, without rendering or calling anything: for a chunk that
/// took down `crashes` workers (a poison chunk), so that its evaluation
/// finishes instead of moving from worker to worker. The caller holds the
/// lease and then [`super::lifecycle::finish_chunk`]es the chunk. Returns the rows written.
pub async fn give_up_remaining(
    conn: &mut AsyncPgConnection,
    chunk: &Chunk,
    evaluation: &Evaluation,
    reason: &str,
) -> QueryResult<i64> {
    let mut written = 0;
    let mut from = chunk.first_position;
    while from <= chunk.last_position {
        let to = from
            .saturating_add(GIVE_UP_PAGE - 1)
            .min(chunk.last_position);
        let items = super::datasets::items_between(
            conn,
            evaluation.tenant_id,
            evaluation.dataset_id,
            from,
            to,
        )
        .await?;
        let done = super::results::existing_keys(
            conn,
            evaluation.tenant_id,
            evaluation.id,
            &chunk.model,
            from,
            to,
        )
        .await?;
        let rows: Vec<super::results::NewResult> = items
            .iter()
            .flat_map(|item| (0..evaluation.repeats).map(move |repeat| (item, repeat)))
            .filter(|(item, repeat)| !done.contains(&(item.position, *repeat)))
            .map(|(item, repeat)| {
                super::results::NewResult::errored(
                    evaluation,
                    &chunk.model,
                    item.position,
                    repeat,
                    &item.item_key,
                    reason,
                )
            })
            .collect();
        if !rows.is_empty() {
            let inserted =
                super::results::insert_batch(conn, evaluation.tenant_id, evaluation.id, &rows)
                    .await?;
            written += i64::from(inserted.total());
        }
        from = to + 1;
    }
    Ok(written)
}

/// Which job delivers a chunk that [`release`] hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// The queue retries the job it came in (after a failure).
    SameJob,
    /// A fresh job, pushed by the caller now (on shutdown: no retry delay).
    FreshJob,
}

/// Hands a chunk back: it goes back to `queued` with its lease cleared.
/// Returns the fresh job to push (with [`Redelivery::FreshJob`]); `None`
/// when `owner` no longer held it or the same job redelivers it.
pub async fn release(
    conn: &mut AsyncPgConnection,
    chunk: &Chunk,
    owner: &str,
    redelivery: Redelivery,
) -> QueryResult<Option<Push>> {
    let fresh = (redelivery == Redelivery::FreshJob).then(Uuid::now_v7);
    let updated = diesel::update(
        evaluation_chunks::table
            .filter(evaluation_chunks::evaluation_id.eq(chunk.evaluation_id))
            .filter(evaluation_chunks::chunk_index.eq(chunk.chunk_index))
            .filter(evaluation_chunks::status.eq_any(chunk_moves::RELEASE.from))
            .filter(evaluation_chunks::lease_owner.eq(owner)),
    )
    .set((
        evaluation_chunks::status.eq(chunk_moves::RELEASE.to),
        evaluation_chunks::job_id.eq(diesel::dsl::sql::<diesel::sql_types::Nullable<SqlUuid>>(
            "coalesce(",
        )
        .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(fresh)
        .sql(", job_id)")),
        evaluation_chunks::queued_at.eq(diesel::dsl::now),
        no_lease(),
    ))
    .execute(conn)
    .await?;
    Ok(fresh.filter(|_| updated == 1).map(|job_id| Push {
        job: ChunkJob::new(chunk.tenant_id, chunk.evaluation_id, chunk.chunk_index),
        priority: chunk.priority(),
        job_id,
    }))
}

/// Chunks of an evaluation by state, for progress reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChunkCounts {
    pub total: i64,
    pub pending: i64,
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub canceled: i64,
}

pub async fn counts(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
) -> QueryResult<ChunkCounts> {
    let rows: Vec<(ChunkStatus, i64)> = evaluation_chunks::table
        .filter(evaluation_chunks::evaluation_id.eq(evaluation_id))
        .filter(evaluation_chunks::tenant_id.eq(tenant_id))
        .group_by(evaluation_chunks::status)
        .select((evaluation_chunks::status, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let mut counts = ChunkCounts::default();
    for (status, count) in rows {
        counts.total += count;
        *match status {
            ChunkStatus::Pending => &mut counts.pending,
            ChunkStatus::Queued => &mut counts.queued,
            ChunkStatus::Running => &mut counts.running,
            ChunkStatus::Done => &mut counts.done,
            ChunkStatus::Canceled => &mut counts.canceled,
        } = count;
    }
    Ok(counts)
}

/// Chunks of every unfinished evaluation, by state: pending, queued,
/// running. The work left, for autoscaling (the queue holds one chunk per
/// evaluation, so its depth does not say how much work is left).
pub async fn unfinished_by_state(conn: &mut AsyncPgConnection) -> QueryResult<[i64; 3]> {
    let rows: Vec<(ChunkStatus, i64)> = evaluation_chunks::table
        .filter(evaluation_chunks::status.eq_any(chunk_moves::CANCEL.from))
        .group_by(evaluation_chunks::status)
        .select((evaluation_chunks::status, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let mut counts = [0; 3];
    for (status, count) in rows {
        let index = match status {
            ChunkStatus::Pending => 0,
            ChunkStatus::Queued => 1,
            ChunkStatus::Running => 2,
            ChunkStatus::Done | ChunkStatus::Canceled => continue,
        };
        counts[index] = count;
    }
    Ok(counts)
}

/// Seconds the oldest queued chunk of each priority (in [`Priority::ALL`]
/// order) has waited since it was queued; 0 when none waits.
pub async fn oldest_queued_age(conn: &mut AsyncPgConnection) -> QueryResult<[f64; 3]> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        priority: String,
        #[diesel(sql_type = diesel::sql_types::Double)]
        age: f64,
    }
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT priority, extract(epoch FROM now() - min(queued_at))::float8 AS age
         FROM evaluation_chunks WHERE status = '{queued}' AND queued_at IS NOT NULL
         GROUP BY priority",
        queued = ChunkStatus::Queued,
    ))
    .load(conn)
    .await?;
    let mut ages = [0.0; 3];
    for row in rows {
        if let Ok(priority) = row.priority.parse::<Priority>() {
            ages[priority.index()] = row.age.max(0.0);
        }
    }
    Ok(ages)
}

// ---------------------------------------------------------------------------
// What the sweeper reads and repairs.

/// A chunk whose push may be lost: queued for a while, or running under an
/// expired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub chunk: Chunk,
    pub priority: Priority,
}

/// Chunks queued more than `queued_for` ago, and running chunks whose lease
/// expired, of evaluations that are queued or running.
pub async fn suspects(
    conn: &mut AsyncPgConnection,
    queued_for: std::time::Duration,
    limit: i64,
) -> QueryResult<Vec<Suspect>> {
    let queued_before =
        Utc::now() - chrono::Duration::from_std(queued_for).unwrap_or(chrono::Duration::zero());
    let rows: Vec<Chunk> = evaluation_chunks::table
        .inner_join(
            evaluations_table::table.on(evaluations_table::id.eq(evaluation_chunks::evaluation_id)),
        )
        .filter(evaluations_table::status.eq_any(evaluation_moves::UNFINISHED))
        .filter(
            evaluation_chunks::status
                .eq(ChunkStatus::Queued)
                .and(evaluation_chunks::queued_at.lt(queued_before))
                .or(evaluation_chunks::status
                    .eq(ChunkStatus::Running)
                    .and(evaluation_chunks::lease_expires_at.lt(diesel::dsl::now))),
        )
        .order((
            evaluation_chunks::evaluation_id,
            evaluation_chunks::chunk_index,
        ))
        .limit(limit)
        .select(Chunk::as_select())
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|chunk| Suspect {
            priority: chunk.priority(),
            chunk,
        })
        .collect())
}

/// Queues `lost` chunks again under fresh job ids, if they are still in the
/// state the sweeper saw (a worker may have taken one meanwhile).
pub async fn requeue_lost(
    conn: &mut AsyncPgConnection,
    lost: &[Suspect],
) -> QueryResult<Vec<Push>> {
    let mut pushes = Vec::new();
    for suspect in lost {
        let chunk = &suspect.chunk;
        let job_id = Uuid::now_v7();
        let updated = diesel::update(
            evaluation_chunks::table
                .filter(evaluation_chunks::evaluation_id.eq(chunk.evaluation_id))
                .filter(evaluation_chunks::chunk_index.eq(chunk.chunk_index))
                .filter(evaluation_chunks::status.eq(chunk.status))
                .filter(evaluation_chunks::job_id.is_not_distinct_from(chunk.job_id))
                .filter(evaluation_chunks::lease_owner.is_not_distinct_from(&chunk.lease_owner)),
        )
        .set((
            evaluation_chunks::status.eq(chunk_moves::REQUEUE.to),
            evaluation_chunks::job_id.eq(job_id),
            evaluation_chunks::queued_at.eq(diesel::dsl::now),
            no_lease(),
            // A running chunk whose lease expired lost its worker.
            evaluation_chunks::crashes
                .eq(evaluation_chunks::crashes + i32::from(chunk.status == ChunkStatus::Running)),
        ))
        .execute(conn)
        .await?;
        if updated == 1 {
            pushes.push(Push {
                job: ChunkJob::new(chunk.tenant_id, chunk.evaluation_id, chunk.chunk_index),
                priority: suspect.priority,
                job_id,
            });
        }
    }
    Ok(pushes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_evaluations_are_cut_finer_when_several_workers_are_live() {
        // 1,000 runs on 2 workers: 16 chunks of 63 (the last 55).
        assert_eq!(spread_runs_per_chunk(250, 1_000, 2), 63);
        let chunks = plan(
            TenantId::from_uuid(Uuid::nil()),
            EvaluationId::from_uuid(Uuid::nil()),
            &["m".to_owned()],
            1_000,
            1,
            63,
            Priority::Normal,
        );
        assert_eq!(chunks.len(), 16);
        assert_eq!(spread_runs_per_chunk(250, 1_000, 1), 125);
        // Large evaluations keep the configured size.
        assert_eq!(spread_runs_per_chunk(250, 20_000, 2), 250);
        assert_eq!(spread_runs_per_chunk(250, 20_000, 4), 250);
        assert_eq!(spread_runs_per_chunk(250, 10_000, 4), 250);
        // Never below the minimum, nor above the configured size.
        assert_eq!(spread_runs_per_chunk(250, 100, 8), MIN_RUNS_PER_CHUNK);
        assert_eq!(spread_runs_per_chunk(10, 100, 8), 10);
        assert_eq!(spread_runs_per_chunk(250, 3, 2), MIN_RUNS_PER_CHUNK);
        // No live worker known, or nothing to run: unchanged.
        assert_eq!(spread_runs_per_chunk(250, 1_000, 0), 250);
        assert_eq!(spread_runs_per_chunk(250, 0, 2), 250);
        assert_eq!(spread_runs_per_chunk(250, i64::MAX, 2), 250);
        assert_eq!(
            spread_runs_per_chunk(250, 1_000, u64::MAX),
            MIN_RUNS_PER_CHUNK
        );
    }

    #[test]
    fn plans_cover_every_item_once_per_model_with_models_interleaved() {
        let models = vec!["a".to_owned(), "b".to_owned()];
        let chunks = plan(
            TenantId::from_uuid(Uuid::nil()),
            EvaluationId::from_uuid(Uuid::nil()),
            &models,
            1001,
            2,
            250,
            Priority::Low,
        );
        // 250 runs at 2 repeats: 125 items per chunk; 1001 items: 9 ranges x 2 models.
        assert_eq!(chunks.len(), 18);
        assert_eq!(chunks[0].model, "a");
        assert_eq!(chunks[1].model, "b");
        assert_eq!(
            (chunks[0].first_position, chunks[0].last_position),
            (0, 124)
        );
        assert_eq!(
            (chunks[16].first_position, chunks[16].last_position),
            (1000, 1000)
        );
        for model in &models {
            let mut covered: Vec<i32> = chunks
                .iter()
                .filter(|chunk| &chunk.model == model)
                .flat_map(|chunk| chunk.first_position..=chunk.last_position)
                .collect();
            covered.sort_unstable();
            assert_eq!(covered, (0..1001).collect::<Vec<_>>());
        }
        assert!(
            chunks
                .iter()
                .enumerate()
                .all(|(index, chunk)| chunk.chunk_index == index as i32)
        );
        // The first chunk of each model goes one level up.
        let raised: Vec<&str> = chunks
            .iter()
            .map(|chunk| chunk.priority.as_str())
            .take(3)
            .collect();
        assert_eq!(raised, ["normal", "normal", "low"]);
        // More repeats than runs per chunk: one item per chunk.
        let chunks = plan(
            TenantId::from_uuid(Uuid::nil()),
            EvaluationId::from_uuid(Uuid::nil()),
            &models[..1],
            3,
            500,
            250,
            Priority::High,
        );
        assert_eq!(chunks.len(), 3);
    }
}
