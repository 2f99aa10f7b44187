//! `assay`: the command-line client of the Assay API, used the way people
//! use eval tools: a spec file, a terminal and CI.
//!
//! - `assay init` writes a commented `assay.yaml` that runs against the mock;
//! - `assay eval [-c assay.yaml]` pushes the prompt and tests (only what
//!   changed), runs the evaluation with a progress bar, prints tables,
//!   exports results (`-o`), and exits 0 (passed), 1 (tests failed) or 2
//!   (usage or server error) — see [`eval`];
//! - `assay results|compare|list|models|prompt ...` read what the server has;
//! - `assay import promptfoo FILE` translates a promptfoo config ([`promptfoo`]);
//! - `assay demo|watch|summary|cancel|resume|retry-errors` as before.

mod api;
mod eval;
mod export;
mod promptfoo;
mod render;
mod spec;
mod versioning;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::api::{Api, encode};
use crate::eval::{EXIT_ERROR, EXIT_PASSED, EvalOptions};
use crate::export::Filter;

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

/// How promptfoo configs are translated (for `eval` and `import promptfoo`).
#[derive(Args, Debug, Clone)]
struct PromptfooArgs {
    /// Map a promptfoo provider to a registry name: `--map openai:gpt-4o-mini=gpt-4o-mini` (repeatable).
    #[arg(long = "map", value_name = "PROVIDER=NAME")]
    maps: Vec<String>,
    /// Judge model of `llm-rubric` asserts that name none (default: defaultTest.options.provider).
    #[arg(long)]
    judge: Option<String>,
    /// Run without the asserts and settings Assay cannot translate (they are listed).
    #[arg(long)]
    skip_unsupported: bool,
}

