//! An evaluation request and the checks it must pass before anything is written.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{InvalidInput, ModelParams, PromptContent};
use crate::graders::{self, GraderSpec};
use crate::ids::{DatasetId, VersionId};
use crate::providers::ModelCatalog;
use crate::templates::PromptTemplate;
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationRequest {
    /// The prompt version, by id; or name the prompt and a label or branch.
    #[serde(default)]
    pub prompt_version_id: Option<VersionId>,
    /// A prompt by name or id, resolved at submission through `label` or
    /// `branch` (default: the head of `main`).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    pub dataset_id: DatasetId,
    pub models: Vec<String>,
    /// Grader specs; parsed one by one so that errors name `graders[i].field`.
    pub graders: Vec<Value>,
    /// Overrides of the prompt version's default parameters.
    #[serde(default)]
    pub params: Option<ModelParams>,
    /// Runs of each item x model (1 to 100, default 1).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// When set, an item passes when its weighted score reaches it (0 to 1),
    /// instead of when every grader passes.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Whether deterministic calls (temperature 0 or a seed) may be answered
    /// from the response cache (default true).
    #[serde(default)]
    pub cache: Option<bool>,
    /// Which queue its chunks travel on (default normal).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// What it may spend, in US dollars: refused at submission when the
    /// cost estimate's lower bound passes it; canceled (reason `budget`)
    /// when its calls would.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Where to POST this evaluation's end (`evaluation.succeeded`,
    /// `failed`, `canceled`), signed with a secret returned once in the 202.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// Which queue an evaluation's chunks travel on: workers serve high before
/// normal before low, both when taking chunks and when handing out LLM calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Position in [`Priority::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// One level up (high stays high).
    pub fn raised(self) -> Self {
        match self {
            Priority::Low => Priority::Normal,
            Priority::Normal | Priority::High => Priority::High,
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|priority| priority.as_str() == text)
            .ok_or_else(|| format!("unknown priority {text:?} (high, normal or low)"))
    }
}

/// Most runs of one item x model.
pub const MAX_REPEAT: u32 = 100;

/// Parses and checks graders against a dataset: types and options, judge
/// models, and the item variables their values read.
pub fn validate_graders(
    catalog: &ModelCatalog,
    values: &[Value],
    dataset: &DatasetShape,
) -> Result<Vec<GraderSpec>, InvalidInput> {
    if values.is_empty() && dataset.every_item_graded {
        return Ok(Vec::new());
    }
    let specs = GraderSpec::parse_all(values)?;
    let compiled = graders::compile_all(&specs)?;
    for (index, spec) in specs.iter().enumerate() {
        if let Some(model) = spec.judge_model() {
            catalog.validate_judge(&format!("graders[{index}].model"), model)?;
        }
    }
    let defined = dataset.defined();
    for (index, grader) in compiled.iter().enumerate() {
        if let Some(missing) = grader
            .variables()
            .into_iter()
            .find(|name| !defined.contains(name.as_str()))
        {
            return Err(InvalidInput::new(
                format!("graders[{index}]"),
                format!(
                    "the {} grader uses variable `{missing}`, which not every dataset item defines ({})",
                    grader.name(),
                    dataset.describe()
                ),
            ));
        }
    }
    Ok(specs)
}

/// Checks an item threshold: a number from 0 to 1.
pub fn validate_threshold(threshold: Option<f64>) -> Result<(), InvalidInput> {
    match threshold {
        Some(threshold) if !(0.0..=1.0).contains(&threshold) => Err(InvalidInput::new(
            "threshold",
            "must be a number between 0 and 1",
        )),
        _ => Ok(()),
    }
}

/// What a dataset offers templates: the variables every item defines, and
/// whether `expected` is always there.
#[derive(Debug, Clone)]
pub struct DatasetShape {
    pub variables: Vec<String>,
    pub all_expected: bool,
    /// Every item carries its own graders: the evaluation may then bring none.
    pub every_item_graded: bool,
}

impl DatasetShape {
    /// Variables a template may read on this dataset.
    pub fn defined(&self) -> BTreeSet<&str> {
        let mut defined: BTreeSet<&str> = self.variables.iter().map(String::as_str).collect();
        if self.all_expected {
            defined.insert("expected");
        }
        defined
    }

