//! Prompt history over real HTTP: branches with compare-and-set heads,
//! history queries, labels (CAS, protection, events), evaluations named by
//! label, diffs, and tenancy of every new endpoint.

use assay_core::db::models::api_keys::KeyScope;
use assay_testkit::Client;
use serde_json::{Value, json};

use crate::{TestApp, id};

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

async fn commit(client: &Client, prompt: &str, body: Value) -> assay_testkit::client::Response {
    client
        .post(&format!("/v1/prompts/{prompt}/versions"), &body)
        .await
        .unwrap()
}

async fn head(client: &Client, prompt: &str, branch: &str) -> Value {
    let response = client
        .get(&format!("/v1/prompts/{prompt}/branches/{branch}"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.body["head_version_id"].clone()
}

#[tokio::test]
async fn concurrent_commits_with_one_expected_head_let_exactly_one_win() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, _) = app.prompt(client, "race", "v0").await;
    for round in 0..50 {
        let before = head(client, &prompt, "main").await;
        let versions_before = app.count_rows("prompt_versions").await;
        let path = format!("/v1/prompts/{prompt}/versions");
        let left = json!({"messages": user(&format!("left {round}")), "commit_message": "left", "expected_head": before});
        let right = json!({"messages": user(&format!("right {round}")), "commit_message": "right", "expected_head": before});
        let (first, second) = tokio::join!(client.post(&path, &left), client.post(&path, &right));
        let (first, second) = (first.unwrap(), second.unwrap());
        let mut statuses = [first.status, second.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 409],
            "round {round}: {:?} / {:?}",
            first.body,
            second.body
        );
        let (winner, loser) = if first.status == 201 {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(loser.body["code"], "conflict");
        assert_eq!(loser.content_type, "application/problem+json");
        assert_eq!(
            loser.body["current"]["head"]["id"], winner.body["id"],
            "the 409 names the head that won"
        );
        assert_eq!(winner.body["parent_id"], before);
        assert_eq!(head(client, &prompt, "main").await, winner.body["id"]);
        assert_eq!(
            app.count_rows("prompt_versions").await,
            versions_before + 1,
            "round {round}: exactly one new version"
        );
    }
}

