//! Fetch as soon as chunks are pushed, instead of on the next poll.
//!
//! apalis-redis 1.0 only polls: nothing is published when a job is pushed,
//! so an idle consumer would find a new chunk only on its next poll tick.
//! Assay announces its own pushes on `<prefix>:chunks:wake`; one subscriber
//! per process wakes every consumer's [`WakeOnPush`] poll strategy. If the
//! subscription is down, consumers still poll on their interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures::StreamExt;
use futures::task::AtomicWaker;

#[derive(Default)]
struct Slot {
    woken: AtomicBool,
    waker: AtomicWaker,
}

/// Every consumer's wake-up slot in this process.
#[derive(Default, Clone)]
pub struct Wakers {
    slots: Arc<Mutex<Vec<Weak<Slot>>>>,
}

impl Wakers {
    /// A poll strategy for one consumer (one per consumer and restart).
    pub fn strategy(&self) -> WakeOnPush {
        let slot = Arc::new(Slot::default());
        let mut slots = self.slots.lock().expect("wakers lock");
        slots.retain(|slot| slot.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        WakeOnPush { slot }
    }

    fn wake_all(&self) {
        for slot in self.slots.lock().expect("wakers lock").iter() {
            if let Some(slot) = slot.upgrade() {
                slot.woken.store(true, Ordering::SeqCst);
                slot.waker.wake();
            }
        }
    }

    /// Listens on `channel` until the process ends, reconnecting after errors.
    pub async fn listen(self, redis_url: String, channel: String) {
        loop {
            match self.subscribe(&redis_url, &channel).await {
                Ok(()) => tracing::debug!("wake-up subscription ended; subscribing again"),
                Err(error) => {
                    tracing::debug!(error = %error, "wake-up subscription failed; consumers poll meanwhile");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn subscribe(&self, redis_url: &str, channel: &str) -> redis::RedisResult<()> {
        let client = redis::Client::open(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        // Anything pushed while we were away is found by the next fetch.
        self.wake_all();
        let mut messages = pubsub.on_message();
        while messages.next().await.is_some() {
            self.wake_all();
        }
        Ok(())
    }
}

/// Ready once after each announced push; registers the consumer's waker.
pub struct WakeOnPush {
    slot: Arc<Slot>,
}

impl PollStrategy for WakeOnPush {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        self.slot.waker.register(cx.waker());
        if self.slot.woken.swap(false, Ordering::SeqCst) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
