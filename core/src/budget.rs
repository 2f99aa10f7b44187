//! Cost estimates: of a whole evaluation at submission (to refuse one whose
//! lower bound already passes its budget) and of one call before it is made
//! (what a worker reserves against the budgets, [`crate::db::models::budgets`]).
//!
//! Input tokens come from the rendered prompt with the model's tokenizer:
//! the mock's (white-space separated words, as it bills) or `o200k_base`
//! ([`tokens`]) for every other provider. Prices come from the registry.
//! Outputs are unknown before the call:
//! - the **lower bound** counts inputs only (an answer of no tokens), and
//!   every run as a call (cache hits are not predicted);
//! - the **expected** cost adds `max_tokens` output tokens, or as many
//!   output tokens as input tokens when `max_tokens` is unset; this is what
//!   a call reserves;
//! - the **upper bound** exists only when `max_tokens` caps every answer.
//!
//! Judge calls of model-graded graders are not estimated: they are billed
//! when they happen and counted when a call settles.
//!
//! The submission's estimate is bounded like every tenant-driven work
//! ([`estimate_evaluation`]): prompts render off the async runtime, each
//! within the template limits, and at most [`ESTIMATE_MAX_ITEMS`] items or
//! [`ESTIMATE_TIME`] are spent on it. A larger dataset is estimated from the
//! items rendered, scaled to all of them, and says so (`sampled_items`);
//! only the items actually rendered count towards a refusal, so a refusal is
//! always certain.
//!
//! Worked example: the mock at $1000 per million input and output tokens, a
//! prompt rendering to "What is q7?" (3 words), no `max_tokens`, 40 items:
//! lower bound 40 x 3 x 1000 / 1e6 = $0.12, expected 40 x 6 x 1000 / 1e6 = $0.24.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use serde::{Deserialize, Serialize};

use crate::db::models::datasets;
use crate::domain::{ChatMessage, ModelParams};
use crate::ids::{DatasetId, TenantId};
use crate::providers::{Model, tokens};
use crate::templates::PromptTemplate;

/// Most items rendered for an estimate at submission, by default
/// (`ASSAY_ESTIMATE_MAX_ITEMS`).
pub const ESTIMATE_MAX_ITEMS: i32 = 20_000;
/// Longest an estimate at submission may take (reading and rendering).
pub const ESTIMATE_TIME: Duration = Duration::from_millis(1500);
/// Items read per query while estimating.
const ESTIMATE_PAGE: i32 = 1000;

/// Input tokens of `messages` as `model` counts them.
pub fn input_tokens(model: &Model, messages: &[ChatMessage]) -> u32 {
    if model.provider.provider_name() == "mock" {
        messages
            .iter()
            .map(|message| {
                u32::try_from(message.content.split_whitespace().count()).unwrap_or(u32::MAX)
            })
            .fold(0, u32::saturating_add)
    } else {
        tokens::count_messages(messages)
    }
}

/// What one call may cost, in dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallCost {
    pub input_tokens: u32,
    pub low_usd: f64,
    pub expected_usd: f64,
    pub high_usd: Option<f64>,
}

/// The cost of one call of `model` on `messages` with `params`.
pub fn call_cost(model: &Model, messages: &[ChatMessage], params: &ModelParams) -> CallCost {
    let input = input_tokens(model, messages);
    let price = model.price;
    let dollars = |input: u32, output: u32| {
        (f64::from(input) * price.input_per_million + f64::from(output) * price.output_per_million)
            / 1_000_000.0
    };
    CallCost {
        input_tokens: input,
        low_usd: dollars(input, 0),
        expected_usd: dollars(input, params.max_tokens.unwrap_or(input)),
        high_usd: params.max_tokens.map(|max| dollars(input, max)),
    }
}

