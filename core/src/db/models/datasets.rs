//! Datasets and their items. Every dataset is written by [`create_streamed`]:
//! items in multi-row batches inside one transaction, so a dataset exists
//! whole or not at all.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::{Stream, StreamExt as _};
use serde_json::Value;

use super::Page;
use super::events::{self, NewEvent};
use crate::db::schema::{dataset_items, datasets};
use crate::domain::{DatasetShape, DatasetSummary, ParsedDataset, ParsedItem};
use crate::ids::{DatasetId, TenantId};

/// Rows per INSERT: 8 columns each, well under PostgreSQL's 65,535 bind parameters.
const ITEM_BATCH: usize = 5_000;

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = datasets, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dataset {
    pub id: DatasetId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub name: String,
    pub description: Option<String>,
    pub item_count: i32,
    /// Variables every item defines.
    pub variables: Value,
    /// Whether every item has an expected output.
    pub all_expected: bool,
    pub created_at: DateTime<Utc>,
    /// Items that carry their own graders.
    pub items_with_graders: i32,
    /// SHA-256 of the uploaded content (see `ContentHasher`); None for
    /// datasets written before it existed.
    pub content_hash: Option<String>,
}

impl Dataset {
    /// What the dataset offers templates: the variables every item defines.
    pub fn shape(&self) -> DatasetShape {
        DatasetShape {
            variables: serde_json::from_value(self.variables.clone()).unwrap_or_default(),
            all_expected: self.all_expected,
            every_item_graded: self.items_with_graders >= self.item_count,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = dataset_items, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetItem {
    pub position: i32,
    #[serde(rename = "id")]
    pub item_key: String,
    pub vars: Value,
    pub expected: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The item's own graders, normalized at upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graders: Option<Value>,
}

impl DatasetItem {
    /// What templates and graders see: the item's variables plus `expected`.
    pub fn template_context(&self) -> Value {
        let mut context = match &self.vars {
            Value::Object(vars) => vars.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(expected) = &self.expected {
            context.insert("expected".to_owned(), expected.clone());
        }
        Value::Object(context)
    }
}

#[derive(Insertable)]
#[diesel(table_name = dataset_items)]
struct NewItem<'a> {
    dataset_id: DatasetId,
    position: i32,
    tenant_id: TenantId,
    item_key: &'a str,
    vars: &'a Value,
    expected: Option<&'a Value>,
    threshold: Option<f64>,
    graders: Option<&'a Value>,
}

/// Who writes a dataset, and what it is called.
#[derive(Debug, Clone, Copy)]
pub struct NewDataset<'a> {
    pub tenant_id: TenantId,
    pub actor: &'a str,
    pub name: &'a str,
    pub description: Option<&'a str>,
}

/// Why creating a dataset wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    /// The batches ended before every item the summary counts: their
    /// sender stopped (a spooled upload that could not be read back).
    #[error("the upload stopped before its end")]
    Abandoned,
}

/// Creates a dataset whose items are all in memory (an inline JSON upload,
/// an optimization's split of a dataset); see [`create_streamed`].
pub async fn create(
    conn: &mut AsyncPgConnection,
    new: NewDataset<'_>,
    parsed: &ParsedDataset,
) -> Result<Dataset, CreateError> {
    let batches = futures::stream::iter(parsed.items.chunks(ITEM_BATCH));
    create_streamed(conn, new, &parsed.summary, batches).await
}

/// Creates a dataset, the one way any is written: its row with the figures
/// of `summary`, its items in order as `batches` yields them, and its
/// `dataset.created` event, in one transaction, so the dataset exists whole
/// or not at all. Only the batch being written need be in memory, however
/// large the dataset.
///
/// The figures come first, so every item must have been checked before the
/// first is written (an upload spools its checked items until its body
/// ends); batches that end short of the count write nothing.
pub async fn create_streamed<Batch>(
    conn: &mut AsyncPgConnection,
    new: NewDataset<'_>,
    summary: &DatasetSummary,
    batches: impl Stream<Item = Batch> + Send,
) -> Result<Dataset, CreateError>
where
    Batch: AsRef<[ParsedItem]> + Send,
{
    let mut batches = std::pin::pin!(batches);
    let created = conn
        .transaction::<_, CreateError, _>(async |conn| {
            let dataset: Dataset = diesel::insert_into(datasets::table)
                .values((
                    datasets::id.eq(DatasetId::now_v7()),
                    datasets::tenant_id.eq(new.tenant_id),
                    datasets::name.eq(new.name),
                    datasets::description.eq(new.description),
                    datasets::item_count.eq(count(summary.items)),
                    datasets::variables.eq(serde_json::json!(summary.variables)),
                    datasets::all_expected.eq(summary.all_expected),
                    datasets::items_with_graders.eq(count(summary.items_with_graders)),
                    datasets::content_hash.eq(&summary.content_hash),
                ))
                .returning(Dataset::as_returning())
                .get_result(conn)
                .await?;
            let mut next_position = 0;
            while let Some(batch) = batches.next().await {
                let items: &[ParsedItem] = batch.as_ref();
                insert_items(conn, new.tenant_id, dataset.id, next_position, items).await?;
                next_position += items.len();
            }
            if next_position != summary.items {
                return Err(CreateError::Abandoned);
            }
            record_created(conn, new.actor, &dataset).await?;
            Ok(dataset)
        })
        .await?;
    settle_search_index(conn).await;
    Ok(created)
}

/// The `dataset.created` event, written in the creating transaction.
async fn record_created(
    conn: &mut AsyncPgConnection,
    actor: &str,
    dataset: &Dataset,
) -> QueryResult<()> {
    events::record(
        conn,
        NewEvent {
            tenant_id: dataset.tenant_id,
            actor,
            action: "dataset.created",
            resource_type: "dataset",
            resource_id: dataset.id.uuid(),
            data: serde_json::json!({ "name": dataset.name, "items": dataset.item_count }),
        },
    )
    .await?;
    Ok(())
}

/// Moves the items just written from the trigram index's pending list into
/// the index proper. Until then every text search reads the pending list
/// whole, and the planner, seeing it, scans the dataset instead (89 ms
/// against 3 ms for a rare term over 100,000 items). A failure only leaves
/// that for autovacuum to do.
async fn settle_search_index(conn: &mut AsyncPgConnection) {
    let settled = diesel::sql_query("SELECT gin_clean_pending_list('dataset_items_vars_trigrams')")
        .execute(conn)
        .await;
    if let Err(error) = settled {
        tracing::debug!(error = %error, "the item search index keeps its pending list");
    }
}

/// Inserts `items` at positions from `first_position`, in multi-row batches.
async fn insert_items(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    dataset_id: DatasetId,
    first_position: usize,
    items: &[ParsedItem],
) -> QueryResult<()> {
    for (batch_index, batch) in items.chunks(ITEM_BATCH).enumerate() {
        let rows: Vec<NewItem<'_>> = batch
            .iter()
            .enumerate()
            .map(|(offset, item)| NewItem {
                dataset_id,
                position: i32::try_from(first_position + batch_index * ITEM_BATCH + offset)
                    .expect("validated"),
                tenant_id,
                item_key: &item.key,
                vars: &item.vars,
                expected: item.expected.as_ref(),
                threshold: item.threshold,
                graders: item.graders.as_ref(),
            })
            .collect();
        diesel::insert_into(dataset_items::table)
            .values(&rows)
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: DatasetId,
) -> QueryResult<Option<Dataset>> {
    datasets::table
        .filter(datasets::tenant_id.eq(tenant_id))
        .filter(datasets::id.eq(id))
        .select(Dataset::as_select())
        .first(conn)
        .await
        .optional()
}

fn count(items: usize) -> i32 {
    i32::try_from(items).expect("item counts are validated")
}

/// Newest first; `after` is the id of the last dataset of the previous
/// page; with `content_hash`, only datasets whose content hashes to it.
pub async fn list(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    after: Option<DatasetId>,
    limit: i64,
    content_hash: Option<&str>,
) -> QueryResult<Page<Dataset>> {
    let mut query = super::tenant_page_newest_first!(datasets, Dataset, tenant_id, after, limit);
    if let Some(content_hash) = content_hash {
        query = query.filter(datasets::content_hash.eq(content_hash.to_owned()));
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Items in position order, after position `after`: what the API pages
/// through and what a job streams, so no one loads a whole dataset.
/// Items at positions `from..=to`, in order (a chunk's range).
pub async fn items_between(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    dataset_id: DatasetId,
    from: i32,
    to: i32,
) -> QueryResult<Vec<DatasetItem>> {
    dataset_items::table
        .filter(dataset_items::tenant_id.eq(tenant_id))
        .filter(dataset_items::dataset_id.eq(dataset_id))
        .filter(dataset_items::position.between(from, to))
        .order(dataset_items::position.asc())
        .select(DatasetItem::as_select())
        .load(conn)
        .await
}

pub async fn items_page(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    dataset_id: DatasetId,
    after: Option<i32>,
    limit: i64,
) -> QueryResult<Page<DatasetItem>> {
    let rows = dataset_items::table
        .filter(dataset_items::tenant_id.eq(tenant_id))
        .filter(dataset_items::dataset_id.eq(dataset_id))
        .filter(dataset_items::position.gt(after.unwrap_or(-1)))
        .order(dataset_items::position.asc())
        .limit(limit + 1)
        .select(DatasetItem::as_select())
        .load(conn)
        .await?;
    Ok(Page::from_overfetched(rows, limit))
}
