//! Graders: the checks an output is scored with.
//!
//! A [`GraderSpec`] is what a user submits, parsed with field-precise errors
//! ([`GraderSpec::parse`]); [`Grader`] is its compiled form (regexes, schemas,
//! JSON paths and value templates built once per job) applied to every output.
//!
//! Every grader returns a [`Grade`]: pass or fail, a score in [0, 1] and a
//! reason a person can read. The rules common to all of them live here:
//! - `threshold` (0..=1), when set, decides the pass: `score >= threshold`;
//!   scored graders (similarity, rouge, bleu) have a default one;
//! - `not-<type>` negates: pass becomes fail and the score `1 - score`;
//! - `weight` (> 0 and at most [`MAX_WEIGHT`], default 1) weighs the score in
//!   the item's score; bounded so that a sum of weights stays finite;
//! - string options are Jinja templates over the item (`{{ expected }}`).
//!
//! A grader that cannot judge (a template needs a variable the item lacks, a
//! judge answers something unparseable) returns a grade with `error` set: a
//! grader error, counted apart from failures, and the item is errored.
//!
//! Families: [`strings`], [`structure`] (with [`extract`]), [`closeness`] (with [`text_metrics`]),
//! [`shape`] and [`model_graded`] (an LLM judge, through the provider layer).

mod closeness;
mod extract;
pub mod model_graded;
mod shape;
mod strings;
mod structure;
mod text_metrics;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use model_graded::{Judge, JudgeReply};

use crate::domain::InvalidInput;
use crate::templates::ValueTemplate;

/// What a grader looks at: the output and what is known about the call.
#[derive(Debug, Clone, Copy)]
pub struct GradeInput<'a> {
    pub output: &'a str,
    /// The item's variables plus `expected`.
    pub context: &'a Value,
    pub latency_ms: Option<f64>,
    pub cost_usd: f64,
    pub finish_reason: Option<&'a str>,
}

/// The grader types and their options, as submitted (`"type"` is the tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GraderKind {
    Equals {
        value: String,
        #[serde(default)]
        ignore_case: bool,
        #[serde(default)]
        ignore_whitespace: bool,
    },
    Contains {
        value: String,
    },
    Icontains {
        value: String,
    },
    ContainsAny {
        values: Vec<String>,
    },
    ContainsAll {
        values: Vec<String>,
    },
    IcontainsAny {
        values: Vec<String>,
    },
    IcontainsAll {
        values: Vec<String>,
    },
    StartsWith {
        value: String,
    },
    EndsWith {
        value: String,
    },
    Regex {
        pattern: String,
    },
    IsJson {},
    ContainsJson {},
    JsonSchema {
        schema: Value,
    },
    JsonPath {
        path: String,
        #[serde(default)]
        equals: Option<Value>,
        #[serde(default)]
        matches: Option<String>,
    },
    IsXml {},
    Levenshtein {
        value: String,
        max_distance: usize,
    },
    Similarity {
        value: String,
    },
    RougeN {
        value: String,
        #[serde(default = "one")]
        n: usize,
    },
    RougeL {
        value: String,
    },
    Bleu {
        value: String,
    },
    WordCount {
        #[serde(default)]
        min: Option<usize>,
        #[serde(default)]
        max: Option<usize>,
    },
    Length {
        #[serde(default)]
        min: Option<usize>,
        #[serde(default)]
        max: Option<usize>,
    },
    Latency {
        max_ms: f64,
    },
    Cost {
        max_usd: f64,
    },
    FinishReason {
        value: String,
    },
    LlmRubric {
        rubric: String,
        model: String,
    },
    LlmClassify {
        labels: Vec<String>,
        passing_labels: Vec<String>,
        model: String,
        #[serde(default)]
        instructions: Option<String>,
    },
    Factuality {
        value: String,
        model: String,
    },
}

fn one() -> usize {
    1
}

/// Every type name, for error messages.
pub const GRADER_TYPES: &[&str] = &[
    "equals",
    "contains",
    "icontains",
    "contains-any",
    "contains-all",
    "icontains-any",
    "icontains-all",
    "starts-with",
    "ends-with",
    "regex",
    "is-json",
    "contains-json",
    "json-schema",
    "json-path",
    "is-xml",
    "levenshtein",
    "similarity",
    "rouge-n",
    "rouge-l",
    "bleu",
    "word-count",
    "length",
    "latency",
    "cost",
    "finish-reason",
    "llm-rubric",
    "llm-classify",
    "factuality",
];

impl GraderKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            GraderKind::Equals { .. } => "equals",
            GraderKind::Contains { .. } => "contains",
            GraderKind::Icontains { .. } => "icontains",
            GraderKind::ContainsAny { .. } => "contains-any",
            GraderKind::ContainsAll { .. } => "contains-all",
            GraderKind::IcontainsAny { .. } => "icontains-any",
            GraderKind::IcontainsAll { .. } => "icontains-all",
            GraderKind::StartsWith { .. } => "starts-with",
            GraderKind::EndsWith { .. } => "ends-with",
            GraderKind::Regex { .. } => "regex",
            GraderKind::IsJson {} => "is-json",
            GraderKind::ContainsJson {} => "contains-json",
            GraderKind::JsonSchema { .. } => "json-schema",
            GraderKind::JsonPath { .. } => "json-path",
            GraderKind::IsXml {} => "is-xml",
            GraderKind::Levenshtein { .. } => "levenshtein",
            GraderKind::Similarity { .. } => "similarity",
            GraderKind::RougeN { .. } => "rouge-n",
            GraderKind::RougeL { .. } => "rouge-l",
            GraderKind::Bleu { .. } => "bleu",
            GraderKind::WordCount { .. } => "word-count",
            GraderKind::Length { .. } => "length",
            GraderKind::Latency { .. } => "latency",
            GraderKind::Cost { .. } => "cost",
            GraderKind::FinishReason { .. } => "finish-reason",
            GraderKind::LlmRubric { .. } => "llm-rubric",
            GraderKind::LlmClassify { .. } => "llm-classify",
            GraderKind::Factuality { .. } => "factuality",
        }
    }

    /// The judge model of a model-graded grader.
    pub fn judge_model(&self) -> Option<&str> {
        match self {
            GraderKind::LlmRubric { model, .. }
            | GraderKind::LlmClassify { model, .. }
            | GraderKind::Factuality { model, .. } => Some(model),
            _ => None,
        }
    }

    /// The pass mark of graders whose score is a similarity.
    fn default_threshold(&self) -> Option<f64> {
        match self {
            GraderKind::Similarity { .. } => Some(0.8),
            GraderKind::RougeN { .. } | GraderKind::RougeL { .. } => Some(0.75),
            GraderKind::Bleu { .. } => Some(0.5),
            _ => None,
        }
    }
}

