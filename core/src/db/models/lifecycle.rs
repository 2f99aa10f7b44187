//! The evaluation lifecycle: every change that moves an evaluation and its
//! chunks together, each one transaction.
//!
//! | step | evaluation | its chunks |
//! |---|---|---|
//! | [`create`] | new, `queued` | planned `pending`, the first `queued` |
//! | [`start_chunk`] | `queued` -> `running` (the first chunk) | one `running` under a lease; the next `queued` |
//! | [`finish_chunk`] | | one `running` -> `done` |
//! | [`finalize`] | `running` -> `succeeded`, with its summary | (all `done`) |
//! | [`cancel`] | `queued`/`running` -> `canceled` | unfinished -> `canceled` |
//! | [`fail`] | `queued`/`running` -> `failed` | unfinished -> `canceled` |
//! | [`reopen`] | finished -> `queued`, run `run + 1` | not done (and, retrying errors, done ones holding one) -> `pending`, the first `queued` |
//!
//! The states and the moves allowed between them are declared once, in
//! [`super::states`]; the guards below read them. Moves of one chunk alone
//! (queue, release, requeue, lease renewal) live in [`super::chunks`].
//!
//! Lock order, everywhere: the evaluation's row, then its chunks' rows.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Int8, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::chunks::Planning;
use super::chunks::{self, Chunk, QUEUED_PER_EVALUATION, lease_until, no_lease};
use super::evaluations::{
    CancelReason, Evaluation, ModelReport, NewEvaluation, Summary, item_count, lock,
};
use super::events::{self, NewEvent};
use super::results::{self, ModelSummary, RepeatStats};
use super::states::{ChunkStatus, EvaluationStatus, chunk_moves, evaluation_moves};
use crate::db::schema::{evaluation_chunks, evaluation_results, evaluations};
use crate::ids::{EvaluationId, TenantId};
use crate::queue::{ChunkJob, Push};

/// Writes the evaluation (status `queued`), its plan of chunks and its
/// `evaluation.created` event, and queues its first chunks: push the
/// returned jobs after this returns (the rows exist before any job runs).
pub async fn create(
    conn: &mut AsyncPgConnection,
    actor: &str,
    new: &NewEvaluation,
    planning: Planning,
) -> QueryResult<(Evaluation, Vec<Push>)> {
    conn.transaction(async |conn| {
        let evaluation: Evaluation = diesel::insert_into(evaluations::table)
            .values(new)
            .returning(Evaluation::as_returning())
            .get_result(conn)
            .await?;
        let plan = chunks::plan(
            new.tenant_id,
            new.id,
            &evaluation.model_names(),
            planning.items,
            new.repeats,
            planning.runs_per_chunk,
            evaluation.priority(),
        );
        chunks::insert_plan(conn, &plan).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id: new.tenant_id,
                actor,
                action: "evaluation.created",
                resource_type: "evaluation",
                resource_id: new.id.uuid(),
                data: serde_json::json!({
                    "total": new.total,
                    "models": new.models,
                    "chunks": plan.len(),
                    "prompt_version_id": new.prompt_version_id,
                    "prompt_ref": new.prompt_ref,
                }),
            },
        )
        .await?;
        let pushes = chunks::queue_pending(conn, &evaluation, QUEUED_PER_EVALUATION).await?;
        Ok((evaluation, pushes))
    })
    .await
}

/// Why [`create_within_quota`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum QuotaCreateError {
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    /// The tenant already has `limit` evaluations queued or running.
    #[error("the tenant already has {active} evaluations queued or running (its quota is {limit})")]
    TooManyActive { active: i64, limit: i64 },
}

