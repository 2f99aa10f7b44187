//! What every HTTP provider client shares: the transport, the mapping of
//! status codes and error bodies to [`ProviderError`], the reading of
//! `Retry-After`-style headers, and the redaction of API keys.
//!
//! Transport: `reqwest` with rustls. One `reqwest::Client` (one connection
//! pool) serves every model of a process; each request carries its model's
//! timeout. We build requests and parse bodies ourselves instead of using an
//! SDK crate: we need the status, the headers and the raw error body of every
//! answer (to classify errors and honour rate-limit headers), and the SDKs
//! hide or retry them.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::ProviderError;

/// An API key read from the environment. Its `Debug` never shows it, and
/// [`ApiKey::redact`] removes it from anything upstream echoes back.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key (and of its longer prefixes and
    /// suffixes, which providers print when they mask the middle) replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut redacted = text.replace(&self.0, "[redacted]");
        // "sk-abc***xyz": a provider that masks the middle still shows both ends.
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() >= 12 {
            let head: String = chars[..8].iter().collect();
            let tail: String = chars[chars.len() - 6..].iter().collect();
            redacted = redacted.replace(&head, "[redacted]");
            redacted = redacted.replace(&tail, "[redacted]");
        }
        redacted
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ApiKey([redacted])")
    }
}

/// The process-wide HTTP client for provider calls.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("the TLS backend initialises")
}

/// An answer as read off the wire.
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// An answer with no headers, as recorded payloads are replayed in tests.
    #[cfg(test)]
    pub(crate) fn recorded(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }
}

/// Sends `request` with `timeout`; maps transport failures.
pub async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    key: Option<&ApiKey>,
) -> Result<RawResponse, ProviderError> {
    let transport_error = |error: reqwest::Error| {
        if error.is_timeout() {
            ProviderError::Timeout
        } else {
            // Without the URL: a base URL may carry credentials of its own.
            let message = error.without_url().to_string();
            ProviderError::Connection(redact(key, &message))
        }
    };
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport_error)?.to_vec();
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// The JSON body of a successful answer, or the error the answer stands for.
pub fn success_body(raw: &RawResponse) -> Result<Value, ProviderError> {
    if !(200..300).contains(&raw.status) {
        return Err(classify_error(raw.status, &raw.headers, &raw.body));
    }
    serde_json::from_slice(&raw.body).map_err(|error| ProviderError::Upstream {
        status: raw.status,
        message: format!("answer is not JSON: {error}"),
        retry_after: None,
    })
}

/// A token count of a usage object's `field` (0 when absent).
pub fn token_count(usage: Option<&Value>, field: &str) -> u32 {
    usage
        .and_then(|usage| usage.get(field))
        .and_then(Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

pub fn redact(key: Option<&ApiKey>, text: &str) -> String {
    match key {
        Some(key) => key.redact(text),
        None => text.to_owned(),
    }
}

/// The error with any echo of the key removed from its message.
pub fn redact_error(error: ProviderError, key: Option<&ApiKey>) -> ProviderError {
    let Some(key) = key else { return error };
    match error {
        ProviderError::RateLimited {
            retry_after,
            message,
        } => ProviderError::RateLimited {
            retry_after,
            message: key.redact(&message),
        },
        ProviderError::Overloaded {
            retry_after,
            message,
        } => ProviderError::Overloaded {
            retry_after,
            message: key.redact(&message),
        },
        ProviderError::Auth(message) => ProviderError::Auth(key.redact(&message)),
        ProviderError::BadRequest(message) => ProviderError::BadRequest(key.redact(&message)),
        ProviderError::ContextTooLong(message) => {
            ProviderError::ContextTooLong(key.redact(&message))
        }
        ProviderError::ContentFiltered(message) => {
            ProviderError::ContentFiltered(key.redact(&message))
        }
        ProviderError::Upstream {
            status,
            message,
            retry_after,
        } => ProviderError::Upstream {
            status,
            message: key.redact(&message),
            retry_after,
        },
        ProviderError::Connection(message) => ProviderError::Connection(key.redact(&message)),
        other @ (ProviderError::Timeout | ProviderError::CircuitOpen) => other,
    }
}

/// Classifies a non-2xx answer. The three wire formats put the message at
/// `error.message`; the kind is `error.code`/`error.type` (OpenAI),
/// `error.type` (Anthropic) or `error.status` (Gemini).
pub fn classify_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|body| body.get("error"));
    let field = |name: &str| {
        error
            .and_then(|error| error.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase()
    };
    let kind = [field("code"), field("type"), field("status")].join(" ");
    let message = error
        .and_then(|error| error.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(300).collect()
            }
        });
    let lowered = message.to_lowercase();
    let retry_after = retry_after(headers);
    if is_context_too_long(status, &kind, &lowered) {
        return ProviderError::ContextTooLong(message);
    }
    match status {
        // Out of credit is an account problem: waiting does not help.
        429 if kind.contains("insufficient_quota") => ProviderError::Auth(message),
        429 => ProviderError::RateLimited {
            retry_after,
            message,
        },
        401 | 403 => ProviderError::Auth(message),
        // Gemini answers a bad key with 400 INVALID_ARGUMENT.
        400 if lowered.contains("api key not valid") || kind.contains("api_key_invalid") => {
            ProviderError::Auth(message)
        }
        503 | 529 => ProviderError::Overloaded {
            retry_after,
            message,
        },
        408 | 500..=599 if kind.contains("overloaded") => ProviderError::Overloaded {
            retry_after,
            message,
        },
        408 | 409 | 500..=599 => ProviderError::Upstream {
            status,
            message,
            retry_after,
        },
        _ if kind.contains("content_filter")
            || kind.contains("content_policy")
            || lowered.contains("content management policy")
            || lowered.contains("safety") =>
        {
            ProviderError::ContentFiltered(message)
        }
        _ => ProviderError::BadRequest(format!("HTTP {status}: {message}")),
    }
}

