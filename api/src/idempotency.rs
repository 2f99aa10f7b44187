//! `Idempotency-Key` on POST requests (Stripe's semantics), as one
//! middleware so that no route repeats it.
//!
//! A POST under `/v1` with the header, from a valid key:
//! 1. claims the key for the tenant in PostgreSQL (one `INSERT … ON
//!    CONFLICT`: of concurrent requests exactly one wins) before any work;
//! 2. the winner runs the handler while the body is hashed as it streams
//!    (SHA-256 over method, path and query, content type and body: a 64 MiB
//!    upload is never held a second time), then stores the status, the body
//!    and the `Content-Type`/`Location` of a 2xx/3xx response for 24 hours;
//!    an error response, or a handler that did not read the whole body,
//!    releases the claim instead (errors write nothing, so a retry may redo
//!    them);
//! 3. a later request with the key and the same hash gets that response
//!    again (`Idempotent-Replayed: true`) without the handler running; another
//!    hash gets 422 `idempotency_mismatch`; while the first still runs, 409
//!    `idempotency_in_progress`.
//!
//! A claim whose request died (crash, dropped connection) is released on
//! drop when the process survives, and otherwise taken over by the next
//! request once older than the lock timeout (`ASSAY_IDEMPOTENCY_LOCK_TIMEOUT`).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use assay_core::db::models::idempotency::{self, Claim, StoredResponse};
use assay_core::ids::TenantId;
use futures::{Stream, StreamExt};
use metrics::counter;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::rate_limit::{ResolvedCaller, error_response};
use crate::startup::AppState;

const HEADER: &str = "idempotency-key";
/// Longest key accepted (a UUID is 36).
pub const MAX_KEY_LENGTH: usize = 255;
/// Largest response stored for replay (POST answers are small JSON).
const MAX_STORED_RESPONSE_BYTES: usize = 4 << 20;
/// Response headers kept for replay.
const REPLAYED_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::LOCATION];

pub async fn guard(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let caller = match request.extensions().get::<ResolvedCaller>() {
        Some(ResolvedCaller(Some(caller))) => Some(*caller),
        _ => None,
    };
    let raw_key = request.headers().get(HEADER).cloned();
    let (Some(caller), Some(raw_key), true) = (caller, raw_key, request.method() == Method::POST)
    else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let key = match parse_key(&raw_key) {
        Ok(key) => key,
        Err(error) => return Ok(error_response(request, error)),
    };
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let claim_id = Uuid::now_v7();
    let claimed = async {
        let mut conn = state.pool.get().await?;
        idempotency::claim(
            &mut conn,
            caller.tenant_id,
            &key,
            claim_id,
            state.guards.idempotency_lock_timeout,
        )
        .await
        .map_err(|error| match error {
            // The key changed hands under every attempt (other requests with
            // it claimed and released it meanwhile): it is busy, not missing.
            diesel::result::Error::NotFound => ApiError::IdempotencyInProgress(format!(
                "Idempotency-Key {key:?} is being used by other requests right now; retry later"
            )),
            other => other.into(),
        })
    }
    .await;
    let mut hasher = request_hasher(&request);
    match claimed {
        Err(error) => Ok(error_response(request, error)),
        Ok(Claim::Taken(record)) if !record.is_completed() => {
            counter!("assay_idempotency_requests_total", "outcome" => "in_progress").increment(1);
            Ok(error_response(
                request,
                ApiError::IdempotencyInProgress(format!(
                    "a request with Idempotency-Key {key:?} is still in progress; retry later"
                )),
            ))
        }
        Ok(Claim::Taken(record)) => {
            // Hash this body as it arrives, keeping none of it.
            let mut payload = request.take_payload();
            let mut size = 0usize;
            while let Some(chunk) = payload.next().await {
                let chunk = chunk?;
                size += chunk.len();
                if size > state.max_body_bytes {
                    return Ok(error_response(
                        request,
                        ApiError::PayloadTooLarge(state.max_body_bytes),
                    ));
                }
                hasher.update(&chunk);
            }
            if record.request_hash.as_deref() != Some(hasher.finalize().as_slice()) {
                counter!("assay_idempotency_requests_total", "outcome" => "mismatch").increment(1);
                return Ok(error_response(
                    request,
                    ApiError::IdempotencyMismatch(format!(
                        "Idempotency-Key {key:?} was used with another request (method, path or body); use a new key for a new request"
                    )),
                ));
            }
            counter!("assay_idempotency_requests_total", "outcome" => "replayed").increment(1);
            let (request, _) = request.into_parts();
            Ok(ServiceResponse::new(request, replay(&record)))
        }
        Ok(Claim::Won) => {
            let mut held = HeldClaim {
                state: Some(state.clone()),
                tenant_id: caller.tenant_id,
                key: key.clone(),
                claim_id,
            };
            let body = Rc::new(RefCell::new(BodyHash {
                hasher: Some(hasher),
                digest: None,
            }));
            if has_no_body(&request) {
                body.borrow_mut().finish();
            }
            let payload = request.take_payload();
            request.set_payload(Payload::from(Box::pin(HashingStream {
                inner: payload,
                body: body.clone(),
            })
                as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>));
            let response = next.call(request).await?.map_into_boxed_body();
            let digest = body.borrow().digest.clone();
            let status = response.status();
            let (Some(digest), true) = (digest, status.is_success() || status.is_redirection())
            else {
                counter!("assay_idempotency_requests_total", "outcome" => "released").increment(1);
                held.release().await;
                return Ok(response);
            };
            let (request, response) = response.into_parts();
            let (head, response_body) = response.into_parts();
            let bytes =
                match actix_web::body::to_bytes_limited(response_body, MAX_STORED_RESPONSE_BYTES)
                    .await
                {
                    Ok(Ok(bytes)) => bytes,
                    _ => {
                        held.release().await;
                        return Ok(ServiceResponse::new(
                            request,
                            ApiError::Internal(anyhow::anyhow!(
                                "a POST response could not be kept for Idempotency-Key replay"
                            ))
                            .error_response(),
                        ));
                    }
                };
            let headers: serde_json::Map<String, serde_json::Value> = REPLAYED_HEADERS
                .iter()
                .filter_map(|name| {
                    let value = head.headers().get(name)?.to_str().ok()?;
                    Some((name.as_str().to_owned(), value.into()))
                })
                .collect();
            let stored = async {
                let mut conn = state.pool.get().await?;
                Ok::<_, ApiError>(
                    idempotency::complete(
                        &mut conn,
                        caller.tenant_id,
                        &key,
                        claim_id,
                        &StoredResponse {
                            request_hash: &digest,
                            status: i32::from(head.status().as_u16()),
                            headers: headers.into(),
                            body: &bytes,
                        },
                    )
                    .await?,
                )
            }
            .await;
            held.state = None;
            match stored {
                Ok(true) => {
                    counter!("assay_idempotency_requests_total", "outcome" => "stored").increment(1)
                }
                // Taken over after the lock timeout: the other request's answer stands.
                Ok(false) => {
                    counter!("assay_idempotency_requests_total", "outcome" => "lost_claim")
                        .increment(1)
                }
                Err(error) => {
                    // The work is done; the client gets its answer, and a
                    // retry takes over the claim after the lock timeout.
                    tracing::warn!(error = %error, "could not store an Idempotency-Key response");
                }
            }
            Ok(ServiceResponse::new(
                request,
                head.set_body(bytes).map_into_boxed_body(),
            ))
        }
    }
}

