//! Evaluations: submit, poll, page through results.

use actix_web::{HttpResponse, web};
use std::sync::Arc;

use assay_core::budget;
use assay_core::db::models::chunks::Planning;
use assay_core::db::models::evaluations::{
    self, CancelReason, Evaluation, EvaluationStatus, NewEvaluation,
};
use assay_core::db::models::lifecycle::{self, Reopen, ReopenRefused};
use assay_core::db::models::prompts::{Pointer, ResolveError};
use assay_core::db::models::results::{self, EvaluationResult, ResultCursor};
use assay_core::db::models::{budgets, chunks};
use assay_core::db::models::{datasets, prompts};
use assay_core::domain::{EvaluationRequest, PromptChoice, validate_graders, validate_threshold};
use assay_core::ids::{DatasetId, EvaluationId, PromptId, TenantId, VersionId};
use assay_core::submit::{self, OnPushFailure, SubmitError};
use assay_core::templates::PromptTemplate;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::rate_limit::TenantRequestLimits;
use crate::request_id::RequestId;
use crate::startup::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Counts {
    total: i32,
    completed: i32,
    passed: i32,
    failed: i32,
    errored: i32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EvaluationBody {
    id: EvaluationId,
    status: EvaluationStatus,
    prompt_version_id: VersionId,
    /// How the request named its prompt (label or branch) and what that
    /// resolved to at submission.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_ref: Option<Value>,
    dataset_id: DatasetId,
    models: Value,
    graders: Value,
    params: Value,
    repeat: i32,
    threshold: Option<f64>,
    /// Whether deterministic calls may be answered from the response cache.
    cache: bool,
    priority: String,
    /// 1, then one more per resume or retry-errors.
    run: i32,
    /// For a re-grading: the evaluation whose outputs it grades.
    source_evaluation_id: Option<EvaluationId>,
    counts: Counts,
    /// The evaluation's chunks by state (single-evaluation reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<chunks::ChunkCounts>,
    /// The prompt its version belongs to (single-evaluation reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_id: Option<PromptId>,
    summary: Option<Value>,
    error: Option<String>,
    /// What it may spend (None: no cap of its own).
    max_cost_usd: Option<f64>,
    /// Spent by its calls plus what calls in flight have reserved.
    committed_usd: f64,
    /// The estimate made at submission, when it had a budget.
    cost_estimate: Option<Value>,
    /// For a canceled evaluation: user, budget or tenant_budget.
    cancel_reason: Option<String>,
    /// The `X-Request-Id` of the request that submitted it.
    request_id: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// The evaluation's own webhook with its signing secret: only in the
    /// 202 of a submission with `webhook_url` (the secret is not shown again).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<super::webhooks::CreatedWebhook>,
}

impl From<Evaluation> for EvaluationBody {
    fn from(evaluation: Evaluation) -> Self {
        Self {
            id: evaluation.id,
            status: evaluation.status,
            prompt_version_id: evaluation.prompt_version_id,
            prompt_ref: evaluation.prompt_ref,
            dataset_id: evaluation.dataset_id,
            models: evaluation.models,
            graders: evaluation.graders,
            params: evaluation.params,
            repeat: evaluation.repeats,
            threshold: evaluation.threshold,
            cache: evaluation.use_cache,
            priority: evaluation.priority,
            run: evaluation.run,
            source_evaluation_id: evaluation.source_evaluation_id,
            counts: Counts {
                total: evaluation.total,
                completed: evaluation.completed,
                passed: evaluation.passed,
                failed: evaluation.failed,
                errored: evaluation.errored,
            },
            chunks: None,
            prompt_id: None,
            summary: evaluation.summary,
            error: evaluation.error,
            max_cost_usd: evaluation.max_cost_usd,
            committed_usd: evaluation.committed_usd,
            cost_estimate: evaluation.cost_estimate,
            cancel_reason: evaluation.cancel_reason,
            request_id: evaluation.request_id,
            created_at: evaluation.created_at,
            started_at: evaluation.started_at,
            finished_at: evaluation.finished_at,
            webhook: None,
        }
    }
}

/// `POST /v1/evaluations`: validates everything, estimates the cost when a
/// budget applies (refusing with 422 `over_budget` before anything is
/// written when its lower bound passes one), then records and queues the
/// evaluation.
#[utoipa::path(
    post,
    operation_id = "evaluations.create",
    path = "/v1/evaluations",
    tag = "evaluations",
    request_body = EvaluationRequest,
    responses(
        (status = 202, description = "Queued", body = EvaluationBody, headers(("Location" = String, description = "The new resource"))),
        (status = 404, description = "The prompt, version or dataset does not exist"),
        (status = 409, description = "Conflicts with the current state"),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request_id: RequestId,
    TenantRequestLimits(limits): TenantRequestLimits,
    body: Json<EvaluationRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    if let Some(url) = &request.webhook_url {
        assay_core::webhooks::validate_url("webhook_url", url)?;
    }
    let webhook_url = request.webhook_url.clone();
    let choice = request.prompt_choice()?;
    let mut conn = state.pool.get().await?;
    let (version, prompt_ref) = resolve_prompt(&mut conn, caller.tenant_id, choice).await?;
    let dataset = datasets::get(&mut conn, caller.tenant_id, request.dataset_id)
        .await?
        .ok_or_else(|| ApiError::invalid("dataset_id", "no such dataset"))?;
    let content = version.content().map_err(|error| {
        ApiError::Internal(anyhow::anyhow!(
            "stored prompt version does not parse: {error}"
        ))
    })?;
    let graders = request.validate(&state.catalog, &content, &dataset.shape())?;
    let repeats = request.repeat.unwrap_or(1);
    let total = i64::from(dataset.item_count) * request.models.len() as i64 * i64::from(repeats);
    let total = i32::try_from(total).map_err(|_| {
        ApiError::invalid(
            "models",
            "items x models x repeat is larger than one evaluation may be",
        )
    })?;
    if i64::from(total) > limits.max_runs_per_evaluation {
        metrics::counter!("assay_quota_refusals_total", "quota" => "runs_per_evaluation")
            .increment(1);
        return Err(ApiError::RunsQuotaExceeded(format!(
            "this evaluation has {total} runs (items x models x repeat); the tenant's quota is {} per evaluation",
            limits.max_runs_per_evaluation
        )));
    }
    let tenant_budget = budgets::tenant_budget(&mut conn, caller.tenant_id).await?;
    let template = Arc::new(
        PromptTemplate::compile(&content.messages)
            .map_err(|error| ApiError::invalid("prompt_version_id", error.to_string()))?,
    );
    trial_render(&mut conn, &caller, &dataset, &template).await?;
    let cost_estimate = if request.max_cost_usd.is_some() || tenant_budget.is_some() {
        let models = request
            .models
            .iter()
            .map(|name| state.catalog.resolve(name))
            .collect::<Result<Vec<_>, _>>()?;
        let estimated = budget::estimate_evaluation(
            &mut conn,
            budget::EstimateInput {
                tenant_id: caller.tenant_id,
                dataset_id: dataset.id,
                item_count: dataset.item_count,
                template,
                models,
                params: content
                    .params
                    .merged_with(&request.params.clone().unwrap_or_default()),
                repeats,
                max_items: state.estimate_max_items,
            },
        )
        .await?;
        check_budgets(
            &mut conn,
            &caller,
            &estimated,
            request.max_cost_usd,
            tenant_budget,
        )
        .await?;
        Some(serde_json::to_value(&estimated.estimate).expect("estimate serializes"))
    } else {
        None
    };
    let new = NewEvaluation {
        id: EvaluationId::now_v7(),
        tenant_id: caller.tenant_id,
        prompt_version_id: version.id,
        dataset_id: dataset.id,
        models: serde_json::json!(request.models),
        graders: serde_json::to_value(&graders).expect("graders serialize"),
        params: serde_json::to_value(request.params.unwrap_or_default()).expect("params serialize"),
        total,
        repeats: i32::try_from(repeats).expect("validated"),
        threshold: request.threshold,
        source_evaluation_id: None,
        use_cache: request.cache.unwrap_or(true),
        priority: request.priority.unwrap_or_default().as_str().to_owned(),
        prompt_ref,
        max_cost_usd: request.max_cost_usd,
        cost_estimate,
        request_id: Some(request_id.0),
    };
    drop(conn);
    enqueue(
        &state,
        &caller,
        new,
        dataset.item_count,
        limits.max_active_evaluations,
        webhook_url.as_deref(),
    )
    .await
}

/// The version a request names, resolved now (a label moved later does not
/// change it), and how it was named when not by id.
async fn resolve_prompt(
    conn: &mut diesel_async::AsyncPgConnection,
    tenant_id: TenantId,
    choice: PromptChoice,
) -> Result<(prompts::PromptVersion, Option<Value>), ApiError> {
    let (prompt, pointer) = match &choice {
        PromptChoice::Version(id) => {
            let version = prompts::get_version_by_id(conn, tenant_id, *id)
                .await?
                .ok_or_else(|| ApiError::invalid("prompt_version_id", "no such prompt version"))?;
            return Ok((version, None));
        }
        PromptChoice::Label { prompt, label } => (prompt, Pointer::Label(label)),
        PromptChoice::Branch { prompt, branch } => (prompt, Pointer::Branch(branch)),
    };
    let prompt = prompts::find(conn, tenant_id, prompt)
        .await?
        .ok_or_else(|| ApiError::invalid("prompt", "no such prompt"))?;
    let version = prompts::resolve(conn, tenant_id, prompt.id, pointer)
        .await
        .map_err(|error| match error {
            ResolveError::NoLabel(name) => {
                ApiError::invalid("label", format!("the prompt has no label {name:?}"))
            }
            ResolveError::NoBranch(name) => {
                ApiError::invalid("branch", format!("the prompt has no branch {name:?}"))
            }
            ResolveError::EmptyBranch(name) => {
                ApiError::invalid("branch", format!("branch {name:?} has no version yet"))
            }
            ResolveError::Database(error) => error.into(),
        })?;
    let reference = match pointer {
        Pointer::Label(label) => {
            serde_json::json!({ "prompt_id": prompt.id, "label": label, "version": version.version })
        }
        Pointer::Branch(branch) => {
            serde_json::json!({ "prompt_id": prompt.id, "branch": branch, "version": version.version })
        }
    };
    Ok((version, Some(reference)))
}

/// Items rendered at submission to catch a template that passes the render
/// limits before any worker meets it.
const TRIAL_ITEMS: i32 = 20;

/// Renders the prompt for the dataset's first items (off the async
/// runtime): one that passes a render limit is refused with 422, so a
/// template bomb never reaches the queue. Other render errors (a variable
/// an item lacks) stay per-item errors at run time.
async fn trial_render(
    conn: &mut diesel_async::AsyncPgConnection,
    caller: &assay_core::db::models::api_keys::Caller,
    dataset: &datasets::Dataset,
    template: &Arc<PromptTemplate>,
) -> Result<(), ApiError> {
    let items =
        datasets::items_between(conn, caller.tenant_id, dataset.id, 0, TRIAL_ITEMS - 1).await?;
    let template = Arc::clone(template);
    let over_limit = tokio::task::spawn_blocking(move || {
        items.iter().find_map(|item| {
            let error = template.render(&item.template_context()).err()?;
            error.limit().map(|_| (item.position, error))
        })
    })
    .await
    .map_err(|error| ApiError::Internal(error.into()))?;
    match over_limit {
        None => Ok(()),
        Some((position, error)) => {
            metrics::counter!("assay_template_limit_refusals_total").increment(1);
            Err(ApiError::invalid(
                format!("messages[{}].content", error.index()),
                format!("rendering dataset item {position}: {error}"),
            ))
        }
    }
}

/// Refuses an evaluation whose estimate's lower bound passes its own budget
/// or what is left of its tenant's monthly budget.
async fn check_budgets(
    conn: &mut diesel_async::AsyncPgConnection,
    caller: &assay_core::db::models::api_keys::Caller,
    estimated: &budget::Estimated,
    max_cost_usd: Option<f64>,
    tenant_budget: Option<f64>,
) -> Result<(), ApiError> {
    let refuse = |scope: &'static str, message: String| {
        metrics::counter!("assay_budget_refusals_total", "scope" => scope).increment(1);
        Err(ApiError::OverBudget(message))
    };
    let estimate = &estimated.estimate;
    // Only the items rendered count towards a refusal: a scaled-up sample
    // is an estimate, not a bound.
    let low = estimated.certain_low_usd;
    let rendered = match estimate.sampled_items {
        Some(items) => format!(" of the first {items} items"),
        None => String::new(),
    };
    if let Some(max) = max_cost_usd
        && low > max
    {
        return refuse(
            "evaluation",
            format!(
                "the cost estimate's lower bound{rendered}, ${low:.6} ({} calls, {} input tokens, outputs not counted), exceeds max_cost_usd ${max:.6}; expected about ${:.6}",
                estimate.calls, estimate.input_tokens, estimate.expected_usd
            ),
        );
    }
    if let Some(monthly) = tenant_budget {
        let spent = budgets::tenant_spent(conn, caller.tenant_id).await?;
        let left = (monthly - spent).max(0.0);
        if low > left {
            return refuse(
                "tenant",
                format!(
                    "the cost estimate's lower bound{rendered}, ${low:.6}, exceeds what is left of this tenant's monthly budget: ${left:.6} of ${monthly:.6}",
                ),
            );
        }
    }
    Ok(())
}

