//! The chunk job: every run (item x repeat) of one chunk — a range of items
//! of one evaluation on one model — that has no result yet is rendered,
//! sent to its model, graded and written.
//!
//! How it stays exact under at-least-once delivery:
//! - a worker runs a chunk only while it holds the chunk's lease
//!   ([`lifecycle::start_chunk`]); a second delivery meanwhile waits for it;
//! - before calling, it reads which runs of the range have a result and
//!   skips them: a re-run (after a crash, a shutdown, a retry) redoes only
//!   what is missing, with no second LLM call or bill for finished runs;
//! - results are written by one writer task in batches with
//!   `ON CONFLICT DO NOTHING`, and counters move by the rows inserted;
//! - the chunk is done only when every run of its range has a row, and the
//!   last chunk to finish finalizes the evaluation through a guarded UPDATE.
//!
//! It stops starting calls when the worker shuts down (the chunk is handed
//! back to the queue at once) and when the lease renewal finds the chunk
//! canceled or taken over. Memory stays flat: a chunk's items are read a
//! page at a time and at most `--concurrency` calls are alive per process.
//!
//! A re-grading (an evaluation with a source) takes each output from its
//! source evaluation's result instead of calling the model: only judge
//! graders call a model.
//!
//! Budgets: when the evaluation has `max_cost_usd` or its tenant a monthly
//! budget, each call first reserves its expected cost
//! ([`assay_core::budget`], [`budgets::reserve`]); a refused reservation
//! cancels the evaluation (reason `budget` or `tenant_budget`) and the chunk
//! stops starting calls. The result writer settles each batch's
//! reservations against what its calls cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_core::db::models::budgets;
use assay_core::db::models::chunks::{self, Chunk, Redelivery};
use assay_core::db::models::datasets::{self, DatasetItem};
use assay_core::db::models::evaluations::{CancelReason, Evaluation};
use assay_core::db::models::lifecycle::{self, Finish, NotRun, Start};
use assay_core::db::models::prompts;
use assay_core::db::models::results::{self, CallFigures, NewResult, ResultStatus};
use assay_core::domain::{ChatMessage, ModelParams};
use assay_core::graders::{self, GradeInput, Grader, GraderSpec, Judge, JudgeReply};
use assay_core::providers::Model;
use assay_core::providers::call::{CallOptions, LlmClient};
use assay_core::queue::ChunkJob;
use assay_core::templates::PromptTemplate;
use metrics::{counter, gauge, histogram};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::capacity::HeldSlot;
use crate::environment::Environment;
use crate::leases::{ChunkHandle, LEASE};

/// Items read per page.
const ITEM_PAGE: i32 = 500;
/// Result rows per INSERT (19 columns: far below the bind-parameter limit).
const WRITE_BATCH: usize = 500;
/// The oldest unsaved row waits at most this long. Under steady results a
/// batch would otherwise only fill by size; every unsaved answer is a call
/// billed again if the worker dies, so the bound is on time as well.
const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// Why a run did not finish its chunk.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (the evaluation's inputs are broken); the
    /// evaluation has been marked failed.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Retrying may help (database or Redis trouble, a lease held elsewhere).
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

impl JobError {
    fn transient(error: impl Into<anyhow::Error>) -> Self {
        JobError::Transient(error.into())
    }
}

/// What a run of a chunk came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every run of the chunk has a result; `last` when it finished its evaluation.
    Done { last: bool },
    /// Handed back to the queue (the worker is shutting down).
    Released,
    /// Stopped early: canceled, or taken over by another worker.
    Stopped,
    /// Nothing to do: done already, gone, or its evaluation is finished.
    Skipped,
}

/// Everything the calls of one evaluation share, compiled once.
struct Plan {
    evaluation: Evaluation,
    template: PromptTemplate,
    graders: Vec<Grader>,
    models: Vec<Arc<Model>>,
    params: ModelParams,
    judge: ProviderJudge,
    llm: Arc<LlmClient>,
    /// Whether calls reserve against budgets, and whether the tenant's
    /// monthly one is among them. None: nothing to reserve.
    budget: Option<Budgets>,
}

/// Which budgets an evaluation's calls count against.
#[derive(Debug, Clone, Copy)]
struct Budgets {
    tenant: bool,
}

