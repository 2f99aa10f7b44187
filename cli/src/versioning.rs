//! `assay promote` and `assay optimize`: submit a versioning job, follow it
//! with a progress line, and print its evidence as tables.

use std::time::Duration;

use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::api::Api;
use crate::eval::{EXIT_FAILED, EXIT_PASSED};

/// The evaluation each version gets.
#[derive(Args, Debug)]
pub struct SetupArgs {
    /// Dataset id.
    #[arg(long)]
    dataset: String,
    /// Model to evaluate with (repeat for several).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// Graders as a JSON array.
    #[arg(
        long,
        default_value = r#"[{"type": "equals", "value": "{{ expected }}"}]"#
    )]
    graders: String,
    /// Runs of each item x model.
    #[arg(long)]
    repeat: Option<u32>,
}

impl SetupArgs {
    fn body(&self) -> anyhow::Result<Value> {
        let graders: Value = serde_json::from_str(&self.graders)
            .map_err(|error| anyhow::anyhow!("--graders is not JSON: {error}"))?;
        let mut body =
            json!({"dataset_id": self.dataset, "models": self.models, "graders": graders});
        if let Some(repeat) = self.repeat {
            body["repeat"] = json!(repeat);
        }
        Ok(body)
    }
}

/// The promotion policy.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The candidate's pass rate must reach this (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    min_pass_rate: f64,
    /// At most this many items may regress.
    #[arg(long)]
    max_regressions: Option<u32>,
    /// Refuse a candidate significantly worse at this level (exact McNemar).
    #[arg(long)]
    significance_level: Option<f64>,
    /// Lower bound of the score difference's 95% interval.
    #[arg(long, allow_hyphen_values = true)]
    min_score_difference: Option<f64>,
    /// Most extra cost, as a fraction (0.1 = 10%).
    #[arg(long)]
    max_cost_increase: Option<f64>,
}

