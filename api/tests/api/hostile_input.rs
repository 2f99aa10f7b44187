//! Hostile input. A tenant cannot make the API (or a worker) do unbounded work
//! with a template or a mock model: a prompt that passes a render limit on
//! the dataset's first items is refused at submission, a cost estimate
//! renders a bounded number of items off the async runtime and scales the
//! rest, and a mock's delays are capped (and parsed without overflow). A NUL
//! character, which PostgreSQL cannot store, is a 422 naming its field
//! wherever it is sent, never a 500.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{ESTIMATE_MAX_ITEMS, TestApp};

/// Template bombs of the hostile-input review: a huge string printed in a
/// loop (size), nested loops and an exponential macro (steps).
const BOMBS: [(&str, &str); 3] = [
    (
        r#"{% set s = "x" * 10000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}"#,
        "larger than",
    ),
    (
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ question }}{% endfor %}{% endfor %}",
        "steps",
    ),
    (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}{{ question }}",
        "",
    ),
];

#[tokio::test]
async fn a_template_bomb_is_refused_at_submission_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let dataset = app.dataset(client, 3).await;
    for (index, (bomb, says)) in BOMBS.iter().enumerate() {
        let (_, version) = app.prompt(client, &format!("bomb-{index}"), bomb).await;
        let evaluations_before = app.count_rows("evaluations").await;
        let started = Instant::now();
        let refused = client
            .post(
                "/v1/evaluations",
                &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"], "graders": [{"type": "is-json"}]}),
            )
            .await
            .unwrap();
        assert_eq!(refused.status, 422, "{bomb}: {:?}", refused.body);
        assert_eq!(refused.content_type, "application/problem+json");
        assert_eq!(refused.body["code"], "invalid_input");
        assert_eq!(refused.body["field"], "messages[0].content");
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(detail.contains("rendering dataset item 0"), "{detail}");
        assert!(detail.contains(says), "{bomb}: {detail}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refusing took {:?}",
            started.elapsed()
        );
        assert_eq!(
            app.count_rows("evaluations").await,
            evaluations_before,
            "nothing written"
        );
    }

    // The API is still answering promptly, and an ordinary prompt passes.
    let (_, version) = app.prompt(client, "fine", "Q: {{ question }}").await;
    let accepted = client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"], "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
}

#[tokio::test]
async fn a_budget_estimate_of_a_large_dataset_renders_a_sample_and_scales_it() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    // Every prompt renders to 2 words: "Q: qN" on the mock (1 token a word).
    let (_, version) = app.prompt(client, "p", "Q: {{ question }}").await;
    let items = 4 * ESTIMATE_MAX_ITEMS;
    let dataset = app.dataset(client, items as usize).await;
    let body = |max: f64| {
        json!({
            "prompt_version_id": version,
            "dataset_id": dataset,
            "models": ["mock:price_in=1000000,price_out=1000000", "mock:price_in=0,price_out=0"],
            "graders": [{"type": "is-json"}],
            "repeat": 2,
            "max_cost_usd": max,
        })
    };
    let accepted = client.post("/v1/evaluations", &body(1e6)).await.unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let estimate = &accepted.body["cost_estimate"];
    assert_eq!(estimate["sampled_items"], ESTIMATE_MAX_ITEMS, "{estimate}");
    let runs = i64::from(items) * 2 * 2;
    assert_eq!(estimate["calls"], runs, "{estimate}");
    assert_eq!(estimate["input_tokens"], runs * 2, "{estimate}");
    // The priced model: 2 tokens in at $1 each per call, items x repeats calls.
    let low = estimate["low_usd"].as_f64().unwrap();
    assert!(
        (low - f64::from(items) * 2.0 * 2.0).abs() < 1e-6,
        "{estimate}"
    );

    // A refusal counts only what was rendered: the sample's lower bound
    // ($200 for 50 items x 2 repeats) passes a $150 budget...
    let refused = client.post("/v1/evaluations", &body(150.0)).await.unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["code"], "over_budget");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("of the first {ESTIMATE_MAX_ITEMS} items")),
        "{detail}"
    );
    assert!(detail.contains("$200.000000"), "{detail}");
    // ... but not a $300 one, although the scaled estimate ($800) does.
    let accepted = client.post("/v1/evaluations", &body(300.0)).await.unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
}

