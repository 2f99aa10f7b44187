//! Per-model limits shared by every worker replica, kept in Redis and changed
//! only by atomic Lua scripts, so that N replicas send what one limit allows,
//! not N times it.
//!
//! - **Requests per minute**: GCRA (the generic cell rate algorithm): one
//!   timestamp per model, the "theoretical arrival time". Requests are paced
//!   `60 s / rpm` apart, and `burst` of them may go back to back, so any
//!   one-second window sees at most `rpm / 60 + burst` requests.
//! - **Tokens per minute**: GCRA weighted by tokens, with a bucket of one
//!   minute's tokens. A call reserves its estimate (input tokens counted with
//!   the tokenizer, plus `max_tokens` or as many again for the output) and
//!   settles the real usage after it: the difference moves the timestamp.
//! - **Concurrency**: leases in a sorted set scored by expiry. A lease lasts
//!   the model's timeout plus a margin, so a killed worker's slots come back
//!   by themselves.
//! - **Shared cool-down**: a 429 pauses every worker's new calls to that
//!   model for its `Retry-After`. The pause is followed by a window of the
//!   same length in which further 429s do not pause everyone again (each call
//!   that got one still waits its own `Retry-After`): right after a pause the
//!   calls that waited all start, and without that window the first 429
//!   among them would stop the rest again, so a steady trickle of 429s would
//!   stall the model instead of halving its pace.
//!
//! A model without limits needs no Redis round trip per call: a pause is
//! announced on `<prefix>:limits:cool-downs` when it starts, and every
//! worker that follows the channel ([`Limiter::follow_cool_downs`]) keeps
//! it locally. A worker that misses an announcement (its subscription was
//! reconnecting) misses that one pause; limited models check the pause in
//! their script on every call anyway.
//!
//! Time is Redis' own clock (`TIME`), so workers' clocks may disagree.
//! Waiting for capacity is not an error: [`Limiter::acquire`] sleeps for
//! what the script says (plus jitter, so waiters do not stampede).
//! Keys share a hash tag per model (`prefix:limits:{model}:...`) so that the
//! scripts also run on Redis Cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use futures::StreamExt;
use metrics::{counter, histogram};
use rand::Rng;
use redis::Script;

use super::Model;

/// How long a concurrency lease outlives the model's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How often a caller waiting for a concurrency slot looks again.
const CONCURRENCY_POLL: Duration = Duration::from_millis(20);

// KEYS: cooldown, request TAT, token TAT, leases.
// ARGV: request interval µs (0: no rate), request tolerance µs, µs per token
// (0: no token rate), tokens to reserve, concurrency (0: none), lease ms,
// lease id, poll ms.
// Returns {granted, wait ms, reason} with reason 0 none, 1 cool-down,
// 2 requests, 3 tokens, 4 concurrency.
const ACQUIRE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local cooldown = redis.call('PTTL', KEYS[1])
if cooldown > 0 then return {0, cooldown, 1} end
local wait, reason = 0, 0
local request_interval = tonumber(ARGV[1])
local new_request_tat
if request_interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now then tat = now end
  new_request_tat = tat + request_interval
  local allow_at = new_request_tat - tonumber(ARGV[2])
  if allow_at > now then
    wait = math.ceil((allow_at - now) / 1000); reason = 2
  end
end
local token_interval = tonumber(ARGV[3])
local new_token_tat
if token_interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat < now then tat = now end
  new_token_tat = tat + tonumber(ARGV[4]) * token_interval
  local allow_at = new_token_tat - 60000000
  if allow_at > now then
    local token_wait = math.ceil((allow_at - now) / 1000)
    if token_wait > wait then wait = token_wait; reason = 3 end
  end
end
local concurrency = tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[4]) >= concurrency then
    if wait == 0 then wait = tonumber(ARGV[8]); reason = 4 end
  end
end
if wait > 0 then return {0, wait, reason} end
if new_request_tat then
  redis.call('SET', KEYS[2], string.format('%.0f', new_request_tat), 'PX', math.ceil((new_request_tat - now) / 1000) + 1000)
end
if new_token_tat then
  redis.call('SET', KEYS[3], string.format('%.0f', new_token_tat), 'PX', math.ceil((new_token_tat - now) / 1000) + 1000)
end
if concurrency > 0 then
  local lease_ms = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[4], now_ms + lease_ms, ARGV[7])
  redis.call('PEXPIRE', KEYS[4], lease_ms)
end
return {1, 0, 0}
"#;

// KEYS: token TAT, leases. ARGV: lease id, µs per token (0: none), tokens
// used minus tokens reserved.
const RELEASE: &str = r#"
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local token_interval = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
if token_interval > 0 and delta ~= 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  tat = tat + delta * token_interval
  if tat <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
return 1
"#;

// KEYS: cooldown, its grace window. ARGV: ms. Starts a pause unless one
// is under way or just ended (the grace key outlives the pause by `ms`).
// Returns 1 when it started one.
const COOL_DOWN: &str = r#"
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ms)
redis.call('SET', KEYS[2], '1', 'PX', 2 * ms)
return 1
"#;

