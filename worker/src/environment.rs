//! The context every job kind shares, built once in `main` (and by tests).
//! What belongs to one kind (the chunk plan cache) lives in that kind's
//! module instead.

use std::sync::Arc;

use assay_core::db::DbPool;
use assay_core::providers::call::LlmClient;
use assay_core::queue::JobQueue;
use tokio::sync::watch;

use crate::capacity::{Backlog, LlmSlots};
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
    /// Runs (items x repeats) per chunk, for the evaluations versioning jobs plan.
    pub runs_per_chunk: i32,
    /// This process's unique name: chunk leases and events name it.
    pub worker_name: String,
    /// Becomes true on SIGTERM: chunks stop starting calls, write what they
    /// have and are handed back to the queue.
    pub shutdown: watch::Receiver<bool>,
    /// Crashes of a chunk before its remaining runs are given up (a poison chunk).
    pub max_chunk_crashes: i32,
}

impl Environment {
    pub fn actor(&self) -> String {
        format!("worker:{}", self.worker_name)
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
