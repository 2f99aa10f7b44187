//! What the calls of one evaluation share, compiled once per process.

use std::sync::Arc;

use assay_core::db::models::budgets;
use assay_core::db::models::evaluations::Evaluation;
use assay_core::db::models::prompts;
use assay_core::domain::ModelParams;
use assay_core::graders::{self, Grader, GraderSpec};
use assay_core::providers::Model;
use assay_core::providers::call::LlmClient;
use assay_core::templates::PromptTemplate;

use super::judge::ProviderJudge;
use crate::environment::Environment;

/// Everything the calls of one evaluation share, compiled once.
pub(super) struct Plan {
    pub(super) evaluation: Evaluation,
    pub(super) template: PromptTemplate,
    pub(super) graders: Vec<Grader>,
    pub(super) models: Vec<Arc<Model>>,
    pub(super) params: ModelParams,
    pub(super) judge: ProviderJudge,
    pub(super) llm: Arc<LlmClient>,
    /// Whether calls reserve against budgets, and whether the tenant's
    /// monthly one is among them. None: nothing to reserve.
    pub(super) budget: Option<Budgets>,
}

/// Which budgets an evaluation's calls count against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budgets {
    pub(super) tenant: bool,
}

pub enum PlanError {
    /// The database could not be read: try again.
    Database(anyhow::Error),
    /// The evaluation cannot run (named why).
    Invalid(String),
}

impl From<diesel::result::Error> for PlanError {
    fn from(error: diesel::result::Error) -> Self {
        PlanError::Database(error.into())
    }
}

/// Compiled plans of the evaluations whose chunks this process runs: chunks
/// of one evaluation share one template, grader set and model list.
#[derive(Default)]
pub struct PlanCache {
    plans: std::sync::Mutex<std::collections::HashMap<assay_core::ids::EvaluationId, Arc<Plan>>>,
}

/// Plans kept at most; the cache is cleared when it grows past this (a
/// plan is cheap to rebuild, and finished evaluations leave theirs behind).
const PLANS_KEPT: usize = 256;

impl PlanCache {
    pub(super) async fn plan_for(
        &self,
        env: &Environment,
        evaluation: &Evaluation,
    ) -> Result<Arc<Plan>, PlanError> {
        if let Some(plan) = self.plans.lock().expect("plans lock").get(&evaluation.id) {
            return Ok(plan.clone());
        }
        let mut conn = env
            .pool
            .get()
            .await
            .map_err(|error| PlanError::Database(error.into()))?;
        let plan = Arc::new(plan(&mut conn, env, evaluation.clone()).await?);
        let mut plans = self.plans.lock().expect("plans lock");
        if plans.len() >= PLANS_KEPT {
            plans.clear();
        }
        plans.insert(evaluation.id, plan.clone());
        Ok(plan)
    }
}

async fn plan(
    conn: &mut diesel_async::AsyncPgConnection,
    env: &Environment,
    evaluation: Evaluation,
) -> Result<Plan, PlanError> {
    let version =
        prompts::get_version_by_id(conn, evaluation.tenant_id, evaluation.prompt_version_id)
            .await?
            .ok_or_else(|| PlanError::Invalid("the prompt version no longer exists".to_owned()))?;
    let content = version.content().map_err(|error| {
        PlanError::Invalid(format!("stored prompt version does not parse: {error}"))
    })?;
    let template = PromptTemplate::compile(&content.messages)
        .map_err(|error| PlanError::Invalid(format!("prompt template: {error}")))?;
    let specs: Vec<GraderSpec> = serde_json::from_value(evaluation.graders.clone())
        .map_err(|error| PlanError::Invalid(format!("stored graders do not parse: {error}")))?;
    let graders =
        graders::compile_all(&specs).map_err(|error| PlanError::Invalid(error.to_string()))?;
    let judge = ProviderJudge {
        llm: env.llm.clone(),
        use_cache: evaluation.use_cache,
    };
    let overrides: ModelParams = serde_json::from_value(evaluation.params.clone())
        .map_err(|error| PlanError::Invalid(format!("stored params do not parse: {error}")))?;
    let models = evaluation
        .model_names()
        .iter()
        .map(|name| env.llm.catalog.resolve(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PlanError::Invalid(error.to_string()))?;
    let tenant = budgets::tenant_budget(conn, evaluation.tenant_id)
        .await?
        .is_some();
    let budget = (tenant || evaluation.max_cost_usd.is_some()).then_some(Budgets { tenant });
    Ok(Plan {
        params: content.params.merged_with(&overrides),
        evaluation,
        template,
        graders,
        models,
        judge,
        llm: env.llm.clone(),
        budget,
    })
}
