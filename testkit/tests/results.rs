//! Result rows against the real PostgreSQL: what a model may answer must be
//! storable, or its chunk would fail on every retry.

use assay_core::db::models::results::{self, CallFigures, NewResult, Written};
use assay_core::ids::{EvaluationId, TenantId};
use assay_testkit::{TestDatabase, bare_evaluation};
use serde_json::json;

fn row(tenant: TenantId, evaluation: EvaluationId, position: i32, output: &str) -> NewResult {
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
        grading_cost_usd: 0.0,
        error: None,
        call: CallFigures {
            latency_ms: Some(1),
            input_tokens: 1,
            output_tokens: 1,
            cost_usd: 0.0,
            attempts: 1,
            finish_reason: Some("stop".to_owned()),
            answered_by: Some("mock".to_owned()),
            cached: false,
            cached_tokens: 0,
        },
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

/// Children carry their tenant, and the database refuses one whose tenant
/// is not its parent's: a result, chunk or dataset item of tenant B cannot
/// be filed under tenant A's evaluation or dataset.
#[tokio::test]
async fn a_row_cannot_hang_under_another_tenants_evaluation_or_dataset() {
    use diesel_async::RunQueryDsl as _;
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let (tenant_a, evaluation_a) = bare_evaluation(&mut conn, 2).await.unwrap();
    let (tenant_b, _) = bare_evaluation(&mut conn, 2).await.unwrap();
    // bare_evaluation names a tenant's dataset after the tenant.
    let dataset_a = tenant_a;

    let intruder = results::insert_batch(
        &mut conn,
        tenant_b,
        evaluation_a,
        &[row(tenant_b, evaluation_a, 0, "x")],
    )
    .await;
    let error = intruder
        .expect_err("a result of tenant B under A's evaluation")
        .to_string();
    assert!(
        error.contains("evaluation_results_tenant_evaluation_fkey"),
        "{error}"
    );

    for (statement, constraint) in [
        (
            format!(
                "INSERT INTO evaluation_chunks (evaluation_id, chunk_index, tenant_id, model, first_position, last_position)
                 VALUES ('{evaluation_a}', 0, '{tenant_b}', 'mock', 0, 1)"
            ),
            "evaluation_chunks_tenant_evaluation_fkey",
        ),
        (
            format!(
                "INSERT INTO dataset_items (dataset_id, position, tenant_id, item_key, vars)
                 VALUES ('{dataset_a}', 0, '{tenant_b}', 'k', '{{}}')"
            ),
            "dataset_items_tenant_dataset_fkey",
        ),
    ] {
        let error = diesel::sql_query(&statement)
            .execute(&mut conn)
            .await
            .expect_err(constraint)
            .to_string();
        assert!(error.contains(constraint), "{error}");
        // The owner's own row is taken: the key checks the tenant, nothing else.
        let owned = statement.replace(&tenant_b.to_string(), &tenant_a.to_string());
        diesel::sql_query(&owned).execute(&mut conn).await.unwrap();
    }
    results::insert_batch(
        &mut conn,
        tenant_a,
        evaluation_a,
        &[row(tenant_a, evaluation_a, 0, "x")],
    )
    .await
    .expect("the owner's result");
}
