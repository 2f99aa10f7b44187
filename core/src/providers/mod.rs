//! LLM providers behind one trait.
//!
//! A model name used in jobs resolves to a [`Model`]: the provider that serves
//! it, its prices and how often a failed call may be tried. Today the only
//! provider is the built-in [`mock`]; every name is either `mock` or
//! `mock:<options>`.

pub mod mock;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ChatMessage, InvalidInput, ModelParams};

/// Tokens a call consumed, as the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: Option<String>,
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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    #[error("timed out")]
    Timeout,
    #[error("upstream error: {0}")]
    Upstream(String),
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl ProviderError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ProviderError::BadRequest(_))
    }

    /// Low-cardinality label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Timeout => "timeout",
            ProviderError::Upstream(_) => "upstream_error",
            ProviderError::BadRequest(_) => "bad_request",
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Provider family, for metrics (`mock`, `openai`, ...).
    fn provider_name(&self) -> &'static str;

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError>;
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    pub fn cost(&self, usage: Usage) -> f64 {
        (f64::from(usage.input_tokens) * self.input_per_million
            + f64::from(usage.output_tokens) * self.output_per_million)
            / 1_000_000.0
    }
}

/// A model name resolved to what serves it.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    pub price: Price,
    /// Tries per call, the first included.
    pub max_attempts: u32,
}

/// Resolves model names. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct ModelCatalog;

impl ModelCatalog {
    pub fn resolve(&self, name: &str) -> Result<Model, InvalidInput> {
        let options = mock::MockOptions::parse(name)
            .map_err(|message| InvalidInput::new("models", format!("model {name:?}: {message}")))?;
        Ok(Model {
            name: name.to_owned(),
            price: options.price,
            max_attempts: 3,
            provider: Arc::new(mock::MockProvider::new(name, options)),
        })
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
        if names.len() > 10 {
            return Err(InvalidInput::new("models", "at most 10 models"));
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
