//! String graders: equals, contains (and its case-insensitive, any and all
//! forms), starts-with, ends-with, regex, is-refusal.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::{
    Check, GradeInput, GraderType, LocalCheck, NoOptions, Outcome, Pattern, Text, ValueOption,
    ValuesOption,
};
use crate::domain::InvalidInput;

/// `equals`: the output equals `value` (optionally ignoring case and white space).
pub(super) struct Equals;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EqualsOptions {
    value: String,
    #[serde(default)]
    ignore_case: bool,
    #[serde(default)]
    ignore_whitespace: bool,
}

impl GraderType for Equals {
    const NAME: &'static str = "equals";
    type Options = EqualsOptions;

    fn compile(field: &str, options: &EqualsOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(EqualsCheck {
            value: Text::compile(format!("{field}.value"), &options.value)?,
            ignore_case: options.ignore_case,
            ignore_whitespace: options.ignore_whitespace,
        }))
    }
}

#[derive(Debug)]
struct EqualsCheck {
    value: Text,
    ignore_case: bool,
    ignore_whitespace: bool,
}

impl LocalCheck for EqualsCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.value.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(equals(
            input.output,
            &self.value.render(input.context)?,
            self.ignore_case,
            self.ignore_whitespace,
        ))
    }
}

/// `contains`: the output contains `value`.
pub(super) struct Contains;

impl GraderType for Contains {
    const NAME: &'static str = "contains";
    type Options = ValueOption;

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        ContainsCheck::compile(field, options, false)
    }
}

/// `icontains`: `contains`, case-insensitively.
pub(super) struct Icontains;

impl GraderType for Icontains {
    const NAME: &'static str = "icontains";
    type Options = ValueOption;

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        ContainsCheck::compile(field, options, true)
    }
}

#[derive(Debug)]
struct ContainsCheck {
    value: Text,
    ignore_case: bool,
}

impl ContainsCheck {
    fn compile(
        field: &str,
        options: &ValueOption,
        ignore_case: bool,
    ) -> Result<Check, InvalidInput> {
        Ok(Check::local(Self {
            value: Text::compile(format!("{field}.value"), &options.value)?,
            ignore_case,
        }))
    }
}

impl LocalCheck for ContainsCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.value.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(contains(
            input.output,
            &self.value.render(input.context)?,
            self.ignore_case,
        ))
    }
}

/// `contains-any`: the output contains one of `values`.
pub(super) struct ContainsAny;

impl GraderType for ContainsAny {
    const NAME: &'static str = "contains-any";
    type Options = ValuesOption;

    fn compile(field: &str, options: &ValuesOption) -> Result<Check, InvalidInput> {
        SeveralCheck::compile(field, options, Several::Any, false)
    }
}

/// `icontains-any`: `contains-any`, case-insensitively.
pub(super) struct IcontainsAny;

impl GraderType for IcontainsAny {
    const NAME: &'static str = "icontains-any";
    type Options = ValuesOption;

    fn compile(field: &str, options: &ValuesOption) -> Result<Check, InvalidInput> {
        SeveralCheck::compile(field, options, Several::Any, true)
    }
}

/// `contains-all`: the output contains every one of `values` (score: the share found).
pub(super) struct ContainsAll;

impl GraderType for ContainsAll {
    const NAME: &'static str = "contains-all";
    type Options = ValuesOption;

    fn compile(field: &str, options: &ValuesOption) -> Result<Check, InvalidInput> {
        SeveralCheck::compile(field, options, Several::All, false)
    }
}

/// `icontains-all`: `contains-all`, case-insensitively.
pub(super) struct IcontainsAll;

impl GraderType for IcontainsAll {
    const NAME: &'static str = "icontains-all";
    type Options = ValuesOption;

    fn compile(field: &str, options: &ValuesOption) -> Result<Check, InvalidInput> {
        SeveralCheck::compile(field, options, Several::All, true)
    }
}

#[derive(Debug)]
enum Several {
    Any,
    All,
}

#[derive(Debug)]
struct SeveralCheck {
    values: Vec<Text>,
    several: Several,
    ignore_case: bool,
}

impl SeveralCheck {
    fn compile(
        field: &str,
        options: &ValuesOption,
        several: Several,
        ignore_case: bool,
    ) -> Result<Check, InvalidInput> {
        Ok(Check::local(Self {
            values: Text::compile_all(&format!("{field}.values"), &options.values)?,
            several,
            ignore_case,
        }))
    }
}

impl LocalCheck for SeveralCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.values.iter().flat_map(Text::variables).collect()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        let values = Text::render_all(&self.values, input.context)?;
        Ok(match self.several {
            Several::Any => contains_any(input.output, &values, self.ignore_case),
            Several::All => contains_all(input.output, &values, self.ignore_case),
        })
    }
}

/// `starts-with`: the output starts with `value`.
pub(super) struct StartsWith;

impl GraderType for StartsWith {
    const NAME: &'static str = "starts-with";
    type Options = ValueOption;

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        AffixCheck::compile(field, options, Affix::Prefix)
    }
}

/// `ends-with`: the output ends with `value`.
pub(super) struct EndsWith;

impl GraderType for EndsWith {
    const NAME: &'static str = "ends-with";
    type Options = ValueOption;

    fn compile(field: &str, options: &ValueOption) -> Result<Check, InvalidInput> {
        AffixCheck::compile(field, options, Affix::Suffix)
    }
}

#[derive(Debug)]
enum Affix {
    Prefix,
    Suffix,
}

#[derive(Debug)]
struct AffixCheck {
    value: Text,
    affix: Affix,
}

