//! What operators run on: the Prometheus rules (`docker/prometheus`), checked
//! and unit-tested with `promtool`; the live `/metrics` of a real API and a
//! real worker, linted by `promtool check metrics` and holding every metric
//! name the dashboard and the rules query (so a rename cannot silently blank
//! a panel or mute an alert); and the Grafana dashboard's structure. Broken
//! copies of the rules show that these checks do fail.
//!
//! `promtool` comes from Debian's `prometheus` package (`make deps`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use assay_mockllm::MockConfig;
use assay_testkit::eventually;
use serde_json::{Value, json};

use crate::providers::{MockLlm, TempDir, submit};
use crate::{Stack, StackOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is in the workspace")
        .to_path_buf()
}

fn rules_path() -> PathBuf {
    repo().join("docker/prometheus/alerts.yml")
}

fn rule_tests(dir: &Path) -> Vec<PathBuf> {
    let mut tests: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("rule tests directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no rule tests in {}", dir.display());
    tests
}

/// Runs promtool; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut command = Command::new("promtool");
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .expect("promtool runs (install it with `make deps`: Debian's prometheus package)");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn test_rules(dir: &Path) -> (bool, String) {
    let tests = rule_tests(dir);
    let mut args = vec!["test", "rules"];
    let names: Vec<String> = tests
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    args.extend(names.iter().map(String::as_str));
    promtool(&args, None)
}

/// The `expr`s and `record` names of a rules file (its own simple shape:
/// `expr: <one line>` or `expr: |` followed by more indented lines).
fn rules_of(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut exprs, mut records) = (Vec::new(), BTreeSet::new());
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix("- record:") {
            records.insert(name.trim().to_owned());
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" {
                let mut block = String::new();
                while index + 1 < lines.len() {
                    let next = lines[index + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push(' ');
                    index += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(rest.to_owned());
            }
        }
        index += 1;
    }
    (exprs, records)
}

/// Metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (inside `{}` or grouping clauses) or
/// durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let braces = regex::Regex::new(r#"\{[^}]*\}"#).unwrap();
    let ranges = regex::Regex::new(r"\[[^\]]*\]").unwrap();
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let strings = regex::Regex::new(r#""[^"]*""#).unwrap();
    let expr = strings.replace_all(expr, "");
    let expr = braces.replace_all(&expr, " ");
    let expr = ranges.replace_all(&expr, " ");
    let expr = grouping.replace_all(&expr, " ");
    let token = regex::Regex::new(r"[0-9.]*[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    ];
    token
        .find_iter(&expr)
        .map(|found| found.as_str())
        .filter(|token| !token.ends_with('('))
        .filter(|token| !token.starts_with(|c: char| c.is_ascii_digit() || c == '.'))
        .filter(|token| !KEYWORDS.contains(&token.to_lowercase().as_str()))
        .map(str::to_owned)
        .collect()
}

/// Every PromQL query of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("docker/grafana/dashboards/assay.json"))
        .expect("the dashboard JSON");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Sample names in a `/metrics` text.
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// Names that `queries` read and that nothing defines: not in the exposed
/// metrics, not a recording rule, not Prometheus' own `up`.
fn undefined_names(
    queries: &[String],
    exposed: &BTreeSet<String>,
    records: &BTreeSet<String>,
) -> BTreeSet<String> {
    queries
        .iter()
        .flat_map(|query| metric_names(query))
        .filter(|name| name != "up" && !exposed.contains(name) && !records.contains(name))
        .collect()
}

#[test]
fn metric_names_are_read_from_promql_without_functions_labels_or_keywords() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (model, le) (rate(assay_llm_call_duration_seconds_bucket{outcome="ok",le="0.2"}[5m]))) > on() group_left() 14.4 * (1 - assay:slo:latency_target) unless on(instance) up offset 15m"#,
    );
    let expected: BTreeSet<String> = [
        "assay_llm_call_duration_seconds_bucket",
        "assay:slo:latency_target",
        "up",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
}

