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

use super::Outcome;
use super::text_metrics::{
    bleu, levenshtein_distance, normalized_similarity, rouge_l, rouge_n, token_count,
};

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