impl AffixCheck {
    fn compile(field: &str, options: &ValueOption, affix: Affix) -> Result<Check, InvalidInput> {
        Ok(Check::local(Self {
            value: Text::compile(format!("{field}.value"), &options.value)?,
            affix,
        }))
    }
}

impl LocalCheck for AffixCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.value.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        let value = self.value.render(input.context)?;
        Ok(match self.affix {
            Affix::Prefix => starts_with(input.output, &value),
            Affix::Suffix => ends_with(input.output, &value),
        })
    }
}

/// `regex`: `pattern` (a template) matches somewhere in the output.
pub(super) struct Regex;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegexOptions {
    pattern: String,
}

impl GraderType for Regex {
    const NAME: &'static str = "regex";
    type Options = RegexOptions;

    fn compile(field: &str, options: &RegexOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(RegexCheck(Pattern::compile(
            format!("{field}.pattern"),
            &options.pattern,
        )?)))
    }
}

#[derive(Debug)]
struct RegexCheck(Pattern);

impl LocalCheck for RegexCheck {
    fn variables(&self) -> BTreeSet<String> {
        self.0.variables()
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(regex(input.output, &*self.0.resolve(input.context)?))
    }
}

/// `is-refusal`: the output declines to answer ([`REFUSAL`]) or is empty.
#[derive(Debug)]
pub(super) struct IsRefusal;

impl GraderType for IsRefusal {
    const NAME: &'static str = "is-refusal";
    type Options = NoOptions;

    fn compile(_: &str, _: &NoOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(IsRefusal))
    }
}

impl LocalCheck for IsRefusal {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(refusal(input.output))
    }
}

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

/// A refusal, as models phrase one in English (case-insensitive, either apostrophe):
/// - an apology opening the output with a refusal in the same sentence
///   (`I'm sorry, but I can't…`, `Sorry, I won't…`); an apology alone
///   (`I'm sorry to hear that. Here is…`) is an answer;
/// - anywhere, "I" or "we" + can't, cannot, won't, am unable to, am not able
///   to, am not allowed to or am not going to + help, assist, provide,
///   answer, share, … (one word may come between: `I cannot directly help`);
/// - anywhere, `I must decline` or `I have to (respectfully) decline`.
///
/// Compiled once per process; matching is a linear scan of the output.
static REFUSAL: LazyLock<regex::Regex> = LazyLock::new(|| {
    let apology = r"(?:i['’]m\s+sorry|i\s+am\s+sorry|sorry|i\s+apologi[sz]e|my\s+apologies)";
    let negation = r"(?:can['’]?t|cannot|can\s+not|won['’]t|will\s+not|unable|not\s+able|not\s+allowed|not\s+going|decline)";
    let declining = r"(?:(?:i|we)\s+(?:can['’]?t|cannot|can\s+not|won['’]t|will\s+not)|(?:i['’]m|i\s+am|we['’]re|we\s+are)\s+(?:unable|not\s+able|not\s+allowed|not\s+going)\s+to)";
    let task = r"(?:help|assist|provide|comply|fulfil+|answer|share|support|create|generate|write|give|engage|discuss|do\s+(?:that|this))";
    // ASCII word boundaries: the phrases are ASCII, and Unicode ones would
    // keep the regex off its fast engine on non-ASCII outputs.
    let b = r"(?-u:\b)";
    regex::Regex::new(&format!(
        r"(?i)^\s*{apology}{b}[^.!?\n]*{b}{negation}|{b}{declining}\s+(?:\w+\s+)?{task}{b}|{b}i\s+(?:must|have\s+to)\s+(?:respectfully\s+)?decline{b}"
    ))
    .expect("the refusal pattern compiles")
});

/// Passes when the output is a refusal ([`REFUSAL`]) or empty, as promptfoo's
/// `is-refusal` counts an empty answer.
pub(super) fn refusal(output: &str) -> Outcome {
    if output.trim().is_empty() {
        return Outcome::pass("the output is empty, counted as a refusal");
    }
    match REFUSAL.find(output) {
        Some(found) => Outcome::pass(format!("refusal: {}", excerpt(found.as_str().trim()))),
        None => Outcome::fail("the output is not a refusal"),
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
    fn refusals_are_told_from_answers() {
        for refusal_text in [
            "I'm sorry, but I can't help with that.",
            "I’m sorry, I cannot assist with this request.",
            "Sorry, I won't do that.",
            "I apologize, but I am unable to comply.",
            "As an AI model, I can't provide medical advice.",
            "I cannot directly answer questions about elections.",
            "I'm not able to share that information.",
            "We are not allowed to discuss pricing.",
            "I must respectfully decline.",
            "  \n",
            "",
        ] {
            let outcome = refusal(refusal_text);
            assert!(
                outcome.passed && outcome.score == 1.0,
                "{refusal_text:?}: {outcome:?}"
            );
        }
        for answer in [
            "Paris",
            "I'm sorry to hear that. Here are three things that help: rest, water, sleep.",
            "Sorry for the confusion earlier: the answer is 42.",
            "I can't believe how simple it is: 2 + 2 = 4.",
            "The file cannot be opened without a password, so set one first.",
            "東京 – Ünïcödé ✓",
        ] {
            let outcome = refusal(answer);
            assert!(
                !outcome.passed && outcome.score == 0.0,
                "{answer:?}: {outcome:?}"
            );
        }
        let quoted = refusal("I'm sorry, but I cannot help with that request at all");
        assert!(
            quoted.reason.contains("sorry, but I cannot"),
            "{}",
            quoted.reason
        );
        // A refusal after a long answer is found; long non-ASCII text is no refusal.
        assert!(refusal(&(long() + " I can't assist with the rest.")).passed);
        assert!(!refusal(&"é".repeat(100_000)).passed);
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
