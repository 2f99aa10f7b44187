//! The optimization job's steps. One round, from the current parent P:
//! 1. evaluate P on the training part (its failing cases feed the optimizer)
//!    and, in round 0, on the validation part (the bar, and the origin the
//!    winner is compared with);
//! 2. ask the optimizer model once for K proposals (the one LLM call a job
//!    makes itself), check them, commit the valid ones as children of P on
//!    branch `opt/<id>`, and record the round (proposals and cost) at once;
//! 3. evaluate the valid proposals on the validation part, one after the
//!    other (each evaluation's `max_cost_usd` is what the budget has left,
//!    so the evaluations' own budget checks keep the total within it);
//! 4. the best proposal (pass rate, then fewer tokens) becomes the parent
//!    when it beats P; the next round starts from the parent.
//!
//! Before every evaluation and before the optimizer call, the money spent
//! (optimizer calls plus every call of its evaluations) is compared with
//! `max_cost_usd`: when nothing is left, the job ends `budget_exhausted`
//! with the best it has. So it passes its budget by at most one call.

use anyhow::Context as _;
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::optimizer::{self, FailingCase, MAX_FAILURES, MAX_RATIONALE_CHARS};
use super::{Ctx, EvaluationSetup, Policy, Step, compare, evaluation_for, job_ref};
use crate::db::models::datasets::{self, Dataset, NewDataset};
use crate::db::models::evaluations::{self, CancelReason, Evaluation, EvaluationStatus};
use crate::db::models::lifecycle;
use crate::db::models::optimizations::{self, Advance, Candidate, Optimization};
use crate::db::models::prompts::{self, Commit, PromptVersion, VersionRef};
use crate::db::models::{branches, promotions};
use crate::db::schema::{evaluation_results, prompt_versions};
use crate::domain::{DatasetSummary, ParsedDataset, ParsedItem};
use crate::domain::{ModelParams, PromptContent};
use crate::ids::{DatasetId, EvaluationId, TenantId, VersionId};
use crate::providers::call::CallOptions;
use crate::queue::{VersioningJob, VersioningKind};

/// Most items a dataset may have to be optimized on (its items are split in
/// memory once).
pub const MAX_ITEMS: i32 = 10_000;

/// What an optimization keeps in its `setup` column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSetup {
    pub evaluation: EvaluationSetup,
    /// The policy of the promotion chained on the winner (with `promote_to`).
    #[serde(default)]
    pub promote_policy: Option<Policy>,
}

pub async fn step(ctx: &Ctx<'_>, tenant_id: TenantId, id: Uuid) -> anyhow::Result<Step> {
    let mut conn = ctx.pool.get().await?;
    let Some(optimization) = optimizations::get(&mut conn, tenant_id, id).await? else {
        return Ok(Step::Done("missing"));
    };
    match optimization.status.as_str() {
        "queued" => split(ctx, &mut conn, &optimization).await,
        "running" => advance(ctx, &mut conn, &optimization).await,
        other => Ok(Step::Done(final_status(other))),
    }
}

fn final_status(status: &str) -> &'static str {
    match status {
        "succeeded" => "succeeded",
        "budget_exhausted" => "budget_exhausted",
        "canceled" => "canceled",
        _ => "failed",
    }
}

fn setup_of(optimization: &Optimization) -> anyhow::Result<StoredSetup> {
    serde_json::from_value(optimization.setup.clone()).context("stored setup")
}

