//! The key lifecycle through the API: an admin creates, lists and revokes
//! keys; a member may not; a revoked or expired key answers 401 at once.

use assay_core::db::models::api_keys::KeyScope;
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::{TestApp, id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_lists_and_revokes_keys() {
    let app = TestApp::spawn().await;
    let admin_key = assay_testkit::api_key_with_scope(&app.database, "tenant-a", KeyScope::Admin)
        .await
        .unwrap();
    let admin = app.client.with_key(Some(admin_key));

    let created = admin
        .post("/v1/keys", &json!({"name": "ci", "scope": "member"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let key_id = id(&created.body["id"]);
    assert_eq!(
        created.location.as_deref(),
        Some(format!("/v1/keys/{key_id}").as_str())
    );
    assert_eq!(created.body["scope"], "member");
    assert_eq!(created.body["status"], "active");
    assert_eq!(created.body["name"], "ci");
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(created.body["key_prefix"].as_str().unwrap()));

    // The new key works, as its tenant.
    let member = app.client.with_key(Some(secret.clone()));
    let prompt = app.prompt(&member, "p", "hi").await;
    let seen_by_admin = admin
        .get(&format!("/v1/prompts/{}", prompt.0))
        .await
        .unwrap();
    assert_eq!(seen_by_admin.status, 200);

    // Listed without its secret; the secret is stored only as a hash.
    let listed = admin.get("/v1/keys").await.unwrap();
    assert_eq!(listed.status, 200);
    let keys = listed.body["data"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        3,
        "tenant-a's first key, the admin key and the new one"
    );
    assert!(keys.iter().any(|key| key["id"] == created.body["id"]));
    assert!(!listed.body.to_string().contains(&secret));
    assert!(keys.iter().all(|key| key.get("secret").is_none()));
    let got = admin.get(&format!("/v1/keys/{key_id}")).await.unwrap();
    assert_eq!(got.body["id"], created.body["id"]);
    assert!(got.body.get("secret").is_none());

    // A member key may not manage keys.
    for response in [
        member.get("/v1/keys").await.unwrap(),
        member.post("/v1/keys", &json!({})).await.unwrap(),
        member.delete(&format!("/v1/keys/{key_id}")).await.unwrap(),
    ] {
        assert_eq!(response.status, 403, "{:?}", response.body);
        assert_eq!(response.body["code"], "forbidden");
    }

    let revoked = admin.delete(&format!("/v1/keys/{key_id}")).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
    let refused = member.get("/v1/prompts").await.unwrap();
    assert_eq!(refused.status, 401, "refused from the next request on");
    assert_eq!(refused.body["code"], "unauthorized");
    // Revoking again keeps the first revocation time.
    let again = admin.delete(&format!("/v1/keys/{key_id}")).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.body["revoked_at"], revoked.body["revoked_at"]);

    // Another tenant's keys are not there.
    let other_admin = assay_testkit::api_key_with_scope(&app.database, "tenant-b", KeyScope::Admin)
        .await
        .unwrap();
    let other = app.client.with_key(Some(other_admin));
    assert_eq!(
        other
            .get(&format!("/v1/keys/{key_id}"))
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        other
            .delete(&format!("/v1/keys/{key_id}"))
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_bad_requests_are_refused() {
    let app = TestApp::spawn().await;
    let admin_key = assay_testkit::api_key_with_scope(&app.database, "tenant-a", KeyScope::Admin)
        .await
        .unwrap();
    let admin = app.client.with_key(Some(admin_key));
    let expires_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let created = admin
        .post(
            "/v1/keys",
            &json!({"scope": "admin", "expires_at": expires_at}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["scope"], "admin");
    let expiring = app
        .client
        .with_key(Some(created.body["secret"].as_str().unwrap().to_owned()));
    assert_eq!(expiring.get("/v1/keys").await.unwrap().status, 200);

    // Its hour passes.
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = '{}'",
        id(&created.body["id"])
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(expiring.get("/v1/prompts").await.unwrap().status, 401);
    let listed = admin.get("/v1/keys").await.unwrap();
    let listed_key = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["id"] == created.body["id"])
        .unwrap()
        .clone();
    assert_eq!(listed_key["status"], "expired");

    for (body, field) in [
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "3001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"scope": "owner"}), "body"),
        (json!({"name": ""}), "name"),
    ] {
        let response = admin.post("/v1/keys", &body).await.unwrap();
        assert_eq!(response.status, 422, "{body}: {:?}", response.body);
        assert_eq!(response.body["field"], field, "{body}");
    }
    assert_eq!(
        admin.delete("/v1/keys/not-a-uuid").await.unwrap().status,
        404
    );
    assert_eq!(
        admin
            .delete(&format!("/v1/keys/{}", uuid::Uuid::now_v7()))
            .await
            .unwrap()
            .status,
        404
    );
}
