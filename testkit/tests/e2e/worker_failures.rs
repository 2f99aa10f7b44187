//! Workers that die or are told to stop: nothing lost, nothing twice.

use std::time::{Duration, Instant};

use assay_testkit::eventually;
use serde_json::json;

use crate::Stack;

const ITEMS: usize = 400;
const MODELS: [&str; 2] = ["mock:latency=40ms", "mock:latency=40ms,seed=1"];

/// Waits until the evaluation has some results, and returns the index of
/// the worker running it (from the `evaluation.started` event).
async fn running_worker(stack: &mut Stack, id: &str) -> usize {
    eventually(Duration::from_secs(30), "the first results", || async {
        let evaluation = stack.evaluation(id).await;
        Ok((evaluation["counts"]["completed"].as_u64().unwrap() >= 50).then_some(()))
    })
    .await
    .unwrap();
    let actors = stack.event_actors(id, "evaluation.started").await;
    assert_eq!(actors.len(), 1, "{actors:?}");
    stack.worker_of(&actors[0])
}

async fn assert_exactly_once(stack: &Stack, id: &str) {
    let evaluation = stack.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    let results = stack.results(id).await;
    assert_eq!(results.len(), ITEMS * MODELS.len());
    let mut keys: Vec<(u64, String)> = results
        .iter()
        .map(|result| {
            (
                result["item_position"].as_u64().unwrap(),
                result["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        ITEMS * MODELS.len(),
        "one result per item x model"
    );
    let counts = &evaluation["counts"];
    assert_eq!(
        counts["completed"],
        ITEMS * MODELS.len(),
        "counts match the rows: {counts}"
    );
    assert_eq!(counts["passed"], ITEMS * MODELS.len(), "{counts}");
    let summary_total: u64 = evaluation["summary"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["total"].as_u64().unwrap())
        .sum();
    assert_eq!(summary_total as usize, ITEMS * MODELS.len());
}

#[tokio::test]
async fn a_worker_killed_mid_evaluation_loses_nothing_and_repeats_nothing() {
    let mut stack = Stack::start(2, &["--concurrency", "8"]).await;
    let id = stack
        .submit(
            ITEMS,
            &MODELS,
            json!([{"type": "contains", "value": "{{ expected }}"}]),
        )
        .await;
    let victim = running_worker(&mut stack, &id).await;
    let killed_at = Instant::now();
    stack.workers[victim].0.signal("KILL").unwrap();
    let before = stack.evaluation(&id).await["counts"]["completed"]
        .as_u64()
        .unwrap();
    assert!(
        before < (ITEMS * MODELS.len()) as u64,
        "killed mid-run, not after"
    );

    let resumed_by = eventually(
        Duration::from_secs(30),
        "another worker to take the orphaned job",
        || async { Ok(stack.event_actors(&id, "evaluation.resumed").await.pop()) },
    )
    .await
    .expect("the orphaned job is recovered within 30 s");
    let recovered_after = killed_at.elapsed();
    assert_ne!(stack.worker_of(&resumed_by), victim);
    assert_exactly_once(&stack, &id).await;
    eprintln!("orphan recovered {recovered_after:?} after SIGKILL");
}

#[tokio::test]
async fn a_worker_sent_sigterm_hands_its_job_back_and_exits_cleanly() {
    let mut stack = Stack::start(2, &["--concurrency", "8"]).await;
    let id = stack
        .submit(
            ITEMS,
            &MODELS,
            json!([{"type": "contains", "value": "{{ expected }}"}]),
        )
        .await;
    let stopping = running_worker(&mut stack, &id).await;
    stack.workers[stopping].0.signal("TERM").unwrap();
    let code = stack.workers[stopping]
        .0
        .wait(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "a worker told to stop exits 0");
    let resumed_by = eventually(
        Duration::from_secs(30),
        "another worker to take the released job",
        || async { Ok(stack.event_actors(&id, "evaluation.resumed").await.pop()) },
    )
    .await
    .unwrap();
    assert_ne!(stack.worker_of(&resumed_by), stopping);
    assert_exactly_once(&stack, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_redis_for_good_exits_non_zero() {
    let mut stack = Stack::start(0, &[]).await;
    let proxy = assay_testkit::Proxy::start("127.0.0.1:6379").await;
    let index = stack
        .start_worker_via(
            &["--max-restarts", "2"],
            format!("redis://{}", proxy.address),
        )
        .await;
    proxy.cut();
    // Every restart of the queue consumer fails; after the last one the process
    // exits with an error, so that its supervisor restarts it.
    let code = stack.workers[index]
        .0
        .wait(Duration::from_secs(90))
        .await
        .unwrap();
    assert!(
        matches!(code, Some(code) if code != 0),
        "exit code {code:?}"
    );
}
