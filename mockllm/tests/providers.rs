//! Assay's provider clients against the mock server over real HTTP: each
//! wire format's answers, usage and error bodies are parsed into the same
//! completion and the same error kinds, and no error leaks the API key.

use std::sync::Arc;
use std::time::Duration;

use assay_core::domain::{ChatMessage, ModelParams, Role};
use assay_core::providers::anthropic::AnthropicClient;
use assay_core::providers::gemini::GeminiClient;
use assay_core::providers::http::{self, ApiKey};
use assay_core::providers::mock::MockOptions;
use assay_core::providers::openai::{KeyHeader, OpenAiClient};
use assay_core::providers::{CompletionRequest, Provider, ProviderError};
use assay_mockllm::{MockConfig, build};

const KEY: &str = "sk-mock-0123456789-right-key";
const WRONG_KEY: &str = "sk-mock-9876543210-WRONG-KEY";

async fn start(config: MockConfig) -> String {
    let server = build("127.0.0.1:0", config).unwrap();
    let url = format!("http://127.0.0.1:{}", server.port);
    tokio::spawn(server.server);
    url
}

/// The three clients for `model` at the server `url`, with `key`.
fn clients(url: &str, model: &str, key: &str, timeout: Duration) -> Vec<Arc<dyn Provider>> {
    let client = http::client();
    let key = || Some(ApiKey::new(key.to_owned()));
    vec![
        Arc::new(OpenAiClient::new(
            client.clone(),
            &format!("{url}/v1"),
            model,
            key(),
            KeyHeader::Bearer,
            Vec::new(),
            timeout,
        )),
        Arc::new(AnthropicClient::new(
            client.clone(),
            &format!("{url}/v1"),
            model,
            key(),
            timeout,
        )),
        Arc::new(GeminiClient::new(
            client,
            &format!("{url}/v1beta"),
            model,
            key(),
            timeout,
        )),
    ]
}

fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: Role::System,
            content: "Be brief.".to_owned(),
        },
        ChatMessage {
            role: Role::User,
            content: "What is the capital of France?".to_owned(),
        },
    ]
}

async fn call(provider: &dyn Provider) -> Result<assay_core::providers::Completion, ProviderError> {
    let messages = messages();
    provider
        .complete(CompletionRequest {
            messages: &messages,
            params: &ModelParams {
                temperature: Some(0.0),
                max_tokens: Some(50),
                ..ModelParams::default()
            },
            attempt: 1,
            repeat: 0,
        })
        .await
}

#[tokio::test]
async fn every_client_reads_the_mocks_answer_and_usage() {
    let url = start(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let expected = MockOptions::parse("mock:wrong=0.3,seed=4")
        .unwrap()
        .answer(&messages(), 0);
    for provider in clients(&url, "mock:wrong=0.3,seed=4", KEY, Duration::from_secs(10)) {
        let completion = call(provider.as_ref())
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", provider.provider_name()));
        assert_eq!(
            completion.text,
            expected.text,
            "{}",
            provider.provider_name()
        );
        assert_eq!(
            completion.usage,
            expected.usage,
            "{}",
            provider.provider_name()
        );
        assert_eq!(
            completion.finish_reason.as_deref(),
            Some("stop"),
            "{}: finish reasons are normalised",
            provider.provider_name()
        );
    }
}

#[tokio::test]
async fn rate_limits_server_errors_and_unknown_models_map_to_one_error_type() {
    let limited = start(MockConfig {
        rate_limit_rate: 1.0,
        retry_after_seconds: 2,
        ..MockConfig::default()
    })
    .await;
    for provider in clients(&limited, "mock", KEY, Duration::from_secs(10)) {
        let error = call(provider.as_ref()).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(2)),
            "{}: {error:?}",
            provider.provider_name()
        );
        assert!(error.is_retryable());
    }

    let broken = start(MockConfig::default()).await;
    for provider in clients(&broken, "mock:errors=1", KEY, Duration::from_secs(10)) {
        let error = call(provider.as_ref()).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::Upstream { status: 500, .. }),
            "{}: {error:?}",
            provider.provider_name()
        );
        assert!(error.is_retryable() && error.is_service_failure());
    }
    for provider in clients(&broken, "gpt-17", KEY, Duration::from_secs(10)) {
        let error = call(provider.as_ref()).await.unwrap_err();
        assert!(
            matches!(&error, ProviderError::BadRequest(message) if message.contains("404")),
            "{}: {error:?}",
            provider.provider_name()
        );
        assert!(!error.is_retryable(), "a 404 is not retried");
    }
}

#[tokio::test]
async fn slow_answers_time_out() {
    let slow = start(MockConfig {
        latency: Duration::from_secs(3),
        ..MockConfig::default()
    })
    .await;
    for provider in clients(&slow, "mock", KEY, Duration::from_millis(200)) {
        let error = call(provider.as_ref()).await.unwrap_err();
        assert_eq!(
            error,
            ProviderError::Timeout,
            "{}",
            provider.provider_name()
        );
    }
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_that_never_shows_the_key() {
    let url = start(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    for provider in clients(&url, "mock", WRONG_KEY, Duration::from_secs(10)) {
        let error = call(provider.as_ref()).await.unwrap_err();
        assert!(
            matches!(error, ProviderError::Auth(_)),
            "{}: {error:?}",
            provider.provider_name()
        );
        let shown = format!("{error} {error:?}");
        assert!(
            shown.contains("Incorrect API key provided") && !shown.contains("WRONG-KEY"),
            "{}: the server echoed the key and the client must redact it: {shown}",
            provider.provider_name()
        );
        assert!(!error.is_retryable() && error.allows_fallback());
    }
}
