//! LLM providers behind one trait.
//!
//! A model name used in jobs resolves to a [`Model`] through the
//! [`ModelCatalog`]: the registry's entries ([`registry`], `models.toml`)
//! and the built-in [`mock`] (`mock`, `mock:<options>`). Each model has a
//! [`Provider`]: [`openai`] (and every OpenAI-compatible server),
//! [`anthropic`], [`gemini`] or the mock.
//!
//! Calls go through [`call::LlmClient`], which adds what holds up at scale:
//! the response [`cache`], limits shared by every worker ([`limits`]),
//! retries, fallbacks, the circuit [`breaker`], cost and metrics.

pub mod anthropic;
pub mod breaker;
pub mod cache;
pub mod call;
pub mod gemini;
pub mod http;
pub mod limits;
pub mod mock;
pub mod openai;
pub mod registry;
pub mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use serde::{Deserialize, Serialize};

use crate::domain::{ChatMessage, InvalidInput, ModelParams};

/// Tokens a call consumed, as the provider reports them (or as estimated
/// with a tokenizer when it reports none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// The part of `input_tokens` served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: Option<String>,
    /// The request rate (per second) the provider's rate-limit headers say
    /// is left when its budget is nearly spent; fed to the rate controller
    /// ([`limits`]), never cached.
    #[serde(skip)]
    pub rate_hint: Option<f64>,
}

/// A provider's stop reason in OpenAI's words (`stop`, `length`,
/// `content_filter`, `tool_calls`), so that the `finish-reason` grader means
/// the same thing for every provider; unknown reasons pass through lowercased.
pub fn normalize_finish_reason(reason: &str) -> String {
    match reason {
        "stop" | "end_turn" | "stop_sequence" | "STOP" | "FINISH_REASON_STOP" => "stop",
        "length" | "max_tokens" | "MAX_TOKENS" => "length",
        "content_filter" | "refusal" | "SAFETY" | "RECITATION" | "BLOCKLIST"
        | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        "tool_calls" | "tool_use" | "function_call" => "tool_calls",
        other => return other.to_lowercase(),
    }
    .to_owned()
}

/// One call: the rendered messages and the parameters in force.
#[derive(Debug, Clone, Copy)]
pub struct CompletionRequest<'a> {
    pub messages: &'a [ChatMessage],
    pub params: &'a ModelParams,
    /// 1 for the first try; providers that inject faults (the mock) use it so
    /// that a retry can succeed deterministically.
    pub attempt: u32,
    /// Which run of a repeated item this is (0 for the first): repeated runs
    /// are independent samples.
    pub repeat: u32,
}

/// Every provider's failures, mapped to one type. Messages never contain an
/// API key: clients redact what upstream echoes back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("rate limited: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// No answer within the model's timeout: the request may still have been
    /// processed (and billed) upstream.
    #[error("timed out")]
    Timeout,
    #[error("overloaded: {message}")]
    Overloaded {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("context too long: {0}")]
    ContextTooLong(String),
    #[error("content filtered: {0}")]
    ContentFiltered(String),
    /// A 5xx (or 408) answer.
    #[error("upstream error {status}: {message}")]
    Upstream {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or its answer not read.
    #[error("connection error: {0}")]
    Connection(String),
    /// The model's circuit breaker is open: no call was made.
    #[error("circuit open: too many recent failures")]
    CircuitOpen,
}