/// [`create`], unless the tenant already has `max_active` evaluations
/// queued or running. The tenant's row is locked (`FOR NO KEY UPDATE`, which
/// does not block inserts that reference it) for the check and the insert,
/// so concurrent submissions cannot all pass the same count.
pub async fn create_within_quota(
    conn: &mut AsyncPgConnection,
    actor: &str,
    new: &NewEvaluation,
    planning: Planning,
    max_active: i64,
) -> Result<(Evaluation, Vec<Push>), QuotaCreateError> {
    conn.transaction(async |conn| {
        crate::db::schema::tenants::table
            .filter(crate::db::schema::tenants::id.eq(new.tenant_id))
            .select(crate::db::schema::tenants::id)
            .for_no_key_update()
            .first::<TenantId>(conn)
            .await?;
        let active = super::tenant_limits::active_evaluations(conn, new.tenant_id).await?;
        if active >= max_active {
            return Err(QuotaCreateError::TooManyActive {
                active,
                limit: max_active,
            });
        }
        Ok(create(conn, actor, new, planning).await?)
    })
    .await
}

/// Moves a queued evaluation (locked by the caller) to `running`, with its
/// `evaluation.started` event: the first chunk to start does this, once.
async fn mark_running(
    conn: &mut AsyncPgConnection,
    evaluation: &Evaluation,
    actor: &str,
) -> QueryResult<Evaluation> {
    let running: Evaluation =
        diesel::update(evaluations::table.filter(evaluations::id.eq(evaluation.id)))
            .set((
                evaluations::status.eq(evaluation_moves::START.to),
                evaluations::started_at.eq(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                >("coalesce(started_at, now())")),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Evaluation::as_returning())
            .get_result(conn)
            .await?;
    events::record(
        conn,
        NewEvent {
            tenant_id: evaluation.tenant_id,
            actor,
            action: "evaluation.started",
            resource_type: "evaluation",
            resource_id: evaluation.id.uuid(),
            data: serde_json::json!({ "run": evaluation.run }),
        },
    )
    .await?;
    Ok(running)
}

/// Cancels a queued or running evaluation: no chunk starts any more, running
/// ones stop starting calls, and what was written is kept. False when it was
/// not queued or running.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
    actor: &str,
    reason: CancelReason,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, tenant_id, id).await? else {
            return Ok(false);
        };
        if !evaluation_moves::CANCEL.from.contains(&evaluation.status) {
            return Ok(false);
        }
        diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
            .set((
                evaluations::status.eq(evaluation_moves::CANCEL.to),
                evaluations::cancel_reason.eq(reason.as_str()),
                evaluations::finished_at.eq(diesel::dsl::now),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        let stopped = cancel_unfinished(conn, id).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "evaluation.canceled",
                resource_type: "evaluation",
                resource_id: id.uuid(),
                data: serde_json::json!({ "completed": evaluation.completed, "chunks_stopped": stopped, "reason": reason.as_str(), "committed_usd": evaluation.committed_usd }),
            },
        )
        .await?;
        Ok(true)
    })
    .await
}

/// How [`reopen`] restarts an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reopen {
    /// A failed or canceled evaluation finishes what is missing.
    Resume,
    /// Any finished evaluation runs its errored results again (they are
    /// moved to `superseded_results`), and what is missing.
    RetryErrors,
}

/// Why [`reopen`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReopenRefused {
    NotFound,
    /// Its status does not allow it (named).
    Status(EvaluationStatus),
    /// Retry-errors on an evaluation without errored results.
    NothingToRetry,
}

