//! The chunks this process runs, and the leases that say so.
//!
//! Every second the process extends the leases of its running chunks in one
//! UPDATE. A chunk missing from the answer was canceled (its evaluation
//! was), or its lease expired and another worker took it over: its task is
//! told to stop starting calls. A process that dies stops renewing, and
//! its chunks' leases expire for the next delivery (or the sweeper) to take.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assay_core::db::DbPool;
use assay_core::db::models::chunks;
use assay_core::ids::EvaluationId;
use metrics::gauge;

/// How long a lease lasts without renewal: several missed renewals (a slow
/// database, a restarting PostgreSQL) before a live worker's chunk is
/// presumed dead.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often leases are renewed, and how soon a cancel reaches a chunk.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

type Key = (EvaluationId, i32);

/// A running chunk's stop flag.
#[derive(Default)]
pub struct ChunkHandle {
    stopped: AtomicBool,
}

impl ChunkHandle {
    /// True once the chunk was canceled or lost its lease.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
pub struct ActiveChunks {
    chunks: Mutex<HashMap<Key, Arc<ChunkHandle>>>,
}

/// Removes its chunk from the active set when dropped.
pub struct Registration {
    active: Arc<ActiveChunks>,
    key: Key,
    pub handle: Arc<ChunkHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut chunks = self.active.chunks.lock().expect("active lock");
        chunks.remove(&self.key);
        gauge!("assay_chunks_in_flight").set(chunks.len() as f64);
    }
}

impl ActiveChunks {
    pub fn register(
        self: &Arc<Self>,
        evaluation_id: EvaluationId,
        chunk_index: i32,
    ) -> Registration {
        let handle = Arc::new(ChunkHandle::default());
        let mut chunks = self.chunks.lock().expect("active lock");
        chunks.insert((evaluation_id, chunk_index), handle.clone());
        gauge!("assay_chunks_in_flight").set(chunks.len() as f64);
        Registration {
            active: self.clone(),
            key: (evaluation_id, chunk_index),
            handle,
        }
    }

    fn keys(&self) -> Vec<Key> {
        self.chunks
            .lock()
            .expect("active lock")
            .keys()
            .copied()
            .collect()
    }

    /// Tells the chunks in `keys` that are still registered to stop.
    fn stop(&self, keys: &[Key]) {
        let chunks = self.chunks.lock().expect("active lock");
        for key in keys {
            if let Some(handle) = chunks.get(key) {
                handle.stopped.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Renews the leases of `owner` every [`RENEW_EVERY`] until the process ends.
    pub async fn renew_forever(self: Arc<Self>, pool: DbPool, owner: String) {
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let keys = self.keys();
            if keys.is_empty() {
                continue;
            }
            let renewed = async {
                let mut conn = pool.get().await?;
                anyhow::Ok(chunks::renew_leases(&mut conn, &owner, &keys, LEASE).await?)
            }
            .await;
            match renewed {
                Ok(held) => {
                    let lost: Vec<Key> =
                        keys.into_iter().filter(|key| !held.contains(key)).collect();
                    if !lost.is_empty() {
                        tracing::info!(
                            chunks = lost.len(),
                            "chunks canceled or taken over: stopping them"
                        );
                        self.stop(&lost);
                    }
                }
                // The leases last several renewals: a short outage costs nothing.
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "could not renew chunk leases")
                }
            }
        }
    }
}
