//! Judge graders call their models through the same provider layer as
//! generation: limits, retries, cache and cost.

use std::sync::Arc;

use assay_core::domain::{ChatMessage, ModelParams};
use assay_core::graders::{Judge, JudgeReply};
use assay_core::providers::call::{CallOptions, LlmClient};

use super::call::record_spend;

/// Judge calls go through the same provider layer as generation.
pub(super) struct ProviderJudge {
    pub(super) llm: Arc<LlmClient>,
    pub(super) use_cache: bool,
}

#[async_trait::async_trait]
impl Judge for ProviderJudge {
    async fn ask(&self, model: &str, messages: &[ChatMessage]) -> Result<JudgeReply, String> {
        let model = self
            .llm
            .catalog
            .resolve(model)
            .map_err(|error| error.message)?;
        // Judges answer at temperature 0: the same output gets the same verdict.
        let params = ModelParams {
            temperature: Some(0.0),
            ..ModelParams::default()
        };
        let options = CallOptions {
            purpose: "judge",
            repeat: 0,
            use_cache: self.use_cache,
            slot: None,
        };
        let report = self.llm.complete(&model, messages, &params, options).await;
        record_spend(
            report.answered_by.as_deref().unwrap_or(model.name.as_str()),
            "judge",
            report.cost_usd,
        );
        let completion = report.outcome.map_err(|error| error.to_string())?;
        Ok(JudgeReply {
            cost_usd: report.cost_usd,
            text: completion.text,
        })
    }
}
