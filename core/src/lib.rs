//! Assay's domain, shared by the API, the worker and the tests.
//!
//! Layout:
//! - [`budget`]: cost estimates of evaluations and of single calls, for budgets.
//! - [`config`]: settings read from the environment, with defaults that work
//!   against a local PostgreSQL and Redis.
//! - [`domain`]: validated inputs ("parse, don't validate"): chat messages,
//!   model names, dataset items, evaluation requests.
//! - [`templates`]: Jinja prompt templates (strict: an undefined variable is an
//!   error, never an empty string sent to a model).
//! - [`gauges`]: deployment-wide gauges (work left, queue age, budgets) every process exports.
//! - [`graders`]: the checks an output is scored with.
//! - [`ids`]: one id type per thing a tenant owns (tenant, evaluation, chunk,
//!   prompt, version, dataset), so swapped ids do not compile.
//! - [`providers`]: the LLM provider trait and its implementations.
//! - [`db`]: the schema, the pool and every query; each query filters on the tenant.
//! - [`queue`]: job payloads and the Redis queue they travel on.
//! - [`redis_pool`]: the pool for Assay's own Redis commands (limits, cache).
//! - [`request_limits`]: per-key request rates (GCRA in Redis) and per-tenant quotas.
//! - [`stats`]: paired statistics (exact McNemar, seeded bootstrap) for comparisons.
//! - [`submit`]: writing and queueing an evaluation (the API and versioning jobs).
//! - [`versioning`]: promotion and optimization jobs' domain: setups, policies,
//!   the optimizer's meta-prompt and how its proposals are checked.
//! - [`telemetry`]: logging and the Prometheus recorder.
//! - [`webhooks`]: webhook event types, URL checks, signatures, retry timing.
//!
//! `core` knows nothing about HTTP routing or how workers run jobs.

pub mod budget;
pub mod config;
pub mod db;
pub mod domain;
pub mod gauges;
pub mod graders;
pub mod ids;
pub mod providers;
pub mod queue;
pub mod redis_pool;
pub mod request_limits;
pub mod stats;
pub mod submit;
pub mod telemetry;
pub mod templates;
pub mod versioning;
pub mod webhooks;
