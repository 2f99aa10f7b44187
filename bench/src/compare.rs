//! The comparison benchmark: two evaluations of one `items`-item dataset,
//! their results written straight into PostgreSQL (pseudo-random outcomes
//! with a fixed seed, continuous scores so that the score histogram takes
//! its rounded path, the costliest one), compared over HTTP by the real
//! release API. Reports the median and slowest of several requests and the
//! API's peak memory before and after them.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::{Deployment, peak_rss_mb};

/// What one size measured.
pub struct CompareRun {
    pub items: usize,
    pub median: Duration,
    pub slowest: Duration,
    pub api_before_mb: f64,
    pub api_after_mb: f64,
    pub discordant: i64,
}

/// Requests timed per size (after one warm-up).
const REQUESTS: usize = 5;

async fn submit(
    deployment: &Deployment,
    version: &Value,
    dataset: &Value,
) -> anyhow::Result<String> {
    let submitted = deployment
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"],
                    "graders": [{"type": "contains", "value": "{{ expected }}"}]}),
        )
        .await?;
    anyhow::ensure!(submitted.status == 202, "submitting: {:?}", submitted.body);
    Ok(submitted.body["id"].as_str().context("an id")?.to_owned())
}

/// Results for every item of `evaluation`; `seed` makes its outcomes differ.
async fn seed(deployment: &Deployment, evaluation: &str, seed: f64) -> anyhow::Result<()> {
    let pool = deployment.database().pool(1);
    let mut conn = pool.get().await?;
    diesel::sql_query(format!("SELECT setseed({seed})"))
        .execute(&mut conn)
        .await?;
    diesel::sql_query(format!(
        "INSERT INTO evaluation_results (evaluation_id, model, item_position, repeat_index, tenant_id, item_key, \
             status, score, latency_ms, input_tokens, output_tokens, cost_usd) \
         SELECT e.id, 'mock', i.position, 0, e.tenant_id, i.item_key, \
                CASE WHEN random() < 0.7 THEN 'passed' ELSE 'failed' END, random(), \
                (50 + random() * 500)::int, 100, 20, 0.0001 \
         FROM evaluations e JOIN dataset_items i ON i.dataset_id = e.dataset_id \
         WHERE e.id = '{evaluation}'"
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query(format!(
        "UPDATE evaluations SET status = 'succeeded' WHERE id = '{evaluation}'"
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query("ANALYZE evaluation_results")
        .execute(&mut conn)
        .await?;
    Ok(())
}

pub async fn run(items: usize) -> anyhow::Result<CompareRun> {
    eprintln!("==> comparison: two {items}-item evaluations");
    let mut deployment = Deployment::start(0, 1, None).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(items).await?;
    let a = submit(&deployment, &version, &dataset).await?;
    let b = submit(&deployment, &version, &dataset).await?;
    seed(&deployment, &a, 0.1).await?;
    seed(&deployment, &b, 0.2).await?;
    // A fresh API, so that its peak memory is the comparisons', not the upload's.
    deployment.restart_api().await?;
    let path = format!("/v1/evaluations/{a}/compare/{b}");
    let warm = deployment.client.get(&path).await?;
    anyhow::ensure!(warm.status == 200, "comparing: {:?}", warm.body);
    let api_before_mb = peak_rss_mb(deployment.api.pid());
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let response = deployment.client.get(&path).await?;
        times.push(started.elapsed());
        anyhow::ensure!(
            response.body == warm.body,
            "the same comparison answered differently"
        );
    }
    times.sort_unstable();
    let pair = &warm.body["pairs"][0];
    anyhow::ensure!(
        pair["items"]["paired"].as_u64() == Some(items as u64),
        "paired {} of {items} items",
        pair["items"]["paired"]
    );
    let run = CompareRun {
        items,
        median: times[REQUESTS / 2],
        slowest: times[REQUESTS - 1],
        api_before_mb,
        api_after_mb: peak_rss_mb(deployment.api.pid()),
        discordant: pair["significance"]["discordant"].as_i64().unwrap_or(0),
    };
    eprintln!(
        "    median {:.0} ms, slowest {:.0} ms; API peak {:.0} MB -> {:.0} MB",
        run.median.as_secs_f64() * 1000.0,
        run.slowest.as_secs_f64() * 1000.0,
        run.api_before_mb,
        run.api_after_mb
    );
    Ok(run)
}

/// The Markdown section for BENCHMARKS.md.
pub fn report(runs: &[CompareRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Comparing two evaluations (release build, real API over HTTP)\n"
    );
    let _ = writeln!(
        out,
        "`GET /v1/evaluations/{{a}}/compare/{{b}}` on two succeeded evaluations of one dataset, one model each, results with random outcomes (70% pass) and continuous scores (so the score histogram takes its binned path: 200 bins); two 10,000-resample bootstraps per request. {REQUESTS} requests after one warm-up. Target for 20,000 items: under 1 s, with flat API memory.\n"
    );
    let _ = writeln!(
        out,
        "| items per evaluation | discordant pairs | median | slowest | target | API peak RSS before → after the requests |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for run in runs {
        let target = if run.items == 20_000 {
            if run.slowest < Duration::from_secs(1) {
                "met"
            } else {
                "**not met**"
            }
        } else {
            "report"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} ms | {:.0} ms | {target} | {:.0} MB → {:.0} MB |",
            run.items,
            run.discordant,
            run.median.as_secs_f64() * 1000.0,
            run.slowest.as_secs_f64() * 1000.0,
            run.api_before_mb,
            run.api_after_mb
        );
    }
    out
}
