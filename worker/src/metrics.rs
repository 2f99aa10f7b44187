//! The worker's metrics, described once.

use std::sync::atomic::AtomicU64;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Result rows this process wrote, for its items-per-second gauge.
pub static RESULTS_WRITTEN: AtomicU64 = AtomicU64::new(0);

pub fn describe() {
    describe_counter!(
        "assay_jobs_started_total",
        "Jobs a worker started, by kind."
    );
    describe_counter!(
        "assay_jobs_finished_total",
        "Jobs a worker finished, by kind and outcome (succeeded, failed, retried, released, stopped, skipped)."
    );
    describe_gauge!("assay_chunks_in_flight", "Chunks this worker runs now.");
    describe_gauge!(
        "assay_queue_depth",
        "Chunk jobs in Redis, by queue (high, normal, low) and state (ready: due; delayed: retries; running: taken). Every worker reports the same value: take the max."
    );
    describe_gauge!(
        "assay_chunks_unfinished",
        "Chunks of every unfinished evaluation, by state (pending, queued, running), from PostgreSQL: the work left. Every worker reports the same value: take the max. What autoscaling follows."
    );
    describe_gauge!(
        "assay_items_per_second",
        "Results this worker wrote per second, over the last reporting interval."
    );
    describe_gauge!(
        "assay_llm_permits_free",
        "LLM call permits (--concurrency) free in this worker."
    );
    describe_gauge!(
        "assay_backlog_runs",
        "Runs this worker took on (its chunks') and has not started: it fetches another chunk only while this is low."
    );
    describe_counter!(
        "assay_sweeper_runs_total",
        "Sweeps, by result (swept; skipped: another worker held the lock; error)."
    );
    describe_counter!(
        "assay_sweeper_repairs_total",
        "Work the sweeper recovered from PostgreSQL, by kind (requeued chunks, refilled, planned, finalized evaluations)."
    );
    describe_counter!(
        "assay_queue_jobs_forgotten_total",
        "Finished jobs deleted from Redis after their retention, by queue."
    );
    assay_core::providers::describe_metrics();
    describe_counter!(
        "assay_results_written_total",
        "Result rows written to PostgreSQL (rows that existed already are not counted), by status."
    );
    describe_histogram!(
        "assay_result_batch_write_seconds",
        Unit::Seconds,
        "Time to write one batch of results and move the evaluation's counters."
    );
}
