//! Graders: the checks an output is scored with.
//!
//! A [`GraderSpec`] is what a user submits (validated at submission);
//! [`Grader`] is its compiled form (regexes built, value templates parsed),
//! built once per job and applied to every output. Every grader returns a
//! [`Grade`]: pass or fail, a score in [0, 1] and a reason a person can read.
//! A grader that cannot judge (its value template needs a variable the item
//! lacks) returns a [`Grade`] with `error` set: that is not a fail.

mod strings;
mod structure;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::InvalidInput;
use crate::templates::ValueTemplate;

/// A grader as submitted: `{"type": "contains", "value": "{{ expected }}"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GraderSpec {
    /// The output equals `value` (optionally ignoring case and surrounding or repeated white space).
    Equals {
        value: String,
        #[serde(default)]
        ignore_case: bool,
        #[serde(default)]
        ignore_whitespace: bool,
    },
    /// The output contains `value`.
    Contains { value: String },
    /// The output matches the regular expression `pattern`.
    Regex { pattern: String },
    /// The output is a JSON document.
    IsJson {},
}

impl GraderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            GraderSpec::Equals { .. } => "equals",
            GraderSpec::Contains { .. } => "contains",
            GraderSpec::Regex { .. } => "regex",
            GraderSpec::IsJson {} => "is-json",
        }
    }
}

/// The outcome of one grader on one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub grader: String,
    pub passed: bool,
    pub score: f64,
    pub reason: String,
    /// Set when the grader could not judge; `passed` is then false and the
    /// item counts as errored, not failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Grade {
    fn pass(grader: &str, reason: impl Into<String>) -> Self {
        Self::scored(grader, true, 1.0, reason)
    }

    fn fail(grader: &str, reason: impl Into<String>) -> Self {
        Self::scored(grader, false, 0.0, reason)
    }

    fn scored(grader: &str, passed: bool, score: f64, reason: impl Into<String>) -> Self {
        Self {
            grader: grader.to_owned(),
            passed,
            score,
            reason: reason.into(),
            error: None,
        }
    }

    fn errored(grader: &str, error: String) -> Self {
        Self {
            grader: grader.to_owned(),
            passed: false,
            score: 0.0,
            reason: format!("grader error: {error}"),
            error: Some(error),
        }
    }
}

/// A string option that may be a template over the item's variables.
#[derive(Debug)]
enum Text {
    Literal(String),
    Template(ValueTemplateBox),
}

/// `ValueTemplate` holds a minijinja environment, which is not `Debug`.
struct ValueTemplateBox(ValueTemplate);

impl std::fmt::Debug for ValueTemplateBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueTemplate")
    }
}

impl Text {
    fn compile(field: String, source: &str) -> Result<Self, InvalidInput> {
        match ValueTemplate::compile(source) {
            Ok(None) => Ok(Text::Literal(source.to_owned())),
            Ok(Some(template)) => Ok(Text::Template(ValueTemplateBox(template))),
            Err(error) => Err(InvalidInput::new(
                field,
                format!("invalid template: {error}"),
            )),
        }
    }

    fn variables(&self) -> BTreeSet<String> {
        match self {
            Text::Literal(_) => BTreeSet::new(),
            Text::Template(template) => template.0.variables(),
        }
    }

    fn render(&self, context: &Value) -> Result<String, String> {
        match self {
            Text::Literal(text) => Ok(text.clone()),
            Text::Template(template) => template.0.render(context),
        }
    }
}

#[derive(Debug)]
enum Check {
    Equals {
        value: Text,
        ignore_case: bool,
        ignore_whitespace: bool,
    },
    Contains(Text),
    Regex(regex::Regex),
    IsJson,
}

/// A compiled grader, applied to many outputs.
#[derive(Debug)]
pub struct Grader {
    kind: &'static str,
    check: Check,
}

impl Grader {
    /// Compiles `spec`; `field` names it in errors (e.g. `graders[2]`).
    pub fn compile(field: &str, spec: &GraderSpec) -> Result<Self, InvalidInput> {
        let check = match spec {
            GraderSpec::Equals {
                value,
                ignore_case,
                ignore_whitespace,
            } => Check::Equals {
                value: Text::compile(format!("{field}.value"), value)?,
                ignore_case: *ignore_case,
                ignore_whitespace: *ignore_whitespace,
            },
            GraderSpec::Contains { value } => {
                Check::Contains(Text::compile(format!("{field}.value"), value)?)
            }
            GraderSpec::Regex { pattern } => Check::Regex(
                regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|error| {
                        InvalidInput::new(
                            format!("{field}.pattern"),
                            format!("invalid regex: {error}"),
                        )
                    })?,
            ),
            GraderSpec::IsJson {} => Check::IsJson,
        };
        Ok(Self {
            kind: spec.kind(),
            check,
        })
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The item variables this grader's options read.
    pub fn variables(&self) -> BTreeSet<String> {
        match &self.check {
            Check::Equals { value, .. } | Check::Contains(value) => value.variables(),
            Check::Regex(_) | Check::IsJson => BTreeSet::new(),
        }
    }