impl PromptfooArgs {
    fn options(&self) -> anyhow::Result<promptfoo::Options> {
        promptfoo::Options {
            judge: self.judge.clone(),
            skip_unsupported: self.skip_unsupported,
            ..promptfoo::Options::default()
        }
        .with_maps(&self.maps)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented example assay.yaml that runs against the mock.
    Init {
        /// Where to write it.
        #[arg(short = 'c', long, default_value = "assay.yaml")]
        config: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run a spec file (or a promptfoo config) and gate on the outcome.
    Eval {
        /// The spec (default assay.yaml, else promptfooconfig.yaml).
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
        /// Write the results: .json, .jsonl, .csv or .xml (JUnit).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Lowest pass rate, in percent, every model must reach (default: no failure at all).
        #[arg(long, value_name = "PERCENT")]
        fail_under: Option<f64>,
        /// Errored results do not fail the run.
        #[arg(long)]
        allow_errors: bool,
        /// Print the evaluation id and exit once it is submitted.
        #[arg(long)]
        no_wait: bool,
        /// Machine-readable output on stdout instead of tables.
        #[arg(long)]
        json: bool,
        /// Also print the per-grader table.
        #[arg(long)]
        graders: bool,
        #[command(flatten)]
        promptfoo: PromptfooArgs,
    },
    /// An evaluation's results (all, or only failed or errored ones).
    Results {
        evaluation_id: String,
        #[arg(long, conflicts_with = "errored")]
        failed: bool,
        #[arg(long)]
        errored: bool,
        /// Write them to a file (.json, .jsonl, .csv, .xml) instead of printing.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Compare two evaluations of the same dataset (paired, with significance).
    Compare {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Recent evaluations.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Models the server knows (and the built-in mock).
    Models {
        #[arg(long)]
        json: bool,
    },
    /// A stored prompt's history.
    Prompt {
        #[command(subcommand)]
        command: PromptCommand,
    },
    /// Translate another tool's config into an assay.yaml.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
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

#[derive(Subcommand)]
enum PromptCommand {
    /// Versions of a branch, newest first.
    Log {
        name: String,
        #[arg(long, default_value = "main")]
        branch: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// What changed between two versions (numbers or ids).
    Diff {
        name: String,
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Point a label at a version.
    Label {
        name: String,
        label: String,
        version: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Translate a promptfooconfig.yaml into an assay.yaml.
    Promptfoo {
        file: PathBuf,
        /// Where to write the spec.
        #[arg(short = 'o', long, default_value = "assay.yaml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        promptfoo: PromptfooArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn api(cli: &Cli) -> anyhow::Result<Api> {
    let key = cli
        .key
        .as_deref()
        .context("an API key is needed: pass --key or set ASSAY_API_KEY")?;
    Api::new(&cli.api_url, key)
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The default spec: assay.yaml, else a promptfoo config beside it.
fn default_config() -> PathBuf {
    let assay = PathBuf::from("assay.yaml");
    if !assay.exists() {
        for promptfoo in ["promptfooconfig.yaml", "promptfooconfig.yml"] {
            if Path::new(promptfoo).exists() {
                return PathBuf::from(promptfoo);
            }
        }
    }
    assay
}

fn write_new(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} exists already (--force overwrites it)", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Init { config, force } => {
            write_new(config, spec::EXAMPLE, *force)?;
            println!(
                "Wrote {}: `assay eval` runs it (set ASSAY_API_URL and ASSAY_API_KEY first)",
                config.display()
            );
            Ok(EXIT_PASSED)
        }
        Command::Import {
            command:
                ImportCommand::Promptfoo {
                    file,
                    output,
                    force,
                    promptfoo,
                },
        } => {
            let document = spec::read_yaml(file)?;
            let translated = promptfoo::translate(&document, file, &promptfoo.options()?)?;
            translated.report(promptfoo.skip_unsupported)?;
            write_new(output, &promptfoo::to_yaml(&translated.spec)?, *force)?;
            println!(
                "Wrote {} from {}: `assay eval -c {}` runs it",
                output.display(),
                file.display(),
                output.display()
            );
            Ok(EXIT_PASSED)
        }
        Command::Eval {
            config,
            output,
            fail_under,
            allow_errors,
            no_wait,
            json,
            graders,
            promptfoo,
        } => {
            let options = EvalOptions {
                config: config.clone().unwrap_or_else(default_config),
                output: output.clone(),
                fail_under: *fail_under,
                allow_errors: *allow_errors,
                no_wait: *no_wait,
                json: *json,
                graders: *graders,
                promptfoo: promptfoo.options()?,
            };
            if !options.config.exists() {
                bail!(
                    "{} does not exist: `assay init` writes an example, or pass -c FILE",
                    options.config.display()
                );
            }
            eval::run(&api(&cli)?, &options).await
        }
        Command::Results {
            evaluation_id,
            failed,
            errored,
            output,
            json,
        } => {
            let api = api(&cli)?;
            let filter = if *failed {
                Filter::Failed
            } else if *errored {
                Filter::Errored
            } else {
                Filter::All
            };
            let evaluation = api
                .get(&format!("/v1/evaluations/{}", encode(evaluation_id)))
                .await?;
            if let Some(output) = output {
                let count = export::export(&api, &evaluation, output, filter).await?;
                println!("Wrote {count} results to {}", output.display());
            } else if *json {
                export::for_each_result(&api, evaluation_id, filter, |result| {
                    println!("{result}");
                    Ok(())
                })
                .await?;
            } else {
                let mut rows = Vec::new();
                export::for_each_result(&api, evaluation_id, filter, |result| {
                    rows.push(result.clone());
                    Ok(())
                })
                .await?;
                render::print_results(&rows);
            }
            Ok(EXIT_PASSED)
        }
        Command::Compare { a, b, json } => {
            let api = api(&cli)?;
            let comparison = api
                .get(&format!(
                    "/v1/evaluations/{}/compare/{}",
                    encode(a),
                    encode(b)
                ))
                .await?;
            if *json {
                print_json(&comparison)?;
            } else {
                render::print_comparison(&comparison);
            }
            Ok(EXIT_PASSED)
        }
        Command::List { limit, json } => {
            let page = api(&cli)?
                .get(&format!("/v1/evaluations?limit={limit}"))
                .await?;
            if *json {
                print_json(&page["data"])?;
            } else {
                render::print_evaluations(
                    page["data"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                );
            }
            Ok(EXIT_PASSED)
        }
        Command::Models { json } => {
            let models = api(&cli)?.get("/v1/models").await?;
            if *json {
                print_json(&models)?;
            } else {
                render::print_models(&models);
            }
            Ok(EXIT_PASSED)
        }
        Command::Prompt { command } => prompt_command(&api(&cli)?, command).await,
        Command::Demo { items } => demo(&api(&cli)?, *items).await.map(|()| EXIT_PASSED),
        Command::Watch { evaluation_id } => {
            let evaluation = watch(&api(&cli)?, evaluation_id).await?;
            render::print_summary(&evaluation);
            ensure_succeeded(&evaluation).map(|()| EXIT_PASSED)
        }
        Command::Summary { evaluation_id } => {
            let evaluation = api(&cli)?
                .get(&format!("/v1/evaluations/{evaluation_id}"))
                .await?;
            render::print_summary(&evaluation);
            render::print_graders(&evaluation);
            Ok(EXIT_PASSED)
        }
        Command::Cancel { evaluation_id } => {
            let evaluation = api(&cli)?
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
            Ok(EXIT_PASSED)
        }
        Command::Resume { evaluation_id } => reopen(&api(&cli)?, evaluation_id, "resume")
            .await
            .map(|()| EXIT_PASSED),
        Command::RetryErrors { evaluation_id } => {
            reopen(&api(&cli)?, evaluation_id, "retry-errors")
                .await
                .map(|()| EXIT_PASSED)
        }
        Command::Promote(args) => versioning::promote(&api(&cli)?, args).await,
        Command::Optimize(args) => versioning::optimize(&api(&cli)?, args).await,
    }
}

/// The id of a prompt by name (through its main branch).
async fn prompt_id(api: &Api, name: &str) -> anyhow::Result<String> {
    let head = api
        .get_optional(&format!("/v1/prompts/{}/resolve?branch=main", encode(name)))
        .await?
        .with_context(|| format!("no prompt named {name:?}"))?;
    Ok(head["prompt_id"]
        .as_str()
        .context("no prompt id")?
        .to_owned())
}

async fn prompt_command(api: &Api, command: &PromptCommand) -> anyhow::Result<u8> {
    match command {
        PromptCommand::Log {
            name,
            branch,
            limit,
            json,
        } => {
            let head = eval::resolve_stored(api, name, branch).await?;
            let log = api
                .get(&format!(
                    "/v1/prompts/{}/versions/{}/log?limit={limit}",
                    head["prompt_id"].as_str().unwrap_or_default(),
                    head["id"].as_str().unwrap_or_default()
                ))
                .await?;
            if *json {
                print_json(&log["data"])?;
            } else {
                render::print_log(log["data"].as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        PromptCommand::Diff {
            name,
            from,
            to,
            json,
        } => {
            let id = prompt_id(api, name).await?;
            let diff = api
                .get(&format!(
                    "/v1/prompts/{id}/diff?from={}&to={}",
                    encode(from),
                    encode(to)
                ))
                .await?;
            if *json {
                print_json(&diff)?;
            } else {
                render::print_diff(&diff);
            }
        }
        PromptCommand::Label {
            name,
            label,
            version,
            reason,
            json,
        } => {
            let id = prompt_id(api, name).await?;
            let version: Value = version
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(version.clone()));
            let mut body = json!({"version": version});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let moved = api
                .put(&format!("/v1/prompts/{id}/labels/{}", encode(label)), &body)
                .await?;
            if *json {
                print_json(&moved)?;
            } else {
                println!("{name}@{label} now points at version {version}");
            }
        }
    }
    Ok(EXIT_PASSED)
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
