//! The webhook kind: one job is one attempt of one delivery, on its own
//! queue (`<prefix>:webhooks`) with its own slots
//! ([`DeliverySettings::concurrency`]), so a slow receiver never holds a
//! chunk's place.
//!
//! PostgreSQL is the outbox ([`assay_core::db::models::webhooks`]): the
//! delivery rows are written with the event that owes them. The [`relay`]
//! of every worker pushes due deliveries to Redis (each under a task id the
//! row records) and pushes again those whose push Redis lost. A handler
//! claims its delivery for one attempt (a duplicate push finds it held, or
//! not due, and does nothing), releases its database connection, makes one
//! bounded POST, and records the attempt: succeeded, failed for good (the
//! retry window is over), or due again after an exponential delay — the
//! relay then pushes the next attempt. The job itself always ends `Ok`,
//! except when the database is unreachable: the state machine is in the
//! rows, not in apalis' retries.
//!
//! Against hostile receivers: every attempt is limited as a whole
//! ([`DeliverySettings::timeout`]: connect, send, answer), redirects are not
//! followed (a 3xx is a failed attempt), a success's body is not read, and
//! of an error's body at most [`ERROR_BODY_BYTES`] are kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::RedisStorage;
use assay_core::db::models::webhooks::{self, AfterAttempt, AttemptRecord, Claimed, DuePush};
use assay_core::webhooks::{DeliverySettings, WebhookJob, signature_header, webhook_queue};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tracing::Instrument;

use crate::environment::Environment;

/// Bytes of an error answer's body kept for the delivery log, at most.
pub const ERROR_BODY_BYTES: usize = 512;
/// Deliveries the relay takes per round.
const RELAY_BATCH: i64 = 200;
/// A push gets this long to reach Redis before the relay asks whether it is gone.
const PUSH_GRACE: Duration = Duration::from_secs(10);

/// The webhook kind's own state, built once per process.
pub struct WebhookKind {
    pub settings: DeliverySettings,
    http: reqwest::Client,
}

impl WebhookKind {
    pub fn new(settings: DeliverySettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("Assay-Webhooks/", env!("CARGO_PKG_VERSION")))
            // A receiver's redirect is its failure, not a hop to follow
            // (it could point anywhere, including at internal addresses).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .build()?;
        Ok(Self { settings, http })
    }
}

pub fn describe() {
    describe_counter!(
        "assay_webhook_attempts_total",
        "Webhook delivery attempts, by outcome (succeeded, http_error: a non-2xx answer, timeout, connect_error, error)."
    );
    describe_counter!(
        "assay_webhook_deliveries_total",
        "Webhook deliveries ended, by outcome (succeeded, failed: the retry window ended or the webhook was deleted)."
    );
    describe_histogram!(
        "assay_webhook_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one webhook delivery attempt, from connect to the answer's status (or the failure)."
    );
    describe_gauge!(
        "assay_webhook_deliveries_pending",
        "Webhook deliveries not yet succeeded or failed, over every tenant. Every worker reports the same value: take the max."
    );
    describe_counter!(
        "assay_webhook_pushes_total",
        "Webhook attempts pushed to Redis by the relay, by reason (due: a new or retried delivery; lost: its push was gone)."
    );
}

/// The apalis handler: one attempt of `job.delivery_id`.
pub async fn run_delivery(
    job: WebhookJob,
    env: Data<Arc<Environment>>,
    kind: Data<Arc<WebhookKind>>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let span = tracing::info_span!(
        "job",
        job_kind = "webhook",
        delivery_id = %job.delivery_id,
        tenant = %job.tenant_id,
        attempt = attempt.current(),
        worker = %env.worker_name,
    );
    let (env, kind) = (Arc::clone(&env), Arc::clone(&kind));
    Box::pin(deliver(job, env, kind).instrument(span))
        .await
        .map_err(|error| {
            tracing::warn!(
                error = format!("{error:#}"),
                "webhook attempt not recorded; retrying"
            );
            format!("{error:#}").into()
        })
}

