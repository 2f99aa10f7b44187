//! Job payloads and the Redis queues they travel on.
//!
//! Payloads hold ids, never data: PostgreSQL is the record (the plan of an
//! evaluation's chunks and each chunk's state), and a job lost in Redis is
//! pushed again from it. Every push carries a fresh task id, which the
//! chunk's row remembers, so the sweeper can ask Redis whether that push is
//! still alive.
//!
//! One queue per priority (`<prefix>:chunks:high|normal|low`): the Redis
//! backend ignores priorities, so workers consume the three queues with
//! their own consumers. Pushes are announced on `<prefix>:chunks:wake`, so an
//! idle worker fetches at once instead of on its next poll.
//!
//! The backend's own keys (apalis-redis 1.0's layout, read from its Lua
//! scripts; the sweeper depends on it): `Q:scheduled` (ZSET by
//! run-at second, every push lands there), `Q:active` (LIST of due ids),
//! `Q:inflight:<worker>` (SET), `Q:data` (HASH id -> payload), `Q:meta:<id>`
//! (HASH, `done_at` set on ack), `Q:done` and `Q:dead` (SETs), `Q:workers`
//! (ZSET by last heartbeat).

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use redis::Script;
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Priority;
use crate::ids::{EvaluationId, TenantId};

/// Runs one chunk of an evaluation: a range of items x one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkJob {
    /// Payload format, so that workers can refuse what they do not understand.
    pub v: u32,
    pub tenant_id: TenantId,
    pub evaluation_id: EvaluationId,
    pub chunk_index: i32,
    /// The `X-Request-Id` of the request that submitted the evaluation, for
    /// the worker's log lines. Optional, so payloads without it (pushed by
    /// older code) still parse; the worker then reads it from the evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ChunkJob {
    pub const VERSION: u32 = 1;

    pub fn new(tenant_id: TenantId, evaluation_id: EvaluationId, chunk_index: i32) -> Self {
        Self {
            v: Self::VERSION,
            tenant_id,
            evaluation_id,
            chunk_index,
            request_id: None,
        }
    }

    /// The same job, naming the request that submitted its evaluation.
    pub fn with_request_id(mut self, request_id: Option<&str>) -> Self {
        self.request_id = request_id.map(str::to_owned);
        self
    }
}

/// The kinds of versioning job. Each has its own queue
/// (`<prefix>:promotions`, `<prefix>:optimizations`) with its own consumers,
/// so a long promotion never takes a chunk's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersioningKind {
    Promotion,
    Optimization,
}

impl VersioningKind {
    pub const ALL: [VersioningKind; 2] = [VersioningKind::Promotion, VersioningKind::Optimization];

    /// The `kind` label of job metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            VersioningKind::Promotion => "promotion",
            VersioningKind::Optimization => "optimization",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Advances one promotion or optimization by a step (its kind is its
/// queue). The row in PostgreSQL is the job's state; this only names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersioningJob {
    /// Payload format, so that workers can refuse what they do not understand.
    pub v: u32,
    pub tenant_id: TenantId,
    pub id: Uuid,
}

impl VersioningJob {
    pub const VERSION: u32 = 1;

    pub fn new(tenant_id: TenantId, id: Uuid) -> Self {
        Self {
            v: Self::VERSION,
            tenant_id,
            id,
        }
    }
}

/// The queue of versioning jobs of `kind` under `prefix`.
pub fn versioning_queue(prefix: &str, kind: VersioningKind) -> String {
    format!("{prefix}:{}s", kind.as_str())
}

/// The apalis storage of versioning jobs of `kind`: configured like the
/// chunks' (same heartbeats, so a killed worker's job is handed over after
/// the same 10 s).
pub fn versioning_storage(
    conn: ConnectionManager,
    prefix: &str,
    kind: VersioningKind,
) -> RedisStorage<VersioningJob> {
    queue_storage(conn, versioning_queue(prefix, kind))
}

/// A chunk to push, under the task id its row records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub job: ChunkJob,
    pub priority: Priority,
    pub job_id: Uuid,
}

/// The queue of chunk jobs of `priority` under `prefix`.
pub fn chunk_queue(prefix: &str, priority: Priority) -> String {
    format!("{prefix}:chunks:{}", priority.as_str())
}

/// The channel pushes are announced on.
pub fn wake_channel(prefix: &str) -> String {
    format!("{prefix}:chunks:wake")
}

/// How often a worker tells Redis it is alive. A worker silent for
/// `HEARTBEAT_INTERVAL * MISSED_HEARTBEATS` is presumed dead and its jobs are
/// handed to a live worker: 10 s.
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

/// The apalis storage of chunk jobs of `priority`.
pub fn chunk_storage(
    conn: ConnectionManager,
    prefix: &str,
    priority: Priority,
) -> RedisStorage<ChunkJob> {
    queue_storage(conn, chunk_queue(prefix, priority))
}

