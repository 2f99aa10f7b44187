//! Versioning jobs' domain: eval-gated promotion ([`promotion`]) and prompt
//! optimization ([`optimization`]).
//!
//! Rules that hold inside:
//! - A job's state lives in its PostgreSQL row; a step reads the row, does
//!   one thing, and records it with a conditional UPDATE, so any worker may
//!   run any step again after a crash and the effect is the same.
//! - Jobs never call a model to generate outputs: they create evaluations
//!   through [`crate::submit`], exactly as the API does, and wait for them.
//!   The optimizer's call is the one call a job makes itself, through the
//!   [`LlmClient`] (limits, retries, cost).
//! - A finished evaluation identical to one a job needs (version, dataset,
//!   models, graders, params, repeat, threshold) is reused, not re-run.

pub mod optimization;
pub mod optimizer;
pub mod promotion;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::db::DbPool;
use crate::db::models::chunks::Planning;
use crate::db::models::compare::PairReport;
use crate::db::models::datasets::Dataset;
use crate::db::models::evaluations::{Evaluation, NewEvaluation};
use crate::db::schema::evaluations;
use crate::domain::{
    DatasetShape, EvaluationRequest, InvalidInput, ModelParams, Priority, PromptContent,
};
use crate::ids::{DatasetId, EvaluationId, TenantId, VersionId};
use crate::providers::ModelCatalog;
use crate::providers::call::LlmClient;
use crate::queue::JobQueue;
use crate::submit::{self, OnPushFailure};

/// What a step needs: the shared pieces of the process running it.
pub struct Ctx<'a> {
    pub pool: &'a DbPool,
    pub queue: &'a JobQueue,
    pub llm: &'a LlmClient,
    /// Who the events name (`worker:<name>`).
    pub actor: &'a str,
    pub runs_per_chunk: i32,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It changed the state: take the next step now.
    Continue,
    /// It waits for evaluations to finish: look again a little later.
    Wait,
    /// The job is over, with this outcome (the row's final status).
    Done(&'static str),
}

/// The evaluation a versioning job runs (for each version it evaluates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSetup {
    pub dataset_id: DatasetId,
    pub models: Vec<String>,
    pub graders: Vec<Value>,
    #[serde(default)]
    pub params: Option<ModelParams>,
    #[serde(default)]
    pub repeat: Option<u32>,
    #[serde(default)]
    pub threshold: Option<f64>,
}

impl EvaluationSetup {
    /// Checks the setup as `POST /v1/evaluations` would for `prompt` on a
    /// dataset of `shape`, and returns it with its graders in stored form
    /// (so that identical setups compare equal when looking for reuse).
    pub fn validate(
        &self,
        catalog: &ModelCatalog,
        prompt: &PromptContent,
        shape: &DatasetShape,
    ) -> Result<EvaluationSetup, InvalidInput> {
        let request = EvaluationRequest {
            prompt_version_id: Some(VersionId::from_uuid(Uuid::nil())),
            prompt: None,
            label: None,
            branch: None,
            dataset_id: self.dataset_id,
            models: self.models.clone(),
            graders: self.graders.clone(),
            params: self.params.clone(),
            repeat: self.repeat,
            threshold: self.threshold,
            cache: None,
            priority: None,
            max_cost_usd: None,
            webhook_url: None,
        };
        let graders = request.validate(catalog, prompt, shape)?;
        let graders = match serde_json::to_value(&graders).expect("graders serialize") {
            Value::Array(graders) => graders,
            _ => unreachable!("a Vec serializes to an array"),
        };
        Ok(EvaluationSetup {
            graders,
            repeat: Some(self.repeat.unwrap_or(1)),
            params: Some(self.params.clone().unwrap_or_default()),
            ..self.clone()
        })
    }

    fn models_json(&self) -> Value {
        serde_json::json!(self.models)
    }

    fn graders_json(&self) -> Value {
        Value::Array(self.graders.clone())
    }

    fn params_json(&self) -> Value {
        serde_json::to_value(self.params.clone().unwrap_or_default()).expect("params serialize")
    }

    fn repeats(&self) -> i32 {
        i32::try_from(self.repeat.unwrap_or(1)).unwrap_or(1)
    }
}

/// Why a job asked for an evaluation: recorded as its `prompt_ref`.
pub fn job_ref(kind: &str, id: Uuid, role: &str) -> Value {
    serde_json::json!({ "job": kind, "id": id, "role": role })
}

/// The evaluation this job step submitted already, if any: the newest of
/// `version` on `dataset_id` whose `prompt_ref` is the step's job reference.
async fn made_before(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    version_id: VersionId,
    dataset_id: DatasetId,
    job_ref: &Value,
) -> QueryResult<Option<Evaluation>> {
    evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .filter(evaluations::prompt_version_id.eq(version_id))
        .filter(evaluations::dataset_id.eq(dataset_id))
        .filter(evaluations::prompt_ref.eq(job_ref))
        .order(evaluations::id.desc())
        .select(Evaluation::as_select())
        .first(conn)
        .await
        .optional()
}

