//! Model-graded graders: `llm-rubric`, `llm-classify` and `factuality`. A
//! judge model answers through the same provider layer as generation (its
//! retries, prices and metrics), and what it costs is reported apart, as
//! grading cost.
//!
//! Parsing policy (lenient, stated once): the first JSON object in the reply
//! is read; `llm-rubric` takes `score` (a number, or a numeric string, in
//! 0..=1) and/or `pass` (a boolean; without it, pass is `score >= 0.5`;
//! without a score, the score is 1 or 0); `llm-classify` takes `label` (one of
//! the labels, case-insensitive); `factuality` takes `choice` (A to E). With no
//! JSON object, a reply that starts with `pass`/`yes` or `fail`/`no`
//! (rubric), is exactly one label (classify) or starts with a choice letter
//! (factuality) is accepted. Anything else is a grader error, counted apart
//! from a fail.

use std::collections::BTreeSet;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Check, GradeInput, GraderType, Outcome, Text};
use crate::domain::{ChatMessage, InvalidInput, Role};

/// Starts the system message of every judge request, so that the built-in
/// mock provider can recognise one and answer it deterministically.
pub const JUDGE_MARKER: &str = "[assay-judge:";

/// A judge's answer and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeReply {
    pub text: String,
    pub cost_usd: f64,
}

/// Asks judge models; the worker implements it over the provider layer.
#[async_trait]
pub trait Judge: Send + Sync {
    async fn ask(&self, model: &str, messages: &[ChatMessage]) -> Result<JudgeReply, String>;
}

/// A judge for evaluations without model-graded graders: any call is an error.
pub struct NoJudge;

#[async_trait]
impl Judge for NoJudge {
    async fn ask(&self, model: &str, _: &[ChatMessage]) -> Result<JudgeReply, String> {
        Err(format!("no judge is available for model {model}"))
    }
}

/// A judge grader compiled: what it asks and how it reads the reply.
pub(super) trait JudgeCheck: Debug + Send + Sync {
    /// The judge model.
    fn model(&self) -> &str;

    /// The item variables its options read.
    fn variables(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// The system message, and the user message's sections before the
    /// output (which [`ask`] appends last). Err is a grader error.
    fn request(&self, context: &Value) -> Result<(String, String), String>;

    /// The verdict in the judge's reply, or a grader error.
    fn verdict(&self, reply: &str) -> Result<Outcome, String>;
}

/// Asks the judge; returns the verdict (or a grader error) and what the call cost.
pub(super) async fn ask(
    check: &dyn JudgeCheck,
    input: &GradeInput<'_>,
    judge: &dyn Judge,
) -> (Result<Outcome, String>, f64) {
    let (system, sections) = match check.request(input.context) {
        Ok(request) => request,
        Err(error) => return (Err(error), 0.0),
    };
    let messages = [
        ChatMessage {
            role: Role::System,
            content: system,
        },
        ChatMessage {
            role: Role::User,
            content: format!("{sections}{}", section("output", input.output)),
        },
    ];
    let model = check.model();
    match judge.ask(model, &messages).await {
        Ok(reply) => (check.verdict(&reply.text), reply.cost_usd),
        Err(error) => (Err(format!("judge {model} failed: {error}")), 0.0),
    }
}

/// `llm-rubric`: a judge scores the output against `rubric` (a template).
pub(super) struct LlmRubric;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RubricOptions {
    rubric: String,
    model: String,
}

impl GraderType for LlmRubric {
    const NAME: &'static str = "llm-rubric";
    type Options = RubricOptions;

    fn compile(field: &str, options: &RubricOptions) -> Result<Check, InvalidInput> {
        if options.rubric.trim().is_empty() {
            return Err(InvalidInput::new(
                format!("{field}.rubric"),
                "must not be empty",
            ));
        }
        Ok(Check::Judge(Box::new(Rubric {
            rubric: Text::compile(format!("{field}.rubric"), &options.rubric)?,
            model: options.model.clone(),
        })))
    }

    fn judge_model(options: &RubricOptions) -> Option<&str> {
        Some(&options.model)
    }
}

#[derive(Debug)]
struct Rubric {
    rubric: Text,
    model: String,
}

impl JudgeCheck for Rubric {
    fn model(&self) -> &str {
        &self.model
    }

    fn variables(&self) -> BTreeSet<String> {
        self.rubric.variables()
    }

    fn request(&self, context: &Value) -> Result<(String, String), String> {
        Ok((
            format!(
                "{JUDGE_MARKER}llm-rubric] You grade an AI model's output against a rubric. Reply with one \
                 JSON object with the keys score (a number from 0 to 1), pass (true or false) and reason \
                 (one sentence)."
            ),
            section("rubric", &self.rubric.render(context)?),
        ))
    }