    /// Grades `output`; `context` holds the item's variables and `expected`.
    pub fn grade(&self, output: &str, context: &Value) -> Grade {
        let kind = self.kind;
        match &self.check {
            Check::Equals {
                value,
                ignore_case,
                ignore_whitespace,
            } => match value.render(context) {
                Ok(expected) => {
                    strings::equals(kind, output, &expected, *ignore_case, *ignore_whitespace)
                }
                Err(error) => Grade::errored(kind, error),
            },
            Check::Contains(value) => match value.render(context) {
                Ok(needle) => strings::contains(kind, output, &needle),
                Err(error) => Grade::errored(kind, error),
            },
            Check::Regex(regex) => strings::regex(kind, output, regex),
            Check::IsJson => structure::is_json(kind, output),
        }
    }
}

/// Compiles a list of graders: at least one, at most 50.
pub fn compile_all(specs: &[GraderSpec]) -> Result<Vec<Grader>, InvalidInput> {
    if specs.is_empty() {
        return Err(InvalidInput::new(
            "graders",
            "at least one grader is required",
        ));
    }
    if specs.len() > 50 {
        return Err(InvalidInput::new("graders", "at most 50 graders"));
    }
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| Grader::compile(&format!("graders[{index}]"), spec))
        .collect()
}

/// The verdict on one output over all graders: it passes when every grader
/// passes; its score is the mean score; it is errored when a grader could not judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub grades: Vec<Grade>,
    pub passed: bool,
    pub errored: bool,
    pub score: f64,
}

pub fn grade_all(graders: &[Grader], output: &str, context: &Value) -> Verdict {
    let grades: Vec<Grade> = graders
        .iter()
        .map(|grader| grader.grade(output, context))
        .collect();
    let errored = grades.iter().any(|grade| grade.error.is_some());
    let passed = !errored && grades.iter().all(|grade| grade.passed);
    let score = if grades.is_empty() {
        0.0
    } else {
        grades.iter().map(|grade| grade.score).sum::<f64>() / grades.len() as f64
    };
    Verdict {
        grades,
        passed,
        errored,
        score,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: Value) -> GraderSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn parses_specs_and_rejects_unknown_types_and_fields() {
        assert_eq!(spec(json!({"type": "is-json"})), GraderSpec::IsJson {});
        assert!(serde_json::from_value::<GraderSpec>(json!({"type": "nope"})).is_err());
        assert!(
            serde_json::from_value::<GraderSpec>(json!({"type": "contains", "value": "a", "x": 1}))
                .is_err()
        );
        assert!(serde_json::from_value::<GraderSpec>(json!({"type": "contains"})).is_err());
    }

    #[test]
    fn invalid_regex_names_the_field() {
        let error = compile_all(&[
            spec(json!({"type": "is-json"})),
            spec(json!({"type": "regex", "pattern": "(unclosed"})),
        ])
        .unwrap_err();
        assert_eq!(error.field, "graders[1].pattern");
        assert_eq!(compile_all(&[]).unwrap_err().field, "graders");
    }

    #[test]
    fn templated_values_read_item_variables() {
        let grader = Grader::compile(
            "g",
            &spec(json!({"type": "equals", "value": "{{ expected }}"})),
        )
        .unwrap();
        assert_eq!(grader.variables(), BTreeSet::from(["expected".to_owned()]));
        assert!(grader.grade("Paris", &json!({"expected": "Paris"})).passed);
        assert!(!grader.grade("Rome", &json!({"expected": "Paris"})).passed);
        let missing = grader.grade("Paris", &json!({}));
        assert!(missing.error.is_some() && !missing.passed);
    }

    #[test]
    fn verdict_needs_every_grader_and_averages_scores() {
        let graders = compile_all(&[
            spec(json!({"type": "contains", "value": "a"})),
            spec(json!({"type": "is-json"})),
        ])
        .unwrap();
        let verdict = grade_all(&graders, "\"a\"", &json!({}));
        assert!(verdict.passed);
        assert_eq!(verdict.score, 1.0);
        let verdict = grade_all(&graders, "a", &json!({}));
        assert!(!verdict.passed && !verdict.errored);
        assert_eq!(verdict.score, 0.5);
    }
}
