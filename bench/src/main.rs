//! `assay-bench`: the scale-out benchmarks of `make bench`.
//!
//! Each scenario starts everything itself — a fresh database and Redis
//! prefix, the real `assay-api` and `assay-worker` binaries (release builds,
//! next to this one) and the mock LLM server in this process — submits an
//! evaluation over HTTP and times it from submission to `succeeded` with the
//! evaluation's own timestamps. It prints a Markdown section for
//! BENCHMARKS.md on stdout (progress goes to stderr).
//!
//! - latency-bound efficiency: 10,000 items at 200 ms with 1, 2 and 4
//!   workers at `--concurrency 100` (ideal: calls in flight / latency), and
//!   one worker at `--concurrency 1000`, with where its CPU time goes;
//! - overhead floor: 20,000 items at 0 ms, through the built-in mock and
//!   through the mock server over HTTP;
//! - memory: peak RSS of the worker at 1,000 calls in flight, and of the API
//!   during a 100,000-item evaluation (restarted after the upload, so that
//!   its peak is the evaluation's, not the upload's);
//! - scale-out: 4 workers' throughput over 1 worker's;
//! - comparison: `GET /v1/evaluations/{a}/compare/{b}` on two 20,000-item
//!   (and two 100,000-item) evaluations ([`compare`]).
//!
//! - the client: `assay eval` on a 10,000-test CSV with a JUnit export, and
//!   the client's peak memory ([`cli`]).
//!
//! - the web viewer: the first screen of each page of a 100,000-item
//!   evaluation in headless Chromium ([`viewer`]).
//!
//! - even spread: 1,000 items on 1 and on 2 workers, 10 runs each: the
//!   calls each worker makes and the time against half the 1-worker time
//!   ([`spread`]).
//!
//! - providers under pressure: random 429s, a hard cap the registry does not
//!   know, and the CPU a shared rate limit costs per call ([`pressure`]).
//!
//! `--only compare`, `--only cli`, `--only viewer`, `--only spread` and
//! `--only pressure` run one case alone.
//!
//! Figures compare within one run: the machine may be shared and noisy.

mod cli;
mod compare;
mod pressure;
mod spread;
mod viewer;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_mockllm::MockConfig;
use assay_testkit::{Client, Process, TestDatabase, TestRedis, free_port};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "assay-bench", about = "Assay's scale-out benchmarks")]
struct Cli {
    /// Items of the latency-bound runs.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Items of the overhead-floor runs.
    #[arg(long, default_value_t = 20_000)]
    floor_items: usize,
    /// Items of the API-memory run.
    #[arg(long, default_value_t = 100_000)]
    large_items: usize,
    /// Mock latency of the latency-bound runs.
    #[arg(long, default_value = "200ms", value_parser = humantime_ms)]
    latency: Duration,
    /// Items per evaluation of the comparison runs.
    #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
    compare_items: Vec<usize>,
    /// Run one case only (`compare`, `cli`, `viewer` or `pressure`).
    #[arg(long)]
    only: Option<String>,
    /// Tests of the client run.
    #[arg(long, default_value_t = 10_000)]
    cli_tests: usize,
    /// Items of the web viewer's evaluation.
    #[arg(long, default_value_t = 100_000)]
    viewer_items: usize,
    /// Items of the even-spread case.
    #[arg(long, default_value_t = 1_000)]
    spread_items: usize,
    /// Runs of the even-spread case, on 1 worker and on 2.
    #[arg(long, default_value_t = 10)]
    spread_runs: usize,
    /// Calls in flight per worker in the even-spread case.
    #[arg(long, default_value_t = 64)]
    spread_concurrency: usize,
    /// Mock latency of the even-spread case.
    #[arg(long, default_value = "200ms", value_parser = humantime_ms)]
    spread_latency: Duration,
}

impl Cli {
    fn spread(&self) -> spread::Setup {
        spread::Setup {
            items: self.spread_items,
            runs: self.spread_runs,
            concurrency: self.spread_concurrency,
            latency: self.spread_latency,
        }
    }
}

