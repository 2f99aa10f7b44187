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
//! Each grader type is one `GraderType` declared in its family's file —
//! [`strings`], [`structure`] (with [`extract`]), [`closeness`] (with
//! [`text_metrics`]), [`shape`] and [`model_graded`] (an LLM judge, through
//! the provider layer) — and registered in `GRADERS`, the one list of
//! types: parsing, the error that lists the known types and the tests all
//! read it. Adding a grader is its declaration plus its line there (README,
//! "Adding a grader").

mod closeness;
mod extract;
pub mod model_graded;
mod shape;
mod strings;
mod structure;
mod text_metrics;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use model_graded::{Judge, JudgeReply};

use crate::domain::InvalidInput;
use crate::templates::ValueTemplate;

/// Every grader type, in the order the "unknown grader type" error lists them.
static GRADERS: &[&dyn Registered] = &[
    &strings::Equals,
    &strings::Contains,
    &strings::Icontains,
    &strings::ContainsAny,
    &strings::ContainsAll,
    &strings::IcontainsAny,
    &strings::IcontainsAll,
    &strings::StartsWith,
    &strings::EndsWith,
    &strings::Regex,
    &strings::IsRefusal,
    &structure::IsJson,
    &structure::ContainsJson,
    &structure::JsonSchema,
    &structure::JsonPath,
    &structure::IsXml,
    &closeness::Levenshtein,
    &closeness::Similarity,
    &closeness::RougeN,
    &closeness::RougeL,
    &closeness::Bleu,
    &shape::WordCount,
    &shape::Length,
    &shape::Latency,
    &shape::Cost,
    &shape::FinishReason,
    &model_graded::LlmRubric,
    &model_graded::LlmClassify,
    &model_graded::Factuality,
];

/// The names of every grader type (without `not-`).
pub fn grader_types() -> impl Iterator<Item = &'static str> {
    GRADERS.iter().map(|grader| grader.name())
}

/// One grader type: its name, its options and how they compile. A family
/// file declares it on a unit struct; [`GRADERS`] registers it.
trait GraderType: Sync + 'static {
    /// The `"type"` a user writes (`contains`); `not-` is added by negation.
    const NAME: &'static str;
    /// The options as submitted: a `#[serde(deny_unknown_fields)]` struct.
    /// Its serialization, defaults filled in, is what is stored and shown,
    /// so a field's name, default or `null`-ness is part of the API.
    type Options: Serialize + DeserializeOwned + Debug + Send + Sync;
    /// The pass mark of graders whose score is a similarity.
    const DEFAULT_THRESHOLD: Option<f64> = None;

    /// Checks what serde cannot (ranges, regexes, templates) and builds what
    /// grades outputs; errors name `field` and the option at fault
    /// (`graders[2].pattern`).
    fn compile(field: &str, options: &Self::Options) -> Result<Check, InvalidInput>;

    /// The judge model, for model-graded graders (checked against the catalog at submission).
    fn judge_model(_options: &Self::Options) -> Option<&str> {
        None
    }
}

/// What a compiled grader runs on each output.
#[derive(Debug)]
enum Check {
    /// Computed here, from the output and what is known about the call.
    Local(Box<dyn LocalCheck>),
    /// Asks a judge model.
    Judge(Box<dyn model_graded::JudgeCheck>),
}

impl Check {
    fn local(check: impl LocalCheck + 'static) -> Self {
        Check::Local(Box::new(check))
    }
}

/// A compiled grader that judges without calling anything.
trait LocalCheck: Debug + Send + Sync {
    /// The item variables its options read.
    fn variables(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// The verdict before threshold and negation; `threshold` is the
    /// grader's (its type's default filled in). Err is a grader error.
    fn grade(&self, input: &GradeInput<'_>, threshold: Option<f64>) -> Result<Outcome, String>;
}

/// A [`GraderType`] with its types erased, so that one table holds them all.
trait Registered: Sync {
    fn name(&self) -> &'static str;
    fn parse(&self, options: Map<String, Value>) -> Result<Arc<dyn AnyOptions>, serde_json::Error>;
}

impl<T: GraderType> Registered for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn parse(&self, options: Map<String, Value>) -> Result<Arc<dyn AnyOptions>, serde_json::Error> {
        let options: T::Options = serde_json::from_value(Value::Object(options))?;
        Ok(Arc::new(Parsed::<T>(options)))
    }
}

/// A grader's parsed options, which know their [`GraderType`].
trait AnyOptions: Debug + Send + Sync {
    fn type_name(&self) -> &'static str;
    fn default_threshold(&self) -> Option<f64>;
    fn to_json(&self) -> Map<String, Value>;
    fn compile(&self, field: &str) -> Result<Check, InvalidInput>;
    fn judge_model(&self) -> Option<&str>;
}

struct Parsed<T: GraderType>(T::Options);

impl<T: GraderType> Debug for Parsed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple(T::NAME).field(&self.0).finish()
    }
}

