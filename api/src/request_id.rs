//! Request ids and the span over each request.
//!
//! Every request gets an id: the client's `X-Request-Id` when it sends a
//! usable one (1 to 128 visible ASCII characters), else a fresh UUIDv7. The
//! response carries it back in `X-Request-Id`. Everything logged while the
//! request is handled is inside one `http_request` span with `request_id`,
//! `method`, `route` (the pattern, never the raw path) and `tenant` (once
//! the key is checked); its last line, `request finished`, adds `status` and
//! `latency_ms`. Submitting an evaluation stores the id with it, and its
//! jobs carry it to the workers' log lines.

use std::future::{Ready, ready};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use tracing::Instrument;
use tracing::field::Empty;

/// The header, in requests and responses.
pub const HEADER: &str = "x-request-id";

/// The id of the request being handled (an extractor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Whether a client's id can be used as it is: short, visible ASCII.
fn usable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic())
}

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Outside the middleware (it always runs in the app), a fresh id.
        let id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string()));
        ready(Ok(id))
    }
}

/// The middleware: takes or makes the id, runs the request in its span,
/// logs the outcome and returns the id.
pub async fn trace(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| usable(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let route = request
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %request.method(),
        route = %route,
        tenant = Empty,
        status = Empty,
        latency_ms = Empty,
    );
    let mut response = next.call(request).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!("request finished");
        } else {
            tracing::info!("request finished");
        }
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn only_short_visible_ids_are_taken_as_they_are() {
        assert!(usable("req-123_ABC.x"));
        assert!(usable(&"a".repeat(128)));
        assert!(!usable(&"a".repeat(129)));
        assert!(!usable(""));
        assert!(!usable("with space"));
        assert!(!usable("line\nbreak"));
        assert!(!usable("é"));
    }
}
