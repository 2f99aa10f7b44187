//! Per-model limits shared by every worker replica, kept in Redis and changed
//! only by atomic Lua scripts, so that N replicas send what one limit allows,
//! not N times it.
//!
//! - **Requests per minute**: GCRA (the generic cell rate algorithm): one
//!   timestamp per model, the "theoretical arrival time". Requests are paced
//!   `1 / rate` apart, and `burst` of them may go back to back, so any
//!   one-second window sees at most `rate + burst` requests. The rate is the
//!   registry's `requests_per_minute / 60`, or the rate learned from 429s
//!   (below) when that is lower.
//! - **Tokens per minute**: GCRA weighted by tokens, with a bucket of one
//!   minute's tokens. A call reserves its estimate (input tokens counted with
//!   the tokenizer, plus `max_tokens` or as many again for the output) and
//!   settles the real usage after it: the difference moves the timestamp.
//! - **Concurrency**: leases in a sorted set scored by expiry. A lease lasts
//!   the model's timeout plus a margin, so a killed worker's slots come back
//!   by themselves.
//! - **A learned rate (AIMD)**: 429s are a signal, not a stop. Every worker
//!   reports its calls' outcomes (batched, every [`FEEDBACK_INTERVAL`], and at
//!   once after a 429; answers only while they can change something: a rate
//!   is learned, or the model has no request limit) to one Redis hash per
//!   model, where a script keeps the
//!   rate the provider accepts: a 429 multiplies it by [`DECREASE_FACTOR`]
//!   (at most once per [`DECREASE_WINDOW`], so that a burst of 429s from one
//!   overload counts once) — and, while the rate binds, brings it down to
//!   the rate of requests the provider did not refuse if that is lower (a
//!   cap) — and every answered call adds
//!   [`INCREASE_PER_SUCCESS`] requests per second, up to the registry's limit
//!   (or [`HEADROOM`] times the accepted rate for a model without limits). A
//!   model without limits starts learning only in a storm — at least
//!   [`STORM_SHARE`] of the last second's answers (and [`STORM_MIN_ANSWERS`])
//!   are 429s — so a steady trickle of refusals costs nothing but each
//!   refused call's own `Retry-After`; the storm also pauses the model for
//!   that `Retry-After` (at most [`MAX_STORM_PAUSE`]), and the learned rate
//!   starts at the rate of requests the provider did not refuse. A learned
//!   rate without a 429 for [`FORGET_AFTER`] is forgotten. Rate-limit headers
//!   that announce a nearly spent budget (`x-ratelimit-*-requests`,
//!   `anthropic-ratelimit-requests-*`) lower it too.
//!
//! A model that is not paced (no limits, nothing learned) needs no Redis
//! round trip per call: a storm's pause is announced on
//! `<prefix>:limits:cool-downs`, and every worker that follows the channel
//! ([`Limiter::follow_cool_downs`]) keeps it locally.
//!
//! **Waiting without polling.** Calls that wait for a paced model queue in
//! their process, per model, in order; one driver task per process and model
//! talks to Redis for all of them. For a model limited by requests only it
//! reserves a batch of start times (at most one per waiter, none further than
//! [`RESERVE_HORIZON`] ahead) in one script call and hands them out as they
//! come; with token or concurrency limits it asks for the head waiter only.
//! So Redis sees about one script call per granted request, however many
//! calls wait.
//!
//! Time is Redis' own clock (`TIME`), so workers' clocks may disagree.
//! Keys share a hash tag per model (`prefix:limits:{model}:...`) so that the
//! scripts also run on Redis Cluster.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use futures::StreamExt;
use metrics::{counter, gauge, histogram};
use rand::Rng;
use redis::Script;
use tokio::sync::oneshot;

use super::Model;