    fn verdict(&self, reply: &str) -> Result<Outcome, String> {
        parse_rubric(reply)
    }
}

/// `llm-classify`: the label a judge picks among `labels` is one of `passing_labels`.
pub(super) struct LlmClassify;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClassifyOptions {
    labels: Vec<String>,
    passing_labels: Vec<String>,
    model: String,
    #[serde(default)]
    instructions: Option<String>,
}

impl GraderType for LlmClassify {
    const NAME: &'static str = "llm-classify";
    type Options = ClassifyOptions;

    fn compile(field: &str, options: &ClassifyOptions) -> Result<Check, InvalidInput> {
        let labels = &options.labels;
        if labels.is_empty() || labels.iter().any(|label| label.trim().is_empty()) {
            return Err(InvalidInput::new(
                format!("{field}.labels"),
                "needs at least one non-empty label",
            ));
        }
        let unique: BTreeSet<String> = labels.iter().map(|label| label.to_lowercase()).collect();
        if unique.len() != labels.len() {
            return Err(InvalidInput::new(
                format!("{field}.labels"),
                "labels must differ (case-insensitively)",
            ));
        }
        if let Some(stray) = options
            .passing_labels
            .iter()
            .find(|label| !labels.contains(label))
        {
            return Err(InvalidInput::new(
                format!("{field}.passing_labels"),
                format!("{stray:?} is not one of the labels"),
            ));
        }
        Ok(Check::Judge(Box::new(Classify {
            labels: labels.clone(),
            passing: options.passing_labels.clone(),
            instructions: options.instructions.clone(),
            model: options.model.clone(),
        })))
    }

    fn judge_model(options: &ClassifyOptions) -> Option<&str> {
        Some(&options.model)
    }
}

#[derive(Debug)]
struct Classify {
    labels: Vec<String>,
    passing: Vec<String>,
    instructions: Option<String>,
    model: String,
}

impl JudgeCheck for Classify {
    fn model(&self) -> &str {
        &self.model
    }

    fn request(&self, _: &Value) -> Result<(String, String), String> {
        Ok((
            format!(
                "{JUDGE_MARKER}llm-classify] Classify the output into exactly one of the labels. {}Reply with \
                 one JSON object with the keys label (one of the labels, verbatim) and reason (one sentence).",
                self.instructions
                    .as_deref()
                    .map(|text| format!("{text} "))
                    .unwrap_or_default()
            ),
            section("labels", &self.labels.join("\n")),
        ))
    }

    fn verdict(&self, reply: &str) -> Result<Outcome, String> {
        parse_label(reply, &self.labels).map(|label| {
            if self.passing.contains(&label) {
                Outcome::pass(format!("judged {label:?}, a passing label"))
            } else {
                Outcome::fail(format!("judged {label:?}, not a passing label"))
            }
        })
    }
}

/// `factuality`: a judge finds the output consistent with the reference `value`.
pub(super) struct Factuality;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FactualityOptions {
    value: String,
    model: String,
}

impl GraderType for Factuality {
    const NAME: &'static str = "factuality";
    type Options = FactualityOptions;

    fn compile(field: &str, options: &FactualityOptions) -> Result<Check, InvalidInput> {
        Ok(Check::Judge(Box::new(FactualityCheck {
            reference: Text::compile(format!("{field}.value"), &options.value)?,
            model: options.model.clone(),
        })))
    }

    fn judge_model(options: &FactualityOptions) -> Option<&str> {
        Some(&options.model)
    }
}

#[derive(Debug)]
struct FactualityCheck {
    reference: Text,
    model: String,
}

impl JudgeCheck for FactualityCheck {
    fn model(&self) -> &str {
        &self.model
    }

    fn variables(&self) -> BTreeSet<String> {
        self.reference.variables()
    }

    fn request(&self, context: &Value) -> Result<(String, String), String> {
        Ok((
            format!(
                "{JUDGE_MARKER}factuality] Compare the factual content of the output with the expert answer. \
                 Choose (A) the output is a subset of the expert answer and consistent with it, (B) a superset \
                 and consistent, (C) it has the same details, (D) they disagree, or (E) they differ but not in \
                 a way that matters for factuality. Reply with one JSON object with the keys choice (one \
                 letter) and reason (one sentence)."
            ),
            section("reference", &self.reference.render(context)?),
        ))
    }