/// An evaluation's estimated cost, returned at submission and kept on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Calls counted: items x models x repeats whose prompt renders.
    pub calls: u64,
    pub input_tokens: u64,
    /// Inputs only: the evaluation cannot cost less (cache hits aside).
    pub low_usd: f64,
    /// With `max_tokens` (or as many output as input tokens) per answer.
    pub expected_usd: f64,
    /// With `max_tokens` per answer; None when it is unset.
    pub high_usd: Option<f64>,
    /// Set when only the first items were rendered (too many to render at
    /// submission): the figures above are theirs scaled to every item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_items: Option<u64>,
}

impl Estimate {
    /// Adds `times` calls costing `cost` each.
    pub fn add(&mut self, cost: CallCost, times: u32) {
        let times_f = f64::from(times);
        self.calls += u64::from(times);
        self.input_tokens += u64::from(cost.input_tokens) * u64::from(times);
        self.low_usd += cost.low_usd * times_f;
        self.expected_usd += cost.expected_usd * times_f;
        self.high_usd = match (self.calls == u64::from(times), self.high_usd, cost.high_usd) {
            // The first addition sets it; later ones need both to be known.
            (true, _, high) => high.map(|high| high * times_f),
            (false, Some(sum), Some(high)) => Some(sum + high * times_f),
            _ => None,
        };
    }

    /// Adds what another estimate counted.
    fn merge(&mut self, other: Self) {
        if other.calls == 0 {
            return;
        }
        self.high_usd = match (self.calls, self.high_usd, other.high_usd) {
            (0, _, high) => high,
            (_, Some(sum), Some(high)) => Some(sum + high),
            _ => None,
        };
        self.calls += other.calls;
        self.input_tokens += other.input_tokens;
        self.low_usd += other.low_usd;
        self.expected_usd += other.expected_usd;
    }

    /// This estimate of the first `sampled` items, scaled to `all` items.
    fn scaled(self, sampled: u64, all: u64) -> Self {
        if sampled == 0 || sampled >= all {
            return self;
        }
        let factor = all as f64 / sampled as f64;
        let scale = |n: u64| (n as f64 * factor).round() as u64;
        Self {
            calls: scale(self.calls),
            input_tokens: scale(self.input_tokens),
            low_usd: self.low_usd * factor,
            expected_usd: self.expected_usd * factor,
            high_usd: self.high_usd.map(|high| high * factor),
            sampled_items: Some(sampled),
        }
    }
}

/// What an evaluation's estimate is made from.
pub struct EstimateInput {
    pub tenant_id: TenantId,
    pub dataset_id: DatasetId,
    pub item_count: i32,
    pub template: Arc<PromptTemplate>,
    pub models: Vec<Arc<Model>>,
    pub params: ModelParams,
    pub repeats: u32,
    /// Most items to render ([`ESTIMATE_MAX_ITEMS`] by default).
    pub max_items: i32,
}

/// An estimate, and the part of its lower bound that is certain.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimated {
    pub estimate: Estimate,
    /// The lower bound of the items rendered alone: the evaluation costs at
    /// least this (cache hits aside), whatever the other items hold.
    pub certain_low_usd: f64,
}