/// Largest `weight` a grader may have: a weighted mean of many graders at
/// this weight is still far from overflowing.
pub const MAX_WEIGHT: f64 = 1000.0;

/// A grader as submitted: its type and options, negation, weight and threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct GraderSpec {
    pub kind: GraderKind,
    pub negate: bool,
    pub weight: f64,
    pub threshold: Option<f64>,
}

impl GraderSpec {
    /// `not-contains` for a negated `contains`.
    pub fn name(&self) -> String {
        if self.negate {
            format!("not-{}", self.kind.type_name())
        } else {
            self.kind.type_name().to_owned()
        }
    }

    /// Parses `value`; errors name `field` (e.g. `graders[2]`) and the option at fault.
    pub fn parse(field: &str, value: &Value) -> Result<Self, InvalidInput> {
        let Value::Object(object) = value else {
            return Err(InvalidInput::new(
                field,
                "a grader is an object with a \"type\"",
            ));
        };
        if crate::domain::json_exceeds(value, crate::domain::limits::MAX_GRADER_BYTES) {
            return Err(InvalidInput::new(
                field,
                format!(
                    "a grader is at most {} bytes of JSON (its value, rubric, pattern and other options)",
                    crate::domain::limits::MAX_GRADER_BYTES
                ),
            ));
        }
        let mut options = object.clone();
        let type_name = match options.remove("type") {
            Some(Value::String(type_name)) => type_name,
            Some(_) => {
                return Err(InvalidInput::new(
                    format!("{field}.type"),
                    "must be a string",
                ));
            }
            None => return Err(InvalidInput::new(format!("{field}.type"), "is required")),
        };
        let (negate, base) = match type_name.strip_prefix("not-") {
            Some(base) => (true, base.to_owned()),
            None => (false, type_name.clone()),
        };
        if !GRADER_TYPES.contains(&base.as_str()) {
            return Err(InvalidInput::new(
                format!("{field}.type"),
                format!(
                    "unknown grader type `{type_name}` (known: {}; any may be prefixed with `not-`)",
                    GRADER_TYPES.join(", ")
                ),
            ));
        }
        let weight = match options.remove("weight") {
            None => 1.0,
            Some(weight) => weight
                .as_f64()
                .filter(|weight| *weight > 0.0 && *weight <= MAX_WEIGHT)
                .ok_or_else(|| {
                    InvalidInput::new(
                        format!("{field}.weight"),
                        format!("must be a number above 0 and at most {MAX_WEIGHT}"),
                    )
                })?,
        };
        let threshold = match options.remove("threshold") {
            None | Some(Value::Null) => None,
            Some(threshold) => Some(
                threshold
                    .as_f64()
                    .filter(|threshold| (0.0..=1.0).contains(threshold))
                    .ok_or_else(|| {
                        InvalidInput::new(
                            format!("{field}.threshold"),
                            "must be a number between 0 and 1",
                        )
                    })?,
            ),
        };
        options.insert("type".to_owned(), Value::String(base.clone()));
        let kind: GraderKind = serde_json::from_value(Value::Object(options)).map_err(|error| {
            InvalidInput::new(field.to_owned(), format!("{type_name} grader: {error}"))
        })?;
        Ok(Self {
            kind,
            negate,
            weight,
            threshold,
        })
    }

    /// Parses a list: at least one grader, at most 50.
    pub fn parse_all(values: &[Value]) -> Result<Vec<Self>, InvalidInput> {
        if values.is_empty() {
            return Err(InvalidInput::new(
                "graders",
                "at least one grader is required",
            ));
        }
        if values.len() > crate::domain::limits::MAX_GRADERS {
            return Err(InvalidInput::new(
                "graders",
                format!("at most {} graders", crate::domain::limits::MAX_GRADERS),
            ));
        }
        values
            .iter()
            .enumerate()
            .map(|(index, value)| Self::parse(&format!("graders[{index}]"), value))
            .collect()
    }

    fn to_value(&self) -> Value {
        let mut object = match serde_json::to_value(&self.kind).expect("grader kinds serialize") {
            Value::Object(object) => object,
            _ => Map::new(),
        };
        object.insert("type".to_owned(), Value::String(self.name()));
        if self.weight != 1.0 {
            object.insert("weight".to_owned(), self.weight.into());
        }
        if let Some(threshold) = self.threshold {
            object.insert("threshold".to_owned(), threshold.into());
        }
        Value::Object(object)
    }
}

impl Serialize for GraderSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GraderSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        GraderSpec::parse("grader", &value).map_err(serde::de::Error::custom)
    }
}

/// Where a grader came from: the evaluation's list, or the item's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraderSource {
    Evaluation,
    Item,
}

/// The outcome of one grader on one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    /// The grader's type as submitted (`not-contains`).
    pub grader: String,
    /// Which list the grader came from (None in grades stored before items
    /// could carry graders: those are the evaluation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<GraderSource>,
    pub passed: bool,
    pub score: f64,
    pub reason: String,
    /// Set when the grader could not judge; `passed` is then false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a judge call cost (model-graded graders only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_usd: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// A family's verdict, before threshold, negation and naming.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub passed: bool,
    pub score: f64,
    pub reason: String,
}

impl Outcome {
    pub(crate) fn pass(reason: impl Into<String>) -> Self {
        Self {
            passed: true,
            score: 1.0,
            reason: reason.into(),
        }
    }

    pub(crate) fn fail(reason: impl Into<String>) -> Self {
        Self {
            passed: false,
            score: 0.0,
            reason: reason.into(),
        }
    }

