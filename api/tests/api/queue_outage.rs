//! Redis gone after the evaluation row is written: the push is retried, then
//! the evaluation is recorded as failed and the client gets a 503 — no
//! evaluation is left queued with no job behind it.

use assay_testkit::Proxy;
use serde_json::json;

use crate::{TestApp, id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_fails_leaves_a_failed_evaluation_and_a_503() {
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let app = TestApp::spawn_with_redis(Some(format!("redis://{}", proxy.address))).await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "p", "{{ question }}").await;
    let dataset = app.dataset(client, 3).await;
    assert_eq!(client.get("/readyz").await.unwrap().status, 200);

    proxy.cut();
    let response = client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"],
                    "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 503, "{:?}", response.body);
    assert_eq!(response.content_type, "application/problem+json");
    assert_eq!(response.body["code"], "unavailable");

    let listed = client.get("/v1/evaluations").await.unwrap();
    let evaluation = &listed.body["data"][0];
    assert_eq!(evaluation["status"], "failed", "{evaluation}");
    assert_eq!(evaluation["error"], "could not enqueue the job");
    assert!(
        response.body["detail"]
            .as_str()
            .unwrap()
            .contains(&id(&evaluation["id"]))
    );
    assert_eq!(
        app.count_rows("evaluations").await,
        1,
        "one row, and it is finished"
    );
    let ready = client.get("/readyz").await.unwrap();
    assert_eq!(
        ready.status, 503,
        "readiness sees Redis gone: {:?}",
        ready.body
    );
    assert_eq!(ready.body["postgres"], "ok");
    // Which dependency is down, without the driver's words (hosts, users).
    let redis = ready.body["redis"].as_str().unwrap();
    assert!(["unavailable", "timed out"].contains(&redis), "{redis}");
    assert!(
        !ready.body.to_string().contains("127.0.0.1"),
        "{:?}",
        ready.body
    );
}
