//! Submitting an evaluation: its rows (evaluation, plan of chunks, event)
//! first, then the push of its first chunks. The API calls this for
//! `POST /v1/evaluations`; versioning jobs call it for the evaluations they
//! need, so both go through the same code path.

use diesel_async::AsyncPgConnection;

use crate::db::models::chunks::Planning;
use crate::db::models::evaluations::{Evaluation, NewEvaluation};
use crate::db::models::lifecycle::{self, QuotaCreateError};
use crate::queue::JobQueue;

/// What to do when the push fails twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPushFailure {
    /// Mark the evaluation failed (the caller is a person waiting for an
    /// answer: a 503 says the queue is down, and resume redoes it).
    Fail,
    /// Leave it queued: the sweeper pushes queued chunks whose push is gone
    /// (a job that waits for the evaluation anyway).
    Leave,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    /// The push failed twice and the evaluation was marked failed.
    #[error("the job queue is unavailable; evaluation {0} was recorded as failed")]
    QueueUnavailable(crate::ids::EvaluationId),
    /// The tenant's quota of evaluations queued or running at once is full;
    /// nothing was written.
    #[error("the tenant already has {active} evaluations queued or running (its quota is {limit})")]
    TooManyActive { active: i64, limit: i64 },
}

/// Writes the evaluation and its plan, then pushes its first chunks.
/// The rows are written first so that a job never runs ahead of its record.
pub async fn submit(
    conn: &mut AsyncPgConnection,
    queue: &JobQueue,
    actor: &str,
    new: &NewEvaluation,
    planning: Planning,
    on_push_failure: OnPushFailure,
) -> Result<Evaluation, SubmitError> {
    submit_within_quota(conn, queue, actor, new, planning, on_push_failure, None).await
}

/// [`submit`], refused (nothing written) when `max_active` is given and the
/// tenant already has that many evaluations queued or running.
pub async fn submit_within_quota(
    conn: &mut AsyncPgConnection,
    queue: &JobQueue,
    actor: &str,
    new: &NewEvaluation,
    planning: Planning,
    on_push_failure: OnPushFailure,
    max_active: Option<i64>,
) -> Result<Evaluation, SubmitError> {
    let planning = spread(queue, new, planning).await;
    let (evaluation, pushes) = match max_active {
        None => lifecycle::create(conn, actor, new, planning).await?,
        Some(limit) => lifecycle::create_within_quota(conn, actor, new, planning, limit)
            .await
            .map_err(|error| match error {
                QuotaCreateError::Database(error) => SubmitError::Database(error),
                QuotaCreateError::TooManyActive { active, limit } => {
                    SubmitError::TooManyActive { active, limit }
                }
            })?,
    };
    if let Err(error) = queue.push(&pushes).await {
        metrics::counter!("assay_queue_push_failures_total").increment(1);
        tracing::error!(evaluation.id = %evaluation.id, error = format!("{error:#}"), "could not enqueue evaluation");
        if on_push_failure == OnPushFailure::Fail {
            lifecycle::fail(
                conn,
                new.tenant_id,
                evaluation.id,
                "system",
                "could not enqueue the job",
            )
            .await?;
            return Err(SubmitError::QueueUnavailable(evaluation.id));
        }
    }
    metrics::counter!("assay_evaluations_submitted_total").increment(1);
    tracing::info!(evaluation.id = %evaluation.id, total = new.total, chunks = pushes.len(), "evaluation queued");
    Ok(evaluation)
}

/// `planning` with its chunks cut for the workers live now, so that a small
/// evaluation spreads evenly over every replica (see
/// [`crate::db::models::chunks::spread_runs_per_chunk`]). Without an answer
/// from Redis the configured size is kept: the push will likely fail too.
async fn spread(queue: &JobQueue, new: &NewEvaluation, planning: Planning) -> Planning {
    let live = match queue.live_workers().await {
        Ok(live) => live,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not count live workers; chunks keep the configured size"
            );
            0
        }
    };
    let spread = planning.spread_over(i64::from(new.total), live);
    let models = new.models.as_array().map_or(1, Vec::len);
    metrics::histogram!("assay_evaluation_chunk_runs").record(f64::from(spread.runs_per_chunk));
    metrics::histogram!("assay_evaluation_chunks")
        .record(spread.chunks(new.repeats, models) as f64);
    if spread.runs_per_chunk != planning.runs_per_chunk {
        tracing::debug!(evaluation.id = %new.id, live_workers = live, runs_per_chunk = spread.runs_per_chunk, "chunks cut finer to spread over the live workers");
    }
    spread
}
