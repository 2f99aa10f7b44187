//! Recovery from PostgreSQL, and the queue's upkeep.
//!
//! PostgreSQL is the record; Redis may lose everything (a flush, a restart
//! without persistence). Every worker runs the sweeper every few seconds;
//! a transaction-scoped advisory lock lets one of them sweep at a time. It
//! - plans evaluations that have no chunks (written before chunks existed);
//! - finds chunks whose push is gone — queued, or running under an expired
//!   lease, with no live job in Redis — and queues them again under fresh
//!   job ids (exactly the missing work: done chunks are never touched, and a
//!   chunk's re-run skips the runs that have results);
//! - tops up evaluations whose next chunk was never queued;
//! - finalizes evaluations whose chunks are all done (the worker that
//!   finished the last one died first);
//! - pushes again promotions and optimizations that are unfinished and
//!   whose push is gone (Redis lost it, or a worker stopped on SIGTERM);
//! - once a minute, deletes finished jobs from Redis after a retention
//!   time, since apalis keeps them for ever.
//!
//! Each worker also reports queue depths and its items per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use assay_core::db::models::{chunks, lifecycle, optimizations, promotions};
use assay_core::domain::Priority;
use assay_core::queue::{JobQueue, Push, VersioningJob, VersioningKind};
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncConnection, RunQueryDsl};
use metrics::{counter, gauge};
use rand::Rng;

use crate::environment::Environment;

/// One key for the whole deployment's sweepers ("assay" in ASCII).
const SWEEPER_LOCK: i64 = 0x61_73_73_61_79;
/// A queued chunk gets this long for its push to land before it is suspect.
const PUSH_GRACE: Duration = Duration::from_secs(3);
/// Rows looked at per sweep, per kind of repair.
const BATCH: i64 = 500;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// False when another worker held the lock.
    pub ran: bool,
    pub planned: usize,
    pub requeued: usize,
    pub refilled: usize,
    pub finalized: usize,
    /// Promotions and optimizations pushed again.
    pub versioning: usize,
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// One sweep; pushes and finalizes after its transaction commits.
pub async fn sweep_once(env: &Environment, runs_per_chunk: i32) -> anyhow::Result<Sweep> {
    let mut conn = env.pool.get().await?;
    let queue = &env.queue;
    let found = conn
        .transaction(async |conn| {
            let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind::<BigInt, _>(SWEEPER_LOCK)
                .get_result(conn)
                .await?;
            if !lock.locked {
                return Ok::<_, anyhow::Error>(None);
            }
            let planned = lifecycle::plan_unplanned(conn, runs_per_chunk, BATCH).await?;
            let suspects = chunks::suspects(conn, PUSH_GRACE, BATCH).await?;
            let mut lost = Vec::new();
            for priority in Priority::ALL {
                let of_priority: Vec<_> = suspects
                    .iter()
                    .filter(|suspect| suspect.priority == priority)
                    .collect();
                let ids: Vec<uuid::Uuid> = of_priority
                    .iter()
                    .filter_map(|suspect| suspect.chunk.job_id)
                    .collect();
                let alive = queue.alive(priority, &ids).await?;
                let mut alive = alive.into_iter();
                for suspect in of_priority {
                    // A job that still waits, runs or waits for a retry will
                    // be delivered; only a push that is gone is redone.
                    let is_alive = suspect.chunk.job_id.is_some() && alive.next() == Some(true);
                    if !is_alive {
                        lost.push(suspect.clone());
                    }
                }
            }
            let requeued = chunks::requeue_lost(conn, &lost).await?;
            let refilled = lifecycle::refill_starved(conn, BATCH).await?;
            let unfinalized = lifecycle::unfinalized(conn, BATCH).await?;
            let versioning = lost_versioning_jobs(conn, queue).await?;
            Ok(Some((planned, requeued, refilled, unfinalized, versioning)))
        })
        .await?;
    let Some((planned, requeued, refilled, unfinalized, versioning)) = found else {
        return Ok(Sweep::default());
    };
    for (kind, job, job_id) in &versioning {
        queue.push_versioning(*kind, job, *job_id).await?;
    }
    let pushes: Vec<Push> = planned
        .iter()
        .chain(&requeued)
        .chain(&refilled)
        .cloned()
        .collect();
    queue.push(&pushes).await?;
    let mut finalized = 0;
    for (tenant_id, id) in unfinalized {
        if lifecycle::finalize(&mut conn, tenant_id, id, "system:sweeper").await? {
            finalized += 1;
        }
    }
    let sweep = Sweep {
        ran: true,
        planned: planned.len(),
        requeued: requeued.len(),
        refilled: refilled.len(),
        finalized,
        versioning: versioning.len(),
    };
    for (kind, count) in [
        ("versioning", sweep.versioning),
        ("planned", sweep.planned),
        ("requeued", sweep.requeued),
        ("refilled", sweep.refilled),
        ("finalized", sweep.finalized),
    ] {
        if count > 0 {
            counter!("assay_sweeper_repairs_total", "kind" => kind).increment(count as u64);
        }
    }
    if sweep.requeued + sweep.planned + sweep.refilled + sweep.finalized + sweep.versioning > 0 {
        tracing::info!(?sweep, "sweeper recovered work");
    }
    Ok(sweep)
}

