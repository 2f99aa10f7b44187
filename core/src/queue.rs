//! Job payloads and the Redis queues they travel on.
//!
//! Payloads hold ids, never data: PostgreSQL is the record, and a job lost
//! in Redis can be rebuilt from it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Runs one evaluation: every item x model that has no result yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationJob {
    /// Payload format, so that workers can refuse what they do not understand.
    pub v: u32,
    pub evaluation_id: Uuid,
    pub tenant_id: Uuid,
}

impl EvaluationJob {
    pub const VERSION: u32 = 1;

    pub fn new(tenant_id: Uuid, evaluation_id: Uuid) -> Self {
        Self {
            v: Self::VERSION,
            evaluation_id,
            tenant_id,
        }
    }
}

/// The apalis queue name of evaluation jobs under `prefix`.
pub fn evaluation_queue(prefix: &str) -> String {
    format!("{prefix}:evaluations")
}
