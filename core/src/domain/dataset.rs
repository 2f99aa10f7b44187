//! Dataset items as users send them: inline JSON, JSON Lines or CSV
//! (see [`super::csv_items`]).
//!
//! An item may carry its own graders (`graders`, also spelled `assert` as
//! spec files do): they are checked here like an evaluation's (type,
//! options, regexes, templates, judge models and the variables they read,
//! against this item) and stored normalized, so the worker only compiles them.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::InvalidInput;
use super::limits::{MAX_ITEM_BYTES, MAX_ITEM_ID_CHARS};
use crate::graders::{Grader, GraderSpec};
use crate::providers::ModelCatalog;

/// Most items one dataset may hold.
pub const MAX_ITEMS: usize = 1_000_000;

/// Most graders one item may carry: the worker compiles and runs each of
/// them on every output of the item, so the list is bounded like an
/// evaluation's.
pub const MAX_ITEM_GRADERS: usize = 20;

/// One test case: the variables its templates read, and optionally the
/// output a grader may compare with (`{{ expected }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetItemInput {
    /// Stable id, unique in the dataset; defaults to the item's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub vars: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    /// The item's pass mark on its weighted grader score (0 to 1); without
    /// one, the evaluation's `threshold` applies, and without that, every
    /// grader must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The item's own graders (same JSON as an evaluation's), applied
    /// together with the evaluation's.
    #[serde(default, alias = "assert", skip_serializing_if = "Option::is_none")]
    pub graders: Option<Vec<Value>>,
}

/// Items that passed validation, with what evaluations need to know about them.
#[derive(Debug, Clone)]
pub struct ParsedDataset {
    /// Items in order.
    pub items: Vec<ParsedItem>,
    pub summary: DatasetSummary,
}

/// One checked item. Serializable: an upload spools its checked items
/// before it writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedItem {
    pub key: String,
    pub vars: Value,
    pub expected: Option<Value>,
    pub threshold: Option<f64>,
    /// Normalized grader specs (None: the item has none).
    pub graders: Option<Value>,
}

/// Checks items one at a time, in order, so that an upload of any size is
/// checked without holding it: ids unique (only the ids are kept), ids and
/// thresholds well-formed, and what every item defines.
#[derive(Debug, Default)]
pub struct ItemChecker {
    seen: HashSet<String>,
    common: Option<BTreeSet<String>>,
    all_expected: bool,
    count: usize,
    /// Items that carry graders, and how many graders in all.
    with_graders: usize,
    graders: usize,
    /// Where judge model names are checked; without it (unit tests) any name passes.
    catalog: Option<ModelCatalog>,
}

/// What a whole dataset offers, known once every item is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    pub items: usize,
    /// Variables every item defines.
    pub variables: Vec<String>,
    /// Whether every item has an expected output.
    pub all_expected: bool,
    /// Items that carry their own graders.
    pub items_with_graders: usize,
    /// Graders over all items.
    pub item_graders: usize,
    /// What the upload's content hashes to (see the README's "Datasets"),
    /// set by whoever saw the bytes.
    pub content_hash: Option<String>,
}

impl ItemChecker {
    pub fn new() -> Self {
        Self {
            all_expected: true,
            ..Self::default()
        }
    }

    /// A checker that also checks item graders' judge models against `catalog`.
    pub fn with_catalog(catalog: ModelCatalog) -> Self {
        Self {
            catalog: Some(catalog),
            ..Self::new()
        }
    }

    /// Items checked so far: the next item's position.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Checks the next item; errors name it (`items[<position>].id`).
    pub fn check(&mut self, item: DatasetItemInput) -> Result<ParsedItem, InvalidInput> {
        let position = self.count;
        if position >= MAX_ITEMS {
            return Err(InvalidInput::new(
                "items",
                format!("at most {MAX_ITEMS} items per dataset"),
            ));
        }
        let field = format!("items[{position}]");
        if item.id.as_ref().is_some_and(|id| id.contains('\0')) {
            return Err(super::nul_in(format!("{field}.id")));
        }
        super::reject_nul_in_object(&format!("{field}.vars"), &item.vars)?;
        if let Some(expected) = &item.expected {
            super::reject_nul(&format!("{field}.expected"), expected)?;
        }
        for (index, grader) in item.graders.iter().flatten().enumerate() {
            super::reject_nul(&format!("{field}.graders[{index}]"), grader)?;
        }
        if super::json_exceeds(&(&item.vars, &item.expected, &item.graders), MAX_ITEM_BYTES) {
            return Err(InvalidInput::new(
                field,
                format!(
                    "an item is at most {MAX_ITEM_BYTES} bytes of JSON (vars, expected and graders)"
                ),
            ));
        }
        let key = item.id.unwrap_or_else(|| position.to_string());
        if key.is_empty() || key.chars().count() > MAX_ITEM_ID_CHARS {
            return Err(InvalidInput::new(
                format!("items[{position}].id"),
                format!("must be 1 to {MAX_ITEM_ID_CHARS} characters"),
            ));
        }
        if !self.seen.insert(key.clone()) {
            return Err(InvalidInput::new(
                format!("items[{position}].id"),
                format!("duplicate item id {key:?}"),
            ));
        }
        if let Some(threshold) = item.threshold
            && !(0.0..=1.0).contains(&threshold)
        {
            return Err(InvalidInput::new(
                format!("items[{position}].threshold"),
                "must be a number between 0 and 1",
            ));
        }
        let graders = match &item.graders {
            None => None,
            Some(values) => {
                Some(self.check_graders(position, values, &item.vars, &item.expected)?)
            }
        };
        self.common = Some(match self.common.take() {
            None => item.vars.keys().cloned().collect(),
            Some(mut common) => {
                common.retain(|name| item.vars.contains_key(name));
                common
            }
        });
        self.all_expected &= item.expected.is_some();
        self.count += 1;
        Ok(ParsedItem {
            key,
            vars: Value::Object(item.vars),
            expected: item.expected,
            threshold: item.threshold,
            graders,
        })
    }

