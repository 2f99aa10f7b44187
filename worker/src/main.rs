//! `assay-worker`: runs evaluation jobs from Redis until SIGTERM.

use std::time::Duration;

use assay_core::config::Settings;
use assay_worker::WorkerConfig;
use clap::Parser;

#[derive(Parser)]
#[command(name = "assay-worker", version, about = "Assay's job worker")]
struct Cli {
    /// LLM calls in flight in this process, across all jobs.
    #[arg(long, env = "ASSAY_WORKER_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Chunks run at once, at most, per priority queue (the worker fetches a
    /// chunk only when its calls would soon idle, so this rarely binds).
    #[arg(long, env = "ASSAY_WORKER_JOBS", default_value_t = 32)]
    jobs: usize,
    /// Address of the worker's /metrics, /healthz and /readyz.
    #[arg(long, env = "ASSAY_WORKER_BIND", default_value = "127.0.0.1:9090")]
    bind: String,
    /// On SIGTERM, how long running jobs get to hand their work back.
    #[arg(long, env = "ASSAY_WORKER_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// How often an idle worker looks for new jobs.
    #[arg(long, env = "ASSAY_WORKER_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Restarts of the queue consumer after Redis errors before exiting non-zero.
    #[arg(long, env = "ASSAY_WORKER_MAX_RESTARTS", default_value_t = 30)]
    max_restarts: usize,
    /// How long answers stay in the response cache; 0s turns it off.
    #[arg(long, env = "ASSAY_CACHE_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    cache_ttl: Duration,
    /// How often the sweeper looks for work lost in Redis or by dead workers.
    #[arg(long, env = "ASSAY_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    sweep_interval: Duration,
    /// How long finished jobs stay in Redis before they are deleted.
    #[arg(long, env = "ASSAY_QUEUE_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    job_retention: Duration,
    /// Workers one chunk may take down (a crash, or a stall that loses its
    /// lease) before its remaining runs end `errored`: a poison chunk.
    #[arg(long, env = "ASSAY_MAX_CHUNK_CRASHES", default_value_t = assay_core::db::models::chunks::DEFAULT_MAX_CRASHES, value_parser = clap::value_parser!(i32).range(1..))]
    max_chunk_crashes: i32,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    assay_core::telemetry::init_logging();
    let cli = Cli::parse();
    let outcome = run(cli).await;
    assay_core::telemetry::shutdown_tracing();
    assay_core::telemetry::exit_code(outcome)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(cli.jobs >= 1, "--jobs must be at least 1");
    let mut settings = Settings::from_env()?;
    // Chunks write results and read pages, leases and the sweeper need one
    // each; the LLM calls themselves need none.
    settings.database_pool_size = settings.database_pool_size.max(16);
    assay_worker::run(WorkerConfig {
        settings,
        concurrency: cli.concurrency,
        jobs: cli.jobs,
        bind: cli.bind,
        shutdown_timeout: cli.shutdown_timeout,
        poll_interval: cli.poll_interval,
        max_restarts: cli.max_restarts,
        cache_ttl: cli.cache_ttl,
        sweep_every: cli.sweep_interval,
        job_retention: cli.job_retention,
        max_chunk_crashes: cli.max_chunk_crashes,
    })
    .await
}
