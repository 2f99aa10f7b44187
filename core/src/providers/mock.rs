//! The built-in mock provider: deterministic answers computed from the input,
//! so that tests can predict every output and every grade, with configurable
//! latency, jitter, wrong answers and injected errors. No network, no key.
//!
//! Model names: `mock` or `mock:<key>=<value>,...` with keys
//! - `latency` (e.g. `200ms`, `1s`; default 0) and `jitter` (added on top,
//!   between 0 and the value, fixed per input), each at most [`MAX_DELAY`];
//! - `errors` (0..=1): share of calls that fail with a transient upstream error,
//!   decided per (input, attempt), so a retry may succeed;
//! - `wrong` (0..=1): share of inputs answered with [`WRONG_ANSWER`] instead of the echo;
//! - `seed`: changes which inputs are wrong or fail;
//! - `judge=garbage`: as a judge, answer text no grader can parse;
//! - `strict=true`: answer [`WRONG_ANSWER`] unless some message contains
//!   [`MOCK_FIX`] (what the mock optimizer proposes, see below);
//! - `price_in`, `price_out`: dollars per million tokens (defaults 1 and 2).
//!
//! The answer is the content of the last user message, echoed ("wrong" inputs
//! excepted; which inputs are wrong also depends on the repeat index, so
//! repeated runs can disagree). Tokens are counted as white-space separated
//! words: input over all messages, output over the answer.
//!
//! Asked by a model-graded grader (its system message starts with
//! [`JUDGE_MARKER`]), the mock judges by rules a test can compute by hand:
//! - `llm-rubric`: the score is the share of the rubric's words (lowercased,
//!   alphanumeric) that occur among the output's words; pass at 0.5;
//! - `llm-classify`: the first label (in the given order) that occurs in the
//!   output, case-insensitively, else the last label;
//! - `factuality`: C when output and reference are equal (case and outer
//!   white space aside), B when the output contains the reference, A when the
//!   reference contains the output, D otherwise.
//!
//! Asked by an optimization round (its system message starts with
//! [`OPTIMIZER_MARKER`]), the mock plays the optimizer. It reads the parent
//! prompt (`<prompt>`, a JSON list of messages), the number of proposals K
//! (`<count>`) and the seed s (`<seed>`) from the meta-prompt, and answers
//! `{"candidates": [...]}` with K proposals; with w = s mod K, proposal
//! - w is the fix: the parent with `" " + MOCK_FIX` appended to its first
//!   system message (a system message `MOCK_FIX` is put first when it has
//!   none); when the parent has the fix already, `" Be concise."` is
//!   appended instead;
//! - (w + 1) mod K, when K >= 2, does not compile: `" {{ broken"` appended
//!   to the first message;
//! - (w + 2) mod K, when K >= 3, reads an unknown variable: `" {{
//!   mock_unknown }}"` appended to the first message;
//! - every other index i is valid without the fix: `" Variant i."` appended
//!   to the first message.
//!
//! So with `strict=true` generators, the fix passes every item the echo
//! passes, and every other valid proposal fails like its parent.

use std::time::Duration;

use async_trait::async_trait;

use super::{Completion, CompletionRequest, Price, Provider, ProviderError, Usage};
use crate::domain::{ChatMessage, Role};
pub use crate::graders::model_graded::JUDGE_MARKER;
use crate::graders::model_graded::{judge_kind, read_section};
pub use crate::versioning::optimizer::OPTIMIZER_MARKER;

/// Longest `latency`, and longest `jitter`, a mock model may have.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// What a "wrong" input is answered with.
pub const WRONG_ANSWER: &str = "I don't know.";

/// What a `strict=true` mock needs to see in a prompt to answer right, and
/// what the mock optimizer's fix proposal adds.
pub const MOCK_FIX: &str = "Answer exactly.";

