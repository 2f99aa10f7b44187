//! Evaluation results: one row per item x model, written in batches.
//!
//! A batch is `INSERT ... ON CONFLICT DO NOTHING RETURNING status` and the
//! evaluation's counters move by the rows that came back, in the same
//! transaction: a re-delivered job can neither write a row twice nor count one twice.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Double, Int8, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::Page;
use crate::db::schema::{evaluation_results, evaluations};

/// Outcome of one item x model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    Passed,
    Failed,
    /// The model could not be called, or a grader could not judge.
    Errored,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Passed => "passed",
            ResultStatus::Failed => "failed",
            ResultStatus::Errored => "errored",
        }
    }
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = evaluation_results)]
pub struct NewResult {
    pub evaluation_id: Uuid,
    pub model: String,
    pub item_position: i32,
    pub tenant_id: Uuid,
    pub item_key: String,
    pub status: &'static str,
    pub output: Option<String>,
    pub score: Option<f64>,
    pub grades: Value,
    pub latency_ms: Option<i32>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_usd: f64,
    pub attempts: i32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = evaluation_results, check_for_backend(diesel::pg::Pg))]
pub struct EvaluationResult {
    pub model: String,
    pub item_position: i32,
    pub item_key: String,
    pub status: String,
    pub output: Option<String>,
    pub score: Option<f64>,
    pub grades: Value,
    pub latency_ms: Option<i32>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost_usd: f64,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// How many rows a batch actually wrote, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub passed: i32,
    pub failed: i32,
    pub errored: i32,
}

impl Written {
    pub fn total(&self) -> i32 {
        self.passed + self.failed + self.errored
    }
}

/// Writes `rows` (all of one evaluation) and moves its counters by what was
/// actually inserted. Rows that exist already are skipped and not counted.
pub async fn insert_batch(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    evaluation_id: Uuid,
    rows: &[NewResult],
) -> QueryResult<Written> {
    debug_assert!(
        rows.iter()
            .all(|row| row.evaluation_id == evaluation_id && row.tenant_id == tenant_id)
    );
    conn.transaction(async |conn| {
        let statuses: Vec<String> = diesel::insert_into(evaluation_results::table)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(evaluation_results::status)
            .get_results(conn)
            .await?;
        let mut written = Written::default();
        for status in &statuses {
            match status.as_str() {
                "passed" => written.passed += 1,
                "failed" => written.failed += 1,
                _ => written.errored += 1,
            }
        }
        if written.total() > 0 {
            diesel::update(
                evaluations::table
                    .filter(evaluations::tenant_id.eq(tenant_id))
                    .filter(evaluations::id.eq(evaluation_id)),
            )
            .set((
                evaluations::completed.eq(evaluations::completed + written.total()),
                evaluations::passed.eq(evaluations::passed + written.passed),
                evaluations::failed.eq(evaluations::failed + written.failed),
                evaluations::errored.eq(evaluations::errored + written.errored),
                evaluations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        }
        Ok(written)
    })
    .await
}

/// (position, model) of the results that exist for items in `first..=last`:
/// what a re-run job must not do again.
pub async fn existing_keys(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    evaluation_id: Uuid,
    first: i32,
    last: i32,
) -> QueryResult<HashSet<(i32, String)>> {
    let rows: Vec<(i32, String)> = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .filter(evaluation_results::item_position.between(first, last))
        .select((evaluation_results::item_position, evaluation_results::model))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Where a page of results starts: after this (position, model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCursor {
    pub position: i32,
    pub model: String,
}

impl ResultCursor {
    /// The cursor's text form: `<position>:<model>`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.position, self.model)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (position, model) = text.split_once(':')?;
        Some(Self {
            position: position
                .parse()
                .ok()
                .filter(|position: &i32| *position >= 0)?,
            model: model.to_owned(),
        })
    }
}

/// Results in (position, model) order, after `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    evaluation_id: Uuid,
    after: Option<&ResultCursor>,
    limit: i64,
) -> QueryResult<Page<EvaluationResult>> {
    let mut query = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .order((
            evaluation_results::item_position.asc(),
            evaluation_results::model.asc(),
        ))
        .limit(limit + 1)
        .select(EvaluationResult::as_select())
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(
            evaluation_results::item_position.gt(cursor.position).or(
                evaluation_results::item_position
                    .eq(cursor.position)
                    .and(evaluation_results::model.gt(cursor.model.clone())),
            ),
        );
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// Figures of one model over its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, QueryableByName)]
pub struct ModelSummary {
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = Int8)]
    pub total: i64,
    #[diesel(sql_type = Int8)]
    pub passed: i64,
    #[diesel(sql_type = Int8)]
    pub failed: i64,
    #[diesel(sql_type = Int8)]
    pub errored: i64,
    /// passed / total.
    #[diesel(sql_type = Double)]
    pub pass_rate: f64,
    /// Mean item score over results that were graded (not errored).
    #[diesel(sql_type = Nullable<Double>)]
    pub mean_score: Option<f64>,
    /// Latency percentiles of answered calls, interpolated (`percentile_cont`).
    #[diesel(sql_type = Nullable<Double>)]
    pub latency_p50_ms: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub latency_p95_ms: Option<f64>,
    #[diesel(sql_type = Int8)]
    pub input_tokens: i64,
    #[diesel(sql_type = Int8)]
    pub output_tokens: i64,
    #[diesel(sql_type = Double)]
    pub cost_usd: f64,
}

/// Per-model figures, computed by PostgreSQL from the rows themselves.
pub async fn summarize(
    conn: &mut AsyncPgConnection,
    tenant_id: Uuid,
    evaluation_id: Uuid,
) -> QueryResult<Vec<ModelSummary>> {
    diesel::sql_query(
        "SELECT model,
                count(*) AS total,
                count(*) FILTER (WHERE status = 'passed') AS passed,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                count(*) FILTER (WHERE status = 'errored') AS errored,
                (count(*) FILTER (WHERE status = 'passed'))::float8 / count(*) AS pass_rate,
                avg(score) FILTER (WHERE status <> 'errored') AS mean_score,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
                    FILTER (WHERE output IS NOT NULL) AS latency_p50_ms,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                    FILTER (WHERE output IS NOT NULL) AS latency_p95_ms,
                coalesce(sum(input_tokens), 0)::int8 AS input_tokens,
                coalesce(sum(output_tokens), 0)::int8 AS output_tokens,
                coalesce(sum(cost_usd), 0)::float8 AS cost_usd
         FROM evaluation_results
         WHERE evaluation_id = $1 AND tenant_id = $2
         GROUP BY model",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .load(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_models_with_colons() {
        let cursor = ResultCursor {
            position: 41,
            model: "mock:latency=5ms,wrong=0.2".to_owned(),
        };
        assert_eq!(ResultCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(ResultCursor::decode("x:mock"), None);
        assert_eq!(ResultCursor::decode("-1:mock"), None);
        assert_eq!(ResultCursor::decode("12"), None);
    }
}
