//! The built-in mock provider: deterministic answers computed from the input,
//! so that tests can predict every output and every grade, with configurable
//! latency, jitter, wrong answers and injected errors. No network, no key.
//!
//! Model names: `mock` or `mock:<key>=<value>,...` with keys
//! - `latency` (e.g. `200ms`, `1s`; default 0) and `jitter` (added on top,
//!   between 0 and the value, fixed per input);
//! - `errors` (0..=1): share of calls that fail with a transient upstream error,
//!   decided per (input, attempt), so a retry may succeed;
//! - `wrong` (0..=1): share of inputs answered with [`WRONG_ANSWER`] instead of the echo;
//! - `seed`: changes which inputs are wrong or fail;
//! - `price_in`, `price_out`: dollars per million tokens (defaults 1 and 2).
//!
//! The answer is the content of the last user message, echoed ("wrong" inputs
//! excepted). Tokens are counted as white-space separated words: input over
//! all messages, output over the answer.

use std::time::Duration;

use async_trait::async_trait;

use super::{Completion, CompletionRequest, Price, Provider, ProviderError, Usage};
use crate::domain::{ChatMessage, Role};

/// What a "wrong" input is answered with.
pub const WRONG_ANSWER: &str = "I don't know.";

#[derive(Debug, Clone, PartialEq)]
pub struct MockOptions {
    pub latency: Duration,
    pub jitter: Duration,
    pub error_rate: f64,
    pub wrong_rate: f64,
    pub seed: u64,
    pub price: Price,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            wrong_rate: 0.0,
            seed: 0,
            price: Price {
                input_per_million: 1.0,
                output_per_million: 2.0,
            },
        }
    }
}

impl MockOptions {
    /// Parses a model name; the error says what is wrong with it.
    pub fn parse(model: &str) -> Result<Self, String> {
        let options = match model.split_once(':') {
            None if model == "mock" => return Ok(Self::default()),
            Some(("mock", options)) => options,
            _ => return Err("unknown model (known: `mock` and `mock:<options>`)".to_owned()),
        };
        let mut parsed = Self::default();
        for pair in options.split(',').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("option {pair:?} is not key=value"))?;
            let duration =
                || humantime::parse_duration(value).map_err(|error| format!("{key}: {error}"));
            let fraction = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|rate| (0.0..=1.0).contains(rate))
                    .ok_or_else(|| format!("{key} must be a number between 0 and 1"))
            };
            let price = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|price| price.is_finite() && *price >= 0.0)
                    .ok_or_else(|| format!("{key} must be a non-negative number"))
            };
            match key {
                "latency" => parsed.latency = duration()?,
                "jitter" => parsed.jitter = duration()?,
                "errors" => parsed.error_rate = fraction()?,
                "wrong" => parsed.wrong_rate = fraction()?,
                "seed" => {
                    parsed.seed = value
                        .parse()
                        .map_err(|_| "seed must be a non-negative integer".to_owned())?;
                }
                "price_in" => parsed.price.input_per_million = price()?,
                "price_out" => parsed.price.output_per_million = price()?,
                _ => return Err(format!("unknown option {key:?}")),
            }
        }
        if parsed.latency + parsed.jitter > Duration::from_secs(600) {
            return Err("latency + jitter must be at most 10 minutes".to_owned());
        }
        Ok(parsed)
    }

    /// The answer and usage for `messages`, without waiting or failing.
    pub fn answer(&self, messages: &[ChatMessage]) -> Completion {
        let fingerprint = fingerprint(self.seed, messages);
        let text = if unit_interval(fingerprint, 1) < self.wrong_rate {
            WRONG_ANSWER.to_owned()
        } else {
            messages
                .iter()
                .rev()
                .find(|message| message.role == Role::User)
                .map(|message| message.content.clone())
                .unwrap_or_default()
        };
        let usage = Usage {
            input_tokens: messages.iter().map(|message| words(&message.content)).sum(),
            output_tokens: words(&text),
        };
        Completion {
            text,
            usage,
            finish_reason: Some("stop".to_owned()),
        }
    }

    /// Whether attempt `attempt` on `messages` fails.
    pub fn fails(&self, messages: &[ChatMessage], attempt: u32) -> bool {
        self.error_rate > 0.0
            && unit_interval(fingerprint(self.seed, messages), 100 + u64::from(attempt))
                < self.error_rate
    }

    /// How long a call on `messages` takes.
    pub fn delay(&self, messages: &[ChatMessage]) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        self.latency
            + self
                .jitter
                .mul_f64(unit_interval(fingerprint(self.seed, messages), 2))
    }
}

