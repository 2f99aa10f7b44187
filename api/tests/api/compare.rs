//! Paired comparison of two evaluations over real HTTP. The evaluations are
//! submitted through the API; their results are written straight into
//! PostgreSQL with known outcomes (the statistics, not the worker, are under
//! test), and the expected figures are worked out by hand below.

use assay_testkit::Client;
use serde_json::{Value, json};

use crate::{TestApp, id};

/// One result row: (position, repeat, status, score, latency ms, cost).
type Row = (i32, i32, &'static str, Option<f64>, i32, f64);

async fn submit(
    client: &Client,
    version: &str,
    dataset: &str,
    models: Value,
    repeat: u32,
) -> String {
    let response = client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": models,
                    "graders": [{"type": "is-json"}], "repeat": repeat}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    id(&response.body["id"])
}

/// Writes results for one model and marks the evaluation succeeded.
async fn seed(app: &TestApp, evaluation: &str, model: &str, rows: &[Row]) {
    use diesel_async::RunQueryDsl;
    let pool = app.database.pool(1);
    let mut conn = pool.get().await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .map(|(position, repeat, status, score, latency, cost)| {
            format!(
                "('{evaluation}'::uuid, '{model}'::text, {position}::int, {repeat}::int, '{status}'::text, {}::float8, {latency}::int, {cost}::float8, 10, 5)",
                score.map_or("NULL".to_owned(), |score| score.to_string())
            )
        })
        .collect();
    diesel::sql_query(format!(
        "INSERT INTO evaluation_results (evaluation_id, model, item_position, repeat_index, status, score, latency_ms, cost_usd, input_tokens, output_tokens, tenant_id, item_key) \
         SELECT v.e, v.m, v.p, v.r, v.s, v.sc, v.l, v.c, v.i, v.o, e.tenant_id, 'item-' || v.p \
         FROM (VALUES {}) AS v(e, m, p, r, s, sc, l, c, i, o) JOIN evaluations e ON e.id = v.e",
        values.join(", ")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(format!(
        "UPDATE evaluations SET status = 'succeeded' WHERE id = '{evaluation}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

fn close(actual: &Value, expected: f64) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("a number, got {actual}"));
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

/// 30 items. A: items 0-7 fail, 8-9 pass, 10-19 pass, 20-29 fail.
/// B: items 0-7 pass (8 improvements), 8-9 fail (2 regressions), 10-19 pass, 20-29 fail.
fn outcome(side: char, position: i32) -> &'static str {
    let passed = match (side, position) {
        (_, 10..=19) => true,
        (_, 20..=29) => false,
        ('a', 0..=7) | ('b', 8..=9) => false,
        _ => true,
    };
    if passed { "passed" } else { "failed" }
}

#[tokio::test]
async fn mcnemar_bootstrap_and_usage_match_hand_computed_values() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "cmp", "{{ question }}").await;
    let dataset = app.dataset(client, 30).await;
    let a = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    let b = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    // Scores: A 0.5 everywhere; B 0.5 + an offset whose mean is exactly 0.1
    // (7 items -0.4, 16 items +0.1, 7 items +0.6: (-2.8 + 1.6 + 4.2) / 30 = 0.1).
    let offset = |position: i32| match position {
        0..=6 => -0.4,
        7..=22 => 0.1,
        _ => 0.6,
    };
    let a_rows: Vec<Row> = (0..30)
        .map(|p| (p, 0, outcome('a', p), Some(0.5), 100, 0.001))
        .collect();
    let b_rows: Vec<Row> = (0..30)
        .map(|p| (p, 0, outcome('b', p), Some(0.5 + offset(p)), p * 10, 0.002))
        .collect();
    seed(&app, &a, "mock", &a_rows).await;
    seed(&app, &b, "mock", &b_rows).await;

    let path = format!("/v1/evaluations/{a}/compare/{b}?limit=5");
    let response = client.get(&path).await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let pair = &response.body["pairs"][0];
    assert_eq!(pair["a_model"], "mock");
    assert_eq!(pair["items"], json!({"a": 30, "b": 30, "paired": 30}));
    // Pass rates: A (2 + 10) / 30 = 0.4, B (8 + 10) / 30 = 0.6.
    close(&pair["pass_rate"]["a"], 0.4);
    close(&pair["pass_rate"]["b"], 0.6);
    close(&pair["pass_rate"]["difference"], 0.2);
    // Exact McNemar: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112 / 1024.
    assert_eq!(pair["significance"]["method"], "exact_mcnemar");
    assert_eq!(pair["significance"]["improvements"], 8);
    assert_eq!(pair["significance"]["regressions"], 2);
    close(&pair["significance"]["p_value"], 0.109375);
    // Bootstrap intervals contain the true differences.
    let pass_ci = &pair["pass_rate"]["ci95"];
    assert!(
        pass_ci["low"].as_f64().unwrap() < 0.2 && 0.2 < pass_ci["high"].as_f64().unwrap(),
        "{pass_ci}"
    );
    close(&pair["score"]["difference"], 0.1);
    assert_eq!(pair["score"]["items"], 30);
    let score_ci = &pair["score"]["ci95"];
    assert!(
        score_ci["low"].as_f64().unwrap() < 0.1 && 0.1 < score_ci["high"].as_f64().unwrap(),
        "{score_ci}"
    );
    // Usage: A 30 x 0.001 USD at 100 ms; B 30 x 0.002 USD at 0, 10, ..., 290 ms:
    // p50 = 145, p95 = 270 + 0.55 * 10 = 275.5 (linear interpolation at rank 0.95 * 29 = 27.55).
    let usage = &pair["usage"];
    close(&usage["a"]["cost_usd"], 0.03);
    close(&usage["b"]["cost_usd"], 0.06);
    close(&usage["difference"]["cost_usd"], 0.03);
    assert_eq!(usage["a"]["input_tokens"], 300);
    assert_eq!(usage["difference"]["output_tokens"], 0);
    close(&usage["a"]["latency_p50_ms"], 100.0);
    close(&usage["b"]["latency_p50_ms"], 145.0);
    close(&usage["b"]["latency_p95_ms"], 275.5);
    close(&usage["difference"]["latency_p95_ms"], 175.5);
    // The lists, paginated: improvements are items 0-7, regressions 8-9.
    let improvements = &pair["improvements"];
    assert_eq!(improvements["count"], 8);
    let first: Vec<&Value> = improvements["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| &item["position"])
        .collect();
    assert_eq!(
        first,
        [&json!(0), &json!(1), &json!(2), &json!(3), &json!(4)]
    );
    assert_eq!(improvements["items"][0]["item_key"], "item-0");
    assert_eq!(improvements["next_after"], "4");
    let rest = client
        .get(&format!(
            "/v1/evaluations/{a}/compare/{b}/changes?direction=improvements&after=4&limit=5"
        ))
        .await
        .unwrap();
    assert_eq!(rest.status, 200, "{:?}", rest.body);
    let positions: Vec<&Value> = rest.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| &item["position"])
        .collect();
    assert_eq!(positions, [&json!(5), &json!(6), &json!(7)]);
    assert_eq!(rest.body["has_more"], false);
    assert_eq!(pair["regressions"]["count"], 2);
    assert_eq!(pair["regressions"]["items"][1]["position"], 9);

    // Deterministic: the same inputs give the same answer, to the last digit.
    let again = client.get(&path).await.unwrap();
    assert_eq!(again.body, response.body);
    // Swapping the sides swaps the signs.
    let swapped = client
        .get(&format!("/v1/evaluations/{b}/compare/{a}"))
        .await
        .unwrap();
    close(&swapped.body["pairs"][0]["pass_rate"]["difference"], -0.2);
    assert_eq!(swapped.body["pairs"][0]["significance"]["improvements"], 2);
    close(
        &swapped.body["pairs"][0]["significance"]["p_value"],
        0.109375,
    );
}

#[tokio::test]
async fn repeats_pair_pass_fractions_and_models_pair_explicitly() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "rep", "{{ question }}").await;
    let dataset = app.dataset(client, 4).await;
    let a = submit(client, &version, &dataset, json!(["mock"]), 3).await;
    let b = submit(client, &version, &dataset, json!(["mock:latency=1ms"]), 3).await;
    // Pass fractions A: 0/3, 1/3, 2/3, 3/3; B: 1/3, 1/3, 3/3, 2/3.
    let runs = |passes: [i32; 4]| -> Vec<Row> {
        let mut rows = Vec::new();
        for (position, passed) in passes.into_iter().enumerate() {
            for repeat in 0..3 {
                let status = if repeat < passed { "passed" } else { "failed" };
                rows.push((position as i32, repeat, status, None, 50, 0.0));
            }
        }
        rows
    };
    seed(&app, &a, "mock", &runs([0, 1, 2, 3])).await;
    let mut b_rows = runs([1, 1, 3, 2]);
    // An errored fourth run of item 1 is left out of its pass fraction (still
    // 1/3: errors say nothing about quality) but counts towards usage.
    b_rows.push((1, 3, "errored", None, 50, 0.0));
    seed(&app, &b, "mock:latency=1ms", &b_rows).await;

    let unpaired = client
        .get(&format!("/v1/evaluations/{a}/compare/{b}"))
        .await
        .unwrap();
    assert_eq!(
        unpaired.status, 400,
        "no model of the same name: {:?}",
        unpaired.body
    );
    assert_eq!(unpaired.body["code"], "invalid_query");
    let bad_pair = client
        .get(&format!(
            "/v1/evaluations/{a}/compare/{b}?models=mock:gpt-9"
        ))
        .await
        .unwrap();
    assert_eq!(bad_pair.status, 400);

    // "mock:mock:latency=1ms" splits one way only: mock | mock:latency=1ms.
    let response = client
        .get(&format!(
            "/v1/evaluations/{a}/compare/{b}?models=mock:mock:latency%3D1ms"
        ))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let pair = &response.body["pairs"][0];
    assert_eq!(pair["b_model"], "mock:latency=1ms");
    assert_eq!(
        pair["significance"]["method"],
        "exact_sign_test_on_pass_fractions"
    );
    // Items 0 and 2 rose, item 3 fell: sign test 2 vs 1, p = 2 * (1 + 3) / 8, capped at 1.
    assert_eq!(pair["significance"]["improvements"], 2);
    assert_eq!(pair["significance"]["regressions"], 1);
    close(&pair["significance"]["p_value"], 1.0);
    // Mean fractions: A (0 + 1/3 + 2/3 + 1) / 4 = 0.5; B (1/3 + 1/3 + 1 + 2/3) / 4 = 7/12.
    close(&pair["pass_rate"]["a"], 0.5);
    close(&pair["pass_rate"]["b"], 7.0 / 12.0);
    assert!(
        pair.get("score").is_none(),
        "no scores, no score statistics"
    );
    // Every run counts towards usage, the errored one too: 12 and 13 runs.
    assert_eq!(pair["usage"]["a"]["runs"], 12);
    assert_eq!(pair["usage"]["b"]["runs"], 13);
}

