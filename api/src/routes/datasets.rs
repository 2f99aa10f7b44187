//! Datasets: created whole, with items inline (JSON) or uploaded as JSON
//! Lines or CSV (both checked and written as they stream). Every dataset
//! records a hash of its content, so a client can find it again
//! (`GET /v1/datasets?content_hash=`) instead of uploading it twice.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use assay_core::db::models::api_keys::Caller;
use assay_core::db::models::datasets;
use assay_core::domain::csv_items::CsvItems;
use assay_core::domain::{
    ContentHasher, DatasetItemInput, DatasetSummary, ItemChecker, MAX_ITEM_BYTES, ParsedItem,
    parse_jsonl_line, validate_description, validate_items_with, validate_name,
};
use assay_core::ids::DatasetId;
use serde::Deserialize;
use uuid::Uuid;

use super::{PageBody, PageQuery};
use crate::auth::Authenticated;
use crate::body::{BodyReader, read_whole};
use crate::errors::{ApiError, parse_json};
use crate::startup::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDataset {
    name: String,
    #[serde(default)]
    description: Option<String>,
    items: Vec<DatasetItemInput>,
}

/// For JSON Lines uploads, where the body is the items: name and description travel in the query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    name: Option<String>,
    description: Option<String>,
}

/// `POST /v1/datasets`: `application/json` with `{name, description?, items}`,
/// or `application/x-ndjson` (also `application/jsonl`) with one item per
/// line, or `text/csv` (see `assay_core::domain::csv_items`), with
/// `?name=...&description=...`. JSON Lines are read, checked and
/// written as they arrive, so an upload of any size needs little memory;
/// the dataset exists whole or not at all.
#[utoipa::path(
    post,
    operation_id = "datasets.create",
    path = "/v1/datasets",
    tag = "datasets",
    params(UploadQuery),
    request_body(
        description = "JSON `{name, description?, items}`; or JSON Lines, one item (`DatasetItemInput`) per line; or CSV, a header row then one item per row (both with `?name=`)",
        content(
            (CreateDataset = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        ),
    ),
    responses(
        (status = 201, description = "The dataset", body = datasets::Dataset, headers(("Location" = String, description = "The new resource"))),
    ),
)]
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
            let body = read_whole(payload, state.body_timeouts, state.max_body_bytes).await?;
            let body: CreateDataset = parse_json(&body)?;
            validate_name("name", &body.name)?;
            validate_description("description", body.description.as_deref())?;
            let content_hash = ContentHasher::of_items(&body.items);
            let mut parsed =
                validate_items_with(ItemChecker::with_catalog(state.catalog.clone()), body.items)?;
            parsed.summary.content_hash = Some(content_hash);
            let mut conn = state.pool.get().await?;
            let actor = caller.actor();
            let new = new_dataset(&caller, &actor, &body.name, body.description.as_deref());
            let dataset = datasets::create(&mut conn, new, &parsed).await?;
            record_upload("json", &parsed.summary);
            dataset
        }
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
            let name = query.name.clone().ok_or_else(|| {
                ApiError::InvalidQuery("JSON Lines uploads need ?name=".to_owned())
            })?;
            validate_description("description", query.description.as_deref())?;
            validate_name("name", &name)?;
            let parser = StreamParser::jsonl();
            stream_items(
                &state,
                &caller,
                &name,
                query.description.as_deref(),
                payload,
                parser,
            )
            .await?
        }
        "text/csv" => {
            let name = query
                .name
                .clone()
                .ok_or_else(|| ApiError::InvalidQuery("CSV uploads need ?name=".to_owned()))?;
            validate_description("description", query.description.as_deref())?;
            validate_name("name", &name)?;
            stream_items(
                &state,
                &caller,
                &name,
                query.description.as_deref(),
                payload,
                StreamParser::Csv(Box::new(CsvItems::new())),
            )
            .await?
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json ({name, items}), application/x-ndjson (one item per line) or text/csv (a header row, then one item per row)"
                    .to_owned(),
            ));
        }
    };
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/v1/datasets/{}", dataset.id)))
        .json(dataset))
}

/// Items sent to the database per batch (and at most two batches in memory).
const UPLOAD_BATCH: usize = 1_000;

/// The streamed formats: bytes in, items out, whatever the chunking.
enum StreamParser {
    Jsonl {
        /// The bytes of a line not yet ended.
        pending: web::BytesMut,
        /// How much of `pending` is known to hold no newline: each byte is
        /// searched once, however the line arrives.
        scanned: usize,
        line_number: usize,
    },
    /// Boxed: the CSV reader's state machine is large, and there is one per upload.
    Csv(Box<CsvItems>),
}

