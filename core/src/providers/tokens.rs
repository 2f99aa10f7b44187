//! Token estimates, for servers that report no usage and for reserving
//! tokens-per-minute capacity before a call.
//!
//! `o200k_base` (the GPT-4o tokenizer) from `tiktoken-rs`: exact for current
//! OpenAI models and within a few percent for other families, which is what
//! an estimate needs. Its tables load once, on first use.

use crate::domain::ChatMessage;

use super::Usage;

/// Tokens each message adds beyond its content (role and separators), as
/// OpenAI's chat format counts them.
const PER_MESSAGE_OVERHEAD: u32 = 4;

pub fn count(text: &str) -> u32 {
    let tokens = tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

pub fn count_messages(messages: &[ChatMessage]) -> u32 {
    messages
        .iter()
        .map(|message| count(&message.content).saturating_add(PER_MESSAGE_OVERHEAD))
        .fold(3, u32::saturating_add)
}

/// Usage estimated from the request and the answer.
pub fn estimate_usage(messages: &[ChatMessage], answer: &str) -> Usage {
    Usage {
        input_tokens: count_messages(messages),
        output_tokens: count(answer),
        cached_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn counts_tokens_like_the_gpt_4o_tokenizer() {
        assert_eq!(count("hello world"), 2);
        assert_eq!(count(""), 0);
        let messages = [ChatMessage {
            role: Role::User,
            content: "hello world".to_owned(),
        }];
        assert_eq!(count_messages(&messages), 3 + 4 + 2);
    }
}