impl<T: GraderType> AnyOptions for Parsed<T> {
    fn type_name(&self) -> &'static str {
        T::NAME
    }

    fn default_threshold(&self) -> Option<f64> {
        T::DEFAULT_THRESHOLD
    }

    fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(&self.0).expect("grader options serialize") {
            Value::Object(object) => object,
            other => unreachable!("{} options serialize to {other}, not an object", T::NAME),
        }
    }

    fn compile(&self, field: &str) -> Result<Check, InvalidInput> {
        T::compile(field, &self.0)
    }

    fn judge_model(&self) -> Option<&str> {
        T::judge_model(&self.0)
    }
}

/// The options of graders that have none (`is-json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

/// The options of graders that compare with one text (`contains`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueOption {
    value: String,
}

/// The options of graders that look for several texts (`contains-any`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValuesOption {
    values: Vec<String>,
}

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

/// Largest `weight` a grader may have: a weighted mean of many graders at
/// this weight is still far from overflowing.
pub const MAX_WEIGHT: f64 = 1000.0;

/// Outputs at least this long are graded where they cannot stall the async
/// runtime's threads: an O(n·m) metric (Levenshtein, ROUGE-L) or a JSON
/// schema over a few thousand characters takes milliseconds, and a tenant
/// may list dozens of such graders. Shorter outputs, the common case, are
/// graded in place, which costs nothing extra per call.
pub const LONG_OUTPUT_BYTES: usize = 2048;

/// Runs `grade` on the current thread, first handing the thread's other
/// tasks to another worker thread (`block_in_place`) when `output` is long
/// and the runtime has worker threads to hand them to.
fn off_the_runtime_if_long<T>(output: &str, grade: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if output.len() >= LONG_OUTPUT_BYTES && multi_thread {
        tokio::task::block_in_place(grade)
    } else {
        grade()
    }
}

/// A grader as submitted: its type and options, negation, weight and threshold.
#[derive(Debug, Clone)]
pub struct GraderSpec {
    /// Shared: a spec is cloned with the evaluation it belongs to, its options never change.
    options: Arc<dyn AnyOptions>,
    pub negate: bool,
    pub weight: f64,
    pub threshold: Option<f64>,
}