/// A number in [0, 1) from the seed and an item's key (FNV-1a, then
/// splitmix64): stable across processes and versions.
fn draw(seed: i64, key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether an item (by key) goes to the validation part: a seeded draw per
/// item, so the same seed splits the same dataset the same way.
pub fn in_validation(seed: i64, key: &str, validation_split: f64) -> bool {
    draw(seed, key) < validation_split
}

/// Splits the dataset into a training and a validation dataset (both
/// non-empty) and starts running.
async fn split(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
) -> anyhow::Result<Step> {
    let setup = setup_of(optimization)?;
    let (tenant_id, id) = (optimization.tenant_id, optimization.id);
    let Some(dataset) = datasets::get(conn, tenant_id, setup.evaluation.dataset_id).await? else {
        return fail(ctx, conn, optimization, "the dataset is gone").await;
    };
    let items =
        datasets::items_between(conn, tenant_id, dataset.id, 0, dataset.item_count - 1).await?;
    let (mut validation, mut train): (Vec<_>, Vec<_>) = items.into_iter().partition(|item| {
        in_validation(
            optimization.seed,
            &item.item_key,
            optimization.validation_split,
        )
    });
    // Both parts need items: move one over when the draw left one empty.
    if validation.is_empty() && train.len() > 1 {
        validation.push(train.pop().expect("checked"));
    } else if train.is_empty() && validation.len() > 1 {
        train.push(validation.pop().expect("checked"));
    }
    if validation.is_empty() || train.is_empty() {
        return fail(
            ctx,
            conn,
            optimization,
            "the dataset has too few items to split",
        )
        .await;
    }
    let parsed = |items: Vec<datasets::DatasetItem>| {
        let items: Vec<ParsedItem> = items
            .into_iter()
            .map(|item| ParsedItem {
                key: item.item_key,
                vars: item.vars,
                expected: item.expected,
                threshold: item.threshold,
                graders: item.graders,
            })
            .collect();
        let graders = items
            .iter()
            .filter_map(|item| item.graders.as_ref()?.as_array());
        ParsedDataset {
            summary: DatasetSummary {
                items: items.len(),
                variables: dataset.shape().variables,
                all_expected: dataset.all_expected,
                items_with_graders: graders.clone().count(),
                item_graders: graders.map(Vec::len).sum(),
                content_hash: None,
            },
            items,
        }
    };
    let (train, validation) = (parsed(train), parsed(validation));
    let actor = ctx.actor;
    conn.transaction(async |conn| {
        let Some(locked) = optimizations::lock(conn, tenant_id, id).await? else {
            return Ok::<_, anyhow::Error>(());
        };
        if locked.status != "queued" {
            return Ok(());
        }
        let names = (format!("opt-{id}-train"), format!("opt-{id}-validation"));
        let part = |name| NewDataset {
            tenant_id,
            actor,
            name,
            description: Some("made by an optimization: its part of the dataset"),
        };
        let train = datasets::create(conn, part(&names.0), &train).await?;
        let validation = datasets::create(conn, part(&names.1), &validation).await?;
        optimizations::advance(
            conn,
            id,
            0,
            Advance {
                status: Some("running".to_owned()),
                train_dataset_id: Some(train.id),
                validation_dataset_id: Some(validation.id),
                ..Advance::default()
            },
        )
        .await?;
        Ok(())
    })
    .await?;
    Ok(Step::Continue)
}

async fn fail(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    reason: &str,
) -> anyhow::Result<Step> {
    optimizations::finish(
        conn,
        optimization.tenant_id,
        optimization.id,
        ctx.actor,
        "failed",
        None,
        None,
        reason,
    )
    .await?;
    metrics::counter!("assay_optimizations_total", "outcome" => "failed").increment(1);
    Ok(Step::Done("failed"))
}

/// How an evaluation the job waits for stands.
enum Waited {
    Running,
    Succeeded(Box<Evaluation>),
    /// Canceled because its budget (what the optimization had left) ran out.
    OutOfBudget,
    Ended(String),
}

async fn wait_for(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: EvaluationId,
) -> anyhow::Result<Waited> {
    let evaluation = evaluations::get(conn, tenant_id, id)
        .await?
        .with_context(|| format!("evaluation {id} is gone"))?;
    Ok(match evaluation.status {
        EvaluationStatus::Succeeded => Waited::Succeeded(Box::new(evaluation)),
        status if !status.is_terminal() => Waited::Running,
        EvaluationStatus::Canceled
            if matches!(
                evaluation.cancel_reason.as_deref(),
                Some("budget") | Some("tenant_budget")
            ) =>
        {
            Waited::OutOfBudget
        }
        _ => Waited::Ended(format!(
            "evaluation {} ended {}{}",
            evaluation.id,
            evaluation.status,
            evaluation
                .error
                .as_deref()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        )),
    })
}

/// Pass rate (passed over graded runs), mean score and cost of an evaluation.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Figures {
    #[diesel(sql_type = Nullable<Double>)]
    pub pass_rate: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub mean_score: Option<f64>,
    #[diesel(sql_type = Double)]
    pub cost_usd: f64,
}