    /// A scored verdict: passes when `score >= threshold`.
    pub(crate) fn scored(score: f64, threshold: f64, reason: impl Into<String>) -> Self {
        Self {
            passed: score >= threshold,
            score,
            reason: reason.into(),
        }
    }
}

/// A string option that may be a template over the item's variables.
struct Text {
    source: String,
    template: Option<ValueTemplate>,
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Text {
    fn compile(field: String, source: &str) -> Result<Self, InvalidInput> {
        let template = ValueTemplate::compile(source)
            .map_err(|error| InvalidInput::new(field, format!("invalid template: {error}")))?;
        Ok(Self {
            source: source.to_owned(),
            template,
        })
    }

    fn compile_all(field: &str, sources: &[String]) -> Result<Vec<Self>, InvalidInput> {
        if sources.is_empty() {
            return Err(InvalidInput::new(field, "needs at least one value"));
        }
        sources
            .iter()
            .enumerate()
            .map(|(index, source)| Self::compile(format!("{field}[{index}]"), source))
            .collect()
    }

    fn variables(&self) -> BTreeSet<String> {
        self.template
            .as_ref()
            .map(ValueTemplate::variables)
            .unwrap_or_default()
    }

    fn render(&self, context: &Value) -> Result<String, String> {
        match &self.template {
            None => Ok(self.source.clone()),
            Some(template) => template.render(context),
        }
    }

    fn render_all(texts: &[Text], context: &Value) -> Result<Vec<String>, String> {
        texts.iter().map(|text| text.render(context)).collect()
    }
}

/// A regex option (`regex`'s `pattern`, `json-path`'s `matches`): a
/// template like every other string option. Without template syntax it is
/// compiled once, at submission; with it, it is rendered per item and the
/// rendered text compiled then (an invalid one is a grader error on that
/// item). The rendered text is a regex, not a literal: `^{{ expected }}$`
/// with an expected `1+1` matches `11`.
#[derive(Debug)]
enum Pattern {
    Fixed(regex::Regex),
    /// Boxed: a template holds its own environment, far larger than a regex.
    Templated(Box<Text>),
}

impl Pattern {
    fn compile(field: String, source: &str) -> Result<Self, InvalidInput> {
        let text = Text::compile(field.clone(), source)?;
        if text.template.is_some() {
            Ok(Pattern::Templated(Box::new(text)))
        } else {
            Ok(Pattern::Fixed(compile_regex(field, source)?))
        }
    }

    fn variables(&self) -> BTreeSet<String> {
        match self {
            Pattern::Fixed(_) => BTreeSet::new(),
            Pattern::Templated(text) => text.variables(),
        }
    }

    /// The regex for the item in `context`.
    fn resolve(&self, context: &Value) -> Result<std::borrow::Cow<'_, regex::Regex>, String> {
        match self {
            Pattern::Fixed(regex) => Ok(std::borrow::Cow::Borrowed(regex)),
            Pattern::Templated(text) => {
                let rendered = text.render(context)?;
                compile_regex(String::new(), &rendered)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|error| {
                        format!(
                            "the rendered pattern {} is not a regex: {}",
                            strings::excerpt(&rendered),
                            error.message
                        )
                    })
            }
        }
    }
}

/// `json-path`'s `equals`: any JSON value; a string is a template like every
/// other string option, rendered per item (`"{{ expected }}"`).
#[derive(Debug)]
enum Expected {
    Fixed(Value),
    /// Boxed, like [`Pattern::Templated`].
    Templated(Box<Text>),
}

impl Expected {
    fn compile(field: String, value: &Value) -> Result<Self, InvalidInput> {
        if let Value::String(source) = value {
            let text = Text::compile(field, source)?;
            if text.template.is_some() {
                return Ok(Expected::Templated(Box::new(text)));
            }
        }
        Ok(Expected::Fixed(value.clone()))
    }

    fn variables(&self) -> BTreeSet<String> {
        match self {
            Expected::Fixed(_) => BTreeSet::new(),
            Expected::Templated(text) => text.variables(),
        }
    }

    fn resolve(&self, context: &Value) -> Result<std::borrow::Cow<'_, Value>, String> {
        match self {
            Expected::Fixed(value) => Ok(std::borrow::Cow::Borrowed(value)),
            Expected::Templated(text) => Ok(std::borrow::Cow::Owned(Value::String(
                text.render(context)?,
            ))),
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
    Contains {
        value: Text,
        ignore_case: bool,
    },
    ContainsAny {
        values: Vec<Text>,
        ignore_case: bool,
    },
    ContainsAll {
        values: Vec<Text>,
        ignore_case: bool,
    },
    StartsWith(Text),
    EndsWith(Text),
    Regex(Pattern),
    IsJson,
    ContainsJson,
    JsonSchema(extract::CompiledSchema),
    JsonPath {
        path: extract::CompiledPath,
        source: String,
        equals: Option<Expected>,
        matches: Option<Pattern>,
    },
    IsXml,
    Levenshtein {
        value: Text,
        max_distance: usize,
    },
    Similarity(Text),
    RougeN {
        value: Text,
        n: usize,
    },
    RougeL(Text),
    Bleu(Text),
    WordCount {
        min: Option<usize>,
        max: Option<usize>,
    },
    Length {
        min: Option<usize>,
        max: Option<usize>,
    },
    Latency {
        max_ms: f64,
    },
    Cost {
        max_usd: f64,
    },
    FinishReason(Text),
    Judge(model_graded::JudgeCheck),
}

fn compile_regex(field: String, pattern: &str) -> Result<regex::Regex, InvalidInput> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|error| InvalidInput::new(field, format!("invalid regex: {error}")))
}

fn check_bounds(field: &str, min: Option<usize>, max: Option<usize>) -> Result<(), InvalidInput> {
    match (min, max) {
        (None, None) => Err(InvalidInput::new(field, "needs `min`, `max` or both")),
        (Some(min), Some(max)) if min > max => Err(InvalidInput::new(
            format!("{field}.min"),
            "must not exceed max",
        )),
        _ => Ok(()),
    }
}

