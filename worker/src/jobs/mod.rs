//! Every job type a worker runs, registered in one place.
//!
//! Retry policy: the apalis Redis backend re-schedules every failed job by
//! itself (`attempt` seconds later, up to 25 times), so there is no tower
//! retry layer on top. A handler returns `AbortError` for permanent failures
//! and once a job has failed [`MAX_ATTEMPTS`] times; otherwise a plain error
//! lets the backend try again.

pub mod evaluation;

use std::sync::Arc;

use apalis::prelude::*;
use assay_core::queue::EvaluationJob;
use metrics::counter;
use tracing::Instrument;

use crate::environment::Environment;

/// Runs of one job (apalis counts them from 1) before its evaluation is marked failed. Under the
/// backend's own limit of 25, so that Assay, not apalis, decides.
pub const MAX_ATTEMPTS: usize = 12;

/// The apalis handler of evaluation jobs.
pub async fn run_evaluation(
    job: EvaluationJob,
    env: Data<Arc<Environment>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let env = Arc::clone(&env);
    counter!("assay_jobs_started_total", "kind" => "evaluation").increment(1);
    let span = tracing::info_span!("job", job.kind = "evaluation", evaluation.id = %job.evaluation_id, attempt = attempt.current());
    let outcome = evaluation::run(job, env.clone()).instrument(span).await;
    let finished = |outcome: &'static str| {
        counter!("assay_jobs_finished_total", "kind" => "evaluation", "outcome" => outcome)
            .increment(1);
    };
    match outcome {
        Ok(evaluation::Outcome::Finished) => {
            finished("succeeded");
            Ok(())
        }
        Ok(evaluation::Outcome::Skipped) => {
            finished("skipped");
            Ok(())
        }
        Err(evaluation::JobError::Permanent(error)) => {
            finished("failed");
            tracing::error!(evaluation.id = %job.evaluation_id, error = format!("{error:#}"), "evaluation failed");
            Err(AbortError::new(format!("{error:#}")).into())
        }
        Err(evaluation::JobError::Transient(error)) if env.shutting_down() => {
            finished("released");
            tracing::info!(evaluation.id = %job.evaluation_id, "released on shutdown: {error:#}");
            Err(format!("{error:#}").into())
        }
        Err(evaluation::JobError::Transient(error)) if attempt.current() >= MAX_ATTEMPTS => {
            finished("failed");
            let reason = format!("gave up after {MAX_ATTEMPTS} attempts: {error:#}");
            tracing::error!(evaluation.id = %job.evaluation_id, reason, "evaluation failed");
            if let Ok(mut conn) = env.pool.get().await {
                let _ = assay_core::db::models::evaluations::fail(
                    &mut conn,
                    job.tenant_id,
                    job.evaluation_id,
                    &env.actor(),
                    &reason,
                )
                .await;
            }
            Err(AbortError::new(reason).into())
        }
        Err(evaluation::JobError::Transient(error)) => {
            finished("retried");
            tracing::warn!(evaluation.id = %job.evaluation_id, attempt = attempt.current(), error = format!("{error:#}"), "evaluation will be retried");
            Err(format!("{error:#}").into())
        }
    }
}