/// Why a caller is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    CoolDown,
    Requests,
    Tokens,
    Concurrency,
}

impl WaitReason {
    pub fn label(self) -> &'static str {
        match self {
            WaitReason::CoolDown => "cool_down",
            WaitReason::Requests => "requests",
            WaitReason::Tokens => "tokens",
            WaitReason::Concurrency => "concurrency",
        }
    }
}

/// Capacity taken for one call; give it back with [`Limiter::release`].
#[derive(Debug)]
pub struct Permit {
    lease: Option<String>,
    reserved_tokens: u32,
    /// Time spent waiting for it.
    pub waited: Duration,
}

/// The model is cooling down after a 429 and the caller would rather not wait.
#[derive(Debug, Clone, Copy)]
pub struct CoolingDown(pub Duration);

#[derive(Clone)]
pub struct Limiter {
    redis: Pool,
    prefix: String,
    acquire: Script,
    release: Script,
    cool_down: Script,
    /// Pauses of models without limits, as announced: model -> until.
    paused: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Limiter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

struct Keys {
    cooldown: String,
    cooldown_grace: String,
    requests: String,
    tokens: String,
    leases: String,
}

impl Limiter {
    pub fn new(redis: Pool, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            cool_down: Script::new(COOL_DOWN),
            paused: Arc::default(),
        }
    }

    /// Where pauses are announced.
    fn cool_down_channel(&self) -> String {
        format!("{}:limits:cool-downs", self.prefix)
    }