/// Writes the evaluation and its plan, then pushes its first chunks, and
/// answers 202 with `Location`.
///
/// The rows are written first so that a job never runs ahead of its record.
/// If the push fails twice, the evaluation is marked failed (nothing
/// half-done is left; it can be resumed once Redis is back) and the answer
/// is 503.
///
/// With `webhook_url`, the evaluation's own webhook is written first (no
/// event of the evaluation can precede it) and removed again if the
/// evaluation could not be recorded.
async fn enqueue(
    state: &AppState,
    caller: &assay_core::db::models::api_keys::Caller,
    new: NewEvaluation,
    items: i32,
    max_active: i64,
    webhook_url: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let webhook = match webhook_url {
        Some(url) => Some(
            super::webhooks::create_for_evaluation(&mut conn, caller.tenant_id, new.id, url)
                .await?,
        ),
        None => None,
    };
    let planning = Planning {
        items,
        runs_per_chunk: state.runs_per_chunk,
    };
    let evaluation = match submit::submit_within_quota(
        &mut conn,
        &state.queue,
        &caller.actor(),
        &new,
        planning,
        OnPushFailure::Fail,
        Some(max_active),
    )
    .await
    {
        Ok(evaluation) => evaluation,
        Err(error @ (SubmitError::Database(_) | SubmitError::TooManyActive { .. })) => {
            if let Some(webhook) = &webhook {
                // Best effort: an orphan row would never be sent anything.
                let _ = assay_core::db::models::webhooks::forget_unused(
                    &mut conn,
                    caller.tenant_id,
                    webhook.id(),
                )
                .await;
            }
            return Err(match error {
                SubmitError::TooManyActive { active, limit } => {
                    metrics::counter!("assay_quota_refusals_total", "quota" => "active_evaluations")
                        .increment(1);
                    ApiError::ActiveEvaluationsQuotaExceeded(format!(
                        "the tenant already has {active} evaluations queued or running; its quota is {limit} at once: wait for one to finish (or cancel one)"
                    ))
                }
                SubmitError::Database(error) => error.into(),
                _ => unreachable!("matched above"),
            });
        }
        Err(SubmitError::QueueUnavailable(id)) => {
            return Err(ApiError::Unavailable(format!(
                "the job queue is unavailable; evaluation {id} was recorded as failed: resume it (POST /v1/evaluations/{id}/resume) once the queue is back"
            )));
        }
    };
    let mut body = EvaluationBody::from(evaluation);
    body.webhook = webhook;
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/evaluations/{}", body.id)))
        .json(body))
}

