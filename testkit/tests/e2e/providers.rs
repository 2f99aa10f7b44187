//! The provider layer against the mock LLM server over real HTTP, with real
//! worker processes: limits shared by every replica, retries that add up,
//! fallbacks and circuit breakers, the response cache, API keys that never
//! leak, and registries that are refused at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assay_mockllm::MockConfig;
use serde_json::{Value, json};

use crate::{Stack, StackOptions, question};

/// The mock LLM server, in this test process; worker processes call it.
pub struct MockLlm {
    pub url: String,
}

impl MockLlm {
    pub fn start(config: MockConfig) -> Self {
        let server = assay_mockllm::build("127.0.0.1:0", config).expect("mock server binds");
        let url = format!("http://127.0.0.1:{}", server.port);
        tokio::spawn(server.server);
        Self { url }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests the server answered for `upstream` (the model name it saw).
    pub async fn requests_for(&self, upstream: &str) -> u64 {
        self.stats().await["by_model"][upstream]["requests"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// A directory for one test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("assay-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn registry_env(path: &Path) -> Vec<(&'static str, String)> {
    vec![("ASSAY_MODELS_FILE", path.display().to_string())]
}

/// Submits an evaluation of `items` questions on `models`, graded by
/// `contains {{ expected }}`, with `params` and `extra` fields; returns its id.
pub async fn submit(
    stack: &Stack,
    items: usize,
    models: &[&str],
    params: Value,
    extra: Value,
) -> String {
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(
            (0..items)
                .map(|n| json!({"id": format!("item-{n}"), "vars": {"question": question(n)}, "expected": format!("q{n}")}))
                .collect(),
        )
        .await;
    let mut body = json!({
        "prompt_version_id": version,
        "dataset_id": dataset,
        "models": models,
        "graders": [{"type": "contains", "value": "{{ expected }}"}],
        "params": params,
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    stack.submit_body(body).await
}

#[tokio::test]
async fn three_workers_share_one_requests_per_minute_limit() {
    // 600 requests per minute: one every 100 ms, with a burst of 2. GCRA lets
    // at most `burst` requests go back to back, then paces them, so any one
    // second sees at most 600 / 60 + 2 = 12 requests, whatever the replicas.
    const ITEMS: usize = 100;
    const ALLOWED_PER_SECOND: u64 = 600 / 60 + 2;
    let server = MockLlm::start(MockConfig::default());
    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.limited]
            provider = "openai"
            model = "mock"
            base_url = "{}/v1"
            limits = {{ requests_per_minute = 600, burst = 2 }}
            "#,
            server.url
        ),
    );
    let stack = Stack::start_with(
        3,
        &["--concurrency", "16"],
        StackOptions {
            env: registry_env(&registry),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["limited"], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(90)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(
        evaluation["counts"]["passed"], ITEMS,
        "every item completes"
    );

    let stats = server.stats().await;
    assert_eq!(stats["requests"], ITEMS as u64, "{stats}");
    let busiest = stats["max_requests_in_any_1s_window"].as_u64().unwrap();
    assert!(
        busiest <= ALLOWED_PER_SECOND,
        "{busiest} requests within one second, above 600/min + a burst of 2: {stats}"
    );
    // Pacing, not luck: 100 requests at 10 per second take about 10 seconds.
    let seconds = stats["requests_per_second"].as_array().unwrap().len();
    assert!(
        seconds >= 9,
        "{ITEMS} requests spread over only {seconds} seconds: {stats}"
    );
    let waited = stack
        .metric_sum(
            "assay_llm_rate_limit_wait_seconds_count",
            &["model=\"limited\"", "reason=\"requests\""],
        )
        .await;
    assert!(waited > 0.0, "callers waited for capacity, and said so");
    assert_eq!(
        stack
            .llm_calls(&["model=\"limited\"", "outcome=\"ok\""])
            .await,
        ITEMS as f64,
        "waiting for capacity is not an error: every call went once"
    );
}

#[tokio::test]
async fn retries_through_429s_and_500s_and_attempts_add_up_to_the_servers_count() {
    const ITEMS: usize = 1000;
    let server = MockLlm::start(MockConfig {
        rate_limit_rate: 0.30,
        error_rate: 0.05,
        retry_after_seconds: 1,
        ..MockConfig::default()
    });
    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.flaky]
            provider = "openai"
            model = "mock"
            base_url = "{}/v1"
            max_attempts = 15
            price = {{ input = 1.0, output = 2.0 }}
            "#,
            server.url
        ),
    );
    let stack = Stack::start_with(
        2,
        &["--concurrency", "100"],
        StackOptions {
            env: registry_env(&registry),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["flaky"], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(240)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(
        evaluation["counts"]["passed"], ITEMS,
        "every item answered: {evaluation}"
    );

    let results = stack.results(&id).await;
    assert_eq!(results.len(), ITEMS);
    let attempts: u64 = results
        .iter()
        .map(|result| result["attempts"].as_u64().unwrap())
        .sum();
    let stats = server.stats().await;
    assert_eq!(
        attempts,
        stats["requests"].as_u64().unwrap(),
        "the attempts recorded are the requests the server saw: {stats}"
    );
    let by_status = &stats["by_status"];
    assert_eq!(
        by_status["200"], ITEMS as u64,
        "one answer per item: {stats}"
    );
    assert!(
        by_status["429"].as_u64().unwrap() > 200 && by_status["500"].as_u64().unwrap() > 20,
        "faults were injected and retried: {stats}"
    );
    assert!(
        results
            .iter()
            .any(|result| result["attempts"].as_u64().unwrap() > 1)
    );
    // Only the attempt that answered is billed: every row costs exactly one
    // answer at the registry's prices ($1 and $2 per million tokens), however
    // many attempts it took.
    let summary = &evaluation["summary"]["models"][0];
    assert_eq!(summary["attempts"], attempts);
    for result in &results {
        let one_answer = (result["input_tokens"].as_f64().unwrap() * 1.0
            + result["output_tokens"].as_f64().unwrap() * 2.0)
            / 1_000_000.0;
        assert!(one_answer > 0.0);
        let cost = result["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - one_answer).abs() < 1e-15,
            "billed {cost}, one answer costs {one_answer}: {result}"
        );
    }
    let retries = stack
        .metric_sum("assay_llm_retries_total", &["model=\"flaky\""])
        .await;
    assert_eq!(
        retries,
        (attempts - ITEMS as u64) as f64,
        "every retry is counted"
    );
}

#[tokio::test]
async fn a_failing_model_falls_back_and_its_circuit_opens_then_half_opens() {
    const ITEMS: usize = 40;
    let server = MockLlm::start(MockConfig::default());
    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.broken]
            provider = "openai"
            model = "mock:errors=1"
            base_url = "{url}/v1"
            max_attempts = 2
            fallbacks = ["backup"]
            circuit = {{ failures = 3, open_for = "3s" }}

            [models.backup]
            provider = "openai"
            model = "mock"
            base_url = "{url}/v1"
            "#,
            url = server.url
        ),
    );
    let stack = Stack::start_with(
        1,
        &["--concurrency", "4"],
        StackOptions {
            env: registry_env(&registry),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["broken"], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(
        evaluation["counts"]["passed"], ITEMS,
        "the fallback answered everything"
    );
    let results = stack.results(&id).await;
    assert!(
        results
            .iter()
            .all(|result| result["model"] == "broken" && result["answered_by"] == "backup"),
        "results say which model answered"
    );
    assert_eq!(
        evaluation["summary"]["models"][0]["fallback_results"],
        ITEMS
    );

    // Without a breaker every item would try the broken model twice (80 calls).
    // It opens after 3 failures; calls already in flight (4 at most) may fail too.
    let broken_calls = server.requests_for("mock:errors=1").await;
    assert!(
        (3..=3 + 4).contains(&broken_calls),
        "{broken_calls} calls reached the failing model"
    );
    assert_eq!(server.requests_for("mock").await, ITEMS as u64);
    let open = stack
        .metric_sum(
            "assay_llm_circuit_transitions_total",
            &["model=\"broken\"", "to=\"open\""],
        )
        .await;
    assert!(open >= 1.0, "the circuit opened");

    // After `open_for`, one probe goes through (half-open); it fails and the
    // circuit opens again, so a second evaluation adds about one call.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let id = submit(&stack, ITEMS, &["broken"], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["counts"]["passed"], ITEMS);
    let probes = server.requests_for("mock:errors=1").await - broken_calls;
    assert!(
        (1..=4).contains(&probes),
        "{probes} calls after the cool-down: a probe, not a flood"
    );
    let half_open = stack
        .metric_sum(
            "assay_llm_circuit_transitions_total",
            &["model=\"broken\"", "to=\"half_open\""],
        )
        .await;
    assert!(half_open >= 1.0, "the circuit half-opened");
    let reopened = stack
        .metric_sum(
            "assay_llm_circuit_transitions_total",
            &["model=\"broken\"", "to=\"open\""],
        )
        .await;
    assert!(reopened > open, "the failed probe opened it again");
    let fallbacks = stack
        .metric_sum(
            "assay_llm_fallbacks_total",
            &["from=\"broken\"", "to=\"backup\""],
        )
        .await;
    assert_eq!(fallbacks, (2 * ITEMS) as f64);
}

#[tokio::test]
async fn the_same_evaluation_twice_is_answered_from_the_cache_at_no_cost() {
    const ITEMS: usize = 50;
    let server = MockLlm::start(MockConfig::default());
    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.cached]
            provider = "openai"
            model = "mock:latency=5ms"
            base_url = "{url}/v1"
            price = {{ input = 3.0, output = 15.0 }}

            [models.failing]
            provider = "openai"
            model = "mock:errors=1"
            base_url = "{url}/v1"
            max_attempts = 1
            circuit = {{ failures = 0 }}
            "#,
            url = server.url
        ),
    );
    let stack = Stack::start_with(
        2,
        &["--concurrency", "16"],
        StackOptions {
            env: registry_env(&registry),
            ..StackOptions::default()
        },
    )
    .await;
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(
            (0..ITEMS)
                .map(|n| json!({"vars": {"question": question(n)}, "expected": format!("q{n}")}))
                .collect(),
        )
        .await;
    let evaluate = |cache: bool| {
        let body = json!({
            "prompt_version_id": version,
            "dataset_id": dataset,
            "models": ["cached", "failing"],
            "graders": [{"type": "contains", "value": "{{ expected }}"}],
            "params": {"temperature": 0},
            "cache": cache,
        });
        let stack = &stack;
        async move {
            let id = stack.submit_body(body).await;
            stack.wait_finished(&id, Duration::from_secs(60)).await
        }
    };
    let first = evaluate(true).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(server.requests_for("mock:latency=5ms").await, ITEMS as u64);
    let first_cost = first["summary"]["models"][0]["cost_usd"].as_f64().unwrap();
    assert!(first_cost > 0.0);

    let second = evaluate(true).await;
    assert_eq!(
        server.requests_for("mock:latency=5ms").await,
        ITEMS as u64,
        "the second run made no upstream call"
    );
    let cached = &second["summary"]["models"][0];
    assert_eq!(cached["model"], "cached");
    assert_eq!(cached["passed"], ITEMS, "{second}");
    assert_eq!(cached["cached_results"], ITEMS);
    assert_eq!(cached["cost_usd"], 0.0);
    let results = stack.results(second["id"].as_str().unwrap()).await;
    for result in results.iter().filter(|result| result["model"] == "cached") {
        assert_eq!(result["cached"], true, "{result}");
        assert_eq!(result["cost_usd"], 0.0, "{result}");
    }
    // Errors are never cached: the failing model was called again.
    assert_eq!(server.requests_for("mock:errors=1").await, 2 * ITEMS as u64);
    assert!(
        results
            .iter()
            .filter(|result| result["model"] == "failing")
            .all(|result| result["status"] == "errored" && result["cached"] == false)
    );
    assert_eq!(
        stack
            .metric_sum(
                "assay_llm_cache_requests_total",
                &["model=\"cached\"", "result=\"hit\""]
            )
            .await,
        ITEMS as f64
    );

    // An evaluation can turn the cache off.
    let third = evaluate(false).await;
    assert_eq!(third["cache"], false);
    assert_eq!(
        server.requests_for("mock:latency=5ms").await,
        2 * ITEMS as u64
    );
    assert_eq!(
        third["summary"]["models"][0]["cost_usd"].as_f64().unwrap(),
        first_cost
    );
}