    /// Parses and compiles one item's graders (so a bad regex or template is
    /// refused now, not at run time), checks judge models and the variables
    /// they read against this item; returns them normalized.
    fn check_graders(
        &mut self,
        position: usize,
        values: &[Value],
        vars: &Map<String, Value>,
        expected: &Option<Value>,
    ) -> Result<Value, InvalidInput> {
        let field = format!("items[{position}].graders");
        if values.len() > MAX_ITEM_GRADERS {
            return Err(InvalidInput::new(
                field,
                format!("at most {MAX_ITEM_GRADERS} graders per item"),
            ));
        }
        let mut specs = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let field = format!("{field}[{index}]");
            let spec = GraderSpec::parse(&field, value)?;
            let grader = Grader::compile(&field, &spec)?;
            if let (Some(catalog), Some(model)) = (&self.catalog, spec.judge_model()) {
                catalog.validate_judge(&format!("{field}.model"), model)?;
            }
            if let Some(missing) = grader.variables().into_iter().find(|name| {
                !(vars.contains_key(name) || (name == "expected" && expected.is_some()))
            }) {
                return Err(InvalidInput::new(
                    field,
                    format!(
                        "the {} grader uses variable `{missing}`, which this item does not define",
                        grader.name()
                    ),
                ));
            }
            specs.push(spec);
        }
        if !specs.is_empty() {
            self.with_graders += 1;
            self.graders += specs.len();
        }
        Ok(serde_json::to_value(&specs).expect("grader specs serialize"))
    }

    /// The summary; a dataset needs at least one item.
    pub fn finish(self) -> Result<DatasetSummary, InvalidInput> {
        if self.count == 0 {
            return Err(InvalidInput::new(
                "items",
                "a dataset needs at least one item",
            ));
        }
        Ok(DatasetSummary {
            items: self.count,
            variables: self.common.unwrap_or_default().into_iter().collect(),
            all_expected: self.all_expected,
            items_with_graders: self.with_graders,
            item_graders: self.graders,
            content_hash: None,
        })
    }
}

/// The content hash of an upload: SHA-256 over a format tag, a newline and
/// the body's bytes (`jsonl` for JSON Lines, and for JSON bodies, whose
/// items are hashed as the JSON Lines of their compact serialization; `csv`
/// for CSV). A client computes the same over what it would send, and looks
/// for a dataset with that hash before uploading.
#[derive(Clone)]
pub struct ContentHasher(sha2::Sha256);

impl ContentHasher {
    pub fn new(format: &str) -> Self {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(format.as_bytes());
        hasher.update(b"\n");
        Self(hasher)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        self.0.update(bytes);
    }

    /// Lowercase hex.
    pub fn finish(self) -> String {
        use sha2::Digest as _;
        hex::encode(self.0.finalize())
    }

    /// The hash of a JSON body's items.
    pub fn of_items(items: &[DatasetItemInput]) -> String {
        let mut hasher = Self::new("jsonl");
        for item in items {
            hasher.update(
                serde_json::to_string(item)
                    .expect("items serialize")
                    .as_bytes(),
            );
            hasher.update(b"\n");
        }
        hasher.finish()
    }
}

/// Checks items (at least one; unique ids) and derives the variables all of them define.
pub fn validate_items(items: Vec<DatasetItemInput>) -> Result<ParsedDataset, InvalidInput> {
    validate_items_with(ItemChecker::new(), items)
}

