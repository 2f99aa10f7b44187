//! What the web viewer needs from the API: the viewer itself served with
//! strict headers, results filters (keyset-paginated), the latency
//! histogram, and the events stream of one evaluation.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::{TestApp, id};

async fn sql(app: &TestApp, statement: String) {
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// An evaluation of `items` items × models `a` and `b`, queued (no worker
/// runs here); returns its id.
async fn evaluation(app: &TestApp, items: usize) -> String {
    let (_, version) = app.prompt(&app.client, "p", "{{ question }}").await;
    let dataset = app.dataset(&app.client, items).await;
    let response = app
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock:seed=1", "mock:seed=2"],
                    "graders": [{"type": "contains", "value": "{{ expected }}"}, {"type": "is-json"}]}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    id(&response.body["id"])
}

/// The status a seeded row gets: passed, failed or errored by position and model.
fn seeded_status(position: usize, model: &str) -> &'static str {
    match (position % 4, model) {
        (0, _) => "passed",
        (1, "mock:seed=1") => "failed",
        (2, _) => "failed",
        (3, "mock:seed=2") => "errored",
        _ => "passed",
    }
}

/// Writes a result row per item × model with known outputs, grades and latencies.
async fn seed(app: &TestApp, evaluation: &str, items: usize) {
    let mut values = Vec::new();
    for position in 0..items {
        for model in ["mock:seed=1", "mock:seed=2"] {
            let status = seeded_status(position, model);
            // The second grader (is-json) fails on every failed row of an even position.
            let second_passes = !(status == "failed" && position % 2 == 0);
            let grades = json!([
                {"grader": "contains", "passed": status == "passed", "score": 1.0, "reason": "r"},
                {"grader": "is-json", "passed": second_passes, "score": 1.0, "reason": "r"},
            ]);
            let output = if position == 7 {
                "100% sure_of it".to_owned()
            } else {
                format!("answer {position} from {model}")
            };
            values.push(format!(
                "('{evaluation}'::uuid, '{model}', {position}, 0, '{status}', '{output}', '{grades}'::jsonb, {latency})",
                latency = 100 + position * 10
            ));
        }
    }
    sql(
        app,
        format!(
            "INSERT INTO evaluation_results (evaluation_id, model, item_position, repeat_index, status, output, grades, latency_ms, tenant_id, item_key) \
             SELECT v.e, v.m, v.p, v.r, v.s, v.o, v.g, v.l, e.tenant_id, 'item-' || v.p \
             FROM (VALUES {}) AS v(e, m, p, r, s, o, g, l) JOIN evaluations e ON e.id = v.e",
            values.join(", ")
        ),
    )
    .await;
}