fn humantime_ms(text: &str) -> Result<Duration, String> {
    let millis = text
        .strip_suffix("ms")
        .and_then(|millis| millis.parse::<u64>().ok())
        .ok_or("a latency like 200ms")?;
    Ok(Duration::from_millis(millis))
}

/// The mock LLM server, in this process.
struct Mock {
    url: String,
}

/// How the last `calls` requests a mock server received arrived: the
/// milliseconds until `pipeline` of them had started, and the rate after that.
async fn arrivals(mock: &Mock, calls: usize, pipeline: usize) -> anyhow::Result<(f64, f64)> {
    let log: Vec<Value> = reqwest::get(format!("{}/requests", mock.url))
        .await?
        .json()
        .await?;
    let mut at: Vec<i64> = log
        .iter()
        .rev()
        .take(calls)
        .filter_map(|request| request["at_ms"].as_i64())
        .collect();
    at.sort_unstable();
    let (Some(first), Some(last)) = (at.first(), at.last()) else {
        anyhow::bail!("the mock server saw no request");
    };
    let filled = at.get(pipeline.saturating_sub(1)).copied().unwrap_or(*last);
    let after = at.len().saturating_sub(pipeline) as f64;
    let rate = after / ((last - filled).max(1) as f64 / 1000.0);
    Ok(((filled - first) as f64, rate))
}

impl Mock {
    fn start(latency: Duration) -> anyhow::Result<Self> {
        Self::start_with(MockConfig {
            latency,
            // The arrival of every request: how fast a worker fills its pipeline.
            record_requests: true,
            ..MockConfig::default()
        })
    }

    fn start_with(config: MockConfig) -> anyhow::Result<Self> {
        let server = assay_mockllm::build("127.0.0.1:0", config)?;
        let url = format!("http://127.0.0.1:{}", server.port);
        tokio::spawn(server.server);
        Ok(Self { url })
    }
}

/// The API and some workers on a fresh database and Redis prefix. Fields
/// drop in order: processes first, then the database and the keys.
struct Deployment {
    workers: Vec<Process>,
    /// The workers' ops ports (`/metrics`).
    worker_ports: Vec<u16>,
    api: Process,
    client: Client,
    api_port: u16,
    env: Vec<(&'static str, String)>,
    /// Held so that they are dropped (database and keys deleted) last.
    _database: TestDatabase,
    _redis: TestRedis,
    dir: PathBuf,
}

impl Deployment {
    /// Starts the API and `workers` workers at `concurrency`; `mock` makes
    /// the model `bench` the mock server over the OpenAI wire format.
    async fn start(
        workers: usize,
        concurrency: usize,
        mock: Option<&Mock>,
    ) -> anyhow::Result<Self> {
        Self::start_with(workers, concurrency, mock, "", TestRedis::new()).await
    }