/// A 429 multiplies the learned rate by this (at most once per window).
pub const DECREASE_FACTOR: f64 = 0.95;
/// Each answered call adds this many requests per second to a learned rate:
/// about 5% a second when the rate binds, so an overshoot past a hard cap
/// stays within about 5% before the next decrease.
pub const INCREASE_PER_SUCCESS: f64 = 0.05;
/// 429s within this long after a decrease do not decrease again. A little
/// under a second: a provider's per-second window refuses at the same phase
/// every second, and a 1 s window would skip every other one of them.
pub const DECREASE_WINDOW: Duration = Duration::from_millis(900);
/// A model without limits starts learning when this share of the last
/// second's answers are 429s...
pub const STORM_SHARE: f64 = 0.5;
/// ...and at least this many answers were counted.
pub const STORM_MIN_ANSWERS: u64 = 20;
/// A learned rate never goes below this (requests per second).
pub const MIN_RATE: f64 = 0.2;
/// A learned rate of a model without limits grows to at most this many
/// times the rate of requests the provider accepted.
pub const HEADROOM: f64 = 2.0;
/// A learned rate with no 429 for this long is dropped.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// The longest pause a storm starts (the `Retry-After`, capped).
pub const MAX_STORM_PAUSE: Duration = Duration::from_secs(5);
/// How often a worker reports its calls' outcomes.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// How far ahead a driver reserves start times.
pub const RESERVE_HORIZON: Duration = Duration::from_millis(250);
/// Start times reserved in one script call at most.
const MAX_BATCH: usize = 64;
/// How long a concurrency lease outlives the model's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How often the driver looks again for a concurrency slot.
const CONCURRENCY_POLL: Duration = Duration::from_millis(20);

// KEYS: cooldown, request TAT, token TAT, leases, adaptive hash.
// ARGV: registry request interval µs (0: none), burst, µs per token (0: no
// token rate), tokens to reserve, concurrency (0: none), lease ms, lease id,
// poll ms.
// Returns {granted, wait ms, reason, learned rate in milli-requests per
// second (0: none)} with reason 0 none, 1 cool-down, 2 requests, 3 tokens,
// 4 concurrency.
const ACQUIRE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now_ms = math.floor(now / 1000)
local cooldown = redis.call('PTTL', KEYS[1])
if cooldown > 0 then return {0, cooldown, 1, 0} end
local wait, reason = 0, 0
local request_interval = tonumber(ARGV[1])
local learned = tonumber(redis.call('HGET', KEYS[5], 'rate') or '0')
local learned_milli = math.floor(learned * 1000)
if learned > 0 then
  local interval = math.floor(1000000 / learned)
  if interval > request_interval then request_interval = interval end
end
local new_request_tat
if request_interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now then tat = now end
  new_request_tat = tat + request_interval
  local allow_at = new_request_tat - request_interval * tonumber(ARGV[2])
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
if wait > 0 then return {0, wait, reason, learned_milli} end
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
return {1, 0, 0, learned_milli}
"#;

// Start times for up to `wanted` requests of a model paced by requests only.
// KEYS: cooldown, request TAT, adaptive hash.
// ARGV: registry request interval µs (0: none), burst, wanted, horizon µs.
// Returns {0, pause ms} during a pause, {1, wait ms, learned} when no start
// time falls within the horizon, {3} when nothing paces the model any more,
// or {2, learned, offset ms, offset ms, ...}: one start time per granted
// request, as milliseconds from now. `learned` is the learned rate in
// milli-requests per second (0: none).
const RESERVE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return {0, pause} end
local interval = tonumber(ARGV[1])
local learned = tonumber(redis.call('HGET', KEYS[3], 'rate') or '0')
local learned_milli = math.floor(learned * 1000)
if learned > 0 then
  local learned_interval = math.floor(1000000 / learned)
  if learned_interval > interval then interval = learned_interval end
