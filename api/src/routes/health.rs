//! Liveness, readiness and metrics.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::startup::AppState;

/// The process is alive and serving.
#[utoipa::path(
    get,
    operation_id = "health.healthz",
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = HealthBody),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody { status: "ok" })
}

/// PostgreSQL and Redis both answer within two seconds.
#[utoipa::path(
    get,
    operation_id = "health.readyz",
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "PostgreSQL and Redis answer", body = ReadyBody),
        (status = 503, description = "A dependency does not answer", body = ReadyBody),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let limit = Duration::from_secs(2);
    let postgres = tokio::time::timeout(limit, assay_core::db::ping(&state.pool)).await;
    let redis = tokio::time::timeout(limit, async {
        let mut conn = state.redis.get().await?;
        redis::cmd("PING").query_async::<String>(&mut *conn).await?;
        anyhow::Ok(())
    })
    .await;
    // Which dependency is down, not the driver's words (they may name hosts
    // and users): those go to the log.
    let describe = |name: &str, outcome: Result<anyhow::Result<()>, _>| match outcome {
        Ok(Ok(())) => "ok",
        Ok(Err(error)) => {
            tracing::warn!(dependency = name, error = format!("{error:#}"), "not ready");
            "unavailable"
        }
        Err(_) => "timed out",
    };
    let (postgres, redis) = (describe("postgres", postgres), describe("redis", redis));
    let body = ReadyBody { postgres, redis };
    if postgres == "ok" && redis == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(
    get,
    operation_id = "health.metrics",
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, headers(("Location" = String, description = "The new resource"))),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HealthBody {
    /// `ok`.
    status: &'static str,
}

/// Each dependency: `ok`, `unavailable` or `timed out`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReadyBody {
    postgres: &'static str,
    redis: &'static str,
}
