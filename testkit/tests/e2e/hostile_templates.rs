//! A template that passes a render limit on some items only (so the trial
//! render at submission cannot see it) costs the worker a bounded render on
//! each of them: those runs end `errored` naming the limit, no call is made
//! for them, the worker stays up, and the rest of the evaluation runs.

use std::time::Duration;

use serde_json::json;

use crate::Stack;

#[tokio::test]
async fn items_whose_prompt_passes_a_render_limit_error_and_the_worker_goes_on() {
    let mut stack = Stack::start(1, &["--concurrency", "8"]).await;
    // Nested loops of n x n steps: 4 x 4 for most items, 100000 x 100000
    // (out of fuel) for the items the trial at submission does not render.
    let version = stack
        .prompt("{% for i in range(n) %}{% for j in range(n) %}.{% endfor %}{% endfor %} {{ question }}")
        .await;
    let heavy = [30_usize, 41, 57];
    let items: Vec<_> = (0..60)
        .map(|position| {
            let n = if heavy.contains(&position) { 100_000 } else { 4 };
            json!({"vars": {"question": crate::question(position), "n": n}, "expected": format!("q{position}")})
        })
        .collect();
    let dataset = stack.dataset(items).await;
    let id = stack
        .submit_body(json!({
            "prompt_version_id": version,
            "dataset_id": dataset,
            "models": ["mock"],
            "graders": [{"type": "contains", "value": "{{ expected }}"}],
        }))
        .await;
    let evaluation = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(evaluation["status"], "succeeded", "{evaluation}");
    assert_eq!(evaluation["counts"]["errored"], heavy.len(), "{evaluation}");
    assert_eq!(
        evaluation["counts"]["passed"],
        60 - heavy.len(),
        "{evaluation}"
    );

    let results = stack.results(&id).await;
    for result in results
        .iter()
        .filter(|result| result["status"] == "errored")
    {
        let position = result["item_position"].as_u64().unwrap() as usize;
        assert!(heavy.contains(&position), "{result}");
        let error = result["error"].as_str().unwrap();
        assert!(error.contains("steps to render"), "{error}");
    }
    // No call was made for them: the mock answered only the others.
    assert_eq!(
        stack.llm_calls(&["purpose=\"generate\""]).await,
        (60 - heavy.len()) as f64
    );
    // The same worker process is still serving.
    assert!(stack.workers[0].0.is_running(), "the worker is up");
}
