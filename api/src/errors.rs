//! The API's one error type, rendered as RFC 9457 problem details
//! (`application/problem+json`) with a stable machine-readable `code`.
//!
//! One table (`ApiError::code_and_status`) maps each error to its code and
//! status. Anything unexpected is logged once, here, and becomes a 500 that
//! says nothing about internals.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use assay_core::domain::InvalidInput;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("no route for {0}")]
    NoRoute(String),
    /// A path that exists, with a method it does not serve: `allow` lists those it does.
    #[error("method {method} is not allowed here; allowed: {}", allow.join(", "))]
    MethodNotAllowed {
        method: String,
        allow: Vec<&'static str>,
    },
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Invalid(InvalidInput),
    #[error("{0}")]
    Conflict(String),
    /// A compare-and-set that lost: the body carries what is there now as `current`.
    #[error("{0}")]
    Stale(String, serde_json::Value),
    #[error("{0}")]
    Forbidden(String),
    /// The cost estimate's lower bound passes a budget.
    #[error("{0}")]
    OverBudget(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The client sent its body too slowly (see `BodyTimeouts`).
    #[error("{0}")]
    BodyTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// The key sent more requests than its rate allows (the middleware adds `Retry-After`).
    #[error("{0}")]
    RateLimited(String),
    /// An evaluation with more runs than the tenant's quota allows.
    #[error("{0}")]
    RunsQuotaExceeded(String),
    /// The tenant already has its quota of evaluations queued or running.
    #[error("{0}")]
    ActiveEvaluationsQuotaExceeded(String),
    /// An `Idempotency-Key` reused with another request.
    #[error("{0}")]
    IdempotencyMismatch(String),
    /// An `Idempotency-Key` whose first request is still running.
    #[error("{0}")]
    IdempotencyInProgress(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The one table of codes and statuses.
    fn code_and_status(&self) -> (&'static str, StatusCode) {
        match self {
            ApiError::Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            ApiError::NotFound(_) | ApiError::NoRoute(_) => ("not_found", StatusCode::NOT_FOUND),
            ApiError::MethodNotAllowed { .. } => {
                ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED)
            }
            ApiError::MalformedJson(_) => ("malformed_json", StatusCode::BAD_REQUEST),
            ApiError::InvalidQuery(_) => ("invalid_query", StatusCode::BAD_REQUEST),
            ApiError::Invalid(_) => ("invalid_input", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::Conflict(_) | ApiError::Stale(..) => ("conflict", StatusCode::CONFLICT),
            ApiError::Forbidden(_) => ("forbidden", StatusCode::FORBIDDEN),
            ApiError::OverBudget(_) => ("over_budget", StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            ApiError::PayloadTooLarge(_) => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::BodyTimeout(_) => ("body_timeout", StatusCode::REQUEST_TIMEOUT),
            ApiError::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            ApiError::RateLimited(_) => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            ApiError::RunsQuotaExceeded(_) => (
                "quota_runs_per_evaluation",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ApiError::ActiveEvaluationsQuotaExceeded(_) => {
                ("quota_active_evaluations", StatusCode::TOO_MANY_REQUESTS)
            }
            ApiError::IdempotencyMismatch(_) => {
                ("idempotency_mismatch", StatusCode::UNPROCESSABLE_ENTITY)
            }
            ApiError::IdempotencyInProgress(_) => ("idempotency_in_progress", StatusCode::CONFLICT),
            ApiError::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(InvalidInput::new(field, message))
    }
}

/// Every code with its status, for the OpenAPI document; a test checks it
/// against [`ApiError::code_and_status`].
pub const CODES: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("invalid_query", 400),
    ("unauthorized", 401),
    ("forbidden", 403),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("body_timeout", 408),
    ("conflict", 409),
    ("idempotency_in_progress", 409),
    ("payload_too_large", 413),
    ("unsupported_media_type", 415),
    ("invalid_input", 422),
    ("over_budget", 422),
    ("quota_runs_per_evaluation", 422),
    ("idempotency_mismatch", 422),
    ("rate_limited", 429),
    ("quota_active_evaluations", 429),
    ("internal", 500),
    ("unavailable", 503),
];

impl From<InvalidInput> for ApiError {
    fn from(invalid: InvalidInput) -> Self {
        ApiError::Invalid(invalid)
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => ApiError::NotFound("resource"),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<assay_core::db::models::datasets::CreateError> for ApiError {
    fn from(error: assay_core::db::models::datasets::CreateError) -> Self {
        use assay_core::db::models::datasets::CreateError;
        match error {
            CreateError::Database(error) => ApiError::from(error),
            CreateError::Abandoned => {
                ApiError::Internal(anyhow::anyhow!("the upload ended without its last batch"))
            }
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        // The driver's words stay in the log: they may name hosts and users.
        tracing::warn!(error = %error, "no database connection");
        let reason = match error {
            diesel_async::pooled_connection::deadpool::PoolError::Timeout(_) => {
                "timed out waiting for a connection"
            }
            _ => "cannot connect",
        };
        ApiError::Unavailable(format!("the database is unavailable ({reason})"))
    }
}

/// RFC 9457 body, plus `code` and, for invalid input, the offending `field`.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// For a lost compare-and-set: the current state (e.g. the branch head).
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<&'a serde_json::Value>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code_and_status().1
    }

    fn error_response(&self) -> HttpResponse {
        let (code, status) = self.code_and_status();
        let detail = match self {
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                "the server could not complete the request; it has been logged".to_owned()
            }
            ApiError::Unavailable(reason) => {
                tracing::warn!(reason, "dependency unavailable");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let problem = Problem {
            kind: format!("/problems/{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code,
            field: match self {
                ApiError::Invalid(invalid) => Some(invalid.field.as_str()),
                _ => None,
            },
            current: match self {
                ApiError::Stale(_, current) => Some(current),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self
            && let Ok(value) = HeaderValue::from_str(&allow.join(", "))
        {
            response.insert_header((header::ALLOW, value));
        }
        response.body(serde_json::to_string(&problem).expect("problem serializes"))
    }
}

/// Maps a serde_json error to 400 (not JSON at all) or 422 (JSON of the wrong shape).
pub fn json_error(error: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => ApiError::invalid("body", error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::MalformedJson(format!("the body is not valid JSON: {error}"))
        }
    }
}

/// Parses a JSON body with the same error mapping as the `Json` extractor.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| json_error(&error))
}

/// Error handlers for actix's extractors, so that their failures are problems too.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
    use actix_web::{Error, HttpRequest};

    use super::{ApiError, json_error};

    pub fn json(error: JsonPayloadError, _: &HttpRequest) -> Error {
        match error {
            JsonPayloadError::ContentType => ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".to_owned(),
            ),
            JsonPayloadError::Deserialize(error) => json_error(&error),
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                ApiError::PayloadTooLarge(limit)
            }
            JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::PayloadTooLarge(0),
            other => ApiError::MalformedJson(other.to_string()),
        }
        .into()
    }

    pub fn query(error: QueryPayloadError, _: &HttpRequest) -> Error {
        ApiError::InvalidQuery(format!("invalid query string: {error}")).into()
    }

    /// An id in the path that does not parse cannot name anything: 404.
    pub fn path(_: PathError, _: &HttpRequest) -> Error {
        ApiError::NotFound("resource").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table the OpenAPI document is built from says what the errors do.
    #[test]
    fn codes_table_matches_the_errors() {
        let errors = [
            ApiError::Unauthorized,
            ApiError::NotFound("x"),
            ApiError::NoRoute("x".into()),
            ApiError::MethodNotAllowed {
                method: "PATCH".into(),
                allow: vec!["GET"],
            },
            ApiError::MalformedJson("x".into()),
            ApiError::InvalidQuery("x".into()),
            ApiError::invalid("f", "x"),
            ApiError::Conflict("x".into()),
            ApiError::Stale("x".into(), serde_json::Value::Null),
            ApiError::Forbidden("x".into()),
            ApiError::OverBudget("x".into()),
            ApiError::UnsupportedMediaType("x".into()),
            ApiError::PayloadTooLarge(1),
            ApiError::BodyTimeout("x".into()),
            ApiError::Unavailable("x".into()),
            ApiError::RateLimited("x".into()),
            ApiError::RunsQuotaExceeded("x".into()),
            ApiError::ActiveEvaluationsQuotaExceeded("x".into()),
            ApiError::IdempotencyMismatch("x".into()),
            ApiError::IdempotencyInProgress("x".into()),
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        let mut seen: Vec<(&str, u16)> = errors
            .iter()
            .map(|error| {
                let (code, status) = error.code_and_status();
                (code, status.as_u16())
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        let mut table = CODES.to_vec();
        table.sort_unstable();
        assert_eq!(seen, table);
    }

    #[test]
    fn method_not_allowed_says_what_is() {
        let response = ApiError::MethodNotAllowed {
            method: "PATCH".into(),
            allow: vec!["GET", "POST"],
        }
        .error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, POST");
    }
}
