//! CSV uploads, items' own graders and the dataset content hash.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{TestApp, id};

fn content_hash(format: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{format}\n{body}").as_bytes());
    hex::encode(hasher.finalize())
}

const CSV: &str = "city,country,__expected,__assert\n\
Paris,France,Paris,contains:{{ city }};not-icontains:rome\n\
\"Buenos Aires, capital\",Argentina,Buenos Aires,\n";

#[tokio::test]
async fn csv_uploads_stream_items_with_their_graders_and_a_content_hash() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let uploaded = client
        .post_raw("/v1/datasets?name=capitals", "text/csv; charset=utf-8", CSV)
        .await
        .unwrap();
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.body);
    assert_eq!(uploaded.body["item_count"], 2);
    assert_eq!(uploaded.body["variables"], json!(["city", "country"]));
    assert_eq!(uploaded.body["all_expected"], true);
    assert_eq!(uploaded.body["items_with_graders"], 1);
    assert_eq!(uploaded.body["content_hash"], content_hash("csv", CSV));
    let dataset = id(&uploaded.body["id"]);
    let items = client
        .get(&format!("/v1/datasets/{dataset}/items"))
        .await
        .unwrap();
    assert_eq!(
        items.body["data"][0]["graders"],
        json!([{"type": "contains", "value": "{{ city }}"}, {"type": "not-icontains", "value": "rome"}])
    );
    assert_eq!(
        items.body["data"][1]["vars"]["city"],
        "Buenos Aires, capital"
    );
    assert!(items.body["data"][1].get("graders").is_none());

    // Found again by what it holds, and only by that.
    let found = client
        .get(&format!(
            "/v1/datasets?content_hash={}",
            content_hash("csv", CSV)
        ))
        .await
        .unwrap();
    assert_eq!(found.status, 200);
    assert_eq!(found.body["data"][0]["id"], uploaded.body["id"]);
    let missing = client
        .get(&format!(
            "/v1/datasets?content_hash={}",
            content_hash("jsonl", CSV)
        ))
        .await
        .unwrap();
    assert_eq!(missing.body["data"], json!([]));
    let malformed = client.get("/v1/datasets?content_hash=abc").await.unwrap();
    assert_eq!(malformed.status, 400, "{:?}", malformed.body);
    let other_tenant = app.client_for("tenant-b").await;
    let hidden = other_tenant
        .get(&format!(
            "/v1/datasets?content_hash={}",
            content_hash("csv", CSV)
        ))
        .await
        .unwrap();
    assert_eq!(
        hidden.body["data"],
        json!([]),
        "another tenant's dataset stays hidden"
    );

    // A JSON body hashes like the JSON Lines of its items; `assert` is `graders`.
    let items = vec![
        json!({"vars": {"q": "a"}, "assert": [{"type": "is-json"}]}),
        json!({"vars": {"q": "b"}, "expected": "b"}),
    ];
    let json_upload = client
        .post("/v1/datasets", &json!({"name": "j", "items": items}))
        .await
        .unwrap();
    assert_eq!(json_upload.status, 201, "{:?}", json_upload.body);
    let jsonl = "{\"vars\":{\"q\":\"a\"},\"graders\":[{\"type\":\"is-json\"}]}\n{\"vars\":{\"q\":\"b\"},\"expected\":\"b\"}\n";
    assert_eq!(
        json_upload.body["content_hash"],
        content_hash("jsonl", jsonl)
    );
}

#[tokio::test]
async fn bad_csv_and_bad_item_graders_are_422s_that_write_nothing() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let cases: [(&str, &str, &str); 5] = [
        ("text/csv", "a,b\n1,2\n3\n", "row 3"),
        (
            "text/csv",
            "a,__assert\n1,telepathy:yes\n",
            "row 2.__assert",
        ),
        (
            "text/csv",
            "a,__assert\n1,contains:{{ b }}\n",
            "items[0].graders[0]",
        ),
        (
            "application/x-ndjson",
            "{\"vars\": {}, \"graders\": [{\"type\": \"llm-rubric\", \"rubric\": \"x\", \"model\": \"nope\"}]}\n",
            "items[0].graders[0].model",
        ),
        (
            "application/x-ndjson",
            "{\"vars\": {}}\n{\"vars\": {}, \"graders\": [{\"type\": \"regex\", \"pattern\": \"(\"}]}\n",
            "items[1].graders[0].pattern",
        ),
    ];
    for (content_type, body, field) in cases {
        let refused = client
            .post_raw("/v1/datasets?name=bad", content_type, body)
            .await
            .unwrap();
        assert_eq!(refused.status, 422, "{body:?}: {:?}", refused.body);
        assert_eq!(refused.body["field"], field, "{body:?}");
        assert_eq!(app.count_rows("datasets").await, 0);
        assert_eq!(app.count_rows("dataset_items").await, 0);
    }
    let unnamed = client
        .post_raw("/v1/datasets", "text/csv", "a\n1\n")
        .await
        .unwrap();
    assert_eq!(unnamed.status, 400, "{:?}", unnamed.body);
}

#[tokio::test]
async fn an_evaluation_may_leave_grading_to_items_that_all_have_graders() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "p", "{{ city }}").await;
    let submit = |dataset: Value| json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"], "graders": []});
    let all = client
        .post_raw(
            "/v1/datasets?name=all",
            "text/csv",
            "city,__assert\nParis,contains:Paris\nRome,is-json\n",
        )
        .await
        .unwrap();
    assert_eq!(all.status, 201, "{:?}", all.body);
    let accepted = client
        .post("/v1/evaluations", &submit(all.body["id"].clone()))
        .await
        .unwrap();
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let some = client
        .post_raw(
            "/v1/datasets?name=some",
            "text/csv",
            "city,__assert\nParis,contains:Paris\nRome,\n",
        )
        .await
        .unwrap();
    let refused = client
        .post("/v1/evaluations", &submit(some.body["id"].clone()))
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["field"], "graders");
}
