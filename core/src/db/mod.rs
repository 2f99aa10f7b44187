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
    let connection = AsyncPgConnection::establish(database_url)
        .await
        .map_err(|error| anyhow::anyhow!("connecting to {}: {error}", redact(database_url)))?;
    let mut harness = diesel_async::AsyncMigrationHarness::new(connection);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|error| anyhow::anyhow!("running migrations: {error}"))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// Creates the database `database_url` names when it does not exist, by
/// connecting to the `postgres` database of the same server (same user,
/// password and options); returns whether it created it. A database that
/// exists, or can be connected to, is left alone, so this needs no rights
/// on `postgres` where the database is already there (a managed service).
/// Two concurrent callers both succeed: a `CREATE DATABASE` that lost the
/// race is fine when the database exists afterwards.
pub async fn create_database_if_missing(database_url: &str) -> anyhow::Result<bool> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let Some((name, admin_url)) = split_database_url(database_url) else {
        return Ok(false);
    };
    // SQLSTATE 3D000 (invalid_catalog_name) reaches diesel as text only; a
    // missing role also "does not exist", so the database's name is matched.
    let missing = match AsyncPgConnection::establish(database_url).await {
        Ok(_) => false,
        Err(error) => error
            .to_string()
            .contains(&format!("database {name:?} does not exist")),
    };
    if !missing {
        return Ok(false);
    }
    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "database {name:?} does not exist, and connecting to {} to create it failed: {error}",
                redact(&admin_url)
            )
        })?;
    if let Err(error) = diesel::sql_query(format!("CREATE DATABASE {}", quote_identifier(&name)))
        .execute(&mut admin)
        .await
    {
        #[derive(diesel::QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::Int8)]
            count: i64,
        }
        let found: Found =
            diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
                .bind::<diesel::sql_types::Text, _>(&name)
                .get_result(&mut admin)
                .await?;
        if found.count == 0 {
            anyhow::bail!("creating database {name:?}: {error}");
        }
        return Ok(false);
    }
    Ok(true)
}

/// `url` with its password hidden, for messages.
fn redact(url: &str) -> String {
    crate::config::redact_url(url)
}

/// The database a `postgres://` URL names (percent-decoded) and the URL of
/// the `postgres` database on the same server, with the same credentials and
/// options. None when the URL names no database (the server's default then
/// is the user's name, which this does not guess).
fn split_database_url(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "postgres" && scheme != "postgresql" {
        return None;
    }
    let slash = rest.find('/')?;
    let (authority, path_and_query) = rest.split_at(slash);
    let path_end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(path_end);
    let name = percent_decode(path.strip_prefix('/')?)?;
    if name.is_empty() {
        return None;
    }
    Some((name, format!("{scheme}://{authority}/postgres{query}")))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// A PostgreSQL identifier in double quotes (any name, any case, safely).
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SELECT 1`: what readiness probes ask.
pub async fn ping(pool: &DbPool) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_split_into_the_name_and_the_servers_postgres_database() {
        assert_eq!(
            split_database_url("postgres://u:p@db:5432/assay?sslmode=require"),
            Some((
                "assay".to_owned(),
                "postgres://u:p@db:5432/postgres?sslmode=require".to_owned()
            ))
        );
        assert_eq!(
            split_database_url("postgresql://db/My%20DB").map(|(name, _)| name),
            Some("My DB".to_owned())
        );
        assert_eq!(split_database_url("postgres://db"), None);
        assert_eq!(split_database_url("postgres://db/"), None);
        assert_eq!(split_database_url("mysql://db/x"), None);
        assert_eq!(split_database_url("postgres://db/bad%zz"), None);
        assert_eq!(quote_identifier("assay"), "\"assay\"");
        assert_eq!(quote_identifier("a\"; DROP"), "\"a\"\"; DROP\"");
    }
}
