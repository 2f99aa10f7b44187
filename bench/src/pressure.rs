//! Providers under pressure (issue 12), against the mock LLM server:
//!
//! - **random 429s**: 10% of requests answered 429 (`Retry-After: 1`) at
//!   200 ms, 1,000 items, one worker at 64 calls in flight, 10 runs: items
//!   per second against concurrency ÷ latency, and errored items;
//! - **a hard cap**: the server takes 100 requests a second and answers 429
//!   above (`--max-rps 100`), 2,000 items on two workers × 64, with a
//!   registry that does not know the cap and, for reference, one that does;
//! - **CPU per call under a shared limit**: 600 requests a minute shared by
//!   three workers × 64, against the same deployment without a limit: CPU
//!   of the workers and of Redis (a private one, so that nothing else
//!   counts) per call, and the busiest one-second window at the server.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_mockllm::MockConfig;
use assay_testkit::{PrivateRedis, TestRedis};
use serde_json::Value;

use super::{Deployment, Mock, cpu_seconds, mark, micros, percent, seconds};

const LATENCY: Duration = Duration::from_millis(200);

async fn stats(mock: &Mock) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("{}/stats", mock.url))
        .await?
        .json()
        .await?)
}

fn status_count(stats: &Value, status: &str) -> f64 {
    stats["by_status"][status].as_f64().unwrap_or(0.0)
}

/// Arrivals per second at the server between two instants (unix µs),
/// whole seconds only.
fn arrivals_between(stats: &Value, from_us: i64, to_us: i64) -> Vec<u64> {
    stats["requests_per_second"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[0].as_i64()?, pair[1].as_u64()?)))
        .filter(|(second, _)| *second * 1_000_000 > from_us && (*second + 1) * 1_000_000 < to_us)
        .map(|(_, count)| count)
        .collect()
}

struct RandomRun {
    rates: Vec<f64>,
    errored: u64,
    /// Arrivals per second at the server during the last run: min, max.
    last_spread: (u64, u64),
}

async fn random_429s(runs: usize) -> anyhow::Result<RandomRun> {
    const ITEMS: usize = 1000;
    eprintln!("==> pressure: 10% 429s, {ITEMS} items, 1 worker × 64, {runs} runs");
    let mock = Mock::start_with(MockConfig {
        latency: LATENCY,
        rate_limit_rate: 0.1,
        retry_after_seconds: 1,
        ..MockConfig::default()
    })?;
    let deployment = Deployment::start(1, 64, Some(&mock)).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(ITEMS).await?;
    let mut result = RandomRun {
        rates: Vec::new(),
        errored: 0,
        last_spread: (0, 0),
    };
    for _ in 0..runs {
        let evaluation = deployment.evaluate(&version, &dataset, "bench").await?;
        let rate = ITEMS as f64 / seconds(&evaluation);
        eprintln!("    {rate:.0} items/s");
        result.rates.push(rate);
        result.errored += evaluation["counts"]["errored"].as_u64().unwrap_or(0);
        let per_second = arrivals_between(
            &stats(&mock).await?,
            micros(&evaluation["started_at"]),
            micros(&evaluation["finished_at"]),
        );
        result.last_spread = (
            per_second.iter().copied().min().unwrap_or(0),
            per_second.iter().copied().max().unwrap_or(0),
        );
    }
    Ok(result)
}

struct CapRun {
    accepted_per_second: f64,
    refused_share: f64,
    errored: u64,
    seconds: f64,
}

