//! Evaluation results: one row per item x model, written in batches.
//!
//! A batch is `INSERT ... ON CONFLICT DO NOTHING RETURNING status` and the
//! evaluation's counters move by the rows that came back, in the same
//! transaction: a re-delivered job can neither write a row twice nor count one twice.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Double, Int8, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Page;
use crate::db::schema::{evaluation_results, evaluations};
use crate::ids::{DatasetId, EvaluationId, TenantId};

/// Outcome of one item x model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// How a run's generation went: what every shape of a result row carries
/// (the row written, the row read, a re-grading's source), declared once
/// and embedded in each.
#[derive(Debug, Clone, Default, PartialEq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = evaluation_results, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallFigures {
    pub latency_ms: Option<i32>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    /// What generation cost.
    pub cost_usd: f64,
    pub attempts: i32,
    pub finish_reason: Option<String>,
    /// The model that answered (this row's model or a fallback); None when none did.
    pub answered_by: Option<String>,
    pub cached: bool,
    pub cached_tokens: i32,
}

/// A result row as written.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = evaluation_results)]
pub struct NewResult {
    pub evaluation_id: EvaluationId,
    pub model: String,
    pub item_position: i32,
    pub repeat_index: i32,
    pub tenant_id: TenantId,
    pub item_key: String,
    pub status: &'static str,
    pub output: Option<String>,
    pub score: Option<f64>,
    pub grades: Value,
    pub grading_cost_usd: f64,
    pub error: Option<String>,
    #[diesel(embed)]
    pub call: CallFigures,
}

/// A result row as read.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = evaluation_results, check_for_backend(diesel::pg::Pg))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationResult {
    pub model: String,
    pub item_position: i32,
    pub repeat_index: i32,
    pub item_key: String,
    pub status: String,
    pub output: Option<String>,
    pub score: Option<f64>,
    pub grades: Value,
    pub grading_cost_usd: f64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[diesel(embed)]
    #[serde(flatten)]
    pub call: CallFigures,
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

/// What PostgreSQL cannot store in `text` or `jsonb`: a model's output with
/// NUL characters would fail its batch on every retry (and re-bill its calls).
/// It is stored with U+FFFD in their place.
const NUL: char = '\0';
const REPLACEMENT: &str = "\u{FFFD}";

impl NewResult {
    /// A run that ended without an answer, for `reason`, with nothing spent.
    pub fn errored(
        evaluation: &super::evaluations::Evaluation,
        model: &str,
        item_position: i32,
        repeat_index: i32,
        item_key: &str,
        reason: &str,
    ) -> Self {
        Self {
            evaluation_id: evaluation.id,
            model: model.to_owned(),
            item_position,
            repeat_index,
            tenant_id: evaluation.tenant_id,
            item_key: item_key.to_owned(),
            status: ResultStatus::Errored.as_str(),
            output: None,
            score: None,
            grades: Value::Array(Vec::new()),
            grading_cost_usd: 0.0,
            error: Some(reason.to_owned()),
            call: CallFigures::default(),
        }
    }

    /// Whether any text of the row holds a NUL character.
    fn holds_nul(&self) -> bool {
        let text = |text: &Option<String>| text.as_deref().is_some_and(|text| text.contains(NUL));
        text(&self.output)
            || text(&self.error)
            || text(&self.call.finish_reason)
            || crate::domain::holds_nul(&self.grades)
    }

    /// The row with U+FFFD for every NUL character.
    fn without_nul(&self) -> Self {
        let text = |text: &Option<String>| text.as_ref().map(|text| text.replace(NUL, REPLACEMENT));
        let mut grades = self.grades.clone();
        replace_nul_in_json(&mut grades);
        Self {
            output: text(&self.output),
            error: text(&self.error),
            grades,
            call: CallFigures {
                finish_reason: text(&self.call.finish_reason),
                ..self.call.clone()
            },
            ..self.clone()
        }
    }
}

fn replace_nul_in_json(value: &mut Value) {
    match value {
        Value::String(text) if text.contains(NUL) => *text = text.replace(NUL, REPLACEMENT),
        Value::Array(values) => values.iter_mut().for_each(replace_nul_in_json),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut value) in entries {
                replace_nul_in_json(&mut value);
                map.insert(key.replace(NUL, REPLACEMENT), value);
            }
        }
        _ => {}
    }
}

