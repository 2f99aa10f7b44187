//! Per-key request rates (GCRA in Redis) with their headers, exemptions and
//! per-tenant overrides, and the per-tenant quotas on evaluations.

use assay_core::request_limits::{Rate, RequestLimits};
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use serde_json::json;

use crate::{TestApp, generous_guards};

fn guards_with(limits: impl FnOnce(&mut RequestLimits)) -> assay_api::rate_limit::GuardConfig {
    let mut guards = generous_guards();
    limits(&mut guards.limits);
    guards
}

/// The value of a counter with these labels in a Prometheus text page (0 when absent).
fn counter(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_burst_get_429_with_rate_headers() {
    let app = TestApp::spawn_with(
        None,
        guards_with(|limits| {
            // One write every 10 s, 3 at once: the 4th in a row is refused.
            limits.writes = Rate {
                per_minute: 6,
                burst: 3,
            };
        }),
    )
    .await;
    let client = &app.client;
    let body = |n: usize| json!({"name": format!("p{n}"), "messages": [{"role": "user", "content": "hi"}]});
    for n in 0..3 {
        let response = client.post("/v1/prompts", &body(n)).await.unwrap();
        assert_eq!(response.status, 201, "{:?}", response.body);
        assert_eq!(response.header("ratelimit-limit"), Some("6"));
        assert_eq!(
            response.header("ratelimit-remaining"),
            Some((2 - n).to_string().as_str())
        );
        assert_eq!(response.header("ratelimit-policy"), Some("6;w=60;burst=3"));
        let reset: u64 = response.header("ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=30).contains(&reset), "reset {reset}");
    }
    let refused = client.post("/v1/prompts", &body(3)).await.unwrap();
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");
    assert_eq!(refused.body["code"], "rate_limited");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        app.count_rows("prompts").await,
        3,
        "the refused write did nothing"
    );

    // Reads have their own budget.
    let read = client.get("/v1/prompts").await.unwrap();
    assert_eq!(read.status, 200);
    assert!(read.header("ratelimit-limit").is_some());
    // Health, readiness and metrics are never limited (even with a key).
    for _ in 0..5 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let response = client.get(path).await.unwrap();
            assert_eq!(response.status, 200, "{path}");
            assert!(response.header("ratelimit-limit").is_none(), "{path}");
        }
    }
    // Another key of the same tenant has its own budget.
    let other_key = app.client_for("tenant-a").await;
    assert_eq!(
        other_key
            .post("/v1/prompts", &body(9))
            .await
            .unwrap()
            .status,
        201
    );

    // The recorder is shared by every test of this binary: at least ours.
    let metrics = client.get("/metrics").await.unwrap();
    let page = metrics.body.as_str().unwrap();
    assert!(
        counter(
            page,
            "assay_rate_limit_requests_total",
            &["class=\"write\"", "outcome=\"accepted\""]
        ) >= 4.0
    );
    assert!(
        counter(
            page,
            "assay_rate_limit_requests_total",
            &["class=\"write\"", "outcome=\"limited\""]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_override_replaces_the_default() {
    let app = TestApp::spawn_with(
        None,
        guards_with(|limits| {
            limits.reads = Rate {
                per_minute: 600,
                burst: 50,
            };
        }),
    )
    .await;
    let before = app.client.get("/v1/limits").await.unwrap();
    assert_eq!(before.status, 200);
    assert_eq!(before.body["reads"]["per_minute"], 600);
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO tenant_limits (tenant_id, reads_per_minute, read_burst) \
         SELECT id, 60, 2 FROM tenants WHERE name = 'tenant-a'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let after = app.client.get("/v1/limits").await.unwrap();
    assert_eq!(after.body["reads"]["per_minute"], 60, "{:?}", after.body);
    assert_eq!(after.body["reads"]["burst"], 2);
    assert_eq!(after.header("ratelimit-policy"), Some("60;w=60;burst=2"));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.client.get("/v1/prompts").await.unwrap().status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Other tenants keep the defaults.
    let other = app.client_for("tenant-b").await;
    let theirs = other.get("/v1/limits").await.unwrap();
    assert_eq!(theirs.body["reads"]["per_minute"], 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_on_runs_and_on_evaluations_at_once() {
    let app = TestApp::spawn_with(
        None,
        guards_with(|limits| {
            limits.max_runs_per_evaluation = 10;
            limits.max_active_evaluations = 2;
        }),
    )
    .await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "p", "{{ question }}").await;
    let dataset = app.dataset(client, 5).await;
    let evaluation = |models: Vec<&str>, repeat: u32| {
        json!({"prompt_version_id": version, "dataset_id": dataset, "models": models,
               "graders": [{"type": "is-json"}], "repeat": repeat})
    };

    // 5 items x 1 model x 3 repeats = 15 runs > 10.
    let too_big = client
        .post("/v1/evaluations", &evaluation(vec!["mock"], 3))
        .await
        .unwrap();
    assert_eq!(too_big.status, 422, "{:?}", too_big.body);
    assert_eq!(too_big.body["code"], "quota_runs_per_evaluation");
    assert!(too_big.body["detail"].as_str().unwrap().contains("15 runs"));
    assert_eq!(app.count_rows("evaluations").await, 0);

    // 5 x 2 = 10 fits. With no worker, evaluations stay queued: of six sent
    // at once, exactly two are accepted.
    let fits = evaluation(vec!["mock", "mock:wrong=0.5"], 1);
    let responses = join_all((0..6).map(|_| client.post("/v1/evaluations", &fits))).await;
    let statuses: Vec<u16> = responses
        .iter()
        .map(|r| r.as_ref().unwrap().status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        2,
        "{statuses:?}"
    );
    for response in responses.iter().map(|r| r.as_ref().unwrap()) {
        if response.status != 202 {
            assert_eq!(response.status, 429, "{:?}", response.body);
            assert_eq!(response.body["code"], "quota_active_evaluations");
        }
    }
    assert_eq!(app.count_rows("evaluations").await, 2);

    // One canceled: room for one more.
    let listed = client.get("/v1/evaluations").await.unwrap();
    let first = listed.body["data"][0]["id"].as_str().unwrap().to_owned();
    let canceled = client
        .post(&format!("/v1/evaluations/{first}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(canceled.status, 200, "{:?}", canceled.body);
    let third = client
        .post("/v1/evaluations", &evaluation(vec!["mock"], 1))
        .await
        .unwrap();
    assert_eq!(third.status, 202, "{:?}", third.body);

    let page = client.get("/metrics").await.unwrap();
    let page = page.body.as_str().unwrap();
    // The recorder is shared by every test of this binary: at least ours.
    assert!(
        counter(
            page,
            "assay_quota_refusals_total",
            &["quota=\"runs_per_evaluation\""]
        ) >= 1.0
    );
    assert!(
        counter(
            page,
            "assay_quota_refusals_total",
            &["quota=\"active_evaluations\""]
        ) >= 4.0
    );
}
