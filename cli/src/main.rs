//! `assay`: a command-line client of the Assay API.
//!
//! - `assay demo`: creates a prompt, a dataset of 200 items and an
//!   evaluation over two mock models, follows it with a progress bar and
//!   prints its summary as a table (what `make demo` runs);
//! - `assay watch <id>`: follows any evaluation to the end;
//! - `assay summary <id>`: prints a finished evaluation's summary.

mod api;
mod render;
mod versioning;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::api::Api;

#[derive(Parser)]
#[command(name = "assay", version, about = "Client of the Assay API")]
struct Cli {
    /// Base URL of the API.
    #[arg(
        long,
        env = "ASSAY_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api_url: String,
    /// API key (`assay-api keys create --tenant NAME` prints one).
    #[arg(long, env = "ASSAY_API_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo evaluation end to end and print its summary.
    Demo {
        /// Items in the demo dataset.
        #[arg(long, default_value_t = 200)]
        items: usize,
    },
    /// Follow an evaluation until it finishes, then print its summary.
    Watch { evaluation_id: String },
    /// Print an evaluation's summary.
    Summary { evaluation_id: String },
    /// Cancel a queued or running evaluation (what was written is kept).
    Cancel { evaluation_id: String },
    /// Resume a failed or canceled evaluation, then follow it.
    Resume { evaluation_id: String },
    /// Run a finished evaluation's errored results again, then follow it.
    RetryErrors { evaluation_id: String },
    /// Promote a version to a label if an evaluation-backed policy holds.
    Promote(versioning::PromoteArgs),
    /// Ask a model for better prompts, evaluate them, keep the best.
    Optimize(versioning::OptimizeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let key = cli
        .key
        .context("an API key is needed: pass --key or set ASSAY_API_KEY")?;
    let api = Api::new(&cli.api_url, &key)?;
    match cli.command {
        Command::Demo { items } => demo(&api, items).await,
        Command::Watch { evaluation_id } => {
            let evaluation = watch(&api, &evaluation_id).await?;
            render::print_summary(&evaluation);
            ensure_succeeded(&evaluation)
        }
        Command::Summary { evaluation_id } => {
            let evaluation = api.get(&format!("/v1/evaluations/{evaluation_id}")).await?;
            render::print_summary(&evaluation);
            Ok(())
        }
        Command::Cancel { evaluation_id } => {
            let evaluation = api
                .post(
                    &format!("/v1/evaluations/{evaluation_id}/cancel"),
                    &json!({}),
                )
                .await?;
            println!(
                "Evaluation {evaluation_id} {}: {} of {} results kept",
                evaluation["status"].as_str().unwrap_or("?"),
                evaluation["counts"]["completed"],
                evaluation["counts"]["total"]
            );
            Ok(())
        }
        Command::Resume { evaluation_id } => reopen(&api, &evaluation_id, "resume").await,
        Command::RetryErrors { evaluation_id } => {
            reopen(&api, &evaluation_id, "retry-errors").await
        }
        Command::Promote(args) => versioning::promote(&api, args).await,
        Command::Optimize(args) => versioning::optimize(&api, args).await,
    }
}

/// Resumes or retries an evaluation, then follows it to the end.
async fn reopen(api: &Api, id: &str, action: &str) -> anyhow::Result<()> {
    let evaluation = api
        .post(&format!("/v1/evaluations/{id}/{action}"), &json!({}))
        .await?;
    println!(
        "Evaluation {id} queued again (run {})",
        evaluation["run"].as_i64().unwrap_or(0)
    );
    let evaluation = watch(api, id).await?;
    render::print_summary(&evaluation);
    ensure_succeeded(&evaluation)
}

/// Countries and capitals the demo asks about.
const CAPITALS: [(&str, &str); 40] = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("India", "New Delhi"),
    ("Spain", "Madrid"),
    ("Ghana", "Accra"),
    ("Cuba", "Havana"),
    ("Italy", "Rome"),
    ("Nepal", "Kathmandu"),
    ("Mexico", "Mexico City"),
    ("Poland", "Warsaw"),
    ("Brazil", "Brasília"),
    ("Vietnam", "Hanoi"),
    ("Morocco", "Rabat"),
    ("Ireland", "Dublin"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Sweden", "Stockholm"),
    ("Senegal", "Dakar"),
    ("Austria", "Vienna"),
    ("Portugal", "Lisbon"),
    ("Thailand", "Bangkok"),
    ("Iceland", "Reykjavík"),
    ("Hungary", "Budapest"),
    ("Colombia", "Bogotá"),
    ("Finland", "Helsinki"),
    ("Ethiopia", "Addis Ababa"),
    ("Germany", "Berlin"),
    ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"),
    ("Mongolia", "Ulaanbaatar"),
    ("Denmark", "Copenhagen"),
    ("Indonesia", "Jakarta"),
    ("Uruguay", "Montevideo"),
    ("Nigeria", "Abuja"),
];

const PHRASINGS: [&str; 5] = [
    "The capital of {country} is {capital}.",
    "{capital} is the capital city of {country}.",
    "In {country}, the seat of government is {capital}.",
    "Q: capital of {country}? A: {capital}",
    "{country} -> {capital}",
];

async fn demo(api: &Api, items: usize) -> anyhow::Result<()> {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let prompt = api
        .post(
            "/v1/prompts",
            &json!({
                "name": format!("capitals-{suffix}"),
                "description": "Restate a fact about a capital city.",
                "messages": [
                    {"role": "system", "content": "You are a geography tutor. Restate the fact you are given."},
                    {"role": "user", "content": "{{ fact }}"}
                ],
                "params": {"temperature": 0},
                "commit_message": "First version",
            }),
        )
        .await?;
    let dataset_items: Vec<Value> = (0..items)
        .map(|n| {
            let (country, capital) = CAPITALS[n % CAPITALS.len()];
            let fact = PHRASINGS[(n / CAPITALS.len()) % PHRASINGS.len()]
                .replace("{country}", country)
                .replace("{capital}", capital);
            json!({"id": format!("{}-{n}", country.to_lowercase()), "vars": {"fact": fact, "country": country}, "expected": capital})
        })
        .collect();
    let dataset = api
        .post(
            "/v1/datasets",
            &json!({"name": format!("capitals-{suffix}"), "items": dataset_items}),
        )
        .await?;
    let models = [
        "mock:latency=150ms,jitter=100ms",
        "mock:wrong=0.25,latency=250ms,jitter=150ms,price_in=3,price_out=15",
    ];
    println!(
        "Prompt {} v1, dataset of {} items, models: {}",
        prompt["name"].as_str().unwrap_or("?"),
        dataset["item_count"],
        models.join(" | ")
    );
    let evaluation = api
        .post(
            "/v1/evaluations",
            &json!({
                "prompt_version_id": prompt["latest_version"]["id"],
                "dataset_id": dataset["id"],
                "models": models,
                "graders": [
                    {"type": "contains", "value": "{{ expected }}"},
                    {"type": "regex", "pattern": "^[A-Z]"},
                ],
                // Every run of the demo makes its calls, rather than answering a
                // second run from the response cache at no cost.
                "cache": false,
            }),
        )
        .await?;
    let id = evaluation["id"]
        .as_str()
        .context("the API returned no evaluation id")?
        .to_owned();
    println!("Evaluation {id} queued");
    let evaluation = watch(api, &id).await?;
    render::print_summary(&evaluation);
    ensure_succeeded(&evaluation)
}

/// Polls an evaluation with a progress bar until it finishes.
async fn watch(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40.cyan/blue} {pos}/{len} results {msg} [{elapsed}]",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let evaluation = api.get(&format!("/v1/evaluations/{id}")).await?;
        let counts = &evaluation["counts"];
        bar.set_length(counts["total"].as_u64().unwrap_or(0));
        bar.set_position(counts["completed"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "({} passed, {} failed, {} errored) {}",
            counts["passed"],
            counts["failed"],
            counts["errored"],
            evaluation["status"].as_str().unwrap_or("?")
        ));
        if matches!(
            evaluation["status"].as_str(),
            Some("succeeded" | "failed" | "canceled")
        ) {
            bar.finish();
            return Ok(evaluation);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn ensure_succeeded(evaluation: &Value) -> anyhow::Result<()> {
    match evaluation["status"].as_str() {
        Some("succeeded") => Ok(()),
        status => anyhow::bail!(
            "evaluation ended {}: {}",
            status.unwrap_or("?"),
            evaluation["error"].as_str().unwrap_or("no error recorded")
        ),
    }
}
