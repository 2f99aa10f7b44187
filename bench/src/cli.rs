//! The client benchmark: `assay eval` on a 10,000-test CSV against the
//! built-in mock, as a user runs it — the real `assay` binary (next to this
//! one), its progress lines, and a JUnit export. Measures the client's own
//! peak memory (`VmHWM`, polled while it runs), which must stay flat (under
//! 100 MB) because uploads and exports stream; and checks the JUnit file
//! with an XML parser against the evaluation's counts.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{Deployment, peak_rss_mb};

/// What the run measured.
pub struct CliRun {
    pub items: usize,
    pub elapsed: Duration,
    pub exit_code: i32,
    pub peak_mb: f64,
    pub progress_lines: usize,
    pub junit_cases: usize,
    pub junit_failures: usize,
    pub failed: i64,
    pub csv_bytes: u64,
}

pub async fn run(items: usize) -> anyhow::Result<CliRun> {
    eprintln!("==> assay eval on a {items}-test CSV (built-in mock, one worker)");
    let deployment = Deployment::start(1, 256, None).await?;
    let dir = &deployment.dir;
    // Every tenth test expects the wrong city, so the JUnit file has failures.
    let mut csv = String::from("question,__expected,__assert\n");
    for n in 0..items {
        let expected = if n % 10 == 9 {
            "nowhere".to_owned()
        } else {
            format!("q{n}")
        };
        let _ = writeln!(csv, "What is q{n}?,{expected},icontains:what;length:-200");
    }
    std::fs::write(dir.join("tests.csv"), &csv)?;
    std::fs::write(
        dir.join("assay.yaml"),
        "prompt:\n  name: bench-cli\n  messages: [{role: user, content: '{{ question }}'}]\n\
         models: [mock]\ntests: file://tests.csv\ncache: false\n\
         defaultTest:\n  assert: [{type: contains, value: '{{ expected }}'}]\n",
    )?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(assay_testkit::binary("assay"))
        .args(["eval", "-o", "results.xml", "--fail-under", "80"])
        .current_dir(dir)
        .env("ASSAY_API_URL", &deployment.client.base_url)
        .env(
            "ASSAY_API_KEY",
            deployment.client.key.as_deref().context("a key")?,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id().context("a pid")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let reading = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    // VmHWM only grows: the last reading before the exit is the peak.
    let mut peak_mb: f64 = 0.0;
    let status = loop {
        peak_mb = peak_mb.max(peak_rss_mb(pid));
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    let elapsed = started.elapsed();
    let stderr = reading.await?;
    let progress_lines = stderr
        .lines()
        .filter(|line| line.starts_with("progress "))
        .count();
    let id = stderr
        .lines()
        .find(|line| line.starts_with("Evaluation ") && line.contains(" queued"))
        .and_then(|line| line.split_whitespace().nth(1))
        .with_context(|| format!("assay printed no evaluation id:\n{stderr}"))?;
    let evaluation = deployment
        .client
        .get(&format!("/v1/evaluations/{id}"))
        .await?;
    let xml = std::fs::read_to_string(dir.join("results.xml"))?;
    let document = roxmltree::Document::parse(&xml).context("the JUnit file parses")?;
    let cases: Vec<_> = document
        .descendants()
        .filter(|node| node.has_tag_name("testcase"))
        .collect();
    let junit_failures = cases
        .iter()
        .filter(|case| case.children().any(|child| child.has_tag_name("failure")))
        .count();
    Ok(CliRun {
        items,
        elapsed,
        exit_code: status.code().unwrap_or(-1),
        peak_mb,
        progress_lines,
        junit_cases: cases.len(),
        junit_failures,
        failed: evaluation.body["counts"]["failed"].as_i64().unwrap_or(-1),
        csv_bytes: csv.len() as u64,
    })
}

pub fn report(run: &CliRun) -> String {
    let mut out = String::new();
    let junit_ok = run.junit_cases == run.items && run.junit_failures as i64 == run.failed;
    let _ = writeln!(
        out,
        "\n**Client** (`assay eval -o results.xml` on a {}-test CSV of {} KB, built-in mock, one worker):\n",
        run.items,
        run.csv_bytes / 1024
    );
    let _ = writeln!(out, "| what | value | target |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| wall time, spec to JUnit file | {:.1} s | |",
        run.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| `assay` peak RSS | {:.0} MB | < 100 MB: {} |",
        run.peak_mb,
        crate::mark(run.peak_mb < 100.0)
    );
    let _ = writeln!(
        out,
        "| progress lines (stderr is not a terminal) | {} | ≥ 1: {} |",
        run.progress_lines,
        crate::mark(run.progress_lines >= 1)
    );
    let _ = writeln!(
        out,
        "| JUnit test cases / failures (evaluation: {} failed) | {} / {} | all, matching: {} |",
        run.failed,
        run.junit_cases,
        run.junit_failures,
        crate::mark(junit_ok)
    );
    let _ = writeln!(
        out,
        "| exit code with `--fail-under 80` (90% pass) | {} | 0: {} |",
        run.exit_code,
        crate::mark(run.exit_code == 0)
    );
    out
}
