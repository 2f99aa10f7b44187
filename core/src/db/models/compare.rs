//! Paired comparison of two evaluations' results, aggregated in PostgreSQL.
//!
//! One temporary table per request pairs the two sides per item: for each side
//! (evaluation, model), the item's graded runs (`passed` or `failed`;
//! errored runs say nothing about quality and are left out), how many
//! passed, and their mean score. An item is paired when both sides graded it
//! at least once. It is filled by streaming over the results in primary-key
//! order (`evaluation_id, item_position, ...`), lives in PostgreSQL and is
//! dropped when the request's transaction ends; every query returns
//! aggregates only —
//! a summary row, histograms of the per-item differences (at most
//! [`MAX_BINS`] rows), usage figures, or one page of item ids — so the API's
//! memory does not grow with the evaluations' size.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::Page;
use crate::ids::{EvaluationId, TenantId};

/// Most distinct values a difference histogram keeps. Beyond that the
/// differences are grouped into `MAX_BINS` equal-width bins, each standing
/// for its members by their mean: the histogram's mean stays the exact mean,
/// and the bootstrap loses only the spread inside a bin (at most
/// `width² / 12` of variance per item). The bootstrap costs one binomial
/// draw per bin and resample, so this also bounds its time.
pub const MAX_BINS: i64 = 200;

/// One side of a pair: an evaluation's results for one model.
#[derive(Debug, Clone)]
pub struct Side<'a> {
    pub evaluation_id: EvaluationId,
    pub model: &'a str,
}

/// The per-item pairing of one request, made once into a temporary table
/// (dropped when the request's transaction ends) that every statistic then
/// reads: `$1` = tenant, `$2`/`$3` = side A, `$4`/`$5` = side B. Each side
/// is aggregated per item while its results are read in primary-key order.
const PAIR_ITEMS: &str = "CREATE TEMPORARY TABLE compare_items ON COMMIT DROP AS \
    SELECT coalesce(a.item_position, b.item_position) AS item_position, \
           coalesce(a.item_key, b.item_key) AS item_key, \
           coalesce(a.runs, 0) AS a_runs, coalesce(a.passed, 0) AS a_passed, a.score AS a_score, \
           coalesce(b.runs, 0) AS b_runs, coalesce(b.passed, 0) AS b_passed, b.score AS b_score \
    FROM ( \
        SELECT item_position, min(item_key) AS item_key, \
               count(*) FILTER (WHERE status <> 'errored') AS runs, \
               count(*) FILTER (WHERE status = 'passed') AS passed, \
               avg(score) FILTER (WHERE status <> 'errored') AS score \
        FROM evaluation_results \
        WHERE tenant_id = $1 AND evaluation_id = $2 AND model = $3 \
        GROUP BY item_position \
    ) a FULL JOIN ( \
        SELECT item_position, min(item_key) AS item_key, \
               count(*) FILTER (WHERE status <> 'errored') AS runs, \
               count(*) FILTER (WHERE status = 'passed') AS passed, \
               avg(score) FILTER (WHERE status <> 'errored') AS score \
        FROM evaluation_results \
        WHERE tenant_id = $1 AND evaluation_id = $4 AND model = $5 \
        GROUP BY item_position \
    ) b ON a.item_position = b.item_position";

/// The items both sides graded, from [`PAIR_ITEMS`]' table.
const PAIRED: &str = "WITH paired AS ( \
        SELECT item_position, item_key, \
               a_passed::float8 / a_runs AS pa, b_passed::float8 / b_runs AS pb, \
               a_score AS sa, b_score AS sb \
        FROM compare_items WHERE a_runs > 0 AND b_runs > 0 \
    ) ";

/// Makes the pairing table of this transaction.
async fn pair_items(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
) -> diesel::QueryResult<()> {
    diesel::sql_query(PAIR_ITEMS)
        .bind::<SqlUuid, _>(tenant_id)
        .bind::<SqlUuid, _>(a.evaluation_id)
        .bind::<Text, _>(a.model)
        .bind::<SqlUuid, _>(b.evaluation_id)
        .bind::<Text, _>(b.model)
        .execute(conn)
        .await
        .map(drop)
}

macro_rules! paired_query {
    ($tenant:expr, $a:expr, $b:expr, $select:expr) => {
        diesel::sql_query(format!("{PAIRED}{}", $select))
            .bind::<SqlUuid, _>($tenant)
            .bind::<SqlUuid, _>($a.evaluation_id)
            .bind::<Text, _>($a.model)
            .bind::<SqlUuid, _>($b.evaluation_id)
            .bind::<Text, _>($b.model)
    };
}

