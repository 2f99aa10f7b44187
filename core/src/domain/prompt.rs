//! Prompt contents: chat messages (Jinja templates) and default model parameters.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{InvalidInput, limits};
use crate::templates::PromptTemplate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Model parameters a prompt version suggests and an evaluation may override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
}

impl ModelParams {
    pub fn validate(&self, field: &str) -> Result<(), InvalidInput> {
        if let Some(temperature) = self.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(InvalidInput::new(
                format!("{field}.temperature"),
                "must be between 0 and 2",
            ));
        }
        if let Some(top_p) = self.top_p
            && !(0.0..=1.0).contains(&top_p)
        {
            return Err(InvalidInput::new(
                format!("{field}.top_p"),
                "must be between 0 and 1",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(InvalidInput::new(
                format!("{field}.max_tokens"),
                "must be at least 1",
            ));
        }
        if let Some(stop) = &self.stop {
            if stop.len() > limits::MAX_STOP_SEQUENCES {
                return Err(InvalidInput::new(
                    format!("{field}.stop"),
                    format!("at most {} stop sequences", limits::MAX_STOP_SEQUENCES),
                ));
            }
            if let Some(index) = stop
                .iter()
                .position(|sequence| sequence.chars().count() > limits::MAX_STOP_CHARS)
            {
                return Err(InvalidInput::new(
                    format!("{field}.stop[{index}]"),
                    format!("must be at most {} characters", limits::MAX_STOP_CHARS),
                ));
            }
        }
        Ok(())
    }

    /// `self` with every parameter that `overrides` sets replaced.
    pub fn merged_with(&self, overrides: &ModelParams) -> ModelParams {
        ModelParams {
            temperature: overrides.temperature.or(self.temperature),
            top_p: overrides.top_p.or(self.top_p),
            max_tokens: overrides.max_tokens.or(self.max_tokens),
            seed: overrides.seed.or(self.seed),
            stop: overrides.stop.clone().or_else(|| self.stop.clone()),
        }
    }
}

/// The content of a prompt version: what its hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptContent {
    pub messages: Vec<ChatMessage>,
    pub params: ModelParams,
}

impl PromptContent {
    /// Checks the messages (at least one, at most 100, each a valid template)
    /// and the parameters.
    pub fn validate(messages: Vec<ChatMessage>, params: ModelParams) -> Result<Self, InvalidInput> {
        if messages.is_empty() {
            return Err(InvalidInput::new(
                "messages",
                "at least one message is required",
            ));
        }
        if messages.len() > limits::MAX_MESSAGES {
            return Err(InvalidInput::new(
                "messages",
                format!("at most {} messages", limits::MAX_MESSAGES),
            ));
        }
        if let Some(index) = messages
            .iter()
            .position(|message| message.content.chars().count() > limits::MAX_MESSAGE_CHARS)
        {
            return Err(InvalidInput::new(
                format!("messages[{index}].content"),
                format!("must be at most {} characters", limits::MAX_MESSAGE_CHARS),
            ));
        }
        if let Err(error) = PromptTemplate::compile(&messages) {
            return Err(InvalidInput::new(
                format!("messages[{}].content", error.index()),
                error.to_string(),
            ));
        }
        params.validate("params")?;
        Ok(Self { messages, params })
    }

    /// SHA-256 (hex) of the canonical JSON of messages and parameters: equal
    /// contents have equal hashes, whatever their commit message.
    pub fn content_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("prompt content serializes");
        hex::encode(Sha256::digest(canonical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: content.to_owned(),
        }
    }

    #[test]
    fn hash_depends_on_content_only() {
        let a =
            PromptContent::validate(vec![user("Hi {{ name }}")], ModelParams::default()).unwrap();
        let b =
            PromptContent::validate(vec![user("Hi {{ name }}")], ModelParams::default()).unwrap();
        let c = PromptContent::validate(vec![user("Hello {{ name }}")], ModelParams::default())
            .unwrap();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), c.content_hash());
        assert_eq!(a.content_hash().len(), 64);
    }

    #[test]
    fn rejects_empty_messages_bad_templates_and_params() {
        assert_eq!(
            PromptContent::validate(vec![], ModelParams::default())
                .unwrap_err()
                .field,
            "messages"
        );
        assert_eq!(
            PromptContent::validate(vec![user("ok"), user("{% if %}")], ModelParams::default())
                .unwrap_err()
                .field,
            "messages[1].content"
        );
        let params = ModelParams {
            temperature: Some(3.0),
            ..ModelParams::default()
        };
        assert_eq!(
            PromptContent::validate(vec![user("ok")], params)
                .unwrap_err()
                .field,
            "params.temperature"
        );
    }

    #[test]
    fn overrides_win() {
        let base = ModelParams {
            temperature: Some(0.7),
            max_tokens: Some(100),
            ..ModelParams::default()
        };
        let merged = base.merged_with(&ModelParams {
            temperature: Some(0.0),
            ..ModelParams::default()
        });
        assert_eq!(merged.temperature, Some(0.0));
        assert_eq!(merged.max_tokens, Some(100));
    }
}