    /// As [`Deployment::start`], with `registry_extra` added to the model
    /// `bench`'s entry (limits, say) and the keys under `redis`.
    async fn start_with(
        workers: usize,
        concurrency: usize,
        mock: Option<&Mock>,
        registry_extra: &str,
        redis: TestRedis,
    ) -> anyhow::Result<Self> {
        let database = TestDatabase::create().await?;
        let dir =
            std::env::temp_dir().join(format!("assay-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut env = vec![
            ("DATABASE_URL", database.url.clone()),
            ("REDIS_URL", redis.url.clone()),
            ("ASSAY_QUEUE_PREFIX", redis.prefix.clone()),
            ("RUST_LOG", "warn".to_owned()),
            ("HOSTNAME", "bench".to_owned()),
        ];
        if let Some(mock) = mock {
            let registry = dir.join("models.toml");
            std::fs::write(
                &registry,
                format!(
                    "[models.bench]\nprovider = \"openai\"\nmodel = \"mock\"\nbase_url = \"{}/v1\"\ntimeout = \"120s\"\n{registry_extra}\n",
                    mock.url
                ),
            )?;
            env.push(("ASSAY_MODELS_FILE", registry.display().to_string()));
        }
        let api_port = free_port();
        let api = start_api(&env, api_port, &dir).await?;
        let key = assay_testkit::api_key(&database, "bench").await?;
        let client = Client::new(format!("http://127.0.0.1:{api_port}"), Some(key));
        let mut deployment = Self {
            workers: Vec::new(),
            worker_ports: Vec::new(),
            api,
            client,
            api_port,
            env,
            _database: database,
            _redis: redis,
            dir,
        };
        for _ in 0..workers {
            deployment.start_worker(concurrency).await?;
        }
        Ok(deployment)
    }

    async fn start_worker(&mut self, concurrency: usize) -> anyhow::Result<()> {
        let port = free_port();
        let bind = format!("127.0.0.1:{port}");
        let concurrency = concurrency.to_string();
        let log = self.dir.join(format!("worker-{}.log", self.workers.len()));
        let worker = Process::start_logged(
            "assay-worker",
            &["--bind", &bind, "--concurrency", &concurrency],
            &self.env,
            Some(&log),
        )?;
        wait_ready(&format!("http://{bind}/readyz")).await?;
        self.workers.push(worker);
        self.worker_ports.push(port);
        Ok(())
    }

    /// Sum of a metric's samples over every worker.
    async fn worker_metric(&self, metric: &str) -> f64 {
        let mut total = 0.0;
        for port in &self.worker_ports {
            let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await
            else {
                continue;
            };
            let text = response.text().await.unwrap_or_default();
            total += text
                .lines()
                .filter(|line| {
                    line.starts_with(metric) && line[metric.len()..].starts_with(['{', ' '])
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }

    /// Stops the API and starts a fresh one (same port, same database).
    async fn restart_api(&mut self) -> anyhow::Result<()> {
        self.api.signal("TERM")?;
        self.api.wait(Duration::from_secs(30)).await?;
        self.api = start_api(&self.env, self.api_port, &self.dir).await?;
        Ok(())
    }

    async fn prompt(&self) -> anyhow::Result<Value> {
        let prompt = self
            .client
            .post(
                "/v1/prompts",
                &json!({"name": format!("bench-{}", uuid::Uuid::new_v4()),
                        "messages": [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "{{ question }}"}]}),
            )
            .await?;
        anyhow::ensure!(
            prompt.status == 201,
            "creating the prompt: {:?}",
            prompt.body
        );
        Ok(prompt.body["latest_version"]["id"].clone())
    }

    /// A dataset of `items` questions, uploaded as JSON Lines.
    async fn dataset(&self, items: usize) -> anyhow::Result<Value> {
        let mut lines = String::with_capacity(items * 64);
        for n in 0..items {
            let _ = writeln!(
                lines,
                "{}",
                json!({"vars": {"question": format!("What is q{n}?")}, "expected": format!("q{n}")})
            );
        }
        let dataset = self
            .client
            .post_raw("/v1/datasets?name=bench", "application/x-ndjson", lines)
            .await?;
        anyhow::ensure!(
            dataset.status == 201,
            "uploading the dataset: {:?}",
            dataset.body
        );
        Ok(dataset.body["id"].clone())
    }

    /// Submits an evaluation and waits for it; returns the finished evaluation.
    async fn evaluate(
        &self,
        version: &Value,
        dataset: &Value,
        model: &str,
    ) -> anyhow::Result<Value> {
        self.evaluate_polling(version, dataset, model, Duration::from_millis(50))
            .await
    }

    /// As [`Deployment::evaluate`], looking every `poll`.
    async fn evaluate_polling(
        &self,
        version: &Value,
        dataset: &Value,
        model: &str,
        poll: Duration,
    ) -> anyhow::Result<Value> {
        let submitted = self
            .client
            .post(
                "/v1/evaluations",
                &json!({"prompt_version_id": version, "dataset_id": dataset, "models": [model],
                        "graders": [{"type": "contains", "value": "{{ expected }}"}]}),
            )
            .await?;
        anyhow::ensure!(submitted.status == 202, "submitting: {:?}", submitted.body);
        let id = submitted.body["id"].as_str().context("an id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let evaluation = self
                .client
                .get(&format!("/v1/evaluations/{id}"))
                .await?
                .body;
            match evaluation["status"].as_str() {
                Some("succeeded") => return Ok(evaluation),
                Some("failed" | "canceled") => anyhow::bail!("the evaluation ended {evaluation}"),
                _ => {}
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the evaluation did not finish: {evaluation}"
            );
            tokio::time::sleep(poll).await;
        }
    }
}

impl Deployment {
    fn database(&self) -> &TestDatabase {
        &self._database
    }

    fn redis(&self) -> &TestRedis {
        &self._redis
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_api(
    env: &[(&'static str, String)],
    port: u16,
    dir: &std::path::Path,
) -> anyhow::Result<Process> {
    let mut env = env.to_vec();
    env.push(("ASSAY_BIND", format!("127.0.0.1:{port}")));
    // The benchmark's client polls and submits far above a tenant's default rates.
    for name in [
        "ASSAY_RATE_READS_PER_MINUTE",
        "ASSAY_RATE_WRITES_PER_MINUTE",
    ] {
        env.push((name, "1000000".to_owned()));
    }
    for name in ["ASSAY_RATE_READ_BURST", "ASSAY_RATE_WRITE_BURST"] {
        env.push((name, "100000".to_owned()));
    }
    let api = Process::start_logged("assay-api", &["serve"], &env, Some(&dir.join("api.log")))?;
    wait_ready(&format!("http://127.0.0.1:{port}/readyz")).await?;
    Ok(api)
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn micros(timestamp: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(timestamp.as_str().unwrap_or_default())
        .map(|time| time.timestamp_micros())
        .unwrap_or(0)
}

/// Seconds from submission to `succeeded`, by the evaluation's timestamps.
fn seconds(evaluation: &Value) -> f64 {
    (micros(&evaluation["finished_at"]) - micros(&evaluation["created_at"])) as f64 / 1e6
}

/// Where the wall time of an evaluation went: waiting for the first chunk
/// to start, running the calls (to the last result written), finishing.
async fn phases(deployment: &Deployment, evaluation: &Value) -> anyhow::Result<[f64; 3]> {
    let last_result = all_results(deployment, evaluation)
        .await?
        .iter()
        .map(|result| micros(&result["created_at"]))
        .max()
        .unwrap_or(0);
    let (created, started, finished) = (
        micros(&evaluation["created_at"]),
        micros(&evaluation["started_at"]),
        micros(&evaluation["finished_at"]),
    );
    Ok([
        (started - created) as f64 / 1e6,
        (last_result - started) as f64 / 1e6,
        (finished - last_result) as f64 / 1e6,
    ])
}

/// Every result of an evaluation, paged through the API.
async fn all_results(deployment: &Deployment, evaluation: &Value) -> anyhow::Result<Vec<Value>> {
    let id = evaluation["id"].as_str().context("an id")?;
    let mut results = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/v1/evaluations/{id}/results?limit=1000"),
            Some(after) => format!("/v1/evaluations/{id}/results?limit=1000&after={after}"),
        };
        let mut page = deployment.client.get(&path).await?.body;
        let next = page["next_after"]
            .as_str()
            .map(|next| next.replace(':', "%3A"));
        if let Value::Array(data) = page["data"].take() {
            results.extend(data);
        }
        match next {
            Some(next) => after = Some(next),
            None => return Ok(results),
        }
    }
}

/// Peak resident memory of a process, in MB (`VmHWM`).
fn peak_rss_mb(pid: u32) -> f64 {
    proc_status_kb(pid, "VmHWM:") / 1024.0
}

fn proc_status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0.0)
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every PostgreSQL process now running.
fn postgres_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "postgres")
                })
                .map(|pid| cpu_seconds(&pid))
                .sum()
        })
        .unwrap_or(0.0)
}