/// Counts and sums over the paired items.
#[derive(Debug, Clone, QueryableByName)]
pub struct Totals {
    /// Items side A graded at least once.
    #[diesel(sql_type = BigInt)]
    pub items_a: i64,
    #[diesel(sql_type = BigInt)]
    pub items_b: i64,
    /// Items both sides graded.
    #[diesel(sql_type = BigInt)]
    pub paired: i64,
    /// Sum of per-item pass fractions.
    #[diesel(sql_type = Double)]
    pub passed_a: f64,
    #[diesel(sql_type = Double)]
    pub passed_b: f64,
    /// Items whose pass fraction rose from A to B.
    #[diesel(sql_type = BigInt)]
    pub improvements: i64,
    /// Items whose pass fraction fell.
    #[diesel(sql_type = BigInt)]
    pub regressions: i64,
    /// Paired items with a score on both sides.
    #[diesel(sql_type = BigInt)]
    pub scored: i64,
    #[diesel(sql_type = Nullable<Double>)]
    pub score_a: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub score_b: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub pass_difference_min: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub pass_difference_max: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub score_difference_min: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub score_difference_max: Option<f64>,
    /// Largest number of graded runs of one item, on either side.
    #[diesel(sql_type = BigInt)]
    pub max_runs: i64,
}

async fn totals(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
) -> diesel::QueryResult<Totals> {
    paired_query!(
        tenant_id,
        a,
        b,
        "SELECT (SELECT count(*) FROM compare_items WHERE a_runs > 0) AS items_a, \
                (SELECT count(*) FROM compare_items WHERE b_runs > 0) AS items_b, \
                count(*) AS paired, \
                coalesce(sum(pa), 0) AS passed_a, coalesce(sum(pb), 0) AS passed_b, \
                count(*) FILTER (WHERE pb > pa) AS improvements, \
                count(*) FILTER (WHERE pb < pa) AS regressions, \
                count(sb - sa) AS scored, \
                avg(sa) FILTER (WHERE sb IS NOT NULL) AS score_a, \
                avg(sb) FILTER (WHERE sa IS NOT NULL) AS score_b, \
                min(pb - pa) AS pass_difference_min, max(pb - pa) AS pass_difference_max, \
                min(sb - sa) AS score_difference_min, max(sb - sa) AS score_difference_max, \
                (SELECT greatest(coalesce(max(a_runs), 0), coalesce(max(b_runs), 0)) FROM compare_items) AS max_runs \
         FROM paired"
    )
    .get_result(conn)
    .await
}

#[derive(Debug, Clone, QueryableByName)]
struct Bin {
    #[diesel(sql_type = Double)]
    value: f64,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Which per-item difference a histogram is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// Pass fraction, B − A (0/1 per item with one run).
    Pass,
    /// Mean score, B − A, over items scored on both sides.
    Score,
}

impl Difference {
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Difference::Pass => ("pb - pa", "true"),
            Difference::Score => ("sb - sa", "sa IS NOT NULL AND sb IS NOT NULL"),
        }
    }
}

/// Histogram of per-item differences, in value order, and the bin width
/// when there were more than [`MAX_BINS`] distinct values (see there).
/// Distinct values are told apart at 9 decimals, which only merges
/// floating-point twins. `range` is the differences' (min, max).
async fn histogram(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
    difference: Difference,
    range: (f64, f64),
) -> diesel::QueryResult<(Vec<(f64, u64)>, Option<f64>)> {
    let (value, filter) = difference.sql();
    let exact: Vec<Bin> = paired_query!(
        tenant_id,
        a,
        b,
        format!(
            "SELECT round(({value})::numeric, 9)::float8 AS value, count(*) AS count \
             FROM paired WHERE {filter} GROUP BY 1 ORDER BY 1 LIMIT $6"
        )
    )
    .bind::<BigInt, _>(MAX_BINS + 1)
    .load(conn)
    .await?;
    let to_pairs = |bins: Vec<Bin>| {
        bins.into_iter()
            .map(|bin| (bin.value, bin.count as u64))
            .collect::<Vec<_>>()
    };
    if (exact.len() as i64) <= MAX_BINS {
        return Ok((to_pairs(exact), None));
    }
    let (min, max) = range;
    let width = (max - min) / MAX_BINS as f64;
    let binned: Vec<Bin> = paired_query!(
        tenant_id,
        a,
        b,
        format!(
            "SELECT avg({value}) AS value, count(*) AS count FROM paired WHERE {filter} \
             GROUP BY least(floor(({value} - $6) / $7), $8) ORDER BY 1"
        )
    )
    .bind::<Double, _>(min)
    .bind::<Double, _>(width)
    .bind::<Double, _>((MAX_BINS - 1) as f64)
    .load(conn)
    .await?;
    Ok((to_pairs(binned), Some(width)))
}