/// Restarts an evaluation as run `run + 1`; returns its first chunks to push.
pub async fn reopen(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
    actor: &str,
    how: Reopen,
) -> QueryResult<Result<(Evaluation, Vec<Push>), ReopenRefused>> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, tenant_id, id).await? else {
            return Ok(Err(ReopenRefused::NotFound));
        };
        let status = evaluation.status;
        let step = match how {
            Reopen::Resume => evaluation_moves::RESUME,
            Reopen::RetryErrors => evaluation_moves::RETRY_ERRORS,
        };
        if !step.from.contains(&status) {
            return Ok(Err(ReopenRefused::Status(status)));
        }
        let mut retried = 0;
        if how == Reopen::RetryErrors {
            let errored = supersede_errored(conn, &evaluation).await?;
            if errored.is_empty() && status == EvaluationStatus::Succeeded {
                return Ok(Err(ReopenRefused::NothingToRetry));
            }
            retried = errored.len();
            let runs: Vec<(String, i32)> = errored.into_iter().collect();
            reopen_holding(conn, id, &runs).await?;
        }
        reopen_unfinished(conn, id).await?;
        let reopened: Evaluation = diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
            .set((
                evaluations::status.eq(step.to),
                evaluations::run.eq(evaluations::run + 1),
                evaluations::error.eq(None::<String>),
                evaluations::cancel_reason.eq(None::<String>),
                // Reservations of calls that never settled (a crashed
                // worker's) are dropped: what the results cost is what was spent.
                evaluations::committed_usd.eq(super::budgets::spent_by_results()),
                evaluations::summary.eq(None::<Value>),
                evaluations::finished_at.eq(None::<DateTime<Utc>>),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Evaluation::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: match how {
                    Reopen::Resume => "evaluation.resumed",
                    Reopen::RetryErrors => "evaluation.retrying_errors",
                },
                resource_type: "evaluation",
                resource_id: id.uuid(),
                data: serde_json::json!({ "from": evaluation.status, "run": reopened.run, "errored_results_retried": retried }),
            },
        )
        .await?;
        let pushes = chunks::queue_pending(conn, &reopened, QUEUED_PER_EVALUATION).await?;
        Ok(Ok((reopened, pushes)))
    })
    .await
}

/// Moves the evaluation's errored results to `superseded_results` (tagged
/// with the run that wrote them) and takes them off its counters; returns
/// the (model, position) of each.
async fn supersede_errored(
    conn: &mut AsyncPgConnection,
    evaluation: &Evaluation,
) -> QueryResult<std::collections::BTreeSet<(String, i32)>> {
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = Text)]
        model: String,
        #[diesel(sql_type = Int4)]
        item_position: i32,
    }
    let moved: Vec<Moved> = diesel::sql_query(
        "WITH moved AS (
             DELETE FROM evaluation_results
             WHERE evaluation_id = $1 AND tenant_id = $2 AND status = 'errored'
             RETURNING *)
         INSERT INTO superseded_results
             (evaluation_id, run, model, item_position, repeat_index, tenant_id, item_key,
              status, output, error, attempts, cost_usd, created_at)
         SELECT evaluation_id, $3, model, item_position, repeat_index, tenant_id, item_key,
                status, output, error, attempts, cost_usd, created_at
         FROM moved
         ON CONFLICT DO NOTHING
         RETURNING model, item_position",
    )
    .bind::<SqlUuid, _>(evaluation.id)
    .bind::<SqlUuid, _>(evaluation.tenant_id)
    .bind::<Int4, _>(evaluation.run)
    .load(conn)
    .await?;
    // Counters follow the rows that are left, exactly.
    let (passed, failed, errored): (i64, i64, i64) = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation.id))
        .select((
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "count(*) FILTER (WHERE status = 'passed')",
            ),
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "count(*) FILTER (WHERE status = 'failed')",
            ),
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "count(*) FILTER (WHERE status = 'errored')",
            ),
        ))
        .get_result(conn)
        .await?;
    let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
    diesel::update(evaluations::table.filter(evaluations::id.eq(evaluation.id)))
        .set((
            evaluations::completed.eq(count(passed + failed + errored)),
            evaluations::passed.eq(count(passed)),
            evaluations::failed.eq(count(failed)),
            evaluations::errored.eq(count(errored)),
        ))
        .execute(conn)
        .await?;
    Ok(moved
        .into_iter()
        .map(|row| (row.model, row.item_position))
        .collect())
}

/// Marks an unfinished evaluation failed with `error`; false when it had finished already.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
    actor: &str,
    error: &str,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let updated = diesel::update(
            evaluations::table
                .filter(evaluations::tenant_id.eq(tenant_id))
                .filter(evaluations::id.eq(id))
                .filter(evaluations::status.eq_any(evaluation_moves::FAIL.from)),
        )
        .set((
            evaluations::status.eq(evaluation_moves::FAIL.to),
            evaluations::error.eq(error),
            evaluations::finished_at.eq(diesel::dsl::now),
            evaluations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
        if updated == 1 {
            // Nothing more starts; a resume makes them pending again.
            cancel_unfinished(conn, id).await?;
            events::record(
                conn,
                NewEvent {
                    tenant_id,
                    actor,
                    action: "evaluation.failed",
                    resource_type: "evaluation",
                    resource_id: id.uuid(),
                    data: serde_json::json!({ "error": error }),
                },
            )
            .await?;
        }
        Ok(updated == 1)
    })
    .await
}

