//! The worker's metrics, described once.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub fn describe() {
    describe_counter!(
        "assay_jobs_started_total",
        "Jobs a worker started, by kind."
    );
    describe_counter!(
        "assay_jobs_finished_total",
        "Jobs a worker finished, by kind and outcome (succeeded, failed, retried, released, skipped)."
    );
    describe_counter!(
        "assay_llm_calls_total",
        "LLM call attempts, by model, provider, outcome (ok, rate_limited, timeout, upstream_error, bad_request) and purpose (generate, judge)."
    );
    describe_histogram!(
        "assay_llm_call_duration_seconds",
        Unit::Seconds,
        "Duration of one LLM call attempt, by model, provider and outcome."
    );
    describe_gauge!(
        "assay_llm_calls_in_flight",
        "LLM calls in flight in this worker."
    );
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
