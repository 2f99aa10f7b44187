//! The evaluation job: every item x model of one evaluation that has no
//! result yet is rendered, sent to its model, graded and written.
//!
//! How it stays exact under at-least-once delivery:
//! - before each page of items it reads which (item, model) pairs have a
//!   result, and skips them: a re-run redoes only what is missing;
//! - results are written by one writer task in batches with
//!   `ON CONFLICT DO NOTHING`, and counters move by the rows inserted;
//! - the evaluation finishes through a guarded UPDATE (`status = 'running'`),
//!   once, after every pair has a row.
//!
//! Memory stays flat: items are streamed a page at a time and at most
//! `--concurrency` calls (and their results) are alive at once.
//!
//! A re-grading (an evaluation with a source) takes each output from its
//! source evaluation's result instead of calling the model: only judge
//! graders call a model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_core::db::models::datasets::{self, DatasetItem};
use assay_core::db::models::evaluations::{self, Evaluation};
use assay_core::db::models::prompts;
use assay_core::db::models::results::{self, NewResult, ResultStatus};
use assay_core::domain::{ChatMessage, ModelParams};
use assay_core::graders::{self, GradeInput, Grader, GraderSpec, Judge, JudgeReply};
use assay_core::providers::Model;
use assay_core::providers::call::{CallOptions, LlmClient};
use assay_core::queue::EvaluationJob;
use assay_core::templates::PromptTemplate;
use metrics::{counter, histogram};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::environment::Environment;

/// Items read per page.
const ITEM_PAGE: i64 = 500;
/// Result rows per INSERT (16 columns: far below the bind-parameter limit).
const WRITE_BATCH: usize = 500;
/// A partial batch is written after this long, so counts stay current.
const WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// Why a run did not finish its evaluation.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (the evaluation's inputs are broken); the
    /// evaluation has been marked failed.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Retrying may help (database or Redis trouble, a worker shutting down).
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The evaluation is finished (by this run, or it already was).
    Finished,
    /// Nothing to do: the evaluation is gone, finished or canceled.
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
        };
        let report = self.llm.complete(&model, messages, &params, options).await;
        let completion = report.outcome.map_err(|error| error.to_string())?;
        Ok(JudgeReply {
            cost_usd: report.cost_usd,
            text: completion.text,
        })
    }
}

pub async fn run(job: EvaluationJob, env: Arc<Environment>) -> Result<Outcome, JobError> {
    if job.v != EvaluationJob::VERSION {
        return Err(JobError::Permanent(anyhow::anyhow!(
            "unknown job payload version {}",
            job.v
        )));
    }
    let actor = env.actor();
    let plan = {
        let mut conn = env
            .pool
            .get()
            .await
            .map_err(|error| JobError::Transient(error.into()))?;
        let Some(evaluation) =
            evaluations::start(&mut conn, job.tenant_id, job.evaluation_id, &actor)
                .await
                .map_err(|error| JobError::Transient(error.into()))?
        else {
            return Ok(Outcome::Skipped);
        };
        match plan(&mut conn, &env, evaluation).await {
            Ok(plan) => plan,
            Err(PlanError::Database(error)) => return Err(JobError::Transient(error.into())),
            Err(PlanError::Invalid(reason)) => {
                evaluations::fail(&mut conn, job.tenant_id, job.evaluation_id, &actor, &reason)
                    .await
                    .map_err(|error| JobError::Transient(error.into()))?;
                return Err(JobError::Permanent(anyhow::anyhow!(reason)));
            }
        }
    };
    let plan = Arc::new(plan);

    let (results_tx, results_rx) = mpsc::channel::<NewResult>(WRITE_BATCH * 4);
    let writer = tokio::spawn(write_results(env.clone(), job, results_rx));
    let produced = produce(&env, &plan, results_tx).await;
    let written = writer
        .await
        .map_err(|error| JobError::Transient(anyhow::anyhow!("result writer panicked: {error}")))?;
    produced?;
    written?;

    if env.shutting_down() {
        return Err(JobError::Transient(anyhow::anyhow!(
            "worker shutting down; job released"
        )));
    }
    let mut conn = env
        .pool
        .get()
        .await
        .map_err(|error| JobError::Transient(error.into()))?;
    let current = evaluations::get(&mut conn, job.tenant_id, job.evaluation_id)
        .await
        .map_err(|error| JobError::Transient(error.into()))?
        .ok_or_else(|| JobError::Permanent(anyhow::anyhow!("evaluation disappeared")))?;
    if current.completed < current.total {
        return Err(JobError::Transient(anyhow::anyhow!(
            "{} of {} results written; retrying the rest",
            current.completed,
            current.total
        )));
    }
    evaluations::finish(&mut conn, job.tenant_id, job.evaluation_id, &actor)
        .await
        .map_err(|error| JobError::Transient(error.into()))?;
    tracing::info!(evaluation.id = %job.evaluation_id, total = current.total, "evaluation finished");
    Ok(Outcome::Finished)
}

