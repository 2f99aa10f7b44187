//! Graders end to end: every grader type (judges answered by the mock's
//! rules) against a hand-computed table, unparseable judges, repeats, and
//! re-grading without calling the generating model.

use std::time::Duration;

use assay_core::domain::{ChatMessage, Role};
use assay_core::providers::mock::{MockOptions, WRONG_ANSWER};
use serde_json::{Value, json};

use crate::Stack;

/// The outputs under test (the mock echoes them); every item expects "Paris".
const OUTPUTS: [&str; 5] = [
    r#"{"city": "Paris"}"#,
    "Paris",
    "<city>Paris</city>",
    "The capital of France is Paris.",
    "Rome",
];

/// Every grader type, and by hand whether it passes each of OUTPUTS (P/F).
fn graders_and_expectations() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"type": "equals", "value": "{{ expected }}"}),
            "FPFFF",
        ),
        (json!({"type": "contains", "value": "Paris"}), "PPPPF"),
        (json!({"type": "icontains", "value": "paris"}), "PPPPF"),
        (
            json!({"type": "contains-any", "values": ["Rome", "Paris"]}),
            "PPPPP",
        ),
        (
            json!({"type": "contains-all", "values": ["Paris", "France"]}),
            "FFFPF",
        ),
        (
            json!({"type": "icontains-any", "values": ["ROME"]}),
            "FFFFP",
        ),
        (
            json!({"type": "icontains-all", "values": ["THE", "PARIS"]}),
            "FFFPF",
        ),
        (json!({"type": "starts-with", "value": "Paris"}), "FPFFF"),
        (json!({"type": "ends-with", "value": "."}), "FFFPF"),
        (
            json!({"type": "regex", "pattern": "^[A-Z][a-z]+$"}),
            "FPFFP",
        ),
        (json!({"type": "is-refusal"}), "FFFFF"),
        (json!({"type": "is-json"}), "PFFFF"),
        (json!({"type": "contains-json"}), "PFFFF"),
        (
            json!({"type": "json-schema", "schema": {"type": "object", "required": ["city"]}}),
            "PFFFF",
        ),
        (
            json!({"type": "json-path", "path": "$.city", "equals": "Paris"}),
            "PFFFF",
        ),
        (json!({"type": "is-xml"}), "FFPFF"),
        (
            json!({"type": "levenshtein", "value": "{{ expected }}", "max_distance": 2}),
            "FPFFF",
        ),
        (
            json!({"type": "similarity", "value": "{{ expected }}"}),
            "FPFFF",
        ),
        (
            json!({"type": "rouge-n", "value": "the capital of France is Paris"}),
            "FFFPF",
        ),
        (
            json!({"type": "rouge-l", "value": "the capital of France is Paris"}),
            "FFFPF",
        ),
        (
            json!({"type": "bleu", "value": "The capital of France is Paris."}),
            "FFFPF",
        ),
        (json!({"type": "word-count", "max": 1}), "FPPFP"),
        (json!({"type": "length", "max": 5}), "FPFFP"),
        (json!({"type": "latency", "max_ms": 5000}), "PPPPP"),
        (json!({"type": "cost", "max_usd": 0.01}), "PPPPP"),
        (json!({"type": "finish-reason", "value": "stop"}), "PPPPP"),
        // Mock judge rules: rubric words found; first label in the output; containment.
        (
            json!({"type": "llm-rubric", "rubric": "Paris", "model": "mock"}),
            "PPPPF",
        ),
        (
            json!({"type": "llm-classify", "labels": ["paris", "rome"], "passing_labels": ["paris"], "model": "mock"}),
            "PPPPF",
        ),
        (
            json!({"type": "factuality", "value": "{{ expected }}", "model": "mock"}),
            "PPPPF",
        ),
        (json!({"type": "not-contains", "value": "Rome"}), "PPPPF"),
    ]
}

