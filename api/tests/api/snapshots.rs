//! Snapshots of the API's public JSON: an unintended change to a response's
//! shape shows up as a changed file under `snapshots/` in review.
//!
//! Ids are replaced by labels in order of first appearance (`[id-3]`), so a
//! snapshot still shows which response refers to which resource, and times
//! by `[time]`. A mismatch fails the test; `INSTA_UPDATE=always cargo test
//! -p assay-api --test api -- snapshots` (or `cargo insta review`) accepts a
//! change that was meant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use assay_testkit::client::Response;
use insta::internals::Content;
use serde_json::{Value, json};

use crate::{TestApp, id};

/// Status, content type, `Location` and body: what a client sees.
fn seen(response: &Response) -> Value {
    json!({
        "status": response.status,
        "content_type": response.content_type,
        "location": response.location,
        "body": response.body,
    })
}

/// Labels for ids, shared by every snapshot of one test.
#[derive(Clone, Default)]
struct Labels(Arc<Mutex<HashMap<uuid::Uuid, String>>>);

impl Labels {
    /// `text` with every id in it replaced by its label; a time is `[time]`.
    fn redact_text(&self, text: &str) -> String {
        if chrono::DateTime::parse_from_rfc3339(text).is_ok() {
            return "[time]".to_owned();
        }
        const LENGTH: usize = 36;
        let mut redacted = String::with_capacity(text.len());
        let mut rest = text;
        while !rest.is_empty() {
            let candidate = rest.get(..LENGTH).and_then(|head| {
                // Only the hyphenated form, so that a hex hash is left alone.
                (head.as_bytes()[8] == b'-')
                    .then(|| uuid::Uuid::try_parse(head).ok())
                    .flatten()
            });
            match candidate {
                Some(uuid) => {
                    let mut labels = self.0.lock().unwrap();
                    let next = labels.len() + 1;
                    let label = labels.entry(uuid).or_insert_with(|| format!("[id-{next}]"));
                    redacted.push_str(label);
                    rest = &rest[LENGTH..];
                }
                None => {
                    let mut chars = rest.chars();
                    redacted.extend(chars.next());
                    rest = chars.as_str();
                }
            }
        }
        redacted
    }

    fn redact(&self, content: Content) -> Content {
        match content {
            Content::String(text) => Content::String(self.redact_text(&text)),
            Content::Seq(items) => {
                Content::Seq(items.into_iter().map(|item| self.redact(item)).collect())
            }
            Content::Map(entries) => Content::Map(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, self.redact(value)))
                    .collect(),
            ),
            Content::Some(inner) => Content::Some(Box::new(self.redact(*inner))),
            other => other,
        }
    }
}

/// Snapshot settings: the redactions, and no Rust expression in the files
/// (renaming a variable is no change to the JSON).
fn settings(labels: &Labels) -> insta::Settings {
    // A snapshot that does not match must fail in CI (`.ci/run` sets
    // INSTA_UPDATE=no), not be accepted while the test passes.
    if std::env::var_os("CI").is_some() || std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "no") {
        let update = std::env::var("INSTA_UPDATE").unwrap_or_default();
        assert!(
            !matches!(update.as_str(), "always" | "1" | "force" | "unseen"),
            "INSTA_UPDATE={update} would accept changed snapshots in CI"
        );
        assert!(
            std::env::var("INSTA_FORCE_PASS").is_err(),
            "INSTA_FORCE_PASS would pass changed snapshots in CI"
        );
    }
    let mut settings = insta::Settings::clone_current();
    settings.set_omit_expression(true);
    settings.set_prepend_module_to_snapshot(false);
    let labels = labels.clone();
    // Every value below the top level, whatever its field: ids and times
    // anywhere (bodies, `Location`, cursors) are covered.
    settings.add_dynamic_redaction(".**", move |value, _path| labels.redact(value));
    settings
}

#[tokio::test]
async fn response_shapes() {
    let labels = Labels::default();
    settings(&labels).bind_async(shapes()).await;
}

