//! `assay-mockllm`: the mock LLM server, for demos, load tests and CI.

use std::time::Duration;

use assay_mockllm::MockConfig;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "assay-mockllm",
    version,
    about = "Mock LLM server (OpenAI, Anthropic and Gemini wire formats)"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "ASSAY_MOCKLLM_BIND", default_value = "127.0.0.1:8090")]
    bind: String,
    /// Added to every request (on top of the model name's own latency).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Up to this much more, drawn per request.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long = "429-rate", default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Seconds in Retry-After.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Hard cap on requests per second; more are answered 429.
    #[arg(long)]
    max_rps: Option<u64>,
    /// Require this API key; a wrong one is answered 401 and echoed back.
    #[arg(long, env = "ASSAY_MOCKLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Keep every request for GET /requests (arrival, model, last user message).
    #[arg(long)]
    record_requests: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    for (name, rate) in [
        ("--error-rate", cli.error_rate),
        ("--429-rate", cli.rate_limit_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1"
        );
    }
    let server = assay_mockllm::build(
        &cli.bind,
        MockConfig {
            latency: cli.latency,
            jitter: cli.jitter,
            error_rate: cli.error_rate,
            rate_limit_rate: cli.rate_limit_rate,
            retry_after_seconds: cli.retry_after,
            max_rps: cli.max_rps,
            api_key: cli.api_key,
            record_requests: cli.record_requests,
        },
    )?;
    eprintln!("assay-mockllm listening on port {}", server.port);
    server.server.await?;
    Ok(())
}
