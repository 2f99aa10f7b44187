//! The model registry: `models.toml` maps the model names jobs use to the
//! provider that serves them, with prices, limits, timeouts, attempts,
//! fallbacks and circuit-breaker settings. `models.example.toml` at the
//! repository root documents every field.
//!
//! Loaded once at start-up by the API (to validate submissions) and by every
//! worker (to call models); every entry is checked then, and a bad one stops
//! the process with a message naming it. API keys are read from the
//! environment variables the entries name, never from the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::anthropic::AnthropicClient;
use super::gemini::GeminiClient;
use super::http::{self, ApiKey};
use super::mock::{MockOptions, MockProvider};
use super::openai::{KeyHeader, OpenAiClient};
use super::{CircuitSettings, Limits, Model, Price, Provider};

/// The environment variable naming the registry file.
pub const MODELS_FILE_VAR: &str = "ASSAY_MODELS_FILE";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// How long a call waits out 429s in all, by default.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(600);

/// A registry that cannot be used; `entry` names the model at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model registry{}: {message}", entry.as_ref().map(|entry| format!(", model {entry:?}")).unwrap_or_default())]
pub struct RegistryError {
    pub entry: Option<String>,
    pub message: String,
}

impl RegistryError {
    fn file(message: impl Into<String>) -> Self {
        Self {
            entry: None,
            message: message.into(),
        }
    }