fn is_context_too_long(status: u16, kind: &str, message: &str) -> bool {
    if !matches!(status, 400 | 413 | 422) {
        return false;
    }
    kind.contains("context_length_exceeded")
        || message.contains("context length")
        || message.contains("context_length")
        || message.contains("context window")
        || message.contains("prompt is too long")
        || (message.contains("token")
            && (message.contains("exceed") || message.contains("too long")))
}

/// How long the provider asks us to wait: `retry-after-ms`, then
/// `retry-after` (seconds or an HTTP date), then OpenAI's
/// `x-ratelimit-reset-{requests,tokens}` (of the exhausted resource), then
/// Anthropic's `anthropic-ratelimit-*-reset` timestamps.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|value| value.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(value) = header("retry-after") {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<f64>()
            && seconds.is_finite()
            && seconds >= 0.0
        {
            return Some(Duration::from_secs_f64(seconds));
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            return Some(until(date.with_timezone(&chrono::Utc)));
        }
    }
    let resets: Vec<(bool, Duration)> = ["requests", "tokens"]
        .iter()
        .filter_map(|resource| {
            let reset = header(&format!("x-ratelimit-reset-{resource}")).and_then(go_duration)?;
            let exhausted = header(&format!("x-ratelimit-remaining-{resource}"))
                .and_then(|value| value.trim().parse::<u64>().ok())
                == Some(0);
            Some((exhausted, reset))
        })
        .collect();
    if let Some((_, reset)) = resets.iter().find(|(exhausted, _)| *exhausted) {
        return Some(*reset);
    }
    if let Some(reset) = resets.iter().map(|(_, reset)| *reset).min() {
        return Some(reset);
    }
    ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter_map(|resource| {
            let remaining = header(&format!("anthropic-ratelimit-{resource}-remaining"))?;
            (remaining.trim() == "0").then_some(())?;
            let reset = header(&format!("anthropic-ratelimit-{resource}-reset"))?;
            let date = chrono::DateTime::parse_from_rfc3339(reset.trim()).ok()?;
            Some(until(date.with_timezone(&chrono::Utc)))
        })
        .max()
}

/// The request rate (per second) a provider's rate-limit headers leave when
/// they say the budget is nearly spent (at most a tenth of it remaining):
/// the budget refills to `limit` by the reset time, so what was used since
/// (`limit - remaining`) is what it takes back per `reset`. OpenAI sends
/// `x-ratelimit-{limit,remaining}-requests` and `x-ratelimit-reset-requests`
/// (a Go duration); Anthropic `anthropic-ratelimit-requests-{limit,remaining}`
/// and `anthropic-ratelimit-requests-reset` (an RFC 3339 time). None when
/// the headers are absent or the budget is far from spent.
pub fn rate_hint(headers: &HeaderMap) -> Option<f64> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let number = |name: &str| header(name).and_then(|value| value.trim().parse::<f64>().ok());
    let (limit, remaining, reset) = if let (Some(limit), Some(remaining)) = (
        number("x-ratelimit-limit-requests"),
        number("x-ratelimit-remaining-requests"),
    ) {
        let reset = header("x-ratelimit-reset-requests").and_then(go_duration)?;
        (limit, remaining, reset)
    } else {
        let limit = number("anthropic-ratelimit-requests-limit")?;
        let remaining = number("anthropic-ratelimit-requests-remaining")?;
        let reset = header("anthropic-ratelimit-requests-reset")
            .and_then(|value| chrono::DateTime::parse_from_rfc3339(value.trim()).ok())
            .map(|date| until(date.with_timezone(&chrono::Utc)))?;
        (limit, remaining, reset)
    };
    if !(limit > 0.0 && remaining >= 0.0 && remaining * 10.0 <= limit) {
        return None;
    }
    let seconds = reset.as_secs_f64().max(0.001);
    Some(((limit - remaining).max(1.0) / seconds).max(super::limits::MIN_RATE))
}