impl GraderSpec {
    /// The type without negation (`contains` for a `not-contains`).
    pub fn type_name(&self) -> &'static str {
        self.options.type_name()
    }

    /// `not-contains` for a negated `contains`.
    pub fn name(&self) -> String {
        if self.negate {
            format!("not-{}", self.type_name())
        } else {
            self.type_name().to_owned()
        }
    }

    /// The judge model of a model-graded grader.
    pub fn judge_model(&self) -> Option<&str> {
        self.options.judge_model()
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
            Some(base) => (true, base),
            None => (false, type_name.as_str()),
        };
        let Some(grader) = GRADERS.iter().find(|grader| grader.name() == base) else {
            return Err(InvalidInput::new(
                format!("{field}.type"),
                format!(
                    "unknown grader type `{type_name}` (known: {}; any may be prefixed with `not-`)",
                    grader_types().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
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
        let options = grader.parse(options).map_err(|error| {
            InvalidInput::new(field.to_owned(), format!("{type_name} grader: {error}"))
        })?;
        Ok(Self {
            options,
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

    /// The normalized form: options with their defaults filled in.
    fn to_value(&self) -> Value {
        let mut object = self.options.to_json();
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

/// Two specs are equal when their normalized forms are.
impl PartialEq for GraderSpec {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
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

impl Debug for Text {
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

fn compile_regex(field: String, pattern: &str) -> Result<regex::Regex, InvalidInput> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|error| InvalidInput::new(field, format!("invalid regex: {error}")))
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
        Ok(Self {
            name: spec.name(),
            negate: spec.negate,
            weight: spec.weight,
            threshold: spec.threshold.or(spec.options.default_threshold()),
            check: spec.options.compile(field)?,
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
        match &self.check {
            Check::Local(check) => check.variables(),
            Check::Judge(check) => check.variables(),
        }
    }

    /// Grades one output. Model-graded graders ask `judge`.
    pub async fn grade(&self, input: &GradeInput<'_>, judge: &dyn Judge) -> Grade {
        let (outcome, cost_usd) = match &self.check {
            Check::Local(check) => (
                off_the_runtime_if_long(input.output, || check.grade(input, self.threshold)),
                0.0,
            ),
            Check::Judge(check) => model_graded::ask(check.as_ref(), input, judge).await,
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
            (
                json!({"type": "is-refusal"}),
                "I'm sorry, but I can't help with that.",
                "Paris",
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
            grader_types().collect(),
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

    /// Every registered type, as `cases` submits it, is stored with its
    /// defaults filled in, and reads back as the same spec, negated or not.
    #[test]
    fn every_type_round_trips_in_the_shape_stored_and_names_are_unique() {
        let names: Vec<&str> = grader_types().collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "a name twice in GRADERS: {names:?}"
        );
        let unknown = GraderSpec::parse("g", &json!({"type": "nope"})).unwrap_err();
        assert!(unknown.message.contains(&names.join(", ")), "{unknown}");
        // What normalization adds to `cases`: the stored shape, as the API shows it.
        let filled_in = [
            (
                "equals",
                json!({"ignore_case": false, "ignore_whitespace": false}),
            ),
            ("json-path", json!({"matches": null})),
            ("rouge-n", json!({"n": 1})),
            ("length", json!({"min": null})),
            ("latency", json!({"max_ms": 200.0})),
            ("llm-classify", json!({"instructions": null})),
        ];
        for (submitted, ..) in cases() {
            let type_name = submitted["type"].as_str().unwrap();
            let mut expected = submitted.clone();
            for (_, defaults) in filled_in.iter().filter(|(name, _)| *name == type_name) {
                for (key, value) in defaults.as_object().unwrap() {
                    expected[key] = value.clone();
                }
            }
            let mut negated = expected.clone();
            negated["type"] = json!(format!("not-{type_name}"));
            negated["weight"] = json!(2.5);
            negated["threshold"] = json!(0.5);
            for (submitted, expected) in [(submitted.clone(), expected), (negated.clone(), negated)]
            {
                let spec = GraderSpec::parse("g", &submitted).unwrap();
                let stored = serde_json::to_value(&spec).unwrap();
                assert_eq!(stored, expected, "{submitted}");
                let back = GraderSpec::parse("g", &stored).unwrap();
                assert_eq!(back, spec, "{stored}");
                assert_eq!(back.type_name(), type_name);
                assert_eq!(back.name(), submitted["type"].as_str().unwrap());
                Grader::compile("g", &back).unwrap_or_else(|error| panic!("{stored}: {error}"));
            }
        }
    }

    #[test]
    fn judge_models_are_those_of_model_graded_types() {
        for (submitted, ..) in cases() {
            let spec = GraderSpec::parse("g", &submitted).unwrap();
            let judged = submitted.get("model").and_then(Value::as_str);
            assert_eq!(spec.judge_model(), judged, "{submitted}");
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

    /// A long output's grading does not stall the runtime: on one worker
    /// thread, a task ticking every millisecond keeps ticking while a
    /// spawned task grades a 5,000-character Levenshtein distance (about
    /// 25 million cells). Graded in place, the ticker would stop for the
    /// whole grading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn long_outputs_are_graded_without_stalling_the_runtime() {
        use std::time::{Duration, Instant};
        let value = "ab".repeat(2_500);
        let output = "ba".repeat(2_500);
        assert!(output.len() >= LONG_OUTPUT_BYTES);
        let spec = GraderSpec::parse(
            "grader",
            &json!({"type": "levenshtein", "value": value, "max_distance": 1}),
        )
        .unwrap();
        let grader = Grader::compile("grader", &spec).unwrap();
        let ticks = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (started, finished, grade) = tokio::spawn(async move {
            let started = Instant::now();
            let context = json!({});
            let input = GradeInput {
                output: &output,
                context: &context,
                latency_ms: None,
                cost_usd: 0.0,
                finish_reason: None,
            };
            let grade = grader.grade(&input, &NoJudge).await;
            (started, Instant::now(), grade)
        })
        .await
        .unwrap();
        ticker.abort();
        assert!(!grade.passed && grade.error.is_none(), "{grade:?}");
        let took = finished - started;
        let ticks = ticks.lock().unwrap().clone();
        let longest_gap = ticks
            .windows(2)
            .filter(|pair| pair[1] > started && pair[0] < finished)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or(took);
        assert!(
            took >= Duration::from_millis(20),
            "the grading took {took:?}: too short to show a stall"
        );
        assert!(
            longest_gap < took / 2,
            "the ticker stopped for {longest_gap:?} of the {took:?} grading"
        );
    }
}
