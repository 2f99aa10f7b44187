//! Optimizations: `POST /v1/prompts/{id}/optimizations` records one and
//! queues its job; `GET /v1/optimizations/{id}` shows its rounds, every
//! candidate and the winner's comparison with the parent;
//! `POST /v1/optimizations/{id}/cancel` stops it and its evaluations.

use actix_web::{HttpResponse, web};
use assay_core::db::models::optimizations::{self, NewOptimization};
use assay_core::db::models::prompts::{self, VersionRef};
use assay_core::db::models::{events, labels};
use assay_core::domain::ModelParams;
use assay_core::ids::{DatasetId, PromptId};
use assay_core::queue::VersioningKind;
use assay_core::versioning::optimization::{MAX_ITEMS, StoredSetup};
use assay_core::versioning::{EvaluationSetup, Policy};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::promotions::{check_setup, push};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::request_id::RequestId;
use crate::startup::AppState;
use assay_core::db::models::optimizations::Optimization;

/// Bounds of what one optimization may ask for.
pub const MAX_CANDIDATES: u32 = 8;
pub const MAX_ROUNDS: u32 = 5;
pub const MAX_BUDGET_USD: f64 = 10_000.0;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizationRequest {
    /// The version to start from (number or id).
    #[schema(value_type = super::openapi::VersionRefSchema)]
    from: VersionRef,
    dataset_id: DatasetId,
    models: Vec<String>,
    graders: Vec<Value>,
    #[serde(default)]
    params: Option<ModelParams>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    threshold: Option<f64>,
    /// Any model of the registry (or the mock).
    optimizer_model: String,
    /// Proposals per round (1 to 8).
    candidates: u32,
    /// Rounds (1 to 5).
    #[serde(default = "one")]
    rounds: u32,
    /// Share of the items (by a seeded draw per item) kept for validation.
    #[serde(default = "half")]
    validation_split: f64,
    #[serde(default)]
    seed: u32,
    /// Everything counts: generation, grading and optimizer calls.
    max_cost_usd: f64,
    /// A label to promote the winner to, by a promotion job with `promote_policy`.
    #[serde(default)]
    promote_to: Option<String>,
    #[serde(default)]
    promote_policy: Option<Policy>,
}

fn one() -> u32 {
    1
}

fn half() -> f64 {
    0.5
}

