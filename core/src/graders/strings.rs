//! String graders: equals, contains, regex.

use super::Grade;

/// Longest excerpt of an output quoted in a reason.
const EXCERPT_CHARS: usize = 80;

fn excerpt(text: &str) -> String {
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
    kind: &str,
    output: &str,
    expected: &str,
    ignore_case: bool,
    ignore_whitespace: bool,
) -> Grade {
    if normalize(output, ignore_case, ignore_whitespace)
        == normalize(expected, ignore_case, ignore_whitespace)
    {
        Grade::pass(kind, format!("output equals {}", excerpt(expected)))
    } else {
        Grade::fail(
            kind,
            format!("expected {}, got {}", excerpt(expected), excerpt(output)),
        )
    }
}

pub(super) fn contains(kind: &str, output: &str, needle: &str) -> Grade {
    if output.contains(needle) {
        Grade::pass(kind, format!("output contains {}", excerpt(needle)))
    } else {
        Grade::fail(kind, format!("output does not contain {}", excerpt(needle)))
    }
}

pub(super) fn regex(kind: &str, output: &str, regex: &regex::Regex) -> Grade {
    match regex.find(output) {
        Some(found) => Grade::pass(
            kind,
            format!("/{}/ matched {}", regex.as_str(), excerpt(found.as_str())),
        ),
        None => Grade::fail(kind, format!("/{}/ did not match", regex.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_is_exact_unless_told_otherwise() {
        assert!(equals("equals", "Paris", "Paris", false, false).passed);
        assert!(!equals("equals", "paris", "Paris", false, false).passed);
        assert!(equals("equals", "paris", "Paris", true, false).passed);
        assert!(equals("equals", "  New   York\n", "New York", false, true).passed);
        assert!(!equals("equals", "", "x", true, true).passed);
        assert!(equals("equals", "", "", false, false).passed);
        assert!(equals("equals", "ÉCOLE", "école", true, false).passed);
    }

    #[test]
    fn contains_handles_unicode_and_long_outputs() {
        assert!(contains("contains", "日本の首都は東京です", "東京").passed);
        let long = "x".repeat(100_000) + "needle";
        let grade = contains("contains", &long, "needle");
        assert!(grade.passed);
        let grade = contains("contains", &long, "missing");
        assert!(!grade.passed && grade.score == 0.0);
        assert!(grade.reason.len() < 200, "reasons quote excerpts only");
    }

    #[test]
    fn regex_reports_the_match() {
        let pattern = regex::Regex::new(r"\d{3}").unwrap();
        let grade = regex("regex", "call 555 now", &pattern);
        assert!(grade.passed);
        assert!(grade.reason.contains("555"));
        assert!(!regex("regex", "", &pattern).passed);
    }
}
