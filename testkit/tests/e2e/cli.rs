//! The `assay` client as users run it: the real binary against a real API
//! and worker, answering with the mock. Spec files in every tests format,
//! exports parsed back (JUnit with an XML parser, CSV with a CSV reader) and
//! checked against the API's result rows, exit codes, uploads skipped when
//! nothing changed, a promptfoo config from the fixtures, Ctrl-C, and the
//! README's quick start run as written.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use assay_testkit::binary;
use serde_json::Value;

use crate::Stack;

/// A scratch directory, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("assay-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(stack: &Stack, dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary("assay"));
    command
        .args(args)
        .current_dir(dir)
        .env("ASSAY_API_URL", &stack.client.base_url)
        .env("ASSAY_API_KEY", stack.client.key.as_deref().unwrap())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `assay args...` in `dir` to its end.
pub(crate) async fn assay(stack: &Stack, dir: &Path, args: &[&str]) -> Output {
    let output = tokio::time::timeout(Duration::from_secs(120), command(stack, dir, args).output())
        .await
        .expect("assay finishes within 2 minutes")
        .unwrap();
    eprintln!(
        "$ assay {}\n{}{}-> {:?}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status.code()
    );
    output
}

pub(crate) fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The evaluation id `assay eval` printed ("Evaluation <id> queued").
fn evaluation_id(output: &Output) -> String {
    let text = stderr(output);
    let line = text
        .lines()
        .find(|line| line.starts_with("Evaluation ") && line.contains(" queued"))
        .unwrap_or_else(|| panic!("no evaluation id in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

/// A sample of the API's `/metrics`, 0 when absent.
async fn api_metric(stack: &Stack, sample: &str) -> f64 {
    let metrics = stack.client.get("/metrics").await.unwrap();
    metrics
        .body
        .as_str()
        .unwrap()
        .lines()
        .find(|line| line.starts_with(sample) && line[sample.len()..].starts_with(' '))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

/// The results' (item id, model, status) in the API's order.
fn keys(results: &[Value]) -> Vec<(String, String, String)> {
    results
        .iter()
        .map(|result| {
            (
                result["item_key"].as_str().unwrap().to_owned(),
                result["model"].as_str().unwrap().to_owned(),
                result["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// (test case name, classname, outcome) of a JUnit file, checked with an XML
/// parser: the suite's counts must match its cases.
fn junit_cases(xml: &str) -> Vec<(String, String, String)> {
    let document = roxmltree::Document::parse(xml).expect("JUnit XML parses");
    let suite = document
        .descendants()
        .find(|node| node.has_tag_name("testsuite"))
        .expect("a testsuite");
    let cases: Vec<(String, String, String)> = suite
        .children()
        .filter(|node| node.has_tag_name("testcase"))
        .map(|case| {
            let outcome = if case.children().any(|child| child.has_tag_name("failure")) {
                "failed"
            } else if case.children().any(|child| child.has_tag_name("error")) {
                "errored"
            } else {
                "passed"
            };
            (
                case.attribute("name").unwrap().to_owned(),
                case.attribute("classname").unwrap().to_owned(),
                outcome.to_owned(),
            )
        })
        .collect();
    let count = |outcome: &str| cases.iter().filter(|case| case.2 == outcome).count();
    assert_eq!(suite.attribute("tests").unwrap(), cases.len().to_string());
    assert_eq!(
        suite.attribute("failures").unwrap(),
        count("failed").to_string()
    );
    assert_eq!(
        suite.attribute("errors").unwrap(),
        count("errored").to_string()
    );
    cases
}

const SPEC_HEAD: &str = r#"
prompt:
  name: capitals
  messages:
    - role: system
      content: Repeat the sentence.
    - role: user
      content: file://prompts/question.md
models: [mock, "mock:latency=5ms"]
defaultTest:
  assert:
    - type: contains
      value: "{{ expected }}"
"#;

const TESTS_CSV: &str = "question,__expected,__assert\n\
The capital of France is Paris,Paris,icontains:paris\n\
The capital of Japan is Tokyo,Tokyo,contains:Tokyo;not-contains:Kyoto\n\
\"Nairobi, Kenya\",Nairobi,\n";

#[tokio::test]
async fn spec_files_in_every_format_exports_and_exit_codes() {
    let stack = Stack::start(1, &["--concurrency", "16"]).await;
    let dir = Scratch::new();
    dir.write("prompts/question.md", "{{ question }}\n");
    dir.write("tests.csv", TESTS_CSV);
    dir.write(
        "assay.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.csv\ndataset: capitals csv\n"),
    );

    // CSV tests, all passing: exit 0, and a JUnit file that matches the rows.
    let first = assay(&stack, &dir.0, &["eval", "-o", "results.xml", "--graders"]).await;
    assert_eq!(code(&first), 0);
    assert!(stderr(&first).contains("(new version)"));
    assert!(stderr(&first).contains("(uploaded)"));
    // Progress is reported while it runs (a plain line when not on a terminal).
    assert!(stderr(&first).contains("items/s"), "{}", stderr(&first));
    // The per-grader table tells evaluation graders from the tests' own.
    assert!(stdout(&first).contains("tests") && stdout(&first).contains("evaluation"));
    let first_id = evaluation_id(&first);
    let results = stack.results(&first_id).await;
    assert_eq!(results.len(), 6);
    // Results go by item, then model: [2] is item 1 on the first model.
    let sources: Vec<&str> = results[2]["grades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|grade| grade["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["evaluation", "item", "item"], "item 1's grades");
    assert_eq!(junit_cases(&dir.read("results.xml")), keys(&results));

    // Unchanged prompt and tests: nothing is uploaded again.
    let versions_before =
        api_metric(&stack, "assay_prompt_commits_total{outcome=\"unchanged\"}").await;
    let second = assay(&stack, &dir.0, &["eval", "-o", "results.csv"]).await;
    assert_eq!(code(&second), 0);
    assert!(stderr(&second).contains("(unchanged)"));
    assert!(stderr(&second).contains("(unchanged, not uploaded)"));
    let datasets = stack.client.get("/v1/datasets").await.unwrap();
    assert_eq!(
        datasets.body["data"].as_array().unwrap().len(),
        1,
        "one dataset"
    );
    assert_eq!(
        api_metric(&stack, "assay_dataset_uploads_total{format=\"csv\"}").await,
        1.0
    );
    assert_eq!(
        api_metric(&stack, "assay_dataset_hash_lookups_total{outcome=\"hit\"}").await,
        1.0
    );
    assert_eq!(
        api_metric(&stack, "assay_prompt_commits_total{outcome=\"unchanged\"}").await,
        versions_before + 1.0
    );
    let prompt = stack
        .client
        .get("/v1/prompts/capitals/resolve?branch=main")
        .await
        .unwrap();
    assert_eq!(prompt.body["version"], 1, "no new prompt version");
    let second_id = evaluation_id(&second);
    let second_results = stack.results(&second_id).await;
    let exported = dir.read("results.csv");
    let mut reader = csv::Reader::from_reader(exported.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|header| header == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), second_results.len());
    for (row, result) in rows.iter().zip(&second_results) {
        assert_eq!(
            &row[column("item_id")],
            result["item_key"].as_str().unwrap()
        );
        assert_eq!(&row[column("model")], result["model"].as_str().unwrap());
        assert_eq!(&row[column("status")], result["status"].as_str().unwrap());
        assert_eq!(&row[column("output")], result["output"].as_str().unwrap());
    }
    assert_eq!(
        rows[4][column("output")].trim_end(),
        "Nairobi, Kenya",
        "quoted cells survive (item 2, first model)"
    );

    // The other commands read what the server has.
    let compare = assay(&stack, &dir.0, &["compare", &first_id, &second_id]).await;
    assert_eq!(code(&compare), 0);
    assert!(stdout(&compare).contains("100.0%"), "{}", stdout(&compare));
    let list = assay(&stack, &dir.0, &["list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let models = assay(&stack, &dir.0, &["models"]).await;
    assert_eq!(code(&models), 0);
    assert!(stdout(&models).contains("mock"));

    // YAML tests, one failing: exit 1; --fail-under lets it pass; --json is machine-readable.
    dir.write(
        "tests.yaml",
        "- vars: {question: The capital of Peru is Lima}\n  expected: Lima\n\
         - vars: {question: The capital of Chile is Santiago}\n  expected: Valparaiso\n",
    );
    dir.write(
        "yaml.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.yaml\n"),
    );
    let failing = assay(
        &stack,
        &dir.0,
        &["eval", "-c", "yaml.yaml", "-o", "failing.xml"],
    )
    .await;
    assert_eq!(code(&failing), 1);
    assert!(
        stderr(&failing).contains("FAIL mock"),
        "{}",
        stderr(&failing)
    );
    let failing_id = evaluation_id(&failing);
    assert_eq!(
        junit_cases(&dir.read("failing.xml")),
        keys(&stack.results(&failing_id).await)
    );
    assert!(
        dir.read("failing.xml").contains("contains: "),
        "failures carry the grader reasons"
    );
    let gated = assay(
        &stack,
        &dir.0,
        &["eval", "-c", "yaml.yaml", "--fail-under", "50"],
    )
    .await;
    assert_eq!(code(&gated), 0);
    let json = assay(&stack, &dir.0, &["eval", "-c", "yaml.yaml", "--json"]).await;
    assert_eq!(code(&json), 1);
    let report: Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["evaluation"]["status"], "succeeded");
    let failed = assay(
        &stack,
        &dir.0,
        &["results", &failing_id, "--failed", "-o", "failed.jsonl"],
    )
    .await;
    assert_eq!(code(&failed), 0);
    let failed_rows: Vec<Value> = dir
        .read("failed.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(failed_rows.len(), 2, "one failing test on two models");
    assert!(failed_rows.iter().all(|row| row["status"] == "failed"));

    // JSON Lines and JSON tests files, and an errored test: exit 1 unless --allow-errors.
    dir.write(
        "tests.jsonl",
        "{\"id\": \"lima\", \"vars\": {\"question\": \"Lima\"}, \"expected\": \"Lima\"}\n",
    );
    dir.write(
        "jsonl.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.jsonl\n"),
    );
    let jsonl = assay(
        &stack,
        &dir.0,
        &["eval", "-c", "jsonl.yaml", "-o", "out.jsonl"],
    )
    .await;
    assert_eq!(code(&jsonl), 0);
    assert_eq!(dir.read("out.jsonl").lines().count(), 2);
    dir.write(
        "tests.json",
        r#"[{"vars": {"question": "Quito"}, "expected": "Quito",
             "assert": [{"type": "llm-rubric", "rubric": "x", "model": "mock:judge=garbage"}]}]"#,
    );
    dir.write(
        "json.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.json\n"),
    );
    let errored = assay(
        &stack,
        &dir.0,
        &["eval", "-c", "json.yaml", "-o", "out.json"],
    )
    .await;
    assert_eq!(code(&errored), 1);
    assert!(stderr(&errored).contains("errored"), "{}", stderr(&errored));
    let exported: Value = serde_json::from_str(&dir.read("out.json")).unwrap();
    assert_eq!(exported["results"].as_array().unwrap().len(), 2);
    assert!(
        exported["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|result| result["status"] == "errored")
    );
    let errored_rows = assay(
        &stack,
        &dir.0,
        &["results", &evaluation_id(&errored), "--errored"],
    )
    .await;
    assert_eq!(code(&errored_rows), 0);
    assert_eq!(
        stdout(&errored_rows).matches("llm-rubric grader").count(),
        2,
        "the table shows each errored result and why: {}",
        stdout(&errored_rows)
    );
    let allowed = assay(
        &stack,
        &dir.0,
        &["eval", "-c", "json.yaml", "--allow-errors"],
    )
    .await;
    assert_eq!(code(&allowed), 0);

    // --no-wait prints the id and returns.
    let queued = assay(&stack, &dir.0, &["eval", "-c", "jsonl.yaml", "--no-wait"]).await;
    assert_eq!(code(&queued), 0);
    let id = stdout(&queued).trim().to_owned();
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id:?}");
    stack.wait_finished(&id, Duration::from_secs(60)).await;

    // Exit 2: usage errors and server refusals, each with a clear message.
    let usage = assay(&stack, &dir.0, &["eval", "--fail-under", "lots"]).await;
    assert_eq!(code(&usage), 2);
    let missing = assay(&stack, &dir.0, &["eval", "-c", "nope.yaml"]).await;
    assert_eq!(code(&missing), 2);
    assert!(stderr(&missing).contains("nope.yaml does not exist"));
    dir.write(
        "bad.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.jsonl\n").replace("[mock, ", "[no-such-model, "),
    );
    let refused = assay(&stack, &dir.0, &["eval", "-c", "bad.yaml"]).await;
    assert_eq!(code(&refused), 2);
    assert!(
        stderr(&refused).contains("no-such-model"),
        "{}",
        stderr(&refused)
    );
    dir.write(
        "bad-assert.yaml",
        &format!(
            "{SPEC_HEAD}tests:\n  - vars: {{question: x}}\n    expected: x\n    assert: [{{type: regex, value: x}}]\n"
        ),
    );
    let invalid = assay(&stack, &dir.0, &["eval", "-c", "bad-assert.yaml"]).await;
    assert_eq!(code(&invalid), 2);
    assert!(
        stderr(&invalid).contains("items[0].graders[0]"),
        "the server names the test's grader: {}",
        stderr(&invalid)
    );
}

#[tokio::test]
async fn stored_prompts_history_and_labels() {
    let stack = Stack::start(1, &[]).await;
    let dir = Scratch::new();
    dir.write("prompts/question.md", "{{ question }}");
    dir.write("tests.csv", TESTS_CSV);
    dir.write(
        "assay.yaml",
        &format!("{SPEC_HEAD}tests: file://tests.csv\n"),
    );
    assert_eq!(code(&assay(&stack, &dir.0, &["eval"]).await), 0);
    // A changed prompt is a new version.
    dir.write("prompts/question.md", "Q: {{ question }}");
    let changed = assay(&stack, &dir.0, &["eval"]).await;
    assert_eq!(code(&changed), 0);
    assert!(stderr(&changed).contains("v2 (new version)"));
    let log = assay(&stack, &dir.0, &["prompt", "log", "capitals"]).await;
    assert!(stdout(&log).contains("v2") && stdout(&log).contains("v1"));
    let diff = assay(&stack, &dir.0, &["prompt", "diff", "capitals", "1", "2"]).await;
    assert_eq!(code(&diff), 0);
    assert!(stdout(&diff).contains("changed"), "{}", stdout(&diff));
    let label = assay(
        &stack,
        &dir.0,
        &["prompt", "label", "capitals", "production", "1"],
    )
    .await;
    assert_eq!(code(&label), 0);
    // A spec may run a stored version by label.
    dir.write(
        "stored.yaml",
        "prompt: capitals@production\nmodels: [mock]\ntests: file://tests.csv\n\
         defaultTest:\n  assert: [{type: contains, value: \"{{ expected }}\"}]\n",
    );
    let stored = assay(&stack, &dir.0, &["eval", "-c", "stored.yaml"]).await;
    assert_eq!(code(&stored), 0);
    assert!(stderr(&stored).contains("Prompt capitals v1 (unchanged)"));
}

/// (item position, grader index in the result's grades, passed) that
/// promptfoo's documented semantics give for the fixture (grader 0 is the
/// defaultTest's `not-icontains`, which passes everywhere).
const PROMPTFOO_EXPECTED: &[(usize, &[bool])] = &[
    // Paris: equals, contains, icontains, regex, levenshtein ≤ 1, llm-rubric.
    (0, &[true, true, true, true, true, true, true]),
    // paris: equals and contains are case-sensitive, icontains is not; regex ^P; 1 edit > 0.
    (1, &[true, false, false, true, false, false]),
    // {"city": "Paris"}: is-json, contains-json (javascript skipped).
    (2, &[true, true, true]),
    // prose with JSON inside: is-json fails, contains-json passes, the rubric's words are absent.
    (3, &[true, false, true, false]),
    // CSV: `Paris` (equals), `contains: Ro`, `icontains: PARIS` on Lyon, javascript skipped.
    (4, &[true, true]),
    (5, &[true, true]),
    (6, &[true, false]),
    (7, &[true]),
];

#[tokio::test]
async fn a_promptfoo_config_is_translated_and_run() {
    let stack = Stack::start(1, &[]).await;
    let dir = Scratch::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/promptfoo");
    for file in ["promptfooconfig.yaml", "capitals.csv", "prompts/answer.txt"] {
        dir.write(file, &std::fs::read_to_string(fixtures.join(file)).unwrap());
    }
    let map = ["--map", "openai:gpt-4o-mini=mock:seed=1"];

    // Unmapped providers are named.
    let unmapped = assay(&stack, &dir.0, &["eval", "-c", "promptfooconfig.yaml"]).await;
    assert_eq!(code(&unmapped), 2);
    assert!(
        stderr(&unmapped).contains("openai:gpt-4o-mini"),
        "{}",
        stderr(&unmapped)
    );

    // The javascript asserts are reported with their locations; nothing runs.
    let args = [&["eval", "-c", "promptfooconfig.yaml"][..], &map[..]].concat();
    let refused = assay(&stack, &dir.0, &args).await;
    assert_eq!(code(&refused), 2);
    let report = stderr(&refused);
    assert!(
        report.contains("promptfooconfig.yaml: tests[2].assert[2]: a javascript assert"),
        "{report}"
    );
    assert!(
        report.contains("capitals.csv row 5 column __expected: a javascript assert"),
        "{report}"
    );
    assert!(report.contains("--skip-unsupported"));

    // With --skip-unsupported it runs; every translated assert decides as promptfoo's would.
    let args = [
        &[
            "eval",
            "-c",
            "promptfooconfig.yaml",
            "-o",
            "pf.xml",
            "--skip-unsupported",
        ][..],
        &map[..],
    ]
    .concat();
    let run = assay(&stack, &dir.0, &args).await;
    assert_eq!(code(&run), 1, "some tests fail by design");
    assert!(stderr(&run).contains("Skipped what Assay cannot run"));
    let results = stack.results(&evaluation_id(&run)).await;
    assert_eq!(results.len(), 16, "8 tests on 2 providers");
    for result in &results {
        let position = result["item_position"].as_u64().unwrap() as usize;
        let expected = PROMPTFOO_EXPECTED[position].1;
        let passed: Vec<bool> = result["grades"]
            .as_array()
            .unwrap()
            .iter()
            .map(|grade| grade["passed"].as_bool().unwrap())
            .collect();
        assert_eq!(passed, expected, "item {position}: {}", result["grades"]);
        let status = if expected.iter().all(|passed| *passed) {
            "passed"
        } else {
            "failed"
        };
        assert_eq!(result["status"], status, "item {position}");
    }
    assert_eq!(junit_cases(&dir.read("pf.xml")), keys(&results));

    // `assay import promptfoo` writes an assay.yaml that runs the same.
    let args = [
        &[
            "import",
            "promptfoo",
            "promptfooconfig.yaml",
            "--skip-unsupported",
        ][..],
        &map[..],
    ]
    .concat();
    let import = assay(&stack, &dir.0, &args).await;
    assert_eq!(code(&import), 0);
    let spec = dir.read("assay.yaml");
    assert!(
        spec.contains("models:") && spec.contains("mock:seed=1"),
        "{spec}"
    );
    let rerun = assay(&stack, &dir.0, &["eval", "--fail-under", "50"]).await;
    assert_eq!(code(&rerun), 0);
    assert!(
        stderr(&rerun).contains("(unchanged, not uploaded)"),
        "the same tests, already on the server"
    );
}

#[tokio::test]
async fn ctrl_c_asks_once_and_cancels_on_the_server() {
    let stack = Stack::start(1, &["--concurrency", "2"]).await;
    let dir = Scratch::new();
    let tests: String = (0..40)
        .map(|n| format!("- vars: {{question: q{n}}}\n  expected: q{n}\n"))
        .collect();
    dir.write("tests.yaml", &tests);
    dir.write(
        "assay.yaml",
        "prompt: {name: slow, messages: [{role: user, content: '{{ question }}'}]}\n\
         models: ['mock:latency=1s']\ntests: file://tests.yaml\ncache: false\n\
         defaultTest: {assert: [{type: contains, value: '{{ expected }}'}]}\n",
    );
    let mut child = command(&stack, &dir.0, &["eval"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it follows the evaluation, then press Ctrl-C and answer yes.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncReadExt as _;
        while !seen.contains(" queued") {
            let read = stderr.read(&mut buffer).await.unwrap();
            assert!(read > 0, "assay ended early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    })
    .await
    .expect("the evaluation is queued");
    let id = seen
        .lines()
        .find(|line| line.starts_with("Evaluation "))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"y\n").await.unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("assay ends after the cancel")
        .unwrap();
    {
        use tokio::io::AsyncReadExt as _;
        stderr.read_to_string(&mut seen).await.unwrap();
    }
    assert!(seen.contains("Cancel evaluation"), "asked: {seen}");
    assert_eq!(status.code(), Some(2), "{seen}");
    let evaluation = stack.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(evaluation["status"], "canceled");
    assert!(evaluation["counts"]["completed"].as_i64().unwrap() < 40);
}

/// The commands between the README's quick-start markers.
fn readme_quick_start() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("<!-- quickstart:begin -->")
        .expect("quick-start markers");
    let end = readme
        .find("<!-- quickstart:end -->")
        .expect("quick-start markers");
    readme[start..end]
        .lines()
        .skip_while(|line| !line.starts_with("```sh"))
        .skip(1)
        .take_while(|line| !line.starts_with("```"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_readme_quick_start_runs_as_written() {
    let stack = Stack::start(1, &[]).await;
    let dir = Scratch::new();
    let commands = readme_quick_start();
    assert!(
        commands.iter().any(|line| line.contains("assay init"))
            && commands.iter().any(|line| line.contains("assay eval")),
        "{commands:?}"
    );
    let bin = binary("assay");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in commands {
        let output = tokio::process::Command::new("sh")
            .args(["-c", &line])
            .current_dir(&dir.0)
            .env("PATH", &path)
            .env("ASSAY_API_URL", &stack.client.base_url)
            .env("ASSAY_API_KEY", stack.client.key.as_deref().unwrap())
            .output()
            .await
            .unwrap();
        eprintln!(
            "$ {line}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "`{line}` failed");
    }
    assert!(dir.0.join("assay.yaml").exists());
}

#[tokio::test]
async fn on_a_terminal_the_progress_bar_is_drawn_in_place() {
    let stack = Stack::start(1, &["--concurrency", "4"]).await;
    let dir = Scratch::new();
    let tests: String = (0..24)
        .map(|n| format!("- vars: {{question: q{n}}}\n  expected: q{n}\n"))
        .collect();
    dir.write("tests.yaml", &tests);
    dir.write(
        "assay.yaml",
        "prompt: {name: tty, messages: [{role: user, content: '{{ question }}'}]}\n\
         models: ['mock:latency=250ms']\ntests: file://tests.yaml\ncache: false\n\
         defaultTest: {assert: [{type: contains, value: '{{ expected }}'}]}\n",
    );
    // `script` (util-linux) gives the client a pseudo-terminal, as a shell would.
    let command = format!("{} eval", binary("assay").display());
    let output = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(&dir.0)
        .env("ASSAY_API_URL", &stack.client.base_url)
        .env("ASSAY_API_KEY", stack.client.key.as_deref().unwrap())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    // Redrawn in place (carriage returns), with done/total, rate, ETA, pass rate and cost.
    let frames: Vec<&str> = screen
        .split('\r')
        .filter(|frame| frame.contains("/24 ") && frame.contains("items/s"))
        .collect();
    assert!(frames.len() >= 2, "the bar was redrawn: {screen}");
    assert!(
        frames.iter().any(|frame| frame.contains("ETA")
            && frame.contains("pass 100.0%")
            && frame.contains('$')),
        "{frames:?}"
    );
    assert!(
        !screen.contains("progress 24/24"),
        "no plain progress lines on a terminal"
    );
}