/// `POST /v1/evaluations/{id}/cancel`: no new LLM calls within seconds;
/// what was written is kept.
#[utoipa::path(
    post,
    operation_id = "evaluations.cancel",
    path = "/v1/evaluations/{evaluation_id}/cancel",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 200, description = "Canceled (or already finished)", body = EvaluationBody),
        (status = 409, description = "It cannot be canceled now"),
    ),
)]
pub async fn cancel(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let canceled = lifecycle::cancel(
        &mut conn,
        caller.tenant_id,
        *path,
        &caller.actor(),
        CancelReason::User,
    )
    .await?;
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    if !canceled {
        return Err(ApiError::Conflict(format!(
            "only a queued or running evaluation can be canceled; this one is {}",
            evaluation.status
        )));
    }
    metrics::counter!("assay_evaluations_canceled_total").increment(1);
    Ok(HttpResponse::Ok().json(EvaluationBody::from(evaluation)))
}

/// `POST /v1/evaluations/{id}/resume`: a failed or canceled evaluation
/// finishes only what is missing.
#[utoipa::path(
    post,
    operation_id = "evaluations.resume",
    path = "/v1/evaluations/{evaluation_id}/resume",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 202, description = "Queued again: runs what is missing", body = EvaluationBody, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "It is not canceled or failed"),
    ),
)]
pub async fn resume(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    reopen(&state, &caller, *path, Reopen::Resume).await
}