/// Writes the summary and moves a running evaluation to `succeeded`, once:
/// the guard on `status = 'running'` makes a second call a no-op (false).
/// Counts are recomputed from the rows, so they match them exactly.
pub async fn finalize(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
    actor: &str,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, tenant_id, id).await? else {
            return Ok(false);
        };
        if !evaluation_moves::FINALIZE.from.contains(&evaluation.status) {
            return Ok(false);
        }
        let order = evaluation.model_names();
        let mut figures = results::summarize(conn, tenant_id, id).await?;
        figures.sort_by_key(|summary| order.iter().position(|name| *name == summary.model));
        let count = |field: fn(&ModelSummary) -> i64| {
            i32::try_from(figures.iter().map(field).sum::<i64>()).unwrap_or(i32::MAX)
        };
        let (passed, failed, errored) = (
            count(|m| m.passed),
            count(|m| m.failed),
            count(|m| m.errored),
        );
        let item_runs = if evaluation.repeats > 1 {
            results::item_runs(conn, tenant_id, id).await?
        } else {
            Vec::new()
        };
        let models: Vec<ModelReport> = figures
            .into_iter()
            .map(|figures| {
                let items: Vec<_> = item_runs
                    .iter()
                    .filter(|runs| runs.model == figures.model)
                    .collect();
                ModelReport {
                    repeats: RepeatStats::compute(&items),
                    figures,
                }
            })
            .collect();
        let summary = Summary {
            total_cost_usd: models.iter().map(|model| model.figures.cost_usd).sum(),
            total_grading_cost_usd: models
                .iter()
                .map(|model| model.figures.grading_cost_usd)
                .sum(),
            grader_summaries: results::summarize_graders(conn, tenant_id, id).await?,
            models,
            graders: evaluation.graders.clone(),
            regraded_from: evaluation.source_evaluation_id,
        };
        diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
            .set((
                evaluations::status.eq(evaluation_moves::FINALIZE.to),
                evaluations::summary.eq(serde_json::to_value(&summary).expect("serializable")),
                evaluations::completed.eq(passed + failed + errored),
                evaluations::passed.eq(passed),
                evaluations::failed.eq(failed),
                evaluations::errored.eq(errored),
                evaluations::finished_at.eq(diesel::dsl::now),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "evaluation.succeeded",
                resource_type: "evaluation",
                resource_id: id.uuid(),
                data: serde_json::json!({ "passed": passed, "failed": failed, "errored": errored }),
            },
        )
        .await?;
        Ok(true)
    })
    .await
}

/// Tops the evaluation's queued chunks up to [`QUEUED_PER_EVALUATION`].
async fn refill(conn: &mut AsyncPgConnection, evaluation: &Evaluation) -> QueryResult<Vec<Push>> {
    let queued: i64 = evaluation_chunks::table
        .filter(evaluation_chunks::evaluation_id.eq(evaluation.id))
        .filter(evaluation_chunks::status.eq(ChunkStatus::Queued))
        .count()
        .get_result(conn)
        .await?;
    chunks::queue_pending(conn, evaluation, QUEUED_PER_EVALUATION - queued).await
}

/// Why a delivered chunk job is not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// The chunk, or its evaluation, is gone.
    Gone,
    /// It is done already.
    Done,
    /// Its evaluation is canceled, failed or finished.
    Stopped,
    /// Another live worker holds its lease.
    Elsewhere,
}

/// What [`start_chunk`] decided.
#[derive(Debug)]
pub enum Start {
    /// Run it: this worker holds the lease. `refill` are the next chunks of
    /// the evaluation, queued; push them.
    Run {
        chunk: Box<Chunk>,
        evaluation: Box<Evaluation>,
        refill: Vec<Push>,
    },
    NotRun(NotRun),
}

