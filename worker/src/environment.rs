//! The context every job runs in, built once in `main` (and by tests).

use std::sync::Arc;

use assay_core::db::DbPool;
use assay_core::providers::call::LlmClient;
use tokio::sync::{Semaphore, watch};

pub struct Environment {
    pub pool: DbPool,
    /// Every model call goes through it: cache, shared limits, retries,
    /// fallbacks, circuit breakers, cost.
    pub llm: Arc<LlmClient>,
    /// LLM calls in flight in this process, across all jobs (`--concurrency`).
    pub llm_slots: Arc<Semaphore>,
    /// This process's unique name, as the events table records it.
    pub worker_name: String,
    /// Becomes true on SIGTERM: jobs stop starting calls, write what they
    /// have and hand their job back to the queue.
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
