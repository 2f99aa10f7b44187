//! [`LlmClient`]: every model call of a worker goes through here, for
//! generation and for judges alike.
//!
//! For each model of the chain (the model, then its fallbacks):
//! 1. the response cache, when the parameters are deterministic;
//! 2. the circuit breaker: an open circuit skips to the next model;
//! 3. shared capacity (requests, tokens, concurrency, the learned rate, a
//!    storm's pause) from Redis ([`super::limits`]);
//! 4. the call, with retries. A 429 is reported to the shared rate
//!    controller and waits its `Retry-After` without holding the caller's
//!    slot ([`Slot`]); 429s are retried until they have waited the model's
//!    `max_retry_wait` in all. Other transient failures (408, 5xx,
//!    timeouts, connection errors) are retried up to `max_attempts` tries,
//!    with exponential backoff and full jitter or the provider's
//!    `Retry-After`;
//! 5. when its budget is spent, it reports context too long, or it is
//!    paused, the next model answers.
//!
//! Only the attempt that answered is billed; attempts that timed out (the
//! provider may have processed them) are counted in
//! `assay_llm_unknown_outcomes_total`. The report says how many requests
//! went upstream and which model answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use rand::Rng;

use super::breaker::{Breakers, Verdict};
use super::cache::{self, ResponseCache};
use super::limits::{CoolingDown, Limiter};
use super::{Completion, CompletionRequest, Model, ModelCatalog, ProviderError, tokens};
use crate::domain::{ChatMessage, ModelParams};

/// The longest backoff between two attempts without a `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// The first backoff's ceiling; it doubles with each attempt.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The wait after a 429 that names no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a call waits for an unreachable limit store before it fails.
const STORE_OUTAGE_BUDGET: Duration = Duration::from_secs(60);
/// How often it looks again meanwhile.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The caller's hold on its own capacity (a worker's call slot). A call
/// waiting before a retry (a 429's `Retry-After`, a backoff) gives it up, so
/// that other items use it meanwhile, and takes one again, in turn, before
/// its next attempt.
#[async_trait::async_trait]
pub trait Slot: Send + Sync {
    fn release(&self);
    async fn reacquire(&self);
}

/// How a call is made.
#[derive(Clone, Copy)]
pub struct CallOptions<'a> {
    /// `generate` or `judge`, for metrics.
    pub purpose: &'static str,
    /// Which run of a repeated item (part of the cache key).
    pub repeat: u32,
    /// The evaluation allows the response cache.
    pub use_cache: bool,
    /// The slot the caller holds, if it can give it up while waiting.
    pub slot: Option<&'a dyn Slot>,
}

impl std::fmt::Debug for CallOptions<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CallOptions")
            .field("purpose", &self.purpose)
            .field("repeat", &self.repeat)
            .field("use_cache", &self.use_cache)
            .field("slot", &self.slot.is_some())
            .finish()
    }
}

/// What a call came to.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub outcome: Result<Completion, ProviderError>,
    /// The model that answered (a fallback, perhaps).
    pub answered_by: Option<String>,
    /// Requests sent upstream, over every model tried.
    pub attempts: u32,
    /// Duration of the attempt that answered.
    pub latency: Option<Duration>,
    /// What the answer cost: 0 when it came from the cache.
    pub cost_usd: f64,
    pub cached: bool,
}

#[derive(Debug)]
pub struct LlmClient {
    pub catalog: ModelCatalog,
    limiter: Option<Limiter>,
    cache: Option<ResponseCache>,
    breakers: Breakers,
}

impl LlmClient {
    /// Without Redis (`None`s), limits are not enforced and nothing is cached.
    pub fn new(
        catalog: ModelCatalog,
        limiter: Option<Limiter>,
        cache: Option<ResponseCache>,
    ) -> Self {
        Self {
            catalog,
            limiter,
            cache,
            breakers: Breakers::default(),
        }
    }

