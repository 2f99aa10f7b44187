//! How much work a worker takes on: LLM calls in flight, and chunks.
//!
//! - [`LlmSlots`]: `--concurrency` permits for LLM calls, shared by every
//!   chunk the process runs. Each chunk asks for one permit at a time;
//!   waiters of a higher priority are served first, and within a priority
//!   the evaluations take turns (not the chunks: an evaluation with three
//!   chunks here gets no more than one with a single chunk).
//! - [`Backlog`]: runs this process has taken on (its chunks' runs) but not
//!   started yet.
//! - [`GateLayer`]: holds a queue consumer back from fetching another chunk
//!   while the backlog already covers the permits. A worker takes a chunk
//!   only when it will soon have idle permits, so chunks spread over every
//!   replica instead of piling up on whichever polled first, and a chunk
//!   queued later (a small evaluation's) is not stuck behind chunks a busy
//!   worker hoarded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use assay_core::domain::Priority;
use assay_core::ids::EvaluationId;
use tokio::sync::oneshot;

/// LLM call permits, handed out by priority, then in order of asking.
pub struct LlmSlots {
    state: Mutex<SlotState>,
}

struct SlotState {
    available: usize,
    /// Waiters by priority (index of [`Priority::ALL`]). Only non-empty
    /// while `available` is 0: a released permit goes to a waiter first.
    waiters: [Turns; 3],
}

/// Waiters of one priority, grouped by evaluation, served in turn.
#[derive(Default)]
struct Turns {
    /// Evaluations with waiters, next to serve first.
    order: VecDeque<EvaluationId>,
    waiting: HashMap<EvaluationId, VecDeque<oneshot::Sender<LlmPermit>>>,
}

impl Turns {
    fn push(&mut self, group: EvaluationId, waiter: oneshot::Sender<LlmPermit>) {
        let queue = self.waiting.entry(group).or_default();
        if queue.is_empty() {
            self.order.push_back(group);
        }
        queue.push_back(waiter);
    }

    /// The next waiter: the front evaluation's oldest; the evaluation goes
    /// to the back of the line if it has more.
    fn pop(&mut self) -> Option<oneshot::Sender<LlmPermit>> {
        let group = self.order.pop_front()?;
        let queue = self.waiting.get_mut(&group)?;
        let waiter = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&group);
        } else {
            self.order.push_back(group);
        }
        waiter
    }
}

/// One LLM call's permit; returns itself on drop.
pub struct LlmPermit {
    /// `None` once handed back, so that a permit bounced off a gone waiter
    /// is not released twice.
    slots: Option<Arc<LlmSlots>>,
}

impl LlmSlots {
    pub fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                available: permits,
                waiters: Default::default(),
            }),
        })
    }

    /// A permit for a call of evaluation `group` at `priority`.
    pub async fn acquire(self: &Arc<Self>, priority: Priority, group: EvaluationId) -> LlmPermit {
        let waiting = {
            let mut state = self.state.lock().expect("slots lock");
            if state.available > 0 {
                state.available -= 1;
                return LlmPermit {
                    slots: Some(self.clone()),
                };
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters[priority.index()].push(group, sender);
            receiver
        };
        // The sender lives in `waiters` until a permit is sent, and `release`
        // never drops a sender without sending.
        waiting.await.expect("a waiter is always answered")
    }

    fn release(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("slots lock");
        for turns in &mut state.waiters {
            while let Some(waiter) = turns.pop() {
                match waiter.send(LlmPermit {
                    slots: Some(self.clone()),
                }) {
                    Ok(()) => return,
                    // That waiter gave up (its task was dropped): disarm the
                    // bounced permit and try the next one.
                    Err(mut bounced) => bounced.slots = None,
                }
            }
        }
        state.available += 1;
    }

    /// Permits free now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.state.lock().expect("slots lock").available
    }
}

impl Drop for LlmPermit {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

/// A call's permit that the call gives up while it waits out a 429 (see
/// [`assay_core::providers::call::Slot`]) and takes again, in its turn,
/// before its next attempt.
pub struct HeldSlot {
    slots: Arc<LlmSlots>,
    priority: Priority,
    group: EvaluationId,
    permit: Mutex<Option<LlmPermit>>,
}

impl HeldSlot {
    pub fn new(
        slots: Arc<LlmSlots>,
        priority: Priority,
        group: EvaluationId,
        permit: LlmPermit,
    ) -> Self {
        Self {
            slots,
            priority,
            group,
            permit: Mutex::new(Some(permit)),
        }
    }
}

#[async_trait::async_trait]
impl assay_core::providers::call::Slot for HeldSlot {
    fn release(&self) {
        let permit = self.permit.lock().expect("held slot lock").take();
        drop(permit);
    }