    fn verdict(&self, reply: &str) -> Result<Outcome, String> {
        parse_choice(reply).map(|(choice, reason)| {
            let reason = format!(
                "choice {choice}: {}",
                reason.unwrap_or_else(|| choice_meaning(choice).to_owned())
            );
            if choice == 'D' {
                Outcome::fail(reason)
            } else {
                Outcome::pass(reason)
            }
        })
    }
}

fn section(tag: &str, body: &str) -> String {
    format!("<{tag}>\n{body}\n</{tag}>\n")
}

/// The body of `<tag>…</tag>` in a judge request (what the mock judge reads).
/// The output always comes last and may contain anything, so its section
/// runs to the last closing tag; the others end at their first one.
pub fn read_section<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let close = format!("\n</{tag}>");
    if tag == "output" {
        let open = ">\n<output>\n";
        let start = text.find(open)? + open.len();
        let end = start + text[start..].rfind(&close)?;
        return Some(&text[start..end]);
    }
    let open = format!("<{tag}>\n");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(&text[start..end])
}

/// Which judge a request is for (`llm-rubric`, ...), from its system message.
pub fn judge_kind(messages: &[ChatMessage]) -> Option<&str> {
    let system = messages
        .iter()
        .find(|message| message.role == Role::System)?;
    let rest = system.content.strip_prefix(JUDGE_MARKER)?;
    Some(&rest[..rest.find(']')?])
}

fn first_object(reply: &str) -> Option<serde_json::Map<String, Value>> {
    match super::extract::find_json(reply) {
        Some(Value::Object(object)) => Some(object),
        _ => None,
    }
}

fn reason_of(object: &serde_json::Map<String, Value>) -> Option<String> {
    object
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn parse_rubric(reply: &str) -> Result<Outcome, String> {
    if let Some(object) = first_object(reply) {
        let score = match object.get("score") {
            None | Some(Value::Null) => None,
            Some(Value::Number(number)) => number.as_f64(),
            Some(Value::String(text)) => Some(
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("score {text:?} is not a number"))?,
            ),
            Some(other) => return Err(format!("score {other} is not a number")),
        };
        if let Some(score) = score
            && !(0.0..=1.0).contains(&score)
        {
            return Err(format!("score {score} is outside 0..=1"));
        }
        let pass = object.get("pass").and_then(Value::as_bool);
        let (passed, score) = match (pass, score) {
            (Some(pass), Some(score)) => (pass, score),
            (Some(pass), None) => (pass, if pass { 1.0 } else { 0.0 }),
            (None, Some(score)) => (score >= 0.5, score),
            (None, None) => return Err("the judge's JSON has neither score nor pass".to_owned()),
        };
        let reason = reason_of(&object).unwrap_or_else(|| "no reason given".to_owned());
        return Ok(Outcome {
            passed,
            score,
            reason: format!("judge: {reason}"),
        });
    }
    let first_word = reply
        .trim()
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_lowercase();
    match first_word.as_str() {
        "pass" | "yes" => Ok(Outcome::pass(format!("judge: {}", reply.trim()))),
        "fail" | "no" => Ok(Outcome::fail(format!("judge: {}", reply.trim()))),
        _ => Err(format!(
            "unparseable judge reply {}",
            super::strings::excerpt(reply)
        )),
    }
}

fn parse_label(reply: &str, labels: &[String]) -> Result<String, String> {
    let matching = |candidate: &str| {
        let candidate = candidate
            .trim()
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '.' || c == '`')
            .trim();
        labels
            .iter()
            .find(|label| label.eq_ignore_ascii_case(candidate))
            .cloned()
    };
    if let Some(object) = first_object(reply) {
        return object
            .get("label")
            .and_then(Value::as_str)
            .and_then(matching)
            .ok_or_else(|| format!("the judge's label is not one of {labels:?}"));
    }
    matching(reply)
        .ok_or_else(|| format!("unparseable judge reply {}", super::strings::excerpt(reply)))
}

fn parse_choice(reply: &str) -> Result<(char, Option<String>), String> {
    let letter = |text: &str| {
        let text = text.trim().trim_start_matches('(');
        let mut chars = text.chars();
        let first = chars.next()?.to_ascii_uppercase();
        let next = chars.next();
        (('A'..='E').contains(&first) && next.is_none_or(|c| !c.is_alphanumeric())).then_some(first)
    };
    if let Some(object) = first_object(reply) {
        let choice = object
            .get("choice")
            .and_then(Value::as_str)
            .and_then(letter)
            .ok_or("the judge's choice is not a letter from A to E")?;
        return Ok((choice, reason_of(&object)));
    }
    letter(reply)
        .map(|choice| (choice, None))
        .ok_or_else(|| format!("unparseable judge reply {}", super::strings::excerpt(reply)))
}

