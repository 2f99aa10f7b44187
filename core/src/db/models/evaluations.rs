//! Evaluations: a prompt version x a dataset x models, graded.
//!
//! Status moves `queued` -> `running` -> `succeeded` | `failed` (or
//! `canceled`); every transition is a guarded UPDATE (`WHERE status IN ...`),
//! so a job delivered twice cannot finish an evaluation twice.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use super::events::{self, NewEvent};
use super::results::{self, GraderSummary, ModelSummary, RepeatStats};
use crate::db::schema::evaluations;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

impl Evaluation {
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
}

/// Writes the evaluation (status `queued`) and its `evaluation.created` event.
pub async fn create(
    conn: &mut AsyncPgConnection,
    actor: &str,
    new: &NewEvaluation,
) -> QueryResult<Evaluation> {
    conn.transaction(async |conn| {
        let evaluation: Evaluation = diesel::insert_into(evaluations::table)
            .values(new)
            .returning(Evaluation::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id: new.tenant_id,
                actor,
                action: "evaluation.created",
                resource_type: "evaluation",
                resource_id: new.id,
                data: serde_json::json!({ "total": new.total, "models": new.models }),
            },
        )
        .await?;
        Ok(evaluation)
    })
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
    let mut query = evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .order(evaluations::id.desc())
        .limit(limit + 1)
        .select(Evaluation::as_select())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(evaluations::id.lt(after));
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Moves a queued (or already running, on re-delivery) evaluation to
/// `running`. `None` when it is finished, canceled or gone: nothing to do.
pub async fn start(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
) -> QueryResult<Option<Evaluation>> {
    conn.transaction(async |conn| {
        let before = evaluations::table
            .filter(evaluations::tenant_id.eq(tenant_id))
            .filter(evaluations::id.eq(id))
            .select(evaluations::status)
            .for_update()
            .first::<String>(conn)
            .await
            .optional()?;
        let Some(before) = before else {
            return Ok(None);
        };
        if before != "queued" && before != "running" {
            return Ok(None);
        }
        let evaluation: Evaluation =
            diesel::update(evaluations::table.filter(evaluations::id.eq(id)))
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
                tenant_id,
                actor,
                action: if before == "queued" {
                    "evaluation.started"
                } else {
                    "evaluation.resumed"
                },
                resource_type: "evaluation",
                resource_id: id,
                data: serde_json::json!({}),
            },
        )
        .await?;
        Ok(Some(evaluation))
    })
    .await
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