async fn hard_cap(registry_extra: &str, label: &str) -> anyhow::Result<CapRun> {
    const ITEMS: usize = 2000;
    eprintln!("==> pressure: hard cap of 100/s, {label}, {ITEMS} items, 2 workers × 64");
    let mock = Mock::start_with(MockConfig {
        latency: LATENCY,
        max_rps: Some(100),
        retry_after_seconds: 1,
        ..MockConfig::default()
    })?;
    let deployment =
        Deployment::start_with(2, 64, Some(&mock), registry_extra, TestRedis::new()).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(ITEMS).await?;
    let evaluation = deployment.evaluate(&version, &dataset, "bench").await?;
    let stats = stats(&mock).await?;
    let requests = stats["requests"].as_f64().unwrap_or(1.0);
    let calls =
        (micros(&evaluation["finished_at"]) - micros(&evaluation["started_at"])) as f64 / 1e6;
    let run = CapRun {
        accepted_per_second: status_count(&stats, "200") / calls,
        refused_share: status_count(&stats, "429") / requests,
        errored: evaluation["counts"]["errored"].as_u64().unwrap_or(0),
        seconds: seconds(&evaluation),
    };
    eprintln!(
        "    {:.0} accepted/s, {:.1}% refused",
        run.accepted_per_second,
        run.refused_share * 100.0
    );
    Ok(run)
}

struct CpuRun {
    calls: f64,
    seconds: f64,
    /// Workers' and Redis' CPU seconds during the run.
    raw: f64,
    /// The same, less what the deployment spends idle over as long.
    net: f64,
    busiest_second: u64,
}

fn redis_cpu_seconds(url: &str) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn)?;
    Ok(info
        .lines()
        .filter(|line| line.starts_with("used_cpu_sys:") || line.starts_with("used_cpu_user:"))
        .filter_map(|line| line.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum())
}

