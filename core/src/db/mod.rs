//! PostgreSQL: the pool, the embedded migrations and every query.
//!
//! Rules that hold in this module:
//! - every query on a tenant-owned table filters on `tenant_id`;
//! - writes that a job may repeat are idempotent (`ON CONFLICT DO NOTHING`),
//!   and counters move by the number of rows actually written;
//! - query functions return [`diesel::QueryResult`]; callers decide what an
//!   error means to their user.

pub mod models;
pub mod schema;

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

/// Builds a pool of `size` connections; connections are opened lazily.
pub fn pool(database_url: &str, size: usize) -> anyhow::Result<DbPool> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    Ok(Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Applies every pending migration; returns the versions applied.
///
/// Needs a multi-thread tokio runtime: the harness uses `block_in_place`.
pub async fn run_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    use diesel_async::AsyncConnection;
    let connection = AsyncPgConnection::establish(database_url).await?;
    let mut harness = diesel_async::AsyncMigrationHarness::new(connection);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|error| anyhow::anyhow!("running migrations: {error}"))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// `SELECT 1`: what readiness probes ask.
pub async fn ping(pool: &DbPool) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}