/// One timed evaluation.
struct Run {
    items: usize,
    seconds: f64,
    /// Submission to the first chunk's start, the calls, and the last
    /// result to `succeeded` (summary and finalization), in seconds.
    phases: [f64; 3],
    ideal_per_second: Option<f64>,
    worker_peak_mb: Vec<f64>,
    /// CPU seconds during the run: workers, API, PostgreSQL, this process (mock server).
    cpu: [f64; 4],
    /// Mean duration of one LLM call as the workers saw it, in seconds.
    mean_call: f64,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.items as f64 / self.seconds
    }

    fn efficiency(&self) -> Option<f64> {
        self.ideal_per_second.map(|ideal| self.per_second() / ideal)
    }
}

/// Runs `items` on `model` with `workers` workers at `concurrency`.
async fn scenario(
    label: &str,
    items: usize,
    workers: usize,
    concurrency: usize,
    mock: Option<&Mock>,
    model: &str,
    ideal_per_second: Option<f64>,
) -> anyhow::Result<Run> {
    eprintln!("==> {label}: {items} items, {workers} worker(s) at --concurrency {concurrency}");
    let deployment = Deployment::start(workers, concurrency, mock).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(items).await?;
    let cpu_now = |deployment: &Deployment| {
        [
            deployment
                .workers
                .iter()
                .map(|worker| cpu_seconds(&worker.pid().to_string()))
                .sum::<f64>(),
            cpu_seconds(&deployment.api.pid().to_string()),
            postgres_cpu_seconds(),
            cpu_seconds("self"),
        ]
    };
    let before = cpu_now(&deployment);
    let evaluation = deployment.evaluate(&version, &dataset, model).await?;
    let after = cpu_now(&deployment);
    let run = Run {
        items,
        seconds: seconds(&evaluation),
        phases: phases(&deployment, &evaluation).await?,
        ideal_per_second,
        worker_peak_mb: deployment
            .workers
            .iter()
            .map(|worker| peak_rss_mb(worker.pid()))
            .collect(),
        cpu: [0, 1, 2, 3].map(|index| after[index] - before[index]),
        mean_call: deployment
            .worker_metric("assay_llm_call_duration_seconds_sum")
            .await
            / deployment
                .worker_metric("assay_llm_call_duration_seconds_count")
                .await
                .max(1.0),
    };
    eprintln!(
        "    {:.0} items/s in {:.2} s{}",
        run.per_second(),
        run.seconds,
        run.efficiency()
            .map(|efficiency| format!(", {:.0}% of ideal", efficiency * 100.0))
            .unwrap_or_default()
    );
    Ok(run)
}

