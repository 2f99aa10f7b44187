//! Per-tenant overrides of the deployment's request rate limits and quotas
//! (`tenant_limits`). A NULL column keeps the deployment's default; an
//! operator sets them with `assay-api limits set`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::schema::{evaluations, tenant_limits};
use crate::ids::TenantId;

#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = tenant_limits, check_for_backend(diesel::pg::Pg))]
pub struct TenantLimits {
    pub reads_per_minute: Option<i32>,
    pub read_burst: Option<i32>,
    pub writes_per_minute: Option<i32>,
    pub write_burst: Option<i32>,
    pub max_runs_per_evaluation: Option<i32>,
    pub max_active_evaluations: Option<i32>,
}

/// A change to a tenant's overrides: `Some(None)` clears one (back to the default).
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = tenant_limits)]
pub struct LimitsChange {
    pub reads_per_minute: Option<Option<i32>>,
    pub read_burst: Option<Option<i32>>,
    pub writes_per_minute: Option<Option<i32>>,
    pub write_burst: Option<Option<i32>>,
    pub max_runs_per_evaluation: Option<Option<i32>>,
    pub max_active_evaluations: Option<Option<i32>>,
}

/// The tenant's overrides (all None when it has none).
pub async fn get(conn: &mut AsyncPgConnection, tenant_id: TenantId) -> QueryResult<TenantLimits> {
    Ok(tenant_limits::table
        .filter(tenant_limits::tenant_id.eq(tenant_id))
        .select(TenantLimits::as_select())
        .first(conn)
        .await
        .optional()?
        .unwrap_or_default())
}

/// Applies `change` to the tenant's overrides; returns them as they are now.
pub async fn set(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    change: &LimitsChange,
) -> QueryResult<TenantLimits> {
    diesel::insert_into(tenant_limits::table)
        .values(tenant_limits::tenant_id.eq(tenant_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let nothing_to_change = change.reads_per_minute.is_none()
        && change.read_burst.is_none()
        && change.writes_per_minute.is_none()
        && change.write_burst.is_none()
        && change.max_runs_per_evaluation.is_none()
        && change.max_active_evaluations.is_none();
    if !nothing_to_change {
        diesel::update(tenant_limits::table.filter(tenant_limits::tenant_id.eq(tenant_id)))
            .set((change, tenant_limits::updated_at.eq(diesel::dsl::now)))
            .execute(conn)
            .await?;
    }
    get(conn, tenant_id).await
}

/// The tenant's evaluations that are queued or running now.
pub async fn active_evaluations(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
) -> QueryResult<i64> {
    evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .filter(evaluations::status.eq_any(["queued", "running"]))
        .count()
        .get_result(conn)
        .await
}
