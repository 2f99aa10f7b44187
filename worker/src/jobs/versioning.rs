//! The versioning job kinds: promotions and optimizations, each on its own
//! queue (`<prefix>:promotions`, `<prefix>:optimizations`) with its own
//! consumers, so they never take a chunk's place.
//!
//! A job names a row; the row is the state machine
//! ([`assay_core::versioning`]). The handler takes steps until the job is
//! over; while it waits for evaluations it only sleeps (it holds one of the
//! few versioning slots, no LLM permit and no chunk slot). A worker killed
//! mid-job loses nothing: its job is handed to a live worker after the
//! missed heartbeats, or pushed again by the sweeper when Redis lost it,
//! and the next run resumes from the row. On SIGTERM a handler stops at
//! once and leaves the job to the sweeper.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use assay_core::db::models::{optimizations, promotions};
use assay_core::queue::{VersioningJob, VersioningKind};
use assay_core::versioning::{self, Ctx, Step};
use metrics::counter;
use tracing::Instrument;

use super::MAX_ATTEMPTS;
use crate::environment::Environment;

/// Versioning jobs one process runs at once, per kind: they mostly wait.
pub const JOBS_PER_KIND: usize = 8;
/// How often a waiting job looks at its evaluations again.
const POLL: Duration = Duration::from_millis(500);

pub async fn run_promotion(
    job: VersioningJob,
    env: Data<Arc<Environment>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    boxed(run(
        VersioningKind::Promotion,
        job,
        Arc::clone(&env),
        attempt,
    ))
    .await
}

pub async fn run_optimization(
    job: VersioningJob,
    env: Data<Arc<Environment>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    boxed(run(
        VersioningKind::Optimization,
        job,
        Arc::clone(&env),
        attempt,
    ))
    .await
}

/// The steps' futures, boxed: without it, rustc 1.9x fails to normalize
/// apalis' service type around them (an internal compiler error), and the
/// `Send` check here reports any problem in plain words.
fn boxed<'a, T>(
    future: impl Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

async fn run(
    kind: VersioningKind,
    job: VersioningJob,
    env: Arc<Environment>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let span = tracing::info_span!(
        "job",
        job_kind = kind.as_str(),
        job.id = %job.id,
        tenant = %job.tenant_id,
        attempt = attempt.current(),
        worker = %env.worker_name,
    );
    steps(kind, job, env, attempt).instrument(span).await
}

async fn steps(
    kind: VersioningKind,
    job: VersioningJob,
    env: Arc<Environment>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let label = kind.as_str();
    counter!("assay_jobs_started_total", "kind" => label).increment(1);
    let finished = |outcome: &'static str| {
        counter!("assay_jobs_finished_total", "kind" => label, "outcome" => outcome).increment(1);
        tracing::info!(outcome, "{label} job finished");
    };
    if job.v != VersioningJob::VERSION {
        finished("failed");
        return Err(AbortError::new(format!("unknown job payload version {}", job.v)).into());
    }
    let actor = env.actor();
    let ctx = Ctx {
        pool: &env.pool,
        queue: &env.queue,
        llm: &env.llm,
        actor: &actor,
        runs_per_chunk: env.runs_per_chunk,
    };
    let mut shutdown = env.shutdown.clone();
    loop {
        if env.shutting_down() {
            // The row says where it is; the sweeper pushes it again.
            finished("released");
            return Ok(());
        }
        let step = match kind {
            VersioningKind::Promotion => {
                versioning::promotion::step(&ctx, job.tenant_id, job.id).await
            }
            VersioningKind::Optimization => {
                versioning::optimization::step(&ctx, job.tenant_id, job.id).await
            }
        };
        match step {
            Ok(Step::Continue) => {}
            Ok(Step::Wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Ok(Step::Done(outcome)) => {
                finished(outcome);
                return Ok(());
            }
            Err(error) if attempt.current() >= MAX_ATTEMPTS => {
                finished("failed");
                let reason = format!("gave up after {MAX_ATTEMPTS} attempts: {error:#}");
                tracing::error!(reason, "{label} failed");
                if let Ok(mut conn) = env.pool.get().await {
                    let _ = match kind {
                        VersioningKind::Promotion => {
                            promotions::finish(
                                &mut conn,
                                job.tenant_id,
                                job.id,
                                &actor,
                                "failed",
                                None,
                                &reason,
                            )
                            .await
                        }
                        VersioningKind::Optimization => {
                            optimizations::finish(
                                &mut conn,
                                job.tenant_id,
                                job.id,
                                &actor,
                                "failed",
                                None,
                                None,
                                &reason,
                            )
                            .await
                        }
                    };
                }
                return Err(AbortError::new(reason).into());
            }
            Err(error) => {
                finished("retried");
                tracing::warn!(
                    error = format!("{error:#}"),
                    "{label} step failed; retrying"
                );
                return Err(format!("{error:#}").into());
            }
        }
    }
}
