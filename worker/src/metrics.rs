//! The worker's metrics, described once.

use metrics::{Unit, describe_counter, describe_histogram};

pub fn describe() {
    describe_counter!(
        "assay_jobs_started_total",
        "Jobs a worker started, by kind."
    );
    describe_counter!(
        "assay_jobs_finished_total",
        "Jobs a worker finished, by kind and outcome (succeeded, failed, retried, released, skipped)."
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
