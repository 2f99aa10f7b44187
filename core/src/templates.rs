//! Prompt templates: chat messages whose contents are Jinja templates.
//!
//! Rendering is strict: a variable that the item lacks is an error naming it,
//! never an empty string sent to a model.
//!
//! Templates come from tenants, so every render is bounded: minijinja's fuel
//! caps the steps one render may take ([`RENDER_FUEL`]; a loop over
//! `range(100000)` runs out, an ordinary prompt uses a few hundred), and
//! output streams into a buffer that refuses to grow past
//! [`MAX_RENDERED_BYTES`] (a loop printing a 10 MB string stops at the cap
//! instead of building gigabytes). minijinja itself caps `range()` at 100,000
//! elements and a repeated string (`"x" * n`) at 100 MB. One remaining way to
//! grow memory, doubling a string with `~` in a handful of `set`s, is bounded
//! only by the fuel those steps cost.

use std::collections::{BTreeSet, HashSet};
use std::io;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use crate::domain::ChatMessage;

/// Steps (minijinja instructions, weighted by its fuel table) one render of
/// one template may take. A two-message prompt with a loop over a dozen
/// values takes a few hundred; at this cap a render stops after tens of
/// milliseconds.
pub const RENDER_FUEL: u64 = 500_000;

/// Bytes one render may produce: a rendered prompt (all its messages) or a
/// grader's value. Larger than any model's context window holds.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// Renders of one compiled template that may pass a limit before it is no
/// longer rendered at all. Each such render costs a whole budget; a template
/// past its limit on this many items is a bomb, not an unlucky item, and
/// rendering it for the rest of a large dataset would pin a worker for
/// minutes. Templates are compiled once per evaluation in each worker, so
/// this bounds a bomb's cost per evaluation and worker.
pub const MAX_LIMIT_TRIPS: u32 = 10;

/// Counts the renders of one template that passed a limit (see [`MAX_LIMIT_TRIPS`]).
#[derive(Debug, Default)]
struct LimitTrips(std::sync::atomic::AtomicU32);

impl LimitTrips {
    fn exhausted(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) >= MAX_LIMIT_TRIPS
    }

    fn record(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("message {index}: invalid template: {detail}")]
    Syntax { index: usize, detail: String },
    #[error("message {index}: {detail}")]
    Render { index: usize, detail: String },
    /// The render passed [`RENDER_FUEL`] or [`MAX_RENDERED_BYTES`].
    #[error("message {index}: {limit}")]
    Limit { index: usize, limit: RenderLimit },
}

/// Which bound stopped a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenderLimit {
    #[error(
        "the template took more than {RENDER_FUEL} steps to render (a loop too long for a prompt?)"
    )]
    Steps,
    #[error("the rendered text is larger than {MAX_RENDERED_BYTES} bytes")]
    Size,
    #[error(
        "not rendered: the template passed a render limit (more than {RENDER_FUEL} steps to render, or {MAX_RENDERED_BYTES} bytes) on {MAX_LIMIT_TRIPS} items already"
    )]
    Repeated,
}

impl TemplateError {
    /// The message at fault.
    pub fn index(&self) -> usize {
        match self {
            Self::Syntax { index, .. } | Self::Render { index, .. } | Self::Limit { index, .. } => {
                *index
            }
        }
    }

    /// The bound that stopped the render, when one did.
    pub fn limit(&self) -> Option<RenderLimit> {
        match self {
            Self::Limit { limit, .. } => Some(*limit),
            _ => None,
        }
    }
}

/// A buffer that refuses to grow past what is left of the render's budget, so
/// a template printing a huge string in a loop fails at the cap.
struct CappedBuffer<'a> {
    bytes: Vec<u8>,
    left: &'a mut usize,
}

impl io::Write for CappedBuffer<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.len() > *self.left {
            *self.left = 0;
            return Err(io::Error::other("rendered text too large"));
        }
        *self.left -= bytes.len();
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders `template` into at most `*left` bytes (taking them off `left`),
/// unless its `trips` are exhausted.
fn render_bounded(
    template: &minijinja::Template<'_, '_>,
    context: &Value,
    left: &mut usize,
    trips: &LimitTrips,
) -> Result<String, RenderFailure> {
    if trips.exhausted() {
        return Err(RenderFailure::Limit(RenderLimit::Repeated));
    }
    let mut buffer = CappedBuffer {
        bytes: Vec::new(),
        left,
    };
    let limit = match template.render_captured_to(context, &mut buffer) {
        Ok(_) => return Ok(String::from_utf8(buffer.bytes).expect("minijinja writes UTF-8")),
        Err(_) if *buffer.left == 0 => RenderLimit::Size,
        Err(error) if error.kind() == minijinja::ErrorKind::OutOfFuel => RenderLimit::Steps,
        Err(error) => return Err(RenderFailure::Error(error)),
    };
    trips.record();
    Err(RenderFailure::Limit(limit))
}

