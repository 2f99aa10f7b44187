//! Evaluations: a prompt version x a dataset x models, graded.
//!
//! Status moves `queued` -> `running` -> `succeeded` | `failed` (or
//! `canceled`); every transition is a guarded UPDATE (`WHERE status IN ...`),
//! so a job delivered twice cannot finish an evaluation twice. A failed or
//! canceled evaluation can be resumed, and any finished one can have its
//! errored results retried: both make it `queued` again, as run `run + 1`.
//!
//! The work itself is planned into chunks ([`super::chunks`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use super::chunks::{self, QUEUED_PER_EVALUATION};
use super::events::{self, NewEvent};
use super::results::{self, GraderSummary, ModelSummary, RepeatStats};
use crate::db::schema::{datasets, evaluation_results, evaluations};
use crate::domain::Priority;
use crate::queue::Push;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EvaluationStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl EvaluationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EvaluationStatus::Queued => "queued",
            EvaluationStatus::Running => "running",
            EvaluationStatus::Succeeded => "succeeded",
            EvaluationStatus::Failed => "failed",
            EvaluationStatus::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EvaluationStatus::Succeeded | EvaluationStatus::Failed | EvaluationStatus::Canceled
        )
    }
}

impl std::str::FromStr for EvaluationStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "queued" => EvaluationStatus::Queued,
            "running" => EvaluationStatus::Running,
            "succeeded" => EvaluationStatus::Succeeded,
            "failed" => EvaluationStatus::Failed,
            "canceled" => EvaluationStatus::Canceled,
            other => return Err(format!("unknown evaluation status {other:?}")),
        })
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = evaluations, check_for_backend(diesel::pg::Pg))]
pub struct Evaluation {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub prompt_version_id: Uuid,
    pub dataset_id: Uuid,
    pub models: Value,
    pub graders: Value,
    pub params: Value,
    pub status: String,
    pub total: i32,
    pub completed: i32,
    pub passed: i32,
    pub failed: i32,
    pub errored: i32,
    pub summary: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub repeats: i32,
    pub threshold: Option<f64>,
    pub source_evaluation_id: Option<Uuid>,
    /// Deterministic calls may be answered from the response cache.
    pub use_cache: bool,
    pub priority: String,
    /// 1, then one more per resume or retry-errors.
    pub run: i32,
    /// How the request named its prompt (label or branch), when not by version id.
    pub prompt_ref: Option<Value>,
    /// What it may spend; None: no cap ([`super::budgets`]).
    pub max_cost_usd: Option<f64>,
    /// Spent by its calls plus what calls in flight have reserved.
    pub committed_usd: f64,
    /// The cost estimate made at submission (when it had a budget).
    pub cost_estimate: Option<Value>,
    /// Why it was canceled: [`CancelReason`].
    pub cancel_reason: Option<String>,
    /// The `X-Request-Id` of the request that submitted it.
    pub request_id: Option<String>,
}

/// Why an evaluation was canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CancelReason {
    /// `POST /v1/evaluations/{id}/cancel`.
    User,
    /// Its own `max_cost_usd` would have been passed.
    Budget,
    /// Its tenant's monthly budget would have been passed.
    TenantBudget,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::User => "user",
            CancelReason::Budget => "budget",
            CancelReason::TenantBudget => "tenant_budget",
        }
    }
}

impl Evaluation {
    pub fn priority(&self) -> Priority {
        self.priority.parse().unwrap_or_default()
    }

    pub fn status(&self) -> EvaluationStatus {
        self.status
            .parse()
            .expect("the CHECK constraint allows known statuses only")
    }

    pub fn model_names(&self) -> Vec<String> {
        serde_json::from_value(self.models.clone()).unwrap_or_default()
    }
}

/// What a finished evaluation reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    /// One entry per model, in the order the evaluation lists them.
    pub models: Vec<ModelReport>,
    /// Per grader (by index in `graders`) and model.
    pub grader_summaries: Vec<GraderSummary>,
    /// Generation cost (a re-grading reports its source's).
    pub total_cost_usd: f64,
    /// What judge calls cost.
    pub total_grading_cost_usd: f64,
    /// The grader set that produced these figures.
    pub graders: Value,
    /// For a re-grading: the evaluation whose outputs were graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regraded_from: Option<Uuid>,
}

/// One model's figures, and its repeat statistics when items ran more than once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelReport {
    #[serde(flatten)]
    pub figures: ModelSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<RepeatStats>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = evaluations)]
