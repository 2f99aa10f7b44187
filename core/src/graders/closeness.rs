//! Similarity graders: levenshtein, similarity, rouge-n, rouge-l, bleu.

use super::Outcome;
use super::text_metrics::{bleu, levenshtein_distance, normalized_similarity, rouge_l, rouge_n};

/// Passes when the edit distance is at most `max_distance`; the score is the
/// normalized similarity, so near misses still score high.
pub(super) fn grade_levenshtein(output: &str, expected: &str, max_distance: usize) -> Outcome {
    let distance = levenshtein_distance(output, expected);
    Outcome {
        passed: distance <= max_distance,
        score: normalized_similarity(output, expected),
        reason: format!("edit distance {distance} (at most {max_distance} passes)"),
    }
}

pub(super) fn grade_similarity(output: &str, expected: &str, threshold: f64) -> Outcome {
    let score = normalized_similarity(output, expected);
    Outcome::scored(
        score,
        threshold,
        format!("similarity {score:.3} (pass at {threshold})"),
    )
}

pub(super) fn grade_rouge_n(output: &str, reference: &str, n: usize, threshold: f64) -> Outcome {
    let score = rouge_n(output, reference, n);
    Outcome::scored(
        score,
        threshold,
        format!("ROUGE-{n} {score:.3} (pass at {threshold})"),
    )
}

pub(super) fn grade_rouge_l(output: &str, reference: &str, threshold: f64) -> Outcome {
    let score = rouge_l(output, reference);
    Outcome::scored(
        score,
        threshold,
        format!("ROUGE-L {score:.3} (pass at {threshold})"),
    )
}

pub(super) fn grade_bleu(output: &str, reference: &str, threshold: f64) -> Outcome {
    let score = bleu(output, reference);
    Outcome::scored(
        score,
        threshold,
        format!("BLEU {score:.3} (pass at {threshold})"),
    )
}
