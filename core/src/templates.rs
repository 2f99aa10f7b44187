//! Prompt templates: chat messages whose contents are Jinja templates.
//!
//! Rendering is strict: a variable that the item lacks is an error naming it,
//! never an empty string sent to a model.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use crate::domain::ChatMessage;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("message {index}: invalid template: {detail}")]
    Syntax { index: usize, detail: String },
    #[error("message {index}: {detail}")]
    Render { index: usize, detail: String },
}

/// A compiled set of chat messages, rendered once per dataset item.
pub struct PromptTemplate {
    environment: Environment<'static>,
    roles: Vec<crate::domain::Role>,
}

impl std::fmt::Debug for PromptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTemplate")
            .field("messages", &self.roles.len())
            .finish()
    }
}

fn strict_environment() -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are not HTML: never escape what the user wrote.
    environment.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    environment.set_keep_trailing_newline(true);
    environment
}

impl PromptTemplate {
    pub fn compile(messages: &[ChatMessage]) -> Result<Self, TemplateError> {
        let mut environment = strict_environment();
        for (index, message) in messages.iter().enumerate() {
            environment
                .add_template_owned(index.to_string(), message.content.clone())
                .map_err(|error| TemplateError::Syntax {
                    index,
                    detail: describe(&error),
                })?;
        }
        Ok(Self {
            environment,
            roles: messages.iter().map(|message| message.role).collect(),
        })
    }

    /// The variables the messages read from an item (loop variables and
    /// built-in functions excluded).
    pub fn variables(&self) -> BTreeSet<String> {
        let globals: BTreeSet<&str> = self.environment.globals().map(|(name, _)| name).collect();
        (0..self.roles.len())
            .flat_map(|index| {
                self.environment
                    .get_template(&index.to_string())
                    .map(|template| template.undeclared_variables(false))
                    .unwrap_or_default()
            })
            .filter(|name| !globals.contains(name.as_str()))
            .collect()
    }

    /// Renders every message with `context` (a JSON object of variables). An
    /// error names the variables the item lacks, when that is the cause.
    pub fn render(&self, context: &Value) -> Result<Vec<ChatMessage>, TemplateError> {
        self.roles
            .iter()
            .enumerate()
            .map(|(index, role)| {
                let template = self
                    .environment
                    .get_template(&index.to_string())
                    .expect("every message was added at compile time");
                let content = template.render(context).map_err(|error| {
                    let missing = missing_variables(template.undeclared_variables(false), context);
                    let detail = if missing.is_empty() {
                        describe(&error)
                    } else {
                        format!(
                            "the item lacks variable(s) {}: {}",
                            missing.join(", "),
                            describe(&error)
                        )
                    };
                    TemplateError::Render { index, detail }
                })?;
                Ok(ChatMessage {
                    role: *role,
                    content,
                })
            })
            .collect()
    }
}

/// A single Jinja string, e.g. a grader's expected value `{{ expected }}`.
pub struct ValueTemplate {
    environment: Environment<'static>,
}

impl ValueTemplate {
    /// `None` when `source` has no template syntax: it is used as it is.
    pub fn compile(source: &str) -> Result<Option<Self>, String> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(None);
        }
        let mut environment = strict_environment();
        environment
            .add_template_owned("value", source.to_owned())
            .map_err(|error| describe(&error))?;
        Ok(Some(Self { environment }))
    }

    pub fn variables(&self) -> BTreeSet<String> {
        let globals: BTreeSet<&str> = self.environment.globals().map(|(name, _)| name).collect();
        self.environment
            .get_template("value")
            .map(|template| template.undeclared_variables(false))
            .unwrap_or_default()
            .into_iter()
            .filter(|name| !globals.contains(name.as_str()))
            .collect()
    }

    pub fn render(&self, context: &Value) -> Result<String, String> {
        let template = self
            .environment
            .get_template("value")
            .expect("added at compile time");
        template.render(context).map_err(|error| {
            let missing = missing_variables(template.undeclared_variables(false), context);
            if missing.is_empty() {
                describe(&error)
            } else {
                format!("the item lacks variable(s) {}", missing.join(", "))
            }
        })
    }
}

/// Which of `names` the context does not define (sorted).
fn missing_variables(names: std::collections::HashSet<String>, context: &Value) -> Vec<String> {
    let mut missing: Vec<String> = names
        .into_iter()
        .filter(|name| context.get(name).is_none_or(Value::is_null))
        .collect();
    missing.sort();
    missing
}

/// minijinja's message plus its detail and, when it knows where, the
/// expression at fault ("undefined value" alone does not say which).
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail()
        && !text.contains(detail)
    {
        text = format!("{text}: {detail}");
    }
    if let (Some(range), Some(source)) = (error.range(), error.template_source())
        && let Some(expression) = source.get(range)
    {
        text = format!("{text} at `{expression}`");
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Role;

    fn messages(contents: &[&str]) -> Vec<ChatMessage> {
        contents
            .iter()
            .map(|content| ChatMessage {
                role: Role::User,
                content: (*content).to_owned(),
            })
            .collect()
    }

    #[test]
    fn renders_variables_loops_and_filters() {
        let template = PromptTemplate::compile(&messages(&[
            "Q: {{ question | upper }}",
            "{% for option in options %}- {{ option }}\n{% endfor %}",
        ]))
        .unwrap();
        let rendered = template
            .render(&json!({"question": "why?", "options": ["a", "b"]}))
            .unwrap();
        assert_eq!(rendered[0].content, "Q: WHY?");
        assert_eq!(rendered[1].content, "- a\n- b\n");
    }

    #[test]
    fn lists_the_variables_an_item_must_define() {
        let template = PromptTemplate::compile(&messages(&[
            "{{ question }} {{ range(3) | length }}",
            "{% for x in items %}{{ x }}{{ suffix }}{% endfor %}",
        ]))
        .unwrap();
        let expected: BTreeSet<String> = ["items", "question", "suffix"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(template.variables(), expected);
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_it_not_an_empty_string() {
        let template = PromptTemplate::compile(&messages(&["Hello {{ name }}!"])).unwrap();
        let error = template.render(&json!({"other": 1})).unwrap_err();
        let TemplateError::Render { index, detail } = error else {
            panic!("expected a render error, got {error:?}");
        };
        assert_eq!(index, 0);
        assert!(detail.contains("lacks variable(s) name"), "{detail}");
    }

    #[test]
    fn a_missing_attribute_names_the_expression() {
        let template = PromptTemplate::compile(&messages(&["Hi {{ user.name }}"])).unwrap();
        let error = template.render(&json!({"user": {}})).unwrap_err();
        assert!(error.to_string().contains("`user.name`"), "{error}");
    }

    #[test]
    fn syntax_errors_name_the_message() {
        let error = PromptTemplate::compile(&messages(&["fine", "{{ broken"])).unwrap_err();
        assert!(
            matches!(error, TemplateError::Syntax { index: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn html_is_not_escaped() {
        let template = PromptTemplate::compile(&messages(&["{{ code }}"])).unwrap();
        let rendered = template.render(&json!({"code": "<b>&</b>"})).unwrap();
        assert_eq!(rendered[0].content, "<b>&</b>");
    }

    #[test]
    fn plain_values_are_not_templates() {
        assert!(ValueTemplate::compile("plain text").unwrap().is_none());
        let template = ValueTemplate::compile("{{ expected }}!").unwrap().unwrap();
        assert_eq!(template.render(&json!({"expected": "x"})).unwrap(), "x!");
        assert!(template.render(&json!({})).is_err());
    }
}