/// The apalis storage of one queue, configured alike for every job kind
/// (chunks, versioning steps, webhook attempts).
/// One job per fetch: a worker takes a job only when it can start it
/// (apalis-redis moves each fetched batch into the worker's in-flight set at
/// once, where ids wait for a free slot while other replicas idle), so jobs
/// spread over every replica.
pub fn queue_storage<Job>(conn: ConnectionManager, queue: String) -> RedisStorage<Job> {
    let config = Config::default()
        .queue(queue)
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(1)
        // Without stored results apalis does not ack, and finished jobs re-run.
        .persist_results(true)
        // Nothing subscribes to apalis' PUBLISH on every push, lock and ack.
        .emit_events(false);
    RedisStorage::new(conn).with_config(config)
}

// KEYS: data, done, dead. ARGV: task ids. For each: 1 when the task waits,
// runs or waits for a retry (its payload exists and it is neither done nor
// dead), else 0. One script, so no fetch or ack can fall between the checks.
const ALIVE: &str = r#"
local alive = {}
for i, id in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], id) == 1
     and redis.call('SISMEMBER', KEYS[2], id) == 0
     and redis.call('SISMEMBER', KEYS[3], id) == 0 then
    alive[i] = 1
  else
    alive[i] = 0
  end
end
return alive
"#;

// KEYS: done or dead set, data hash. ARGV: meta key prefix, cutoff (unix
// seconds), task ids. Deletes the tasks that finished before the cutoff.
const FORGET: &str = r#"
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local meta = ARGV[1] .. id
  local done_at = tonumber(redis.call('HGET', meta, 'done_at') or '0')
  if done_at < tonumber(ARGV[2]) then
    redis.call('SREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', meta)
    removed = removed + 1
  end
end
return removed
"#;

// KEYS: active, scheduled, workers. ARGV: now (unix seconds), worker
// inflight-key prefix. Returns {ready, delayed, running}.
const DEPTH: &str = r#"
local ready = redis.call('LLEN', KEYS[1]) + redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[1])
local delayed = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf')
local running = 0
for _, worker in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  running = running + redis.call('SCARD', ARGV[2] .. worker)
end
return {ready, delayed, running}
"#;

/// How many jobs a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Due: waiting for a worker.
    pub ready: u64,
    /// Scheduled later (retries).
    pub delayed: u64,
    /// Taken by a worker (including dead workers' not yet recovered).
    pub running: u64,
}

/// Pushes chunk jobs and reads the queues' state. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    prefix: String,
    storages: [RedisStorage<ChunkJob>; 3],
    versioning: [RedisStorage<VersioningJob>; 2],
    /// For the announcement, and for the scripts above.
    redis: deadpool_redis::Pool,
    alive: Script,
    forget: Script,
    depth: Script,
}

