//! Shape and budget graders: word-count, length, latency, cost, finish-reason.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Check, GradeInput, GraderType, LocalCheck, Outcome, Text, ValueOption};
use crate::domain::InvalidInput;

/// `word-count`: the number of words is within `min` and `max`.
pub(super) struct WordCount;

impl GraderType for WordCount {
    const NAME: &'static str = "word-count";
    type Options = Bounds;

    fn compile(field: &str, options: &Bounds) -> Result<Check, InvalidInput> {
        options.check(field)?;
        Ok(Check::local(Counted {
            bounds: *options,
            count: word_count,
        }))
    }
}

/// `length`: the number of characters is within `min` and `max`.
pub(super) struct Length;

impl GraderType for Length {
    const NAME: &'static str = "length";
    type Options = Bounds;

    fn compile(field: &str, options: &Bounds) -> Result<Check, InvalidInput> {
        options.check(field)?;
        Ok(Check::local(Counted {
            bounds: *options,
            count: length,
        }))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Bounds {
    #[serde(default)]
    min: Option<usize>,
    #[serde(default)]
    max: Option<usize>,
}

impl Bounds {
    fn check(&self, field: &str) -> Result<(), InvalidInput> {
        match (self.min, self.max) {
            (None, None) => Err(InvalidInput::new(field, "needs `min`, `max` or both")),
            (Some(min), Some(max)) if min > max => Err(InvalidInput::new(
                format!("{field}.min"),
                "must not exceed max",
            )),
            _ => Ok(()),
        }
    }
}

/// Something counted in the output, within bounds.
#[derive(Debug)]
struct Counted {
    bounds: Bounds,
    count: fn(&str, Option<usize>, Option<usize>) -> Outcome,
}

impl LocalCheck for Counted {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok((self.count)(input.output, self.bounds.min, self.bounds.max))
    }
}

/// `latency`: the call took at most `max_ms`.
pub(super) struct Latency;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LatencyOptions {
    max_ms: f64,
}

impl GraderType for Latency {
    const NAME: &'static str = "latency";
    type Options = LatencyOptions;

    fn compile(field: &str, options: &LatencyOptions) -> Result<Check, InvalidInput> {
        if !(options.max_ms.is_finite() && options.max_ms >= 0.0) {
            return Err(InvalidInput::new(
                format!("{field}.max_ms"),
                "must be a number of milliseconds ≥ 0",
            ));
        }
        Ok(Check::local(*options))
    }
}

impl LocalCheck for LatencyOptions {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        latency(input.latency_ms, self.max_ms)
    }
}

/// `cost`: the call cost at most `max_usd`.
pub(super) struct Cost;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CostOptions {
    max_usd: f64,
}

impl GraderType for Cost {
    const NAME: &'static str = "cost";
    type Options = CostOptions;

    fn compile(field: &str, options: &CostOptions) -> Result<Check, InvalidInput> {
        if !(options.max_usd.is_finite() && options.max_usd >= 0.0) {
            return Err(InvalidInput::new(
                format!("{field}.max_usd"),
                "must be a number of dollars ≥ 0",
            ));
        }
        Ok(Check::local(*options))
    }
}

impl LocalCheck for CostOptions {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(cost(input.cost_usd, self.max_usd))
    }
}

/// `finish-reason`: the model stopped for the reason `value` (`stop`, `length`, …).
pub(super) struct FinishReason;

impl GraderType for FinishReason {
    const NAME: &'static str = "finish-reason";
    type Options = ValueOption;

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        Ok(Check::local(FinishReasonCheck(Text::compile(
            format!("{field}.value"),
            &options.value,
        )?)))
    }
}

#[derive(Debug)]
struct FinishReasonCheck(Text);

impl LocalCheck for FinishReasonCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.0.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(finish_reason(
            input.finish_reason,
            &self.0.render(input.context)?,
        ))
    }
}

fn within(value: usize, min: Option<usize>, max: Option<usize>, unit: &str) -> Outcome {
    let low_ok = min.is_none_or(|min| value >= min);
    let high_ok = max.is_none_or(|max| value <= max);
    let bounds = match (min, max) {
        (Some(min), Some(max)) => format!("{min}..={max}"),
        (Some(min), None) => format!(">= {min}"),
        (None, Some(max)) => format!("<= {max}"),
        (None, None) => "any".to_owned(),
    };
    if low_ok && high_ok {
        Outcome::pass(format!("{value} {unit}, within {bounds}"))
    } else {
        Outcome::fail(format!("{value} {unit}, outside {bounds}"))
    }
}

pub(super) fn word_count(output: &str, min: Option<usize>, max: Option<usize>) -> Outcome {
    within(output.split_whitespace().count(), min, max, "words")
}

/// Length in characters (not bytes), so that non-Latin text counts fairly.
pub(super) fn length(output: &str, min: Option<usize>, max: Option<usize>) -> Outcome {
    within(output.chars().count(), min, max, "characters")
}

/// A grader error when the latency is unknown (the output came from a store
/// that has none): that is not the model's fault.
pub(super) fn latency(latency_ms: Option<f64>, max_ms: f64) -> Result<Outcome, String> {
    let latency_ms = latency_ms.ok_or("the call's latency is unknown")?;
    Ok(if latency_ms <= max_ms {
        Outcome::pass(format!("{latency_ms:.0} ms <= {max_ms} ms"))
    } else {
        Outcome::fail(format!("{latency_ms:.0} ms > {max_ms} ms"))
    })
}

pub(super) fn cost(cost_usd: f64, max_usd: f64) -> Outcome {
    if cost_usd <= max_usd {
        Outcome::pass(format!("${cost_usd:.6} <= ${max_usd}"))
    } else {
        Outcome::fail(format!("${cost_usd:.6} > ${max_usd}"))
    }
}

pub(super) fn finish_reason(actual: Option<&str>, expected: &str) -> Outcome {
    match actual {
        Some(actual) if actual.eq_ignore_ascii_case(expected) => {
            Outcome::pass(format!("finish reason {actual:?}"))
        }
        Some(actual) => Outcome::fail(format!("finish reason {actual:?}, expected {expected:?}")),
        None => Outcome::fail(format!("no finish reason reported, expected {expected:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_characters() {
        assert!(word_count("one two three", Some(2), Some(3)).passed);
        assert!(!word_count("one two three four", None, Some(3)).passed);
        assert!(!word_count("", Some(1), None).passed);
        assert!(word_count("", None, Some(0)).passed);
        assert!(
            length("東京", Some(2), Some(2)).passed,
            "characters, not bytes"
        );
        assert!(!length(&"x".repeat(100_000), None, Some(10)).passed);
        assert!(length("", None, Some(0)).passed);
    }

    #[test]
    fn budgets() {
        assert!(latency(Some(120.0), 200.0).unwrap().passed);
        assert!(!latency(Some(250.0), 200.0).unwrap().passed);
        assert!(latency(None, 200.0).is_err());
        assert!(cost(0.001, 0.01).passed);
        assert!(!cost(0.02, 0.01).passed);
        assert!(cost(0.0, 0.0).passed);
        assert!(finish_reason(Some("stop"), "stop").passed);
        assert!(!finish_reason(Some("length"), "stop").passed);
        assert!(!finish_reason(None, "stop").passed);
    }
}