#[tokio::test]
async fn only_comparable_evaluations_of_the_caller_compare() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "cmp", "{{ question }}").await;
    let dataset = app.dataset(client, 3).await;
    let other_dataset = app.dataset(client, 3).await;
    let a = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    let b = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    let queued = client
        .get(&format!("/v1/evaluations/{a}/compare/{b}"))
        .await
        .unwrap();
    assert_eq!(queued.status, 409, "{:?}", queued.body);
    assert_eq!(queued.body["code"], "conflict");
    let rows: Vec<Row> = (0..3)
        .map(|p| (p, 0, "passed", Some(1.0), 10, 0.0))
        .collect();
    seed(&app, &a, "mock", &rows).await;
    seed(&app, &b, "mock", &rows).await;
    let c = submit(client, &version, &other_dataset, json!(["mock"]), 1).await;
    seed(&app, &c, "mock", &rows).await;
    let different = client
        .get(&format!("/v1/evaluations/{a}/compare/{c}"))
        .await
        .unwrap();
    assert_eq!(different.status, 409);
    let bad_limit = client
        .get(&format!("/v1/evaluations/{a}/compare/{b}?limit=0"))
        .await
        .unwrap();
    assert_eq!(bad_limit.status, 400);
    let bad_direction = client
        .get(&format!(
            "/v1/evaluations/{a}/compare/{b}/changes?direction=sideways"
        ))
        .await
        .unwrap();
    assert_eq!(bad_direction.status, 400);
    let equal = client
        .get(&format!("/v1/evaluations/{a}/compare/{b}"))
        .await
        .unwrap();
    assert_eq!(equal.status, 200);
    close(&equal.body["pairs"][0]["significance"]["p_value"], 1.0);
    close(&equal.body["pairs"][0]["pass_rate"]["difference"], 0.0);

    let intruder = app.client_for("tenant-b").await;
    for path in [
        format!("/v1/evaluations/{a}/compare/{b}"),
        format!("/v1/evaluations/{a}/compare/{b}/changes?direction=improvements"),
    ] {
        let response = intruder.get(&path).await.unwrap();
        assert_eq!(response.status, 404, "{path}: {:?}", response.body);
        assert_eq!(response.content_type, "application/problem+json");
        assert_eq!(client.get(&path).await.unwrap().status, 200, "owner {path}");
    }
    // One's own evaluation against another tenant's is 404 too.
    let (_, theirs_version) = app.prompt(&intruder, "theirs", "{{ question }}").await;
    let theirs_dataset = app.dataset(&intruder, 3).await;
    let theirs = submit(
        &intruder,
        &theirs_version,
        &theirs_dataset,
        json!(["mock"]),
        1,
    )
    .await;
    let mixed = client
        .get(&format!("/v1/evaluations/{a}/compare/{theirs}"))
        .await
        .unwrap();
    assert_eq!(mixed.status, 404);
}

