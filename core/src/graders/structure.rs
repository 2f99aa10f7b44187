//! Structure graders: is-json, contains-json, json-schema, json-path, is-xml.

use serde_json::Value;

use super::Outcome;
use super::extract::{self as json, CompiledPath, CompiledSchema};
use super::strings::excerpt;

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
        (Some(expected), _) => {
            if nodes.contains(&expected) {
                Outcome::pass(format!("{source} equals {expected}"))
            } else {
                Outcome::fail(format!(
                    "{source} is {}, expected {expected}",
                    excerpt(&text(first))
                ))
            }
        }
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
