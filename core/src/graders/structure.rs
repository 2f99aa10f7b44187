//! Structure graders: is-json, contains-json, json-schema, json-path, is-xml.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::extract::{self as json, CompiledPath, CompiledSchema};
use super::strings::excerpt;
use super::{Check, GradeInput, GraderType, LocalCheck, NoOptions, Outcome, Pattern, Text};
use crate::domain::InvalidInput;

/// `is-json`: the output is one JSON document (a single fenced block counts).
pub(super) struct IsJson;

impl GraderType for IsJson {
    const NAME: &'static str = "is-json";
    type Options = NoOptions;

    fn compile(_: &str, _: &NoOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(OutputCheck(is_json)))
    }
}

/// `contains-json`: a JSON object or array is embedded in the output.
pub(super) struct ContainsJson;

impl GraderType for ContainsJson {
    const NAME: &'static str = "contains-json";
    type Options = NoOptions;

    fn compile(_: &str, _: &NoOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(OutputCheck(contains_json)))
    }
}

/// `is-xml`: the output is well-formed XML.
pub(super) struct IsXml;

impl GraderType for IsXml {
    const NAME: &'static str = "is-xml";
    type Options = NoOptions;

    fn compile(_: &str, _: &NoOptions) -> Result<Check, InvalidInput> {
        Ok(Check::local(OutputCheck(is_xml)))
    }
}

/// A check of the output alone, without options.
#[derive(Debug)]
struct OutputCheck(fn(&str) -> Outcome);

impl LocalCheck for OutputCheck {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok((self.0)(input.output))
    }
}

/// `json-schema`: the output's JSON validates against `schema`.
pub(super) struct JsonSchema;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonSchemaOptions {
    schema: Value,
}

impl GraderType for JsonSchema {
    const NAME: &'static str = "json-schema";
    type Options = JsonSchemaOptions;

    fn compile(field: &str, options: &JsonSchemaOptions) -> Result<Check, InvalidInput> {
        let schema = json::compile_schema(&options.schema).map_err(|error| {
            InvalidInput::new(
                format!("{field}.schema"),
                format!("invalid JSON schema: {error}"),
            )
        })?;
        Ok(Check::local(JsonSchemaCheck(schema)))
    }
}

#[derive(Debug)]
struct JsonSchemaCheck(CompiledSchema);

impl LocalCheck for JsonSchemaCheck {
    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        Ok(json_schema(input.output, &self.0))
    }
}

/// `json-path`: `path` selects a value (equal to `equals`, or matching the
/// regex `matches`, when given).
pub(super) struct JsonPath;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonPathOptions {
    path: String,
    #[serde(default)]
    equals: Option<Value>,
    #[serde(default)]
    matches: Option<String>,
}

impl GraderType for JsonPath {
    const NAME: &'static str = "json-path";
    type Options = JsonPathOptions;

    fn compile(field: &str, options: &JsonPathOptions) -> Result<Check, InvalidInput> {
        if options.equals.is_some() && options.matches.is_some() {
            return Err(InvalidInput::new(
                field,
                "give `equals` or `matches`, not both",
            ));
        }
        Ok(Check::local(JsonPathCheck {
            path: json::compile_path(&options.path).map_err(|error| {
                InvalidInput::new(
                    format!("{field}.path"),
                    format!("invalid JSON path: {error}"),
                )
            })?,
            source: options.path.clone(),
            equals: options
                .equals
                .as_ref()
                .map(|value| Expected::compile(format!("{field}.equals"), value))
                .transpose()?,
            matches: options
                .matches
                .as_deref()
                .map(|pattern| Pattern::compile(format!("{field}.matches"), pattern))
                .transpose()?,
        }))
    }
}

#[derive(Debug)]
struct JsonPathCheck {
    path: CompiledPath,
    source: String,
    equals: Option<Expected>,
    matches: Option<Pattern>,
}

impl LocalCheck for JsonPathCheck {
    fn variables(&self) -> BTreeSet<String> {
        let mut variables = self
            .equals
            .as_ref()
            .map(Expected::variables)
            .unwrap_or_default();
        variables.extend(
            self.matches
                .as_ref()
                .map(Pattern::variables)
                .unwrap_or_default(),
        );
        variables
    }

    fn grade(&self, input: &GradeInput<'_>, _: Option<f64>) -> Result<Outcome, String> {
        let equals = self
            .equals
            .as_ref()
            .map(|expected| expected.resolve(input.context))
            .transpose()?;
        let matches = self
            .matches
            .as_ref()
            .map(|pattern| pattern.resolve(input.context))
            .transpose()?;
        Ok(json_path(
            input.output,
            &self.path,
            &self.source,
            equals.as_deref(),
            matches.as_deref(),
        ))
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

    fn resolve(&self, context: &Value) -> Result<Cow<'_, Value>, String> {
        match self {
            Expected::Fixed(value) => Ok(Cow::Borrowed(value)),
            Expected::Templated(text) => Ok(Cow::Owned(Value::String(text.render(context)?))),
        }
    }
}

