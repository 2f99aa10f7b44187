//! HTTP metrics: requests and latency by route pattern, method and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram};

pub fn describe() {
    describe_counter!(
        "assay_request_body_timeouts_total",
        "Request bodies cut off with 408 for pausing longer than ASSAY_BODY_IDLE_TIMEOUT or taking longer than ASSAY_BODY_TIMEOUT."
    );
    describe_counter!(
        "assay_http_requests_total",
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "assay_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route, method and status."
    );
    describe_counter!(
        "assay_dataset_uploads_total",
        "Datasets created, by format (json, jsonl, csv)."
    );
    describe_counter!(
        "assay_dataset_upload_items_total",
        "Items in created datasets, by format (json, jsonl, csv)."
    );
    describe_counter!(
        "assay_dataset_item_graders_total",
        "Graders carried by items of created datasets (per-test assertions)."
    );
    describe_counter!(
        "assay_dataset_hash_lookups_total",
        "Dataset lists filtered by content_hash (a client looking for an identical dataset), by outcome (hit, miss)."
    );
    describe_histogram!(
        "assay_evaluation_chunk_runs",
        "Runs per chunk of the evaluations submitted by the API: the configured size, or smaller so that a small evaluation has about 8 chunks per live worker."
    );
    describe_histogram!(
        "assay_evaluation_chunks",
        "Chunks per evaluation submitted by the API."
    );
    describe_counter!(
        "assay_evaluations_submitted_total",
        "Evaluations submitted (by the API, and by versioning jobs in the worker)."
    );
    describe_counter!(
        "assay_promotions_submitted_total",
        "Promotions accepted by the API."
    );
    describe_counter!(
        "assay_optimizations_submitted_total",
        "Optimizations accepted by the API."
    );
    describe_counter!(
        "assay_promotions_total",
        "Promotions ended, by outcome (here: canceled by a request; the worker counts the rest)."
    );
    describe_counter!(
        "assay_optimizations_total",
        "Optimizations ended, by outcome (here: canceled by a request; the worker counts the rest)."
    );
    describe_counter!(
        "assay_prompt_commits_total",
        "Commits to a prompt branch, by outcome: created, unchanged (content equal to the head) or conflict (the head moved)."
    );
    describe_counter!(
        "assay_prompt_label_moves_total",
        "Label moves that changed a label, by label (production, staging, canary, development, dev, latest; any other name is `other`)."
    );
    describe_counter!(
        "assay_prompt_label_conflicts_total",
        "Label moves refused because expected_version no longer matched, by label (as for moves)."
    );
    describe_counter!(
        "assay_evaluation_compare_requests_total",
        "Comparisons of two evaluations, by outcome (ok or refused)."
    );
    describe_histogram!(
        "assay_evaluation_compare_duration_seconds",
        metrics::Unit::Seconds,
        "Time to compute a comparison of two evaluations, by outcome."
    );
    describe_counter!(
        "assay_evaluations_canceled_total",
        "Evaluations canceled through the API (POST .../cancel)."
    );
    describe_counter!(
        "assay_budget_refusals_total",
        "Evaluations refused at submission (422 over_budget) because their cost estimate's lower bound passes a budget, by scope (evaluation, tenant)."
    );
    describe_counter!(
        "assay_template_limit_refusals_total",
        "Evaluations refused at submission (422) because their prompt passed a render limit (steps or size) on one of the dataset's first items."
    );
    describe_counter!(
        "assay_api_key_checks_total",
        "API keys presented on /v1 requests, by outcome (valid, unknown, revoked, expired)."
    );
    describe_counter!(
        "assay_api_keys_total",
        "API keys created or revoked through the API, by action (created, revoked)."
    );
    describe_counter!(
        "assay_rate_limit_requests_total",
        "Requests counted against a key's rate, by class (read, write) and outcome (accepted, limited: answered 429, unchecked: Redis did not answer and the request went through)."
    );
    describe_counter!(
        "assay_idempotency_requests_total",
        "POSTs with an Idempotency-Key, by outcome (stored: first response kept, replayed, mismatch: 422, in_progress: 409, released: an error or an unread body, nothing kept, lost_claim: taken over after the lock timeout)."
    );
    describe_counter!(
        "assay_idempotency_keys_purged_total",
        "Idempotency-Key records deleted after their 24 hours."
    );
    describe_counter!(
        "assay_quota_refusals_total",
        "Evaluations refused by a tenant quota, by quota (runs_per_evaluation: 422, active_evaluations: 429)."
    );
    describe_gauge!(
        "assay_evaluation_event_streams_open",
        "Event streams (GET /v1/evaluations/{id}/events) open now."
    );
    describe_counter!(
        "assay_evaluation_event_streams_total",
        "Event streams opened."
    );
    describe_counter!(
        "assay_ui_requests_total",
        "Web viewer and API docs page requests, by kind (page, asset, missing, docs, docs_asset, docs_missing)."
    );
    assay_core::gauges::describe();
    describe_counter!(
        "assay_queue_push_failures_total",
        "Job pushes to Redis that failed after a retry (the evaluation is marked failed)."
    );
}

/// Labels use the route pattern (`/v1/evaluations/{id}`), never the raw path,
/// so ids do not become label values.
pub async fn record(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().to_string();
    let response = next.call(request).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let labels = [
        ("route", route),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    counter!("assay_http_requests_total", &labels).increment(1);
    histogram!("assay_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}
