//! The optimizer's side of an optimization round: the meta-prompt (a
//! template file kept in the repository, `meta_prompt.md`), and how the
//! answer is read and each proposal checked.
//!
//! A proposal is discarded (and counted) when its messages are not valid
//! chat messages, its template does not compile, it reads a variable the
//! dataset's items lack, or it repeats its parent or an earlier proposal.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ChatMessage, DatasetShape, PromptContent, Role};
use crate::templates::PromptTemplate;

/// The optimizer's system message starts with this; the mock provider
/// recognizes it (as it recognizes [`crate::providers::mock::JUDGE_MARKER`])
/// and answers by the rules in [`crate::providers::mock`].
pub const OPTIMIZER_MARKER: &str = "[assay-optimizer]";

/// The meta-prompt, rendered into the call's user message.
pub const META_PROMPT: &str = include_str!("meta_prompt.md");

/// Most failing cases shown to the optimizer, and most characters of each field.
pub const MAX_FAILURES: usize = 8;
pub const MAX_FIELD_CHARS: usize = 500;
/// Most characters of a stored rationale.
pub const MAX_RATIONALE_CHARS: usize = 2000;

/// A case the parent failed on the training part.
#[derive(Debug, Clone, Serialize)]
pub struct FailingCase {
    pub item: String,
    pub inputs: String,
    pub expected: String,
    pub output: String,
    pub reasons: String,
}

/// Cuts `text` to [`MAX_FIELD_CHARS`] characters.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The two messages of the optimizer call.
pub fn messages(
    parent: &PromptContent,
    shape: &DatasetShape,
    failures: &[FailingCase],
    count: u32,
    seed: u64,
) -> anyhow::Result<Vec<ChatMessage>> {
    let template = PromptTemplate::compile(&[ChatMessage {
        role: Role::User,
        content: META_PROMPT.to_owned(),
    }])
    .map_err(|error| anyhow::anyhow!("the meta-prompt does not compile: {error}"))?;
    let variables: Vec<&str> = shape.defined().into_iter().collect();
    let context = serde_json::json!({
        "prompt": serde_json::to_string(&parent.messages)?,
        "variables": variables,
        "count": count,
        "seed": seed,
        "failures": failures,
    });
    let mut rendered = template
        .render(&context)
        .map_err(|error| anyhow::anyhow!("rendering the meta-prompt: {error}"))?;
    let user = rendered.pop().expect("one message");
    Ok(vec![
        ChatMessage {
            role: Role::System,
            content: format!(
                "{OPTIMIZER_MARKER} You are a careful prompt engineer. Answer with JSON only."
            ),
        },
        user,
    ])
}

/// One proposal as the optimizer wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub messages: Value,
    #[serde(default)]
    pub rationale: String,
}

#[derive(Debug, Deserialize)]
struct Answer {
    candidates: Vec<Proposal>,
}

/// The proposals in the optimizer's answer (the first JSON object in it),
/// at most `count`; `Err` when there is no such object.
pub fn parse(answer: &str, count: usize) -> Result<Vec<Proposal>, String> {
    let (start, end) = (answer.find('{'), answer.rfind('}'));
    let json = match (start, end) {
        (Some(start), Some(end)) if start < end => &answer[start..=end],
        _ => return Err("the optimizer's answer holds no JSON object".to_owned()),
    };
    let parsed: Answer = serde_json::from_str(json)
        .map_err(|error| format!("the optimizer's answer is not the JSON asked for: {error}"))?;
    Ok(parsed.candidates.into_iter().take(count).collect())
}

/// Checks proposals against the parent and the dataset: each is the
/// content to commit, or why it was discarded.
pub fn check_all(
    proposals: &[Proposal],
    parent: &PromptContent,
    shape: &DatasetShape,
) -> Vec<Result<PromptContent, String>> {
    let mut seen: HashSet<String> = HashSet::from([parent.content_hash()]);
    proposals
        .iter()
        .map(|proposal| {
            let content = check(proposal, parent, shape)?;
            if !seen.insert(content.content_hash()) {
                return Err("repeats its parent or an earlier proposal".to_owned());
            }
            Ok(content)
        })
        .collect()
}

fn check(
    proposal: &Proposal,
    parent: &PromptContent,
    shape: &DatasetShape,
) -> Result<PromptContent, String> {
    let messages: Vec<ChatMessage> = serde_json::from_value(proposal.messages.clone())
        .map_err(|error| format!("messages are not chat messages: {error}"))?;
    let template = PromptTemplate::compile(&messages)
        .map_err(|error| format!("the template does not compile: {error}"))?;
    let content = PromptContent::validate(messages, parent.params.clone())
        .map_err(|error| format!("{}: {}", error.field, error.message))?;
    let defined = shape.defined();
    if let Some(missing) = template
        .variables()
        .into_iter()
        .find(|name| !defined.contains(name.as_str()))
    {
        return Err(format!(
            "the template uses variable `{missing}`, which the dataset's items lack"
        ));
    }
    Ok(content)
}

/// What the tie-break counts: white-space separated words of the messages.
pub fn tokens(content: &PromptContent) -> i64 {
    content
        .messages
        .iter()
        .map(|message| message.content.split_whitespace().count() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ModelParams;

    fn parent() -> PromptContent {
        PromptContent {
            messages: vec![
                ChatMessage {
                    role: Role::System,
                    content: "Be brief.".to_owned(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "{{ q }}".to_owned(),
                },
            ],
            params: ModelParams::default(),
        }
    }

    fn shape() -> DatasetShape {
        DatasetShape {
            variables: vec!["q".to_owned()],
            all_expected: true,
            every_item_graded: false,
        }
    }

    #[test]
    fn the_meta_prompt_renders_with_the_sections_the_mock_reads() {
        let messages = messages(&parent(), &shape(), &[], 4, 7).unwrap();
        assert!(messages[0].content.starts_with(OPTIMIZER_MARKER));
        let user = &messages[1].content;
        for section in ["<prompt>\n", "<count>\n4\n</count>", "<seed>\n7\n</seed>"] {
            assert!(user.contains(section), "{section} missing in {user}");
        }
        assert!(user.contains("{{ name }}"), "{user}");
    }

    #[test]
    fn discards_what_does_not_compile_reads_unknown_variables_or_repeats() {
        let proposal = |system: &str| Proposal {
            messages: serde_json::json!([
                {"role": "system", "content": system},
                {"role": "user", "content": "{{ q }}"},
            ]),
            rationale: String::new(),
        };
        let checked = check_all(
            &[
                proposal("Be exact."),
                proposal("Be {{ broken"),
                proposal("Hi {{ nope }}"),
                proposal("Be brief."),
                proposal("Be exact."),
            ],
            &parent(),
            &shape(),
        );
        assert!(checked[0].is_ok());
        assert!(
            checked[1]
                .as_ref()
                .unwrap_err()
                .contains("does not compile")
        );
        assert!(checked[2].as_ref().unwrap_err().contains("`nope`"));
        assert!(checked[3].as_ref().unwrap_err().contains("repeats"));
        assert!(checked[4].as_ref().unwrap_err().contains("repeats"));
        assert!(parse("no json", 3).is_err());
        assert_eq!(
            parse(
                r#"x {"candidates": [{"messages": [], "rationale": "r"}]} y"#,
                3
            )
            .unwrap()
            .len(),
            1
        );
    }
}