fn choice_meaning(choice: char) -> &'static str {
    match choice {
        'A' => "a consistent subset of the reference",
        'B' => "a consistent superset of the reference",
        'C' => "the same details as the reference",
        'D' => "disagrees with the reference",
        _ => "differs from the reference in ways that do not matter",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::graders::{Grader, GraderSpec};

    /// Answers every request with a fixed text, and remembers the requests.
    struct Scripted {
        reply: String,
        asked: Mutex<Vec<Vec<ChatMessage>>>,
    }

    #[async_trait]
    impl Judge for Scripted {
        async fn ask(&self, _: &str, messages: &[ChatMessage]) -> Result<JudgeReply, String> {
            self.asked.lock().unwrap().push(messages.to_vec());
            Ok(JudgeReply {
                text: self.reply.clone(),
                cost_usd: 0.002,
            })
        }
    }

    async fn grade(spec: Value, output: &str, reply: &str) -> crate::graders::Grade {
        let spec = GraderSpec::parse("g", &spec).unwrap();
        let grader = Grader::compile("g", &spec).unwrap();
        let judge = Scripted {
            reply: reply.to_owned(),
            asked: Mutex::new(vec![]),
        };
        let context = json!({"expected": "Paris"});
        let input = GradeInput {
            output,
            context: &context,
            latency_ms: None,
            cost_usd: 0.0,
            finish_reason: None,
        };
        let grade = grader.grade(&input, &judge).await;
        let asked = judge.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        assert!(
            asked[0][1].content.contains(output),
            "the judge sees the output"
        );
        assert!(judge_kind(&asked[0]).is_some());
        grade
    }

    #[tokio::test]
    async fn rubric_replies_are_read_leniently() {
        let spec = json!({"type": "llm-rubric", "rubric": "names the capital", "model": "mock"});
        let judged = grade(spec.clone(), "Paris", r#"{"score": 0.9, "reason": "ok"}"#).await;
        assert!(
            judged.passed && judged.score == 0.9 && judged.cost_usd == 0.002,
            "{judged:?}"
        );
        let fenced = grade_fenced(&spec).await;
        assert!(!fenced.passed && fenced.score == 0.2, "{fenced:?}");
        assert!(grade(spec.clone(), "x", "PASS - looks right").await.passed);
        assert!(!grade(spec.clone(), "x", "no.").await.passed);
        let garbage = grade(spec.clone(), "x", "Hmm, hard to say.").await;
        assert!(garbage.error.is_some() && !garbage.passed, "{garbage:?}");
        assert!(
            grade(spec.clone(), "x", r#"{"score": 7}"#)
                .await
                .error
                .is_some()
        );
        let negated = grade(
            json!({"type": "not-llm-rubric", "rubric": "r", "model": "mock"}),
            "x",
            r#"{"score": 1}"#,
        )
        .await;
        assert!(!negated.passed && negated.score == 0.0);
    }

    async fn grade_fenced(spec: &Value) -> crate::graders::Grade {
        grade(
            spec.clone(),
            "Lyon",
            "Sure:\n```json\n{\"score\": \"0.2\", \"pass\": false}\n```",
        )
        .await
    }

    #[tokio::test]
    async fn classify_and_factuality() {
        let classify = json!({"type": "llm-classify", "labels": ["positive", "negative"],
                              "passing_labels": ["positive"], "model": "mock"});
        assert!(
            grade(classify.clone(), "great", r#"{"label": "Positive"}"#)
                .await
                .passed
        );
        assert!(!grade(classify.clone(), "bad", "negative").await.passed);
        assert!(
            grade(classify.clone(), "meh", r#"{"label": "neutral"}"#)
                .await
                .error
                .is_some()
        );
        let factuality = json!({"type": "factuality", "value": "{{ expected }}", "model": "mock"});
        let same = grade(
            factuality.clone(),
            "Paris",
            r#"{"choice": "C", "reason": "same"}"#,
        )
        .await;
        assert!(same.passed && same.reason.contains("C"));
        assert!(
            !grade(factuality.clone(), "Rome", "(D) they disagree")
                .await
                .passed
        );
        assert!(
            grade(factuality.clone(), "?", "I think maybe")
                .await
                .error
                .is_some()
        );
    }

    #[test]
    fn classify_options_are_checked() {
        let spec = GraderSpec::parse(
            "graders[0]",
            &json!({"type": "llm-classify", "labels": ["a"], "passing_labels": ["b"], "model": "mock"}),
        )
        .unwrap();
        assert_eq!(
            Grader::compile("graders[0]", &spec).unwrap_err().field,
            "graders[0].passing_labels"
        );
    }

    #[test]
    fn sections_round_trip() {
        let text = format!(
            "{}{}",
            section("rubric", "be <nice>"),
            section("output", "a\n</rubric>\nb")
        );
        assert_eq!(read_section(&text, "rubric"), Some("be <nice>"));
        assert_eq!(read_section(&text, "output"), Some("a\n</rubric>\nb"));
    }
}