/// The API's peak memory during a large evaluation, apart from the upload's.
struct LargeRun {
    run: Run,
    api_upload_peak_mb: f64,
    api_evaluation_peak_mb: f64,
}

async fn large(items: usize) -> anyhow::Result<LargeRun> {
    eprintln!("==> API memory: {items} items, 2 workers, built-in mock at 0 ms");
    let mut deployment = Deployment::start(2, 200, None).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(items).await?;
    let api_upload_peak_mb = peak_rss_mb(deployment.api.pid());
    deployment.restart_api().await?;
    let evaluation = deployment.evaluate(&version, &dataset, "mock").await?;
    // Page through every result, as a client reading them all would.
    let mut after: Option<String> = None;
    let mut read = 0;
    let id = evaluation["id"].as_str().context("an id")?;
    loop {
        let path = match &after {
            None => format!("/v1/evaluations/{id}/results?limit=1000"),
            Some(after) => format!("/v1/evaluations/{id}/results?limit=1000&after={after}"),
        };
        let page = deployment.client.get(&path).await?.body;
        read += page["data"].as_array().map_or(0, Vec::len);
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.replace(':', "%3A")),
            None => break,
        }
    }
    anyhow::ensure!(read == items, "read {read} of {items} results");
    let run = Run {
        items,
        seconds: seconds(&evaluation),
        phases: [0.0; 3],
        ideal_per_second: None,
        worker_peak_mb: deployment
            .workers
            .iter()
            .map(|worker| peak_rss_mb(worker.pid()))
            .collect(),
        cpu: [0.0; 4],
        mean_call: 0.0,
    };
    let api_evaluation_peak_mb = peak_rss_mb(deployment.api.pid());
    eprintln!(
        "    {:.0} items/s; API peak {api_evaluation_peak_mb:.0} MB (upload: {api_upload_peak_mb:.0} MB)",
        run.per_second()
    );
    Ok(LargeRun {
        run,
        api_upload_peak_mb,
        api_evaluation_peak_mb,
    })
}

