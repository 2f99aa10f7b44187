//! An evaluation request and the checks it must pass before anything is written.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{InvalidInput, ModelParams, PromptContent};
use crate::graders::{self, GraderSpec};
use crate::providers::ModelCatalog;
use crate::templates::PromptTemplate;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRequest {
    pub prompt_version_id: Uuid,
    pub dataset_id: Uuid,
    pub models: Vec<String>,
    pub graders: Vec<GraderSpec>,
    /// Overrides of the prompt version's default parameters.
    #[serde(default)]
    pub params: Option<ModelParams>,
}

/// What a dataset offers templates: the variables every item defines, and
/// whether `expected` is always there.
#[derive(Debug, Clone)]
pub struct DatasetShape {
    pub variables: Vec<String>,
    pub all_expected: bool,
}

impl EvaluationRequest {
    /// Checks models, graders and parameters, and that every variable the
    /// prompt and the graders read is defined by every item of the dataset.
    pub fn validate(
        &self,
        catalog: &ModelCatalog,
        prompt: &PromptContent,
        dataset: &DatasetShape,
    ) -> Result<(), InvalidInput> {
        catalog.validate(&self.models)?;
        let compiled = graders::compile_all(&self.graders)?;
        if let Some(params) = &self.params {
            params.validate("params")?;
        }
        let mut defined: BTreeSet<&str> = dataset.variables.iter().map(String::as_str).collect();
        if dataset.all_expected {
            defined.insert("expected");
        }
        let describe_defined = || {
            if defined.is_empty() {
                "the items define no variable that all of them share".to_owned()
            } else {
                format!(
                    "every item defines: {}",
                    defined.iter().copied().collect::<Vec<_>>().join(", ")
                )
            }
        };
        let template = PromptTemplate::compile(&prompt.messages)
            .map_err(|error| InvalidInput::new("prompt_version_id", error.to_string()))?;
        if let Some(missing) = template
            .variables()
            .into_iter()
            .find(|name| !defined.contains(name.as_str()))
        {
            return Err(InvalidInput::new(
                "prompt_version_id",
                format!(
                    "the prompt uses variable `{missing}`, which not every dataset item defines ({})",
                    describe_defined()
                ),
            ));
        }
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
                        grader.kind(),
                        describe_defined()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{ChatMessage, Role};

    fn request(models: &[&str], graders: serde_json::Value) -> EvaluationRequest {
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
        }
    }

    #[test]
    fn accepts_variables_every_item_defines() {
        let request = request(
            &["mock"],
            json!([{"type": "equals", "value": "{{ expected }}"}]),
        );
        request
            .validate(&ModelCatalog, &prompt("{{ q }}"), &shape(&["q"], true))
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
                &ModelCatalog,
                &prompt("{{ q }} {{ r }}"),
                &shape(&["q"], true),
            )
            .unwrap_err();
        assert_eq!(error.field, "prompt_version_id");
        assert!(error.message.contains("`r`"), "{}", error.message);
        let error = request
            .validate(&ModelCatalog, &prompt("{{ q }}"), &shape(&["q"], false))
            .unwrap_err();
        assert_eq!(error.field, "graders[0]");
        assert!(error.message.contains("`expected`"), "{}", error.message);
    }

    #[test]
    fn rejects_unknown_models() {
        let request = request(&["mock", "gpt-17"], json!([{"type": "is-json"}]));
        let error = request
            .validate(&ModelCatalog, &prompt("x"), &shape(&[], false))
            .unwrap_err();
        assert_eq!(error.field, "models");
        assert!(error.message.contains("gpt-17"));
    }
}