    fn entry(name: &str, message: impl Into<String>) -> Self {
        Self {
            entry: Some(name.to_owned()),
            message: message.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    models: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    provider: String,
    /// `false` keeps an entry in the file without serving it (its key is
    /// then not required).
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    /// The upstream model id; the entry's name when unset.
    model: Option<String>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    /// OpenAI-compatible only: a header to send the key in instead of
    /// `Authorization: Bearer` (Azure: `api-key`).
    api_key_header: Option<String>,
    /// OpenAI-compatible only: query parameters (Azure: `api-version`).
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    price: PriceEntry,
    #[serde(default)]
    limits: LimitsEntry,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    /// How long a call may wait out 429s in all ("10m").
    max_retry_wait: Option<String>,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    circuit: CircuitEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    #[serde(default)]
    input: f64,
    #[serde(default)]
    output: f64,
    cached: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsEntry {
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
    concurrency: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CircuitEntry {
    #[serde(default = "default_failures")]
    failures: u32,
    #[serde(default = "default_open_for")]
    open_for: String,
}

fn enabled_by_default() -> bool {
    true
}

fn default_failures() -> u32 {
    5
}

fn default_open_for() -> String {
    "30s".to_owned()
}

impl Default for CircuitEntry {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            open_for: default_open_for(),
        }
    }
}

/// Whether a process needs the registry's API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// It calls models (workers): an enabled entry's unset key variable is an error.
    Required,
    /// It only validates names (the API): keys are not read, so it needs no secrets.
    NotNeeded,
}

/// Parses and checks a registry; `env` looks up environment variables.
pub fn parse(
    text: &str,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Arc<Model>>, RegistryError> {
    parse_with(text, http, env, Keys::Required)
}

pub fn parse_with(
    text: &str,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
    keys: Keys,
) -> Result<BTreeMap<String, Arc<Model>>, RegistryError> {
    let file: RegistryFile =
        toml::from_str(text).map_err(|error| RegistryError::file(error.to_string()))?;
    let mut models = BTreeMap::new();
    for (name, entry) in file.models.iter().filter(|(_, entry)| entry.enabled) {
        let model = build(name, entry, http, &env, keys)?;
        models.insert(name.clone(), Arc::new(model));
    }
    for (name, entry) in file.models.iter().filter(|(_, entry)| entry.enabled) {
        for fallback in &entry.fallbacks {
            if fallback == name {
                return Err(RegistryError::entry(name, "falls back to itself"));
            }
            if !models.contains_key(fallback) && MockOptions::parse(fallback).is_err() {
                let why = if file.models.contains_key(fallback) {
                    "is disabled"
                } else {
                    "is not a model in the registry"
                };
                return Err(RegistryError::entry(
                    name,
                    format!("fallback {fallback:?} {why}"),
                ));
            }
        }
    }
    let fallbacks: BTreeMap<String, Vec<String>> = file
        .models
        .iter()
        .filter(|(_, entry)| entry.enabled)
        .map(|(name, entry)| (name.clone(), entry.fallbacks.clone()))
        .collect();
    if let Some(cycle) = find_cycle(&fallbacks) {
        return Err(RegistryError::entry(
            &cycle[0],
            format!("fallback cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(models)
}

/// Reads and checks the registry file at `path`.
pub fn load(
    path: &Path,
    http: &reqwest::Client,
    keys: Keys,
) -> Result<BTreeMap<String, Arc<Model>>, RegistryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| RegistryError::file(format!("cannot read {}: {error}", path.display())))?;
    parse_with(&text, http, |name| std::env::var(name).ok(), keys).map_err(|mut error| {
        error.message = format!("{}: {}", path.display(), error.message);
        error
    })
}

fn build(
    name: &str,
    entry: &Entry,
    http: &reqwest::Client,
    env: &impl Fn(&str) -> Option<String>,
    keys: Keys,
) -> Result<Model, RegistryError> {
    let fail = |message: String| RegistryError::entry(name, message);
    if name.is_empty() || name.starts_with("mock:") || name.len() > 200 {
        return Err(fail(
            "names must be 1 to 200 characters and not start with `mock:` (reserved for the built-in mock)".to_owned(),
        ));
    }
    for (field, price) in [
        ("price.input", Some(entry.price.input)),
        ("price.output", Some(entry.price.output)),
        ("price.cached", entry.price.cached),
    ] {
        if let Some(price) = price
            && !(price.is_finite() && price >= 0.0)
        {
            return Err(fail(format!(
                "{field} must be a non-negative number of dollars per million tokens, not {price}"
            )));
        }
    }
    let limits = Limits {
        requests_per_minute: entry.limits.requests_per_minute,
        tokens_per_minute: entry.limits.tokens_per_minute,
        concurrency: entry.limits.concurrency,
        burst: entry.limits.burst.unwrap_or(1),
    };
    for (field, value) in [
        ("limits.requests_per_minute", limits.requests_per_minute),
        ("limits.tokens_per_minute", limits.tokens_per_minute),
        ("limits.concurrency", limits.concurrency),
        ("limits.burst", Some(limits.burst)),
    ] {
        if value == Some(0) {
            return Err(fail(format!("{field} must be at least 1")));
        }
    }
    let timeout = match &entry.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .ok_or_else(|| fail(format!("timeout {text:?} is not a duration like \"60s\"")))?,
    };
    let max_attempts = entry.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=100).contains(&max_attempts) {
        return Err(fail("max_attempts must be between 1 and 100".to_owned()));
    }
    let max_retry_wait = match &entry.max_retry_wait {
        None => DEFAULT_MAX_RETRY_WAIT,
        Some(text) => humantime::parse_duration(text).map_err(|_| {
            fail(format!(
                "max_retry_wait {text:?} is not a duration like \"10m\""
            ))
        })?,
    };
    let open_for = humantime::parse_duration(&entry.circuit.open_for).map_err(|_| {
        fail(format!(
            "circuit.open_for {:?} is not a duration",
            entry.circuit.open_for
        ))
    })?;
    let key = match &entry.api_key_env {
        None => None,
        Some(_) if keys == Keys::NotNeeded => None,
        Some(variable) => {
            let value = env(variable).filter(|value| !value.trim().is_empty());
            Some(ApiKey::new(value.ok_or_else(|| {
                fail(format!(
                    "its API key variable {variable} is not set in the environment"
                ))
            })?))
        }
    };
    let upstream = entry.model.clone().unwrap_or_else(|| name.to_owned());
    let base_url = |default: &str| -> Result<String, RegistryError> {
        let url = entry.base_url.as_deref().unwrap_or(default);
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url.to_owned()),
            _ => Err(fail(format!("base_url {url:?} is not an http(s) URL"))),
        }
    };
    let openai_only = entry.api_key_header.is_some() || !entry.query.is_empty();
    if openai_only && entry.provider != "openai" {
        return Err(fail(
            "api_key_header and query apply to provider \"openai\" only".to_owned(),
        ));
    }
    let provider: Arc<dyn Provider> = match entry.provider.as_str() {
        "openai" => Arc::new(OpenAiClient::new(
            http.clone(),
            &base_url("https://api.openai.com/v1")?,
            &upstream,
            key,
            match &entry.api_key_header {
                None => KeyHeader::Bearer,
                Some(header) => KeyHeader::Named(header.clone()),
            },
            entry
                .query
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            timeout,
        )),
        "anthropic" => Arc::new(AnthropicClient::new(
            http.clone(),
            &base_url("https://api.anthropic.com/v1")?,
            &upstream,
            key,
            timeout,
        )),
        "gemini" => Arc::new(GeminiClient::new(
            http.clone(),
            &base_url("https://generativelanguage.googleapis.com/v1beta")?,
            &upstream,
            key,
            timeout,
        )),
        "mock" => {
            let options = MockOptions::parse(&upstream)
                .map_err(|error| fail(format!("model {upstream:?}: {error}")))?;
            Arc::new(MockProvider::new(name, options))
        }
        other => {
            return Err(fail(format!(
                "unknown provider {other:?} (known: openai, anthropic, gemini, mock)"
            )));
        }
    };
    Ok(Model {
        name: name.to_owned(),
        provider,
        upstream,
        price: Price {
            input_per_million: entry.price.input,
            output_per_million: entry.price.output,
            cached_input_per_million: entry.price.cached,
        },
        max_attempts,
        max_retry_wait,
        timeout,
        limits,
        fallbacks: entry.fallbacks.clone(),
        circuit: CircuitSettings {
            failures: entry.circuit.failures,
            open_for,
        },
    })
}

