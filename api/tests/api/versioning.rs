//! Promotion and optimization requests: bad input is a 422 problem naming
//! the field (and writes no job), another tenant's jobs are 404, and a job
//! that ended cannot be canceled.

use serde_json::{Value, json};

use crate::{TestApp, id};

fn assert_problem(
    response: &assay_testkit::client::Response,
    status: u16,
    code: &str,
    mentions: &str,
) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(response.content_type, "application/problem+json");
    assert_eq!(response.body["code"], code, "{:?}", response.body);
    let said = format!("{} {}", response.body["detail"], response.body["field"]);
    assert!(said.contains(mentions), "expected {mentions:?} in {said}");
}

fn with(valid: &Value, field: &str, value: Value) -> Value {
    let mut body = valid.clone();
    body[field] = value;
    body
}

#[tokio::test]
async fn bad_promotion_and_optimization_requests_are_refused_with_the_field() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, _) = app.prompt(client, "p", "{{ question }}").await;
    let dataset = app.dataset(client, 4).await;
    let commit = client
        .post(
            &format!("/v1/prompts/{prompt}/versions"),
            &json!({"messages": [{"role": "user", "content": "Q: {{ question }}"}], "commit_message": "v2"}),
        )
        .await
        .unwrap();
    assert_eq!(commit.status, 201, "{:?}", commit.body);
    let label = client
        .put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &json!({"version": 1}),
        )
        .await
        .unwrap();
    assert_eq!(label.status, 201, "{:?}", label.body);
    let path = format!("/v1/prompts/{prompt}/promotions");
    let promotion = json!({
        "candidate": 2, "label": "production", "dataset_id": dataset, "models": ["mock"],
        "graders": [{"type": "equals", "value": "{{ expected }}"}],
        "policy": {"min_pass_rate": 0.8, "max_regressions": 0},
    });
    let jobs_before = app.count_rows("promotions").await + app.count_rows("optimizations").await;
    for (body, mentions) in [
        (with(&promotion, "candidate", json!(99)), "candidate"),
        (with(&promotion, "label", json!("staging")), "label"),
        (with(&promotion, "label", json!("Bad Name!")), "label"),
        (with(&promotion, "models", json!(["nope"])), "models"),
        (with(&promotion, "repeat", json!(0)), "repeat"),
        (
            with(
                &promotion,
                "graders",
                json!([{"type": "equals", "value": "{{ missing }}"}]),
            ),
            "missing",
        ),
        (
            with(
                &promotion,
                "policy",
                json!({"min_pass_rate": 1.5, "max_regressions": 0}),
            ),
            "min_pass_rate",
        ),
        (
            with(&promotion, "policy", json!({"min_pass_rate": 0.5})),
            "non-inferiority",
        ),
        (
            with(
                &promotion,
                "policy",
                json!({"min_pass_rate": 0.5, "max_regressions": 0, "max_cost_increase": -1}),
            ),
            "max_cost_increase",
        ),
        (
            with(&promotion, "dataset_id", json!(uuid::Uuid::nil())),
            "dataset_id",
        ),
    ] {
        assert_problem(
            &client.post(&path, &body).await.unwrap(),
            422,
            "invalid_input",
            mentions,
        );
    }
    let same = with(&promotion, "candidate", json!(1));
    assert_problem(
        &client.post(&path, &same).await.unwrap(),
        409,
        "conflict",
        "already",
    );

    let path = format!("/v1/prompts/{prompt}/optimizations");
    let optimization = json!({
        "from": 1, "dataset_id": dataset, "models": ["mock"],
        "graders": [{"type": "equals", "value": "{{ expected }}"}],
        "optimizer_model": "mock", "candidates": 3, "max_cost_usd": 1.0,
    });
    for (body, mentions) in [
        (with(&optimization, "candidates", json!(0)), "candidates"),
        (with(&optimization, "candidates", json!(9)), "candidates"),
        (with(&optimization, "rounds", json!(6)), "rounds"),
        (
            with(&optimization, "validation_split", json!(1.0)),
            "validation_split",
        ),
        (
            with(&optimization, "max_cost_usd", json!(0)),
            "max_cost_usd",
        ),
        (
            with(&optimization, "max_cost_usd", json!(1e9)),
            "max_cost_usd",
        ),
        (
            with(&optimization, "optimizer_model", json!("nope")),
            "optimizer_model",
        ),
        (with(&optimization, "from", json!(42)), "from"),
        (
            with(&optimization, "promote_to", json!("production")),
            "promote_policy",
        ),
        (
            with(&optimization, "promote_to", json!("staging")),
            "promote_policy",
        ),
    ] {
        assert_problem(
            &client.post(&path, &body).await.unwrap(),
            422,
            "invalid_input",
            mentions,
        );
    }
    let mut unknown_label = with(&optimization, "promote_to", json!("staging"));
    unknown_label["promote_policy"] = json!({"min_pass_rate": 0.5, "max_regressions": 0});
    assert_problem(
        &client.post(&path, &unknown_label).await.unwrap(),
        422,
        "invalid_input",
        "promote_to",
    );
    let unknown_field = with(&optimization, "temperature", json!(1));
    let response = client.post(&path, &unknown_field).await.unwrap();
    assert!(
        response.status >= 400 && response.status < 500,
        "{:?}",
        response.body
    );
    assert_eq!(
        app.count_rows("promotions").await + app.count_rows("optimizations").await,
        jobs_before,
        "no job was written"
    );

    // A good one is accepted; another tenant cannot see or cancel it.
    let accepted = client
        .post(&format!("/v1/prompts/{prompt}/promotions"), &promotion)
        .await
        .unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let promotion_id = id(&accepted.body["id"]);
    assert_eq!(accepted.body["status"], "queued");
    let intruder = app.client_for("tenant-b").await;
    for response in [
        intruder
            .get(&format!("/v1/promotions/{promotion_id}"))
            .await
            .unwrap(),
        intruder
            .post(&format!("/v1/promotions/{promotion_id}/cancel"), &json!({}))
            .await
            .unwrap(),
        intruder
            .post(&format!("/v1/prompts/{prompt}/promotions"), &promotion)
            .await
            .unwrap(),
        intruder
            .get(&format!("/v1/optimizations/{promotion_id}"))
            .await
            .unwrap(),
    ] {
        assert_problem(&response, 404, "not_found", "not found");
    }
    // No worker runs here: it is still queued, so it can be canceled, once.
    let canceled = client
        .post(&format!("/v1/promotions/{promotion_id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(canceled.status, 200, "{:?}", canceled.body);
    assert_eq!(canceled.body["status"], "canceled");
    let again = client
        .post(&format!("/v1/promotions/{promotion_id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_problem(&again, 409, "conflict", "canceled");
}