/// A compiled grader, applied to many outputs.
#[derive(Debug)]
pub struct Grader {
    name: String,
    negate: bool,
    weight: f64,
    threshold: Option<f64>,
    check: Check,
}

impl Grader {
    /// Compiles `spec`; `field` names it in errors (e.g. `graders[2]`).
    pub fn compile(field: &str, spec: &GraderSpec) -> Result<Self, InvalidInput> {
        let text = |option: &str, source: &str| Text::compile(format!("{field}.{option}"), source);
        let check = match &spec.kind {
            GraderKind::Equals {
                value,
                ignore_case,
                ignore_whitespace,
            } => Check::Equals {
                value: text("value", value)?,
                ignore_case: *ignore_case,
                ignore_whitespace: *ignore_whitespace,
            },
            GraderKind::Contains { value } => Check::Contains {
                value: text("value", value)?,
                ignore_case: false,
            },
            GraderKind::Icontains { value } => Check::Contains {
                value: text("value", value)?,
                ignore_case: true,
            },
            GraderKind::ContainsAny { values } => Check::ContainsAny {
                values: Text::compile_all(&format!("{field}.values"), values)?,
                ignore_case: false,
            },
            GraderKind::IcontainsAny { values } => Check::ContainsAny {
                values: Text::compile_all(&format!("{field}.values"), values)?,
                ignore_case: true,
            },
            GraderKind::ContainsAll { values } => Check::ContainsAll {
                values: Text::compile_all(&format!("{field}.values"), values)?,
                ignore_case: false,
            },
            GraderKind::IcontainsAll { values } => Check::ContainsAll {
                values: Text::compile_all(&format!("{field}.values"), values)?,
                ignore_case: true,
            },
            GraderKind::StartsWith { value } => Check::StartsWith(text("value", value)?),
            GraderKind::EndsWith { value } => Check::EndsWith(text("value", value)?),
            GraderKind::Regex { pattern } => {
                Check::Regex(Pattern::compile(format!("{field}.pattern"), pattern)?)
            }
            GraderKind::IsJson {} => Check::IsJson,
            GraderKind::ContainsJson {} => Check::ContainsJson,
            GraderKind::JsonSchema { schema } => {
                Check::JsonSchema(extract::compile_schema(schema).map_err(|error| {
                    InvalidInput::new(
                        format!("{field}.schema"),
                        format!("invalid JSON schema: {error}"),
                    )
                })?)
            }
            GraderKind::JsonPath {
                path,
                equals,
                matches,
            } => {
                if equals.is_some() && matches.is_some() {
                    return Err(InvalidInput::new(
                        field,
                        "give `equals` or `matches`, not both",
                    ));
                }
                Check::JsonPath {
                    path: extract::compile_path(path).map_err(|error| {
                        InvalidInput::new(
                            format!("{field}.path"),
                            format!("invalid JSON path: {error}"),
                        )
                    })?,
                    source: path.clone(),
                    equals: equals
                        .as_ref()
                        .map(|value| Expected::compile(format!("{field}.equals"), value))
                        .transpose()?,
                    matches: matches
                        .as_deref()
                        .map(|pattern| Pattern::compile(format!("{field}.matches"), pattern))
                        .transpose()?,
                }
            }
            GraderKind::IsXml {} => Check::IsXml,
            GraderKind::Levenshtein {
                value,
                max_distance,
            } => Check::Levenshtein {
                value: text("value", value)?,
                max_distance: *max_distance,
            },
            GraderKind::Similarity { value } => Check::Similarity(text("value", value)?),
            GraderKind::RougeN { value, n } => {
                if !(1..=4).contains(n) {
                    return Err(InvalidInput::new(
                        format!("{field}.n"),
                        "must be between 1 and 4",
                    ));
                }
                Check::RougeN {
                    value: text("value", value)?,
                    n: *n,
                }
            }
            GraderKind::RougeL { value } => Check::RougeL(text("value", value)?),
            GraderKind::Bleu { value } => Check::Bleu(text("value", value)?),
            GraderKind::WordCount { min, max } => {
                check_bounds(field, *min, *max)?;
                Check::WordCount {
                    min: *min,
                    max: *max,
                }
            }
            GraderKind::Length { min, max } => {
                check_bounds(field, *min, *max)?;
                Check::Length {
                    min: *min,
                    max: *max,
                }
            }
            GraderKind::Latency { max_ms } => {
                if !(max_ms.is_finite() && *max_ms >= 0.0) {
                    return Err(InvalidInput::new(
                        format!("{field}.max_ms"),
                        "must be a number of milliseconds ≥ 0",
                    ));
                }
                Check::Latency { max_ms: *max_ms }
            }
            GraderKind::Cost { max_usd } => {
                if !(max_usd.is_finite() && *max_usd >= 0.0) {
                    return Err(InvalidInput::new(
                        format!("{field}.max_usd"),
                        "must be a number of dollars ≥ 0",
                    ));
                }
                Check::Cost { max_usd: *max_usd }
            }
            GraderKind::FinishReason { value } => Check::FinishReason(text("value", value)?),
            GraderKind::LlmRubric { .. }
            | GraderKind::LlmClassify { .. }
            | GraderKind::Factuality { .. } => {
                Check::Judge(model_graded::JudgeCheck::compile(field, &spec.kind)?)
            }
        };
        Ok(Self {
            name: spec.name(),
            negate: spec.negate,
            weight: spec.weight,
            threshold: spec.threshold.or(spec.kind.default_threshold()),
            check,
        })
    }

    /// The type as submitted (`not-contains`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The item variables this grader's options read.
    pub fn variables(&self) -> BTreeSet<String> {
        let of_all = |texts: &[Text]| texts.iter().flat_map(Text::variables).collect();
        match &self.check {
            Check::Equals { value, .. }
            | Check::Contains { value, .. }
            | Check::StartsWith(value)
            | Check::EndsWith(value)
            | Check::Levenshtein { value, .. }
            | Check::Similarity(value)
            | Check::RougeN { value, .. }
            | Check::RougeL(value)
            | Check::Bleu(value)
            | Check::FinishReason(value) => value.variables(),
            Check::ContainsAny { values, .. } | Check::ContainsAll { values, .. } => of_all(values),
            Check::Judge(judge) => judge.variables(),
            Check::Regex(pattern) => pattern.variables(),
            Check::JsonPath {
                equals, matches, ..
            } => {
                let mut variables = equals.as_ref().map(Expected::variables).unwrap_or_default();
                variables.extend(matches.as_ref().map(Pattern::variables).unwrap_or_default());
                variables
            }
            Check::IsJson
            | Check::ContainsJson
            | Check::JsonSchema(_)
            | Check::IsXml
            | Check::WordCount { .. }
            | Check::Length { .. }
            | Check::Latency { .. }
            | Check::Cost { .. } => BTreeSet::new(),
        }
    }

