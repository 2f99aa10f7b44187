//! Finding and checking structure in model outputs: a JSON document (bare or
//! in a fenced code block), JSON embedded in prose, JSON Schema, JSONPath
//! (RFC 9535) and XML well-formedness.
//!
//! jsonschema is built without its HTTP resolver: a schema that points at a
//! remote `$ref` fails to compile instead of making a network call.

use serde_json::Value;

/// Start positions tried when looking for JSON inside prose: bounds the work
/// on pathological outputs (thousands of `{`) to linear-ish time.
const MAX_JSON_STARTS: usize = 1_000;

/// The body of an output that is exactly one fenced code block, else the output.
fn unfenced(output: &str) -> &str {
    let trimmed = output.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return trimmed;
    };
    // Drop the info string (```json) up to the first newline.
    match body.split_once('\n') {
        Some((info, body)) if !info.contains('`') => body.trim(),
        _ => trimmed,
    }
}

/// The whole output as one JSON document (a single fenced block is accepted).
pub(crate) fn parse_json_document(output: &str) -> Result<Value, String> {
    let text = unfenced(output);
    if text.is_empty() {
        return Err("the output is empty".to_owned());
    }
    serde_json::from_str(text).map_err(|error| error.to_string())
}

/// The first JSON object or array embedded anywhere in `output`.
pub(crate) fn find_json(output: &str) -> Option<Value> {
    output
        .char_indices()
        .filter(|(_, c)| *c == '{' || *c == '[')
        .take(MAX_JSON_STARTS)
        .find_map(|(start, _)| {
            let mut values =
                serde_json::Deserializer::from_str(&output[start..]).into_iter::<Value>();
            match values.next() {
                Some(Ok(value @ (Value::Object(_) | Value::Array(_)))) => Some(value),
                _ => None,
            }
        })
}

/// A compiled JSON Schema.
pub(crate) struct CompiledSchema(jsonschema::Validator);

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema")
    }
}

pub(crate) fn compile_schema(schema: &Value) -> Result<CompiledSchema, String> {
    jsonschema::validator_for(schema)
        .map(CompiledSchema)
        .map_err(|error| error.to_string())
}

impl CompiledSchema {
    /// Ok, or up to five messages naming where the value is wrong.
    pub(crate) fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .0
            .iter_errors(value)
            .take(5)
            .map(|error| {
                let path = error.instance_path().to_string();
                let path = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("at {path}: {error}")
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A compiled JSONPath query.
#[derive(Debug)]
pub(crate) struct CompiledPath(serde_json_path::JsonPath);

pub(crate) fn compile_path(path: &str) -> Result<CompiledPath, String> {
    serde_json_path::JsonPath::parse(path)
        .map(CompiledPath)
        .map_err(|error| error.to_string())
}

impl CompiledPath {
    /// The nodes the path selects.
    pub(crate) fn query(&self, value: &Value) -> Vec<Value> {
        self.0.query(value).all().into_iter().cloned().collect()
    }
}

/// The root element's name when the output is a well-formed XML document.
pub(crate) fn check_xml(output: &str) -> Result<String, String> {
    let text = unfenced(output);
    if text.is_empty() {
        return Err("the output is empty".to_owned());
    }
    roxmltree::Document::parse(text)
        .map(|document| document.root_element().tag_name().name().to_owned())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documents_bare_and_fenced() {
        assert_eq!(
            parse_json_document(" {\"a\": 1} ").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            parse_json_document("```json\n[1, 2]\n```").unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            parse_json_document("```\n\"東京\"\n```").unwrap(),
            json!("東京")
        );
        assert!(parse_json_document("").is_err());
        assert!(parse_json_document("Sure: {\"a\": 1}").is_err());
    }

    #[test]
    fn json_inside_prose() {
        assert_eq!(
            find_json("Sure! {\"a\": 1} Hope it helps"),
            Some(json!({"a": 1}))
        );
        assert_eq!(find_json("set {x} then [1, 2]"), Some(json!([1, 2])));
        assert_eq!(find_json("no json here"), None);
        assert_eq!(find_json(""), None);
        let long = "text ".repeat(40_000) + "{\"end\": true}";
        assert_eq!(find_json(&long), Some(json!({"end": true})));
        let started = std::time::Instant::now();
        assert_eq!(find_json(&"{".repeat(100_000)), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn schemas() {
        let schema = compile_schema(
            &json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        )
        .unwrap();
        assert!(schema.validate(&json!({"n": 1})).is_ok());
        let errors = schema.validate(&json!({"n": "x"})).unwrap_err();
        assert!(errors[0].contains("/n"), "{errors:?}");
        assert!(compile_schema(&json!({"type": 12})).is_err());
        assert!(compile_schema(&json!({"$ref": "http://example.invalid/schema.json"})).is_err());
    }

    #[test]
    fn paths_and_xml() {
        let path = compile_path("$.items[*].name").unwrap();
        assert_eq!(
            path.query(&json!({"items": [{"name": "a"}, {"name": "b"}]})),
            vec![json!("a"), json!("b")]
        );
        assert!(path.query(&json!({})).is_empty());
        assert!(compile_path("$[").is_err());
        assert_eq!(check_xml("<a><b>日本</b></a>").unwrap(), "a");
        assert_eq!(check_xml("```xml\n<r/>\n```").unwrap(), "r");
        assert!(check_xml("<a><b></a>").is_err());
        assert!(check_xml("").is_err());
        assert!(check_xml("plain").is_err());
    }
}