/// Cost, tokens and latency of one side's runs of the paired items.
#[derive(Debug, Clone, Default, QueryableByName, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Runs (all of them, errored ones too: they were paid for).
    #[diesel(sql_type = BigInt)]
    pub runs: i64,
    #[diesel(sql_type = Double)]
    pub cost_usd: f64,
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = Nullable<Double>)]
    pub latency_p50_ms: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, QueryableByName)]
struct SideUsage {
    #[diesel(sql_type = Integer)]
    side: i32,
    #[diesel(embed)]
    usage: Usage,
}

/// Usage of both sides over the paired items: `(a, b)`.
async fn usage(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
) -> diesel::QueryResult<(Usage, Usage)> {
    const FIGURES: &str = "count(*) AS runs, coalesce(sum(r.cost_usd), 0) AS cost_usd, \
        coalesce(sum(r.input_tokens), 0)::int8 AS input_tokens, \
        coalesce(sum(r.output_tokens), 0)::int8 AS output_tokens, \
        percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms::float8) AS latency_p50_ms, \
        percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms::float8) AS latency_p95_ms";
    let rows: Vec<SideUsage> = paired_query!(
        tenant_id,
        a,
        b,
        format!(
            "SELECT 0 AS side, {FIGURES} FROM evaluation_results r JOIN paired p ON p.item_position = r.item_position \
             WHERE r.tenant_id = $1 AND r.evaluation_id = $2 AND r.model = $3 \
             UNION ALL \
             SELECT 1 AS side, {FIGURES} FROM evaluation_results r JOIN paired p ON p.item_position = r.item_position \
             WHERE r.tenant_id = $1 AND r.evaluation_id = $4 AND r.model = $5"
        )
    )
    .load(conn)
    .await?;
    let mut sides = (Usage::default(), Usage::default());
    for row in rows {
        if row.side == 0 {
            sides.0 = row.usage;
        } else {
            sides.1 = row.usage;
        }
    }
    Ok(sides)
}

/// Which way an item changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Pass fraction rose (failed → passed with one run).
    Improvements,
    /// Pass fraction fell.
    Regressions,
}

/// A paired item that changed.
#[derive(Debug, Clone, QueryableByName, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangedItem {
    #[diesel(sql_type = Integer)]
    pub position: i32,
    #[diesel(sql_type = Text)]
    pub item_key: String,
    /// Pass fraction on side A (0 or 1 with one run).
    #[diesel(sql_type = Double)]
    pub a: f64,
    #[diesel(sql_type = Double)]
    pub b: f64,
}

/// Changed items by position; `after` is the last position of the previous page.
async fn changed_items(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
    direction: Direction,
    after: Option<i32>,
    limit: i64,
) -> diesel::QueryResult<Page<ChangedItem>> {
    let condition = match direction {
        Direction::Improvements => "pb > pa",
        Direction::Regressions => "pb < pa",
    };
    let rows: Vec<ChangedItem> = paired_query!(
        tenant_id,
        a,
        b,
        format!(
            "SELECT item_position AS position, item_key, pa AS a, pb AS b FROM paired \
             WHERE {condition} AND item_position > $6 ORDER BY item_position LIMIT $7"
        )
    )
    .bind::<Integer, _>(after.unwrap_or(-1))
    .bind::<BigInt, _>(limit + 1)
    .load(conn)
    .await?;
    Ok(Page::from_overfetched(rows, limit))
}

/// Pass rates over the paired items (means of per-item pass fractions).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PassRates {
    pub a: f64,
    pub b: f64,
    /// `b - a`.
    pub difference: f64,
    /// Paired bootstrap interval of `difference`.
    pub ci95: Option<crate::stats::Interval>,
}

/// The significance test on the items whose outcome changed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Significance {
    /// `exact_mcnemar` (one run per item on both sides) or
    /// `exact_sign_test_on_pass_fractions` (repeats).
    pub method: &'static str,
    pub improvements: i64,
    pub regressions: i64,
    pub discordant: i64,
    pub p_value: f64,
}

/// Mean score over items scored on both sides.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scores {
    pub items: i64,
    pub a: f64,
    pub b: f64,
    pub difference: f64,
    pub ci95: Option<crate::stats::Interval>,
    /// When the differences had more than [`MAX_BINS`] distinct values: the
    /// width of the bins the bootstrap resampled (the mean itself is exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<f64>,
}

/// `b - a` of every usage figure.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageDifference {
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageComparison {
    pub a: Usage,
    pub b: Usage,
    pub difference: UsageDifference,
}

/// A first page of changed items and the cursor to the next.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePage {
    pub count: i64,
    pub items: Vec<ChangedItem>,
    pub has_more: bool,
    pub next_after: Option<String>,
}

impl ChangePage {
    pub fn new(count: i64, page: Page<ChangedItem>) -> Self {
        let next_after = if page.has_more {
            page.data.last().map(|item| item.position.to_string())
        } else {
            None
        };
        Self {
            count,
            items: page.data,
            has_more: page.has_more,
            next_after,
        }
    }
}

