//! End-to-end tests: the real `assay-api` and `assay-worker` binaries as
//! processes, against real PostgreSQL and Redis, over real HTTP.

mod api_contract;
mod bombs;
mod budgets;
mod cli;
mod contract;
mod evaluation;
mod graders;
mod hostile_templates;
mod observability;
mod poison;
mod pressure;
mod providers;
mod recovery;
mod spread;
mod ui;
mod versioning;
mod webhooks;
mod worker_failures;

use std::path::PathBuf;
use std::time::Duration;

use assay_testkit::client::encode;
use assay_testkit::{Client, Process, TestDatabase, TestRedis, eventually, free_port};
use serde_json::{Value, json};

/// The API and some workers on a fresh database and Redis prefix.
///
/// Fields drop in declaration order: the processes are killed before their
/// database is dropped and their Redis keys are deleted, so no heartbeat
/// lands after the clean-up.
pub struct Stack {
    pub workers: Vec<(Process, u16)>,
    pub api: Process,
    pub client: Client,
    pub database: TestDatabase,
    pub redis: TestRedis,
    /// Environment every process gets on top of the defaults.
    extra_env: Vec<(&'static str, String)>,
    /// Where processes write their output (None: the test's stderr).
    log_dir: Option<PathBuf>,
}

/// How [`Stack::start_with`] sets processes up.
#[derive(Default)]
pub struct StackOptions {
    /// Environment of every process on top of the defaults (a registry file, API keys).
    pub env: Vec<(&'static str, String)>,
    /// A directory for `api.log` and `worker-<n>.log`.
    pub log_dir: Option<PathBuf>,
    /// Another PostgreSQL server (its admin URL) than the machine's.
    pub postgres_admin_url: Option<String>,
    /// Another Redis than the machine's.
    pub redis_url: Option<String>,
}

impl Stack {
    pub async fn start(workers: usize, worker_args: &[&str]) -> Stack {
        Self::start_with(workers, worker_args, StackOptions::default()).await
    }

    pub async fn start_with(workers: usize, worker_args: &[&str], options: StackOptions) -> Stack {
        let database = match &options.postgres_admin_url {
            Some(admin) => TestDatabase::create_on(admin).await,
            None => TestDatabase::create().await,
        }
        .expect("database");
        let redis = match &options.redis_url {
            Some(url) => TestRedis::on(url),
            None => TestRedis::new(),
        };
        let port = free_port();
        let mut env = Self::env_of(&database, &redis, port);
        env.extend(options.env.iter().cloned());
        let api = Process::start_logged(
            "assay-api",
            &["serve"],
            &env,
            options
                .log_dir
                .as_ref()
                .map(|dir| dir.join("api.log"))
                .as_deref(),
        )
        .expect("api starts");
        let key = assay_testkit::api_key(&database, "e2e").await.expect("key");
        let client = Client::new(format!("http://127.0.0.1:{port}"), Some(key));
        eventually(
            Duration::from_secs(20),
            "the API to answer /healthz",
            || async {
                Ok(client
                    .get("/healthz")
                    .await
                    .ok()
                    .filter(|response| response.status == 200))
            },
        )
        .await
        .expect("api is up");
        let mut stack = Stack {
            database,
            redis,
            api,
            workers: Vec::new(),
            client,
            extra_env: options.env,
            log_dir: options.log_dir,
        };
        for _ in 0..workers {
            stack.start_worker(worker_args).await;
        }
        stack
    }

    fn env_of(
        database: &TestDatabase,
        redis: &TestRedis,
        port: u16,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", database.url.clone()),
            ("REDIS_URL", redis.url.clone()),
            ("ASSAY_QUEUE_PREFIX", redis.prefix.clone()),
            ("ASSAY_BIND", format!("127.0.0.1:{port}")),
            ("ASSAY_DATABASE_POOL_SIZE", "8".to_owned()),
            ("HOSTNAME", "e2e".to_owned()),
            // Tests of the rate limits set their own; the others must never meet one.
            ("ASSAY_RATE_READS_PER_MINUTE", "1000000".to_owned()),
            ("ASSAY_RATE_READ_BURST", "100000".to_owned()),
            ("ASSAY_RATE_WRITES_PER_MINUTE", "1000000".to_owned()),
            ("ASSAY_RATE_WRITE_BURST", "100000".to_owned()),
        ]
    }