/// `POST /v1/evaluations/{id}/retry-errors`: a finished evaluation runs its
/// errored results again (and anything missing), as its next run.
#[utoipa::path(
    post,
    operation_id = "evaluations.retry_errors",
    path = "/v1/evaluations/{evaluation_id}/retry-errors",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 202, description = "Queued again: re-runs errored results", body = EvaluationBody, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "It has not finished, or has no errored results"),
    ),
)]
pub async fn retry_errors(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    reopen(&state, &caller, *path, Reopen::RetryErrors).await
}

async fn reopen(
    state: &AppState,
    caller: &assay_core::db::models::api_keys::Caller,
    id: EvaluationId,
    how: Reopen,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let (evaluation, pushes) =
        match lifecycle::reopen(&mut conn, caller.tenant_id, id, &caller.actor(), how).await? {
            Ok(reopened) => reopened,
            Err(ReopenRefused::NotFound) => return Err(ApiError::NotFound("evaluation")),
            Err(ReopenRefused::Status(status)) => {
                let allowed = match how {
                    Reopen::Resume => "a failed or canceled evaluation",
                    Reopen::RetryErrors => "a succeeded, failed or canceled evaluation",
                };
                return Err(ApiError::Conflict(format!(
                    "only {allowed} can be {}; this one is {status}",
                    match how {
                        Reopen::Resume => "resumed",
                        Reopen::RetryErrors => "retried",
                    }
                )));
            }
            Err(ReopenRefused::NothingToRetry) => {
                return Err(ApiError::Conflict(
                    "this evaluation has no errored results to retry".to_owned(),
                ));
            }
        };
    // If this push is lost, the rows say what is queued and the sweeper pushes it.
    if let Err(error) = state.queue.push(&pushes).await {
        metrics::counter!("assay_queue_push_failures_total").increment(1);
        tracing::warn!(evaluation.id = %id, error = format!("{error:#}"), "push after reopening failed; the sweeper will push it");
    }
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/evaluations/{id}")))
        .json(EvaluationBody::from(evaluation)))
}

