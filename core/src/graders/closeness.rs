//! Similarity graders: levenshtein, similarity, rouge-n, rouge-l, bleu.
//!
//! Their work grows with the texts compared, which a tenant controls (the
//! model's output, the expected value), so each compares texts up to a cap
//! and answers a grade error beyond it, naming the cap:
//! - edit distance (levenshtein, similarity) is quadratic in characters:
//!   [`MAX_EDIT_CHARS`] per side;
//! - ROUGE-L's longest common subsequence is quadratic in words:
//!   [`MAX_LCS_WORDS`] per side;
//! - ROUGE-N and BLEU count n-grams, linear: [`MAX_NGRAM_CHARS`] per side.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::text_metrics::{
    bleu, levenshtein_distance, normalized_similarity, rouge_l, rouge_n, token_count,
};
use super::{Check, GradeInput, GraderType, LocalCheck, Outcome, Text, ValueOption};
use crate::domain::InvalidInput;

/// `levenshtein`: the edit distance to `value` is at most `max_distance`.
pub(super) struct Levenshtein;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LevenshteinOptions {
    value: String,
    max_distance: usize,
}

impl GraderType for Levenshtein {
    const NAME: &'static str = "levenshtein";
    type Options = LevenshteinOptions;

    fn compile(field: &str, options: &LevenshteinOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(LevenshteinCheck {
            value: Text::compile(format!("{field}.value"), &options.value)?,
            max_distance: options.max_distance,
        }))
    }
}

#[derive(Debug)]
struct LevenshteinCheck {
    value: Text,
    max_distance: usize,
}

impl LocalCheck for LevenshteinCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.value.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        let value = self.value.render(input.context)?;
        grade_levenshtein(input.output, &value, self.max_distance)
    }
}

/// `similarity`: the normalized edit similarity to `value` reaches the threshold.
pub(super) struct Similarity;

impl GraderType for Similarity {
    const NAME: &'static str = "similarity";
    type Options = ValueOption;
    const DEFAULT_THRESHOLD: Option<f64> = Some(0.8);

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        Scored::compile(field, &options.value, grade_similarity)
    }
}

/// `rouge-n`: ROUGE-N recall of the reference `value` reaches the threshold.
pub(super) struct RougeN;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RougeNOptions {
    value: String,
    #[serde(default = "unigrams")]
    n: usize,
}

fn unigrams() -> usize {
    1
}

impl GraderType for RougeN {
    const NAME: &'static str = "rouge-n";
    type Options = RougeNOptions;
    const DEFAULT_THRESHOLD: Option<f64> = Some(0.75);

    fn compile(field: &str, options: &RougeNOptions) -> Result<Check, InvalidInput> {
        if !(1..=4).contains(&options.n) {
            return Err(InvalidInput::new(
                format!("{field}.n"),
                "must be between 1 and 4",
            ));
        }
        Ok(Check::local(RougeNCheck {
            reference: Text::compile(format!("{field}.value"), &options.value)?,
            n: options.n,
        }))
    }
}

#[derive(Debug)]
struct RougeNCheck {
    reference: Text,
    n: usize,
}

impl LocalCheck for RougeNCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.reference.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, threshold: Option<f64>) -> Result<Outcome, String> {
        let reference = self.reference.render(input.context)?;
        grade_rouge_n(input.output, &reference, self.n, threshold.unwrap_or(1.0))
    }
}

/// `rouge-l`: ROUGE-L F1 against the reference `value` reaches the threshold.
pub(super) struct RougeL;

impl GraderType for RougeL {
    const NAME: &'static str = "rouge-l";
    type Options = ValueOption;
    const DEFAULT_THRESHOLD: Option<f64> = Some(0.75);

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        Scored::compile(field, &options.value, grade_rouge_l)
    }
}

/// `bleu`: sentence BLEU-4 against the reference `value` reaches the threshold.
pub(super) struct Bleu;

impl GraderType for Bleu {
    const NAME: &'static str = "bleu";
    type Options = ValueOption;
    const DEFAULT_THRESHOLD: Option<f64> = Some(0.5);

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        Scored::compile(field, &options.value, grade_bleu)
    }
}

/// Scores an output against a reference, passing at the threshold.
type ScoreFn = fn(&str, &str, f64) -> Result<Outcome, String>;

/// The output scored against a reference text.
struct Scored {
    reference: Text,
    grade: ScoreFn,
}

impl std::fmt::Debug for Scored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scored")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl Scored {
    fn compile(field: &str, reference: &str, grade: ScoreFn) -> Result<Check, InvalidInput> {
        Ok(Check::local(Self {
            reference: Text::compile(format!("{field}.value"), reference)?,
            grade,
        }))
    }
}

impl LocalCheck for Scored {
    fn variables(&self) -> BTreeSet<String> {
        self.reference.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, threshold: Option<f64>) -> Result<Outcome, String> {
        // Always set: scored types declare a default, which the grader fills in.
        let threshold = threshold.unwrap_or(1.0);
        (self.grade)(
            input.output,
            &self.reference.render(input.context)?,
            threshold,
        )
    }
}

