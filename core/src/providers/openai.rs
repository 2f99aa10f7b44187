//! OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`).
//!
//! The same wire format serves OpenAI, Azure OpenAI deployments (key in an
//! `api-key` header, `api-version` in the query), vLLM, Ollama, llama.cpp
//! server, LiteLLM, OpenRouter, Groq, Together, DeepSeek and others: the
//! registry sets the base URL, the key header and extra query parameters.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{self, ApiKey};
use super::{Completion, CompletionRequest, Provider, ProviderError, Usage, tokens};
use crate::domain::{ChatMessage, ModelParams, Role};

/// How the key is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>` (OpenAI and nearly every compatible server).
    Bearer,
    /// `<name>: <key>` (Azure uses `api-key`).
    Named(String),
}

#[derive(Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    upstream_model: String,
    key: Option<ApiKey>,
    key_header: KeyHeader,
    query: Vec<(String, String)>,
    timeout: Duration,
}

impl OpenAiClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        upstream_model: &str,
        key: Option<ApiKey>,
        key_header: KeyHeader,
        query: Vec<(String, String)>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            upstream_model: upstream_model.to_owned(),
            key,
            key_header,
            query,
            timeout,
        }
    }
}

/// The request body for `messages` and `params`.
pub fn request_body(model: &str, messages: &[ChatMessage], params: &ModelParams) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|message| {
            let role = match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": message.content})
        })
        .collect();
    let mut body = Map::new();
    body.insert("model".to_owned(), json!(model));
    body.insert("messages".to_owned(), Value::Array(messages));
    if let Some(temperature) = params.temperature {
        body.insert("temperature".to_owned(), json!(temperature));
    }
    if let Some(top_p) = params.top_p {
        body.insert("top_p".to_owned(), json!(top_p));
    }
    if let Some(max_tokens) = params.max_tokens {
        // `max_tokens`, not `max_completion_tokens`: every compatible server knows it.
        body.insert("max_tokens".to_owned(), json!(max_tokens));
    }
    if let Some(seed) = params.seed {
        body.insert("seed".to_owned(), json!(seed));
    }
    if let Some(stop) = &params.stop {
        body.insert("stop".to_owned(), json!(stop));
    }
    Value::Object(body)
}

