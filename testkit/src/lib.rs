//! Test helpers shared by every crate's integration tests.
//!
//! - [`TestDatabase`]: a freshly created, migrated PostgreSQL database with
//!   a unique name, dropped when the value is dropped.
//! - [`TestRedis`]: a unique key prefix on the local Redis; its keys are
//!   deleted on drop.
//! - [`Process`]: one of the project's binaries started as a child process
//!   (killed on drop), for tests that must see real processes die.
//! - [`Client`]: the API client the `assay` CLI uses, with the tests' timeout.
//! - [`Browser`]: headless Chromium over WebDriver, for the web viewer's tests.
//! - [`Proxy`]: a TCP proxy a test can cut, to take Redis away from one process.
//! - [`Receiver`]: a local HTTP server that records webhook requests and
//!   answers with scripted statuses.
//! - [`PrivatePostgres`], [`PrivateRedis`]: servers of the test's own, to
//!   restart or flush without disturbing the tests running beside it.
//!
//! Defaults match the local services; `ASSAY_TEST_ADMIN_DATABASE_URL` and
//! `ASSAY_TEST_REDIS_URL` point elsewhere.

pub mod browser;
pub mod client;
mod process;
mod proxy;
mod receiver;
mod servers;

use std::time::Duration;

use anyhow::Context as _;
use assay_core::ids::{EvaluationId, TenantId};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub use browser::Browser;
pub use client::Client;
pub use process::{Process, binary, free_port};
pub use proxy::Proxy;
pub use receiver::{Received, Receiver};
pub use servers::{PrivatePostgres, PrivateRedis, redis_command_calls};

fn admin_url() -> String {
    std::env::var("ASSAY_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("ASSAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A short unique suffix for names of one test run.
fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A fresh database, migrated, dropped on drop.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The server's admin URL, to drop it from.
    admin: String,
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (a URL to an existing database there).
    pub async fn create_on(admin: &str) -> anyhow::Result<Self> {
        let name = format!("assay_test_{}", unique_suffix());
        let admin = admin.to_owned();
        let mut conn = AsyncPgConnection::establish(&admin)
            .await
            .with_context(|| {
                format!("connecting to {admin} (is PostgreSQL running? try `make deps`)")
            })?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => anyhow::bail!("ASSAY_TEST_ADMIN_DATABASE_URL has no database part"),
        };
        // From here on, dropping `database` drops the database, also when migrating fails.
        let database = Self { name, url, admin };
        // The migration harness needs a multi-thread runtime (`block_in_place`);
        // tests may run on a current-thread one, so give it its own.
        let migrate_url = database.url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(assay_core::db::run_migrations(&migrate_url))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("migration thread panicked"))??;
        Ok(database)
    }

    pub fn pool(&self, size: usize) -> assay_core::db::DbPool {
        assay_core::db::pool(&self.url, size).expect("pool builds")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop runs inside tokio tests: do the async work on a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&admin).await?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// apalis' global registry of queues (a sorted set of `<queue>:workers` keys).
const APALIS_QUEUES: &str = "core:apalis:queues:list";

/// A unique Redis key prefix; every key under it is deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> Self {
        Self::on(&redis_url())
    }

    /// A prefix on the Redis at `url`.
    pub fn on(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: format!("assay-test-{}", unique_suffix()),
        }
    }

    /// Keys under this prefix, e.g. to look at the queue.
    pub fn keys(&self) -> anyhow::Result<Vec<String>> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)?;
        Ok(keys)
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let cleaned = (|| -> anyhow::Result<()> {
            let client = redis::Client::open(self.url.as_str())?;
            let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
            let keys = self.keys()?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
            }
            // apalis lists every queue's workers key in one global set.
            let queues: Vec<String> = redis::cmd("ZRANGE")
                .arg(APALIS_QUEUES)
                .arg(0)
                .arg(-1)
                .query(&mut conn)?;
            let ours: Vec<&String> = queues
                .iter()
                .filter(|queue| queue.starts_with(&self.prefix))
                .collect();
            if !ours.is_empty() {
                redis::cmd("ZREM")
                    .arg(APALIS_QUEUES)
                    .arg(ours)
                    .query::<()>(&mut conn)?;
            }
            Ok(())
        })();
        if let Err(error) = cleaned {
            eprintln!(
                "warning: could not clean Redis prefix {}: {error}",
                self.prefix
            );
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a tenant and an API key for it in `database`.
pub async fn api_key(database: &TestDatabase, tenant: &str) -> anyhow::Result<String> {
    let pool = database.pool(1);
    let mut conn = pool.get().await?;
    let (_, key) = assay_core::db::models::api_keys::create_key(&mut conn, tenant).await?;
    Ok(key)
}

/// Creates a tenant (if new) and an API key of `scope` for it in `database`.
pub async fn api_key_with_scope(
    database: &TestDatabase,
    tenant: &str,
    scope: assay_core::db::models::api_keys::KeyScope,
) -> anyhow::Result<String> {
    let pool = database.pool(1);
    let mut conn = pool.get().await?;
    let (_, key) =
        assay_core::db::models::api_keys::create_key_with_scope(&mut conn, tenant, scope).await?;
    Ok(key)
}

/// The smallest valid evaluation of `items` items to hang result rows on
/// (a tenant, a prompt, a version, a dataset, the evaluation), written with
/// plain SQL; returns (tenant id, evaluation id).
pub async fn bare_evaluation(
    conn: &mut AsyncPgConnection,
    items: usize,
) -> anyhow::Result<(TenantId, EvaluationId)> {
    let (tenant, evaluation) = (TenantId::now_v7(), EvaluationId::now_v7());
    for statement in [
        format!("INSERT INTO tenants (id, name) VALUES ('{tenant}', 't-{tenant}')"),
        format!("INSERT INTO prompts (id, tenant_id, name) VALUES ('{tenant}', '{tenant}', 'p')"),
        format!("INSERT INTO prompt_versions (id, tenant_id, prompt_id, version, messages, content_hash, commit_message)
                 VALUES ('{tenant}', '{tenant}', '{tenant}', 1, '[]', 'h', 'm')"),
        format!("INSERT INTO datasets (id, tenant_id, name, item_count, variables, all_expected)
                 VALUES ('{tenant}', '{tenant}', 'd', {items}, '[]', false)"),
        format!("INSERT INTO evaluations (id, tenant_id, prompt_version_id, dataset_id, models, graders, total)
                 VALUES ('{evaluation}', '{tenant}', '{tenant}', '{tenant}', '[\"mock\"]', '[]', {items})"),
    ] {
        diesel::sql_query(statement).execute(conn).await?;
    }
    Ok((tenant, evaluation))
}
