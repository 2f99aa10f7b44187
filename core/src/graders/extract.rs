//! Structural checks on model outputs, for the is-json, contains-json,
//! json-schema, json-path and is-xml graders.
//!
//! - [`parse_json_document`]: the whole output is one JSON document (a single
//!   fenced code block around it is accepted, as models often add one);
//! - [`find_json`]: the first JSON object or array embedded in free text;
//! - [`compile_schema`] / [`CompiledSchema::validate`]: JSON Schema, compiled
//!   once per job and applied to every output;
//! - [`compile_path`] / [`CompiledPath::query`]: RFC 9535 JSONPath;
//! - [`check_xml`]: XML well-formedness.
//!
//! Everything here works on untrusted text (model outputs, user schemas), so
//! each check is bounded: serde_json caps nesting depth, [`find_json`] caps the
//! number of start positions it tries, and schemas never fetch remote `$ref`s.

use serde_json::Value;

/// Most start positions [`find_json`] tries to parse from.
///
/// Each attempt may read to the end of the output, so without a cap an output
/// full of `{` or `[` would cost quadratic time. With it the worst case is
/// `MAX_JSON_STARTS × output length`, and in practice an attempt on junk fails
/// within a few bytes. Brackets that cannot begin an object or array, as in
/// prose like `{name}` or `[citation needed]`, are skipped by a cheap
/// look-ahead and do not count against the cap.
const MAX_JSON_STARTS: usize = 1_000;

/// Most schema violations reported by [`CompiledSchema::validate`]: enough to
/// explain a failure without flooding the grade's reason.
const MAX_SCHEMA_ERRORS: usize = 5;

/// Longest schema-violation message kept, in characters. jsonschema's
/// messages quote the offending instance, which may be a large part of the
/// output.
const MAX_MESSAGE_CHARS: usize = 300;

/// Info strings accepted on a fenced block around a JSON document.
const JSON_FENCE_LANGS: &[&str] = &["json", ""];

/// Info strings accepted on a fenced block around an XML document; a bare
/// fence is accepted too, since what it holds is still checked as XML.
const XML_FENCE_LANGS: &[&str] = &["xml", ""];

/// The body of `text` (already trimmed) when it is exactly one fenced code
/// block whose info string is one of `langs` (ASCII case-insensitive).
///
/// The opening fence must be followed by a newline and the closing fence must
/// stand on its own line; a body containing another fence line means several
/// blocks (or prose between blocks), which is not "exactly one block".
fn fenced_body<'a>(text: &'a str, langs: &[&str]) -> Option<&'a str> {
    let rest = text.strip_prefix("```")?;
    let (info, rest) = rest.split_once('\n')?;
    let info = info.trim();
    if !langs.iter().any(|lang| info.eq_ignore_ascii_case(lang)) {
        return None;
    }
    let body = rest.strip_suffix("```")?;
    // The closing fence starts a line: the body is empty or ends a line.
    if !body.is_empty() && !body.ends_with('\n') {
        return None;
    }
    if body
        .lines()
        .any(|line| line.trim_start().starts_with("```"))
    {
        return None;
    }
    Some(body.trim())
}

/// Parses the whole output (trimmed) as one JSON document of any type.
///
/// An output that is exactly one fenced code block (```` ```json ```` or a
/// bare ```` ``` ````) is unwrapped first. Err is a short reason a person can
/// read, with serde_json's line and column.
pub(crate) fn parse_json_document(output: &str) -> Result<Value, String> {
    let text = output.trim();
    if text.is_empty() {
        return Err("the output is empty".to_owned());
    }
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        // Only look for a fence once the plain parse failed: a fenced block is
        // never valid JSON itself, so this order cannot change a valid result.
        Err(error) => match fenced_body(text, JSON_FENCE_LANGS) {
            Some("") => Err("the fenced code block is empty".to_owned()),
            Some(body) => serde_json::from_str(body)
                .map_err(|error| format!("the fenced code block is not valid JSON: {error}")),
            None => Err(format!("not valid JSON: {error}")),
        },
    }
}

