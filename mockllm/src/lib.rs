//! A mock LLM server speaking three wire formats — OpenAI Chat Completions
//! (`POST /v1/chat/completions`), Anthropic Messages (`POST /v1/messages`)
//! and Google Gemini (`POST /v1beta/models/{model}:generateContent`) — with
//! the built-in mock provider's deterministic answers (the model field takes
//! the same `mock:<options>` names, `errors=` and `latency=` included), so
//! that tests and benchmarks exercise a real HTTP path.
//!
//! Server-wide faults, on top of what the model name asks for: latency and
//! jitter, a share of 500s, a share of 429s with `Retry-After`, a hard
//! requests-per-second cap answered with 429, and an API key that requests
//! must present (a wrong one is echoed back in the 401, as OpenAI does, so
//! that tests can check that clients never leak it).
//!
//! `GET /stats` reports requests per wall-clock second, the most requests
//! seen in any sliding one-second window, the most in flight at once, and
//! counts by status and by model. With `record_requests`, `GET /requests`
//! lists every request (arrival time, model, last user message), so a test
//! can tell which item was called when.
//!
//! Fault draws use a per-server counter, not the request, so that a retried
//! request can succeed.

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use assay_core::domain::{ChatMessage, Role};
use assay_core::providers::Completion;
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
    /// When set, requests must carry this key (`Authorization: Bearer`,
    /// `x-api-key`, `x-goog-api-key` or `api-key`); others get a 401 that
    /// echoes the key they sent.
    pub api_key: Option<String>,
    /// Keep every request for `GET /requests`.
    pub record_requests: bool,
}

#[derive(Default)]
struct ModelStats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
}

/// One request, as `GET /requests` lists it.
struct Recorded {
    /// Milliseconds since the Unix epoch, at arrival.
    at_ms: u64,
    model: String,
    /// The last user message: what identifies a dataset item in tests.
    prompt: String,
    status: u16,
}

#[derive(Default)]
struct Stats {
    /// Requests received, by unix second.
    per_second: BTreeMap<u64, u64>,
    /// Arrivals of the last second, for the sliding-window maximum.
    window: VecDeque<Instant>,
    max_in_any_second: u64,
    /// Answers by HTTP status.
    by_status: BTreeMap<u16, u64>,
    by_model: BTreeMap<String, ModelStats>,
    in_flight: u64,
    max_in_flight: u64,
    recorded: Vec<Recorded>,
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
            .app_data(web::PayloadConfig::new(16 << 20))
            .route("/v1/chat/completions", web::post().to(openai))
            .route("/v1/messages", web::post().to(anthropic))
            .route("/v1beta/models/{target}", web::post().to(gemini))
            .route("/stats", web::get().to(stats))
            .route("/requests", web::get().to(requests))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
    })
    // Load tests keep thousands of connections open.
    .max_connections(100_000)
    .backlog(4096)
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

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How one wire format writes its error bodies.
type ErrorBody = fn(StatusCode, &str) -> Value;

/// The key a request presents, in whichever header its format uses.
fn presented_key(request: &HttpRequest) -> Option<String> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    header("authorization")
        .map(|value| value.trim_start_matches("Bearer ").to_owned())
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| header("api-key"))
}