fn items() -> Vec<Value> {
    OUTPUTS
        .iter()
        .enumerate()
        .map(
            |(n, text)| json!({"id": format!("o{n}"), "vars": {"text": text}, "expected": "Paris"}),
        )
        .collect()
}

#[tokio::test]
async fn every_grader_type_gives_the_hand_computed_summary() {
    let stack = Stack::start(1, &[]).await;
    let cases = graders_and_expectations();
    let graders: Vec<Value> = cases.iter().map(|(spec, _)| spec.clone()).collect();
    let id = stack
        .submit_body(json!({
            "prompt_version_id": stack.prompt("{{ text }}").await,
            "dataset_id": stack.dataset(items()).await,
            "models": ["mock"],
            "graders": graders,
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    let summaries = evaluation["summary"]["grader_summaries"]
        .as_array()
        .unwrap();
    assert_eq!(summaries.len(), cases.len());
    for (index, ((spec, expected), summary)) in cases.iter().zip(summaries).enumerate() {
        let passes = expected.matches('P').count();
        assert_eq!(summary["index"], index);
        assert_eq!(summary["grader"], spec["type"], "{summary}");
        assert_eq!(summary["total"], OUTPUTS.len());
        assert_eq!(summary["passed"], passes, "{spec}: {summary}");
        assert_eq!(
            summary["failed"],
            OUTPUTS.len() - passes,
            "{spec}: {summary}"
        );
        assert_eq!(summary["errors"], 0, "{spec}: {summary}");
        let pass_rate = passes as f64 / OUTPUTS.len() as f64;
        assert!(
            (summary["pass_rate"].as_f64().unwrap() - pass_rate).abs() < 1e-12,
            "{spec}: {summary}"
        );
    }
    // Per item, every grader's verdict with its reason.
    let results = stack.results(&id).await;
    for result in &results {
        let item = result["item_position"].as_u64().unwrap() as usize;
        for ((spec, expected), grade) in cases.iter().zip(result["grades"].as_array().unwrap()) {
            let passed = expected.as_bytes()[item] == b'P';
            assert_eq!(
                grade["passed"], passed,
                "{spec} on {:?}: {grade}",
                OUTPUTS[item]
            );
            assert!(!grade["reason"].as_str().unwrap().is_empty());
        }
        assert_eq!(result["status"], "failed", "some grader fails every item");
    }
    // Judges cost apart: three judge calls per item, through the provider layer.
    let judge_cost: f64 = results
        .iter()
        .map(|result| result["grading_cost_usd"].as_f64().unwrap())
        .sum();
    assert!(judge_cost > 0.0);
    let summary = &evaluation["summary"];
    assert!((summary["total_grading_cost_usd"].as_f64().unwrap() - judge_cost).abs() < 1e-12);
    assert_eq!(
        stack.llm_calls(&["purpose=\"judge\""]).await,
        (3 * OUTPUTS.len()) as f64
    );
    assert_eq!(
        stack.llm_calls(&["purpose=\"generate\""]).await,
        OUTPUTS.len() as f64
    );
}

#[tokio::test]
async fn an_unparseable_judge_is_a_grader_error_not_a_failure() {
    let stack = Stack::start(1, &[]).await;
    let id = stack
        .submit_body(json!({
            "prompt_version_id": stack.prompt("{{ text }}").await,
            "dataset_id": stack.dataset(items()).await,
            "models": ["mock"],
            "graders": [
                {"type": "contains", "value": "Paris"},
                {"type": "llm-rubric", "rubric": "names the city", "model": "mock:judge=garbage"},
            ],
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    let counts = &evaluation["counts"];
    assert_eq!(counts["errored"], OUTPUTS.len(), "{counts}");
    assert_eq!(
        counts["failed"], 0,
        "grader errors are not failures: {counts}"
    );
    let summaries = evaluation["summary"]["grader_summaries"]
        .as_array()
        .unwrap();
    assert_eq!(summaries[0]["passed"], 4);
    assert_eq!(summaries[0]["failed"], 1);
    assert_eq!(summaries[1]["errors"], OUTPUTS.len());
    assert_eq!(summaries[1]["failed"], 0);
    assert_eq!(summaries[1]["passed"], 0);
    for result in stack.results(&id).await {
        assert_eq!(result["status"], "errored");
        assert!(
            result["error"]
                .as_str()
                .unwrap()
                .contains("unparseable judge reply"),
            "{result}"
        );
        assert!(result["output"].is_string(), "the output is kept");
    }
}

#[tokio::test]
async fn repeats_give_pass_at_k_pass_pow_k_and_flaky_items() {
    const ITEMS: usize = 40;
    const K: u32 = 5;
    let model = "mock:wrong=0.4";
    let stack = Stack::start(1, &[]).await;
    let items: Vec<Value> = (0..ITEMS)
        .map(|n| json!({"id": format!("i{n}"), "vars": {"q": format!("q{n}")}, "expected": format!("q{n}")}))
        .collect();
    let id = stack
        .submit_body(json!({
            "prompt_version_id": stack.prompt("{{ q }}").await,
            "dataset_id": stack.dataset(items).await,
            "models": [model],
            "graders": [{"type": "equals", "value": "{{ expected }}"}],
            "repeat": K,
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(evaluation["counts"]["total"], ITEMS * K as usize);

    // What the mock answers in each run (its answer depends on the repeat index).
    let options = MockOptions::parse(model).unwrap();
    let passes: Vec<u32> = (0..ITEMS)
        .map(|n| {
            let messages = [ChatMessage {
                role: Role::User,
                content: format!("q{n}"),
            }];
            (0..K)
                .filter(|repeat| options.answer(&messages, *repeat).text != WRONG_ANSWER)
                .count() as u32
        })
        .collect();
    let pass_at_k = passes.iter().filter(|c| **c > 0).count() as f64 / ITEMS as f64;
    let pass_pow_k = passes.iter().filter(|c| **c == K).count() as f64 / ITEMS as f64;
    let flaky: Vec<String> = (0..ITEMS)
        .filter(|n| passes[*n] > 0 && passes[*n] < K)
        .map(|n| format!("i{n}"))
        .collect();
    let mean = passes
        .iter()
        .map(|c| f64::from(*c) / f64::from(K))
        .sum::<f64>()
        / ITEMS as f64;
    assert!(
        !flaky.is_empty() && pass_pow_k < pass_at_k,
        "the runs do disagree"
    );

    let stats = &evaluation["summary"]["models"][0]["repeats"];
    assert_eq!(stats["k"], K);
    assert!(
        (stats["pass_at_k"].as_f64().unwrap() - pass_at_k).abs() < 1e-12,
        "{stats}"
    );
    assert!(
        (stats["pass_pow_k"].as_f64().unwrap() - pass_pow_k).abs() < 1e-12,
        "{stats}"
    );
    assert!(
        (stats["mean_pass_rate"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{stats}"
    );
    assert_eq!(stats["flaky_items"], json!(flaky));
    let interval = stats["pass_rate_ci95"].as_array().unwrap();
    assert!(interval[0].as_f64().unwrap() < mean && mean < interval[1].as_f64().unwrap());
    let fractions = stats["item_pass_fractions"].as_array().unwrap();
    assert_eq!(fractions.len(), ITEMS);
    assert_eq!(
        fractions[3],
        json!(["i3", f64::from(passes[3]) / f64::from(K)])
    );
    let results = stack.results(&id).await;
    assert_eq!(
        results.len(),
        ITEMS * K as usize,
        "one row per item x model x repeat"
    );
}

#[tokio::test]
async fn a_regrade_calls_no_generating_model() {
    let generator = "mock:seed=9";
    let stack = Stack::start(1, &[]).await;
    let id = stack
        .submit_body(json!({
            "prompt_version_id": stack.prompt("{{ text }}").await,
            "dataset_id": stack.dataset(items()).await,
            "models": [generator],
            "graders": [{"type": "contains", "value": "Paris"}],
        }))
        .await;
    let original = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(original["status"], "succeeded");
    // Counted by the mock provider itself, and by the worker's call layer.
    let generator_label = format!("model=\"{generator}\"");
    let mock_before = stack
        .metric_sum("assay_mock_calls_total", &[&generator_label])
        .await;
    assert_eq!(mock_before, OUTPUTS.len() as f64);
    let generated_before = stack
        .llm_calls(&[&generator_label, "purpose=\"generate\""])
        .await;
    assert_eq!(generated_before, OUTPUTS.len() as f64);

    let new_graders = json!([
        {"type": "equals", "value": "{{ expected }}"},
        {"type": "llm-rubric", "rubric": "Paris", "model": "mock"},
    ]);
    let response = stack
        .client
        .post(
            &format!("/v1/evaluations/{id}/regrade"),
            &json!({"graders": new_graders}),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 202, "{:?}", response.body);
    let regrade_id = response.body["id"].as_str().unwrap().to_owned();
    assert_eq!(response.body["source_evaluation_id"], json!(id));
    let regraded = stack
        .wait_finished(&regrade_id, Duration::from_secs(60))
        .await;
    assert_eq!(regraded["status"], "succeeded", "{regraded}");

    let mock_after = stack
        .metric_sum("assay_mock_calls_total", &[&generator_label])
        .await;
    assert_eq!(
        mock_after, mock_before,
        "the generating model's mock saw no call"
    );
    let generated_after = stack
        .llm_calls(&[&generator_label, "purpose=\"generate\""])
        .await;
    assert_eq!(
        generated_after, generated_before,
        "no call to the generating model"
    );
    assert_eq!(
        stack.llm_calls(&["purpose=\"judge\""]).await,
        OUTPUTS.len() as f64,
        "judges still judge"
    );

    let summary = &regraded["summary"];
    assert_eq!(summary["regraded_from"], json!(id));
    let types: Vec<&str> = summary["graders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["equals", "llm-rubric"],
        "the summary keeps the grader set that produced it"
    );
    assert_eq!(
        summary["grader_summaries"][0]["passed"], 1,
        "equals passes only \"Paris\""
    );
    assert_eq!(summary["grader_summaries"][1]["passed"], 4);
    assert_eq!(regraded["counts"]["passed"], 1);
    let before = stack.results(&id).await;
    let after = stack.results(&regrade_id).await;
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            old["output"], new["output"],
            "the stored output is graded again"
        );
        assert_eq!(old["cost_usd"], new["cost_usd"]);
    }
    assert_eq!(
        original["summary"]["grader_summaries"][0]["passed"], 4,
        "the original is untouched"
    );

    let not_finished = stack
        .client
        .post(
            &format!("/v1/evaluations/{}/regrade", uuid::Uuid::now_v7()),
            &json!({"graders": new_graders}),
        )
        .await
        .unwrap();
    assert_eq!(not_finished.status, 404);
    let bad = stack
        .client
        .post(
            &format!("/v1/evaluations/{id}/regrade"),
            &json!({"graders": [{"type": "regex", "pattern": "("}]}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["field"], "graders[0].pattern");
}

#[tokio::test]
async fn an_items_threshold_wins_over_the_evaluations() {
    let stack = Stack::start(1, &[]).await;
    let id = stack
        .submit_body(json!({
            "prompt_version_id": stack.prompt("{{ text }}").await,
            "dataset_id": stack.dataset(vec![
                json!({"id": "own", "vars": {"text": "Paris"}, "threshold": 0.5}),
                json!({"id": "default", "vars": {"text": "Paris"}}),
            ]).await,
            "models": ["mock"],
            "graders": [{"type": "contains", "value": "Paris"}, {"type": "contains", "value": "Rome"}],
            "threshold": 0.9,
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    let results = stack.results(&id).await;
    // Both score 0.5: the item's own 0.5 passes it; the evaluation's 0.9 fails the other.
    assert_eq!(results[0]["item_key"], "own");
    assert_eq!(results[0]["score"], 0.5);
    assert_eq!(results[0]["status"], "passed", "{evaluation}");
    assert_eq!(results[1]["status"], "failed");
}

/// `json-path`'s `equals` and `regex`'s `pattern` are templates like every
/// other string option, rendered per item, and a selected number compares
/// as a number with the rendered text. The pass counts are computed here
/// from the dataset, independently of the graders.
#[tokio::test]
async fn templated_json_path_and_regex_pass_the_independently_computed_items() {
    const ITEMS: usize = 10_000;
    let stack = Stack::start(2, &["--concurrency", "64"]).await;
    // The mock echoes the prompt: `{"answer": 595 }` or `{"answer": "595" }`.
    let version = stack.prompt(r#"{"answer": {{ answer }} }"#).await;
    let mut items = Vec::with_capacity(ITEMS);
    let (mut path_passes, mut regex_passes, mut both) = (0, 0, 0);
    for n in 0..ITEMS {
        let answer = (n * 37) % 1000;
        let quoted = n % 3 == 0;
        // A spread of expectations: the number, its text, a float text, a
        // wrong number, a wrong text.
        let expected = match (n * 7 + n / 13) % 10 {
            0..=3 => json!(answer),
            4..=6 => json!(answer.to_string()),
            7 => json!(format!("{answer}.0")),
            8 => json!(answer + 1),
            _ => json!(format!("{}", answer + 2)),
        };
        let rendered = match &expected {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        // A selected string equals the same text; a selected number any
        // text that reads as the same number.
        let path_pass = if quoted {
            rendered == answer.to_string()
        } else {
            rendered.parse::<f64>() == Ok(answer as f64)
        };
        // The regex is the rendered text, so `595.0` does not match `595`.
        let regex_pass = rendered == answer.to_string();
        path_passes += usize::from(path_pass);
        regex_passes += usize::from(regex_pass);
        both += usize::from(path_pass && regex_pass);
        let answer = if quoted {
            format!("\"{answer}\"")
        } else {
            answer.to_string()
        };
        items
            .push(json!({"id": format!("i{n}"), "vars": {"answer": answer}, "expected": expected}));
    }
    assert!(
        path_passes > regex_passes && regex_passes > ITEMS / 2,
        "a test that can tell"
    );
    let dataset = stack.dataset(items).await;
    let id = stack
        .submit_body(json!({
            "prompt_version_id": version,
            "dataset_id": dataset,
            "models": ["mock"],
            "graders": [
                {"type": "json-path", "path": "$.answer", "equals": "{{ expected }}"},
                {"type": "regex", "pattern": "\"answer\": \"?{{ expected }}\"? \\}$"},
            ],
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(300)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(evaluation["counts"]["passed"], both, "{evaluation}");
    assert_eq!(evaluation["counts"]["errored"], 0, "{evaluation}");

    let results = stack.results(&id).await;
    assert_eq!(results.len(), ITEMS);
    let passes = |grader: &str| {
        results
            .iter()
            .filter(|result| {
                result["grades"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|grade| grade["grader"] == grader && grade["passed"] == true)
            })
            .count()
    };
    assert_eq!(passes("json-path"), path_passes);
    assert_eq!(passes("regex"), regex_passes);
    // Failures name the types of both sides.
    let reasons: Vec<&str> = results
        .iter()
        .flat_map(|result| result["grades"].as_array().unwrap())
        .filter(|grade| grade["grader"] == "json-path" && grade["passed"] == false)
        .map(|grade| grade["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("(a string), expected") && reason.contains("(a string)")),
        "{:?}",
        &reasons[..reasons.len().min(5)]
    );
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("(a number), expected")),
        "{:?}",
        &reasons[..reasons.len().min(5)]
    );
}