#[tokio::test]
async fn a_mock_delay_past_its_cap_or_one_that_overflows_is_a_422_naming_the_model() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "p", "Q: {{ question }}").await;
    let dataset = app.dataset(client, 2).await;
    for model in [
        "mock:latency=18446744073709551615s,jitter=1s",
        "mock:latency=2m",
    ] {
        let refused = client
            .post(
                "/v1/evaluations",
                &json!({"prompt_version_id": version, "dataset_id": dataset, "models": [model], "graders": [{"type": "is-json"}]}),
            )
            .await
            .unwrap();
        assert_eq!(refused.status, 422, "{model}: {:?}", refused.body);
        assert_eq!(refused.body["code"], "invalid_input");
        let said = format!("{} {}", refused.body["field"], refused.body["detail"]);
        assert!(said.contains("models"), "{said}");
        assert!(said.contains("latency must be at most 1m"), "{said}");
    }
    assert_eq!(app.count_rows("evaluations").await, 0);
}

#[tokio::test]
async fn a_nul_character_in_any_field_is_a_422_naming_it_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, version) = app.prompt(client, "p", "Q: {{ question }}").await;
    let dataset = app.dataset(client, 2).await;
    let nul = "a\u{0}b";
    let user = |content: &str| json!([{"role": "user", "content": content}]);
    let evaluation = |graders: serde_json::Value| json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"], "graders": graders});
    let item = |item: serde_json::Value| json!({"name": "d", "items": [item]});
    let cases: Vec<(String, serde_json::Value, &str)> = vec![
        (
            "/v1/prompts".to_owned(),
            json!({"name": "p1", "description": nul, "messages": user("x")}),
            "description",
        ),
        (
            "/v1/prompts".to_owned(),
            json!({"name": "p2", "messages": user(nul)}),
            "messages[0].content",
        ),
        (
            "/v1/prompts".to_owned(),
            json!({"name": "p3", "messages": user("x"), "commit_message": nul}),
            "commit_message",
        ),
        (
            "/v1/prompts".to_owned(),
            json!({"name": "p4", "messages": user("x"), "params": {"stop": ["x", nul]}}),
            "params.stop[1]",
        ),
        (
            "/v1/datasets".to_owned(),
            json!({"name": "d", "description": nul, "items": [{"vars": {"q": "x"}}]}),
            "description",
        ),
        (
            "/v1/datasets".to_owned(),
            item(json!({"id": nul, "vars": {"q": "x"}})),
            "items[0].id",
        ),
        (
            "/v1/datasets".to_owned(),
            item(json!({"vars": {nul: "x"}})),
            "items[0].vars.a\\u0000b",
        ),
        (
            "/v1/datasets".to_owned(),
            item(json!({"vars": {"q": nul}})),
            "items[0].vars.q",
        ),
        (
            "/v1/datasets".to_owned(),
            item(json!({"vars": {"q": "x"}, "expected": nul})),
            "items[0].expected",
        ),
        (
            "/v1/evaluations".to_owned(),
            evaluation(json!([{"type": "contains", "value": nul}])),
            "graders[0].value",
        ),
        (
            "/v1/evaluations".to_owned(),
            evaluation(json!([{"type": "llm-rubric", "value": nul}])),
            "graders[0].value",
        ),
        (
            format!("/v1/prompts/{prompt}/versions"),
            json!({"messages": user("y"), "commit_message": nul}),
            "commit_message",
        ),
    ];
    let before = (
        app.count_rows("prompts").await,
        app.count_rows("prompt_versions").await,
        app.count_rows("datasets").await,
        app.count_rows("evaluations").await,
    );
    for (path, body, field) in &cases {
        let response = client.post(path, body).await.unwrap();
        assert_eq!(response.status, 422, "{path} {body}: {:?}", response.body);
        assert_eq!(response.content_type, "application/problem+json");
        assert_eq!(
            response.body["field"], *field,
            "{path} {body}: {:?}",
            response.body
        );
        assert!(
            response.body["detail"].as_str().unwrap().contains("NUL"),
            "{:?}",
            response.body
        );
    }
    // A JSON Lines upload, whose items are checked line by line.
    let lines = format!(
        "{{\"vars\": {{\"q\": \"x\"}}}}\n{{\"vars\": {{\"q\": {}}}}}\n",
        json!(nul)
    );
    let response = client
        .post_raw("/v1/datasets?name=lines", "application/x-ndjson", lines)
        .await
        .unwrap();
    assert_eq!(response.status, 422, "{:?}", response.body);
    assert_eq!(
        response.body["field"], "items[1].vars.q",
        "{:?}",
        response.body
    );
    let response = client
        .post_raw(
            "/v1/datasets?name=lines&description=a%00b",
            "application/x-ndjson",
            "{\"vars\": {\"q\": \"x\"}}\n",
        )
        .await
        .unwrap();
    assert_eq!(response.status, 422, "{:?}", response.body);
    assert_eq!(response.body["field"], "description");
    let after = (
        app.count_rows("prompts").await,
        app.count_rows("prompt_versions").await,
        app.count_rows("datasets").await,
        app.count_rows("evaluations").await,
    );
    assert_eq!(before, after, "nothing was written");
}