/// Takes a delivered chunk for worker `owner` for `lease`: unless it is
/// finished, stopped, or leased by another live worker. Moves a queued
/// evaluation to running (once, with its `evaluation.started` event) and
/// queues the evaluation's next chunk.
pub async fn start_chunk(
    conn: &mut AsyncPgConnection,
    job: &ChunkJob,
    owner: &str,
    lease: std::time::Duration,
) -> QueryResult<Start> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, job.tenant_id, job.evaluation_id).await? else {
            return Ok(Start::NotRun(NotRun::Gone));
        };
        let Some(chunk) = evaluation_chunks::table
            .filter(evaluation_chunks::evaluation_id.eq(job.evaluation_id))
            .filter(evaluation_chunks::chunk_index.eq(job.chunk_index))
            .select(Chunk::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
        else {
            return Ok(Start::NotRun(NotRun::Gone));
        };
        let leased_elsewhere = chunk.lease_owner.as_deref() != Some(owner)
            && chunk
                .lease_expires_at
                .is_some_and(|until| until > Utc::now());
        match chunk.status {
            ChunkStatus::Done => return Ok(Start::NotRun(NotRun::Done)),
            ChunkStatus::Canceled => return Ok(Start::NotRun(NotRun::Stopped)),
            ChunkStatus::Running if leased_elsewhere => {
                return Ok(Start::NotRun(NotRun::Elsewhere));
            }
            ChunkStatus::Pending | ChunkStatus::Queued | ChunkStatus::Running => {}
        }
        debug_assert!(chunk_moves::START.from.contains(&chunk.status));
        // Running under another owner's expired lease: that worker died (or
        // stalled) while running it. Counted, so a chunk that takes down
        // every worker it reaches is stopped (see `crashes`).
        let crashed =
            chunk.status == ChunkStatus::Running && chunk.lease_owner.as_deref() != Some(owner);
        let evaluation = match evaluation.status {
            EvaluationStatus::Queued => mark_running(conn, &evaluation, owner).await?,
            EvaluationStatus::Running => evaluation,
            EvaluationStatus::Succeeded | EvaluationStatus::Failed | EvaluationStatus::Canceled => {
                return Ok(Start::NotRun(NotRun::Stopped));
            }
        };
        let chunk: Chunk = diesel::update(
            evaluation_chunks::table
                .filter(evaluation_chunks::evaluation_id.eq(job.evaluation_id))
                .filter(evaluation_chunks::chunk_index.eq(job.chunk_index)),
        )
        .set((
            evaluation_chunks::status.eq(chunk_moves::START.to),
            evaluation_chunks::lease_owner.eq(owner),
            evaluation_chunks::lease_expires_at.eq(lease_until(lease)),
            evaluation_chunks::starts.eq(evaluation_chunks::starts + 1),
            evaluation_chunks::crashes.eq(evaluation_chunks::crashes + i32::from(crashed)),
        ))
        .returning(Chunk::as_returning())
        .get_result(conn)
        .await?;
        let refill = refill(conn, &evaluation).await?;
        Ok(Start::Run {
            chunk: Box::new(chunk),
            evaluation: Box::new(evaluation),
            refill,
        })
    })
    .await
}

/// What [`finish_chunk`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Some runs of the range have no result: the chunk is not done.
    Incomplete { missing: i64 },
    /// Done. `last` when no chunk of the evaluation is left: finalize it.
    Done { last: bool },
    /// The lease was lost (canceled, or taken over): nothing changed.
    NotHeld,
}

