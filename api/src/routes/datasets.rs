//! Datasets: created whole, with items inline (JSON) or uploaded as JSON Lines.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use assay_core::db::models::datasets;
use assay_core::domain::{
    DatasetItemInput, ItemChecker, parse_jsonl_line, validate_description, validate_items,
    validate_name,
};
use futures::StreamExt;
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
/// line and `?name=...&description=...`. JSON Lines are read, checked and
/// written as they arrive, so an upload of any size needs little memory;
/// the dataset exists whole or not at all.
pub async fn create(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    request: HttpRequest,
    query: web::Query<UploadQuery>,
    payload: web::Payload,
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
    let dataset = match content_type.as_str() {
        "application/json" => {
            if query.name.is_some() || query.description.is_some() {
                return Err(ApiError::InvalidQuery(
                    "name and description go in the JSON body".to_owned(),
                ));
            }
            let body = read_whole(payload, state.max_body_bytes).await?;
            let body: CreateDataset = parse_json(&body)?;
            validate_name("name", &body.name)?;
            validate_description("description", body.description.as_deref())?;
            let parsed = validate_items(body.items)?;
            let mut conn = state.pool.get().await?;
            datasets::create(
                &mut conn,
                caller.tenant_id,
                &caller.actor(),
                &body.name,
                body.description.as_deref(),
                &parsed,
            )
            .await?
        }
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
            let name = query.name.clone().ok_or_else(|| {
                ApiError::InvalidQuery("JSON Lines uploads need ?name=".to_owned())
            })?;
            validate_description("description", query.description.as_deref())?;
            validate_name("name", &name)?;
            stream_jsonl(
                &state,
                &caller,
                &name,
                query.description.as_deref(),
                payload,
            )
            .await?
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json ({name, items}) or application/x-ndjson (one item per line)"
                    .to_owned(),
            ));
        }
    };
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/datasets/{}", dataset.id)))
        .json(dataset))
}

/// The whole body, at most `limit` bytes.
async fn read_whole(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|error| ApiError::MalformedJson(format!("reading the body: {error}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Items sent to the database per batch (and at most two batches in memory).
const UPLOAD_BATCH: usize = 1_000;

/// Reads JSON Lines as they arrive, checks each item, and hands them in
/// batches to one transaction that writes them; an error anywhere rolls it
/// all back.
async fn stream_jsonl(
    state: &AppState,
    caller: &assay_core::db::models::api_keys::Caller,
    name: &str,
    description: Option<&str>,
    mut payload: web::Payload,
) -> Result<datasets::Dataset, ApiError> {
    let (batches, received) = tokio::sync::mpsc::channel(1);
    let mut conn = state.pool.get().await?;
    let actor = caller.actor();
    let writer = datasets::create_streamed(
        &mut conn,
        caller.tenant_id,
        &actor,
        name,
        description,
        received,
    );
    let limit = state.max_body_bytes;
    // Runs beside the writer in this request's task: the payload stays here.
    let reader = async move {
        let mut checker = ItemChecker::new();
        let mut batch = Vec::with_capacity(UPLOAD_BATCH);
        let mut pending = web::BytesMut::new();
        let (mut read, mut line_number) = (0usize, 0usize);
        let mut take_line =
            |line: &[u8], line_number: usize, batch: &mut Vec<_>| -> Result<(), ApiError> {
                let line = std::str::from_utf8(line).map_err(|_| {
                    ApiError::MalformedJson(format!("line {line_number} is not UTF-8"))
                })?;
                if line.trim().is_empty() {
                    return Ok(());
                }
                let item = parse_jsonl_line(line, line_number)?;
                batch.push(checker.check(item)?);
                Ok(())
            };
        loop {
            let chunk = payload.next().await;
            let finished = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk = chunk.map_err(|error| {
                    ApiError::MalformedJson(format!("reading the body: {error}"))
                })?;
                read += chunk.len();
                if read > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                pending.extend_from_slice(&chunk);
            }
            while let Some(newline) = pending.iter().position(|byte| *byte == b'\n') {
                let line = pending.split_to(newline + 1);
                line_number += 1;
                take_line(&line[..newline], line_number, &mut batch)?;
            }
            if finished && !pending.is_empty() {
                line_number += 1;
                let line = std::mem::take(&mut pending);
                take_line(&line, line_number, &mut batch)?;
            }
            if batch.len() >= UPLOAD_BATCH || (finished && !batch.is_empty()) {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(UPLOAD_BATCH));
                if batches.send(datasets::Upload::Items(full)).await.is_err() {
                    // The writer failed; its error is the answer.
                    return Ok(());
                }
            }
            if finished {
                break;
            }
        }
        let summary = checker.finish()?;
        let _ = batches.send(datasets::Upload::Done(summary)).await;
        Ok(())
    };
    let (read, written) = futures::join!(reader, writer);
    // A reader's error (bad input) comes first: it is why the writer stopped.
    read?;
    written.map_err(|error| match error {
        datasets::UploadError::Database(error) => ApiError::from(error),
        datasets::UploadError::Abandoned => {
            ApiError::Internal(anyhow::anyhow!("the upload ended without its last batch"))
        }
    })
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
