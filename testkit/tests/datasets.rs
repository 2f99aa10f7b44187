//! Writing datasets against the real PostgreSQL: every path writes through
//! `datasets::create_streamed`, which leaves a dataset whole or absent.

use assay_core::db::models::datasets::{self, CreateError, NewDataset};
use assay_core::db::schema::{dataset_items, events};
use assay_core::domain::{DatasetItemInput, ParsedDataset, validate_items};
use assay_core::ids::TenantId;
use assay_testkit::TestDatabase;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;

async fn tenant(conn: &mut AsyncPgConnection) -> TenantId {
    let tenant = TenantId::now_v7();
    diesel::sql_query(format!(
        "INSERT INTO tenants (id, name) VALUES ('{tenant}', 't-{tenant}')"
    ))
    .execute(conn)
    .await
    .unwrap();
    tenant
}

fn three_items() -> ParsedDataset {
    let items = (0..3)
        .map(|n| serde_json::from_value::<DatasetItemInput>(json!({"vars": {"q": n}})).unwrap())
        .collect();
    validate_items(items).unwrap()
}

async fn rows_of(conn: &mut AsyncPgConnection, tenant: TenantId) -> (usize, i64, i64) {
    let datasets = datasets::list(conn, tenant, None, 10, None).await.unwrap();
    let items = dataset_items::table
        .filter(dataset_items::tenant_id.eq(tenant))
        .count()
        .get_result(conn)
        .await
        .unwrap();
    let events = events::table
        .filter(events::tenant_id.eq(tenant))
        .count()
        .get_result(conn)
        .await
        .unwrap();
    (datasets.data.len(), items, events)
}

#[tokio::test]
async fn batches_that_end_short_of_the_count_write_nothing_and_whole_ones_write_all() {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let tenant = tenant(&mut conn).await;
    let parsed = three_items();
    let new = NewDataset {
        tenant_id: tenant,
        actor: "test",
        name: "three",
        description: None,
    };

    // The sender stopped after two of the three items it counted.
    let short = futures::stream::iter([&parsed.items[..2]]);
    let error = datasets::create_streamed(&mut conn, new, &parsed.summary, short)
        .await
        .unwrap_err();
    assert!(matches!(error, CreateError::Abandoned), "{error:?}");
    assert_eq!(rows_of(&mut conn, tenant).await, (0, 0, 0));

    // Every item, in batches smaller than the dataset: positions run on.
    let whole = futures::stream::iter(parsed.items.chunks(2));
    let dataset = datasets::create_streamed(&mut conn, new, &parsed.summary, whole)
        .await
        .unwrap();
    assert_eq!(dataset.item_count, 3);
    assert_eq!(dataset.variables, json!(["q"]));
    assert_eq!(rows_of(&mut conn, tenant).await, (1, 3, 1));
    let items = datasets::items_page(&mut conn, tenant, dataset.id, None, 10)
        .await
        .unwrap();
    let written: Vec<(i32, &str, &serde_json::Value)> = items
        .data
        .iter()
        .map(|item| (item.position, item.item_key.as_str(), &item.vars["q"]))
        .collect();
    assert_eq!(
        written,
        [
            (0, "0", &json!(0)),
            (1, "1", &json!(1)),
            (2, "2", &json!(2))
        ]
    );
}