pub(super) fn is_json(output: &str) -> Outcome {
    match json::parse_json_document(output) {
        Ok(_) => Outcome::pass("output is valid JSON"),
        Err(reason) => Outcome::fail(format!("output is not JSON: {reason}")),
    }
}

pub(super) fn contains_json(output: &str) -> Outcome {
    match json::find_json(output) {
        Some(_) => Outcome::pass("output contains a JSON object or array"),
        None => Outcome::fail("output contains no JSON object or array"),
    }
}

/// The JSON the output holds: the whole output, else the first embedded object or array.
fn json_in(output: &str) -> Option<Value> {
    json::parse_json_document(output)
        .ok()
        .or_else(|| json::find_json(output))
}

pub(super) fn json_schema(output: &str, schema: &CompiledSchema) -> Outcome {
    let Some(document) = json_in(output) else {
        return Outcome::fail("output contains no JSON to validate");
    };
    match schema.validate(&document) {
        Ok(()) => Outcome::pass("output JSON matches the schema"),
        Err(errors) => Outcome::fail(format!(
            "output JSON does not match the schema: {}",
            errors.join("; ")
        )),
    }
}

/// Passes when the path selects a value (that equals `equals`, or whose text
/// matches `matches`, when given).
///
/// Equality is JSON equality, except that numbers compare as numbers: a
/// selected number equals a number of the same value (`595` and `595.0`) and
/// a string that reads as that number (`"595"`, which is what a templated
/// `"equals": "{{ expected }}"` renders to). A selected string is compared
/// as a string: `"595"` does not equal `595.0`. A failure names both types,
/// so a type mismatch is not hidden behind two texts that look alike.
pub(super) fn json_path(
    output: &str,
    path: &CompiledPath,
    source: &str,
    equals: Option<&Value>,
    matches: Option<&regex::Regex>,
) -> Outcome {
    let Some(document) = json_in(output) else {
        return Outcome::fail("output contains no JSON");
    };
    let nodes = path.query(&document);
    let Some(first) = nodes.first() else {
        return Outcome::fail(format!("{source} selects nothing"));
    };
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match (equals, matches) {
        (Some(expected), _) => match nodes.iter().find(|node| same_value(node, expected)) {
            Some(node) if *node == expected => {
                Outcome::pass(format!("{source} equals {}", json_excerpt(expected)))
            }
            Some(node) => Outcome::pass(format!(
                "{source} = {} equals {} as a number",
                json_excerpt(node),
                typed(expected)
            )),
            None => Outcome::fail(format!(
                "{source} is {}, expected {}{}",
                typed(first),
                typed(expected),
                mismatch_hint(first, expected)
            )),
        },
        (None, Some(pattern)) => match nodes.iter().find(|node| pattern.is_match(&text(node))) {
            Some(node) => Outcome::pass(format!(
                "{source} = {} matches /{}/",
                excerpt(&text(node)),
                pattern.as_str()
            )),
            None => Outcome::fail(format!(
                "{source} = {} does not match /{}/",
                excerpt(&text(first)),
                pattern.as_str()
            )),
        },
        (None, None) => Outcome::pass(format!("{source} selects {}", excerpt(&text(first)))),
    }
}

/// `node == expected`, with numbers compared as numbers (see [`json_path`]).
fn same_value(node: &Value, expected: &Value) -> bool {
    if node == expected {
        return true;
    }
    match (node, expected) {
        (Value::Number(node), Value::Number(expected)) => same_number(node, expected),
        (Value::Number(node), Value::String(text)) => {
            number_in(text).is_some_and(|expected| same_number(node, &expected))
        }
        _ => false,
    }
}

/// The number a string reads as: JSON number syntax, outer white space aside.
fn number_in(text: &str) -> Option<serde_json::Number> {
    serde_json::from_str(text.trim()).ok()
}

/// Integers exactly (beyond 2^53 too), anything else as f64.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a == b;
    }
    matches!((a.as_f64(), b.as_f64()), (Some(a), Some(b)) if a == b)
}

/// A value as JSON (strings quoted) with its type: `"595" (a string)`.
fn typed(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{} ({kind})", json_excerpt(value))
}

/// A value as JSON text (strings quoted once), cut like [`excerpt`].
fn json_excerpt(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 80 {
        text
    } else {
        let head: String = text.chars().take(80).collect();
        format!("{head}…")
    }
}