fn until(instant: chrono::DateTime<chrono::Utc>) -> Duration {
    (instant - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO)
}

/// Parses Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1.5s`, `1h2m3s`.
pub fn go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn go_durations_parse_as_openai_sends_them() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn retry_after_prefers_milliseconds_then_seconds_then_resets() {
        let both = headers(&[("retry-after-ms", "250"), ("retry-after", "3")]);
        assert_eq!(retry_after(&both), Some(Duration::from_millis(250)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        let date = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let waited = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(waited > Duration::from_secs(25) && waited <= Duration::from_secs(30));
        // The exhausted resource's reset wins, not the longer one.
        let resets = headers(&[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-tokens", "20ms"),
            ("x-ratelimit-remaining-tokens", "5000"),
        ]);
        assert_eq!(retry_after(&resets), Some(Duration::from_secs(360)));
        let resets = headers(&[
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(retry_after(&resets), Some(Duration::from_millis(20)));
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
        let anthropic = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", &reset),
        ]);
        let waited = retry_after(&anthropic).unwrap();
        assert!(waited > Duration::from_secs(5) && waited <= Duration::from_secs(10));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn rate_hints_come_from_a_nearly_spent_budget_only() {
        // 600 a minute, 5 left, full again in 59.5 s: 595 came back per 59.5 s.
        let openai = headers(&[
            ("x-ratelimit-limit-requests", "600"),
            ("x-ratelimit-remaining-requests", "5"),
            ("x-ratelimit-reset-requests", "59.5s"),
        ]);
        let hint = rate_hint(&openai).unwrap();
        assert!((hint - 10.0).abs() < 0.01, "{hint}");
        let plenty = headers(&[
            ("x-ratelimit-limit-requests", "600"),
            ("x-ratelimit-remaining-requests", "500"),
            ("x-ratelimit-reset-requests", "10s"),
        ]);
        assert_eq!(rate_hint(&plenty), None);
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(50)).to_rfc3339();
        let anthropic = headers(&[
            ("anthropic-ratelimit-requests-limit", "1000"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", &reset),
        ]);
        let hint = rate_hint(&anthropic).unwrap();
        assert!(hint > 19.0 && hint < 21.0, "{hint}");
        assert_eq!(rate_hint(&HeaderMap::new()), None);
    }

    #[test]
    fn keys_are_redacted_whole_and_masked() {
        let key = ApiKey::new("sk-proj-0123456789abcdefSECRET".to_owned());
        let echoed = "Incorrect API key provided: sk-proj-0123456789abcdefSECRET.";
        assert_eq!(
            key.redact(echoed),
            "Incorrect API key provided: [redacted]."
        );
        let masked = key.redact("Incorrect API key provided: sk-proj-********efSECRET.");
        assert!(
            !masked.contains("sk-proj-") && !masked.contains("efSECRET"),
            "{masked}"
        );
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
    }

    #[test]
    fn errors_classify_by_status_and_body() {
        let none = HeaderMap::new();
        let openai_context = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            classify_error(400, &none, openai_context),
            ProviderError::ContextTooLong(_)
        ));
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify_error(429, &none, quota),
            ProviderError::Auth(_)
        ));
        let limited = classify_error(429, &headers(&[("retry-after", "1")]), b"{}");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(1)));
        assert!(matches!(limited, ProviderError::RateLimited { .. }));
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            classify_error(529, &none, overloaded),
            ProviderError::Overloaded { .. }
        ));
        assert!(matches!(
            classify_error(502, &none, b"<html>Bad Gateway</html>"),
            ProviderError::Upstream { status: 502, ref message, .. } if message.contains("Bad Gateway")
        ));
        assert!(matches!(
            classify_error(408, &none, b""),
            ProviderError::Upstream { status: 408, .. }
        ));
        let filtered = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400}}"#;
        assert!(matches!(
            classify_error(400, &none, filtered),
            ProviderError::ContentFiltered(_)
        ));
        let gemini_auth = br#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers.","status":"PERMISSION_DENIED"}}"#;
        assert!(matches!(
            classify_error(403, &none, gemini_auth),
            ProviderError::Auth(_)
        ));
        let anthropic_long = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        assert!(matches!(
            classify_error(400, &none, anthropic_long),
            ProviderError::ContextTooLong(_)
        ));
        assert!(matches!(
            classify_error(404, &none, br#"{"error":{"message":"The model `x` does not exist"}}"#),
            ProviderError::BadRequest(ref message) if message.contains("404")
        ));
    }
}
