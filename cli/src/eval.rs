//! `assay eval`: push the prompt (a new version only when its content
//! changed), upload the tests (only when no dataset with the same content
//! hash exists), submit, follow with a progress bar, print, export, and
//! turn the outcome into an exit code.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::api::{Api, encode};
use crate::export::{self, Filter};
use crate::render;
use crate::spec::{self, Format, Prompt, Resolved, Tests};

/// How a run ends: the process exit code.
pub const EXIT_PASSED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// `assay eval`'s options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub config: PathBuf,
    pub output: Option<PathBuf>,
    /// Lowest pass rate (percent) every model must reach; None: 100.
    pub fail_under: Option<f64>,
    pub allow_errors: bool,
    pub no_wait: bool,
    pub json: bool,
    pub graders: bool,
    pub promptfoo: crate::promptfoo::Options,
}

pub async fn run(api: &Api, options: &EvalOptions) -> anyhow::Result<u8> {
    if let Some(output) = &options.output {
        export::Format::of(output)?;
    }
    if let Some(fail_under) = options.fail_under
        && !(0.0..=100.0).contains(&fail_under)
    {
        bail!("--fail-under is a percentage between 0 and 100");
    }
    let resolved = load(&options.config, &options.promptfoo)?;
    let say = |line: String| {
        if !options.json {
            eprintln!("{line}");
        }
    };
    let version = push_prompt(api, &resolved.prompt, &options.config).await?;
    say(format!(
        "Prompt {} v{} ({})",
        version.name,
        version.number,
        if version.created {
            "new version"
        } else {
            "unchanged"
        }
    ));
    let dataset = upload_tests(api, &resolved).await?;
    say(format!(
        "Dataset {} of {} tests ({})",
        dataset.id,
        dataset.items,
        if dataset.uploaded {
            "uploaded"
        } else {
            "unchanged, not uploaded"
        }
    ));
    let mut body = json!({
        "prompt_version_id": version.id,
        "dataset_id": dataset.id,
        "models": resolved.models,
        "graders": resolved.graders,
    });
    let fields = [
        ("repeat", resolved.repeat.map(Value::from)),
        ("threshold", resolved.threshold.map(Value::from)),
        ("priority", resolved.priority.clone().map(Value::from)),
        ("cache", resolved.cache.map(Value::from)),
        ("max_cost_usd", resolved.max_cost_usd.map(Value::from)),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    let evaluation = api.post("/v1/evaluations", &body).await?;
    let id = evaluation["id"]
        .as_str()
        .context("the API returned no evaluation id")?
        .to_owned();
    if options.no_wait {
        if options.json {
            println!("{}", json!({"id": id, "status": evaluation["status"]}));
        } else {
            println!("{id}");
        }
        return Ok(EXIT_PASSED);
    }
    say(format!(
        "Evaluation {id} queued: {} runs",
        evaluation["counts"]["total"]
    ));
    let evaluation = match follow(api, &id, options.json).await? {
        Followed::Finished(evaluation) => evaluation,
        Followed::Detached => {
            eprintln!(
                "Stopped following; evaluation {id} goes on on the server (assay watch {id})"
            );
            return Ok(EXIT_ERROR);
        }
    };
    finish(api, &evaluation, options).await
}

/// Prints, exports and decides the exit code of a finished evaluation.
pub async fn finish(api: &Api, evaluation: &Value, options: &EvalOptions) -> anyhow::Result<u8> {
    let exported = match &options.output {
        Some(path) => Some((
            path,
            export::export(api, evaluation, path, Filter::All).await?,
        )),
        None => None,
    };
    let (code, reasons) = verdict(evaluation, options.fail_under, options.allow_errors);
    if options.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "evaluation": evaluation,
                "exit_code": code,
                "reasons": reasons,
                "output": exported.as_ref().map(|(path, count)| json!({"path": path, "results": count})),
            }))?
        );
    } else {
        render::print_summary(evaluation);
        if options.graders {
            render::print_graders(evaluation);
        }
        if let Some((path, count)) = &exported {
            println!("Wrote {count} results to {}", path.display());
        }
        for reason in &reasons {
            eprintln!("{reason}");
        }
    }
    Ok(code)
}