/// Items each side graded, and how many both did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemCounts {
    pub a: i64,
    pub b: i64,
    pub paired: i64,
}

/// Everything about one model pair.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairReport {
    pub a_model: String,
    pub b_model: String,
    pub items: ItemCounts,
    pub pass_rate: PassRates,
    pub significance: Significance,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<Scores>,
    pub usage: UsageComparison,
    pub improvements: ChangePage,
    pub regressions: ChangePage,
}

/// Compares one model pair: a handful of aggregate queries, then the
/// statistics of [`crate::stats`] on their results.
pub async fn compare_pair(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
    list_limit: i64,
) -> diesel::QueryResult<PairReport> {
    conn.transaction(async |conn| {
        pair_items(conn, tenant_id, a, b).await?;
        report(conn, tenant_id, a, b, list_limit).await
    })
    .await
}

/// The statistics, from this transaction's pairing table.
async fn report(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
    list_limit: i64,
) -> diesel::QueryResult<PairReport> {
    use crate::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_mean, mcnemar_exact};
    let totals = totals(conn, tenant_id, a, b).await?;
    let paired = totals.paired.max(1) as f64;
    let pass_ci = match (totals.pass_difference_min, totals.pass_difference_max) {
        (Some(min), Some(max)) => {
            let (bins, _) = histogram(conn, tenant_id, a, b, Difference::Pass, (min, max)).await?;
            bootstrap_mean(&bins, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        }
        _ => None,
    };
    let score = match (
        totals.score_a,
        totals.score_b,
        totals.score_difference_min,
        totals.score_difference_max,
    ) {
        (Some(score_a), Some(score_b), Some(min), Some(max)) if totals.scored > 0 => {
            let (bins, resolution) =
                histogram(conn, tenant_id, a, b, Difference::Score, (min, max)).await?;
            Some(Scores {
                items: totals.scored,
                a: score_a,
                b: score_b,
                difference: score_b - score_a,
                ci95: bootstrap_mean(&bins, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
                resolution,
            })
        }
        _ => None,
    };
    let (usage_a, usage_b) = usage(conn, tenant_id, a, b).await?;
    let difference = UsageDifference {
        cost_usd: usage_b.cost_usd - usage_a.cost_usd,
        input_tokens: usage_b.input_tokens - usage_a.input_tokens,
        output_tokens: usage_b.output_tokens - usage_a.output_tokens,
        latency_p50_ms: usage_b
            .latency_p50_ms
            .zip(usage_a.latency_p50_ms)
            .map(|(b, a)| b - a),
        latency_p95_ms: usage_b
            .latency_p95_ms
            .zip(usage_a.latency_p95_ms)
            .map(|(b, a)| b - a),
    };
    let improvements = changed_items(
        conn,
        tenant_id,
        a,
        b,
        Direction::Improvements,
        None,
        list_limit,
    )
    .await?;
    let regressions = changed_items(
        conn,
        tenant_id,
        a,
        b,
        Direction::Regressions,
        None,
        list_limit,
    )
    .await?;
    Ok(PairReport {
        a_model: a.model.to_owned(),
        b_model: b.model.to_owned(),
        items: ItemCounts {
            a: totals.items_a,
            b: totals.items_b,
            paired: totals.paired,
        },
        pass_rate: PassRates {
            a: totals.passed_a / paired,
            b: totals.passed_b / paired,
            difference: (totals.passed_b - totals.passed_a) / paired,
            ci95: pass_ci,
        },
        significance: Significance {
            method: if totals.max_runs <= 1 {
                "exact_mcnemar"
            } else {
                "exact_sign_test_on_pass_fractions"
            },
            improvements: totals.improvements,
            regressions: totals.regressions,
            discordant: totals.improvements + totals.regressions,
            p_value: mcnemar_exact(totals.improvements as u64, totals.regressions as u64),
        },
        score,
        usage: UsageComparison {
            a: usage_a,
            b: usage_b,
            difference,
        },
        improvements: ChangePage::new(totals.improvements, improvements),
        regressions: ChangePage::new(totals.regressions, regressions),
    })
}

/// One page of the improved or regressed items of a pair, and how many there are.
pub async fn changes(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: &Side<'_>,
    b: &Side<'_>,
    direction: Direction,
    after: Option<i32>,
    limit: i64,
) -> diesel::QueryResult<ChangePage> {
    conn.transaction(async |conn| {
        pair_items(conn, tenant_id, a, b).await?;
        let totals = totals(conn, tenant_id, a, b).await?;
        let page = changed_items(conn, tenant_id, a, b, direction, after, limit).await?;
        Ok(ChangePage::new(
            match direction {
                Direction::Improvements => totals.improvements,
                Direction::Regressions => totals.regressions,
            },
            page,
        ))
    })
    .await
}
