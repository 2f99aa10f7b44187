//! Budgets: what an evaluation (`evaluations.max_cost_usd`) and a tenant
//! (`tenant_budgets.monthly_usd`, per calendar month in UTC) may spend.
//!
//! Before a call, a worker **reserves** its expected cost
//! ([`reserve`]): one transaction adds it to the evaluation's
//! `committed_usd` and, when the tenant has a budget, to the month's
//! `tenant_spend.committed_usd`, each guarded so that neither passes its cap.
//! After the call, the result writer **settles** ([`settle`]): it swaps the
//! reservations of a batch for what the calls cost. So a worker stops
//! starting calls once the spent cost plus the reservations of calls in
//! flight (on every replica) would pass a cap, and the overshoot is at most
//! what the calls in flight cost beyond their reservations.
//!
//! A worker that dies between the two leaves its reservations behind: the
//! budget then stops early, never late. A resume recomputes an evaluation's
//! `committed_usd` from its results.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::evaluations::CancelReason;
use crate::db::schema::{evaluations, tenant_budgets, tenant_spend};
use crate::ids::{EvaluationId, TenantId};

/// The first day of `at`'s month: the key of a tenant's monthly spend.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).expect("the first of a month exists")
}

/// `committed_usd` recomputed from an evaluation's results (for an UPDATE of
/// `evaluations`).
pub fn spent_by_results() -> diesel::expression::SqlLiteral<Double> {
    diesel::dsl::sql::<Double>(
        "coalesce((SELECT sum(r.cost_usd + r.grading_cost_usd) FROM evaluation_results r \
         WHERE r.evaluation_id = evaluations.id), 0)",
    )
}

/// A tenant's monthly budget; None when it has none.
pub async fn tenant_budget(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
) -> QueryResult<Option<f64>> {
    tenant_budgets::table
        .filter(tenant_budgets::tenant_id.eq(tenant_id))
        .select(tenant_budgets::monthly_usd)
        .first(conn)
        .await
        .optional()
}