/// Writes `rows` (all of one evaluation) and moves its counters by what was
/// actually inserted. Rows that exist already are skipped and not counted.
/// NUL characters, which PostgreSQL cannot store, are written as U+FFFD.
pub async fn insert_batch(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    rows: &[NewResult],
) -> QueryResult<Written> {
    debug_assert!(
        rows.iter()
            .all(|row| row.evaluation_id == evaluation_id && row.tenant_id == tenant_id)
    );
    let replaced: Vec<NewResult>;
    let rows = if rows.iter().any(NewResult::holds_nul) {
        replaced = rows.iter().map(NewResult::without_nul).collect();
        let altered = rows.iter().filter(|row| row.holds_nul()).count();
        metrics::counter!("assay_results_nul_replaced_total").increment(altered as u64);
        tracing::warn!(
            %evaluation_id,
            rows = altered,
            "results held NUL characters; stored with U+FFFD in their place"
        );
        &replaced[..]
    } else {
        rows
    };
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

/// (position, repeat) of one run of one model.
pub type RunKey = (i32, i32);

/// Keys of `model`'s results that exist for items in `first..=last`: what a
/// re-run chunk must not do again.
pub async fn existing_keys(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    model: &str,
    first: i32,
    last: i32,
) -> QueryResult<HashSet<RunKey>> {
    let rows: Vec<RunKey> = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .filter(evaluation_results::item_position.between(first, last))
        .filter(evaluation_results::model.eq(model))
        .select((
            evaluation_results::item_position,
            evaluation_results::repeat_index,
        ))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// `model`'s result rows for items in `first..=last` (every repeat).
pub async fn count_in_range(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    model: &str,
    first: i32,
    last: i32,
) -> QueryResult<i64> {
    evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .filter(evaluation_results::item_position.between(first, last))
        .filter(evaluation_results::model.eq(model))
        .count()
        .get_result(conn)
        .await
}

/// What a re-grading takes from its source evaluation for one run.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = evaluation_results, check_for_backend(diesel::pg::Pg))]
pub struct StoredOutput {
    pub item_position: i32,
    pub model: String,
    pub repeat_index: i32,
    pub output: Option<String>,
    pub error: Option<String>,
    #[diesel(embed)]
    pub call: CallFigures,
}

/// `model`'s stored outputs of items in `first..=last`, by run.
pub async fn stored_outputs(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    model: &str,
    first: i32,
    last: i32,
) -> QueryResult<HashMap<RunKey, StoredOutput>> {
    let rows: Vec<StoredOutput> = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .filter(evaluation_results::item_position.between(first, last))
        .filter(evaluation_results::model.eq(model))
        .select(StoredOutput::as_select())
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.item_position, row.repeat_index), row))
        .collect())
}

/// Where a page of results starts: after this (position, model, repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCursor {
    pub position: i32,
    pub model: String,
    pub repeat: i32,
}

impl ResultCursor {
    /// The cursor's text form: `<position>:<repeat>:<model>` (the model last,
    /// since model names may hold colons).
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.position, self.repeat, self.model)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (position, rest) = text.split_once(':')?;
        let (repeat, model) = rest.split_once(':')?;
        Some(Self {
            position: position
                .parse()
                .ok()
                .filter(|position: &i32| *position >= 0)?,
            repeat: repeat.parse().ok().filter(|repeat: &i32| *repeat >= 0)?,
            model: model.to_owned(),
        })
    }
}

/// Results in (position, model, repeat) order, after `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    after: Option<&ResultCursor>,
    limit: i64,
) -> QueryResult<Page<EvaluationResult>> {
    let query = page_query(tenant_id, evaluation_id, after, limit);
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

type PageQuery = evaluation_results::BoxedQuery<
    'static,
    diesel::pg::Pg,
    diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<EvaluationResult, diesel::pg::Pg>>,
>;

/// One page of an evaluation's results in (position, model, repeat) order
/// after `after`, one row over `limit` (to tell whether a next page exists):
/// the keyset both [`page`] and [`page_filtered`] read.
fn page_query(
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    after: Option<&ResultCursor>,
    limit: i64,
) -> PageQuery {
    use evaluation_results::{item_position, model, repeat_index};
    let mut query = evaluation_results::table
        .filter(evaluation_results::evaluation_id.eq(evaluation_id))
        .filter(evaluation_results::tenant_id.eq(tenant_id))
        .order((item_position.asc(), model.asc(), repeat_index.asc()))
        .limit(limit + 1)
        .select(EvaluationResult::as_select())
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(
            item_position
                .gt(cursor.position)
                .or(item_position.eq(cursor.position).and(
                    model.gt(cursor.model.clone()).or(model
                        .eq(cursor.model.clone())
                        .and(repeat_index.gt(cursor.repeat))),
                )),
        );
    }
    query
}

