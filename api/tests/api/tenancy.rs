//! A key of tenant A sees none of tenant B's resources: 404 on every endpoint that takes an id.

use serde_json::json;

use crate::{TestApp, id};

#[tokio::test]
async fn another_tenants_resources_are_not_found() {
    let app = TestApp::spawn().await;
    let owner = &app.client;
    let (prompt_id, version_id) = app.prompt(owner, "secret", "{{ question }}").await;
    let dataset_id = app.dataset(owner, 2).await;
    let evaluation = owner
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version_id, "dataset_id": dataset_id, "models": ["mock"],
                    "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(evaluation.status, 202, "{:?}", evaluation.body);
    let evaluation_id = id(&evaluation.body["id"]);

    let intruder = app.client_for("tenant-b").await;
    for path in [
        format!("/v1/prompts/{prompt_id}"),
        format!("/v1/prompts/{prompt_id}/versions"),
        format!("/v1/prompts/{prompt_id}/versions/1"),
        format!("/v1/prompts/{prompt_id}/versions/{version_id}"),
        format!("/v1/datasets/{dataset_id}"),
        format!("/v1/datasets/{dataset_id}/items"),
        format!("/v1/evaluations/{evaluation_id}"),
        format!("/v1/evaluations/{evaluation_id}/results"),
    ] {
        let response = intruder.get(&path).await.unwrap();
        assert_eq!(response.status, 404, "GET {path}: {:?}", response.body);
        assert_eq!(response.content_type, "application/problem+json");
        // The owner does see it: the 404 is about tenancy, not a broken path.
        assert_eq!(
            owner.get(&path).await.unwrap().status,
            200,
            "owner GET {path}"
        );
    }
    let commit = intruder
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({"messages": [{"role": "user", "content": "x"}], "commit_message": "hijack"}),
        )
        .await
        .unwrap();
    assert_eq!(commit.status, 404, "{:?}", commit.body);
    let borrowed = intruder
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version_id, "dataset_id": dataset_id, "models": ["mock"],
                    "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(
        borrowed.status, 422,
        "another tenant's ids are unknown: {:?}",
        borrowed.body
    );
    for list in ["/v1/prompts", "/v1/datasets", "/v1/evaluations"] {
        let response = intruder.get(list).await.unwrap();
        assert_eq!(
            response.body["data"],
            json!([]),
            "{list} lists nothing of tenant A"
        );
    }
}