/// Marks a chunk done once every run of its range has a result row, and
/// says whether it was the evaluation's last. Serialized per evaluation (its
/// row is locked), so exactly one chunk sees itself last.
pub async fn finish_chunk(
    conn: &mut AsyncPgConnection,
    chunk: &Chunk,
    repeats: i32,
    owner: &str,
) -> QueryResult<Finish> {
    conn.transaction(async |conn| {
        if lock(conn, chunk.tenant_id, chunk.evaluation_id)
            .await?
            .is_none()
        {
            return Ok(Finish::NotHeld);
        }
        let written = results::count_in_range(
            conn,
            chunk.tenant_id,
            chunk.evaluation_id,
            &chunk.model,
            chunk.first_position,
            chunk.last_position,
        )
        .await?;
        let expected = i64::from(chunk.items()) * i64::from(repeats);
        if written < expected {
            return Ok(Finish::Incomplete {
                missing: expected - written,
            });
        }
        let updated = diesel::update(
            evaluation_chunks::table
                .filter(evaluation_chunks::evaluation_id.eq(chunk.evaluation_id))
                .filter(evaluation_chunks::chunk_index.eq(chunk.chunk_index))
                .filter(evaluation_chunks::status.eq_any(chunk_moves::DONE.from))
                .filter(evaluation_chunks::lease_owner.eq(owner)),
        )
        .set((
            evaluation_chunks::status.eq(chunk_moves::DONE.to),
            evaluation_chunks::finished_at.eq(diesel::dsl::now),
            no_lease(),
        ))
        .execute(conn)
        .await?;
        if updated == 0 {
            return Ok(Finish::NotHeld);
        }
        let left: i64 = evaluation_chunks::table
            .filter(evaluation_chunks::evaluation_id.eq(chunk.evaluation_id))
            .filter(evaluation_chunks::status.ne(ChunkStatus::Done))
            .count()
            .get_result(conn)
            .await?;
        Ok(Finish::Done { last: left == 0 })
    })
    .await
}

/// Cancels every unfinished chunk of an evaluation (in the caller's transaction).
async fn cancel_unfinished(
    conn: &mut AsyncPgConnection,
    evaluation_id: EvaluationId,
) -> QueryResult<usize> {
    diesel::update(
        evaluation_chunks::table
            .filter(evaluation_chunks::evaluation_id.eq(evaluation_id))
            .filter(evaluation_chunks::status.eq_any(chunk_moves::CANCEL.from)),
    )
    .set((
        evaluation_chunks::status.eq(chunk_moves::CANCEL.to),
        no_lease(),
    ))
    .execute(conn)
    .await
}

/// Makes every chunk that is not done pending again (in the caller's transaction).
async fn reopen_unfinished(
    conn: &mut AsyncPgConnection,
    evaluation_id: EvaluationId,
) -> QueryResult<usize> {
    diesel::update(
        evaluation_chunks::table
            .filter(evaluation_chunks::evaluation_id.eq(evaluation_id))
            .filter(evaluation_chunks::status.eq_any(chunk_moves::REOPEN.from)),
    )
    .set((
        evaluation_chunks::status.eq(chunk_moves::REOPEN.to),
        evaluation_chunks::job_id.eq(None::<Uuid>),
        no_lease(),
    ))
    .execute(conn)
    .await
}

/// Makes the done chunks that hold one of `runs` (model, position) pending again.
async fn reopen_holding(
    conn: &mut AsyncPgConnection,
    evaluation_id: EvaluationId,
    runs: &[(String, i32)],
) -> QueryResult<usize> {
    if runs.is_empty() {
        return Ok(0);
    }
    let (models, positions): (Vec<String>, Vec<i32>) = runs.iter().cloned().unzip();
    diesel::sql_query(format!(
        "UPDATE evaluation_chunks c
         SET status = '{to}', job_id = NULL, finished_at = NULL
         WHERE c.evaluation_id = $1 AND c.status IN ({from}) AND EXISTS (
             SELECT 1 FROM unnest($2::text[], $3::int4[]) AS r(model, position)
             WHERE r.model = c.model AND r.position BETWEEN c.first_position AND c.last_position)",
        to = chunk_moves::REOPEN_DONE.to,
        from = ChunkStatus::sql_list(chunk_moves::REOPEN_DONE.from),
    ))
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<Array<Text>, _>(&models)
    .bind::<Array<Int4>, _>(&positions)
    .execute(conn)
    .await
}

#[derive(QueryableByName)]
struct EvaluationKey {
    #[diesel(sql_type = SqlUuid)]
    id: EvaluationId,
    #[diesel(sql_type = SqlUuid)]
    tenant_id: TenantId,
}