/// `POST /v1/prompts/{id}/optimizations` → 202 with the optimization.
#[utoipa::path(
    post,
    operation_id = "optimizations.create",
    path = "/v1/prompts/{prompt_id}/optimizations",
    tag = "automation",
    params(("prompt_id" = Uuid, Path, description = "Prompt id")),
    request_body = OptimizationRequest,
    responses(
        (status = 202, description = "Queued", body = Optimization, headers(("Location" = String, description = "The new resource"))),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request_id: RequestId,
    path: web::Path<PromptId>,
    body: Json<OptimizationRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let prompt_id = *path;
    if !(1..=MAX_CANDIDATES).contains(&request.candidates) {
        return Err(ApiError::invalid(
            "candidates",
            format!("must be between 1 and {MAX_CANDIDATES}"),
        ));
    }
    if !(1..=MAX_ROUNDS).contains(&request.rounds) {
        return Err(ApiError::invalid(
            "rounds",
            format!("must be between 1 and {MAX_ROUNDS}"),
        ));
    }
    if !(0.05..=0.95).contains(&request.validation_split) {
        return Err(ApiError::invalid(
            "validation_split",
            "must be between 0.05 and 0.95",
        ));
    }
    if !(request.max_cost_usd.is_finite()
        && request.max_cost_usd > 0.0
        && request.max_cost_usd <= MAX_BUDGET_USD)
    {
        return Err(ApiError::invalid(
            "max_cost_usd",
            format!("must be more than 0 and at most {MAX_BUDGET_USD} US dollars"),
        ));
    }
    state
        .catalog
        .resolve(&request.optimizer_model)
        .map_err(|error| ApiError::invalid("optimizer_model", error.message))?;
    match (&request.promote_to, &request.promote_policy) {
        (Some(label), Some(policy)) => {
            labels::validate_name("promote_to", label)?;
            policy.validate().map_err(|error| {
                ApiError::invalid(format!("promote_{}", error.field), error.message)
            })?;
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "promote_policy",
                "required with promote_to: the promotion's policy",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "promote_to",
                "promote_policy needs a label to promote to",
            ));
        }
        (None, None) => {}
    }
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, prompt_id)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let from = prompts::get_version(&mut conn, caller.tenant_id, prompt_id, request.from)
        .await?
        .ok_or_else(|| ApiError::invalid("from", "no such version of this prompt"))?;
    if let Some(label) = &request.promote_to
        && labels::get(&mut conn, caller.tenant_id, prompt_id, label)
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(
            "promote_to",
            "the prompt has no such label (its version is the promotion's baseline)",
        ));
    }
    let setup = EvaluationSetup {
        dataset_id: request.dataset_id,
        models: request.models,
        graders: request.graders,
        params: request.params,
        repeat: request.repeat,
        threshold: request.threshold,
    };
    let (setup, dataset) =
        check_setup(&state, &mut conn, caller.tenant_id, &setup, &[&from]).await?;
    if !(2..=MAX_ITEMS).contains(&dataset.item_count) {
        return Err(ApiError::invalid(
            "dataset_id",
            format!("an optimization splits its dataset: it needs 2 to {MAX_ITEMS} items"),
        ));
    }
    let job_id = Uuid::now_v7();
    let optimization = optimizations::create(
        &mut conn,
        &caller.actor(),
        &NewOptimization {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            prompt_id,
            from_version_id: from.id,
            current_version_id: from.id,
            setup: serde_json::to_value(StoredSetup {
                evaluation: setup,
                promote_policy: request.promote_policy,
            })
            .expect("setup serializes"),
            optimizer_model: request.optimizer_model,
            candidates: request.candidates as i32,
            rounds: request.rounds as i32,
            validation_split: request.validation_split,
            seed: i64::from(request.seed),
            max_cost_usd: request.max_cost_usd,
            promote_to: request.promote_to,
            job_id: Some(job_id),
            request_id: Some(request_id.0),
        },
    )
    .await?;
    push(
        &state,
        VersioningKind::Optimization,
        caller.tenant_id,
        optimization.id,
        job_id,
    )
    .await;
    metrics::counter!("assay_optimizations_submitted_total").increment(1);
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/optimizations/{}", optimization.id)))
        .json(optimization))
}

/// `GET /v1/optimizations/{id}`: the row, every candidate, what it spent, events.
#[utoipa::path(
    get,
    operation_id = "optimizations.get",
    path = "/v1/optimizations/{optimization_id}",
    tag = "automation",
    params(("optimization_id" = Uuid, Path, description = "Optimization id")),
    responses(
        (status = 200, description = "The optimization, with `branch`, `candidate_list`, `spent_usd` and `events`", body = Optimization),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let optimization = optimizations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("optimization"))?;
    let candidates =
        optimizations::candidates(&mut conn, caller.tenant_id, optimization.id).await?;
    let spent = optimizations::spent(&mut conn, &optimization).await?;
    let events = events::for_resource(&mut conn, caller.tenant_id, optimization.id).await?;
    let mut body = serde_json::to_value(&optimization).expect("optimization serializes");
    body["branch"] = Value::String(optimization.branch());
    body["candidate_list"] = serde_json::to_value(candidates).expect("candidates serialize");
    body["spent_usd"] = serde_json::json!(spent);
    body["events"] = serde_json::to_value(events).expect("events serialize");
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /v1/optimizations/{id}/cancel`.
#[utoipa::path(
    post,
    operation_id = "optimizations.cancel",
    path = "/v1/optimizations/{optimization_id}/cancel",
    tag = "automation",
    params(("optimization_id" = Uuid, Path, description = "Optimization id")),
    responses(
        (status = 200, description = "Canceled", body = Optimization),
        (status = 409, description = "It has finished"),
    ),
)]
pub async fn cancel(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let canceled = assay_core::versioning::optimization::cancel(
        &mut conn,
        caller.tenant_id,
        *path,
        &caller.actor(),
    )
    .await
    .map_err(ApiError::Internal)?;
    let optimization = optimizations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("optimization"))?;
    if !canceled {
        return Err(ApiError::Conflict(format!(
            "only a queued or running optimization can be canceled; this one is {}",
            optimization.status
        )));
    }
    Ok(HttpResponse::Ok().json(optimization))
}
