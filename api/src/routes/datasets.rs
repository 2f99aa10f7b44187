//! Datasets: created whole, with items inline (JSON) or uploaded as JSON Lines.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use assay_core::db::models::datasets;
use assay_core::domain::{DatasetItemInput, parse_jsonl_items, validate_items, validate_name};
use serde::Deserialize;
use uuid::Uuid;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::errors::{ApiError, parse_json};
use crate::startup::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDataset {
    name: String,
    #[serde(default)]
    description: Option<String>,
    items: Vec<DatasetItemInput>,
}

/// For JSON Lines uploads, where the body is the items: name and description travel in the query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    name: Option<String>,
    description: Option<String>,
}

/// `POST /v1/datasets`: `application/json` with `{name, description?, items}`,
/// or `application/x-ndjson` (also `application/jsonl`) with one item per
/// line and `?name=...&description=...`.
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request: HttpRequest,
    query: web::Query<UploadQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (name, description, items) = match content_type.as_str() {
        "application/json" => {
            if query.name.is_some() || query.description.is_some() {
                return Err(ApiError::InvalidQuery(
                    "name and description go in the JSON body".to_owned(),
                ));
            }
            let body: CreateDataset = parse_json(&body)?;
            (body.name, body.description, body.items)
        }
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::MalformedJson("the body is not UTF-8".to_owned()))?;
            let name = query.name.clone().ok_or_else(|| {
                ApiError::InvalidQuery("JSON Lines uploads need ?name=".to_owned())
            })?;
            (name, query.description.clone(), parse_jsonl_items(text)?)
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json ({name, items}) or application/x-ndjson (one item per line)"
                    .to_owned(),
            ));
        }
    };
    validate_name("name", &name)?;
    let parsed = validate_items(items)?;
    let mut conn = state.pool.get().await?;
    let dataset = datasets::create(
        &mut conn,
        caller.tenant_id,
        &caller.actor(),
        &name,
        description.as_deref(),
        &parsed,
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/datasets/{}", dataset.id)))
        .json(dataset))
}

pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let mut conn = state.pool.get().await?;
    let page = datasets::list(&mut conn, caller.tenant_id, query.after_id()?, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |dataset| dataset.id.to_string())))
}

pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let dataset = datasets::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("dataset"))?;
    Ok(HttpResponse::Ok().json(dataset))
}

/// Items in order; `after` is the `position` of the last item of the previous page.
pub async fn items(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let after = query.after_number("an item position")?;
    let mut conn = state.pool.get().await?;
    datasets::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("dataset"))?;
    let page = datasets::items_page(&mut conn, caller.tenant_id, *path, after, limit).await?;
    Ok(HttpResponse::Ok().json(PageBody::new(page, |item| item.position.to_string())))
}