#[tokio::test]
async fn many_distinct_score_differences_are_binned_around_the_exact_mean() {
    let app = TestApp::spawn().await;
    let client = &app.client;
    let (_, version) = app.prompt(client, "bins", "{{ question }}").await;
    let dataset = app.dataset(client, 300).await;
    let a = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    let b = submit(client, &version, &dataset, json!(["mock"]), 1).await;
    // A scores 0; B scores 0/300, 1/300, ..., 299/300 (shuffled over the
    // items): 300 distinct differences, more than the 200 bins the bootstrap keeps.
    let a_rows: Vec<Row> = (0..300)
        .map(|p| (p, 0, "passed", Some(0.0), 10, 0.0))
        .collect();
    let b_rows: Vec<Row> = (0..300)
        .map(|p| {
            (
                p,
                0,
                "passed",
                Some(f64::from(p * 7 % 300) / 300.0),
                10,
                0.0,
            )
        })
        .collect();
    seed(&app, &a, "mock", &a_rows).await;
    seed(&app, &b, "mock", &b_rows).await;
    let response = client
        .get(&format!("/v1/evaluations/{a}/compare/{b}"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let score = &response.body["pairs"][0]["score"];
    // The mean is exact: (0 + 1 + ... + 299) / 300 / 300 = 149.5 / 300.
    close(&score["difference"], 149.5 / 300.0);
    close(&score["resolution"], 299.0 / 300.0 / 200.0);
    // Against the normal approximation: the values' variance is
    // (300^2 - 1) / 12 / 300^2, so the mean's standard error is
    // sqrt(that / 300) = 0.016666 and the 95% half-width 1.959964 x that.
    let half = 1.959964 * ((300.0f64.powi(2) - 1.0) / 12.0 / 300.0f64.powi(2) / 300.0).sqrt();
    let (low, high) = (
        score["ci95"]["low"].as_f64().unwrap(),
        score["ci95"]["high"].as_f64().unwrap(),
    );
    assert!((low - (149.5 / 300.0 - half)).abs() < 0.004, "{low}");
    assert!((high - (149.5 / 300.0 + half)).abs() < 0.004, "{high}");
}