enum PlanError {
    Database(diesel::result::Error),
    Invalid(String),
}

impl From<diesel::result::Error> for PlanError {
    fn from(error: diesel::result::Error) -> Self {
        PlanError::Database(error)
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
    Ok(Plan {
        params: content.params.merged_with(&overrides),
        evaluation,
        template,
        graders,
        models,
        judge,
        llm: env.llm.clone(),
    })
}

/// Walks the dataset page by page and starts a call for every missing
/// (item, model), at most `--concurrency` at once across the process.
async fn produce(
    env: &Arc<Environment>,
    plan: &Arc<Plan>,
    results: mpsc::Sender<NewResult>,
) -> Result<(), JobError> {
    let evaluation = &plan.evaluation;
    let mut calls = JoinSet::new();
    let mut after = None;
    loop {
        // A dead writer (it gave up on PostgreSQL) makes further calls pointless.
        if env.shutting_down() || results.is_closed() {
            break;
        }
        let (page, done, sources) = {
            let mut conn = env
                .pool
                .get()
                .await
                .map_err(|error| JobError::Transient(error.into()))?;
            let page = datasets::items_page(
                &mut conn,
                evaluation.tenant_id,
                evaluation.dataset_id,
                after,
                ITEM_PAGE,
            )
            .await
            .map_err(|error| JobError::Transient(error.into()))?;
            let (Some(first), Some(last)) = (page.data.first(), page.data.last()) else {
                break;
            };
            let done = results::existing_keys(
                &mut conn,
                evaluation.tenant_id,
                evaluation.id,
                first.position,
                last.position,
            )
            .await
            .map_err(|error| JobError::Transient(error.into()))?;
            let sources = match evaluation.source_evaluation_id {
                None => None,
                Some(source) => Some(Arc::new(
                    results::stored_outputs(
                        &mut conn,
                        evaluation.tenant_id,
                        source,
                        first.position,
                        last.position,
                    )
                    .await
                    .map_err(|error| JobError::Transient(error.into()))?,
                )),
            };
            (page, done, sources)
        };
        after = page.data.last().map(|item| item.position);
        for item in page.data {
            if env.shutting_down() || results.is_closed() {
                break;
            }
            let item = Arc::new(item);
            let context = Arc::new(item.template_context());
            let rendered = Arc::new(plan.template.render(&context));
            for (model_index, repeat) in (0..plan.models.len()).flat_map(|model_index| {
                (0..evaluation.repeats).map(move |repeat| (model_index, repeat))
            }) {
                let key = (item.position, plan.models[model_index].name.clone(), repeat);
                if done.contains(&key) {
                    continue;
                }
                if env.shutting_down() || results.is_closed() {
                    break;
                }
                let source = sources.as_ref().map(|sources| sources.get(&key).cloned());
                let permit = env
                    .llm_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (plan, item, context, rendered, results) = (
                    plan.clone(),
                    item.clone(),
                    context.clone(),
                    rendered.clone(),
                    results.clone(),
                );
                calls.spawn(async move {
                    let run = Run {
                        model_index,
                        repeat,
                        source,
                    };
                    let result = evaluate_one(&plan, run, &item, &context, &rendered).await;
                    drop(permit);
                    // The writer outlives every call; a send fails only if it died, and then
                    // the job fails on the writer's error.
                    let _ = results.send(result).await;
                });
                while calls.try_join_next().is_some() {}
            }
        }
        if !page.has_more {
            break;
        }
    }
    while calls.join_next().await.is_some() {}
    Ok(())
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
    latency_ms: Option<i32>,
    input_tokens: i32,
    output_tokens: i32,
    cost_usd: f64,
    attempts: i32,
    finish_reason: Option<String>,
    answered_by: Option<String>,
    cached: bool,
    cached_tokens: i32,
}

impl Generated {
    /// No output, for `reason`, and nothing spent.
    fn nothing(reason: String) -> Self {
        Self {
            output: Err(reason),
            latency_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            attempts: 0,
            finish_reason: None,
            answered_by: None,
            cached: false,
            cached_tokens: 0,
        }
    }
}

/// Calls one model on one rendered item (with retries), or takes the stored
/// output of a re-grading, and grades the answer.
async fn evaluate_one(
    plan: &Plan,
    run: Run,
    item: &DatasetItem,
    context: &Value,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
) -> NewResult {
    let model = &plan.models[run.model_index];
    let generated = match run.source {
        Some(stored) => from_source(stored),
        None => {
            let options = CallOptions {
                purpose: "generate",
                repeat: u32::try_from(run.repeat).unwrap_or(0),
                use_cache: plan.evaluation.use_cache,
            };
            generate(&plan.llm, model, rendered, &plan.params, options).await
        }
    };
    let mut result = NewResult {
        evaluation_id: plan.evaluation.id,
        model: model.name.clone(),
        item_position: item.position,
        repeat_index: run.repeat,
        tenant_id: plan.evaluation.tenant_id,
        item_key: item.item_key.clone(),
        status: ResultStatus::Errored.as_str(),
        output: None,
        score: None,
        grades: Value::Array(vec![]),
        latency_ms: generated.latency_ms,
        input_tokens: generated.input_tokens,
        output_tokens: generated.output_tokens,
        cost_usd: generated.cost_usd,
        grading_cost_usd: 0.0,
        attempts: generated.attempts,
        finish_reason: generated.finish_reason,
        error: None,
        answered_by: generated.answered_by,
        cached: generated.cached,
        cached_tokens: generated.cached_tokens,
    };
    let output = match generated.output {
        Ok(output) => output,
        Err(error) => {
            result.error = Some(error);
            return result;
        }
    };
    let input = GradeInput {
        output: &output,
        context,
        latency_ms: result.latency_ms.map(f64::from),
        cost_usd: result.cost_usd,
        finish_reason: result.finish_reason.as_deref(),
    };
    // The item's own pass mark wins over the evaluation's.
    let threshold = item.threshold.or(plan.evaluation.threshold);
    let verdict = graders::grade_all(&plan.graders, &input, &plan.judge, threshold).await;
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
    result
}

async fn generate(
    llm: &LlmClient,
    model: &Arc<Model>,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    params: &ModelParams,
    options: CallOptions,
) -> Generated {
    let messages = match rendered {
        Ok(messages) => messages,
        Err(error) => return Generated::nothing(format!("template: {error}")),
    };
    let report = llm.complete(model, messages, params, options).await;
    let saturate = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut generated = Generated::nothing(String::new());
    generated.attempts = saturate(report.attempts);
    generated.answered_by = report.answered_by;
    generated.cached = report.cached;
    generated.cost_usd = report.cost_usd;
    match report.outcome {
        Ok(completion) => {
            generated.latency_ms = report
                .latency
                .map(|latency| i32::try_from(latency.as_millis()).unwrap_or(i32::MAX));
            generated.input_tokens = saturate(completion.usage.input_tokens);
            generated.output_tokens = saturate(completion.usage.output_tokens);
            generated.cached_tokens = saturate(completion.usage.cached_tokens);
            generated.finish_reason = completion.finish_reason;
            generated.output = Ok(completion.text);
        }
        Err(error) => {
            generated.output = Err(format!(
                "{} after {} attempt(s): {error}",
                model.name, report.attempts
            ))
        }
    }
    generated
}

/// A re-grading's output: what the source stored, at the source's cost.
fn from_source(stored: Option<results::StoredOutput>) -> Generated {
    let Some(stored) = stored else {
        return Generated::nothing("the source evaluation has no result for this run".to_owned());
    };
    Generated {
        output: stored.output.ok_or_else(|| {
            stored
                .error
                .unwrap_or_else(|| "the source run has no output".to_owned())
        }),
        latency_ms: stored.latency_ms,
        input_tokens: stored.input_tokens,
        output_tokens: stored.output_tokens,
        cost_usd: stored.cost_usd,
        attempts: stored.attempts,
        finish_reason: stored.finish_reason,
        answered_by: stored.answered_by,
        cached: stored.cached,
        cached_tokens: stored.cached_tokens,
    }
}

/// Collects results and writes them in batches until every sender is gone.
/// A batch that fails to write is retried (PostgreSQL restarting, a
/// connection dropped) for up to two minutes before the job gives up.
async fn write_results(
    env: Arc<Environment>,
    job: EvaluationJob,
    mut results: mpsc::Receiver<NewResult>,
) -> Result<(), JobError> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let closed =
            match tokio::time::timeout(WRITE_INTERVAL, results.recv_many(&mut batch, WRITE_BATCH))
                .await
            {
                Ok(0) => true,
                Ok(_) if batch.len() < WRITE_BATCH => continue,
                Ok(_) | Err(_) => false,
            };
        if !batch.is_empty() {
            write_batch(&env, job, &batch).await?;
            batch.clear();
        }
        if closed {
            return Ok(());
        }
    }
}

async fn write_batch(
    env: &Environment,
    job: EvaluationJob,
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
