//! Text-similarity metrics for the scored graders (promptfoo names:
//! `levenshtein`, `similarity`, `rouge-n`, `rouge-l`, `bleu`).
//!
//! All functions are pure, work on Unicode scalar values (`char`s, never
//! bytes), accept empty strings and return scores in [0, 1] (except the raw
//! edit distance). Definitions:
//! - **Levenshtein distance**: minimum number of single-`char` insertions,
//!   deletions and substitutions (each cost 1) turning `a` into `b`.
//! - **Normalized similarity**: `1 - distance / max(len_a, len_b)` in chars.
//! - **Tokens** (ROUGE and BLEU): maximal runs of `char::is_alphanumeric`
//!   chars, each lowercased. No Unicode normalization and no word
//!   segmentation: a decomposed "e + U+0301" loses its accent (the combining
//!   mark is not alphanumeric) and unspaced Japanese is one token per run.
//! - **ROUGE-N**: n-gram recall of the reference, counts clipped.
//! - **ROUGE-L**: F1 (beta = 1) of LCS-based precision and recall.
//! - **BLEU**: sentence BLEU-4 against one reference, uniform weights,
//!   brevity penalty, "method 1" smoothing.
//!
//! Cost: Levenshtein and LCS are O(n·m) time and O(min(n, m)) memory, after
//! stripping the common prefix and suffix (which any optimal alignment can
//! keep), so near-identical long texts are linear. ROUGE-N and BLEU are
//! linear (hashed n-gram counts).

use std::collections::HashMap;

/// Highest n-gram order BLEU uses (BLEU-4).
const BLEU_MAX_ORDER: usize = 4;

/// Numerator BLEU uses for an order with no matching n-gram (smoothing
/// "method 1" of Chen & Cherry 2014, as in NLTK): `0.1 / denominator`.
const BLEU_SMOOTHING_EPSILON: f64 = 0.1;

/// Levenshtein edit distance between `a` and `b` over `char`s: the minimum
/// number of insertions, deletions and substitutions (each cost 1).
pub(crate) fn levenshtein_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (a, b, _) = trim_common(&a, &b);
    // One row over the shorter side keeps memory at O(min(n, m)).
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, long_char) in long.iter().enumerate() {
        // `diagonal` is the previous row's value at j, before it is overwritten.
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, short_char) in short.iter().enumerate() {
            let substitution = diagonal + usize::from(long_char != short_char);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(diagonal + 1).min(row[j] + 1);
        }
    }
    row[short.len()]
}

/// `1 - levenshtein_distance(a, b) / max(len_a, len_b)`, lengths in chars;
/// 1.0 when both are empty.
pub(crate) fn normalized_similarity(a: &str, b: &str) -> f64 {
    let longest = a.chars().count().max(b.chars().count());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein_distance(a, b) as f64 / longest as f64
}

/// The words of `text`: maximal runs of `char::is_alphanumeric` chars, each
/// lowercased; empty runs dropped.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    // Split before lowercasing: some lowercase forms contain non-alphanumeric
    // chars (`İ` → `i` + U+0307) that would otherwise split a word.
    text.split(|ch: char| !ch.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How many words [`tokens`] finds in `text`, without building them.
pub(crate) fn token_count(text: &str) -> usize {
    text.split(|ch: char| !ch.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .count()
}

/// ROUGE-N recall: the number of reference n-grams found in the candidate
/// (each n-gram counted at most as often as it occurs in the candidate)
/// divided by the number of reference n-grams.
///
/// `n == 0` is treated as 1. When the reference has no n-gram (fewer than
/// `n` tokens) there is nothing to recall: the score is 1.0 if the candidate
/// has the same tokens (so two empty texts score 1.0), else 0.0.
pub(crate) fn rouge_n(candidate: &str, reference: &str, n: usize) -> f64 {
    let n = n.max(1);
    let (candidate, reference) = (tokens(candidate), tokens(reference));
    let reference_total = ngram_total(&reference, n);
    if reference_total == 0 {
        return if candidate == reference { 1.0 } else { 0.0 };
    }
    let matched = clipped_matches(&ngram_counts(&candidate, n), &ngram_counts(&reference, n));
    matched as f64 / reference_total as f64
}

/// ROUGE-L F-measure with beta = 1 over tokens: with `lcs` the length of the
/// longest common token subsequence, precision `P = lcs / len(candidate)`,
/// recall `R = lcs / len(reference)` and the score `2PR / (P + R)`, which is
/// `2·lcs / (len(candidate) + len(reference))` (0.0 when `lcs` is 0).
/// Both empty → 1.0; exactly one empty → 0.0.
pub(crate) fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let (candidate, reference) = (tokens(candidate), tokens(reference));
    match (candidate.is_empty(), reference.is_empty()) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => {
            let lcs = lcs_length(&candidate, &reference);
            2.0 * lcs as f64 / (candidate.len() + reference.len()) as f64
        }
    }
}

