//! Cost of writing one result row: 20,000 rows in 500-row batches through
//! `insert_batch` (the worker's path: INSERT ... ON CONFLICT DO NOTHING
//! RETURNING plus the counter update) into a fresh database. Prints
//! `result_write: <ns> ns/row` for `make bench`.

use std::time::Instant;

use assay_core::db::models::results::{self, CallFigures, NewResult};
use assay_testkit::TestDatabase;
use serde_json::json;

const ROWS: usize = 20_000;
const BATCH: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let pool = database.pool(2);
    let mut conn = pool.get().await?;
    let (tenant, evaluation) = assay_testkit::bare_evaluation(&mut conn, ROWS).await?;
    let grades = json!([{"grader": "contains", "passed": true, "score": 1.0, "reason": "output contains \"Paris\""},
                        {"grader": "is-json", "passed": false, "score": 0.0, "reason": "output is not JSON"}]);
    let rows: Vec<NewResult> = (0..ROWS)
        .map(|position| NewResult {
            evaluation_id: evaluation,
            model: "mock".to_owned(),
            item_position: i32::try_from(position).unwrap(),
            repeat_index: 0,
            tenant_id: tenant,
            item_key: format!("item-{position}"),
            status: "failed",
            output: Some("The capital of France is Paris, on the Seine.".to_owned()),
            score: Some(0.5),
            grades: grades.clone(),
            grading_cost_usd: 0.0,
            error: None,
            call: CallFigures {
                latency_ms: Some(120),
                input_tokens: 20,
                output_tokens: 9,
                cost_usd: 0.000_038,
                attempts: 1,
                finish_reason: Some("stop".to_owned()),
                answered_by: Some("mock".to_owned()),
                cached: false,
                cached_tokens: 0,
            },
        })
        .collect();
    let started = Instant::now();
    for batch in rows.chunks(BATCH) {
        results::insert_batch(&mut conn, tenant, evaluation, batch).await?;
    }
    let per_row = started.elapsed().as_nanos() / ROWS as u128;
    println!("result_write: {per_row} ns/row ({ROWS} rows in batches of {BATCH})");
    Ok(())
}