#[tokio::test]
async fn commits_are_idempotent_and_branches_move_independently() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, v1) = app.prompt(client, "branches", "one").await;

    // Same content as the head: nothing new, 200 with the head.
    let same = commit(
        client,
        &prompt,
        json!({"messages": user("one"), "commit_message": "again"}),
    )
    .await;
    assert_eq!(same.status, 200, "{:?}", same.body);
    assert_eq!(same.body["id"], json!(v1));
    assert_eq!(same.body["created"], false);

    let v2 = commit(
        client,
        &prompt,
        json!({"messages": user("two"), "commit_message": "two", "expected_head": 1}),
    )
    .await;
    assert_eq!(v2.status, 201, "{:?}", v2.body);
    assert_eq!(v2.body["version"], 2);
    assert_eq!(v2.body["branch"], "main");
    // A retry of that commit (its expected head is now the parent): the same version back.
    let retry = commit(
        client,
        &prompt,
        json!({"messages": user("two"), "commit_message": "two", "expected_head": v1}),
    )
    .await;
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(retry.body["id"], v2.body["id"]);
    // Other content on a stale head: 409, nothing written.
    let stale = commit(
        client,
        &prompt,
        json!({"messages": user("three"), "commit_message": "x", "expected_head": 1}),
    )
    .await;
    assert_eq!(stale.status, 409, "{:?}", stale.body);
    assert_eq!(stale.body["current"]["head"]["version"], 2);
    assert_eq!(app.count_rows("prompt_versions").await, 2);
    let unknown = commit(
        client,
        &prompt,
        json!({"messages": user("three"), "commit_message": "x", "expected_head": 99}),
    )
    .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.body["field"], "expected_head");

    // A branch at v1; commits to it leave main alone.
    let created = client
        .post(
            &format!("/v1/prompts/{prompt}/branches"),
            &json!({"name": "experiment", "from": 1}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["head_version"], 1);
    let duplicate = client
        .post(
            &format!("/v1/prompts/{prompt}/branches"),
            &json!({"name": "experiment"}),
        )
        .await
        .unwrap();
    assert_eq!(duplicate.status, 409);
    let bad_name = client
        .post(
            &format!("/v1/prompts/{prompt}/branches"),
            &json!({"name": "Not OK"}),
        )
        .await
        .unwrap();
    assert_eq!(bad_name.status, 422);
    assert_eq!(bad_name.body["field"], "name");
    let v3 = commit(
        client,
        &prompt,
        json!({"messages": user("three"), "commit_message": "exp", "branch": "experiment"}),
    )
    .await;
    assert_eq!(v3.status, 201, "{:?}", v3.body);
    assert_eq!(v3.body["parent_id"], json!(v1));
    assert_eq!(v3.body["version"], 3);
    assert_eq!(head(client, &prompt, "main").await, v2.body["id"]);
    let missing = commit(
        client,
        &prompt,
        json!({"messages": user("x"), "commit_message": "x", "branch": "nope"}),
    )
    .await;
    assert_eq!(missing.status, 404);

    let listed = client
        .get(&format!("/v1/prompts/{prompt}/branches?limit=1"))
        .await
        .unwrap();
    assert_eq!(listed.body["data"][0]["name"], "experiment");
    assert_eq!(listed.body["data"][0]["head_version"], 3);
    assert_eq!(listed.body["next_after"], "experiment");
    let rest = client
        .get(&format!("/v1/prompts/{prompt}/branches?after=experiment"))
        .await
        .unwrap();
    assert_eq!(rest.body["data"][0]["name"], "main");
    assert_eq!(rest.body["has_more"], false);

    // History: log of v3 is v3, v1; children of v1 are v2 and v3; their common ancestor is v1.
    let log = client
        .get(&format!("/v1/prompts/{prompt}/versions/3/log?limit=1"))
        .await
        .unwrap();
    assert_eq!(log.status, 200, "{:?}", log.body);
    assert_eq!(log.body["data"][0]["version"], 3);
    assert_eq!(log.body["has_more"], true);
    let older = client
        .get(&format!(
            "/v1/prompts/{prompt}/versions/3/log?after={}",
            log.body["next_after"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(older.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(older.body["data"][0]["version"], 1);
    assert_eq!(older.body["has_more"], false);
    let children = client
        .get(&format!("/v1/prompts/{prompt}/versions/1/children"))
        .await
        .unwrap();
    let numbers: Vec<&Value> = children.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| &version["version"])
        .collect();
    assert_eq!(numbers, [&json!(2), &json!(3)]);
    let ancestor = client
        .get(&format!("/v1/prompts/{prompt}/common-ancestor?a=2&b=3"))
        .await
        .unwrap();
    assert_eq!(ancestor.body["common_ancestor"]["version"], 1);
    let own = client
        .get(&format!("/v1/prompts/{prompt}/common-ancestor?a=3&b=1"))
        .await
        .unwrap();
    assert_eq!(own.body["common_ancestor"]["version"], 1);

    // Revert main to v1's content: a new version (4) whose parent is v2.
    let revert = client
        .post(
            &format!("/v1/prompts/{prompt}/branches/main/revert"),
            &json!({"to": 1, "expected_head": 2}),
        )
        .await
        .unwrap();
    assert_eq!(revert.status, 201, "{:?}", revert.body);
    assert_eq!(revert.body["version"], 4);
    assert_eq!(revert.body["parent_id"], v2.body["id"]);
    assert_eq!(revert.body["messages"], user("one"));
    assert_eq!(revert.body["commit_message"], "Revert to version 1");
    let again = client
        .post(
            &format!("/v1/prompts/{prompt}/branches/main/revert"),
            &json!({"to": 1}),
        )
        .await
        .unwrap();
    assert_eq!(again.status, 200, "the head already has that content");

    // Deleting a branch keeps its versions; main cannot go.
    let deleted = client
        .delete(&format!("/v1/prompts/{prompt}/branches/experiment"))
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    let gone = client
        .get(&format!("/v1/prompts/{prompt}/branches/experiment"))
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
    let kept = client
        .get(&format!("/v1/prompts/{prompt}/versions/3"))
        .await
        .unwrap();
    assert_eq!(kept.status, 200);
    let main = client
        .delete(&format!("/v1/prompts/{prompt}/branches/main"))
        .await
        .unwrap();
    assert_eq!(main.status, 409);

    // Commits, branch creation and deletion are events.
    let actions = events(&app, "SELECT action FROM events ORDER BY id").await;
    for action in [
        "prompt.version_committed",
        "prompt.branch_created",
        "prompt.branch_deleted",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "prompt.version_committed")
            .count(),
        4,
        "one event per version written, none for unchanged commits"
    );
}

/// Text column `action` of a query over events.
async fn events(app: &TestApp, sql: &str) -> Vec<String> {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        action: String,
    }
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(sql)
        .load::<Row>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.action)
        .collect()
}

