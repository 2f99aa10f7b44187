//! Scale-out and recovery, with worker processes against the mock LLM
//! server over HTTP: workers killed and stopped mid-run, Redis flushed,
//! PostgreSQL restarted, an evaluation canceled and resumed, errored results
//! retried, and a small evaluation next to a huge one. Every evaluation must
//! end with exactly one result per run, and the server's own request log
//! must show that no item was called again once it had a result.

use std::collections::HashMap;
use std::time::Duration;

use assay_mockllm::MockConfig;
use assay_testkit::{PrivatePostgres, PrivateRedis, eventually};
use serde_json::{Value, json};

use crate::providers::{MockLlm, TempDir, submit};
use crate::{Stack, StackOptions};

/// A registry with `slow`: the mock server's echo over the OpenAI format.
fn registry(dir: &TempDir, server: &MockLlm, extra: &str) -> Vec<(&'static str, String)> {
    let path = dir.write(
        "models.toml",
        &format!(
            "[models.slow]\nprovider = \"openai\"\nmodel = \"mock\"\nbase_url = \"{}/v1\"\n{extra}",
            server.url
        ),
    );
    vec![("ASSAY_MODELS_FILE", path.display().to_string())]
}

/// The mock server at 50 ms a call, keeping its request log.
fn recording_server() -> MockLlm {
    MockLlm::start(MockConfig {
        latency: Duration::from_millis(50),
        record_requests: true,
        ..MockConfig::default()
    })
}

/// `workers` workers at 16 calls in flight, with `slow` on a recording
/// server. The registry's directory must live as long as the stack.
async fn recording_stack(workers: usize) -> (MockLlm, TempDir, Stack) {
    let server = recording_server();
    let dir = TempDir::new();
    let stack = Stack::start_with(
        workers,
        &["--concurrency", "16"],
        StackOptions {
            env: registry(&dir, &server, ""),
            ..StackOptions::default()
        },
    )
    .await;
    (server, dir, stack)
}

/// The evaluation, polled through outages (the API answers 503 while
/// PostgreSQL restarts).
async fn poll(stack: &Stack, id: &str) -> Option<Value> {
    let response = stack
        .client
        .get(&format!("/v1/evaluations/{id}"))
        .await
        .ok()?;
    (response.status == 200).then_some(response.body)
}

async fn completed(stack: &Stack, id: &str) -> u64 {
    poll(stack, id).await.map_or(0, |evaluation| {
        evaluation["counts"]["completed"].as_u64().unwrap()
    })
}

async fn wait_until_completed(stack: &Stack, id: &str, at_least: u64) {
    eventually(
        Duration::from_secs(120),
        "results to be written",
        || async { Ok((completed(stack, id).await >= at_least).then_some(())) },
    )
    .await
    .unwrap();
}

async fn wait_finished(stack: &Stack, id: &str, limit: Duration) -> Value {
    eventually(limit, "the evaluation to finish", || async {
        Ok(poll(stack, id).await.filter(|evaluation| {
            ["succeeded", "failed", "canceled"]
                .contains(&evaluation["status"].as_str().unwrap_or_default())
        }))
    })
    .await
    .unwrap()
}

/// The item a recorded request asked about (`What is q<N>?`).
fn item_of(prompt: &str) -> Option<usize> {
    prompt
        .strip_prefix("What is q")?
        .strip_suffix('?')?
        .parse()
        .ok()
}