    /// Grades one output. Model-graded graders ask `judge`.
    pub async fn grade(&self, input: &GradeInput<'_>, judge: &dyn Judge) -> Grade {
        let mut cost_usd = 0.0;
        let outcome = match &self.check {
            Check::Judge(check) => {
                let (outcome, cost) = check.grade(input, judge).await;
                cost_usd = cost;
                outcome
            }
            check => self.grade_sync(check, input),
        };
        let mut grade = match outcome {
            Err(error) => Grade {
                grader: self.name.clone(),
                source: None,
                passed: false,
                score: 0.0,
                reason: format!("grader error: {error}"),
                error: Some(error),
                cost_usd,
            },
            Ok(mut outcome) => {
                if let Some(threshold) = self.threshold {
                    outcome.passed = outcome.score >= threshold;
                }
                if self.negate {
                    outcome = Outcome {
                        passed: !outcome.passed,
                        score: 1.0 - outcome.score,
                        reason: format!("negated: {}", outcome.reason),
                    };
                }
                Grade {
                    grader: self.name.clone(),
                    source: None,
                    passed: outcome.passed,
                    score: outcome.score.clamp(0.0, 1.0),
                    reason: outcome.reason,
                    error: None,
                    cost_usd,
                }
            }
        };
        if !grade.score.is_finite() {
            grade.score = 0.0;
        }
        grade
    }

    fn grade_sync(&self, check: &Check, input: &GradeInput<'_>) -> Result<Outcome, String> {
        let output = input.output;
        let context = input.context;
        Ok(match check {
            Check::Equals {
                value,
                ignore_case,
                ignore_whitespace,
            } => strings::equals(
                output,
                &value.render(context)?,
                *ignore_case,
                *ignore_whitespace,
            ),
            Check::Contains { value, ignore_case } => {
                strings::contains(output, &value.render(context)?, *ignore_case)
            }
            Check::ContainsAny {
                values,
                ignore_case,
            } => strings::contains_any(output, &Text::render_all(values, context)?, *ignore_case),
            Check::ContainsAll {
                values,
                ignore_case,
            } => strings::contains_all(output, &Text::render_all(values, context)?, *ignore_case),
            Check::StartsWith(value) => strings::starts_with(output, &value.render(context)?),
            Check::EndsWith(value) => strings::ends_with(output, &value.render(context)?),
            Check::Regex(pattern) => strings::regex(output, &*pattern.resolve(context)?),
            Check::IsJson => structure::is_json(output),
            Check::ContainsJson => structure::contains_json(output),
            Check::JsonSchema(schema) => structure::json_schema(output, schema),
            Check::JsonPath {
                path,
                source,
                equals,
                matches,
            } => {
                let equals = equals
                    .as_ref()
                    .map(|expected| expected.resolve(context))
                    .transpose()?;
                let matches = matches
                    .as_ref()
                    .map(|pattern| pattern.resolve(context))
                    .transpose()?;
                structure::json_path(output, path, source, equals.as_deref(), matches.as_deref())
            }
            Check::IsXml => structure::is_xml(output),
            Check::Levenshtein {
                value,
                max_distance,
            } => closeness::grade_levenshtein(output, &value.render(context)?, *max_distance)?,
            Check::Similarity(value) => closeness::grade_similarity(
                output,
                &value.render(context)?,
                self.threshold.unwrap_or(0.8),
            )?,
            Check::RougeN { value, n } => closeness::grade_rouge_n(
                output,
                &value.render(context)?,
                *n,
                self.threshold.unwrap_or(0.75),
            )?,
            Check::RougeL(value) => closeness::grade_rouge_l(
                output,
                &value.render(context)?,
                self.threshold.unwrap_or(0.75),
            )?,
            Check::Bleu(value) => closeness::grade_bleu(
                output,
                &value.render(context)?,
                self.threshold.unwrap_or(0.5),
            )?,
            Check::WordCount { min, max } => shape::word_count(output, *min, *max),
            Check::Length { min, max } => shape::length(output, *min, *max),
            Check::Latency { max_ms } => shape::latency(input.latency_ms, *max_ms)?,
            Check::Cost { max_usd } => shape::cost(input.cost_usd, *max_usd),
            Check::FinishReason(value) => {
                shape::finish_reason(input.finish_reason, &value.render(context)?)
            }
            Check::Judge(_) => unreachable!("judges are graded asynchronously"),
        })
    }
}

/// Compiles an item's stored graders (normalized at upload, so an error
/// here means the row was written by something else than the API).
pub fn compile_item(stored: &Value) -> Result<Vec<Grader>, String> {
    let specs: Vec<GraderSpec> = serde_json::from_value(stored.clone())
        .map_err(|error| format!("the item's graders do not parse: {error}"))?;
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| Grader::compile(&format!("item.graders[{index}]"), spec))
        .collect::<Result<_, _>>()
        .map_err(|error| error.to_string())
}

/// Compiles a parsed list of graders.
pub fn compile_all(specs: &[GraderSpec]) -> Result<Vec<Grader>, InvalidInput> {
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| Grader::compile(&format!("graders[{index}]"), spec))
        .collect()
}

/// The verdict on one output over all graders.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub grades: Vec<Grade>,
    /// Every grader passed or, with an item threshold, the weighted score reached it.
    pub passed: bool,
    /// A grader could not judge.
    pub errored: bool,
    /// Weighted mean of the grades' scores.
    pub score: f64,
    /// What judge calls cost.
    pub grading_cost_usd: f64,
}

