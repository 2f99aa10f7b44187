//! Versioning jobs end to end: promotions (better, worse, superseded,
//! baseline reuse, a worker SIGKILLed mid-evaluation) and optimizations
//! (the predicted winner, invalid proposals, the `opt/<id>` branch, the
//! budget), with the mock's rules (core/src/providers/mock.rs):
//! `mock:strict=true` answers wrong unless the prompt holds `MOCK_FIX`,
//! and the mock optimizer proposes the fix at index seed mod K.

use std::time::Duration;

use assay_core::providers::mock::MOCK_FIX;
use assay_testkit::eventually;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::Stack;

const STRICT: &str = "mock:strict=true";
const FIXED: &str = "Answer briefly. Answer exactly.";

fn graders() -> Value {
    json!([{"type": "equals", "value": "{{ expected }}"}])
}

/// Items whose question is `qN` and expected answer `qN`: the echo passes.
fn items(count: usize) -> Vec<Value> {
    (0..count)
        .map(|n| json!({"id": format!("item-{n}"), "vars": {"question": format!("q{n}")}, "expected": format!("q{n}")}))
        .collect()
}

fn messages(system: &str) -> Value {
    json!([{"role": "system", "content": system}, {"role": "user", "content": "{{ question }}"}])
}

/// A prompt with version 1 = `Answer briefly.` (fails under the strict
/// mock); returns its id.
async fn prompt(stack: &Stack) -> String {
    let response = stack
        .client
        .post(
            "/v1/prompts",
            &json!({"name": format!("p-{}", uuid::Uuid::new_v4()), "messages": messages("Answer briefly.")}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 201, "{:?}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

/// Commits `system` on main; returns the version number.
async fn commit(stack: &Stack, prompt: &str, system: &str) -> i64 {
    let response = stack
        .client
        .post(
            &format!("/v1/prompts/{prompt}/versions"),
            &json!({"messages": messages(system), "commit_message": system}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 201, "{:?}", response.body);
    response.body["version"].as_i64().unwrap()
}

async fn set_label(stack: &Stack, prompt: &str, label: &str, version: i64) {
    let response = stack
        .client
        .put(
            &format!("/v1/prompts/{prompt}/labels/{label}"),
            &json!({"version": version}),
        )
        .await
        .unwrap();
    assert!([200, 201].contains(&response.status), "{:?}", response.body);
}

async fn label_version(stack: &Stack, prompt: &str, label: &str) -> i64 {
    let response = stack
        .client
        .get(&format!("/v1/prompts/{prompt}/labels/{label}"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.body["version"].as_i64().unwrap()
}

fn policy() -> Value {
    json!({"min_pass_rate": 0.8, "max_regressions": 0})
}

async fn promote(stack: &Stack, prompt: &str, body: Value) -> String {
    let response = stack
        .client
        .post(&format!("/v1/prompts/{prompt}/promotions"), &body)
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

async fn wait_job(stack: &Stack, path: &str, unfinished: &[&str], limit: Duration) -> Value {
    eventually(limit, "the job to finish", || async {
        let response = stack.client.get(path).await?;
        anyhow::ensure!(response.status == 200, "{:?}", response.body);
        let status = response.body["status"].as_str().unwrap_or_default();
        Ok((!unfinished.contains(&status)).then_some(response.body))
    })
    .await
    .unwrap()
}

async fn wait_promotion(stack: &Stack, id: &str) -> Value {
    wait_job(
        stack,
        &format!("/v1/promotions/{id}"),
        &["queued", "evaluating"],
        Duration::from_secs(120),
    )
    .await
}

/// `prompt.label_moved` events of the label (by its id).
async fn label_moves(stack: &Stack, prompt: &str, label: &str) -> Vec<Value> {
    let response = stack
        .client
        .get(&format!("/v1/prompts/{prompt}/labels/{label}/history"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.body["data"].as_array().unwrap().clone()
}

fn setup(dataset: &Value, model: &str) -> Value {
    json!({"dataset_id": dataset, "models": [model], "graders": graders()})
}

fn with(mut body: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_move_the_label_only_for_a_better_candidate_and_only_once() {
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let dataset = stack.dataset(items(6)).await;
    // The tenant's webhook for promotions' outcomes, to a receiver that
    // fails its first attempt.
    let receiver = assay_testkit::Receiver::failing_first(1).await.unwrap();
    let webhook = stack
        .client
        .post(
            "/v1/webhooks",
            &json!({"url": receiver.url, "events": ["promotion.promoted", "promotion.rejected"]}),
        )
        .await
        .unwrap();
    assert_eq!(webhook.status, 201, "{:?}", webhook.body);
    let webhook_secret = webhook.body["secret"].as_str().unwrap().to_owned();
    // Protected: a member key cannot move it; a promotion can.
    let protect = stack
        .client
        .put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &json!({"version": 1, "protected": true}),
        )
        .await
        .unwrap();
    assert_eq!(protect.status, 201, "{:?}", protect.body);
    let by_hand = stack
        .client
        .put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &json!({"version": fixed}),
        )
        .await
        .unwrap();
    assert_eq!(by_hand.status, 403, "{:?}", by_hand.body);
    let moves_before = label_moves(&stack, &prompt, "production").await.len();

    // Better: the fixed version passes every item, the baseline none.
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "promoted", "{promotion:#}");
    assert_eq!(label_version(&stack, &prompt, "production").await, fixed);
    let moves = label_moves(&stack, &prompt, "production").await;
    assert_eq!(
        moves.len(),
        moves_before + 1,
        "exactly one move: {moves:#?}"
    );
    let by_promotion: Vec<&Value> = moves
        .iter()
        .filter(|event| event["data"]["authority"] == "promotion")
        .collect();
    assert_eq!(by_promotion.len(), 1, "{moves:#?}");
    assert_eq!(by_promotion[0]["data"]["protected"], true);
    let evidence = &promotion["comparison"]["models"][0];
    assert_eq!(evidence["pass_rate"]["a"], 0.0);
    assert_eq!(evidence["pass_rate"]["b"], 1.0);
    assert_eq!(evidence["significance"]["improvements"], 6);
    assert_eq!(evidence["significance"]["regressions"], 0);
    let actions: Vec<&str> = promotion["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["promotion.created", "promotion.promoted"]);

    // Worse: back to version 1 is refused, and the rule is named.
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"candidate": 1, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "rejected", "{promotion:#}");
    assert!(
        promotion["reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected by min_pass_rate"),
        "{promotion:#}"
    );
    assert_eq!(promotion["comparison"]["failed_rule"], "min_pass_rate");
    assert_eq!(label_version(&stack, &prompt, "production").await, fixed);
    assert_eq!(
        label_moves(&stack, &prompt, "production").await.len(),
        moves_before + 1
    );
    // Both outcomes reached the webhook, signed, each event once (the
    // failed first attempt retried with the same event id).
    let events = eventually(
        Duration::from_secs(60),
        "the promotions' webhook events",
        || async {
            let delivered: Vec<Value> = receiver
                .received()
                .into_iter()
                .filter(|request| request.status == 200)
                .map(|request| {
                    let header = request.header("assay-signature").unwrap_or_default();
                    assert!(
                        assay_core::webhooks::verify(
                            &webhook_secret,
                            header,
                            &request.body,
                            chrono::Utc::now().timestamp(),
                            Duration::from_secs(300),
                        ),
                        "a valid signature"
                    );
                    serde_json::from_slice(&request.body).unwrap()
                })
                .collect();
            Ok((delivered.len() >= 2).then_some(delivered))
        },
    )
    .await
    .unwrap();
    // (The promoted event's retry may land after the rejected one.)
    let mut types: Vec<&str> = events
        .iter()
        .map(|event| event["type"].as_str().unwrap_or_default())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["promotion.promoted", "promotion.rejected"],
        "{events:#?}"
    );
    let rejected = events
        .iter()
        .find(|event| event["type"] == "promotion.rejected")
        .unwrap();
    assert_eq!(rejected["data"]["id"], json!(id), "{events:#?}");
    let mut ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2, "each event delivered once: {events:#?}");

    // A rule other than the pass rate: min_pass_rate 0 lets it through,
    // max_regressions 0 does not.
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"candidate": 1, "label": "production", "policy": {"min_pass_rate": 0.0, "max_regressions": 0}}),
        ),
    )
    .await;
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "rejected");
    assert_eq!(promotion["comparison"]["failed_rule"], "max_regressions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_moved_meanwhile_supersedes_the_promotion() {
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let other = commit(&stack, &prompt, "Answer briefly. Answer exactly. Please.").await;
    let dataset = stack.dataset(items(6)).await;
    set_label(&stack, &prompt, "production", 1).await;
    // Slow enough to move the label while the evaluations run.
    let slow = "mock:strict=true,latency=2s";
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, slow),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    wait_job(
        &stack,
        &format!("/v1/promotions/{id}"),
        &["queued"],
        Duration::from_secs(30),
    )
    .await;
    set_label(&stack, &prompt, "production", other).await;
    let moves = label_moves(&stack, &prompt, "production").await.len();
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "superseded", "{promotion:#}");
    assert!(
        promotion["reason"]
            .as_str()
            .unwrap()
            .contains("no longer names the baseline")
    );
    assert_eq!(label_version(&stack, &prompt, "production").await, other);
    assert_eq!(
        label_moves(&stack, &prompt, "production").await.len(),
        moves
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_identical_baseline_evaluation_is_reused_without_a_call() {
    const ITEMS: usize = 5;
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let dataset = stack.dataset(items(ITEMS)).await;
    set_label(&stack, &prompt, "production", 1).await;
    let versions = stack
        .client
        .get(&format!("/v1/prompts/{prompt}/versions/1"))
        .await
        .unwrap();
    let baseline_version = versions.body["id"].clone();
    let earlier = stack
        .submit_body(with(
            setup(&dataset, STRICT),
            json!({"prompt_version_id": baseline_version}),
        ))
        .await;
    stack.wait_finished(&earlier, Duration::from_secs(60)).await;
    let calls_before = stack.metric_sum("assay_mock_calls_total", &[]).await;

    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "promoted", "{promotion:#}");
    assert_eq!(promotion["baseline_evaluation_id"], earlier.as_str());
    assert_eq!(promotion["baseline_reused"], true);
    assert_eq!(promotion["candidate_reused"], false);
    let calls = stack.metric_sum("assay_mock_calls_total", &[]).await - calls_before;
    assert_eq!(
        calls, ITEMS as f64,
        "only the candidate's {ITEMS} items were called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_evaluation_still_finishes_the_promotion_and_moves_the_label_once() {
    // Few LLM slots, so that the evaluations take long enough to kill a worker mid-way.
    let mut stack = Stack::start(2, &["--concurrency", "4"]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let dataset = stack.dataset(items(40)).await;
    set_label(&stack, &prompt, "production", 1).await;
    let moves_before = label_moves(&stack, &prompt, "production").await.len();
    let slow = "mock:strict=true,latency=500ms";
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, slow),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    let evaluating = wait_job(
        &stack,
        &format!("/v1/promotions/{id}"),
        &["queued"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(evaluating["status"], "evaluating");
    // The worker that runs the promotion job is the one that created its evaluations.
    let candidate = evaluating["candidate_evaluation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let actors = stack.event_actors(&candidate, "evaluation.created").await;
    let runner = stack.worker_of(&actors[0]);
    eventually(Duration::from_secs(30), "some results", || async {
        let evaluation = stack.evaluation(&candidate).await;
        Ok((evaluation["counts"]["completed"].as_i64().unwrap() >= 3).then_some(()))
    })
    .await
    .unwrap();
    stack.workers[runner].0.signal("KILL").unwrap();
    let evaluation = stack.evaluation(&candidate).await;
    assert_ne!(evaluation["status"], "succeeded", "killed mid-evaluation");

    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "promoted", "{promotion:#}");
    let decided_by = stack.event_actors(&id, "promotion.promoted").await;
    assert_eq!(decided_by.len(), 1);
    assert_ne!(decided_by[0], actors[0], "another worker took the job over");
    assert_eq!(label_version(&stack, &prompt, "production").await, fixed);
    assert_eq!(
        label_moves(&stack, &prompt, "production").await.len(),
        moves_before + 1,
        "the label moved once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_promotion_and_its_evaluations() {
    let stack = Stack::start(1, &["--concurrency", "2"]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let dataset = stack.dataset(items(20)).await;
    set_label(&stack, &prompt, "production", 1).await;
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, "mock:strict=true,latency=1s"),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    let evaluating = wait_job(
        &stack,
        &format!("/v1/promotions/{id}"),
        &["queued"],
        Duration::from_secs(30),
    )
    .await;
    let canceled = stack
        .client
        .post(&format!("/v1/promotions/{id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(canceled.status, 200, "{:?}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    for role in ["baseline_evaluation_id", "candidate_evaluation_id"] {
        let evaluation = stack.evaluation(evaluating[role].as_str().unwrap()).await;
        assert_eq!(evaluation["status"], "canceled", "{evaluation:#}");
    }
    // The job notices and ends; the label never moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(label_version(&stack, &prompt, "production").await, 1);
    let promotion = stack
        .client
        .get(&format!("/v1/promotions/{id}"))
        .await
        .unwrap();
    assert_eq!(promotion.body["status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_handed_back_on_sigterm_is_pushed_again_by_the_sweeper() {
    let mut stack = Stack::start(1, &["--concurrency", "4", "--sweep-interval", "1s"]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    let dataset = stack.dataset(items(12)).await;
    set_label(&stack, &prompt, "production", 1).await;
    let id = promote(
        &stack,
        &prompt,
        with(
            setup(&dataset, "mock:strict=true,latency=500ms"),
            json!({"candidate": fixed, "label": "production", "policy": policy()}),
        ),
    )
    .await;
    wait_job(
        &stack,
        &format!("/v1/promotions/{id}"),
        &["queued"],
        Duration::from_secs(30),
    )
    .await;
    // The only worker stops: its promotion job ends "released" and is acked,
    // so Redis holds nothing more of it; PostgreSQL still says `evaluating`.
    stack.workers[0].0.signal("TERM").unwrap();
    let code = stack.workers[0]
        .0
        .wait(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let promotion = stack
        .client
        .get(&format!("/v1/promotions/{id}"))
        .await
        .unwrap();
    assert_eq!(promotion.body["status"], "evaluating");
    let fresh = stack
        .start_worker(&["--concurrency", "4", "--sweep-interval", "1s"])
        .await;
    let promotion = wait_promotion(&stack, &id).await;
    assert_eq!(promotion["status"], "promoted", "{promotion:#}");
    let repaired: f64 = stack
        .worker_metrics(fresh)
        .await
        .lines()
        .filter(|line| {
            line.starts_with("assay_sweeper_repairs_total{") && line.contains("kind=\"versioning\"")
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(repaired >= 1.0, "the sweeper pushed it again: {repaired}");
    let decided_by = stack.event_actors(&id, "promotion.promoted").await;
    assert_eq!(stack.worker_of(&decided_by[0]), fresh);
}

/// (passed, graded) over an evaluation's result rows, as the job counts them.
fn pass_rate(results: &[Value]) -> f64 {
    let graded: Vec<&Value> = results
        .iter()
        .filter(|result| result["status"] != "errored")
        .collect();
    let passed = graded
        .iter()
        .filter(|result| result["status"] == "passed")
        .count();
    passed as f64 / graded.len() as f64
}

async fn optimize(stack: &Stack, prompt: &str, body: Value) -> Value {
    let response = stack
        .client
        .post(&format!("/v1/prompts/{prompt}/optimizations"), &body)
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    wait_job(
        stack,
        &format!("/v1/optimizations/{id}"),
        &["queued", "running"],
        Duration::from_secs(180),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_optimizer_s_fix_wins_and_only_valid_proposals_are_committed() {
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let dataset = stack.dataset(items(12)).await;
    set_label(&stack, &prompt, "production", 1).await;
    // K = 4, seed 5: the fix is proposal 5 mod 4 = 1; 2 does not compile; 3
    // reads an unknown variable; 0 is a valid variant without the fix. The
    // winner is then promoted to `production` by a chained promotion.
    let optimization = optimize(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"from": 1, "optimizer_model": "mock", "candidates": 4, "rounds": 1,
                   "validation_split": 0.5, "seed": 5, "max_cost_usd": 1.0,
                   "promote_to": "production", "promote_policy": policy()}),
        ),
    )
    .await;
    assert_eq!(optimization["status"], "succeeded", "{optimization:#}");
    assert_eq!(optimization["proposals_valid"], 2);
    assert_eq!(optimization["proposals_invalid"], 2);
    let candidates = optimization["candidate_list"].as_array().unwrap();
    assert_eq!(candidates.len(), 4);
    assert!(
        candidates[2]["invalid_reason"]
            .as_str()
            .unwrap()
            .contains("does not compile")
    );
    assert!(
        candidates[3]["invalid_reason"]
            .as_str()
            .unwrap()
            .contains("`mock_unknown`")
    );
    assert!(candidates[2]["version_id"].is_null() && candidates[3]["version_id"].is_null());
    let winner = &candidates[1];
    assert_eq!(optimization["winner_version_id"], winner["version_id"]);
    let winner_version = stack
        .client
        .get(&format!(
            "/v1/prompts/{prompt}/versions/{}",
            winner["version_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert!(
        winner_version.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .ends_with(MOCK_FIX)
    );
    assert_eq!(
        winner_version.body["commit_message"],
        "mock: ask for exact answers"
    );

    // The figures, recomputed from the result rows.
    let winner_results = stack
        .results(winner["evaluation_id"].as_str().unwrap())
        .await;
    assert_eq!(
        winner["pass_rate"].as_f64().unwrap(),
        pass_rate(&winner_results)
    );
    assert_eq!(pass_rate(&winner_results), 1.0);
    let variant_results = stack
        .results(candidates[0]["evaluation_id"].as_str().unwrap())
        .await;
    assert_eq!(
        candidates[0]["pass_rate"].as_f64().unwrap(),
        pass_rate(&variant_results)
    );
    let comparison = &optimization["comparison"];
    let parent_results = stack
        .results(comparison["parent_evaluation_id"].as_str().unwrap())
        .await;
    let report = &comparison["models"][0];
    assert_eq!(
        report["pass_rate"]["a"].as_f64().unwrap(),
        pass_rate(&parent_results)
    );
    assert_eq!(
        report["pass_rate"]["b"].as_f64().unwrap(),
        pass_rate(&winner_results)
    );
    let improved = parent_results
        .iter()
        .filter(|parent| {
            parent["status"] == "failed"
                && winner_results.iter().any(|winner| {
                    winner["item_key"] == parent["item_key"] && winner["status"] == "passed"
                })
        })
        .count();
    assert_eq!(report["significance"]["improvements"], improved);
    assert_eq!(report["significance"]["regressions"], 0);
    assert_eq!(report["items"]["paired"], parent_results.len());
    // The exact McNemar p-value of `improved` changes one way: 2 * 0.5^n.
    let p = (2.0 * 0.5f64.powi(improved as i32)).min(1.0);
    assert!((report["significance"]["p_value"].as_f64().unwrap() - p).abs() < 1e-12);

    // The branch holds exactly the committed proposals: every version but
    // the first, each a child of version 1, and its head is the winner.
    let branch = optimization["branch"].as_str().unwrap();
    let resolved = stack
        .client
        .get(&format!(
            "/v1/prompts/{prompt}/resolve?branch={}",
            branch.replace('/', "%2F")
        ))
        .await
        .unwrap();
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    assert_eq!(resolved.body["id"], winner["version_id"]);
    let versions = stack
        .client
        .get(&format!("/v1/prompts/{prompt}/versions"))
        .await
        .unwrap();
    let mut committed: Vec<Value> = versions.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|version| version["version"] != 1)
        .map(|version| {
            assert_eq!(version["parent_id"], optimization["from_version_id"]);
            version["id"].clone()
        })
        .collect();
    committed.sort_by_key(|id| id.to_string());
    let mut valid: Vec<Value> = candidates
        .iter()
        .filter(|candidate| !candidate["version_id"].is_null())
        .map(|candidate| candidate["version_id"].clone())
        .collect();
    valid.sort_by_key(|id| id.to_string());
    assert_eq!(committed, valid);

    let promotion = wait_promotion(&stack, optimization["promotion_id"].as_str().unwrap()).await;
    assert_eq!(promotion["status"], "promoted", "{promotion:#}");
    assert_eq!(promotion["candidate_version_id"], winner["version_id"]);
    assert_eq!(promotion["optimization_id"], optimization["id"]);
    let label = stack
        .client
        .get(&format!("/v1/prompts/{prompt}/labels/production"))
        .await
        .unwrap();
    assert_eq!(label.body["version_id"], winner["version_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimization_stops_at_its_budget_within_one_call() {
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let dataset = stack.dataset(items(12)).await;
    // A wrong answer costs 3 words in and 3 out: $0.009; the parent's two
    // evaluations take about $0.11, so the candidates run out of budget.
    let pricey = "mock:strict=true,price_in=1000,price_out=2000";
    let budget = 0.15;
    let optimization = optimize(
        &stack,
        &prompt,
        with(
            setup(&dataset, pricey),
            json!({"from": 1, "optimizer_model": "mock", "candidates": 4, "rounds": 3,
                   "validation_split": 0.5, "seed": 5, "max_cost_usd": budget}),
        ),
    )
    .await;
    assert_eq!(
        optimization["status"], "budget_exhausted",
        "{optimization:#}"
    );
    let id: uuid::Uuid = optimization["id"].as_str().unwrap().parse().unwrap();

    // What the database says was spent: every result's generation and
    // grading cost in the optimization's evaluations, plus its optimizer calls.
    use assay_core::db::schema::{evaluation_results, evaluations, optimizations};
    let pool = stack.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    // The job's evaluations name it in their `prompt_ref`.
    let evaluation_ids: Vec<uuid::Uuid> = evaluations::table
        .select((evaluations::id, evaluations::prompt_ref))
        .load::<(uuid::Uuid, Option<Value>)>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, reference)| {
            reference
                .as_ref()
                .is_some_and(|reference| reference["id"] == id.to_string())
        })
        .map(|(evaluation, _)| evaluation)
        .collect();
    assert!(!evaluation_ids.is_empty());
    let costs: Vec<(f64, f64)> = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq_any(&evaluation_ids))
        .select((
            evaluation_results::cost_usd,
            evaluation_results::grading_cost_usd,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    let optimizer: f64 = optimizations::table
        .filter(optimizations::id.eq(id))
        .select(optimizations::optimizer_cost_usd)
        .first(&mut conn)
        .await
        .unwrap();
    let max_call = costs
        .iter()
        .map(|(generation, grading)| generation + grading)
        .fold(optimizer, f64::max);
    let spent: f64 = costs
        .iter()
        .map(|(generation, grading)| generation + grading)
        .sum::<f64>()
        + optimizer;
    assert!(spent > budget * 0.5, "it spent most of its budget: {spent}");
    assert!(
        spent <= budget + max_call + 1e-9,
        "spent {spent} against a budget of {budget} (one call at most {max_call})"
    );
    assert!((optimization["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_round_starts_from_the_winner_and_ties_go_to_fewer_words() {
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let dataset = stack.dataset(items(8)).await;
    // K = 3, seed 0. Round 0 (seed 0): proposal 0 is the fix, 1 and 2 are
    // invalid. Round 1 (seed 1) starts from the fix: proposal 1 appends
    // " Be concise." (valid, passes like its parent, but longer), 0 and 2
    // are invalid. The tie goes to the shorter parent: the round-0 fix wins.
    let optimization = optimize(
        &stack,
        &prompt,
        with(
            setup(&dataset, STRICT),
            json!({"from": 1, "optimizer_model": "mock", "candidates": 3, "rounds": 2,
                   "seed": 0, "max_cost_usd": 1.0}),
        ),
    )
    .await;
    assert_eq!(optimization["status"], "succeeded", "{optimization:#}");
    assert_eq!(optimization["round"], 2);
    assert_eq!(optimization["proposals_valid"], 2);
    assert_eq!(optimization["proposals_invalid"], 4);
    let candidates = optimization["candidate_list"].as_array().unwrap();
    let valid: Vec<&Value> = candidates
        .iter()
        .filter(|candidate| !candidate["version_id"].is_null())
        .collect();
    assert_eq!(
        valid
            .iter()
            .map(|candidate| (
                candidate["round"].as_i64().unwrap(),
                candidate["index"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(0, 0), (1, 1)]
    );
    let (fix, concise) = (valid[0], valid[1]);
    assert_eq!(fix["pass_rate"], 1.0);
    assert_eq!(concise["pass_rate"], 1.0);
    assert!(concise["tokens"].as_i64() > fix["tokens"].as_i64());
    assert_eq!(optimization["winner_version_id"], fix["version_id"]);
    // Round 1's proposal is a child of round 0's winner.
    let concise_version = stack
        .client
        .get(&format!(
            "/v1/prompts/{prompt}/versions/{}",
            concise["version_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(concise_version.body["parent_id"], fix["version_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_optimization_and_its_evaluations() {
    let stack = Stack::start(1, &["--concurrency", "2"]).await;
    let prompt = prompt(&stack).await;
    let dataset = stack.dataset(items(12)).await;
    let response = stack
        .client
        .post(
            &format!("/v1/prompts/{prompt}/optimizations"),
            &with(
                setup(&dataset, "mock:strict=true,latency=1s"),
                json!({"from": 1, "optimizer_model": "mock", "candidates": 2, "max_cost_usd": 1.0}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let running = eventually(
        Duration::from_secs(30),
        "the parent's evaluation",
        || async {
            let response = stack.client.get(&format!("/v1/optimizations/{id}")).await?;
            Ok(response.body["parent_train_evaluation_id"]
                .is_string()
                .then_some(response.body))
        },
    )
    .await
    .unwrap();
    let canceled = stack
        .client
        .post(&format!("/v1/optimizations/{id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(canceled.status, 200, "{:?}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    let evaluation = stack
        .evaluation(running["parent_train_evaluation_id"].as_str().unwrap())
        .await;
    assert_eq!(evaluation["status"], "canceled", "{evaluation:#}");
    // The job notices and proposes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let optimization = stack
        .client
        .get(&format!("/v1/optimizations/{id}"))
        .await
        .unwrap();
    assert_eq!(optimization.body["status"], "canceled");
    assert_eq!(optimization.body["candidate_list"], json!([]));
    assert_eq!(optimization.body["optimizer_cost_usd"], 0.0);
}

/// `assay promote` and `assay optimize` follow their job to the end, print
/// the evidence, and exit 0 when the label moved (or the optimization ran)
/// and 1 when the promotion was refused.
#[tokio::test]
async fn the_cli_promotes_optimizes_and_says_so_with_its_exit_code() {
    use crate::cli::{Scratch, assay, code, stdout};
    let stack = Stack::start(1, &[]).await;
    let prompt = prompt(&stack).await;
    let fixed = commit(&stack, &prompt, FIXED).await;
    set_label(&stack, &prompt, "production", 1).await;
    let dataset = stack.dataset(items(8)).await;
    let dataset = dataset.as_str().unwrap();
    let dir = Scratch::new();
    let promote = |candidate: String| {
        vec![
            "promote".to_owned(),
            prompt.clone(),
            "--candidate".to_owned(),
            candidate,
            "--label".to_owned(),
            "production".to_owned(),
            "--dataset".to_owned(),
            dataset.to_owned(),
            "--model".to_owned(),
            STRICT.to_owned(),
            "--min-pass-rate".to_owned(),
            "0.8".to_owned(),
            "--max-regressions".to_owned(),
            "0".to_owned(),
        ]
    };
    let args = promote(fixed.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let better = assay(&stack, &dir.0, &args).await;
    assert_eq!(code(&better), 0, "{}", stdout(&better));
    assert!(stdout(&better).contains("promoted"), "{}", stdout(&better));
    assert_eq!(label_version(&stack, &prompt, "production").await, fixed);

    // Back to version 1 is worse now: refused, exit code 1, label kept.
    let args = promote("1".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worse = assay(&stack, &dir.0, &args).await;
    assert_eq!(code(&worse), 1, "{}", stdout(&worse));
    assert!(stdout(&worse).contains("rejected"), "{}", stdout(&worse));
    assert!(
        stdout(&worse).contains("min_pass_rate"),
        "{}",
        stdout(&worse)
    );
    assert_eq!(label_version(&stack, &prompt, "production").await, fixed);

    // An optimization from version 1 with the mock optimizer: its table
    // names the winner, committed on the optimization's branch.
    let optimized = assay(
        &stack,
        &dir.0,
        &[
            "optimize",
            &prompt,
            "--from",
            "1",
            "--dataset",
            dataset,
            "--model",
            STRICT,
            "--candidates",
            "3",
            "--max-cost-usd",
            "1",
        ],
    )
    .await;
    assert_eq!(code(&optimized), 0, "{}", stdout(&optimized));
    let text = stdout(&optimized);
    assert!(text.contains("winner"), "{text}");
    assert!(text.contains("branch opt/"), "{text}");
}
