//! The tenant's API keys: `POST /v1/keys` (the secret is in that answer
//! only), `GET /v1/keys`, `GET /v1/keys/{id}`, `DELETE /v1/keys/{id}`
//! (revoke). Only an admin key manages keys.
//!
//! Keys are checked in PostgreSQL on every request, so a revoked key is
//! refused by every API replica from the moment the revocation commits.

use actix_web::{HttpResponse, web};
use assay_core::db::models::api_keys::{self, ApiKey, KeyScope, NewKey};
use chrono::{DateTime, Utc};
use metrics::counter;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;

/// Longest a key may live, when it expires at all.
const MAX_KEY_LIFETIME_DAYS: i64 = 10 * 366;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `member` (default) or `admin`.
    #[serde(default)]
    scope: Option<KeyScope>,
    /// A label for people ("ci", "alice's laptop").
    name: Option<String>,
    /// RFC 3339; the key answers 401 from then on. None: it does not expire.
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct KeyBody {
    #[serde(flatten)]
    key: ApiKey,
    /// `active`, `revoked` or `expired`.
    status: &'static str,
}

impl From<ApiKey> for KeyBody {
    fn from(key: ApiKey) -> Self {
        let status = key.status(Utc::now());
        Self { key, status }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CreatedKeyBody {
    #[serde(flatten)]
    key: KeyBody,
    /// The secret: shown in this answer only, stored as a SHA-256.
    secret: String,
}

#[utoipa::path(
    post,
    operation_id = "keys.create",
    path = "/v1/keys",
    tag = "tenant",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedKeyBody, headers(("Location" = String, description = "The new resource"))),
        (status = 403, description = "Only an admin key manages keys"),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: Authenticated,
    body: Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.admin("create keys")?;
    let body = body.into_inner();
    if let Some(name) = &body.name {
        assay_core::domain::validate_name("name", name)?;
    }
    if let Some(expires_at) = body.expires_at {
        let now = Utc::now();
        if expires_at <= now {
            return Err(ApiError::invalid("expires_at", "must be in the future"));
        }
        if expires_at > now + chrono::Duration::days(MAX_KEY_LIFETIME_DAYS) {
            return Err(ApiError::invalid(
                "expires_at",
                "must be at most ten years away (omit it for a key that does not expire)",
            ));
        }
    }
    let mut conn = state.pool.get().await?;
    let (key, secret) = api_keys::create_for_tenant(
        &mut conn,
        caller.tenant_id,
        &NewKey {
            scope: body.scope.unwrap_or_default(),
            name: body.name,
            expires_at: body.expires_at,
        },
    )
    .await?;
    counter!("assay_api_keys_total", "action" => "created").increment(1);
    tracing::info!(key.id = %key.id, scope = key.scope, "API key created");
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/keys/{}", key.id)))
        .json(CreatedKeyBody {
            key: key.into(),
            secret,
        }))
}

#[utoipa::path(
    get,
    operation_id = "keys.list",
    path = "/v1/keys",
    tag = "tenant",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the tenant's keys (never their secrets)", body = PageBody<KeyBody>),
        (status = 403, description = "Only an admin key manages keys"),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    caller: Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.admin("list keys")?;
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    let page = api_keys::list(&mut conn, caller.tenant_id, query.after_id()?, limit).await?;
    let page = assay_core::db::models::Page {
        data: page.data.into_iter().map(KeyBody::from).collect(),
        has_more: page.has_more,
    };
    Ok(HttpResponse::Ok().json(PageBody::new(page, |key: &KeyBody| key.key.id.to_string())))
}

#[utoipa::path(
    get,
    operation_id = "keys.get",
    path = "/v1/keys/{key_id}",
    tag = "tenant",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = KeyBody),
        (status = 403, description = "Only an admin key manages keys"),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.admin("read keys")?;
    let mut conn = state.pool.get().await?;
    let key = api_keys::get(&mut conn, caller.tenant_id, path.into_inner())
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    Ok(HttpResponse::Ok().json(KeyBody::from(key)))
}

/// Revokes the key; revoking it again answers the same (its first `revoked_at`).
#[utoipa::path(
    delete,
    operation_id = "keys.revoke",
    path = "/v1/keys/{key_id}",
    tag = "tenant",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "Revoked: it answers 401 from now on, on every replica", body = KeyBody),
        (status = 403, description = "Only an admin key manages keys"),
    ),
)]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let caller = caller.admin("revoke keys")?;
    let mut conn = state.pool.get().await?;
    let key = api_keys::revoke(&mut conn, caller.tenant_id, path.into_inner())
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    counter!("assay_api_keys_total", "action" => "revoked").increment(1);
    tracing::info!(key.id = %key.id, "API key revoked");
    Ok(HttpResponse::Ok().json(KeyBody::from(key)))
}