/// Parses an answer: the completion, or the error it stands for.
pub fn parse_response(
    raw: &http::RawResponse,
    messages: &[ChatMessage],
) -> Result<Completion, ProviderError> {
    let body = http::success_body(raw)?;
    // Some servers answer 200 with an error object.
    if body.get("error").is_some_and(|error| !error.is_null()) {
        return Err(http::classify_error(500, &raw.headers, &raw.body));
    }
    let choice = body
        .get("choices")
        .and_then(|choices| choices.get(0))
        .ok_or_else(|| ProviderError::Upstream {
            status: raw.status,
            message: "answer has no choices".to_owned(),
            retry_after: None,
        })?;
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = choice.get("message");
    let text = match message.and_then(|message| message.get("content")) {
        Some(Value::String(text)) => text.clone(),
        // Content as a list of parts (some compatible servers).
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if finish_reason.as_deref() == Some("content_filter") && text.is_empty() {
        return Err(ProviderError::ContentFiltered(
            "the answer was withheld by the provider's content filter".to_owned(),
        ));
    }
    if let Some(refusal) = message
        .and_then(|message| message.get("refusal"))
        .and_then(Value::as_str)
        && text.is_empty()
    {
        return Err(ProviderError::ContentFiltered(format!(
            "the model refused: {refusal}"
        )));
    }
    let usage = body.get("usage").filter(|usage| !usage.is_null());
    let number = |value: Option<&Value>| {
        value
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let usage = match usage {
        Some(usage) => Usage {
            input_tokens: number(usage.get("prompt_tokens")).unwrap_or(0),
            output_tokens: number(usage.get("completion_tokens")).unwrap_or(0),
            cached_tokens: number(
                usage
                    .get("prompt_tokens_details")
                    .and_then(|details| details.get("cached_tokens")),
            )
            .unwrap_or(0),
        },
        None => tokens::estimate_usage(messages, &text),
    };
    Ok(Completion {
        text,
        usage,
        finish_reason,
        rate_hint: http::rate_hint(&raw.headers),
    })
}

#[async_trait]
impl Provider for OpenAiClient {
    fn provider_name(&self) -> &'static str {
        "openai"
    }

    fn endpoint(&self) -> &str {
        &self.url
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError> {
        let body = request_body(&self.upstream_model, request.messages, request.params);
        let mut builder = self.http.post(&self.url).json(&body);
        if !self.query.is_empty() {
            builder = builder.query(&self.query);
        }
        if let Some(key) = &self.key {
            builder = match &self.key_header {
                KeyHeader::Bearer => builder.bearer_auth(key.expose()),
                KeyHeader::Named(name) => builder.header(name.as_str(), key.expose()),
            };
        }
        let raw = http::send(builder, self.timeout, self.key.as_ref()).await?;
        parse_response(&raw, request.messages)
            .map_err(|error| http::redact_error(error, self.key.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: &str) -> http::RawResponse {
        http::RawResponse::recorded(status, body)
    }

    fn question() -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: Role::User,
            content: "Say this is a test".to_owned(),
        }]
    }

    /// Recorded from the OpenAI API reference (Chat Completions, non-streaming).
    const SUCCESS: &str = r#"{
      "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
      "object": "chat.completion",
      "created": 1741569952,
      "model": "gpt-4.1-2025-04-14",
      "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "This is a test.", "refusal": null, "annotations": []},
        "logprobs": null,
        "finish_reason": "stop"
      }],
      "usage": {
        "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
      },
      "service_tier": "default"
    }"#;

    #[test]
    fn parses_a_recorded_answer_with_cached_tokens() {
        let completion = parse_response(&raw(200, SUCCESS), &question()).unwrap();
        assert_eq!(completion.text, "This is a test.");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 19,
                output_tokens: 10,
                cached_tokens: 3
            }
        );
    }

    #[test]
    fn estimates_usage_when_a_server_reports_none() {
        let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, friend."},"finish_reason":"stop"}]}"#;
        let completion = parse_response(&raw(200, body), &question()).unwrap();
        assert!(completion.usage.input_tokens > 0 && completion.usage.output_tokens > 0);
    }

    #[test]
    fn parses_recorded_errors() {
        let invalid_key = r#"{"error":{"message":"Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert!(matches!(
            parse_response(&raw(401, invalid_key), &question()),
            Err(ProviderError::Auth(_))
        ));
        let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(matches!(
            parse_response(&raw(429, rate), &question()),
            Err(ProviderError::RateLimited { .. })
        ));
        let filtered = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":5,"completion_tokens":0}}"#;
        assert!(matches!(
            parse_response(&raw(200, filtered), &question()),
            Err(ProviderError::ContentFiltered(_))
        ));
        assert!(matches!(
            parse_response(&raw(200, "not json"), &question()),
            Err(ProviderError::Upstream { .. })
        ));
    }

    #[test]
    fn request_body_carries_only_set_parameters() {
        let params = ModelParams {
            temperature: Some(0.0),
            seed: Some(7),
            ..ModelParams::default()
        };
        let body = request_body("gpt-4o-mini", &question(), &params);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["seed"], 7);
        assert!(body.get("max_tokens").is_none() && body.get("top_p").is_none());
    }

    #[test]
    fn errors_lose_any_echo_of_the_key() {
        let key = ApiKey::new("sk-test-SECRET-0123456789".to_owned());
        let error =
            ProviderError::Auth("Incorrect API key provided: sk-test-SECRET-0123456789".to_owned());
        assert!(
            !http::redact_error(error, Some(&key))
                .to_string()
                .contains("SECRET")
        );
    }
}