    fn describe(&self) -> String {
        let defined = self.defined();
        if defined.is_empty() {
            "the items define no variable that all of them share".to_owned()
        } else {
            format!(
                "every item defines: {}",
                defined.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// How a request names its prompt version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptChoice {
    Version(VersionId),
    Label { prompt: String, label: String },
    Branch { prompt: String, branch: String },
}

impl EvaluationRequest {
    /// Which version the request means: by id, or a prompt with one of a
    /// label or a branch (default `main`).
    pub fn prompt_choice(&self) -> Result<PromptChoice, InvalidInput> {
        match (&self.prompt_version_id, &self.prompt) {
            (Some(_), Some(_)) => Err(InvalidInput::new(
                "prompt",
                "give either prompt_version_id or prompt (with a label or a branch), not both",
            )),
            (None, None) => Err(InvalidInput::new(
                "prompt_version_id",
                "required: a prompt version id, or `prompt` with a `label` or `branch`",
            )),
            (Some(id), None) => match (&self.label, &self.branch) {
                (None, None) => Ok(PromptChoice::Version(*id)),
                (Some(_), _) => Err(InvalidInput::new(
                    "label",
                    "a label names a version of `prompt`; it cannot go with prompt_version_id",
                )),
                (None, Some(_)) => Err(InvalidInput::new(
                    "branch",
                    "a branch names a version of `prompt`; it cannot go with prompt_version_id",
                )),
            },
            (None, Some(prompt)) => match (&self.label, &self.branch) {
                (Some(_), Some(_)) => Err(InvalidInput::new(
                    "branch",
                    "give a label or a branch, not both",
                )),
                (Some(label), None) => Ok(PromptChoice::Label {
                    prompt: prompt.clone(),
                    label: label.clone(),
                }),
                (None, branch) => Ok(PromptChoice::Branch {
                    prompt: prompt.clone(),
                    branch: branch.clone().unwrap_or_else(|| "main".to_owned()),
                }),
            },
        }
    }

    /// Checks models, graders, parameters, repeat and threshold, and that every
    /// variable the prompt and the graders read is defined by every item of
    /// the dataset. Returns the parsed graders.
    pub fn validate(
        &self,
        catalog: &ModelCatalog,
        prompt: &PromptContent,
        dataset: &DatasetShape,
    ) -> Result<Vec<GraderSpec>, InvalidInput> {
        catalog.validate(&self.models)?;
        if let Some(params) = &self.params {
            params.validate("params")?;
        }
        if let Some(repeat) = self.repeat
            && !(1..=MAX_REPEAT).contains(&repeat)
        {
            return Err(InvalidInput::new(
                "repeat",
                format!("must be between 1 and {MAX_REPEAT}"),
            ));
        }
        validate_threshold(self.threshold)?;
        if let Some(max) = self.max_cost_usd
            && !(max.is_finite() && max >= 0.0)
        {
            return Err(InvalidInput::new(
                "max_cost_usd",
                "must be a non-negative number of US dollars",
            ));
        }
        let template = PromptTemplate::compile(&prompt.messages)
            .map_err(|error| InvalidInput::new("prompt_version_id", error.to_string()))?;
        let defined = dataset.defined();
        if let Some(missing) = template
            .variables()
            .into_iter()
            .find(|name| !defined.contains(name.as_str()))
        {
            return Err(InvalidInput::new(
                "prompt_version_id",
                format!(
                    "the prompt uses variable `{missing}`, which not every dataset item defines ({})",
                    dataset.describe()
                ),
            ));
        }
        validate_graders(catalog, &self.graders, dataset)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{ChatMessage, Role};

    fn request(models: &[&str], graders: Value) -> EvaluationRequest {
        serde_json::from_value(json!({
            "prompt_version_id": Uuid::nil(),
            "dataset_id": Uuid::nil(),
            "models": models,
            "graders": graders,
        }))
        .unwrap()
    }

    fn prompt(content: &str) -> PromptContent {
        PromptContent {
            messages: vec![ChatMessage {
                role: Role::User,
                content: content.to_owned(),
            }],
            params: ModelParams::default(),
        }
    }

    fn shape(variables: &[&str], all_expected: bool) -> DatasetShape {
        DatasetShape {
            variables: variables.iter().map(|v| (*v).to_owned()).collect(),
            all_expected,
            every_item_graded: false,
        }
    }

    #[test]
    fn graders_may_be_left_to_the_items_only_when_every_item_has_some() {
        let mut dataset = shape(&[], false);
        assert_eq!(
            validate_graders(&ModelCatalog::default(), &[], &dataset)
                .unwrap_err()
                .field,
            "graders"
        );
        dataset.every_item_graded = true;
        assert!(
            validate_graders(&ModelCatalog::default(), &[], &dataset)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn accepts_variables_every_item_defines() {
        let request = request(
            &["mock"],
            json!([{"type": "equals", "value": "{{ expected }}"}]),
        );
        request
            .validate(
                &ModelCatalog::default(),
                &prompt("{{ q }}"),
                &shape(&["q"], true),
            )
            .unwrap();
    }

    #[test]
    fn names_the_missing_variable_and_where_it_is_used() {
        let request = request(
            &["mock"],
            json!([{"type": "equals", "value": "{{ expected }}"}]),
        );
        let error = request
            .validate(
                &ModelCatalog::default(),
                &prompt("{{ q }} {{ r }}"),
                &shape(&["q"], true),
            )
            .unwrap_err();
        assert_eq!(error.field, "prompt_version_id");
        assert!(error.message.contains("`r`"), "{}", error.message);
        let error = request
            .validate(
                &ModelCatalog::default(),
                &prompt("{{ q }}"),
                &shape(&["q"], false),
            )
            .unwrap_err();
        assert_eq!(error.field, "graders[0]");
        assert!(error.message.contains("`expected`"), "{}", error.message);
    }

    #[test]
    fn rejects_bad_repeat_threshold_and_judges() {
        let mut bad = request(&["mock"], json!([{"type": "is-json"}]));
        bad.repeat = Some(0);
        assert_eq!(
            bad.validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
                .unwrap_err()
                .field,
            "repeat"
        );
        bad.repeat = Some(5);
        bad.threshold = Some(1.5);
        assert_eq!(
            bad.validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
                .unwrap_err()
                .field,
            "threshold"
        );
        let judge = request(
            &["mock"],
            json!([{"type": "is-json"}, {"type": "llm-rubric", "rubric": "r", "model": "gpt-9"}]),
        );
        let error = judge
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[1].model");
        let unknown = request(
            &["mock"],
            json!([{"type": "is-json"}, {"type": "not-telepathy"}]),
        );
        let error = unknown
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[1].type");
        assert!(error.message.contains("not-telepathy"));
        let option = request(&["mock"], json!([{"type": "contains", "valeu": "x"}]));
        let error = option
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[0]");
        assert!(error.message.contains("valeu"), "{}", error.message);
        let weight = request(&["mock"], json!([{"type": "is-json", "weight": -1}]));
        let error = weight
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[0].weight");
        let threshold = request(
            &["mock"],
            json!([{"type": "similarity", "value": "x", "threshold": 2}]),
        );
        let error = threshold
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[0].threshold");
    }

    #[test]
    fn names_the_prompt_one_way() {
        let by_label: EvaluationRequest = serde_json::from_value(json!({
            "prompt": "support", "label": "production", "dataset_id": Uuid::nil(),
            "models": ["mock"], "graders": [],
        }))
        .unwrap();
        assert_eq!(
            by_label.prompt_choice().unwrap(),
            PromptChoice::Label {
                prompt: "support".into(),
                label: "production".into()
            }
        );
        let mut default_branch = by_label.clone();
        default_branch.label = None;
        assert_eq!(
            default_branch.prompt_choice().unwrap(),
            PromptChoice::Branch {
                prompt: "support".into(),
                branch: "main".into()
            }
        );
        let mut both = by_label.clone();
        both.prompt_version_id = Some(VersionId::from_uuid(Uuid::nil()));
        assert_eq!(both.prompt_choice().unwrap_err().field, "prompt");
        let mut label_and_branch = by_label.clone();
        label_and_branch.branch = Some("dev".into());
        assert_eq!(
            label_and_branch.prompt_choice().unwrap_err().field,
            "branch"
        );
        let mut neither = by_label;
        neither.prompt = None;
        neither.label = None;
        assert_eq!(
            neither.prompt_choice().unwrap_err().field,
            "prompt_version_id"
        );
    }

    #[test]
    fn rejects_unknown_models() {
        let request = request(&["mock", "gpt-17"], json!([{"type": "is-json"}]));
        let error = request
            .validate(&ModelCatalog::default(), &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "models");
        assert!(error.message.contains("gpt-17"));
    }
}
