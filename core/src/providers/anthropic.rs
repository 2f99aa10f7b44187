//! Anthropic Messages (`POST {base_url}/messages`, `anthropic-version: 2023-06-01`).
//!
//! System messages go to the top-level `system` field; `max_tokens` is
//! required by the API, so [`DEFAULT_MAX_TOKENS`] stands in when the prompt
//! sets none. Anthropic reports cache reads and writes apart from
//! `input_tokens`; [`Usage::input_tokens`] counts all three.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{self, ApiKey};
use super::{Completion, CompletionRequest, Provider, ProviderError, Usage};
use crate::domain::{ChatMessage, ModelParams, Role};

pub const API_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug)]
pub struct AnthropicClient {
    http: reqwest::Client,
    url: String,
    upstream_model: String,
    key: Option<ApiKey>,
    timeout: Duration,
}

impl AnthropicClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        upstream_model: &str,
        key: Option<ApiKey>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/messages", base_url.trim_end_matches('/')),
            upstream_model: upstream_model.to_owned(),
            key,
            timeout,
        }
    }
}

pub fn request_body(model: &str, messages: &[ChatMessage], params: &ModelParams) -> Value {
    let system: Vec<&str> = messages
        .iter()
        .filter(|message| message.role == Role::System)
        .map(|message| message.content.as_str())
        .collect();
    let turns: Vec<Value> = messages
        .iter()
        .filter(|message| message.role != Role::System)
        .map(|message| {
            let role = if message.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            json!({"role": role, "content": message.content})
        })
        .collect();
    let mut body = Map::new();
    body.insert("model".to_owned(), json!(model));
    body.insert(
        "max_tokens".to_owned(),
        json!(params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".to_owned(), json!(system.join("\n\n")));
    }
    body.insert("messages".to_owned(), Value::Array(turns));
    if let Some(temperature) = params.temperature {
        // Anthropic accepts 0..=1; prompts may say up to 2 (OpenAI's range).
        body.insert("temperature".to_owned(), json!(temperature.min(1.0)));
    }
    if let Some(top_p) = params.top_p {
        body.insert("top_p".to_owned(), json!(top_p));
    }
    if let Some(stop) = &params.stop {
        body.insert("stop_sequences".to_owned(), json!(stop));
    }
    Value::Object(body)
}

pub fn parse_response(raw: &http::RawResponse) -> Result<Completion, ProviderError> {
    let body = http::success_body(raw)?;
    if body.get("type").and_then(Value::as_str) == Some("error") {
        return Err(http::classify_error(500, &raw.headers, &raw.body));
    }
    let text: String = body
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let stop_reason = body
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if stop_reason.as_deref() == Some("refusal") && text.is_empty() {
        return Err(ProviderError::ContentFiltered(
            "the model refused to answer".to_owned(),
        ));
    }
    let usage = body.get("usage");
    let number = |name: &str| http::token_count(usage, name);
    let cache_read = number("cache_read_input_tokens");
    let usage = Usage {
        input_tokens: number("input_tokens")
            .saturating_add(cache_read)
            .saturating_add(number("cache_creation_input_tokens")),
        output_tokens: number("output_tokens"),
        cached_tokens: cache_read,
    };
    Ok(Completion {
        text,
        usage,
        finish_reason: stop_reason.as_deref().map(super::normalize_finish_reason),
        rate_hint: http::rate_hint(&raw.headers),
    })
}

#[async_trait]
impl Provider for AnthropicClient {
    fn provider_name(&self) -> &'static str {
        "anthropic"
    }

    fn endpoint(&self) -> &str {
        &self.url
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError> {
        let body = request_body(&self.upstream_model, request.messages, request.params);
        let mut builder = self
            .http
            .post(&self.url)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        if let Some(key) = &self.key {
            builder = builder.header("x-api-key", key.expose());
        }
        let raw = http::send(builder, self.timeout, self.key.as_ref()).await?;
        parse_response(&raw).map_err(|error| http::redact_error(error, self.key.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: &str) -> http::RawResponse {
        http::RawResponse::recorded(status, body)
    }

    /// Recorded from the Anthropic Messages API reference.
    const SUCCESS: &str = r#"{
      "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
      "type": "message",
      "role": "assistant",
      "model": "claude-sonnet-4-20250514",
      "content": [{"type": "text", "text": "Hi! My name is Claude."}],
      "stop_reason": "end_turn",
      "stop_sequence": null,
      "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1800, "service_tier": "standard"}
    }"#;

    #[test]
    fn parses_a_recorded_answer_counting_cache_reads_as_input() {
        let completion = parse_response(&raw(200, SUCCESS)).unwrap();
        assert_eq!(completion.text, "Hi! My name is Claude.");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 3895,
                output_tokens: 503,
                cached_tokens: 1800
            }
        );
    }

    #[test]
    fn parses_recorded_errors() {
        type Expected = fn(&ProviderError) -> bool;
        let cases: [(u16, &str, Expected); 5] = [
            (
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                |error| matches!(error, ProviderError::Auth(_)),
            ),
            (
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
                |error| matches!(error, ProviderError::RateLimited { .. }),
            ),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                |error| matches!(error, ProviderError::Overloaded { .. }),
            ),
            (
                500,
                r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
                |error| matches!(error, ProviderError::Upstream { status: 500, .. }),
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 201234 tokens > 200000 maximum"}}"#,
                |error| matches!(error, ProviderError::ContextTooLong(_)),
            ),
        ];
        for (status, body, expected) in cases {
            let error = parse_response(&raw(status, body)).unwrap_err();
            assert!(expected(&error), "{status}: {error:?}");
        }
    }

    #[test]
    fn system_messages_move_to_the_system_field() {
        let messages = [
            ChatMessage {
                role: Role::System,
                content: "Be brief.".to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: "Hi".to_owned(),
            },
        ];
        let body = request_body("claude", &messages, &ModelParams::default());
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
    }
}