    pub async fn complete(
        &self,
        model: &Arc<Model>,
        messages: &[ChatMessage],
        params: &ModelParams,
        options: CallOptions<'_>,
    ) -> CallReport {
        let chain = self.catalog.chain(model);
        let cacheable = options.use_cache && cache::is_deterministic(params);
        let mut attempts = 0;
        let mut last_error = ProviderError::CircuitOpen;
        for (position, model) in chain.iter().enumerate() {
            if position > 0 {
                counter!("assay_llm_fallbacks_total", "from" => chain[position - 1].name.clone(), "to" => model.name.clone(), "reason" => last_error.outcome())
                    .increment(1);
                tracing::debug!(from = %chain[position - 1].name, to = %model.name, reason = last_error.outcome(), "falling back");
            }
            let cache_key = match (&self.cache, cacheable) {
                (Some(cache), true) => {
                    Some((cache, cache.key(model, messages, params, options.repeat)))
                }
                _ => None,
            };
            if let Some((cache, key)) = &cache_key {
                let hit = cache.get(key).await;
                let result = if hit.is_some() { "hit" } else { "miss" };
                counter!("assay_llm_cache_requests_total", "model" => model.name.clone(), "result" => result)
                    .increment(1);
                if let Some(completion) = hit {
                    return CallReport {
                        outcome: Ok(completion),
                        answered_by: Some(model.name.clone()),
                        attempts,
                        latency: Some(Duration::ZERO),
                        cost_usd: 0.0,
                        cached: true,
                    };
                }
            }
            let has_fallback = position + 1 < chain.len();
            let tried = self
                .try_model(
                    model,
                    messages,
                    params,
                    options,
                    has_fallback,
                    &mut attempts,
                )
                .await;
            match tried {
                Ok((completion, latency)) => {
                    let cost_usd = model.price.cost(completion.usage);
                    record_usage(model, &completion, cost_usd);
                    if let Some((cache, key)) = &cache_key {
                        cache.put(key, &completion).await;
                    }
                    return CallReport {
                        outcome: Ok(completion),
                        answered_by: Some(model.name.clone()),
                        attempts,
                        latency: Some(latency),
                        cost_usd,
                        cached: false,
                    };
                }
                Err(error) if !error.allows_fallback() => {
                    last_error = error;
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        CallReport {
            outcome: Err(last_error),
            answered_by: None,
            attempts,
            latency: None,
            cost_usd: 0.0,
            cached: false,
        }
    }

    /// One model's attempts. `attempts` counts requests sent upstream.
    async fn try_model(
        &self,
        model: &Arc<Model>,
        messages: &[ChatMessage],
        params: &ModelParams,
        options: CallOptions<'_>,
        has_fallback: bool,
        attempts: &mut u32,
    ) -> Result<(Completion, Duration), ProviderError> {
        let provider = model.provider.provider_name();
        let limiter = self.limiter.as_ref();
        let reserve = match model.limits.tokens_per_minute {
            Some(_) => {
                let input = tokens::count_messages(messages);
                input.saturating_add(params.max_tokens.unwrap_or(input))
            }
            None => 0,
        };
        // Failed tries other than 429s: bounded by `max_attempts`.
        let mut tries = 0;
        // Time spent waiting out 429s: bounded by `max_retry_wait`.
        let mut rate_limit_wait = Duration::ZERO;
        // Time spent waiting for an unreachable limit store, for this call.
        let mut store_outage = Duration::ZERO;
        loop {
            if !self.breakers.allow(&model.name, model.circuit) {
                return Err(ProviderError::CircuitOpen);
            }
            let permit = match limiter {
                None => None,
                Some(limiter) => match limiter.acquire(model, reserve, has_fallback).await {
                    Ok(Ok(permit)) => Some(permit),
                    Ok(Err(CoolingDown(remaining))) => {
                        self.breakers
                            .record(&model.name, model.circuit, Verdict::Neutral);
                        return Err(ProviderError::RateLimited {
                            retry_after: Some(remaining),
                            message: "paused after a storm of 429s".to_owned(),
                        });
                    }
                    // Limits that cannot be checked are not ignored: wait for
                    // the store (a restarting Redis), without spending the
                    // call's attempts, for a bounded time.
                    Err(error) if store_outage < STORE_OUTAGE_BUDGET => {
                        tracing::debug!(model = %model.name, error = %error, "rate-limit store unreachable; waiting");
                        let wait = STORE_RETRY.min(STORE_OUTAGE_BUDGET - store_outage);
                        tokio::time::sleep(wait).await;
                        store_outage += wait;
                        continue;
                    }
                    Err(error) => {
                        return Err(ProviderError::Connection(format!(
                            "rate-limit store unreachable for {}s: {error}",
                            STORE_OUTAGE_BUDGET.as_secs()
                        )));
                    }
                },
            };
            *attempts += 1;
            let attempt = *attempts;
            if let Some(limiter) = limiter {
                limiter.sent(model);
            }
            gauge!("assay_llm_calls_in_flight").increment(1.0);
            let started = Instant::now();
            let outcome = model
                .provider
                .complete(CompletionRequest {
                    messages,
                    params,
                    attempt,
                    repeat: options.repeat,
                })
                .await;
            let elapsed = started.elapsed();
            gauge!("assay_llm_calls_in_flight").decrement(1.0);
            if let (Some(limiter), Some(permit)) = (limiter, permit) {
                let used = match &outcome {
                    Ok(completion) => completion
                        .usage
                        .input_tokens
                        .saturating_add(completion.usage.output_tokens),
                    // It may have been processed: keep the reservation.
                    Err(ProviderError::Timeout) => reserve,
                    Err(_) => 0,
                };
                if let Err(error) = limiter.release(model, permit, used).await {
                    // The lease expires by itself; the token count settles late.
                    tracing::warn!(model = %model.name, error = %error, "rate-limit release failed");
                }
            }
            let label = match &outcome {
                Ok(_) => "ok",
                Err(error) => error.outcome(),
            };
            let labels = [
                ("model", model.name.clone()),
                ("provider", provider.to_owned()),
                ("outcome", label.to_owned()),
                ("purpose", options.purpose.to_owned()),
            ];
            counter!("assay_llm_calls_total", &labels).increment(1);
            histogram!("assay_llm_call_duration_seconds", &labels).record(elapsed.as_secs_f64());
            let error = match outcome {
                Ok(completion) => {
                    if let Some(limiter) = limiter {
                        limiter.answered(model, completion.rate_hint);
                    }
                    self.breakers
                        .record(&model.name, model.circuit, Verdict::Success);
                    return Ok((completion, elapsed));
                }
                Err(error) => error,
            };
            let verdict = if error.is_service_failure() {
                Verdict::Failure
            } else {
                Verdict::Neutral
            };
            self.breakers.record(&model.name, model.circuit, verdict);
            if error == ProviderError::Timeout {
                counter!("assay_llm_unknown_outcomes_total", "model" => model.name.clone())
                    .increment(1);
            }
            let wait = if let ProviderError::RateLimited { retry_after, .. } = &error {
                let retry_after = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                if let Some(limiter) = limiter
                    && let Err(redis) = limiter.rate_limited(model, retry_after).await
                {
                    tracing::debug!(model = %model.name, error = %redis, "could not report a 429");
                }
                // With somewhere else to go, a model that refuses is left
                // for the next one now.
                if has_fallback {
                    return Err(error);
                }
                let wait = backoff(1, Some(retry_after));
                if rate_limit_wait + wait > model.max_retry_wait {
                    return Err(error);
                }
                rate_limit_wait += wait;
                wait
            } else {
                tries += 1;
                if !error.is_retryable() || tries >= model.max_attempts {
                    return Err(error);
                }
                // With somewhere else to go, a model whose circuit just
                // opened is left for the next one now.
                if has_fallback && self.breakers.open_for(&model.name).is_some() {
                    return Err(error);
                }
                backoff(tries, error.retry_after())
            };
            counter!("assay_llm_retries_total", "model" => model.name.clone(), "reason" => error.outcome())
                .increment(1);
            // The caller's slot is free for other items while this one waits.
            match options.slot {
                Some(slot) => {
                    slot.release();
                    tokio::time::sleep(wait).await;
                    slot.reacquire().await;
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// The wait before try `tries + 1`: what the provider asked for (plus up to
/// 10%), or full jitter up to an exponentially growing ceiling.
fn backoff(tries: u32, retry_after: Option<Duration>) -> Duration {
    let mut rng = rand::rng();
    match retry_after {
        Some(wait) => wait + wait.mul_f64(rng.random_range(0.0..0.1)),
        None => {
            let ceiling = BASE_BACKOFF
                .saturating_mul(1 << tries.saturating_sub(1).min(16))
                .min(MAX_BACKOFF);
            ceiling.mul_f64(rng.random_range(0.0..=1.0))
        }
    }
}

fn record_usage(model: &Model, completion: &Completion, cost_usd: f64) {
    let usage = completion.usage;
    for (kind, count) in [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cached", usage.cached_tokens),
    ] {
        if count > 0 {
            counter!("assay_llm_tokens_total", "model" => model.name.clone(), "kind" => kind)
                .increment(u64::from(count));
        }
    }
    gauge!("assay_llm_cost_usd", "model" => model.name.clone()).increment(cost_usd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_honours_retry_after_and_caps_full_jitter() {
        for tries in 1..20 {
            let wait = backoff(tries, None);
            let ceiling = BASE_BACKOFF.saturating_mul(1 << (tries - 1).min(16));
            assert!(wait <= ceiling.min(MAX_BACKOFF), "{tries}: {wait:?}");
        }
        let asked = Duration::from_secs(2);
        let wait = backoff(1, Some(asked));
        assert!(wait >= asked && wait < asked + Duration::from_millis(200));
    }

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: crate::domain::Role::User,
            content: text.to_owned(),
        }]
    }

    #[tokio::test]
    async fn a_failing_model_falls_back_and_only_the_answer_is_billed() {
        let dir = std::env::temp_dir().join(format!("assay-registry-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("models.toml");
        std::fs::write(
            &path,
            r#"
            [models.broken]
            provider = "mock"
            model = "mock:errors=1"
            max_attempts = 2
            fallbacks = ["backup"]
            circuit = { failures = 4, open_for = "1h" }

            [models.backup]
            provider = "mock"
            model = "mock"
            price = { input = 1000000.0, output = 0.0 }
            "#,
        )
        .unwrap();
        let catalog =
            ModelCatalog::load(&path, crate::providers::registry::Keys::Required).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let client = LlmClient::new(catalog.clone(), None, None);
        let broken = catalog.resolve("broken").unwrap();
        let options = CallOptions {
            purpose: "generate",
            repeat: 0,
            use_cache: true,
            slot: None,
        };
        let params = ModelParams::default();
        let report = client
            .complete(&broken, &user("one two"), &params, options)
            .await;
        assert_eq!(report.answered_by.as_deref(), Some("backup"));
        assert_eq!(report.outcome.as_ref().unwrap().text, "one two");
        assert_eq!(report.attempts, 3, "two failed attempts, then the backup's");
        // Input priced at $1 per token, output free: only the answer's 2 input tokens.
        assert_eq!(report.cost_usd, 2.0);
        // The second call fails twice more: 4 failures open the circuit.
        let report = client
            .complete(&broken, &user("three"), &params, options)
            .await;
        assert_eq!(report.attempts, 3);
        // Now the broken model is skipped without a request.
        let report = client
            .complete(&broken, &user("four"), &params, options)
            .await;
        assert_eq!(report.attempts, 1);
        assert_eq!(report.answered_by.as_deref(), Some("backup"));
    }
}