#[test]
fn the_rules_pass_promtool_check_and_every_alert_has_unit_tests_that_pass() {
    let rules = rules_path();
    let (ok, output) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules failed:\n{output}");
    let (ok, output) = test_rules(&repo().join("docker/prometheus/tests"));
    assert!(ok, "promtool test rules failed:\n{output}");
    // Every alert is named by a test that expects it to fire and by one that
    // expects silence.
    let text = std::fs::read_to_string(&rules).unwrap();
    let alerts: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let tests: String = rule_tests(&repo().join("docker/prometheus/tests"))
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    for alert in alerts {
        let named = format!("alertname: {alert}\n");
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&named))
            .collect();
        assert!(
            cases.iter().any(|case| case.contains("exp_labels")),
            "no test makes {alert} fire"
        );
        assert!(
            cases.iter().any(|case| case.contains("exp_alerts: []")),
            "no test keeps {alert} quiet"
        );
    }
}

/// A copy of the rules and their tests in a temporary directory, edited by `edit`.
fn broken_copy(edit: impl Fn(&str) -> String) -> TempDir {
    let dir = TempDir::new();
    let original = std::fs::read_to_string(rules_path()).unwrap();
    let edited = edit(&original);
    assert_ne!(original, edited, "the edit changed nothing");
    dir.write("alerts.yml", &edited);
    std::fs::create_dir_all(dir.0.join("tests")).unwrap();
    for test in rule_tests(&repo().join("docker/prometheus/tests")) {
        std::fs::copy(&test, dir.0.join("tests").join(test.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn broken_copies_of_the_rules_fail_the_checks() {
    // A wrong threshold: the circuit alert never fires, and its test says so.
    let dir = broken_copy(|text| {
        text.replace(
            "max by (model) (assay_llm_circuit_state) == 2",
            "max by (model) (assay_llm_circuit_state) == 3",
        )
    });
    let (ok, output) = test_rules(&dir.0.join("tests"));
    assert!(!ok, "a broken circuit alert passed its tests:\n{output}");
    assert!(output.contains("AssayLlmCircuitOpen"), "{output}");

    // A renamed metric: the alert reads a series nobody exports.
    let dir = broken_copy(|text| {
        text.replace(
            "assay_queue_oldest_age_seconds",
            "assay_queue_oldest_age_secs",
        )
    });
    let (ok, output) = test_rules(&dir.0.join("tests"));
    assert!(!ok, "a renamed metric passed the rule tests:\n{output}");
    assert!(output.contains("AssayQueuedChunkTooOld"), "{output}");

    // An expression that does not parse.
    let dir = broken_copy(|text| text.replace("> 900", "> > 900"));
    let (ok, output) = promtool(
        &["check", "rules", dir.0.join("alerts.yml").to_str().unwrap()],
        None,
    );
    assert!(
        !ok,
        "an unparsable rule passed promtool check rules:\n{output}"
    );
}

#[test]
fn the_dashboard_has_grafanas_shape_and_queries_the_provisioned_data_source() {
    let dashboard = dashboard();
    let uid = dashboard["uid"].as_str().expect("uid");
    assert!(
        !uid.is_empty() && uid.len() <= 40,
        "Grafana uids are 1 to 40 characters"
    );
    assert!(
        dashboard["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty())
    );
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());
    assert!(dashboard["templating"]["list"].is_array());
    assert!(dashboard["annotations"]["list"].is_array());
    // The data source uid the panels name is the one provisioned.
    let datasources = std::fs::read_to_string(
        repo().join("docker/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    let provisioned = datasources
        .lines()
        .find_map(|line| line.trim().strip_prefix("uid:"))
        .expect("the data source has a uid")
        .trim()
        .to_owned();
    // The provider loads the directory compose mounts the dashboards into.
    let provider =
        std::fs::read_to_string(repo().join("docker/grafana/provisioning/dashboards/assay.yml"))
            .unwrap();
    let compose = std::fs::read_to_string(repo().join("docker/compose.yaml")).unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("./grafana/dashboards:/var/lib/grafana/dashboards"));
    assert!(compose.contains("./grafana/provisioning:/etc/grafana/provisioning"));

    let known_types = [
        "row",
        "timeseries",
        "stat",
        "gauge",
        "bargauge",
        "table",
        "state-timeline",
    ];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "id repeated: {title}"
        );
        let kind = panel["type"].as_str().unwrap();
        assert!(
            known_types.contains(&kind),
            "{title}: unknown panel type {kind}"
        );
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|key| grid[key].as_u64().expect("gridPos"));
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: {grid}");
        for row in y..y + h {
            for column in x..x + w {
                assert!(
                    cells.insert((row, column)),
                    "{title} overlaps another panel"
                );
            }
        }
        if kind == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], provisioned.as_str(), "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(refs.insert(target["refId"].as_str().unwrap().to_owned()));
            assert!(target["expr"].as_str().is_some_and(|expr| !expr.is_empty()));
            assert_eq!(target["datasource"]["uid"], provisioned.as_str(), "{title}");
        }
    }
}

