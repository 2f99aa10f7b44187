//! Dataset items from CSV, read as the bytes arrive.
//!
//! The header row names the columns. A column is a variable (its cells are
//! strings), unless its name is reserved:
//! - `__id`: the item's id;
//! - `__expected`: the expected output (an empty cell: none);
//! - `__threshold`: the item's pass mark, 0 to 1 (an empty cell: none);
//! - `__assert` (or `__assert2`, `__assert_tone`, ...: any name that starts
//!   with it): the item's graders in the compact syntax of
//!   [`parse_compact_asserts`], or a JSON array of graders.
//!
//! Rows are parsed with `csv-core`, which is push-based: the upload handler
//! feeds chunks as they arrive and gets whole items back, so quoted cells
//! may span lines and chunks, and no more than one record is buffered.

use serde_json::{Map, Value, json};

use super::{DatasetItemInput, InvalidInput};

/// Largest record (all its cells), so a missing closing quote cannot make
/// the reader buffer the rest of the upload.
pub const MAX_RECORD_BYTES: usize = super::limits::MAX_ITEM_BYTES;
/// Most columns a CSV upload may have.
pub const MAX_COLUMNS: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
enum Column {
    Var(String),
    Id,
    Expected,
    Threshold,
    Assert,
}

/// Turns CSV bytes into items, one record at a time.
pub struct CsvItems {
    reader: csv_core::Reader,
    buffer: Vec<u8>,
    ends: Vec<usize>,
    used: usize,
    ended: usize,
    header: Option<Vec<Column>>,
    /// Records read so far, the header included (row numbers in errors are 1-based).
    rows: usize,
    /// The first bytes, held until there are three of them, to drop a
    /// byte-order mark however the body is cut (None once looked at).
    head: Option<Vec<u8>>,
    finished: bool,
}

impl Default for CsvItems {
    fn default() -> Self {
        Self::new()
    }
}

impl CsvItems {
    pub fn new() -> Self {
        Self {
            reader: csv_core::Reader::new(),
            buffer: vec![0; 4096],
            ends: vec![0; 64],
            used: 0,
            ended: 0,
            header: None,
            rows: 0,
            head: Some(Vec::with_capacity(3)),
            finished: false,
        }
    }