#[derive(Debug, Clone, PartialEq)]
pub struct MockOptions {
    pub latency: Duration,
    pub jitter: Duration,
    pub error_rate: f64,
    pub wrong_rate: f64,
    pub seed: u64,
    pub price: Price,
    /// As a judge, answer unparseable text.
    pub judge_garbage: bool,
    /// Answer wrong unless a message contains [`MOCK_FIX`].
    pub strict: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            wrong_rate: 0.0,
            seed: 0,
            judge_garbage: false,
            strict: false,
            price: Price {
                input_per_million: 1.0,
                output_per_million: 2.0,
                cached_input_per_million: None,
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
            // Capped: a tenant's mock must not hold a worker's call slots for minutes.
            let duration = || {
                let duration =
                    humantime::parse_duration(value).map_err(|error| format!("{key}: {error}"))?;
                if duration > MAX_DELAY {
                    return Err(format!(
                        "{key} must be at most {}",
                        humantime::format_duration(MAX_DELAY)
                    ));
                }
                Ok(duration)
            };
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
                "judge" => {
                    parsed.judge_garbage = match value {
                        "garbage" => true,
                        "rules" => false,
                        _ => return Err("judge must be `rules` or `garbage`".to_owned()),
                    }
                }
                "strict" => {
                    parsed.strict = value
                        .parse()
                        .map_err(|_| "strict must be `true` or `false`".to_owned())?;
                }
                "price_in" => parsed.price.input_per_million = price()?,
                "price_out" => parsed.price.output_per_million = price()?,
                _ => return Err(format!("unknown option {key:?}")),
            }
        }
        Ok(parsed)
    }

    /// The answer and usage for `messages` in run `repeat` (0 for the first),
    /// without waiting or failing.
    pub fn answer(&self, messages: &[ChatMessage], repeat: u32) -> Completion {
        let fingerprint = fingerprint(self.seed, messages);
        // Run 0 draws with purpose 1, as before repeats existed; later runs draw anew.
        let wrong_purpose = 1 + 7919 * u64::from(repeat);
        let text = if let Some(kind) = judge_kind(messages) {
            self.judge(kind, messages)
        } else if is_optimizer(messages) {
            optimize(messages)
        } else if unit_interval(fingerprint, wrong_purpose) < self.wrong_rate
            || (self.strict
                && !messages
                    .iter()
                    .any(|message| message.content.contains(MOCK_FIX)))
        {
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
            cached_tokens: 0,
        };
        Completion {
            text,
            usage,
            finish_reason: Some("stop".to_owned()),
            rate_hint: None,
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

impl MockOptions {
    fn judge(&self, kind: &str, messages: &[ChatMessage]) -> String {
        if self.judge_garbage {
            return "Hmm, hard to say.".to_owned();
        }
        let request = messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map(|message| message.content.as_str())
            .unwrap_or_default();
        let output = read_section(request, "output").unwrap_or_default();
        match kind {
            "llm-rubric" => {
                let score =
                    rubric_score(read_section(request, "rubric").unwrap_or_default(), output);
                serde_json::json!({"score": score, "pass": score >= 0.5, "reason": "mock judge: share of rubric words found"}).to_string()
            }
            "llm-classify" => {
                let labels: Vec<&str> = read_section(request, "labels")
                    .unwrap_or_default()
                    .lines()
                    .collect();
                let lowered = output.to_lowercase();
                let label = labels
                    .iter()
                    .find(|label| lowered.contains(&label.to_lowercase()))
                    .or(labels.last())
                    .copied()
                    .unwrap_or_default();
                serde_json::json!({"label": label, "reason": "mock judge: first label in the output"}).to_string()
            }
            "factuality" => {
                let reference = read_section(request, "reference")
                    .unwrap_or_default()
                    .trim()
                    .to_lowercase();
                let output = output.trim().to_lowercase();
                let choice = if output == reference {
                    "C"
                } else if output.contains(&reference) {
                    "B"
                } else if reference.contains(&output) {
                    "A"
                } else {
                    "D"
                };
                serde_json::json!({"choice": choice, "reason": "mock judge: containment"})
                    .to_string()
            }
            _ => "unknown judge".to_owned(),
        }
    }
}

fn is_optimizer(messages: &[ChatMessage]) -> bool {
    messages.iter().any(|message| {
        message.role == Role::System && message.content.starts_with(OPTIMIZER_MARKER)
    })
}

/// The mock optimizer's answer, by the rules in the module docs.
fn optimize(messages: &[ChatMessage]) -> String {
    let request = messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User)
        .map(|message| message.content.as_str())
        .unwrap_or_default();
    let number = |tag: &str| -> u64 {
        read_section(request, tag)
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    };
    let (count, seed) = (number("count").clamp(1, 64), number("seed"));
    let parent: Vec<ChatMessage> = read_section(request, "prompt")
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let fix = seed % count;
    let appended = |suffix: &str| -> Vec<ChatMessage> {
        let mut messages = parent.clone();
        if let Some(first) = messages.first_mut() {
            first.content.push_str(suffix);
        }
        messages
    };
    let candidates: Vec<serde_json::Value> = (0..count)
        .map(|index| {
            let (messages, rationale) = if index == fix {
                let mut messages = parent.clone();
                if parent
                    .iter()
                    .any(|message| message.content.contains(MOCK_FIX))
                {
                    messages = appended(" Be concise.");
                } else if let Some(system) = messages
                    .iter_mut()
                    .find(|message| message.role == Role::System)
                {
                    system.content.push(' ');
                    system.content.push_str(MOCK_FIX);
                } else {
                    messages.insert(
                        0,
                        ChatMessage {
                            role: Role::System,
                            content: MOCK_FIX.to_owned(),
                        },
                    );
                }
                (messages, "mock: ask for exact answers".to_owned())
            } else if count >= 2 && index == (fix + 1) % count {
                (
                    appended(" {{ broken"),
                    "mock: a template that does not compile".to_owned(),
                )
            } else if count >= 3 && index == (fix + 2) % count {
                (
                    appended(" {{ mock_unknown }}"),
                    "mock: an unknown variable".to_owned(),
                )
            } else {
                (
                    appended(&format!(" Variant {index}.")),
                    format!("mock: variant {index}"),
                )
            };
            serde_json::json!({ "messages": messages, "rationale": rationale })
        })
        .collect();
    serde_json::json!({ "candidates": candidates }).to_string()
}

/// The mock judge's `llm-rubric` score: the share of the rubric's words found in the output.
pub fn rubric_score(rubric: &str, output: &str) -> f64 {
    let words = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (rubric, output) = (words(rubric), words(output));
    if rubric.is_empty() {
        return 0.0;
    }
    rubric.intersection(&output).count() as f64 / rubric.len() as f64
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
    /// The model name it serves, for its own call counter.
    name: String,
    options: MockOptions,
}

impl MockProvider {
    pub fn new(name: &str, options: MockOptions) -> Self {
        Self {
            name: name.to_owned(),
            options,
        }
    }
}

#[async_trait]
impl Provider for MockProvider {
    fn provider_name(&self) -> &'static str {
        "mock"
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError> {
        // Counted by the mock itself, as a mock server would count requests:
        // tests use it to prove that a path made no call at all.
        metrics::counter!("assay_mock_calls_total", "model" => self.name.clone()).increment(1);
        let delay = self.options.delay(request.messages);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.options.fails(request.messages, request.attempt) {
            return Err(ProviderError::Upstream {
                status: 500,
                message: "mock: injected error".to_owned(),
                retry_after: None,
            });
        }
        Ok(self.options.answer(request.messages, request.repeat))
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
    fn delays_are_capped_and_cannot_overflow() {
        // This one once panicked adding the two durations.
        let error = MockOptions::parse("mock:latency=18446744073709551615s,jitter=1s").unwrap_err();
        assert!(error.contains("latency must be at most 1m"), "{error}");
        let error = MockOptions::parse("mock:jitter=61s").unwrap_err();
        assert!(error.contains("jitter must be at most 1m"), "{error}");
        let options = MockOptions::parse("mock:latency=60s,jitter=60s").unwrap();
        assert!(options.delay(&user("x")) <= Duration::from_secs(120));
    }

    #[test]
    fn echoes_the_last_user_message_and_counts_words() {
        let completion = MockOptions::default().answer(&user("What is the capital of France?"), 0);
        assert_eq!(completion.text, "What is the capital of France?");
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 8,
                output_tokens: 6,
                cached_tokens: 0,
            }
        );
    }

    #[test]
    fn wrong_and_error_rates_are_deterministic_and_close_to_the_target() {
        let options = MockOptions::parse("mock:wrong=0.3,errors=0.2").unwrap();
        let inputs: Vec<_> = (0..2000).map(|n| user(&format!("question {n}"))).collect();
        let wrong = inputs
            .iter()
            .filter(|m| options.answer(m, 0).text == WRONG_ANSWER)
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
            .filter(|m| options.answer(m, 0).text == WRONG_ANSWER)
            .count();
        assert_eq!(wrong, again);
    }

    #[test]
    fn repeats_draw_anew_but_run_zero_is_stable() {
        let options = MockOptions::parse("mock:wrong=0.5").unwrap();
        let inputs: Vec<_> = (0..400).map(|n| user(&format!("question {n}"))).collect();
        let differ = inputs
            .iter()
            .filter(|m| {
                (options.answer(m, 0).text == WRONG_ANSWER)
                    != (options.answer(m, 1).text == WRONG_ANSWER)
            })
            .count();
        assert!(
            (120..280).contains(&differ),
            "about half the inputs change between runs: {differ}"
        );
    }

    #[test]
    fn judges_by_rules_a_test_can_follow() {
        assert_eq!(
            rubric_score("mentions Paris, France", "I love paris"),
            1.0 / 3.0
        );
        assert_eq!(rubric_score("", "x"), 0.0);
        let judge = |kind: &str, user: String| {
            let messages = vec![
                ChatMessage {
                    role: Role::System,
                    content: format!("{JUDGE_MARKER}{kind}] grade"),
                },
                ChatMessage {
                    role: Role::User,
                    content: user,
                },
            ];
            MockOptions::default().answer(&messages, 0).text
        };
        let rubric = judge(
            "llm-rubric",
            "<rubric>\nparis\n</rubric>\n<output>\nParis!\n</output>\n".to_owned(),
        );
        assert!(rubric.contains("\"score\":1.0"), "{rubric}");
        let label = judge(
            "llm-classify",
            "<labels>\nyes\nno\n</labels>\n<output>\nNo way\n</output>\n".to_owned(),
        );
        assert!(label.contains("\"label\":\"no\""), "{label}");
        let fact = judge(
            "factuality",
            "<reference>\nParis\n</reference>\n<output>\nparis \n</output>\n".to_owned(),
        );
        assert!(fact.contains("\"choice\":\"C\""), "{fact}");
        let garbage = MockOptions::parse("mock:judge=garbage").unwrap();
        let messages = vec![ChatMessage {
            role: Role::System,
            content: format!("{JUDGE_MARKER}llm-rubric] x"),
        }];
        assert_eq!(garbage.answer(&messages, 0).text, "Hmm, hard to say.");
    }

    #[test]
    fn plays_the_optimizer_by_its_rules() {
        use crate::versioning::optimizer;
        let parent = crate::domain::PromptContent {
            messages: user("{{ q }}"),
            params: crate::domain::ModelParams::default(),
        };
        let shape = crate::domain::DatasetShape {
            variables: vec!["q".to_owned()],
            all_expected: true,
            every_item_graded: false,
        };
        let messages = optimizer::messages(&parent, &shape, &[], 4, 5).unwrap();
        let answer = MockOptions::default().answer(&messages, 0).text;
        let proposals = optimizer::parse(&answer, 4).unwrap();
        let checked = optimizer::check_all(&proposals, &parent, &shape);
        // w = 5 mod 4 = 1: 1 is the fix, 2 does not compile, 3 reads an unknown variable.
        assert!(checked[0].is_ok());
        let fix = checked[1].as_ref().unwrap();
        assert_eq!(fix.messages[0].content, format!("Be brief. {MOCK_FIX}"));
        assert!(checked[2].is_err() && checked[3].is_err());
        let strict = MockOptions::parse("mock:strict=true").unwrap();
        assert_eq!(strict.answer(&user("hi"), 0).text, WRONG_ANSWER);
        assert_eq!(strict.answer(&fix.messages, 0).text, "{{ q }}");
    }

    #[tokio::test]
    async fn sleeps_for_its_latency() {
        let provider = MockProvider::new(
            "mock:latency=30ms",
            MockOptions::parse("mock:latency=30ms").unwrap(),
        );
        let started = std::time::Instant::now();
        let messages = user("hi");
        let params = crate::domain::ModelParams::default();
        let completion = provider
            .complete(CompletionRequest {
                messages: &messages,
                params: &params,
                attempt: 1,
                repeat: 0,
            })
            .await
            .unwrap();
        assert_eq!(completion.text, "hi");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
