//! Tables people read.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use serde_json::Value;

fn number(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map(|number| format!("{number:.decimals$}"))
        .unwrap_or_else(|| "-".to_owned())
}

/// One row per model: pass rate, score, latency, tokens and cost.
pub fn print_summary(evaluation: &Value) {
    println!(
        "\nEvaluation {} {}",
        evaluation["id"].as_str().unwrap_or("?"),
        evaluation["status"].as_str().unwrap_or("?")
    );
    let Some(models) = evaluation["summary"]["models"].as_array() else {
        println!(
            "(no summary: {})",
            evaluation["error"].as_str().unwrap_or("not finished")
        );
        return;
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model",
        "items",
        "passed",
        "failed",
        "errored",
        "pass rate",
        "mean score",
        "p50 ms",
        "p95 ms",
        "tokens in",
        "tokens out",
        "cost $",
    ]);
    for model in models {
        table.add_row(vec![
            model["model"].as_str().unwrap_or("?").to_owned(),
            model["total"].to_string(),
            model["passed"].to_string(),
            model["failed"].to_string(),
            model["errored"].to_string(),
            model["pass_rate"]
                .as_f64()
                .map(|rate| format!("{:.1}%", rate * 100.0))
                .unwrap_or_default(),
            number(&model["mean_score"], 3),
            number(&model["latency_p50_ms"], 0),
            number(&model["latency_p95_ms"], 0),
            model["input_tokens"].to_string(),
            model["output_tokens"].to_string(),
            number(&model["cost_usd"], 6),
        ]);
    }
    for column in 1..12 {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("{table}");
    let mut graded_with: Vec<String> = evaluation["summary"]["graders"]
        .as_array()
        .map(|graders| {
            graders
                .iter()
                .filter_map(|grader| grader["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let from_tests = evaluation["summary"]["grader_summaries"]
        .as_array()
        .is_some_and(|summaries| summaries.iter().any(|summary| summary["source"] == "item"));
    if from_tests {
        graded_with.push("the tests' own asserts".to_owned());
    }
    println!(
        "Total cost ${}; graded with: {}",
        number(&evaluation["summary"]["total_cost_usd"], 6),
        graded_with.join(", ")
    );
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map(|rate| format!("{:.1}%", rate * 100.0))
        .unwrap_or_else(|| "-".to_owned())
}

/// Cuts long text to one short line.
fn short(text: &str, width: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= width {
        line
    } else {
        format!("{}…", line.chars().take(width).collect::<String>())
    }
}

/// Per grader and model: where it came from (the evaluation or the tests'
/// own asserts), passes, failures and errors.
pub fn print_graders(evaluation: &Value) {
    let Some(summaries) = evaluation["summary"]["grader_summaries"].as_array() else {
        return;
    };
    let mut table = table(&[
        "grader",
        "from",
        "model",
        "passed",
        "failed",
        "errors",
        "pass rate",
        "mean score",
    ]);
    for summary in summaries {
        let grader = match summary["index"].as_i64() {
            Some(index) => format!("#{index} {}", text(&summary["grader"])),
            None => text(&summary["grader"]),
        };
        let from = match summary["source"].as_str() {
            Some("item") => "tests",
            _ => "evaluation",
        };
        table.add_row(vec![
            grader,
            from.to_owned(),
            text(&summary["model"]),
            text(&summary["passed"]),
            text(&summary["failed"]),
            text(&summary["errors"]),
            percent(&summary["pass_rate"]),
            number(&summary["mean_score"], 3),
        ]);
    }
    println!("{table}");
}

/// One row per result: item, model, status, score and why it failed.
pub fn print_results(results: &[Value]) {
    let mut table = table(&["item", "model", "status", "score", "output", "why"]);
    for result in results {
        let why = match result["status"].as_str() {
            Some("errored") => text(&result["error"]),
            _ => crate::export::failure_reasons(result),
        };
        table.add_row(vec![
            text(&result["item_key"]),
            text(&result["model"]),
            text(&result["status"]),
            number(&result["score"], 3),
            short(result["output"].as_str().unwrap_or(""), 40),
            short(&why, 80),
        ]);
    }
    println!("{table}");
}

pub fn print_evaluations(evaluations: &[Value]) {
    let mut table = table(&[
        "id", "status", "created", "models", "done", "passed", "failed", "errored",
    ]);
    for evaluation in evaluations {
        let counts = &evaluation["counts"];
        let models = evaluation["models"]
            .as_array()
            .map(|models| models.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        table.add_row(vec![
            text(&evaluation["id"]),
            text(&evaluation["status"]),
            text(&evaluation["created_at"]),
            short(&models, 40),
            format!("{}/{}", text(&counts["completed"]), text(&counts["total"])),
            text(&counts["passed"]),
            text(&counts["failed"]),
            text(&counts["errored"]),
        ]);
    }
    println!("{table}");
}

/// The paired comparison: per model pair, pass rates, their difference
/// with its interval, the test's p-value, improvements and regressions.
pub fn print_comparison(comparison: &Value) {
    let mut table = table(&[
        "model a",
        "model b",
        "paired",
        "pass a",
        "pass b",
        "difference",
        "95% CI",
        "p-value",
        "improved",
        "regressed",
    ]);
    for pair in comparison["pairs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let rates = &pair["pass_rate"];
        let interval = &rates["ci95"];
        table.add_row(vec![
            text(&pair["a_model"]),
            text(&pair["b_model"]),
            text(&pair["items"]["paired"]),
            percent(&rates["a"]),
            percent(&rates["b"]),
            rates["difference"]
                .as_f64()
                .map(|difference| format!("{:+.1} pts", difference * 100.0))
                .unwrap_or_else(|| "-".to_owned()),
            match (interval["low"].as_f64(), interval["high"].as_f64()) {
                (Some(low), Some(high)) => format!("[{:+.1}, {:+.1}]", low * 100.0, high * 100.0),
                _ => "-".to_owned(),
            },
            number(&pair["significance"]["p_value"], 4),
            text(&pair["significance"]["improvements"]),
            text(&pair["significance"]["regressions"]),
        ]);
    }
    println!(
        "Evaluation a {} vs b {}",
        text(&comparison["a"]["id"]),
        text(&comparison["b"]["id"])
    );
    println!("{table}");
}

pub fn print_models(models: &Value) {
    let mut table = table(&[
        "name",
        "provider",
        "upstream",
        "$/M in",
        "$/M out",
        "fallbacks",
    ]);
    for model in models["data"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        table.add_row(vec![
            text(&model["name"]),
            text(&model["provider"]),
            text(&model["upstream_model"]),
            text(&model["price"]["input"]),
            text(&model["price"]["output"]),
            model["fallbacks"]
                .as_array()
                .map(|list| list.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        ]);
    }
    println!("{table}");
    if let Some(builtin) = models["builtin"].as_str() {
        println!("Also: {builtin}");
    }
}

pub fn print_log(versions: &[Value]) {
    let mut table = table(&["version", "id", "created", "message"]);
    for version in versions {
        table.add_row(vec![
            format!("v{}", text(&version["version"])),
            text(&version["id"]),
            text(&version["created_at"]),
            short(version["commit_message"].as_str().unwrap_or(""), 60),
        ]);
    }
    println!("{table}");
}

/// A prompt diff: each message's status, with the unified diff of changed ones.
pub fn print_diff(diff: &Value) {
    println!(
        "v{} → v{}",
        text(&diff["from"]["version"]),
        text(&diff["to"]["version"])
    );
    for message in diff["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        println!(
            "message {} ({}): {}",
            text(&message["index"]),
            text(&message["role"]),
            text(&message["status"])
        );
        if let Some(unified) = message["diff"].as_str().or(message["unified"].as_str()) {
            println!("{unified}");
        }
    }
    if let Some(params) = diff["params"].as_array()
        && !params.is_empty()
    {
        println!("params:");
        for change in params {
            println!("  {change}");
        }
    }
}
