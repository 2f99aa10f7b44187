//! The web viewer in a real browser: headless Chromium (Debian's package,
//! `make deps`) over WebDriver, against the real API and a worker. What the
//! pages show is checked against what the API answers; every request the
//! pages make is recorded and must go to the API's origin.
//!
//! Screenshots of every page go to a directory the test prints
//! (`ASSAY_UI_SCREENSHOTS` to choose it, e.g. `docs/screenshots`).

use std::path::PathBuf;
use std::time::Duration;

use assay_testkit::Browser;
use serde_json::{Value, json};

use crate::{Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(60);
/// Items of the evaluation watched live: 500 ms each, two at a time (~12 s).
const SLOW_ITEMS: usize = 48;

fn screenshots_dir() -> PathBuf {
    let dir = std::env::var("ASSAY_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!(
                "assay-ui-screenshots-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
        });
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// The page on screen has finished rendering `page`.
async fn page_ready(browser: &Browser, page: &str) {
    browser
        .wait_for(
            &format!("the {page} page to render"),
            &format!(
                "document.querySelector('#app[data-state=\"ready\"][data-page=\"{page}\"]') !== null"
            ),
            WAIT,
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
}

/// Every URL the current document has loaded or fetched (resource timing
/// keeps them all, fetches included), and the document's own.
async fn requested_urls(browser: &Browser) -> Vec<String> {
    let urls = browser
        .execute(
            "return [location.href, ...performance.getEntriesByType('resource').map((entry) => entry.name)];",
            vec![],
        )
        .await
        .unwrap();
    urls.as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap().to_owned())
        .collect()
}

/// Records the current document's requests into `seen` (called before
/// every navigation, which starts a new record).
async fn record(browser: &Browser, seen: &mut Vec<String>) {
    browser
        .execute("performance.setResourceTimingBufferSize(100000);", vec![])
        .await
        .unwrap();
    seen.extend(requested_urls(browser).await);
}

async fn shot(browser: &Browser, dir: &std::path::Path, name: &str) {
    browser
        .screenshot(&dir.join(format!("{name}.png")))
        .await
        .unwrap();
}

async fn text(browser: &Browser, css: &str) -> String {
    browser
        .execute(
            "const node = document.querySelector(arguments[0]); return node ? node.textContent : null;",
            vec![json!(css)],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_else(|| panic!("{css} is not on the page"))
        .to_owned()
}

async fn count(browser: &Browser, css: &str) -> usize {
    browser
        .execute(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap() as usize
}

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

#[tokio::test]
async fn the_viewer_shows_what_the_api_answers_in_a_real_browser() {
    // Small chunks, so a slow evaluation writes its results a few at a time
    // and the events stream has progress to show.
    let options = StackOptions {
        env: vec![("ASSAY_CHUNK_RUNS", "4".to_owned())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(1, &["--concurrency", "2"], options).await;
    let origin = stack.client.base_url.clone();
    let key = stack.client.key.clone().unwrap();
    let dir = screenshots_dir();
    println!("screenshots of the viewer: {}", dir.display());
    let browser = Browser::start(1280, 900)
        .await
        .expect("headless Chromium starts");
    let mut seen = Vec::new();

    // A slow evaluation, to watch live.
    let graders = json!([{"type": "contains", "value": "{{ expected }}"}]);
    let slow = stack
        .submit(SLOW_ITEMS, &["mock:latency=500ms"], graders.clone())
        .await;

    // `/` leads to the viewer, which asks for a key; a wrong one is refused clearly.
    browser.goto(&format!("{origin}/")).await.unwrap();
    page_ready(&browser, "signin").await;
    assert_eq!(browser.url().await.unwrap(), format!("{origin}/ui/"));
    browser
        .type_into("#api-key", "assay_not-a-real-key")
        .await
        .unwrap();
    browser.click("#signin button[type=submit]").await.unwrap();
    let refusal = browser
        .wait_for(
            "the sign-in error",
            "!document.querySelector('#signin-error').hidden && document.querySelector('#signin-error').textContent",
            WAIT,
        )
        .await
        .unwrap();
    assert!(refusal.as_str().unwrap().contains("refused"), "{refusal}");
    shot(&browser, &dir, "signin-error").await;

    // Signing in with the right key, on the slow evaluation's page: its
    // progress moves over the events stream, without reloading the page.
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{slow}"))
        .await
        .unwrap();
    page_ready(&browser, "signin").await;
    browser.type_into("#api-key", &key).await.unwrap();
    browser.click("#signin button[type=submit]").await.unwrap();
    page_ready(&browser, "evaluation").await;
    browser
        .execute("window.sameDocument = true;", vec![])
        .await
        .unwrap();
    let updates = browser
        .wait_for(
            "a live progress update over the events stream",
            "Number(document.querySelector('#app').dataset.liveUpdates || 0) >= 1 \
             && document.querySelector('#progress') \
             && document.querySelector('#progress').value > 0 \
             && document.querySelector('#progress').value < 48 \
             && document.querySelector('#progress-text').textContent",
            WAIT,
        )
        .await;
    let updates = match updates {
        Ok(updates) => updates,
        Err(error) => {
            let state = browser
                .execute("return [JSON.stringify(document.querySelector('#app').dataset), document.querySelector('#app').innerText.slice(0, 500)];", vec![])
                .await
                .unwrap();
            let api = stack
                .client
                .get(&format!("/v1/evaluations/{slow}/progress"))
                .await
                .unwrap();
            panic!("{error}: page {state}, api {:?}", api.body);
        }
    };
    let shown: i64 = updates
        .as_str()
        .unwrap()
        .split(" / ")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..SLOW_ITEMS as i64).contains(&shown), "{updates}");
    let api_progress = stack
        .client
        .get(&format!("/v1/evaluations/{slow}/progress"))
        .await
        .unwrap();
    assert!(
        api_progress.body["completed"].as_i64().unwrap() >= shown,
        "the page shows no more than the API has: {updates} vs {:?}",
        api_progress.body
    );
    shot(&browser, &dir, "evaluation-running").await;
    // The stream ends with the summary: the page shows it in place.
    browser
        .wait_for(
            "the summary after the stream's end",
            "window.sameDocument === true && document.querySelector('#summary') !== null \
             && document.querySelector('#status').dataset.status === 'succeeded'",
            WAIT,
        )
        .await
        .unwrap();
    let key_in_storage = browser
        .execute(
            "return [sessionStorage.getItem('assay.apiKey'), document.cookie];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        key_in_storage,
        json!([key, ""]),
        "the key lives in sessionStorage only"
    );

    // Two evaluations of one dataset by two versions of one prompt.
    let models = ["mock", "mock:wrong=0.4"];
    let a = stack.submit(30, &models, graders.clone()).await;
    let a_body = stack.wait_finished(&a, WAIT).await;
    assert_eq!(a_body["status"], "succeeded");
    let prompt_id = a_body["prompt_id"].as_str().unwrap().to_owned();
    let committed = stack
        .client
        .post(
            &format!("/v1/prompts/{prompt_id}/versions"),
            &json!({"messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "Please, {{ question }}"}],
                    "commit_message": "Ask politely"}),
        )
        .await
        .unwrap();
    assert_eq!(committed.status, 201, "{:?}", committed.body);
    let b = stack
        .submit_body(json!({
            "prompt_version_id": committed.body["id"],
            "dataset_id": a_body["dataset_id"],
            "models": models,
            "graders": graders,
        }))
        .await;
    let b_body = stack.wait_finished(&b, WAIT).await;
    assert_eq!(b_body["status"], "succeeded");

    // The list: newest first, with what the API says.
    record(&browser, &mut seen).await;
    browser.goto(&format!("{origin}/ui/")).await.unwrap();
    page_ready(&browser, "evaluations").await;
    let listed = browser
        .execute(
            "return [...document.querySelectorAll('#evaluations tbody tr')].map((row) => [row.dataset.id, row.dataset.status]);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        listed,
        json!([[b, "succeeded"], [a, "succeeded"], [slow, "succeeded"]])
    );
    shot(&browser, &dir, "evaluations").await;

    // One evaluation: every summary figure as the API has it.
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{a}"))
        .await
        .unwrap();
    page_ready(&browser, "evaluation").await;
    for figures in a_body["summary"]["models"].as_array().unwrap() {
        let model = figures["model"].as_str().unwrap();
        let cell =
            |field: &str| format!("#summary tr[data-model=\"{model}\"] [data-field=\"{field}\"]");
        for field in ["total", "passed", "failed", "errored"] {
            assert_eq!(
                text(&browser, &cell(field)).await,
                figures[field].as_i64().unwrap().to_string(),
                "{model} {field}"
            );
        }
        assert_eq!(
            text(&browser, &cell("pass_rate")).await,
            percent(figures["pass_rate"].as_f64().unwrap())
        );
    }
    assert_eq!(
        count(&browser, "svg.chart").await,
        3,
        "pass rates, cost and latency charts"
    );
    assert!(
        count(&browser, "#action-cancel[disabled]").await == 1
            && count(&browser, "#action-resume[disabled]").await == 1,
        "a succeeded evaluation can be neither canceled nor resumed"
    );
    shot(&browser, &dir, "evaluation").await;

    // Results filtered to failed rows: as many rows as the API counts.
    let failed = a_body["counts"]["failed"].as_i64().unwrap();
    assert!(failed > 0, "the wrong=0.4 model fails some items");
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{a}/results"))
        .await
        .unwrap();
    page_ready(&browser, "results").await;
    assert_eq!(
        count(&browser, "#results tbody tr").await,
        50,
        "a first page"
    );
    browser
        .execute(
            "document.querySelector('#filter-status').value = 'failed';",
            vec![],
        )
        .await
        .unwrap();
    browser.click("#apply-filters").await.unwrap();
    browser
        .wait_for(
            "the filtered results",
            "location.search.includes('status=failed') && document.querySelector('#app').dataset.state === 'ready'",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        count(&browser, "#results tbody tr").await as i64,
        failed,
        "failed rows after filtering"
    );
    assert_eq!(
        count(&browser, "#results tbody tr[data-status=\"failed\"]").await as i64,
        failed
    );
    // Keyboard: down to the second row, Enter opens its full record.
    browser
        .execute(
            "document.querySelector('#results tbody tr').focus();",
            vec![],
        )
        .await
        .unwrap();
    browser.keys("\u{E015}\u{E007}").await.unwrap();
    browser
        .wait_for(
            "the record to open",
            "!document.querySelector('#record').hidden && document.querySelector('#record-output')",
            WAIT,
        )
        .await
        .unwrap();
    let api_failed = stack
        .client
        .get(&format!(
            "/v1/evaluations/{a}/results?status=failed&limit=2"
        ))
        .await
        .unwrap();
    assert_eq!(
        text(&browser, "#record-output").await,
        api_failed.body["data"][1]["output"].as_str().unwrap()
    );
    // The rendered messages: the prompt's templates with the item's variables.
    let messages = browser
        .execute(
            "return [...document.querySelectorAll('#record .message pre')].map((node) => node.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        messages,
        json!([
            "Answer briefly.",
            api_failed.body["data"][1]["vars"]["question"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| crate::question(
                    api_failed.body["data"][1]["item_position"]
                        .as_u64()
                        .unwrap() as usize
                ))
        ])
    );
    shot(&browser, &dir, "results-failed").await;
    browser
        .execute(
            "document.querySelector('#record').scrollIntoView();",
            vec![],
        )
        .await
        .unwrap();
    shot(&browser, &dir, "result-record").await;

    // The comparison: its differing rows, regressions first, and its statistics.
    let comparison = stack
        .client
        .get(&format!("/v1/evaluations/{a}/compare/{b}?limit=50"))
        .await
        .unwrap();
    assert_eq!(comparison.status, 200, "{:?}", comparison.body);
    let mut expected_rows = Vec::new();
    for pair in comparison.body["pairs"].as_array().unwrap() {
        for direction in ["regressions", "improvements"] {
            for item in pair[direction]["items"].as_array().unwrap() {
                expected_rows.push(json!([direction, item["position"]]));
            }
        }
    }
    assert!(
        !expected_rows.is_empty(),
        "a different prompt changes which items the mock gets wrong"
    );
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/compare?a={a}&b={b}"))
        .await
        .unwrap();
    page_ready(&browser, "compare").await;
    let rows = browser
        .execute(
            "return [...document.querySelectorAll('#changes tbody tr')].map((row) => [row.dataset.direction, Number(row.dataset.position)]);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows, Value::Array(expected_rows));
    let p_values: Vec<String> = browser
        .execute(
            "return [...document.querySelectorAll('#compare-rates [data-field=\"p\"]')].map((cell) => cell.textContent);",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_str().unwrap().to_owned())
        .collect();
    let api_p_values: Vec<String> = comparison.body["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let p = pair["significance"]["p_value"].as_f64().unwrap();
            if p < 0.0001 {
                "< 0.0001".to_owned()
            } else {
                format!("{p:.4}")
            }
        })
        .collect();
    assert_eq!(p_values, api_p_values);
    assert!(
        count(&browser, "#changes ins").await > 0,
        "the word-level diff marks what B added"
    );
    shot(&browser, &dir, "compare").await;

    // Prompts: the list, then the versions graph and a diff of v1 and v2.
    record(&browser, &mut seen).await;
    browser.goto(&format!("{origin}/ui/prompts")).await.unwrap();
    page_ready(&browser, "prompts").await;
    assert_eq!(count(&browser, "#prompts tbody tr").await, 2);
    shot(&browser, &dir, "prompts").await;
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/prompts/{prompt_id}?from=1&to=2"))
        .await
        .unwrap();
    page_ready(&browser, "prompt").await;
    assert_eq!(count(&browser, "svg.graph .node").await, 2);
    assert_eq!(
        count(&browser, ".diff-changed").await,
        1,
        "{}",
        text(&browser, "#app").await
    );
    assert!(
        text(&browser, "#diff")
            .await
            .contains("+Please, {{ question }}")
    );
    shot(&browser, &dir, "prompt").await;

    // Another tenant's evaluation: "not found", nothing of it.
    let other = {
        let pool = stack.database.pool(1);
        let mut conn = pool.get().await.unwrap();
        assay_testkit::bare_evaluation(&mut conn, 3)
            .await
            .unwrap()
            .1
    };
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{other}"))
        .await
        .unwrap();
    page_ready(&browser, "not-found").await;
    assert_eq!(text(&browser, "#not-found").await, "Not found");
    shot(&browser, &dir, "not-found").await;

    // A key revoked while a tab uses it: the next page sends the tab back to
    // sign-in with a message that says so, and the key no longer signs in.
    let admin = assay_testkit::Client::new(
        origin.clone(),
        Some(
            assay_testkit::api_key_with_scope(
                &stack.database,
                "e2e",
                assay_core::db::models::api_keys::KeyScope::Admin,
            )
            .await
            .unwrap(),
        ),
    );
    let created = admin
        .post("/v1/keys", &json!({"name": "a viewer tab"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let doomed = created.body["secret"].as_str().unwrap().to_owned();
    browser
        .execute(
            "sessionStorage.setItem('assay.apiKey', arguments[0]);",
            vec![json!(doomed)],
        )
        .await
        .unwrap();
    record(&browser, &mut seen).await;
    browser.goto(&format!("{origin}/ui/")).await.unwrap();
    page_ready(&browser, "evaluations").await;
    let revoked = admin
        .delete(&format!(
            "/v1/keys/{}",
            created.body["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{a}"))
        .await
        .unwrap();
    let message = browser
        .wait_for(
            "the revoked key's sign-in message",
            "document.querySelector('#signin-error') && !document.querySelector('#signin-error').hidden \
             && document.querySelector('#signin-error').textContent",
            WAIT,
        )
        .await
        .unwrap();
    assert!(message.as_str().unwrap().contains("revoked"), "{message}");
    let stored = browser
        .execute("return sessionStorage.getItem('assay.apiKey');", vec![])
        .await
        .unwrap();
    assert_eq!(stored, Value::Null, "a refused key is forgotten");
    assert!(
        !text(&browser, "#app").await.contains(&a.to_string()),
        "nothing of the evaluation is shown"
    );
    shot(&browser, &dir, "signin-revoked").await;
    browser.type_into("#api-key", &doomed).await.unwrap();
    browser.click("#signin button[type=submit]").await.unwrap();
    browser
        .wait_for(
            "the revoked key refused at sign-in",
            "document.querySelector('#signin-error').textContent.includes('refused') \
             && sessionStorage.getItem('assay.apiKey') === null",
            WAIT,
        )
        .await
        .unwrap();
    record(&browser, &mut seen).await;
    browser.type_into("#api-key", &key).await.unwrap();
    browser.click("#signin button[type=submit]").await.unwrap();
    page_ready(&browser, "evaluation").await;

    // Dark and light follow the system setting.
    for (scheme, background) in [("dark", "rgb(15, 18, 22)"), ("light", "rgb(247, 248, 250)")] {
        browser.prefer_color_scheme(scheme).await.unwrap();
        record(&browser, &mut seen).await;
        browser
            .goto(&format!("{origin}/ui/evaluations/{a}"))
            .await
            .unwrap();
        page_ready(&browser, "evaluation").await;
        let colours = browser
            .execute(
                "const style = getComputedStyle(document.body); \
                 return [style.backgroundColor, style.color];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(colours[0], json!(background), "{scheme}: {colours}");
        assert_ne!(
            colours[0], colours[1],
            "{scheme}: text readable on its background"
        );
        if scheme == "dark" {
            shot(&browser, &dir, "evaluation-dark").await;
        }
    }

    // A phone's width: nothing wider than the screen but the tables' own scroll.
    browser.set_size(390, 844).await.unwrap();
    record(&browser, &mut seen).await;
    browser
        .goto(&format!("{origin}/ui/evaluations/{a}"))
        .await
        .unwrap();
    page_ready(&browser, "evaluation").await;
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 1,
        "page overflows a phone: {overflow}"
    );
    shot(&browser, &dir, "evaluation-phone").await;
    browser.set_size(1280, 900).await.unwrap();

    // Signing out forgets the key.
    browser.click("#sign-out").await.unwrap();
    page_ready(&browser, "signin").await;
    let stored = browser
        .execute("return sessionStorage.getItem('assay.apiKey');", vec![])
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);
    record(&browser, &mut seen).await;

    // Every request went to the API, none carried the key in its URL.
    assert!(seen.len() > 20, "requests were recorded: {seen:?}");
    for url in &seen {
        assert!(
            url.starts_with(&format!("{origin}/")),
            "a request left the API: {url}"
        );
        assert!(!url.contains(&key), "the key is in a URL: {url}");
    }
    println!(
        "viewer: {} requests, all to {origin}; screenshots in {}",
        seen.len(),
        dir.display()
    );
}