/// Every row of every table of the database, as text.
async fn database_text(stack: &Stack) -> String {
    use diesel::QueryableByName;
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        text: String,
    }
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let tables: Vec<Row> = diesel::sql_query(
        "SELECT table_name::text AS text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(
        tables
            .iter()
            .any(|table| table.text == "evaluation_results")
    );
    let mut everything = String::new();
    for table in tables {
        let rows: Vec<Row> =
            diesel::sql_query(format!("SELECT t::text AS text FROM \"{}\" t", table.text))
                .load(&mut conn)
                .await
                .unwrap();
        for row in rows {
            everything.push_str(&row.text);
            everything.push('\n');
        }
    }
    everything
}

#[tokio::test]
async fn api_keys_appear_in_no_log_line_row_or_error_body() {
    let right_key = format!("sk-live-{}", uuid::Uuid::new_v4().simple());
    let wrong_key = format!("sk-stale-{}", uuid::Uuid::new_v4().simple());
    let server = MockLlm::start(MockConfig {
        api_key: Some(right_key.clone()),
        ..MockConfig::default()
    });
    // The server does echo a wrong key back, so a careless client would leak it.
    let echoed = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(&wrong_key)
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(echoed.contains(&wrong_key), "{echoed}");

    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.good]
            provider = "openai"
            model = "mock"
            base_url = "{url}/v1"
            api_key_env = "ASSAY_E2E_GOOD_KEY"

            [models.stale]
            provider = "anthropic"
            model = "mock"
            base_url = "{url}/v1"
            api_key_env = "ASSAY_E2E_STALE_KEY"
            max_attempts = 1
            "#,
            url = server.url
        ),
    );
    let logs = dir.0.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut env = registry_env(&registry);
    env.extend([
        ("ASSAY_E2E_GOOD_KEY", right_key.clone()),
        ("ASSAY_E2E_STALE_KEY", wrong_key.clone()),
        // Everything Assay and its libraries log, at every level that could show a header.
        ("RUST_LOG", "debug".to_owned()),
    ]);
    let stack = Stack::start_with(
        1,
        &[],
        StackOptions {
            env,
            log_dir: Some(logs.clone()),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, 20, &["good", "stale"], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    let results = stack.results(&id).await;
    let stale: Vec<&Value> = results
        .iter()
        .filter(|result| result["model"] == "stale")
        .collect();
    assert_eq!(stale.len(), 20);
    for result in &stale {
        assert_eq!(result["status"], "errored");
        let error = result["error"].as_str().unwrap();
        assert!(error.contains("authentication failed"), "{error}");
    }

    let mut bodies = vec![
        evaluation.to_string(),
        serde_json::to_string(&results).unwrap(),
    ];
    for path in ["/v1/models", "/v1/evaluations"] {
        bodies.push(stack.client.get(path).await.unwrap().body.to_string());
    }
    bodies.push(stack.worker_metrics(0).await);
    let rows = database_text(&stack).await;
    assert!(
        rows.contains("Incorrect API key provided"),
        "the echo reached the database, redacted"
    );
    // Stop the processes so that their logs are complete.
    drop(stack);
    let mut log_text = String::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        log_text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(log_text.lines().count() > 20, "debug logs were captured");
    for key in [&right_key, &wrong_key] {
        let (head, tail) = (&key[..12], &key[key.len() - 12..]);
        for (place, text) in [("log", &log_text), ("database", &rows)] {
            assert!(
                !text.contains(head) && !text.contains(tail),
                "a key leaked into the {place}"
            );
        }
        for body in &bodies {
            assert!(
                !body.contains(head) && !body.contains(tail),
                "a key leaked into a body: {body}"
            );
        }
    }
}

/// Runs `binary` with the registry at `registry`; returns whether it failed
/// and its stderr. A process still running after `patience` accepted the
/// registry: a refusal is expected at once, but a loaded machine (the whole
/// suite at once) can take seconds to start a process, so a case that expects
/// one waits longer than a case that expects the process to keep running.
fn start_with_registry(binary: &str, registry: &Path, patience: Duration) -> (bool, String) {
    let args: &[&str] = match binary {
        "assay-api" => &["serve"],
        _ => &["--bind", "127.0.0.1:0"],
    };
    let mut child = std::process::Command::new(assay_testkit::binary(binary))
        .args(args)
        .env("ASSAY_MODELS_FILE", registry)
        .env("ASSAY_BIND", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/assay_e2e_never_used",
        )
        .env(
            "ASSAY_QUEUE_PREFIX",
            format!("assay-e2e-registry-{}", uuid::Uuid::new_v4()),
        )
        .env_remove("ASSAY_E2E_UNSET_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + patience;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return (
                !output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    (false, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// How long a process given a bad registry may take to refuse it.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn bad_registries_stop_the_processes_at_start_naming_the_entry() {
    let dir = TempDir::new();
    let cases = [
        (
            "[models.typo]\nprovider = \"openia\"\n",
            "typo",
            "unknown provider",
        ),
        (
            "[models.cheap]\nprovider = \"mock\"\nmodel = \"mock\"\nprice = { input = -1.0, output = 1.0 }\n",
            "cheap",
            "price.input must be a non-negative",
        ),
        (
            "[models.a]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"b\"]\n[models.b]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"a\"]\n",
            "a",
            "fallback cycle: a -> b -> a",
        ),
    ];
    for (index, (text, entry, message)) in cases.iter().enumerate() {
        let registry = dir.write(&format!("models-{index}.toml"), text);
        for binary in ["assay-api", "assay-worker"] {
            let (failed, stderr) = start_with_registry(binary, &registry, REFUSAL_PATIENCE);
            assert!(failed, "{binary} started with a bad registry: {stderr}");
            assert!(
                stderr.contains(&format!("model {entry:?}")) && stderr.contains(message),
                "{binary} must name entry {entry:?} ({message}): {stderr}"
            );
        }
    }
    // A missing key stops the workers, which call the model; the API only
    // checks names and never needs provider keys.
    let registry = dir.write(
        "models-key.toml",
        "[models.gpt]\nprovider = \"openai\"\napi_key_env = \"ASSAY_E2E_UNSET_KEY\"\n",
    );
    let (failed, stderr) = start_with_registry("assay-worker", &registry, REFUSAL_PATIENCE);
    assert!(failed, "the worker started without its key: {stderr}");
    assert!(
        stderr.contains("model \"gpt\"") && stderr.contains("ASSAY_E2E_UNSET_KEY is not set"),
        "{stderr}"
    );
    let (failed, stderr) = start_with_registry("assay-api", &registry, Duration::from_secs(2));
    assert!(!failed, "the API needs no provider key: {stderr}");
}
