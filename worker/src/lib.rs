//! Assay's worker: takes chunk, promotion, optimization and webhook jobs
//! from Redis (apalis) and runs them.
//!
//! Layout: [`jobs`] holds one module per job type and registers them;
//! [`environment`] is the context jobs share (pools, the LLM client, the
//! queue); [`capacity`] decides how much work the process takes on (LLM
//! permits by priority, and the gate on fetching chunks); [`leases`] renews
//! the leases of the chunks running here and stops canceled ones;
//! [`sweeper`] recovers lost work from PostgreSQL and reports queue depths;
//! [`wake`] fetches as soon as chunks are pushed; [`server`] is the worker's
//! own HTTP port (metrics, health); [`run`] wires it all and runs until
//! SIGTERM. Nothing here speaks the public HTTP API.

pub mod capacity;
pub mod environment;
pub mod jobs;
pub mod leases;
pub mod metrics;
pub mod restarts;
pub mod server;
pub mod sweeper;
pub mod wake;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::Strategy;
use assay_core::config::Settings;
use assay_core::domain::Priority;
use assay_core::providers::ModelCatalog;
use assay_core::providers::cache::ResponseCache;
use assay_core::providers::call::LlmClient;
use assay_core::providers::limits::Limiter;
use assay_core::queue::{JobQueue, VersioningKind};
use tokio::sync::watch;

use crate::capacity::{Backlog, GateLayer, LlmSlots};
use crate::environment::Environment;
use crate::leases::ActiveChunks;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub settings: Settings,
    /// LLM calls in flight in this process, across all chunks.
    pub concurrency: usize,
    /// Chunks this process runs at once, at most, per priority queue (the
    /// backlog gate usually binds first).
    pub jobs: usize,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub bind: String,
    /// On SIGTERM: how long running chunks get to write what they have and hand their job back.
    pub shutdown_timeout: Duration,
    /// How often an idle worker looks for new chunks (pushes also wake it at once).
    pub poll_interval: Duration,
    /// Restarts of the queue consumers (after Redis errors) in a row, with no
    /// healthy period between them ([`restarts`]), before the process gives up
    /// and exits non-zero, so that its supervisor restarts it. Each failing
    /// restart takes about 10 s (the connection's reconnect backoff), so the
    /// default of 30 rides out a Redis outage of about 5 minutes.
    pub max_restarts: usize,
    /// How long cached answers are kept; zero turns the response cache off.
    pub cache_ttl: Duration,
    /// How often the sweeper looks for lost work.
    pub sweep_every: Duration,
    /// How long finished jobs stay in Redis.
    pub job_retention: Duration,
    /// Workers a chunk may take down (crash, or stall past its lease) before
    /// its remaining runs end `errored` instead of moving to the next one.
    pub max_chunk_crashes: i32,
}

