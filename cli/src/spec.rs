//! `assay.yaml`: what `assay eval` runs, read and resolved against the
//! file's directory (`file://` paths are relative to it).
//!
//! The spec is also what `assay import promptfoo` writes, so every type
//! here serializes back to the same YAML.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The file as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub prompt: PromptSpec,
    pub models: Vec<String>,
    pub tests: TestsSpec,
    /// Graders (and a threshold) for every test.
    #[serde(
        default,
        rename = "defaultTest",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_test: Option<DefaultTest>,
    /// Runs of each test × model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// An item passes when its weighted score reaches it (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// high, normal or low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Whether deterministic calls may be answered from the response cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The dataset's name on the server (default: the prompt's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// What the evaluation may spend, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Default for PromptSpec {
    fn default() -> Self {
        PromptSpec::Stored(String::new())
    }
}

impl Default for TestsSpec {
    fn default() -> Self {
        TestsSpec::List(Vec::new())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PromptSpec {
    /// A stored prompt: `name@label`, `name@branch` or `name@version`.
    Stored(String),
    Inline(InlinePrompt),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlinePrompt {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub messages: MessagesSpec,
    /// Default model parameters (temperature, max_tokens, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum MessagesSpec {
    /// `file://chat.yaml` (a list of messages) or `file://prompt.md` (one user message).
    File(String),
    List(Vec<MessageSpec>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub role: String,
    /// The template, or `file://path` to read it from.
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TestsSpec {
    /// `file://tests.csv` (also .jsonl, .json, .yaml).
    File(String),
    List(Vec<TestEntry>),
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TestEntry {
    File(String),
    Test(TestCase),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Stable id, unique among the tests (default: the position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For people; not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub vars: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The test's own graders (the API's grader JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assert: Vec<Value>,
}

impl TestCase {
    /// The dataset item the API takes.
    pub fn to_item(&self) -> Value {
        let mut item = Map::new();
        if let Some(id) = &self.id {
            item.insert("id".to_owned(), Value::String(id.clone()));
        }
        item.insert("vars".to_owned(), Value::Object(self.vars.clone()));
        if let Some(expected) = &self.expected {
            item.insert("expected".to_owned(), expected.clone());
        }
        if let Some(threshold) = self.threshold {
            item.insert("threshold".to_owned(), threshold.into());
        }
        if !self.assert.is_empty() {
            item.insert("graders".to_owned(), Value::Array(self.assert.clone()));
        }
        Value::Object(item)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultTest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assert: Vec<Value>,
    /// Used when the spec sets no top-level `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// The untagged forms are told apart by shape (a string, or not), so that
/// an error inside the object form names the field at fault instead of
/// "did not match any variant".
macro_rules! string_or {
    ($name:ident, $string:ident, $other:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match Value::deserialize(deserializer)? {
                    Value::String(text) => Ok($name::$string(text)),
                    other => serde_json::from_value(other)
                        .map($name::$other)
                        .map_err(serde::de::Error::custom),
                }
            }
        }
    };
}

string_or!(PromptSpec, Stored, Inline);
string_or!(MessagesSpec, File, List);
string_or!(TestsSpec, File, List);
string_or!(TestEntry, File, Test);

/// A spec with its files read: what `assay eval` sends.
#[derive(Debug)]
pub struct Resolved {
    pub prompt: Prompt,
    pub models: Vec<String>,
    pub dataset_name: String,
    pub tests: Tests,
    pub graders: Vec<Value>,
    pub repeat: Option<u32>,
    pub threshold: Option<f64>,
    pub priority: Option<String>,
    pub cache: Option<bool>,
    pub max_cost_usd: Option<f64>,
}

#[derive(Debug, PartialEq)]
pub enum Prompt {
    /// A stored prompt and which of its versions.
    Stored { name: String, pointer: String },
    Inline {
        name: String,
        description: Option<String>,
        messages: Vec<Value>,
        params: Option<Value>,
    },
}

#[derive(Debug)]
pub enum Tests {
    /// A file uploaded as it is, streamed: CSV or JSON Lines.
    File { path: PathBuf, format: Format },
    /// Items built here, uploaded as JSON Lines.
    Items(Vec<Value>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Jsonl => "application/x-ndjson",
        }
    }

    /// The format tag of the server's content hash.
    pub fn tag(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// `file://x` → `x`.
pub fn file_path(text: &str) -> Option<&str> {
    text.strip_prefix("file://")
}

/// Reads a YAML file as a generic value (to tell a promptfoo config apart).
pub fn read_yaml(path: &Path) -> anyhow::Result<serde_norway::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))
}

/// Whether a YAML document is a promptfoo config rather than an assay spec:
/// promptfoo's keys are plural (`prompts`, `providers`), an assay spec's are not.
pub fn is_promptfoo(document: &serde_norway::Value) -> bool {
    let Some(mapping) = document.as_mapping() else {
        return false;
    };
    let has = |key: &str| mapping.contains_key(serde_norway::Value::String(key.to_owned()));
    (has("prompts") || has("providers")) && !has("prompt") && !has("models")
}

pub fn parse(document: serde_norway::Value, path: &Path) -> anyhow::Result<Spec> {
    serde_norway::from_value(document).with_context(|| {
        format!(
            "{} is not a valid assay spec (see the README's \"Spec file\" section)",
            path.display()
        )
    })
}

impl Spec {
    /// Reads the files the spec names, relative to `base` (the spec's directory).
    pub fn resolve(self, base: &Path) -> anyhow::Result<Resolved> {
        let prompt = match self.prompt {
            PromptSpec::Stored(reference) => {
                let Some((name, pointer)) = reference.split_once('@') else {
                    bail!(
                        "prompt: {reference:?} names a stored prompt as name@label, name@branch or name@version (or give name and messages)"
                    );
                };
                if name.is_empty() || pointer.is_empty() {
                    bail!("prompt: {reference:?} needs a name and a label, branch or version");
                }
                Prompt::Stored {
                    name: name.to_owned(),
                    pointer: pointer.to_owned(),
                }
            }
            PromptSpec::Inline(inline) => Prompt::Inline {
                messages: read_messages(&inline.messages, base)?,
                name: inline.name,
                description: inline.description,
                params: inline.params,
            },
        };
        if self.models.is_empty() {
            bail!("models: name at least one model (`mock` answers without a key)");
        }
        let tests = match self.tests {
            TestsSpec::File(file) => read_tests_file(&file, base, "tests")?,
            TestsSpec::List(entries) => {
                let mut items = Vec::new();
                for (index, entry) in entries.into_iter().enumerate() {
                    match entry {
                        TestEntry::Test(test) => items.push(test.to_item()),
                        TestEntry::File(file) => {
                            match read_tests_file(&file, base, &format!("tests[{index}]"))? {
                                Tests::Items(more) => items.extend(more),
                                Tests::File { path, format } => {
                                    // Streamed files go up as they are, alone.
                                    let Ok(text) = std::fs::read_to_string(&path) else {
                                        bail!("cannot read {}", path.display());
                                    };
                                    if format == Format::Csv {
                                        bail!(
                                            "tests[{index}]: a CSV file must be the whole `tests` (tests: {file})"
                                        );
                                    }
                                    for (line_number, line) in text.lines().enumerate() {
                                        if line.trim().is_empty() {
                                            continue;
                                        }
                                        items.push(serde_json::from_str(line).with_context(
                                            || {
                                                format!(
                                                    "{} line {}: not JSON",
                                                    path.display(),
                                                    line_number + 1
                                                )
                                            },
                                        )?);
                                    }
                                }
                            }
                        }
                    }
                }
                if items.is_empty() {
                    bail!("tests: give at least one test");
                }
                Tests::Items(items)
            }
        };
        let default_test = self.default_test.unwrap_or_default();
        let dataset_name = self.dataset.unwrap_or_else(|| match &prompt {
            Prompt::Stored { name, .. } | Prompt::Inline { name, .. } => format!("{name} tests"),
        });
        Ok(Resolved {
            prompt,
            models: self.models,
            dataset_name,
            tests,
            graders: default_test.assert,
            repeat: self.repeat,
            threshold: self.threshold.or(default_test.threshold),
            priority: self.priority,
            cache: self.cache,
            max_cost_usd: self.max_cost_usd,
        })
    }
}

fn read_text(file: &str, base: &Path) -> anyhow::Result<(PathBuf, String)> {
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((path, text))
}

/// Messages inline (each content possibly `file://`), or a whole file.
fn read_messages(messages: &MessagesSpec, base: &Path) -> anyhow::Result<Vec<Value>> {
    match messages {
        MessagesSpec::List(list) => list
            .iter()
            .map(|message| {
                let content = match file_path(&message.content) {
                    // The newline editors end files with is not part of the template.
                    Some(file) => read_text(file, base)?
                        .1
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                    None => message.content.clone(),
                };
                Ok(serde_json::json!({"role": message.role, "content": content}))
            })
            .collect(),
        MessagesSpec::File(reference) => {
            let Some(file) = file_path(reference) else {
                bail!("prompt.messages: a list of messages, or file://path");
            };
            let (path, text) = read_text(file, base)?;
            messages_from_file(&path, &text)
        }
    }
}

/// A JSON or YAML file holds a list of messages; any other file is the text
/// of one user message, trimmed (as promptfoo trims its text prompts).
pub fn messages_from_file(path: &Path, text: &str) -> anyhow::Result<Vec<Value>> {
    let extension = extension(path);
    let list: Option<Vec<MessageSpec>> = match extension.as_str() {
        "json" => Some(
            serde_json::from_str(text)
                .with_context(|| format!("{}: not a JSON list of messages", path.display()))?,
        ),
        "yaml" | "yml" => Some(
            serde_norway::from_str(text)
                .with_context(|| format!("{}: not a YAML list of messages", path.display()))?,
        ),
        _ => None,
    };
    Ok(match list {
        Some(list) => list
            .into_iter()
            .map(|message| serde_json::json!({"role": message.role, "content": message.content}))
            .collect(),
        None => vec![serde_json::json!({"role": "user", "content": text.trim()})],
    })
}

pub fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A tests file: CSV and JSON Lines go up as they are; JSON and YAML (a
/// list of tests) are read here.
fn read_tests_file(reference: &str, base: &Path, field: &str) -> anyhow::Result<Tests> {
    let Some(file) = file_path(reference) else {
        bail!("{field}: a list of tests, or file://path (.csv, .jsonl, .json, .yaml)");
    };
    let path = base.join(file);
    if !path.is_file() {
        bail!("{field}: {} does not exist", path.display());
    }
    Ok(match extension(&path).as_str() {
        "csv" => Tests::File {
            path,
            format: Format::Csv,
        },
        "jsonl" | "ndjson" => Tests::File {
            path,
            format: Format::Jsonl,
        },
        "json" | "yaml" | "yml" => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let tests: Vec<TestCase> = if extension(&path) == "json" {
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a JSON list of tests", path.display()))?
            } else {
                serde_norway::from_str(&text)
                    .with_context(|| format!("{}: not a YAML list of tests", path.display()))?
            };
            Tests::Items(tests.iter().map(TestCase::to_item).collect())
        }
        other => bail!("{field}: unknown tests file type {other:?} (.csv, .jsonl, .json, .yaml)"),
    })
}

/// What `assay init` writes: runs against the mock as it is.
pub const EXAMPLE: &str = r#"# assay.yaml: what `assay eval` runs. Every field is described in the
# README ("Spec file"). `file://` paths are relative to this file.

description: Capital cities, asked two ways

# The prompt: a name and chat messages (Jinja templates over each test's
# vars). `assay eval` commits it as a new version only when it changed.
# To run a stored prompt instead: `prompt: capitals@production` (a label,
# a branch, or a version number).
prompt:
  name: capitals-quickstart
  messages:
    - role: system
      content: Answer with the city only.
    # content: file://prompts/user.md reads the template from a file
    - role: user
      content: "The capital of {{ country }} is {{ city }}."
  params:
    temperature: 0

# Registry names, or the built-in mock (it echoes the last user message;
# `mock:wrong=0.2` answers 20% of the tests wrongly, `mock:latency=20ms`
# takes its time, `price_in`/`price_out` set dollars per million tokens).
models:
  - mock
  - mock:latency=20ms,price_in=3,price_out=15

# Tests inline, or `tests: file://tests.csv` (also .jsonl, .json, .yaml).
# Each test has vars, and optionally expected, threshold and its own assert.
tests:
  - vars: {country: France, city: Paris}
    expected: Paris
  - vars: {country: Japan, city: Tokyo}
    expected: Tokyo
    assert:
      - type: icontains
        value: tokyo
  - vars: {country: Kenya, city: Nairobi}
    expected: Nairobi
    assert:
      - type: not-contains
        value: Mombasa

# Graders for every test (the API's grader JSON).
defaultTest:
  assert:
    - type: contains
      value: "{{ expected }}"

# Runs of each test x model, the pass mark on the weighted score (0 to 1;
# without it every grader must pass), the queue, and the response cache.
repeat: 1
priority: normal
cache: true
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_resolves() {
        let document: serde_norway::Value = serde_norway::from_str(EXAMPLE).unwrap();
        assert!(!is_promptfoo(&document));
        let resolved = parse(document, Path::new("assay.yaml"))
            .unwrap()
            .resolve(Path::new("."))
            .unwrap();
        assert_eq!(resolved.models.len(), 2);
        let Tests::Items(items) = &resolved.tests else {
            panic!("inline tests")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[1]["graders"][0]["type"], "icontains");
        assert_eq!(resolved.graders.len(), 1);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let document: serde_norway::Value = serde_norway::from_str(
            "prompt: {name: p, mesages: []}\nmodels: [mock]\ntests: [{vars: {}}]\n",
        )
        .unwrap();
        let error = format!(
            "{:#}",
            parse(document, Path::new("assay.yaml")).unwrap_err()
        );
        assert!(error.contains("unknown field `mesages`"), "{error}");
        let document: serde_norway::Value = serde_norway::from_str(
            "prompt: p@main\nmodels: [mock]\ntests: [{vars: {}, asert: []}]\n",
        )
        .unwrap();
        let error = format!(
            "{:#}",
            parse(document, Path::new("assay.yaml")).unwrap_err()
        );
        assert!(error.contains("unknown field `asert`"), "{error}");
    }

    #[test]
    fn stored_prompts_need_a_pointer() {
        let spec = |prompt: &str| Spec {
            prompt: PromptSpec::Stored(prompt.to_owned()),
            models: vec!["mock".to_owned()],
            tests: TestsSpec::List(vec![TestEntry::Test(TestCase::default())]),
            ..Spec::default()
        };
        assert!(spec("capitals").resolve(Path::new(".")).is_err());
        let resolved = spec("capitals@production").resolve(Path::new(".")).unwrap();
        assert_eq!(
            resolved.prompt,
            Prompt::Stored {
                name: "capitals".to_owned(),
                pointer: "production".to_owned()
            }
        );
    }
}