async fn deliver(
    job: WebhookJob,
    env: Arc<Environment>,
    kind: Arc<WebhookKind>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        job.v == WebhookJob::VERSION,
        "unknown webhook job format {}",
        job.v
    );
    let claimed = {
        let mut conn = env.pool.get().await?;
        webhooks::claim(
            &mut conn,
            job.tenant_id,
            job.delivery_id,
            kind.settings.hold(),
        )
        .await?
    };
    // The connection is back in the pool before the receiver is called: a
    // slow receiver holds one of this queue's slots, never a connection.
    let Some(claimed) = claimed else {
        tracing::debug!("delivery not due, held or finished: nothing to do");
        return Ok(());
    };
    let (record, outcome) = if claimed.webhook_deleted_at.is_some() {
        let record = AttemptRecord {
            started_at: chrono::Utc::now(),
            duration_ms: 0,
            status_code: None,
            error: Some("the webhook was deleted".to_owned()),
        };
        (record, Outcome::Deleted)
    } else {
        attempt(&kind, &claimed).await
    };
    let after = match outcome {
        Outcome::Succeeded => AfterAttempt::Succeeded,
        Outcome::Deleted => AfterAttempt::GiveUp,
        _ => {
            let delay = kind.settings.delay_after(claimed.attempt);
            let deadline = claimed.created_at
                + chrono::Duration::from_std(kind.settings.retry_window).unwrap_or_default();
            let next = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            if next > deadline {
                AfterAttempt::GiveUp
            } else {
                AfterAttempt::RetryIn(delay)
            }
        }
    };
    let mut conn = env.pool.get().await?;
    webhooks::record_attempt(&mut conn, &claimed, &record, after).await?;
    counter!("assay_webhook_attempts_total", "outcome" => outcome.as_str()).increment(1);
    match after {
        AfterAttempt::Succeeded => {
            counter!("assay_webhook_deliveries_total", "outcome" => "succeeded").increment(1);
            tracing::info!(attempt = claimed.attempt, event_type = %claimed.event_type, "webhook delivered");
        }
        AfterAttempt::GiveUp => {
            counter!("assay_webhook_deliveries_total", "outcome" => "failed").increment(1);
            tracing::warn!(
                attempt = claimed.attempt,
                error = record.error.as_deref(),
                "webhook delivery failed for good"
            );
        }
        AfterAttempt::RetryIn(delay) => {
            tracing::info!(
                attempt = claimed.attempt,
                error = record.error.as_deref(),
                retry_in_ms = delay.as_millis() as u64,
                "webhook attempt failed; will retry"
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    HttpError,
    Timeout,
    ConnectError,
    Error,
    Deleted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::HttpError => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Error => "error",
            Outcome::Deleted => "deleted",
        }
    }
}

/// One signed POST, bounded in time and in what it reads.
async fn attempt(kind: &WebhookKind, claimed: &Claimed) -> (AttemptRecord, Outcome) {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let timestamp = started_at.timestamp();
    let sent = kind
        .http
        .post(&claimed.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Assay-Event-Id", claimed.event_id.to_string())
        .header("Assay-Event-Type", &claimed.event_type)
        .header("Assay-Delivery-Id", claimed.id.to_string())
        .header("Assay-Delivery-Attempt", claimed.attempt.to_string())
        .header(
            "Assay-Signature",
            signature_header(&claimed.secret, timestamp, claimed.body.as_bytes()),
        )
        .body(claimed.body.clone())
        .send()
        .await;
    let (status_code, error, outcome) = match sent {
        Ok(response) if response.status().is_success() => {
            // Its body is not read: the connection closes with the response.
            (
                Some(i32::from(response.status().as_u16())),
                None,
                Outcome::Succeeded,
            )
        }
        Ok(response) => {
            let status = response.status();
            let excerpt = read_excerpt(response, kind.settings.timeout, clock).await;
            let redirect = if status.is_redirection() {
                " (redirects are not followed)"
            } else {
                ""
            };
            let error = if excerpt.is_empty() {
                format!("HTTP {}{redirect}", status.as_u16())
            } else {
                format!("HTTP {}{redirect}: {excerpt}", status.as_u16())
            };
            (
                Some(i32::from(status.as_u16())),
                Some(error),
                Outcome::HttpError,
            )
        }
        Err(error) if error.is_timeout() => (
            None,
            Some(format!(
                "no answer within {}",
                humantime::format_duration(kind.settings.timeout)
            )),
            Outcome::Timeout,
        ),
        Err(error) if error.is_connect() => (
            None,
            Some(format!("could not connect: {}", root_cause(&error))),
            Outcome::ConnectError,
        ),
        Err(error) => (
            None,
            Some(format!("request failed: {}", root_cause(&error))),
            Outcome::Error,
        ),
    };
    let elapsed = clock.elapsed();
    histogram!("assay_webhook_attempt_duration_seconds").record(elapsed.as_secs_f64());
    let record = AttemptRecord {
        started_at,
        duration_ms: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
        status_code,
        error: error.map(|error| clean(&error, 300)),
    };
    (record, outcome)
}

/// Up to [`ERROR_BODY_BYTES`] of an error answer, within what is left of
/// the attempt's time; whatever it holds, as text the log can store.
async fn read_excerpt(mut response: reqwest::Response, limit: Duration, clock: Instant) -> String {
    let mut bytes = Vec::new();
    let left = limit.saturating_sub(clock.elapsed());
    let _ = tokio::time::timeout(left, async {
        while bytes.len() < ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = ERROR_BODY_BYTES - bytes.len();
                    bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                _ => break,
            }
        }
    })
    .await;
    clean(&String::from_utf8_lossy(&bytes), 200)
}