/// Every row of a filtered listing, page by page (`limit` per page).
async fn all_pages(app: &TestApp, evaluation: &str, filter: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/evaluations/{evaluation}/results?limit={limit}{filter}");
        if let Some(after) = &after {
            path += &format!("&after={}", encode(after));
        }
        let page = app.client.get(&path).await.unwrap();
        assert_eq!(page.status, 200, "{path}: {:?}", page.body);
        let data = page.body["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        rows.extend(data.iter().cloned());
        match page.body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return rows,
        }
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn keys(rows: &[Value]) -> Vec<(i64, String)> {
    rows.iter()
        .map(|row| {
            (
                row["item_position"].as_i64().unwrap(),
                row["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn results_filter_by_model_status_grader_text_and_positions_page_by_page() {
    let app = TestApp::spawn().await;
    let items = 24;
    let evaluation = evaluation(&app, items).await;
    seed(&app, &evaluation, items).await;
    let expected = |keep: &dyn Fn(usize, &str) -> bool| -> Vec<(i64, String)> {
        let mut rows = Vec::new();
        for position in 0..items {
            for model in ["mock:seed=1", "mock:seed=2"] {
                if keep(position, model) {
                    rows.push((position as i64, model.to_owned()));
                }
            }
        }
        rows
    };

    // Status, alone and with a model, over pages of 3 (the cursor keeps the filter).
    let failed = all_pages(&app, &evaluation, "&status=failed", 3).await;
    assert_eq!(
        keys(&failed),
        expected(&|p, m| seeded_status(p, m) == "failed")
    );
    let errored_b = all_pages(
        &app,
        &evaluation,
        "&status=errored&model=mock%3Aseed%3D2",
        2,
    )
    .await;
    assert_eq!(
        keys(&errored_b),
        expected(&|p, m| m == "mock:seed=2" && seeded_status(p, m) == "errored")
    );
    // The second grader (index 1) failed on failed rows of even positions.
    let grader = all_pages(&app, &evaluation, "&failed_grader=1", 4).await;
    assert_eq!(
        keys(&grader),
        expected(&|p, m| seeded_status(p, m) == "failed" && p % 2 == 0)
    );
    // Text in the output (case-insensitive), `%` and `_` taken literally ...
    let text = all_pages(&app, &evaluation, "&q=FROM%20MOCK%3Aseed%3D1", 5).await;
    assert_eq!(keys(&text), expected(&|p, m| m == "mock:seed=1" && p != 7));
    let literal = all_pages(&app, &evaluation, "&q=0%25%20sure_", 5).await;
    assert_eq!(keys(&literal), expected(&|p, _| p == 7));
    let nothing = all_pages(&app, &evaluation, "&q=0_%20sure", 5).await;
    assert!(nothing.is_empty(), "{nothing:?}");
    // ... and in the item's variables (question q<n>): q1 is in q1 and q10..q19.
    let vars = all_pages(
        &app,
        &evaluation,
        "&q=q1&model=mock%3Aseed%3D1&vars=true",
        50,
    )
    .await;
    assert_eq!(
        keys(&vars),
        expected(&|p, m| m == "mock:seed=1" && p.to_string().starts_with('1'))
    );
    for row in &vars {
        assert_eq!(
            row["vars"],
            json!({"question": format!("q{}", row["item_position"])})
        );
    }
    // Positions (a comparison's changed items).
    let positions = all_pages(&app, &evaluation, "&positions=3,5,22", 10).await;
    assert_eq!(keys(&positions), expected(&|p, _| [3, 5, 22].contains(&p)));
    // Without vars=true rows have no vars field.
    let plain = app
        .client
        .get(&format!("/v1/evaluations/{evaluation}/results?limit=1"))
        .await
        .unwrap();
    assert!(plain.body["data"][0].get("vars").is_none());

    // Bad filters are 400 problems naming what is wrong.
    for (query, words) in [
        ("status=won", "status must be"),
        ("failed_grader=-1", "failed_grader"),
        ("positions=1,x", "positions"),
        ("limit=0", "limit"),
        ("colour=red", "unknown field"),
    ] {
        let response = app
            .client
            .get(&format!("/v1/evaluations/{evaluation}/results?{query}"))
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{query}: {:?}", response.body);
        assert!(
            response.body["detail"].as_str().unwrap().contains(words),
            "{query}: {:?}",
            response.body
        );
    }
    let long = "x".repeat(201);
    let response = app
        .client
        .get(&format!("/v1/evaluations/{evaluation}/results?q={long}"))
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    // Another tenant sees nothing.
    let other = app.client_for("someone-else").await;
    let response = other
        .get(&format!(
            "/v1/evaluations/{evaluation}/results?status=failed"
        ))
        .await
        .unwrap();
    assert_eq!(response.status, 404);

    // The latency histogram counts every answered call once.
    let histogram = app
        .client
        .get(&format!("/v1/evaluations/{evaluation}/latency?buckets=5"))
        .await
        .unwrap();
    assert_eq!(histogram.status, 200, "{:?}", histogram.body);
    let histogram = &histogram.body["histogram"];
    assert_eq!(histogram["low_ms"], 100);
    assert_eq!(histogram["high_ms"], 100 + (items as i64 - 1) * 10);
    for model in histogram["models"].as_array().unwrap() {
        let counts: Vec<i64> = model["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|count| count.as_i64().unwrap())
            .collect();
        assert_eq!(counts.len(), 5);
        assert_eq!(counts.iter().sum::<i64>(), items as i64, "{model}");
        // 24 latencies 100..=330 ms, 10 ms apart, in 5 buckets of 46.2 ms.
        assert_eq!(counts, [5, 5, 4, 5, 5], "{model}");
    }
    let refused = app
        .client
        .get(&format!("/v1/evaluations/{evaluation}/latency?buckets=0"))
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
}

#[tokio::test]
async fn the_viewer_is_served_with_strict_headers_and_the_root_redirects_to_it() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &app.client.base_url;
    let root = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.status(), 302);
    assert_eq!(root.headers()["location"], "/ui/");
    for path in [
        "/ui/",
        "/ui/evaluations/0190e0f0-0000-7000-8000-000000000000/results",
        "/ui/prompts",
    ] {
        let page = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers().clone();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(headers.get("set-cookie").is_none());
        let html = page.text().await.unwrap();
        // Every script is a file of the viewer's own; none is inline.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script type=\"module\" src=\"/ui/assets/")
                .count()
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing from elsewhere"
        );
    }
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("format.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let response = http
            .get(format!("{base}/ui/assets/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        let body = response.text().await.unwrap();
        // Self-contained: no other host, no font or script from a CDN.
        assert!(
            !body.contains("https://") && !body.contains("//cdn"),
            "{asset}"
        );
    }
    let missing = http
        .get(format!("{base}/ui/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let metrics = app.client.get("/metrics").await.unwrap();
    let metrics = metrics.body.as_str().unwrap();
    assert!(
        metrics.contains("assay_ui_requests_total{kind=\"page\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("assay_ui_requests_total{kind=\"missing\"} 1"));
}

/// Reads the stream until `done` holds for the events read so far.
async fn read_events(
    response: &mut reqwest::Response,
    events: &mut Vec<(String, Value)>,
    done: impl Fn(&[(String, Value)]) -> bool,
) {
    let mut buffer = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !done(events) {
            let Some(chunk) = response.chunk().await.unwrap() else {
                return;
            };
            buffer += std::str::from_utf8(&chunk).unwrap();
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data += value;
                    }
                }
                if !name.is_empty() {
                    events.push((name, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    })
    .await
    .expect("events arrive in time");
}

#[tokio::test]
async fn events_stream_progress_and_status_then_the_summary_and_end() {
    let app = TestApp::spawn().await;
    let evaluation = evaluation(&app, 4).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/evaluations/{evaluation}/events", app.client.base_url);
    let key = app.client.key.clone().unwrap();

    // Without a key, or as another tenant: no stream.
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let other = app.client_for("someone-else").await;
    let response = other
        .get(&format!("/v1/evaluations/{evaluation}/events"))
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.body["code"], "not_found", "{:?}", response.body);

    let mut stream = http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = Vec::new();
    read_events(&mut stream, &mut events, |events| events.len() >= 2).await;
    assert_eq!(
        events[0],
        (
            "status".to_owned(),
            json!({"status": "queued", "run": 1, "error": null})
        )
    );
    assert_eq!(events[1].0, "progress");
    assert_eq!(events[1].1["completed"], 0);
    assert_eq!(events[1].1["total"], 8);
    let metrics = app.client.get("/metrics").await.unwrap();
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("assay_evaluation_event_streams_open 1"),
        "one stream is open"
    );

    // The worker's writes, as it would make them: rows, then counters, then the status.
    seed(&app, &evaluation, 2).await;
    sql(
        &app,
        format!("UPDATE evaluations SET status = 'running', completed = 4, passed = 1, failed = 2, errored = 1 WHERE id = '{evaluation}'"),
    )
    .await;
    read_events(&mut stream, &mut events, |events| {
        events.iter().filter(|(name, _)| name == "progress").count() >= 2
            && events
                .iter()
                .any(|(name, data)| name == "status" && data["status"] == "running")
    })
    .await;
    let progress = events.iter().rfind(|(name, _)| name == "progress").unwrap();
    assert_eq!(
        (
            progress.1["completed"].clone(),
            progress.1["passed"].clone(),
            progress.1["failed"].clone(),
            progress.1["errored"].clone()
        ),
        (json!(4), json!(1), json!(2), json!(1))
    );
    let summary = json!({"models": [], "total_cost_usd": 0.0});
    sql(
        &app,
        format!("UPDATE evaluations SET status = 'succeeded', summary = '{summary}'::jsonb WHERE id = '{evaluation}'"),
    )
    .await;
    read_events(&mut stream, &mut events, |events| {
        events.iter().any(|(name, _)| name == "end")
    })
    .await;
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let tail = &names[names.len() - 3..];
    assert_eq!(tail, ["status", "summary", "end"], "{names:?}");
    let summary_event = &events[events.len() - 2].1;
    assert_eq!(summary_event["status"], "succeeded");
    assert_eq!(summary_event["summary"], summary);
    // The server ends the stream after `end`.
    let rest = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(rest.is_none());
    let seen: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        seen,
        BTreeSet::from(["status", "progress", "summary", "end"])
    );
    assay_testkit::eventually(
        Duration::from_secs(10),
        "the open-streams gauge to drop",
        || async {
            let metrics = app.client.get("/metrics").await?;
            Ok(metrics
                .body
                .as_str()
                .unwrap_or_default()
                .contains("assay_evaluation_event_streams_open 0")
                .then_some(()))
        },
    )
    .await
    .unwrap();
}

/// `/docs` and its files come from the binary with the viewer's strict
/// headers, and read the API's own `/openapi.json`.
#[tokio::test]
async fn the_docs_page_is_served_from_the_binary_with_strict_headers() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let base = &app.client.base_url;
    let page = http.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script type=\"module\" src=\"/docs/assets/")
            .count()
    );
    assert!(!html.contains("http://") && !html.contains("https://"));
    for (asset, kind) in [("docs.js", "text/javascript"), ("docs.css", "text/css")] {
        let file = http
            .get(format!("{base}/docs/assets/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(file.status(), 200, "{asset}");
        assert!(
            file.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(file.headers().contains_key("content-security-policy"));
        let text = file.text().await.unwrap();
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "{asset}"
        );
        if asset == "docs.js" {
            assert!(text.contains("fetch(\"/openapi.json\")"));
        }
    }
    let missing = http
        .get(format!("{base}/docs/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let document = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(document.status(), 200);
    assert!(
        document.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let document: Value = document.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/docs"]["get"].is_object());
    assert!(document["paths"]["/v1/evaluations/{evaluation_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object());
}