/// `POST /v1/evaluations/{id}/regrade` body: a new grader set (and item threshold).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegradeRequest {
    graders: Vec<Value>,
    #[serde(default)]
    threshold: Option<f64>,
}

/// Re-grades a succeeded evaluation's stored outputs with a new grader set,
/// as a new evaluation whose job calls no generating model (judges aside).
#[utoipa::path(
    post,
    operation_id = "evaluations.regrade",
    path = "/v1/evaluations/{evaluation_id}/regrade",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    request_body = RegradeRequest,
    responses(
        (status = 202, description = "A new evaluation grading the same outputs", body = EvaluationBody, headers(("Location" = String, description = "The new resource"))),
        (status = 409, description = "The source has not succeeded"),
    ),
)]
pub async fn regrade(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request_id: RequestId,
    TenantRequestLimits(limits): TenantRequestLimits,
    path: web::Path<EvaluationId>,
    body: Json<RegradeRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut conn = state.pool.get().await?;
    let source = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    if source.status != EvaluationStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "only a succeeded evaluation can be re-graded; this one is {}",
            source.status
        )));
    }
    let dataset = datasets::get(&mut conn, caller.tenant_id, source.dataset_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the evaluation's dataset is gone")))?;
    validate_threshold(body.threshold)?;
    let graders = validate_graders(&state.catalog, &body.graders, &dataset.shape())?;
    let new = NewEvaluation {
        id: EvaluationId::now_v7(),
        tenant_id: caller.tenant_id,
        prompt_version_id: source.prompt_version_id,
        dataset_id: source.dataset_id,
        models: source.models.clone(),
        graders: serde_json::to_value(&graders).expect("graders serialize"),
        params: source.params.clone(),
        total: source.total,
        repeats: source.repeats,
        threshold: body.threshold,
        source_evaluation_id: Some(source.id),
        use_cache: source.use_cache,
        priority: source.priority.clone(),
        prompt_ref: source.prompt_ref.clone(),
        // A re-grading's judge calls count against the tenant's budget only.
        max_cost_usd: None,
        cost_estimate: None,
        request_id: Some(request_id.0),
    };
    drop(conn);
    enqueue(
        &state,
        &caller,
        new,
        dataset.item_count,
        limits.max_active_evaluations,
        None,
    )
    .await
}

