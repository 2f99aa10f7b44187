//! Result rows against the real PostgreSQL: what a model may answer must be
//! storable, or its chunk would fail on every retry.

use assay_core::db::models::results::{self, NewResult, Written};
use assay_testkit::{TestDatabase, bare_evaluation};
use serde_json::json;
use uuid::Uuid;

fn row(tenant: Uuid, evaluation: Uuid, position: i32, output: &str) -> NewResult {
    NewResult {
        evaluation_id: evaluation,
        model: "mock".to_owned(),
        item_position: position,
        repeat_index: 0,
        tenant_id: tenant,
        item_key: format!("item-{position}"),
        status: "failed",
        output: Some(output.to_owned()),
        score: Some(0.0),
        grades: json!([{"grader": "equals", "passed": false, "score": 0.0,
                        "reason": format!("expected \"x\", got {output:?}"),
                        "quoted\u{0}key": output}]),
        latency_ms: Some(1),
        input_tokens: 1,
        output_tokens: 1,
        cost_usd: 0.0,
        grading_cost_usd: 0.0,
        attempts: 1,
        finish_reason: Some("stop".to_owned()),
        error: None,
        answered_by: Some("mock".to_owned()),
        cached: false,
        cached_tokens: 0,
    }
}

#[tokio::test]
async fn an_output_with_nul_characters_is_stored_with_replacements_once() {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let (tenant, evaluation) = bare_evaluation(&mut conn, 8).await.unwrap();
    let rows: Vec<NewResult> = (0..8)
        .map(|position| {
            let output = if position == 3 {
                "a\u{0}b\u{0}"
            } else {
                "plain"
            };
            row(tenant, evaluation, position, output)
        })
        .collect();
    let written = results::insert_batch(&mut conn, tenant, evaluation, &rows)
        .await
        .expect("the batch with a NUL is written");
    assert_eq!(
        written,
        Written {
            failed: 8,
            ..Written::default()
        }
    );
    // Written once: the same batch again inserts nothing.
    let again = results::insert_batch(&mut conn, tenant, evaluation, &rows)
        .await
        .unwrap();
    assert_eq!(again.total(), 0);

    let page = results::page(&mut conn, tenant, evaluation, None, 100)
        .await
        .unwrap();
    let stored = page
        .data
        .iter()
        .find(|result| result.item_position == 3)
        .unwrap();
    assert_eq!(stored.output.as_deref(), Some("a\u{FFFD}b\u{FFFD}"));
    let grade = &stored.grades[0];
    assert_eq!(grade["quoted\u{FFFD}key"], "a\u{FFFD}b\u{FFFD}");
    assert!(grade["reason"].as_str().unwrap().contains("\\0"), "{grade}");
    let plain = page
        .data
        .iter()
        .find(|result| result.item_position == 0)
        .unwrap();
    assert_eq!(plain.output.as_deref(), Some("plain"));
}
