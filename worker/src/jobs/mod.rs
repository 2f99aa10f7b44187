//! Every job kind a worker runs: one module per kind ([`chunk`],
//! [`versioning`] for promotions and optimizations, [`webhooks`] for
//! webhook delivery attempts), each on its own
//! queue(s), registered in [`crate::run`]; metrics carry the `kind` label.
//!
//! Retry policy: the apalis Redis backend re-schedules every failed job by
//! itself (`attempt` seconds later, up to 25 times), so there is no tower
//! retry layer on top. A handler returns `AbortError` for permanent failures
//! and once a job has failed [`MAX_ATTEMPTS`] times; otherwise a plain error
//! lets the backend try again.

pub mod chunk;
mod poison;
pub mod versioning;
pub mod webhooks;

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

/// The apalis handler of chunk jobs. Everything it logs is inside one span
/// whose fields every JSON line carries: `job_kind`, `evaluation_id`,
/// `chunk`, `tenant`, `request_id` (of the submitting request), `attempt`
/// and `worker`.
pub async fn run_chunk(
    job: ChunkJob,
    env: Data<Arc<Environment>>,
    kind: Data<Arc<chunk::ChunkKind>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let env = Arc::clone(&env);
    let kind = Arc::clone(&kind);
    let span = tracing::info_span!(
        "job",
        job_kind = "chunk",
        evaluation_id = %job.evaluation_id,
        chunk = job.chunk_index,
        tenant = %job.tenant_id,
        request_id = job.request_id.as_deref(),
        attempt = attempt.current(),
        worker = %env.worker_name,
    );
    run_chunk_in_span(job, env, kind, attempt)
        .instrument(span)
        .await
}

async fn run_chunk_in_span(
    job: ChunkJob,
    env: Arc<Environment>,
    kind: Arc<chunk::ChunkKind>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    counter!("assay_jobs_started_total", "kind" => "chunk").increment(1);
    let outcome = chunk::run(job.clone(), env.clone(), kind).await;
    let finished = |outcome: &'static str| {
        counter!("assay_jobs_finished_total", "kind" => "chunk", "outcome" => outcome).increment(1);
        tracing::info!(outcome, "chunk job finished");
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
            tracing::error!(error = format!("{error:#}"), "evaluation failed");
            Err(AbortError::new(format!("{error:#}")).into())
        }
        Err(chunk::JobError::Transient(error)) if attempt.current() >= MAX_ATTEMPTS => {
            finished("failed");
            let reason = format!(
                "chunk {} gave up after {MAX_ATTEMPTS} attempts: {error:#}",
                job.chunk_index
            );
            tracing::error!(reason, "evaluation failed");
            if let Ok(mut conn) = env.pool.get().await {
                let _ = assay_core::db::models::lifecycle::fail(
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
            tracing::warn!(error = format!("{error:#}"), "chunk will be retried");
            Err(format!("{error:#}").into())
        }
    }
}
