//! A way in from promptfoo: translates the common subset of a
//! `promptfooconfig.yaml` into an assay [`Spec`].
//!
//! - `prompts`: one prompt, inline or `file://` (text: one user message;
//!   JSON/YAML: a list of chat messages). Further prompts are unsupported.
//! - `providers`: each mapped to a registry name with `--map id=name`;
//!   `echo` maps to `mock` (both answer with the prompt). Unmapped ones are
//!   an error that names them all.
//! - `tests` (inline, `file://` CSV with promptfoo's `__expected` columns,
//!   JSON, YAML) with `vars`, `assert`, `threshold`; `defaultTest` (its
//!   `assert`, `vars`, `threshold` and `options.provider`, the judge).
//! - asserts of the types Assay has, same names, with promptfoo's
//!   semantics: `levenshtein`'s `threshold` is the largest edit distance
//!   (default 5), `is-json`/`contains-json` with a schema `value` become
//!   `json-schema`, `llm-rubric` asks the judge (`provider`, else
//!   `defaultTest.options.provider`, else `--judge`).
//!
//! Anything else (`javascript`, `python`, `webhook`, `similar` (embeddings),
//! transforms, ...) is reported with its location; the run goes on without
//! it only with `--skip-unsupported`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::spec::{
    self, DefaultTest, InlinePrompt, MessageSpec, MessagesSpec, PromptSpec, Spec, TestCase,
    TestEntry, TestsSpec,
};

/// How to translate what promptfoo leaves to its runtime.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Provider id → registry name (`--map openai:gpt-4o-mini=gpt-4o-mini`).
    pub map: BTreeMap<String, String>,
    /// The judge of `llm-rubric` asserts that name none.
    pub judge: Option<String>,
    pub skip_unsupported: bool,
}

impl Options {
    /// Parses `--map` values (`id=name`).
    pub fn with_maps(mut self, maps: &[String]) -> anyhow::Result<Self> {
        for map in maps {
            let Some((from, to)) = map.split_once('=') else {
                bail!(
                    "--map {map:?}: write provider=registry-name, e.g. openai:gpt-4o-mini=gpt-4o-mini"
                );
            };
            self.map
                .insert(from.trim().to_owned(), to.trim().to_owned());
        }
        Ok(self)
    }
}

/// Something the translation left out, and where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported {
    pub location: String,
    pub what: String,
}

pub struct Translated {
    pub spec: Spec,
    pub unsupported: Vec<Unsupported>,
}

impl Translated {
    /// Lists what was left out on stderr; an error unless skipping was asked for.
    pub fn report(&self, skip: bool) -> anyhow::Result<()> {
        if self.unsupported.is_empty() {
            return Ok(());
        }
        let list = self
            .unsupported
            .iter()
            .map(|unsupported| format!("  {}: {}", unsupported.location, unsupported.what))
            .collect::<Vec<_>>()
            .join("\n");
        if skip {
            eprintln!("Skipped what Assay cannot run (--skip-unsupported):\n{list}");
            Ok(())
        } else {
            bail!(
                "the promptfoo config uses what Assay cannot run:\n{list}\npass --skip-unsupported to run without them"
            )
        }
    }
}

struct Translator<'a> {
    file: String,
    base: PathBuf,
    options: &'a Options,
    unsupported: Vec<Unsupported>,
    /// The judge for `llm-rubric` asserts without a provider of their own.
    default_judge: Option<String>,
}

pub fn translate(
    document: &serde_norway::Value,
    path: &Path,
    options: &Options,
) -> anyhow::Result<Translated> {
    let config: Value = serde_json::to_value(document)
        .with_context(|| format!("{}: not a promptfoo config", path.display()))?;
    let mut translator = Translator {
        file: path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        options,
        unsupported: Vec::new(),
        default_judge: None,
    };
    translator.run(&config)
}