pub async fn figures(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation_id: EvaluationId,
) -> QueryResult<Figures> {
    diesel::sql_query(
        "SELECT (count(*) FILTER (WHERE status = 'passed'))::float8 \
                / nullif(count(*) FILTER (WHERE status <> 'errored'), 0) AS pass_rate, \
                avg(score) FILTER (WHERE status <> 'errored') AS mean_score, \
                coalesce(sum(cost_usd + grading_cost_usd), 0)::float8 AS cost_usd \
         FROM evaluation_results WHERE tenant_id = $1 AND evaluation_id = $2",
    )
    .bind::<SqlUuid, _>(tenant_id)
    .bind::<SqlUuid, _>(evaluation_id)
    .get_result(conn)
    .await
}

async fn dataset(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Option<DatasetId>,
) -> anyhow::Result<Dataset> {
    let id = id.context("a running optimization has its datasets")?;
    datasets::get(conn, tenant_id, id)
        .await?
        .context("the optimization's dataset is gone")
}

async fn advance(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
) -> anyhow::Result<Step> {
    let (tenant_id, id, round) = (optimization.tenant_id, optimization.id, optimization.round);
    let setup = setup_of(optimization)?.evaluation;
    let remaining = optimization.max_cost_usd - optimizations::spent(conn, optimization).await?;
    let new_evaluation = |version: VersionId, role: &'static str| Needed {
        optimization,
        setup: &setup,
        remaining,
        version,
        role,
    };
    // 1. The parent on the training part.
    let Some(train_evaluation) = optimization.parent_train_evaluation_id else {
        if remaining <= 0.0 {
            return end(ctx, conn, optimization, "budget_exhausted").await;
        }
        let train = dataset(conn, tenant_id, optimization.train_dataset_id).await?;
        let evaluation = new_evaluation(optimization.current_version_id, "parent_train")
            .submit(ctx, conn, &train)
            .await?;
        let changes = Advance {
            parent_train_evaluation_id: Some(Some(evaluation.id)),
            ..Advance::default()
        };
        if !optimizations::advance(conn, id, round, changes).await? {
            cancel_orphan(ctx, conn, tenant_id, evaluation.id).await?;
        }
        return Ok(Step::Continue);
    };
    let train_evaluation = match wait_for(conn, tenant_id, train_evaluation).await? {
        Waited::Running => return Ok(Step::Wait),
        Waited::OutOfBudget => return end(ctx, conn, optimization, "budget_exhausted").await,
        Waited::Ended(reason) => return fail(ctx, conn, optimization, &reason).await,
        Waited::Succeeded(evaluation) => evaluation,
    };

    // 2. The parent on the validation part (round 0; later rounds carry the
    // winning proposal's evaluation over).
    let validation = dataset(conn, tenant_id, optimization.validation_dataset_id).await?;
    let Some(parent_validation) = optimization.parent_validation_evaluation_id else {
        if remaining <= 0.0 {
            return end(ctx, conn, optimization, "budget_exhausted").await;
        }
        let evaluation = new_evaluation(optimization.current_version_id, "parent_validation")
            .submit(ctx, conn, &validation)
            .await?;
        let changes = Advance {
            parent_validation_evaluation_id: Some(Some(evaluation.id)),
            origin_validation_evaluation_id: Some(evaluation.id),
            ..Advance::default()
        };
        if !optimizations::advance(conn, id, round, changes).await? {
            cancel_orphan(ctx, conn, tenant_id, evaluation.id).await?;
        }
        return Ok(Step::Continue);
    };
    match wait_for(conn, tenant_id, parent_validation).await? {
        Waited::Running => return Ok(Step::Wait),
        Waited::OutOfBudget => return end(ctx, conn, optimization, "budget_exhausted").await,
        Waited::Ended(reason) => return fail(ctx, conn, optimization, &reason).await,
        Waited::Succeeded(_) => {}
    }

    // 3. The round's proposals.
    let all = optimizations::candidates(conn, tenant_id, id).await?;
    let this_round: Vec<&Candidate> = all.iter().filter(|row| row.round == round).collect();
    if this_round.is_empty() {
        if remaining <= 0.0 {
            return end(ctx, conn, optimization, "budget_exhausted").await;
        }
        propose(ctx, conn, optimization, &train_evaluation, &validation).await?;
        return Ok(Step::Continue);
    }

    // 4. Their evaluations on the validation part, one at a time.
    for candidate in this_round.iter().filter(|row| row.version_id.is_some()) {
        let Some(evaluation) = candidate.evaluation_id else {
            if remaining <= 0.0 {
                return end(ctx, conn, optimization, "budget_exhausted").await;
            }
            let version = candidate.version_id.expect("filtered");
            let evaluation = new_evaluation(version, "candidate")
                .submit(ctx, conn, &validation)
                .await?;
            if !optimizations::set_candidate_evaluation(
                conn,
                id,
                round,
                candidate.index,
                evaluation.id,
            )
            .await?
            {
                cancel_orphan(ctx, conn, tenant_id, evaluation.id).await?;
            }
            return Ok(Step::Continue);
        };
        match wait_for(conn, tenant_id, evaluation).await? {
            Waited::Running => return Ok(Step::Wait),
            Waited::OutOfBudget => {
                return end(ctx, conn, optimization, "budget_exhausted").await;
            }
            Waited::Ended(_) | Waited::Succeeded(_) if candidate.cost_usd.is_none() => {
                let figures = figures(conn, tenant_id, evaluation).await?;
                optimizations::set_candidate_figures(
                    conn,
                    id,
                    round,
                    candidate.index,
                    (figures.pass_rate, figures.mean_score, figures.cost_usd),
                )
                .await?;
            }
            Waited::Ended(_) | Waited::Succeeded(_) => {}
        }
    }

    // 5. The best proposal becomes the parent when it beats it; next round.
    let all = optimizations::candidates(conn, tenant_id, id).await?;
    let (next_version, next_evaluation) = best(conn, optimization, &all).await?;
    let changed = next_version != optimization.current_version_id;
    if round + 1 >= optimization.rounds {
        let changes = Advance {
            round: Some(round + 1),
            current_version_id: Some(next_version),
            parent_validation_evaluation_id: Some(Some(next_evaluation)),
            ..Advance::default()
        };
        optimizations::advance(conn, id, round, changes).await?;
        let optimization = optimizations::get(conn, tenant_id, id)
            .await?
            .context("the optimization is gone")?;
        return end(ctx, conn, &optimization, "succeeded").await;
    }
    let changes = Advance {
        round: Some(round + 1),
        current_version_id: Some(next_version),
        parent_train_evaluation_id: if changed { Some(None) } else { None },
        parent_validation_evaluation_id: Some(Some(next_evaluation)),
        ..Advance::default()
    };
    optimizations::advance(conn, id, round, changes).await?;
    Ok(Step::Continue)
}

