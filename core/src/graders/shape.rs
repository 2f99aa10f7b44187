//! Shape and budget graders: word-count, length, latency, cost, finish-reason.

use super::Outcome;

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