#[utoipa::path(
    get,
    operation_id = "evaluations.get",
    path = "/v1/evaluations/{evaluation_id}",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 200, description = "The evaluation, with `chunks` and `prompt_id`", body = EvaluationBody),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    let chunks = chunks::counts(&mut conn, caller.tenant_id, *path).await?;
    let version =
        prompts::get_version_by_id(&mut conn, caller.tenant_id, evaluation.prompt_version_id)
            .await?;
    let mut body = EvaluationBody::from(evaluation);
    body.chunks = Some(chunks);
    body.prompt_id = version.map(|version| version.prompt_id);
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    get,
    operation_id = "evaluations.list",
    path = "/v1/evaluations",
    tag = "evaluations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of evaluations, newest first", body = PageBody<EvaluationBody>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    let page = evaluations::list(&mut conn, caller.tenant_id, query.after_id()?, limit).await?;
    let body = PageBody::new(page, |evaluation| evaluation.id.to_string());
    Ok(HttpResponse::Ok().json(PageBody {
        data: body.data.into_iter().map(EvaluationBody::from).collect(),
        has_more: body.has_more,
        next_after: body.next_after,
    }))
}

/// `GET /v1/evaluations/{id}/results`: one page in (position, model,
/// repeat) order, narrowed by the filters of [`ResultsQuery`].
#[utoipa::path(
    get,
    operation_id = "evaluations.results",
    path = "/v1/evaluations/{evaluation_id}/results",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id"), ResultsQuery),
    responses(
        (status = 200, description = "A page of results in (position, model, repeat) order", body = PageBody<ResultWithVars>),
    ),
)]
pub async fn results(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
    query: web::Query<ResultsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = PageQuery {
        after: None,
        limit: query.limit,
    }
    .limit()?;
    let after = query
        .after
        .as_deref()
        .map(|after| {
            ResultCursor::decode(after).ok_or_else(|| {
                ApiError::InvalidQuery("after must be a next_after from a previous page".to_owned())
            })
        })
        .transpose()?;
    let filter = query.filter()?;
    let mut conn = state.pool.get().await?;
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    let page = results::page_filtered(
        &mut conn,
        caller.tenant_id,
        evaluation.id,
        evaluation.dataset_id,
        &filter,
        after.as_ref(),
        limit,
    )
    .await?;
    let body = PageBody::new(page, |result: &EvaluationResult| {
        ResultCursor {
            position: result.item_position,
            model: result.model.clone(),
            repeat: result.repeat_index,
        }
        .encode()
    });
    if !query.vars.unwrap_or(false) {
        return Ok(HttpResponse::Ok().json(body));
    }
    let mut positions: Vec<i32> = body.data.iter().map(|row| row.item_position).collect();
    positions.dedup();
    let vars = results::item_vars(
        &mut conn,
        caller.tenant_id,
        evaluation.dataset_id,
        &positions,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody {
        data: body
            .data
            .into_iter()
            .map(|result| {
                let vars = vars.get(&result.item_position).cloned();
                ResultWithVars { result, vars }
            })
            .collect(),
        has_more: body.has_more,
        next_after: body.next_after,
    }))
}