enum RenderFailure {
    Limit(RenderLimit),
    Error(minijinja::Error),
}

/// A compiled set of chat messages, rendered once per dataset item.
pub struct PromptTemplate {
    environment: Environment<'static>,
    roles: Vec<crate::domain::Role>,
    trips: LimitTrips,
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
    environment.set_fuel(Some(RENDER_FUEL));
    environment
}

/// The variables `template` reads from an item: what it does not declare
/// itself, globals (`range`, `dict`, …) excepted.
fn item_variables(
    environment: &Environment<'_>,
    template: &minijinja::Template<'_, '_>,
) -> HashSet<String> {
    let globals: HashSet<&str> = environment.globals().map(|(name, _)| name).collect();
    template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !globals.contains(name.as_str()))
        .collect()
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
            trips: LimitTrips::default(),
        })
    }

    /// The variables the messages read from an item (loop variables and
    /// built-in functions excluded).
    pub fn variables(&self) -> BTreeSet<String> {
        (0..self.roles.len())
            .flat_map(|index| {
                self.environment
                    .get_template(&index.to_string())
                    .map(|template| item_variables(&self.environment, &template))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Renders every message with `context` (a JSON object of variables),
    /// within [`RENDER_FUEL`] per message and [`MAX_RENDERED_BYTES`] in all.
    /// An error names the variables the item lacks, when that is the cause,
    /// or the bound that stopped it.
    pub fn render(&self, context: &Value) -> Result<Vec<ChatMessage>, TemplateError> {
        let mut left = MAX_RENDERED_BYTES;
        self.roles
            .iter()
            .enumerate()
            .map(|(index, role)| {
                let template = self
                    .environment
                    .get_template(&index.to_string())
                    .expect("every message was added at compile time");
                let content = render_bounded(&template, context, &mut left, &self.trips).map_err(
                    |failure| match failure {
                        RenderFailure::Limit(limit) => TemplateError::Limit { index, limit },
                        RenderFailure::Error(error) => {
                            let lacking = lacking(&self.environment, &template, context, &error);
                            let detail = if lacking.is_empty() {
                                describe(&error)
                            } else {
                                format!(
                                    "the item lacks variable(s) {}: {}",
                                    lacking.join(", "),
                                    describe(&error)
                                )
                            };
                            TemplateError::Render { index, detail }
                        }
                    },
                )?;
                Ok(ChatMessage {
                    role: *role,
                    content,
                })
            })
            .collect()
    }
}

/// The variables the item lacks, when that is why rendering failed (a
/// failing `range()` call is not a missing variable).
fn lacking(
    environment: &Environment<'_>,
    template: &minijinja::Template<'_, '_>,
    context: &Value,
    error: &minijinja::Error,
) -> Vec<String> {
    if error.kind() != minijinja::ErrorKind::UndefinedError {
        return Vec::new();
    }
    missing_variables(item_variables(environment, template), context)
}

/// A single Jinja string, e.g. a grader's expected value `{{ expected }}`.
pub struct ValueTemplate {
    environment: Environment<'static>,
    trips: LimitTrips,
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
        Ok(Some(Self {
            environment,
            trips: LimitTrips::default(),
        }))
    }

    pub fn variables(&self) -> BTreeSet<String> {
        self.environment
            .get_template("value")
            .map(|template| item_variables(&self.environment, &template))
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// Renders within [`RENDER_FUEL`] and [`MAX_RENDERED_BYTES`].
    pub fn render(&self, context: &Value) -> Result<String, String> {
        let template = self
            .environment
            .get_template("value")
            .expect("added at compile time");
        let mut left = MAX_RENDERED_BYTES;
        render_bounded(&template, context, &mut left, &self.trips).map_err(
            |failure| match failure {
                RenderFailure::Limit(limit) => limit.to_string(),
                RenderFailure::Error(error) => {
                    let lacking = lacking(&self.environment, &template, context, &error);
                    if lacking.is_empty() {
                        describe(&error)
                    } else {
                        format!("the item lacks variable(s) {}", lacking.join(", "))
                    }
                }
            },
        )
    }
}

/// Which of `names` the context does not define (sorted).
fn missing_variables(names: HashSet<String>, context: &Value) -> Vec<String> {
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

    #[test]
    fn a_template_past_its_limit_on_enough_items_is_no_longer_rendered() {
        let source = "{% for i in range(n) %}{% for j in range(n) %}.{% endfor %}{% endfor %}";
        let bomb = PromptTemplate::compile(&messages(&[source])).unwrap();
        for _ in 0..MAX_LIMIT_TRIPS {
            let error = bomb.render(&json!({"n": 100_000})).unwrap_err();
            assert_eq!(error.limit(), Some(RenderLimit::Steps));
        }
        // Refused without rendering, even for an item that would fit.
        let error = bomb.render(&json!({"n": 2})).unwrap_err();
        assert_eq!(error.limit(), Some(RenderLimit::Repeated));
        assert!(error.to_string().contains("steps to render"), "{error}");
        // The count belongs to the compiled template (one evaluation's).
        let fresh = PromptTemplate::compile(&messages(&[source])).unwrap();
        assert_eq!(fresh.render(&json!({"n": 2})).unwrap()[0].content, "....");

        let value = ValueTemplate::compile(source).unwrap().unwrap();
        for _ in 0..MAX_LIMIT_TRIPS {
            assert!(
                value
                    .render(&json!({"n": 100_000}))
                    .unwrap_err()
                    .contains("steps to render")
            );
        }
        assert!(
            value
                .render(&json!({"n": 2}))
                .unwrap_err()
                .starts_with("not rendered")
        );
    }

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

    #[test]
    fn a_loop_printing_a_huge_string_stops_at_the_size_cap() {
        let template = PromptTemplate::compile(&messages(&[
            r#"{% set s = "x" * 10000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}"#,
        ]))
        .unwrap();
        let error = template.render(&json!({})).unwrap_err();
        assert_eq!(error.limit(), Some(RenderLimit::Size), "{error}");
        assert!(error.to_string().contains("larger than"), "{error}");
    }

    #[test]
    fn the_size_cap_counts_every_message_of_a_prompt() {
        let half = "{{ 'y' * 600000 }}";
        let template = PromptTemplate::compile(&messages(&[half, half])).unwrap();
        let error = template.render(&json!({})).unwrap_err();
        assert_eq!(
            error,
            TemplateError::Limit {
                index: 1,
                limit: RenderLimit::Size
            }
        );
    }

    #[test]
    fn nested_loops_run_out_of_fuel_and_say_so() {
        let template = PromptTemplate::compile(&messages(&[
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        ]))
        .unwrap();
        let started = std::time::Instant::now();
        let error = template.render(&json!({})).unwrap_err();
        assert_eq!(error.limit(), Some(RenderLimit::Steps), "{error}");
        assert!(error.to_string().contains("steps"), "{error}");
        // Fuel, not wall time, stopped it: far below what the loops would take.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_recursive_macro_runs_out_of_fuel() {
        let template = PromptTemplate::compile(&messages(&[
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        ]))
        .unwrap();
        let error = template.render(&json!({})).unwrap_err();
        assert!(error.limit().is_some(), "{error}");
    }

    #[test]
    fn a_grader_value_is_bounded_too() {
        let template = ValueTemplate::compile(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap()
        .unwrap();
        let error = template.render(&json!({})).unwrap_err();
        assert!(error.contains("steps"), "{error}");
    }

    #[test]
    fn a_too_large_range_is_not_blamed_on_a_missing_variable() {
        let template =
            PromptTemplate::compile(&messages(&["{{ range(200000) | length }}"])).unwrap();
        let error = template.render(&json!({})).unwrap_err().to_string();
        assert!(!error.contains("lacks"), "{error}");
        assert!(error.contains("range"), "{error}");
    }

    #[test]
    fn an_ordinary_prompt_is_far_from_the_fuel_cap() {
        // A hundred-example few-shot prompt renders well within the cap.
        let template = PromptTemplate::compile(&messages(&[
            "{% for example in examples %}Q: {{ example.q | trim }}\nA: {{ example.a }}\n{% endfor %}Q: {{ question }}",
        ]))
        .unwrap();
        let examples: Vec<_> = (0..100)
            .map(|i| json!({"q": format!(" question {i} "), "a": i}))
            .collect();
        let rendered = template
            .render(&json!({"examples": examples, "question": "last"}))
            .unwrap();
        assert!(rendered[0].content.ends_with("Q: last"));
    }
}