/// The exit code and why: 0 when every model's pass rate reaches
/// `fail_under` (default: no failure at all) and nothing errored (unless
/// allowed); 1 when tests fail; 2 when the evaluation did not finish.
pub fn verdict(
    evaluation: &Value,
    fail_under: Option<f64>,
    allow_errors: bool,
) -> (u8, Vec<String>) {
    let status = evaluation["status"].as_str().unwrap_or("?");
    if status != "succeeded" {
        return (
            EXIT_ERROR,
            vec![format!(
                "evaluation {status}: {}",
                evaluation["error"]
                    .as_str()
                    .or(evaluation["cancel_reason"].as_str())
                    .unwrap_or("no error recorded")
            )],
        );
    }
    let mut reasons = Vec::new();
    let models = evaluation["summary"]["models"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for model in &models {
        let name = model["model"].as_str().unwrap_or("?");
        let passed = model["passed"].as_f64().unwrap_or(0.0);
        let failed = model["failed"].as_f64().unwrap_or(0.0);
        let errored = model["errored"].as_f64().unwrap_or(0.0);
        let graded = passed + failed;
        let rate = if graded > 0.0 {
            passed / graded * 100.0
        } else {
            100.0
        };
        match fail_under {
            None if failed > 0.0 => reasons.push(format!(
                "FAIL {name}: {failed} of {graded} graded results failed"
            )),
            Some(minimum) if rate < minimum => reasons.push(format!(
                "FAIL {name}: pass rate {rate:.1}% is under --fail-under {minimum}%"
            )),
            _ => {}
        }
        if errored > 0.0 && !allow_errors {
            reasons.push(format!(
                "FAIL {name}: {errored} results errored (--allow-errors accepts them)"
            ));
        }
    }
    let code = if reasons.is_empty() {
        EXIT_PASSED
    } else {
        EXIT_FAILED
    };
    (code, reasons)
}

/// A spec file, or a promptfoo config (told apart by its shape).
pub fn load(path: &Path, promptfoo: &crate::promptfoo::Options) -> anyhow::Result<Resolved> {
    let document = spec::read_yaml(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let spec = if spec::is_promptfoo(&document) {
        let translated = crate::promptfoo::translate(&document, path, promptfoo)?;
        translated.report(promptfoo.skip_unsupported)?;
        translated.spec
    } else {
        spec::parse(document, path)?
    };
    spec.resolve(base)
}

pub struct PushedVersion {
    pub id: String,
    pub name: String,
    pub number: i64,
    pub created: bool,
}

/// The prompt version to run: a stored one as named, or the inline prompt
/// committed to `main` (the server creates nothing when the content hash
/// equals the head's).
pub async fn push_prompt(api: &Api, prompt: &Prompt, spec: &Path) -> anyhow::Result<PushedVersion> {
    match prompt {
        Prompt::Stored { name, pointer } => {
            let version = resolve_stored(api, name, pointer).await?;
            Ok(PushedVersion {
                id: version["id"].as_str().unwrap_or_default().to_owned(),
                name: name.clone(),
                number: version["version"].as_i64().unwrap_or(0),
                created: false,
            })
        }
        Prompt::Inline {
            name,
            description,
            messages,
            params,
        } => {
            let commit_message = format!("assay eval -c {}", spec.display());
            let head = api
                .get_optional(&format!("/v1/prompts/{}/resolve?branch=main", encode(name)))
                .await;
            let committed = match head {
                // No prompt of that name yet (404): create it with version 1.
                Ok(None) => {
                    let mut body = json!({"name": name, "messages": messages, "commit_message": commit_message});
                    if let Some(description) = description {
                        body["description"] = json!(description);
                    }
                    if let Some(params) = params {
                        body["params"] = params.clone();
                    }
                    let prompt = api.post("/v1/prompts", &body).await?;
                    let mut version = prompt["latest_version"].clone();
                    version["created"] = json!(true);
                    version
                }
                Ok(Some(head)) => {
                    let prompt_id = head["prompt_id"].as_str().context("no prompt id")?;
                    let mut body = json!({"messages": messages, "commit_message": commit_message, "branch": "main"});
                    if let Some(params) = params {
                        body["params"] = params.clone();
                    }
                    api.post(&format!("/v1/prompts/{prompt_id}/versions"), &body)
                        .await?
                }
                Err(error) => return Err(error),
            };
            Ok(PushedVersion {
                id: committed["id"]
                    .as_str()
                    .context("the API returned no version id")?
                    .to_owned(),
                name: name.clone(),
                number: committed["version"].as_i64().unwrap_or(0),
                created: committed["created"].as_bool().unwrap_or(true),
            })
        }
    }
}

/// `name@3` is version 3; otherwise a label, else a branch, of that name.
pub async fn resolve_stored(api: &Api, name: &str, pointer: &str) -> anyhow::Result<Value> {
    let prompt = encode(name);
    if let Ok(number) = pointer.parse::<u32>() {
        let head = api
            .get_optional(&format!("/v1/prompts/{prompt}/resolve?branch=main"))
            .await?
            .with_context(|| format!("no prompt named {name:?}"))?;
        let prompt_id = head["prompt_id"].as_str().context("no prompt id")?;
        return api
            .get_optional(&format!("/v1/prompts/{prompt_id}/versions/{number}"))
            .await?
            .with_context(|| format!("prompt {name:?} has no version {number}"));
    }
    for kind in ["label", "branch"] {
        if let Some(version) = api
            .get_optional(&format!(
                "/v1/prompts/{prompt}/resolve?{kind}={}",
                encode(pointer)
            ))
            .await?
        {
            return Ok(version);
        }
    }
    bail!("prompt {name:?} has no label, branch or version {pointer:?}")
}

pub struct UploadedDataset {
    pub id: String,
    pub items: i64,
    pub uploaded: bool,
}

/// Finds a dataset with the same content hash, or uploads the tests.
pub async fn upload_tests(api: &Api, resolved: &Resolved) -> anyhow::Result<UploadedDataset> {
    let (format, hash, body) = match &resolved.tests {
        Tests::File { path, format } => {
            // Hashed in one pass, then streamed from disk: never held whole.
            let mut hasher = content_hasher(*format);
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = file.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
            let body = file_body(path.clone()).await?;
            (*format, hex::encode(hasher.finalize()), body)
        }
        Tests::Items(items) => {
            let mut bytes = Vec::new();
            for item in items {
                serde_json::to_writer(&mut bytes, item)?;
                bytes.push(b'\n');
            }
            let mut hasher = content_hasher(Format::Jsonl);
            hasher.update(&bytes);
            (
                Format::Jsonl,
                hex::encode(hasher.finalize()),
                reqwest::Body::from(bytes),
            )
        }
    };
    let found = api
        .get(&format!("/v1/datasets?content_hash={hash}&limit=1"))
        .await?;
    if let Some(dataset) = found["data"].as_array().and_then(|data| data.first()) {
        return Ok(UploadedDataset {
            id: dataset["id"].as_str().unwrap_or_default().to_owned(),
            items: dataset["item_count"].as_i64().unwrap_or(0),
            uploaded: false,
        });
    }
    let dataset = api
        .post_body(
            &format!("/v1/datasets?name={}", encode(&resolved.dataset_name)),
            format.content_type(),
            body,
        )
        .await?;
    Ok(UploadedDataset {
        id: dataset["id"]
            .as_str()
            .context("the API returned no dataset id")?
            .to_owned(),
        items: dataset["item_count"].as_i64().unwrap_or(0),
        uploaded: true,
    })
}

/// The server's content hash: SHA-256 of a format tag, a newline, the body.
fn content_hasher(format: Format) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(format.tag().as_bytes());
    hasher.update(b"\n");
    hasher
}

/// A file as a streamed request body (64 KiB at a time).
async fn file_body(path: PathBuf) -> anyhow::Result<reqwest::Body> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    let stream = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(buffer), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

pub enum Followed {
    Finished(Value),
    /// The user stopped following (the evaluation goes on).
    Detached,
}

/// Follows an evaluation to its end with a progress bar: done/total,
/// items/s, ETA, pass rate and cost so far. On a terminal the bar is drawn
/// in place; otherwise a plain line goes to stderr every few seconds.
/// Ctrl-C asks once whether to cancel the evaluation on the server.
pub async fn follow(api: &Api, id: &str, quiet: bool) -> anyhow::Result<Followed> {
    let interactive = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if interactive && !quiet {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    )
    .with_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30.cyan/blue}] {pos}/{len} {rate} ETA {eta} {msg}",
        )
        .expect("valid template")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.1} items/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let mut last_line: Option<Instant> = None;
    let mut asked = false;
    // One listener for the whole follow, so a Ctrl-C during a request is not lost.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    loop {
        let progress = api.get(&format!("/v1/evaluations/{id}/progress")).await?;
        let total = progress["total"].as_u64().unwrap_or(0);
        let done = progress["completed"].as_u64().unwrap_or(0);
        let passed = progress["passed"].as_f64().unwrap_or(0.0);
        let failed = progress["failed"].as_f64().unwrap_or(0.0);
        let errored = progress["errored"].as_u64().unwrap_or(0);
        let cost = progress["cost_usd"].as_f64().unwrap_or(0.0);
        let status = progress["status"].as_str().unwrap_or("?").to_owned();
        let pass_rate = if passed + failed > 0.0 {
            format!("{:.1}%", passed / (passed + failed) * 100.0)
        } else {
            "-".to_owned()
        };
        bar.set_length(total);
        bar.set_position(done);
        let message = format!("pass {pass_rate} · errored {errored} · ${cost:.4} · {status}");
        bar.set_message(message.clone());
        let due = last_line.is_none_or(|at| at.elapsed() >= Duration::from_secs(2));
        if !interactive && !quiet && (due || done == total) {
            let seconds = started.elapsed().as_secs_f64();
            let rate = if seconds > 0.0 {
                done as f64 / seconds
            } else {
                0.0
            };
            let eta = if rate > 0.0 {
                format!("{:.0}s", (total - done) as f64 / rate)
            } else {
                "-".to_owned()
            };
            eprintln!(
                "progress {done}/{total} {rate:.1} items/s ETA {eta} {message} [{:.0}s]",
                started.elapsed().as_secs_f64()
            );
            last_line = Some(Instant::now());
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "canceled") {
            bar.finish_and_clear();
            let evaluation = api.get(&format!("/v1/evaluations/{id}")).await?;
            return Ok(Followed::Finished(evaluation));
        }
        // Wait for the next poll, or a Ctrl-C.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupts.recv() => {
                if asked {
                    bar.abandon();
                    return Ok(Followed::Detached);
                }
                asked = true;
                let cancel = bar.suspend(|| ask(&format!(
                    "\nCancel evaluation {id} on the server? [y/N] "
                )));
                if cancel {
                    api.post(&format!("/v1/evaluations/{id}/cancel"), &json!({})).await?;
                    eprintln!("Canceling; results written so far are kept.");
                } else {
                    eprintln!("The evaluation goes on; Ctrl-C again stops following it.");
                }
            }
        }
    }
}

