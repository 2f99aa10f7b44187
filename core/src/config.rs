//! Settings shared by every process, read from the environment.
//!
//! Defaults point at the local services of a development machine, so that
//! `make demo` needs no configuration at all.

use std::env;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `DATABASE_URL` when unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/assay";
/// `REDIS_URL` when unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `ASSAY_QUEUE_PREFIX` when unset.
pub const DEFAULT_QUEUE_PREFIX: &str = "assay";

/// A connection URL that may carry a password. `Debug` and `Display` show
/// it with its credentials redacted ([`redact_url`]), so that a logged
/// settings struct or error leaks nothing; [`SecretUrl::expose`] is the one
/// way to the whole value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "SecretUrl({:?})", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&redact_url(&self.0))
    }
}

/// A setting the process cannot start with: names the variable, its value
/// and what was expected, instead of running on a default nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not {expected}")]
pub struct BadSetting {
    pub name: String,
    pub value: String,
    pub expected: String,
}

/// The variable's value; None when unset or empty.
pub fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.is_empty())
}

/// `name` parsed as a `T` within `valid`, or `default` when unset or empty.
/// `expected` says what a good value is, for the error.
pub fn parse_var<T: FromStr>(
    name: &str,
    default: T,
    expected: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, BadSetting> {
    parse_value(name, var(name), default, expected, valid)
}

fn parse_value<T: FromStr>(
    name: &str,
    value: Option<String>,
    default: T,
    expected: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, BadSetting> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(parsed) if valid(&parsed) => Ok(parsed),
        _ => Err(BadSetting {
            name: name.to_owned(),
            value,
            expected: expected.to_owned(),
        }),
    }
}

/// `name` as a duration such as `30s` or `10m`, or `default` when unset.
pub fn duration_var(name: &str, default: Duration) -> Result<Duration, BadSetting> {
    let Some(value) = var(name) else {
        return Ok(default);
    };
    humantime::parse_duration(value.trim()).map_err(|_| BadSetting {
        name: name.to_owned(),
        value,
        expected: "a duration such as 30s or 10m".to_owned(),
    })
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretUrl,
    pub redis_url: SecretUrl,
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
    /// Reads every setting; the first malformed one is the error.
    pub fn from_env() -> Result<Self, BadSetting> {
        Ok(Self {
            database_url: SecretUrl::new(
                var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            ),
            redis_url: SecretUrl::new(
                var("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
            ),
            queue_prefix: var("ASSAY_QUEUE_PREFIX")
                .unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_owned()),
            database_pool_size: parse_var(
                "ASSAY_DATABASE_POOL_SIZE",
                16,
                "a connection count from 1 to 1000",
                |size| (1..=1000).contains(size),
            )?,
            runs_per_chunk: parse_var(
                "ASSAY_CHUNK_RUNS",
                crate::db::models::chunks::DEFAULT_RUNS_PER_CHUNK,
                "a run count from 1 to 100000",
                |runs| (1..=100_000).contains(runs),
            )?,
            estimate_max_items: parse_var(
                "ASSAY_ESTIMATE_MAX_ITEMS",
                crate::budget::ESTIMATE_MAX_ITEMS,
                "an item count from 1 to 1000000",
                |items| (1..=1_000_000).contains(items),
            )?,
        })
    }
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
    use super::*;

    #[test]
    fn a_malformed_setting_is_an_error_naming_it() {
        let positive = |size: &usize| *size >= 1;
        assert_eq!(
            parse_value("ASSAY_X", Some("sixteen".into()), 16, "a count", positive),
            Err(BadSetting {
                name: "ASSAY_X".into(),
                value: "sixteen".into(),
                expected: "a count".into()
            })
        );
        assert!(parse_value("ASSAY_X", Some("0".into()), 16, "a count", positive).is_err());
        assert_eq!(
            parse_value("ASSAY_X", Some(" 8 ".into()), 16, "a count", positive),
            Ok(8)
        );
        assert_eq!(
            parse_value("ASSAY_X", None, 16, "a count", positive),
            Ok(16)
        );
        let error = parse_value("ASSAY_X", Some("-1".into()), 16usize, "a count", positive)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "ASSAY_X=\"-1\" is not a count");
    }

    #[test]
    fn a_secret_url_never_prints_its_password() {
        let url = SecretUrl::new("postgres://assay:hunter2@db:5432/assay");
        assert_eq!(url.expose(), "postgres://assay:hunter2@db:5432/assay");
        for shown in [
            format!("{url}"),
            format!("{url:?}"),
            format!("{:?}", Some(&url)),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db:5432"), "{shown}");
        }
    }

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