/// The part every wire format shares: count, check the key, cap, inject
/// faults, wait, answer. Returns the answer, or the response that replaces it.
async fn serve(
    state: &State,
    request: &HttpRequest,
    model: &str,
    messages: &[ChatMessage],
    error_body: ErrorBody,
) -> Result<Completion, HttpResponse> {
    let sequence = state.sequence.fetch_add(1, Ordering::SeqCst);
    let arrived = Instant::now();
    let at_ms = unix_millis();
    let over_cap = {
        let mut stats = state.stats.lock().expect("stats lock");
        let count = stats.per_second.entry(at_ms / 1000).or_insert(0);
        *count += 1;
        let over_cap = state.config.max_rps.is_some_and(|cap| *count > cap);
        while stats
            .window
            .front()
            .is_some_and(|first| arrived.duration_since(*first) >= Duration::from_secs(1))
        {
            stats.window.pop_front();
        }
        stats.window.push_back(arrived);
        stats.max_in_any_second = stats.max_in_any_second.max(stats.window.len() as u64);
        stats.in_flight += 1;
        stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        over_cap
    };
    let outcome = answer(
        state, request, sequence, over_cap, model, messages, error_body,
    )
    .await;
    let status = match &outcome {
        Ok(_) => 200,
        Err(response) => response.status().as_u16(),
    };
    let mut stats = state.stats.lock().expect("stats lock");
    stats.in_flight -= 1;
    *stats.by_status.entry(status).or_insert(0) += 1;
    let per_model = stats.by_model.entry(model.to_owned()).or_default();
    per_model.requests += 1;
    *per_model.by_status.entry(status).or_insert(0) += 1;
    if state.config.record_requests {
        let prompt = messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map(|message| message.content.chars().take(200).collect())
            .unwrap_or_default();
        stats.recorded.push(Recorded {
            at_ms,
            model: model.to_owned(),
            prompt,
            status,
        });
    }
    outcome
}