/// What one run spent, for the writer to settle against budgets.
#[derive(Debug, Clone, Copy, Default)]
struct Spend {
    /// Reserved before the call.
    reserved: f64,
    /// What its calls cost (generation, when it called the model, and judges).
    spent: f64,
}

/// Judge calls go through the same provider layer as generation.
struct ProviderJudge {
    llm: Arc<LlmClient>,
    use_cache: bool,
}

#[async_trait::async_trait]
impl Judge for ProviderJudge {
    async fn ask(&self, model: &str, messages: &[ChatMessage]) -> Result<JudgeReply, String> {
        let model = self
            .llm
            .catalog
            .resolve(model)
            .map_err(|error| error.message)?;
        // Judges answer at temperature 0: the same output gets the same verdict.
        let params = ModelParams {
            temperature: Some(0.0),
            ..ModelParams::default()
        };
        let options = CallOptions {
            purpose: "judge",
            repeat: 0,
            use_cache: self.use_cache,
            slot: None,
        };
        let report = self.llm.complete(&model, messages, &params, options).await;
        record_spend(
            report.answered_by.as_deref().unwrap_or(model.name.as_str()),
            "judge",
            report.cost_usd,
        );
        let completion = report.outcome.map_err(|error| error.to_string())?;
        Ok(JudgeReply {
            cost_usd: report.cost_usd,
            text: completion.text,
        })
    }
}

/// What the chunk kind keeps for itself across jobs (registered as the
/// chunk consumers' own data, next to the shared [`Environment`]).
#[derive(Default)]
pub struct ChunkKind {
    pub(crate) plans: PlanCache,
}

pub async fn run(
    job: ChunkJob,
    env: Arc<Environment>,
    kind: Arc<ChunkKind>,
) -> Result<Outcome, JobError> {
    if job.v != ChunkJob::VERSION {
        return Err(JobError::Permanent(anyhow::anyhow!(
            "unknown job payload version {}",
            job.v
        )));
    }
    let started = {
        let mut conn = env.pool.get().await.map_err(JobError::transient)?;
        lifecycle::start_chunk(&mut conn, &job, &env.worker_name, LEASE)
            .await
            .map_err(JobError::transient)?
    };
    let (chunk, evaluation, refill) = match started {
        Start::Run {
            chunk,
            evaluation,
            refill,
        } => (chunk, evaluation, refill),
        Start::NotRun(NotRun::Elsewhere) => {
            // Its holder finishes it, or dies and its lease expires: look again later.
            return Err(JobError::Transient(anyhow::anyhow!(
                "chunk {} is running on another worker",
                job.chunk_index
            )));
        }
        Start::NotRun(_) => return Ok(Outcome::Skipped),
    };
    // Jobs pushed again by the sweeper carry no request id: the row has it.
    if job.request_id.is_none() {
        tracing::Span::current().record("request_id", evaluation.request_id.as_deref());
    }
    tracing::info!(model = %chunk.model, first = chunk.first_position, last = chunk.last_position, "chunk started");
    // The evaluation's next chunk, queued when this one started. If the push
    // is lost, the sweeper finds the queued row without a job and pushes it.
    if let Err(error) = env.queue.push(&refill).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "could not push the next chunk; the sweeper will"
        );
    }
    let registration = env.active.register(chunk.evaluation_id, chunk.chunk_index);
    if chunk.crashes >= env.max_chunk_crashes {
        return super::poison::give_up(&env, &chunk, &evaluation).await;
    }
    let plan = match kind.plans.plan_for(&env, &evaluation).await {
        Ok(plan) => plan,
        Err(PlanError::Database(error)) => {
            give_back(&env, &chunk).await;
            return Err(JobError::Transient(error));
        }
        Err(PlanError::Invalid(reason)) => return Err(fail_evaluation(&env, &job, reason).await),
    };
    let Some(model_index) = plan
        .models
        .iter()
        .position(|model| model.name == chunk.model)
    else {
        let reason = format!(
            "chunk model {:?} is not one of the evaluation's",
            chunk.model
        );
        return Err(fail_evaluation(&env, &job, reason).await);
    };

    let (results_tx, results_rx) = mpsc::channel::<(NewResult, Spend)>(WRITE_BATCH * 4);
    let writer = tokio::spawn(
        write_results(
            env.clone(),
            job.clone(),
            plan.budget.map(|budget| budget.tenant),
            results_rx,
        )
        .in_current_span(),
    );
    let produced = produce(
        &env,
        &plan,
        &chunk,
        model_index,
        &registration.handle,
        results_tx,
    )
    .await;
    let written = writer
        .await
        .map_err(|error| JobError::Transient(anyhow::anyhow!("result writer panicked: {error}")));
    let budget_stop =
        match produced.and_then(|stop| written.and_then(|written| written).map(|()| stop)) {
            Ok(stop) => stop,
            Err(error) => {
                give_back(&env, &chunk).await;
                return Err(error);
            }
        };
    if budget_stop || registration.handle.stopped() {
        return Ok(Outcome::Stopped);
    }
    if env.shutting_down() {
        hand_back(&env, &chunk).await?;
        return Ok(Outcome::Released);
    }
    complete(&env, &chunk, &evaluation).await
}