fn words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

/// FNV-1a over the seed and every message: stable across processes and Rust
/// versions, unlike `DefaultHasher`.
fn fingerprint(seed: u64, messages: &[ChatMessage]) -> u64 {
    let mut hash = fnv(0xcbf2_9ce4_8422_2325, &seed.to_le_bytes());
    for message in messages {
        hash = fnv(hash, &[message.role as u8]);
        hash = fnv(hash, message.content.as_bytes());
        hash = fnv(hash, &[0xff]);
    }
    hash
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A number in [0, 1) drawn from `fingerprint` for `purpose`.
fn unit_interval(fingerprint: u64, purpose: u64) -> f64 {
    // splitmix64 finaliser: spreads nearby fingerprints over the whole range.
    let mut z = fingerprint ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug)]
pub struct MockProvider {
    options: MockOptions,
}

impl MockProvider {
    pub fn new(options: MockOptions) -> Self {
        Self { options }
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn provider_name(&self) -> &'static str {
        "mock"
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError> {
        let delay = self.options.delay(request.messages);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.options.fails(request.messages, request.attempt) {
            return Err(ProviderError::Upstream("mock: injected error".to_owned()));
        }
        Ok(self.options.answer(request.messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: Role::System,
                content: "Be brief.".to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: content.to_owned(),
            },
        ]
    }

    #[test]
    fn parses_options_and_rejects_bad_ones() {
        let options =
            MockOptions::parse("mock:latency=200ms,jitter=50ms,errors=0.1,wrong=0.25,seed=7")
                .unwrap();
        assert_eq!(options.latency, Duration::from_millis(200));
        assert_eq!(options.jitter, Duration::from_millis(50));
        assert_eq!(options.error_rate, 0.1);
        assert_eq!(options.wrong_rate, 0.25);
        assert_eq!(options.seed, 7);
        assert_eq!(MockOptions::parse("mock").unwrap(), MockOptions::default());
        for bad in [
            "gpt-4",
            "mock:errors=2",
            "mock:latency=fast",
            "mock:x=1",
            "mock:latency",
            "mockery",
        ] {
            assert!(MockOptions::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn echoes_the_last_user_message_and_counts_words() {
        let completion = MockOptions::default().answer(&user("What is the capital of France?"));
        assert_eq!(completion.text, "What is the capital of France?");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 8,
                output_tokens: 6
            }
        );
    }

    #[test]
    fn wrong_and_error_rates_are_deterministic_and_close_to_the_target() {
        let options = MockOptions::parse("mock:wrong=0.3,errors=0.2").unwrap();
        let inputs: Vec<_> = (0..2000).map(|n| user(&format!("question {n}"))).collect();
        let wrong = inputs
            .iter()
            .filter(|m| options.answer(m).text == WRONG_ANSWER)
            .count();
        let failed_first = inputs.iter().filter(|m| options.fails(m, 1)).count();
        let failed_twice = inputs
            .iter()
            .filter(|m| options.fails(m, 1) && options.fails(m, 2))
            .count();
        assert!((500..700).contains(&wrong), "{wrong}");
        assert!((320..480).contains(&failed_first), "{failed_first}");
        assert!(
            failed_twice < failed_first / 2,
            "retries draw again: {failed_twice}"
        );
        let again = inputs
            .iter()
            .filter(|m| options.answer(m).text == WRONG_ANSWER)
            .count();
        assert_eq!(wrong, again);
    }

    #[tokio::test]
    async fn sleeps_for_its_latency() {
        let provider = MockProvider::new(MockOptions::parse("mock:latency=30ms").unwrap());
        let started = std::time::Instant::now();
        let messages = user("hi");
        let params = crate::domain::ModelParams::default();
        let completion = provider
            .complete(CompletionRequest {
                messages: &messages,
                params: &params,
                attempt: 1,
            })
            .await
            .unwrap();
        assert_eq!(completion.text, "hi");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