pub struct NewEvaluation {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub prompt_version_id: Uuid,
    pub dataset_id: Uuid,
    pub models: Value,
    pub graders: Value,
    pub params: Value,
    pub total: i32,
    pub repeats: i32,
    pub threshold: Option<f64>,
    pub source_evaluation_id: Option<Uuid>,
    pub use_cache: bool,
    pub priority: String,
    /// `{"prompt_id", "label"}` or `{"prompt_id", "branch"}` when the request
    /// named a label or branch; `prompt_version_id` is what it resolved to.
    pub prompt_ref: Option<Value>,
    pub max_cost_usd: Option<f64>,
    pub cost_estimate: Option<Value>,
    pub request_id: Option<String>,
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
    /// [`chunks::spread_runs_per_chunk`]); `total_runs` counts every model.
    pub fn spread_over(self, total_runs: i64, live_workers: u64) -> Self {
        Self {
            runs_per_chunk: chunks::spread_runs_per_chunk(
                self.runs_per_chunk,
                total_runs,
                live_workers,
            ),
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
                resource_id: new.id,
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
            .first::<Uuid>(conn)
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

/// The evaluation, its row locked until the transaction ends.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Evaluation>> {
    evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .filter(evaluations::id.eq(id))
        .select(Evaluation::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Items in the evaluation's dataset.
pub async fn item_count(conn: &mut AsyncPgConnection, evaluation: &Evaluation) -> QueryResult<i32> {
    datasets::table
        .filter(datasets::tenant_id.eq(evaluation.tenant_id))
        .filter(datasets::id.eq(evaluation.dataset_id))
        .select(datasets::item_count)
        .first(conn)
        .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Evaluation>> {
    evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .filter(evaluations::id.eq(id))
        .select(Evaluation::as_select())
        .first(conn)
        .await
        .optional()
}

/// Newest first (ids are UUIDv7, so id order is creation order).
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Page<Evaluation>> {
    let query = super::tenant_page_newest_first!(evaluations, Evaluation, tenant_id, after, limit);
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Moves a queued evaluation (locked by the caller) to `running`, with its
/// `evaluation.started` event: the first chunk to start does this, once.
pub async fn mark_running(
    conn: &mut AsyncPgConnection,
    evaluation: &Evaluation,
    actor: &str,
) -> QueryResult<Evaluation> {
    let running: Evaluation =
        diesel::update(evaluations::table.filter(evaluations::id.eq(evaluation.id)))
            .set((
                evaluations::status.eq("running"),
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
            resource_id: evaluation.id,
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
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
    reason: CancelReason,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, tenant_id, id).await? else {
            return Ok(false);
        };
        if evaluation.status().is_terminal() {
            return Ok(false);
        }
        diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
            .set((
                evaluations::status.eq("canceled"),
                evaluations::cancel_reason.eq(reason.as_str()),
                evaluations::finished_at.eq(diesel::dsl::now),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        let stopped = chunks::cancel_unfinished(conn, id).await?;
        events::record(
            conn,
            NewEvent {
                tenant_id,
                actor,
                action: "evaluation.canceled",
                resource_type: "evaluation",
                resource_id: id,
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
    Status(String),
    /// Retry-errors on an evaluation without errored results.
    NothingToRetry,
}

/// Restarts an evaluation as run `run + 1`; returns its first chunks to push.
pub async fn reopen(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
    how: Reopen,
) -> QueryResult<Result<(Evaluation, Vec<Push>), ReopenRefused>> {
    conn.transaction(async |conn| {
        let Some(evaluation) = lock(conn, tenant_id, id).await? else {
            return Ok(Err(ReopenRefused::NotFound));
        };
        let status = evaluation.status();
        let allowed = match how {
            Reopen::Resume => matches!(status, EvaluationStatus::Failed | EvaluationStatus::Canceled),
            Reopen::RetryErrors => status.is_terminal(),
        };
        if !allowed {
            return Ok(Err(ReopenRefused::Status(evaluation.status.clone())));
        }
        let mut retried = 0;
        if how == Reopen::RetryErrors {
            let errored = supersede_errored(conn, &evaluation).await?;
            if errored.is_empty() && status == EvaluationStatus::Succeeded {
                return Ok(Err(ReopenRefused::NothingToRetry));
            }
            retried = errored.len();
            let runs: Vec<(String, i32)> = errored.into_iter().collect();
            chunks::reopen_holding(conn, id, &runs).await?;
        }
        chunks::reopen_unfinished(conn, id).await?;
        let reopened: Evaluation = diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
            .set((
                evaluations::status.eq("queued"),
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
                resource_id: id,
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
    use diesel::sql_types::{Int4, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = diesel::sql_types::Text)]
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
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
    error: &str,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let updated = diesel::update(
            evaluations::table
                .filter(evaluations::tenant_id.eq(tenant_id))
                .filter(evaluations::id.eq(id))
                .filter(evaluations::status.eq_any(["queued", "running"])),
        )
        .set((
            evaluations::status.eq("failed"),
            evaluations::error.eq(error),
            evaluations::finished_at.eq(diesel::dsl::now),
            evaluations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
        if updated == 1 {
            // Nothing more starts; a resume makes them pending again.
            chunks::cancel_unfinished(conn, id).await?;
            events::record(
                conn,
                NewEvent {
                    tenant_id,
                    actor,
                    action: "evaluation.failed",
                    resource_type: "evaluation",
                    resource_id: id,
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
pub async fn finish(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let Some(evaluation) = evaluations::table
            .filter(evaluations::tenant_id.eq(tenant_id))
            .filter(evaluations::id.eq(id))
            .select(Evaluation::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()?
        else {
            return Ok(false);
        };
        if evaluation.status() != EvaluationStatus::Running {
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
                evaluations::status.eq("succeeded"),
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
                resource_id: id,
                data: serde_json::json!({ "passed": passed, "failed": failed, "errored": errored }),
            },
        )
        .await?;
        Ok(true)
    })
    .await
}

/// Unfinished evaluations of every tenant: (queued, running). For the
/// operator gauge `assay_evaluations_unfinished`, which has no tenant label.
pub async fn unfinished_counts(conn: &mut AsyncPgConnection) -> QueryResult<(i64, i64)> {
    let rows: Vec<(String, i64)> = evaluations::table
        .filter(evaluations::status.eq_any(["queued", "running"]))
        .group_by(evaluations::status)
        .select((evaluations::status, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let count = |status: &str| {
        rows.iter()
            .find(|(name, _)| name == status)
            .map_or(0, |(_, count)| *count)
    };
    Ok((count("queued"), count("running")))
}
