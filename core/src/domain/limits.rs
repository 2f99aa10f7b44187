//! The size limits of what a tenant sends, in one place (the README's
//! "Limits" table lists them). Each is enforced where the input is parsed,
//! with a 422 that names the field; none needs more work to check than the
//! input's own size.

/// Names of prompts, datasets, branches, labels (characters).
pub const MAX_NAME_CHARS: usize = 200;
/// Descriptions (characters).
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Commit messages of prompt versions (characters).
pub const MAX_COMMIT_MESSAGE_CHARS: usize = 10_000;
/// Messages of one prompt.
pub const MAX_MESSAGES: usize = 100;
/// One message's content, a template (characters).
pub const MAX_MESSAGE_CHARS: usize = 100_000;
/// Stop sequences of one request, and the length of each (characters).
pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_STOP_CHARS: usize = 200;
/// Models of one evaluation.
pub const MAX_MODELS: usize = 10;
/// Graders of one evaluation.
pub const MAX_GRADERS: usize = 50;
/// One grader as JSON: its value, rubric, pattern, schema and every other option (bytes).
pub const MAX_GRADER_BYTES: usize = 64 * 1024;
/// One dataset item as JSON: vars, expected and its graders (bytes); also
/// the longest JSON Lines line and CSV record.
pub const MAX_ITEM_BYTES: usize = 1 << 20;
/// Item ids (characters).
pub const MAX_ITEM_ID_CHARS: usize = 200;

/// Whether `value` serialized as JSON takes more than `limit` bytes. Stops
/// serializing once past the limit, so a huge value costs no more than a
/// small one.
pub fn json_exceeds(value: &impl serde::Serialize, limit: usize) -> bool {
    struct Counter {
        left: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(bytes.len())
                .ok_or_else(|| std::io::Error::other("over the limit"))?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Counter { left: limit }, value).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_exceeds_counts_the_serialized_bytes() {
        let value = serde_json::json!({"a": "xyz"}); // {"a":"xyz"}: 11 bytes
        assert!(!json_exceeds(&value, 11));
        assert!(json_exceeds(&value, 10));
        assert!(json_exceeds(&"x".repeat(10_000_000), 1_000));
    }
}
