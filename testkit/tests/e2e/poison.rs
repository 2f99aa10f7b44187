//! Poison chunks: a chunk whose run takes its worker down is counted in
//! PostgreSQL each time; once it has stopped `--max-chunk-crashes` workers
//! the next one writes its remaining runs `errored` (with the reason) and
//! the evaluation finishes, instead of the chunk moving from worker to
//! worker for ever.

use std::time::Duration;

use assay_testkit::eventually;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::{Stack, StackOptions};

const ITEMS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_keeps_killing_workers_is_given_up_and_its_evaluation_finishes() {
    let worker_args = ["--concurrency", "8", "--sweep-interval", "1s"];
    let mut stack = Stack::start_with(
        1,
        &worker_args,
        StackOptions {
            env: vec![("ASSAY_MAX_CHUNK_CRASHES", "2".to_owned())],
            ..StackOptions::default()
        },
    )
    .await;
    // Calls that never answer in time: the chunk is always mid-run when its
    // worker goes, as if the chunk itself took the worker down.
    let id = stack
        .submit(
            ITEMS,
            &["mock:latency=60s"],
            json!([{"type": "contains", "value": "{{ expected }}"}]),
        )
        .await;

    for crash in 1..=2 {
        let worker = stack.workers.len() - 1;
        let pid = stack.workers[worker].0.pid();
        wait_until_running_on(&stack, &id, pid).await;
        stack.workers[worker].0.signal("KILL").unwrap();
        // The next worker takes the chunk over once its lease expires.
        stack.start_worker(&worker_args).await;
        eventually(
            Duration::from_secs(60),
            "the crash to be counted",
            || async { Ok((crashes(&stack, &id).await >= crash).then_some(())) },
        )
        .await
        .unwrap();
    }

    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(evaluation["counts"]["errored"], ITEMS, "{evaluation}");
    assert_eq!(crashes(&stack, &id).await, 2);
    let results = stack.results(&id).await;
    assert_eq!(results.len(), ITEMS);
    for result in &results {
        assert_eq!(result["status"], "errored", "{result}");
        let error = result["error"].as_str().unwrap();
        assert!(error.contains("stopped 2 workers"), "{error}");
    }
    // The worker that gave the chunk up is alive and serving.
    let last = stack.workers.len() - 1;
    assert!(stack.workers[last].0.is_running());
    assert!(
        stack
            .worker_metrics(last)
            .await
            .lines()
            .any(|line| line.starts_with("assay_chunks_given_up_total{") && line.ends_with(" 1")),
        "the worker counts the chunk it gave up"
    );
}

async fn wait_until_running_on(stack: &Stack, id: &str, pid: u32) {
    use assay_core::db::schema::evaluation_chunks::dsl;
    let evaluation: uuid::Uuid = id.parse().unwrap();
    let pool = stack.database.pool(1);
    eventually(
        Duration::from_secs(60),
        "the chunk to run on the worker",
        || async {
            let mut conn = pool.get().await?;
            let held: i64 = dsl::evaluation_chunks
                .filter(dsl::evaluation_id.eq(evaluation))
                .filter(dsl::status.eq("running"))
                .filter(dsl::lease_owner.like(format!("%-{pid}")))
                .count()
                .get_result(&mut conn)
                .await?;
            Ok((held > 0).then_some(()))
        },
    )
    .await
    .unwrap();
}

async fn crashes(stack: &Stack, id: &str) -> i32 {
    use assay_core::db::schema::evaluation_chunks::dsl;
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    dsl::evaluation_chunks
        .filter(dsl::evaluation_id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .select(diesel::dsl::sum(dsl::crashes))
        .first::<Option<i64>>(&mut conn)
        .await
        .unwrap()
        .unwrap_or(0) as i32
}

/// A chunk its evaluation cannot run (here: a model the evaluation does not
/// have, as a hand-edited row or a bug would leave it) fails its evaluation
/// once and is not queued again: the failure cancels the chunk and drops its
/// lease, so no sweep finds an expired lease to re-queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_cannot_run_fails_its_evaluation_and_is_not_queued_again() {
    use assay_core::db::schema::evaluation_chunks::dsl;
    let worker_args = ["--sweep-interval", "1s"];
    let mut stack = Stack::start(0, &worker_args).await;
    let id = stack
        .submit(
            ITEMS,
            &["mock:latency=1ms"],
            json!([{"type": "contains", "value": "{{ expected }}"}]),
        )
        .await;
    let evaluation: uuid::Uuid = id.parse().unwrap();
    let pool = stack.database.pool(1);
    diesel::update(dsl::evaluation_chunks.filter(dsl::evaluation_id.eq(evaluation)))
        .set(dsl::model.eq("mock:not-this-evaluations"))
        .execute(&mut pool.get().await.unwrap())
        .await
        .unwrap();
    stack.start_worker(&worker_args).await;

    let finished = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    let error = finished["error"].as_str().unwrap_or_default();
    assert!(error.contains("is not one of the evaluation's"), "{error}");
    let held: Vec<(String, Option<String>)> = dsl::evaluation_chunks
        .filter(dsl::evaluation_id.eq(evaluation))
        .select((dsl::status, dsl::lease_owner))
        .load(&mut pool.get().await.unwrap())
        .await
        .unwrap();
    assert!(
        held.iter()
            .all(|(status, owner)| status == "canceled" && owner.is_none()),
        "{held:?}"
    );
    // Several sweeps later the chunk has not run again.
    let started = || async {
        stack
            .worker_metrics(0)
            .await
            .lines()
            .find(|line| line.starts_with("assay_jobs_started_total{") && line.contains("chunk"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    let before = started().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(started().await, before, "the failed chunk was queued again");
}
