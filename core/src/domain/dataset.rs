//! Dataset items as users send them: inline JSON or JSON Lines.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::InvalidInput;

/// Most items one dataset may hold.
pub const MAX_ITEMS: usize = 1_000_000;

/// One test case: the variables its templates read, and optionally the
/// output a grader may compare with (`{{ expected }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetItemInput {
    /// Stable id, unique in the dataset; defaults to the item's position.
    #[serde(default)]
    pub id: Option<String>,
    pub vars: Map<String, Value>,
    #[serde(default)]
    pub expected: Option<Value>,
    /// The item's pass mark on its weighted grader score (0 to 1); without
    /// one, the evaluation's `threshold` applies, and without that, every
    /// grader must pass.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// Items that passed validation, with what evaluations need to know about them.
#[derive(Debug, Clone)]
pub struct ParsedDataset {
    /// Items in order.
    pub items: Vec<ParsedItem>,
    /// Variables every item defines.
    pub variables: Vec<String>,
    /// Whether every item has an expected output.
    pub all_expected: bool,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedItem {
    pub key: String,
    pub vars: Value,
    pub expected: Option<Value>,
    pub threshold: Option<f64>,
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
}

/// What a whole dataset offers, known once every item is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    pub items: usize,
    /// Variables every item defines.
    pub variables: Vec<String>,
    /// Whether every item has an expected output.
    pub all_expected: bool,
}

impl ItemChecker {
    pub fn new() -> Self {
        Self {
            all_expected: true,
            ..Self::default()
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
        let key = item.id.unwrap_or_else(|| position.to_string());
        if key.is_empty() || key.chars().count() > 200 {
            return Err(InvalidInput::new(
                format!("items[{position}].id"),
                "must be 1 to 200 characters",
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
        })
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
        })
    }
}

/// Checks items (at least one; unique ids) and derives the variables all of them define.
pub fn validate_items(items: Vec<DatasetItemInput>) -> Result<ParsedDataset, InvalidInput> {
    if items.len() > MAX_ITEMS {
        return Err(InvalidInput::new(
            "items",
            format!("at most {MAX_ITEMS} items per dataset"),
        ));
    }
    let mut checker = ItemChecker::new();
    let parsed = items
        .into_iter()
        .map(|item| checker.check(item))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = checker.finish()?;
    Ok(ParsedDataset {
        items: parsed,
        variables: summary.variables,
        all_expected: summary.all_expected,
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
        assert_eq!(parsed.variables, vec!["q".to_owned()]);
        assert!(parsed.all_expected);
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
    fn jsonl_errors_name_the_line() {
        let error = parse_jsonl_items("{\"vars\": {}}\n\n{\"vars\": 3}\n").unwrap_err();
        assert_eq!(error.field, "line 3");
        assert_eq!(parse_jsonl_items("{\"vars\": {}}\n").unwrap().len(), 1);
    }
}
