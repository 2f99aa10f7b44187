//! Webhooks end to end: the real API and worker, a local HTTP receiver,
//! PostgreSQL and Redis. Retry delays are shortened through the worker's
//! `ASSAY_WEBHOOK_*` settings.

use std::time::Duration;

use assay_testkit::{Client, Receiver, eventually, free_port};
use serde_json::{Value, json};

use crate::{Stack, StackOptions};

/// Delays short enough for a test: 200 ms, 400 ms, 800 ms...
fn fast_retries(window: &str) -> StackOptions {
    StackOptions {
        env: vec![
            ("ASSAY_WEBHOOK_BASE_DELAY", "200ms".to_owned()),
            ("ASSAY_WEBHOOK_MAX_DELAY", "800ms".to_owned()),
            ("ASSAY_WEBHOOK_RETRY_WINDOW", window.to_owned()),
            ("ASSAY_WEBHOOK_TIMEOUT", "5s".to_owned()),
        ],
        ..StackOptions::default()
    }
}

/// A 2-item evaluation on the mock, with `extra` merged into the body; returns the 202's body.
async fn submit(stack: &Stack, extra: Value) -> Value {
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(vec![
            json!({"vars": {"question": "q0"}, "expected": "q0"}),
            json!({"vars": {"question": "q1"}, "expected": "q1"}),
        ])
        .await;
    let mut body = json!({
        "prompt_version_id": version,
        "dataset_id": dataset,
        "models": ["mock"],
        "graders": [{"type": "equals", "value": "{{ expected }}"}],
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let response = stack.client.post("/v1/evaluations", &body).await.unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    response.body
}

async fn create_webhook(client: &Client, body: Value) -> Value {
    let response = client.post("/v1/webhooks", &body).await.unwrap();
    assert_eq!(response.status, 201, "{:?}", response.body);
    response.body
}

/// The webhook's deliveries once `done` holds for every one of `count`.
async fn deliveries_when(
    client: &Client,
    webhook_id: &str,
    count: usize,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    eventually(
        Duration::from_secs(90),
        "webhook deliveries to settle",
        || async {
            let response = client
                .get(&format!("/v1/webhooks/{webhook_id}/deliveries"))
                .await?;
            anyhow::ensure!(response.status == 200, "{:?}", response.body);
            let data = response.body["data"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok((data.len() == count && data.iter().all(&done)).then_some(data))
        },
    )
    .await
    .expect("deliveries settle")
}

fn verified(secret: &str, request: &assay_testkit::Received) -> bool {
    let header = request.header("assay-signature").unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    assay_core::webhooks::verify(secret, header, &request.body, now, Duration::from_secs(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_each_event_once_signed() {
    let stack = Stack::start_with(1, &[], fast_retries("24h")).await;
    let tenant_receiver = Receiver::failing_first(3).await.unwrap();
    let evaluation_receiver = Receiver::failing_first(3).await.unwrap();
    let webhook = create_webhook(
        &stack.client,
        json!({"url": tenant_receiver.url, "events": ["evaluation.succeeded"]}),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let webhook_id = webhook["id"].as_str().unwrap().to_owned();

    let submitted = submit(&stack, json!({"webhook_url": evaluation_receiver.url})).await;
    let evaluation_id = submitted["id"].as_str().unwrap().to_owned();
    let own = &submitted["webhook"];
    let own_secret = own["secret"].as_str().expect("the 202 carries the secret");
    let own_id = own["id"].as_str().unwrap();
    assert_eq!(own["evaluation_id"], json!(evaluation_id));

    for (id, receiver, secret) in [
        (webhook_id.as_str(), &tenant_receiver, secret.as_str()),
        (own_id, &evaluation_receiver, own_secret),
    ] {
        let log = deliveries_when(&stack.client, id, 1, |delivery| {
            delivery["status"] == "succeeded"
        })
        .await;
        let delivery = &log[0];
        assert_eq!(delivery["event_type"], "evaluation.succeeded");
        assert_eq!(delivery["attempt_count"], 4, "{delivery}");
        let codes: Vec<Value> = delivery["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|attempt| attempt["status_code"].clone())
            .collect();
        assert_eq!(codes, [json!(500), json!(500), json!(500), json!(200)]);
        assert!(
            delivery["attempts"][0]["error"]
                .as_str()
                .unwrap()
                .starts_with("HTTP 500")
        );
        assert_eq!(delivery["attempts"][3]["error"], Value::Null);

        let requests = receiver.received();
        assert_eq!(requests.len(), 4, "three failures, then one success");
        let event_id = delivery["event_id"].as_str().unwrap();
        for (index, request) in requests.iter().enumerate() {
            // The same event id and the same bytes on every attempt.
            assert_eq!(request.header("assay-event-id"), Some(event_id));
            assert_eq!(request.body, requests[0].body);
            assert_eq!(
                request.header("assay-delivery-attempt"),
                Some((index + 1).to_string().as_str())
            );
            assert!(verified(secret, request), "attempt {index} is signed");
            assert!(!verified("whsec_not-the-secret", request));
        }
        let body: Value = serde_json::from_slice(&requests[3].body).unwrap();
        assert_eq!(body["id"], json!(event_id));
        assert_eq!(body["type"], "evaluation.succeeded");
        assert_eq!(body["data"]["object"], "evaluation");
        assert_eq!(body["data"]["id"], json!(evaluation_id));
        assert_eq!(body["data"]["passed"], 2);
    }

    // A second evaluation: its event is new (a new id), delivered at the
    // first attempt; the first event is never sent again after its success.
    let second = submit(&stack, json!({})).await;
    let log = deliveries_when(&stack.client, &webhook_id, 2, |delivery| {
        delivery["status"] == "succeeded"
    })
    .await;
    assert_eq!(log[0]["attempt_count"], 1);
    let requests = tenant_receiver.received();
    assert_eq!(requests.len(), 5);
    let mut successes = std::collections::HashMap::<String, usize>::new();
    for request in requests.iter().filter(|request| request.status == 200) {
        *successes
            .entry(request.header("assay-event-id").unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(successes.len(), 2);
    assert!(successes.values().all(|count| *count == 1), "{successes:?}");
    let body: Value = serde_json::from_slice(&requests[4].body).unwrap();
    assert_eq!(body["data"]["id"], second["id"]);
    // The evaluation's own webhook heard only its evaluation.
    assert_eq!(evaluation_receiver.received().len(), 4);

    metrics_show(
        &stack,
        &[
            r#"assay_webhook_deliveries_total{outcome="succeeded"} 3"#,
            r#"assay_webhook_attempts_total{outcome="http_error"} 6"#,
            r#"assay_webhook_attempts_total{outcome="succeeded"} 3"#,
            "assay_webhook_attempt_duration_seconds_bucket",
            "assay_webhook_deliveries_pending 0",
        ],
    )
    .await;
}

/// Waits until the worker's `/metrics` holds every line of `expected` (its
/// counters move just after the rows the log reads).
async fn metrics_show(stack: &Stack, expected: &[&str]) {
    eventually(Duration::from_secs(20), "webhook metrics", || async {
        let metrics = stack.worker_metrics(0).await;
        Ok(expected
            .iter()
            .all(|line| metrics.contains(line))
            .then_some(()))
    })
    .await
    .ok();
    let metrics = stack.worker_metrics(0).await;
    for line in expected {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_good_leaves_every_attempt_in_the_log() {
    let stack = Stack::start_with(1, &[], fast_retries("3s")).await;
    let refusing = Receiver::always(503).await.unwrap();
    let answering = create_webhook(&stack.client, json!({"url": refusing.url})).await;
    // Nothing listens on this port.
    let closed = create_webhook(
        &stack.client,
        json!({"url": format!("http://127.0.0.1:{}/hook", free_port())}),
    )
    .await;
    submit(&stack, json!({})).await;

    let failed = |delivery: &Value| delivery["status"] == "failed";
    let log = deliveries_when(&stack.client, answering["id"].as_str().unwrap(), 1, failed).await;
    let delivery = &log[0];
    let attempts = delivery["attempts"].as_array().unwrap();
    // Every request the receiver saw is in the log, numbered in order.
    assert_eq!(attempts.len(), refusing.received().len());
    assert_eq!(delivery["attempt_count"], json!(attempts.len()));
    assert!(attempts.len() >= 3, "{delivery}");
    for (index, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], json!(index + 1));
        assert_eq!(attempt["status_code"], 503);
        assert_eq!(attempt["error"], "HTTP 503: ok");
    }
    assert_eq!(delivery["last_status_code"], 503);
    assert!(delivery["finished_at"].is_string());
    assert_eq!(delivery["next_attempt_at"], Value::Null);

    let log = deliveries_when(&stack.client, closed["id"].as_str().unwrap(), 1, failed).await;
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{}", log[0]);
    assert_eq!(log[0]["attempt_count"], json!(attempts.len()));
    for attempt in attempts {
        assert_eq!(attempt["status_code"], Value::Null);
        assert!(
            attempt["error"]
                .as_str()
                .unwrap()
                .starts_with("could not connect"),
            "{attempt}"
        );
    }
    metrics_show(
        &stack,
        &[
            r#"assay_webhook_deliveries_total{outcome="failed"} 2"#,
            r#"assay_webhook_attempts_total{outcome="connect_error"}"#,
            r#"assay_webhook_attempts_total{outcome="http_error"}"#,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_validated_listed_deleted_and_tenant_scoped() {
    let stack = Stack::start(0, &[]).await;
    for (body, field) in [
        (json!({"url": "ftp://example.com/hook"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(3000))}),
            "url",
        ),
        (json!({"url": "https://user:pw@example.com/"}), "url"),
        (
            json!({"url": "https://example.com/", "events": ["evaluation.done"]}),
            "events[0]",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "events",
        ),
    ] {
        let response = stack.client.post("/v1/webhooks", &body).await.unwrap();
        assert_eq!(response.status, 422, "{body}: {:?}", response.body);
        assert_eq!(response.body["field"], field, "{body}");
    }
    let version = stack.prompt("{{ question }}").await;
    let dataset = stack
        .dataset(vec![json!({"vars": {"question": "q"}})])
        .await;
    let refused = stack
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"],
                    "graders": [{"type": "contains", "value": "q"}],
                    "webhook_url": "javascript:alert(1)"}),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["field"], "webhook_url");

    let created = create_webhook(
        &stack.client,
        json!({"url": "https://example.com/hook", "events": ["promotion.promoted"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let listed = stack.client.get("/v1/webhooks").await.unwrap();
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["data"][0]["id"], created["id"]);
    assert_eq!(
        listed.body["data"][0]["events"],
        json!(["promotion.promoted"])
    );
    // The secret is shown once, at creation.
    assert!(listed.body["data"][0].get("secret").is_none());
    let read = stack
        .client
        .get(&format!("/v1/webhooks/{id}"))
        .await
        .unwrap();
    assert!(read.body.get("secret").is_none());

    let other = stack.client.with_key(Some(
        assay_testkit::api_key(&stack.database, "other")
            .await
            .unwrap(),
    ));
    for path in [
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/deliveries"),
    ] {
        assert_eq!(other.get(&path).await.unwrap().status, 404, "{path}");
    }
    assert_eq!(
        other
            .delete(&format!("/v1/webhooks/{id}"))
            .await
            .unwrap()
            .status,
        404
    );

    let deliveries = stack
        .client
        .get(&format!("/v1/webhooks/{id}/deliveries?limit=0"))
        .await
        .unwrap();
    assert_eq!(deliveries.status, 400, "{:?}", deliveries.body);
    assert_eq!(
        stack
            .client
            .delete(&format!("/v1/webhooks/{id}"))
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        stack
            .client
            .get(&format!("/v1/webhooks/{id}"))
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        stack
            .client
            .delete(&format!("/v1/webhooks/{id}"))
            .await
            .unwrap()
            .status,
        404
    );
}