    /// Starts one more worker; returns its index in `workers`.
    pub async fn start_worker(&mut self, args: &[&str]) -> usize {
        let redis_url = self.redis.url.clone();
        self.start_worker_via(args, redis_url).await
    }

    /// Starts one more worker that reaches Redis at `redis_url`.
    pub async fn start_worker_via(&mut self, args: &[&str], redis_url: String) -> usize {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let mut all_args = vec![
            "--bind",
            bind.as_str(),
            "--poll-interval",
            "200ms",
            "--shutdown-timeout",
            "10s",
        ];
        all_args.extend_from_slice(args);
        let mut env = Self::env_of(&self.database, &self.redis, 0);
        env.extend(self.extra_env.iter().cloned());
        env.push(("REDIS_URL", redis_url));
        let log = self
            .log_dir
            .as_ref()
            .map(|dir| dir.join(format!("worker-{}.log", self.workers.len())));
        let worker = Process::start_logged("assay-worker", &all_args, &env, log.as_deref())
            .expect("worker starts");
        let probe = Client::new(format!("http://127.0.0.1:{port}"), None);
        eventually(
            Duration::from_secs(20),
            "the worker to answer /readyz",
            || async {
                Ok(probe
                    .get("/readyz")
                    .await
                    .ok()
                    .filter(|response| response.status == 200))
            },
        )
        .await
        .expect("worker is up");
        self.workers.push((worker, port));
        self.workers.len() - 1
    }

    /// The worker's `/metrics` text.
    pub async fn worker_metrics(&self, index: usize) -> String {
        let probe = Client::new(format!("http://127.0.0.1:{}", self.workers[index].1), None);
        let response = probe.get("/metrics").await.expect("metrics");
        response.body.as_str().expect("metrics are text").to_owned()
    }

    /// Creates a prompt `{{ question }}` and a dataset of `items` questions
    /// `What is qN?` with expected `qN`; submits an evaluation. Returns its id.
    pub async fn submit(&self, items: usize, models: &[&str], graders: Value) -> String {
        let prompt = self
            .client
            .post(
                "/v1/prompts",
                &json!({"name": format!("p-{}", uuid::Uuid::new_v4()),
                        "messages": [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "{{ question }}"}]}),
            )
            .await
            .unwrap();
        assert_eq!(prompt.status, 201, "{:?}", prompt.body);
        let items: Vec<Value> = (0..items)
            .map(|n| json!({"id": format!("item-{n}"), "vars": {"question": question(n)}, "expected": format!("q{n}")}))
            .collect();
        let dataset = self
            .client
            .post(
                "/v1/datasets",
                &json!({"name": "questions", "items": items}),
            )
            .await
            .unwrap();
        assert_eq!(dataset.status, 201, "{:?}", dataset.body);
        let evaluation = self
            .client
            .post(
                "/v1/evaluations",
                &json!({
                    "prompt_version_id": prompt.body["latest_version"]["id"],
                    "dataset_id": dataset.body["id"],
                    "models": models,
                    "graders": graders,
                }),
            )
            .await
            .unwrap();
        assert_eq!(evaluation.status, 202, "{:?}", evaluation.body);
        evaluation.body["id"].as_str().unwrap().to_owned()
    }

    /// A prompt whose one user message is `template`; returns its version id.
    pub async fn prompt(&self, template: &str) -> Value {
        let prompt = self
            .client
            .post(
                "/v1/prompts",
                &json!({"name": format!("p-{}", uuid::Uuid::new_v4()),
                        "messages": [{"role": "user", "content": template}]}),
            )
            .await
            .unwrap();
        assert_eq!(prompt.status, 201, "{:?}", prompt.body);
        prompt.body["latest_version"]["id"].clone()
    }

    pub async fn dataset(&self, items: Vec<Value>) -> Value {
        let dataset = self
            .client
            .post("/v1/datasets", &json!({"name": "d", "items": items}))
            .await
            .unwrap();
        assert_eq!(dataset.status, 201, "{:?}", dataset.body);
        dataset.body["id"].clone()
    }

    /// Submits an evaluation body; returns its id.
    pub async fn submit_body(&self, body: Value) -> String {
        let evaluation = self.client.post("/v1/evaluations", &body).await.unwrap();
        assert_eq!(evaluation.status, 202, "{:?}", evaluation.body);
        evaluation.body["id"].as_str().unwrap().to_owned()
    }