/// An evaluation the optimization needs: of `version`, capped at what the
/// budget has left.
struct Needed<'a> {
    optimization: &'a Optimization,
    setup: &'a EvaluationSetup,
    remaining: f64,
    version: VersionId,
    role: &'static str,
}

impl Needed<'_> {
    async fn submit(
        self,
        ctx: &Ctx<'_>,
        conn: &mut AsyncPgConnection,
        dataset: &Dataset,
    ) -> anyhow::Result<Evaluation> {
        let (evaluation, _) = evaluation_for(
            ctx,
            conn,
            self.optimization.tenant_id,
            self.version,
            dataset,
            self.setup,
            Some(self.remaining.max(0.0)),
            job_ref("optimization", self.optimization.id, self.role),
            self.optimization.request_id.as_deref(),
        )
        .await?;
        Ok(evaluation)
    }
}

/// The best of the current parent and the current round's evaluated
/// proposals: higher validation pass rate, then fewer tokens (the parent
/// wins ties with itself); as (version, its validation evaluation).
async fn best(
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    candidates: &[Candidate],
) -> anyhow::Result<(VersionId, EvaluationId)> {
    let parent_evaluation = optimization
        .parent_validation_evaluation_id
        .context("the parent has a validation evaluation")?;
    let parent_figures = figures(conn, optimization.tenant_id, parent_evaluation).await?;
    let parent_version = version(conn, optimization, optimization.current_version_id).await?;
    let mut best = (
        parent_figures.pass_rate.unwrap_or(-1.0),
        -optimizer::tokens(&parent_version.content()?),
        optimization.current_version_id,
        parent_evaluation,
    );
    for candidate in candidates
        .iter()
        .filter(|row| row.round == optimization.round && row.cost_usd.is_some())
    {
        let (Some(version), Some(evaluation)) = (candidate.version_id, candidate.evaluation_id)
        else {
            continue;
        };
        let key = (candidate.pass_rate.unwrap_or(-1.0), -candidate.tokens);
        if key > (best.0, best.1) {
            best = (key.0, key.1, version, evaluation);
        }
    }
    Ok((best.2, best.3))
}