/// Sets (Some) or removes (None) a tenant's monthly budget; seeds the
/// month's spend from its results when the month has no record yet.
pub async fn set_tenant_budget(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    monthly_usd: Option<f64>,
) -> QueryResult<()> {
    conn.transaction(async |conn| {
        match monthly_usd {
            None => {
                diesel::delete(
                    tenant_budgets::table.filter(tenant_budgets::tenant_id.eq(tenant_id)),
                )
                .execute(conn)
                .await?;
            }
            Some(monthly_usd) => {
                diesel::insert_into(tenant_budgets::table)
                    .values((
                        tenant_budgets::tenant_id.eq(tenant_id),
                        tenant_budgets::monthly_usd.eq(monthly_usd),
                    ))
                    .on_conflict(tenant_budgets::tenant_id)
                    .do_update()
                    .set((
                        tenant_budgets::monthly_usd.eq(monthly_usd),
                        tenant_budgets::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)
                    .await?;
                seed_month(conn, tenant_id, month_of(Utc::now())).await?;
            }
        }
        Ok(())
    })
    .await
}

/// Creates the tenant's spend record of `month` from what its results of
/// that month cost, unless it exists.
async fn seed_month(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    month: NaiveDate,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO tenant_spend (tenant_id, month, committed_usd)
         SELECT $1, $2, coalesce(sum(cost_usd + grading_cost_usd), 0)
         FROM evaluation_results WHERE tenant_id = $1 AND created_at >= $2::timestamptz
         ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Uuid, _>(tenant_id)
    .bind::<diesel::sql_types::Date, _>(month)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a tenant spent (and reserved) in the current month.
pub async fn tenant_spent(conn: &mut AsyncPgConnection, tenant_id: TenantId) -> QueryResult<f64> {
    let month = month_of(Utc::now());
    seed_month(conn, tenant_id, month).await?;
    tenant_spend::table
        .filter(tenant_spend::tenant_id.eq(tenant_id))
        .filter(tenant_spend::month.eq(month))
        .select(tenant_spend::committed_usd)
        .first(conn)
        .await
}

/// Reserves `amount` dollars for one call of an evaluation. `Err(reason)`
/// (and nothing reserved) when the evaluation's or its tenant's budget
/// would be passed; the tenant's is checked only when `tenant_budget`.
pub async fn reserve(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    amount: f64,
    tenant_budget: bool,
) -> QueryResult<Result<(), CancelReason>> {
    conn.transaction(async |conn| {
        let reserved = diesel::update(
            evaluations::table
                .filter(evaluations::tenant_id.eq(tenant_id))
                .filter(evaluations::id.eq(evaluation_id))
                .filter(
                    evaluations::max_cost_usd
                        .is_null()
                        .or(evaluations::max_cost_usd
                            .assume_not_null()
                            .ge(evaluations::committed_usd + amount)),
                ),
        )
        .set(evaluations::committed_usd.eq(evaluations::committed_usd + amount))
        .execute(conn)
        .await?;
        if reserved == 0 {
            return Ok(Err(CancelReason::Budget));
        }
        if tenant_budget {
            let month = month_of(Utc::now());
            seed_month(conn, tenant_id, month).await?;
            let reserved = diesel::sql_query(
                "UPDATE tenant_spend s SET committed_usd = s.committed_usd + $3
                 FROM tenant_budgets b
                 WHERE s.tenant_id = $1 AND s.month = $2 AND b.tenant_id = s.tenant_id
                   AND s.committed_usd + $3 <= b.monthly_usd",
            )
            .bind::<diesel::sql_types::Uuid, _>(tenant_id)
            .bind::<diesel::sql_types::Date, _>(month)
            .bind::<Double, _>(amount)
            .execute(conn)
            .await?;
            if reserved == 0 {
                // Undoes the evaluation's reservation with the transaction.
                return Err(diesel::result::Error::RollbackTransaction);
            }
        }
        Ok(Ok(()))
    })
    .await
    .or_else(|error| match error {
        diesel::result::Error::RollbackTransaction => Ok(Err(CancelReason::TenantBudget)),
        other => Err(other),
    })
}

/// Swaps `reserved` dollars of reservations for `spent` dollars of cost.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    reserved: f64,
    spent: f64,
    tenant_budget: bool,
) -> QueryResult<()> {
    let delta = spent - reserved;
    if delta == 0.0 {
        return Ok(());
    }
    conn.transaction(async |conn| {
        diesel::update(
            evaluations::table
                .filter(evaluations::tenant_id.eq(tenant_id))
                .filter(evaluations::id.eq(evaluation_id)),
        )
        .set(evaluations::committed_usd.eq(evaluations::committed_usd + delta))
        .execute(conn)
        .await?;
        if tenant_budget {
            diesel::update(
                tenant_spend::table
                    .filter(tenant_spend::tenant_id.eq(tenant_id))
                    .filter(tenant_spend::month.eq(month_of(Utc::now()))),
            )
            .set(tenant_spend::committed_usd.eq(tenant_spend::committed_usd + delta))
            .execute(conn)
            .await?;
        }
        Ok(())
    })
    .await
}

/// Spend against budgets over every tenant, for the `assay_budget_*` gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetUse {
    /// Summed over the entities that have a budget.
    pub spent_usd: f64,
    pub limit_usd: f64,
    /// The highest spent / limit of any one of them (0 when none).
    pub max_ratio: f64,
}

#[derive(QueryableByName)]
struct UseRow {
    #[diesel(sql_type = Nullable<Double>)]
    spent: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    budget: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    max_ratio: Option<f64>,
}

impl From<UseRow> for BudgetUse {
    fn from(row: UseRow) -> Self {
        Self {
            spent_usd: row.spent.unwrap_or(0.0),
            limit_usd: row.budget.unwrap_or(0.0),
            max_ratio: row.max_ratio.unwrap_or(0.0),
        }
    }
}

/// (unfinished evaluations with a budget, tenants with a budget this month).
/// Cross-tenant on purpose: these are operator gauges without tenant labels.
pub async fn usage(conn: &mut AsyncPgConnection) -> QueryResult<(BudgetUse, BudgetUse)> {
    let evaluations: UseRow = diesel::sql_query(
        "SELECT sum(committed_usd) AS spent, sum(max_cost_usd) AS budget,
                max(CASE WHEN max_cost_usd > 0 THEN committed_usd / max_cost_usd ELSE 1 END) AS max_ratio
         FROM evaluations
         WHERE status IN ('queued', 'running') AND max_cost_usd IS NOT NULL",
    )
    .get_result(conn)
    .await?;
    let tenants: UseRow = diesel::sql_query(
        "SELECT sum(coalesce(s.committed_usd, 0)) AS spent, sum(b.monthly_usd) AS budget,
                max(CASE WHEN b.monthly_usd > 0 THEN coalesce(s.committed_usd, 0) / b.monthly_usd ELSE 1 END) AS max_ratio
         FROM tenant_budgets b
         LEFT JOIN tenant_spend s ON s.tenant_id = b.tenant_id AND s.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
    )
    .get_result(conn)
    .await?;
    Ok((evaluations.into(), tenants.into()))
}