/// A succeeded evaluation of `version` on `dataset_id` identical to what
/// `setup` asks for, newest first.
pub async fn find_reusable(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    version_id: VersionId,
    dataset_id: DatasetId,
    setup: &EvaluationSetup,
) -> QueryResult<Option<Evaluation>> {
    let mut query = evaluations::table
        .filter(evaluations::tenant_id.eq(tenant_id))
        .filter(evaluations::prompt_version_id.eq(version_id))
        .filter(evaluations::dataset_id.eq(dataset_id))
        .filter(evaluations::status.eq("succeeded"))
        .filter(evaluations::source_evaluation_id.is_null())
        .filter(evaluations::models.eq(setup.models_json()))
        .filter(evaluations::graders.eq(setup.graders_json()))
        .filter(evaluations::params.eq(setup.params_json()))
        .filter(evaluations::repeats.eq(setup.repeats()))
        .into_boxed();
    query = match setup.threshold {
        Some(threshold) => query.filter(evaluations::threshold.eq(threshold)),
        None => query.filter(evaluations::threshold.is_null()),
    };
    query
        .order(evaluations::finished_at.desc())
        .select(Evaluation::as_select())
        .first(conn)
        .await
        .optional()
}

/// The evaluation of `version` on `dataset` under `setup`: a finished
/// identical one (reused: true), or a new one submitted now.
#[expect(
    clippy::too_many_arguments,
    reason = "one evaluation's whole definition"
)]
pub async fn evaluation_for(
    ctx: &Ctx<'_>,
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    version_id: VersionId,
    dataset: &Dataset,
    setup: &EvaluationSetup,
    max_cost_usd: Option<f64>,
    prompt_ref: Value,
    request_id: Option<&str>,
) -> anyhow::Result<(Evaluation, bool)> {
    // A step run again after a crash (between submitting the evaluation and
    // recording it on the job) finds the evaluation it made, by the job
    // reference every evaluation of a job carries, instead of making, and
    // paying for, another.
    if let Some(made) = made_before(conn, tenant_id, version_id, dataset.id, &prompt_ref).await? {
        metrics::counter!("assay_versioning_evaluations_total", "source" => "resumed").increment(1);
        return Ok((made, false));
    }
    if let Some(found) = find_reusable(conn, tenant_id, version_id, dataset.id, setup).await? {
        metrics::counter!("assay_versioning_evaluations_total", "source" => "reused").increment(1);
        return Ok((found, true));
    }
    let total =
        i64::from(dataset.item_count) * setup.models.len() as i64 * i64::from(setup.repeats());
    let new = NewEvaluation {
        id: EvaluationId::now_v7(),
        tenant_id,
        prompt_version_id: version_id,
        dataset_id: dataset.id,
        models: setup.models_json(),
        graders: setup.graders_json(),
        params: setup.params_json(),
        total: i32::try_from(total)?,
        repeats: setup.repeats(),
        threshold: setup.threshold,
        source_evaluation_id: None,
        use_cache: true,
        priority: Priority::Normal.as_str().to_owned(),
        prompt_ref: Some(prompt_ref),
        max_cost_usd,
        cost_estimate: None,
        request_id: request_id.map(str::to_owned),
    };
    let planning = Planning {
        items: dataset.item_count,
        runs_per_chunk: ctx.runs_per_chunk,
    };
    // A lost push is the sweeper's to redo: the job waits for the evaluation anyway.
    let evaluation = submit::submit(
        conn,
        ctx.queue,
        ctx.actor,
        &new,
        planning,
        OnPushFailure::Leave,
    )
    .await?;
    metrics::counter!("assay_versioning_evaluations_total", "source" => "new").increment(1);
    Ok((evaluation, false))
}

/// The rules a candidate must pass against its baseline, per model (every
/// model must pass every rule that is set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// The candidate's pass rate over the paired items must reach it (0 to 1).
    pub min_pass_rate: f64,
    /// Non-inferiority: at most this many items may regress.
    #[serde(default)]
    pub max_regressions: Option<u32>,
    /// Non-inferiority: refused when the candidate is significantly worse,
    /// i.e. more regressions than improvements with an exact McNemar
    /// p-value below this (e.g. 0.05).
    #[serde(default)]
    pub significance_level: Option<f64>,
    /// Non-inferiority: the lower bound of the 95% bootstrap interval of the
    /// mean score difference (candidate − baseline) must reach this (e.g. −0.05).
    #[serde(default)]
    pub min_score_difference: Option<f64>,
    /// The candidate's cost may pass the baseline's by at most this fraction
    /// (0.1 = 10% more).
    #[serde(default)]
    pub max_cost_increase: Option<f64>,
}

