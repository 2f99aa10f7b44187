//! The result writer: one task per running chunk that saves its results in
//! batches, by size or by time, and settles budget reservations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use assay_core::db::models::budgets;
use assay_core::db::models::results::{self, NewResult};
use assay_core::queue::ChunkJob;
use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;

use super::JobError;
use crate::environment::Environment;

/// Result rows per INSERT (19 columns: far below the bind-parameter limit).
pub(super) const WRITE_BATCH: usize = 500;

/// The oldest unsaved row waits at most this long. Under steady results a
/// batch would otherwise only fill by size; every unsaved answer is a call
/// billed again if the worker dies, so the bound is on time as well.
const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// What one run spent, for the writer to settle against budgets.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spend {
    /// Reserved before the call.
    pub(super) reserved: f64,
    /// What its calls cost (generation, when it called the model, and judges).
    pub(super) spent: f64,
}

/// Collects results and writes them in batches until every sender is gone.
/// A batch that fails to write is retried (PostgreSQL restarting, a
/// connection dropped) for up to two minutes before the job gives up.
/// With budgets (`tenant_budget` is Some), each written batch then settles
/// its reservations: a call's cost was paid whether or not its row was new.
pub(super) async fn write_results(
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