async fn cpu_per_call(registry_extra: &str, label: &str, items: usize) -> anyhow::Result<CpuRun> {
    eprintln!("==> pressure: CPU per call, {label}, {items} items, 3 workers × 64");
    let mock = Mock::start_with(MockConfig {
        latency: LATENCY,
        ..MockConfig::default()
    })?;
    let redis = PrivateRedis::start()?;
    let deployment = Deployment::start_with(
        3,
        64,
        Some(&mock),
        registry_extra,
        TestRedis::on(&redis.url),
    )
    .await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(items).await?;
    let cpu = || -> anyhow::Result<f64> {
        Ok(deployment
            .workers
            .iter()
            .map(|worker| cpu_seconds(&worker.pid().to_string()))
            .sum::<f64>()
            + redis_cpu_seconds(&redis.url)?)
    };
    // What the deployment costs doing nothing (heartbeats, queue polls, metrics).
    let idle_from = (cpu()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_per_second = (cpu()? - idle_from.0) / idle_from.1.elapsed().as_secs_f64();
    let before = (cpu()?, Instant::now());
    let evaluation = deployment
        .evaluate_polling(&version, &dataset, "bench", Duration::from_millis(500))
        .await?;
    let raw = cpu()? - before.0;
    let elapsed = before.1.elapsed().as_secs_f64();
    let stats = stats(&mock).await?;
    let run = CpuRun {
        calls: stats["requests"].as_f64().context("a request count")?,
        seconds: seconds(&evaluation),
        raw,
        net: (raw - idle_per_second * elapsed).max(0.0),
        busiest_second: stats["max_requests_in_any_1s_window"].as_u64().unwrap_or(0),
    };
    eprintln!(
        "    {:.3} ms CPU per call ({:.3} ms net of idle), busiest second {}",
        run.raw / run.calls * 1000.0,
        run.net / run.calls * 1000.0,
        run.busiest_second
    );
    Ok(run)
}

/// Runs every case; returns the Markdown section.
pub async fn run() -> anyhow::Result<String> {
    let random = random_429s(10).await?;
    let unknown = hard_cap("", "unknown to the registry").await?;
    let known = hard_cap(
        "limits = { requests_per_minute = 6000 }",
        "in the registry (6,000/min)",
    )
    .await?;
    const BURST: u64 = 2;
    let limited = cpu_per_call(
        "limits = { requests_per_minute = 600, burst = 2 }",
        "600/min shared",
        300,
    )
    .await?;
    let unlimited = cpu_per_call("", "no limit", 300).await?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Providers under pressure (release build, mock LLM server over HTTP)\n"
    );
    let ideal = 64.0 / LATENCY.as_secs_f64();
    let mut sorted = random.rates.clone();
    sorted.sort_by(f64::total_cmp);
    let (worst, median) = (sorted[0], sorted[sorted.len() / 2]);
    let _ = writeln!(
        out,
        "**Random 429s**: 10% of requests answered 429 (`Retry-After: 1`) at {} ms, 1,000 items, one worker at 64 in flight, {} runs. Ideal = concurrency ÷ latency = {ideal:.0} items/s. Target ≥ 70% of it and 0 errored items.\n",
        LATENCY.as_millis(),
        random.rates.len()
    );
    let _ = writeln!(
        out,
        "| runs | worst | median | best | worst ÷ ideal | errored items | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {} | {worst:.0}/s | {median:.0}/s | {:.0}/s | {} | {} | {} |",
        random.rates.len(),
        sorted[sorted.len() - 1],
        percent(worst / ideal),
        random.errored,
        mark(worst / ideal >= 0.7 && random.errored == 0)
    );
    let _ = writeln!(
        out,
        "\nRequests arriving at the server per whole second of the last run: {} to {} (a pause-everything cool-down gave bursts and silences such as 262, 8, 247, 4).\n",
        random.last_spread.0, random.last_spread.1
    );
    let _ = writeln!(
        out,
        "**A hard cap**: the server takes 100 requests a second and answers 429 above it, 200 ms per call, 2,000 items, two workers × 64 (unpaced, they would offer 640 a second). Target (unknown cap): accepted ≥ 90% of the cap, ≤ 10% of requests answered 429, 0 errored.\n"
    );
    let _ = writeln!(
        out,
        "| registry | accepted/s (÷ cap) | requests answered 429 | errored | seconds | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (label, run, judged) in [
        ("does not know the cap", &unknown, true),
        ("says 6,000/min (the cap)", &known, false),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {:.0} ({}) | {} | {} | {:.1} | {} |",
            run.accepted_per_second,
            percent(run.accepted_per_second / 100.0),
            percent(run.refused_share),
            run.errored,
            run.seconds,
            if judged {
                mark(
                    run.accepted_per_second >= 90.0 && run.refused_share <= 0.1 && run.errored == 0,
                )
                .to_owned()
            } else {
                "reference".to_owned()
            }
        );
    }
    let per_call = |run: &CpuRun, cpu: f64| cpu / run.calls * 1000.0;
    let _ = writeln!(
        out,
        "\n**CPU per call under a shared limit**: three workers × 64, 300 items at 200 ms, Redis of its own. CPU = the workers' user + system time (`/proc/<pid>/stat`) + Redis' `used_cpu_sys + used_cpu_user`; \"net\" subtracts what the same deployment spends idle over as long (heartbeats, queue polls), which a 30-second run pays and a 1-second one does not. Target: within 2× of no limit, and no second at the server above 600/60 + {BURST}.\n"
    );
    let _ = writeln!(
        out,
        "| limit | calls | seconds | CPU per call | net of idle | busiest 1 s window at the server |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (label, run) in [("600/min, burst 2", &limited), ("none", &unlimited)] {
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.1} | {:.3} ms | {:.3} ms | {} |",
            run.calls,
            run.seconds,
            per_call(run, run.raw),
            per_call(run, run.net),
            run.busiest_second
        );
    }
    let ratio_raw = per_call(&limited, limited.raw) / per_call(&unlimited, unlimited.raw);
    let ratio_net = per_call(&limited, limited.net) / per_call(&unlimited, unlimited.net).max(1e-9);
    let _ = writeln!(
        out,
        "\nLimited ÷ unlimited CPU per call: **{ratio_raw:.2}×** raw, **{ratio_net:.2}×** net of idle (target ≤ 2×: {}); busiest second {} (target ≤ {}: {}).",
        mark(ratio_net <= 2.0),
        limited.busiest_second,
        10 + BURST,
        mark(limited.busiest_second <= 10 + BURST)
    );
    Ok(out)
}