impl Policy {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let fraction = |field: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(InvalidInput::new(
                    format!("policy.{field}"),
                    "must be a number between 0 and 1",
                ))
            }
        };
        fraction("min_pass_rate", self.min_pass_rate)?;
        if let Some(level) = self.significance_level {
            fraction("significance_level", level)?;
        }
        if let Some(difference) = self.min_score_difference
            && !(-1.0..=1.0).contains(&difference)
        {
            return Err(InvalidInput::new(
                "policy.min_score_difference",
                "must be a number between -1 and 1",
            ));
        }
        if let Some(increase) = self.max_cost_increase
            && !(increase.is_finite() && (0.0..=100.0).contains(&increase))
        {
            return Err(InvalidInput::new(
                "policy.max_cost_increase",
                "must be a fraction between 0 and 100",
            ));
        }
        if self.max_regressions.is_none()
            && self.significance_level.is_none()
            && self.min_score_difference.is_none()
        {
            return Err(InvalidInput::new(
                "policy",
                "needs a non-inferiority rule: max_regressions, significance_level or min_score_difference",
            ));
        }
        Ok(())
    }

    /// The first rule a model's comparison breaks, as (rule, explanation).
    pub fn check(&self, reports: &[PairReport]) -> Option<(&'static str, String)> {
        for report in reports {
            let model = &report.b_model;
            if report.items.paired == 0 {
                return Some((
                    "min_pass_rate",
                    format!("model {model}: no item was graded on both sides"),
                ));
            }
            if report.pass_rate.b < self.min_pass_rate {
                return Some((
                    "min_pass_rate",
                    format!(
                        "model {model}: the candidate's pass rate {:.4} is below min_pass_rate {:.4}",
                        report.pass_rate.b, self.min_pass_rate
                    ),
                ));
            }
            if let Some(max) = self.max_regressions
                && report.significance.regressions > i64::from(max)
            {
                return Some((
                    "max_regressions",
                    format!(
                        "model {model}: {} items regressed, more than max_regressions {max}",
                        report.significance.regressions
                    ),
                ));
            }
            if let Some(level) = self.significance_level
                && report.significance.regressions > report.significance.improvements
                && report.significance.p_value < level
            {
                return Some((
                    "significance_level",
                    format!(
                        "model {model}: significantly worse ({} regressions, {} improvements, p = {:.4} < {level})",
                        report.significance.regressions,
                        report.significance.improvements,
                        report.significance.p_value
                    ),
                ));
            }
            if let Some(min) = self.min_score_difference {
                let low = report
                    .score
                    .as_ref()
                    .and_then(|score| score.ci95.as_ref().map(|ci| ci.low));
                match low {
                    Some(low) if low >= min => {}
                    Some(low) => {
                        return Some((
                            "min_score_difference",
                            format!(
                                "model {model}: the score difference's 95% interval starts at {low:.4}, below {min}"
                            ),
                        ));
                    }
                    None => {
                        return Some((
                            "min_score_difference",
                            format!("model {model}: no scores to compare"),
                        ));
                    }
                }
            }
            if let Some(max) = self.max_cost_increase {
                let (a, b) = (report.usage.a.cost_usd, report.usage.b.cost_usd);
                if b > a * (1.0 + max) + 1e-12 {
                    return Some((
                        "max_cost_increase",
                        format!(
                            "model {model}: the candidate cost ${b:.6} against ${a:.6}, more than {:.0}% above",
                            max * 100.0
                        ),
                    ));
                }
            }
        }
        None
    }
}

/// Compares `a` (baseline) with `b` (candidate), model by model.
pub async fn compare(
    conn: &mut AsyncPgConnection,
    tenant_id: TenantId,
    a: EvaluationId,
    b: EvaluationId,
    models: &[String],
) -> QueryResult<Vec<PairReport>> {
    use crate::db::models::compare::{Side, compare_pair};
    let mut reports = Vec::with_capacity(models.len());
    for model in models {
        reports.push(
            compare_pair(
                conn,
                tenant_id,
                &Side {
                    evaluation_id: a,
                    model,
                },
                &Side {
                    evaluation_id: b,
                    model,
                },
                EVIDENCE_ITEMS,
            )
            .await?,
        );
    }
    Ok(reports)
}

/// Changed items listed in stored evidence (the counts are exact; the lists
/// are pages, like the compare endpoint's first page).
pub const EVIDENCE_ITEMS: i64 = 20;

/// The steps run on a multi-threaded runtime inside apalis handlers: their
/// futures must be `Send` (checked here, where a failure reads better than
/// an error about apalis' service bounds).
#[cfg(test)]
#[expect(dead_code, reason = "compiled, never run")]
fn steps_are_send(ctx: &Ctx<'_>) {
    fn is_send<T: Send>(_: T) {}
    is_send(promotion::step(
        ctx,
        TenantId::from_uuid(Uuid::nil()),
        Uuid::nil(),
    ));
    is_send(optimization::step(
        ctx,
        TenantId::from_uuid(Uuid::nil()),
        Uuid::nil(),
    ));
}