impl ProviderError {
    /// Whether trying the same model again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Timeout
                | ProviderError::Overloaded { .. }
                | ProviderError::Upstream { .. }
                | ProviderError::Connection(_)
        )
    }

    /// Whether another model may answer where this one could not. A bad
    /// request or filtered content would fail the same way anywhere.
    pub fn allows_fallback(&self) -> bool {
        !matches!(
            self,
            ProviderError::BadRequest(_) | ProviderError::ContentFiltered(_)
        )
    }

    /// Whether this counts against the model's health (circuit breaker):
    /// failures of the service, not of the request or of our rate.
    pub fn is_service_failure(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout
                | ProviderError::Overloaded { .. }
                | ProviderError::Upstream { .. }
                | ProviderError::Connection(_)
                | ProviderError::Auth(_)
        )
    }

    /// What the provider asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Overloaded { retry_after, .. }
            | ProviderError::Upstream { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Timeout => "timeout",
            ProviderError::Overloaded { .. } => "overloaded",
            ProviderError::Auth(_) => "auth",
            ProviderError::BadRequest(_) => "bad_request",
            ProviderError::ContextTooLong(_) => "context_too_long",
            ProviderError::ContentFiltered(_) => "content_filtered",
            ProviderError::Upstream { .. } => "upstream_error",
            ProviderError::Connection(_) => "connection_error",
            ProviderError::CircuitOpen => "circuit_open",
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Provider family, for metrics (`mock`, `openai`, ...).
    fn provider_name(&self) -> &'static str;

    /// Where calls go (empty for in-process providers): part of the cache
    /// key, so that two servers never share answers.
    fn endpoint(&self) -> &str {
        ""
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError>;
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// For input tokens read from the provider's prompt cache; the input
    /// price when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<f64>,
}

impl Price {
    pub fn cost(&self, usage: Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        (f64::from(uncached) * self.input_per_million
            + f64::from(cached)
                * self
                    .cached_input_per_million
                    .unwrap_or(self.input_per_million)
            + f64::from(usage.output_tokens) * self.output_per_million)
            / 1_000_000.0
    }
}

/// Per-model limits, enforced across every worker through Redis ([`limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Calls in flight at once, across all workers.
    pub concurrency: Option<u32>,
    /// Requests that may start back to back before the per-minute pace applies.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            tokens_per_minute: None,
            concurrency: None,
            burst: 1,
        }
    }
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.concurrency.is_none()
    }
}

/// When a model's circuit breaker opens, and for how long ([`breaker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive service failures that open the circuit; 0 never opens it.
    pub failures: u32,
    pub open_for: Duration,
}

/// A model name resolved to what serves it.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// The provider's own id for the model.
    pub upstream: String,
    pub price: Price,
    /// Tries per call, the first included, counting failures other than
    /// 429s.
    pub max_attempts: u32,
    /// How long a call may wait out 429s in all before it gives up.
    pub max_retry_wait: Duration,
    pub timeout: Duration,
    pub limits: Limits,
    /// Models (by name) that answer, in order, when this one cannot.
    pub fallbacks: Vec<String>,
    pub circuit: CircuitSettings,
}

/// Resolves model names: the registry's entries, then the built-in mock
/// (`mock`, `mock:<options>`). Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct ModelCatalog {
    models: Arc<BTreeMap<String, Arc<Model>>>,
}

impl ModelCatalog {
    /// A catalog of the registry file named by `ASSAY_MODELS_FILE`, or of the
    /// built-in mock only when it is unset. `keys` says whether this process
    /// calls models (and so needs their API keys).
    pub fn from_env(keys: registry::Keys) -> Result<Self, registry::RegistryError> {
        match std::env::var(registry::MODELS_FILE_VAR) {
            Ok(path) if !path.trim().is_empty() => Self::load(std::path::Path::new(&path), keys),
            _ => Ok(Self::default()),
        }
    }

    pub fn load(
        path: &std::path::Path,
        keys: registry::Keys,
    ) -> Result<Self, registry::RegistryError> {
        let models = registry::load(path, &registry::http_client(), keys)?;
        Ok(Self {
            models: Arc::new(models),
        })
    }

