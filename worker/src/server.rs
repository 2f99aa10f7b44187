//! The worker's own HTTP port: `/metrics`, `/healthz` (alive) and `/readyz`
//! (PostgreSQL answers and the job workers are running).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use assay_core::db::DbPool;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
struct OpsState {
    prometheus: PrometheusHandle,
    pool: DbPool,
    /// False once the queue workers have stopped (shutdown, or dead).
    consuming: Arc<AtomicBool>,
}

pub fn start(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    pool: DbPool,
    consuming: Arc<AtomicBool>,
) -> std::io::Result<Server> {
    let state = OpsState {
        prometheus,
        pool,
        consuming,
    };
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/metrics", web::get().to(metrics))
            .route(
                "/healthz",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    let postgres = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        assay_core::db::ping(&state.pool),
    )
    .await;
    let postgres_ok = matches!(postgres, Ok(Ok(())));
    let consuming = state.consuming.load(Ordering::Relaxed);
    let body = serde_json::json!({ "postgres": if postgres_ok { "ok" } else { "unavailable" }, "consuming": consuming });
    if postgres_ok && consuming {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