impl PolicyArgs {
    fn body(&self) -> Value {
        let mut policy = json!({"min_pass_rate": self.min_pass_rate});
        for (key, value) in [
            ("max_regressions", self.max_regressions.map(|v| json!(v))),
            (
                "significance_level",
                self.significance_level.map(|v| json!(v)),
            ),
            (
                "min_score_difference",
                self.min_score_difference.map(|v| json!(v)),
            ),
            (
                "max_cost_increase",
                self.max_cost_increase.map(|v| json!(v)),
            ),
        ] {
            if let Some(value) = value {
                policy[key] = value;
            }
        }
        policy
    }
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Prompt id.
    prompt: String,
    /// The version to promote (number or id).
    #[arg(long)]
    candidate: String,
    /// The label to move (its current version is the baseline).
    #[arg(long)]
    label: String,
    #[command(flatten)]
    setup: SetupArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// Prompt id.
    prompt: String,
    /// The version to start from (number or id).
    #[arg(long)]
    from: String,
    #[command(flatten)]
    setup: SetupArgs,
    /// The model that proposes revised prompts.
    #[arg(long, default_value = "mock")]
    optimizer_model: String,
    /// Proposals per round.
    #[arg(long, default_value_t = 4)]
    candidates: u32,
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Share of the items kept for validation.
    #[arg(long, default_value_t = 0.5)]
    validation_split: f64,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Everything counts: generation, grading and optimizer calls.
    #[arg(long)]
    max_cost_usd: f64,
    /// Promote the winner to this label (with the policy flags).
    #[arg(long)]
    promote_to: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// A version as JSON: a number when it is one, else an id.
fn version(text: &str) -> Value {
    text.parse::<i64>()
        .map(|number| json!(number))
        .unwrap_or_else(|_| json!(text))
}

/// Polls `path` until its status is not one of `unfinished`, showing `line`.
async fn follow(
    api: &Api,
    path: &str,
    unfinished: &[&str],
    line: impl Fn(&Value) -> String,
) -> anyhow::Result<Value> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed_precise} {msg}",
    )?);
    spinner.enable_steady_tick(Duration::from_millis(120));
    loop {
        let job = api.get(path).await?;
        spinner.set_message(line(&job));
        if !unfinished.contains(&job["status"].as_str().unwrap_or_default()) {
            spinner.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rate(value: &Value) -> String {
    value
        .as_f64()
        .map(|rate| format!("{:.1}%", rate * 100.0))
        .unwrap_or_else(|| "-".to_owned())
}

fn number(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map(|number| format!("{number:.decimals$}"))
        .unwrap_or_else(|| "-".to_owned())
}

/// One row per model of a comparison (baseline = a, candidate = b).
fn print_comparison(comparison: &Value) {
    let Some(models) = comparison["models"].as_array() else {
        return;
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model",
        "paired",
        "pass a",
        "pass b",
        "improved",
        "regressed",
        "p-value",
        "score Δ",
        "score Δ 95% low",
        "cost a $",
        "cost b $",
    ]);
    for model in models {
        table.add_row(vec![
            model["b_model"].as_str().unwrap_or("?").to_owned(),
            model["items"]["paired"].to_string(),
            rate(&model["pass_rate"]["a"]),
            rate(&model["pass_rate"]["b"]),
            model["significance"]["improvements"].to_string(),
            model["significance"]["regressions"].to_string(),
            number(&model["significance"]["p_value"], 4),
            number(&model["score"]["difference"], 3),
            number(&model["score"]["ci95"]["low"], 3),
            number(&model["usage"]["a"]["cost_usd"], 6),
            number(&model["usage"]["b"]["cost_usd"], 6),
        ]);
    }
    println!("{table}");
}

/// `assay promote`: exit code 0 when the label moved, 1 when the promotion
/// ended otherwise (rejected, superseded, failed, canceled).
pub async fn promote(api: &Api, args: &PromoteArgs) -> anyhow::Result<u8> {
    let mut body = args.setup.body()?;
    body["candidate"] = version(&args.candidate);
    body["label"] = json!(args.label);
    body["policy"] = args.policy.body();
    let promotion = api
        .post(&format!("/v1/prompts/{}/promotions", args.prompt), &body)
        .await?;
    let id = promotion["id"].as_str().unwrap_or_default().to_owned();
    println!("Promotion {id} queued: {} → {}", args.candidate, args.label);
    let promotion = follow(
        api,
        &format!("/v1/promotions/{id}"),
        &["queued", "evaluating"],
        |job| {
            format!(
                "{} (baseline evaluation {}{}, candidate evaluation {})",
                job["status"].as_str().unwrap_or("?"),
                job["baseline_evaluation_id"].as_str().unwrap_or("-"),
                if job["baseline_reused"] == true {
                    ", reused"
                } else {
                    ""
                },
                job["candidate_evaluation_id"].as_str().unwrap_or("-"),
            )
        },
    )
    .await?;
    println!(
        "\nPromotion {id} {}: {}",
        promotion["status"].as_str().unwrap_or("?"),
        promotion["reason"].as_str().unwrap_or("")
    );
    print_comparison(&promotion["comparison"]);
    Ok(if promotion["status"] == "promoted" {
        EXIT_PASSED
    } else {
        EXIT_FAILED
    })
}

/// `assay optimize`: prints every candidate and the winner's comparison;
/// exit code 1 when the optimization failed or was canceled.
pub async fn optimize(api: &Api, args: &OptimizeArgs) -> anyhow::Result<u8> {
    let mut body = args.setup.body()?;
    for (key, value) in [
        ("from", version(&args.from)),
        ("optimizer_model", json!(args.optimizer_model)),
        ("candidates", json!(args.candidates)),
        ("rounds", json!(args.rounds)),
        ("validation_split", json!(args.validation_split)),
        ("seed", json!(args.seed)),
        ("max_cost_usd", json!(args.max_cost_usd)),
    ] {
        body[key] = value;
    }
    if let Some(label) = &args.promote_to {
        body["promote_to"] = json!(label);
        body["promote_policy"] = args.policy.body();
    }
    let optimization = api
        .post(&format!("/v1/prompts/{}/optimizations", args.prompt), &body)
        .await?;
    let id = optimization["id"].as_str().unwrap_or_default().to_owned();
    println!("Optimization {id} queued");
    let optimization = follow(
        api,
        &format!("/v1/optimizations/{id}"),
        &["queued", "running"],
        |job| {
            format!(
                "{} round {}/{}, proposals {} valid {} invalid, spent ${:.6}",
                job["status"].as_str().unwrap_or("?"),
                job["round"],
                job["rounds"],
                job["proposals_valid"],
                job["proposals_invalid"],
                job["spent_usd"].as_f64().unwrap_or(0.0)
            )
        },
    )
    .await?;
    println!(
        "\nOptimization {id} {}: {} (spent ${:.6} of ${:.6}; branch {})",
        optimization["status"].as_str().unwrap_or("?"),
        optimization["reason"].as_str().unwrap_or(""),
        optimization["spent_usd"].as_f64().unwrap_or(0.0),
        optimization["max_cost_usd"].as_f64().unwrap_or(0.0),
        optimization["branch"].as_str().unwrap_or("?"),
    );
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "round",
        "#",
        "version",
        "validation pass rate",
        "mean score",
        "cost $",
        "tokens",
        "note",
    ]);
    for candidate in optimization["candidate_list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let winner = !candidate["version_id"].is_null()
            && candidate["version_id"] == optimization["winner_version_id"];
        table.add_row(vec![
            candidate["round"].to_string(),
            candidate["index"].to_string(),
            candidate["version_id"]
                .as_str()
                .unwrap_or("(not committed)")
                .to_owned(),
            rate(&candidate["pass_rate"]),
            number(&candidate["mean_score"], 3),
            number(&candidate["cost_usd"], 6),
            candidate["tokens"].to_string(),
            if winner {
                "winner".to_owned()
            } else {
                candidate["invalid_reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            },
        ]);
    }
    println!("{table}");
    if optimization["comparison"].is_object() {
        println!("Winner against the starting version, on the validation items:");
        print_comparison(&optimization["comparison"]);
    }
    if let Some(promotion) = optimization["promotion_id"].as_str() {
        println!("Promotion {promotion} chained: `GET /v1/promotions/{promotion}`");
    }
    Ok(
        if ["failed", "canceled"].contains(&optimization["status"].as_str().unwrap_or("failed")) {
            EXIT_FAILED
        } else {
            EXIT_PASSED
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_policies_become_the_api_s_json() {
        assert_eq!(version("3"), json!(3));
        assert_eq!(version("0191-abc"), json!("0191-abc"));
        let policy = PolicyArgs {
            min_pass_rate: 0.8,
            max_regressions: Some(0),
            significance_level: None,
            min_score_difference: Some(-0.05),
            max_cost_increase: None,
        };
        assert_eq!(
            policy.body(),
            json!({"min_pass_rate": 0.8, "max_regressions": 0, "min_score_difference": -0.05})
        );
        let setup = SetupArgs {
            dataset: "d".to_owned(),
            models: vec!["mock".to_owned()],
            graders: "[]".to_owned(),
            repeat: Some(2),
        };
        assert_eq!(
            setup.body().unwrap(),
            json!({"dataset_id": "d", "models": ["mock"], "graders": [], "repeat": 2})
        );
        let bad = SetupArgs {
            graders: "{".to_owned(),
            ..setup
        };
        assert!(bad.body().unwrap_err().to_string().contains("--graders"));
    }
}
