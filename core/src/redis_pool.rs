//! The pool for Assay's own Redis commands: shared rate limits, the response
//! cache, queue gauges. (apalis keeps its own reconnecting connection.)
//!
//! Every wait is bounded, so a Redis outage surfaces as an error within
//! seconds instead of a call that hangs.

use std::time::Duration;

use deadpool_redis::{Config, Pool, Runtime, Timeouts};

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn build(redis_url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let pool = Config::from_url(redis_url)
        .builder()?
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(TIMEOUT),
            create: Some(TIMEOUT),
            recycle: Some(TIMEOUT),
        })
        .build()?;
    Ok(pool)
}
