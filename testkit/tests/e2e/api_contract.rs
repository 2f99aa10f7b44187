//! The API's guards across replicas: three `assay-api` processes share one
//! per-key rate limit through Redis, and a key revoked through one process
//! is refused by another within a second.

use std::time::{Duration, Instant};

use assay_core::db::models::api_keys::KeyScope;
use assay_testkit::{Client, Process, TestDatabase, TestRedis, eventually, free_port};
use serde_json::json;

/// `n` API processes on one database and Redis prefix; `env` on top of the defaults.
async fn start_apis(
    n: usize,
    database: &TestDatabase,
    redis: &TestRedis,
    env: &[(&'static str, String)],
) -> Vec<(Process, String)> {
    let mut apis = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let mut all_env = vec![
            ("DATABASE_URL", database.url.clone()),
            ("REDIS_URL", redis.url.clone()),
            ("ASSAY_QUEUE_PREFIX", redis.prefix.clone()),
            ("ASSAY_BIND", format!("127.0.0.1:{port}")),
            ("ASSAY_DATABASE_POOL_SIZE", "4".to_owned()),
            ("ASSAY_HTTP_WORKERS", "2".to_owned()),
        ];
        all_env.extend(env.iter().cloned());
        let process = Process::start("assay-api", &["serve"], &all_env).expect("api starts");
        let base_url = format!("http://127.0.0.1:{port}");
        let probe = Client::new(base_url.clone(), None);
        eventually(
            Duration::from_secs(30),
            "the API to answer /readyz",
            || async {
                Ok(probe
                    .get("/readyz")
                    .await
                    .ok()
                    .filter(|response| response.status == 200))
            },
        )
        .await
        .expect("api is ready");
        apis.push((process, base_url));
    }
    apis
}

/// The sum of a counter's series with these labels on a Prometheus page.
fn counter(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_processes_share_one_per_key_limit() {
    const PER_MINUTE: u32 = 60;
    const BURST: u32 = 10;
    let database = TestDatabase::create().await.expect("database");
    let redis = TestRedis::new();
    let apis = start_apis(
        3,
        &database,
        &redis,
        &[
            ("ASSAY_RATE_READS_PER_MINUTE", PER_MINUTE.to_string()),
            ("ASSAY_RATE_READ_BURST", BURST.to_string()),
        ],
    )
    .await;
    let key = assay_testkit::api_key(&database, "flood")
        .await
        .expect("key");
    let clients: Vec<Client> = apis
        .iter()
        .map(|(_, url)| Client::new(url.clone(), Some(key.clone())))
        .collect();

    // Six callers, each sending up to 5 reads a second round-robin over the
    // three replicas, for one minute: hundreds of requests (fewer on a
    // loaded machine) against a limit of 60 a minute plus a burst of 10.
    let started = Instant::now();
    let window = Duration::from_secs(60);
    let callers = (0..6).map(|caller| {
        let clients = clients.clone();
        tokio::spawn(async move {
            let (mut accepted, mut limited) = (0u32, 0u32);
            let mut ticks = tokio::time::interval(Duration::from_millis(200));
            let mut n = caller;
            while started.elapsed() < window {
                ticks.tick().await;
                let response = clients[n % clients.len()]
                    .get("/v1/models")
                    .await
                    .expect("the API answers");
                n += 1;
                match response.status {
                    200 => accepted += 1,
                    429 => {
                        assert_eq!(response.body["code"], "rate_limited");
                        assert!(response.header("retry-after").is_some());
                        limited += 1;
                    }
                    other => panic!("unexpected {other}: {:?}", response.body),
                }
            }
            (accepted, limited)
        })
    });
    let mut seen_accepted = 0;
    let mut seen_limited = 0;
    for caller in callers {
        let (accepted, limited) = caller.await.expect("caller");
        seen_accepted += accepted;
        seen_limited += limited;
    }

    // Counted by the APIs themselves.
    let mut accepted_by_api = Vec::new();
    let mut limited_total = 0.0;
    for client in &clients {
        let page = client.get("/metrics").await.expect("metrics");
        let page = page.body.as_str().expect("text").to_owned();
        accepted_by_api.push(counter(
            &page,
            "assay_rate_limit_requests_total",
            &["class=\"read\"", "outcome=\"accepted\""],
        ));
        limited_total += counter(
            &page,
            "assay_rate_limit_requests_total",
            &["class=\"read\"", "outcome=\"limited\""],
        );
    }
    let accepted_total: f64 = accepted_by_api.iter().sum();
    eprintln!(
        "accepted per API {accepted_by_api:?} (total {accepted_total}), limited {limited_total}; client saw {seen_accepted} accepted, {seen_limited} limited"
    );
    assert_eq!(
        accepted_total,
        f64::from(seen_accepted),
        "metrics agree with what clients saw"
    );
    assert_eq!(limited_total, f64::from(seen_limited));
    assert!(
        accepted_total <= f64::from(PER_MINUTE + BURST),
        "over a minute, at most the limit plus the burst: {accepted_total}"
    );
    // The limit binds, and it is a rate, not a refusal of everything.
    assert!(accepted_total >= f64::from(PER_MINUTE), "{accepted_total}");
    assert!(
        accepted_total + limited_total >= 1.5 * f64::from(PER_MINUTE + BURST),
        "the callers offered well over the limit"
    );
    assert!(limited_total > 0.0);
    assert!(
        accepted_by_api.iter().all(|accepted| *accepted > 0.0),
        "every replica took its share: {accepted_by_api:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_api_is_refused_by_another_within_a_second() {
    let database = TestDatabase::create().await.expect("database");
    let redis = TestRedis::new();
    let apis = start_apis(2, &database, &redis, &[]).await;
    let admin_key = assay_testkit::api_key_with_scope(&database, "acme", KeyScope::Admin)
        .await
        .expect("key");
    let first = Client::new(apis[0].1.clone(), Some(admin_key));
    let created = first
        .post("/v1/keys", &json!({"name": "to revoke"}))
        .await
        .expect("created");
    assert_eq!(created.status, 201, "{:?}", created.body);
    let secret = created.body["secret"].as_str().expect("secret").to_owned();
    let key_id = created.body["id"].as_str().expect("id").to_owned();
    let second = Client::new(apis[1].1.clone(), Some(secret));
    assert_eq!(second.get("/v1/prompts").await.expect("answer").status, 200);

    let revoked = first
        .delete(&format!("/v1/keys/{key_id}"))
        .await
        .expect("revoked");
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    let revoked_at = Instant::now();
    let refused_after = eventually(
        Duration::from_secs(5),
        "the other API to refuse the key",
        || async {
            let response = second.get("/v1/prompts").await?;
            Ok((response.status == 401).then(|| revoked_at.elapsed()))
        },
    )
    .await
    .expect("refused");
    assert!(
        refused_after < Duration::from_secs(1),
        "refused after {refused_after:?}"
    );
    // And it stays refused, on both.
    for client in [&second, &Client::new(apis[0].1.clone(), second.key.clone())] {
        let response = client.get("/v1/models").await.expect("answer");
        assert_eq!(response.status, 401);
        assert_eq!(response.body["code"], "unauthorized");
    }
}

/// Runs `assay-api <args>` against `database`; returns (success, stdout, stderr).
fn assay_api(database: &TestDatabase, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(assay_testkit::binary("assay-api"))
        .args(args)
        .env("DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("assay-api runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_revoke_keys_and_set_limits_with_the_binary() {
    let database = TestDatabase::create().await.expect("database");
    let redis = TestRedis::new();
    let (ok, secret, stderr) = assay_api(
        &database,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ci",
            "--expires-in",
            "30d",
        ],
    );
    assert!(ok, "{stderr}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("assay_"), "{secret}");
    assert!(stderr.contains("expiring"), "{stderr}");
    let apis = start_apis(1, &database, &redis, &[]).await;
    let client = Client::new(apis[0].1.clone(), Some(secret.clone()));
    assert_eq!(client.get("/v1/prompts").await.expect("answer").status, 200);

    let (ok, listed, stderr) = assay_api(&database, &["keys", "list", "--tenant", "acme"]);
    assert!(ok, "{stderr}");
    let row = listed
        .lines()
        .find(|line| line.contains(&secret[..12]))
        .unwrap_or_else(|| panic!("the key is listed by its prefix: {listed}"));
    assert!(!listed.contains(&secret), "never the secret");
    assert!(
        row.contains("member") && row.contains("active") && row.contains("ci"),
        "{row}"
    );
    let key_id = row.split_whitespace().next().expect("id column");

    let (ok, _, stderr) = assay_api(
        &database,
        &[
            "limits",
            "set",
            "--tenant",
            "acme",
            "--reads-per-minute",
            "30",
        ],
    );
    assert!(ok, "{stderr}");
    let limits = client.get("/v1/limits").await.expect("limits");
    assert_eq!(limits.body["reads"]["per_minute"], 30, "{:?}", limits.body);

    let (ok, _, stderr) = assay_api(&database, &["keys", "revoke", key_id]);
    assert!(ok, "{stderr}");
    assert_eq!(client.get("/v1/prompts").await.expect("answer").status, 401);
    let (_, listed, _) = assay_api(&database, &["keys", "list"]);
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with(key_id) && line.contains("revoked")),
        "{listed}"
    );
    let (ok, _, stderr) = assay_api(
        &database,
        &["keys", "revoke", &uuid::Uuid::now_v7().to_string()],
    );
    assert!(!ok && stderr.contains("no key"), "{stderr}");
}
