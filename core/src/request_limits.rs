//! Limits on what one API key and one tenant may ask of the API: request
//! rates per key (GCRA, shared by every API replica through one Redis Lua
//! script) and per-tenant quotas on evaluations.
//!
//! Rules that hold here:
//! - the rate check is one atomic script on Redis' own clock, so replicas
//!   with skewed clocks still share one budget per key;
//! - over any window of `w` seconds a key gets at most
//!   `burst + per_minute × w / 60` requests of a class accepted;
//! - a tenant's overrides (`tenant_limits`) replace the defaults field by field.

use std::time::Duration;

use deadpool_redis::Pool;
use redis::Script;
use uuid::Uuid;

use crate::db::models::tenant_limits::TenantLimits;

/// Reads (GET, HEAD) and writes (everything else) have separate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    Read,
    Write,
}

impl RequestClass {
    pub fn of_method(method: &str) -> Self {
        match method {
            "GET" | "HEAD" | "OPTIONS" => RequestClass::Read,
            _ => RequestClass::Write,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RequestClass::Read => "read",
            RequestClass::Write => "write",
        }
    }
}

/// A sustained rate and how many requests may come at once on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    /// Requests a key with no recent traffic may send at once (GCRA's capacity).
    pub burst: u32,
}

impl Rate {
    /// Microseconds between two requests at the sustained rate (GCRA's emission interval).
    fn interval_us(self) -> u64 {
        60_000_000 / u64::from(self.per_minute.max(1))
    }
}

/// Default reads per minute per key: a client polling a few evaluations
/// every second stays well under it.
pub const DEFAULT_READS_PER_MINUTE: u32 = 1200;
pub const DEFAULT_READ_BURST: u32 = 200;
/// Default writes per minute per key (the seed services used 60).
pub const DEFAULT_WRITES_PER_MINUTE: u32 = 120;
pub const DEFAULT_WRITE_BURST: u32 = 60;
/// Default most runs (items × models × repeats) in one evaluation.
pub const DEFAULT_MAX_RUNS_PER_EVALUATION: i64 = 1_000_000;
/// Default most evaluations of one tenant queued or running at once.
pub const DEFAULT_MAX_ACTIVE_EVALUATIONS: i64 = 100;

/// The deployment's defaults, before a tenant's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub reads: Rate,
    pub writes: Rate,
    pub max_runs_per_evaluation: i64,
    pub max_active_evaluations: i64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            reads: Rate {
                per_minute: DEFAULT_READS_PER_MINUTE,
                burst: DEFAULT_READ_BURST,
            },
            writes: Rate {
                per_minute: DEFAULT_WRITES_PER_MINUTE,
                burst: DEFAULT_WRITE_BURST,
            },
            max_runs_per_evaluation: DEFAULT_MAX_RUNS_PER_EVALUATION,
            max_active_evaluations: DEFAULT_MAX_ACTIVE_EVALUATIONS,
        }
    }
}

impl RequestLimits {
    /// `ASSAY_RATE_READS_PER_MINUTE`, `ASSAY_RATE_READ_BURST`,
    /// `ASSAY_RATE_WRITES_PER_MINUTE`, `ASSAY_RATE_WRITE_BURST`,
    /// `ASSAY_MAX_RUNS_PER_EVALUATION`, `ASSAY_MAX_ACTIVE_EVALUATIONS`;
    /// a value that is not a positive number is an error naming it.
    pub fn from_env() -> Result<Self, crate::config::BadSetting> {
        fn positive<T: std::str::FromStr + PartialOrd + Default>(
            name: &str,
            default: T,
        ) -> Result<T, crate::config::BadSetting> {
            crate::config::parse_var(name, default, "a positive number", |value| {
                *value > T::default()
            })
        }
        let defaults = Self::default();
        Ok(Self {
            reads: Rate {
                per_minute: positive("ASSAY_RATE_READS_PER_MINUTE", defaults.reads.per_minute)?,
                burst: positive("ASSAY_RATE_READ_BURST", defaults.reads.burst)?,
            },
            writes: Rate {
                per_minute: positive("ASSAY_RATE_WRITES_PER_MINUTE", defaults.writes.per_minute)?,
                burst: positive("ASSAY_RATE_WRITE_BURST", defaults.writes.burst)?,
            },
            max_runs_per_evaluation: positive(
                "ASSAY_MAX_RUNS_PER_EVALUATION",
                defaults.max_runs_per_evaluation,
            )?,
            max_active_evaluations: positive(
                "ASSAY_MAX_ACTIVE_EVALUATIONS",
                defaults.max_active_evaluations,
            )?,
        })
    }

