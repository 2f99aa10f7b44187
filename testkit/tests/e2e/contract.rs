//! The API against its own contract: schemathesis (installed by `make deps`)
//! reads `/openapi.json` from a live API with a seeded tenant and admin key,
//! sends every operation examples, boundary cases, random and stateful
//! requests (a fixed seed and example count, so a run is bounded and
//! repeatable), and checks each answer: no 5xx, a documented status, a
//! documented content type, a body that matches its schema.
//!
//! The JUnit report stays under the target directory; its path is printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use assay_core::db::models::api_keys::KeyScope;

use crate::Stack;

/// The checks that make "0 server errors, 0 spec violations".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";
/// Test cases per operation and phase, and the seed: fixed, so every run
/// sends the same requests.
const MAX_EXAMPLES: &str = "15";
const SEED: &str = "20261130";

fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("ASSAY_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").expect("HOME is set");
    Path::new(&home).join(".cache/assay/schemathesis-venv/bin/schemathesis")
}

/// Counts in a JUnit report: (test cases, failures that are server errors,
/// other failures, errors).
fn count(junit: &str) -> (usize, usize, usize, usize) {
    let cases = junit.matches("<testcase").count();
    let mut server_errors = 0;
    let mut violations = 0;
    for failure in junit.split("<failure").skip(1) {
        let end = failure.find("</failure>").unwrap_or(failure.len());
        let text = &failure[..end];
        // One <failure> may carry several findings; count each title.
        let servers = text.matches("Server error").count();
        let others = text.matches("\n- ").count().max(1);
        server_errors += servers;
        violations += others.saturating_sub(servers);
    }
    let errors = junit.matches("<error").count();
    (cases, server_errors, violations, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_spec_violation() {
    let binary = schemathesis();
    assert!(
        binary.exists(),
        "schemathesis is not installed at {} (run `make deps`, or set ASSAY_SCHEMATHESIS)",
        binary.display()
    );
    // One worker, so an evaluation the fuzzer manages to submit finishes
    // (its event stream then ends) instead of waiting in the queue.
    let stack = Stack::start(1, &[]).await;
    let key = assay_testkit::api_key_with_scope(&stack.database, "e2e", KeyScope::Admin)
        .await
        .expect("admin key");
    let base = stack.client.base_url.clone();
    let report_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    std::fs::create_dir_all(&report_dir).expect("report dir");
    let junit = report_dir.join("junit.xml");
    let ndjson = report_dir.join("events.ndjson");
    let _ = std::fs::remove_file(&junit);
    let started = Instant::now();
    let output = tokio::process::Command::new(&binary)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // No example database carried between runs: the same seed, the same requests.
        .args(["--generation-database", "none"])
        // One worker: on CPython 3.11, hypothesis' lambda descriptions parse
        // source with `ast` from several threads at once, and its shared
        // recursion counter then fails the run ("AST constructor recursion
        // depth mismatch") through no fault of the API.
        .args(["--workers", "1", "--request-timeout", "20"])
        .args(["--suppress-health-check", "all"])
        .args(["--report", "junit,ndjson"])
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--report-ndjson-path")
        .arg(&ndjson)
        .args(["--no-color", "--warnings", "off"])
        // What else it writes (its crash cache) lands beside the report.
        .current_dir(&report_dir)
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = std::fs::read_to_string(&junit).unwrap_or_default();
    let (_, server_errors, violations, errors) = count(&report);
    let document = stack
        .client
        .get("/openapi.json")
        .await
        .expect("document")
        .body;
    let documented: Vec<String> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let tested: Vec<&str> = report
        .split("<testcase name=\"")
        .skip(1)
        .filter_map(|case| case.split('"').next())
        .collect();
    // The document's own route is where schemathesis reads the schema from;
    // it leaves that operation out.
    let untested: Vec<&String> = documented
        .iter()
        .filter(|operation| {
            *operation != "GET /openapi.json" && !tested.contains(&operation.as_str())
        })
        .collect();
    let operations = documented.len();
    let tested_operations = documented
        .iter()
        .filter(|operation| tested.contains(&operation.as_str()))
        .count();
    let generated = stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|pair| pair[1] == "generated,")
        .map_or("?", |pair| pair[0])
        .to_owned();
    println!(
        "schemathesis: {tested_operations} of {operations} operations tested \
         (it leaves out GET /openapi.json, the document it reads), {generated} test cases, \
         {server_errors} server errors, {violations} spec violations, {errors} errors \
         in {:.0} s; report: {} (events: {})",
        started.elapsed().as_secs_f64(),
        junit.display(),
        ndjson.display()
    );
    let tail: String = stdout
        .lines()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !report.is_empty(),
        "no JUnit report at {}; schemathesis said:\n{tail}\n{stderr}",
        junit.display()
    );
    assert!(
        untested.is_empty(),
        "schemathesis did not test {untested:?}:\n{tail}"
    );
    assert_eq!(server_errors, 0, "server errors:\n{tail}");
    assert_eq!(violations, 0, "spec violations:\n{tail}");
    assert_eq!(errors, 0, "errors:\n{tail}");
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{tail}\n{stderr}",
        output.status
    );
}

/// `/docs` in headless Chromium: it renders one section per operation of the
/// document, its filter narrows them, and it loads nothing from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_every_operation_in_a_browser() {
    let stack = Stack::start(0, &[]).await;
    let base = stack.client.base_url.clone();
    let document = stack
        .client
        .get("/openapi.json")
        .await
        .expect("document")
        .body;
    let operations: usize = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |item| item.len()))
        .sum();
    let browser = assay_testkit::Browser::start(1280, 900)
        .await
        .expect("browser (make deps installs chromium)");
    browser.goto(&format!("{base}/docs")).await.unwrap();
    let rendered = browser
        .wait_for(
            "the operations to render",
            "document.querySelectorAll('section.op').length > 0 && document.querySelectorAll('section.op').length",
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(rendered.as_u64(), Some(operations as u64));
    browser.type_into("#filter", "webhooks").await.unwrap();
    let shown = browser
        .execute(
            "return [...document.querySelectorAll('section.op')].filter((s) => !s.hidden).length;",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(
        shown > 0 && shown < operations as u64,
        "the filter shows {shown} of {operations}"
    );
    let urls = browser
        .execute(
            "return [location.href, ...performance.getEntriesByType('resource').map((entry) => entry.name)];",
            vec![],
        )
        .await
        .unwrap();
    for url in urls.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&base), "loaded from elsewhere: {url}");
    }
}