fn percent(value: f64) -> String {
    format!("{:.0}%", value * 100.0)
}

fn mark(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.only.as_deref() == Some("cli") {
        println!("{}", cli::report(&cli::run(cli.cli_tests).await?));
        return Ok(());
    }
    if cli.only.as_deref() == Some("pressure") {
        println!("{}", pressure::run().await?);
        return Ok(());
    }
    if cli.only.as_deref() == Some("viewer") {
        println!("{}", viewer::report(&viewer::run(cli.viewer_items).await?));
        return Ok(());
    }
    if cli.only.as_deref() == Some("spread") {
        println!("{}", spread::report(&spread::run(cli.spread()).await?)?);
        return Ok(());
    }
    let mut compare_runs = Vec::new();
    for items in &cli.compare_items {
        compare_runs.push(compare::run(*items).await?);
    }
    match cli.only.as_deref() {
        Some("compare") => {
            println!("{}", compare::report(&compare_runs));
            return Ok(());
        }
        Some(other) => {
            anyhow::bail!("unknown case {other:?} (compare, cli, viewer, spread, pressure)")
        }
        None => {}
    }
    let latency = cli.latency.as_secs_f64();
    let slow = Mock::start(cli.latency)?;
    let mut latency_runs = Vec::new();
    for workers in [1, 2, 4] {
        let ideal = (workers * 100) as f64 / latency;
        latency_runs.push((
            workers,
            scenario(
                "latency-bound",
                cli.items,
                workers,
                100,
                Some(&slow),
                "bench",
                Some(ideal),
            )
            .await?,
        ));
    }
    let wide = scenario(
        "latency-bound, one wide worker",
        cli.items,
        1,
        1000,
        Some(&slow),
        "bench",
        Some(1000.0 / latency),
    )
    .await?;
    let (fill_ms, steady_rate) = arrivals(&slow, cli.items, 1000).await?;
    let fast = Mock::start(Duration::ZERO)?;
    let floor_builtin = scenario(
        "overhead floor, built-in mock",
        cli.floor_items,
        1,
        256,
        None,
        "mock",
        None,
    )
    .await?;
    let floor_http = scenario(
        "overhead floor, mock server",
        cli.floor_items,
        1,
        256,
        Some(&fast),
        "bench",
        None,
    )
    .await?;
    let large = large(cli.large_items).await?;
    let spread = spread::run(cli.spread()).await?;
    let pressure = pressure::run().await?;
    let client = cli::run(cli.cli_tests).await?;

    let mut out = String::new();
    let latency_ms = cli.latency.as_millis();
    let _ = writeln!(
        out,
        "### Scale-out (release build, real binaries, mock LLM server over HTTP)\n"
    );
    let _ = writeln!(
        out,
        "**Latency-bound efficiency**: {} items at {latency_ms} ms per call; ideal = calls in flight ÷ latency. Target ≥ 90% of ideal.\n",
        cli.items
    );
    let _ = writeln!(
        out,
        "| workers × --concurrency | items/s | ideal | efficiency | target | worker peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (workers, run) in latency_runs
        .iter()
        .map(|(workers, run)| (*workers, run))
        .chain([(1, &wide)])
    {
        let concurrency = if std::ptr::eq(run, &wide) { 1000 } else { 100 };
        let efficiency = run.efficiency().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| {workers} × {concurrency} | {:.0} | {:.0} | {} | {} | {} |",
            run.per_second(),
            run.ideal_per_second.unwrap_or(0.0),
            percent(efficiency),
            if concurrency == 1000 {
                "report".to_owned()
            } else {
                mark(efficiency >= 0.9).to_owned()
            },
            run.worker_peak_mb
                .iter()
                .map(|mb| format!("{mb:.0} MB"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nThe 1 × 1000 run's {:.2} s: {:.2} s until its first chunk started, {:.2} s of calls (the ideal is {:.2} s), {:.2} s from its last result to `succeeded` (summary and finalization). A call took {:.0} ms on average as the worker saw it (the mock waits {} ms).",
        wide.seconds,
        wide.phases[0],
        wide.phases[1],
        wide.items as f64 / wide.ideal_per_second.unwrap_or(1.0),
        wide.phases[2],
        wide.mean_call * 1000.0,
        latency_ms
    );
    let _ = writeln!(
        out,
        "Its first 1,000 calls took {fill_ms:.0} ms to reach the mock server (each opens a connection, on 2 cores shared with PostgreSQL and the mock server); after that, calls started at {steady_rate:.0}/s (ideal {:.0}/s). The gap to the ideal is that fill time, paid once: a longer evaluation amortizes it.",
        wide.ideal_per_second.unwrap_or(0.0)
    );
    let total_cpu: f64 = wide.cpu.iter().sum();
    let _ = writeln!(
        out,
        "\nWhere the CPU time of the 1 × 1000 run went ({:.1} s of CPU in {:.1} s on {} cores): worker {}, mock server (this process) {}, PostgreSQL {}, API {}.",
        total_cpu,
        wide.seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
        percent(wide.cpu[0] / total_cpu),
        percent(wide.cpu[3] / total_cpu),
        percent(wide.cpu[2] / total_cpu),
        percent(wide.cpu[1] / total_cpu),
    );
    let one = latency_runs[0].1.per_second();
    let four = latency_runs[2].1.per_second();
    let scale = four / one;
    let _ = writeln!(
        out,
        "\n**Scale-out**: 4 workers ÷ 1 worker, latency-bound: **{scale:.2}** (target ≥ 3.6: {}).\n",
        mark(scale >= 3.6)
    );
    let _ = writeln!(
        out,
        "**Overhead floor**: {} items at 0 ms, from submission to `succeeded` (one worker, --concurrency 256). Target ≥ 10,000 items/s.\n",
        cli.floor_items
    );
    let _ = writeln!(
        out,
        "| path | items/s | seconds | target | CPU s: worker / PostgreSQL / API / mock server |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (path, run) in [
        ("built-in mock (Assay's own overhead)", &floor_builtin),
        ("mock server over HTTP", &floor_http),
    ] {
        let _ = writeln!(
            out,
            "| {path} | {:.0} | {:.2} | {} | {:.1} / {:.1} / {:.1} / {:.1} |",
            run.per_second(),
            run.seconds,
            mark(run.per_second() >= 10_000.0),
            run.cpu[0],
            run.cpu[2],
            run.cpu[1],
            run.cpu[3]
        );
    }
    let wide_peak = wide.worker_peak_mb.first().copied().unwrap_or(0.0);
    let _ = writeln!(out, "\n**Memory** (peak RSS, `VmHWM`):\n");
    let _ = writeln!(out, "| process | peak | target |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| worker with 1,000 calls in flight | {wide_peak:.0} MB | ≤ 150 MB: {} |",
        mark(wide_peak <= 150.0)
    );
    let _ = writeln!(
        out,
        "| API during a {}-item evaluation and paging through all its results | {:.0} MB | flat |",
        large.run.items, large.api_evaluation_peak_mb
    );
    let _ = writeln!(
        out,
        "| API while taking the {}-item dataset upload (JSON Lines, streamed) | {:.0} MB | |",
        large.run.items, large.api_upload_peak_mb
    );
    let _ = writeln!(
        out,
        "| workers during that evaluation ({:.0} items/s) | {} | flat |",
        large.run.per_second(),
        large
            .run
            .worker_peak_mb
            .iter()
            .map(|mb| format!("{mb:.0} MB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(out, "\n{}", spread::report(&spread)?);
    let _ = writeln!(out, "\n{pressure}");
    let _ = writeln!(out, "\n{}", compare::report(&compare_runs));
    let _ = writeln!(out, "{}", cli::report(&client));
    let _ = writeln!(
        out,
        "{}",
        viewer::report(&viewer::run(cli.viewer_items).await?)
    );
    println!("{out}");
    Ok(())
}