    /// The registry's models, by name.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values().map(AsRef::as_ref)
    }

    pub fn resolve(&self, name: &str) -> Result<Arc<Model>, InvalidInput> {
        if let Some(model) = self.models.get(name) {
            return Ok(model.clone());
        }
        let options = mock::MockOptions::parse(name).map_err(|message| {
            let known = if self.models.is_empty() {
                String::new()
            } else {
                format!(
                    "; the registry has {}",
                    self.models
                        .keys()
                        .map(|name| format!("{name:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            InvalidInput::new("models", format!("model {name:?}: {message}{known}"))
        })?;
        Ok(Arc::new(Model {
            name: name.to_owned(),
            upstream: name.to_owned(),
            price: options.price,
            max_attempts: 3,
            max_retry_wait: registry::DEFAULT_MAX_RETRY_WAIT,
            timeout: Duration::from_secs(600),
            limits: Limits::default(),
            fallbacks: Vec::new(),
            circuit: CircuitSettings {
                failures: 0,
                open_for: Duration::ZERO,
            },
            provider: Arc::new(mock::MockProvider::new(name, options)),
        }))
    }

    /// `model` followed by its fallbacks, depth first, each once.
    pub fn chain(&self, model: &Arc<Model>) -> Vec<Arc<Model>> {
        let mut chain = vec![model.clone()];
        let mut next = 0;
        while next < chain.len() {
            let fallbacks = chain[next].fallbacks.clone();
            let mut insert_at = next + 1;
            for name in fallbacks {
                if chain.iter().any(|model| model.name == name) {
                    continue;
                }
                if let Ok(fallback) = self.resolve(&name) {
                    chain.insert(insert_at, fallback);
                    insert_at += 1;
                }
            }
            next += 1;
        }
        chain
    }

    /// Checks a judge model name (graders name theirs in `model`).
    pub fn validate_judge(&self, field: &str, name: &str) -> Result<(), InvalidInput> {
        self.resolve(name)
            .map(drop)
            .map_err(|error| InvalidInput::new(field, error.message))
    }

    /// Checks a list of model names: 1 to 10, no repeats, each known.
    pub fn validate(&self, names: &[String]) -> Result<(), InvalidInput> {
        if names.is_empty() {
            return Err(InvalidInput::new(
                "models",
                "at least one model is required",
            ));
        }
        if names.len() > crate::domain::limits::MAX_MODELS {
            return Err(InvalidInput::new(
                "models",
                format!("at most {} models", crate::domain::limits::MAX_MODELS),
            ));
        }
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                return Err(InvalidInput::new(
                    "models",
                    format!("model {name:?} is listed twice"),
                ));
            }
            self.resolve(name)?;
        }
        Ok(())
    }
}

/// Describes the provider layer's metrics (once per process).
pub fn describe_metrics() {
    describe_counter!(
        "assay_llm_calls_total",
        "LLM requests sent upstream, by model, provider, outcome (ok, rate_limited, timeout, overloaded, auth, bad_request, context_too_long, content_filtered, upstream_error, connection_error) and purpose (generate, judge)."
    );
    describe_histogram!(
        "assay_llm_call_duration_seconds",
        Unit::Seconds,
        "Duration of one upstream request, by model, provider, outcome and purpose."
    );
    describe_gauge!(
        "assay_llm_calls_in_flight",
        "Upstream requests in flight in this process."
    );
    describe_counter!(
        "assay_llm_retries_total",
        "Requests sent again after a retryable failure, by model and the failure (reason)."
    );
    describe_counter!(
        "assay_llm_unknown_outcomes_total",
        "Requests that timed out: the provider may have processed (and billed) them; not billed here."
    );
    describe_counter!(
        "assay_llm_fallbacks_total",
        "Calls handed from a model to its next fallback, by from, to and the reason."
    );
    describe_counter!(
        "assay_llm_cache_requests_total",
        "Response-cache lookups, by model and result (hit, miss)."
    );
    describe_counter!(
        "assay_llm_tokens_total",
        "Tokens of answered (not cached) calls, by model and kind (input, output, cached: input served from the provider's prompt cache)."
    );
    describe_gauge!(
        "assay_llm_cost_usd",
        "Dollars spent on answered calls since the process started, by model (prices from the registry)."
    );
    describe_histogram!(
        "assay_llm_rate_limit_wait_seconds",
        Unit::Seconds,
        "Time a call waited for shared capacity before it was sent, by model and reason (requests, tokens, concurrency, cool_down)."
    );
    describe_counter!(
        "assay_llm_cool_downs_total",
        "Shared pauses started by a storm of 429s (most answers refused), by model: every worker stops new calls to it for the Retry-After."
    );
    describe_counter!(
        "assay_llm_rate_decreases_total",
        "Multiplicative decreases of a model's learned request rate after 429s (at most one per second), by model."
    );
    describe_gauge!(
        "assay_provider_learned_rate",
        "Requests per second a model is paced at, as learned from 429s and rate-limit headers, by model (the registry's rate, or 0 for a model without limits, when nothing is learned)."
    );
    describe_gauge!(
        "assay_llm_circuit_state",
        "Circuit breaker of a model in this process: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "assay_llm_circuit_transitions_total",
        "Circuit breaker state changes, by model and the state entered (open, half_open, closed)."
    );
}