    /// Reads `input`; the items whose records it completes are pushed onto `items`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        items: &mut Vec<DatasetItemInput>,
    ) -> Result<(), InvalidInput> {
        let held;
        if let Some(head) = &mut self.head {
            let take = input.len().min(3 - head.len());
            head.extend_from_slice(&input[..take]);
            input = &input[take..];
            if head.len() < 3 {
                return Ok(());
            }
            held = self.head.take().expect("held");
            self.feed_bytes(strip_bom(&held), items)?;
        }
        self.feed_bytes(input, items)
    }

    fn feed_bytes(
        &mut self,
        mut input: &[u8],
        items: &mut Vec<DatasetItemInput>,
    ) -> Result<(), InvalidInput> {
        while !input.is_empty() {
            let read = self.step(input, items)?;
            input = &input[read..];
        }
        Ok(())
    }

    /// Signals the end of the body and pushes the last item, if any.
    pub fn finish(&mut self, items: &mut Vec<DatasetItemInput>) -> Result<(), InvalidInput> {
        if let Some(head) = self.head.take() {
            self.feed_bytes(strip_bom(&head), items)?;
        }
        while !self.finished {
            self.step(&[], items)?;
        }
        if self.header.is_none() {
            return Err(InvalidInput::new(
                "csv",
                "the body is empty: a CSV upload starts with a header row",
            ));
        }
        Ok(())
    }

    /// One call of the reader; returns the bytes of `input` it consumed.
    fn step(
        &mut self,
        input: &[u8],
        items: &mut Vec<DatasetItemInput>,
    ) -> Result<usize, InvalidInput> {
        use csv_core::ReadRecordResult;
        let (result, read, written, ends) = self.reader.read_record(
            input,
            &mut self.buffer[self.used..],
            &mut self.ends[self.ended..],
        );
        self.used += written;
        self.ended += ends;
        match result {
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::OutputFull => {
                if self.buffer.len() >= MAX_RECORD_BYTES {
                    return Err(InvalidInput::new(
                        format!("row {}", self.rows + 1),
                        format!(
                            "a record is at most {MAX_RECORD_BYTES} bytes (an unclosed quote?)"
                        ),
                    ));
                }
                let grown = (self.buffer.len() * 2).min(MAX_RECORD_BYTES);
                self.buffer.resize(grown, 0);
            }
            ReadRecordResult::OutputEndsFull => {
                if self.ends.len() >= MAX_COLUMNS {
                    return Err(InvalidInput::new(
                        format!("row {}", self.rows + 1),
                        format!("at most {MAX_COLUMNS} columns"),
                    ));
                }
                let grown = (self.ends.len() * 2).min(MAX_COLUMNS);
                self.ends.resize(grown, 0);
            }
            ReadRecordResult::Record => {
                self.rows += 1;
                let record = self.take_record()?;
                if let Some(item) = self.record(record)? {
                    items.push(item);
                }
            }
            ReadRecordResult::End => self.finished = true,
        }
        Ok(read)
    }

    fn take_record(&mut self) -> Result<Vec<String>, InvalidInput> {
        let mut fields = Vec::with_capacity(self.ended);
        let mut start = 0;
        for &end in &self.ends[..self.ended] {
            let field = std::str::from_utf8(&self.buffer[start..end])
                .map_err(|_| InvalidInput::new(format!("row {}", self.rows), "is not UTF-8"))?;
            fields.push(field.to_owned());
            start = end;
        }
        self.used = 0;
        self.ended = 0;
        Ok(fields)
    }

    fn record(&mut self, fields: Vec<String>) -> Result<Option<DatasetItemInput>, InvalidInput> {
        let row = self.rows;
        let Some(header) = &self.header else {
            self.header = Some(parse_header(&fields)?);
            return Ok(None);
        };
        if fields.len() != header.len() {
            return Err(InvalidInput::new(
                format!("row {row}"),
                format!(
                    "has {} cells, the header names {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let mut item = DatasetItemInput {
            id: None,
            vars: Map::new(),
            expected: None,
            threshold: None,
            graders: None,
        };
        for (column, cell) in header.iter().zip(fields) {
            match column {
                Column::Var(name) => {
                    item.vars.insert(name.clone(), Value::String(cell));
                }
                Column::Id => item.id = (!cell.is_empty()).then_some(cell),
                Column::Expected => {
                    item.expected = (!cell.is_empty()).then_some(Value::String(cell))
                }
                Column::Threshold => {
                    if !cell.trim().is_empty() {
                        item.threshold = Some(cell.trim().parse().map_err(|_| {
                            InvalidInput::new(
                                format!("row {row}.__threshold"),
                                "must be a number between 0 and 1",
                            )
                        })?);
                    }
                }
                Column::Assert => {
                    let graders = parse_compact_asserts(&cell).map_err(|message| {
                        InvalidInput::new(format!("row {row}.__assert"), message)
                    })?;
                    if !graders.is_empty() {
                        item.graders.get_or_insert_with(Vec::new).extend(graders);
                    }
                }
            }
        }
        Ok(Some(item))
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn parse_header(fields: &[String]) -> Result<Vec<Column>, InvalidInput> {
    let mut columns = Vec::with_capacity(fields.len());
    for (index, name) in fields.iter().enumerate() {
        let name = name.trim();
        let column = match name {
            "" => {
                return Err(InvalidInput::new(
                    format!("header[{index}]"),
                    "a column needs a name",
                ));
            }
            "__id" => Column::Id,
            "__expected" => Column::Expected,
            "__threshold" => Column::Threshold,
            name if name.starts_with("__assert") => Column::Assert,
            name if name.starts_with("__") => {
                return Err(InvalidInput::new(
                    format!("header[{index}]"),
                    format!(
                        "unknown reserved column {name:?} (known: __id, __expected, __threshold, __assert)"
                    ),
                ));
            }
            name => Column::Var(name.to_owned()),
        };
        if column != Column::Assert && columns.contains(&column) {
            return Err(InvalidInput::new(
                format!("header[{index}]"),
                format!("column {name:?} appears twice"),
            ));
        }
        columns.push(column);
    }
    Ok(columns)
}

/// Parses the compact grader syntax of a CSV `__assert` cell.
///
/// A cell is empty (no graders), a JSON array of graders (when it starts
/// with `[`), or graders separated by `;` (write `\;` for a semicolon in a
/// value), each `TYPE` or `TYPE:ARGUMENT`, the type optionally prefixed
/// with `not-`:
/// - `equals`, `contains`, `icontains`, `starts-with`, `ends-with`,
///   `similarity`, `rouge-l`, `bleu`, `finish-reason`: the argument is the value;
/// - `regex`: the argument is the pattern;
/// - `contains-any`, `contains-all`, `icontains-any`, `icontains-all`:
///   values separated by `|`;
/// - `levenshtein`: the value, with at most 5 edits (as promptfoo's default);
/// - `word-count`, `length`: `MIN-MAX`, `MIN-` or `-MAX`;
/// - `latency`: milliseconds; `cost`: dollars;
/// - `is-json`, `contains-json`, `is-xml`, `is-refusal`: no argument.
///
/// Graders with other options (judges, JSON paths, schemas) use the JSON form.
pub fn parse_compact_asserts(cell: &str) -> Result<Vec<Value>, String> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(Vec::new());
    }
    if cell.starts_with('[') {
        let graders: Vec<Value> =
            serde_json::from_str(cell).map_err(|error| format!("invalid JSON: {error}"))?;
        return Ok(graders);
    }
    split_unescaped(cell)
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .map(|part| parse_compact(part.trim()))
        .collect()
}

/// Splits on `;` not preceded by a backslash; `\;` becomes `;`.
fn split_unescaped(cell: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = cell.chars().peekable();
    while let Some(char) = chars.next() {
        match char {
            '\\' if chars.peek() == Some(&';') => {
                chars.next();
                parts.last_mut().expect("one part").push(';');
            }
            ';' => parts.push(String::new()),
            char => parts.last_mut().expect("one part").push(char),
        }
    }
    parts
}

fn parse_compact(part: &str) -> Result<Value, String> {
    let (type_name, argument) = match part.split_once(':') {
        Some((type_name, argument)) => (type_name.trim(), Some(argument)),
        None => (part, None),
    };
    let base = type_name.strip_prefix("not-").unwrap_or(type_name);
    let needs = |what: &str| format!("`{type_name}` needs {what}, as `{type_name}:...`");
    let argument_or = |what: &str| argument.ok_or_else(|| needs(what));
    let bounds = |text: &str| -> Result<Value, String> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| format!("`{type_name}` takes MIN-MAX, MIN- or -MAX"))?;
        let number = |text: &str| -> Result<Option<usize>, String> {
            let text = text.trim();
            if text.is_empty() {
                Ok(None)
            } else {
                text.parse()
                    .map(Some)
                    .map_err(|_| format!("`{type_name}`: {text:?} is not a whole number"))
            }
        };
        Ok(json!({"type": type_name, "min": number(min)?, "max": number(max)?}))
    };
    Ok(match base {
        "equals" | "contains" | "icontains" | "starts-with" | "ends-with" | "similarity"
        | "rouge-l" | "bleu" | "finish-reason" => {
            json!({"type": type_name, "value": argument_or("a value")?})
        }
        "regex" => json!({"type": type_name, "pattern": argument_or("a pattern")?}),
        "contains-any" | "contains-all" | "icontains-any" | "icontains-all" => {
            let values: Vec<&str> = argument_or("values separated by |")?.split('|').collect();
            json!({"type": type_name, "values": values})
        }
        "levenshtein" => {
            json!({"type": type_name, "value": argument_or("a value")?, "max_distance": 5})
        }
        "word-count" | "length" => bounds(argument_or("bounds")?)?,
        "latency" | "cost" => {
            let text = argument_or("a limit")?.trim();
            let limit: f64 = text
                .parse()
                .map_err(|_| format!("`{type_name}`: {text:?} is not a number"))?;
            if base == "latency" {
                json!({"type": type_name, "max_ms": limit})
            } else {
                json!({"type": type_name, "max_usd": limit})
            }
        }
        "is-json" | "contains-json" | "is-xml" | "is-refusal" => {
            if argument.is_some_and(|argument| !argument.trim().is_empty()) {
                return Err(format!("`{type_name}` takes no argument"));
            }
            json!({"type": type_name})
        }
        _ => {
            return Err(format!(
                "`{type_name}` has no compact form: write the cell as a JSON array of graders"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]]) -> Result<Vec<DatasetItemInput>, InvalidInput> {
        let mut csv = CsvItems::new();
        let mut items = Vec::new();
        for chunk in chunks {
            csv.feed(chunk, &mut items)?;
        }
        csv.finish(&mut items)?;
        Ok(items)
    }

    #[test]
    fn reads_variables_and_reserved_columns_across_chunks() {
        let body = "\u{feff}city,country,__expected,__threshold,__assert\n\
                    Paris,France,Paris,0.5,contains:Paris;not-icontains:rome\n\
                    \"New\nYork\",USA,,,\n";
        let bytes = body.as_bytes();
        // Split everywhere, including inside the quoted cell.
        for split in 0..bytes.len() {
            let items = read(&[&bytes[..split], &bytes[split..]]).unwrap();
            assert_eq!(items.len(), 2, "split at {split}");
            assert_eq!(items[0].vars["city"], "Paris");
            assert_eq!(items[0].expected, Some(json!("Paris")));
            assert_eq!(items[0].threshold, Some(0.5));
            assert_eq!(
                items[0].graders,
                Some(vec![
                    json!({"type": "contains", "value": "Paris"}),
                    json!({"type": "not-icontains", "value": "rome"})
                ])
            );
            assert_eq!(items[1].vars["city"], "New\nYork");
            assert_eq!(items[1].expected, None);
            assert_eq!(items[1].graders, None);
        }
    }

    #[test]
    fn last_row_without_newline_counts() {
        let items = read(&[b"q\na\nb"]).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].vars["q"], "b");
    }

    #[test]
    fn errors_name_the_row_or_column() {
        assert_eq!(read(&[b"a,b\n1\n"]).unwrap_err().field, "row 2");
        assert_eq!(read(&[b"a,__nope\n1,2\n"]).unwrap_err().field, "header[1]");
        assert_eq!(read(&[b"a,a\n1,2\n"]).unwrap_err().field, "header[1]");
        assert_eq!(
            read(&[b"a,__threshold\n1,x\n"]).unwrap_err().field,
            "row 2.__threshold"
        );
        assert_eq!(
            read(&[b"a,__assert\n1,telepathy:x\n"]).unwrap_err().field,
            "row 2.__assert"
        );
        assert_eq!(read(&[b""]).unwrap_err().field, "csv");
        let unclosed = [b"a\n\"".as_slice(), &vec![b'x'; MAX_RECORD_BYTES + 10]].concat();
        assert_eq!(read(&[&unclosed]).unwrap_err().field, "row 2");
    }

    #[test]
    fn compact_syntax() {
        assert_eq!(
            parse_compact_asserts("regex:^a\\;b$; is-json ;contains-any:x|y").unwrap(),
            vec![
                json!({"type": "regex", "pattern": "^a;b$"}),
                json!({"type": "is-json"}),
                json!({"type": "contains-any", "values": ["x", "y"]}),
            ]
        );
        assert_eq!(
            parse_compact_asserts("word-count:2-;length:-10;latency:500").unwrap(),
            vec![
                json!({"type": "word-count", "min": 2, "max": null}),
                json!({"type": "length", "min": null, "max": 10}),
                json!({"type": "latency", "max_ms": 500.0}),
            ]
        );
        assert_eq!(
            parse_compact_asserts("[{\"type\": \"is-json\"}]").unwrap(),
            vec![json!({"type": "is-json"})]
        );
        assert_eq!(
            parse_compact_asserts("contains:a:b").unwrap(),
            vec![json!({"type": "contains", "value": "a:b"})]
        );
        assert_eq!(
            parse_compact_asserts("not-is-refusal").unwrap(),
            vec![json!({"type": "not-is-refusal"})]
        );
        assert!(parse_compact_asserts("contains").is_err());
        assert!(parse_compact_asserts("is-json:x").is_err());
        assert!(parse_compact_asserts("llm-rubric:nice").is_err());
        assert!(parse_compact_asserts("").unwrap().is_empty());
    }
}