/// Why two values that may look alike differ.
fn mismatch_hint(node: &Value, expected: &Value) -> &'static str {
    match (node, expected) {
        (Value::Number(_), Value::String(text)) if number_in(text).is_none() => {
            "; the expected text is not a number"
        }
        (Value::String(text), Value::Number(_)) if number_in(text).is_some() => {
            "; a string is compared as a string, not as a number"
        }
        (Value::String(text), Value::String(expected)) if text.trim() == expected.trim() => {
            "; they differ in outer white space"
        }
        _ => "",
    }
}

pub(super) fn is_xml(output: &str) -> Outcome {
    match json::check_xml(output) {
        Ok(root) => Outcome::pass(format!("output is XML with root <{root}>")),
        Err(reason) => Outcome::fail(format!("output is not XML: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_graders() {
        assert!(is_json(r#"{"a": [1, 2]}"#).passed);
        assert!(is_json("```json\n{\"a\": 1}\n```").passed);
        assert!(!is_json("").passed);
        assert!(!is_json("{\"a\": }").passed);
        assert!(!is_json("Sure! {\"a\": 1}").passed);
        assert!(contains_json("Sure! {\"a\": 1} Hope it helps").passed);
        assert!(!contains_json("no json {here").passed);
        assert!(is_json(r#"{"city": "東京"}"#).passed);
        let long = "word ".repeat(40_000) + "[1, 2, 3]";
        assert!(contains_json(&long).passed);
    }

    #[test]
    fn schema_and_path() {
        let schema = json::compile_schema(&json!({"type": "object", "required": ["answer"],
            "properties": {"answer": {"type": "integer"}}}))
        .unwrap();
        assert!(json_schema(r#"{"answer": 42}"#, &schema).passed);
        assert!(json_schema(r#"The answer: {"answer": 42}"#, &schema).passed);
        let wrong = json_schema(r#"{"answer": "42"}"#, &schema);
        assert!(
            !wrong.passed && wrong.reason.contains("answer"),
            "{}",
            wrong.reason
        );
        assert!(!json_schema("not json", &schema).passed);

        let path = json::compile_path("$.answer").unwrap();
        assert!(
            json_path(
                r#"{"answer": 42}"#,
                &path,
                "$.answer",
                Some(&json!(42)),
                None
            )
            .passed
        );
        assert!(
            !json_path(
                r#"{"answer": 41}"#,
                &path,
                "$.answer",
                Some(&json!(42)),
                None
            )
            .passed
        );
        // Numbers compare as numbers; strings as strings; failures name the types.
        let equals = |output: &str, expected: Value| {
            json_path(output, &path, "$.answer", Some(&expected), None)
        };
        assert!(equals(r#"{"answer": 595}"#, json!("595")).passed);
        assert!(equals(r#"{"answer": 595}"#, json!(" 595 ")).passed);
        assert!(equals(r#"{"answer": 595.0}"#, json!("595")).passed);
        assert!(equals(r#"{"answer": 595}"#, json!(595.0)).passed);
        assert!(equals(r#"{"answer": 9007199254740993}"#, json!("9007199254740993")).passed);
        assert!(!equals(r#"{"answer": 9007199254740993}"#, json!("9007199254740992")).passed);
        assert!(equals(r#"{"answer": "595"}"#, json!("595")).passed);
        assert!(!equals(r#"{"answer": [1, 595]}"#, json!("595")).passed);
        let passed = equals(r#"{"answer": 595}"#, json!("595"));
        assert_eq!(
            passed.reason,
            "$.answer = 595 equals \"595\" (a string) as a number"
        );
        let failed = equals(r#"{"answer": 596}"#, json!("595"));
        assert!(!failed.passed);
        assert_eq!(
            failed.reason,
            "$.answer is 596 (a number), expected \"595\" (a string)"
        );
        let failed = equals(r#"{"answer": "595"}"#, json!(595));
        assert!(!failed.passed);
        assert_eq!(
            failed.reason,
            "$.answer is \"595\" (a string), expected 595 (a number); a string is compared as a string, not as a number"
        );
        let failed = equals(r#"{"answer": 595}"#, json!("five"));
        assert!(
            failed.reason.ends_with("the expected text is not a number"),
            "{}",
            failed.reason
        );
        assert!(!equals(r#"{"answer": "595"}"#, json!("595.0")).passed);
        assert!(!equals(r#"{"answer": true}"#, json!("true")).passed);

        let pattern = regex::Regex::new("^4").unwrap();
        assert!(json_path(r#"{"answer": 42}"#, &path, "$.answer", None, Some(&pattern)).passed);
        assert!(!json_path(r#"{"other": 1}"#, &path, "$.answer", None, None).passed);
        assert!(!json_path("", &path, "$.answer", None, None).passed);
    }

    #[test]
    fn xml() {
        assert!(is_xml("<a><b>日本</b></a>").passed);
        assert!(!is_xml("<a><b></a>").passed);
        assert!(!is_xml("").passed);
        assert!(!is_xml("plain text").passed);
    }
}
