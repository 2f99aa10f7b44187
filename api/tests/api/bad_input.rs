//! Bad input gets a 4xx problem (RFC 9457) naming the problem, and writes nothing.

use serde_json::{Value, json};

use crate::TestApp;

/// Compiles to about 2 MiB: above the grader's 1 MiB regex size limit, below
/// the regex crate's default 10 MiB, so only our limit refuses it.
const REGEX_ABOVE_OUR_LIMIT: &str = "a{50000}";

/// Asserts a problem response with `status` and `code`, whose detail or field mentions `mentions`.
fn assert_problem(
    response: &assay_testkit::client::Response,
    status: u16,
    code: &str,
    mentions: &str,
) {
    assert_eq!(response.status, status, "{:?}", response.body);
    assert_eq!(
        response.content_type, "application/problem+json",
        "{:?}",
        response.body
    );
    assert_eq!(response.body["status"], status);
    assert_eq!(response.body["code"], code, "{:?}", response.body);
    let said = format!("{} {}", response.body["detail"], response.body["field"]);
    assert!(said.contains(mentions), "expected {mentions:?} in {said}");
}

async fn rows(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "prompts",
        "prompt_versions",
        "datasets",
        "dataset_items",
        "evaluations",
        "events",
    ] {
        counts.push(app.count_rows(table).await);
    }
    counts
}

#[tokio::test]
async fn bad_evaluation_requests_are_rejected_with_what_is_wrong() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "p", "Q: {{ question }}").await;
    let (_, version_needing_more) = app
        .prompt(client, "p2", "{{ question }} in {{ language }}")
        .await;
    let dataset = app.dataset(client, 3).await;
    let valid = json!({
        "prompt_version_id": version,
        "dataset_id": dataset,
        "models": ["mock"],
        "graders": [{"type": "equals", "value": "{{ expected }}"}],
    });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let before = rows(&app).await;

    let malformed = client
        .post_raw(
            "/v1/evaluations",
            "application/json",
            "{\"prompt_version_id\": ",
        )
        .await
        .unwrap();
    assert_problem(&malformed, 400, "malformed_json", "not valid JSON");

    let mut unknown_field = valid.clone();
    unknown_field["temperature"] = json!(0.5);
    assert_problem(
        &client
            .post("/v1/evaluations", &unknown_field)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "unknown field `temperature`",
    );

    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("models");
    assert_problem(
        &client.post("/v1/evaluations", &missing).await.unwrap(),
        422,
        "invalid_input",
        "missing field `models`",
    );

    assert_problem(
        &client
            .post("/v1/evaluations", &with("models", json!("mock")))
            .await
            .unwrap(),
        422,
        "invalid_input",
        "invalid type",
    );
    assert_problem(
        &client
            .post("/v1/evaluations", &with("dataset_id", json!(12)))
            .await
            .unwrap(),
        422,
        "invalid_input",
        "invalid type",
    );

    let unknown_version = with("prompt_version_id", json!(uuid::Uuid::now_v7()));
    assert_problem(
        &client
            .post("/v1/evaluations", &unknown_version)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "prompt_version_id",
    );
    let unknown_dataset = with("dataset_id", json!(uuid::Uuid::now_v7()));
    assert_problem(
        &client
            .post("/v1/evaluations", &unknown_dataset)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "dataset_id",
    );
    let unknown_model = with("models", json!(["mock", "gpt-17"]));
    assert_problem(
        &client
            .post("/v1/evaluations", &unknown_model)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "gpt-17",
    );
    let bad_mock_option = with("models", json!(["mock:errors=7"]));
    assert_problem(
        &client
            .post("/v1/evaluations", &bad_mock_option)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "errors",
    );
    let no_models = with("models", json!([]));
    assert_problem(
        &client.post("/v1/evaluations", &no_models).await.unwrap(),
        422,
        "invalid_input",
        "models",
    );
    let unknown_grader = with("graders", json!([{"type": "telepathy"}]));
    assert_problem(
        &client
            .post("/v1/evaluations", &unknown_grader)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "telepathy",
    );
    let invalid_regex = with(
        "graders",
        json!([{"type": "is-json"}, {"type": "regex", "pattern": "([a-z]+"}]),
    );
    assert_problem(
        &client
            .post("/v1/evaluations", &invalid_regex)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "graders[1].pattern",
    );
    // Patterns that would compile to more than the grader's regex size limit
    // (1 MiB), in a request valid otherwise: refused before anything is
    // queued, naming the pattern. The first is also above the regex crate's
    // own default limit (10 MiB), the second only above ours.
    for pattern in ["a{99999}{99999}", REGEX_ABOVE_OUR_LIMIT] {
        let regex_bomb = with("graders", json!([{"type": "regex", "pattern": pattern}]));
        let response = client.post("/v1/evaluations", &regex_bomb).await.unwrap();
        assert_problem(&response, 422, "invalid_input", "size limit");
        assert_eq!(response.body["field"], "graders[0].pattern", "{pattern}");
    }
    let missing_variable = with("prompt_version_id", json!(version_needing_more));
    assert_problem(
        &client
            .post("/v1/evaluations", &missing_variable)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "`language`",
    );
    let grader_variable = with(
        "graders",
        json!([{"type": "contains", "value": "{{ answer }}"}]),
    );
    assert_problem(
        &client
            .post("/v1/evaluations", &grader_variable)
            .await
            .unwrap(),
        422,
        "invalid_input",
        "`answer`",
    );

    let not_json = client
        .post_raw("/v1/evaluations", "text/plain", "hello")
        .await
        .unwrap();
    assert_problem(&not_json, 415, "unsupported_media_type", "application/json");

    assert_eq!(rows(&app).await, before, "rejected requests wrote nothing");
}