/// Unfinished evaluations with pending chunks and room in the queue: their
/// refill was lost (a worker died between starting a chunk and pushing the
/// next). Queues what they lack; push the result.
pub async fn refill_starved(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Push>> {
    let starved: Vec<EvaluationKey> = diesel::sql_query(format!(
        "SELECT e.id, e.tenant_id FROM evaluations e
         JOIN evaluation_chunks c ON c.evaluation_id = e.id
         WHERE e.status IN ({unfinished}) AND c.status IN ('{pending}', '{queued}')
         GROUP BY e.id, e.tenant_id
         HAVING count(*) FILTER (WHERE c.status = '{queued}') < $1
            AND count(*) FILTER (WHERE c.status = '{pending}') > 0
         LIMIT $2",
        unfinished = EvaluationStatus::sql_list(evaluation_moves::UNFINISHED),
        pending = ChunkStatus::Pending,
        queued = ChunkStatus::Queued,
    ))
    .bind::<Int8, _>(QUEUED_PER_EVALUATION)
    .bind::<Int8, _>(limit)
    .load(conn)
    .await?;
    let mut pushes = Vec::new();
    for key in starved {
        if let Some(evaluation) = lock(conn, key.tenant_id, key.id).await?
            && !evaluation.status.is_terminal()
        {
            pushes.extend(refill(conn, &evaluation).await?);
        }
    }
    Ok(pushes)
}

/// Running evaluations whose chunks are all done: the worker that finished
/// the last one died before finalizing. Finalize them (guarded, once).
pub async fn unfinalized(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<(TenantId, EvaluationId)>> {
    let rows: Vec<EvaluationKey> = diesel::sql_query(format!(
        "SELECT e.id, e.tenant_id FROM evaluations e
         WHERE e.status IN ({finalizable})
           AND EXISTS (SELECT 1 FROM evaluation_chunks c WHERE c.evaluation_id = e.id)
           AND NOT EXISTS (SELECT 1 FROM evaluation_chunks c
                           WHERE c.evaluation_id = e.id AND c.status <> '{done}')
         LIMIT $1",
        finalizable = EvaluationStatus::sql_list(evaluation_moves::FINALIZE.from),
        done = ChunkStatus::Done,
    ))
    .bind::<Int8, _>(limit)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.tenant_id, row.id))
        .collect())
}

/// Unfinished evaluations without a plan (written by a version that
/// predates chunks): plan and queue them.
pub async fn plan_unplanned(
    conn: &mut AsyncPgConnection,
    runs_per_chunk: i32,
    limit: i64,
) -> QueryResult<Vec<Push>> {
    let rows: Vec<EvaluationKey> = diesel::sql_query(format!(
        "SELECT e.id, e.tenant_id FROM evaluations e
         WHERE e.status IN ({unfinished})
           AND NOT EXISTS (SELECT 1 FROM evaluation_chunks c WHERE c.evaluation_id = e.id)
         LIMIT $1",
        unfinished = EvaluationStatus::sql_list(evaluation_moves::UNFINISHED),
    ))
    .bind::<Int8, _>(limit)
    .load(conn)
    .await?;
    let mut pushes = Vec::new();
    for key in rows {
        let Some(evaluation) = lock(conn, key.tenant_id, key.id).await? else {
            continue;
        };
        let items = item_count(conn, &evaluation).await?;
        let plan = chunks::plan(
            evaluation.tenant_id,
            evaluation.id,
            &evaluation.model_names(),
            items,
            evaluation.repeats,
            runs_per_chunk,
            evaluation.priority(),
        );
        chunks::insert_plan(conn, &plan).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id: evaluation.tenant_id,
                actor: "system",
                action: "evaluation.planned",
                resource_type: "evaluation",
                resource_id: evaluation.id.uuid(),
                data: serde_json::json!({ "chunks": plan.len() }),
            },
        )
        .await?;
        pushes.extend(chunks::queue_pending(conn, &evaluation, QUEUED_PER_EVALUATION).await?);
    }
    Ok(pushes)
}