/// A key is 1 to 255 visible ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "Idempotency-Key",
            format!(
                "must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (a UUID is a good key)"
            ),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty()
        || key.len() > MAX_KEY_LENGTH
        || !key.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

/// The hash starts with what names the request besides its body.
fn request_hasher(request: &ServiceRequest) -> Sha256 {
    let mut hasher = Sha256::new();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    for part in [
        request.method().as_str(),
        request.path(),
        request.query_string(),
        content_type,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
}

/// A request that declares no body (no length, or 0, and not chunked): its
/// handler may never poll the payload, and the hash is complete as it is.
fn has_no_body(request: &ServiceRequest) -> bool {
    let headers = request.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match length {
        Some(length) => length == 0,
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn replay(record: &idempotency::IdempotencyRecord) -> HttpResponse {
    let status = record
        .response_status
        .and_then(|status| u16::try_from(status).ok())
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    if let Some(serde_json::Value::Object(headers)) = &record.response_headers {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.insert_header((name, value));
            }
        }
    }
    response.insert_header((
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    ));
    response.body(record.response_body.clone().unwrap_or_default())
}

/// The body's hash, complete once the stream ended.
struct BodyHash {
    hasher: Option<Sha256>,
    digest: Option<Vec<u8>>,
}

impl BodyHash {
    fn finish(&mut self) {
        if let Some(hasher) = self.hasher.take() {
            self.digest = Some(hasher.finalize().to_vec());
        }
    }
}

/// The request's payload, hashed as the handler reads it.
struct HashingStream {
    inner: Payload,
    body: Rc<RefCell<BodyHash>>,
}

impl Stream for HashingStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(context);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(hasher) = self.body.borrow_mut().hasher.as_mut() {
                    hasher.update(chunk);
                }
            }
            Poll::Ready(None) => self.body.borrow_mut().finish(),
            // An unreadable body is not a body the key can stand for.
            Poll::Ready(Some(Err(_))) => self.body.borrow_mut().hasher = None,
            Poll::Pending => {}
        }
        polled
    }
}

/// This request's claim until it is completed or released; dropped
/// unsettled (the client went away mid-request), it is released in the
/// background so a retry need not wait for the lock timeout.
struct HeldClaim {
    state: Option<web::Data<AppState>>,
    tenant_id: TenantId,
    key: String,
    claim_id: Uuid,
}

impl HeldClaim {
    async fn release(&mut self) {
        if let Some(state) = self.state.take() {
            release(state, self.tenant_id, self.key.clone(), self.claim_id).await;
        }
    }
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            actix_web::rt::spawn(release(
                state,
                self.tenant_id,
                std::mem::take(&mut self.key),
                self.claim_id,
            ));
        }
    }
}

async fn release(state: web::Data<AppState>, tenant_id: TenantId, key: String, claim_id: Uuid) {
    let released = async {
        let mut conn = state.pool.get().await?;
        Ok::<_, ApiError>(idempotency::release(&mut conn, tenant_id, &key, claim_id).await?)
    }
    .await;
    if let Err(error) = released {
        tracing::warn!(error = %error, "could not release an Idempotency-Key claim; it expires after the lock timeout");
    }
}