/// Figures of one model over its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, QueryableByName)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Input tokens the provider served from its prompt cache.
    #[serde(default)]
    #[diesel(sql_type = Int8)]
    pub cached_tokens: i64,
    #[diesel(sql_type = Double)]
    pub cost_usd: f64,
    /// What judge calls cost, apart from generation.
    #[diesel(sql_type = Double)]
    pub grading_cost_usd: f64,
    /// Requests sent upstream for generation, retries and fallbacks included.
    #[serde(default)]
    #[diesel(sql_type = Int8)]
    pub attempts: i64,
    /// Results answered from the response cache (no call, no cost).
    #[serde(default)]
    #[diesel(sql_type = Int8)]
    pub cached_results: i64,
    /// Results answered by one of the model's fallbacks.
    #[serde(default)]
    #[diesel(sql_type = Int8)]
    pub fallback_results: i64,
}

/// Per-model figures, computed by PostgreSQL from the rows themselves.
pub async fn summarize(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
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
                coalesce(sum(cached_tokens), 0)::int8 AS cached_tokens,
                coalesce(sum(cost_usd), 0)::float8 AS cost_usd,
                coalesce(sum(grading_cost_usd), 0)::float8 AS grading_cost_usd,
                coalesce(sum(attempts), 0)::int8 AS attempts,
                count(*) FILTER (WHERE cached) AS cached_results,
                count(*) FILTER (WHERE answered_by IS NOT NULL AND answered_by <> model) AS fallback_results
         FROM evaluation_results
         WHERE evaluation_id = $1 AND tenant_id = $2
         GROUP BY model",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .load(conn)
    .await
}

/// Figures of one grader on one model: an evaluation grader by its index in
/// the evaluation's list; items' own graders grouped by type (their lists
/// differ from item to item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, QueryableByName)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GraderSummary {
    /// Index in the evaluation's graders; None for items' graders.
    #[diesel(sql_type = Nullable<Int8>)]
    pub index: Option<i64>,
    #[diesel(sql_type = Text)]
    pub grader: String,
    /// `evaluation` or `item`: where the grader came from.
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Text)]
    pub model: String,
    /// Results this grader judged or failed to judge.
    #[diesel(sql_type = Int8)]
    pub total: i64,
    #[diesel(sql_type = Int8)]
    pub passed: i64,
    /// Judged and not passed.
    #[diesel(sql_type = Int8)]
    pub failed: i64,
    /// Could not judge (grader errors), counted apart from failures.
    #[diesel(sql_type = Int8)]
    pub errors: i64,
    /// passed / (passed + failed).
    #[diesel(sql_type = Nullable<Double>)]
    pub pass_rate: Option<f64>,
    /// Mean score over judged results.
    #[diesel(sql_type = Nullable<Double>)]
    pub mean_score: Option<f64>,
}

/// Per grader and model, from the grades stored with each result. Grades
/// without a `source` were written before items had graders: the
/// evaluation's. Evaluation graders come first (by index), then items'
/// graders by type.
pub async fn summarize_graders(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
) -> QueryResult<Vec<GraderSummary>> {
    diesel::sql_query(
        "WITH grades AS (
             SELECT r.model, g.grade,
                    coalesce(g.grade->>'source', 'evaluation') AS source,
                    CASE WHEN coalesce(g.grade->>'source', 'evaluation') = 'evaluation'
                         THEN (g.ordinality - 1)::int8 END AS index,
                    CASE WHEN g.grade->>'source' = 'item' THEN g.grade->>'grader' END AS item_grader
             FROM evaluation_results r,
                  jsonb_array_elements(r.grades) WITH ORDINALITY AS g(grade, ordinality)
             WHERE r.evaluation_id = $1 AND r.tenant_id = $2
         )
         SELECT index,
                min(grade->>'grader') AS grader,
                source,
                model,
                count(*) AS total,
                count(*) FILTER (WHERE (grade->>'passed')::boolean AND NOT grade ? 'error') AS passed,
                count(*) FILTER (WHERE NOT (grade->>'passed')::boolean AND NOT grade ? 'error') AS failed,
                count(*) FILTER (WHERE grade ? 'error') AS errors,
                (count(*) FILTER (WHERE (grade->>'passed')::boolean AND NOT grade ? 'error'))::float8
                    / nullif(count(*) FILTER (WHERE NOT grade ? 'error'), 0) AS pass_rate,
                avg((grade->>'score')::float8) FILTER (WHERE NOT grade ? 'error') AS mean_score
         FROM grades
         GROUP BY source, index, item_grader, model
         ORDER BY source, index, item_grader, model",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .load(conn)
    .await
}

