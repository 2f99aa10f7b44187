//! String graders: equals, contains (and its case-insensitive, any and all
//! forms), starts-with, ends-with, regex.

use super::Outcome;

/// Longest excerpt of an output quoted in a reason.
const EXCERPT_CHARS: usize = 80;

pub(super) fn excerpt(text: &str) -> String {
    if text.chars().count() <= EXCERPT_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(EXCERPT_CHARS).collect();
        format!("{head:?}…")
    }
}

fn normalize(text: &str, ignore_case: bool, ignore_whitespace: bool) -> String {
    let text = if ignore_whitespace {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        text.to_owned()
    };
    if ignore_case {
        text.to_lowercase()
    } else {
        text
    }
}

pub(super) fn equals(
    output: &str,
    expected: &str,
    ignore_case: bool,
    ignore_whitespace: bool,
) -> Outcome {
    if normalize(output, ignore_case, ignore_whitespace)
        == normalize(expected, ignore_case, ignore_whitespace)
    {
        Outcome::pass(format!("output equals {}", excerpt(expected)))
    } else {
        Outcome::fail(format!(
            "expected {}, got {}",
            excerpt(expected),
            excerpt(output)
        ))
    }
}

fn found(haystack: &str, needle: &str, ignore_case: bool) -> bool {
    if ignore_case {
        haystack.to_lowercase().contains(&needle.to_lowercase())
    } else {
        haystack.contains(needle)
    }
}

pub(super) fn contains(output: &str, needle: &str, ignore_case: bool) -> Outcome {
    if found(output, needle, ignore_case) {
        Outcome::pass(format!("output contains {}", excerpt(needle)))
    } else {
        Outcome::fail(format!("output does not contain {}", excerpt(needle)))
    }
}

pub(super) fn contains_any(output: &str, needles: &[String], ignore_case: bool) -> Outcome {
    match needles
        .iter()
        .find(|needle| found(output, needle, ignore_case))
    {
        Some(needle) => Outcome::pass(format!("output contains {}", excerpt(needle))),
        None => Outcome::fail(format!("output contains none of {} values", needles.len())),
    }
}

/// Scores the share of values found, so `threshold` can accept "most of them".
pub(super) fn contains_all(output: &str, needles: &[String], ignore_case: bool) -> Outcome {
    let missing: Vec<&String> = needles
        .iter()
        .filter(|needle| !found(output, needle, ignore_case))
        .collect();
    let score = if needles.is_empty() {
        1.0
    } else {
        1.0 - missing.len() as f64 / needles.len() as f64
    };
    if missing.is_empty() {
        Outcome::pass(format!("output contains all {} values", needles.len()))
    } else {
        Outcome {
            passed: false,
            score,
            reason: format!(
                "output lacks {} of {} values, first {}",
                missing.len(),
                needles.len(),
                excerpt(missing[0])
            ),
        }
    }
}

pub(super) fn starts_with(output: &str, prefix: &str) -> Outcome {
    if output.starts_with(prefix) {
        Outcome::pass(format!("output starts with {}", excerpt(prefix)))
    } else {
        Outcome::fail(format!("output does not start with {}", excerpt(prefix)))
    }
}

pub(super) fn ends_with(output: &str, suffix: &str) -> Outcome {
    if output.ends_with(suffix) {
        Outcome::pass(format!("output ends with {}", excerpt(suffix)))
    } else {
        Outcome::fail(format!("output does not end with {}", excerpt(suffix)))
    }
}

pub(super) fn regex(output: &str, regex: &regex::Regex) -> Outcome {
    match regex.find(output) {
        Some(found) => Outcome::pass(format!(
            "/{}/ matched {}",
            regex.as_str(),
            excerpt(found.as_str())
        )),
        None => Outcome::fail(format!("/{}/ did not match", regex.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long() -> String {
        "x".repeat(100_000) + "needle"
    }

    #[test]
    fn equals_is_exact_unless_told_otherwise() {
        assert!(equals("Paris", "Paris", false, false).passed);
        assert!(!equals("paris", "Paris", false, false).passed);
        assert!(equals("paris", "Paris", true, false).passed);
        assert!(equals("  New   York\n", "New York", false, true).passed);
        assert!(!equals("", "x", true, true).passed);
        assert!(equals("", "", false, false).passed);
        assert!(equals("ÉCOLE", "école", true, false).passed);
        let grade = equals(&long(), "needle", false, false);
        assert!(
            !grade.passed && grade.reason.len() < 300,
            "reasons quote excerpts only"
        );
    }

    #[test]
    fn contains_and_icontains() {
        assert!(contains("日本の首都は東京です", "東京", false).passed);
        assert!(!contains("Tokyo", "tokyo", false).passed);
        assert!(contains("Tokyo", "tokyo", true).passed);
        assert!(contains("ÜBER", "über", true).passed);
        assert!(!contains("", "a", true).passed);
        assert!(contains(&long(), "needle", false).passed);
        assert!(!contains(&long(), "missing", false).passed);
    }

    #[test]
    fn any_and_all() {
        let values = vec!["red".to_owned(), "blue".to_owned()];
        assert!(contains_any("a blue sky", &values, false).passed);
        assert!(!contains_any("a grey sky", &values, false).passed);
        assert!(contains_any("a BLUE sky", &values, true).passed);
        assert!(!contains_any("", &values, true).passed);
        let all = contains_all("red and blue", &values, false);
        assert!(all.passed && all.score == 1.0);
        let half = contains_all("red only", &values, false);
        assert!(!half.passed);
        assert_eq!(half.score, 0.5);
        assert!(contains_all("RED and BLUE", &values, true).passed);
        assert_eq!(contains_all("", &values, false).score, 0.0);
    }

    #[test]
    fn prefixes_suffixes_and_regexes() {
        assert!(starts_with("Answer: 4", "Answer:").passed);
        assert!(!starts_with(" Answer: 4", "Answer:").passed);
        assert!(ends_with("done.", ".").passed);
        assert!(!ends_with("", ".").passed);
        assert!(starts_with("élan", "é").passed);
        let pattern = regex::Regex::new(r"\d{3}").unwrap();
        let grade = regex("call 555 now", &pattern);
        assert!(grade.passed && grade.reason.contains("555"));
        assert!(!regex("", &pattern).passed);
        assert!(regex(&("a".repeat(100_000) + "123"), &pattern).passed);
    }
}
