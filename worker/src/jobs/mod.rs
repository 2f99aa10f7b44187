//! Every job kind a worker runs: one module per kind ([`chunk`],
//! [`versioning`] for promotions and optimizations, [`webhooks`] for
//! webhook delivery attempts), each on its own
//! queue(s), registered in [`crate::run`]; metrics carry the `kind` label.
//!
//! Retry policy: the apalis Redis backend re-schedules every failed job by
//! itself (`attempt` seconds later, up to 25 times), so apalis' retry layer
//! would multiply its attempts and is not used. A handler returns
//! `AbortError` for permanent failures and once a job has failed
//! [`MAX_ATTEMPTS`] times; otherwise a plain error lets the backend try
//! again. Panics: every consumer has apalis' panic layer ([`catch_panics`]).

pub mod chunk;
mod poison;
pub mod versioning;
pub mod webhooks;

use std::any::Any;
use std::sync::Arc;

use apalis::layers::catch_panic::CatchPanicLayer;
use apalis::prelude::*;
use assay_core::queue::ChunkJob;
use metrics::counter;
use tracing::Instrument;

use crate::environment::Environment;

/// The panic layer every consumer has: a handler that panics fails its job
/// (logged and counted in `assay_job_panics_total`) instead of ending the
/// consumer. It goes inside `parallelize` (added after it: apalis' later
/// layers are inner ones), or the spawned task's `JoinHandle` takes the
/// panic first and this handler never runs. The queue does not retry it: a chunk's lease expires and the
/// sweeper queues the chunk again, counting a crash, so a chunk that
/// panics every time is given up after a few (see `chunks::DEFAULT_MAX_CRASHES`).
pub type PanicLayer = CatchPanicLayer<fn(&Box<dyn Any + Send>) -> AbortError, AbortError>;

pub fn catch_panics() -> PanicLayer {
    CatchPanicLayer::with_panic_handler(job_panicked)
}

fn job_panicked(panic: &Box<dyn Any + Send>) -> AbortError {
    let message = panic_message(panic);
    counter!("assay_job_panics_total").increment(1);
    tracing::error!(panic = message, "a job panicked; it is not retried");
    AbortError::new(format!("the job panicked: {message}"))
}

/// A panic's message, when it is text.
pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use apalis_core::backend::TaskSink;
    use apalis_core::backend::ext::poll_strategy::Strategy;
    use apalis_redis::{Config, RedisStorage};
    use assay_testkit::{TestRedis, eventually};
    use redis::AsyncCommands;

    use super::*;

    const PANICS: u32 = 1;

    async fn panics_on_request(
        job: u32,
        ran: Data<Arc<Mutex<Vec<u32>>>>,
    ) -> Result<(), BoxDynError> {
        assert_ne!(job, PANICS, "this job always panics");
        ran.lock().expect("ran lock").push(job);
        Ok(())
    }

    /// A handler that panics fails its own job for good (the queue's dead
    /// set: not retried), the panic is counted, and the consumer goes on to
    /// the next job. One thread, so the test's metrics recorder sees the
    /// spawned job tasks.
    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_handler_fails_its_job_and_the_consumer_takes_the_next() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let exported = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let redis = TestRedis::new();
        let queue = format!("{}:panics", redis.prefix);
        let conn = assay_core::queue::connect(&redis.url).await.unwrap();
        let mut storage = RedisStorage::<u32>::new(conn.clone()).with_config(
            Config::default()
                .queue(&queue)
                .persist_results(true)
                .emit_events(false),
        );
        let ran: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
        let worker = WorkerBuilder::new(format!("{queue}-worker"))
            .backend(
                storage
                    .clone()
                    .poll_with_strategy(Strategy::new().interval(Duration::from_millis(50))),
            )
            .data(ran.clone())
            .concurrency(1)
            .parallelize(tokio::spawn)
            .layer(catch_panics())
            .build(panics_on_request);
        let consumer = tokio::spawn(worker.run());

        storage.push(PANICS).await.unwrap();
        let dead_key = format!("{queue}:dead");
        eventually(
            Duration::from_secs(20),
            "the panicked job in the dead set",
            || {
                let (mut conn, dead_key) = (conn.clone(), dead_key.clone());
                async move {
                    let dead: usize = conn.scard(&dead_key).await?;
                    Ok((dead == 1).then_some(()))
                }
            },
        )
        .await
        .unwrap();

        storage.push(2).await.unwrap();
        eventually(Duration::from_secs(20), "the next job to run", || {
            let ran = ran.clone();
            async move { Ok((ran.lock().expect("ran lock").as_slice() == [2]).then_some(())) }
        })
        .await
        .unwrap();
        assert!(!consumer.is_finished(), "the consumer ended");
        let scheduled: usize = conn
            .clone()
            .zcard(format!("{queue}:scheduled"))
            .await
            .unwrap();
        assert_eq!(scheduled, 0, "the panicked job was scheduled for a retry");
        let rendered = exported.render();
        assert!(
            rendered.contains("assay_job_panics_total 1"),
            "the panic was not counted:\n{rendered}"
        );
        consumer.abort();
    }
}