impl JobQueue {
    pub async fn connect(redis_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = connect(redis_url).await?;
        Ok(Self {
            prefix: prefix.to_owned(),
            storages: Priority::ALL.map(|priority| chunk_storage(conn.clone(), prefix, priority)),
            versioning: VersioningKind::ALL
                .map(|kind| versioning_storage(conn.clone(), prefix, kind)),
            redis: crate::redis_pool::build(redis_url, 8)?,
            alive: Script::new(ALIVE),
            forget: Script::new(FORGET),
            depth: Script::new(DEPTH),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn storage(&self, priority: Priority) -> RedisStorage<ChunkJob> {
        self.storages[priority.index()].clone()
    }

    /// Pushes `pushes` (each under its own task id) and announces them.
    /// One retry: after a Redis restart the first command on a reconnecting
    /// connection can fail. A task id that exists already is not pushed twice.
    pub async fn push(&self, pushes: &[Push]) -> anyhow::Result<()> {
        if pushes.is_empty() {
            return Ok(());
        }
        for priority in Priority::ALL {
            if !pushes.iter().any(|push| push.priority == priority) {
                continue;
            }
            // Built anew for the retry: tasks are consumed by the push.
            let tasks = || {
                pushes
                    .iter()
                    .filter(|push| push.priority == priority)
                    .map(|push| {
                        TaskBuilder::new(push.job.clone())
                            .task_id(TaskId::from_uuid(push.job_id))
                            .build()
                    })
                    .collect::<Vec<_>>()
            };
            let mut storage = self.storage(priority);
            let first = storage.push_all(futures::stream::iter(tasks())).await;
            if let Err(first) = first {
                tracing::warn!(error = %first, "push failed; retrying once");
                tokio::time::sleep(Duration::from_millis(200)).await;
                storage
                    .push_all(futures::stream::iter(tasks()))
                    .await
                    .map_err(|error| anyhow::anyhow!("pushing jobs to Redis: {error}"))?;
            }
        }
        // Idle workers wake at once; if this is lost, they poll anyway.
        if let Ok(mut conn) = self.redis.get().await {
            let _: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(wake_channel(&self.prefix))
                .arg(pushes.len())
                .query_async(&mut *conn)
                .await;
        }
        Ok(())
    }

    /// Pushes one versioning job under `job_id` (which its row records),
    /// retrying once like [`JobQueue::push`].
    pub async fn push_versioning(
        &self,
        kind: VersioningKind,
        job: &VersioningJob,
        job_id: Uuid,
    ) -> anyhow::Result<()> {
        let task = || {
            TaskBuilder::new(job.clone())
                .task_id(TaskId::from_uuid(job_id))
                .build()
        };
        let mut storage = self.versioning[kind.index()].clone();
        if let Err(first) = storage.push_all(futures::stream::iter([task()])).await {
            tracing::warn!(error = %first, "push failed; retrying once");
            tokio::time::sleep(Duration::from_millis(200)).await;
            storage
                .push_all(futures::stream::iter([task()]))
                .await
                .map_err(|error| anyhow::anyhow!("pushing a {} job: {error}", kind.as_str()))?;
        }
        Ok(())
    }

    /// Which of `job_ids` are still waiting, running or due for a retry in
    /// the queue of `priority`.
    pub async fn alive(&self, priority: Priority, job_ids: &[Uuid]) -> anyhow::Result<Vec<bool>> {
        self.alive_in(&chunk_queue(&self.prefix, priority), job_ids)
            .await
    }

    /// Which of `job_ids` are still alive in the versioning queue of `kind`.
    pub async fn versioning_alive(
        &self,
        kind: VersioningKind,
        job_ids: &[Uuid],
    ) -> anyhow::Result<Vec<bool>> {
        self.alive_in(&versioning_queue(&self.prefix, kind), job_ids)
            .await
    }

    /// Which of `job_ids` are still alive in the queue named `queue`.
    pub async fn alive_in(&self, queue: &str, job_ids: &[Uuid]) -> anyhow::Result<Vec<bool>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.get().await?;
        let mut invocation = self.alive.prepare_invoke();
        invocation
            .key(format!("{queue}:data"))
            .key(format!("{queue}:done"))
            .key(format!("{queue}:dead"));
        for id in job_ids {
            invocation.arg(id.to_string());
        }
        let flags: Vec<i64> = invocation.invoke_async(&mut *conn).await?;
        Ok(flags.into_iter().map(|flag| flag == 1).collect())
    }

    /// Deletes finished and dead jobs (payload, metadata, set entry) of the
    /// queue of `priority` that finished more than `age` ago; returns how
    /// many. apalis never trims them (and its `vacuum` deletes jobs that
    /// wait for a retry), so without this Redis grows with every chunk run.
    pub async fn forget_finished(&self, priority: Priority, age: Duration) -> anyhow::Result<u64> {
        self.forget_finished_in(&chunk_queue(&self.prefix, priority), age)
            .await
    }

    /// [`JobQueue::forget_finished`] for the versioning queue of `kind`.
    pub async fn forget_finished_versioning(
        &self,
        kind: VersioningKind,
        age: Duration,
    ) -> anyhow::Result<u64> {
        self.forget_finished_in(&versioning_queue(&self.prefix, kind), age)
            .await
    }

    /// [`JobQueue::forget_finished`] for the queue named `queue`.
    pub async fn forget_finished_in(&self, queue: &str, age: Duration) -> anyhow::Result<u64> {
        let cutoff = chrono::Utc::now().timestamp() - i64::try_from(age.as_secs()).unwrap_or(0);
        let mut removed = 0;
        for set in ["done", "dead"] {
            let set_key = format!("{queue}:{set}");
            let mut cursor: u64 = 0;
            loop {
                let mut conn = self.redis.get().await?;
                let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(&set_key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut *conn)
                    .await?;
                if !ids.is_empty() {
                    let mut invocation = self.forget.prepare_invoke();
                    invocation
                        .key(&set_key)
                        .key(format!("{queue}:data"))
                        .arg(format!("{queue}:meta:"))
                        .arg(cutoff);
                    for id in &ids {
                        invocation.arg(id);
                    }
                    let count: u64 = invocation.invoke_async(&mut *conn).await?;
                    removed += count;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// The queue of `priority`: due, delayed and running jobs.
    pub async fn depth(&self, priority: Priority) -> anyhow::Result<Depth> {
        let queue = chunk_queue(&self.prefix, priority);
        let mut conn = self.redis.get().await?;
        let (ready, delayed, running): (u64, u64, u64) = self
            .depth
            .key(format!("{queue}:active"))
            .key(format!("{queue}:scheduled"))
            .key(format!("{queue}:workers"))
            .arg(chrono::Utc::now().timestamp())
            .arg(format!("{queue}:inflight:"))
            .invoke_async(&mut *conn)
            .await?;
        Ok(Depth {
            ready,
            delayed,
            running,
        })
    }

    /// Worker processes that heartbeat on the normal queue now.
    pub async fn live_workers(&self) -> anyhow::Result<u64> {
        let queue = chunk_queue(&self.prefix, Priority::Normal);
        let since = chrono::Utc::now().timestamp()
            - (HEARTBEAT_INTERVAL * MISSED_HEARTBEATS as u32).as_secs() as i64;
        let mut conn = self.redis.get().await?;
        let count: u64 = redis::cmd("ZCOUNT")
            .arg(format!("{queue}:workers"))
            .arg(since)
            .arg("+inf")
            .query_async(&mut *conn)
            .await?;
        Ok(count)
    }
}
