//! Job payloads and the Redis queues they travel on.
//!
//! Payloads hold ids, never data: PostgreSQL is the record, and a job lost
//! in Redis can be rebuilt from it.

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use redis::aio::ConnectionManagerConfig;
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

/// How often a worker tells Redis it is alive. A worker silent for
/// `HEARTBEAT_INTERVAL * MISSED_HEARTBEATS` is presumed dead and its jobs are
/// handed to a live worker: 10 s, well within the 30 s recovery target.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: usize = 2;

/// A Redis connection that survives restarts (it reconnects) and waits 5 s
/// for an answer: apalis' own `connect` waits 500 ms, and any timeout on a
/// heartbeat ends a worker.
pub async fn connect(redis_url: &str) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(redis_url)?
        .get_connection_manager_with_config(config)
        .await
}

/// The apalis storage of evaluation jobs under `prefix`. `batch_size` is how
/// many jobs one fetch moves to a worker: keep it at most the worker's job
/// concurrency, or jobs wait behind a busy worker.
pub fn evaluation_storage(
    conn: ConnectionManager,
    prefix: &str,
    batch_size: usize,
) -> RedisStorage<EvaluationJob> {
    let config = Config::default()
        .queue(evaluation_queue(prefix))
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(batch_size)
        // Without stored results apalis does not ack, and finished jobs re-run.
        .persist_results(true)
        // Nothing subscribes to apalis' PUBLISH on every push, lock and ack.
        .emit_events(false);
    RedisStorage::new(conn).with_config(config)
}

/// Where the API pushes jobs.
#[derive(Clone)]
pub struct JobQueue {
    storage: RedisStorage<EvaluationJob>,
}

impl JobQueue {
    pub async fn connect(redis_url: &str, prefix: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            storage: evaluation_storage(connect(redis_url).await?, prefix, 1),
        })
    }

    /// Pushes the job under the evaluation's id (pushing an id that is
    /// queued already is a no-op). One retry: after a Redis restart the
    /// first command on a reconnecting connection can fail.
    pub async fn push_evaluation(&self, job: EvaluationJob) -> anyhow::Result<()> {
        let mut storage = self.storage.clone();
        let task = || {
            TaskBuilder::new(job)
                .task_id(TaskId::from_uuid(job.evaluation_id))
                .build()
        };
        match storage.push_task(task()).await {
            Ok(()) => Ok(()),
            Err(first) => {
                tracing::warn!(evaluation.id = %job.evaluation_id, error = %first, "push failed; retrying once");
                tokio::time::sleep(Duration::from_millis(200)).await;
                storage
                    .push_task(task())
                    .await
                    .map_err(|error| anyhow::anyhow!("pushing job to Redis: {error}"))
            }
        }
    }
}
