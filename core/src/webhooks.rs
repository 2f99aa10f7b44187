//! Webhooks' domain: which events exist, how an endpoint's URL is checked,
//! how a body is signed (and verified), how long deliveries are retried,
//! and the job payload that carries one delivery attempt.
//!
//! Rules that hold here:
//! - an event's body is built once, stored, and sent byte for byte on
//!   every attempt, so its signature and its `id` (the receiver's
//!   deduplication key) never change between attempts;
//! - the signature is HMAC-SHA256, keyed with the webhook's secret, over
//!   `"<unix seconds>.<body>"`, sent as `Assay-Signature: t=<unix>,v1=<hex>`
//!   (Stripe's scheme: the timestamp bounds replays);
//! - HTTP itself (timeouts, bounded reads, no redirects) is the worker's
//!   business (`worker/src/jobs/webhooks.rs`); the rows are in
//!   [`crate::db::models::webhooks`].

use std::time::Duration;

use apalis_redis::{ConnectionManager, RedisStorage};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::InvalidInput;
use crate::ids::TenantId;

/// Events an evaluation's own webhook (`webhook_url`) is sent.
pub const EVALUATION_EVENTS: [&str; 3] = [
    "evaluation.succeeded",
    "evaluation.failed",
    "evaluation.canceled",
];

/// Every event type a webhook can be sent: the end of an evaluation, and
/// the end of each versioning job (one type per final status).
pub const EVENT_TYPES: [&str; 12] = [
    "evaluation.succeeded",
    "evaluation.failed",
    "evaluation.canceled",
    "promotion.promoted",
    "promotion.rejected",
    "promotion.superseded",
    "promotion.failed",
    "promotion.canceled",
    "optimization.succeeded",
    "optimization.budget_exhausted",
    "optimization.failed",
    "optimization.canceled",
];

/// Whether an audit event of `action` is also sent to webhooks.
pub fn is_webhook_event(action: &str) -> bool {
    EVENT_TYPES.contains(&action)
}

/// Longest URL accepted (bytes).
pub const MAX_URL_LENGTH: usize = 2048;

/// Checks a webhook URL: absolute `http` or `https` with a host, at most
/// [`MAX_URL_LENGTH`] bytes, no credentials (they would be shown in every
/// listing) and no control characters.
pub fn validate_url(field: &str, url: &str) -> Result<(), InvalidInput> {
    if url.len() > MAX_URL_LENGTH {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {MAX_URL_LENGTH} bytes"),
        ));
    }
    if url.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| InvalidInput::new(field, format!("is not a valid URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(InvalidInput::new(
            field,
            format!("must be an http or https URL, not {}", parsed.scheme()),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(InvalidInput::new(field, "must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(InvalidInput::new(
            field,
            "must not carry credentials; verify the signature instead",
        ));
    }
    Ok(())
}

/// Checks an `events` list: known types, no repeats, at least one.
pub fn validate_events(field: &str, events: &[String]) -> Result<(), InvalidInput> {
    if events.is_empty() {
        return Err(InvalidInput::new(
            field,
            "must name at least one event type (omit it for every type)",
        ));
    }
    for (index, event) in events.iter().enumerate() {
        if !is_webhook_event(event) {
            return Err(InvalidInput::new(
                format!("{field}[{index}]"),
                format!("unknown event type; known: {}", EVENT_TYPES.join(", ")),
            ));
        }
        if events[..index].contains(event) {
            return Err(InvalidInput::new(
                format!("{field}[{index}]"),
                "is listed twice",
            ));
        }
    }
    Ok(())
}