async fn version(
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    id: VersionId,
) -> anyhow::Result<PromptVersion> {
    prompts::get_version_by_id(conn, optimization.tenant_id, id)
        .await?
        .context("a version of the optimization is gone")
}

/// An evaluation made by a run that lost the race to record it.
async fn cancel_orphan(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    evaluation: EvaluationId,
) -> anyhow::Result<()> {
    lifecycle::cancel(conn, tenant_id, evaluation, ctx.actor, CancelReason::User).await?;
    Ok(())
}

/// Failing cases of the parent's training evaluation, bounded.
async fn failing_cases(
    conn: &mut AsyncPgConnection,
    evaluation: &Evaluation,
) -> anyhow::Result<Vec<FailingCase>> {
    let rows: Vec<(i32, String, Option<String>, serde_json::Value)> = evaluation_results::table
        .filter(evaluation_results::tenant_id.eq(evaluation.tenant_id))
        .filter(evaluation_results::evaluation_id.eq(evaluation.id))
        .filter(evaluation_results::status.eq("failed"))
        .order((
            evaluation_results::item_position.asc(),
            evaluation_results::model.asc(),
        ))
        .select((
            evaluation_results::item_position,
            evaluation_results::item_key,
            evaluation_results::output,
            evaluation_results::grades,
        ))
        .limit(MAX_FAILURES as i64)
        .load(conn)
        .await?;
    let mut cases = Vec::with_capacity(rows.len());
    for (position, key, output, grades) in rows {
        let item = datasets::items_between(
            conn,
            evaluation.tenant_id,
            evaluation.dataset_id,
            position,
            position,
        )
        .await?
        .pop();
        let reasons: Vec<String> = grades
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|grade| grade.get("reason").and_then(|reason| reason.as_str()))
            .map(str::to_owned)
            .collect();
        cases.push(FailingCase {
            item: optimizer::clip(&key),
            inputs: optimizer::clip(
                &item
                    .as_ref()
                    .map(|item| item.vars.to_string())
                    .unwrap_or_default(),
            ),
            expected: optimizer::clip(
                &item
                    .and_then(|item| item.expected)
                    .map(|expected| expected.to_string())
                    .unwrap_or_default(),
            ),
            output: optimizer::clip(&output.unwrap_or_default()),
            reasons: optimizer::clip(&reasons.join("; ")),
        });
    }
    Ok(cases)
}

