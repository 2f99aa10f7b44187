//! The whole path: submit over HTTP, two worker processes, poll to
//! `succeeded`, and check every row and figure against the mock's rules.

use std::collections::HashMap;
use std::time::Duration;

use assay_core::domain::Priority;
use assay_core::domain::{ChatMessage, Role};
use assay_core::providers::mock::{MockOptions, WRONG_ANSWER};
use assay_core::queue::JobQueue;
use serde_json::{Value, json};

use crate::{Stack, question};

const ITEMS: usize = 600;
/// The second model's latency keeps each of its chunks busy for a few
/// hundred milliseconds, longer than a worker's poll interval, so that both
/// workers get chunks however late one of them looks.
const MODELS: [&str; 2] = [
    "mock",
    "mock:wrong=0.3,latency=25ms,jitter=10ms,price_in=3,price_out=15",
];

/// PostgreSQL's `percentile_cont`: linear interpolation between closest ranks.
fn percentile_cont(sorted: &[f64], fraction: f64) -> f64 {
    let position = fraction * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (position - low as f64) * (sorted[high] - sorted[low])
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn two_workers_run_an_evaluation_and_every_figure_checks_out() {
    let stack = Stack::start(2, &["--concurrency", "32"]).await;
    let graders = json!([
        {"type": "contains", "value": "{{ expected }}"},
        {"type": "equals", "value": "what is {{ expected }}?", "ignore_case": true},
        {"type": "regex", "pattern": "^What is q\\d+\\?$"},
    ]);
    let id = stack.submit(ITEMS, &MODELS, graders).await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(120)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");

    // Every row, against what the mock must have answered.
    let results = stack.results(&id).await;
    assert_eq!(results.len(), ITEMS * MODELS.len());
    let mut by_model: HashMap<&str, Vec<&Value>> = HashMap::new();
    for (index, result) in results.iter().enumerate() {
        // Pages come in (position, model name) order; MODELS is sorted by name.
        let (position, model) = (index / MODELS.len(), MODELS[index % MODELS.len()]);
        assert_eq!(result["item_position"], position);
        assert_eq!(result["model"], model);
        assert_eq!(result["item_key"], format!("item-{position}"));
        let options = MockOptions::parse(model).unwrap();
        let messages = [
            ChatMessage {
                role: Role::System,
                content: "Answer briefly.".to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: question(position),
            },
        ];
        let answer = options.answer(&messages, 0).text;
        assert_eq!(result["output"], json!(answer), "{result}");
        let correct = answer != WRONG_ANSWER;
        assert_eq!(answer == question(position), correct);
        assert_eq!(
            result["status"],
            if correct { "passed" } else { "failed" },
            "{result}"
        );
        assert_eq!(result["score"], if correct { 1.0 } else { 0.0 });
        let grades = result["grades"].as_array().unwrap();
        assert_eq!(grades.len(), 3);
        assert!(
            grades.iter().all(|grade| grade["passed"] == json!(correct)),
            "{result}"
        );
        assert_eq!(result["attempts"], 1);
        assert_eq!(result["error"], Value::Null);
        let input_tokens = 2 + 3; // "Answer briefly." + "What is qN?"
        let output_tokens = 3; // the echo, or "I don't know."
        assert_eq!(result["input_tokens"], input_tokens);
        assert_eq!(result["output_tokens"], output_tokens);
        let cost = (input_tokens as f64 * options.price.input_per_million
            + output_tokens as f64 * options.price.output_per_million)
            / 1e6;
        assert!(
            close(result["cost_usd"].as_f64().unwrap(), cost),
            "{result}"
        );
        if options.latency > Duration::ZERO {
            assert!(result["latency_ms"].as_i64().unwrap() >= 5, "{result}");
        }
        by_model.entry(model).or_default().push(result);
    }

    // Every summary figure, recomputed from the rows.
    let counts = &evaluation["counts"];
    assert_eq!(counts["total"], ITEMS * 2);
    assert_eq!(counts["completed"], ITEMS * 2);
    let summary = &evaluation["summary"];
    let graders: Vec<&str> = summary["graders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        graders,
        ["contains", "equals", "regex"],
        "the summary keeps the grader set"
    );
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let mut total_cost = 0.0;
    let mut all_passed = 0;
    for (figures, name) in models.iter().zip(MODELS) {
        assert_eq!(
            figures["model"], name,
            "summary keeps the submitted model order"
        );
        let rows = &by_model[name];
        let passed = rows.iter().filter(|row| row["status"] == "passed").count();
        let failed = rows.iter().filter(|row| row["status"] == "failed").count();
        all_passed += passed;
        assert_eq!(figures["total"], ITEMS);
        assert_eq!(figures["passed"], passed);
        assert_eq!(figures["failed"], failed);
        assert_eq!(figures["errored"], 0);
        assert!(close(
            figures["pass_rate"].as_f64().unwrap(),
            passed as f64 / ITEMS as f64
        ));
        assert!(close(
            figures["mean_score"].as_f64().unwrap(),
            passed as f64 / ITEMS as f64
        ));
        let mut latencies: Vec<f64> = rows
            .iter()
            .map(|row| row["latency_ms"].as_f64().unwrap())
            .collect();
        latencies.sort_by(f64::total_cmp);
        assert!(close(
            figures["latency_p50_ms"].as_f64().unwrap(),
            percentile_cont(&latencies, 0.5)
        ));
        assert!(close(
            figures["latency_p95_ms"].as_f64().unwrap(),
            percentile_cont(&latencies, 0.95)
        ));
        let sum = |field: &str| {
            rows.iter()
                .map(|row| row[field].as_f64().unwrap())
                .sum::<f64>()
        };
        assert_eq!(
            figures["input_tokens"].as_f64().unwrap(),
            sum("input_tokens")
        );
        assert_eq!(
            figures["output_tokens"].as_f64().unwrap(),
            sum("output_tokens")
        );
        assert!(close(
            figures["cost_usd"].as_f64().unwrap(),
            sum("cost_usd")
        ));
        total_cost += sum("cost_usd");
    }
    assert_eq!(models[0]["passed"], ITEMS, "the plain mock always echoes");
    let wrong = ITEMS - models[1]["passed"].as_u64().unwrap() as usize;
    assert!(
        (120..240).contains(&wrong),
        "about 30% wrong answers, got {wrong}"
    );
    assert_eq!(counts["passed"], all_passed);
    assert_eq!(counts["failed"], ITEMS * 2 - all_passed);
    assert!(close(
        summary["total_cost_usd"].as_f64().unwrap(),
        total_cost
    ));

    // Metrics of the workers that ran it: the evaluation's chunks (600 items
    // x 2 models, 250 runs per chunk: 6, or 16 of 75 runs when both workers
    // heartbeat at submission) spread over both workers.
    let chunks = stack.chunk_count(&id).await;
    assert!([6, 16].contains(&chunks), "{chunks} chunks");
    let mut metrics = String::new();
    for index in 0..stack.workers.len() {
        let text = stack.worker_metrics(index).await;
        assert!(
            text.contains("assay_jobs_finished_total{kind=\"chunk\",outcome=\"succeeded\"}"),
            "worker {index} ran no chunk:\n{text}"
        );
        metrics.push_str(&text);
    }
    assert_eq!(
        stack
            .metric_sum(
                "assay_jobs_finished_total",
                &["kind=\"chunk\"", "outcome=\"succeeded\""]
            )
            .await,
        chunks as f64
    );
    for expected in [
        "assay_jobs_started_total{kind=\"chunk\"}",
        "assay_jobs_finished_total{kind=\"chunk\",outcome=\"succeeded\"}",
        "assay_llm_calls_total{model=\"mock\",provider=\"mock\",outcome=\"ok\",purpose=\"generate\"}",
        "assay_llm_call_duration_seconds_bucket{model=\"mock\",provider=\"mock\",outcome=\"ok\",purpose=\"generate\"",
        "assay_results_written_total{status=\"passed\"}",
        "assay_results_written_total{status=\"failed\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "worker metrics lack {expected}:\n{metrics}"
        );
    }
    let calls: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("assay_llm_calls_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        calls as usize,
        ITEMS * 2,
        "one call per item x model, none repeated"
    );

    // Finished jobs leave Redis after their retention (none here): payload,
    // metadata and done-set entry of every chunk job, as apalis wrote them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let queue = JobQueue::connect(&stack.redis.url, &stack.redis.prefix)
        .await
        .unwrap();
    let mut forgotten = 0;
    for priority in Priority::ALL {
        forgotten += queue
            .forget_finished(priority, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(forgotten >= 6, "{forgotten} finished jobs deleted");
    let leftovers: Vec<String> = stack
        .redis
        .keys()
        .unwrap()
        .into_iter()
        .filter(|key| key.contains(":meta:") || key.ends_with(":done") || key.ends_with(":data"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let api_metrics = stack.client.get("/metrics").await.unwrap();
    let api_metrics = api_metrics.body.as_str().unwrap();
    assert!(api_metrics.contains("assay_http_requests_total{route=\"/v1/evaluations/{evaluation_id}\",method=\"GET\",status=\"200\"}"));
    assert!(api_metrics.contains("assay_evaluations_submitted_total 1"));
}