end
if interval <= 0 then return {3} end
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then tat = now end
local horizon = now + tonumber(ARGV[4])
local granted = {2, learned_milli}
for _ = 1, tonumber(ARGV[3]) do
  local start = tat + interval - tolerance
  if start > horizon then break end
  if start < now then start = now end
  tat = tat + interval
  granted[#granted + 1] = math.floor((start - now) / 1000)
end
if #granted == 2 then
  return {1, math.ceil((tat + interval - tolerance - horizon) / 1000), learned_milli}
end
redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return granted
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

// The AIMD controller. KEYS: adaptive hash, cooldown.
// ARGV: answered (not 429), 429s, sent, ceiling rps (0: the model has no
// request limit), storm pause ms, header hint rps (0: none), then the
// constants: decrease factor, increase per success, window ms, storm share,
// storm minimum answers, minimum rate, headroom, forget after ms.
// The hash holds `rate` (absent: nothing learned), `decreased` (ms), and the
// outcome counts of the current and the previous one-second window.
// Returns {event, rate in milli-requests per second (0: none), pause ms}
// with event 0 none, 1 decrease, 2 storm (learned and paused), 3 forgotten.
const FEEDBACK: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ok, limited, sent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ceiling, pause_ms, hint = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local beta, step, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local storm_share, storm_min = tonumber(ARGV[10]), tonumber(ARGV[11])
local min_rate, headroom, forget = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local f = redis.call('HMGET', KEYS[1], 'rate', 'decreased', 'win', 'ok', 'lim', 'sent', 'pwin', 'pok', 'plim', 'psent')
local rate = tonumber(f[1])
local decreased = tonumber(f[2] or '0')
local win = tonumber(f[3] or '0')
local cok, clim, csent = tonumber(f[4] or '0'), tonumber(f[5] or '0'), tonumber(f[6] or '0')
local pwin, pok, plim, psent = tonumber(f[7] or '0'), tonumber(f[8] or '0'), tonumber(f[9] or '0'), tonumber(f[10] or '0')
if now - win >= window then
  if now - win < 2 * window then
    pwin, pok, plim, psent = win, cok, clim, csent
  else
    pwin, pok, plim, psent = now, 0, 0, 0
  end
  win, cok, clim, csent = now, 0, 0, 0
end
cok, clim, csent = cok + ok, clim + limited, csent + sent
local answers = cok + clim + pok + plim
local refused = clim + plim
local span = math.max(1000, now - pwin) / 1000
-- Requests sent and not refused, per second: what the provider accepts.
local accepted = math.max(0, csent + psent - refused) / span
local event, paused = 0, 0
if rate and now - decreased >= forget then
  rate = nil; event = 3
end
if limited > 0 and now - decreased >= window then
  if rate then
    -- While the rate binds (requests go out at about that rate), what the
    -- provider did not refuse is what it takes: no more than that. (Random
    -- 429s at a share p cut it to (1 - p) x rate as well.)
    local sent_rate = (csent + psent) / span
    rate = rate * beta
    if sent_rate >= 0.9 * rate / beta and accepted < rate then rate = accepted end
    decreased = now; event = 1
  elseif ceiling > 0 then
    rate = ceiling * beta; decreased = now; event = 1
  elseif answers >= storm_min and refused >= storm_share * answers then
    rate = accepted * beta; decreased = now; event = 2
    if pause_ms > 0 then
      redis.call('SET', KEYS[2], '1', 'PX', pause_ms)
      paused = pause_ms
    end
  end
end
if hint > 0 and (not rate or hint < rate) and (ceiling == 0 or hint < ceiling) then
  rate = hint
  if decreased == 0 then decreased = now end
end
if rate and ok > 0 and event == 0 then
  local grown = rate + step * ok
  if ceiling == 0 then
    local cap = math.max(rate, headroom * accepted)
    if grown > cap then grown = cap end
  end
  rate = grown
end
if rate then
  if rate < min_rate then rate = min_rate end
  if ceiling > 0 and rate >= ceiling then rate = nil end
end
if rate then
  redis.call('HSET', KEYS[1], 'rate', string.format('%.4f', rate), 'decreased', decreased)
else
  redis.call('HDEL', KEYS[1], 'rate')
end
redis.call('HSET', KEYS[1], 'win', win, 'ok', cok, 'lim', clim, 'sent', csent, 'pwin', pwin, 'pok', pok, 'plim', plim, 'psent', psent)
redis.call('PEXPIRE', KEYS[1], forget + 60000)
return {event, rate and math.floor(rate * 1000) or 0, paused}
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

    fn from_script(code: i64) -> Self {
        match code {
            1 => WaitReason::CoolDown,
            2 => WaitReason::Requests,
            3 => WaitReason::Tokens,
            _ => WaitReason::Concurrency,
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

impl Permit {
    fn free(waited: Duration) -> Self {
        Self {
            lease: None,
            reserved_tokens: 0,
            waited,
        }
    }
}

/// The model is paused after a storm of 429s and the caller would rather not wait.
#[derive(Debug, Clone, Copy)]
pub struct CoolingDown(pub Duration);

/// What the controller did with a report of 429s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    /// The learned rate now, in requests per second (None: nothing learned).
    pub learned: Option<f64>,
    /// The model was paused for this long (a storm).
    pub paused: Option<Duration>,
}

type Reply = Result<Result<Permit, CoolingDown>, redis::RedisError>;

/// What a caller does next, as decided under the lock.
enum Next {
    /// Go now: nothing paces the model.
    Go,
    /// Paused, and the caller would rather not wait.
    Avoid(Duration),
    /// Paused: look again after this long.
    Sleep(Duration),
    /// Wait in the queue (and start its driver if none runs).
    Queue(oneshot::Receiver<Reply>, bool),
}

/// A call waiting in this process for a paced model.
struct Waiter {
    tokens: u32,
    avoid_cool_down: bool,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// Outcomes not yet reported to the controller.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    ok: u64,
    limited: u64,
    sent: u64,
    /// The lowest rate announced by rate-limit headers meanwhile.
    hint: Option<f64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.ok == 0 && self.limited == 0 && self.sent == 0 && self.hint.is_none()
    }
}

/// What this process knows of one model.
#[derive(Default)]
struct Local {
    /// The learned rate as last read from Redis; None: nothing learned.
    learned: Option<f64>,
    /// Whether `learned` has been read at all since this process started.
    known: bool,
    /// A storm's pause, as announced.
    paused_until: Option<Instant>,
    pending: Pending,
    /// The registry's request rate (0: none), for the reports.
    ceiling: f64,
    waiters: VecDeque<Waiter>,
    /// Whether a driver task serves `waiters`.
    driving: bool,
}

impl Local {
    fn paused_for(&self) -> Option<Duration> {
        self.paused_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|remaining| !remaining.is_zero())
    }

    /// Whether answered calls change anything in Redis: they grow a learned
    /// rate, and count towards a storm for a model without a request limit.
    /// A model paced by its registry limit alone, with nothing learned,
    /// sends no reports while it gets no 429: waiting calls then cost one
    /// script call per granted batch and nothing more.
    fn wants_answers(&self) -> bool {
        self.learned.is_some() || self.ceiling == 0.0
    }

    fn pause(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        self.paused_until = Some(self.paused_until.map_or(until, |known| known.max(until)));
    }
}

