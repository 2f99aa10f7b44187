//! The context every job runs in, built once in `main` (and by tests).

use std::sync::Arc;

use assay_core::db::DbPool;
use assay_core::providers::call::LlmClient;
use assay_core::queue::JobQueue;
use tokio::sync::watch;

use crate::capacity::{Backlog, LlmSlots};
use crate::jobs::chunk::PlanCache;
use crate::leases::ActiveChunks;

pub struct Environment {
    pub pool: DbPool,
    /// Every model call goes through it: cache, shared limits, retries,
    /// fallbacks, circuit breakers, cost.
    pub llm: Arc<LlmClient>,
    /// To push the chunks that follow the ones this worker starts.
    pub queue: JobQueue,
    /// LLM calls in flight in this process, across all chunks (`--concurrency`).
    pub slots: Arc<LlmSlots>,
    /// Runs taken on and not started: what decides whether to fetch a chunk.
    pub backlog: Arc<Backlog>,
    /// The chunks running here, whose leases are renewed.
    pub active: Arc<ActiveChunks>,
    pub(crate) plans: PlanCache,
    /// This process's unique name: chunk leases and events name it.
    pub worker_name: String,
    /// Becomes true on SIGTERM: chunks stop starting calls, write what they
    /// have and are handed back to the queue.
    pub shutdown: watch::Receiver<bool>,
}

impl Environment {
    pub fn actor(&self) -> String {
        format!("worker:{}", self.worker_name)
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
