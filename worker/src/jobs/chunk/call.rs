//! One run: render, call (or take a re-grading's stored output), grade.

use std::sync::Arc;

use assay_core::db::models::datasets::DatasetItem;
use assay_core::db::models::results::{self, CallFigures, NewResult, ResultStatus};
use assay_core::domain::{ChatMessage, ModelParams};
use assay_core::graders::{self, GradeInput, Grader};
use assay_core::providers::Model;
use assay_core::providers::call::{CallOptions, LlmClient};
use metrics::{counter, gauge};
use serde_json::Value;

use super::plan::Plan;
use crate::capacity::HeldSlot;

/// Counts dollars spent by `model` for `purpose` (generate, judge); free
/// calls too, so that every model in use has a series.
pub(super) fn record_spend(model: &str, purpose: &'static str, dollars: f64) {
    gauge!("assay_spend_usd", "model" => model.to_owned(), "purpose" => purpose).increment(dollars);
}

/// One run of one item on one model.
pub(super) struct Run {
    pub(super) model_index: usize,
    pub(super) repeat: i32,
    /// For a re-grading: the source evaluation's result for this run (None
    /// inside when the source has none).
    pub(super) source: Option<Option<results::StoredOutput>>,
}

/// What generation produced for a run: the answer, or why there is none.
struct Generated {
    output: Result<String, String>,
    call: CallFigures,
    /// Why `output` is an error, for metrics: the provider's failure
    /// (`rate_limited`, `timeout`, ...), `template` or `source`.
    failure: &'static str,
}

impl Generated {
    /// No output, for `reason`, and nothing spent.
    fn nothing(reason: String) -> Self {
        Self {
            output: Err(reason),
            call: CallFigures::default(),
            failure: "template",
        }
    }
}

/// An item's own graders, compiled; an error (a row the API did not check)
/// makes the item's results errored rather than failing the chunk.
pub(super) fn item_graders(item: &DatasetItem) -> Result<Vec<Grader>, String> {
    match &item.graders {
        None => Ok(Vec::new()),
        Some(stored) => {
            let graders = graders::compile_item(stored)?;
            counter!("assay_item_graders_compiled_total").increment(graders.len() as u64);
            Ok(graders)
        }
    }
}

/// Calls one model on one rendered item (with retries), or takes the stored
/// output of a re-grading, and grades the answer with the evaluation's
/// graders and the item's own.
pub(super) async fn evaluate_one(
    plan: &Plan,
    run: Run,
    item: &DatasetItem,
    context: &Value,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    item_graders: &Result<Vec<Grader>, String>,
    slot: &HeldSlot,
) -> (NewResult, Option<&'static str>) {
    let model = &plan.models[run.model_index];
    let generated = match run.source {
        Some(stored) => from_source(stored),
        None => {
            let options = CallOptions {
                purpose: "generate",
                repeat: u32::try_from(run.repeat).unwrap_or(0),
                use_cache: plan.evaluation.use_cache,
                slot: Some(slot),
            };
            generate(&plan.llm, model, rendered, &plan.params, options).await
        }
    };
    // Errored until graded, with what the call cost; the error comes below.
    let mut result = NewResult {
        error: None,
        call: generated.call,
        ..NewResult::errored(
            &plan.evaluation,
            &model.name,
            item.position,
            run.repeat,
            &item.item_key,
            "",
        )
    };
    let output = match generated.output {
        Ok(output) => output,
        Err(error) => {
            result.error = Some(error);
            return (result, Some(generated.failure));
        }
    };
    let item_graders = match item_graders {
        Ok(graders) => graders.as_slice(),
        Err(error) => {
            result.error = Some(error.clone());
            result.output = Some(output);
            return (result, Some("item_graders"));
        }
    };
    let input = GradeInput {
        output: &output,
        context,
        latency_ms: result.call.latency_ms.map(f64::from),
        cost_usd: result.call.cost_usd,
        finish_reason: result.call.finish_reason.as_deref(),
    };
    // The item's own pass mark wins over the evaluation's.
    let threshold = item.threshold.or(plan.evaluation.threshold);
    let verdict =
        graders::grade_with_item(&plan.graders, item_graders, &input, &plan.judge, threshold).await;
    result.status = if verdict.errored {
        ResultStatus::Errored
    } else if verdict.passed {
        ResultStatus::Passed
    } else {
        ResultStatus::Failed
    }
    .as_str();
    if verdict.errored {
        result.error = verdict.grades.iter().find_map(|grade| {
            grade
                .error
                .as_ref()
                .map(|error| format!("{} grader: {error}", grade.grader))
        });
    }
    result.score = (!verdict.errored).then_some(verdict.score);
    result.grading_cost_usd = verdict.grading_cost_usd;
    result.grades = serde_json::to_value(&verdict.grades).expect("grades serialize");
    result.output = Some(output);
    (result, verdict.errored.then_some("grader"))
}

async fn generate(
    llm: &LlmClient,
    model: &Arc<Model>,
    rendered: &Result<Vec<ChatMessage>, assay_core::templates::TemplateError>,
    params: &ModelParams,
    options: CallOptions<'_>,
) -> Generated {
    let messages = match rendered {
        Ok(messages) => messages,
        Err(error) => return Generated::nothing(format!("template: {error}")),
    };
    let report = llm.complete(model, messages, params, options).await;
    record_spend(
        report.answered_by.as_deref().unwrap_or(model.name.as_str()),
        "generate",
        report.cost_usd,
    );
    let saturate = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut generated = Generated::nothing(String::new());
    let call = &mut generated.call;
    call.attempts = saturate(report.attempts);
    call.answered_by = report.answered_by;
    call.cached = report.cached;
    call.cost_usd = report.cost_usd;
    match report.outcome {
        Ok(completion) => {
            call.latency_ms = report
                .latency
                .map(|latency| i32::try_from(latency.as_millis()).unwrap_or(i32::MAX));
            call.input_tokens = saturate(completion.usage.input_tokens);
            call.output_tokens = saturate(completion.usage.output_tokens);
            call.cached_tokens = saturate(completion.usage.cached_tokens);
            call.finish_reason = completion.finish_reason;
            generated.output = Ok(completion.text);
        }
        Err(error) => {
            generated.failure = error.outcome();
            generated.output = Err(format!(
                "{} after {} attempt(s): {error}",
                model.name, report.attempts
            ))
        }
    }
    generated
}

/// Logs an errored result once (not per attempt) and counts it by reason:
/// the provider's failure (`rate_limited`, `timeout`, ...), `template`,
/// `source`, `item_graders` or `grader`.
pub(super) fn log_errored(result: &NewResult, reason: &'static str) {
    counter!("assay_results_errored_total", "model" => result.model.clone(), "reason" => reason)
        .increment(1);
    tracing::warn!(
        evaluation.id = %result.evaluation_id,
        model = %result.model,
        item = result.item_position,
        repeat = result.repeat_index,
        attempts = result.call.attempts,
        reason,
        error = result.error.as_deref().unwrap_or_default(),
        "result errored"
    );
}

/// A re-grading's output: what the source stored, at the source's cost.
fn from_source(stored: Option<results::StoredOutput>) -> Generated {
    let Some(stored) = stored else {
        let mut nothing =
            Generated::nothing("the source evaluation has no result for this run".to_owned());
        nothing.failure = "source";
        return nothing;
    };
    Generated {
        output: stored.output.ok_or_else(|| {
            stored
                .error
                .unwrap_or_else(|| "the source run has no output".to_owned())
        }),
        call: stored.call,
        failure: "source",
    }
}