/// A fallback cycle, as the names along it, if there is one.
fn find_cycle(entries: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        name: &str,
        entries: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        path.push(name.to_owned());
        for next in entries.get(name).map(Vec::as_slice).unwrap_or_default() {
            if let Some(cycle) = visit(next, entries, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(name.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    entries
        .keys()
        .find_map(|name| visit(name, entries, &mut Vec::new(), &mut done))
}

/// The HTTP client every provider of a registry shares.
pub fn http_client() -> reqwest::Client {
    http::client()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<BTreeMap<String, Arc<Model>>, RegistryError> {
        let env = |name: &str| (name == "SET_KEY").then(|| "sk-test".to_owned());
        parse(text, &http_client(), env)
    }

    const GOOD: &str = r#"
        [models.fast]
        provider = "openai"
        model = "gpt-4o-mini"
        base_url = "http://127.0.0.1:1/v1"
        api_key_env = "SET_KEY"
        price = { input = 0.15, output = 0.6, cached = 0.075 }
        limits = { requests_per_minute = 600, tokens_per_minute = 100000, concurrency = 8, burst = 3 }
        timeout = "20s"
        max_attempts = 6
        max_retry_wait = "90s"
        fallbacks = ["claude", "local"]

        [models.claude]
        provider = "anthropic"
        model = "claude-haiku-4-5"
        fallbacks = ["local"]

        [models.gem]
        provider = "gemini"
        model = "gemini-2.5-flash"

        [models.local]
        provider = "mock"
        model = "mock:latency=5ms"
        circuit = { failures = 2, open_for = "1s" }
    "#;

    #[test]
    fn a_good_registry_loads_with_every_field() {
        let models = check(GOOD).unwrap();
        let fast = &models["fast"];
        assert_eq!(fast.upstream, "gpt-4o-mini");
        assert_eq!(fast.provider.provider_name(), "openai");
        assert_eq!(
            fast.provider.endpoint(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert_eq!(fast.price.cached_input_per_million, Some(0.075));
        assert_eq!(fast.limits.requests_per_minute, Some(600));
        assert_eq!(fast.limits.burst, 3);
        assert_eq!(fast.timeout, Duration::from_secs(20));
        assert_eq!(fast.max_attempts, 6);
        assert_eq!(fast.max_retry_wait, Duration::from_secs(90));
        assert_eq!(models["claude"].max_retry_wait, DEFAULT_MAX_RETRY_WAIT);
        assert_eq!(fast.fallbacks, ["claude", "local"]);
        assert_eq!(models["claude"].max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            models["gem"].provider.endpoint(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(models["local"].circuit.failures, 2);
    }

    #[test]
    fn the_shipped_example_loads_when_its_keys_are_set() {
        let example = include_str!("../../../models.example.toml");
        let models = parse(example, &http_client(), |_| Some("sk-example".to_owned())).unwrap();
        assert!(models.contains_key("gpt-4o-mini") && models.contains_key("claude-haiku"));
        assert!(
            !models.contains_key("gpt-4-1"),
            "disabled entries are not served"
        );
        let missing = parse(example, &http_client(), |_| None).unwrap_err();
        assert_eq!(missing.entry.as_deref(), Some("claude-haiku"), "{missing}");
        assert!(
            missing.message.contains("ANTHROPIC_API_KEY is not set"),
            "{missing}"
        );
    }

    #[test]
    fn disabled_entries_need_no_key_and_are_not_served() {
        let models = check(
            "[models.on]\nprovider = \"mock\"\nmodel = \"mock\"\n[models.off]\nprovider = \"openai\"\napi_key_env = \"UNSET_KEY\"\nenabled = false",
        )
        .unwrap();
        assert!(models.contains_key("on"));
        assert!(!models.contains_key("off"));
    }

    #[test]
    fn bad_entries_fail_naming_the_entry() {
        let cases = [
            (
                "[models.x]\nprovider = \"openia\"",
                "x",
                "unknown provider \"openia\"",
            ),
            (
                "[models.cheap]\nprovider = \"openai\"\nprice = { input = -1.0, output = 1.0 }",
                "cheap",
                "price.input must be a non-negative",
            ),
            (
                "[models.a]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"b\"]\n[models.b]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"a\"]",
                "a",
                "fallback cycle: a -> b -> a",
            ),
            (
                "[models.a]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"a\"]",
                "a",
                "falls back to itself",
            ),
            (
                "[models.a]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"nope\"]",
                "a",
                "fallback \"nope\" is not a model",
            ),
            (
                "[models.gpt]\nprovider = \"openai\"\napi_key_env = \"UNSET_KEY\"",
                "gpt",
                "API key variable UNSET_KEY is not set",
            ),
            (
                "[models.x]\nprovider = \"openai\"\nbase_url = \"ftp://x\"",
                "x",
                "not an http(s) URL",
            ),
            (
                "[models.x]\nprovider = \"openai\"\nlimits = { requests_per_minute = 0 }",
                "x",
                "requests_per_minute must be at least 1",
            ),
            (
                "[models.x]\nprovider = \"mock\"\nmodel = \"mock\"\nmax_retry_wait = \"forever\"",
                "x",
                "max_retry_wait \"forever\" is not a duration",
            ),
            (
                "[models.x]\nprovider = \"anthropic\"\nquery = { a = \"b\" }",
                "x",
                "apply to provider \"openai\" only",
            ),
        ];
        for (text, entry, expected) in cases {
            let error = check(text).expect_err(text);
            assert_eq!(error.entry.as_deref(), Some(entry), "{text}");
            let message = error.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains(&format!("model {entry:?}")), "{message}");
        }
        let disabled_fallback = check(
            "[models.a]\nprovider = \"mock\"\nmodel = \"mock\"\nfallbacks = [\"b\"]\n[models.b]\nprovider = \"openai\"\nenabled = false",
        )
        .unwrap_err();
        assert!(
            disabled_fallback
                .to_string()
                .contains("fallback \"b\" is disabled"),
            "{disabled_fallback}"
        );
        let unknown_field = check("[models.x]\nprovider = \"openai\"\nprise = 1").unwrap_err();
        assert!(
            unknown_field.to_string().contains("prise"),
            "{unknown_field}"
        );
    }
}
