//! The middleware in front of every `/v1` route: resolves the caller's key
//! once (the [`crate::auth::Authenticated`] extractor reuses it), then
//! counts the request against the key's rate, shared by every replica
//! through Redis (see `assay_core::request_limits`).
//!
//! Rules that hold here:
//! - `/healthz`, `/readyz`, `/metrics` and unknown paths outside `/v1` are
//!   never limited, and a request without a valid key is left to the
//!   extractor's 401;
//! - every limited response carries `RateLimit-Limit`, `RateLimit-Remaining`,
//!   `RateLimit-Reset` and `RateLimit-Policy`; a refusal adds `Retry-After`;
//! - **fail open**: when Redis does not answer within [`CHECK_TIMEOUT`] the
//!   request goes through unlimited (counted as `unchecked`). The limit
//!   protects capacity, and PostgreSQL, not Redis, is the record; refusing
//!   every request while Redis restarts would turn a cache outage into an
//!   API outage.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use assay_core::config::{BadSetting, duration_var};
use assay_core::db::models::api_keys::{self, Caller, KeyCheck};
use assay_core::request_limits::{Decision, Rate, RequestClass, RequestLimits};
use metrics::counter;

use crate::errors::ApiError;
use crate::startup::AppState;

/// How long a rate check may wait for Redis before the request goes through unchecked.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// The key a request presented, as the middleware found it (`None`: no
/// valid key). Stored in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedCaller(pub Option<Caller>);

/// The `Authorization: Bearer <key>` token, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
        .filter(|token| !token.is_empty())
}

/// Answers `error` for `request`, as a handler's error would be.
pub fn error_response(request: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    let (request, _) = request.into_parts();
    ServiceResponse::new(request, error.error_response())
}

pub async fn limit(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let under_v1 = request.path() == "/v1" || request.path().starts_with("/v1/");
    let (Some(token), true) = (bearer_token(request.headers()), under_v1) else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let checked = async {
        let mut conn = state.pool.get().await?;
        Ok::<_, ApiError>(api_keys::check(&mut conn, &token).await?)
    }
    .await;
    let check = match checked {
        Ok(check) => check,
        Err(error) => return Ok(error_response(request, error)),
    };
    counter!("assay_api_key_checks_total", "outcome" => check.outcome()).increment(1);
    let KeyCheck::Valid(caller, overrides) = check else {
        request.extensions_mut().insert(ResolvedCaller(None));
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let limits = state.guards.limits.for_tenant(overrides.as_ref());
    request
        .extensions_mut()
        .insert(ResolvedCaller(Some(caller)));
    request.extensions_mut().insert(limits);
    let class = RequestClass::of_method(request.method().as_str());
    let rate = limits.rate(class);
    let decision = tokio::time::timeout(
        CHECK_TIMEOUT,
        state.rate_limiter.check(caller.key_id, class, rate),
    )
    .await;
    match decision {
        Ok(Ok(decision)) if decision.allowed => {
            counter!("assay_rate_limit_requests_total", "class" => class.label(), "outcome" => "accepted")
                .increment(1);
            let mut response = next.call(request).await?.map_into_boxed_body();
            insert_rate_headers(response.headers_mut(), rate, &decision);
            Ok(response)
        }
        Ok(Ok(decision)) => {
            counter!("assay_rate_limit_requests_total", "class" => class.label(), "outcome" => "limited")
                .increment(1);
            let retry_after = ceil_secs(decision.retry_after);
            let mut response = error_response(
                request,
                ApiError::RateLimited(format!(
                    "this key sent more {}s than its limit of {} per minute (burst {}); retry after {retry_after} s",
                    class.label(),
                    rate.per_minute,
                    rate.burst
                )),
            );
            let headers = response.headers_mut();
            insert_rate_headers(headers, rate, &decision);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(response)
        }
        Ok(Err(error)) => {
            counter!("assay_rate_limit_requests_total", "class" => class.label(), "outcome" => "unchecked")
                .increment(1);
            tracing::warn!(error = %error, "rate limit not checked (Redis failed): request let through");
            Ok(next.call(request).await?.map_into_boxed_body())
        }
        Err(_) => {
            counter!("assay_rate_limit_requests_total", "class" => class.label(), "outcome" => "unchecked")
                .increment(1);
            tracing::warn!(
                timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                "rate limit not checked (Redis too slow): request let through"
            );
            Ok(next.call(request).await?.map_into_boxed_body())
        }
    }
}

/// Whole seconds, rounded up (a client waiting that long is then allowed).
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_micros().div_ceil(1_000_000) as u64
}

fn insert_rate_headers(headers: &mut HeaderMap, rate: Rate, decision: &Decision) {
    let pairs = [
        ("ratelimit-limit", rate.per_minute.to_string()),
        (
            "ratelimit-remaining",
            decision.remaining.min(rate.per_minute).to_string(),
        ),
        (
            "ratelimit-reset",
            ceil_secs(decision.reset_after).to_string(),
        ),
        (
            "ratelimit-policy",
            format!("{};w=60;burst={}", rate.per_minute, rate.burst),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// What the guards of this module and of [`crate::idempotency`] need, read
/// from the environment by [`crate::startup::ApiConfig::from_env`].
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Default rates and quotas (tenants may have overrides).
    pub limits: RequestLimits,
    /// `ASSAY_IDEMPOTENCY_LOCK_TIMEOUT` (default 2 min): after this long an
    /// in-progress `Idempotency-Key` claim is considered dead (its request
    /// crashed) and the next request with that key does the work.
    pub idempotency_lock_timeout: Duration,
}

/// `ASSAY_IDEMPOTENCY_LOCK_TIMEOUT` when unset.
pub const DEFAULT_IDEMPOTENCY_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            limits: RequestLimits::default(),
            idempotency_lock_timeout: DEFAULT_IDEMPOTENCY_LOCK_TIMEOUT,
        }
    }
}

impl GuardConfig {
    pub fn from_env() -> Result<Self, BadSetting> {
        let idempotency_lock_timeout = duration_var(
            "ASSAY_IDEMPOTENCY_LOCK_TIMEOUT",
            DEFAULT_IDEMPOTENCY_LOCK_TIMEOUT,
        )?;
        if idempotency_lock_timeout.is_zero() {
            return Err(BadSetting {
                name: "ASSAY_IDEMPOTENCY_LOCK_TIMEOUT".to_owned(),
                value: "0".to_owned(),
                expected: "a positive duration".to_owned(),
            });
        }
        Ok(Self {
            limits: RequestLimits::from_env()?,
            idempotency_lock_timeout,
        })
    }
}

/// The calling tenant's limits (defaults with its overrides), as the
/// middleware found them; an extractor for handlers that enforce quotas.
pub struct TenantRequestLimits(pub RequestLimits);

impl actix_web::FromRequest for TenantRequestLimits {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(
        request: &actix_web::HttpRequest,
        _: &mut actix_web::dev::Payload,
    ) -> Self::Future {
        let limits = request
            .extensions()
            .get::<RequestLimits>()
            .copied()
            .or_else(|| {
                request
                    .app_data::<web::Data<AppState>>()
                    .map(|state| state.guards.limits)
            });
        std::future::ready(
            limits
                .map(TenantRequestLimits)
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no app state"))),
        )
    }
}