/// Whether the text after a `{` or `[` can continue an object or array.
///
/// A cheap filter so brackets in prose, like `{name}` or `[sic]`, do not use
/// up [`MAX_JSON_STARTS`]. The whitespace skipped here is
/// bounded by the next `{`/`[`, so the filter is linear over the whole scan.
fn can_open_container(open: u8, after: &str) -> bool {
    let Some(next) = after.bytes().find(|byte| !byte.is_ascii_whitespace()) else {
        return false;
    };
    match open {
        // An object is empty or starts with a string key.
        b'{' => matches!(next, b'"' | b'}'),
        // An array is empty or starts with any JSON value.
        _ => matches!(
            next,
            b']' | b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        ),
    }
}

/// The first JSON object or array embedded anywhere in `output`, such as
/// `Sure! Here it is: {"a": 1} Hope it helps`.
///
/// Tries each `{` / `[` in order and parses the first value from there,
/// ignoring whatever follows it. At most [`MAX_JSON_STARTS`] plausible start
/// positions are tried, so JSON that follows more than that many candidate
/// brackets is not found; that bounds the time spent on pathological outputs.
pub(crate) fn find_json(output: &str) -> Option<Value> {
    output
        .match_indices(['{', '['])
        .filter(|&(start, open)| can_open_container(open.as_bytes()[0], &output[start + 1..]))
        .take(MAX_JSON_STARTS)
        .find_map(|(start, _)| {
            // `{` and `[` are ASCII, so `start` is a char boundary. A failed
            // attempt is simply skipped: the real JSON may start later.
            let mut values = serde_json::Deserializer::from_str(&output[start..]).into_iter();
            match values.next() {
                Some(Ok(value @ (Value::Object(_) | Value::Array(_)))) => Some(value),
                _ => None,
            }
        })
}

/// A JSON Schema compiled once (per job) and applied to many outputs.
///
/// The draft comes from the schema's `$schema`, defaulting to 2020-12;
/// `format` is an annotation only, as that draft specifies.
pub(crate) struct CompiledSchema(jsonschema::Validator);

/// By hand, because the validator's own Debug dumps its whole compiled tree,
/// which is noise in logs.
impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CompiledSchema")
            .field(&self.0.draft())
            .finish()
    }
}

/// Compiles a JSON Schema; Err says why the schema is invalid.
///
/// The schema is checked against its draft's meta-schema, so `{"type": 12}`
/// is an error rather than a schema that fails everything. Nothing is ever
/// fetched: a `$ref` outside the schema (http, file) makes compilation fail.
/// The retriever is set offline explicitly rather than relying on the HTTP
/// feature being off, because Cargo's feature unification could turn it back
/// on through another crate, and a blocking fetch inside the async worker
/// would panic.
pub(crate) fn compile_schema(schema: &Value) -> Result<CompiledSchema, String> {
    jsonschema::options()
        .offline()
        .build(schema)
        .map(CompiledSchema)
        .map_err(|error| {
            let path = error.instance_path().as_str();
            if path.is_empty() {
                format!("invalid schema: {error}")
            } else {
                format!("invalid schema at {path}: {error}")
            }
        })
}

/// `message` cut to [`MAX_MESSAGE_CHARS`] characters, marked with `…` if cut.
fn shorten(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message,
    }
}

