//! Prompts, versions, datasets and evaluation submission over real HTTP.

use assay_core::domain::Priority;
use assay_core::queue::{ChunkJob, JobQueue, Push};
use serde_json::json;

use crate::{TestApp, id};

#[tokio::test]
async fn prompts_are_versioned_like_commits() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt_id, v1) = app
        .prompt(client, "capitals", "Capital of {{ country }}?")
        .await;

    let response = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "What is the capital of {{ country }}?"}],
                "params": {"temperature": 0},
                "commit_message": "Ask politely",
            }),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 201, "{:?}", response.body);
    assert_eq!(
        response.location.as_deref(),
        Some(format!("/v1/prompts/{prompt_id}/versions/2").as_str())
    );
    let v2 = response.body;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["parent_id"], json!(v1));
    assert_eq!(v2["commit_message"], "Ask politely");
    assert_eq!(v2["content_hash"].as_str().unwrap().len(), 64);

    let by_number = client
        .get(&format!("/v1/prompts/{prompt_id}/versions/1"))
        .await
        .unwrap();
    assert_eq!(by_number.status, 200);
    assert_eq!(by_number.body["id"], json!(v1));
    let by_id = client
        .get(&format!(
            "/v1/prompts/{prompt_id}/versions/{}",
            id(&v2["id"])
        ))
        .await
        .unwrap();
    assert_eq!(by_id.body["version"], 2);

    let versions = client
        .get(&format!("/v1/prompts/{prompt_id}/versions?limit=1"))
        .await
        .unwrap();
    assert_eq!(versions.body["data"][0]["version"], 2, "newest first");
    assert_eq!(versions.body["has_more"], true);
    let rest = client
        .get(&format!(
            "/v1/prompts/{prompt_id}/versions?limit=1&after={}",
            versions.body["next_after"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(rest.body["data"][0]["version"], 1);
    assert_eq!(rest.body["has_more"], false);

    let prompt = client
        .get(&format!("/v1/prompts/{prompt_id}"))
        .await
        .unwrap();
    assert_eq!(prompt.body["name"], "capitals");
    assert_eq!(prompt.body["latest_version"]["version"], 2);

    let listed = client.get("/v1/prompts").await.unwrap();
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);

    let duplicate = client
        .post("/v1/prompts", &json!({"name": "capitals"}))
        .await
        .unwrap();
    assert_eq!(duplicate.status, 409);

    let branch = client
        .post(
            &format!("/v1/prompts/{prompt_id}/branches"),
            &json!({"name": "from-v1", "from": v1}),
        )
        .await
        .unwrap();
    assert_eq!(branch.status, 201, "{:?}", branch.body);
    let detour = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({
                "messages": [{"role": "user", "content": "Capital of {{ country }}? One word."}],
                "commit_message": "Detour",
                "branch": "from-v1",
            }),
        )
        .await
        .unwrap();
    assert_eq!(detour.body["parent_id"], json!(v1));
    let same_content_other_parent = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({
                "messages": [{"role": "user", "content": "Capital of {{ country }}?"}],
                "commit_message": "Back to v1's wording",
                "branch": "from-v1",
            }),
        )
        .await
        .unwrap();
    assert_eq!(same_content_other_parent.status, 201);
    assert_eq!(
        same_content_other_parent.body["parent_id"],
        detour.body["id"]
    );
    assert_eq!(
        same_content_other_parent.body["content_hash"], by_number.body["content_hash"],
        "equal content hashes equally"
    );
}

