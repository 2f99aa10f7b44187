//! `GET /v1/limits`: the calling key's request rates and its tenant's
//! quotas as they apply now (the deployment's defaults with the tenant's
//! overrides), so a client can pace itself before it meets a 429.

use actix_web::HttpResponse;
use serde::Serialize;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::rate_limit::TenantRequestLimits;

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RateBody {
    per_minute: u32,
    burst: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LimitsBody {
    reads: RateBody,
    writes: RateBody,
    max_runs_per_evaluation: i64,
    max_active_evaluations: i64,
}

#[utoipa::path(
    get,
    operation_id = "limits.get",
    path = "/v1/limits",
    tag = "tenant",
    responses(
        (status = 200, description = "The request rates and quotas that apply to this key's tenant", body = LimitsBody),
    ),
)]
pub async fn get(
    _caller: Authenticated,
    TenantRequestLimits(limits): TenantRequestLimits,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(LimitsBody {
        reads: RateBody {
            per_minute: limits.reads.per_minute,
            burst: limits.reads.burst,
        },
        writes: RateBody {
            per_minute: limits.writes.per_minute,
            burst: limits.writes.burst,
        },
        max_runs_per_evaluation: limits.max_runs_per_evaluation,
        max_active_evaluations: limits.max_active_evaluations,
    }))
}
