//! Budgets end to end: an evaluation's `max_cost_usd` and a tenant's monthly
//! budget, estimated at submission (422 `over_budget` before anything is
//! written) and enforced by the workers' reservations across replicas.
//!
//! The model is the mock at $1000 per million tokens in and out: a prompt
//! "What is qN?" is 3 tokens in and its echo 3 tokens out, so every call
//! costs exactly $0.006, reserves $0.006 and has a lower bound of $0.003.

use std::time::Duration;

use serde_json::{Value, json};

use assay_testkit::eventually;

use crate::providers::submit;
use crate::{Stack, StackOptions};

const MODEL: &str = "mock:price_in=1000,price_out=1000";
const CALL_USD: f64 = 0.006;

fn spent(results: &[Value]) -> f64 {
    results
        .iter()
        .map(|result| result["cost_usd"].as_f64().unwrap())
        .sum()
}

/// The evaluation and its results once every reservation has settled: what
/// it committed equals what its results cost.
async fn settled(stack: &Stack, id: &str) -> (Value, Vec<Value>) {
    eventually(
        Duration::from_secs(30),
        "reservations to settle",
        || async {
            let evaluation = stack.evaluation(id).await;
            let results = stack.results(id).await;
            let committed = evaluation["committed_usd"].as_f64().unwrap();
            // Both reads must describe the same moment: a call in flight has
            // reserved what it will spend, so the cost can already match the
            // rows read a moment later while the counts read before them lag.
            let counted = evaluation["counts"]["completed"].as_u64() == Some(results.len() as u64);
            let settled = (committed - spent(&results)).abs() < 1e-9 && counted;
            Ok(settled.then_some((evaluation, results)))
        },
    )
    .await
    .unwrap()
}

async fn stack() -> Stack {
    Stack::start_with(
        2,
        &["--concurrency", "8"],
        StackOptions {
            env: vec![("ASSAY_CHUNK_RUNS", "10".to_owned())],
            ..StackOptions::default()
        },
    )
    .await
}

#[tokio::test]
async fn an_evaluation_stops_near_its_budget_and_ends_canceled_for_budget() {
    let stack = stack().await;
    // 40 runs would cost $0.24; the budget covers about half.
    let budget = 0.125;
    let id = submit(
        &stack,
        40,
        &[MODEL],
        json!({}),
        json!({"max_cost_usd": budget}),
    )
    .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "canceled", "{evaluation}");
    assert_eq!(evaluation["cancel_reason"], "budget", "{evaluation}");
    let estimate = &evaluation["cost_estimate"];
    assert!(
        (estimate["low_usd"].as_f64().unwrap() - 0.12).abs() < 1e-9,
        "{estimate}"
    );
    assert!(
        (estimate["expected_usd"].as_f64().unwrap() - 0.24).abs() < 1e-9,
        "{estimate}"
    );

    // The evaluation is canceled as soon as a reservation is refused; calls
    // already in flight still finish, are written and settle.
    let (evaluation, results) = settled(&stack, &id).await;
    let spent = spent(&results);
    assert!(
        spent <= budget + CALL_USD + 1e-9,
        "spent ${spent} with a budget of ${budget}"
    );
    // Near half: the budget buys 20 calls; what was written is kept.
    assert!(
        (15..=21).contains(&results.len()),
        "{} runs written",
        results.len()
    );
    assert_eq!(evaluation["counts"]["completed"], results.len());

    let committed = evaluation["committed_usd"].as_f64().unwrap();
    assert!(
        (committed - spent).abs() < 1e-9,
        "committed {committed}, spent {spent}"
    );
    assert_eq!(
        stack
            .metric_sum("assay_budget_stops_total", &["scope=\"evaluation\""])
            .await,
        1.0,
        "one worker canceled it"
    );
}

#[tokio::test]
async fn an_estimate_above_the_budget_is_refused_with_422_before_anything_is_written() {
    let stack = Stack::start(0, &[]).await;
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(
            (0..40)
                .map(|n| json!({"vars": {"question": crate::question(n)}}))
                .collect(),
        )
        .await;
    let body = |max: Value| {
        json!({
            "prompt_version_id": version,
            "dataset_id": dataset,
            "models": [MODEL],
            "graders": [{"type": "is-json"}],
            "max_cost_usd": max,
        })
    };
    // The lower bound is 40 x $0.003 = $0.12.
    let refused = stack
        .client
        .post("/v1/evaluations", &body(json!(0.1)))
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    assert_eq!(refused.body["code"], "over_budget");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("0.120000"),
        "{:?}",
        refused.body
    );
    let listed = stack.client.get("/v1/evaluations").await.unwrap();
    assert_eq!(listed.body["data"], json!([]), "nothing was written");
    assert!(
        stack
            .redis
            .keys()
            .unwrap()
            .iter()
            .all(|key| !key.contains(":chunks:")),
        "nothing was queued"
    );

    let invalid = stack
        .client
        .post("/v1/evaluations", &body(json!(-1)))
        .await
        .unwrap();
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.body["code"], "invalid_input");
    assert_eq!(invalid.body["field"], "max_cost_usd");

    // A budget above the lower bound is accepted, with the estimate.
    let accepted = stack
        .client
        .post("/v1/evaluations", &body(json!(0.2)))
        .await
        .unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    assert_eq!(accepted.body["max_cost_usd"], 0.2);
    assert_eq!(accepted.body["cost_estimate"]["calls"], 40);
    assert_eq!(accepted.body["cost_estimate"]["input_tokens"], 120);
    assert_eq!(
        accepted.body["cost_estimate"]["high_usd"],
        Value::Null,
        "no max_tokens"
    );
}

#[tokio::test]
async fn a_tenant_monthly_budget_refuses_what_cannot_fit_and_stops_what_runs_past_it() {
    let stack = stack().await;
    let invalid = stack
        .client
        .put("/v1/budget", &json!({"monthly_usd": -1}))
        .await
        .unwrap();
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.body["field"], "monthly_usd");
    let set = stack
        .client
        .put("/v1/budget", &json!({"monthly_usd": 0.1}))
        .await
        .unwrap();
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["monthly_usd"], 0.1);
    assert_eq!(set.body["spent_usd"], 0.0);

    // 40 runs cannot cost less than $0.12: refused.
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(
            (0..40)
                .map(|n| json!({"vars": {"question": crate::question(n)}}))
                .collect(),
        )
        .await;
    let refused = stack
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": [MODEL], "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["code"], "over_budget");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("monthly budget")
    );

    // 30 runs fit the lower bound ($0.09) but not what they cost ($0.18).
    let id = submit(&stack, 30, &[MODEL], json!({}), json!({})).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "canceled", "{evaluation}");
    assert_eq!(evaluation["cancel_reason"], "tenant_budget", "{evaluation}");
    let (_, results) = settled(&stack, &id).await;
    let spent = spent(&results);
    assert!(spent <= 0.1 + CALL_USD + 1e-9, "spent ${spent}");
    assert!((12..=17).contains(&results.len()), "{} runs", results.len());
    let budget = stack.client.get("/v1/budget").await.unwrap();
    let month_spent = budget.body["spent_usd"].as_f64().unwrap();
    assert!(
        (month_spent - spent).abs() < 1e-9,
        "{:?} vs {spent}",
        budget.body
    );
    assert_eq!(
        stack
            .metric_sum("assay_budget_stops_total", &["scope=\"tenant\""])
            .await,
        1.0
    );
}