/// Sentence BLEU-4 of `candidate` against the single `reference`, over tokens:
/// `BP · exp(Σ ln p_n / k)` where, for each order `n` in `1..=4` for which the
/// candidate has at least `n` tokens (`k` such orders: the uniform weights are
/// renormalised over them), `p_n` is the modified precision
/// `clipped matches / candidate n-grams` — each candidate n-gram counted at
/// most as often as it occurs in the reference — and, when no n-gram of that
/// order matches, `0.1 / candidate n-grams` (smoothing "method 1") so short
/// answers do not collapse to 0. The brevity penalty, with `c` and `r` the
/// candidate and reference token counts, is `BP = 1` if `c > r` else
/// `exp(1 - r/c)`.
///
/// Both empty → 1.0; candidate empty → 0.0; reference empty (candidate not)
/// → 0.0.
pub(crate) fn bleu(candidate: &str, reference: &str) -> f64 {
    let (candidate, reference) = (tokens(candidate), tokens(reference));
    match (candidate.is_empty(), reference.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        (false, false) => {}
    }
    let mut log_precision_sum = 0.0;
    let mut orders = 0;
    for n in 1..=BLEU_MAX_ORDER.min(candidate.len()) {
        let matched = clipped_matches(&ngram_counts(&candidate, n), &ngram_counts(&reference, n));
        let numerator = if matched == 0 {
            BLEU_SMOOTHING_EPSILON
        } else {
            matched as f64
        };
        log_precision_sum += (numerator / ngram_total(&candidate, n) as f64).ln();
        orders += 1;
    }
    let (c, r) = (candidate.len() as f64, reference.len() as f64);
    let brevity_penalty = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    // `orders >= 1`: the candidate is not empty, so order 1 is always present.
    brevity_penalty * (log_precision_sum / f64::from(orders)).exp()
}

/// `a` and `b` without their common prefix and suffix, and how many elements
/// were removed from each: both edit distance and LCS are unchanged by it.
fn trim_common<'s, T: PartialEq>(a: &'s [T], b: &'s [T]) -> (&'s [T], &'s [T], usize) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (
        &a[..a.len() - suffix],
        &b[..b.len() - suffix],
        prefix + suffix,
    )
}

/// Length of the longest common subsequence: O(n·m) time, O(min(n, m)) memory.
fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (a, b, common) = trim_common(a, b);
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row = vec![0_usize; short.len() + 1];
    for long_item in long {
        // `diagonal` is the previous row's value at j, before it is overwritten.
        let mut diagonal = 0;
        for (j, short_item) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if long_item == short_item {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    common + row[short.len()]
}

/// Number of n-grams in `tokens` (`n >= 1`): `len - n + 1`, or 0 if shorter.
fn ngram_total(tokens: &[String], n: usize) -> usize {
    tokens.len().saturating_sub(n - 1)
}

/// How often each n-gram (`n >= 1`) occurs in `tokens`.
fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for ngram in tokens.windows(n) {
        *counts.entry(ngram).or_insert(0) += 1;
    }
    counts
}