/// A fresh signing secret: `whsec_` and 32 random bytes in hex. The whole
/// string, prefix included, is the HMAC key.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("whsec_{}", hex::encode(bytes))
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`. Written out over
/// `sha2` (already a dependency) rather than pulling the `hmac` crate,
/// whose current release needs another `sha2` major version; the RFC 4231
/// test vectors below pin it.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|byte| byte ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|byte| byte ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// The `v1` signature: hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[timestamp.as_bytes(), b".", body],
    ))
}

/// The `Assay-Signature` header value for a body sent at `timestamp`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// What a receiver does: checks an `Assay-Signature` header against the
/// body and the secret, refusing timestamps further than `tolerance` from
/// `now` (a replayed request). Any `v1` entry may match (several appear
/// while a secret is rotated). The comparison takes the same time whatever
/// the bytes.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for entry in header.split(',') {
        match entry.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return false;
    }
    let expected = sign(secret, timestamp, body);
    signatures
        .iter()
        .any(|signature| constant_time_eq(signature.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body of an event, built once: `{"id", "type", "created_at",
/// "data": {"object", "id", ...details}}`. `details` are the audit event's
/// data (counts, error, reason...).
pub fn event_body(
    event_id: Uuid,
    event_type: &str,
    created_at: DateTime<Utc>,
    resource_type: &str,
    resource_id: Uuid,
    details: &Value,
) -> String {
    let mut data = json!({ "object": resource_type, "id": resource_id });
    match details {
        Value::Object(fields) => {
            for (key, value) in fields {
                data[key] = value.clone();
            }
        }
        Value::Null => {}
        other => data["details"] = other.clone(),
    }
    // The resource's id wins over a detail that happens to be named `id`.
    data["id"] = json!(resource_id);
    json!({
        "id": event_id,
        "type": event_type,
        "created_at": created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

/// How deliveries are attempted, from the environment (documented in the
/// README's Webhooks section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Delay after the first failed attempt; doubles after each
    /// (`ASSAY_WEBHOOK_BASE_DELAY`, default 10s).
    pub base_delay: Duration,
    /// Longest delay between two attempts (`ASSAY_WEBHOOK_MAX_DELAY`, default 1h).
    pub max_delay: Duration,
    /// How long after the event attempts go on (`ASSAY_WEBHOOK_RETRY_WINDOW`,
    /// default 24h); the delivery then ends `failed`.
    pub retry_window: Duration,
    /// Whole-attempt limit: connect, send, status and the bounded read of an
    /// error body (`ASSAY_WEBHOOK_TIMEOUT`, default 10s, at most 60s).
    pub timeout: Duration,
    /// Attempts one worker process runs at once (`ASSAY_WEBHOOK_CONCURRENCY`,
    /// default 16): their own queue and slots, never a chunk's.
    pub concurrency: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
            retry_window: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            concurrency: 16,
        }
    }
}

impl DeliverySettings {
    /// Reads the `ASSAY_WEBHOOK_*` variables; a value that does not parse
    /// (or is out of range) is an error naming it.
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Self::default();
        let duration = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            match std::env::var(name).ok().filter(|value| !value.is_empty()) {
                None => Ok(default),
                Some(value) => humantime::parse_duration(&value)
                    .map_err(|error| anyhow::anyhow!("{name}={value:?}: {error}")),
            }
        };
        let settings = Self {
            base_delay: duration("ASSAY_WEBHOOK_BASE_DELAY", defaults.base_delay)?,
            max_delay: duration("ASSAY_WEBHOOK_MAX_DELAY", defaults.max_delay)?,
            retry_window: duration("ASSAY_WEBHOOK_RETRY_WINDOW", defaults.retry_window)?,
            timeout: duration("ASSAY_WEBHOOK_TIMEOUT", defaults.timeout)?,
            concurrency: match std::env::var("ASSAY_WEBHOOK_CONCURRENCY") {
                Ok(value) if !value.is_empty() => value.parse().map_err(|_| {
                    anyhow::anyhow!("ASSAY_WEBHOOK_CONCURRENCY={value:?} is not a number")
                })?,
                _ => defaults.concurrency,
            },
        };
        anyhow::ensure!(
            settings.base_delay >= Duration::from_millis(10),
            "ASSAY_WEBHOOK_BASE_DELAY must be at least 10ms"
        );
        anyhow::ensure!(
            settings.max_delay >= settings.base_delay,
            "ASSAY_WEBHOOK_MAX_DELAY must be at least ASSAY_WEBHOOK_BASE_DELAY"
        );
        anyhow::ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&settings.timeout),
            "ASSAY_WEBHOOK_TIMEOUT must be between 100ms and 60s"
        );
        anyhow::ensure!(
            (1..=1024).contains(&settings.concurrency),
            "ASSAY_WEBHOOK_CONCURRENCY must be between 1 and 1024"
        );
        Ok(settings)
    }

    /// Delay before attempt `failed + 1`, after `failed` failed attempts:
    /// `base * 2^(failed - 1)`, at most `max_delay`, plus up to 10 % jitter
    /// so that the deliveries of one outage do not all come back at once.
    pub fn delay_after(&self, failed: i32) -> Duration {
        let exponent = u32::try_from(failed.saturating_sub(1)).unwrap_or(0).min(30);
        let delay = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        delay.mul_f64(1.0 + rand::rng().random_range(0.0..0.1))
    }

    /// How long an attempt holds its delivery: the attempt's own limit and
    /// room to record it. A worker that dies mid-attempt frees it then.
    pub fn hold(&self) -> Duration {
        self.timeout + Duration::from_secs(30)
    }
}

