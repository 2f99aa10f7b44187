//! The worker's metrics, described once.

use std::sync::atomic::AtomicU64;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Result rows this process wrote, for its items-per-second gauge.
pub static RESULTS_WRITTEN: AtomicU64 = AtomicU64::new(0);

pub fn describe() {
    describe_counter!(
        "assay_results_errored_total",
        "Results that ended errored, by model and reason (the provider's failure once its retry budget was spent: rate_limited, timeout, upstream_error, ...; or template, source, item_graders, grader). Each is also logged once at warn."
    );
    describe_counter!(
        "assay_jobs_started_total",
        "Jobs a worker started, by kind (chunk, promotion, optimization)."
    );
    describe_counter!(
        "assay_promotions_total",
        "Promotions ended, by outcome (promoted, rejected, superseded, failed, canceled)."
    );
    describe_counter!(
        "assay_optimizations_total",
        "Optimizations ended, by outcome (succeeded, budget_exhausted, failed, canceled)."
    );
    describe_counter!(
        "assay_optimizer_proposals_total",
        "Prompts the optimizer proposed, by result (valid: committed; invalid: discarded)."
    );
    describe_counter!(
        "assay_optimization_cost_microusd_total",
        "What optimizations spent, in millionths of a US dollar, by source (optimizer: its own calls; evaluations: the calls of the evaluations it ran)."
    );
    describe_histogram!(
        "assay_evaluation_chunk_runs",
        "Runs per chunk of the evaluations submitted by versioning jobs in this worker: the configured size, or smaller so that a small evaluation has about 8 chunks per live worker."
    );
    describe_histogram!(
        "assay_evaluation_chunks",
        "Chunks per evaluation submitted by versioning jobs in this worker."
    );
    describe_counter!(
        "assay_evaluations_submitted_total",
        "Evaluations submitted by versioning jobs in this worker (the API counts its own)."
    );
    describe_counter!(
        "assay_versioning_evaluations_total",
        "Evaluations versioning jobs needed, by source (new: submitted; reused: a finished identical one)."
    );
    describe_counter!(
        "assay_jobs_finished_total",
        "Jobs a worker finished, by kind and outcome (chunks: succeeded, failed, retried, released, stopped, skipped; versioning jobs: their final status, retried or released)."
    );
    describe_gauge!("assay_chunks_in_flight", "Chunks this worker runs now.");
    describe_counter!(
        "assay_worker_consumer_restarts_total",
        "Queue consumers restarted after a Redis error (a flush, a restart, a lost connection)."
    );
    describe_counter!(
        "assay_item_graders_compiled_total",
        "Graders of dataset items (per-test assertions) compiled, once per item per chunk."
    );
    describe_gauge!(
        "assay_queue_depth",
        "Chunk jobs in Redis, by queue (high, normal, low) and state (ready: due; delayed: retries; running: taken). Every worker reports the same value: take the max."
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
    assay_core::gauges::describe();
    describe_counter!(
        "assay_mock_calls_total",
        "Calls answered by the built-in mock provider, by model."
    );
    // Series that alerts and panels read exist from the start, at 0, so an
    // absent series never means "no data" where it means "none yet".
    for scope in ["evaluation", "tenant"] {
        metrics::counter!("assay_budget_stops_total", "scope" => scope).increment(0);
    }
    metrics::counter!("assay_sweeper_runs_total", "result" => "error").increment(0);
    describe_counter!(
        "assay_runs_finished_total",
        "Runs (item x repeat) a worker finished, by model and status (passed, failed, errored): items per second per model."
    );
    describe_counter!(
        "assay_chunks_given_up_total",
        "Poison chunks: chunks that stopped --max-chunk-crashes workers, whose remaining runs were written errored without running."
    );
    describe_gauge!(
        "assay_spend_usd",
        "Dollars spent on answered calls since the process started, by model (the one that answered) and purpose (generate, judge). A gauge because it counts fractions of a dollar: use rate() on it like a counter."
    );
    describe_gauge!(
        "assay_budget_reserved_usd",
        "Dollars reserved against budgets by this worker's calls in flight."
    );
    describe_counter!(
        "assay_budget_stops_total",
        "Evaluations this worker canceled because a budget would have been passed, by scope (evaluation, tenant)."
    );
    describe_counter!(
        "assay_results_written_total",
        "Result rows written to PostgreSQL (rows that existed already are not counted), by status."
    );
    describe_counter!(
        "assay_results_nul_replaced_total",
        "Result rows whose texts held NUL characters (which PostgreSQL cannot store), written with U+FFFD in their place."
    );
    describe_histogram!(
        "assay_result_batch_write_seconds",
        Unit::Seconds,
        "Time to write one batch of results and move the evaluation's counters."
    );
}
