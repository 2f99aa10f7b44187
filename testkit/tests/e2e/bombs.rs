//! One tenant's bombs against two workers: the hostile inputs of the
//! bounded-work review, submitted together by one tenant while another
//! tenant runs a 50-item evaluation. Each bomb is refused at submission or
//! ends `succeeded` with its runs `errored` naming the limit, within a
//! minute; both workers stay up; and the other tenant's evaluation takes at
//! most twice its solo time (both measured in this run, from the
//! evaluation's own timestamps).

use std::time::Duration;

use assay_testkit::Client;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::Stack;

/// The other tenant's evaluation: 50 items at 300 ms a call.
const VICTIM_ITEMS: usize = 50;
/// Items of each bomb: each costs a worker a whole render budget.
const BOMB_ITEMS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_bombs_leave_both_workers_up_and_another_tenant_on_time() {
    let mut stack = Stack::start(2, &["--concurrency", "8"]).await;
    let victim = stack.client.with_key(Some(
        assay_testkit::api_key(&stack.database, "victim")
            .await
            .unwrap(),
    ));
    let victim_setup = victim_setup(&victim).await;
    let solo = run_victim(&victim, &victim_setup).await;

    // Accepted bombs: each must end within a minute, errored naming its limit.
    let mut accepted = Vec::new();
    // A prompt whose render passes the fuel limit on items the trial render at
    // submission does not see (it renders the first 20).
    let loops =
        "{% for i in range(n) %}{% for j in range(n) %}.{% endfor %}{% endfor %}{{ question }}";
    let items: Vec<Value> = (0..BOMB_ITEMS)
        .map(|position| json!({"vars": {"question": format!("q{position}"), "n": if position < 20 { 2 } else { 100_000 }}}))
        .collect();
    let id = submit(
        &stack,
        loops,
        items,
        json!([{"type": "contains", "value": "q"}]),
    )
    .await;
    accepted.push((id.expect("accepted"), "steps to render"));
    // The same in a grader's value, and an exponential macro there.
    for value in [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    ] {
        let items: Vec<Value> = (0..BOMB_ITEMS)
            .map(|n| json!({"vars": {"question": format!("q{n}")}}))
            .collect();
        if let Some(id) = submit(
            &stack,
            "{{ question }}",
            items,
            json!([{"type": "contains", "value": value}]),
        )
        .await
        {
            accepted.push((id, "steps to render"));
        }
    }
    // A JSON path that visits every node many times over, on deeply nested answers.
    // 2^14 leaves, about 200 kB: every `..*` multiplies the nodes visited.
    let nested = (0..14).fold("1".to_owned(), |inner, _| {
        format!("{{\"a\": [{inner}, {inner}]}}")
    });
    let items: Vec<Value> = (0..20).map(|_| json!({"vars": {"doc": nested}})).collect();
    if let Some(id) = submit(
        &stack,
        "{{ doc }}",
        items,
        json!([{"type": "json-path", "path": "$..*..*..*..*..*..*", "equals": "1"}]),
    )
    .await
    {
        accepted.push((id, "JSON path"));
    }
    // Refused outright: the template bomb that is one on every item, a
    // mock latency that overflows, and weights that overflow a score.
    let items: Vec<Value> = (0..5)
        .map(|n| json!({"vars": {"question": format!("q{n}")}}))
        .collect();
    assert!(
        submit(
            &stack,
            r#"{% set s = "x" * 10000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}"#,
            items.clone(),
            json!([{"type": "contains", "value": "q"}])
        )
        .await
        .is_none()
    );
    assert!(
        submit_to(
            &stack,
            "{{ question }}",
            items.clone(),
            json!([{"type": "contains", "value": "q"}]),
            "mock:latency=18446744073709551615s,jitter=1s"
        )
        .await
        .is_none()
    );
    assert!(submit(&stack, "{{ question }}", items, json!([{"type": "contains", "value": "q", "weight": 1e308}, {"type": "contains", "value": "q", "weight": 1e308}])).await.is_none());

    eprintln!(
        "bombs accepted (they must end errored): {:?}",
        accepted.iter().map(|(_, says)| *says).collect::<Vec<_>>()
    );
    let beside = run_victim(&victim, &victim_setup).await;
    let victim_finished = Utc::now();
    for (id, says) in &accepted {
        let evaluation = stack.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
        eprintln!(
            "bomb ({says}) ran from {} to {}",
            evaluation["created_at"], evaluation["finished_at"]
        );
        let errored = stack
            .results(id)
            .await
            .into_iter()
            .filter(|result| result["status"] == "errored")
            .collect::<Vec<_>>();
        assert!(
            !errored.is_empty(),
            "the bomb's runs end errored: {evaluation}"
        );
        for result in errored {
            let error = result["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{says:?} in {error}");
        }
    }
    for (index, (worker, _)) in stack.workers.iter_mut().enumerate() {
        assert!(worker.is_running(), "worker {index} is up");
    }
    eprintln!("victim beside the bombs finished at {victim_finished}");
    let ratio = beside.as_secs_f64() / solo.as_secs_f64();
    eprintln!("victim: solo {solo:?}, beside the bombs {beside:?} ({ratio:.2}x)");
    assert!(
        ratio <= 2.0,
        "the other tenant's evaluation took {ratio:.2}x its solo time"
    );
}

