//! Even spread of a small evaluation (issue 12, point 4): 1,000 items at a
//! fixed mock latency, run `runs` times on one worker and `runs` times on
//! two. Targets: on two workers, each makes 40–60% of the calls in every
//! run, and each run takes at most 110% of half the one-worker time (the
//! mean of the one-worker runs).
//!
//! One deployment per worker count, its evaluations run one after the
//! other; shares come from each worker's `assay_llm_calls_total` before and
//! after a run, times from the evaluation's own timestamps. The API counts
//! live workers when an evaluation is submitted, so each deployment waits
//! until all its workers heartbeat first.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::{Deployment, Mock, seconds};

/// What the case runs.
pub struct Setup {
    pub items: usize,
    pub runs: usize,
    pub concurrency: usize,
    pub latency: Duration,
}

/// One evaluation: its seconds and the calls each worker made.
struct Measured {
    seconds: f64,
    calls: Vec<f64>,
}

pub struct Report {
    setup: Setup,
    one: Vec<Measured>,
    two: Vec<Measured>,
}

/// Calls per worker so far.
async fn calls_per_worker(deployment: &Deployment) -> anyhow::Result<Vec<f64>> {
    let mut calls = Vec::new();
    for port in &deployment.worker_ports {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        calls.push(
            text.lines()
                .filter(|line| line.starts_with("assay_llm_calls_total{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        );
    }
    Ok(calls)
}

async fn wait_live(deployment: &Deployment, workers: u64) -> anyhow::Result<()> {
    let redis = deployment.redis();
    let queue = assay_core::queue::JobQueue::connect(&redis.url, &redis.prefix).await?;
    for _ in 0..200 {
        if queue.live_workers().await? == workers {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{workers} worker(s) did not heartbeat within 20 s")
}

async fn series(setup: &Setup, mock: &Mock, workers: usize) -> anyhow::Result<Vec<Measured>> {
    eprintln!(
        "==> even spread: {} items at {} ms, {workers} worker(s) at --concurrency {}, {} runs",
        setup.items,
        setup.latency.as_millis(),
        setup.concurrency,
        setup.runs
    );
    let deployment = Deployment::start(workers, setup.concurrency, Some(mock)).await?;
    wait_live(&deployment, workers as u64).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(setup.items).await?;
    let mut measured = Vec::new();
    for run in 0..setup.runs {
        let before = calls_per_worker(&deployment).await?;
        let evaluation = deployment.evaluate(&version, &dataset, "bench").await?;
        let after = calls_per_worker(&deployment).await?;
        let calls: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: f64 = calls.iter().sum();
        anyhow::ensure!(
            total as usize == setup.items,
            "run {run}: {total} calls for {} items",
            setup.items
        );
        let seconds = seconds(&evaluation);
        eprintln!("    run {run}: {seconds:.2} s, calls per worker {calls:?}");
        measured.push(Measured { seconds, calls });
    }
    Ok(measured)
}

pub async fn run(setup: Setup) -> anyhow::Result<Report> {
    let mock = Mock::start(setup.latency)?;
    let one = series(&setup, &mock, 1).await?;
    let two = series(&setup, &mock, 2).await?;
    Ok(Report { setup, one, two })
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

impl Report {
    /// The one-worker mean time.
    fn one_worker_seconds(&self) -> f64 {
        mean(self.one.iter().map(|run| run.seconds))
    }

    /// Each two-worker run's time ÷ half the one-worker mean.
    fn ratios(&self) -> Vec<f64> {
        let half = self.one_worker_seconds() / 2.0;
        self.two.iter().map(|run| run.seconds / half).collect()
    }

    /// Each two-worker run's smaller share of the calls.
    fn min_shares(&self) -> Vec<f64> {
        self.two
            .iter()
            .map(|run| {
                let total: f64 = run.calls.iter().sum();
                run.calls.iter().copied().fold(f64::INFINITY, f64::min) / total.max(1.0)
            })
            .collect()
    }

    /// Runs whose shares are all within 40–60%, runs within 110% of half the
    /// one-worker time.
    pub fn met(&self) -> (usize, usize) {
        let shares = self
            .min_shares()
            .iter()
            .filter(|share| **share >= 0.4)
            .count();
        let times = self.ratios().iter().filter(|ratio| **ratio <= 1.1).count();
        (shares, times)
    }
}

pub fn report(report: &Report) -> anyhow::Result<String> {
    let setup = &report.setup;
    let mut out = String::new();
    writeln!(
        out,
        "**Even spread of a small evaluation**: {} items at {} ms per call (mock server), {} runs on 1 worker and {} on 2, each at --concurrency {}. Targets: on 2 workers each makes 40–60% of the calls, and a run takes ≤ 110% of half the 1-worker time, in every run.\n",
        setup.items,
        setup.latency.as_millis(),
        setup.runs,
        setup.runs,
        setup.concurrency
    )?;
    writeln!(
        out,
        "| run | 1 worker, s | 2 workers, s | calls per worker | smaller share | 2-worker s ÷ (mean 1-worker s ÷ 2) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let (ratios, shares) = (report.ratios(), report.min_shares());
    for (index, two) in report.two.iter().enumerate() {
        let one = report
            .one
            .get(index)
            .context("as many runs on one worker")?;
        writeln!(
            out,
            "| {} | {:.2} | {:.2} | {} | {:.1}% | {:.3} |",
            index + 1,
            one.seconds,
            two.seconds,
            two.calls
                .iter()
                .map(|calls| format!("{calls:.0}"))
                .collect::<Vec<_>>()
                .join(" + "),
            shares[index] * 100.0,
            ratios[index]
        )?;
    }
    let (share_runs, time_runs) = report.met();
    let runs = report.two.len();
    writeln!(
        out,
        "\nShares within 40–60% in **{share_runs} of {runs}** runs ({}); time within 110% of half the 1-worker mean ({:.2} s ÷ 2) in **{time_runs} of {runs}** runs ({}); mean ratio {:.3}.\n",
        crate::mark(share_runs == runs),
        report.one_worker_seconds(),
        crate::mark(time_runs == runs),
        mean(ratios.iter().copied())
    )?;
    Ok(out)
}
