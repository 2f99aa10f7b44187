//! The shared limiter against real Redis. Each `Limiter` here has its own
//! connection pool, as separate worker processes would: whatever they share,
//! they share through Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use assay_core::providers::limits::Limiter;
use assay_core::providers::{Limits, Model, ModelCatalog};
use assay_testkit::TestRedis;

fn replica(redis: &TestRedis) -> Limiter {
    let pool = assay_core::redis_pool::build(&redis.url, 4).unwrap();
    Limiter::new(pool, &redis.prefix)
}

fn model(limits: Limits, timeout: Duration) -> Model {
    let mut model = (*ModelCatalog::default().resolve("mock").unwrap()).clone();
    model.name = format!("limited-{}", uuid::Uuid::new_v4().simple());
    model.limits = limits;
    model.timeout = timeout;
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_requests_per_minute_pace() {
    let redis = TestRedis::new();
    let model = Arc::new(model(
        Limits {
            requests_per_minute: Some(600),
            burst: 1,
            ..Limits::default()
        },
        Duration::from_secs(5),
    ));
    let started = Instant::now();
    let mut calls = Vec::new();
    // Three replicas, ten callers each, all at once.
    for _ in 0..3 {
        let limiter = Arc::new(replica(&redis));
        for _ in 0..10 {
            let (limiter, model) = (limiter.clone(), model.clone());
            calls.push(tokio::spawn(async move {
                let permit = limiter.acquire(&model, 0, false).await.unwrap().unwrap();
                let granted = started.elapsed();
                limiter.release(&model, permit, 0).await.unwrap();
                granted
            }));
        }
    }
    let mut granted = Vec::new();
    for call in calls {
        granted.push(call.await.unwrap());
    }
    granted.sort();
    // One every 100 ms: the 30th no earlier than 2.9 s after the first.
    let span = granted[29] - granted[0];
    assert!(
        span >= Duration::from_millis(2850),
        "30 grants within {span:?}"
    );
    for (index, first) in granted.iter().enumerate() {
        let in_window = granted[index..]
            .iter()
            .take_while(|later| **later - *first < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 10 + 1,
            "{in_window} grants within one second of {first:?}"
        );
    }
}

/// One replica gets a 429; the other must pause too, and a second 429 in
/// the grace window pauses no one. `limits` decides the path: models
/// without limits learn of the pause from the announcement, limited ones
/// in their script.
async fn a_429_pauses_every_replica(limits: Limits) {
    let redis = TestRedis::new();
    let model = model(limits, Duration::from_secs(5));
    let (got_429, other) = (replica(&redis), replica(&redis));
    tokio::spawn(other.clone().follow_cool_downs(redis.url.clone()));
    // The subscription is up before the first announcement.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        got_429
            .cool_down(&model, Duration::from_millis(600))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let permit = other.acquire(&model, 0, false).await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "the other replica waited only {waited:?}"
    );
    assert!(permit.waited >= Duration::from_millis(450));
    other.release(&model, permit, 0).await.unwrap();
    // Within the grace window, another 429 does not pause everyone again.
    assert!(
        !got_429
            .cool_down(&model, Duration::from_millis(600))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let permit = other.acquire(&model, 0, false).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    other.release(&model, permit, 0).await.unwrap();
    // A caller with a fallback is told instead of made to wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        got_429
            .cool_down(&model, Duration::from_secs(5))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cooling = other.acquire(&model, 0, true).await.unwrap();
    assert!(matches!(cooling, Err(remaining) if remaining.0 > Duration::from_secs(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_replica_of_an_unlimited_model() {
    a_429_pauses_every_replica(Limits::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_replica_of_a_limited_model() {
    a_429_pauses_every_replica(Limits {
        requests_per_minute: Some(60_000),
        burst: 100,
        ..Limits::default()
    })
    .await;
}

#[tokio::test]
async fn a_dead_callers_concurrency_slot_comes_back_when_its_lease_expires() {
    let redis = TestRedis::new();
    // Leases last the timeout plus two seconds.
    let model = model(
        Limits {
            concurrency: Some(1),
            ..Limits::default()
        },
        Duration::from_millis(300),
    );
    let (killed, survivor) = (replica(&redis), replica(&redis));
    let lost = killed.acquire(&model, 0, false).await.unwrap().unwrap();
    std::mem::forget(lost); // its worker died: the permit is never released
    let started = Instant::now();
    let permit = survivor.acquire(&model, 0, false).await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "the slot came back after {waited:?}"
    );
    // A released slot is free at once.
    survivor.release(&model, permit, 0).await.unwrap();
    let started = Instant::now();
    let permit = survivor.acquire(&model, 0, false).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    survivor.release(&model, permit, 0).await.unwrap();
}

#[tokio::test]
async fn token_reservations_settle_to_what_calls_used() {
    let redis = TestRedis::new();
    // 600 tokens per minute: a one-minute bucket of 600, refilled at 10 per second.
    let model = model(
        Limits {
            tokens_per_minute: Some(600),
            ..Limits::default()
        },
        Duration::from_secs(5),
    );
    let limiter = replica(&redis);
    // Reserving 300 twice fills the bucket; settling the first to the 30 it
    // used gives 270 back, so a third reservation of 300 waits about 3 s
    // (30 tokens at 10 per second), not the 30 s it would without settling.
    let first = limiter.acquire(&model, 300, false).await.unwrap().unwrap();
    limiter.release(&model, first, 30).await.unwrap();
    let second = limiter.acquire(&model, 300, false).await.unwrap().unwrap();
    let started = Instant::now();
    let third = limiter.acquire(&model, 300, false).await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "waited {waited:?} for 300 tokens"
    );
    limiter.release(&model, second, 300).await.unwrap();
    limiter.release(&model, third, 300).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_out_a_restarting_limit_store_without_spending_its_attempts() {
    use assay_core::domain::{ChatMessage, ModelParams, Role};
    use assay_core::providers::call::{CallOptions, LlmClient};
    let mut redis = assay_testkit::PrivateRedis::start().unwrap();
    let limiter = Limiter::new(
        assay_core::redis_pool::build(&redis.url, 4).unwrap(),
        "limits-test",
    );
    let mut limited = model(
        Limits {
            requests_per_minute: Some(6_000),
            ..Limits::default()
        },
        Duration::from_secs(5),
    );
    limited.max_attempts = 1;
    let client = LlmClient::new(ModelCatalog::default(), Some(limiter), None);
    redis.kill().unwrap();
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.start_again().unwrap();
        redis
    });
    let started = Instant::now();
    let messages = [ChatMessage {
        role: Role::User,
        content: "still there?".to_owned(),
    }];
    let options = CallOptions {
        purpose: "generate",
        repeat: 0,
        use_cache: false,
    };
    let report = client
        .complete(
            &Arc::new(limited),
            &messages,
            &ModelParams::default(),
            options,
        )
        .await;
    let _redis = restarted.await.unwrap();
    assert_eq!(report.outcome.unwrap().text, "still there?");
    assert_eq!(
        report.attempts, 1,
        "waiting for the store is not an attempt"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "it waited: {:?}",
        started.elapsed()
    );
}