/// Marks the chunk done once every run of it has a result, and finalizes
/// the evaluation when it was the last; hands the chunk back otherwise.
pub(super) async fn complete(
    env: &Environment,
    chunk: &Chunk,
    evaluation: &Evaluation,
) -> Result<Outcome, JobError> {
    let mut conn = env.pool.get().await.map_err(JobError::transient)?;
    let finished = lifecycle::finish_chunk(&mut conn, chunk, evaluation.repeats, &env.worker_name)
        .await
        .map_err(JobError::transient)?;
    match finished {
        Finish::Done { last } => {
            if last
                && lifecycle::finalize(
                    &mut conn,
                    chunk.tenant_id,
                    chunk.evaluation_id,
                    &env.actor(),
                )
                .await
                .map_err(JobError::transient)?
            {
                tracing::info!(evaluation.id = %chunk.evaluation_id, total = evaluation.total, "evaluation finished");
            }
            Ok(Outcome::Done { last })
        }
        Finish::NotHeld => Ok(Outcome::Stopped),
        Finish::Incomplete { missing } => {
            drop(conn);
            give_back(env, chunk).await;
            Err(JobError::Transient(anyhow::anyhow!(
                "{missing} runs of the chunk have no result; retrying them"
            )))
        }
    }
}

/// A failure retrying cannot mend: the evaluation is marked failed, which
/// also cancels its unfinished chunks and drops their leases (this one's
/// included), so that no sweeper queues the chunk again. If the database
/// cannot be reached, the failure stays transient: the job comes back and
/// fails the evaluation then.
async fn fail_evaluation(env: &Environment, job: &ChunkJob, reason: String) -> JobError {
    let failed = match env.pool.get().await {
        Ok(mut conn) => {
            lifecycle::fail(
                &mut conn,
                job.tenant_id,
                job.evaluation_id,
                &env.actor(),
                &reason,
            )
            .await
        }
        Err(error) => return JobError::transient(error),
    };
    match failed {
        Ok(_) => JobError::Permanent(anyhow::anyhow!(reason)),
        Err(error) => JobError::transient(error),
    }
}

/// Drops the lease after a failure, so that the job's next delivery (the
/// queue retries it under the same id) starts at once. If the database is
/// down, the lease simply expires.
async fn give_back(env: &Environment, chunk: &Chunk) {
    if let Ok(mut conn) = env.pool.get().await
        && let Err(error) =
            chunks::release(&mut conn, chunk, &env.worker_name, Redelivery::SameJob).await
    {
        tracing::warn!(error = %error, "could not drop a chunk lease; it expires by itself");
    }
}

/// Hands a chunk back on shutdown under a fresh job, so that another worker
/// continues it at once instead of after the queue's retry delay.
async fn hand_back(env: &Environment, chunk: &Chunk) -> Result<(), JobError> {
    let push = {
        let mut conn = env.pool.get().await.map_err(JobError::transient)?;
        chunks::release(&mut conn, chunk, &env.worker_name, Redelivery::FreshJob)
            .await
            .map_err(JobError::transient)?
    };
    if let Some(push) = push {
        env.queue
            .push(&[push])
            .await
            .map_err(|error| JobError::Transient(error.context("handing the chunk back")))?;
    }
    Ok(())
}

pub enum PlanError {
    /// The database could not be read: try again.
    Database(anyhow::Error),
    /// The evaluation cannot run (named why).
    Invalid(String),
}

impl From<diesel::result::Error> for PlanError {
    fn from(error: diesel::result::Error) -> Self {
        PlanError::Database(error.into())
    }
}