impl Translator<'_> {
    fn unsupported(&mut self, location: impl Into<String>, what: impl Into<String>) {
        self.unsupported.push(Unsupported {
            location: format!("{}: {}", self.file, location.into()),
            what: what.into(),
        });
    }

    fn run(&mut self, config: &Value) -> anyhow::Result<Translated> {
        for key in config.as_object().map(Map::keys).into_iter().flatten() {
            if !matches!(
                key.as_str(),
                "description" | "prompts" | "providers" | "tests" | "defaultTest" | "outputPath"
            ) {
                self.unsupported(key.clone(), "not translated (ignored)");
            }
        }
        let models = self.providers(&config["providers"])?;
        let default_test = &config["defaultTest"];
        if let Some(provider) = provider_id(&default_test["options"]["provider"]) {
            self.default_judge = Some(self.map_provider(&provider).with_context(|| {
                format!("defaultTest.options.provider {provider:?}: map it with --map {provider}=<registry name>")
            })?);
        }
        let prompt = self.prompt(&config["prompts"], config)?;
        let default_vars = default_test["vars"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let default_assert = self.asserts(&default_test["assert"], "defaultTest.assert");
        let mut tests = self.tests(&config["tests"])?;
        for test in &mut tests {
            for (name, value) in &default_vars {
                test.vars
                    .entry(name.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        if tests.is_empty() {
            bail!("{}: no tests", self.file);
        }
        let spec = Spec {
            description: config["description"].as_str().map(str::to_owned),
            prompt,
            models,
            tests: TestsSpec::List(tests.into_iter().map(TestEntry::Test).collect()),
            default_test: (!default_assert.is_empty() || default_test["threshold"].is_number())
                .then(|| DefaultTest {
                    assert: default_assert,
                    threshold: default_test["threshold"].as_f64(),
                }),
            ..Spec::default()
        };
        Ok(Translated {
            spec,
            unsupported: std::mem::take(&mut self.unsupported),
        })
    }

    fn map_provider(&self, id: &str) -> Option<String> {
        if let Some(name) = self.options.map.get(id) {
            return Some(name.clone());
        }
        if id == "echo" {
            return Some("mock".to_owned());
        }
        (id == "mock" || id.starts_with("mock:")).then(|| id.to_owned())
    }

    fn providers(&mut self, providers: &Value) -> anyhow::Result<Vec<String>> {
        let list: Vec<Value> = match providers {
            Value::Array(list) => list.clone(),
            Value::Null => bail!("{}: no providers", self.file),
            single => vec![single.clone()],
        };
        let mut models = Vec::new();
        let mut unmapped = Vec::new();
        for (index, provider) in list.iter().enumerate() {
            let Some(id) = provider_id(provider) else {
                self.unsupported(format!("providers[{index}]"), "a provider without an id");
                continue;
            };
            match self.map_provider(&id) {
                Some(name) => models.push(name),
                None => unmapped.push(id),
            }
        }
        if !unmapped.is_empty() {
            bail!(
                "providers without a registry name: {} (map each with --map <provider>=<registry name>, e.g. --map {}=gpt-4o-mini; `assay models` lists the names)",
                unmapped.join(", "),
                unmapped[0]
            );
        }
        Ok(models)
    }

    fn prompt(&mut self, prompts: &Value, config: &Value) -> anyhow::Result<PromptSpec> {
        let list: Vec<Value> = match prompts {
            Value::Array(list) => list.clone(),
            Value::Null => bail!("{}: no prompts", self.file),
            single => vec![single.clone()],
        };
        for index in 1..list.len() {
            self.unsupported(
                format!("prompts[{index}]"),
                "more than one prompt (only the first runs; run one assay eval per prompt)",
            );
        }
        let first = list.first().context("prompts: the list is empty")?;
        let (raw, label) = match first {
            Value::String(raw) => (raw.clone(), None),
            Value::Object(object) => (
                object
                    .get("raw")
                    .or_else(|| object.get("id"))
                    .and_then(Value::as_str)
                    .context("prompts[0]: needs raw or id")?
                    .to_owned(),
                object
                    .get("label")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            _ => bail!("prompts[0]: a string or {{raw, label}}"),
        };
        let (messages, file_stem) = match spec::file_path(&raw) {
            Some(file) => {
                let path = self.base.join(file);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("prompts[0]: cannot read {}", path.display()))?;
                (
                    spec::messages_from_file(&path, &text)?,
                    path.file_stem()
                        .map(|stem| stem.to_string_lossy().into_owned()),
                )
            }
            // A raw string may itself be a JSON chat (promptfoo accepts that too).
            None => match serde_json::from_str::<Vec<MessageSpec>>(&raw) {
                Ok(list) => (
                    list.into_iter()
                        .map(|message| json!({"role": message.role, "content": message.content}))
                        .collect(),
                    None,
                ),
                Err(_) => (vec![json!({"role": "user", "content": raw})], None),
            },
        };
        let name = label
            .or(file_stem)
            .or_else(|| config["description"].as_str().map(slug))
            .unwrap_or_else(|| "promptfoo-prompt".to_owned());
        Ok(PromptSpec::Inline(InlinePrompt {
            name,
            description: None,
            messages: MessagesSpec::List(
                messages
                    .into_iter()
                    .map(|message| MessageSpec {
                        role: message["role"].as_str().unwrap_or("user").to_owned(),
                        content: message["content"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect(),
            ),
            params: None,
        }))
    }

    fn tests(&mut self, tests: &Value) -> anyhow::Result<Vec<TestCase>> {
        let mut out = Vec::new();
        let entries: Vec<(String, Value)> = match tests {
            Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(index, test)| (format!("tests[{index}]"), test.clone()))
                .collect(),
            Value::Null => Vec::new(),
            single => vec![("tests".to_owned(), single.clone())],
        };
        for (location, entry) in entries {
            match &entry {
                Value::String(reference) => out.extend(self.tests_file(reference, &location)?),
                Value::Object(_) => out.push(self.test(&entry, &location)),
                _ => self.unsupported(location, "a test that is neither an object nor file://"),
            }
        }
        Ok(out)
    }

    fn tests_file(&mut self, reference: &str, location: &str) -> anyhow::Result<Vec<TestCase>> {
        let Some(file) = spec::file_path(reference) else {
            bail!("{location}: {reference:?} is not file://");
        };
        let path = self.base.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{location}: cannot read {}", path.display()))?;
        match spec::extension(&path).as_str() {
            "csv" => self.csv_tests(&text, &path),
            "json" | "yaml" | "yml" => {
                let list: Vec<Value> = if spec::extension(&path) == "json" {
                    serde_json::from_str(&text)?
                } else {
                    serde_json::from_value(serde_json::to_value(serde_norway::from_str::<
                        serde_norway::Value,
                    >(&text)?)?)?
                };
                Ok(list
                    .iter()
                    .enumerate()
                    .map(|(index, test)| self.test(test, &format!("{file}[{index}]")))
                    .collect())
            }
            other => {
                bail!("{location}: tests file type {other:?} is not supported (csv, json, yaml)")
            }
        }
    }

    /// promptfoo's CSV: variable columns, `__expected` (also `__expected1`, …)
    /// holding an assert in promptfoo's string form, `__description`,
    /// `__threshold`.
    fn csv_tests(&mut self, text: &str, path: &Path) -> anyhow::Result<Vec<TestCase>> {
        let file = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers()?.clone();
        let mut tests = Vec::new();
        for (row, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("{file}: row {}", row + 2))?;
            let mut test = TestCase::default();
            for (column, cell) in headers.iter().zip(record.iter()) {
                let location = format!("{file} row {} column {column}", row + 2);
                if column.starts_with("__expected") {
                    if !cell.trim().is_empty()
                        && let Some(grader) = self.assert_from_string(cell, &location)
                    {
                        test.assert.push(grader);
                    }
                } else if column == "__description" {
                    test.description = Some(cell.to_owned());
                } else if column == "__threshold" {
                    test.threshold = cell.trim().parse().ok();
                } else if column.starts_with("__") {
                    self.unsupported(location, format!("column {column}"));
                } else {
                    test.vars
                        .insert(column.to_owned(), Value::String(cell.to_owned()));
                }
            }
            tests.push(test);
        }
        Ok(tests)
    }

    /// promptfoo's `assertionFromString`: `type(threshold):value`, `grade:`
    /// for llm-rubric, `javascript:`/`fn:`/`eval:` and `python:` (not
    /// supported), else an `equals` on the whole text.
    fn assert_from_string(&mut self, text: &str, location: &str) -> Option<Value> {
        for (prefix, kind) in [
            ("javascript:", "javascript"),
            ("fn:", "javascript"),
            ("eval:", "javascript"),
            ("python:", "python"),
        ] {
            if text.starts_with(prefix) {
                self.unsupported(location, format!("a {kind} assert"));
                return None;
            }
        }
        if let Some(rubric) = text
            .strip_prefix("grade:")
            .or(text.strip_prefix("llm-rubric:"))
        {
            return self.assert(
                &json!({"type": "llm-rubric", "value": rubric.trim()}),
                location,
            );
        }
        let (head, value) = match text.split_once(':') {
            Some((head, value)) => (head, Some(value.trim_start())),
            None => (text, None),
        };
        let (type_name, threshold) = match head.split_once('(') {
            Some((type_name, rest)) => (
                type_name,
                rest.strip_suffix(')').and_then(|t| t.parse::<f64>().ok()),
            ),
            None => (head, None),
        };
        let base = type_name.strip_prefix("not-").unwrap_or(type_name);
        let known = [
            "equals",
            "contains",
            "icontains",
            "contains-any",
            "contains-all",
            "icontains-any",
            "icontains-all",
            "starts-with",
            "regex",
            "is-json",
            "contains-json",
            "is-xml",
            "levenshtein",
            "rouge-n",
            "bleu",
            "similar",
            "latency",
            "cost",
            "finish-reason",
        ];
        if !known.contains(&base)
            || (value.is_none() && !matches!(base, "is-json" | "contains-json" | "is-xml"))
        {
            return Some(json!({"type": "equals", "value": text}));
        }
        let mut assert = json!({"type": type_name});
        if let Some(value) = value {
            assert["value"] = if base.ends_with("-any") || base.ends_with("-all") {
                json!(value.split(',').map(str::trim).collect::<Vec<_>>())
            } else {
                json!(value)
            };
        }
        if let Some(threshold) = threshold {
            assert["threshold"] = json!(threshold);
        }
        self.assert(&assert, location)
    }

    fn test(&mut self, test: &Value, location: &str) -> TestCase {
        for key in test.as_object().map(Map::keys).into_iter().flatten() {
            if !matches!(
                key.as_str(),
                "vars" | "assert" | "description" | "threshold" | "metadata"
            ) {
                self.unsupported(format!("{location}.{key}"), "not translated");
            }
        }
        TestCase {
            id: None,
            description: test["description"].as_str().map(str::to_owned),
            vars: test["vars"].as_object().cloned().unwrap_or_default(),
            expected: None,
            threshold: test["threshold"].as_f64(),
            assert: self.asserts(&test["assert"], &format!("{location}.assert")),
        }
    }

    fn asserts(&mut self, asserts: &Value, location: &str) -> Vec<Value> {
        asserts
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .filter_map(|(index, assert)| self.assert(assert, &format!("{location}[{index}]")))
            .collect()
    }

    /// One promptfoo assert as an Assay grader, or None (reported).
    fn assert(&mut self, assert: &Value, location: &str) -> Option<Value> {
        let Some(type_name) = assert["type"].as_str() else {
            self.unsupported(location, "an assert without a type");
            return None;
        };
        let (negate, base) = match type_name.strip_prefix("not-") {
            Some(base) => (true, base),
            None => (false, type_name),
        };
        let value = &assert["value"];
        let threshold = assert["threshold"].as_f64();
        for key in assert.as_object().map(Map::keys).into_iter().flatten() {
            if !matches!(
                key.as_str(),
                "type" | "value" | "threshold" | "weight" | "provider" | "metric" | "description"
            ) {
                self.unsupported(
                    format!("{location}.{key}"),
                    format!("{key} on a {type_name} assert"),
                );
                return None;
            }
        }
        let string = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        };
        let strings = |value: &Value| -> Option<Vec<String>> {
            match value {
                Value::Array(list) => list.iter().map(string).collect(),
                Value::String(text) => {
                    Some(text.split(',').map(|part| part.trim().to_owned()).collect())
                }
                _ => None,
            }
        };
        let mut grader = match base {
            "equals" | "contains" | "icontains" | "starts-with" | "finish-reason" => {
                let Some(value) = string(value) else {
                    self.unsupported(
                        location,
                        format!("a {type_name} assert whose value is not text"),
                    );
                    return None;
                };
                json!({"type": base, "value": value})
            }
            "regex" => {
                let Some(pattern) = string(value) else {
                    self.unsupported(location, "a regex assert without a pattern");
                    return None;
                };
                json!({"type": "regex", "pattern": pattern})
            }
            "contains-any" | "contains-all" | "icontains-any" | "icontains-all" => {
                let Some(values) = strings(value) else {
                    self.unsupported(location, format!("a {type_name} assert without values"));
                    return None;
                };
                json!({"type": base, "values": values})
            }
            "is-json" | "contains-json" => match value {
                // promptfoo validates against `value` when it is a schema.
                Value::Object(schema) => json!({"type": "json-schema", "schema": schema}),
                Value::Null => json!({"type": base}),
                _ => {
                    self.unsupported(
                        location,
                        format!("a {type_name} schema given as a file or text"),
                    );
                    return None;
                }
            },
            "is-xml" => json!({"type": "is-xml"}),
            "is-refusal" => json!({"type": "is-refusal"}),
            "levenshtein" => {
                let Some(value) = string(value) else {
                    self.unsupported(location, "a levenshtein assert without a value");
                    return None;
                };
                // promptfoo: threshold is the largest edit distance, default 5.
                let max_distance = threshold.unwrap_or(5.0).max(0.0) as usize;
                let mut grader =
                    json!({"type": "levenshtein", "value": value, "max_distance": max_distance});
                if negate {
                    grader["type"] = json!("not-levenshtein");
                }
                if let Some(weight) = assert["weight"].as_f64() {
                    grader["weight"] = json!(weight);
                }
                return Some(grader);
            }
            "rouge-n" | "bleu" => {
                let Some(value) = string(value) else {
                    self.unsupported(
                        location,
                        format!("a {type_name} assert without a reference"),
                    );
                    return None;
                };
                json!({"type": base, "value": value})
            }
            "latency" => json!({"type": "latency", "max_ms": threshold.unwrap_or(0.0)}),
            "cost" => json!({"type": "cost", "max_usd": threshold.unwrap_or(0.0)}),
            "llm-rubric" | "factuality" => {
                let Some(text) = string(value) else {
                    self.unsupported(location, format!("a {type_name} assert without text"));
                    return None;
                };
                let judge = match provider_id(&assert["provider"]) {
                    Some(provider) => match self.map_provider(&provider) {
                        Some(judge) => Some(judge),
                        None => {
                            self.unsupported(
                                format!("{location}.provider"),
                                format!("judge provider {provider:?} has no registry name (--map {provider}=<name>)"),
                            );
                            return None;
                        }
                    },
                    None => self
                        .default_judge
                        .clone()
                        .or_else(|| self.options.judge.clone()),
                };
                let Some(judge) = judge else {
                    self.unsupported(
                        location,
                        format!("a {type_name} assert without a judge: set defaultTest.options.provider or pass --judge"),
                    );
                    return None;
                };
                if base == "llm-rubric" {
                    json!({"type": "llm-rubric", "rubric": text, "model": judge})
                } else {
                    json!({"type": "factuality", "value": text, "model": judge})
                }
            }
            other => {
                self.unsupported(location, format!("a {other} assert"));
                return None;
            }
        };
        if negate {
            grader["type"] = json!(format!("not-{}", grader["type"].as_str().unwrap_or(base)));
        }
        // latency/cost carry their limit in the threshold; elsewhere it is the pass mark.
        if let Some(threshold) = threshold
            && !matches!(base, "latency" | "cost")
        {
            grader["threshold"] = json!(threshold);
        }
        if let Some(weight) = assert["weight"].as_f64() {
            grader["weight"] = json!(weight);
        }
        Some(grader)
    }
}

/// A provider's id: a string, or `{id: ...}`.
fn provider_id(provider: &Value) -> Option<String> {
    match provider {
        Value::String(id) => Some(id.clone()),
        Value::Object(object) => object.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn slug(text: &str) -> String {
    let slug: String = text
        .chars()
        .map(|char| {
            if char.is_ascii_alphanumeric() {
                char.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug.trim_matches('-').to_owned();
    slug.chars().take(60).collect()
}

/// `assay import promptfoo FILE`: the spec as YAML.
pub fn to_yaml(spec: &Spec) -> anyhow::Result<String> {
    Ok(format!(
        "# Translated from a promptfoo config by `assay import promptfoo`.\n{}",
        serde_norway::to_string(spec)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate_text(yaml: &str, options: &Options) -> anyhow::Result<Translated> {
        let document: serde_norway::Value = serde_norway::from_str(yaml).unwrap();
        translate(&document, Path::new("promptfooconfig.yaml"), options)
    }

    #[test]
    fn maps_providers_and_names_the_unmapped() {
        let yaml = "prompts: ['Say {{x}}']\nproviders: [openai:gpt-4o-mini, anthropic:claude, echo]\ntests: [{vars: {x: 1}}]\n";
        let error = translate_text(yaml, &Options::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("openai:gpt-4o-mini, anthropic:claude"),
            "{error}"
        );
        let options = Options::default()
            .with_maps(&[
                "openai:gpt-4o-mini=mock".to_owned(),
                "anthropic:claude=mock:seed=2".to_owned(),
            ])
            .unwrap();
        let translated = translate_text(yaml, &options).unwrap();
        assert_eq!(translated.spec.models, vec!["mock", "mock:seed=2", "mock"]);
    }

    #[test]
    fn asserts_translate_or_are_reported_with_their_location() {
        let yaml = r#"
prompts: ['{{q}}']
providers: [echo]
defaultTest:
  options: {provider: echo}
tests:
  - vars: {q: hi}
    assert:
      - {type: levenshtein, value: hello, threshold: 2}
      - {type: javascript, value: "output.length > 1"}
      - {type: llm-rubric, value: is a greeting}
      - {type: not-icontains, value: bye}
      - {type: not-is-refusal}
"#;
        let translated = translate_text(yaml, &Options::default()).unwrap();
        assert_eq!(
            translated.unsupported,
            vec![Unsupported {
                location: "promptfooconfig.yaml: tests[0].assert[1]".to_owned(),
                what: "a javascript assert".to_owned()
            }]
        );
        let TestsSpec::List(tests) = &translated.spec.tests else {
            panic!()
        };
        let TestEntry::Test(test) = &tests[0] else {
            panic!()
        };
        assert_eq!(
            test.assert,
            vec![
                json!({"type": "levenshtein", "value": "hello", "max_distance": 2}),
                json!({"type": "llm-rubric", "rubric": "is a greeting", "model": "mock"}),
                json!({"type": "not-icontains", "value": "bye"}),
                json!({"type": "not-is-refusal"}),
            ]
        );
        assert!(translated.report(false).is_err());
        assert!(translated.report(true).is_ok());
    }

    #[test]
    fn expected_column_strings() {
        let mut translator = Translator {
            file: "t.csv".to_owned(),
            base: PathBuf::from("."),
            options: &Options::default(),
            unsupported: Vec::new(),
            default_judge: Some("mock".to_owned()),
        };
        let mut one = |text: &str| translator.assert_from_string(text, "here");
        assert_eq!(
            one("Paris"),
            Some(json!({"type": "equals", "value": "Paris"}))
        );
        assert_eq!(
            one("icontains: paris"),
            Some(json!({"type": "icontains", "value": "paris"}))
        );
        assert_eq!(
            one("levenshtein(1):Pariss"),
            Some(json!({"type": "levenshtein", "value": "Pariss", "max_distance": 1}))
        );
        assert_eq!(one("is-json"), Some(json!({"type": "is-json"})));
        assert_eq!(
            one("contains-any:a, b"),
            Some(json!({"type": "contains-any", "values": ["a", "b"]}))
        );
        assert_eq!(
            one("grade: polite"),
            Some(json!({"type": "llm-rubric", "rubric": "polite", "model": "mock"}))
        );
        assert_eq!(one("javascript: output.length"), None);
        assert_eq!(translator.unsupported.len(), 1);
    }
}