struct Inner {
    redis: Pool,
    prefix: String,
    acquire: Script,
    reserve: Script,
    release: Script,
    feedback: Script,
    models: Mutex<HashMap<String, Local>>,
    reporter_started: AtomicBool,
}

#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Limiter")
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

struct Keys {
    cooldown: String,
    requests: String,
    tokens: String,
    leases: String,
    adaptive: String,
}

/// What a driver got from Redis for its waiters.
enum Grant {
    /// A storm's pause.
    Paused(Duration),
    /// Nothing yet: look again after this long.
    Wait(Duration, WaitReason),
    /// Start times, as offsets from now.
    Slots(Vec<Duration>),
    /// A permit for the head waiter.
    One(Permit),
    /// Nothing paces the model any more.
    Unpaced,
}

fn ceiling_of(model: &Model) -> f64 {
    model
        .limits
        .requests_per_minute
        .map_or(0.0, |rpm| f64::from(rpm) / 60.0)
}

fn jitter(spread: Duration) -> Duration {
    spread.mul_f64(rand::rng().random_range(0.0..1.0))
}

impl Limiter {
    pub fn new(redis: Pool, prefix: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                prefix: prefix.to_owned(),
                acquire: Script::new(ACQUIRE),
                reserve: Script::new(RESERVE),
                release: Script::new(RELEASE),
                feedback: Script::new(FEEDBACK),
                models: Mutex::default(),
                reporter_started: AtomicBool::new(false),
            }),
        }
    }

    /// Where pauses are announced.
    fn cool_down_channel(&self) -> String {
        format!("{}:limits:cool-downs", self.inner.prefix)
    }

    fn with_local<T>(&self, model: &str, f: impl FnOnce(&mut Local) -> T) -> T {
        let mut models = self.inner.models.lock().expect("limiter lock");
        if !models.contains_key(model) {
            models.insert(model.to_owned(), Local::default());
        }
        f(models.get_mut(model).expect("inserted above"))
    }

    /// Notes the learned rate a limit script saw (milli-requests per second,
    /// 0: none), so that this process reports its successes while another
    /// one's 429s have a rate to grow back.
    fn note_learned(&self, model: &str, milli: Option<i64>) {
        if let Some(milli) = milli {
            self.with_local(model, |local| {
                local.learned = (milli > 0).then(|| milli as f64 / 1000.0);
            });
        }
    }

    /// Notes that `model` pauses for `duration` from now.
    fn pause_locally(&self, model: &str, duration: Duration) {
        self.with_local(model, |local| local.pause(duration));
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

    fn keys(&self, model: &str) -> Keys {
        // Every key under the deployment's prefix; the model is the hash tag.
        let tag = format!("{}:limits:{{{model}}}", self.inner.prefix);
        Keys {
            cooldown: format!("{tag}:cooldown"),
            requests: format!("{tag}:requests"),
            tokens: format!("{tag}:tokens"),
            leases: format!("{tag}:leases"),
            adaptive: format!("{tag}:adaptive"),
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
    /// a storm's pause (the caller has a fallback). Redis errors are
    /// returned: a limit that cannot be checked is not ignored.
    pub async fn acquire(
        &self,
        model: &Model,
        tokens: u32,
        avoid_cool_down: bool,
    ) -> Result<Result<Permit, CoolingDown>, redis::RedisError> {
        self.start_reporter();
        let known = self.with_local(&model.name, |local| {
            local.ceiling = ceiling_of(model);
            std::mem::replace(&mut local.known, true)
        });
        if !known {
            // The first call of this process reads what the others learned
            // (the calls that come meanwhile go by what is known here).
            if let Err(error) = self.report(&model.name, Duration::ZERO).await {
                self.with_local(&model.name, |local| local.known = false);
                return Err(error);
            }
        }
        let started = Instant::now();
        loop {
            // Decided under the lock, acted on after it (no lock across an await).
            let next = self.with_local(&model.name, |local| {
                if model.limits.is_unlimited() && local.learned.is_none() {
                    return match local.paused_for() {
                        None => Next::Go,
                        Some(remaining) if avoid_cool_down => Next::Avoid(remaining),
                        Some(remaining) => Next::Sleep(remaining),
                    };
                }
                let (sender, receiver) = oneshot::channel();
                let tokens = model
                    .limits
                    .tokens_per_minute
                    .map_or(0, |tpm| tokens.min(tpm));
                local.waiters.push_back(Waiter {
                    tokens,
                    avoid_cool_down,
                    enqueued: Instant::now(),
                    reply: sender,
                });
                let start_driver = !local.driving;
                local.driving = true;
                Next::Queue(receiver, start_driver)
            });
            match next {
                Next::Go => {
                    let waited = started.elapsed();
                    if waited >= Duration::from_millis(1) {
                        histogram!("assay_llm_rate_limit_wait_seconds", "model" => model.name.clone(), "reason" => WaitReason::CoolDown.label())
                            .record(waited.as_secs_f64());
                    }
                    return Ok(Ok(Permit::free(waited)));
                }
                Next::Avoid(remaining) => return Ok(Err(CoolingDown(remaining))),
                Next::Sleep(remaining) => {
                    // Callers restart together (within 50 ms), as after a shared pause.
                    tokio::time::sleep(remaining + jitter(Duration::from_millis(50))).await;
                }
                Next::Queue(receiver, start_driver) => {
                    if start_driver {
                        tokio::spawn(self.clone().drive(Arc::new(model.clone())));
                    }
                    return match receiver.await {
                        Ok(reply) => reply,
                        // The driver answers every waiter; a dropped sender
                        // means the runtime is shutting down.
                        Err(_) => Err(redis::RedisError::from(std::io::Error::other(
                            "the limiter stopped",
                        ))),
                    };
                }
            }
        }
    }

    /// Serves the waiters of `model` in this process, in order, until none
    /// is left: the only task here that asks Redis for its capacity.
    async fn drive(self, model: Arc<Model>) {
        let keys = self.keys(&model.name);
        let batched =
            model.limits.tokens_per_minute.is_none() && model.limits.concurrency.is_none();
        let mut reason = WaitReason::Requests;
        loop {
            let head = self.with_local(&model.name, |local| {
                // Waiters that gave up are skipped here, not served.
                while local
                    .waiters
                    .front()
                    .is_some_and(|waiter| waiter.reply.is_closed())
                {
                    local.waiters.pop_front();
                }
                match local.waiters.front() {
                    None => {
                        local.driving = false;
                        None
                    }
                    Some(waiter) => Some((local.waiters.len().min(MAX_BATCH), waiter.tokens)),
                }
            });
            let Some((count, tokens)) = head else { return };
            let grant = if batched {
                self.reserve_batch(&model, &keys, count).await
            } else {
                self.acquire_one(&model, &keys, tokens).await
            };
            match grant {
                Err(error) => {
                    // Every waiter hears of it; each call decides how long to
                    // wait for the store (see `call`).
                    self.with_local(&model.name, |local| {
                        for waiter in local.waiters.drain(..) {
                            let copy =
                                redis::RedisError::from(std::io::Error::other(error.to_string()));
                            let _ = waiter.reply.send(Err(copy));
                        }
                    });
                }
                Ok(Grant::Paused(pause)) => {
                    reason = WaitReason::CoolDown;
                    self.with_local(&model.name, |local| {
                        local.pause(pause);
                        let (avoiding, staying) = local
                            .waiters
                            .drain(..)
                            .partition::<VecDeque<_>, _>(|waiter| waiter.avoid_cool_down);
                        local.waiters = staying;
                        for waiter in avoiding {
                            let _ = waiter.reply.send(Ok(Err(CoolingDown(pause))));
                        }
                    });
                    tokio::time::sleep(pause + jitter(Duration::from_millis(50))).await;
                }
                Ok(Grant::Wait(wait, why)) => {
                    reason = why;
                    tokio::time::sleep(wait).await;
                }
                Ok(Grant::Unpaced) => {
                    self.with_local(&model.name, |local| {
                        local.learned = None;
                        for waiter in local.waiters.drain(..) {
                            let _ = waiter
                                .reply
                                .send(Ok(Ok(Permit::free(waiter.enqueued.elapsed()))));
                        }
                    });
                }
                Ok(Grant::One(permit)) => self.hand_out(&model, permit, reason),
                Ok(Grant::Slots(offsets)) => {
                    let base = tokio::time::Instant::now();
                    for offset in offsets {
                        tokio::time::sleep_until(base + offset).await;
                        self.hand_out(&model, Permit::free(Duration::ZERO), reason);
                    }
                }
            }
        }
    }

    /// Gives `permit` to the first waiter still there; a permit nobody takes
    /// gives its lease back.
    fn hand_out(&self, model: &Model, mut permit: Permit, reason: WaitReason) {
        loop {
            let Some(waiter) = self.with_local(&model.name, |local| local.waiters.pop_front())
            else {
                if permit.lease.is_some() || permit.reserved_tokens > 0 {
                    let (limiter, model) = (self.clone(), model.clone());
                    tokio::spawn(async move {
                        let _ = limiter.release(&model, permit, 0).await;
                    });
                }
                return;
            };
            permit.waited = waiter.enqueued.elapsed();
            let waited = permit.waited;
            match waiter.reply.send(Ok(Ok(permit))) {
                Ok(()) => {
                    if waited >= Duration::from_millis(1) {
                        histogram!("assay_llm_rate_limit_wait_seconds", "model" => model.name.clone(), "reason" => reason.label())
                            .record(waited.as_secs_f64());
                    }
                    return;
                }
                Err(bounced) => match bounced {
                    Ok(Ok(bounced)) => permit = bounced,
                    _ => return,
                },
            }
        }
    }

    /// Start times for up to `wanted` waiters of a model paced by requests only.
    async fn reserve_batch(
        &self,
        model: &Model,
        keys: &Keys,
        wanted: usize,
    ) -> Result<Grant, redis::RedisError> {
        let interval_us = model
            .limits
            .requests_per_minute
            .map_or(0, |rpm| 60_000_000 / u64::from(rpm).max(1));
        let mut conn = self.inner.redis.get().await.map_err(pool_error)?;
        let reply: Vec<i64> = self
            .inner
            .reserve
            .key(&keys.cooldown)
            .key(&keys.requests)
            .key(&keys.adaptive)
            .arg(interval_us)
            .arg(model.limits.burst.max(1))
            .arg(wanted)
            .arg(RESERVE_HORIZON.as_micros() as u64)
            .invoke_async(&mut *conn)
            .await?;
        let millis =
            |value: Option<&i64>| Duration::from_millis(value.copied().unwrap_or(1).max(1) as u64);
        Ok(match reply.first() {
            Some(0) => Grant::Paused(millis(reply.get(1))),
            Some(1) => {
                self.note_learned(&model.name, reply.get(2).copied());
                Grant::Wait(millis(reply.get(1)), WaitReason::Requests)
            }
            Some(3) => Grant::Unpaced,
            _ => {
                self.note_learned(&model.name, reply.get(1).copied());
                Grant::Slots(
                    reply
                        .get(2..)
                        .unwrap_or_default()
                        .iter()
                        .map(|offset| Duration::from_millis((*offset).max(0) as u64))
                        .collect(),
                )
            }
        })
    }

    /// A permit for one call reserving `tokens`, or how long to wait.
    async fn acquire_one(
        &self,
        model: &Model,
        keys: &Keys,
        tokens: u32,
    ) -> Result<Grant, redis::RedisError> {
        let limits = model.limits;
        let request_interval_us = limits
            .requests_per_minute
            .map_or(0, |rpm| 60_000_000 / u64::from(rpm).max(1));
        let lease_ms = (model.timeout + LEASE_MARGIN).as_millis() as u64;
        let lease = limits.concurrency.map(|_| uuid::Uuid::new_v4().to_string());
        let mut conn = self.inner.redis.get().await.map_err(pool_error)?;
        let reply: Vec<i64> = self
            .inner
            .acquire
            .key(&keys.cooldown)
            .key(&keys.requests)
            .key(&keys.tokens)
            .key(&keys.leases)
            .key(&keys.adaptive)
            .arg(request_interval_us)
            .arg(limits.burst.max(1))
            .arg(Self::token_interval_us(model))
            .arg(tokens)
            .arg(limits.concurrency.unwrap_or(0))
            .arg(lease_ms)
            .arg(lease.as_deref().unwrap_or(""))
            .arg(CONCURRENCY_POLL.as_millis() as u64)
            .invoke_async(&mut *conn)
            .await?;
        let field = |index: usize| reply.get(index).copied().unwrap_or(0);
        let (granted, wait_ms, reason) = (field(0), field(1), field(2));
        if reason != 1 {
            self.note_learned(&model.name, Some(field(3)));
        }
        if granted == 1 {
            return Ok(Grant::One(Permit {
                lease,
                reserved_tokens: tokens,
                waited: Duration::ZERO,
            }));
        }
        let wait = Duration::from_millis(wait_ms.max(1) as u64);
        Ok(match WaitReason::from_script(reason) {
            WaitReason::CoolDown => Grant::Paused(wait),
            reason => Grant::Wait(wait, reason),
        })
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
        let mut conn = self.inner.redis.get().await.map_err(pool_error)?;
        let _: i64 = self
            .inner
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

    /// Counts a request sent to `model` (reported with the next batch).
    pub fn sent(&self, model: &Model) {
        self.with_local(&model.name, |local| local.pending.sent += 1);
    }

    /// Counts an answer that was not a 429; `hint` is the rate (requests per
    /// second) the provider's rate-limit headers leave, when they say the
    /// budget is nearly spent.
    pub fn answered(&self, model: &Model, hint: Option<f64>) {
        self.with_local(&model.name, |local| {
            local.pending.ok += 1;
            if let Some(hint) = hint {
                local.pending.hint = Some(local.pending.hint.map_or(hint, |known| known.min(hint)));
            }
        });
    }

    /// Reports a 429 at once (with whatever else is pending): the
    /// controller may lower the rate, or pause the model in a storm for
    /// `retry_after`.
    pub async fn rate_limited(
        &self,
        model: &Model,
        retry_after: Duration,
    ) -> Result<Feedback, redis::RedisError> {
        self.with_local(&model.name, |local| {
            local.ceiling = ceiling_of(model);
            local.pending.limited += 1;
        });
        self.report(&model.name, retry_after.min(MAX_STORM_PAUSE))
            .await
    }

    /// Reports what is pending for `model` now and returns the learned rate
    /// (requests per second; None: nothing learned).
    pub async fn learned_rate(&self, model: &Model) -> Result<Option<f64>, redis::RedisError> {
        self.with_local(&model.name, |local| local.ceiling = ceiling_of(model));
        Ok(self.report(&model.name, Duration::ZERO).await?.learned)
    }

    /// Sends `model`'s pending outcomes to the controller and takes in what
    /// it learned. Counts that cannot be sent are dropped: the controller
    /// works on shares and rates, not on exact totals.
    async fn report(
        &self,
        model: &str,
        storm_pause: Duration,
    ) -> Result<Feedback, redis::RedisError> {
        let (pending, ceiling) = self.with_local(model, |local| {
            (std::mem::take(&mut local.pending), local.ceiling)
        });
        let keys = self.keys(model);
        let mut conn = self.inner.redis.get().await.map_err(pool_error)?;
        let (event, rate_milli, paused_ms): (i64, i64, i64) = self
            .inner
            .feedback
            .key(&keys.adaptive)
            .key(&keys.cooldown)
            .arg(pending.ok)
            .arg(pending.limited)
            .arg(pending.sent)
            .arg(ceiling)
            .arg(storm_pause.as_millis() as u64)
            .arg(pending.hint.unwrap_or(0.0))
            .arg(DECREASE_FACTOR)
            .arg(INCREASE_PER_SUCCESS)
            .arg(DECREASE_WINDOW.as_millis() as u64)
            .arg(STORM_SHARE)
            .arg(STORM_MIN_ANSWERS)
            .arg(MIN_RATE)
            .arg(HEADROOM)
            .arg(FORGET_AFTER.as_millis() as u64)
            .invoke_async(&mut *conn)
            .await?;
        let learned = (rate_milli > 0).then(|| rate_milli as f64 / 1000.0);
        let paused = (paused_ms > 0).then(|| Duration::from_millis(paused_ms as u64));
        self.with_local(model, |local| {
            local.learned = learned;
            local.known = true;
            if let Some(paused) = paused {
                local.pause(paused);
            }
        });
        gauge!("assay_provider_learned_rate", "model" => model.to_owned())
            .set(learned.unwrap_or(ceiling));
        match event {
            1 => {
                counter!("assay_llm_rate_decreases_total", "model" => model.to_owned())
                    .increment(1);
                tracing::debug!(model, rate = learned, "429: learned rate lowered");
            }
            2 => {
                counter!("assay_llm_rate_decreases_total", "model" => model.to_owned())
                    .increment(1);
                counter!("assay_llm_cool_downs_total", "model" => model.to_owned()).increment(1);
                tracing::info!(
                    model,
                    rate = learned,
                    pause_ms = paused_ms,
                    "429 storm: model paused, pacing at the accepted rate"
                );
                if let Some(paused) = paused {
                    let _: i64 = redis::cmd("PUBLISH")
                        .arg(self.cool_down_channel())
                        .arg(format!("{} {model}", paused.as_millis()))
                        .query_async(&mut *conn)
                        .await?;
                }
            }
            3 => tracing::info!(model, "learned rate forgotten: no 429 for a while"),
            _ => {}
        }
        Ok(Feedback { learned, paused })
    }

    /// Starts the task that reports outcomes every [`FEEDBACK_INTERVAL`]
    /// (once per limiter; it ends with the limiter).
    fn start_reporter(&self) {
        if self.inner.reporter_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FEEDBACK_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let limiter = Limiter { inner };
                let due: Vec<String> = {
                    let mut models = limiter.inner.models.lock().expect("limiter lock");
                    models
                        .iter_mut()
                        .filter_map(|(name, local)| {
                            if !local.wants_answers() {
                                // Counts nobody reads; a 429 starts from a clean window.
                                local.pending.ok = 0;
                                local.pending.sent = 0;
                            }
                            (!local.pending.is_empty()).then(|| name.clone())
                        })
                        .collect()
                };
                for model in due {
                    if let Err(error) = limiter.report(&model, Duration::ZERO).await {
                        tracing::debug!(model, error = %error, "could not report call outcomes");
                    }
                }
            }
        });
    }
}

pub(crate) fn pool_error(error: deadpool_redis::PoolError) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(format!("redis pool: {error}")))
}
