//! A mock LLM server speaking the OpenAI Chat Completions
//! (`POST /v1/chat/completions`) and Anthropic Messages (`POST /v1/messages`)
//! wire formats, with the built-in mock provider's deterministic answers
//! (the `model` field takes the same `mock:<options>` names), so that tests
//! and benchmarks exercise a real HTTP path.
//!
//! Server-wide faults, on top of what the model name asks for: latency and
//! jitter, a share of 500s, a share of 429s with `Retry-After`, and a hard
//! requests-per-second cap answered with 429. `GET /stats` reports requests
//! per second, the most requests seen in flight at once, and counts by status.
//!
//! Fault draws use a per-server counter, not the request, so that a retried
//! request can succeed.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use assay_core::domain::{ChatMessage, Role};
use assay_core::providers::mock::MockOptions;
use serde::Deserialize;
use serde_json::{Value, json};

/// Server-wide behaviour.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    pub latency: Duration,
    pub jitter: Duration,
    /// Share of requests answered 500.
    pub error_rate: f64,
    /// Share of requests answered 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// Seconds sent in `Retry-After`.
    pub retry_after_seconds: u64,
    /// Requests accepted per wall-clock second; more are answered 429.
    pub max_rps: Option<u64>,
}

#[derive(Default)]
struct Stats {
    /// Requests received, by unix second.
    per_second: BTreeMap<u64, u64>,
    /// Answers by HTTP status.
    by_status: BTreeMap<u16, u64>,
    in_flight: u64,
    max_in_flight: u64,
}

struct State {
    config: MockConfig,
    stats: Mutex<Stats>,
    /// Numbers the requests, for fault draws.
    sequence: AtomicU64,
}

/// A running server: its port, and the future to drive or spawn.
pub struct MockServer {
    pub port: u16,
    pub server: Server,
}

/// Binds `address` (port 0 picks one) and builds the server.
pub fn build(address: &str, config: MockConfig) -> anyhow::Result<MockServer> {
    let listener = TcpListener::bind(address)?;
    let port = listener.local_addr()?.port();
    let state = web::Data::new(State {
        config,
        stats: Mutex::new(Stats::default()),
        sequence: AtomicU64::new(0),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().limit(16 << 20))
            .route("/v1/chat/completions", web::post().to(openai))
            .route("/v1/messages", web::post().to(anthropic))
            .route("/stats", web::get().to(stats))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
    })
    .listen(listener)?
    .disable_signals()
    .run();
    Ok(MockServer { port, server })
}

/// A number in [0, 1) for request `sequence` and `purpose` (splitmix64).
fn draw(sequence: u64, purpose: u64) -> f64 {
    let mut z =
        sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ purpose.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The part every wire format shares: count, cap, inject faults, wait, answer.
/// Returns the model's options and answer, or the fault's response.
async fn serve(
    state: &State,
    model: &str,
    messages: &[ChatMessage],
    error_body: impl Fn(StatusCode, &str) -> Value,
) -> Result<assay_core::providers::Completion, HttpResponse> {
    let sequence = state.sequence.fetch_add(1, Ordering::SeqCst);
    let second = unix_second();
    let over_cap = {
        let mut stats = state.stats.lock().expect("stats lock");
        let count = stats.per_second.entry(second).or_insert(0);
        *count += 1;
        let over_cap = state.config.max_rps.is_some_and(|cap| *count > cap);
        stats.in_flight += 1;
        stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        over_cap
    };
    let outcome = answer(state, sequence, over_cap, model, messages, &error_body).await;
    let status = match &outcome {
        Ok(_) => 200,
        Err(response) => response.status().as_u16(),
    };
    let mut stats = state.stats.lock().expect("stats lock");
    stats.in_flight -= 1;
    *stats.by_status.entry(status).or_insert(0) += 1;
    outcome
}

async fn answer(
    state: &State,
    sequence: u64,
    over_cap: bool,
    model: &str,
    messages: &[ChatMessage],
    error_body: &impl Fn(StatusCode, &str) -> Value,
) -> Result<assay_core::providers::Completion, HttpResponse> {
    let config = &state.config;
    let rate_limited = |message: &str| {
        HttpResponse::TooManyRequests()
            .insert_header(("retry-after", config.retry_after_seconds.max(1).to_string()))
            .json(error_body(StatusCode::TOO_MANY_REQUESTS, message))
    };
    if over_cap {
        return Err(rate_limited("requests per second cap exceeded"));
    }
    let options = MockOptions::parse(model).map_err(|error| {
        HttpResponse::NotFound().json(error_body(
            StatusCode::NOT_FOUND,
            &format!("model {model:?}: {error}"),
        ))
    })?;
    let jitter = config.jitter.mul_f64(draw(sequence, 3));
    let delay = config.latency + jitter + options.delay(messages);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if draw(sequence, 1) < config.rate_limit_rate {
        return Err(rate_limited("rate limited (injected)"));
    }
    if draw(sequence, 2) < config.error_rate {
        return Err(HttpResponse::InternalServerError().json(error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server error (injected)",
        )));
    }
    Ok(options.answer(messages, 0))
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Value,
}

