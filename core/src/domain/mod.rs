//! Validated inputs ("parse, don't validate"): a value of these types has
//! passed every check that can be made without a database.

pub mod csv_items;
mod dataset;
pub mod diff;
mod evaluation;
mod prompt;

pub use dataset::{
    ContentHasher, DatasetItemInput, DatasetSummary, ItemChecker, MAX_ITEM_GRADERS, ParsedDataset,
    ParsedItem, parse_jsonl_items, parse_jsonl_line, validate_items, validate_items_with,
};
pub use evaluation::{
    DatasetShape, EvaluationRequest, MAX_REPEAT, Priority, PromptChoice, validate_graders,
    validate_threshold,
};
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
    if name.chars().count() > 200 {
        return Err(InvalidInput::new(field, "must be at most 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}