/// Asks the optimizer for this round's proposals, commits the valid ones
/// and records the round.
async fn propose(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    train_evaluation: &Evaluation,
    validation: &Dataset,
) -> anyhow::Result<()> {
    let (tenant_id, id, round) = (optimization.tenant_id, optimization.id, optimization.round);
    let parent = version(conn, optimization, optimization.current_version_id).await?;
    let content = parent.content()?;
    let shape = validation.shape();
    let failures = failing_cases(conn, train_evaluation).await?;
    let count = u32::try_from(optimization.candidates).unwrap_or(1);
    // Each round draws anew, predictably.
    let seed = (optimization.seed as u64).wrapping_add(round as u64);
    let messages = optimizer::messages(&content, &shape, &failures, count, seed)?;
    let model = ctx
        .llm
        .catalog
        .resolve(&optimization.optimizer_model)
        .map_err(|error| anyhow::anyhow!("optimizer_model: {}", error.message))?;
    // Reserved before the call, as generation calls reserve against budgets:
    // a worker that dies between the answer and its recording leaves the
    // reservation counted, never a paid call uncounted.
    let reserved =
        crate::budget::call_cost(&model, &messages, &ModelParams::default()).expected_usd;
    optimizations::add_optimizer_cost(conn, id, reserved).await?;
    let report = ctx
        .llm
        .complete(
            &model,
            &messages,
            &ModelParams::default(),
            CallOptions {
                purpose: "optimize",
                repeat: u32::try_from(round).unwrap_or(0),
                use_cache: false,
                slot: None,
            },
        )
        .await;
    record_cost_metric(report.cost_usd);
    // What it cost in place of what it reserved; counted whatever comes next
    // (a re-run of this step pays, and counts, its own call).
    optimizations::add_optimizer_cost(conn, id, report.cost_usd - reserved).await?;
    let answer = match report.outcome {
        Ok(completion) => completion.text,
        Err(error) => anyhow::bail!("the optimizer call failed: {error}"),
    };
    let proposals = optimizer::parse(&answer, count as usize);
    let mut rows = Vec::new();
    let row = |index: usize,
               version_id: Option<VersionId>,
               invalid: Option<String>,
               rationale: &str,
               tokens: i64| Candidate {
        optimization_id: id,
        round,
        index: index as i32,
        tenant_id,
        version_id,
        invalid_reason: invalid,
        rationale: rationale.chars().take(MAX_RATIONALE_CHARS).collect(),
        evaluation_id: None,
        pass_rate: None,
        mean_score: None,
        cost_usd: None,
        tokens,
    };
    match proposals {
        Err(reason) => rows.push(row(0, None, Some(reason), "", 0)),
        Ok(proposals) => {
            let checked = optimizer::check_all(&proposals, &content, &shape);
            for (index, (proposal, checked)) in proposals.iter().zip(checked).enumerate() {
                match checked {
                    Ok(candidate) => {
                        let message = if proposal.rationale.trim().is_empty() {
                            format!("optimization {id}, round {round}, proposal {index}")
                        } else {
                            proposal
                                .rationale
                                .chars()
                                .take(MAX_RATIONALE_CHARS)
                                .collect()
                        };
                        let version =
                            commit_child(ctx, conn, optimization, &parent, &candidate, &message)
                                .await?;
                        rows.push(row(
                            index,
                            Some(version),
                            None,
                            &proposal.rationale,
                            optimizer::tokens(&candidate),
                        ));
                    }
                    Err(reason) => {
                        rows.push(row(index, None, Some(reason), &proposal.rationale, 0))
                    }
                }
            }
        }
    }
    let valid = rows.iter().filter(|row| row.version_id.is_some()).count() as u64;
    let invalid = rows.len() as u64 - valid;
    if optimizations::record_round(conn, tenant_id, id, round, &rows).await? {
        metrics::counter!("assay_optimizer_proposals_total", "result" => "valid").increment(valid);
        metrics::counter!("assay_optimizer_proposals_total", "result" => "invalid")
            .increment(invalid);
    }
    Ok(())
}

fn record_cost_metric(cost_usd: f64) {
    // Counters hold integers: micro-dollars.
    metrics::counter!("assay_optimization_cost_microusd_total", "source" => "optimizer")
        .increment((cost_usd * 1e6).round() as u64);
}

