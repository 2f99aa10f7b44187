//! Writing an evaluation's results to a file, page by page: the format
//! comes from the extension (`.json`, `.jsonl`, `.csv`, `.xml` for JUnit).
//! Only one page of results (at most 1,000 rows) is in memory at a time, so
//! the client's memory does not grow with the evaluation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use quick_xml::Writer;
use quick_xml::events::{BytesCData, BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::Value;

use crate::api::{Api, encode};

/// Which results to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    Failed,
    Errored,
}

impl Filter {
    pub fn keeps(self, result: &Value) -> bool {
        match self {
            Filter::All => true,
            Filter::Failed => result["status"] == "failed",
            Filter::Errored => result["status"] == "errored",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Jsonl,
    Csv,
    Junit,
}

impl Format {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        Ok(match crate::spec::extension(path).as_str() {
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "xml" => Format::Junit,
            other => bail!(
                "-o {}: unknown format {other:?}: use .json, .jsonl, .csv or .xml (JUnit)",
                path.display()
            ),
        })
    }
}

/// Pages through every result of `evaluation` (`filter`ed) and hands each to `each`.
pub async fn for_each_result(
    api: &Api,
    id: &str,
    filter: Filter,
    mut each: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut after: Option<String> = None;
    let mut count = 0;
    loop {
        let path = match &after {
            None => format!("/v1/evaluations/{id}/results?limit=1000"),
            Some(after) => format!(
                "/v1/evaluations/{id}/results?limit=1000&after={}",
                encode(after)
            ),
        };
        let page = api.get(&path).await?;
        for result in page["data"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if filter.keeps(result) {
                each(result)?;
                count += 1;
            }
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(count),
        }
    }
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 14] = [
    "item_id",
    "item_position",
    "model",
    "repeat",
    "status",
    "score",
    "output",
    "error",
    "failed_graders",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "grading_cost_usd",
];

/// What failed, for people: `contains (item): expected … ; regex: …`.
pub fn failure_reasons(result: &Value) -> String {
    result["grades"]
        .as_array()
        .map(|grades| {
            grades
                .iter()
                .filter(|grade| grade["passed"] != true)
                .map(|grade| {
                    let source = match grade["source"].as_str() {
                        Some("item") => " (test)",
                        _ => "",
                    };
                    format!(
                        "{}{source}: {}",
                        grade["grader"].as_str().unwrap_or("?"),
                        grade["reason"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Writes the results of a finished `evaluation` to `path`; returns how many.
pub async fn export(
    api: &Api,
    evaluation: &Value,
    path: &Path,
    filter: Filter,
) -> anyhow::Result<u64> {
    let format = Format::of(path)?;
    let id = evaluation["id"].as_str().context("no evaluation id")?;
    let file = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let count = match format {
        Format::Jsonl => {
            for_each_result(api, id, filter, |result| {
                serde_json::to_writer(&mut out, result)?;
                out.write_all(b"\n")?;
                Ok(())
            })
            .await?
        }
        Format::Json => {
            // `{"evaluation": …, "results": [` then each result as it comes.
            out.write_all(b"{\"evaluation\":")?;
            serde_json::to_writer(&mut out, evaluation)?;
            out.write_all(b",\"results\":[")?;
            let mut first = true;
            let count = for_each_result(api, id, filter, |result| {
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                serde_json::to_writer(&mut out, result)?;
                Ok(())
            })
            .await?;
            out.write_all(b"]}\n")?;
            count
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(&mut out);
            writer.write_record(CSV_COLUMNS)?;
            let count = for_each_result(api, id, filter, |result| {
                writer.write_record([
                    text(&result["item_key"]),
                    text(&result["item_position"]),
                    text(&result["model"]),
                    text(&result["repeat_index"]),
                    text(&result["status"]),
                    text(&result["score"]),
                    text(&result["output"]),
                    text(&result["error"]),
                    failure_reasons(result),
                    text(&result["latency_ms"]),
                    text(&result["input_tokens"]),
                    text(&result["output_tokens"]),
                    text(&result["cost_usd"]),
                    text(&result["grading_cost_usd"]),
                ])?;
                Ok(())
            })
            .await?;
            writer.flush()?;
            drop(writer);
            count
        }
        Format::Junit => junit(api, evaluation, id, filter, &mut out).await?,
    };
    out.flush()?;
    Ok(count)
}

/// JUnit XML: one `<testsuite>` for the evaluation, one `<testcase>` per
/// result (item × model × repeat), `classname` the model; a failed result
/// carries `<failure>` with the failed graders' reasons, an errored one
/// `<error>` with its error. Counts come from the evaluation (the suite's
/// attributes are written before the cases, which stream).
async fn junit(
    api: &Api,
    evaluation: &Value,
    id: &str,
    filter: Filter,
    out: &mut BufWriter<File>,
) -> anyhow::Result<u64> {
    let counts = &evaluation["counts"];
    let number = |key: &str| counts[key].as_i64().unwrap_or(0);
    let (tests, failures, errors) = match filter {
        Filter::All => (number("completed"), number("failed"), number("errored")),
        Filter::Failed => (number("failed"), number("failed"), 0),
        Filter::Errored => (number("errored"), 0, number("errored")),
    };
    let repeats = evaluation["repeat"].as_i64().unwrap_or(1);
    let mut writer = Writer::new_with_indent(out, b' ', 2);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let name = format!("assay evaluation {id}");
    let (tests, failures, errors) = (tests.to_string(), failures.to_string(), errors.to_string());
    let mut suites = BytesStart::new("testsuites");
    suites.push_attribute(("name", name.as_str()));
    suites.push_attribute(("tests", tests.as_str()));
    suites.push_attribute(("failures", failures.as_str()));
    suites.push_attribute(("errors", errors.as_str()));
    writer.write_event(Event::Start(suites))?;
    let mut suite = BytesStart::new("testsuite");
    suite.push_attribute(("name", name.as_str()));
    suite.push_attribute(("tests", tests.as_str()));
    suite.push_attribute(("failures", failures.as_str()));
    suite.push_attribute(("errors", errors.as_str()));
    suite.push_attribute(("skipped", "0"));
    writer.write_event(Event::Start(suite))?;
    let count = for_each_result(api, id, filter, |result| {
        let mut case_name = text(&result["item_key"]);
        if repeats > 1 {
            case_name = format!("{case_name} #{}", text(&result["repeat_index"]));
        }
        let model = text(&result["model"]);
        let time = format!(
            "{:.3}",
            result["latency_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        let mut case = BytesStart::new("testcase");
        case.push_attribute(("name", case_name.as_str()));
        case.push_attribute(("classname", model.as_str()));
        case.push_attribute(("time", time.as_str()));
        let output = text(&result["output"]);
        match result["status"].as_str() {
            Some("passed") => {
                writer.write_event(Event::Empty(case))?;
                return Ok(());
            }
            Some("failed") => {
                writer.write_event(Event::Start(case))?;
                let reasons = failure_reasons(result);
                let mut failure = BytesStart::new("failure");
                failure.push_attribute(("message", reasons.as_str()));
                failure.push_attribute(("type", "failed"));
                writer.write_event(Event::Start(failure))?;
                writer.write_event(Event::Text(BytesText::new(&format!(
                    "{reasons}\n\noutput:\n{output}"
                ))))?;
                writer.write_event(Event::End(BytesEnd::new("failure")))?;
            }
            _ => {
                writer.write_event(Event::Start(case))?;
                let error = text(&result["error"]);
                let mut element = BytesStart::new("error");
                element.push_attribute(("message", error.as_str()));
                element.push_attribute(("type", "errored"));
                writer.write_event(Event::Start(element))?;
                writer.write_event(Event::Text(BytesText::new(&error)))?;
                writer.write_event(Event::End(BytesEnd::new("error")))?;
            }
        }
        if !output.is_empty() {
            writer.write_event(Event::Start(BytesStart::new("system-out")))?;
            // CDATA keeps outputs readable; one holding `]]>` goes as escaped text.
            if output.contains("]]>") {
                writer.write_event(Event::Text(BytesText::new(&output)))?;
            } else {
                writer.write_event(Event::CData(BytesCData::new(output.as_str())))?;
            }
            writer.write_event(Event::End(BytesEnd::new("system-out")))?;
        }
        writer.write_event(Event::End(BytesEnd::new("testcase")))?;
        Ok(())
    })
    .await?;
    writer.write_event(Event::End(BytesEnd::new("testsuite")))?;
    writer.write_event(Event::End(BytesEnd::new("testsuites")))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reasons_name_failed_graders_and_their_source() {
        let result = json!({"grades": [
            {"grader": "contains", "passed": true, "reason": "ok", "source": "evaluation"},
            {"grader": "regex", "passed": false, "reason": "no match", "source": "item"},
        ]});
        assert_eq!(failure_reasons(&result), "regex (test): no match");
    }

    #[test]
    fn format_by_extension() {
        assert_eq!(Format::of(Path::new("a/r.XML")).unwrap(), Format::Junit);
        assert_eq!(Format::of(Path::new("r.jsonl")).unwrap(), Format::Jsonl);
        assert!(Format::of(Path::new("r.txt")).is_err());
    }
}