struct VictimSetup {
    version: Value,
    dataset: Value,
}

async fn victim_setup(victim: &Client) -> VictimSetup {
    let prompt = victim
        .post(
            "/v1/prompts",
            &json!({"name": "victim", "messages": [{"role": "user", "content": "{{ question }}"}]}),
        )
        .await
        .unwrap();
    assert_eq!(prompt.status, 201, "{:?}", prompt.body);
    let items: Vec<Value> = (0..VICTIM_ITEMS)
        .map(|n| json!({"vars": {"question": format!("q{n}")}, "expected": format!("q{n}")}))
        .collect();
    let dataset = victim
        .post("/v1/datasets", &json!({"name": "victim", "items": items}))
        .await
        .unwrap();
    assert_eq!(dataset.status, 201, "{:?}", dataset.body);
    VictimSetup {
        version: prompt.body["latest_version"]["id"].clone(),
        dataset: dataset.body["id"].clone(),
    }
}

/// Runs the victim's evaluation; its time from creation to finish.
async fn run_victim(victim: &Client, setup: &VictimSetup) -> Duration {
    let submitted = victim
        .post(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": setup.version,
                "dataset_id": setup.dataset,
                "models": ["mock:latency=300ms"],
                "graders": [{"type": "contains", "value": "{{ expected }}"}],
                "cache": false,
            }),
        )
        .await
        .unwrap();
    assert_eq!(submitted.status, 202, "{:?}", submitted.body);
    let id = submitted.body["id"].as_str().unwrap().to_owned();
    let evaluation =
        assay_testkit::eventually(Duration::from_secs(120), "the victim to finish", || async {
            let evaluation = victim.get(&format!("/v1/evaluations/{id}")).await?.body;
            Ok((evaluation["status"] == "succeeded").then_some(evaluation))
        })
        .await
        .unwrap();
    assert_eq!(evaluation["counts"]["passed"], VICTIM_ITEMS, "{evaluation}");
    let at = |field: &str| {
        evaluation[field]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
    };
    (at("finished_at") - at("created_at")).to_std().unwrap()
}

async fn submit(
    stack: &Stack,
    template: &str,
    items: Vec<Value>,
    graders: Value,
) -> Option<String> {
    submit_to(stack, template, items, graders, "mock").await
}

/// Submits as the bombing tenant; the evaluation's id, or None when refused with 422.
async fn submit_to(
    stack: &Stack,
    template: &str,
    items: Vec<Value>,
    graders: Value,
    model: &str,
) -> Option<String> {
    let prompt = stack
        .client
        .post(
            "/v1/prompts",
            &json!({"name": format!("bomb-{}", uuid::Uuid::new_v4()), "messages": [{"role": "user", "content": template}]}),
        )
        .await
        .unwrap();
    assert_eq!(prompt.status, 201, "{:?}", prompt.body);
    let dataset = stack
        .client
        .post("/v1/datasets", &json!({"name": "bomb", "items": items}))
        .await
        .unwrap();
    assert_eq!(dataset.status, 201, "{:?}", dataset.body);
    let submitted = stack
        .client
        .post(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": prompt.body["latest_version"]["id"],
                "dataset_id": dataset.body["id"],
                "models": [model],
                "graders": graders,
            }),
        )
        .await
        .unwrap();
    match submitted.status {
        202 => Some(submitted.body["id"].as_str().unwrap().to_owned()),
        422 => None,
        other => panic!("a bomb got {other}: {:?}", submitted.body),
    }
}