    /// Notes that `model` pauses for `duration` from now.
    fn pause_locally(&self, model: &str, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = self.paused.lock().expect("pauses lock");
        let entry = paused.entry(model.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How long `model` is still paused here.
    fn paused_for(&self, model: &str) -> Option<Duration> {
        let paused = self.paused.lock().expect("pauses lock");
        paused
            .get(model)
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|remaining| !remaining.is_zero())
    }

    /// Follows the announced pauses until the process ends (reconnecting
    /// after errors). Workers run this once.
    pub async fn follow_cool_downs(self, redis_url: String) {
        loop {
            let followed = async {
                let client = redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(self.cool_down_channel()).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let text: String = message.get_payload()?;
                    // "<milliseconds> <model>": the model last, as names hold spaces.
                    if let Some((millis, model)) = text.split_once(' ')
                        && let Ok(millis) = millis.parse::<u64>()
                    {
                        self.pause_locally(model, Duration::from_millis(millis));
                    }
                }
                redis::RedisResult::Ok(())
            }
            .await;
            if let Err(error) = followed {
                tracing::debug!(error = %error, "cool-down announcements unavailable; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A model without limits: no Redis round trip, only the announced pause.
    async fn acquire_unlimited(
        &self,
        model: &Model,
        avoid_cool_down: bool,
    ) -> Result<Permit, CoolingDown> {
        let started = Instant::now();
        while let Some(remaining) = self.paused_for(&model.name) {
            if avoid_cool_down {
                return Err(CoolingDown(remaining));
            }
            // Callers restart together (within 50 ms), as after a shared pause.
            let jitter = Duration::from_millis(50).mul_f64(rand::rng().random_range(0.0..1.0));
            tokio::time::sleep(remaining + jitter).await;
        }
        let waited = started.elapsed();
        if !waited.is_zero() {
            histogram!("assay_llm_rate_limit_wait_seconds", "model" => model.name.clone(), "reason" => WaitReason::CoolDown.label())
                .record(waited.as_secs_f64());
        }
        Ok(Permit {
            lease: None,
            reserved_tokens: 0,
            waited,
        })
    }

    fn keys(&self, model: &str) -> Keys {
        // Every key under the deployment's prefix; the model is the hash tag.
        let tag = format!("{}:limits:{{{model}}}", self.prefix);
        Keys {
            cooldown: format!("{tag}:cooldown"),
            cooldown_grace: format!("{tag}:cooldown-grace"),
            requests: format!("{tag}:requests"),
            tokens: format!("{tag}:tokens"),
            leases: format!("{tag}:leases"),
        }
    }

    fn token_interval_us(model: &Model) -> f64 {
        model
            .limits
            .tokens_per_minute
            .map_or(0.0, |tpm| 60_000_000.0 / f64::from(tpm))
    }

    /// Waits until `model` has capacity for one call reserving `tokens`.
    /// With `avoid_cool_down`, returns [`CoolingDown`] instead of waiting out
    /// a cool-down (the caller has a fallback). Redis errors are returned:
    /// a limit that cannot be checked is not ignored.
    pub async fn acquire(
        &self,
        model: &Model,
        tokens: u32,
        avoid_cool_down: bool,
    ) -> Result<Result<Permit, CoolingDown>, redis::RedisError> {
        let limits = model.limits;
        if limits.is_unlimited() {
            return Ok(self.acquire_unlimited(model, avoid_cool_down).await);
        }
        let keys = self.keys(&model.name);
        let request_interval_us = limits
            .requests_per_minute
            .map_or(0, |rpm| 60_000_000 / u64::from(rpm).max(1));
        let request_tolerance_us = request_interval_us * u64::from(limits.burst.max(1));
        let token_interval_us = Self::token_interval_us(model);
        // A call larger than a whole minute's budget still goes, alone.
        let tokens = limits.tokens_per_minute.map_or(0, |tpm| tokens.min(tpm));
        let lease_ms = (model.timeout + LEASE_MARGIN).as_millis() as u64;
        let lease = limits.concurrency.map(|_| uuid::Uuid::new_v4().to_string());
        let started = Instant::now();
        let mut waits_by_reason = [Duration::ZERO; 4];
        loop {
            let mut conn = self.redis.get().await.map_err(pool_error)?;
            let (granted, wait_ms, reason): (i64, i64, i64) = self
                .acquire
                .key(&keys.cooldown)
                .key(&keys.requests)
                .key(&keys.tokens)
                .key(&keys.leases)
                .arg(request_interval_us)
                .arg(request_tolerance_us)
                .arg(token_interval_us)
                .arg(tokens)
                .arg(limits.concurrency.unwrap_or(0))
                .arg(lease_ms)
                .arg(lease.as_deref().unwrap_or(""))
                .arg(CONCURRENCY_POLL.as_millis() as u64)
                .invoke_async(&mut *conn)
                .await?;
            drop(conn);
            if granted == 1 {
                let waited = started.elapsed();
                for (reason, waited) in [
                    WaitReason::CoolDown,
                    WaitReason::Requests,
                    WaitReason::Tokens,
                    WaitReason::Concurrency,
                ]
                .into_iter()
                .zip(waits_by_reason)
                {
                    if !waited.is_zero() {
                        histogram!("assay_llm_rate_limit_wait_seconds", "model" => model.name.clone(), "reason" => reason.label())
                            .record(waited.as_secs_f64());
                    }
                }
                return Ok(Ok(Permit {
                    lease,
                    reserved_tokens: tokens,
                    waited,
                }));
            }
            let reason = match reason {
                1 => WaitReason::CoolDown,
                2 => WaitReason::Requests,
                3 => WaitReason::Tokens,
                _ => WaitReason::Concurrency,
            };
            let wait = Duration::from_millis(wait_ms.max(1) as u64);
            if reason == WaitReason::CoolDown && avoid_cool_down {
                return Ok(Err(CoolingDown(wait)));
            }
            // Callers released at the same moment should not all ask again at
            // once: up to a quarter more (at most 250 ms). A cool-down is the
            // exception: it already stops everyone, and spreading the restart
            // would let the first 429 after it stop the rest again, so
            // callers restart together (within 50 ms) and a requests-per-minute
            // limit, if any, shapes the restart.
            let spread = match reason {
                WaitReason::CoolDown => Duration::from_millis(50),
                _ => wait.min(Duration::from_secs(1)) / 4,
            };
            let jitter = spread.mul_f64(rand::rng().random_range(0.0..1.0));
            let sleep = wait + jitter;
            waits_by_reason[reason as usize] += sleep;
            tokio::time::sleep(sleep).await;
        }
    }

    /// Gives back a permit: frees its concurrency lease and settles its
    /// token reservation against what the call used.
    pub async fn release(
        &self,
        model: &Model,
        permit: Permit,
        used_tokens: u32,
    ) -> Result<(), redis::RedisError> {
        let token_interval_us = Self::token_interval_us(model);
        if permit.lease.is_none() && token_interval_us == 0.0 {
            return Ok(());
        }
        let keys = self.keys(&model.name);
        let used = model
            .limits
            .tokens_per_minute
            .map_or(0, |tpm| used_tokens.min(tpm));
        let delta = i64::from(used) - i64::from(permit.reserved_tokens);
        let mut conn = self.redis.get().await.map_err(pool_error)?;
        let _: i64 = self
            .release
            .key(&keys.tokens)
            .key(&keys.leases)
            .arg(permit.lease.as_deref().unwrap_or(""))
            .arg(token_interval_us)
            .arg(delta)
            .invoke_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// After a 429: no worker starts a call to `model` for `duration`,
    /// unless a pause is under way or just ended. True when it started one.
    pub async fn cool_down(
        &self,
        model: &Model,
        duration: Duration,
    ) -> Result<bool, redis::RedisError> {
        let keys = self.keys(&model.name);
        let mut conn = self.redis.get().await.map_err(pool_error)?;
        let started: i64 = self
            .cool_down
            .key(&keys.cooldown)
            .key(&keys.cooldown_grace)
            .arg(duration.as_millis().max(1) as u64)
            .invoke_async(&mut *conn)
            .await?;
        if started == 1 {
            counter!("assay_llm_cool_downs_total", "model" => model.name.clone()).increment(1);
            self.pause_locally(&model.name, duration);
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.cool_down_channel())
                .arg(format!("{} {}", duration.as_millis(), model.name))
                .query_async(&mut *conn)
                .await?;
        }
        Ok(started == 1)
    }
}

pub(crate) fn pool_error(error: deadpool_redis::PoolError) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(format!("redis pool: {error}")))
}