#[tokio::test]
async fn datasets_take_inline_json_and_jsonl_and_page_items() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let inline = client
        .post(
            "/v1/datasets",
            &json!({"name": "inline", "description": "three", "items": [
                {"id": "a", "vars": {"q": "1", "lang": "en"}, "expected": "1"},
                {"vars": {"q": "2"}, "expected": "2"},
                {"vars": {"q": "3", "lang": "fr"}, "expected": {"answer": 3}},
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(inline.status, 201, "{:?}", inline.body);
    assert_eq!(inline.body["item_count"], 3);
    assert_eq!(
        inline.body["variables"],
        json!(["q"]),
        "only variables every item defines"
    );
    assert_eq!(inline.body["all_expected"], true);

    let jsonl: String = (0..250)
        .map(|n| format!("{{\"vars\": {{\"n\": {n}}}}}\n"))
        .collect();
    let uploaded = client
        .post_raw("/v1/datasets?name=uploaded", "application/x-ndjson", jsonl)
        .await
        .unwrap();
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.body);
    assert_eq!(uploaded.body["item_count"], 250);
    assert_eq!(uploaded.body["all_expected"], false);
    let dataset_id = id(&uploaded.body["id"]);

    let mut seen = Vec::new();
    let mut after = None::<String>;
    loop {
        let path = match &after {
            None => format!("/v1/datasets/{dataset_id}/items?limit=100"),
            Some(after) => format!("/v1/datasets/{dataset_id}/items?limit=100&after={after}"),
        };
        let page = client.get(&path).await.unwrap();
        assert_eq!(page.status, 200);
        for item in page.body["data"].as_array().unwrap() {
            seen.push(item["vars"]["n"].as_i64().unwrap());
        }
        if page.body["has_more"] == false {
            assert!(page.body["next_after"].is_null());
            break;
        }
        after = Some(page.body["next_after"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        (0..250).collect::<Vec<i64>>(),
        "every item once, in order"
    );

    let first_items = client
        .get(&format!("/v1/datasets/{}/items", id(&inline.body["id"])))
        .await
        .unwrap();
    assert_eq!(first_items.body["data"][0]["id"], "a");
    assert_eq!(
        first_items.body["data"][1]["id"], "1",
        "default ids are positions"
    );
    let listed = client.get("/v1/datasets").await.unwrap();
    assert_eq!(listed.body["data"][0]["name"], "uploaded", "newest first");
}

#[tokio::test]
async fn an_evaluation_is_recorded_then_queued() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "echo", "{{ question }}").await;
    let dataset = app.dataset(client, 5).await;
    let response = client
        .post(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": version,
                "dataset_id": dataset,
                "models": ["mock", "mock:latency=10ms"],
                "graders": [{"type": "equals", "value": "{{ expected }}"}],
            }),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    let evaluation_id = id(&response.body["id"]);
    assert_eq!(
        response.location,
        Some(format!("/v1/evaluations/{evaluation_id}"))
    );
    assert_eq!(response.body["status"], "queued");
    assert_eq!(response.body["counts"]["total"], 10);

    let fetched = client
        .get(&format!("/v1/evaluations/{evaluation_id}"))
        .await
        .unwrap();
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body["status"], "queued");
    assert_eq!(fetched.body["priority"], "normal");
    // 10 items x 2 models: one range of items, one chunk per model; one
    // chunk of an evaluation is queued at a time.
    assert_eq!(
        fetched.body["chunks"],
        json!({"total": 2, "pending": 1, "queued": 1, "running": 0, "done": 0, "canceled": 0})
    );
    let listed = client.get("/v1/evaluations").await.unwrap();
    assert_eq!(listed.body["data"][0]["id"], json!(evaluation_id));

    // The first chunk waits in Redis under this test's prefix: a first chunk
    // rides one priority up, so this normal evaluation's is on the high queue.
    let keys = app.redis.keys().unwrap();
    assert!(
        keys.iter()
            .any(|key| key.ends_with(":chunks:high:scheduled")),
        "queue keys: {keys:?}"
    );

    // Pushing the queued chunk again (as the sweeper does when it cannot
    // tell whether a push arrived) under the task id its row records leaves
    // one job in Redis and changes no row.
    let queued = queued_chunk(&app).await;
    let queue = JobQueue::connect(&app.redis.url, &app.redis.prefix)
        .await
        .unwrap();
    let high_depth = || async { queue.depth(Priority::High).await.unwrap() };
    let before = high_depth().await;
    assert_eq!(before.ready + before.delayed, 1, "{before:?}");
    let rows_before = (
        app.count_rows("evaluations").await,
        app.count_rows("evaluation_chunks").await,
    );
    let again = Push {
        job: ChunkJob::new(
            queued.tenant_id,
            evaluation_id.parse().unwrap(),
            queued.chunk_index,
        ),
        priority: Priority::High,
        job_id: queued.job_id.expect("a queued chunk records its push"),
    };
    for _ in 0..2 {
        queue.push(std::slice::from_ref(&again)).await.unwrap();
    }
    assert_eq!(high_depth().await, before, "pushed again, still one job");
    assert_eq!(high_payloads(&app), 1, "one payload");
    assert_eq!(queued_chunk(&app).await, queued);
    assert_eq!(
        (
            app.count_rows("evaluations").await,
            app.count_rows("evaluation_chunks").await,
        ),
        rows_before
    );
    let fetched_again = client
        .get(&format!("/v1/evaluations/{evaluation_id}"))
        .await
        .unwrap();
    assert_eq!(fetched_again.body, fetched.body);
}

