//! Assay's HTTP API: JSON over actix-web, bearer API keys, RFC 9457 errors.
//!
//! Layout: [`startup`] builds the app (tests start it on port 0),
//! [`routes`] holds one module per resource, [`auth`] the key extractor, [`body`] slow-body limits,
//! [`errors`] the one error type, [`json`] the body extractor, [`metrics`] the HTTP metrics middleware,
//! [`request_id`] request ids and the span over each request,
//! [`rate_limit`] the key check and per-key rate limits, [`idempotency`] `Idempotency-Key` replays.
//! Handlers validate with `assay_core::domain` and query with
//! `assay_core::db`; nothing here knows how jobs run.

pub mod auth;
pub mod body;
pub mod errors;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod startup;