#[tokio::test]
async fn bad_prompts_and_datasets_are_rejected_and_write_nothing() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let before = rows(&app).await;

    let empty_dataset = client
        .post("/v1/datasets", &json!({"name": "e", "items": []}))
        .await
        .unwrap();
    assert_problem(&empty_dataset, 422, "invalid_input", "at least one item");
    let empty_jsonl = client
        .post_raw("/v1/datasets?name=e", "application/x-ndjson", "\n\n")
        .await
        .unwrap();
    assert_problem(&empty_jsonl, 422, "invalid_input", "at least one item");
    let bad_line = client
        .post_raw(
            "/v1/datasets?name=e",
            "application/x-ndjson",
            "{\"vars\": {}}\n{\"vars\": [1]}\n",
        )
        .await
        .unwrap();
    assert_problem(&bad_line, 422, "invalid_input", "line 2");
    let jsonl_without_name = client
        .post_raw("/v1/datasets", "application/x-ndjson", "{\"vars\": {}}")
        .await
        .unwrap();
    assert_problem(&jsonl_without_name, 400, "invalid_query", "name");
    let duplicate_ids = client
        .post(
            "/v1/datasets",
            &json!({"name": "d", "items": [{"id": "x", "vars": {}}, {"id": "x", "vars": {}}]}),
        )
        .await
        .unwrap();
    assert_problem(&duplicate_ids, 422, "invalid_input", "items[1].id");
    let vars_not_object = client
        .post(
            "/v1/datasets",
            &json!({"name": "d", "items": [{"vars": "text"}]}),
        )
        .await
        .unwrap();
    assert_problem(&vars_not_object, 422, "invalid_input", "invalid type");

    let bad_template = client
        .post(
            "/v1/prompts",
            &json!({"name": "t", "messages": [{"role": "user", "content": "{{ unclosed"}]}),
        )
        .await
        .unwrap();
    assert_problem(&bad_template, 422, "invalid_input", "messages[0].content");
    let bad_role = client
        .post(
            "/v1/prompts",
            &json!({"name": "t", "messages": [{"role": "wizard", "content": "hi"}]}),
        )
        .await
        .unwrap();
    assert_problem(&bad_role, 422, "invalid_input", "wizard");
    let empty_name = client
        .post("/v1/prompts", &json!({"name": "  "}))
        .await
        .unwrap();
    assert_problem(&empty_name, 422, "invalid_input", "name");
    let hot = client
        .post("/v1/prompts", &json!({"name": "t", "messages": [{"role": "user", "content": "x"}], "params": {"temperature": 9}}))
        .await
        .unwrap();
    assert_problem(&hot, 422, "invalid_input", "params.temperature");

    let (prompt_id, _) = app.prompt(client, "real", "x").await;
    let after_prompt = rows(&app).await;
    let foreign_parent = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({"messages": [{"role": "user", "content": "y"}], "commit_message": "m", "expected_head": uuid::Uuid::now_v7()}),
        )
        .await
        .unwrap();
    assert_problem(&foreign_parent, 422, "invalid_input", "expected_head");
    let no_message = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({"messages": [{"role": "user", "content": "y"}], "commit_message": ""}),
        )
        .await
        .unwrap();
    assert_problem(&no_message, 422, "invalid_input", "commit_message");
    assert_eq!(
        rows(&app).await,
        after_prompt,
        "rejected commits wrote nothing"
    );
    assert_eq!(before[2..4], after_prompt[2..4], "no dataset was written");
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401() {
    let app = TestApp::spawn().await;
    let anonymous = app.client.with_key(None);
    let wrong = app.client.with_key(Some("assay_not-a-key".to_owned()));
    for path in [
        "/v1/prompts",
        "/v1/datasets",
        "/v1/evaluations",
        &format!("/v1/evaluations/{}", uuid::Uuid::now_v7()),
    ] {
        let response = anonymous.get(path).await.unwrap();
        assert_problem(&response, 401, "unauthorized", "Bearer");
        assert_problem(
            &wrong.get(path).await.unwrap(),
            401,
            "unauthorized",
            "Bearer",
        );
    }
    let response = anonymous
        .post("/v1/prompts", &json!({"name": "x"}))
        .await
        .unwrap();
    assert_problem(&response, 401, "unauthorized", "Bearer");
    assert_eq!(app.count_rows("prompts").await, 0);
}