async fn label_moves(app: &TestApp) -> usize {
    events(
        app,
        "SELECT action FROM events WHERE action = 'prompt.label_moved'",
    )
    .await
    .len()
}

#[tokio::test]
async fn labels_move_by_compare_and_set_and_protected_ones_need_an_admin() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, v1) = app.prompt(client, "labelled", "one").await;
    let v2 = commit(
        client,
        &prompt,
        json!({"messages": user("two"), "commit_message": "two"}),
    )
    .await;
    let v2 = id(&v2.body["id"]);
    let label = format!("/v1/prompts/{prompt}/labels/production");

    // Created where nothing was expected.
    let created = client
        .put(
            &label,
            &json!({"version": 1, "expected_version": null, "reason": "first release"}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["label"]["version_id"], json!(v1));
    assert_eq!(label_moves(&app).await, 1);

    // Stale expected_version: 409, nothing changes, no event.
    let stale = client
        .put(&label, &json!({"version": 2, "expected_version": 2}))
        .await
        .unwrap();
    assert_eq!(stale.status, 409, "{:?}", stale.body);
    assert_eq!(stale.body["code"], "conflict");
    assert_eq!(stale.body["current"]["label"]["version"], 1);
    let exists = client
        .put(&label, &json!({"version": 2, "expected_version": null}))
        .await
        .unwrap();
    assert_eq!(exists.status, 409);
    let now = client.get(&label).await.unwrap();
    assert_eq!(now.body["version"], 1);
    assert_eq!(label_moves(&app).await, 1);

    // Right expected_version: moves, one event with who, from, to and why.
    let moved = client
        .put(
            &label,
            &json!({"version": v2, "expected_version": v1, "reason": "v2 is better"}),
        )
        .await
        .unwrap();
    assert_eq!(moved.status, 200, "{:?}", moved.body);
    assert_eq!(moved.body["label"]["version"], 2);
    assert_eq!(label_moves(&app).await, 2);
    let history = client.get(&format!("{label}/history")).await.unwrap();
    assert_eq!(history.status, 200, "{:?}", history.body);
    let newest = &history.body["data"][0];
    assert_eq!(newest["data"]["from_version"], 1);
    assert_eq!(newest["data"]["to_version"], 2);
    assert_eq!(newest["data"]["reason"], "v2 is better");
    assert!(newest["actor"].as_str().unwrap().starts_with("api_key:"));
    // Moving to where it is: nothing to record.
    let noop = client.put(&label, &json!({"version": 2})).await.unwrap();
    assert_eq!(noop.status, 200);
    assert_eq!(noop.body["changed"], false);
    assert_eq!(label_moves(&app).await, 2);

    // Protect it: an ordinary key can no longer move it, even with force.
    let protect = client
        .put(&label, &json!({"version": 2, "protected": true}))
        .await
        .unwrap();
    assert_eq!(protect.status, 200, "{:?}", protect.body);
    assert_eq!(protect.body["label"]["protected"], true);
    assert_eq!(label_moves(&app).await, 3);
    for body in [
        json!({"version": 1}),
        json!({"version": 1, "force": true}),
        json!({"version": 2, "protected": false, "force": true}),
    ] {
        let refused = client.put(&label, &body).await.unwrap();
        assert_eq!(refused.status, 403, "{body}: {:?}", refused.body);
        assert_eq!(refused.body["code"], "forbidden");
    }
    assert_eq!(client.get(&label).await.unwrap().body["version"], 2);
    assert_eq!(label_moves(&app).await, 3);

    // An admin key: refused without force, accepted with it.
    let admin_key = assay_testkit::api_key_with_scope(&app.database, "tenant-a", KeyScope::Admin)
        .await
        .unwrap();
    let admin = client.with_key(Some(admin_key));
    let unforced = admin.put(&label, &json!({"version": 1})).await.unwrap();
    assert_eq!(unforced.status, 403);
    let forced = admin
        .put(
            &label,
            &json!({"version": 1, "expected_version": 2, "force": true, "reason": "rollback"}),
        )
        .await
        .unwrap();
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    assert_eq!(forced.body["label"]["version"], 1);
    assert_eq!(forced.body["label"]["protected"], true);
    assert_eq!(label_moves(&app).await, 4);
    let history = client.get(&format!("{label}/history")).await.unwrap();
    assert_eq!(history.body["data"][0]["data"]["forced"], true);
    assert_eq!(history.body["data"][0]["data"]["authority"], "admin");
    assert_eq!(history.body["data"].as_array().unwrap().len(), 4);

    // Resolving, by prompt id or name.
    let resolved = client
        .get(&format!("/v1/prompts/{prompt}/resolve?label=production"))
        .await
        .unwrap();
    assert_eq!(resolved.body["id"], json!(v1));
    let by_name = client
        .get("/v1/prompts/labelled/resolve?branch=main")
        .await
        .unwrap();
    assert_eq!(by_name.body["id"], json!(v2));
    let neither = client
        .get(&format!("/v1/prompts/{prompt}/resolve"))
        .await
        .unwrap();
    assert_eq!(neither.status, 400);
    let unknown = client
        .get(&format!("/v1/prompts/{prompt}/resolve?label=staging"))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let bad = client
        .put(
            &format!("/v1/prompts/{prompt}/labels/Prod%20uction"),
            &json!({"version": 1}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 422);
    let listed = client
        .get(&format!("/v1/prompts/{prompt}/labels"))
        .await
        .unwrap();
    assert_eq!(listed.body["data"][0]["name"], "production");
}

#[tokio::test]
async fn an_evaluation_named_by_label_keeps_the_version_it_resolved_to() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (prompt, v1) = app.prompt(client, "support", "{{ question }}").await;
    let v2 = commit(
        client,
        &prompt,
        json!({"messages": user("Q: {{ question }}"), "commit_message": "two"}),
    )
    .await;
    let v2 = id(&v2.body["id"]);
    let dataset = app.dataset(client, 2).await;
    let label = format!("/v1/prompts/{prompt}/labels/production");
    assert_eq!(
        client
            .put(&label, &json!({"version": 1}))
            .await
            .unwrap()
            .status,
        201
    );
    let submitted = client
        .post(
            "/v1/evaluations",
            &json!({"prompt": "support", "label": "production", "dataset_id": dataset,
                    "models": ["mock"], "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(submitted.status, 202, "{:?}", submitted.body);
    assert_eq!(submitted.body["prompt_version_id"], json!(v1));
    assert_eq!(submitted.body["prompt_ref"]["label"], "production");
    let evaluation = id(&submitted.body["id"]);

    assert_eq!(
        client
            .put(&label, &json!({"version": v2}))
            .await
            .unwrap()
            .status,
        200
    );
    let later = client
        .get(&format!("/v1/evaluations/{evaluation}"))
        .await
        .unwrap();
    assert_eq!(
        later.body["prompt_version_id"],
        json!(v1),
        "moving the label afterwards changes nothing"
    );

    // By prompt id and branch (default main): its head, v2.
    let by_branch = client
        .post(
            "/v1/evaluations",
            &json!({"prompt": prompt, "dataset_id": dataset, "models": ["mock"], "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(by_branch.status, 202, "{:?}", by_branch.body);
    assert_eq!(by_branch.body["prompt_version_id"], json!(v2));
    assert_eq!(by_branch.body["prompt_ref"]["branch"], "main");

    let rows = app.count_rows("evaluations").await;
    for (body, field) in [
        (
            json!({"prompt": "support", "label": "staging", "dataset_id": dataset, "models": ["mock"], "graders": []}),
            "label",
        ),
        (
            json!({"prompt": "nope", "label": "production", "dataset_id": dataset, "models": ["mock"], "graders": []}),
            "prompt",
        ),
        (
            json!({"prompt": "support", "label": "production", "branch": "main", "dataset_id": dataset, "models": ["mock"], "graders": []}),
            "branch",
        ),
        (
            json!({"prompt_version_id": v1, "label": "production", "dataset_id": dataset, "models": ["mock"], "graders": []}),
            "label",
        ),
    ] {
        let refused = client.post("/v1/evaluations", &body).await.unwrap();
        assert_eq!(refused.status, 422, "{body}: {:?}", refused.body);
        assert_eq!(refused.body["field"], field, "{body}");
    }
    assert_eq!(app.count_rows("evaluations").await, rows);
}

#[tokio::test]
async fn diff_of_two_known_versions() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let created = client
        .post(
            "/v1/prompts",
            &json!({"name": "diffed", "params": {"temperature": 0.2, "max_tokens": 100},
            "messages": [
                {"role": "system", "content": "You are terse.\nAnswer in English.\nNo jokes."},
                {"role": "user", "content": "{{ question }}"},
                {"role": "assistant", "content": "OK."},
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let prompt = id(&created.body["id"]);
    let v2 = commit(
        client,
        &prompt,
        json!({"commit_message": "French", "params": {"temperature": 0.7, "seed": 7},
        "messages": [
            {"role": "system", "content": "You are terse.\nAnswer in French.\nNo jokes."},
            {"role": "user", "content": "{{ question }}"},
            {"role": "user", "content": "Thanks."},
            {"role": "user", "content": "Bye."},
        ]}),
    )
    .await;
    assert_eq!(v2.status, 201, "{:?}", v2.body);
    let diff = client
        .get(&format!("/v1/prompts/{prompt}/diff?from=1&to=2"))
        .await
        .unwrap();
    assert_eq!(diff.status, 200, "{:?}", diff.body);
    assert_eq!(diff.body["from"]["version"], 1);
    assert_eq!(diff.body["to"]["version"], 2);
    assert_eq!(diff.body["common_ancestor"]["version"], 1);
    assert_eq!(
        diff.body["messages"],
        json!([
            {"index": 0, "status": "changed", "role": "system",
             "diff": "@@ -1,3 +1,3 @@\n You are terse.\n-Answer in English.\n+Answer in French.\n No jokes.\n"},
            {"index": 1, "status": "unchanged", "role": "user"},
            {"index": 2, "status": "removed", "role": "assistant", "diff": "@@ -1 +0,0 @@\n-OK.\n"},
            {"index": 2, "status": "added", "role": "user", "diff": "@@ -0,0 +1 @@\n+Thanks.\n"},
            {"index": 3, "status": "added", "role": "user", "diff": "@@ -0,0 +1 @@\n+Bye.\n"},
        ])
    );
    assert_eq!(
        diff.body["params"],
        json!([
            {"path": "/max_tokens", "op": "removed", "from": 100},
            {"path": "/seed", "op": "added", "to": 7},
            {"path": "/temperature", "op": "changed", "from": 0.2, "to": 0.7},
        ])
    );
    let backwards = client
        .get(&format!("/v1/prompts/{prompt}/diff?from=2&to=1"))
        .await
        .unwrap();
    assert_eq!(backwards.body["messages"][2]["status"], "removed");
    assert_eq!(backwards.body["messages"][2]["role"], "user");
    assert_eq!(backwards.body["messages"][3]["status"], "added");
    assert_eq!(backwards.body["messages"][4]["status"], "removed");
    let missing = client
        .get(&format!("/v1/prompts/{prompt}/diff?from=1"))
        .await
        .unwrap();
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["code"], "invalid_query");
    let unknown = client
        .get(&format!("/v1/prompts/{prompt}/diff?from=1&to=9"))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn another_tenants_history_is_not_found() {
    let app = TestApp::spawn().await;
    let owner = &app.client;
    let (prompt, _) = app.prompt(owner, "private", "{{ question }}").await;
    let v2 = commit(
        owner,
        &prompt,
        json!({"messages": user("two {{ question }}"), "commit_message": "two"}),
    )
    .await;
    assert_eq!(v2.status, 201);
    let v2 = id(&v2.body["id"]);
    assert_eq!(
        owner
            .post(
                &format!("/v1/prompts/{prompt}/branches"),
                &json!({"name": "dev", "from": 1})
            )
            .await
            .unwrap()
            .status,
        201
    );
    assert_eq!(
        owner
            .put(
                &format!("/v1/prompts/{prompt}/labels/production"),
                &json!({"version": 1})
            )
            .await
            .unwrap()
            .status,
        201
    );
    let intruder = app.client_for("tenant-b").await;
    // A prompt of the intruder's own, with the same name: resolving by name finds only its own.
    let (own, _) = app.prompt(&intruder, "private", "mine").await;
    for path in [
        format!("/v1/prompts/{prompt}/branches"),
        format!("/v1/prompts/{prompt}/branches/main"),
        format!("/v1/prompts/{prompt}/branches/dev"),
        format!("/v1/prompts/{prompt}/labels"),
        format!("/v1/prompts/{prompt}/labels/production"),
        format!("/v1/prompts/{prompt}/labels/production/history"),
        format!("/v1/prompts/{prompt}/resolve?label=production"),
        format!("/v1/prompts/{prompt}/resolve?branch=main"),
        format!("/v1/prompts/{prompt}/versions/2/log"),
        format!("/v1/prompts/{prompt}/versions/{v2}/children"),
        format!("/v1/prompts/{prompt}/common-ancestor?a=1&b=2"),
        format!("/v1/prompts/{prompt}/diff?from=1&to=2"),
    ] {
        let response = intruder.get(&path).await.unwrap();
        assert_eq!(response.status, 404, "GET {path}: {:?}", response.body);
        assert_eq!(response.content_type, "application/problem+json");
        assert_eq!(
            owner.get(&path).await.unwrap().status,
            200,
            "owner GET {path}"
        );
    }
    // The intruder's own prompt's versions are not the owner's: 404 too.
    let cross = intruder
        .get(&format!("/v1/prompts/{own}/diff?from=1&to={v2}"))
        .await
        .unwrap();
    assert_eq!(cross.status, 404);
    let resolved = intruder
        .get("/v1/prompts/private/resolve?branch=main")
        .await
        .unwrap();
    assert_eq!(resolved.body["messages"], user("mine"));
    for (path, body) in [
        (
            format!("/v1/prompts/{prompt}/versions"),
            json!({"messages": user("x"), "commit_message": "hijack", "branch": "dev"}),
        ),
        (
            format!("/v1/prompts/{prompt}/branches"),
            json!({"name": "hijack"}),
        ),
        (
            format!("/v1/prompts/{prompt}/branches/main/revert"),
            json!({"to": 1}),
        ),
    ] {
        let response = intruder.post(&path, &body).await.unwrap();
        assert_eq!(response.status, 404, "POST {path}: {:?}", response.body);
    }
    let moved = intruder
        .put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &json!({"version": 2}),
        )
        .await
        .unwrap();
    assert_eq!(moved.status, 404, "{:?}", moved.body);
    let deleted = intruder
        .delete(&format!("/v1/prompts/{prompt}/branches/dev"))
        .await
        .unwrap();
    assert_eq!(deleted.status, 404);
    // Nothing changed for the owner.
    assert_eq!(
        owner
            .get(&format!("/v1/prompts/{prompt}/labels/production"))
            .await
            .unwrap()
            .body["version"],
        1
    );
    assert_eq!(
        owner
            .get(&format!("/v1/prompts/{prompt}/branches/dev"))
            .await
            .unwrap()
            .status,
        200
    );
}
