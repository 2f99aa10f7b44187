//! Every migration is reversible: up, down to nothing, and up again.

use assay_testkit::TestDatabase;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::MigrationHarness;

#[derive(QueryableByName)]
struct Table {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

async fn tables(url: &str) -> Vec<String> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT table_name AS name FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' ORDER BY 1",
    )
    .load::<Table>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|table| table.name)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_go_down_and_up_again() {
    let database = TestDatabase::create().await.unwrap();
    let migrated = tables(&database.url).await;
    assert!(
        migrated.contains(&"evaluation_results".to_owned()),
        "{migrated:?}"
    );

    let conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    let reverted = harness
        .revert_all_migrations(assay_core::db::MIGRATIONS)
        .unwrap();
    assert!(!reverted.is_empty());
    assert_eq!(
        tables(&database.url).await,
        Vec::<String>::new(),
        "down.sql removes everything up.sql made"
    );

    harness
        .run_pending_migrations(assay_core::db::MIGRATIONS)
        .unwrap();
    assert_eq!(tables(&database.url).await, migrated);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_cannot_be_rewritten() {
    let database = TestDatabase::create().await.unwrap();
    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    for statement in [
        "INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 't')",
        "INSERT INTO events (tenant_id, actor, action, resource_type, resource_id)
         VALUES ('00000000-0000-0000-0000-000000000001', 'system', 'x', 'tenant', '00000000-0000-0000-0000-000000000001')",
    ] {
        diesel::sql_query(statement).execute(&mut conn).await.unwrap();
    }
    let inserted = diesel::sql_query("SELECT action AS name FROM events")
        .load::<Table>(&mut conn)
        .await
        .unwrap();
    assert_eq!(inserted.len(), 1);
    let update = diesel::sql_query("UPDATE events SET action = 'y'")
        .execute(&mut conn)
        .await;
    assert!(update.unwrap_err().to_string().contains("immutable"));
    let delete = diesel::sql_query("DELETE FROM events")
        .execute(&mut conn)
        .await;
    assert!(delete.is_err(), "events are append-only");
}