    /// Sum of `assay_llm_calls_total` samples over every worker whose labels contain all of `labels`.
    pub async fn llm_calls(&self, labels: &[&str]) -> f64 {
        self.metric_sum("assay_llm_calls_total", labels).await
    }

    /// Sum of a counter's samples over every worker whose labels contain all of `labels`.
    pub async fn metric_sum(&self, metric: &str, labels: &[&str]) -> f64 {
        let (labelled, plain) = (format!("{metric}{{"), format!("{metric} "));
        let mut total = 0.0;
        for index in 0..self.workers.len() {
            for line in self.worker_metrics(index).await.lines() {
                if (line.starts_with(&labelled) || line.starts_with(&plain))
                    && labels.iter().all(|label| line.contains(label))
                {
                    total += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
                }
            }
        }
        total
    }

    pub async fn evaluation(&self, id: &str) -> Value {
        let response = self
            .client
            .get(&format!("/v1/evaluations/{id}"))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{:?}", response.body);
        response.body
    }

    /// Polls until the evaluation is finished; returns it.
    pub async fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        eventually(limit, "the evaluation to finish", || async {
            let evaluation = self.evaluation(id).await;
            let status = evaluation["status"].as_str().unwrap_or_default().to_owned();
            Ok(["succeeded", "failed", "canceled"]
                .contains(&status.as_str())
                .then_some(evaluation))
        })
        .await
        .unwrap()
    }

    /// Every result, through the paginated API.
    pub async fn results(&self, id: &str) -> Vec<Value> {
        let mut results = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                None => format!("/v1/evaluations/{id}/results?limit=1000"),
                Some(after) => format!(
                    "/v1/evaluations/{id}/results?limit=1000&after={}",
                    encode(after)
                ),
            };
            let page = self.client.get(&path).await.unwrap();
            assert_eq!(page.status, 200, "{:?}", page.body);
            results.extend(page.body["data"].as_array().unwrap().iter().cloned());
            match page.body["next_after"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return results,
            }
        }
    }

    /// Actors of the events of one evaluation with `action`.
    pub async fn event_actors(&self, id: &str, action: &str) -> Vec<String> {
        let pool = self.database.pool(1);
        let mut conn = pool.get().await.unwrap();
        let tenant_and_events = assay_core::db::models::events::for_resource(
            &mut conn,
            self.tenant_id().await,
            id.parse().unwrap(),
        )
        .await
        .unwrap();
        tenant_and_events
            .into_iter()
            .filter(|event| event.action == action)
            .map(|event| event.actor)
            .collect()
    }

    async fn tenant_id(&self) -> assay_core::ids::TenantId {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let pool = self.database.pool(1);
        let mut conn = pool.get().await.unwrap();
        assay_core::db::schema::tenants::table
            .filter(assay_core::db::schema::tenants::name.eq("e2e"))
            .select(assay_core::db::schema::tenants::id)
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// Waits until `count` workers heartbeat in Redis: what the API counts
    /// when it cuts an evaluation into chunks.
    pub async fn wait_live_workers(&self, count: u64) {
        let queue = assay_core::queue::JobQueue::connect(&self.redis.url, &self.redis.prefix)
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the workers to heartbeat",
            || async { Ok((queue.live_workers().await? == count).then_some(())) },
        )
        .await
        .unwrap();
    }

    /// Chunks in the plan of an evaluation.
    pub async fn chunk_count(&self, id: &str) -> i64 {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let evaluation: uuid::Uuid = id.parse().unwrap();
        let pool = self.database.pool(1);
        let mut conn = pool.get().await.unwrap();
        assay_core::db::schema::evaluation_chunks::table
            .filter(assay_core::db::schema::evaluation_chunks::evaluation_id.eq(evaluation))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    }

    /// Index of the worker whose process id is in `actor` (`worker:e2e-<pid>`).
    pub fn worker_of(&mut self, actor: &str) -> usize {
        let pid: u32 = actor.rsplit('-').next().unwrap().parse().unwrap();
        self.workers
            .iter()
            .position(|(process, _)| process.pid() == pid)
            .expect("a worker of this stack")
    }
}

pub fn question(n: usize) -> String {
    format!("What is q{n}?")
}