/// `Σ min(count in a, count in b)` over n-grams: the clipped match count,
/// the same whichever side is the candidate.
fn clipped_matches(a: &HashMap<&[String], usize>, b: &HashMap<&[String], usize>) -> usize {
    // Iterate the smaller map: the sum is symmetric.
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .map(|(ngram, &count)| count.min(large.get(ngram).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "expected {expected}, got {actual}"
        );
    }

    /// Builds a text of at least 20,000 chars from distinct words.
    fn long_text() -> String {
        let text: Vec<String> = (0..4000).map(|i| format!("w{i}")).collect();
        let text = text.join(" ");
        assert!(text.chars().count() >= 20_000);
        text
    }

    /// Full-matrix Levenshtein, the textbook recurrence, as an oracle.
    fn naive_levenshtein(a: &[char], b: &[char]) -> usize {
        let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        d[0] = (0..=b.len()).collect();
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j - 1] + cost)
                    .min(d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1);
            }
        }
        d[a.len()][b.len()]
    }

    /// Full-matrix LCS as an oracle.
    fn naive_lcs(a: &[char], b: &[char]) -> usize {
        let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                d[i][j] = if a[i - 1] == b[j - 1] {
                    d[i - 1][j - 1] + 1
                } else {
                    d[i - 1][j].max(d[i][j - 1])
                };
            }
        }
        d[a.len()][b.len()]
    }

    /// Every string of length 0..=4 over {a, b, é}.
    fn small_strings() -> Vec<Vec<char>> {
        let mut all = vec![vec![]];
        let mut last = vec![vec![]];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|s: &Vec<char>| {
                    ['a', 'b', 'é'].map(|c| {
                        let mut s = s.clone();
                        s.push(c);
                        s
                    })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn levenshtein_textbook_values() {
        // kitten → sitten (k→s) → sittin (e→i) → sitting (+g) = 3.
        assert_eq!(levenshtein_distance("kitten", "sitting"), 3);
        assert_eq!(levenshtein_distance("sitting", "kitten"), 3);
        // saturday → sunday: delete a, t; r→n = 3.
        assert_eq!(levenshtein_distance("saturday", "sunday"), 3);
        // flaw → lawn: delete f, insert n = 2.
        assert_eq!(levenshtein_distance("flaw", "lawn"), 2);
    }

    #[test]
    fn levenshtein_identical_different_and_empty() {
        assert_eq!(levenshtein_distance("same", "same"), 0);
        // No char in common, equal lengths: 3 substitutions.
        assert_eq!(levenshtein_distance("abc", "xyz"), 3);
        // Different lengths: 2 substitutions + 3 insertions.
        assert_eq!(levenshtein_distance("ab", "vwxyz"), 5);
        assert_eq!(levenshtein_distance("", ""), 0);
        assert_eq!(levenshtein_distance("", "abc"), 3);
        assert_eq!(levenshtein_distance("abc", ""), 3);
        // Differs only in the middle: prefix/suffix trimming leaves X vs Y.
        assert_eq!(levenshtein_distance("abcXdef", "abcYdef"), 1);
    }

    #[test]
    fn levenshtein_counts_chars_not_bytes() {
        // é is 2 bytes but 1 char: one substitution.
        assert_eq!(levenshtein_distance("café", "cafe"), 1);
        // こんにちは vs こんばんは: に→ば, ち→ん = 2.
        assert_eq!(levenshtein_distance("こんにちは", "こんばんは"), 2);
        // Emoji are single chars (4 bytes each).
        assert_eq!(levenshtein_distance("🙂🙃", "🙃"), 1);
    }

    #[test]
    fn levenshtein_matches_full_matrix_oracle() {
        let strings = small_strings();
        for a in &strings {
            for b in &strings {
                let (sa, sb): (String, String) = (a.iter().collect(), b.iter().collect());
                assert_eq!(
                    levenshtein_distance(&sa, &sb),
                    naive_levenshtein(a, b),
                    "{sa:?} vs {sb:?}"
                );
            }
        }
    }

    #[test]
    fn levenshtein_long_inputs() {
        // 20,000 chars differing in one middle char: distance 1.
        let a = "ab".repeat(10_000);
        let mut b: Vec<char> = a.chars().collect();
        b[10_000] = 'é';
        let b: String = b.into_iter().collect();
        assert_eq!(levenshtein_distance(&a, &b), 1);
        // No common prefix/suffix, full DP of 20,000 × 200:
        // 200 substitutions + 19,800 deletions = 20,000.
        assert_eq!(
            levenshtein_distance(&"é".repeat(20_000), &"e".repeat(200)),
            20_000
        );
    }

    #[test]
    fn normalized_similarity_values() {
        assert_close(normalized_similarity("same", "same"), 1.0);
        // 3 edits over max length 3.
        assert_close(normalized_similarity("abc", "xyz"), 0.0);
        // 1 - 3/7 (kitten: 6 chars, sitting: 7 chars).
        assert_close(normalized_similarity("kitten", "sitting"), 4.0 / 7.0);
        assert_close(normalized_similarity("", ""), 1.0);
        // 1 - 3/3.
        assert_close(normalized_similarity("", "abc"), 0.0);
        // 1 - 1/4 in chars (bytes would give 1 - 2/5).
        assert_close(normalized_similarity("café", "cafe"), 0.75);
        // 1 - 2/5.
        assert_close(normalized_similarity("こんにちは", "こんばんは"), 0.6);
        // 1 - 1/20,000.
        let a = "ab".repeat(10_000);
        let b = format!("{}c", &a[..19_999]);
        assert_close(normalized_similarity(&a, &b), 1.0 - 1.0 / 20_000.0);
    }

    #[test]
    fn tokens_split_and_lowercase() {
        assert_eq!(tokens("Hello, World! 42"), ["hello", "world", "42"]);
        assert_eq!(tokens("same same"), ["same", "same"]);
        assert!(tokens("").is_empty());
        assert!(tokens("  ,.!? ").is_empty());
        assert_eq!(tokens("Café—CAFÉ"), ["café", "café"]);
        // Japanese punctuation splits; kana and kanji are alphanumeric.
        assert_eq!(tokens("猫が、座った。"), ["猫が", "座った"]);
        // Lowercased per word: final sigma becomes ς.
        assert_eq!(tokens("ΟΔΟΣ"), ["οδος"]);
        // İ lowercases to i + U+0307 (not alphanumeric): the word stays whole.
        assert_eq!(tokens("İstanbul").len(), 1);
        assert_eq!(tokens(&long_text()).len(), 4000);
    }

    #[test]
    fn rouge_n_values() {
        let (cand, reference) = ("the cat sat on the mat", "the cat is on the mat");
        assert_close(rouge_n(reference, reference, 1), 1.0);
        assert_close(rouge_n(reference, reference, 2), 1.0);
        assert_close(rouge_n("dog runs fast", "the cat sat", 1), 0.0);
        // Reference unigrams: the×2, cat, is, on, mat (6); matched:
        // the 2, cat 1, on 1, mat 1 = 5 → 5/6.
        assert_close(rouge_n(cand, reference, 1), 5.0 / 6.0);
        // Reference bigrams: the cat, cat is, is on, on the, the mat (5);
        // matched: the cat, on the, the mat = 3 → 3/5.
        assert_close(rouge_n(cand, reference, 2), 0.6);
        // n = 0 is n = 1.
        assert_close(rouge_n(cand, reference, 0), 5.0 / 6.0);
        // Clipping: "the" matched min(3 in candidate, 1 in reference) = 1 of 2.
        assert_close(rouge_n("the the the", "the cat", 1), 0.5);
        // Clipping by the candidate: reference the×2, candidate the×1 → 1/2.
        assert_close(rouge_n("the", "the the", 1), 0.5);
    }

    #[test]
    fn rouge_n_empty_and_short() {
        assert_close(rouge_n("", "", 1), 1.0);
        assert_close(rouge_n("something", "", 1), 0.0);
        assert_close(rouge_n("", "something", 1), 0.0);
        // Reference shorter than n: same tokens → 1.0, else 0.0.
        assert_close(rouge_n("Yes!", "yes", 2), 1.0);
        assert_close(rouge_n("no", "yes", 2), 0.0);
    }

    #[test]
    fn rouge_n_unicode_and_long() {
        // café ≠ cafe; au and lait match → 2/3.
        assert_close(rouge_n("Café au lait", "cafe au lait", 1), 2.0 / 3.0);
        // CAFÉ lowercases to café → 3/3.
        assert_close(rouge_n("CAFÉ AU LAIT", "café au lait", 1), 1.0);
        // 猫が matches, 走った ≠ 座った → 1/2.
        assert_close(rouge_n("猫が 走った", "猫が 座った", 1), 0.5);
        let text = long_text();
        assert_close(rouge_n(&text, &text, 2), 1.0);
        // Candidate holds the first half of the 4000 distinct words:
        // 2000 / 4000 unigrams recalled.
        let half: Vec<&str> = text.split(' ').take(2000).collect();
        assert_close(rouge_n(&half.join(" "), &text, 1), 0.5);
    }

    #[test]
    fn lcs_matches_full_matrix_oracle() {
        let strings = small_strings();
        for a in &strings {
            for b in &strings {
                assert_eq!(lcs_length(a, b), naive_lcs(a, b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn rouge_l_values() {
        let reference = "the cat is on the mat";
        assert_close(rouge_l(reference, reference), 1.0);
        assert_close(rouge_l("dog runs fast", "the cat sat"), 0.0);
        // LCS "the cat on the mat" = 5; P = 5/6, R = 5/6 → F = 5/6.
        assert_close(rouge_l("the cat sat on the mat", reference), 5.0 / 6.0);
        // LCS "the cat" = 2; P = 2/2, R = 2/6 → F = 2·1·(1/3) / (4/3) = 0.5.
        assert_close(rouge_l("the cat", "the cat sat on the mat"), 0.5);
        // Order matters: LCS of "b a" and "a b" = 1; F = 2·1 / 4.
        assert_close(rouge_l("b a", "a b"), 0.5);
    }

    #[test]
    fn rouge_l_empty() {
        assert_close(rouge_l("", ""), 1.0);
        assert_close(rouge_l("...", "!!"), 1.0);
        assert_close(rouge_l("", "word"), 0.0);
        assert_close(rouge_l("word", ""), 0.0);
    }

    #[test]
    fn rouge_l_unicode_and_long() {
        // LCS "au lait" = 2 → F = 2·2 / (3 + 3) = 2/3.
        assert_close(rouge_l("Café au lait", "cafe au lait"), 2.0 / 3.0);
        // LCS 猫が = 1 → F = 2·1 / (2 + 2) = 0.5.
        assert_close(rouge_l("猫が 走った", "猫が 座った"), 0.5);
        let text = long_text();
        assert_close(rouge_l(&text, &text), 1.0);
        // Reference: 10,000 × "x" (20,000 chars); candidate: 250 × "y x".
        // LCS = the 250 x's → F = 2·250 / (500 + 10,000) = 1/21.
        let reference = "x ".repeat(10_000);
        let candidate = "y x ".repeat(250);
        assert_close(rouge_l(&candidate, &reference), 1.0 / 21.0);
    }

    #[test]
    fn bleu_exact_match_is_one() {
        let reference = "the cat is on the mat";
        assert_close(bleu(reference, reference), 1.0);
        // One token: only order 1 is present, p1 = 1, BP = exp(1 - 1/1) = 1.
        assert_close(bleu("Hello!", "hello"), 1.0);
    }

    #[test]
    fn bleu_partial_values() {
        // c = r = 6 → BP = 1. p1 = 5/6; p2 = 3/5 (the cat, on the, the mat);
        // p3 = 1/4 (on the mat); p4 = 0 of 3 → 0.1/3.
        // BLEU = (5/6 · 3/5 · 1/4 · 0.1/3)^(1/4) = (1/240)^(1/4) ≈ 0.2541.
        assert_close(
            bleu("the cat sat on the mat", "the cat is on the mat"),
            (1.0_f64 / 240.0).powf(0.25),
        );
        // Brevity: c = 2, r = 6; p1 = 2/2, p2 = 1/1, orders 3 and 4 skipped;
        // BP = exp(1 - 6/2) → BLEU = exp(-2) ≈ 0.1353.
        assert_close(bleu("the cat", "the cat sat on the mat"), (-2.0_f64).exp());
        // Clipping: c = 4 > r = 2 → BP = 1. p1 = min(4, 1)/4 = 1/4;
        // p2 = 0.1/3, p3 = 0.1/2, p4 = 0.1/1 → (1/4 · 0.1³ / 6)^(1/4) = (1/24000)^(1/4).
        assert_close(
            bleu("the the the the", "the cat"),
            (1.0_f64 / 24_000.0).powf(0.25),
        );
    }

    #[test]
    fn bleu_completely_different_is_small_but_smoothed() {
        // No match at any order: p_n = 0.1/4, 0.1/3, 0.1/2, 0.1/1; BP = 1.
        // BLEU = (0.1⁴ / 24)^(1/4) = 0.1 / 24^(1/4) ≈ 0.0452.
        let score = bleu("a b c d", "e f g h");
        assert_close(score, 0.1 / 24.0_f64.powf(0.25));
        assert!(score < 0.05);
    }

    #[test]
    fn bleu_empty() {
        assert_close(bleu("", ""), 1.0);
        assert_close(bleu("", "reference"), 0.0);
        assert_close(bleu("candidate", ""), 0.0);
        assert_close(bleu("?!", "..."), 1.0);
    }

    #[test]
    fn bleu_unicode_and_long() {
        // c = r = 3 → BP = 1. p1 = 2/3 (au, lait); p2 = 1/2 (au lait);
        // p3 = 0.1/1; order 4 skipped → (2/3 · 1/2 · 0.1)^(1/3) = (1/30)^(1/3).
        assert_close(
            bleu("Café au lait", "cafe au lait"),
            (1.0_f64 / 30.0).powf(1.0 / 3.0),
        );
        // p1 = 1/2, p2 = 0.1/1 → (0.05)^(1/2).
        assert_close(bleu("猫が 走った", "猫が 座った"), 0.05_f64.sqrt());
        assert_close(bleu("猫が 座った", "猫が、座った。"), 1.0);
        let text = long_text();
        assert_close(bleu(&text, &text), 1.0);
        // First half of 4000 distinct words: every candidate n-gram matches
        // (p_n = 1), c = 2000, r = 4000 → BP = exp(1 - 2) = e⁻¹.
        let half: Vec<&str> = text.split(' ').take(2000).collect();
        assert_close(bleu(&half.join(" "), &text), (-1.0_f64).exp());
    }
}
