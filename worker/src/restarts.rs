//! The queue consumers' restart budget.
//!
//! A consumer stops on a Redis error and is restarted. A consumer is given
//! up (and once all are, the process exits non-zero, so its supervisor
//! starts a fresh one) only after `max` restarts of it in a row with no
//! healthy period between them: Redis answering and no restart of it for
//! [`HEALTHY_FOR`]. Counted per consumer: one flush stops every consumer at
//! once, which is one incident for each, not six in a row. A flushed or restarted
//! Redis costs a few restarts each time, however often it happens; a Redis
//! gone for good, or a consumer that fails as soon as it starts, still ends
//! the process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::counter;

/// How long the consumers must run, with Redis answering, for the count of
/// restarts in a row to start again.
pub const HEALTHY_FOR: Duration = Duration::from_secs(2);

pub struct RestartBudget {
    max: usize,
    started: Instant,
    /// When Redis last answered, in milliseconds after `started`, plus one (0: never).
    redis_answered: AtomicU64,
    counted: Mutex<HashMap<String, Counted>>,
}

#[derive(Default)]
struct Counted {
    in_a_row: usize,
    total: usize,
    last: Option<Instant>,
}

/// One restart, as the budget counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub allowed: bool,
    pub in_a_row: usize,
    pub total: usize,
}

impl RestartBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            started: Instant::now(),
            redis_answered: AtomicU64::new(0),
            counted: Mutex::new(HashMap::new()),
        }
    }

    pub fn redis_answered(&self) {
        self.redis_answered_at(Instant::now());
    }

    fn redis_answered_at(&self, at: Instant) {
        let millis = at.saturating_duration_since(self.started).as_millis() as u64 + 1;
        self.redis_answered.fetch_max(millis, Ordering::Relaxed);
    }

    /// Counts a restart of `consumer` and says whether it may happen.
    pub fn restart(&self, consumer: &str) -> Restart {
        self.restart_at(consumer, Instant::now())
    }

    fn restart_at(&self, consumer: &str, now: Instant) -> Restart {
        let answered = match self.redis_answered.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(self.started + Duration::from_millis(millis - 1)),
        };
        let mut consumers = self
            .counted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let counted = consumers.entry(consumer.to_owned()).or_default();
        let healthy_since_last = counted.last.is_some_and(|last| {
            now.saturating_duration_since(last) >= HEALTHY_FOR
                && answered.is_some_and(|answered| answered > last)
        });
        if healthy_since_last {
            counted.in_a_row = 0;
        }
        counted.in_a_row += 1;
        counted.total += 1;
        counted.last = Some(now);
        counter!("assay_worker_consumer_restarts_total").increment(1);
        Restart {
            allowed: counted.in_a_row <= self.max,
            in_a_row: counted.in_a_row,
            total: counted.total,
        }
    }

    /// Restarts of every consumer so far.
    pub fn total(&self) -> usize {
        self.counted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .map(|counted| counted.total)
            .sum()
    }

    /// Pings Redis every `every`, recording each answer, for ever.
    pub async fn watch_redis(
        self: std::sync::Arc<Self>,
        redis: deadpool_redis::Pool,
        every: Duration,
    ) {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let answered = async {
                let mut conn = redis.get().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            }
            .await;
            if answered.is_some() {
                self.redis_answered();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_without_a_healthy_redis_between_them_run_out() {
        let budget = RestartBudget::new(3);
        let start = budget.started;
        let outcomes: Vec<bool> = (0..5)
            .map(|n| {
                budget
                    .restart_at("chunks", start + Duration::from_secs(10 * n))
                    .allowed
            })
            .collect();
        assert_eq!(outcomes, [true, true, true, false, false]);
    }

    #[test]
    fn a_healthy_period_between_restarts_starts_the_count_again() {
        let budget = RestartBudget::new(3);
        let start = budget.started;
        for flush in 0..20u64 {
            let at = start + Duration::from_secs(15 * flush);
            // Each flush stops six consumers at once, more than `max`.
            for consumer in 0..6 {
                let restart = budget.restart_at(
                    &format!("q{consumer}"),
                    at + Duration::from_millis(consumer),
                );
                assert!(restart.allowed, "flush {flush}: {restart:?}");
            }
            budget.redis_answered_at(at + Duration::from_secs(1));
        }
        assert_eq!(budget.total(), 120);
    }

    #[test]
    fn redis_answering_is_not_enough_when_consumers_fail_at_once() {
        let budget = RestartBudget::new(3);
        let start = budget.started;
        let mut allowed = Vec::new();
        for n in 0..5u64 {
            let at = start + Duration::from_millis(500 * n);
            budget.redis_answered_at(at + Duration::from_millis(100));
            allowed.push(budget.restart_at("chunks", at).allowed);
        }
        assert_eq!(allowed, [true, true, true, false, false]);
    }
}