/// Commits `content` as a child of `parent` on branch `opt/<id>` (made at
/// the parent when missing) and returns the version; a child of `parent`
/// with this content made earlier (a re-run) is returned as it is.
async fn commit_child(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    parent: &PromptVersion,
    content: &PromptContent,
    message: &str,
) -> anyhow::Result<VersionId> {
    let (tenant_id, prompt_id) = (optimization.tenant_id, optimization.prompt_id);
    let branch_name = optimization.branch();
    let hash = content.content_hash();
    let actor = ctx.actor;
    let id = conn
        .transaction(async |conn| {
            if !prompts::lock_prompt(conn, tenant_id, prompt_id).await? {
                anyhow::bail!("the prompt is gone");
            }
            let existing: Option<VersionId> = prompt_versions::table
                .filter(prompt_versions::tenant_id.eq(tenant_id))
                .filter(prompt_versions::prompt_id.eq(prompt_id))
                .filter(prompt_versions::parent_id.eq(parent.id))
                .filter(prompt_versions::content_hash.eq(&hash))
                .select(prompt_versions::id)
                .first(conn)
                .await
                .optional()?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
            let branch = match branches::get(conn, tenant_id, prompt_id, &branch_name).await? {
                Some(branch) => branch,
                None => {
                    branches::insert(conn, tenant_id, prompt_id, &branch_name, Some(parent.id))
                        .await?
                }
            };
            // Each proposal is a child of the round's parent, not of the previous proposal.
            branches::set_head(conn, &branch, parent.id).await?;
            let committed = prompts::commit(
                conn,
                tenant_id,
                actor,
                prompt_id,
                Commit {
                    branch: &branch_name,
                    expected_head: Some(VersionRef::Id(parent.id)),
                    content,
                    commit_message: message,
                    reverts: None,
                },
            )
            .await
            .map_err(|error| anyhow::anyhow!("committing a proposal: {error}"))?;
            Ok(committed.version().id)
        })
        .await?;
    Ok(id)
}

/// Ends the optimization with `status` and the best it has: the current
/// parent when it is not where it started. Compares the winner with the
/// starting version on the validation part, points `opt/<id>` at it, and
/// chains a promotion when `promote_to` asks for one.
async fn end(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    status: &'static str,
) -> anyhow::Result<Step> {
    let (tenant_id, id) = (optimization.tenant_id, optimization.id);
    let setup = setup_of(optimization)?;
    let candidates = optimizations::candidates(conn, tenant_id, id).await?;
    let (winner, winner_evaluation) = match optimization.parent_validation_evaluation_id {
        Some(_) => {
            let (version, evaluation) = best(conn, optimization, &candidates).await?;
            (version, Some(evaluation))
        }
        None => (optimization.current_version_id, None),
    };
    let winner = (winner != optimization.from_version_id).then_some(winner);
    let comparison = match (
        winner,
        winner_evaluation,
        optimization.origin_validation_evaluation_id,
    ) {
        (Some(winner), Some(b), Some(a)) => {
            let reports = compare(conn, tenant_id, a, b, &setup.evaluation.models).await?;
            Some(serde_json::json!({
                "parent_version_id": optimization.from_version_id,
                "winner_version_id": winner,
                "parent_evaluation_id": a,
                "winner_evaluation_id": b,
                "models": reports,
            }))
        }
        _ => None,
    };
    let reason = match (status, winner) {
        ("budget_exhausted", _) => "max_cost_usd reached; the best so far is reported".to_owned(),
        (_, Some(_)) => format!(
            "{} rounds done; a proposal beat the parent",
            optimization.rounds
        ),
        (_, None) => format!(
            "{} rounds done; no proposal beat the parent",
            optimization.rounds
        ),
    };
    // Chained first, so that a finished optimization always shows its
    // promotion; a re-run finds it and does not chain another.
    if let (Some(winner), Some(label), "succeeded") = (winner, &optimization.promote_to, status) {
        chain_promotion(ctx, conn, optimization, winner, label, &setup).await?;
    }
    let ended = optimizations::finish(
        conn,
        tenant_id,
        id,
        ctx.actor,
        status,
        winner,
        comparison.as_ref(),
        &reason,
    )
    .await?;
    if !ended {
        return Ok(Step::Done(final_status(&optimization.status)));
    }
    metrics::counter!("assay_optimizations_total", "outcome" => status).increment(1);
    let spent = optimizations::spent(conn, optimization).await?;
    metrics::counter!("assay_optimization_cost_microusd_total", "source" => "evaluations")
        .increment(((spent - optimization.optimizer_cost_usd).max(0.0) * 1e6).round() as u64);
    if let Some(winner) = winner
        && let Some(branch) = branches::get(
            conn,
            tenant_id,
            optimization.prompt_id,
            &optimization.branch(),
        )
        .await?
    {
        branches::set_head(conn, &branch, winner).await?;
    }
    Ok(Step::Done(status))
}

