//! A small evaluation spreads evenly over the live workers: with 250-run
//! chunks, 1,000 items on two workers is 4 chunks, and one worker could take
//! three of them (692 + 308 calls was seen). The API now cuts such an
//! evaluation into about 8 chunks per live worker, and each worker takes a
//! chunk only when its permits are about to idle.

use std::time::Duration;

use serde_json::json;

use crate::Stack;

const ITEMS: usize = 1_000;
const RUNS: usize = 3;

/// The calls each worker has made so far (`assay_llm_calls_total`).
async fn calls_per_worker(stack: &Stack) -> Vec<f64> {
    let mut calls = Vec::new();
    for index in 0..stack.workers.len() {
        calls.push(
            stack
                .worker_metrics(index)
                .await
                .lines()
                .filter(|line| line.starts_with("assay_llm_calls_total{"))
                .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum(),
        );
    }
    calls
}

#[tokio::test]
async fn a_small_evaluation_spreads_evenly_over_two_workers() {
    // Fixed latency and few permits: the run is bound by calls, so a worker
    // with more chunks than the other finishes visibly later.
    let stack = Stack::start(2, &["--concurrency", "8"]).await;
    stack.wait_live_workers(2).await;
    let model = "mock:latency=20ms";
    let mut before = calls_per_worker(&stack).await;
    for run in 0..RUNS {
        let id = stack
            .submit(ITEMS, &[model], json!([{"type": "contains", "value": "q"}]))
            .await;
        let evaluation = stack.wait_finished(&id, Duration::from_secs(120)).await;
        assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
        // 1,000 runs on 2 live workers: 16 chunks of 63 runs, not 4 of 250.
        assert_eq!(stack.chunk_count(&id).await, 16, "run {run}");
        let after = calls_per_worker(&stack).await;
        let made: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(
            made.iter().sum::<f64>() as usize,
            ITEMS,
            "run {run}: {made:?}"
        );
        for (worker, calls) in made.iter().enumerate() {
            let share = calls / ITEMS as f64;
            assert!(
                (0.4..=0.6).contains(&share),
                "run {run}: worker {worker} made {calls} of {ITEMS} calls ({made:?})"
            );
        }
        eprintln!("run {run}: calls per worker {made:?}");
        before = after;
    }
    // What the API planned, in its metrics.
    let metrics = stack.client.get("/metrics").await.unwrap();
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("assay_evaluation_chunk_runs_bucket{le=\"100\"} 3"),
        "three evaluations at 63 runs per chunk:\n{text}"
    );
}