/// Asks a yes/no question on stderr, reading one line of stdin.
fn ask(question: &str) -> bool {
    eprint!("{question}");
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(status: &str, models: Value) -> Value {
        json!({"status": status, "summary": {"models": models}})
    }

    #[test]
    fn exit_codes() {
        let clean = evaluation(
            "succeeded",
            json!([{"model": "a", "passed": 10, "failed": 0, "errored": 0}]),
        );
        assert_eq!(verdict(&clean, None, false).0, EXIT_PASSED);
        let some_failed = evaluation(
            "succeeded",
            json!([{"model": "a", "passed": 9, "failed": 1, "errored": 0}]),
        );
        assert_eq!(verdict(&some_failed, None, false).0, EXIT_FAILED);
        assert_eq!(verdict(&some_failed, Some(90.0), false).0, EXIT_PASSED);
        assert_eq!(verdict(&some_failed, Some(95.0), false).0, EXIT_FAILED);
        let errored = evaluation(
            "succeeded",
            json!([{"model": "a", "passed": 9, "failed": 0, "errored": 1}]),
        );
        assert_eq!(verdict(&errored, None, false).0, EXIT_FAILED);
        assert_eq!(verdict(&errored, None, true).0, EXIT_PASSED);
        assert_eq!(
            verdict(&evaluation("failed", json!(null)), None, true).0,
            EXIT_ERROR
        );
    }
}