/// [`validate_items`] with a prepared checker (one that knows the model catalog).
pub fn validate_items_with(
    mut checker: ItemChecker,
    items: Vec<DatasetItemInput>,
) -> Result<ParsedDataset, InvalidInput> {
    if items.len() > MAX_ITEMS {
        return Err(InvalidInput::new(
            "items",
            format!("at most {MAX_ITEMS} items per dataset"),
        ));
    }
    let parsed = items
        .into_iter()
        .map(|item| checker.check(item))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedDataset {
        items: parsed,
        summary: checker.finish()?,
    })
}

/// One line of JSON Lines as an item; `line` is 1-based, for the error.
pub fn parse_jsonl_line(line: &str, number: usize) -> Result<DatasetItemInput, InvalidInput> {
    serde_json::from_str(line)
        .map_err(|error| InvalidInput::new(format!("line {number}"), error.to_string()))
}

/// Parses JSON Lines (blank lines skipped); an error names the line.
pub fn parse_jsonl_items(body: &str) -> Result<Vec<DatasetItemInput>, InvalidInput> {
    body.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| parse_jsonl_line(line, index + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(value: Value) -> DatasetItemInput {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn derives_common_variables_and_default_ids() {
        let parsed = validate_items(vec![
            item(json!({"vars": {"q": 1, "a": 2}, "expected": "x"})),
            item(json!({"vars": {"q": 3}, "expected": "y"})),
        ])
        .unwrap();
        assert_eq!(parsed.summary.variables, vec!["q".to_owned()]);
        assert!(parsed.summary.all_expected);
        assert_eq!(parsed.items[1].key, "1");
    }

    #[test]
    fn rejects_empty_and_duplicate_ids() {
        assert_eq!(validate_items(vec![]).unwrap_err().field, "items");
        let error = validate_items(vec![
            item(json!({"id": "a", "vars": {}})),
            item(json!({"id": "a", "vars": {}})),
        ])
        .unwrap_err();
        assert_eq!(error.field, "items[1].id");
    }

    #[test]
    fn item_thresholds_are_fractions() {
        let error = validate_items(vec![item(json!({"vars": {}, "threshold": 1.2}))]).unwrap_err();
        assert_eq!(error.field, "items[0].threshold");
        let parsed = validate_items(vec![item(json!({"vars": {}, "threshold": 0.5}))]).unwrap();
        assert_eq!(parsed.items[0].threshold, Some(0.5));
    }

    #[test]
    fn item_graders_are_checked_against_the_item() {
        let parsed = validate_items(vec![
            item(json!({"vars": {"city": "Paris"}, "assert": [{"type": "contains", "value": "{{ city }}"}]})),
            item(json!({"vars": {"city": "Rome"}})),
        ])
        .unwrap();
        assert_eq!(parsed.summary.items_with_graders, 1);
        assert_eq!(parsed.summary.item_graders, 1);
        assert_eq!(
            parsed.items[0].graders,
            Some(json!([{"type": "contains", "value": "{{ city }}"}]))
        );
        assert_eq!(parsed.items[1].graders, None);
        let error = validate_items(vec![item(
            json!({"vars": {}, "graders": [{"type": "contains", "value": "{{ city }}"}]}),
        )])
        .unwrap_err();
        assert_eq!(error.field, "items[0].graders[0]");
        assert!(error.message.contains("`city`"), "{error}");
        let error = validate_items(vec![item(
            json!({"vars": {}, "graders": [{"type": "is-json"}, {"type": "regex", "pattern": "("}]}),
        )])
        .unwrap_err();
        assert_eq!(error.field, "items[0].graders[1].pattern");
        let error = validate_items(vec![item(
            json!({"vars": {}, "graders": [{"type": "telepathy"}]}),
        )])
        .unwrap_err();
        assert_eq!(error.field, "items[0].graders[0].type");
        let many: Vec<Value> = (0..=MAX_ITEM_GRADERS)
            .map(|_| json!({"type": "is-json"}))
            .collect();
        let error = validate_items(vec![item(json!({"vars": {}, "graders": many}))]).unwrap_err();
        assert_eq!(error.field, "items[0].graders");
    }

    #[test]
    fn json_items_hash_like_their_json_lines() {
        let items = vec![
            item(json!({"vars": {"q": 1}})),
            item(json!({"vars": {"q": 2}})),
        ];
        let mut hasher = ContentHasher::new("jsonl");
        hasher.update(b"{\"vars\":{\"q\":1}}\n{\"vars\":{\"q\":2}}\n");
        assert_eq!(ContentHasher::of_items(&items), hasher.finish());
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let error = parse_jsonl_items("{\"vars\": {}}\n\n{\"vars\": 3}\n").unwrap_err();
        assert_eq!(error.field, "line 3");
        assert_eq!(parse_jsonl_items("{\"vars\": {}}\n").unwrap().len(), 1);
    }
}
