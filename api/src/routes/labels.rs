//! Labels of a prompt: list, read, move (compare-and-set; protected labels
//! need an admin key with `force`), and the history of a label's moves.

use actix_web::{HttpResponse, web};
use assay_core::db::models::api_keys::KeyScope;
use assay_core::db::models::events;
use assay_core::db::models::labels::{self, Authority, Move, MoveError};
use assay_core::db::models::prompts::{self, VersionRef};
use assay_core::ids::PromptId;
use serde::{Deserialize, Deserializer, Serialize};

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::json::Json;
use crate::startup::AppState;
use assay_core::db::models::events::Event;
use assay_core::db::models::labels::LabelView;

/// Labels worth a metric label of their own; any other name counts as
/// `other`, so that user-chosen names cannot grow the series without bound.
const WELL_KNOWN: [&str; 6] = [
    "production",
    "staging",
    "canary",
    "development",
    "dev",
    "latest",
];

fn metric_label(name: &str) -> &'static str {
    WELL_KNOWN
        .into_iter()
        .find(|known| *known == name)
        .unwrap_or("other")
}

/// `GET /v1/prompts/{id}/labels`: by name; `after` is a label name.
#[utoipa::path(
    get,
    operation_id = "labels.list",
    path = "/v1/prompts/{prompt_id}/labels",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), PageQuery),
    responses(
        (status = 200, description = "A page of labels", body = PageBody<LabelView>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<PromptId>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    prompts::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("prompt"))?;
    let page = labels::list(
        &mut conn,
        caller.tenant_id,
        *path,
        query.after.as_deref(),
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |label| label.name.clone())))
}

/// `GET /v1/prompts/{id}/labels/{name}`.
#[utoipa::path(
    get,
    operation_id = "labels.get",
    path = "/v1/prompts/{prompt_id}/labels/{name}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Label name")),
    responses(
        (status = 200, description = "The label", body = LabelView),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    let label = labels::get_view(&mut conn, caller.tenant_id, prompt_id, &name)
        .await?
        .ok_or(ApiError::NotFound("label"))?;
    Ok(HttpResponse::Ok().json(label))
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveLabel {
    /// Where the label should point (number or id).
    #[schema(value_type = super::openapi::VersionRefSchema)]
    version: VersionRef,
    /// Compare-and-set: the version the label names now; `null` = the label
    /// must not exist yet; absent = no check.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<super::openapi::VersionRefSchema>)]
    expected_version: Option<Option<VersionRef>>,
    /// Why (kept in the event).
    #[serde(default)]
    reason: Option<String>,
    /// Needed, with an admin key, to change a protected label.
    #[serde(default)]
    force: bool,
    /// Protect (or, with admin + force, unprotect) the label.
    #[serde(default)]
    protected: Option<bool>,
}

/// `PUT /v1/prompts/{id}/labels/{name}`: creates (201) or moves (200) a label.
#[utoipa::path(
    put,
    operation_id = "labels.put",
    path = "/v1/prompts/{prompt_id}/labels/{name}",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Label name")),
    request_body = MoveLabel,
    responses(
        (status = 201, description = "Created", body = MovedLabel, headers(("Location" = String, description = "The new resource"))),
        (status = 200, description = "Moved (or already there)", body = MovedLabel, headers(("Location" = String, description = "The new resource"))),
        (status = 403, description = "A protected label needs an admin key and `force`"),
        (status = 409, description = "`expected_version` does not match (`current` says what is)"),
    ),
)]
pub async fn put(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
    body: Json<MoveLabel>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let body = body.into_inner();
    labels::validate_name("name", &name)?;
    if let Some(reason) = &body.reason
        && reason.chars().count() > 2_000
    {
        return Err(ApiError::invalid("reason", "at most 2,000 characters"));
    }
    let mut conn = state.pool.get().await?;
    let moved = labels::move_label(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        prompt_id,
        Move {
            name: &name,
            to: body.version,
            expected: body.expected_version,
            reason: body.reason.as_deref(),
            force: body.force,
            protect: body.protected,
            authority: match caller.scope {
                KeyScope::Admin => Authority::Admin,
                KeyScope::Member => Authority::Member,
            },
        },
    )
    .await
    .map_err(|error| match error {
        MoveError::PromptNotFound => ApiError::NotFound("prompt"),
        MoveError::UnknownVersion => ApiError::invalid("version", "not a version of this prompt"),
        MoveError::UnknownExpected => {
            ApiError::invalid("expected_version", "not a version of this prompt")
        }
        MoveError::Mismatch { name, current } => {
            metrics::counter!("assay_prompt_label_conflicts_total", "label" => metric_label(&name))
                .increment(1);
            let detail = match &current {
                Some(label) => format!(
                    "label {name:?} names version {} now, not expected_version",
                    label.version
                ),
                None => format!("label {name:?} does not exist"),
            };
            ApiError::Stale(detail, serde_json::json!({ "label": current }))
        }
        MoveError::Forbidden(reason) => ApiError::Forbidden(reason),
        MoveError::Database(error) => error.into(),
    })?;
    if moved.changed {
        metrics::counter!("assay_prompt_label_moves_total", "label" => metric_label(&name))
            .increment(1);
    }
    let mut response = if moved.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header(("Location", format!("/v1/prompts/{prompt_id}/labels/{name}")))
        .json(MovedLabel {
            label: moved.label,
            changed: moved.changed,
        }))
}

/// `GET /v1/prompts/{id}/labels/{name}/history`: the label's moves, newest
/// first; `after` is an event id.
#[utoipa::path(
    get,
    operation_id = "labels.history",
    path = "/v1/prompts/{prompt_id}/labels/{name}/history",
    tag = "prompts",
    params(("prompt_id" = Uuid, Path, description = "Prompt id"), ("name" = String, Path, description = "Label name"), PageQuery),
    responses(
        (status = 200, description = "The label's moves, newest first", body = PageBody<Event>),
    ),
)]
pub async fn history(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<(PromptId, String)>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (prompt_id, name) = path.into_inner();
    let limit = query.limit()?;
    let after = query
        .after
        .as_deref()
        .map(|after| {
            after.parse::<i64>().map_err(|_| {
                ApiError::InvalidQuery("after must be an event id from a previous page".to_owned())
            })
        })
        .transpose()?;
    let mut conn = state.pool.get().await?;
    let label = labels::get(&mut conn, caller.tenant_id, prompt_id, &name)
        .await?
        .ok_or(ApiError::NotFound("label"))?;
    let page = events::page_for_resource(
        &mut conn,
        caller.tenant_id,
        "prompt_label",
        label.id,
        after,
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |event| event.id.to_string())))
}

/// A label after a move.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct MovedLabel {
    label: LabelView,
    /// Whether anything changed (and an event was written).
    changed: bool,
}