async fn shapes() {
    let app = TestApp::spawn().await;
    let client = &app.client;

    let prompt = client
        .post(
            "/v1/prompts",
            &json!({"name": "capitals", "messages": [{"role": "user", "content": "Capital of {{ question }}?"}]}),
        )
        .await
        .unwrap();
    assert_eq!(prompt.status, 201, "{:?}", prompt.body);
    insta::assert_json_snapshot!("prompt_created", seen(&prompt));
    let prompt_id = id(&prompt.body["id"]);

    let version = client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Capital of {{ question }}?"}],
                    "commit_message": "brief answers"}),
        )
        .await
        .unwrap();
    assert_eq!(version.status, 201, "{:?}", version.body);
    insta::assert_json_snapshot!("version_created", seen(&version));
    let version_id = id(&version.body["id"]);

    let fetched = client
        .get(&format!("/v1/prompts/{prompt_id}"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("prompt", seen(&fetched));
    let versions = client
        .get(&format!("/v1/prompts/{prompt_id}/versions?limit=1"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("versions_first_page", seen(&versions));
    let version_two = client
        .get(&format!("/v1/prompts/{prompt_id}/versions/2"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("version", seen(&version_two));

    let second = app.prompt(client, "other", "{{ question }}").await;
    assert!(!second.0.is_empty());
    let prompts = client.get("/v1/prompts?limit=1").await.unwrap();
    insta::assert_json_snapshot!("prompts_first_page", seen(&prompts));

    let dataset = client
        .post(
            "/v1/datasets",
            &json!({"name": "capitals", "items": [
                {"id": "fr", "vars": {"question": "France"}, "expected": "Paris"},
                {"id": "jp", "vars": {"question": "Japan"}, "expected": "Tokyo"},
                {"vars": {"question": "Peru"}, "expected": "Lima"},
            ]}),
        )
        .await
        .unwrap();
    assert_eq!(dataset.status, 201, "{:?}", dataset.body);
    insta::assert_json_snapshot!("dataset_created", seen(&dataset));
    let dataset_id = id(&dataset.body["id"]);
    let fetched = client
        .get(&format!("/v1/datasets/{dataset_id}"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("dataset", seen(&fetched));
    let items = client
        .get(&format!("/v1/datasets/{dataset_id}/items?limit=2"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("dataset_items_first_page", seen(&items));
    let datasets = client.get("/v1/datasets").await.unwrap();
    insta::assert_json_snapshot!("datasets", seen(&datasets));

    // No worker runs in these tests: the evaluation stays queued.
    let evaluation = client
        .post(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": version_id,
                "dataset_id": dataset_id,
                "models": ["mock"],
                "graders": [{"type": "equals", "value": "{{ expected }}"},
                            {"type": "regex", "pattern": "^[A-Z]"}],
            }),
        )
        .await
        .unwrap();
    assert_eq!(evaluation.status, 202, "{:?}", evaluation.body);
    insta::assert_json_snapshot!("evaluation_submitted", seen(&evaluation));
    let evaluation_id = id(&evaluation.body["id"]);
    let fetched = client
        .get(&format!("/v1/evaluations/{evaluation_id}"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("evaluation", seen(&fetched));
    let evaluations = client.get("/v1/evaluations").await.unwrap();
    insta::assert_json_snapshot!("evaluations", seen(&evaluations));
    let results = client
        .get(&format!("/v1/evaluations/{evaluation_id}/results"))
        .await
        .unwrap();
    insta::assert_json_snapshot!("evaluation_results_none_yet", seen(&results));

    // Problems (RFC 9457): invalid input naming the field, and not found.
    let invalid = client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version_id, "dataset_id": dataset_id,
                    "models": [], "graders": [{"type": "is-json"}]}),
        )
        .await
        .unwrap();
    insta::assert_json_snapshot!("problem_invalid_input", seen(&invalid));
    let missing = client
        .get(&format!("/v1/evaluations/{}", uuid::Uuid::nil()))
        .await
        .unwrap();
    insta::assert_json_snapshot!("problem_not_found", seen(&missing));
}
