//! The shared limiter against real Redis. Each `Limiter` here has its own
//! connection pool, as separate worker processes would: whatever they share,
//! they share through Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use assay_core::providers::limits::{DECREASE_FACTOR, INCREASE_PER_SUCCESS, Limiter};
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

/// Waits until a replica follows the cool-down announcements under
/// `redis`'s prefix, so that none is announced before anyone listens.
async fn subscribed(redis: &TestRedis) {
    let channel = format!("{}:limits:cool-downs", redis.prefix);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    assay_testkit::eventually(Duration::from_secs(5), "a subscriber", || {
        let (channel, mut conn) = (channel.clone(), conn.clone());
        async move {
            let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await?;
            Ok((subscribers > 0).then_some(()))
        }
    })
    .await
    .unwrap();
}

/// Reports `count` requests sent to `model` and answered: `limited` of
/// them with a 429, the rest without.
async fn report(limiter: &Limiter, model: &Model, count: usize, limited: usize) {
    for n in 0..count {
        limiter.sent(model);
        if n >= limited {
            limiter.answered(model, None);
        }
    }
    for _ in 0..limited {
        limiter
            .rate_limited(model, Duration::from_secs(2))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_429s_learns_nothing_but_a_storm_pauses_every_replica_at_the_accepted_rate() {
    let redis = TestRedis::new();
    let trickled = model(Limits::default(), Duration::from_secs(5));
    let model = model(Limits::default(), Duration::from_secs(5));
    let (one, other) = (replica(&redis), replica(&redis));
    tokio::spawn(other.clone().follow_cool_downs(redis.url.clone()));
    subscribed(&redis).await;

    // 10% of answers refused: a provider's random 429s, not an overload.
    report(&one, &trickled, 100, 10).await;
    assert_eq!(one.learned_rate(&trickled).await.unwrap(), None);
    let free = other.acquire(&trickled, 0, true).await.unwrap();
    assert!(free.is_ok(), "a trickle pauses no one");

    // The other replica knows the model before the storm, so it reads
    // nothing more of it from Redis on its own: the pause can reach it only
    // as an announcement.
    let before_storm = other.acquire(&model, 0, true).await.unwrap();
    assert!(before_storm.is_ok(), "no pause before the storm");

    // Now 100 sent, 30 answered, 70 refused. The storm is seen at the 30th
    // 429, when half the answers so far are 429s: of the 100 sent, 70 were
    // not refused then, so the rate starts at 0.95 x 70 a second.
    report(&one, &model, 100, 70).await;
    let learned = one.learned_rate(&model).await.unwrap().unwrap();
    assert!(
        (learned - DECREASE_FACTOR * 70.0).abs() < 0.5,
        "learned {learned}/s"
    );
    // Wait for the announcement to arrive, not for a guessed delay.
    let paused = assay_testkit::eventually(
        Duration::from_secs(1),
        "the other replica to pause",
        || async {
            Ok(match other.acquire(&model, 0, true).await? {
                Err(remaining) => Some(remaining),
                Ok(permit) => {
                    other.release(&model, permit, 0).await?;
                    None
                }
            })
        },
    )
    .await
    .unwrap();
    assert!(
        paused.0 > Duration::from_secs(1),
        "the other replica pauses too: {paused:?}"
    );
    assert_eq!(other.learned_rate(&model).await.unwrap(), Some(learned));
    // More 429s from the same overload (within a second) change nothing.
    report(&one, &model, 10, 10).await;
    assert_eq!(one.learned_rate(&model).await.unwrap(), Some(learned));
}

#[tokio::test]
async fn the_rate_decreases_once_per_window_and_grows_back_to_the_registry_limit() {
    let redis = TestRedis::new();
    // 6,000 a minute: 100 a second.
    let model = model(
        Limits {
            requests_per_minute: Some(6_000),
            ..Limits::default()
        },
        Duration::from_secs(5),
    );
    let limiter = replica(&redis);
    assert_eq!(limiter.learned_rate(&model).await.unwrap(), None);
    report(&limiter, &model, 3, 3).await;
    let expected = 100.0 * DECREASE_FACTOR;
    let learned = limiter.learned_rate(&model).await.unwrap().unwrap();
    assert!(
        (learned - expected).abs() < 0.01,
        "one decrease for 3 429s: {learned}"
    );
    report(&limiter, &model, 20, 0).await;
    let expected = expected + 20.0 * INCREASE_PER_SUCCESS;
    let learned = limiter.learned_rate(&model).await.unwrap().unwrap();
    assert!(
        (learned - expected).abs() < 0.01,
        "{learned}, not {expected}"
    );
    // Decreases are counted per wall-clock second: waiting out the window
    // is the behaviour under test, not a guess at when something is done.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    report(&limiter, &model, 1, 1).await;
    let expected = expected * DECREASE_FACTOR;
    let learned = limiter.learned_rate(&model).await.unwrap().unwrap();
    assert!(
        (learned - expected).abs() < 0.01,
        "a second window decreases: {learned}, not {expected}"
    );
    // Back above the registry's rate: its pace applies again.
    report(&limiter, &model, 400, 0).await;
    assert_eq!(limiter.learned_rate(&model).await.unwrap(), None);
}

/// A server that takes `cap` requests per wall-clock second and refuses the
/// rest at once, as an overloaded provider does; the callers know nothing
/// of the cap. They must settle near it, with few requests refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_learn_a_hard_cap_the_registry_does_not_know() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    const CAP: u64 = 50;
    const RUN: Duration = Duration::from_secs(8);
    let redis = TestRedis::new();
    let model = Arc::new(model(Limits::default(), Duration::from_secs(5)));
    // (second since start, requests seen in it), and totals after the first 3 s.
    let seconds = Arc::new(Mutex::new((0u64, 0u64)));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..2 {
        let limiter = Arc::new(replica(&redis));
        tokio::spawn(
            limiter
                .as_ref()
                .clone()
                .follow_cool_downs(redis.url.clone()),
        );
        for _ in 0..32 {
            let (limiter, model, seconds) = (limiter.clone(), model.clone(), seconds.clone());
            let (accepted, refused) = (accepted.clone(), refused.clone());
            callers.push(tokio::spawn(async move {
                while started.elapsed() < RUN {
                    let permit = limiter.acquire(&model, 0, false).await.unwrap().unwrap();
                    limiter.sent(&model);
                    let elapsed = started.elapsed();
                    let taken = {
                        let mut seconds = seconds.lock().unwrap();
                        if seconds.0 != elapsed.as_secs() {
                            *seconds = (elapsed.as_secs(), 0);
                        }
                        seconds.1 += 1;
                        seconds.1 <= CAP
                    };
                    let counted = elapsed >= Duration::from_secs(3);
                    if taken {
                        // The simulated provider's latency (not synchronisation).
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        limiter.release(&model, permit, 0).await.unwrap();
                        limiter.answered(&model, None);
                        if counted {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        limiter.release(&model, permit, 0).await.unwrap();
                        if counted {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        let retry_after = Duration::from_millis(500);
                        limiter.rate_limited(&model, retry_after).await.unwrap();
                        tokio::time::sleep(retry_after).await;
                    }
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let (accepted, refused) = (
        accepted.load(Ordering::SeqCst) as f64,
        refused.load(Ordering::SeqCst) as f64,
    );
    let rate = accepted / (RUN.as_secs_f64() - 3.0);
    let share = refused / (accepted + refused);
    // Unpaced, 64 callers at 20 ms would offer 3,200 requests a second.
    assert!(rate >= 0.8 * CAP as f64, "accepted {rate:.1}/s of {CAP}");
    assert!(share <= 0.1, "{:.1}% refused", share * 100.0);
}

/// Calls Redis has served of `commands`, from its command statistics.
fn redis_calls(url: &str, commands: &[&str]) -> u64 {
    assay_testkit::redis_command_calls(url)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| commands.contains(&name.as_str()))
        .map(|(_, calls)| calls)
        .sum()
}

/// Calls waiting on a shared limit queue in their process: one script call
/// per granted request or so, not one per waiting call per poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_queue_in_their_process_instead_of_polling_redis() {
    let redis = assay_testkit::PrivateRedis::start().unwrap();
    // 1,200 a minute: 20 a second.
    let model = Arc::new(model(
        Limits {
            requests_per_minute: Some(1_200),
            burst: 2,
            ..Limits::default()
        },
        Duration::from_secs(5),
    ));
    let script_calls = || redis_calls(&redis.url, &["evalsha", "eval"]);
    let before = script_calls();
    let started = Instant::now();
    let mut calls = Vec::new();
    // Three replicas, twenty callers each, all at once: 60 calls, about 3 s.
    for _ in 0..3 {
        let limiter = Arc::new(Limiter::new(
            assay_core::redis_pool::build(&redis.url, 4).unwrap(),
            "queue-test",
        ));
        for _ in 0..20 {
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
    let scripts = script_calls() - before;
    granted.sort();
    for (index, first) in granted.iter().enumerate() {
        let in_window = granted[index..]
            .iter()
            .take_while(|later| **later - *first < Duration::from_secs(1))
            .count();
        assert!(in_window <= 20 + 2, "{in_window} grants within one second");
    }
    // 60 grants; one first read of the learned rate per replica. Polling (each waiter
    // asking every time its wait was up) took several times as many.
    assert!(
        scripts <= 60 + 3 + 30,
        "{scripts} script calls for 60 grants"
    );
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
        // The outage's length, which the call must wait out (not synchronisation).
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
        slot: None,
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

/// Answered calls of a model paced by its registry limit alone change
/// nothing in Redis while nothing is learned, so they are not reported; once
/// a 429 has taught a rate, they are, to grow it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_reported_only_while_they_can_change_a_learned_rate() {
    let redis = assay_testkit::PrivateRedis::start().unwrap();
    let model = model(
        Limits {
            requests_per_minute: Some(6_000),
            burst: 10,
            ..Limits::default()
        },
        Duration::from_secs(5),
    );
    // Only the controller's script reads its hash with HMGET.
    let reports = || redis_calls(&redis.url, &["hmget"]);
    let limiter = Limiter::new(
        assay_core::redis_pool::build(&redis.url, 4).unwrap(),
        "report-test",
    );
    let calls = |count: usize| {
        let (limiter, model) = (limiter.clone(), model.clone());
        async move {
            for _ in 0..count {
                let permit = limiter.acquire(&model, 0, false).await.unwrap().unwrap();
                limiter.sent(&model);
                limiter.answered(&model, None);
                limiter.release(&model, permit, 0).await.unwrap();
            }
        }
    };
    calls(40).await;
    // Waiting for something not to happen: three report intervals.
    tokio::time::sleep(assay_core::providers::limits::FEEDBACK_INTERVAL * 3).await;
    assert_eq!(
        reports(),
        1,
        "only the first call's read of what others learned"
    );

    let learned = limiter
        .rate_limited(&model, Duration::from_secs(1))
        .await
        .unwrap()
        .learned
        .expect("a 429 under a registry limit teaches a rate");
    let after_429 = reports();
    calls(20).await;
    assay_testkit::eventually(
        Duration::from_secs(2),
        "the answers to be reported",
        || async { Ok((reports() > after_429).then_some(())) },
    )
    .await
    .unwrap();
    let grown = limiter.learned_rate(&model).await.unwrap().unwrap_or(100.0);
    assert!(
        grown > learned,
        "{grown} after 20 answers, {learned} after the 429"
    );
}