/// Unfinished promotions and optimizations whose push is gone (none, done
/// or dead in Redis): each gets a fresh task id, recorded now, to push once
/// the transaction commits.
async fn lost_versioning_jobs(
    conn: &mut diesel_async::AsyncPgConnection,
    queue: &JobQueue,
) -> anyhow::Result<Vec<(VersioningKind, VersioningJob, uuid::Uuid)>> {
    let mut lost = Vec::new();
    for kind in VersioningKind::ALL {
        let stale = match kind {
            VersioningKind::Promotion => promotions::stale(conn, PUSH_GRACE, BATCH).await?,
            VersioningKind::Optimization => optimizations::stale(conn, PUSH_GRACE, BATCH).await?,
        };
        let ids: Vec<uuid::Uuid> = stale.iter().filter_map(|(_, _, job)| *job).collect();
        let mut alive = queue.versioning_alive(kind, &ids).await?.into_iter();
        for (tenant_id, id, job_id) in stale {
            let is_alive = job_id.is_some() && alive.next() == Some(true);
            if is_alive {
                continue;
            }
            let fresh = uuid::Uuid::now_v7();
            match kind {
                VersioningKind::Promotion => promotions::set_job(conn, id, fresh).await?,
                VersioningKind::Optimization => optimizations::set_job(conn, id, fresh).await?,
            }
            lost.push((kind, VersioningJob::new(tenant_id, id), fresh));
        }
    }
    Ok(lost)
}

/// How the sweeper runs.
#[derive(Debug, Clone, Copy)]
pub struct SweeperConfig {
    pub every: Duration,
    pub runs_per_chunk: i32,
    /// Finished jobs stay in Redis this long (for inspection), then go.
    pub job_retention: Duration,
}

/// Sweeps every `every` (with jitter, so workers do not line up) until shutdown.
pub async fn run_forever(env: Arc<Environment>, config: SweeperConfig) {
    let mut last_cleanup = Instant::now();
    while !env.shutting_down() {
        let jitter = config.every.mul_f64(rand::rng().random_range(0.0..0.5));
        tokio::time::sleep(config.every + jitter).await;
        match sweep_once(&env, config.runs_per_chunk).await {
            Ok(sweep) => {
                let result = if sweep.ran { "swept" } else { "skipped" };
                counter!("assay_sweeper_runs_total", "result" => result).increment(1);
            }
            Err(error) => {
                counter!("assay_sweeper_runs_total", "result" => "error").increment(1);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "sweep failed; trying again soon"
                );
            }
        }
        if last_cleanup.elapsed() >= Duration::from_secs(60) {
            last_cleanup = Instant::now();
            forget_finished(&env.queue, config.job_retention).await;
        }
    }
}

async fn forget_finished(queue: &JobQueue, retention: Duration) {
    for kind in VersioningKind::ALL {
        match queue.forget_finished_versioning(kind, retention).await {
            Ok(removed) if removed > 0 => {
                counter!("assay_queue_jobs_forgotten_total", "queue" => kind.as_str())
                    .increment(removed);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "could not trim finished jobs")
            }
        }
    }
    for priority in Priority::ALL {
        match queue.forget_finished(priority, retention).await {
            Ok(removed) if removed > 0 => {
                counter!("assay_queue_jobs_forgotten_total", "queue" => priority.as_str())
                    .increment(removed);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "could not trim finished jobs")
            }
        }
    }
}

/// Reports queue depths (read from Redis) and the work left (chunks of
/// unfinished evaluations, from PostgreSQL) — every worker reports the same
/// values, so dashboards and autoscalers take the max — and this worker's
/// items per second.
pub async fn report_forever(env: Arc<Environment>, every: Duration) {
    let mut last = (Instant::now(), 0u64);
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        for priority in Priority::ALL {
            if let Ok(depth) = env.queue.depth(priority).await {
                let queue = priority.as_str();
                gauge!("assay_queue_depth", "queue" => queue, "state" => "ready")
                    .set(depth.ready as f64);
                gauge!("assay_queue_depth", "queue" => queue, "state" => "delayed")
                    .set(depth.delayed as f64);
                gauge!("assay_queue_depth", "queue" => queue, "state" => "running")
                    .set(depth.running as f64);
            }
        }
        // The work left, queue ages, live workers, budgets, this process's memory.
        assay_core::gauges::report(&env.pool, &env.queue).await;
        let written = std::sync::atomic::AtomicU64::load(
            &crate::metrics::RESULTS_WRITTEN,
            std::sync::atomic::Ordering::Relaxed,
        );
        let elapsed = last.0.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            gauge!("assay_items_per_second").set((written - last.1) as f64 / elapsed);
        }
        last = (Instant::now(), written);
        gauge!("assay_llm_permits_free").set(env.slots.available() as f64);
        gauge!("assay_backlog_runs").set(env.backlog.runs() as f64);
    }
}