/// What an evaluation's results add up to so far: what a client shows
/// while it runs (the evaluation's row has the counts, not the cost).
#[derive(Debug, Clone, PartialEq, Serialize, QueryableByName)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    #[diesel(sql_type = Int8)]
    pub completed: i64,
    #[diesel(sql_type = Int8)]
    pub passed: i64,
    #[diesel(sql_type = Int8)]
    pub failed: i64,
    #[diesel(sql_type = Int8)]
    pub errored: i64,
    /// Generation and judge calls.
    #[diesel(sql_type = Double)]
    pub cost_usd: f64,
}

/// One aggregate over the evaluation's results (by its primary key prefix).
pub async fn progress(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
) -> QueryResult<Progress> {
    diesel::sql_query(
        "SELECT count(*) AS completed,
                count(*) FILTER (WHERE status = 'passed') AS passed,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                count(*) FILTER (WHERE status = 'errored') AS errored,
                coalesce(sum(cost_usd + grading_cost_usd), 0)::float8 AS cost_usd
         FROM evaluation_results
         WHERE evaluation_id = $1 AND tenant_id = $2",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .get_result(conn)
    .await
}

/// Passes and runs of one item on one model.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct ItemRuns {
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = Text)]
    pub item_key: String,
    #[diesel(sql_type = Int8)]
    pub passes: i64,
    #[diesel(sql_type = Int8)]
    pub runs: i64,
}

pub async fn item_runs(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
) -> QueryResult<Vec<ItemRuns>> {
    diesel::sql_query(
        "SELECT model, min(item_key) AS item_key,
                count(*) FILTER (WHERE status = 'passed') AS passes, count(*) AS runs
         FROM evaluation_results
         WHERE evaluation_id = $1 AND tenant_id = $2
         GROUP BY model, item_position
         ORDER BY model, item_position",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .load(conn)
    .await
}

/// Pass statistics of one model over items run `k` times each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepeatStats {
    /// Runs per item.
    pub k: i64,
    /// Mean over items of their pass fraction.
    pub mean_pass_rate: f64,
    /// 95% confidence interval of that mean: ±1.96 standard errors of the
    /// per-item pass fractions (clustered by item, since runs of one item are
    /// not independent), clamped to [0, 1].
    pub pass_rate_ci95: [f64; 2],
    /// Share of items with at least one passing run among k (pass@k).
    pub pass_at_k: f64,
    /// Share of items whose k runs all pass (pass^k).
    pub pass_pow_k: f64,
    /// Items whose runs disagree (some pass, some do not), by item id.
    pub flaky_items: Vec<String>,
    /// Pass fraction of every item, by item id, in item order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<serde_json::Value>>))]
    pub item_pass_fractions: Vec<(String, f64)>,
}

impl RepeatStats {
    /// Statistics over `items` (one model's), each with its passes and runs.
    pub fn compute(items: &[&ItemRuns]) -> Option<Self> {
        let k = items.iter().map(|item| item.runs).max()?;
        let fractions: Vec<f64> = items
            .iter()
            .map(|item| item.passes as f64 / item.runs as f64)
            .collect();
        let n = fractions.len() as f64;
        let mean = fractions.iter().sum::<f64>() / n;
        let variance = if fractions.len() > 1 {
            fractions
                .iter()
                .map(|fraction| (fraction - mean).powi(2))
                .sum::<f64>()
                / (n - 1.0)
        } else {
            0.0
        };
        let half_width = 1.96 * (variance / n).sqrt();
        Some(Self {
            k,
            mean_pass_rate: mean,
            pass_rate_ci95: [(mean - half_width).max(0.0), (mean + half_width).min(1.0)],
            pass_at_k: items.iter().filter(|item| item.passes > 0).count() as f64 / n,
            pass_pow_k: items.iter().filter(|item| item.passes == item.runs).count() as f64 / n,
            flaky_items: items
                .iter()
                .filter(|item| item.passes > 0 && item.passes < item.runs)
                .map(|item| item.item_key.clone())
                .collect(),
            item_pass_fractions: items
                .iter()
                .zip(&fractions)
                .map(|(item, fraction)| (item.item_key.clone(), *fraction))
                .collect(),
        })
    }
}

