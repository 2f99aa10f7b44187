//! Promotions: a label moved to a candidate version iff an evaluation-backed
//! policy holds. The row is the job's state machine:
//! `queued` → `evaluating` (both evaluations recorded) → `promoted` |
//! `rejected` | `superseded` | `failed`, or `canceled` from either of the
//! first two. Every transition is a conditional UPDATE on the status, so a
//! job that runs twice (at-least-once delivery) changes a row once.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::events::{self, NewEvent};
use crate::db::schema::promotions;
use crate::ids::{EvaluationId, PromptId, TenantId, VersionId};

/// States a promotion is still being worked on in.
pub const UNFINISHED: [&str; 2] = ["queued", "evaluating"];

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = promotions, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Promotion {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub label: String,
    pub candidate_version_id: VersionId,
    pub baseline_version_id: VersionId,
    pub setup: Value,
    pub policy: Value,
    pub status: String,
    pub baseline_evaluation_id: Option<EvaluationId>,
    pub candidate_evaluation_id: Option<EvaluationId>,
    pub baseline_reused: bool,
    pub candidate_reused: bool,
    pub comparison: Option<Value>,
    pub reason: Option<String>,
    pub optimization_id: Option<Uuid>,
    #[serde(skip)]
    pub job_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Promotion {
    pub fn is_finished(&self) -> bool {
        !UNFINISHED.contains(&self.status.as_str())
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = promotions)]
pub struct NewPromotion {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub prompt_id: PromptId,
    pub label: String,
    pub candidate_version_id: VersionId,
    pub baseline_version_id: VersionId,
    pub setup: Value,
    pub policy: Value,
    pub optimization_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub request_id: Option<String>,
}

/// Writes a queued promotion and its `promotion.created` event.
pub async fn create(
    conn: &mut AsyncPgConnection,
    actor: &str,
    new: &NewPromotion,
) -> QueryResult<Promotion> {
    use diesel_async::AsyncConnection;
    conn.transaction(async |conn| {
        let promotion: Promotion = diesel::insert_into(promotions::table)
            .values(new)
            .returning(Promotion::as_returning())
            .get_result(conn)
            .await?;
        events::record(
            conn,
            NewEvent {
                tenant_id: new.tenant_id,
                actor,
                action: "promotion.created",
                resource_type: "promotion",
                resource_id: new.id,
                data: serde_json::json!({
                    "prompt_id": new.prompt_id,
                    "label": new.label,
                    "candidate_version_id": new.candidate_version_id,
                    "baseline_version_id": new.baseline_version_id,
                    "optimization_id": new.optimization_id,
                }),
            },
        )
        .await?;
        Ok(promotion)
    })
    .await
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<Promotion>> {
    promotions::table
        .filter(promotions::tenant_id.eq(tenant_id))
        .filter(promotions::id.eq(id))
        .select(Promotion::as_select())
        .first(conn)
        .await
        .optional()
}

/// The promotion, its row locked until the transaction ends.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
) -> QueryResult<Option<Promotion>> {
    promotions::table
        .filter(promotions::tenant_id.eq(tenant_id))
        .filter(promotions::id.eq(id))
        .select(Promotion::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Records the task id of a new push (the sweeper's "is it alive?" key).
pub async fn set_job(conn: &mut AsyncPgConnection, id: Uuid, job_id: Uuid) -> QueryResult<()> {
    diesel::update(promotions::table.filter(promotions::id.eq(id)))
        .set((
            promotions::job_id.eq(job_id),
            promotions::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// The two evaluations of a queued promotion; false when it was not queued
/// any more (another run got there first, or it was canceled).
pub async fn start_evaluating(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    baseline: (EvaluationId, bool),
    candidate: (EvaluationId, bool),
) -> QueryResult<bool> {
    let updated = diesel::update(
        promotions::table
            .filter(promotions::id.eq(id))
            .filter(promotions::status.eq("queued")),
    )
    .set((
        promotions::status.eq("evaluating"),
        promotions::baseline_evaluation_id.eq(baseline.0),
        promotions::baseline_reused.eq(baseline.1),
        promotions::candidate_evaluation_id.eq(candidate.0),
        promotions::candidate_reused.eq(candidate.1),
        promotions::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Ends an unfinished promotion with `status`, the evidence and the reason,
/// and writes its `promotion.<status>` event. False when it had ended already.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    actor: &str,
    status: &str,
    comparison: Option<&Value>,
    reason: &str,
) -> QueryResult<bool> {
    // One transaction: the status and its event (and the webhook
    // deliveries the event owes) are written together or not at all.
    conn.transaction(async |conn| {
        let updated = diesel::update(
            promotions::table
                .filter(promotions::tenant_id.eq(tenant_id))
                .filter(promotions::id.eq(id))
                .filter(promotions::status.eq_any(UNFINISHED)),
        )
        .set((
            promotions::status.eq(status),
            promotions::comparison.eq(comparison),
            promotions::reason.eq(reason),
            promotions::finished_at.eq(diesel::dsl::now),
            promotions::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
        if updated == 1 {
            let action = format!("promotion.{status}");
            events::record(
                conn,
                NewEvent {
                    tenant_id,
                    actor,
                    action: &action,
                    resource_type: "promotion",
                    resource_id: id,
                    data: serde_json::json!({ "reason": reason, "comparison": comparison }),
                },
            )
            .await?;
        }
        Ok(updated == 1)
    })
    .await
}

/// Unfinished promotions untouched for `grace` (their push may be gone):
/// (tenant, id, job id).
pub async fn stale(
    conn: &mut AsyncPgConnection,
    grace: std::time::Duration,
    limit: i64,
) -> QueryResult<Vec<(TenantId, Uuid, Option<Uuid>)>> {
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    promotions::table
        .filter(promotions::status.eq_any(UNFINISHED))
        .filter(promotions::updated_at.lt(cutoff))
        .select((promotions::tenant_id, promotions::id, promotions::job_id))
        .order(promotions::updated_at.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Promotions chained by an optimization.
pub async fn of_optimization(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    optimization_id: Uuid,
) -> QueryResult<Option<Promotion>> {
    promotions::table
        .filter(promotions::tenant_id.eq(tenant_id))
        .filter(promotions::optimization_id.eq(optimization_id))
        .select(Promotion::as_select())
        .first(conn)
        .await
        .optional()
}
