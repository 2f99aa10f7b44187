//! `GET /v1/evaluations/{id}/progress`: what a client following an
//! evaluation shows (the `assay` progress bar): its status and total, and
//! what its results add up to so far, cost included.

use actix_web::{HttpResponse, web};
use assay_core::db::models::{evaluations, results};
use assay_core::ids::EvaluationId;
use serde::Serialize;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ProgressBody {
    id: EvaluationId,
    status: evaluations::EvaluationStatus,
    /// Runs planned (items × models × repeats).
    total: i32,
    #[serde(flatten)]
    progress: results::Progress,
}

#[utoipa::path(
    get,
    operation_id = "progress.progress",
    path = "/v1/evaluations/{evaluation_id}/progress",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 200, description = "Counts so far", body = ProgressBody),
    ),
)]
pub async fn progress(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    let progress = results::progress(&mut conn, caller.tenant_id, evaluation.id).await?;
    Ok(HttpResponse::Ok().json(ProgressBody {
        id: evaluation.id,
        status: evaluation.status,
        total: evaluation.total,
        progress,
    }))
}