async fn answer(
    state: &State,
    request: &HttpRequest,
    sequence: u64,
    over_cap: bool,
    model: &str,
    messages: &[ChatMessage],
    error_body: ErrorBody,
) -> Result<Completion, HttpResponse> {
    let config = &state.config;
    if let Some(expected) = &config.api_key {
        let presented = presented_key(request);
        if presented.as_deref() != Some(expected.as_str()) {
            // Echoed in full, as OpenAI's "Incorrect API key provided: ..." does
            // (masked there): the harshest case for a client's redaction.
            let message = match presented {
                Some(key) => format!("Incorrect API key provided: {key}."),
                None => "You didn't provide an API key.".to_owned(),
            };
            return Err(
                HttpResponse::Unauthorized().json(error_body(StatusCode::UNAUTHORIZED, &message))
            );
        }
    }
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
    // The model name's own `errors=` share, drawn per request like a retry would be.
    let attempt = u32::try_from(sequence % u64::from(u32::MAX)).unwrap_or(0);
    if draw(sequence, 2) < config.error_rate || options.fails(messages, attempt) {
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
            "assistant" | "model" => Role::Assistant,
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
        401 => "invalid_api_key",
        429 => "rate_limit_exceeded",
        404 => "model_not_found",
        400 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
}

fn bad_request(error_body: ErrorBody, message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(error_body(StatusCode::BAD_REQUEST, message))
}

async fn openai(state: web::Data<State>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let parsed: OpenAiRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => return bad_request(openai_error, &error.to_string()),
    };
    let messages = match to_chat(&parsed.messages, None) {
        Ok(messages) => messages,
        Err(error) => return bad_request(openai_error, &error),
    };
    match serve(&state, &request, &parsed.model, &messages, openai_error).await {
        Err(response) => response,
        Ok(completion) => HttpResponse::Ok().json(json!({
            "id": format!("chatcmpl-mock-{}", state.sequence.load(Ordering::SeqCst)),
            "object": "chat.completion",
            "created": unix_millis() / 1000,
            "model": parsed.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": null},
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
    #[expect(dead_code, reason = "required by the wire format, unused by the mock")]
    max_tokens: u32,
}

fn anthropic_error(status: StatusCode, message: &str) -> Value {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        404 => "not_found_error",
        400 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

async fn anthropic(
    state: web::Data<State>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let parsed: AnthropicRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => return bad_request(anthropic_error, &error.to_string()),
    };
    let messages = match to_chat(&parsed.messages, parsed.system.as_ref()) {
        Ok(messages) => messages,
        Err(error) => return bad_request(anthropic_error, &error),
    };
    match serve(&state, &request, &parsed.model, &messages, anthropic_error).await {
        Err(response) => response,
        Ok(completion) => HttpResponse::Ok().json(json!({
            "id": format!("msg_mock_{}", state.sequence.load(Ordering::SeqCst)),
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": completion.text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        })),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiRequest {
    contents: Vec<GeminiContent>,
    #[serde(default)]
    system_instruction: Option<GeminiContent>,
}

#[derive(Deserialize)]
struct GeminiContent {
    #[serde(default)]
    role: Option<String>,
    parts: Vec<Value>,
}

fn gemini_error(status: StatusCode, message: &str) -> Value {
    let kind = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
}

/// `POST /v1beta/models/{model}:generateContent`; model names hold colons
/// themselves (`mock:latency=5ms`), so the method is split off the end.
async fn gemini(
    state: web::Data<State>,
    request: HttpRequest,
    target: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(model) = target.strip_suffix(":generateContent") else {
        return HttpResponse::NotFound().json(gemini_error(
            StatusCode::NOT_FOUND,
            "only :generateContent is served",
        ));
    };
    let parsed: GeminiRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => return bad_request(gemini_error, &error.to_string()),
    };
    let wire: Vec<WireMessage> = parsed
        .contents
        .into_iter()
        .map(|content| WireMessage {
            role: content.role.unwrap_or_else(|| "user".to_owned()),
            content: Value::Array(content.parts),
        })
        .collect();
    let system = parsed
        .system_instruction
        .map(|instruction| Value::Array(instruction.parts));
    let messages = match to_chat(&wire, system.as_ref()) {
        Ok(messages) => messages,
        Err(error) => return bad_request(gemini_error, &error),
    };
    match serve(&state, &request, model, &messages, gemini_error).await {
        Err(response) => response,
        Ok(completion) => HttpResponse::Ok().json(json!({
            "candidates": [{
                "content": {"parts": [{"text": completion.text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {
                "promptTokenCount": completion.usage.input_tokens,
                "candidatesTokenCount": completion.usage.output_tokens,
                "totalTokenCount": completion.usage.input_tokens + completion.usage.output_tokens,
            },
            "modelVersion": model,
        })),
    }
}

fn counts(by_status: &BTreeMap<u16, u64>) -> serde_json::Map<String, Value> {
    by_status
        .iter()
        .map(|(status, count)| (status.to_string(), json!(count)))
        .collect()
}

async fn stats(state: web::Data<State>) -> HttpResponse {
    let stats = state.stats.lock().expect("stats lock");
    let total: u64 = stats.per_second.values().sum();
    HttpResponse::Ok().json(json!({
        "requests": total,
        "requests_per_second": stats.per_second.iter().map(|(second, count)| json!([second, count])).collect::<Vec<_>>(),
        "max_requests_in_one_second": stats.per_second.values().max().copied().unwrap_or(0),
        "max_requests_in_any_1s_window": stats.max_in_any_second,
        "in_flight": stats.in_flight,
        "max_in_flight": stats.max_in_flight,
        "by_status": counts(&stats.by_status),
        "by_model": stats.by_model.iter().map(|(model, per_model)| {
            (model.clone(), json!({"requests": per_model.requests, "by_status": counts(&per_model.by_status)}))
        }).collect::<serde_json::Map<_, _>>(),
    }))
}

/// Every recorded request, oldest first: `{"at_ms", "model", "prompt", "status"}`.
async fn requests(state: web::Data<State>) -> HttpResponse {
    if !state.config.record_requests {
        return HttpResponse::NotFound()
            .json(json!({"error": "start the server with --record-requests"}));
    }
    let stats = state.stats.lock().expect("stats lock");
    let list: Vec<Value> = stats
        .recorded
        .iter()
        .map(|request| {
            json!({"at_ms": request.at_ms, "model": request.model, "prompt": request.prompt, "status": request.status})
        })
        .collect();
    HttpResponse::Ok().json(list)
}
