//! Promotions: `POST /v1/prompts/{id}/promotions` records one and queues its
//! job; `GET /v1/promotions/{id}` shows its status and evidence;
//! `POST /v1/promotions/{id}/cancel` stops it and its evaluations. The
//! decision is the worker's ([`assay_core::versioning::promotion`]).

use actix_web::{HttpResponse, web};
use assay_core::db::models::labels;
use assay_core::db::models::promotions::{self, NewPromotion};
use assay_core::db::models::prompts::{self, VersionRef};
use assay_core::db::models::{datasets, events};
use assay_core::domain::ModelParams;
use assay_core::ids::{DatasetId, PromptId, TenantId};
use assay_core::queue::{VersioningJob, VersioningKind};
use assay_core::versioning::{EvaluationSetup, Policy};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::request_id::RequestId;
use crate::startup::AppState;
use assay_core::db::models::promotions::Promotion;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionRequest {
    /// The version to promote (number or id).
    #[schema(value_type = super::openapi::VersionRefSchema)]
    candidate: VersionRef,
    /// The label to move; it must exist (its version is the baseline).
    label: String,
    dataset_id: DatasetId,
    models: Vec<String>,
    graders: Vec<Value>,
    #[serde(default)]
    params: Option<ModelParams>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    threshold: Option<f64>,
    policy: Policy,
}

/// Checks a setup for a version on the setup's dataset, as an evaluation
/// submission would; returns it normalized, with the dataset.
pub(crate) async fn check_setup(
    state: &AppState,
    conn: &mut diesel_async::AsyncPgConnection,
    tenant_id: TenantId,
    setup: &EvaluationSetup,
    versions: &[&prompts::PromptVersion],
) -> Result<(EvaluationSetup, datasets::Dataset), ApiError> {
    let dataset = datasets::get(conn, tenant_id, setup.dataset_id)
        .await?
        .ok_or_else(|| ApiError::invalid("dataset_id", "no such dataset"))?;
    let mut normalized = None;
    for version in versions {
        let content = version.content().map_err(|error| {
            ApiError::Internal(anyhow::anyhow!(
                "stored prompt version does not parse: {error}"
            ))
        })?;
        normalized = Some(setup.validate(&state.catalog, &content, &dataset.shape())?);
    }
    Ok((normalized.expect("at least one version"), dataset))
}

/// `POST /v1/prompts/{id}/promotions` → 202 with the promotion.
#[utoipa::path(
    post,
    operation_id = "promotions.create",
    path = "/v1/prompts/{prompt_id}/promotions",
    tag = "automation",
    params(("prompt_id" = Uuid, Path, description = "Prompt id")),
    request_body = PromotionRequest,
    responses(
        (status = 202, description = "Queued: evaluates the candidate against the label's version, then moves the label if the policy passes", body = Promotion, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "A promotion of this label is running"),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request_id: RequestId,
    path: web::Path<PromptId>,
    body: Json<PromotionRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let prompt_id = *path;
    labels::validate_name("label", &request.label)?;
    request.policy.validate()?;
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, prompt_id)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let candidate = prompts::get_version(&mut conn, caller.tenant_id, prompt_id, request.candidate)
        .await?
        .ok_or_else(|| ApiError::invalid("candidate", "no such version of this prompt"))?;
    let label = labels::get(&mut conn, caller.tenant_id, prompt_id, &request.label)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                "label",
                "the prompt has no such label: the label's current version is the baseline, so set it first",
            )
        })?;
    if label.version_id == candidate.id {
        return Err(ApiError::Conflict(format!(
            "label {:?} names the candidate already",
            request.label
        )));
    }
    let baseline = prompts::get_version_by_id(&mut conn, caller.tenant_id, label.version_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a label names a missing version")))?;
    let setup = EvaluationSetup {
        dataset_id: request.dataset_id,
        models: request.models,
        graders: request.graders,
        params: request.params,
        repeat: request.repeat,
        threshold: request.threshold,
    };
    let (setup, _) = check_setup(
        &state,
        &mut conn,
        caller.tenant_id,
        &setup,
        &[&baseline, &candidate],
    )
    .await?;
    let job_id = Uuid::now_v7();
    let promotion = promotions::create(
        &mut conn,
        &caller.actor(),
        &NewPromotion {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            prompt_id,
            label: request.label,
            candidate_version_id: candidate.id,
            baseline_version_id: baseline.id,
            setup: serde_json::to_value(&setup).expect("setup serializes"),
            policy: serde_json::to_value(&request.policy).expect("policy serializes"),
            optimization_id: None,
            job_id: Some(job_id),
            request_id: Some(request_id.0),
        },
    )
    .await?;
    push(
        &state,
        VersioningKind::Promotion,
        caller.tenant_id,
        promotion.id,
        job_id,
    )
    .await;
    metrics::counter!("assay_promotions_submitted_total").increment(1);
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/promotions/{}", promotion.id)))
        .json(promotion))
}

/// Pushes a versioning job; a failed push is logged only, since the row is
/// the record and the sweeper pushes unfinished rows whose push is gone.
pub(crate) async fn push(
    state: &AppState,
    kind: VersioningKind,
    tenant_id: TenantId,
    id: Uuid,
    job_id: Uuid,
) {
    if let Err(error) = state
        .queue
        .push_versioning(kind, &VersioningJob::new(tenant_id, id), job_id)
        .await
    {
        metrics::counter!("assay_queue_push_failures_total").increment(1);
        tracing::warn!(job.id = %id, kind = kind.as_str(), error = format!("{error:#}"), "push failed; the sweeper will push it");
    }
}

/// `GET /v1/promotions/{id}`: status, evaluations, comparison, reason, events.
#[utoipa::path(
    get,
    operation_id = "promotions.get",
    path = "/v1/promotions/{promotion_id}",
    tag = "automation",
    params(("promotion_id" = Uuid, Path, description = "Promotion id")),
    responses(
        (status = 200, description = "The promotion, with its `events`", body = Promotion),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let promotion = promotions::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("promotion"))?;
    let events = events::for_resource(&mut conn, caller.tenant_id, promotion.id).await?;
    let mut body = serde_json::to_value(&promotion).expect("promotion serializes");
    body["events"] = serde_json::to_value(events).expect("events serialize");
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /v1/promotions/{id}/cancel`.
#[utoipa::path(
    post,
    operation_id = "promotions.cancel",
    path = "/v1/promotions/{promotion_id}/cancel",
    tag = "automation",
    params(("promotion_id" = Uuid, Path, description = "Promotion id")),
    responses(
        (status = 200, description = "Canceled", body = Promotion),
        (status = 409, description = "It has finished"),
    ),
)]
pub async fn cancel(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let canceled = assay_core::versioning::promotion::cancel(
        &mut conn,
        caller.tenant_id,
        *path,
        &caller.actor(),
    )
    .await
    .map_err(ApiError::Internal)?;
    let promotion = promotions::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("promotion"))?;
    if !canceled {
        return Err(ApiError::Conflict(format!(
            "only a queued or evaluating promotion can be canceled; this one is {}",
            promotion.status
        )));
    }
    Ok(HttpResponse::Ok().json(promotion))
}
