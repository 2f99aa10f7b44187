//! Gauges of the whole deployment, read from PostgreSQL and Redis and
//! exported by the API and by every worker alike: the work left, the age of
//! the oldest queued chunk, unfinished evaluations, live workers, spend
//! against budgets. Every process reports the same values, so dashboards and
//! rules aggregate them with `max`. The API reports them too so that "work
//! is left and no worker is up" can be seen at all.

use metrics::{describe_gauge, gauge};

use crate::db::DbPool;
use crate::db::models::{budgets, chunks, evaluations};
use crate::domain::Priority;
use crate::queue::JobQueue;

/// Describes the gauges below (once per process).
pub fn describe() {
    describe_gauge!(
        "assay_chunks_unfinished",
        "Chunks of every unfinished evaluation, by state (pending, queued, running), from PostgreSQL: the work left. Every process reports the same value: take the max. What autoscaling follows."
    );
    describe_gauge!(
        "assay_queue_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest queued chunk (queued in PostgreSQL, not yet started), by queue (high, normal, low); 0 when none waits. Take the max."
    );
    describe_gauge!(
        "assay_evaluations_unfinished",
        "Evaluations by status (queued, running), every tenant's. Take the max."
    );
    describe_gauge!(
        "assay_workers_live",
        "Worker processes whose heartbeat Redis has seen within 10 s. Take the max."
    );
    describe_gauge!(
        "assay_budget_spent_usd",
        "Dollars spent plus reserved, summed over what has a budget, by scope (evaluation: unfinished evaluations with max_cost_usd; tenant: tenants with a monthly budget, this month)."
    );
    describe_gauge!(
        "assay_budget_limit_usd",
        "Budgets summed over the same set as assay_budget_spent_usd, by scope."
    );
    describe_gauge!(
        "assay_budget_used_ratio",
        "The highest spent / budget of any one evaluation or tenant, by scope (1 = spent)."
    );
    describe_gauge!(
        "assay_process_resident_memory_bytes",
        metrics::Unit::Bytes,
        "Resident memory (RSS) of this process."
    );
}

/// Reads and sets every gauge once; a source that does not answer leaves
/// its gauges at their last value.
pub async fn report(pool: &DbPool, queue: &JobQueue) {
    if let Some(bytes) = crate::telemetry::resident_memory_bytes() {
        gauge!("assay_process_resident_memory_bytes").set(bytes as f64);
    }
    if let Ok(live) = queue.live_workers().await {
        gauge!("assay_workers_live").set(live as f64);
    }
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    if let Ok(counts) = chunks::unfinished_by_state(&mut conn).await {
        for (state, count) in ["pending", "queued", "running"].into_iter().zip(counts) {
            gauge!("assay_chunks_unfinished", "state" => state).set(count as f64);
        }
    }
    if let Ok(ages) = chunks::oldest_queued_age(&mut conn).await {
        for priority in Priority::ALL {
            gauge!("assay_queue_oldest_age_seconds", "queue" => priority.as_str())
                .set(ages[priority.index()]);
        }
    }
    if let Ok((queued, running)) = evaluations::unfinished_counts(&mut conn).await {
        gauge!("assay_evaluations_unfinished", "status" => "queued").set(queued as f64);
        gauge!("assay_evaluations_unfinished", "status" => "running").set(running as f64);
    }
    if let Ok((by_evaluation, by_tenant)) = budgets::usage(&mut conn).await {
        for (scope, usage) in [("evaluation", by_evaluation), ("tenant", by_tenant)] {
            gauge!("assay_budget_spent_usd", "scope" => scope).set(usage.spent_usd);
            gauge!("assay_budget_limit_usd", "scope" => scope).set(usage.limit_usd);
            gauge!("assay_budget_used_ratio", "scope" => scope).set(usage.max_ratio);
        }
    }
}