/// Text of a message whose content is a string or a list of text parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn to_chat(messages: &[WireMessage], system: Option<&Value>) -> Result<Vec<ChatMessage>, String> {
    let mut chat = Vec::new();
    if let Some(system) = system {
        chat.push(ChatMessage {
            role: Role::System,
            content: text_of(system),
        });
    }
    for message in messages {
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(format!("unknown role {other:?}")),
        };
        chat.push(ChatMessage {
            role,
            content: text_of(&message.content),
        });
    }
    Ok(chat)
}

#[derive(Deserialize)]
struct OpenAiRequest {
    model: String,
    messages: Vec<WireMessage>,
}

fn openai_error(status: StatusCode, message: &str) -> Value {
    let kind = match status.as_u16() {
        429 => "rate_limit_exceeded",
        404 => "model_not_found",
        400 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
}

async fn openai(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let request: OpenAiRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return HttpResponse::BadRequest()
                .json(openai_error(StatusCode::BAD_REQUEST, &error.to_string()));
        }
    };
    let messages = match to_chat(&request.messages, None) {
        Ok(messages) => messages,
        Err(error) => {
            return HttpResponse::BadRequest().json(openai_error(StatusCode::BAD_REQUEST, &error));
        }
    };
    match serve(&state, &request.model, &messages, openai_error).await {
        Err(response) => response,
        Ok(completion) => HttpResponse::Ok().json(json!({
            "id": format!("chatcmpl-mock-{}", state.sequence.load(Ordering::SeqCst)),
            "object": "chat.completion",
            "created": unix_second(),
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason.unwrap_or_else(|| "stop".to_owned()),
            }],
            "usage": {
                "prompt_tokens": completion.usage.input_tokens,
                "completion_tokens": completion.usage.output_tokens,
                "total_tokens": completion.usage.input_tokens + completion.usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        })),
    }
}

#[derive(Deserialize)]
struct AnthropicRequest {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[allow(dead_code, reason = "required by the wire format, unused by the mock")]
    max_tokens: u32,
}

fn anthropic_error(status: StatusCode, message: &str) -> Value {
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        404 => "not_found_error",
        400 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

async fn anthropic(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let request: AnthropicRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return HttpResponse::BadRequest()
                .json(anthropic_error(StatusCode::BAD_REQUEST, &error.to_string()));
        }
    };
    let messages = match to_chat(&request.messages, request.system.as_ref()) {
        Ok(messages) => messages,
        Err(error) => {
            return HttpResponse::BadRequest()
                .json(anthropic_error(StatusCode::BAD_REQUEST, &error));
        }
    };
    match serve(&state, &request.model, &messages, anthropic_error).await {
        Err(response) => response,
        Ok(completion) => HttpResponse::Ok().json(json!({
            "id": format!("msg_mock_{}", state.sequence.load(Ordering::SeqCst)),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": completion.text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
                "cache_read_input_tokens": 0,
            },
        })),
    }
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    let stats = state.stats.lock().expect("stats lock");
    let total: u64 = stats.per_second.values().sum();
    HttpResponse::Ok().json(json!({
        "requests": total,
        "requests_per_second": stats.per_second.iter().map(|(second, count)| json!([second, count])).collect::<Vec<_>>(),
        "max_requests_in_one_second": stats.per_second.values().max().copied().unwrap_or(0),
        "in_flight": stats.in_flight,
        "max_in_flight": stats.max_in_flight,
        "by_status": stats.by_status.iter().map(|(status, count)| (status.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
    }))
}