    async fn reacquire(&self) {
        let permit = self.slots.acquire(self.priority, self.group).await;
        *self.permit.lock().expect("held slot lock") = Some(permit);
    }
}

/// Runs taken on but not started, with the gates waiting for it to drop.
#[derive(Default)]
pub struct Backlog {
    runs: AtomicUsize,
    /// Runs of the chunk taken last (0 before the first).
    last_chunk_runs: AtomicUsize,
    /// Set while a gate waits, so that the hot path (one decrement per call)
    /// only takes the lock when someone listens.
    waiting: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Backlog {
    /// A chunk of `runs` runs taken on.
    pub fn add_chunk(&self, runs: usize) {
        self.last_chunk_runs.store(runs, Ordering::SeqCst);
        self.runs.fetch_add(runs, Ordering::SeqCst);
    }

    pub fn remove(&self, runs: usize) {
        if runs == 0 {
            return;
        }
        self.runs.fetch_sub(runs, Ordering::SeqCst);
        if self.waiting.swap(false, Ordering::SeqCst) {
            for waker in self.wakers.lock().expect("backlog lock").drain(..) {
                waker.wake();
            }
        }
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().expect("backlog lock");
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.waiting.store(true, Ordering::SeqCst);
    }
}

/// A consumer fetches only while the backlog is below its threshold.
#[derive(Clone)]
pub struct GateLayer {
    backlog: Arc<Backlog>,
    /// Thresholds after a chunk cut small, and after a full-size one.
    after_small: usize,
    after_full: usize,
    full_chunk_runs: usize,
}

impl GateLayer {
    /// The threshold for a consumer of `priority` in a worker with
    /// `permits` LLM permits: a chunk is taken while fewer runs wait than
    /// the permits can start at once, plus one chunk's worth, so that the
    /// next chunk is ready before the permits idle. High priority looks
    /// further ahead, low less far.
    ///
    /// One chunk of the size arriving. After a full-size chunk
    /// (`full_chunk_runs`: a large evaluation) that is a whole chunk: an
    /// evaluation has one chunk in the queue at a time, so the next one may
    /// first go to another replica, and a worker that waited until its
    /// permits were nearly idle would idle them (4 workers × 100 permits ran
    /// at 84–89% of ideal with a small look-ahead, 96% with this). After a
    /// chunk cut small (a small evaluation spread over the replicas, see
    /// `chunks::spread_runs_per_chunk`) and before any chunk, only
    /// `small_chunk_runs` ahead, so that one worker does not take several of
    /// them at once.
    pub fn for_priority(
        backlog: Arc<Backlog>,
        priority: Priority,
        permits: usize,
        small_chunk_runs: usize,
        full_chunk_runs: usize,
    ) -> Self {
        let threshold = |ahead: usize| {
            let threshold = match priority {
                Priority::High => ahead * 2,
                Priority::Normal => ahead,
                Priority::Low => ahead.div_ceil(2),
            };
            threshold.max(1)
        };
        Self {
            backlog,
            after_small: threshold(permits + small_chunk_runs),
            after_full: threshold(permits + full_chunk_runs),
            full_chunk_runs,
        }
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

impl<S> Gate<S> {
    fn threshold(&self) -> usize {
        let last = self.layer.backlog.last_chunk_runs.load(Ordering::SeqCst);
        if last >= self.layer.full_chunk_runs {
            self.layer.after_full
        } else {
            self.layer.after_small
        }
    }
}

impl<S, Request> tower_service::Service<Request> for Gate<S>
where
    S: tower_service::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let backlog = &self.layer.backlog;
        if backlog.runs() >= self.threshold() {
            backlog.register(cx.waker());
            // Checked again: the backlog may have dropped before the waker was in.
            if backlog.runs() >= self.threshold() {
                return Poll::Pending;
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use uuid::Uuid;

    const ONE_EVALUATION: EvaluationId = EvaluationId::from_uuid(Uuid::nil());

    /// Waiters queued for a permit.
    fn waiting(slots: &LlmSlots) -> usize {
        let state = slots.state.lock().unwrap();
        state
            .waiters
            .iter()
            .flat_map(|turns| turns.waiting.values())
            .map(VecDeque::len)
            .sum()
    }

    /// Lets spawned tasks run until `count` of them wait for a permit, so
    /// that waiters queue up in the order the test spawns them.
    async fn until_waiting(slots: &LlmSlots, count: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while waiting(slots) < count {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} waiters, got {}", waiting(slots)));
    }

    #[tokio::test]
    async fn permits_go_to_higher_priorities_first_then_in_order() {
        let slots = LlmSlots::new(1);
        let held = slots.acquire(Priority::Normal, ONE_EVALUATION).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, priority) in [
            ("low", Priority::Low),
            ("normal-1", Priority::Normal),
            ("high", Priority::High),
            ("normal-2", Priority::Normal),
        ] {
            let (waiter_slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = waiter_slots.acquire(priority, ONE_EVALUATION).await;
                order.lock().unwrap().push(name);
                drop(permit);
            }));
            until_waiting(&slots, waiters.len()).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["high", "normal-1", "normal-2", "low"]
        );
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_the_permit() {
        let slots = LlmSlots::new(1);
        let held = slots.acquire(Priority::Normal, ONE_EVALUATION).await;
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Priority::High, ONE_EVALUATION).await }
        });
        until_waiting(&slots, 1).await;
        waiter.abort();
        assert!(
            waiter.await.is_err_and(|error| error.is_cancelled()),
            "it gave up"
        );
        drop(held);
        assert_eq!(slots.available(), 1, "the permit skipped the gone waiter");
        let _again = slots.acquire(Priority::Low, ONE_EVALUATION).await;
        assert_eq!(slots.available(), 0);
    }

    #[tokio::test]
    async fn evaluations_take_turns_whatever_their_number_of_waiters() {
        let slots = LlmSlots::new(1);
        let held = slots.acquire(Priority::Normal, ONE_EVALUATION).await;
        let (big, small) = (
            EvaluationId::from_uuid(Uuid::from_u128(1)),
            EvaluationId::from_uuid(Uuid::from_u128(2)),
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        // Three waiters of the big evaluation queue up before the small one's two.
        for (name, group) in [
            ("big", big),
            ("big", big),
            ("big", big),
            ("small", small),
            ("small", small),
        ] {
            let (waiter_slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = waiter_slots.acquire(Priority::Normal, group).await;
                order.lock().unwrap().push(name);
                drop(permit);
            }));
            until_waiting(&slots, waiters.len()).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["big", "small", "big", "small", "big"]
        );
    }

    #[tokio::test]
    async fn a_held_slot_is_free_for_others_while_released() {
        use assay_core::providers::call::Slot;
        let slots = LlmSlots::new(1);
        let permit = slots.acquire(Priority::Normal, ONE_EVALUATION).await;
        let held = HeldSlot::new(slots.clone(), Priority::Normal, ONE_EVALUATION, permit);
        assert_eq!(slots.available(), 0);
        held.release();
        assert_eq!(slots.available(), 1, "free while the call waits");
        let other = slots.acquire(Priority::Normal, ONE_EVALUATION).await;
        let again = tokio::spawn(async move {
            held.reacquire().await;
            held
        });
        // Queued behind `other`: it can only have its slot once `other` goes.
        until_waiting(&slots, 1).await;
        assert!(!again.is_finished(), "it waits its turn for a slot");
        drop(other);
        let held = again.await.unwrap();
        assert_eq!(slots.available(), 0);
        drop(held);
        assert_eq!(slots.available(), 1);
    }

    #[test]
    fn the_gate_closes_above_its_threshold_and_wakes_when_work_is_started() {
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let backlog = Arc::new(Backlog::default());
        // 10 permits; chunks cut small are 5 runs, full ones 40.
        let layer = GateLayer::for_priority(backlog.clone(), Priority::Normal, 10, 5, 40);
        let mut gate = tower_layer::Layer::layer(&layer, tower_service_fn());
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut ready = |gate: &mut Gate<Ready>| {
            tower_service::Service::<()>::poll_ready(gate, &mut cx).is_ready()
        };
        assert!(ready(&mut gate));
        // After a small chunk, 15 waiting runs (10 permits + 5) close the gate.
        backlog.add_chunk(15);
        assert!(!ready(&mut gate));
        backlog.remove(1);
        assert!(
            flag.0.load(Ordering::SeqCst),
            "woken when the backlog drops"
        );
        assert!(ready(&mut gate));
        // After a full-size chunk it looks a whole chunk ahead: 50 waiting
        // runs (10 permits + 40) close it, 49 open it.
        backlog.remove(14);
        backlog.add_chunk(40);
        assert!(ready(&mut gate), "closed at 40 runs after a full chunk");
        backlog.add_chunk(40);
        backlog.remove(30);
        assert!(!ready(&mut gate), "open at 50 runs after a full chunk");
        backlog.remove(1);
        assert!(ready(&mut gate), "closed at 49 runs after a full chunk");
        // High priority looks further ahead than normal, low less far.
        let high = GateLayer::for_priority(backlog.clone(), Priority::High, 10, 5, 40);
        let low = GateLayer::for_priority(backlog, Priority::Low, 10, 5, 40);
        assert!(high.after_small > 15 && low.after_small < 15);
        assert!(high.after_full > 50 && low.after_full < 50);
    }

    /// A service that is always ready.
    fn tower_service_fn() -> Ready {
        Ready
    }

    struct Ready;

    impl tower_service::Service<()> for Ready {
        type Response = ();
        type Error = ();
        type Future = std::future::Ready<Result<(), ()>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }
}
