//! `GET /v1/evaluations/{id}/events`: server-sent events that follow one
//! evaluation — `status` when its status changes, `progress` when its
//! counts move, then `summary` once it is finished, and the stream ends.
//!
//! The stream polls PostgreSQL (one indexed row, plus one aggregate when the
//! counts moved) at a modest interval. It is pulled: nothing is produced
//! until the client has read what came before, so a slow reader buffers
//! nothing. Each connection has a lifetime; a client that still wants events
//! reconnects (the first events repeat the current state).

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use assay_core::db::models::evaluations::{self, Evaluation, EvaluationStatus};
use assay_core::db::models::results;
use assay_core::ids::{EvaluationId, TenantId};
use metrics::{counter, gauge};
use serde_json::json;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::startup::AppState;

/// How often a stream looks at the evaluation.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A comment line after this much silence, so proxies keep the connection.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// A connection ends after this long (`end` with reason `lifetime`).
const LIFETIME: Duration = Duration::from_secs(15 * 60);

const OPEN_GAUGE: &str = "assay_evaluation_event_streams_open";

/// Counts the stream as open for as long as it lives (dropped when the
/// client goes away too).
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        gauge!(OPEN_GAUGE).increment(1.0);
        counter!("assay_evaluation_event_streams_total").increment(1);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!(OPEN_GAUGE).decrement(1.0);
    }
}

struct Follow {
    state: web::Data<AppState>,
    tenant_id: TenantId,
    id: EvaluationId,
    status: Option<EvaluationStatus>,
    counts: Option<[i32; 4]>,
    started: Instant,
    last_sent: Instant,
    first: bool,
    done: bool,
    _open: OpenStream,
}

fn event(name: &str, data: &serde_json::Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Follow {
    /// The next chunk of the stream, or None once it has ended.
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        loop {
            if !self.first {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            self.first = false;
            if self.started.elapsed() >= LIFETIME {
                self.done = true;
                return Some(event("end", &json!({"reason": "lifetime"})));
            }
            let chunk = match self.look().await {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::warn!(%error, evaluation = %self.id, "evaluation events: reading failed");
                    self.done = true;
                    Some(event("end", &json!({"reason": "error"})))
                }
            };
            if let Some(chunk) = chunk {
                self.last_sent = Instant::now();
                return Some(chunk);
            }
            if self.last_sent.elapsed() >= HEARTBEAT {
                self.last_sent = Instant::now();
                return Some(": heartbeat\n\n".to_owned());
            }
        }
    }

    /// What changed since the last look, as events.
    async fn look(&mut self) -> anyhow::Result<Option<String>> {
        let mut conn = self.state.pool.get().await?;
        let Some(evaluation) = evaluations::get(&mut conn, self.tenant_id, self.id).await? else {
            self.done = true;
            return Ok(Some(event("end", &json!({"reason": "gone"}))));
        };
        let mut out = String::new();
        if self.status != Some(evaluation.status) {
            self.status = Some(evaluation.status);
            out += &event(
                "status",
                &json!({"status": evaluation.status, "run": evaluation.run, "error": evaluation.error}),
            );
        }
        let counts = [
            evaluation.completed,
            evaluation.passed,
            evaluation.failed,
            evaluation.errored,
        ];
        if self.counts != Some(counts) {
            self.counts = Some(counts);
            let progress = results::progress(&mut conn, self.tenant_id, self.id).await?;
            out += &event("progress", &progress_data(&evaluation, progress.cost_usd));
        }
        if evaluation.status.is_terminal() {
            out += &event(
                "summary",
                &json!({"status": evaluation.status, "summary": evaluation.summary}),
            );
            out += &event("end", &json!({"reason": "finished"}));
            self.done = true;
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

fn progress_data(evaluation: &Evaluation, cost_usd: f64) -> serde_json::Value {
    json!({
        "total": evaluation.total,
        "completed": evaluation.completed,
        "passed": evaluation.passed,
        "failed": evaluation.failed,
        "errored": evaluation.errored,
        "cost_usd": cost_usd,
    })
}

#[utoipa::path(
    get,
    operation_id = "events.events",
    path = "/v1/evaluations/{evaluation_id}/events",
    tag = "evaluations",
    params(("evaluation_id" = Uuid, Path, description = "Evaluation id")),
    responses(
        (status = 200, description = "Server-sent events: `progress` on change, `done` at the end, comments as keep-alive", body = String, content_type = "text/event-stream"),
    ),
)]
pub async fn events(
    state: web::Data<AppState>,
    Authenticated(caller): Authenticated,
    path: web::Path<EvaluationId>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    // Checked before the response starts: another tenant's id is a plain 404.
    let evaluation = evaluations::get(&mut conn, caller.tenant_id, *path)
        .await?
        .ok_or(ApiError::NotFound("evaluation"))?;
    drop(conn);
    let follow = Follow {
        state: state.clone(),
        tenant_id: caller.tenant_id,
        id: evaluation.id,
        status: None,
        counts: None,
        started: Instant::now(),
        last_sent: Instant::now(),
        first: true,
        done: false,
        _open: OpenStream::new(),
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let chunk = follow.next().await?;
        Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), follow))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}
