//! Settings shared by every process, read from the environment.
//!
//! Defaults point at the local services of a development machine, so that
//! `make demo` needs no configuration at all.

use std::env;

/// `DATABASE_URL` when unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/assay";
/// `REDIS_URL` when unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `ASSAY_QUEUE_PREFIX` when unset.
pub const DEFAULT_QUEUE_PREFIX: &str = "assay";

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub redis_url: String,
    /// Prefix of every Redis key Assay writes; lets several deployments (or
    /// test runs) share one Redis.
    pub queue_prefix: String,
    /// Connections in the PostgreSQL pool of this process.
    pub database_pool_size: usize,
    /// Runs (items x repeats) per chunk of an evaluation (`ASSAY_CHUNK_RUNS`).
    pub runs_per_chunk: i32,
    /// Most dataset items rendered to estimate an evaluation's cost at
    /// submission (`ASSAY_ESTIMATE_MAX_ITEMS`); more are scaled from them.
    pub estimate_max_items: i32,
}

impl Settings {
    pub fn from_env() -> Self {
        Self {
            database_url: var_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url: var_or("REDIS_URL", DEFAULT_REDIS_URL),
            queue_prefix: var_or("ASSAY_QUEUE_PREFIX", DEFAULT_QUEUE_PREFIX),
            database_pool_size: var_or("ASSAY_DATABASE_POOL_SIZE", "16")
                .parse()
                .unwrap_or(16),
            runs_per_chunk: var_or("ASSAY_CHUNK_RUNS", "")
                .parse()
                .ok()
                .filter(|runs| (1..=100_000).contains(runs))
                .unwrap_or(crate::db::models::chunks::DEFAULT_RUNS_PER_CHUNK),
            estimate_max_items: var_or("ASSAY_ESTIMATE_MAX_ITEMS", "")
                .parse()
                .ok()
                .filter(|items| (1..=1_000_000).contains(items))
                .unwrap_or(crate::budget::ESTIMATE_MAX_ITEMS),
        }
    }
}

fn var_or(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