/// A result with its item's variables (`?vars=true`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ResultWithVars {
    #[serde(flatten)]
    result: EvaluationResult,
    vars: Option<Value>,
}

/// Longest `q` accepted: a search term, not a document.
const MAX_SEARCH_CHARS: usize = 200;
/// Most positions in one `positions` filter (a page of a comparison).
const MAX_POSITIONS: usize = 1000;
/// Graders an evaluation may have, at most; larger indexes match nothing anyway.
const MAX_GRADER_INDEX: i32 = 1000;

/// The query of `GET /v1/evaluations/{id}/results`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    after: Option<String>,
    limit: Option<i64>,
    /// Only this model's results.
    model: Option<String>,
    /// `passed`, `failed` or `errored`.
    status: Option<String>,
    /// Only results the evaluation's grader at this index did not pass.
    failed_grader: Option<i32>,
    /// Case-insensitive text in the output or the item's variables.
    q: Option<String>,
    /// Comma-separated item positions.
    positions: Option<String>,
    /// Add each result's item variables (`vars`).
    vars: Option<bool>,
}

impl ResultsQuery {
    fn filter(&self) -> Result<results::ResultFilter, ApiError> {
        let status = self
            .status
            .as_deref()
            .map(|status| match status {
                "passed" => Ok(results::ResultStatus::Passed),
                "failed" => Ok(results::ResultStatus::Failed),
                "errored" => Ok(results::ResultStatus::Errored),
                _ => Err(ApiError::InvalidQuery(
                    "status must be passed, failed or errored".to_owned(),
                )),
            })
            .transpose()?;
        if let Some(index) = self.failed_grader
            && !(0..MAX_GRADER_INDEX).contains(&index)
        {
            return Err(ApiError::InvalidQuery(format!(
                "failed_grader must be a grader index from 0 to {}",
                MAX_GRADER_INDEX - 1
            )));
        }
        let text = self
            .q
            .as_deref()
            .map(str::trim)
            .filter(|text| !text.is_empty());
        if let Some(text) = text {
            if text.chars().count() > MAX_SEARCH_CHARS {
                return Err(ApiError::InvalidQuery(format!(
                    "q must be at most {MAX_SEARCH_CHARS} characters"
                )));
            }
            if text.contains('\0') {
                return Err(ApiError::InvalidQuery("q must not contain NUL".to_owned()));
            }
        }
        let positions = self
            .positions
            .as_deref()
            .map(|positions| {
                let parsed = positions
                    .split(',')
                    .map(|position| position.trim().parse::<i32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        ApiError::InvalidQuery(
                            "positions must be item positions separated by commas".to_owned(),
                        )
                    })?;
                if parsed.len() > MAX_POSITIONS {
                    return Err(ApiError::InvalidQuery(format!(
                        "positions holds at most {MAX_POSITIONS} positions"
                    )));
                }
                Ok(parsed)
            })
            .transpose()?;
        Ok(results::ResultFilter {
            model: self.model.clone(),
            status,
            failed_grader: self.failed_grader,
            text: text.map(str::to_owned),
            positions,
        })
    }
}

/// `GET /v1/evaluations/{id}/latency?buckets=20`: per-model counts of
/// answered calls in equal-width latency buckets (one SQL aggregate).
#[utoipa::path(
    get,
    operation_id = "evaluations.latency",
    path = "/v1/evaluations/{evaluation_id}/latency",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id"), LatencyQuery),
    responses(
        (status = 200, description = "Latency histogram per model (null without answered calls)", body = LatencyBody),
    ),
)]
pub async fn latency(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
    query: web::Query<LatencyQuery>,
) -> Result<HttpResponse, ApiError> {
    let buckets = query.buckets.unwrap_or(20);
    if !(1..=100).contains(&buckets) {
        return Err(ApiError::InvalidQuery(
            "buckets must be between 1 and 100".to_owned(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    let histogram =
        results::latency_histogram(&mut conn, caller.tenant_id, evaluation.id, buckets).await?;
    Ok(HttpResponse::Ok().json(LatencyBody { histogram }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LatencyQuery {
    buckets: Option<i32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LatencyBody {
    /// Null when no call was answered yet.
    histogram: Option<results::LatencyHistogram>,
}
