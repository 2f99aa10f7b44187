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
//!
//! The job in files: this one is job control (start, finish, hand back,
//! fail); [`plan`] compiles what an evaluation's calls share, [`produce`]
//! starts the calls, [`call`] makes and grades one, [`judge`] lets graders
//! call models, and [`writer`] saves the results.

mod call;
mod judge;
mod plan;
mod produce;
mod writer;

use std::sync::Arc;

use assay_core::db::models::chunks::{self, Chunk, Redelivery};
use assay_core::db::models::evaluations::Evaluation;
use assay_core::db::models::lifecycle::{self, Finish, NotRun, Start};
use assay_core::db::models::results::NewResult;
use assay_core::queue::ChunkJob;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::environment::Environment;
use crate::leases::LEASE;
use plan::{PlanCache, PlanError};
use writer::{Spend, WRITE_BATCH};

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
        writer::write_results(
            env.clone(),
            job.clone(),
            plan.budget.map(|budget| budget.tenant),
            results_rx,
        )
        .in_current_span(),
    );
    let produced = produce::produce(
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