#[tokio::test]
async fn no_input_makes_the_api_answer_5xx() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt_id, version) = app.prompt(client, "p", "{{ question }}").await;
    let dataset = app.dataset(client, 2).await;
    let paths = [
        "/v1/prompts".to_owned(),
        format!("/v1/prompts/{prompt_id}/versions"),
        "/v1/datasets".to_owned(),
        "/v1/evaluations".to_owned(),
    ];
    let bodies = [
        "",
        "null",
        "[]",
        "{}",
        "\"text\"",
        "123",
        "{\"name\": null}",
        "{\"name\": 7}",
        "{{{{",
        "\u{0}",
        "{\"name\": \"x\", \"items\": [{\"vars\": {}, \"expected\": null}]}",
        "{\"messages\": [], \"commit_message\": \"m\"}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"{% for %}\"}], \"commit_message\": \"m\"}",
    ];
    for path in &paths {
        for body in bodies {
            let response = client
                .post_raw(path, "application/json", body)
                .await
                .unwrap();
            assert!(
                response.status < 500,
                "POST {path} {body:?} -> {} {:?}",
                response.status,
                response.body
            );
        }
    }
    for path in [
        "/v1/evaluations/not-a-uuid".to_owned(),
        format!("/v1/prompts/{prompt_id}/versions/-1"),
        format!("/v1/prompts/{prompt_id}/versions/99999999999"),
        format!("/v1/datasets/{dataset}/items?limit=0"),
        format!("/v1/datasets/{dataset}/items?limit=abc"),
        format!("/v1/datasets/{dataset}/items?after=x"),
        format!("/v1/evaluations/{}/results?after=zz", uuid::Uuid::now_v7()),
        "/v1/evaluations?after=nope".to_owned(),
        "/v1/prompts?unknown=1".to_owned(),
        "/nowhere".to_owned(),
    ] {
        let response = client.get(&path).await.unwrap();
        assert!(
            (400..500).contains(&response.status),
            "GET {path} -> {} {:?}",
            response.status,
            response.body
        );
        assert_eq!(
            response.content_type, "application/problem+json",
            "GET {path}"
        );
    }
    let wrong_method = client
        .request(reqwest::Method::DELETE, "/v1/prompts")
        .await
        .unwrap();
    assert_problem(&wrong_method, 405, "method_not_allowed", "DELETE");
    assert_eq!(wrong_method.header("allow"), Some("GET, POST"));
    // NUL reaches no query: in a path it names nothing, in a parameter it is
    // invalid input naming the parameter.
    let prompt = uuid::Uuid::now_v7();
    for (path, status, code) in [
        (
            format!("/v1/prompts/{prompt}/branches?after=%00"),
            422,
            "invalid_input",
        ),
        (
            format!("/v1/prompts/{prompt}/branches/a%00b"),
            404,
            "not_found",
        ),
        ("/v1/prompts/x%00/resolve".to_owned(), 404, "not_found"),
    ] {
        let response = client.get(&path).await.unwrap();
        assert_problem(&response, status, code, "");
        if status == 422 {
            assert_eq!(response.body["field"], "after");
        }
    }
    let large = "x".repeat(2 << 20);
    let too_large = client
        .post_raw("/v1/prompts", "application/json", large)
        .await
        .unwrap();
    assert_problem(&too_large, 413, "payload_too_large", "larger");
    // Uploads are read as they arrive, and still stop at the limit, writing nothing.
    let datasets_before = app.count_rows("datasets").await;
    let many_lines: String = (0..80_000)
        .map(|n| format!("{{\"vars\": {{\"n\": {n}}}}}\n"))
        .collect();
    assert!(many_lines.len() > 1 << 20);
    for (content_type, path) in [
        ("application/x-ndjson", "/v1/datasets?name=huge"),
        ("application/json", "/v1/datasets"),
    ] {
        let too_large = client
            .post_raw(path, content_type, many_lines.clone())
            .await
            .unwrap();
        assert_problem(&too_large, 413, "payload_too_large", "larger");
    }
    assert_eq!(app.count_rows("datasets").await, datasets_before);
    // None of the junk above changed what was there: the prompt's latest
    // version is still the one made first, and nothing was evaluated.
    let stored = client
        .get(&format!("/v1/prompts/{prompt_id}"))
        .await
        .unwrap();
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    assert_eq!(stored.body["latest_version"]["id"], json!(version));
    assert_eq!(app.count_rows("prompt_versions").await, 1);
    assert_eq!(app.count_rows("evaluations").await, 0);
}
