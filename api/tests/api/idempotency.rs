//! `Idempotency-Key` on POSTs: one resource however many times (and however
//! concurrently) a request is sent, the first answer replayed, another body
//! refused, a dead request's claim taken over, keys per tenant.

use std::collections::BTreeSet;
use std::time::Duration;

use assay_testkit::Client;
use assay_testkit::client::Response;
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::{TestApp, generous_guards, id};

/// Sends the POST until it is no longer 409 `idempotency_in_progress`
/// (the first request still running), within a deadline.
async fn post_until_settled(
    client: &Client,
    path: &str,
    body: &Value,
    key: &str,
) -> (Response, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut in_progress = 0;
    loop {
        let response = client
            .post_with_headers(path, body, &[("Idempotency-Key", key)])
            .await
            .unwrap();
        if response.status != 409 {
            return (response, in_progress);
        }
        assert_eq!(
            response.body["code"], "idempotency_in_progress",
            "{:?}",
            response.body
        );
        in_progress += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key stayed in progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 20 identical POSTs at once: every one ends with the same id, exactly one
/// was not a replay, and exactly one row exists.
async fn twenty_at_once(app: &TestApp, path: &str, body: Value, table: &str) -> Vec<Response> {
    let before = app.count_rows(table).await;
    let key = uuid::Uuid::now_v7().to_string();
    let responses =
        join_all((0..20).map(|_| post_until_settled(&app.client, path, &body, &key))).await;
    let ids: BTreeSet<String> = responses
        .iter()
        .map(|(response, _)| {
            assert!(
                (200..300).contains(&response.status),
                "{} {:?}",
                response.status,
                response.body
            );
            id(&response.body["id"])
        })
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every answer names the same resource: {ids:?}"
    );
    let firsts = responses
        .iter()
        .filter(|(response, _)| response.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(firsts, 1, "exactly one request did the work");
    let statuses: BTreeSet<u16> = responses
        .iter()
        .map(|(response, _)| response.status)
        .collect();
    assert_eq!(
        statuses.len(),
        1,
        "replays keep the first status: {statuses:?}"
    );
    assert_eq!(
        app.count_rows(table).await,
        before + 1,
        "one new {table} row"
    );
    responses
        .into_iter()
        .map(|(response, _)| response)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_post_sent_twenty_times_at_once_creates_one_resource() {
    let app = TestApp::spawn().await;
    let (_, version) = app.prompt(&app.client, "p", "{{ question }}").await;
    let dataset = app.dataset(&app.client, 3).await;

    let datasets = twenty_at_once(
        &app,
        "/v1/datasets",
        json!({"name": "once", "items": [{"vars": {"question": "q"}}]}),
        "datasets",
    )
    .await;
    assert_eq!(datasets[0].status, 201);

    let evaluations = twenty_at_once(
        &app,
        "/v1/evaluations",
        json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"],
               "graders": [{"type": "is-json"}]}),
        "evaluations",
    )
    .await;
    assert_eq!(evaluations[0].status, 202);
    let locations: BTreeSet<_> = evaluations
        .iter()
        .map(|response| response.location.clone())
        .collect();
    assert_eq!(locations.len(), 1, "the Location header is replayed too");
    assert!(locations.iter().all(Option::is_some));

    let prompts = twenty_at_once(
        &app,
        "/v1/prompts",
        json!({"name": "once", "messages": [{"role": "user", "content": "hi"}]}),
        "prompts",
    )
    .await;
    assert_eq!(prompts[0].status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_sent_twice_creates_one_dataset() {
    let app = TestApp::spawn().await;
    let jsonl: String = (0..500)
        .map(|n| format!("{{\"vars\": {{\"question\": \"q{n}\"}}}}\n"))
        .collect();
    let key = [("Idempotency-Key", "upload-1")];
    let first = app
        .client
        .post_raw_with_headers(
            "/v1/datasets?name=big",
            "application/x-ndjson",
            jsonl.clone(),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(first.status, 201, "{:?}", first.body);
    let again = app
        .client
        .post_raw_with_headers(
            "/v1/datasets?name=big",
            "application/x-ndjson",
            jsonl.clone(),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the first body, byte for byte");
    assert_eq!(app.count_rows("datasets").await, 1);
    assert_eq!(app.count_rows("dataset_items").await, 500);

    // One line changed: another request under the same key.
    let changed = jsonl.replacen("q0", "Q0", 1);
    let mismatch = app
        .client
        .post_raw_with_headers(
            "/v1/datasets?name=big",
            "application/x-ndjson",
            changed,
            &key,
        )
        .await
        .unwrap();
    assert_eq!(mismatch.status, 422, "{:?}", mismatch.body);
    assert_eq!(mismatch.content_type, "application/problem+json");
    assert_eq!(mismatch.body["code"], "idempotency_mismatch");
    assert_eq!(app.count_rows("datasets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_body_path_or_tenant_under_one_key() {
    let app = TestApp::spawn().await;
    let key = [("Idempotency-Key", "k-1")];
    let first = app
        .client
        .post_with_headers(
            "/v1/prompts",
            &json!({"name": "a", "messages": [{"role": "user", "content": "hi"}]}),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let other_body = app
        .client
        .post_with_headers(
            "/v1/prompts",
            &json!({"name": "b", "messages": [{"role": "user", "content": "hi"}]}),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(other_body.status, 422);
    assert_eq!(other_body.body["code"], "idempotency_mismatch");
    let other_path = app
        .client
        .post_with_headers(
            "/v1/datasets",
            &json!({"name": "a", "items": [{"vars": {"q": "x"}}]}),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(other_path.body["code"], "idempotency_mismatch");
    assert_eq!(app.count_rows("prompts").await, 1);
    assert_eq!(app.count_rows("datasets").await, 0);

    // Keys are per tenant: another tenant's same key is its own.
    let other = app.client_for("tenant-b").await;
    let theirs = other
        .post_with_headers(
            "/v1/prompts",
            &json!({"name": "b", "messages": [{"role": "user", "content": "hi"}]}),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(theirs.status, 201);
    assert!(theirs.header("idempotent-replayed").is_none());
    assert_ne!(theirs.body["id"], first.body["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_not_kept_and_bad_keys_are_refused() {
    let app = TestApp::spawn().await;
    let key = [("Idempotency-Key", "retry-me")];
    let invalid = app
        .client
        .post_with_headers("/v1/prompts", &json!({"name": "a", "messages": []}), &key)
        .await
        .unwrap();
    assert_eq!(invalid.status, 422, "{:?}", invalid.body);
    assert_eq!(invalid.body["code"], "invalid_input");
    // The error wrote nothing, and was not kept: the corrected request does the work.
    let fixed = app
        .client
        .post_with_headers(
            "/v1/prompts",
            &json!({"name": "a", "messages": [{"role": "user", "content": "hi"}]}),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(fixed.status, 201, "{:?}", fixed.body);
    assert!(fixed.header("idempotent-replayed").is_none());

    for bad in ["", &"k".repeat(256), "tab\there"] {
        let response = app
            .client
            .post_with_headers(
                "/v1/prompts",
                &json!({"name": "z", "messages": [{"role": "user", "content": "hi"}]}),
                &[("Idempotency-Key", bad)],
            )
            .await
            .unwrap();
        assert_eq!(response.status, 422, "{bad:?}: {:?}", response.body);
        assert_eq!(response.body["field"], "Idempotency-Key");
    }
    assert_eq!(app.count_rows("prompts").await, 1);
    assert_eq!(app.count_rows("idempotency_keys").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_request_expires_after_the_lock_timeout() {
    let mut guards = generous_guards();
    guards.idempotency_lock_timeout = Duration::from_secs(60);
    let app = TestApp::spawn_with(None, guards).await;
    let body = json!({"name": "a", "messages": [{"role": "user", "content": "hi"}]});
    // What a request that crashed mid-way leaves: an in-progress claim.
    let claim = |key: &str, locked_seconds_ago: i32| {
        format!(
            "INSERT INTO idempotency_keys (tenant_id, idempotency_key, claim_id, status, locked_at) \
             SELECT id, '{key}', gen_random_uuid(), 'in_progress', now() - make_interval(secs => {locked_seconds_ago}) \
             FROM tenants WHERE name = 'tenant-a'"
        )
    };
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(claim("fresh", 5))
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query(claim("stale", 61))
        .execute(&mut conn)
        .await
        .unwrap();

    let fresh = app
        .client
        .post_with_headers("/v1/prompts", &body, &[("Idempotency-Key", "fresh")])
        .await
        .unwrap();
    assert_eq!(fresh.status, 409, "{:?}", fresh.body);
    assert_eq!(fresh.body["code"], "idempotency_in_progress");
    assert_eq!(app.count_rows("prompts").await, 0);

    let stale = app
        .client
        .post_with_headers("/v1/prompts", &body, &[("Idempotency-Key", "stale")])
        .await
        .unwrap();
    assert_eq!(stale.status, 201, "{:?}", stale.body);
    let replay = app
        .client
        .post_with_headers("/v1/prompts", &body, &[("Idempotency-Key", "stale")])
        .await
        .unwrap();
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["id"], stale.body["id"]);

    // After 24 hours a key is forgotten: the same request is new work.
    diesel::sql_query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE idempotency_key = 'stale'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let later = app
        .client
        .post_with_headers(
            "/v1/datasets",
            &json!({"name": "d", "items": [{"vars": {"q": "x"}}]}),
            &[("Idempotency-Key", "stale")],
        )
        .await
        .unwrap();
    assert_eq!(later.status, 201, "{:?}", later.body);
    assert!(later.header("idempotent-replayed").is_none());
}
