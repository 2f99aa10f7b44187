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
//! Worked example: the mock at $1000 per million input and output tokens, a
//! prompt rendering to "What is q7?" (3 words), no `max_tokens`, 40 items:
//! lower bound 40 x 3 x 1000 / 1e6 = $0.12, expected 40 x 6 x 1000 / 1e6 = $0.24.

use serde::{Deserialize, Serialize};

use crate::domain::{ChatMessage, ModelParams};
use crate::providers::{Model, tokens};

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
}
