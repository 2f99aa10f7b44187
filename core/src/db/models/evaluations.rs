//! Evaluations: a prompt version x a dataset x models, graded.
//!
//! The rows and the reads. Its states are [`EvaluationStatus`]; every move
//! between them (with its chunks) is in [`super::lifecycle`].

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Page;
use super::results::{GraderSummary, ModelSummary, RepeatStats};
pub use super::states::EvaluationStatus;
use super::states::evaluation_moves;
use crate::db::schema::{datasets, evaluations};
use crate::domain::Priority;
use crate::ids::{DatasetId, EvaluationId, TenantId, VersionId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = evaluations, check_for_backend(diesel::pg::Pg))]
pub struct Evaluation {
    pub id: EvaluationId,
    pub tenant_id: TenantId,
    pub prompt_version_id: VersionId,
    pub dataset_id: DatasetId,
    pub models: Value,
    pub graders: Value,
    pub params: Value,
    pub status: EvaluationStatus,
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
    pub source_evaluation_id: Option<EvaluationId>,
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
    pub regraded_from: Option<EvaluationId>,
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
    pub id: EvaluationId,
    pub tenant_id: TenantId,
    pub prompt_version_id: VersionId,
    pub dataset_id: DatasetId,
    pub models: Value,
    pub graders: Value,
    pub params: Value,
    pub total: i32,
    pub repeats: i32,
    pub threshold: Option<f64>,
    pub source_evaluation_id: Option<EvaluationId>,
    pub use_cache: bool,
    pub priority: String,
    /// `{"prompt_id", "label"}` or `{"prompt_id", "branch"}` when the request
    /// named a label or branch; `prompt_version_id` is what it resolved to.
    pub prompt_ref: Option<Value>,
    pub max_cost_usd: Option<f64>,
    pub cost_estimate: Option<Value>,
    pub request_id: Option<String>,
}

/// The evaluation, its row locked until the transaction ends.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
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
    tenant_id: TenantId,
    id: EvaluationId,
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
    tenant_id: TenantId,
    after: Option<EvaluationId>,
    limit: i64,
) -> QueryResult<Page<Evaluation>> {
    let query = super::tenant_page_newest_first!(evaluations, Evaluation, tenant_id, after, limit);
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Unfinished evaluations of every tenant: (queued, running). For the
/// operator gauge `assay_evaluations_unfinished`, which has no tenant label.
pub async fn unfinished_counts(conn: &mut AsyncPgConnection) -> QueryResult<(i64, i64)> {
    let rows: Vec<(EvaluationStatus, i64)> = evaluations::table
        .filter(evaluations::status.eq_any(evaluation_moves::UNFINISHED))
        .group_by(evaluations::status)
        .select((evaluations::status, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let count = |status: EvaluationStatus| {
        rows.iter()
            .find(|(name, _)| *name == status)
            .map_or(0, |(_, count)| *count)
    };
    Ok((
        count(EvaluationStatus::Queued),
        count(EvaluationStatus::Running),
    ))
}
