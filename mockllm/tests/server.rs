//! The mock server over real HTTP: both wire formats, their error bodies,
//! injected faults, the requests-per-second cap, and /stats.

use std::time::Duration;

use assay_core::domain::{ChatMessage, Role};
use assay_core::providers::mock::MockOptions;
use assay_mockllm::{MockConfig, build};
use serde_json::{Value, json};

async fn start(config: MockConfig) -> String {
    let server = build("127.0.0.1:0", config).unwrap();
    let url = format!("http://127.0.0.1:{}", server.port);
    tokio::spawn(server.server);
    url
}

async fn post(url: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

async fn stats(url: &str) -> Value {
    reqwest::get(format!("{url}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn speaks_openai_and_anthropic_with_the_mocks_answers() {
    let url = start(MockConfig::default()).await;
    let expected = MockOptions::parse("mock:wrong=0.5").unwrap().answer(
        &[
            ChatMessage {
                role: Role::System,
                content: "Be brief.".to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: "What is q7?".to_owned(),
            },
        ],
        0,
    );
    let (status, _, body) = post(
        &format!("{url}/v1/chat/completions"),
        json!({"model": "mock:wrong=0.5", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is q7?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        json!(expected.text)
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], expected.usage.input_tokens);
    assert_eq!(
        body["usage"]["completion_tokens"],
        expected.usage.output_tokens
    );

    let (status, _, body) = post(
        &format!("{url}/v1/messages"),
        json!({"model": "mock:wrong=0.5", "max_tokens": 64, "system": "Be brief.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": "What is q7?"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["content"][0]["text"],
        json!(expected.text),
        "same answer in both formats"
    );
    assert_eq!(body["usage"]["input_tokens"], expected.usage.input_tokens);
    assert_eq!(body["type"], "message");
}

#[tokio::test]
async fn errors_come_in_each_formats_shape() {
    let url = start(MockConfig::default()).await;
    let (status, _, body) = post(
        &format!("{url}/v1/chat/completions"),
        json!({"model": "gpt-17", "messages": []}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "model_not_found");
    let (status, _, body) = post(
        &format!("{url}/v1/chat/completions"),
        json!({"messages": []}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("model"));
    let (status, _, body) = post(
        &format!("{url}/v1/messages"),
        json!({"model": "mock", "messages": []}),
    )
    .await;
    assert_eq!(
        status, 400,
        "max_tokens is required by the Anthropic format"
    );
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn injects_429s_with_retry_after_and_500s() {
    let limited = start(MockConfig {
        rate_limit_rate: 1.0,
        retry_after_seconds: 2,
        ..MockConfig::default()
    })
    .await;
    let request = json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]});
    let (status, retry_after, body) =
        post(&format!("{limited}/v1/chat/completions"), request.clone()).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("2")));
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    let (status, _, body) = post(
        &format!("{limited}/v1/messages"),
        json!({"model": "mock", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let broken = start(MockConfig {
        error_rate: 0.5,
        ..MockConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        statuses.push(
            post(&format!("{broken}/v1/chat/completions"), request.clone())
                .await
                .0,
        );
    }
    let errors = statuses.iter().filter(|status| **status == 500).count();
    assert!(
        (60..140).contains(&errors),
        "about half answered 500: {errors}"
    );
    let counted = stats(&broken).await;
    assert_eq!(counted["by_status"]["500"], errors);
    assert_eq!(counted["by_status"]["200"], 200 - errors);
    assert_eq!(counted["requests"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_requests_per_second_and_counts_concurrency() {
    let url = start(MockConfig {
        max_rps: Some(10),
        latency: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let request = json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]});
    // Collected, so that all 30 are in flight before the first is awaited.
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let client = client.clone();
            let url = format!("{url}/v1/chat/completions");
            let request = request.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&request)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    let ok = statuses.iter().filter(|status| **status == 200).count();
    let limited = statuses.iter().filter(|status| **status == 429).count();
    assert_eq!(ok + limited, 30);
    // The burst may straddle a second boundary: at most two seconds' worth pass.
    let counted = stats(&url).await;
    assert!(
        (10..=20).contains(&ok),
        "{ok} answered under a cap of 10/s: {counted}"
    );
    assert_eq!(counted["requests"], 30);
    assert_eq!(counted["by_status"]["429"], limited);
    assert!(
        counted["max_in_flight"].as_u64().unwrap() >= 10,
        "{counted}"
    );
}