/// Submits the promotion of the winner to `label` (with the full dataset).
async fn chain_promotion(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    optimization: &Optimization,
    winner: VersionId,
    label: &str,
    setup: &StoredSetup,
) -> anyhow::Result<()> {
    let tenant_id = optimization.tenant_id;
    let Some(current) =
        crate::db::models::labels::get(conn, tenant_id, optimization.prompt_id, label).await?
    else {
        tracing::warn!(label, "promote_to names a label that is gone; no promotion");
        return Ok(());
    };
    let job_id = Uuid::now_v7();
    let new = promotions::NewPromotion {
        id: Uuid::now_v7(),
        tenant_id,
        prompt_id: optimization.prompt_id,
        label: label.to_owned(),
        candidate_version_id: winner,
        baseline_version_id: current.version_id,
        setup: serde_json::to_value(&setup.evaluation)?,
        policy: serde_json::to_value(setup.promote_policy.clone().unwrap_or_default())?,
        optimization_id: Some(optimization.id),
        job_id: Some(job_id),
        request_id: optimization.request_id.clone(),
    };
    let actor = ctx.actor;
    // Under the optimization's row lock: one promotion per optimization.
    let created = conn
        .transaction(async |conn| {
            optimizations::lock(conn, tenant_id, optimization.id).await?;
            if promotions::of_optimization(conn, tenant_id, optimization.id)
                .await?
                .is_some()
            {
                return Ok::<_, diesel::result::Error>(None);
            }
            let promotion = promotions::create(conn, actor, &new).await?;
            optimizations::set_promotion(conn, optimization.id, promotion.id).await?;
            Ok(Some(promotion))
        })
        .await?;
    let Some(promotion) = created else {
        return Ok(());
    };
    // Lost pushes are the sweeper's.
    if let Err(error) = ctx
        .queue
        .push_versioning(
            VersioningKind::Promotion,
            &VersioningJob::new(tenant_id, promotion.id),
            job_id,
        )
        .await
    {
        tracing::warn!(
            error = format!("{error:#}"),
            "could not push the chained promotion; the sweeper will"
        );
    }
    Ok(())
}

/// Cancels an unfinished optimization and its running evaluations.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    id: Uuid,
    actor: &str,
) -> anyhow::Result<bool> {
    let Some(optimization) = optimizations::get(conn, tenant_id, id).await? else {
        return Ok(false);
    };
    if !optimizations::finish(
        conn, tenant_id, id, actor, "canceled", None, None, "canceled",
    )
    .await?
    {
        return Ok(false);
    }
    metrics::counter!("assay_optimizations_total", "outcome" => "canceled").increment(1);
    let mut ids: Vec<EvaluationId> = optimizations::candidates(conn, tenant_id, id)
        .await?
        .into_iter()
        .filter_map(|candidate| candidate.evaluation_id)
        .collect();
    ids.extend(optimization.parent_train_evaluation_id);
    ids.extend(optimization.parent_validation_evaluation_id);
    for evaluation in ids {
        // Finished (or reused) ones are left as they are.
        lifecycle::cancel(conn, tenant_id, evaluation, actor, CancelReason::User).await?;
    }
    Ok(true)
}
