//! The response cache: answers kept in Redis under a SHA-256 of everything
//! that determines them (provider, endpoint, upstream model, messages,
//! parameters and repeat index), for a configurable TTL.
//!
//! Used only when the parameters make the answer deterministic (temperature
//! 0 or a seed), unless an evaluation turns it off; repeats of an item have
//! distinct keys, so they stay independent samples. Only answers are cached,
//! never errors. The cache is an optimisation: a Redis error is a miss.

use std::time::Duration;

use deadpool_redis::Pool;
use redis::AsyncCommands;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Completion, Model};
use crate::domain::{ChatMessage, ModelParams};

/// How long answers are kept when `ASSAY_CACHE_TTL` is unset.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct ResponseCache {
    redis: Pool,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResponseCache")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Whether `params` make answers repeatable enough to cache.
pub fn is_deterministic(params: &ModelParams) -> bool {
    params.temperature == Some(0.0) || params.seed.is_some()
}

#[derive(Serialize)]
struct KeyMaterial<'a> {
    v: u32,
    provider: &'a str,
    endpoint: &'a str,
    upstream: &'a str,
    messages: &'a [ChatMessage],
    params: &'a ModelParams,
    repeat: u32,
}

impl ResponseCache {
    pub fn new(redis: Pool, prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            ttl,
        }
    }

    pub fn key(
        &self,
        model: &Model,
        messages: &[ChatMessage],
        params: &ModelParams,
        repeat: u32,
    ) -> String {
        let material = KeyMaterial {
            v: 1,
            provider: model.provider.provider_name(),
            endpoint: model.provider.endpoint(),
            upstream: &model.upstream,
            messages,
            params,
            repeat,
        };
        let bytes = serde_json::to_vec(&material).expect("key material serializes");
        format!(
            "{}:cache:{}",
            self.prefix,
            hex::encode(Sha256::digest(&bytes))
        )
    }

    pub async fn get(&self, key: &str) -> Option<Completion> {
        let lookup = async {
            let mut conn = self.redis.get().await.map_err(super::limits::pool_error)?;
            let value: Option<Vec<u8>> = conn.get(key).await?;
            Ok::<_, redis::RedisError>(value)
        };
        match lookup.await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(error = %error, "response cache unavailable; calling the model");
                None
            }
        }
    }

    pub async fn put(&self, key: &str, completion: &Completion) {
        let bytes = serde_json::to_vec(completion).expect("completions serialize");
        let store = async {
            let mut conn = self.redis.get().await.map_err(super::limits::pool_error)?;
            conn.set_ex::<_, _, ()>(key, bytes, self.ttl.as_secs().max(1))
                .await
        };
        if let Err(error) = store.await {
            tracing::warn!(error = %error, "answer not cached");
        }
    }
}
