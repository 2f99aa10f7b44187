//! Grading throughput per grader family, and template rendering per item.
//! `make bench` runs this with `--output-format bencher` and records the
//! figures in BENCHMARKS.md.

use std::hint::black_box;

use assay_core::domain::{ChatMessage, Role};
use assay_core::graders::model_graded::NoJudge;
use assay_core::graders::{GradeInput, Grader, GraderSpec};
use assay_core::templates::PromptTemplate;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

/// A typical answer: ~60 words of prose with a JSON object in it.
fn output() -> String {
    let prose =
        "The capital of France is Paris, which has been the seat of government for centuries. ";
    format!(
        "{}Here is the answer: {{\"city\": \"Paris\", \"country\": \"France\", \"population\": 2100000}}",
        prose.repeat(4)
    )
}

fn grader(spec: Value) -> Grader {
    Grader::compile("bench", &GraderSpec::parse("bench", &spec).unwrap()).unwrap()
}

fn families() -> Vec<(&'static str, Vec<Grader>)> {
    vec![
        (
            "strings",
            vec![
                grader(json!({"type": "equals", "value": "{{ expected }}", "ignore_case": true})),
                grader(json!({"type": "icontains", "value": "{{ expected }}"})),
                grader(json!({"type": "contains-all", "values": ["Paris", "France", "capital"]})),
                grader(json!({"type": "regex", "pattern": "\\b[A-Z][a-z]+\\b"})),
            ],
        ),
        (
            "structure",
            vec![
                grader(json!({"type": "contains-json"})),
                grader(
                    json!({"type": "json-schema", "schema": {"type": "object", "required": ["city"],
                    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}}),
                ),
                grader(json!({"type": "json-path", "path": "$.city", "equals": "Paris"})),
            ],
        ),
        (
            "similarity",
            vec![
                grader(json!({"type": "similarity", "value": "The capital of France is Paris."})),
                grader(json!({"type": "rouge-l", "value": "The capital of France is Paris."})),
                grader(json!({"type": "bleu", "value": "The capital of France is Paris."})),
            ],
        ),
        (
            "shape",
            vec![
                grader(json!({"type": "word-count", "max": 200})),
                grader(json!({"type": "latency", "max_ms": 1000})),
                grader(json!({"type": "finish-reason", "value": "stop"})),
            ],
        ),
    ]
}

fn grading(c: &mut Criterion) {
    let output = output();
    let context = json!({"expected": "Paris", "country": "France"});
    let input = GradeInput {
        output: &output,
        context: &context,
        latency_ms: Some(120.0),
        cost_usd: 0.0001,
        finish_reason: Some("stop"),
    };
    let mut group = c.benchmark_group("grade_item");
    for (family, graders) in families() {
        group.bench_function(family, |b| {
            b.iter(|| {
                for grader in &graders {
                    // Deterministic graders complete on the first poll.
                    black_box(futures::executor::block_on(
                        grader.grade(black_box(&input), &NoJudge),
                    ));
                }
            })
        });
    }
    group.finish();
}

fn rendering(c: &mut Criterion) {
    let template = PromptTemplate::compile(&[
        ChatMessage { role: Role::System, content: "You are a geography tutor. Answer in {{ language }}.".to_owned() },
        ChatMessage {
            role: Role::User,
            content: "What is the capital of {{ country }}?{% for hint in hints %}\n- {{ hint | upper }}{% endfor %}".to_owned(),
        },
    ])
    .unwrap();
    let context =
        json!({"language": "English", "country": "France", "hints": ["Europe", "Seine", "Eiffel"]});
    c.bench_function("render_item", |b| {
        b.iter(|| black_box(template.render(black_box(&context)).unwrap()))
    });
}

criterion_group!(benches, grading, rendering);
criterion_main!(benches);
