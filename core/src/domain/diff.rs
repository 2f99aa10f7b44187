//! What changed between two prompt versions.
//!
//! Messages are matched by position: position `i` of both versions with the
//! same role is one message, `unchanged` or `changed` (with a unified line
//! diff of its template, made by the `similar` crate); a position whose role
//! differs is the old message `removed` and the new one `added`; positions
//! only one side has are `added` or `removed`. `params` are compared as JSON:
//! every path (a JSON pointer) whose value was added, removed or changed.

use serde::Serialize;
use serde_json::Value;
use similar::TextDiff;

use super::{ChatMessage, Role};

/// How one message position changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageDiff {
    /// Position in the version it comes from (`to` for added, `from` otherwise).
    pub index: usize,
    pub status: MessageStatus,
    pub role: Role,
    /// Unified diff of the template (`changed` only); an added message is all
    /// `+` lines and a removed one all `-` lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MessageStatus {
    Unchanged,
    Changed,
    Added,
    Removed,
}

/// One changed path of `params`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamChange {
    /// JSON pointer, e.g. `/temperature`.
    pub path: String,
    pub op: ParamOp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ParamOp {
    Added,
    Removed,
    Changed,
}

/// A unified line diff of two texts, with 3 lines of context and no
/// "No newline at end of file" markers (templates rarely end in one).
pub fn unified(from: &str, to: &str) -> String {
    TextDiff::from_lines(from, to)
        .unified_diff()
        .context_radius(3)
        .missing_newline_hint(false)
        .to_string()
}

/// Message by message, in the order of positions.
pub fn diff_messages(from: &[ChatMessage], to: &[ChatMessage]) -> Vec<MessageDiff> {
    let mut diffs = Vec::new();
    for index in 0..from.len().max(to.len()) {
        match (from.get(index), to.get(index)) {
            (Some(old), Some(new)) if old.role == new.role => {
                let changed = old.content != new.content;
                diffs.push(MessageDiff {
                    index,
                    status: if changed {
                        MessageStatus::Changed
                    } else {
                        MessageStatus::Unchanged
                    },
                    role: new.role,
                    diff: changed.then(|| unified(&old.content, &new.content)),
                });
            }
            (old, new) => {
                if let Some(old) = old {
                    diffs.push(MessageDiff {
                        index,
                        status: MessageStatus::Removed,
                        role: old.role,
                        diff: Some(unified(&old.content, "")),
                    });
                }
                if let Some(new) = new {
                    diffs.push(MessageDiff {
                        index,
                        status: MessageStatus::Added,
                        role: new.role,
                        diff: Some(unified("", &new.content)),
                    });
                }
            }
        }
    }
    diffs
}

/// Paths of `from` and `to` (JSON) that differ; objects are compared key by
/// key (sorted), anything else as a whole.
pub fn diff_json(from: &Value, to: &Value) -> Vec<ParamChange> {
    let mut changes = Vec::new();
    walk("", from, to, &mut changes);
    changes
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(path: &str, from: &Value, to: &Value, changes: &mut Vec<ParamChange>) {
    match (from, to) {
        (Value::Object(old), Value::Object(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let child = format!("{path}/{}", escape(key));
                match (old.get(key), new.get(key)) {
                    (Some(a), Some(b)) => walk(&child, a, b, changes),
                    (Some(a), None) => changes.push(ParamChange {
                        path: child,
                        op: ParamOp::Removed,
                        from: Some(a.clone()),
                        to: None,
                    }),
                    (None, Some(b)) => changes.push(ParamChange {
                        path: child,
                        op: ParamOp::Added,
                        from: None,
                        to: Some(b.clone()),
                    }),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => changes.push(ParamChange {
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
            op: ParamOp::Changed,
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.to_owned(),
        }
    }

    #[test]
    fn changed_added_and_removed_messages() {
        let from = [
            message(Role::System, "You are terse.\nAnswer in English."),
            message(Role::User, "{{ q }}"),
        ];
        let to = [
            message(Role::System, "You are terse.\nAnswer in French."),
            message(Role::Assistant, "Sure."),
            message(Role::User, "{{ q }}"),
        ];
        let diffs = diff_messages(&from, &to);
        assert_eq!(diffs.len(), 4);
        assert_eq!(diffs[0].status, MessageStatus::Changed);
        assert_eq!(
            diffs[0].diff.as_deref(),
            Some("@@ -1,2 +1,2 @@\n You are terse.\n-Answer in English.\n+Answer in French.\n")
        );
        assert_eq!(
            (diffs[1].status, diffs[1].role, diffs[1].index),
            (MessageStatus::Removed, Role::User, 1)
        );
        assert_eq!(diffs[1].diff.as_deref(), Some("@@ -1 +0,0 @@\n-{{ q }}\n"));
        assert_eq!(
            (diffs[2].status, diffs[2].role),
            (MessageStatus::Added, Role::Assistant)
        );
        assert_eq!(
            (diffs[3].status, diffs[3].role, diffs[3].index),
            (MessageStatus::Added, Role::User, 2)
        );
    }

    #[test]
    fn params_by_path() {
        let changes = diff_json(
            &json!({"temperature": 0.2, "max_tokens": 100, "stop": ["a"]}),
            &json!({"temperature": 0.7, "seed": 1, "stop": ["a"]}),
        );
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!([
                {"path": "/max_tokens", "op": "removed", "from": 100},
                {"path": "/seed", "op": "added", "to": 1},
                {"path": "/temperature", "op": "changed", "from": 0.2, "to": 0.7},
            ])
        );
        assert!(diff_json(&json!({"a": 1}), &json!({"a": 1})).is_empty());
    }
}