/// The cost of every run: each item's rendered prompt on each model, times
/// the repeats, within `max_items` and [`ESTIMATE_TIME`] (then
/// scaled). Items whose prompt does not render make no call and cost nothing.
pub async fn estimate_evaluation(
    conn: &mut AsyncPgConnection,
    input: EstimateInput,
) -> QueryResult<Estimated> {
    let started = Instant::now();
    let input = Arc::new(input);
    let last = input.item_count.min(input.max_items);
    let mut estimate = Estimate::default();
    let mut from = 0;
    while from < last && started.elapsed() < ESTIMATE_TIME {
        let to = (from + ESTIMATE_PAGE - 1).min(last - 1);
        let items =
            datasets::items_between(conn, input.tenant_id, input.dataset_id, from, to).await?;
        let wanted = to - from + 1;
        let page = Arc::clone(&input);
        let deadline = started + ESTIMATE_TIME;
        let (page_estimate, rendered) = tokio::task::spawn_blocking(move || {
            let mut estimate = Estimate::default();
            let mut rendered = 0;
            for item in &items {
                if Instant::now() >= deadline {
                    break;
                }
                rendered += 1;
                let Ok(messages) = page.template.render(&item.template_context()) else {
                    continue;
                };
                for model in &page.models {
                    estimate.add(call_cost(model, &messages, &page.params), page.repeats);
                }
            }
            (estimate, rendered)
        })
        .await
        .expect("estimating does not panic");
        estimate.merge(page_estimate);
        from += rendered;
        if rendered < wanted {
            break; // the time ran out within the page
        }
    }
    let rendered = u64::try_from(from).unwrap_or(0);
    let all = u64::try_from(input.item_count).unwrap_or(0);
    Ok(Estimated {
        certain_low_usd: estimate.low_usd,
        estimate: estimate.scaled(rendered, all),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;
    use crate::providers::ModelCatalog;

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage {
            role: Role::User,
            content: text.to_owned(),
        }]
    }

    #[test]
    fn the_worked_example_of_the_module_doc() {
        let model = ModelCatalog::default()
            .resolve("mock:price_in=1000,price_out=1000")
            .unwrap();
        let cost = call_cost(&model, &user("What is q7?"), &ModelParams::default());
        assert_eq!(cost.input_tokens, 3);
        assert!((cost.low_usd - 0.003).abs() < 1e-12);
        assert!((cost.expected_usd - 0.006).abs() < 1e-12);
        assert_eq!(cost.high_usd, None);
        let mut estimate = Estimate::default();
        estimate.add(cost, 40);
        assert_eq!(estimate.calls, 40);
        assert!((estimate.low_usd - 0.12).abs() < 1e-9);
        assert!((estimate.expected_usd - 0.24).abs() < 1e-9);
        assert_eq!(estimate.high_usd, None);
    }

    #[test]
    fn max_tokens_bounds_the_answer() {
        let model = ModelCatalog::default()
            .resolve("mock:price_in=1000000,price_out=2000000")
            .unwrap();
        let params = ModelParams {
            max_tokens: Some(10),
            ..ModelParams::default()
        };
        let cost = call_cost(&model, &user("one two"), &params);
        assert_eq!(
            (cost.low_usd, cost.expected_usd, cost.high_usd),
            (2.0, 22.0, Some(22.0))
        );
        let mut estimate = Estimate::default();
        estimate.add(cost, 2);
        estimate.add(call_cost(&model, &user("one"), &ModelParams::default()), 1);
        assert_eq!(
            estimate.high_usd, None,
            "one answer without a cap: no upper bound"
        );
    }

    #[test]
    fn a_sample_merges_and_scales_to_every_item_and_says_so() {
        let model = ModelCatalog::default()
            .resolve("mock:price_in=1000000,price_out=1000000")
            .unwrap();
        let params = ModelParams {
            max_tokens: Some(4),
            ..ModelParams::default()
        };
        let cost = call_cost(&model, &user("one two three"), &params);
        let mut first = Estimate::default();
        first.add(cost, 2);
        let mut second = Estimate::default();
        second.add(cost, 2);
        first.merge(second);
        first.merge(Estimate::default());
        assert_eq!((first.calls, first.input_tokens), (4, 12));
        assert_eq!(first.high_usd, Some(4.0 * 7.0));
        // 4 calls were 2 items of 10 (2 repeats each): scaled five times.
        let scaled = first.clone().scaled(2, 10);
        assert_eq!((scaled.calls, scaled.input_tokens), (20, 60));
        assert!((scaled.low_usd - 5.0 * first.low_usd).abs() < 1e-9);
        assert_eq!(scaled.high_usd, Some(5.0 * 28.0));
        assert_eq!(scaled.sampled_items, Some(2));
        // Every item rendered: nothing scaled, nothing said.
        assert_eq!(first.clone().scaled(10, 10), first);
    }
}