/// Runs the worker until SIGTERM or SIGINT (Ok) or until its queue consumers
/// are gone for good (Err).
pub async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let prometheus = assay_core::telemetry::install_prometheus();
    metrics::describe();
    jobs::webhooks::describe();
    let settings = &config.settings;
    // Checked first: a bad registry entry stops the process with a message naming it.
    let catalog = ModelCatalog::from_env(assay_core::providers::registry::Keys::Required)?;
    let pool = assay_core::db::pool(settings.database_url.expose(), settings.database_pool_size)?;
    // Limits and the cache: a few commands per call, from at most
    // `concurrency` calls at once.
    let redis = assay_core::redis_pool::build(
        settings.redis_url.expose(),
        config.concurrency.clamp(4, 64),
    )?;
    let limiter = Limiter::new(redis.clone(), &settings.queue_prefix);
    // Pauses after a 429 reach this worker's calls to unlimited models this way.
    tokio::spawn(
        limiter
            .clone()
            .follow_cool_downs(settings.redis_url.expose().to_owned()),
    );
    let cache = (!config.cache_ttl.is_zero())
        .then(|| ResponseCache::new(redis.clone(), &settings.queue_prefix, config.cache_ttl));
    let llm = Arc::new(LlmClient::new(catalog, Some(limiter), cache));
    let queue = JobQueue::connect(settings.redis_url.expose(), &settings.queue_prefix)
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    let process_name = format!("{host}-{}", std::process::id());
    let backlog = Arc::new(Backlog::default());
    let active = Arc::new(ActiveChunks::default());
    let env = Arc::new(Environment {
        pool: pool.clone(),
        llm,
        queue,
        slots: LlmSlots::new(config.concurrency),
        backlog: backlog.clone(),
        active: active.clone(),
        runs_per_chunk: settings.runs_per_chunk,
        worker_name: process_name.clone(),
        shutdown: shutdown_rx,
        max_chunk_crashes: config.max_chunk_crashes,
    });

    let consuming = Arc::new(AtomicBool::new(true));
    let listener =
        TcpListener::bind(&config.bind).with_context(|| format!("binding {}", config.bind))?;
    let ops_port = listener.local_addr()?.port();
    let ops = server::start(listener, prometheus, pool.clone(), consuming.clone())?;
    tokio::spawn(ops);
    tokio::spawn(active.renew_forever(pool, process_name.clone()));
    tokio::spawn(sweeper::run_forever(
        env.clone(),
        sweeper::SweeperConfig {
            every: config.sweep_every,
            runs_per_chunk: settings.runs_per_chunk,
            job_retention: config.job_retention,
        },
    ));
    tokio::spawn(sweeper::report_forever(env.clone(), Duration::from_secs(1)));
    let wakers = wake::Wakers::default();
    tokio::spawn(wakers.clone().listen(
        settings.redis_url.expose().to_owned(),
        assay_core::queue::wake_channel(&settings.queue_prefix),
    ));

    let conn = assay_core::queue::connect(settings.redis_url.expose())
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    let restarts = Arc::new(restarts::RestartBudget::new(config.max_restarts));
    tokio::spawn(
        restarts
            .clone()
            .watch_redis(redis.clone(), Duration::from_secs(1)),
    );
    // The gate looks one chunk ahead: a configured chunk after a full-size
    // one, a small one (MIN_RUNS_PER_CHUNK) after a chunk cut small and
    // before the first (see GateLayer::for_priority).
    let full_chunk_runs = usize::try_from(settings.runs_per_chunk).unwrap_or(1);
    let small_chunk_runs = usize::try_from(
        assay_core::db::models::chunks::MIN_RUNS_PER_CHUNK.min(settings.runs_per_chunk),
    )
    .unwrap_or(1);
    let mut monitor = Monitor::new();
    // The chunk kind's own state, shared by its three priority consumers.
    let chunk_kind = Arc::new(jobs::chunk::ChunkKind::default());
    for priority in Priority::ALL {
        let storage =
            assay_core::queue::chunk_storage(conn.clone(), &settings.queue_prefix, priority);
        let queue = assay_core::queue::chunk_queue(&settings.queue_prefix, priority);
        let gate = GateLayer::for_priority(
            backlog.clone(),
            priority,
            config.concurrency,
            small_chunk_runs,
            full_chunk_runs,
        );
        let (env, wakers, process_name) = (env.clone(), wakers.clone(), process_name.clone());
        let chunk_kind = chunk_kind.clone();
        let (jobs, poll_interval) = (config.jobs, config.poll_interval);
        monitor = monitor.register(move |restart| {
            let strategy = Strategy::new()
                .apply(wakers.strategy())
                .interval(poll_interval);
            // Unique per process and per restart: a name still heartbeating is
            // refused, and a shared name would hide a dead worker's jobs.
            WorkerBuilder::new(format!("{queue}-{process_name}-{restart}"))
                .backend(storage.clone().poll_with_strategy(strategy))
                .data(env.clone())
                .data(chunk_kind.clone())
                .layer(gate.clone())
                .concurrency(jobs)
                .parallelize(tokio::spawn)
                // Inside the spawn (a later layer is an inner one): outside
                // it, tokio's JoinHandle would take the panic first.
                .layer(jobs::catch_panics())
                .build(jobs::run_chunk)
        });
    }
    // Versioning kinds: one consumer each, on its own queue, with a few
    // slots of its own (their jobs mostly wait for evaluations).
    macro_rules! register_versioning {
        ($kind:expr, $handler:path) => {{
            let kind = $kind;
            let storage =
                assay_core::queue::versioning_storage(conn.clone(), &settings.queue_prefix, kind);
            let queue = assay_core::queue::versioning_queue(&settings.queue_prefix, kind);
            let (env, process_name, poll_interval) =
                (env.clone(), process_name.clone(), config.poll_interval);
            monitor = monitor.register(move |restart| {
                WorkerBuilder::new(format!("{queue}-{process_name}-{restart}"))
                    .backend(
                        storage
                            .clone()
                            .poll_with_strategy(Strategy::new().interval(poll_interval)),
                    )
                    .data(env.clone())
                    .concurrency(jobs::versioning::JOBS_PER_KIND)
                    .parallelize(tokio::spawn)
                    .layer(jobs::catch_panics())
                    .build($handler)
            });
        }};
    }
    register_versioning!(VersioningKind::Promotion, jobs::versioning::run_promotion);
    register_versioning!(
        VersioningKind::Optimization,
        jobs::versioning::run_optimization
    );
    // Webhook attempts: their own queue and slots, fed by the relay from
    // the outbox in PostgreSQL.
    let webhook_kind = Arc::new(jobs::webhooks::WebhookKind::new(
        assay_core::webhooks::DeliverySettings::from_env()?,
    )?);
    let webhook_storage =
        assay_core::webhooks::webhook_storage(conn.clone(), &settings.queue_prefix);
    tokio::spawn(jobs::webhooks::relay(
        env.clone(),
        webhook_storage.clone(),
        config.poll_interval,
        config.job_retention,
    ));
    {
        let queue = assay_core::webhooks::webhook_queue(&settings.queue_prefix);
        let (env, process_name, poll_interval) =
            (env.clone(), process_name.clone(), config.poll_interval);
        let slots = webhook_kind.settings.concurrency;
        let webhook_kind = webhook_kind.clone();
        monitor = monitor.register(move |restart| {
            WorkerBuilder::new(format!("{queue}-{process_name}-{restart}"))
                .backend(
                    webhook_storage
                        .clone()
                        .poll_with_strategy(Strategy::new().interval(poll_interval)),
                )
                .data(env.clone())
                .data(webhook_kind.clone())
                .concurrency(slots)
                .parallelize(tokio::spawn)
                .layer(jobs::catch_panics())
                .build(jobs::webhooks::run_delivery)
        });
    }
    let max_restarts = config.max_restarts;
    let monitor = monitor
        .should_restart({
            let restarts = restarts.clone();
            move |worker, error| {
                // The name without its restart number: one count per consumer.
                let name = worker.name();
                let consumer = name.rsplit_once('-').map_or(name, |(consumer, _)| consumer);
                let restart = restarts.restart(consumer);
                tracing::error!(worker = worker.name(), error = %error, in_a_row = restart.in_a_row, max_restarts, "queue consumer stopped");
                restart.allowed
            }
        })
        .shutdown_timeout(config.shutdown_timeout);

    tracing::info!(
        port = ops_port,
        concurrency = config.concurrency,
        jobs = config.jobs,
        "assay-worker running"
    );
    let signalled = Arc::new(AtomicBool::new(false));
    let signal = {
        let signalled = signalled.clone();
        let consuming = consuming.clone();
        async move {
            wait_for_termination().await?;
            tracing::info!(
                "shutting down: no new chunks; running ones write what they have and go back to the queue"
            );
            signalled.store(true, Ordering::SeqCst);
            consuming.store(false, Ordering::SeqCst);
            let _ = shutdown_tx.send(true);
            Ok(())
        }
    };
    let outcome = monitor.run_with_signal(signal).await;
    consuming.store(false, Ordering::SeqCst);
    outcome.context("queue consumer")?;
    // `run_with_signal` also returns Ok when every consumer died without a signal.
    anyhow::ensure!(
        signalled.load(Ordering::SeqCst),
        "the queue consumers stopped for good after {} restarts ({max_restarts} in a row without a healthy Redis)",
        restarts.total()
    );
    tracing::info!("assay-worker stopped");
    Ok(())
}

async fn wait_for_termination() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => result,
    }
}