/// Compiled plans of the evaluations whose chunks this process runs: chunks
/// of one evaluation share one template, grader set and model list.
#[derive(Default)]
pub struct PlanCache {
    plans: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Arc<Plan>>>,
}

/// Plans kept at most; the cache is cleared when it grows past this (a
/// plan is cheap to rebuild, and finished evaluations leave theirs behind).
const PLANS_KEPT: usize = 256;

impl PlanCache {
    async fn plan_for(
        &self,
        env: &Environment,
        evaluation: &Evaluation,
    ) -> Result<Arc<Plan>, PlanError> {
        if let Some(plan) = self.plans.lock().expect("plans lock").get(&evaluation.id) {
            return Ok(plan.clone());
        }
        let mut conn = env
            .pool
            .get()
            .await
            .map_err(|error| PlanError::Database(error.into()))?;
        let plan = Arc::new(plan(&mut conn, env, evaluation.clone()).await?);
        let mut plans = self.plans.lock().expect("plans lock");
        if plans.len() >= PLANS_KEPT {
            plans.clear();
        }
        plans.insert(evaluation.id, plan.clone());
        Ok(plan)
    }
}

async fn plan(
    conn: &mut diesel_async::AsyncPgConnection,
    env: &Environment,
    evaluation: Evaluation,
) -> Result<Plan, PlanError> {
    let version =
        prompts::get_version_by_id(conn, evaluation.tenant_id, evaluation.prompt_version_id)
            .await?
            .ok_or_else(|| PlanError::Invalid("the prompt version no longer exists".to_owned()))?;
    let content = version.content().map_err(|error| {
        PlanError::Invalid(format!("stored prompt version does not parse: {error}"))
    })?;
    let template = PromptTemplate::compile(&content.messages)
        .map_err(|error| PlanError::Invalid(format!("prompt template: {error}")))?;
    let specs: Vec<GraderSpec> = serde_json::from_value(evaluation.graders.clone())
        .map_err(|error| PlanError::Invalid(format!("stored graders do not parse: {error}")))?;
    let graders =
        graders::compile_all(&specs).map_err(|error| PlanError::Invalid(error.to_string()))?;
    let judge = ProviderJudge {
        llm: env.llm.clone(),
        use_cache: evaluation.use_cache,
    };
    let overrides: ModelParams = serde_json::from_value(evaluation.params.clone())
        .map_err(|error| PlanError::Invalid(format!("stored params do not parse: {error}")))?;
    let models = evaluation
        .model_names()
        .iter()
        .map(|name| env.llm.catalog.resolve(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PlanError::Invalid(error.to_string()))?;
    let tenant = budgets::tenant_budget(conn, evaluation.tenant_id)
        .await?
        .is_some();
    let budget = (tenant || evaluation.max_cost_usd.is_some()).then_some(Budgets { tenant });
    Ok(Plan {
        params: content.params.merged_with(&overrides),
        evaluation,
        template,
        graders,
        models,
        judge,
        llm: env.llm.clone(),
        budget,
    })
}

/// Reads the chunk's items a page at a time and starts a call for every
/// run that has no result, one permit at a time (so the chunks of a process
/// take turns). Every run of the chunk is taken off the backlog: skipped,
/// started, or abandoned when the chunk stops. True when a budget stopped it
/// (the evaluation is canceled).
async fn produce(
    env: &Arc<Environment>,
    plan: &Arc<Plan>,
    chunk: &Chunk,
    model_index: usize,
    handle: &ChunkHandle,
    results: mpsc::Sender<(NewResult, Spend)>,
) -> Result<bool, JobError> {
    let evaluation = &plan.evaluation;
    let priority = chunk.priority();
    let repeats = evaluation.repeats;
    let runs = usize::try_from(i64::from(chunk.items()) * i64::from(repeats)).unwrap_or(0);
    env.backlog.add(runs);
    let mut accounted = 0;
    let mut calls = JoinSet::new();
    let mut from = chunk.first_position;
    let mut budget_stop = false;
    let outcome = 'pages: loop {
        // A dead writer (it gave up on PostgreSQL) makes further calls pointless.
        if from > chunk.last_position
            || env.shutting_down()
            || handle.stopped()
            || results.is_closed()
        {
            break Ok(());
        }
        let to = (from + ITEM_PAGE - 1).min(chunk.last_position);
        let page = async {
            let mut conn = env.pool.get().await.map_err(JobError::transient)?;
            let items = datasets::items_between(
                &mut conn,
                evaluation.tenant_id,
                evaluation.dataset_id,
                from,
                to,
            )
            .await
            .map_err(JobError::transient)?;
            let done = results::existing_keys(
                &mut conn,
                evaluation.tenant_id,
                evaluation.id,
                &chunk.model,
                from,
                to,
            )
            .await
            .map_err(JobError::transient)?;
            let sources = match evaluation.source_evaluation_id {
                None => None,
                Some(source) => Some(
                    results::stored_outputs(
                        &mut conn,
                        evaluation.tenant_id,
                        source,
                        &chunk.model,
                        from,
                        to,
                    )
                    .await
                    .map_err(JobError::transient)?,
                ),
            };
            Ok::<_, JobError>((items, done, sources))
        }
        .await;
        let (items, done, sources) = match page {
            Ok(page) => page,
            Err(error) => break 'pages Err(error),
        };
        from = to + 1;
        // Off the async runtime: a tenant's template may spend its whole
        // render budget on every item (templates::RENDER_FUEL), and its own
        // graders compile regexes and templates.
        let rendering = plan.clone();
        let rendered_page = tokio::task::spawn_blocking(move || {
            items
                .into_iter()
                .map(|item| {
                    let context = item.template_context();
                    let rendered = rendering.template.render(&context);
                    // The item's own graders, compiled once for all its runs.
                    let graders = item_graders(&item);
                    (
                        Arc::new(item),
                        Arc::new(context),
                        Arc::new(rendered),
                        Arc::new(graders),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
        let rendered_page = match rendered_page {
            Ok(page) => page,
            Err(error) => break 'pages Err(JobError::transient(error)),
        };
        for (item, context, rendered, item_graders) in rendered_page {
            for repeat in 0..repeats {
                if env.shutting_down() || handle.stopped() || results.is_closed() {
                    break 'pages Ok(());
                }
                let key = (item.position, repeat);
                accounted += 1;
                if done.contains(&key) {
                    env.backlog.remove(1);
                    continue;
                }
                let source = sources.as_ref().map(|sources| sources.get(&key).cloned());
                let permit = env.slots.acquire(priority, evaluation.id).await;
                env.backlog.remove(1);
                // Checked again: a cancel may have come while waiting for the permit.
                if handle.stopped() {
                    break 'pages Ok(());
                }
                let reserved =
                    match reserve(env, plan, model_index, &rendered, source.is_some()).await {
                        Ok(Ok(reserved)) => reserved,
                        Ok(Err(reason)) => {
                            budget_stop = true;
                            if let Err(error) = stop_for_budget(env, evaluation, reason).await {
                                break 'pages Err(error);
                            }
                            break 'pages Ok(());
                        }
                        Err(error) => break 'pages Err(error),
                    };
                let (plan, item, context, rendered, results, item_graders) = (
                    plan.clone(),
                    item.clone(),
                    context.clone(),
                    rendered.clone(),
                    results.clone(),
                    item_graders.clone(),
                );
                let slot = HeldSlot::new(env.slots.clone(), priority, evaluation.id, permit);
                calls.spawn(async move {
                    let run = Run {
                        model_index,
                        repeat,
                        source,
                    };
                    let called = run.source.is_none();
                    let (result, errored) = evaluate_one(
                        &plan,
                        run,
                        &item,
                        &context,
                        &rendered,
                        &item_graders,
                        &slot,
                    )
                    .await;
                    drop(slot);
                    if let Some(reason) = errored {
                        log_errored(&result, reason);
                    }
                    counter!("assay_runs_finished_total", "model" => result.model.clone(), "status" => result.status)
                        .increment(1);
                    let spend = Spend {
                        reserved,
                        spent: if called { result.call.cost_usd } else { 0.0 } + result.grading_cost_usd,
                    };
                    // The writer outlives every call; a send fails only if it died, and then
                    // the job fails on the writer's error.
                    let _ = results.send((result, spend)).await;
                }.in_current_span());
                while let Some(joined) = calls.try_join_next() {
                    report_call_panic(joined);
                }
            }
        }
    };
    // Runs never reached (a stop, a shutdown, an error, or items the dataset lacks).
    env.backlog.remove(runs.saturating_sub(accounted));
    while let Some(joined) = calls.join_next().await {
        report_call_panic(joined);
    }
    outcome.map(|()| budget_stop)
}

/// A call task that panicked wrote no result: the chunk ends incomplete and
/// is retried, and the panic is logged and counted instead of vanishing.
fn report_call_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        counter!("assay_call_task_panics_total").increment(1);
        let panic = error.into_panic();
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic".to_owned());
        tracing::error!(panic = message, "a call task panicked; its run is retried");
    }
}

/// Reserves the expected cost of one run's call against the evaluation's
/// budgets: `Ok(Ok(dollars reserved))`, or the budget that refused. Nothing
/// is reserved without budgets, for a re-grading's stored output, or for a
/// prompt that does not render (no call is made).
async fn reserve(
    env: &Environment,
    plan: &Plan,
    model_index: usize,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    from_source: bool,
) -> Result<Result<f64, CancelReason>, JobError> {
    let (Some(budget), Ok(messages), false) = (plan.budget, rendered, from_source) else {
        return Ok(Ok(0.0));
    };
    let amount = assay_core::budget::call_cost(&plan.models[model_index], messages, &plan.params)
        .expected_usd;
    let evaluation = &plan.evaluation;
    let mut conn = env.pool.get().await.map_err(JobError::transient)?;
    let reserved = budgets::reserve(
        &mut conn,
        evaluation.tenant_id,
        evaluation.id,
        amount,
        budget.tenant,
    )
    .await
    .map_err(JobError::transient)?;
    if reserved.is_ok() {
        gauge!("assay_budget_reserved_usd").increment(amount);
    }
    Ok(reserved.map(|()| amount))
}

/// Cancels the evaluation for `reason` (once, whichever worker gets there first).
async fn stop_for_budget(
    env: &Environment,
    evaluation: &Evaluation,
    reason: CancelReason,
) -> Result<(), JobError> {
    let mut conn = env.pool.get().await.map_err(JobError::transient)?;
    let canceled = lifecycle::cancel(
        &mut conn,
        evaluation.tenant_id,
        evaluation.id,
        &env.actor(),
        reason,
    )
    .await
    .map_err(JobError::transient)?;
    if canceled {
        let scope = match reason {
            CancelReason::TenantBudget => "tenant",
            _ => "evaluation",
        };
        counter!("assay_budget_stops_total", "scope" => scope).increment(1);
        tracing::warn!(
            reason = reason.as_str(),
            max_cost_usd = evaluation.max_cost_usd,
            "budget reached: evaluation canceled, no new calls"
        );
    }
    Ok(())
}

/// Counts dollars spent by `model` for `purpose` (generate, judge); free
/// calls too, so that every model in use has a series.
fn record_spend(model: &str, purpose: &'static str, dollars: f64) {
    gauge!("assay_spend_usd", "model" => model.to_owned(), "purpose" => purpose).increment(dollars);
}

/// One run of one item on one model.
struct Run {
    model_index: usize,
    repeat: i32,
    /// For a re-grading: the source evaluation's result for this run (None
    /// inside when the source has none).
    source: Option<Option<results::StoredOutput>>,
}

/// What generation produced for a run: the answer, or why there is none.
struct Generated {
    output: Result<String, String>,
    call: CallFigures,
    /// Why `output` is an error, for metrics: the provider's failure
    /// (`rate_limited`, `timeout`, ...), `template` or `source`.
    failure: &'static str,
}

impl Generated {
    /// No output, for `reason`, and nothing spent.
    fn nothing(reason: String) -> Self {
        Self {
            output: Err(reason),
            call: CallFigures::default(),
            failure: "template",
        }
    }
}

/// An item's own graders, compiled; an error (a row the API did not check)
/// makes the item's results errored rather than failing the chunk.
fn item_graders(item: &DatasetItem) -> Result<Vec<Grader>, String> {
    match &item.graders {
        None => Ok(Vec::new()),
        Some(stored) => {
            let graders = graders::compile_item(stored)?;
            counter!("assay_item_graders_compiled_total").increment(graders.len() as u64);
            Ok(graders)
        }
    }
}

/// Calls one model on one rendered item (with retries), or takes the stored
/// output of a re-grading, and grades the answer with the evaluation's
/// graders and the item's own.
async fn evaluate_one(
    plan: &Plan,
    run: Run,
    item: &DatasetItem,
    context: &Value,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    item_graders: &Result<Vec<Grader>, String>,
    slot: &HeldSlot,
) -> (NewResult, Option<&'static str>) {
    let model = &plan.models[run.model_index];
    let generated = match run.source {
        Some(stored) => from_source(stored),
        None => {
            let options = CallOptions {
                purpose: "generate",
                repeat: u32::try_from(run.repeat).unwrap_or(0),
                use_cache: plan.evaluation.use_cache,
                slot: Some(slot),
            };
            generate(&plan.llm, model, rendered, &plan.params, options).await
        }
    };
    // Errored until graded, with what the call cost; the error comes below.
    let mut result = NewResult {
        error: None,
        call: generated.call,
        ..NewResult::errored(
            &plan.evaluation,
            &model.name,
            item.position,
            run.repeat,
            &item.item_key,
            "",
        )
    };
    let output = match generated.output {
        Ok(output) => output,
        Err(error) => {
            result.error = Some(error);
            return (result, Some(generated.failure));
        }
    };
    let item_graders = match item_graders {
        Ok(graders) => graders.as_slice(),
        Err(error) => {
            result.error = Some(error.clone());
            result.output = Some(output);
            return (result, Some("item_graders"));
        }
    };
    let input = GradeInput {
        output: &output,
        context,
        latency_ms: result.call.latency_ms.map(f64::from),
        cost_usd: result.call.cost_usd,
        finish_reason: result.call.finish_reason.as_deref(),
    };
    // The item's own pass mark wins over the evaluation's.
    let threshold = item.threshold.or(plan.evaluation.threshold);
    let verdict =
        graders::grade_with_item(&plan.graders, item_graders, &input, &plan.judge, threshold).await;
    result.status = if verdict.errored {
        ResultStatus::Errored
    } else if verdict.passed {
        ResultStatus::Passed
    } else {
        ResultStatus::Failed
    }
    .as_str();
    if verdict.errored {
        result.error = verdict.grades.iter().find_map(|grade| {
            grade
                .error
                .as_ref()
                .map(|error| format!("{} grader: {error}", grade.grader))
        });
    }
    result.score = (!verdict.errored).then_some(verdict.score);
    result.grading_cost_usd = verdict.grading_cost_usd;
    result.grades = serde_json::to_value(&verdict.grades).expect("grades serialize");
    result.output = Some(output);
    (result, verdict.errored.then_some("grader"))
}

async fn generate(
    llm: &LlmClient,
    model: &Arc<Model>,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    params: &ModelParams,
    options: CallOptions<'_>,
) -> Generated {
    let messages = match rendered {
        Ok(messages) => messages,
        Err(error) => return Generated::nothing(format!("template: {error}")),
    };
    let report = llm.complete(model, messages, params, options).await;
    record_spend(
        report.answered_by.as_deref().unwrap_or(model.name.as_str()),
        "generate",
        report.cost_usd,
    );
    let saturate = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut generated = Generated::nothing(String::new());
    let call = &mut generated.call;
    call.attempts = saturate(report.attempts);
    call.answered_by = report.answered_by;
    call.cached = report.cached;
    call.cost_usd = report.cost_usd;
    match report.outcome {
        Ok(completion) => {
            call.latency_ms = report
                .latency
                .map(|latency| i32::try_from(latency.as_millis()).unwrap_or(i32::MAX));
            call.input_tokens = saturate(completion.usage.input_tokens);
            call.output_tokens = saturate(completion.usage.output_tokens);
            call.cached_tokens = saturate(completion.usage.cached_tokens);
            call.finish_reason = completion.finish_reason;
            generated.output = Ok(completion.text);
        }
        Err(error) => {
            generated.failure = error.outcome();
            generated.output = Err(format!(
                "{} after {} attempt(s): {error}",
                model.name, report.attempts
            ))
        }
    }
    generated
}

/// Logs an errored result once (not per attempt) and counts it by reason:
/// the provider's failure (`rate_limited`, `timeout`, ...), `template`,
/// `source`, `item_graders` or `grader`.
fn log_errored(result: &NewResult, reason: &'static str) {
    counter!("assay_results_errored_total", "model" => result.model.clone(), "reason" => reason)
        .increment(1);
    tracing::warn!(
        evaluation.id = %result.evaluation_id,
        model = %result.model,
        item = result.item_position,
        repeat = result.repeat_index,
        attempts = result.call.attempts,
        reason,
        error = result.error.as_deref().unwrap_or_default(),
        "result errored"
    );
}

/// A re-grading's output: what the source stored, at the source's cost.
fn from_source(stored: Option<results::StoredOutput>) -> Generated {
    let Some(stored) = stored else {
        let mut nothing =
            Generated::nothing("the source evaluation has no result for this run".to_owned());
        nothing.failure = "source";
        return nothing;
    };
    Generated {
        output: stored.output.ok_or_else(|| {
            stored
                .error
                .unwrap_or_else(|| "the source run has no output".to_owned())
        }),
        call: stored.call,
        failure: "source",
    }
}

/// Collects results and writes them in batches until every sender is gone.
/// A batch that fails to write is retried (PostgreSQL restarting, a
/// connection dropped) for up to two minutes before the job gives up.
/// With budgets (`tenant_budget` is Some), each written batch then settles
/// its reservations: a call's cost was paid whether or not its row was new.
async fn write_results(
    env: Arc<Environment>,
    job: ChunkJob,
    tenant_budget: Option<bool>,
    mut results: mpsc::Receiver<(NewResult, Spend)>,
) -> Result<(), JobError> {
    let mut received = Vec::with_capacity(WRITE_BATCH);
    // When the oldest unsaved row arrived plus WRITE_INTERVAL: fixed when a
    // batch starts, not pushed back by every row that joins it.
    let mut due_at: Option<tokio::time::Instant> = None;
    loop {
        // Never 0: a full batch is written before receiving again.
        let room = WRITE_BATCH - received.len();
        let closed = match due_at {
            None => results.recv_many(&mut received, room).await == 0,
            Some(at) => {
                tokio::time::timeout_at(at, results.recv_many(&mut received, room)).await == Ok(0)
            }
        };
        if due_at.is_none() && !received.is_empty() {
            due_at = Some(tokio::time::Instant::now() + WRITE_INTERVAL);
        }
        let due = closed
            || received.len() >= WRITE_BATCH
            || due_at.is_some_and(|at| tokio::time::Instant::now() >= at);
        if due && !received.is_empty() {
            due_at = None;
            let mut spend = Spend::default();
            let batch: Vec<NewResult> = received
                .drain(..)
                .map(|(result, run)| {
                    spend.reserved += run.reserved;
                    spend.spent += run.spent;
                    result
                })
                .collect();
            write_batch(&env, &job, &batch).await?;
            if let Some(tenant) = tenant_budget {
                settle(&env, &job, spend, tenant).await;
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Swaps a batch's reservations for its cost. If that fails, the
/// reservations stay: the budget stops early, never late.
async fn settle(env: &Environment, job: &ChunkJob, spend: Spend, tenant: bool) {
    gauge!("assay_budget_reserved_usd").decrement(spend.reserved);
    let settled = async {
        let mut conn = env.pool.get().await?;
        budgets::settle(
            &mut conn,
            job.tenant_id,
            job.evaluation_id,
            spend.reserved,
            spend.spent,
            tenant,
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = settled {
        tracing::warn!(
            error = format!("{error:#}"),
            "could not settle budget reservations; they stay reserved"
        );
    }
}

async fn write_batch(
    env: &Environment,
    job: &ChunkJob,
    batch: &[NewResult],
) -> Result<(), JobError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let attempt = async {
            let mut conn = env
                .pool
                .get()
                .await
                .context("getting a database connection")?;
            let written = results::insert_batch(&mut conn, job.tenant_id, job.evaluation_id, batch)
                .await
                .context("writing results")?;
            anyhow::Ok(written)
        }
        .await;
        match attempt {
            Ok(written) => {
                histogram!("assay_result_batch_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                crate::metrics::RESULTS_WRITTEN
                    .fetch_add(written.total() as u64, std::sync::atomic::Ordering::Relaxed);
                for (status, count) in [
                    ("passed", written.passed),
                    ("failed", written.failed),
                    ("errored", written.errored),
                ] {
                    if count > 0 {
                        counter!("assay_results_written_total", "status" => status)
                            .increment(count as u64);
                    }
                }
                return Ok(());
            }
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(evaluation.id = %job.evaluation_id, error = format!("{error:#}"), "result batch not written; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(JobError::Transient(error)),
        }
    }
}