/// Runs the API and one worker through an evaluation that exercises
/// retries, fallbacks, an open circuit, 429s with cool-downs and the cache;
/// then lints their `/metrics` with promtool and looks up every name
/// the dashboard and the rules query.
#[tokio::test]
async fn live_metrics_pass_promtool_and_hold_every_name_the_dashboard_and_rules_use() {
    let server = MockLlm::start(MockConfig {
        rate_limit_rate: 0.3,
        retry_after_seconds: 1,
        ..MockConfig::default()
    });
    let dir = TempDir::new();
    let registry = dir.write(
        "models.toml",
        &format!(
            r#"
            [models.flaky]
            provider = "mock"
            model = "mock:errors=1"
            max_attempts = 2
            fallbacks = ["steady"]
            circuit = {{ failures = 3, open_for = "1h" }}

            [models.steady]
            provider = "mock"
            model = "mock"

            [models.limited]
            provider = "openai"
            model = "mock"
            base_url = "{}/v1"
            max_attempts = 8
            limits = {{ requests_per_minute = 60000 }}
            "#,
            server.url
        ),
    );
    let stack = Stack::start_with(
        1,
        &["--concurrency", "8"],
        StackOptions {
            env: vec![("ASSAY_MODELS_FILE", registry.display().to_string())],
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(
        &stack,
        12,
        &["flaky", "limited"],
        json!({"temperature": 0}),
        json!({}),
    )
    .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(120)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    // The worker reports every second, the API every 5 s.
    let api_metrics = eventually(Duration::from_secs(20), "the API's gauges", || async {
        let text = stack
            .client
            .get("/metrics")
            .await?
            .body
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(text.contains("assay_workers_live").then_some(text))
    })
    .await
    .unwrap();
    let worker_metrics = stack.worker_metrics(0).await;

    for (who, text) in [("API", &api_metrics), ("worker", &worker_metrics)] {
        let (ok, output) = promtool(&["check", "metrics"], Some(text));
        assert!(
            ok && output.trim().is_empty(),
            "promtool check metrics on the {who}'s /metrics:\n{output}"
        );
    }

    let mut exposed = exposed_names(&api_metrics);
    exposed.extend(exposed_names(&worker_metrics));
    let rules = std::fs::read_to_string(rules_path()).unwrap();
    let (rule_exprs, records) = rules_of(&rules);
    assert!(
        rule_exprs.len() >= 30 && records.len() >= 15,
        "{} exprs",
        rule_exprs.len()
    );
    let dashboard_queries = dashboard_exprs(&dashboard());
    let mut queries = rule_exprs.clone();
    queries.extend(dashboard_queries);
    let undefined = undefined_names(&queries, &exposed, &records);
    assert!(
        undefined.is_empty(),
        "the dashboard or the rules query metrics that neither process exports: {undefined:?}"
    );

    // The same check catches a renamed metric in a copy of the rules.
    let renamed = rules.replace("assay_llm_circuit_state", "assay_llm_circuit_status");
    let (renamed_exprs, renamed_records) = rules_of(&renamed);
    let undefined = undefined_names(&renamed_exprs, &exposed, &renamed_records);
    assert_eq!(
        undefined,
        BTreeSet::from(["assay_llm_circuit_status".to_owned()])
    );
}

/// JSON log lines of a process's log file.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn a_request_id_follows_an_evaluation_from_the_api_into_its_workers_logs() {
    let logs = TempDir::new();
    let stack = Stack::start_with(
        2,
        &[],
        StackOptions {
            env: vec![
                ("ASSAY_LOG_FORMAT", "json".to_owned()),
                ("RUST_LOG", "info".to_owned()),
                // Several chunks, spread over both workers.
                ("ASSAY_CHUNK_RUNS", "5".to_owned()),
            ],
            log_dir: Some(logs.0.clone()),
            ..StackOptions::default()
        },
    )
    .await;
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(
            (0..20)
                .map(|n| json!({"vars": {"question": crate::question(n)}, "expected": format!("q{n}")}))
                .collect(),
        )
        .await;
    let request_id = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let response = stack
        .client
        .post_with_headers(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": version,
                "dataset_id": dataset,
                "models": ["mock"],
                "graders": [{"type": "contains", "value": "{{ expected }}"}],
            }),
            &[("X-Request-Id", request_id.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    assert_eq!(
        response.request_id.as_deref(),
        Some(request_id.as_str()),
        "echoed back"
    );
    assert_eq!(
        response.body["request_id"],
        request_id.as_str(),
        "kept with the evaluation"
    );
    let id = response.body["id"].as_str().unwrap().to_owned();
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    // Without a header, the API makes one up and says which.
    let other = stack.client.get("/v1/models").await.unwrap();
    let generated = other.request_id.expect("a generated request id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let api = json_lines(&logs.0.join("api.log"));
    let submitted = api
        .iter()
        .find(|line| {
            line["request_id"] == request_id.as_str() && line["message"] == "request finished"
        })
        .unwrap_or_else(|| panic!("no API line for the request among {} lines", api.len()));
    assert_eq!(submitted["route"], "/v1/evaluations");
    assert_eq!(submitted["method"], "POST");
    assert_eq!(submitted["status"], 202);
    assert!(submitted["latency_ms"].as_f64().is_some(), "{submitted}");
    let tenant = submitted["tenant"]
        .as_str()
        .expect("the tenant is logged")
        .to_owned();
    // The API's other lines for that request carry the id too.
    assert!(
        api.iter()
            .any(|line| line["request_id"] == request_id.as_str()
                && line["message"] == "evaluation queued"),
        "the handler's own line is inside the request's span"
    );

    // Every worker line about the evaluation names the request, the tenant and its chunk.
    let mut chunks_seen = BTreeSet::new();
    let mut workers_seen = 0;
    for index in 0..2 {
        let lines = json_lines(&logs.0.join(format!("worker-{index}.log")));
        let ours: Vec<&Value> = lines
            .iter()
            .filter(|line| line["evaluation_id"] == id.as_str())
            .collect();
        if !ours.is_empty() {
            workers_seen += 1;
        }
        for line in ours {
            assert_eq!(line["request_id"], request_id.as_str(), "{line}");
            assert_eq!(line["tenant"], tenant.as_str(), "{line}");
            assert_eq!(line["job_kind"], "chunk", "{line}");
            chunks_seen.insert(line["chunk"].as_i64().expect("chunk index"));
        }
    }
    assert!(workers_seen >= 1);
    assert_eq!(
        chunks_seen,
        (0..4).collect::<BTreeSet<i64>>(),
        "lines for each of the 4 chunks"
    );
}

/// The value of the sample of `metrics` whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn with_no_worker_the_api_reports_the_work_left_and_how_long_chunks_wait() {
    let stack = Stack::start(0, &[]).await;
    let id = stack
        .submit(3, &["mock"], json!([{"type": "is-json"}]))
        .await;
    // The first chunk travels one level up: normal becomes high.
    let metrics = eventually(Duration::from_secs(30), "the API's gauges", || async {
        let text = stack
            .client
            .get("/metrics")
            .await?
            .body
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Queue ages come from Redis and the unfinished counts from
        // PostgreSQL, refreshed on their own ticks: wait for both to show it.
        let age = sample(&text, "assay_queue_oldest_age_seconds{queue=\"high\"}");
        let counted = sample(&text, "assay_evaluations_unfinished{status=\"queued\"}") == Some(1.0)
            && sample(&text, "assay_chunks_unfinished{state=\"queued\"}") == Some(1.0);
        Ok((age.is_some_and(|age| age >= 1.0) && counted).then_some(text))
    })
    .await
    .unwrap();
    assert_eq!(
        sample(&metrics, "assay_workers_live "),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "assay_chunks_unfinished{state=\"queued\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "assay_evaluations_unfinished{status=\"queued\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "assay_queue_oldest_age_seconds{queue=\"low\"}"),
        Some(0.0)
    );
    assert!(sample(&metrics, "assay_process_resident_memory_bytes ").unwrap() > 1e6);
    assert_eq!(stack.evaluation(&id).await["status"], "queued");
}
