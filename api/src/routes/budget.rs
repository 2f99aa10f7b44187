//! The calling tenant's monthly budget: `GET /v1/budget` and `PUT /v1/budget`.
//!
//! With a budget, every evaluation of the tenant reserves each call's cost
//! against the month's spend; one whose estimate does not fit what is left
//! is refused (422 `over_budget`), and a running one that reaches it is
//! canceled with reason `tenant_budget`. Months are calendar months in UTC.

use actix_web::{HttpResponse, web};
use assay_core::db::models::budgets;
use serde::{Deserialize, Serialize};

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BudgetBody {
    /// None: no monthly budget.
    monthly_usd: Option<f64>,
    /// The month counted, `YYYY-MM`.
    month: String,
    /// Spent this month (plus reservations of calls in flight), when a budget is set.
    spent_usd: Option<f64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Dollars per month; null removes the budget.
    monthly_usd: Option<f64>,
}

#[utoipa::path(
    get,
    operation_id = "budget.get",
    path = "/v1/budget",
    tag = "tenant",
    responses(
        (status = 200, description = "The tenant's monthly budget and what this month used", body = BudgetBody),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let monthly_usd = budgets::tenant_budget(&mut conn, caller.tenant_id).await?;
    let spent_usd = match monthly_usd {
        Some(_) => Some(budgets::tenant_spent(&mut conn, caller.tenant_id).await?),
        None => None,
    };
    Ok(HttpResponse::Ok().json(BudgetBody {
        monthly_usd,
        month: budgets::month_of(chrono::Utc::now())
            .format("%Y-%m")
            .to_string(),
        spent_usd,
    }))
}

#[utoipa::path(
    put,
    operation_id = "budget.put",
    path = "/v1/budget",
    tag = "tenant",
    request_body = SetBudget,
    responses(
        (status = 200, description = "The budget now", body = BudgetBody),
    ),
)]
pub async fn put(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    body: Json<SetBudget>,
) -> Result<HttpResponse, ApiError> {
    if let Some(monthly) = body.monthly_usd
        && !(monthly.is_finite() && monthly >= 0.0)
    {
        return Err(ApiError::invalid(
            "monthly_usd",
            "must be a non-negative number of US dollars, or null to remove the budget",
        ));
    }
    let mut conn = state.pool.get().await?;
    budgets::set_tenant_budget(&mut conn, caller.tenant_id, body.monthly_usd).await?;
    drop(conn);
    get(state, Authenticated(caller)).await
}