impl CompiledSchema {
    /// Ok when `value` matches the schema; else up to [`MAX_SCHEMA_ERRORS`]
    /// messages, each prefixed with the JSON Pointer of the offending value
    /// (`at /items/0/name: ...`, `at /: ...` for the document itself).
    pub(crate) fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .0
            .iter_errors(value)
            .take(MAX_SCHEMA_ERRORS)
            .map(|error| {
                let path = error.instance_path().as_str();
                let path = if path.is_empty() { "/" } else { path };
                shorten(format!("at {path}: {error}"))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// An RFC 9535 JSONPath query, compiled once and applied to many outputs.
#[derive(Debug)]
pub(crate) struct CompiledPath(serde_json_path::JsonPath);

/// Most nodes of a query a grader looks at.
const MAX_PATH_NODES: usize = 1_000;

/// Compiles an RFC 9535 JSONPath such as `$.answer` or `$.items[0].name`;
/// Err names the position and the problem. At most one descendant segment
/// (`..`): each one multiplies the nodes a query visits, and six of them
/// over a nested output (`$..*..*..*..*..*..*`) exhaust a worker's memory.
pub(crate) fn compile_path(path: &str) -> Result<CompiledPath, String> {
    if path.matches("..").count() > 1 {
        return Err(format!(
            "JSONPath {path:?} has more than one descendant segment (`..`); one is the most a grader may use"
        ));
    }
    serde_json_path::JsonPath::parse(path)
        .map(CompiledPath)
        .map_err(|error| format!("invalid JSONPath {path:?}: {error}"))
}

impl CompiledPath {
    /// The first [`MAX_PATH_NODES`] nodes the path selects in `value`, in
    /// document order. Empty when nothing matches.
    pub(crate) fn query<'v>(&self, value: &'v Value) -> Vec<&'v Value> {
        self.0
            .query(value)
            .into_iter()
            .take(MAX_PATH_NODES)
            .collect()
    }
}

/// Ok(root element's local name) when the trimmed output is a well-formed XML
/// document; Err(reason) otherwise.
///
/// An output that is exactly one fenced code block (```` ```xml ```` or a bare
/// ```` ``` ````) is unwrapped first. DTDs are refused (roxmltree's default),
/// which keeps entity-expansion tricks out.
pub(crate) fn check_xml(output: &str) -> Result<String, String> {
    let text = output.trim();
    if text.is_empty() {
        return Err("the output is empty".to_owned());
    }
    let root_name =
        |document: roxmltree::Document<'_>| document.root_element().tag_name().name().to_owned();
    match roxmltree::Document::parse(text) {
        Ok(document) => Ok(root_name(document)),
        // As for JSON: a fence is only considered once the plain parse failed.
        Err(error) => match fenced_body(text, XML_FENCE_LANGS) {
            Some("") => Err("the fenced code block is empty".to_owned()),
            Some(body) => roxmltree::Document::parse(body)
                .map(root_name)
                .map_err(|error| format!("the fenced code block is not well-formed XML: {error}")),
            None => Err(format!("not well-formed XML: {error}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    /// Generous, since tests run unoptimised on shared machines; the
    /// quadratic behaviour these guard against takes minutes, not seconds.
    const QUICK: Duration = Duration::from_secs(5);

    // parse_json_document

    #[test]
    fn document_valid_any_type_and_trimmed() {
        assert_eq!(
            parse_json_document("  {\"a\": 1}\n").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(parse_json_document("[1, 2]").unwrap(), json!([1, 2]));
        assert_eq!(parse_json_document("42").unwrap(), json!(42));
        assert_eq!(parse_json_document("\"hi\"").unwrap(), json!("hi"));
        assert_eq!(parse_json_document("null").unwrap(), json!(null));
    }

    #[test]
    fn document_invalid() {
        let error = parse_json_document("{\"a\": 1,}").unwrap_err();
        assert!(error.starts_with("not valid JSON"), "{error}");
        assert!(parse_json_document("{'a': 1}").is_err());
        assert!(parse_json_document("hello").is_err());
        // Prose around JSON is contains-json's business, not is-json's.
        assert!(parse_json_document("Sure: {\"a\": 1}").is_err());
        assert!(parse_json_document("{\"a\": 1} {\"b\": 2}").is_err());
    }

    #[test]
    fn document_empty() {
        assert_eq!(parse_json_document("").unwrap_err(), "the output is empty");
        assert_eq!(
            parse_json_document(" \n\t ").unwrap_err(),
            "the output is empty"
        );
    }

    #[test]
    fn document_fenced() {
        assert_eq!(
            parse_json_document("```json\n{\"a\": [1, 2]}\n```").unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            parse_json_document("\n```\n[true]\n```\n").unwrap(),
            json!([true])
        );
        assert_eq!(
            parse_json_document("```JSON\r\n{\"a\": 1}\r\n```").unwrap(),
            json!({"a": 1})
        );
        let error = parse_json_document("```json\n{\"a\": }\n```").unwrap_err();
        assert!(error.contains("fenced code block"), "{error}");
        assert!(parse_json_document("```json\n```").is_err());
        // Another language, prose after the block, or two blocks: not one JSON block.
        assert!(parse_json_document("```python\n{\"a\": 1}\n```").is_err());
        assert!(parse_json_document("```json\n{\"a\": 1}\n```\nDone.").is_err());
        assert!(parse_json_document("```json\n{}\n```\n```json\n{}\n```").is_err());
    }

    #[test]
    fn document_unicode() {
        assert_eq!(
            parse_json_document("{\"greeting\": \"héllo 世界 🎉\", \"esc\": \"\\u00e9\"}").unwrap(),
            json!({"greeting": "héllo 世界 🎉", "esc": "é"})
        );
    }

    // find_json

    #[test]
    fn finds_object_in_prose() {
        assert_eq!(
            find_json("Sure! Here it is: {\"a\": 1} Hope it helps"),
            Some(json!({"a": 1}))
        );
    }

    #[test]
    fn finds_array_in_prose() {
        assert_eq!(
            find_json("The list: [1, \"two\", {\"three\": 3}]. Done."),
            Some(json!([1, "two", {"three": 3}]))
        );
    }

    #[test]
    fn skips_non_json_braces() {
        assert_eq!(
            find_json("Use {name} and [sic] or {\"broken\": } then {\"ok\": true}"),
            Some(json!({"ok": true}))
        );
        // An unclosed outer object: the inner complete one is found.
        assert_eq!(
            find_json("{\"outer\": {\"inner\": 1}"),
            Some(json!({"inner": 1}))
        );
    }

    #[test]
    fn finds_first_of_several_and_in_fences() {
        assert_eq!(find_json("First [1] then {\"a\": 2}"), Some(json!([1])));
        assert_eq!(
            find_json("Here:\n```json\n{\"a\": \"ünï\"}\n```\nBye ✨"),
            Some(json!({"a": "ünï"}))
        );
    }

    #[test]
    fn finds_nothing() {
        assert_eq!(find_json(""), None);
        assert_eq!(find_json("no json here at all"), None);
        // Scalars alone are not what contains-json looks for.
        assert_eq!(find_json("the answer is 42 or \"x\""), None);
        assert_eq!(find_json("{ not json } [ nor this"), None);
    }

    #[test]
    fn long_output_with_json_at_the_end_is_quick() {
        let mut output = "Lorem ipsum dolor sit amet, {name} [sic]. ".repeat(5_000);
        assert!(output.len() >= 200_000);
        output.push_str("{\"end\": true}");
        let started = Instant::now();
        assert_eq!(find_json(&output), Some(json!({"end": true})));
        assert!(started.elapsed() < QUICK, "{:?}", started.elapsed());
    }

    #[test]
    fn pathological_brackets_are_quick() {
        for output in [
            "{".repeat(100_000),
            "[".repeat(100_000),
            "{\"".repeat(50_000),
            "[1,".repeat(50_000),
        ] {
            let started = Instant::now();
            assert_eq!(find_json(&output), None);
            assert!(started.elapsed() < QUICK, "{:?}", started.elapsed());
        }
    }

    #[test]
    fn start_positions_are_capped() {
        // More plausible-but-broken starts than the cap hide later JSON.
        let output = "{\"x\" ".repeat(MAX_JSON_STARTS + 1) + "{\"a\": 1}";
        assert_eq!(find_json(&output), None);
        let output = "{\"x\" ".repeat(MAX_JSON_STARTS - 1) + "{\"a\": 1}";
        assert_eq!(find_json(&output), Some(json!({"a": 1})));
    }

    // Schemas

    fn person_schema() -> CompiledSchema {
        compile_schema(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name"]
        }))
        .unwrap()
    }

    #[test]
    fn schema_compile_errors() {
        let error = compile_schema(&json!({"type": 12})).unwrap_err();
        assert!(error.starts_with("invalid schema"), "{error}");
        assert!(compile_schema(&json!({"minimum": "five"})).is_err());
        assert!(compile_schema(&json!({"pattern": "("})).is_err());
    }

    #[test]
    fn schema_remote_ref_errors_without_panicking() {
        for reference in [
            "http://example.invalid/schema.json",
            "https://example.invalid/schema.json#/defs/a",
            "file:///etc/passwd",
        ] {
            let error = compile_schema(&json!({"$ref": reference})).unwrap_err();
            assert!(error.starts_with("invalid schema"), "{error}");
        }
        // Local references still work.
        let schema = compile_schema(&json!({
            "$defs": {"n": {"type": "integer"}},
            "$ref": "#/$defs/n"
        }))
        .unwrap();
        assert!(schema.validate(&json!(3)).is_ok());
        assert!(schema.validate(&json!("3")).is_err());
    }

    #[test]
    fn schema_validation_success() {
        let schema = person_schema();
        assert!(schema.validate(&json!({"name": "Ada"})).is_ok());
        assert!(
            schema
                .validate(&json!({"name": "Zoë", "tags": ["数学"]}))
                .is_ok()
        );
    }

    #[test]
    fn schema_validation_failure_names_the_path() {
        let schema = person_schema();
        let errors = schema
            .validate(&json!({"name": 7, "tags": ["a", 2]}))
            .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.starts_with("at /name:")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("at /tags/1:")),
            "{errors:?}"
        );
        let errors = schema.validate(&json!({})).unwrap_err();
        assert!(errors[0].starts_with("at /:"), "{errors:?}");
        assert!(errors[0].contains("name"), "{errors:?}");
    }

    #[test]
    fn schema_errors_are_capped_and_short() {
        let schema = compile_schema(&json!({"items": {"type": "string"}})).unwrap();
        let errors = schema.validate(&json!([1, 2, 3, 4, 5, 6, 7])).unwrap_err();
        assert_eq!(errors.len(), MAX_SCHEMA_ERRORS);
        let schema = compile_schema(&json!({"type": "string"})).unwrap();
        let big = json!({"text": "é".repeat(10_000)});
        let errors = schema.validate(&big).unwrap_err();
        assert!(errors[0].chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(errors[0].ends_with('…'));
    }

    // JSONPath

    #[test]
    fn path_compile_error() {
        let error = compile_path("$[").unwrap_err();
        assert!(error.starts_with("invalid JSONPath"), "{error}");
        assert!(compile_path("answer").is_err());
        assert!(compile_path("").is_err());
    }

    #[test]
    fn path_queries() {
        let document = json!({
            "answer": "42",
            "items": [{"name": "a"}, {"name": "b"}, {"other": 1}]
        });
        assert_eq!(
            compile_path("$.answer").unwrap().query(&document),
            vec![&json!("42")]
        );
        assert_eq!(
            compile_path("$.items[0].name").unwrap().query(&document),
            vec![&json!("a")]
        );
        assert_eq!(
            compile_path("$.items[*].name").unwrap().query(&document),
            vec![&json!("a"), &json!("b")]
        );
        // One descendant segment is fine; more are refused when compiled.
        assert_eq!(compile_path("$..name").unwrap().query(&document).len(), 2);
        let error = compile_path("$..*..*..*..*..*..*").unwrap_err();
        assert!(
            error.contains("more than one descendant segment"),
            "{error}"
        );
        // A query over a large document yields at most MAX_PATH_NODES nodes.
        let wide = Value::Array((0..5_000).map(Value::from).collect());
        assert_eq!(
            compile_path("$..*").unwrap().query(&wide).len(),
            MAX_PATH_NODES
        );
        assert!(
            compile_path("$.missing")
                .unwrap()
                .query(&document)
                .is_empty()
        );
        assert!(
            compile_path("$.answer")
                .unwrap()
                .query(&json!([]))
                .is_empty()
        );
    }

    // XML

    #[test]
    fn xml_well_formed() {
        assert_eq!(check_xml("<a><b>日本</b></a>").unwrap(), "a");
        assert_eq!(
            check_xml("\n<?xml version=\"1.0\"?>\n<root attr=\"1\"><x/></root>\n").unwrap(),
            "root"
        );
        assert_eq!(check_xml("```xml\n<r/>\n```").unwrap(), "r");
    }

    #[test]
    fn xml_malformed() {
        let error = check_xml("<a><b></a>").unwrap_err();
        assert!(error.starts_with("not well-formed XML"), "{error}");
        assert!(check_xml("<a>").is_err());
        assert!(check_xml("<a/><b/>").is_err());
        assert!(check_xml("```xml\n<a>\n```").is_err());
    }

    #[test]
    fn xml_empty_and_not_xml() {
        assert_eq!(check_xml("   ").unwrap_err(), "the output is empty");
        assert!(check_xml("just some text").is_err());
        assert!(check_xml("{\"a\": 1}").is_err());
    }

    #[test]
    fn compiled_forms_are_shareable() {
        fn assert_shareable<T: Send + Sync + std::fmt::Debug>() {}
        assert_shareable::<CompiledSchema>();
        assert_shareable::<CompiledPath>();
        assert!(format!("{:?}", person_schema()).starts_with("CompiledSchema"));
    }
}
