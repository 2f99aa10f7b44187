//! Webhooks of a tenant: create (the signing secret is shown once), list,
//! read, delete, and each one's delivery log. An evaluation's own webhook
//! (`webhook_url` on the submit body) is a webhook too: listed here with its
//! `evaluation_id`, its deliveries in the same log.

use actix_web::{HttpResponse, web};
use assay_core::db::models::webhooks::{self, NewWebhook, Webhook};
use assay_core::ids::{EvaluationId, TenantId};
use assay_core::webhooks::{EVALUATION_EVENTS, generate_secret, validate_events, validate_url};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;
use assay_core::db::models::webhooks::Delivery;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: http or https, at most 2,048 bytes.
    url: String,
    /// Event types to send; omitted: every type.
    #[serde(default)]
    events: Option<Vec<String>>,
}

/// A webhook as created: with its signing secret, which no later read shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    webhook: Webhook,
    secret: String,
}

/// `POST /v1/webhooks`: 201 with the secret.
#[utoipa::path(
    post,
    operation_id = "webhooks.create",
    path = "/v1/webhooks",
    tag = "tenant",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The webhook, with its signing secret (shown once)", body = CreatedWebhook, headers(("Location" = String, description = "The new resource"))),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    body: Json<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate_url("url", &body.url)?;
    if let Some(events) = &body.events {
        validate_events("events", events)?;
    }
    let mut conn = state.pool.get().await?;
    let webhook = webhooks::create(
        &mut conn,
        &NewWebhook {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            url: body.url,
            secret: generate_secret(),
            events: body.events.map(|events| serde_json::json!(events)),
            evaluation_id: None,
        },
    )
    .await?;
    metrics::counter!("assay_webhooks_created_total", "scope" => "tenant").increment(1);
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/webhooks/{}", webhook.id)))
        .json(CreatedWebhook {
            secret: webhook.secret.clone(),
            webhook,
        }))
}

/// An evaluation's own webhook, written just before the evaluation (so no
/// event can come before it): sent that evaluation's end events only.
pub async fn create_for_evaluation(
    conn: &mut diesel_async::AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    url: &str,
) -> Result<CreatedWebhook, ApiError> {
    let webhook = webhooks::create(
        conn,
        &NewWebhook {
            id: Uuid::now_v7(),
            tenant_id,
            url: url.to_owned(),
            secret: generate_secret(),
            events: Some(serde_json::json!(EVALUATION_EVENTS)),
            evaluation_id: Some(evaluation_id),
        },
    )
    .await?;
    metrics::counter!("assay_webhooks_created_total", "scope" => "evaluation").increment(1);
    Ok(CreatedWebhook {
        secret: webhook.secret.clone(),
        webhook,
    })
}

impl CreatedWebhook {
    pub fn id(&self) -> Uuid {
        self.webhook.id
    }
}

/// `GET /v1/webhooks`: newest first.
#[utoipa::path(
    get,
    operation_id = "webhooks.list",
    path = "/v1/webhooks",
    tag = "tenant",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of webhooks", body = PageBody<Webhook>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let after = query.after_id()?;
    let mut conn = state.pool.get().await?;
    let page = webhooks::list(&mut conn, caller.tenant_id, after, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |webhook| webhook.id.to_string())))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(
    get,
    operation_id = "webhooks.get",
    path = "/v1/webhooks/{webhook_id}",
    tag = "tenant",
    params(("webhook_id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let webhook = webhooks::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(webhook))
}

/// `DELETE /v1/webhooks/{id}`: 204; its pending deliveries end `failed`.
#[utoipa::path(
    delete,
    operation_id = "webhooks.delete",
    path = "/v1/webhooks/{webhook_id}",
    tag = "tenant",
    params(("webhook_id" = Uuid, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted: no more deliveries"),
    ),
)]
pub async fn delete(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    if !webhooks::delete(&mut conn, caller.tenant_id, *path).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/webhooks/{id}/deliveries`: newest first, each with every attempt.
#[utoipa::path(
    get,
    operation_id = "webhooks.deliveries",
    path = "/v1/webhooks/{webhook_id}/deliveries",
    tag = "tenant",
    params(("webhook_id" = Uuid, Path, description = "Webhook id"), PageQuery),
    responses(
        (status = 200, description = "Deliveries, newest first, each with every attempt", body = PageBody<Delivery>),
    ),
)]
pub async fn deliveries(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let after = query.after_id()?;
    let mut conn = state.pool.get().await?;
    webhooks::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let page = webhooks::deliveries(&mut conn, caller.tenant_id, *path, after, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |delivery| delivery.id.to_string())))
}
