//! Builds the application: binds the listener (port 0 works, for tests),
//! wires state and routes, and runs until stopped.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use assay_core::config::{self, BadSetting, Settings};
use assay_core::db::DbPool;
use assay_core::providers::ModelCatalog;
use assay_core::queue::JobQueue;
use assay_core::request_limits::RateLimiter;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::errors::extractors;
use crate::rate_limit::GuardConfig;
use crate::{idempotency, metrics, rate_limit, request_id, routes};

/// What every handler can reach.
pub struct AppState {
    pub pool: DbPool,
    pub redis: deadpool_redis::Pool,
    pub queue: JobQueue,
    pub catalog: ModelCatalog,
    pub prometheus: PrometheusHandle,
    /// Runs per chunk when planning evaluations.
    pub runs_per_chunk: i32,
    /// Most items rendered for a cost estimate at submission.
    pub estimate_max_items: i32,
    /// Largest request body accepted (dataset uploads are the big ones).
    pub max_body_bytes: usize,
    /// How slowly a request body may arrive.
    pub body_timeouts: crate::body::BodyTimeouts,
    /// Rates, quotas and the Idempotency-Key lock timeout.
    pub guards: GuardConfig,
    /// Per-key request rates, shared by every replica through Redis.
    pub rate_limiter: RateLimiter,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub settings: Settings,
    /// `ASSAY_BIND`, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub bind: String,
    /// `ASSAY_MAX_BODY_BYTES`: largest request body (default 64 MiB).
    pub max_body_bytes: usize,
    /// HTTP worker threads (default: one per core).
    pub http_workers: Option<usize>,
    /// `ASSAY_BODY_IDLE_TIMEOUT` (default 30s) and `ASSAY_BODY_TIMEOUT`
    /// (default 10m): the longest pause in a request body, and its longest time.
    pub body_timeouts: crate::body::BodyTimeouts,
    /// Request rates, quotas, Idempotency-Key lock timeout (`ASSAY_RATE_*`, `ASSAY_MAX_*`, `ASSAY_IDEMPOTENCY_LOCK_TIMEOUT`).
    pub guards: GuardConfig,
}

impl ApiConfig {
    /// Reads every setting; a malformed one is an error naming it, never a
    /// silent default.
    pub fn from_env() -> Result<Self, BadSetting> {
        Ok(Self {
            settings: Settings::from_env()?,
            bind: config::var("ASSAY_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            max_body_bytes: config::parse_var(
                "ASSAY_MAX_BODY_BYTES",
                64 << 20,
                "a byte count of at least 1024",
                |bytes| *bytes >= 1024,
            )?,
            http_workers: config::parse_var(
                "ASSAY_HTTP_WORKERS",
                0,
                "a thread count from 1 to 1024",
                |threads| (1..=1024).contains(threads),
            )
            .map(|threads| (threads > 0).then_some(threads))?,
            body_timeouts: crate::body::BodyTimeouts {
                idle: config::duration_var("ASSAY_BODY_IDLE_TIMEOUT", Duration::from_secs(30))?,
                total: config::duration_var("ASSAY_BODY_TIMEOUT", Duration::from_secs(600))?,
            },
            guards: GuardConfig::from_env()?,
        })
    }
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let prometheus = assay_core::telemetry::install_prometheus();
        metrics::describe();
        let pool =
            assay_core::db::pool(settings.database_url.expose(), settings.database_pool_size)?;
        // Checked before anything is bound: a bad registry entry stops the
        // process with a message naming it.
        let catalog = ModelCatalog::from_env(assay_core::providers::registry::Keys::NotNeeded)?;
        let redis = assay_core::redis_pool::build(settings.redis_url.expose(), 8)?;
        let queue = JobQueue::connect(settings.redis_url.expose(), &settings.queue_prefix).await?;
        // The deployment-wide gauges, from the API too: with no worker up,
        // the work left must still be seen.
        tokio::spawn({
            let (pool, queue) = (pool.clone(), queue.clone());
            async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(5));
                loop {
                    ticks.tick().await;
                    assay_core::gauges::report(&pool, &queue).await;
                }
            }
        });
        // Idempotency-Key records live 24 hours; the purge is idempotent, so
        // every replica may run it.
        tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_secs(60));
                loop {
                    ticks.tick().await;
                    purge_idempotency_keys(&pool).await;
                }
            }
        });
        let rate_limiter = RateLimiter::new(redis.clone(), &settings.queue_prefix);
        let state = web::Data::new(AppState {
            pool,
            redis,
            queue,
            catalog,
            prometheus,
            runs_per_chunk: settings.runs_per_chunk,
            estimate_max_items: settings.estimate_max_items,
            max_body_bytes: config.max_body_bytes,
            body_timeouts: config.body_timeouts,
            guards: config.guards.clone(),
            rate_limiter,
        });
        let listener = TcpListener::bind(&config.bind)
            .map_err(|error| anyhow::anyhow!("binding {}: {error}", config.bind))?;
        let port = listener.local_addr()?.port();
        let max_body_bytes = config.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body_bytes)
                        .error_handler(extractors::json),
                )
                .app_data(web::PayloadConfig::new(max_body_bytes))
                .app_data(web::QueryConfig::default().error_handler(extractors::query))
                .app_data(web::PathConfig::default().error_handler(extractors::path))
                // Innermost first: the key is checked and limited before its
                // Idempotency-Key is claimed; NUL in a path or query string is
                // refused before any handler hands it to PostgreSQL.
                .wrap(from_fn(routes::refuse_nul))
                .wrap(from_fn(idempotency::guard))
                .wrap(from_fn(rate_limit::limit))
                .wrap(from_fn(metrics::record))
                // Outermost: the metrics middleware's work is inside the request's span too.
                .wrap(from_fn(request_id::trace))
                .configure(routes::configure)
        })
        .listen(listener)?;
        if let Some(workers) = config.http_workers {
            server = server.workers(workers);
        }
        Ok(Self {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT or SIGTERM (actix handles both: stops accepting,
    /// finishes requests in flight).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn purge_idempotency_keys(pool: &DbPool) {
    let purged = async {
        let mut conn = pool.get().await?;
        let mut total = 0;
        loop {
            let purged =
                assay_core::db::models::idempotency::purge_expired(&mut conn, 1000).await?;
            total += purged;
            if purged < 1000 {
                return anyhow::Ok(total);
            }
        }
    }
    .await;
    match purged {
        Ok(purged) => {
            ::metrics::counter!("assay_idempotency_keys_purged_total").increment(purged as u64)
        }
        Err(error) => tracing::warn!(
            error = format!("{error:#}"),
            "could not purge expired Idempotency-Keys"
        ),
    }
}
