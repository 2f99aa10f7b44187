//! Structure graders: is-json.

use super::Grade;

pub(super) fn is_json(kind: &str, output: &str) -> Grade {
    match serde_json::from_str::<serde_json::Value>(output.trim()) {
        Ok(_) => Grade::pass(kind, "output is valid JSON"),
        Err(error) => Grade::fail(kind, format!("output is not JSON: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documents_and_rejects_the_rest() {
        assert!(is_json("is-json", r#"{"a": [1, 2]}"#).passed);
        assert!(is_json("is-json", " \n[1]\n").passed);
        assert!(!is_json("is-json", "").passed);
        assert!(!is_json("is-json", "{\"a\": }").passed);
        assert!(!is_json("is-json", "Sure! {\"a\": 1}").passed);
    }
}
