//! Integration tests of the API, started in-process on port 0 against a
//! fresh database and Redis prefix per test (one binary, several modules,
//! to keep link time down).

mod bad_input;
mod compare;
mod datasets_csv;
mod history;
mod hostile_input;
mod idempotency;
mod keys;
mod queue_outage;
mod rate_limits;
mod resources;
mod slow_uploads;
mod snapshots;
mod tenancy;
mod versioning;
mod viewer;

use assay_api::rate_limit::GuardConfig;
use assay_api::startup::{ApiConfig, Application};
use assay_core::config::{SecretUrl, Settings};
use assay_core::request_limits::{Rate, RequestLimits};
use assay_testkit::{Client, TestDatabase, TestRedis};
use serde_json::{Value, json};

/// Items the in-process API renders for a cost estimate (`estimate_max_items`).
pub const ESTIMATE_MAX_ITEMS: i32 = 50;

/// A running API with its own database and Redis prefix.
pub struct TestApp {
    pub client: Client,
    pub database: TestDatabase,
    pub redis: TestRedis,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with_redis(None).await
    }

    /// With `redis_url`, the app reaches Redis there (e.g. through a proxy a test can cut).
    pub async fn spawn_with_redis(redis_url: Option<String>) -> TestApp {
        Self::spawn_with(redis_url, generous_guards()).await
    }

    /// With `guards` (rates, quotas, Idempotency-Key lock timeout) of the test's choosing.
    pub async fn spawn_with(redis_url: Option<String>, guards: GuardConfig) -> TestApp {
        let database = TestDatabase::create().await.expect("test database");
        let redis = TestRedis::new();
        let config = ApiConfig {
            settings: Settings {
                database_url: SecretUrl::new(database.url.clone()),
                redis_url: SecretUrl::new(redis_url.unwrap_or_else(|| redis.url.clone())),
                queue_prefix: redis.prefix.clone(),
                database_pool_size: 4,
                runs_per_chunk: assay_core::db::models::chunks::DEFAULT_RUNS_PER_CHUNK,
                // Small, so that a test can see an estimate scaled from a sample.
                estimate_max_items: ESTIMATE_MAX_ITEMS,
            },
            bind: "127.0.0.1:0".to_owned(),
            max_body_bytes: 1 << 20,
            http_workers: Some(2),
            body_timeouts: assay_api::body::BodyTimeouts {
                idle: std::time::Duration::from_secs(5),
                total: std::time::Duration::from_secs(60),
            },
            guards,
        };
        let application = Application::build(config).await.expect("app builds");
        let base_url = format!("http://127.0.0.1:{}", application.port());
        tokio::spawn(application.run_until_stopped());
        let key = assay_testkit::api_key(&database, "tenant-a")
            .await
            .expect("key");
        TestApp {
            client: Client::new(base_url, Some(key)),
            database,
            redis,
        }
    }

    /// A client of another tenant.
    pub async fn client_for(&self, tenant: &str) -> Client {
        let key = assay_testkit::api_key(&self.database, tenant)
            .await
            .expect("key");
        self.client.with_key(Some(key))
    }

    /// A prompt with one version; returns (prompt id, version id).
    pub async fn prompt(&self, client: &Client, name: &str, template: &str) -> (String, String) {
        let response = client
            .post(
                "/v1/prompts",
                &json!({"name": name, "messages": [{"role": "user", "content": template}]}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{:?}", response.body);
        (
            id(&response.body["id"]),
            id(&response.body["latest_version"]["id"]),
        )
    }

    /// A dataset of `count` items with vars `question` and expected output.
    pub async fn dataset(&self, client: &Client, count: usize) -> String {
        let items: Vec<Value> = (0..count)
            .map(|n| json!({"vars": {"question": format!("q{n}")}, "expected": format!("q{n}")}))
            .collect();
        let response = client
            .post("/v1/datasets", &json!({"name": "ds", "items": items}))
            .await
            .unwrap();
        assert_eq!(response.status, 201, "{:?}", response.body);
        id(&response.body["id"])
    }

    /// Rows in `table` (to check that a rejected request wrote nothing).
    pub async fn count_rows(&self, table: &str) -> i64 {
        use diesel::QueryableByName;
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let pool = self.database.pool(1);
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query(format!("SELECT count(*) AS count FROM {table}"))
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .count
    }
}

/// Rates no ordinary test reaches (tests of the limits choose their own).
pub fn generous_guards() -> GuardConfig {
    let unlimited = Rate {
        per_minute: 1_000_000,
        burst: 100_000,
    };
    GuardConfig {
        limits: RequestLimits {
            reads: unlimited,
            writes: unlimited,
            ..RequestLimits::default()
        },
        ..GuardConfig::default()
    }
}

pub fn id(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected an id, got {value}"))
        .to_owned()
}
