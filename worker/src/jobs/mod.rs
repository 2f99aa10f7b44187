//! Every job type a worker runs, registered in one place.
//!
//! Retry policy: the apalis Redis backend re-schedules every failed job by
//! itself (`attempt` seconds later, up to 25 times), so there is no tower
//! retry layer on top. A handler returns `AbortError` for permanent failures
//! and once a job has failed [`MAX_ATTEMPTS`] times; otherwise a plain error
//! lets the backend try again.

pub mod chunk;

use std::sync::Arc;

use apalis::prelude::*;
use assay_core::queue::ChunkJob;
use metrics::counter;
use tracing::Instrument;

use crate::environment::Environment;

/// Runs of one job (apalis counts them from 1) before its evaluation is
/// marked failed: about three and a half minutes of retries (1 s, 2 s, ...),
/// enough to ride out a restarting database. Under the backend's own limit
/// of 25, so that Assay, not apalis, decides.
pub const MAX_ATTEMPTS: usize = 20;

/// The apalis handler of chunk jobs.
pub async fn run_chunk(
    job: ChunkJob,
    env: Data<Arc<Environment>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let env = Arc::clone(&env);
    counter!("assay_jobs_started_total", "kind" => "chunk").increment(1);
    let span = tracing::info_span!("job", job.kind = "chunk", evaluation.id = %job.evaluation_id, chunk = job.chunk_index, attempt = attempt.current());
    let outcome = chunk::run(job, env.clone()).instrument(span).await;
    let finished = |outcome: &'static str| {
        counter!("assay_jobs_finished_total", "kind" => "chunk", "outcome" => outcome).increment(1);
    };
    match outcome {
        Ok(chunk::Outcome::Done { .. }) => {
            finished("succeeded");
            Ok(())
        }
        Ok(chunk::Outcome::Released) => {
            finished("released");
            Ok(())
        }
        Ok(chunk::Outcome::Stopped) => {
            finished("stopped");
            Ok(())
        }
        Ok(chunk::Outcome::Skipped) => {
            finished("skipped");
            Ok(())
        }
        Err(chunk::JobError::Permanent(error)) => {
            finished("failed");
            tracing::error!(evaluation.id = %job.evaluation_id, error = format!("{error:#}"), "evaluation failed");
            Err(AbortError::new(format!("{error:#}")).into())
        }
        Err(chunk::JobError::Transient(error)) if attempt.current() >= MAX_ATTEMPTS => {
            finished("failed");
            let reason = format!(
                "chunk {} gave up after {MAX_ATTEMPTS} attempts: {error:#}",
                job.chunk_index
            );
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
        Err(chunk::JobError::Transient(error)) => {
            finished("retried");
            tracing::warn!(evaluation.id = %job.evaluation_id, chunk = job.chunk_index, attempt = attempt.current(), error = format!("{error:#}"), "chunk will be retried");
            Err(format!("{error:#}").into())
        }
    }
}