/// One attempt of one delivery; the row in PostgreSQL is the state, this
/// only names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookJob {
    /// Payload format, so that workers can refuse what they do not understand.
    pub v: u32,
    pub tenant_id: TenantId,
    pub delivery_id: Uuid,
}

impl WebhookJob {
    pub const VERSION: u32 = 1;

    pub fn new(tenant_id: TenantId, delivery_id: Uuid) -> Self {
        Self {
            v: Self::VERSION,
            tenant_id,
            delivery_id,
        }
    }
}

/// The queue of webhook attempts under `prefix`: its own, so receivers
/// never take a chunk's place.
pub fn webhook_queue(prefix: &str) -> String {
    format!("{prefix}:webhooks")
}

/// The apalis storage of webhook attempts, configured like the other
/// queues (same heartbeats, one job per fetch, acks kept).
pub fn webhook_storage(conn: ConnectionManager, prefix: &str) -> RedisStorage<WebhookJob> {
    crate::queue::queue_storage(conn, webhook_queue(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 1.
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2, the message split in parts.
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_verify_and_refuse_tampering_and_replays() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
        let body = br#"{"id":"e","type":"evaluation.succeeded"}"#;
        let header = signature_header(&secret, 1_800_000_000, body);
        let tolerance = Duration::from_secs(300);
        assert!(verify(&secret, &header, body, 1_800_000_100, tolerance));
        assert!(!verify(&secret, &header, b"{}", 1_800_000_100, tolerance));
        assert!(!verify(
            "whsec_other",
            &header,
            body,
            1_800_000_100,
            tolerance
        ));
        assert!(!verify(&secret, &header, body, 1_800_001_000, tolerance));
        assert!(!verify(&secret, "v1=abc", body, 1_800_000_000, tolerance));
        // Another timestamp with the same v1 does not verify.
        let moved = header.replace("t=1800000000", "t=1800000001");
        assert!(!verify(&secret, &moved, body, 1_800_000_000, tolerance));
    }

    #[test]
    fn urls_are_checked_and_errors_name_the_field() {
        assert!(validate_url("url", "https://hooks.example.com/assay?x=1").is_ok());
        assert!(validate_url("url", "http://127.0.0.1:8080/h").is_ok());
        for bad in [
            "ftp://example.com/",
            "javascript:alert(1)",
            "not a url",
            "https://user:pw@example.com/",
            "https://example.com/\u{0}",
            "/relative",
        ] {
            let error = validate_url("webhook_url", bad).unwrap_err();
            assert_eq!(error.field, "webhook_url", "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LENGTH));
        assert!(validate_url("url", &long).is_err());
    }

    #[test]
    fn events_are_checked() {
        assert!(validate_events("events", &["evaluation.failed".to_owned()]).is_ok());
        assert_eq!(
            validate_events("events", &["evaluation.done".to_owned()])
                .unwrap_err()
                .field,
            "events[0]"
        );
        assert!(validate_events("events", &[]).is_err());
        let twice = vec!["promotion.failed".to_owned(), "promotion.failed".to_owned()];
        assert_eq!(
            validate_events("events", &twice).unwrap_err().field,
            "events[1]"
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let settings = DeliverySettings {
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            ..DeliverySettings::default()
        };
        let within = |failed: i32, expected: u64| {
            let delay = settings.delay_after(failed);
            let expected = Duration::from_secs(expected);
            assert!(
                delay >= expected && delay <= expected.mul_f64(1.1),
                "{failed}: {delay:?}"
            );
        };
        within(1, 10);
        within(2, 20);
        within(3, 40);
        within(4, 60);
        within(40, 60);
    }

    #[test]
    fn bodies_carry_the_event_and_the_resource() {
        let (event, resource) = (Uuid::now_v7(), Uuid::now_v7());
        let body = event_body(
            event,
            "evaluation.succeeded",
            Utc::now(),
            "evaluation",
            resource,
            &json!({"passed": 3, "id": "shadowed"}),
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["id"], json!(event));
        assert_eq!(parsed["type"], "evaluation.succeeded");
        assert_eq!(parsed["data"]["object"], "evaluation");
        assert_eq!(parsed["data"]["id"], json!(resource));
        assert_eq!(parsed["data"]["passed"], 3);
    }
}
