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

/// Checks items (at least one; unique ids) and derives the variables all of them define.
pub fn validate_items(items: Vec<DatasetItemInput>) -> Result<ParsedDataset, InvalidInput> {
    if items.is_empty() {
        return Err(InvalidInput::new(
            "items",
            "a dataset needs at least one item",
        ));
    }
    if items.len() > MAX_ITEMS {
        return Err(InvalidInput::new(
            "items",
            format!("at most {MAX_ITEMS} items per dataset"),
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut common: Option<BTreeSet<String>> = None;
    let mut all_expected = true;
    let mut parsed = Vec::with_capacity(items.len());
    for (position, item) in items.into_iter().enumerate() {
        let key = item.id.unwrap_or_else(|| position.to_string());
        if key.is_empty() || key.chars().count() > 200 {
            return Err(InvalidInput::new(
                format!("items[{position}].id"),
                "must be 1 to 200 characters",
            ));
        }
        if !seen.insert(key.clone()) {
            return Err(InvalidInput::new(
                format!("items[{position}].id"),
                format!("duplicate item id {key:?}"),
            ));
        }
        let keys: BTreeSet<String> = item.vars.keys().cloned().collect();
        common = Some(match common {
            None => keys,
            Some(common) => common.intersection(&keys).cloned().collect(),
        });
        if let Some(threshold) = item.threshold
            && !(0.0..=1.0).contains(&threshold)
        {
            return Err(InvalidInput::new(
                format!("items[{position}].threshold"),
                "must be a number between 0 and 1",
            ));
        }
        all_expected &= item.expected.is_some();
        parsed.push(ParsedItem {
            key,
            vars: Value::Object(item.vars),
            expected: item.expected,
            threshold: item.threshold,
        });
    }
    Ok(ParsedDataset {
        items: parsed,
        variables: common.unwrap_or_default().into_iter().collect(),
        all_expected,
    })
}

/// Parses JSON Lines (blank lines skipped); an error names the line.
pub fn parse_jsonl_items(body: &str) -> Result<Vec<DatasetItemInput>, InvalidInput> {
    body.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| {
                InvalidInput::new(format!("line {}", index + 1), error.to_string())
            })
        })
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