impl StreamParser {
    fn jsonl() -> Self {
        StreamParser::Jsonl {
            pending: web::BytesMut::new(),
            scanned: 0,
            line_number: 0,
        }
    }

    fn format(&self) -> &'static str {
        match self {
            StreamParser::Jsonl { .. } => "jsonl",
            StreamParser::Csv(_) => "csv",
        }
    }

    fn feed(&mut self, chunk: &[u8], items: &mut Vec<DatasetItemInput>) -> Result<(), ApiError> {
        match self {
            StreamParser::Jsonl {
                pending,
                scanned,
                line_number,
            } => {
                pending.extend_from_slice(chunk);
                while let Some(offset) = pending[*scanned..].iter().position(|byte| *byte == b'\n')
                {
                    let newline = *scanned + offset;
                    let line = pending.split_to(newline + 1);
                    *scanned = 0;
                    *line_number += 1;
                    jsonl_line(&line[..newline], *line_number, items)?;
                }
                *scanned = pending.len();
                if pending.len() > MAX_ITEM_BYTES {
                    return Err(ApiError::invalid(
                        format!("line {}", *line_number + 1),
                        format!("an item is at most {MAX_ITEM_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
            StreamParser::Csv(csv) => Ok(csv.feed(chunk, items)?),
        }
    }

    fn finish(&mut self, items: &mut Vec<DatasetItemInput>) -> Result<(), ApiError> {
        match self {
            StreamParser::Jsonl {
                pending,
                line_number,
                ..
            } => {
                if !pending.is_empty() {
                    *line_number += 1;
                    let line = std::mem::take(pending);
                    jsonl_line(&line, *line_number, items)?;
                }
                Ok(())
            }
            StreamParser::Csv(csv) => Ok(csv.finish(items)?),
        }
    }
}

fn jsonl_line(
    line: &[u8],
    line_number: usize,
    items: &mut Vec<DatasetItemInput>,
) -> Result<(), ApiError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| ApiError::MalformedJson(format!("line {line_number} is not UTF-8")))?;
    if !line.trim().is_empty() {
        items.push(parse_jsonl_line(line, line_number)?);
    }
    Ok(())
}

/// Checked items of an upload, on disk until the body has ended: the
/// database sees the upload only once it has arrived whole, so a client
/// that sends slowly holds no pooled connection or transaction.
struct Spool {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl Spool {
    /// An unnamed temporary file (unlinked at once: nothing is left behind,
    /// whatever happens to the process).
    async fn create() -> Result<Self, ApiError> {
        let path = std::env::temp_dir().join(format!("assay-upload-{}", Uuid::new_v4()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(spool_error)?;
        tokio::fs::remove_file(&path).await.map_err(spool_error)?;
        Ok(Self {
            file: tokio::io::BufWriter::new(file),
        })
    }

    async fn write(&mut self, items: &[ParsedItem]) -> Result<(), ApiError> {
        use tokio::io::AsyncWriteExt;
        let mut lines = Vec::new();
        for item in items {
            serde_json::to_writer(&mut lines, item)
                .map_err(|error| ApiError::Internal(error.into()))?;
            lines.push(b'\n');
        }
        self.file.write_all(&lines).await.map_err(spool_error)
    }

    /// The items back, in order, a batch at a time. On an error the
    /// batches stop short, and the writer writes nothing.
    async fn replay(
        mut self,
        batches: tokio::sync::mpsc::Sender<Vec<ParsedItem>>,
    ) -> Result<(), ApiError> {
        use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
        self.file.flush().await.map_err(spool_error)?;
        let mut file = self.file.into_inner();
        file.rewind().await.map_err(spool_error)?;
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut batch = Vec::with_capacity(UPLOAD_BATCH);
        while let Some(line) = lines.next_line().await.map_err(spool_error)? {
            batch.push(
                serde_json::from_str(&line).map_err(|error| ApiError::Internal(error.into()))?,
            );
            if batch.len() == UPLOAD_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(UPLOAD_BATCH));
                if batches.send(full).await.is_err() {
                    // The writer failed; its error is the answer.
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() {
            // A failure here is the writer's, and its error is the answer.
            let _ = batches.send(batch).await;
        }
        Ok(())
    }
}

fn spool_error(error: std::io::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::from(error).context("spooling an upload"))
}

/// Reads JSON Lines or CSV as they arrive and checks each item, spooling
/// them to disk; once the body has ended, writes them in batches in one
/// transaction (an error anywhere writes nothing). The content hash is taken
/// over the bytes as they pass.
async fn stream_items(
    state: &AppState,
    caller: &Caller,
    name: &str,
    description: Option<&str>,
    payload: web::Payload,
    mut parser: StreamParser,
) -> Result<datasets::Dataset, ApiError> {
    let format = parser.format();
    let mut body = BodyReader::new(payload, state.body_timeouts, state.max_body_bytes);
    let mut checker = ItemChecker::with_catalog(state.catalog.clone());
    let mut hasher = ContentHasher::new(format);
    let mut spool = Spool::create().await?;
    let mut inputs = Vec::new();
    let mut checked = Vec::with_capacity(UPLOAD_BATCH);
    loop {
        let piece = body.next().await?;
        match &piece {
            Some(piece) => {
                hasher.update(piece);
                parser.feed(piece, &mut inputs)?;
            }
            None => parser.finish(&mut inputs)?,
        }
        for input in inputs.drain(..) {
            checked.push(checker.check(input)?);
        }
        if checked.len() >= UPLOAD_BATCH || piece.is_none() {
            spool.write(&checked).await?;
            checked.clear();
        }
        if piece.is_none() {
            break;
        }
    }
    let mut summary = checker.finish()?;
    summary.content_hash = Some(hasher.finish());

    // One batch in the channel while the writer inserts the one before.
    let (batches, mut received) = tokio::sync::mpsc::channel(1);
    let mut conn = state.pool.get().await?;
    let actor = caller.actor();
    let writer = datasets::create_streamed(
        &mut conn,
        new_dataset(caller, &actor, name, description),
        &summary,
        futures::stream::poll_fn(move |context| received.poll_recv(context)),
    );
    let (replayed, written) = futures::join!(spool.replay(batches), writer);
    replayed?;
    let dataset = written?;
    record_upload(format, &summary);
    Ok(dataset)
}

fn new_dataset<'a>(
    caller: &Caller,
    actor: &'a str,
    name: &'a str,
    description: Option<&'a str>,
) -> datasets::NewDataset<'a> {
    datasets::NewDataset {
        tenant_id: caller.tenant_id,
        actor,
        name,
        description,
    }
}

fn record_upload(format: &'static str, summary: &DatasetSummary) {
    metrics::counter!("assay_dataset_uploads_total", "format" => format).increment(1);
    metrics::counter!("assay_dataset_upload_items_total", "format" => format)
        .increment(summary.items as u64);
    metrics::counter!("assay_dataset_item_graders_total").increment(summary.item_graders as u64);
}

/// `?after=&limit=` and, to find a dataset by what it holds, `content_hash=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    content_hash: Option<String>,
}

#[utoipa::path(
    get,
    operation_id = "datasets.list",
    path = "/v1/datasets",
    tag = "datasets",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of datasets", body = PageBody<datasets::Dataset>),
    ),
)]
pub async fn list(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let ListQuery {
        after,
        limit,
        content_hash,
    } = query.into_inner();
    let page_query = PageQuery { after, limit };
    let limit = page_query.limit()?;
    if let Some(hash) = &content_hash
        && !(hash.len() == 64 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()))
    {
        return Err(ApiError::InvalidQuery(
            "content_hash must be 64 hexadecimal digits (a SHA-256)".to_owned(),
        ));
    }
    let content_hash = content_hash.map(|hash| hash.to_ascii_lowercase());
    let mut conn = state.pool.get().await?;
    let page = datasets::list(
        &mut conn,
        caller.tenant_id,
        page_query.after_id()?,
        limit,
        content_hash.as_deref(),
    )
    .await?;
    if content_hash.is_some() {
        let outcome = if page.data.is_empty() { "miss" } else { "hit" };
        metrics::counter!("assay_dataset_hash_lookups_total", "outcome" => outcome).increment(1);
    }
    Ok(HttpResponse::Ok().json(PageBody::new(page, |dataset| dataset.id.to_string())))
}

#[utoipa::path(
    get,
    operation_id = "datasets.get",
    path = "/v1/datasets/{dataset_id}",
    tag = "datasets",
    params(("dataset_id" = Uuid, Path, description = "Dataset id")),
    responses(
        (status = 200, description = "The dataset", body = datasets::Dataset),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<DatasetId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let dataset = datasets::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("dataset"))?;
    Ok(HttpResponse::Ok().json(dataset))
}

/// Items in order; `after` is the `position` of the last item of the previous page.
#[utoipa::path(
    get,
    operation_id = "datasets.items",
    path = "/v1/datasets/{dataset_id}/items",
    tag = "datasets",
    params(("dataset_id" = Uuid, Path, description = "Dataset id"), PageQuery),
    responses(
        (status = 200, description = "A page of items in order", body = PageBody<datasets::DatasetItem>),
    ),
)]
pub async fn items(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<DatasetId>,
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