fn millis(timestamp: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(timestamp.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// The server's request log: every request's arrival (ms) by item, for the
/// upstream model `upstream`.
async fn calls_by_item(server: &MockLlm, upstream: &str) -> HashMap<usize, Vec<i64>> {
    let log: Vec<Value> = reqwest::get(format!("{}/requests", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut calls: HashMap<usize, Vec<i64>> = HashMap::new();
    for request in log.iter().filter(|request| request["model"] == upstream) {
        if let Some(item) = item_of(request["prompt"].as_str().unwrap()) {
            calls
                .entry(item)
                .or_default()
                .push(request["at_ms"].as_i64().unwrap());
        }
    }
    calls
}

/// Exactly once: succeeded, one row per item (one model), counts equal to
/// the rows, and no call to the server for an item after its result was
/// written. Returns the results.
async fn assert_exactly_once(
    stack: &Stack,
    server: &MockLlm,
    upstream: &str,
    id: &str,
    items: usize,
) -> Vec<Value> {
    let evaluation = wait_finished(stack, id, Duration::from_secs(240)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    let results = stack.results(id).await;
    assert_eq!(results.len(), items, "one result per item");
    let mut positions: Vec<u64> = results
        .iter()
        .map(|result| result["item_position"].as_u64().unwrap())
        .collect();
    positions.dedup();
    assert_eq!(positions.len(), items, "no item twice");
    let counts = &evaluation["counts"];
    assert_eq!(
        counts["completed"], items,
        "counts match the rows: {counts}"
    );
    assert_eq!(counts["passed"], items, "every item answered: {counts}");
    assert_eq!(evaluation["summary"]["models"][0]["total"], items);
    let calls = calls_by_item(server, upstream).await;
    let mut called_after_result = Vec::new();
    for result in &results {
        let position = result["item_position"].as_u64().unwrap() as usize;
        let written = millis(&result["created_at"]);
        let item_calls = calls.get(&position).map(Vec::as_slice).unwrap_or_default();
        assert!(
            !item_calls.is_empty(),
            "item {position} was answered without a call"
        );
        if item_calls.iter().any(|at| *at > written) {
            called_after_result.push(position);
        }
    }
    assert!(
        called_after_result.is_empty(),
        "items called again after they had a result: {called_after_result:?}"
    );
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_one_stopped_finish_exactly_once() {
    const ITEMS: usize = 5000;
    let (server, _registry, mut stack) = recording_stack(3).await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;

    wait_until_completed(&stack, &id, 1000).await;
    stack.workers[0].0.signal("KILL").unwrap();
    // Read after the kill: its leases stay until another worker takes the
    // chunks over (read before, a chunk it finished in between would count).
    let killed = chunks_held_by(&stack, &id, stack.workers[0].0.pid()).await;
    wait_until_completed(&stack, &id, 2000).await;
    let stopped = chunks_held_by(&stack, &id, stack.workers[1].0.pid()).await;
    stack.workers[1].0.signal("TERM").unwrap();
    assert!(
        completed(&stack, &id).await < ITEMS as u64,
        "the failures happened mid-run"
    );
    let code = stack.workers[1]
        .0
        .wait(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "a worker told to stop hands its chunks back and exits 0"
    );
    // Operators restart what they stopped.
    stack.start_worker(&["--concurrency", "16"]).await;
    stack.start_worker(&["--concurrency", "16"]).await;

    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;
    let stats = server.stats().await;
    assert!(stats["requests"].as_u64().unwrap() >= ITEMS as u64);
    // The chunks the killed worker held (read at the moment it went) were
    // started again elsewhere; so were the stopped worker's, but for one whose
    // calls had all started, which it finishes on its way out.
    assert!(
        !killed.is_empty() || !stopped.is_empty(),
        "the two workers held chunks when they went"
    );
    let starts = chunk_starts(&stack, &id).await;
    for chunk in &killed {
        assert!(
            starts[chunk] > 1,
            "chunk {chunk} of the killed worker was started again: {starts:?}"
        );
    }
    let stopped_restarted = stopped.iter().filter(|chunk| starts[*chunk] > 1).count();
    assert!(
        stopped.is_empty() || stopped_restarted >= 1,
        "a chunk the stopped worker handed back was started again: {stopped:?} in {starts:?}"
    );
}

/// Chunks of the evaluation running under the lease of the worker process `pid`.
async fn chunks_held_by(stack: &Stack, id: &str, pid: u32) -> Vec<i32> {
    use assay_core::db::schema::evaluation_chunks::dsl;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    dsl::evaluation_chunks
        .filter(dsl::evaluation_id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .filter(dsl::status.eq("running"))
        .filter(dsl::lease_owner.like(format!("%-{pid}")))
        .select(dsl::chunk_index)
        .load(&mut conn)
        .await
        .unwrap()
}

/// Each chunk's number of starts.
async fn chunk_starts(stack: &Stack, id: &str) -> HashMap<i32, i32> {
    use assay_core::db::schema::evaluation_chunks::dsl;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    dsl::evaluation_chunks
        .filter(dsl::evaluation_id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .select((dsl::chunk_index, dsl::starts))
        .load::<(i32, i32)>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The evaluation's chunks queued (their jobs pushed to Redis, not yet
/// started), as the API counts them.
async fn queued_chunks(stack: &Stack, id: &str) -> u64 {
    poll(stack, id).await.map_or(0, |evaluation| {
        evaluation["chunks"]["queued"].as_u64().unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_loses_everything_mid_run_loses_no_work() {
    const ITEMS: usize = 3000;
    const SIDE_ITEMS: usize = 1000;
    let redis = PrivateRedis::start().unwrap();
    let server = recording_server();
    let dir = TempDir::new();
    // `side` is the same echo under another upstream name, so that the
    // server's log tells the two evaluations apart.
    let side = "[models.side]\nprovider = \"openai\"\nmodel = \"mock:seed=1\"\n";
    let stack = Stack::start_with(
        2,
        &["--concurrency", "16", "--sweep-interval", "1s"],
        StackOptions {
            env: registry(
                &dir,
                &server,
                &format!("{side}base_url = \"{}/v1\"\n", server.url),
            ),
            redis_url: Some(redis.url.clone()),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    // A low-priority evaluation beside it, so that two evaluations have
    // chunks waiting.
    let low = submit(
        &stack,
        SIDE_ITEMS,
        &["side"],
        json!({}),
        json!({"priority": "low"}),
    )
    .await;
    wait_until_completed(&stack, &id, 800).await;
    // Starting a chunk queues the evaluation's next in the same transaction,
    // so mid-run a chunk is always queued, its job in Redis (waiting, or
    // fetched and not yet started): the flush certainly loses queued work.
    // (Waiting for a job in one queue instead raced the workers, which take
    // chunks a whole chunk ahead, and the evaluation could end first.)
    let queued = queued_chunks(&stack, &id).await + queued_chunks(&stack, &low).await;
    redis.flush_all().unwrap();
    assert!(
        completed(&stack, &id).await < ITEMS as u64,
        "flushed mid-run"
    );
    assert!(queued > 0, "a chunk was queued when Redis lost everything");
    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;
    assert_exactly_once(&stack, &server, "mock:seed=1", &low, SIDE_ITEMS).await;
    let requeued = stack
        .metric_sum("assay_sweeper_repairs_total", &["kind=\"requeued\""])
        .await;
    assert!(
        requeued >= 1.0,
        "the sweeper queued the lost chunks again from PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ride_out_a_postgres_restart() {
    const ITEMS: usize = 3000;
    let postgres = PrivatePostgres::start().unwrap();
    let server = recording_server();
    let dir = TempDir::new();
    let mut stack = Stack::start_with(
        2,
        &["--concurrency", "16"],
        StackOptions {
            env: registry(&dir, &server, ""),
            postgres_admin_url: Some(postgres.admin_url()),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    wait_until_completed(&stack, &id, 800).await;
    postgres.restart().unwrap();
    assert!(
        completed(&stack, &id).await < ITEMS as u64,
        "restarted mid-run"
    );
    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;
    for (index, (worker, _)) in stack.workers.iter_mut().enumerate() {
        assert!(worker.is_running(), "worker {index} rode the restart out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_calls_within_seconds_and_resume_finishes_only_the_rest() {
    const ITEMS: usize = 3000;
    let server = recording_server();
    let dir = TempDir::new();
    let stack = Stack::start_with(
        2,
        &["--concurrency", "16"],
        StackOptions {
            env: registry(&dir, &server, ""),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    wait_until_completed(&stack, &id, 300).await;
    // While it runs, workers report the work left, the queues, their chunks
    // and their pace (every second).
    eventually(Duration::from_secs(15), "the operations gauges", || async {
        let gauge = |metric: &'static str, labels: &'static [&'static str]| {
            stack.metric_sum(metric, labels)
        };
        let unfinished = gauge("assay_chunks_unfinished", &[]).await;
        let in_flight = gauge("assay_chunks_in_flight", &[]).await;
        let pace = gauge("assay_items_per_second", &[]).await;
        let depth_reported = stack
            .worker_metrics(0)
            .await
            .contains("assay_queue_depth{queue=\"normal\",state=\"ready\"}");
        Ok((unfinished > 0.0 && in_flight > 0.0 && pace > 0.0 && depth_reported).then_some(()))
    })
    .await
    .unwrap();
    let canceled = stack
        .client
        .post(&format!("/v1/evaluations/{id}/cancel"), &json!({}))
        .await
        .unwrap();
    let canceled_at = chrono::Utc::now().timestamp_millis();
    assert_eq!(canceled.status, 200, "{:?}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");

    tokio::time::sleep(Duration::from_secs(6)).await;
    let last_call = calls_by_item(&server, "mock")
        .await
        .values()
        .flatten()
        .copied()
        .max()
        .unwrap();
    let stopped_after = last_call - canceled_at;
    assert!(
        stopped_after < 5_000,
        "calls went on {stopped_after} ms after the cancel"
    );
    let evaluation = stack.evaluation(&id).await;
    assert_eq!(evaluation["status"], "canceled");
    let kept = evaluation["counts"]["completed"].as_u64().unwrap();
    assert!(
        kept >= 300 && kept < ITEMS as u64,
        "what was written is kept: {kept}"
    );
    assert_eq!(stack.results(&id).await.len() as u64, kept);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.evaluation(&id).await["counts"]["completed"],
        kept,
        "nothing more is written"
    );
    let again = stack
        .client
        .post(&format!("/v1/evaluations/{id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(again.status, 409, "{:?}", again.body);

    let resumed = stack
        .client
        .post(&format!("/v1/evaluations/{id}/resume"), &json!({}))
        .await
        .unwrap();
    assert_eq!(resumed.status, 202, "{:?}", resumed.body);
    assert_eq!(resumed.body["run"], 2);
    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;
    let twice = stack
        .client
        .post(&format!("/v1/evaluations/{id}/resume"), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        twice.status, 409,
        "a succeeded evaluation is not resumed: {:?}",
        twice.body
    );
    let actions: Vec<String> = [
        "evaluation.canceled",
        "evaluation.resumed",
        "evaluation.succeeded",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for action in &actions {
        assert_eq!(
            stack.event_actors(&id, action).await.len(),
            1,
            "{action} recorded once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_errors_reruns_only_the_errored_results() {
    const ITEMS: usize = 300;
    let server = MockLlm::start(MockConfig {
        error_rate: 0.3,
        record_requests: true,
        ..MockConfig::default()
    });
    let dir = TempDir::new();
    let stack = Stack::start_with(
        1,
        &["--concurrency", "16"],
        StackOptions {
            env: registry(
                &dir,
                &server,
                "max_attempts = 1\ncircuit = { failures = 0 }\n",
            ),
            ..StackOptions::default()
        },
    )
    .await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    let first = wait_finished(&stack, &id, Duration::from_secs(60)).await;
    assert_eq!(first["status"], "succeeded");
    let errored = first["counts"]["errored"].as_u64().unwrap();
    assert!((40..160).contains(&errored), "about 30% errored: {errored}");
    let before: HashMap<u64, Value> = stack
        .results(&id)
        .await
        .into_iter()
        .map(|result| (result["item_position"].as_u64().unwrap(), result))
        .collect();
    let requests_before = server.stats().await["requests"].as_u64().unwrap();

    let retried = stack
        .client
        .post(&format!("/v1/evaluations/{id}/retry-errors"), &json!({}))
        .await
        .unwrap();
    assert_eq!(retried.status, 202, "{:?}", retried.body);
    assert_eq!(retried.body["run"], 2);
    assert_eq!(
        retried.body["counts"]["errored"], 0,
        "errored results left the counts"
    );
    let second = wait_finished(&stack, &id, Duration::from_secs(60)).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(
        server.stats().await["requests"].as_u64().unwrap() - requests_before,
        errored,
        "one new call per errored result, none for the others"
    );
    let after = stack.results(&id).await;
    assert_eq!(after.len(), ITEMS);
    for result in &after {
        let old = &before[&result["item_position"].as_u64().unwrap()];
        if old["status"] == "errored" {
            assert_ne!(result["created_at"], old["created_at"], "re-run: {result}");
        } else {
            assert_eq!(result, old, "untouched");
        }
    }
    let counts = &second["counts"];
    assert_eq!(counts["completed"], ITEMS);
    assert!(
        counts["errored"].as_u64().unwrap() < errored,
        "some retries succeeded: {counts}"
    );
    // The replaced rows are kept, tagged with the run that wrote them.
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let superseded: i64 = assay_core::db::schema::superseded_results::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(superseded as u64, errored);
    let nothing_left = stack
        .client
        .post(&format!("/v1/evaluations/{id}/retry-errors"), &json!({}))
        .await
        .unwrap();
    if counts["errored"] == 0 {
        assert_eq!(nothing_left.status, 409);
    } else {
        assert_eq!(nothing_left.status, 202);
    }
}

/// From submission to `succeeded`, as the evaluation's own timestamps say.
fn run_time(evaluation: &Value) -> Duration {
    let millis = millis(&evaluation["finished_at"]) - millis(&evaluation["created_at"]);
    Duration::from_millis(u64::try_from(millis).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_evaluation_is_not_stuck_behind_a_huge_one() {
    let stack = Stack::start(2, &["--concurrency", "50"]).await;
    let model = ["mock:latency=50ms"];
    let solo = submit(&stack, 50, &model, json!({}), json!({})).await;
    let solo = stack.wait_finished(&solo, Duration::from_secs(30)).await;
    assert_eq!(solo["status"], "succeeded");

    let huge = submit(&stack, 20_000, &model, json!({}), json!({})).await;
    wait_until_completed(&stack, &huge, 1000).await;
    let huge_before = stack.evaluation(&huge).await["counts"]["completed"]
        .as_u64()
        .unwrap();
    let small = submit(&stack, 50, &model, json!({}), json!({})).await;
    let small = stack.wait_finished(&small, Duration::from_secs(60)).await;
    assert_eq!(small["status"], "succeeded");
    let huge_now = stack.evaluation(&huge).await;
    assert_eq!(
        huge_now["status"], "running",
        "the small one finished first"
    );
    // Measured in the huge evaluation's own progress, so that a machine
    // slowed by other work slows both alike: sharing the permits, the small
    // one is done after a few rounds of calls; queued behind the huge one, it
    // would wait for its remaining 19,000 runs. A quarter of them is the bound.
    let huge_meanwhile = huge_now["counts"]["completed"].as_u64().unwrap() - huge_before;
    let (solo_time, small_time) = (run_time(&solo), run_time(&small));
    let waited =
        |evaluation: &Value| millis(&evaluation["started_at"]) - millis(&evaluation["created_at"]);
    eprintln!(
        "50 items: {solo_time:?} alone (queued {} ms), {small_time:?} beside 20,000 items (queued {} ms)",
        waited(&solo),
        waited(&small)
    );
    eprintln!("the huge evaluation completed {huge_meanwhile} runs meanwhile");
    assert!(
        huge_meanwhile <= 5_000,
        "the huge evaluation completed {huge_meanwhile} runs while 50 items waited ({small_time:?} beside it, {solo_time:?} alone)"
    );
    let cancel = stack
        .client
        .post(&format!("/v1/evaluations/{huge}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(cancel.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_served_first() {
    // One worker with few permits, so that priorities decide who calls.
    let stack = Stack::start(1, &["--concurrency", "8"]).await;
    let model = ["mock:latency=50ms"];
    let low = submit(&stack, 2000, &model, json!({}), json!({"priority": "low"})).await;
    wait_until_completed(&stack, &low, 100).await;
    // Four times the high one's runs, so that serving high first decides
    // the order even on a loaded machine.
    let normal = submit(
        &stack,
        1200,
        &model,
        json!({}),
        json!({"priority": "normal"}),
    )
    .await;
    let high = submit(&stack, 300, &model, json!({}), json!({"priority": "high"})).await;
    let high = stack.wait_finished(&high, Duration::from_secs(60)).await;
    let normal = stack.wait_finished(&normal, Duration::from_secs(60)).await;
    assert_eq!(
        (high["status"].as_str(), normal["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert_eq!(high["priority"], "high");
    assert!(
        millis(&high["finished_at"]) < millis(&normal["finished_at"]),
        "high finished before normal"
    );
    let low_now = stack.evaluation(&low).await;
    assert_eq!(low_now["status"], "running", "low waits for both");
    let cancel = stack
        .client
        .post(&format!("/v1/evaluations/{low}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(cancel.status, 200);
    let refused = stack
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": high["prompt_version_id"], "dataset_id": high["dataset_id"],
                    "models": ["mock"], "graders": [{"type": "contains", "value": "q"}], "priority": "urgent"}),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert!(
        refused.body["detail"].as_str().unwrap().contains("urgent"),
        "{:?}",
        refused.body
    );
}

/// A worker SIGKILLed under steady results costs only what it had not
/// saved: the calls in flight and about 250 ms of answers (the writer saves
/// every 100 ms), not a batch or a chunk's worth of calls billed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_makes_again_only_its_calls_in_flight_and_its_last_moments() {
    const ITEMS: usize = 4000;
    const CONCURRENCY: usize = 16;
    let (server, _registry, mut stack) = recording_stack(1).await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    wait_until_completed(&stack, &id, 1200).await;
    let victim = stack.workers[0].0.pid();
    assert!(
        !chunks_held_by(&stack, &id, victim).await.is_empty(),
        "killed mid-chunk"
    );
    stack.workers[0].0.signal("KILL").unwrap();
    let killed_at = chrono::Utc::now().timestamp_millis();
    stack.start_worker(&["--concurrency", "16"]).await;
    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;

    let calls = calls_by_item(&server, "mock").await;
    let made_again: usize = calls.values().map(|at| at.len() - 1).sum();
    // The answer rate the killed worker had: requests in its last second.
    let last_second = calls
        .values()
        .flatten()
        .filter(|at| (killed_at - 1000..killed_at).contains(*at))
        .count();
    let bound = CONCURRENCY + last_second / 4;
    println!(
        "made again after SIGKILL: {made_again} calls (bound {bound}: {CONCURRENCY} in flight + 250 ms at {last_second}/s)"
    );
    assert!(
        made_again <= bound,
        "{made_again} calls made again, more than {CONCURRENCY} in flight + 250 ms of answers ({last_second}/s)"
    );
}

/// A SIGTERMed worker hands its chunks back and exits right after, not at
/// the end of its shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_exits_as_soon_as_its_chunks_are_handed_back() {
    const ITEMS: usize = 3000;
    let (server, _registry, mut stack) = recording_stack(1).await;
    let id = submit(&stack, ITEMS, &["slow"], json!({}), json!({})).await;
    wait_until_completed(&stack, &id, 500).await;
    let pid = stack.workers[0].0.pid();
    assert!(!chunks_held_by(&stack, &id, pid).await.is_empty());
    let signalled = std::time::Instant::now();
    stack.workers[0].0.signal("TERM").unwrap();
    let handed_back = eventually(
        Duration::from_secs(30),
        "the chunks to be handed back",
        || async {
            Ok(chunks_held_by(&stack, &id, pid)
                .await
                .is_empty()
                .then(|| signalled.elapsed()))
        },
    )
    .await
    .unwrap();
    let code = stack.workers[0]
        .0
        .wait(Duration::from_secs(40))
        .await
        .unwrap();
    let exited = signalled.elapsed();
    println!("SIGTERM: chunks handed back after {handed_back:?}, exited after {exited:?}");
    assert_eq!(code, Some(0));
    assert!(
        exited <= handed_back + Duration::from_secs(2),
        "exited {:?} after the hand-back",
        exited - handed_back
    );
    // The work goes on elsewhere.
    stack.start_worker(&["--concurrency", "16"]).await;
    assert_exactly_once(&stack, &server, "mock", &id, ITEMS).await;
}

/// A Redis flushed again and again costs the worker restarts of its queue
/// consumers, never the process: more flushes than `--max-restarts`, and
/// the worker still runs evaluations afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_a_redis_flushed_again_and_again() {
    const FLUSHES: usize = 20;
    let redis = PrivateRedis::start().unwrap();
    let server = recording_server();
    let dir = TempDir::new();
    let mut stack = Stack::start_with(
        1,
        &[
            "--concurrency",
            "8",
            "--max-restarts",
            "5",
            "--sweep-interval",
            "1s",
        ],
        StackOptions {
            env: registry(&dir, &server, ""),
            redis_url: Some(redis.url.clone()),
            ..StackOptions::default()
        },
    )
    .await;
    for _ in 0..FLUSHES {
        redis.flush_all().unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            stack.workers[0].0.is_running(),
            "the worker exited after {} restarts",
            stack
                .metric_sum("assay_worker_consumer_restarts_total", &[])
                .await
        );
    }
    let restarts = stack
        .metric_sum("assay_worker_consumer_restarts_total", &[])
        .await;
    println!("{FLUSHES} flushes: {restarts} consumer restarts");
    let id = submit(&stack, 200, &["slow"], json!({}), json!({})).await;
    assert_exactly_once(&stack, &server, "mock", &id, 200).await;
    assert!(stack.workers[0].0.is_running());
}
