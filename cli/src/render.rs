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
    println!(
        "Total cost ${}; graded with: {}",
        number(&evaluation["summary"]["total_cost_usd"], 6),
        evaluation["summary"]["graders"]
            .as_array()
            .map(|graders| graders
                .iter()
                .filter_map(|grader| grader["type"].as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
}