/// Grades `input` with every grader; `threshold` is the item's pass mark on
/// the weighted score, if the evaluation sets one.
pub async fn grade_all(
    graders: &[Grader],
    input: &GradeInput<'_>,
    judge: &dyn Judge,
    threshold: Option<f64>,
) -> Verdict {
    grade_with_item(graders, &[], input, judge, threshold).await
}

/// Grades `input` with the evaluation's graders, then the item's own; each
/// grade records its source. Both lists count alike in the score and the pass.
pub async fn grade_with_item(
    evaluation: &[Grader],
    item: &[Grader],
    input: &GradeInput<'_>,
    judge: &dyn Judge,
    threshold: Option<f64>,
) -> Verdict {
    let graders = || {
        evaluation
            .iter()
            .map(|grader| (grader, GraderSource::Evaluation))
            .chain(item.iter().map(|grader| (grader, GraderSource::Item)))
    };
    let mut grades = Vec::with_capacity(evaluation.len() + item.len());
    for (grader, source) in graders() {
        let mut grade = grader.grade(input, judge).await;
        grade.source = Some(source);
        grades.push(grade);
    }
    let errored = grades.iter().any(|grade| grade.error.is_some());
    let total_weight: f64 = graders().map(|(grader, _)| grader.weight()).sum();
    let score = if total_weight > 0.0 {
        graders()
            .zip(&grades)
            .map(|((grader, _), grade)| grader.weight() * grade.score)
            .sum::<f64>()
            / total_weight
    } else {
        0.0
    };
    let passed = !errored
        && match threshold {
            Some(threshold) => score >= threshold,
            None => grades.iter().all(|grade| grade.passed),
        };
    Verdict {
        grading_cost_usd: grades.iter().map(|grade| grade.cost_usd).sum(),
        grades,
        passed,
        errored,
        score,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::model_graded::NoJudge;
    use super::*;

    /// A judge that answers like the mock provider would (by its rules).
    struct RuleJudge;

    #[async_trait::async_trait]
    impl Judge for RuleJudge {
        async fn ask(
            &self,
            _: &str,
            messages: &[crate::domain::ChatMessage],
        ) -> Result<JudgeReply, String> {
            let completion = crate::providers::mock::MockOptions::default().answer(messages, 0);
            Ok(JudgeReply {
                text: completion.text,
                cost_usd: 0.001,
            })
        }
    }

    #[test]
    fn regex_and_json_path_options_are_templates_like_the_others() {
        let grader = |spec: Value| {
            let spec = GraderSpec::parse("graders[0]", &spec).unwrap();
            Grader::compile("graders[0]", &spec).unwrap()
        };
        let grade = |grader: &Grader, output: &str, context: Value| {
            let input = GradeInput {
                output,
                context: &context,
                latency_ms: None,
                cost_usd: 0.0,
                finish_reason: None,
            };
            futures::executor::block_on(grader.grade(&input, &NoJudge))
        };
        let regex = grader(json!({"type": "regex", "pattern": "^{{ expected }}$"}));
        assert_eq!(regex.variables(), BTreeSet::from(["expected".to_owned()]));
        assert!(grade(&regex, "595", json!({"expected": 595})).passed);
        assert!(!grade(&regex, "5950", json!({"expected": 595})).passed);
        // The rendered text is a regex: `a+` matches `aaa`.
        assert!(grade(&regex, "aaa", json!({"expected": "a+"})).passed);
        let broken = grade(&regex, "x", json!({"expected": "("}));
        assert!(broken.error.is_some(), "{broken:?}");
        assert!(broken.reason.contains("not a regex"), "{}", broken.reason);
        let lacking = grade(&regex, "x", json!({}));
        assert!(lacking.error.is_some(), "{lacking:?}");

        let equals =
            grader(json!({"type": "json-path", "path": "$.answer", "equals": "{{ expected }}"}));
        assert_eq!(equals.variables(), BTreeSet::from(["expected".to_owned()]));
        let passed = grade(&equals, r#"{"answer": 595}"#, json!({"expected": "595"}));
        assert!(passed.passed, "{passed:?}");
        assert!(grade(&equals, r#"{"answer": 595}"#, json!({"expected": 595})).passed);
        assert!(grade(&equals, r#"{"answer": "595"}"#, json!({"expected": 595})).passed);
        let failed = grade(&equals, r#"{"answer": 596}"#, json!({"expected": 595}));
        assert!(!failed.passed && failed.error.is_none());
        assert!(failed.reason.contains("(a number)"), "{}", failed.reason);
        // A literal `equals` keeps its JSON type, and without braces stays literal.
        let literal = grader(json!({"type": "json-path", "path": "$.answer", "equals": 595}));
        assert!(literal.variables().is_empty());
        assert!(grade(&literal, r#"{"answer": 595.0}"#, json!({})).passed);
        let text = grader(json!({"type": "json-path", "path": "$.a", "equals": "{x}"}));
        assert!(grade(&text, r#"{"a": "{x}"}"#, json!({})).passed);

        let matches =
            grader(json!({"type": "json-path", "path": "$.city", "matches": "^{{ expected }}$"}));
        assert!(
            grade(
                &matches,
                r#"{"city": "Paris"}"#,
                json!({"expected": "Paris"})
            )
            .passed
        );
        assert!(
            !grade(
                &matches,
                r#"{"city": "Paris"}"#,
                json!({"expected": "Rome"})
            )
            .passed
        );

        // Without template syntax a bad pattern is refused at submission,
        // and a template that does not compile too.
        for spec in [
            json!({"type": "regex", "pattern": "("}),
            json!({"type": "regex", "pattern": "{{ expected"}),
            json!({"type": "json-path", "path": "$.a", "matches": "("}),
            json!({"type": "json-path", "path": "$.a", "equals": "{{ x"}),
        ] {
            let parsed = GraderSpec::parse("graders[0]", &spec).unwrap();
            assert!(Grader::compile("graders[0]", &parsed).is_err(), "{spec}");
        }
    }

    #[tokio::test]
    async fn item_graders_follow_the_evaluations_and_count_alike() {
        let compile = |specs: Value| {
            let specs: Vec<GraderSpec> = serde_json::from_value(specs).unwrap();
            compile_all(&specs).unwrap()
        };
        let evaluation = compile(json!([{"type": "contains", "value": "Paris"}]));
        let item = compile(json!([{"type": "regex", "pattern": "^x", "weight": 3}]));
        let context = json!({});
        let input = GradeInput {
            output: "Paris",
            context: &context,
            latency_ms: None,
            cost_usd: 0.0,
            finish_reason: None,
        };
        let verdict = grade_with_item(&evaluation, &item, &input, &NoJudge, None).await;
        let sources: Vec<_> = verdict.grades.iter().map(|grade| grade.source).collect();
        assert_eq!(
            sources,
            [Some(GraderSource::Evaluation), Some(GraderSource::Item)]
        );
        assert!(!verdict.passed, "the item's failing grader fails the item");
        assert!((verdict.score - 0.25).abs() < 1e-9, "weights 1 and 3");
        let serialized = serde_json::to_value(&verdict.grades[1]).unwrap();
        assert_eq!(serialized["source"], "item");
        // Grades stored before sources existed still read.
        let old: Grade = serde_json::from_value(
            json!({"grader": "contains", "passed": true, "score": 1.0, "reason": "ok"}),
        )
        .unwrap();
        assert_eq!(old.source, None);
    }

    async fn run(spec: &Value, output: &str) -> Grade {
        let spec = GraderSpec::parse("g", spec).unwrap_or_else(|error| panic!("{spec}: {error}"));
        let grader = Grader::compile("g", &spec).unwrap_or_else(|error| panic!("{error}"));
        let context = json!({"expected": "Paris", "city": "Paris"});
        let input = GradeInput {
            output,
            context: &context,
            latency_ms: Some(120.0),
            cost_usd: 0.002,
            finish_reason: Some("stop"),
        };
        grader.grade(&input, &RuleJudge).await
    }

    /// Every grader type with an output it passes and one it fails.
    fn cases() -> Vec<(Value, &'static str, &'static str)> {
        vec![
            (
                json!({"type": "equals", "value": "{{ expected }}"}),
                "Paris",
                "Rome",
            ),
            (json!({"type": "contains", "value": "Par"}), "Paris", "Rome"),
            (
                json!({"type": "icontains", "value": "PAR"}),
                "Paris",
                "Rome",
            ),
            (
                json!({"type": "contains-any", "values": ["Rome", "Paris"]}),
                "Paris",
                "Oslo",
            ),
            (
                json!({"type": "contains-all", "values": ["Par", "is"]}),
                "Paris",
                "Parma",
            ),
            (
                json!({"type": "icontains-any", "values": ["PARIS"]}),
                "paris",
                "Oslo",
            ),
            (
                json!({"type": "icontains-all", "values": ["PAR", "IS"]}),
                "paris",
                "parma",
            ),
            (
                json!({"type": "starts-with", "value": "Pa"}),
                "Paris",
                "Rome",
            ),
            (json!({"type": "ends-with", "value": "is"}), "Paris", "Rome"),
            (
                json!({"type": "regex", "pattern": "^P\\w+s$"}),
                "Paris",
                "Rome",
            ),
            (json!({"type": "is-json"}), "{\"city\": \"Paris\"}", "Paris"),
            (
                json!({"type": "contains-json"}),
                "Here: {\"a\": 1}",
                "no json",
            ),
            (
                json!({"type": "json-schema", "schema": {"type": "object", "required": ["city"]}}),
                "{\"city\": \"Paris\"}",
                "{}",
            ),
            (
                json!({"type": "json-path", "path": "$.city", "equals": "Paris"}),
                "{\"city\": \"Paris\"}",
                "{\"city\": \"Rome\"}",
            ),
            (
                json!({"type": "is-xml"}),
                "<city>Paris</city>",
                "<city>Paris",
            ),
            (
                json!({"type": "levenshtein", "value": "{{ expected }}", "max_distance": 1}),
                "Pariss",
                "Rome",
            ),
            (
                json!({"type": "similarity", "value": "Paris, France"}),
                "Paris, Franc",
                "Rome",
            ),
            (
                json!({"type": "rouge-n", "value": "the capital is Paris"}),
                "the capital is Paris indeed",
                "Rome",
            ),
            (
                json!({"type": "rouge-l", "value": "the capital is Paris"}),
                "the capital is Paris",
                "Paris capital",
            ),
            (
                json!({"type": "bleu", "value": "the capital of France is Paris"}),
                "the capital of France is Paris",
                "Rome is nice",
            ),
            (
                json!({"type": "word-count", "min": 1, "max": 2}),
                "Paris",
                "Paris is the capital",
            ),
            (json!({"type": "length", "max": 5}), "Paris", "Paris!!"),
            (
                json!({"type": "latency", "max_ms": 200}),
                "x",
                "__latency__",
            ),
            (json!({"type": "cost", "max_usd": 0.01}), "x", "__cost__"),
            (
                json!({"type": "finish-reason", "value": "stop"}),
                "x",
                "__finish__",
            ),
            (
                json!({"type": "llm-rubric", "rubric": "names Paris", "model": "mock"}),
                "It names Paris",
                "Rome",
            ),
            (
                json!({"type": "llm-classify", "labels": ["paris", "other"], "passing_labels": ["paris"], "model": "mock"}),
                "Paris!",
                "Rome",
            ),
            (
                json!({"type": "factuality", "value": "{{ expected }}", "model": "mock"}),
                "paris",
                "Rome",
            ),
        ]
    }

    #[tokio::test]
    async fn every_grader_passes_fails_and_negates() {
        let cases = cases();
        let covered: BTreeSet<&str> = cases
            .iter()
            .map(|(spec, ..)| spec["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            covered,
            GRADER_TYPES.iter().copied().collect(),
            "a case for every grader type"
        );
        for (spec, passing, failing) in cases {
            // Budget graders fail on what the call cost, not on the text.
            let (spec_for_fail, failing) = match failing {
                "__latency__" => (json!({"type": "latency", "max_ms": 50}), "x"),
                "__cost__" => (json!({"type": "cost", "max_usd": 0.001}), "x"),
                "__finish__" => (json!({"type": "finish-reason", "value": "length"}), "x"),
                _ => (spec.clone(), failing),
            };
            let pass = run(&spec, passing).await;
            assert!(
                pass.passed && pass.error.is_none(),
                "{spec} on {passing:?}: {pass:?}"
            );
            assert!(pass.score > 0.0 && pass.score <= 1.0, "{spec}: {pass:?}");
            let fail = run(&spec_for_fail, failing).await;
            assert!(
                !fail.passed && fail.error.is_none(),
                "{spec_for_fail} on {failing:?}: {fail:?}"
            );
            let negate = |spec: &Value| {
                let mut spec = spec.clone();
                spec["type"] = json!(format!("not-{}", spec["type"].as_str().unwrap()));
                spec
            };
            let not_pass = run(&negate(&spec), passing).await;
            assert!(!not_pass.passed, "not-{spec} on {passing:?}: {not_pass:?}");
            assert!((not_pass.score - (1.0 - pass.score)).abs() < 1e-12);
            assert!(not_pass.grader.starts_with("not-"));
            let not_fail = run(&negate(&spec_for_fail), failing).await;
            assert!(
                not_fail.passed,
                "not-{spec_for_fail} on {failing:?}: {not_fail:?}"
            );
            // Nothing panics on empty, unicode or very long outputs.
            for output in ["", "東京 – Ünïcödé ✓", &"long ".repeat(20_000)] {
                let grade = run(&spec, output).await;
                assert!((0.0..=1.0).contains(&grade.score), "{spec}: {grade:?}");
            }
        }
    }

    #[test]
    fn specs_round_trip_with_negation_weight_and_threshold() {
        let value = json!({"type": "not-similarity", "value": "{{ expected }}", "weight": 2.0, "threshold": 0.9});
        let spec = GraderSpec::parse("graders[0]", &value).unwrap();
        assert!(spec.negate);
        assert_eq!(spec.weight, 2.0);
        assert_eq!(spec.threshold, Some(0.9));
        assert_eq!(spec.name(), "not-similarity");
        assert_eq!(serde_json::to_value(&spec).unwrap(), value);
        let back: GraderSpec = serde_json::from_value(value).unwrap();
        assert_eq!(back, spec);
        for (bad, field) in [
            (json!({"value": "x"}), "graders[0].type"),
            (json!({"type": 3}), "graders[0].type"),
            (json!({"type": "nope"}), "graders[0].type"),
            (
                json!({"type": "contains", "value": "x", "weight": 0}),
                "graders[0].weight",
            ),
            // Two of these once summed to infinity and made every score null.
            (
                json!({"type": "contains", "value": "x", "weight": 1e308}),
                "graders[0].weight",
            ),
            (
                json!({"type": "contains", "value": "x", "threshold": -0.1}),
                "graders[0].threshold",
            ),
            (json!({"type": "contains"}), "graders[0]"),
            (json!("contains"), "graders[0]"),
        ] {
            assert_eq!(
                GraderSpec::parse("graders[0]", &bad).unwrap_err().field,
                field,
                "{bad}"
            );
        }
        let compile = |value: Value| {
            Grader::compile(
                "graders[0]",
                &GraderSpec::parse("graders[0]", &value).unwrap(),
            )
        };
        assert_eq!(
            compile(json!({"type": "regex", "pattern": "("}))
                .unwrap_err()
                .field,
            "graders[0].pattern"
        );
        assert_eq!(
            compile(json!({"type": "json-schema", "schema": {"type": 5}}))
                .unwrap_err()
                .field,
            "graders[0].schema"
        );
        assert_eq!(
            compile(json!({"type": "json-path", "path": "$["}))
                .unwrap_err()
                .field,
            "graders[0].path"
        );
        assert_eq!(
            compile(json!({"type": "word-count"})).unwrap_err().field,
            "graders[0]"
        );
        assert_eq!(
            compile(json!({"type": "rouge-n", "value": "x", "n": 9}))
                .unwrap_err()
                .field,
            "graders[0].n"
        );
    }

    #[tokio::test]
    async fn thresholds_weights_and_item_verdicts() {
        let compile =
            |value: Value| Grader::compile("g", &GraderSpec::parse("g", &value).unwrap()).unwrap();
        let context = json!({});
        let input = GradeInput {
            output: "red and green",
            context: &context,
            latency_ms: None,
            cost_usd: 0.0,
            finish_reason: None,
        };
        // contains-all scores the share found; a threshold turns "most" into a pass.
        let half = compile(json!({"type": "contains-all", "values": ["red", "blue"]}));
        assert!(!half.grade(&input, &NoJudge).await.passed);
        let lenient =
            compile(json!({"type": "contains-all", "values": ["red", "blue"], "threshold": 0.5}));
        assert!(lenient.grade(&input, &NoJudge).await.passed);
        let graders = vec![
            compile(json!({"type": "contains", "value": "red", "weight": 3})),
            compile(json!({"type": "contains", "value": "blue"})),
        ];
        let verdict = grade_all(&graders, &input, &NoJudge, None).await;
        assert!(!verdict.passed && !verdict.errored);
        assert_eq!(verdict.score, 0.75, "weighted: (3 x 1 + 1 x 0) / 4");
        assert!(
            grade_all(&graders, &input, &NoJudge, Some(0.7))
                .await
                .passed,
            "item threshold on the weighted score"
        );
        assert!(
            !grade_all(&graders, &input, &NoJudge, Some(0.8))
                .await
                .passed
        );
        // A template variable the item lacks is a grader error, and the item is errored.
        let missing = vec![compile(json!({"type": "equals", "value": "{{ answer }}"}))];
        let verdict = grade_all(&missing, &input, &NoJudge, None).await;
        assert!(verdict.errored && !verdict.passed);
        assert!(verdict.grades[0].error.as_ref().unwrap().contains("answer"));
        // Judges without a judge are grader errors too, not failures.
        let judged = vec![compile(
            json!({"type": "llm-rubric", "rubric": "r", "model": "mock"}),
        )];
        assert!(grade_all(&judged, &input, &NoJudge, None).await.errored);
    }
}