/// Characters per side that edit-distance graders compare.
pub const MAX_EDIT_CHARS: usize = 5_000;
/// Words per side that ROUGE-L compares.
pub const MAX_LCS_WORDS: usize = 5_000;
/// Characters per side that ROUGE-N and BLEU compare.
pub const MAX_NGRAM_CHARS: usize = 200_000;

/// Err when a text has more than `cap` units (counted by `count`).
fn within(
    what: &str,
    texts: [(&str, &str); 2],
    cap: usize,
    count: impl Fn(&str) -> usize,
) -> Result<(), String> {
    for (name, text) in texts {
        // Every unit (a char, a word) takes at least one byte.
        if text.len() <= cap {
            continue;
        }
        let units = count(text);
        if units > cap {
            return Err(format!(
                "the {name} is too long for {what}: {units} (at most {cap})"
            ));
        }
    }
    Ok(())
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// Passes when the edit distance is at most `max_distance`; the score is the
/// normalized similarity, so near misses still score high.
pub(super) fn grade_levenshtein(
    output: &str,
    expected: &str,
    max_distance: usize,
) -> Result<Outcome, String> {
    let texts = [("output", output), ("expected value", expected)];
    within(
        "an edit distance, in characters",
        texts,
        MAX_EDIT_CHARS,
        chars,
    )?;
    let distance = levenshtein_distance(output, expected);
    Ok(Outcome {
        passed: distance <= max_distance,
        score: normalized_similarity(output, expected),
        reason: format!("edit distance {distance} (at most {max_distance} passes)"),
    })
}

pub(super) fn grade_similarity(
    output: &str,
    expected: &str,
    threshold: f64,
) -> Result<Outcome, String> {
    let texts = [("output", output), ("expected value", expected)];
    within(
        "an edit distance, in characters",
        texts,
        MAX_EDIT_CHARS,
        chars,
    )?;
    let score = normalized_similarity(output, expected);
    Ok(Outcome::scored(
        score,
        threshold,
        format!("similarity {score:.3} (pass at {threshold})"),
    ))
}

pub(super) fn grade_rouge_n(
    output: &str,
    reference: &str,
    n: usize,
    threshold: f64,
) -> Result<Outcome, String> {
    let texts = [("output", output), ("reference", reference)];
    within("ROUGE-N, in characters", texts, MAX_NGRAM_CHARS, chars)?;
    let score = rouge_n(output, reference, n);
    Ok(Outcome::scored(
        score,
        threshold,
        format!("ROUGE-{n} {score:.3} (pass at {threshold})"),
    ))
}

pub(super) fn grade_rouge_l(
    output: &str,
    reference: &str,
    threshold: f64,
) -> Result<Outcome, String> {
    let texts = [("output", output), ("reference", reference)];
    within("ROUGE-L, in words", texts, MAX_LCS_WORDS, token_count)?;
    let score = rouge_l(output, reference);
    Ok(Outcome::scored(
        score,
        threshold,
        format!("ROUGE-L {score:.3} (pass at {threshold})"),
    ))
}

pub(super) fn grade_bleu(output: &str, reference: &str, threshold: f64) -> Result<Outcome, String> {
    let texts = [("output", output), ("reference", reference)];
    within("BLEU, in characters", texts, MAX_NGRAM_CHARS, chars)?;
    let score = bleu(output, reference);
    Ok(Outcome::scored(
        score,
        threshold,
        format!("BLEU {score:.3} (pass at {threshold})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_past_a_cap_are_a_grade_error_naming_it_not_unbounded_work() {
        let long = "word ".repeat(MAX_EDIT_CHARS);
        let error = grade_levenshtein(&long, "short", 3).unwrap_err();
        assert!(
            error.contains("output is too long for an edit distance")
                && error.contains(&format!("at most {MAX_EDIT_CHARS}")),
            "{error}"
        );
        let error = grade_similarity("short", &long, 0.8).unwrap_err();
        assert!(error.contains("expected value is too long"), "{error}");
        let words = "w ".repeat(MAX_LCS_WORDS + 1);
        let error = grade_rouge_l(&words, "w", 0.5).unwrap_err();
        assert!(error.contains("ROUGE-L, in words"), "{error}");
        let huge = "x".repeat(MAX_NGRAM_CHARS + 1);
        assert!(grade_bleu("x", &huge, 0.5).is_err());
        assert!(grade_rouge_n(&huge, "x", 1, 0.5).is_err());
        // At the caps, they grade.
        let at_cap = "a".repeat(MAX_EDIT_CHARS);
        let outcome = grade_levenshtein(&at_cap, &at_cap, 0).unwrap();
        assert!(outcome.passed);
        assert!(grade_rouge_l(&"w ".repeat(MAX_LCS_WORDS), "w", 0.0).is_ok());
    }
}
