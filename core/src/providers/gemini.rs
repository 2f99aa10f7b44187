//! Google Gemini `generateContent`
//! (`POST {base_url}/models/{model}:generateContent`).
//!
//! The key goes in the `x-goog-api-key` header, never in the `?key=` query
//! parameter: URLs end up in logs and error messages. Gemini signals blocked
//! content with a 200 that has no candidate text (`promptFeedback.blockReason`
//! or a `SAFETY`-like `finishReason`); both map to `ContentFiltered`.
//! Thinking tokens are billed as output, so they count as output here.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{self, ApiKey};
use super::{Completion, CompletionRequest, Provider, ProviderError, Usage, tokens};
use crate::domain::{ChatMessage, ModelParams, Role};

const BLOCKING_FINISH_REASONS: [&str; 6] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

#[derive(Debug)]
pub struct GeminiClient {
    http: reqwest::Client,
    url: String,
    key: Option<ApiKey>,
    timeout: Duration,
}

impl GeminiClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        upstream_model: &str,
        key: Option<ApiKey>,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url: format!(
                "{}/models/{upstream_model}:generateContent",
                base_url.trim_end_matches('/')
            ),
            key,
            timeout,
        }
    }
}

pub fn request_body(messages: &[ChatMessage], params: &ModelParams) -> Value {
    let system: Vec<Value> = messages
        .iter()
        .filter(|message| message.role == Role::System)
        .map(|message| json!({"text": message.content}))
        .collect();
    let contents: Vec<Value> = messages
        .iter()
        .filter(|message| message.role != Role::System)
        .map(|message| {
            let role = if message.role == Role::Assistant {
                "model"
            } else {
                "user"
            };
            json!({"role": role, "parts": [{"text": message.content}]})
        })
        .collect();
    let mut config = Map::new();
    if let Some(temperature) = params.temperature {
        config.insert("temperature".to_owned(), json!(temperature));
    }
    if let Some(top_p) = params.top_p {
        config.insert("topP".to_owned(), json!(top_p));
    }
    if let Some(max_tokens) = params.max_tokens {
        config.insert("maxOutputTokens".to_owned(), json!(max_tokens));
    }
    if let Some(seed) = params.seed {
        config.insert("seed".to_owned(), json!(seed));
    }
    if let Some(stop) = &params.stop {
        config.insert("stopSequences".to_owned(), json!(stop));
    }
    let mut body = Map::new();
    body.insert("contents".to_owned(), Value::Array(contents));
    if !system.is_empty() {
        body.insert("systemInstruction".to_owned(), json!({"parts": system}));
    }
    if !config.is_empty() {
        body.insert("generationConfig".to_owned(), Value::Object(config));
    }
    Value::Object(body)
}

pub fn parse_response(
    raw: &http::RawResponse,
    messages: &[ChatMessage],
) -> Result<Completion, ProviderError> {
    let body = http::success_body(raw)?;
    if let Some(reason) = body
        .pointer("/promptFeedback/blockReason")
        .and_then(Value::as_str)
    {
        return Err(ProviderError::ContentFiltered(format!(
            "prompt blocked: {reason}"
        )));
    }
    let candidate = body.pointer("/candidates/0");
    let text: String = candidate
        .and_then(|candidate| candidate.pointer("/content/parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                // Thought summaries are not the answer.
                .filter(|part| part.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let finish_reason = candidate
        .and_then(|candidate| candidate.get("finishReason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if text.is_empty()
        && let Some(reason) = finish_reason.as_deref()
        && BLOCKING_FINISH_REASONS.contains(&reason)
    {
        return Err(ProviderError::ContentFiltered(format!(
            "answer blocked: {reason}"
        )));
    }
    if candidate.is_none() {
        return Err(ProviderError::Upstream {
            status: raw.status,
            message: "answer has no candidates".to_owned(),
            retry_after: None,
        });
    }
    let usage = body.get("usageMetadata");
    let number = |name: &str| http::token_count(usage, name);
    let usage = match usage {
        Some(_) => Usage {
            input_tokens: number("promptTokenCount"),
            output_tokens: number("candidatesTokenCount")
                .saturating_add(number("thoughtsTokenCount")),
            cached_tokens: number("cachedContentTokenCount"),
        },
        None => tokens::estimate_usage(messages, &text),
    };
    Ok(Completion {
        text,
        usage,
        finish_reason: finish_reason.as_deref().map(super::normalize_finish_reason),
        rate_hint: None,
    })
}

#[async_trait]
impl Provider for GeminiClient {
    fn provider_name(&self) -> &'static str {
        "gemini"
    }

    fn endpoint(&self) -> &str {
        &self.url
    }

    async fn complete(&self, request: CompletionRequest<'_>) -> Result<Completion, ProviderError> {
        let body = request_body(request.messages, request.params);
        let mut builder = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.key {
            builder = builder.header("x-goog-api-key", key.expose());
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

    /// Recorded from the Gemini API reference (`generateContent`).
    const SUCCESS: &str = r#"{
      "candidates": [{
        "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
        "finishReason": "STOP",
        "avgLogprobs": -0.2
      }],
      "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 7, "totalTokenCount": 27, "cachedContentTokenCount": 2, "thoughtsTokenCount": 12,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
      "modelVersion": "gemini-2.5-flash",
      "responseId": "abc"
    }"#;

    #[test]
    fn parses_a_recorded_answer_billing_thoughts_as_output() {
        let completion = parse_response(&raw(200, SUCCESS), &[]).unwrap();
        assert_eq!(completion.text, "AI learns patterns from data.");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            completion.usage,
            Usage {
                input_tokens: 8,
                output_tokens: 19,
                cached_tokens: 2
            }
        );
    }

    #[test]
    fn parses_recorded_errors_and_blocks() {
        let exhausted = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert!(matches!(
            parse_response(&raw(429, exhausted), &[]),
            Err(ProviderError::RateLimited { .. })
        ));
        let unavailable = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
        assert!(matches!(
            parse_response(&raw(503, unavailable), &[]),
            Err(ProviderError::Overloaded { .. })
        ));
        let bad_key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
        assert!(matches!(
            parse_response(&raw(400, bad_key), &[]),
            Err(ProviderError::Auth(_))
        ));
        let too_long = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
        assert!(matches!(
            parse_response(&raw(400, too_long), &[]),
            Err(ProviderError::ContextTooLong(_))
        ));
        let blocked = r#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}"#;
        assert!(matches!(
            parse_response(&raw(200, blocked), &[]),
            Err(ProviderError::ContentFiltered(_))
        ));
        let safety = r#"{"candidates":[{"finishReason":"SAFETY","index":0}],"usageMetadata":{"promptTokenCount":8}}"#;
        assert!(matches!(
            parse_response(&raw(200, safety), &[]),
            Err(ProviderError::ContentFiltered(_))
        ));
    }

    #[test]
    fn request_body_uses_gemini_names() {
        let messages = [
            ChatMessage {
                role: Role::System,
                content: "Be brief.".to_owned(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: "Hello".to_owned(),
            },
        ];
        let params = ModelParams {
            max_tokens: Some(64),
            ..ModelParams::default()
        };
        let body = request_body(&messages, &params);
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(body["contents"][0]["role"], "model");
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 64);
    }
}