/// `text` on one line, without NUL or other control characters (PostgreSQL
/// text cannot hold NUL), cut at `max` characters.
fn clean(text: &str, max: usize) -> String {
    let mut cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    cleaned.truncate(cleaned.trim_end().len());
    cleaned
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Pushes due deliveries from PostgreSQL to Redis every `every`, pushes
/// again those whose push is gone, reports the pending gauge and trims
/// finished jobs from Redis, until shutdown. Runs in every worker: `SKIP
/// LOCKED` splits the rows between them.
pub async fn relay(
    env: Arc<Environment>,
    storage: RedisStorage<WebhookJob>,
    every: Duration,
    job_retention: Duration,
) {
    let queue = webhook_queue(env.queue.prefix());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = Instant::now();
    let mut last_cleanup = Instant::now();
    while !env.shutting_down() {
        ticks.tick().await;
        if let Err(error) = push_due(&env, &storage).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "webhook relay: pushing due deliveries failed"
            );
        }
        if last_check.elapsed() >= Duration::from_secs(5) {
            last_check = Instant::now();
            if let Err(error) = push_lost(&env, &storage, &queue).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "webhook relay: recovering lost pushes failed"
                );
            }
            if let Ok(mut conn) = env.pool.get().await
                && let Ok(pending) = webhooks::pending_count(&mut conn).await
            {
                gauge!("assay_webhook_deliveries_pending").set(pending as f64);
            }
        }
        if last_cleanup.elapsed() >= Duration::from_secs(60) {
            last_cleanup = Instant::now();
            match env.queue.forget_finished_in(&queue, job_retention).await {
                Ok(removed) if removed > 0 => {
                    counter!("assay_queue_jobs_forgotten_total", "queue" => "webhooks")
                        .increment(removed);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "could not trim finished webhook jobs"
                    )
                }
            }
        }
    }
}

async fn push_due(env: &Environment, storage: &RedisStorage<WebhookJob>) -> anyhow::Result<()> {
    loop {
        let due = {
            let mut conn = env.pool.get().await?;
            webhooks::take_due(&mut conn, RELAY_BATCH).await?
        };
        push(storage, &due).await?;
        counter!("assay_webhook_pushes_total", "reason" => "due").increment(due.len() as u64);
        if (due.len() as i64) < RELAY_BATCH {
            return Ok(());
        }
    }
}

/// Deliveries pushed a while ago, due, held by no attempt, whose push Redis
/// no longer has (lost, or never arrived): pushed again under fresh ids.
async fn push_lost(
    env: &Environment,
    storage: &RedisStorage<WebhookJob>,
    queue: &str,
) -> anyhow::Result<()> {
    let mut conn = env.pool.get().await?;
    let stale = webhooks::stale_pushes(&mut conn, PUSH_GRACE, RELAY_BATCH).await?;
    if stale.is_empty() {
        return Ok(());
    }
    let jobs: Vec<uuid::Uuid> = stale.iter().map(|(_, job)| *job).collect();
    let alive = env.queue.alive_in(queue, &jobs).await?;
    let mut lost = Vec::new();
    for ((delivery, job), alive) in stale.into_iter().zip(alive) {
        if alive {
            continue;
        }
        if let Some(push) = webhooks::replace_push(&mut conn, delivery, job).await? {
            lost.push(push);
        }
    }
    drop(conn);
    push(storage, &lost).await?;
    if !lost.is_empty() {
        counter!("assay_webhook_pushes_total", "reason" => "lost").increment(lost.len() as u64);
        tracing::info!(
            count = lost.len(),
            "webhook relay: pushed again deliveries whose push was gone"
        );
    }
    Ok(())
}

/// Pushes attempts under the task ids their rows record. A failed push is
/// left to [`push_lost`], which finds it after [`PUSH_GRACE`].
async fn push(storage: &RedisStorage<WebhookJob>, pushes: &[DuePush]) -> anyhow::Result<()> {
    if pushes.is_empty() {
        return Ok(());
    }
    let tasks = pushes.iter().map(|push| {
        TaskBuilder::new(WebhookJob::new(push.tenant_id, push.id))
            .task_id(TaskId::from_uuid(push.job_id))
            .build()
    });
    storage
        .clone()
        .push_all(futures::stream::iter(tasks.collect::<Vec<_>>()))
        .await
        .map_err(|error| anyhow::anyhow!("pushing webhook attempts to Redis: {error}"))
}
