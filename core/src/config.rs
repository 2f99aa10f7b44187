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

/// `url` with its password (and a user alone, when there is no password)
/// replaced by `***`, for logs and messages: `redis://:secret@host:6379` becomes
/// `redis://:***@host:6379`. Text that is not a URL with credentials is
/// returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let credentials = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{credentials}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://assay:s3cr%40t@db:5432/assay?sslmode=require"),
            "postgres://assay:***@db:5432/assay?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:secret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact_url("redis://token@cache"), "redis://***@cache");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/assay"),
            "postgres://***@127.0.0.1:5432/assay"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