/// What a results page may be narrowed to (all optional, combined with AND).
/// Every filter keeps the keyset order, so a page stops after `limit + 1`
/// matching rows however many rows the evaluation has.
#[derive(Debug, Clone, Default)]
pub struct ResultFilter {
    pub model: Option<String>,
    pub status: Option<ResultStatus>,
    /// Rows whose evaluation grader at this index (in `grades`) did not pass.
    pub failed_grader: Option<i32>,
    /// Case-insensitive substring of the output or of the item's variables
    /// (their JSON text).
    pub text: Option<String>,
    /// Only these item positions (a comparison's changed items).
    pub positions: Option<Vec<i32>>,
}

/// `text` as a literal `ILIKE` pattern: `%`, `_` and `\` match themselves.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for character in text.chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

/// [`page`] narrowed by `filter`. `dataset_id` is the evaluation's dataset,
/// whose items' variables the text search reads.
pub async fn page_filtered(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    dataset_id: DatasetId,
    filter: &ResultFilter,
    after: Option<&ResultCursor>,
    limit: i64,
) -> QueryResult<Page<EvaluationResult>> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Bool, Int4};
    use evaluation_results::{item_position, model};
    let mut query = page_query(tenant_id, evaluation_id, after, limit);
    if let Some(name) = &filter.model {
        query = query.filter(model.eq(name.clone()));
    }
    if let Some(status) = filter.status {
        query = query.filter(evaluation_results::status.eq(status.as_str()));
    }
    if let Some(index) = filter.failed_grader {
        query = query.filter(
            sql::<Bool>("coalesce((evaluation_results.grades -> ")
                .bind::<Int4, _>(index)
                .sql(" ->> 'passed') = 'false', false)"),
        );
    }
    if let Some(positions) = &filter.positions {
        query = query.filter(item_position.eq_any(positions.clone()));
    }
    if let Some(text) = &filter.text {
        let pattern = like_pattern(text);
        query = query.filter(
            // A substring of the lowered output: about three times cheaper
            // per row than ILIKE, and every row of a rare term is read.
            sql::<Bool>("(strpos(lower(coalesce(evaluation_results.output, '')), lower(")
                .bind::<Text, _>(text.clone())
                .sql(")) > 0")
                // The matching items through their trigram index, as one
                // hashed set, not a lookup per result row.
                .sql(" OR evaluation_results.item_position IN (SELECT di.position FROM dataset_items di WHERE di.dataset_id = ")
                .bind::<SqlUuid, _>(dataset_id)
                .sql(" AND di.tenant_id = ")
                .bind::<SqlUuid, _>(tenant_id)
                .sql(" AND di.vars::text ILIKE ")
                .bind::<Text, _>(pattern)
                .sql("))"),
        );
    }
    Ok(Page::from_overfetched(query.load(conn).await?, limit))
}

/// The variables of some items of a dataset, by position (one page's worth).
pub async fn item_vars(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    dataset_id: DatasetId,
    positions: &[i32],
) -> QueryResult<HashMap<i32, Value>> {
    use crate::db::schema::dataset_items;
    Ok(dataset_items::table
        .filter(dataset_items::dataset_id.eq(dataset_id))
        .filter(dataset_items::tenant_id.eq(tenant_id))
        .filter(dataset_items::position.eq_any(positions))
        .select((dataset_items::position, dataset_items::vars))
        .load::<(i32, Value)>(conn)
        .await?
        .into_iter()
        .collect())
}

/// Answered calls of one model counted into equal-width latency buckets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LatencyHistogram {
    /// The buckets span `[low_ms, high_ms]` over every model's answered calls.
    pub low_ms: i32,
    pub high_ms: i32,
    pub bucket_ms: f64,
    pub models: Vec<ModelLatencies>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelLatencies {
    pub model: String,
    pub counts: Vec<i64>,
}

#[derive(QueryableByName)]
struct LatencyBucket {
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    bucket: i32,
    #[diesel(sql_type = Int8)]
    count: i64,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    low: i32,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    high: i32,
}