    /// The limits of a tenant: its overrides where it has them.
    pub fn for_tenant(&self, overrides: Option<&TenantLimits>) -> Self {
        let Some(overrides) = overrides else {
            return *self;
        };
        let pick = |value: Option<i32>, default: u32| {
            value
                .and_then(|value| u32::try_from(value).ok())
                .filter(|value| *value > 0)
                .unwrap_or(default)
        };
        Self {
            reads: Rate {
                per_minute: pick(overrides.reads_per_minute, self.reads.per_minute),
                burst: pick(overrides.read_burst, self.reads.burst),
            },
            writes: Rate {
                per_minute: pick(overrides.writes_per_minute, self.writes.per_minute),
                burst: pick(overrides.write_burst, self.writes.burst),
            },
            max_runs_per_evaluation: overrides
                .max_runs_per_evaluation
                .map_or(self.max_runs_per_evaluation, i64::from),
            max_active_evaluations: overrides
                .max_active_evaluations
                .map_or(self.max_active_evaluations, i64::from),
        }
    }

    pub fn rate(&self, class: RequestClass) -> Rate {
        match class {
            RequestClass::Read => self.reads,
            RequestClass::Write => self.writes,
        }
    }
}

/// GCRA (the generic cell rate algorithm) on one key holding its
/// theoretical arrival time (TAT) in microseconds of Redis' clock.
/// A request is allowed when `now >= TAT + interval - burst × interval`;
/// allowing it moves the TAT one interval on. Returns
/// {allowed, remaining, retry_after_us, reset_us}: what may still be sent at
/// once, when a refused request may be retried, and when the key is back to
/// its full burst.
const GCRA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"#;

/// One rate check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that may still be sent at once.
    pub remaining: u32,
    /// When a refused request may be retried.
    pub retry_after: Duration,
    /// When the key is back to its full burst.
    pub reset_after: Duration,
}

/// The shared per-key limiter.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Pool,
    prefix: String,
    script: Script,
}

impl RateLimiter {
    pub fn new(redis: Pool, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            script: Script::new(GCRA),
        }
    }

    /// Counts one request of `class` by `key_id` against `rate`.
    pub async fn check(
        &self,
        key_id: Uuid,
        class: RequestClass,
        rate: Rate,
    ) -> anyhow::Result<Decision> {
        let mut conn = self.redis.get().await?;
        let (allowed, remaining, retry_after_us, reset_us): (i64, i64, i64, i64) = self
            .script
            .key(format!(
                "{}:ratelimit:{}:{}",
                self.prefix,
                key_id,
                class.label()
            ))
            .arg(rate.interval_us())
            .arg(rate.burst.max(1))
            .invoke_async(&mut *conn)
            .await?;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_after_us),
            reset_after: micros(reset_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_defaults_field_by_field() {
        let defaults = RequestLimits::default();
        let overrides = TenantLimits {
            writes_per_minute: Some(600),
            max_active_evaluations: Some(3),
            ..TenantLimits::default()
        };
        let limits = defaults.for_tenant(Some(&overrides));
        assert_eq!(limits.writes.per_minute, 600);
        assert_eq!(limits.writes.burst, DEFAULT_WRITE_BURST);
        assert_eq!(limits.reads, defaults.reads);
        assert_eq!(limits.max_active_evaluations, 3);
        assert_eq!(
            limits.max_runs_per_evaluation,
            DEFAULT_MAX_RUNS_PER_EVALUATION
        );
        assert_eq!(defaults.for_tenant(None), defaults);
    }

    #[test]
    fn classes_follow_methods() {
        assert_eq!(RequestClass::of_method("GET"), RequestClass::Read);
        assert_eq!(RequestClass::of_method("POST"), RequestClass::Write);
        assert_eq!(RequestClass::of_method("DELETE"), RequestClass::Write);
        assert_eq!(
            Rate {
                per_minute: 120,
                burst: 1
            }
            .interval_us(),
            500_000
        );
    }
}
