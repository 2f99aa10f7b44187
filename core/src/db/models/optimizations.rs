//! Optimizations: rounds of "ask a model for revised prompts, evaluate them,
//! keep the best". The row is the job's state: which round, which version
//! is the current parent, and the evaluations the current step waits for;
//! `optimization_candidates` holds every proposal of every round (valid or
//! not), written with the round's optimizer cost in one transaction.
//! Status: `queued` → `running` → `succeeded` | `budget_exhausted` |
//! `failed`, or `canceled`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::events::{self, NewEvent};
use crate::db::schema::{evaluations, optimization_candidates, optimizations};
use crate::ids::{DatasetId, EvaluationId, PromptId, TenantId, VersionId};

pub const UNFINISHED: [&str; 2] = ["queued", "running"];

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = optimizations, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Optimization {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub from_version_id: VersionId,
    pub setup: Value,
    pub optimizer_model: String,
    pub candidates: i32,
    pub rounds: i32,
    pub validation_split: f64,
    pub seed: i64,
    pub max_cost_usd: f64,
    pub promote_to: Option<String>,
    pub status: String,
    pub train_dataset_id: Option<DatasetId>,
    pub validation_dataset_id: Option<DatasetId>,
    pub round: i32,
    pub current_version_id: VersionId,
    pub parent_train_evaluation_id: Option<EvaluationId>,
    pub parent_validation_evaluation_id: Option<EvaluationId>,
    pub origin_validation_evaluation_id: Option<EvaluationId>,
    pub optimizer_cost_usd: f64,
    pub proposals_valid: i32,
    pub proposals_invalid: i32,
    pub winner_version_id: Option<VersionId>,
    pub comparison: Option<Value>,
    pub reason: Option<String>,
    pub promotion_id: Option<Uuid>,
    #[serde(skip)]
    pub job_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Optimization {
    pub fn is_finished(&self) -> bool {
        !UNFINISHED.contains(&self.status.as_str())
    }

    /// The branch its candidates are committed on.
    pub fn branch(&self) -> String {
        branch_name(self.id)
    }
}

/// `opt/<id>`: a name users cannot create (their branch names have no `/`).
pub fn branch_name(id: Uuid) -> String {
    format!("opt/{id}")
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = optimizations)]
pub struct NewOptimization {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub from_version_id: VersionId,
    pub current_version_id: VersionId,
    pub setup: Value,
    pub optimizer_model: String,
    pub candidates: i32,
    pub rounds: i32,
    pub validation_split: f64,
    pub seed: i64,
    pub max_cost_usd: f64,
    pub promote_to: Option<String>,
    pub job_id: Option<Uuid>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = optimization_candidates, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Candidate {
    #[serde(skip)]
    pub optimization_id: Uuid,
    pub round: i32,
    pub index: i32,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub version_id: Option<VersionId>,
    pub invalid_reason: Option<String>,
    pub rationale: String,
    pub evaluation_id: Option<EvaluationId>,
    pub pass_rate: Option<f64>,
    pub mean_score: Option<f64>,
    pub cost_usd: Option<f64>,
    pub tokens: i64,
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    actor: &str,
    new: &NewOptimization,
) -> QueryResult<Optimization> {
    conn.transaction(async |conn| {
        let optimization: Optimization = diesel::insert_into(optimizations::table)
            .values(new)
            .returning(Optimization::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id: new.tenant_id,
                actor,
                action: "optimization.created",
                resource_type: "optimization",
                resource_id: new.id,
                data: serde_json::json!({
                    "prompt_id": new.prompt_id,
                    "from_version_id": new.from_version_id,
                    "optimizer_model": new.optimizer_model,
                    "candidates": new.candidates,
                    "rounds": new.rounds,
                    "max_cost_usd": new.max_cost_usd,
                }),
            },
        )
        .await?;
        Ok(optimization)
    })
    .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<Optimization>> {
    optimizations::table
        .filter(optimizations::tenant_id.eq(tenant_id))
        .filter(optimizations::id.eq(id))
        .select(Optimization::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn lock(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<Optimization>> {
    optimizations::table
        .filter(optimizations::tenant_id.eq(tenant_id))
        .filter(optimizations::id.eq(id))
        .select(Optimization::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn set_job(conn: &mut AsyncPgConnection, id: Uuid, job_id: Uuid) -> QueryResult<()> {
    diesel::update(optimizations::table.filter(optimizations::id.eq(id)))
        .set((
            optimizations::job_id.eq(job_id),
            optimizations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Every candidate of every round, in order.
pub async fn candidates(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Vec<Candidate>> {
    optimization_candidates::table
        .filter(optimization_candidates::tenant_id.eq(tenant_id))
        .filter(optimization_candidates::optimization_id.eq(id))
        .order((
            optimization_candidates::round.asc(),
            optimization_candidates::index.asc(),
        ))
        .select(Candidate::as_select())
        .load(conn)
        .await
}

/// Records a round's proposals, once: false when that round's proposals were
/// recorded already (a re-run's proposals are dropped). What asking for them
/// cost is counted apart, around the call ([`add_optimizer_cost`]).
pub async fn record_round(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    round: i32,
    rows: &[Candidate],
) -> QueryResult<bool> {
    conn.transaction(async |conn| {
        let Some(optimization) = lock(conn, tenant_id, id).await? else {
            return Ok(false);
        };
        let exists: i64 = optimization_candidates::table
            .filter(optimization_candidates::optimization_id.eq(id))
            .filter(optimization_candidates::round.eq(round))
            .count()
            .get_result(conn)
            .await?;
        if exists > 0 || optimization.is_finished() {
            return Ok(false);
        }
        diesel::insert_into(optimization_candidates::table)
            .values(rows)
            .execute(conn)
            .await?;
        let valid = rows.iter().filter(|row| row.version_id.is_some()).count() as i32;
        let invalid = rows.len() as i32 - valid;
        diesel::update(optimizations::table.filter(optimizations::id.eq(id)))
            .set((
                optimizations::proposals_valid.eq(optimizations::proposals_valid + valid),
                optimizations::proposals_invalid.eq(optimizations::proposals_invalid + invalid),
                optimizations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        Ok(true)
    })
    .await
}

/// Adds to what the optimizer's calls cost: a call's reservation before it
/// is made, then the difference between what it cost and what it reserved.
pub async fn add_optimizer_cost(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    cost_usd: f64,
) -> QueryResult<()> {
    diesel::update(optimizations::table.filter(optimizations::id.eq(id)))
        .set(optimizations::optimizer_cost_usd.eq(optimizations::optimizer_cost_usd + cost_usd))
        .execute(conn)
        .await
        .map(drop)
}

/// Records the promotion chained on the winner.
pub async fn set_promotion(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    promotion_id: Uuid,
) -> QueryResult<()> {
    diesel::update(optimizations::table.filter(optimizations::id.eq(id)))
        .set(optimizations::promotion_id.eq(promotion_id))
        .execute(conn)
        .await
        .map(drop)
}

/// Sets a candidate's evaluation (once).
pub async fn set_candidate_evaluation(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    round: i32,
    index: i32,
    evaluation_id: EvaluationId,
) -> QueryResult<bool> {
    let updated = diesel::update(
        optimization_candidates::table
            .filter(optimization_candidates::optimization_id.eq(id))
            .filter(optimization_candidates::round.eq(round))
            .filter(optimization_candidates::index.eq(index))
            .filter(optimization_candidates::evaluation_id.is_null()),
    )
    .set(optimization_candidates::evaluation_id.eq(evaluation_id))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// A candidate's figures on the validation part.
pub async fn set_candidate_figures(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    round: i32,
    index: i32,
    figures: (Option<f64>, Option<f64>, f64),
) -> QueryResult<()> {
    diesel::update(
        optimization_candidates::table
            .filter(optimization_candidates::optimization_id.eq(id))
            .filter(optimization_candidates::round.eq(round))
            .filter(optimization_candidates::index.eq(index)),
    )
    .set((
        optimization_candidates::pass_rate.eq(figures.0),
        optimization_candidates::mean_score.eq(figures.1),
        optimization_candidates::cost_usd.eq(figures.2),
    ))
    .execute(conn)
    .await
    .map(drop)
}

/// What the optimization has spent: its optimizer calls and every call of
/// the evaluations it ran (reservations of calls in flight included).
pub async fn spent(conn: &mut AsyncPgConnection, optimization: &Optimization) -> QueryResult<f64> {
    let mut ids: Vec<EvaluationId> = optimization_candidates::table
        .filter(optimization_candidates::optimization_id.eq(optimization.id))
        .filter(optimization_candidates::evaluation_id.is_not_null())
        .select(optimization_candidates::evaluation_id.assume_not_null())
        .load(conn)
        .await?;
    ids.extend(optimization.parent_train_evaluation_id);
    ids.extend(optimization.parent_validation_evaluation_id);
    ids.extend(optimization.origin_validation_evaluation_id);
    ids.sort();
    ids.dedup();
    let evaluations: Option<f64> = evaluations::table
        .filter(evaluations::tenant_id.eq(optimization.tenant_id))
        .filter(evaluations::id.eq_any(&ids))
        .select(diesel::dsl::sum(evaluations::committed_usd))
        .first(conn)
        .await?;
    Ok(optimization.optimizer_cost_usd + evaluations.unwrap_or(0.0))
}

/// Applies `changes` to a running optimization, guarded by the round it was
/// read in (so a stale re-run changes nothing); false when nothing changed.
pub async fn advance(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    expected_round: i32,
    changes: Advance,
) -> QueryResult<bool> {
    let updated = diesel::update(
        optimizations::table
            .filter(optimizations::id.eq(id))
            .filter(optimizations::round.eq(expected_round))
            .filter(optimizations::status.eq_any(UNFINISHED)),
    )
    .set((&changes, optimizations::updated_at.eq(diesel::dsl::now)))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Columns a step may change (None: unchanged).
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = optimizations)]
pub struct Advance {
    pub status: Option<String>,
    pub train_dataset_id: Option<DatasetId>,
    pub validation_dataset_id: Option<DatasetId>,
    pub round: Option<i32>,
    pub current_version_id: Option<VersionId>,
    pub parent_train_evaluation_id: Option<Option<EvaluationId>>,
    pub parent_validation_evaluation_id: Option<Option<EvaluationId>>,
    pub origin_validation_evaluation_id: Option<EvaluationId>,
    pub winner_version_id: Option<VersionId>,
    pub promotion_id: Option<Uuid>,
}

/// Ends an unfinished optimization and writes its `optimization.<status>` event.
#[expect(clippy::too_many_arguments, reason = "one row's final columns")]
pub async fn finish(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    actor: &str,
    status: &str,
    winner: Option<VersionId>,
    comparison: Option<&Value>,
    reason: &str,
) -> QueryResult<bool> {
    // One transaction: the status and its event (and the webhook
    // deliveries the event owes) are written together or not at all.
    conn.transaction(async |conn| {
        let updated = diesel::update(
            optimizations::table
                .filter(optimizations::tenant_id.eq(tenant_id))
                .filter(optimizations::id.eq(id))
                .filter(optimizations::status.eq_any(UNFINISHED)),
        )
        .set((
            optimizations::status.eq(status),
            optimizations::winner_version_id.eq(winner),
            optimizations::comparison.eq(comparison),
            optimizations::reason.eq(reason),
            optimizations::finished_at.eq(diesel::dsl::now),
            optimizations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
        if updated == 1 {
            let action = format!("optimization.{status}");
            events::record(
                conn,
                NewEvent {
                    tenant_id,
                    actor,
                    action: &action,
                    resource_type: "optimization",
                    resource_id: id,
                    data: serde_json::json!({ "reason": reason, "winner_version_id": winner }),
                },
            )
            .await?;
        }
        Ok(updated == 1)
    })
    .await
}

pub async fn stale(
    conn: &mut AsyncPgConnection,
    grace: std::time::Duration,
    limit: i64,
) -> QueryResult<Vec<(TenantId, Uuid, Option<Uuid>)>> {
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    optimizations::table
        .filter(optimizations::status.eq_any(UNFINISHED))
        .filter(optimizations::updated_at.lt(cutoff))
        .select((
            optimizations::tenant_id,
            optimizations::id,
            optimizations::job_id,
        ))
        .order(optimizations::updated_at.asc())
        .limit(limit)
        .load(conn)
        .await
}