/// The latency histogram of an evaluation: one aggregate in PostgreSQL, at
/// most `buckets` rows per model come back. None when no call was answered.
pub async fn latency_histogram(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
    buckets: i32,
) -> QueryResult<Option<LatencyHistogram>> {
    let rows: Vec<LatencyBucket> = diesel::sql_query(
        "WITH answered AS (
             SELECT model, latency_ms FROM evaluation_results
             WHERE evaluation_id = $1 AND tenant_id = $2 AND latency_ms IS NOT NULL),
         bounds AS (SELECT min(latency_ms) AS low, max(latency_ms) AS high FROM answered)
         SELECT model,
                -- width_bucket's upper bound is exclusive: the slowest call goes in the last bucket
                least(width_bucket(latency_ms, low, high + 1, $3), $3) AS bucket,
                count(*) AS count, low, high
         FROM answered, bounds
         GROUP BY model, bucket, low, high
         ORDER BY model, bucket",
    )
    .bind::<SqlUuid, _>(evaluation_id)
    .bind::<SqlUuid, _>(tenant_id)
    .bind::<diesel::sql_types::Int4, _>(buckets)
    .load(conn)
    .await?;
    let Some(first) = rows.as_slice().first() else {
        return Ok(None);
    };
    let (low, high) = (first.low, first.high);
    let mut models: Vec<ModelLatencies> = Vec::new();
    for row in &rows {
        if models.last().is_none_or(|last| last.model != row.model) {
            models.push(ModelLatencies {
                model: row.model.clone(),
                counts: vec![0; usize::try_from(buckets).unwrap_or(0)],
            });
        }
        let slot = usize::try_from(row.bucket - 1).unwrap_or(0);
        if let Some(count) = models.last_mut().and_then(|last| last.counts.get_mut(slot)) {
            *count += row.count;
        }
    }
    Ok(Some(LatencyHistogram {
        low_ms: low,
        high_ms: high,
        bucket_ms: f64::from(high + 1 - low) / f64::from(buckets),
        models,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_models_with_colons() {
        let cursor = ResultCursor {
            position: 41,
            model: "mock:latency=5ms,wrong=0.2".to_owned(),
            repeat: 3,
        };
        assert_eq!(ResultCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(ResultCursor::decode("x:0:mock"), None);
        assert_eq!(ResultCursor::decode("-1:0:mock"), None);
        assert_eq!(ResultCursor::decode("12:mock"), None);
        assert_eq!(ResultCursor::decode("12"), None);
    }

    fn runs(key: &str, passes: i64, runs: i64) -> ItemRuns {
        ItemRuns {
            model: "m".to_owned(),
            item_key: key.to_owned(),
            passes,
            runs,
        }
    }

    #[test]
    fn repeat_statistics_by_hand() {
        // Pass fractions 1, 0.8, 0.6, 0.8: mean 0.8; pass@5 = 1; pass^5 = 1/4; flaky: b, c, d.
        let items = [
            runs("a", 5, 5),
            runs("b", 4, 5),
            runs("c", 3, 5),
            runs("d", 4, 5),
        ];
        let stats = RepeatStats::compute(&items.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(stats.k, 5);
        assert!((stats.mean_pass_rate - 0.8).abs() < 1e-12);
        assert_eq!(stats.pass_at_k, 1.0);
        assert_eq!(stats.pass_pow_k, 0.25);
        assert_eq!(stats.flaky_items, ["b", "c", "d"]);
        // Sample variance: (0.04 + 0 + 0.04 + 0) / 3; standard error sqrt(variance / 4).
        let half = 1.96 * (0.08_f64 / 3.0 / 4.0).sqrt();
        assert!(
            (stats.pass_rate_ci95[0] - (0.8 - half)).abs() < 1e-9,
            "{:?}",
            stats.pass_rate_ci95
        );
        assert!(
            (stats.pass_rate_ci95[1] - (0.8 + half)).abs() < 1e-9,
            "{:?}",
            stats.pass_rate_ci95
        );
        assert_eq!(stats.item_pass_fractions[2], ("c".to_owned(), 0.6));
        // A wide interval is clamped to [0, 1].
        let spread = [runs("x", 5, 5), runs("y", 0, 5)];
        let stats = RepeatStats::compute(&spread.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(stats.pass_rate_ci95, [0.0, 1.0]);
        assert!(RepeatStats::compute(&[]).is_none());
    }
}
