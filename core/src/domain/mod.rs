//! Validated inputs ("parse, don't validate"): a value of these types has
//! passed every check that can be made without a database.

pub mod csv_items;
mod dataset;
pub mod diff;
mod evaluation;
pub mod limits;
mod prompt;

pub use dataset::{
    ContentHasher, DatasetItemInput, DatasetSummary, ItemChecker, MAX_ITEM_GRADERS, ParsedDataset,
    ParsedItem, parse_jsonl_items, parse_jsonl_line, validate_items, validate_items_with,
};
pub use evaluation::{
    DatasetShape, EvaluationRequest, MAX_REPEAT, Priority, PromptChoice, validate_graders,
    validate_threshold,
};
pub use limits::{MAX_ITEM_BYTES, json_exceeds};
pub use prompt::{ChatMessage, ModelParams, PromptContent, Role};

/// A rejected input: which field, and why. The API renders these as RFC 9457
/// problem details with a 422 status.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    /// JSON-pointer-like path to the offending field, e.g. `graders[1].pattern`.
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks a resource name: 1 to 200 characters, no control characters.
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    if name.trim().is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if name.chars().count() > limits::MAX_NAME_CHARS {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {} characters", limits::MAX_NAME_CHARS),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks an optional description: at most 2,000 characters, no NUL.
pub fn validate_description(field: &str, description: Option<&str>) -> Result<(), InvalidInput> {
    let Some(description) = description else {
        return Ok(());
    };
    if description.chars().count() > limits::MAX_DESCRIPTION_CHARS {
        return Err(InvalidInput::new(
            field,
            format!(
                "must be at most {} characters",
                limits::MAX_DESCRIPTION_CHARS
            ),
        ));
    }
    if description.contains('\0') {
        return Err(nul_in(field.to_owned()));
    }
    Ok(())
}

/// Refuses a JSON value that holds a NUL character (`\u0000`) in any string
/// or key: PostgreSQL can store neither in `text` nor in `jsonb`, so it would
/// fail the write. The error names the field, `base` prefixed
/// (`messages[0].content`, `items[3].vars.question`).
pub fn reject_nul(base: &str, value: &serde_json::Value) -> Result<(), InvalidInput> {
    match find_nul(value) {
        None => Ok(()),
        Some(path) => Err(nul_in(field_path(base, path))),
    }
}

/// [`reject_nul`] over the entries of an object.
pub fn reject_nul_in_object(
    base: &str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), InvalidInput> {
    match find_nul_in_object(map) {
        None => Ok(()),
        Some(path) => Err(nul_in(field_path(base, path))),
    }
}

/// Whether any string or key of `value` holds a NUL character.
pub fn holds_nul(value: &serde_json::Value) -> bool {
    find_nul(value).is_some()
}

/// One step of the way to a value inside JSON.
enum Step<'v> {
    Index(usize),
    Key(&'v str),
}

/// The way to the first NUL character in `value`, innermost step first;
/// built only when one is found, so a clean value costs no allocation.
fn find_nul(value: &serde_json::Value) -> Option<Vec<Step<'_>>> {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0').then(Vec::new),
        Value::Array(values) => values.iter().enumerate().find_map(|(index, value)| {
            let mut path = find_nul(value)?;
            path.push(Step::Index(index));
            Some(path)
        }),
        Value::Object(map) => find_nul_in_object(map),
        _ => None,
    }
}

fn find_nul_in_object(map: &serde_json::Map<String, serde_json::Value>) -> Option<Vec<Step<'_>>> {
    map.iter().find_map(|(key, value)| {
        let mut path = if key.contains('\0') {
            Vec::new()
        } else {
            find_nul(value)?
        };
        path.push(Step::Key(key));
        Some(path)
    })
}

/// `base` and the steps of `path` (innermost first) as a field name; a NUL
/// in a key is written `\u0000`.
fn field_path(base: &str, path: Vec<Step<'_>>) -> String {
    let mut field = base.to_owned();
    for step in path.into_iter().rev() {
        match step {
            Step::Index(index) => field.push_str(&format!("[{index}]")),
            Step::Key(key) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&key.replace('\0', "\\u0000"));
            }
        }
    }
    field
}

pub(crate) fn nul_in(field: String) -> InvalidInput {
    InvalidInput::new(field, "must not contain NUL characters (\\u0000)")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_characters_are_refused_with_the_field_that_holds_them() {
        let field = |base: &str, value| reject_nul(base, &value).unwrap_err().field;
        assert_eq!(
            field(
                "",
                json!({"messages": [{"content": "ok"}, {"content": "a\u{0}"}]})
            ),
            "messages[1].content"
        );
        assert_eq!(
            field("items[3]", json!({"vars": {"q\u{0}": 1}})),
            "items[3].vars.q\\u0000"
        );
        assert_eq!(field("expected", json!("\u{0}")), "expected");
        assert!(reject_nul("", &json!({"a": ["b", {"c": 1.5}], "d": null})).is_ok());
        assert_eq!(
            validate_description("description", Some("a\u{0}b"))
                .unwrap_err()
                .field,
            "description"
        );
        assert!(validate_description("description", Some(&"x".repeat(2001))).is_err());
        assert!(validate_description("description", None).is_ok());
    }
}
