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

/// Cancel, resume, retry-errors and regrade of another tenant's evaluation
/// answer 404 and change nothing, each on an evaluation in a state where the
/// owner's same request succeeds (shown at the end), so the 404 is about
/// tenancy and not about the evaluation's state.
#[tokio::test]
async fn another_tenant_cannot_act_on_an_evaluation() {
    let app = TestApp::spawn().await;
    let owner = &app.client;
    let (_, version_id) = app.prompt(owner, "secret", "{{ question }}").await;
    let dataset_id = app.dataset(owner, 2).await;
    let submit = || async {
        let response = owner
            .post(
                "/v1/evaluations",
                &json!({"prompt_version_id": version_id, "dataset_id": dataset_id,
                        "models": ["mock"], "graders": [{"type": "is-json"}]}),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 202, "{:?}", response.body);
        id(&response.body["id"])
    };
    // Queued: can be canceled.
    let queued = submit().await;
    // Canceled: can be resumed, and its missing results retried.
    let canceled = submit().await;
    let response = owner
        .post(&format!("/v1/evaluations/{canceled}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    // Succeeded: can be re-graded.
    let succeeded = submit().await;
    mark_succeeded(&app, &succeeded).await;

    let intruder = app.client_for("tenant-b").await;
    let regrade_body = json!({"graders": [{"type": "contains", "value": "x"}]});
    let attempts = [
        (format!("/v1/evaluations/{queued}/cancel"), json!({})),
        (format!("/v1/evaluations/{canceled}/resume"), json!({})),
        (
            format!("/v1/evaluations/{canceled}/retry-errors"),
            json!({}),
        ),
        (
            format!("/v1/evaluations/{succeeded}/regrade"),
            regrade_body.clone(),
        ),
    ];
    let seen_by_owner = || async {
        let mut bodies = Vec::new();
        for evaluation in [&queued, &canceled, &succeeded] {
            let response = owner
                .get(&format!("/v1/evaluations/{evaluation}"))
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{:?}", response.body);
            bodies.push(response.body);
        }
        bodies
    };
    let tables = ["evaluations", "evaluation_chunks", "events"];
    let count_rows = || async {
        let mut counts = Vec::new();
        for table in tables {
            counts.push(app.count_rows(table).await);
        }
        counts
    };
    let (before, rows_before) = (seen_by_owner().await, count_rows().await);
    for (path, body) in &attempts {
        let response = intruder.post(path, body).await.unwrap();
        assert_eq!(response.status, 404, "POST {path}: {:?}", response.body);
        assert_eq!(response.content_type, "application/problem+json", "{path}");
        assert_eq!(response.body["code"], "not_found", "{path}");
        assert_eq!(seen_by_owner().await, before, "POST {path} changed nothing");
        assert_eq!(count_rows().await, rows_before, "POST {path} wrote nothing");
    }
    assert_eq!(
        intruder.get("/v1/evaluations").await.unwrap().body["data"],
        json!([])
    );

    // The owner's same requests succeed, in the same states.
    for (path, body, status) in [
        (&attempts[0].0, &attempts[0].1, 200),
        (&attempts[2].0, &attempts[2].1, 202),
        (&attempts[3].0, &attempts[3].1, 202),
    ] {
        let response = owner.post(path, body).await.unwrap();
        assert_eq!(
            response.status, status,
            "owner POST {path}: {:?}",
            response.body
        );
    }
    // Resume takes a canceled evaluation: the one just canceled by its owner.
    let response = owner
        .post(&format!("/v1/evaluations/{queued}/resume"), &json!({}))
        .await
        .unwrap();
    assert_eq!(response.status, 202, "owner resume: {:?}", response.body);
}

/// Marks `evaluation` succeeded, as a worker would on its last result.
async fn mark_succeeded(app: &TestApp, evaluation: &str) {
    use diesel_async::RunQueryDsl;
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    for statement in [
        format!(
            "UPDATE evaluation_chunks SET status = 'done', job_id = NULL WHERE evaluation_id = '{evaluation}'"
        ),
        format!(
            "UPDATE evaluations SET status = 'succeeded', finished_at = now() WHERE id = '{evaluation}'"
        ),
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