#[derive(Debug, PartialEq, diesel::QueryableByName)]
struct QueuedChunk {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    tenant_id: assay_core::ids::TenantId,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    chunk_index: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    job_id: Option<uuid::Uuid>,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    starts: i32,
}

/// Job payloads held in the high queue's data hash.
fn high_payloads(app: &TestApp) -> usize {
    let client = redis::Client::open(app.redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("HLEN")
        .arg(format!("{}:chunks:high:data", app.redis.prefix))
        .query(&mut conn)
        .unwrap()
}

/// The one queued chunk's row.
async fn queued_chunk(app: &TestApp) -> QueuedChunk {
    use diesel_async::RunQueryDsl;
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "SELECT tenant_id, chunk_index, job_id, starts FROM evaluation_chunks WHERE status = 'queued'",
    )
    .get_result::<QueuedChunk>(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let anonymous = app.client.with_key(None);
    assert_eq!(anonymous.get("/healthz").await.unwrap().status, 200);
    let ready = anonymous.get("/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.body["postgres"], "ok");
    assert_eq!(ready.body["redis"], "ok");
    app.client.get("/v1/prompts").await.unwrap();
    let metrics = anonymous.get("/metrics").await.unwrap();
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(
            "assay_http_requests_total{route=\"/v1/prompts\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("assay_http_request_duration_seconds_bucket{route=\"/v1/prompts\""),
        "{text}"
    );
}

#[tokio::test]
async fn large_json_lines_uploads_stream_whole_or_not_at_all() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    // Several of the API's batches; the first item alone defines `extra`,
    // and one item has no expected output.
    const ITEMS: usize = 12_345;
    let line = |n: usize| {
        let mut item = json!({"id": format!("k{n}"), "vars": {"n": n}, "expected": format!("{n}")});
        if n == 0 {
            item["vars"]["extra"] = json!(true);
        }
        if n == 7_777 {
            item.as_object_mut().unwrap().remove("expected");
        }
        format!("{item}\n")
    };
    let body: String = (0..ITEMS).map(line).collect();
    let uploaded = client
        .post_raw("/v1/datasets?name=big", "application/x-ndjson", body)
        .await
        .unwrap();
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.body);
    assert_eq!(uploaded.body["item_count"], ITEMS);
    assert_eq!(uploaded.body["variables"], json!(["n"]));
    assert_eq!(uploaded.body["all_expected"], false);
    assert_eq!(app.count_rows("dataset_items").await, ITEMS as i64);
    let dataset = id(&uploaded.body["id"]);
    let page = client
        .get(&format!("/v1/datasets/{dataset}/items?limit=2&after=9000"))
        .await
        .unwrap();
    assert_eq!(page.body["data"][0]["id"], "k9001");
    assert_eq!(page.body["data"][1]["vars"]["n"], 9002);

    // Errors deep in an upload, after earlier batches reached the database:
    // the answer names the item, and nothing of the upload is kept.
    let mut bad_json: String = (0..ITEMS).map(line).collect();
    bad_json.push_str("{\"vars\": [1]}\n");
    let mut duplicate: String = (0..9_000).map(line).collect();
    duplicate.push_str(&line(4_000));
    for (body, field) in [(bad_json, "line 12346"), (duplicate, "items[9000].id")] {
        let refused = client
            .post_raw("/v1/datasets?name=bad", "application/x-ndjson", body)
            .await
            .unwrap();
        assert_eq!(refused.status, 422, "{:?}", refused.body);
        assert_eq!(refused.body["field"], field);
        assert_eq!(app.count_rows("datasets").await, 1);
        assert_eq!(app.count_rows("dataset_items").await, ITEMS as i64);
    }
}
