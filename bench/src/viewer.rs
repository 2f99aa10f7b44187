//! The web viewer's first screen on a large evaluation: 100,000 items,
//! their results written straight into PostgreSQL and summarised as a
//! worker would, then each page opened in headless Chromium against the
//! release API. The figure is the page's own `assay:ready:<page>` mark
//! (Performance API): from navigation start to the first screen drawn,
//! every API request it needs included.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use assay_testkit::Browser;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::Deployment;

/// Loads timed per page (after one warm-up load).
const LOADS: usize = 5;

pub struct PageTiming {
    pub path: String,
    pub median_ms: f64,
    pub slowest_ms: f64,
    /// The median, over the loads, of the longest API request the page
    /// made (the browser's Resource Timing): what of the first screen is the
    /// API's.
    pub api_ms: f64,
}

pub struct ViewerRun {
    pub items: usize,
    pub pages: Vec<PageTiming>,
}

async fn seed(deployment: &Deployment, evaluation: &str) -> anyhow::Result<()> {
    let pool = deployment.database().pool(1);
    let mut conn = pool.get().await?;
    for statement in [
        "SELECT setseed(0.3)".to_owned(),
        format!(
            "INSERT INTO evaluation_results (evaluation_id, model, item_position, repeat_index, tenant_id, item_key, \
                 status, output, score, grades, latency_ms, input_tokens, output_tokens, cost_usd) \
             SELECT e.id, 'mock', i.position, 0, e.tenant_id, i.item_key, s.status, \
                    CASE WHEN s.status = 'passed' THEN i.vars->>'question' ELSE 'I don''t know.' END, \
                    CASE WHEN s.status = 'passed' THEN 1.0 ELSE 0.0 END, \
                    jsonb_build_array(jsonb_build_object('grader', 'contains', 'passed', s.status = 'passed', 'score', 1, 'reason', 'r')), \
                    (50 + random() * 500)::int, 100, 20, 0.0001 \
             FROM evaluations e JOIN dataset_items i ON i.dataset_id = e.dataset_id \
             CROSS JOIN LATERAL (SELECT CASE WHEN random() < 0.7 THEN 'passed' ELSE 'failed' END AS status \
                                 WHERE i.position >= 0) s \
             WHERE e.id = '{evaluation}'"
        ),
        format!("UPDATE evaluations SET status = 'running' WHERE id = '{evaluation}'"),
        "ANALYZE evaluation_results".to_owned(),
    ] {
        diesel::sql_query(statement).execute(&mut conn).await?;
    }
    let tenant: Value = deployment
        .client
        .get(&format!("/v1/evaluations/{evaluation}"))
        .await?
        .body;
    anyhow::ensure!(tenant["status"] == "running", "seeding: {tenant}");
    // The summary as a worker writes it when the last chunk is done.
    let tenant_id = tenant_of(&mut conn, evaluation).await?;
    let finished = assay_core::db::models::lifecycle::finalize(
        &mut conn,
        tenant_id,
        evaluation.parse()?,
        "bench",
    )
    .await?;
    anyhow::ensure!(finished, "the evaluation did not finish");
    Ok(())
}

async fn tenant_of(
    conn: &mut diesel_async::AsyncPgConnection,
    evaluation: &str,
) -> anyhow::Result<assay_core::ids::TenantId> {
    #[derive(diesel::QueryableByName)]
    struct Tenant {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        tenant_id: assay_core::ids::TenantId,
    }
    let row: Tenant = diesel::sql_query(format!(
        "SELECT tenant_id FROM evaluations WHERE id = '{evaluation}'"
    ))
    .get_result(conn)
    .await?;
    Ok(row.tenant_id)
}

async fn time_page(
    browser: &Browser,
    origin: &str,
    page: &'static str,
    path: String,
) -> anyhow::Result<PageTiming> {
    let mut times = Vec::with_capacity(LOADS);
    let mut api_times = Vec::with_capacity(LOADS);
    for load in 0..=LOADS {
        browser.goto(&format!("{origin}{path}")).await?;
        let mark = browser
            .wait_for(
                &format!("the {page} page"),
                &format!(
                    "(performance.getEntriesByName('assay:ready:{page}')[0] || {{}}).startTime"
                ),
                Duration::from_secs(60),
            )
            .await?;
        if load > 0 {
            times.push(mark.as_f64().context("a mark time")?);
            let api = Browser::execute(
                browser,
                "return Math.max(0, ...performance.getEntriesByType('resource')
                   .filter((entry) => new URL(entry.name).pathname.startsWith('/v1/'))
                   .map((entry) => entry.duration));",
                Vec::new(),
            )
            .await?;
            api_times.push(api.as_f64().unwrap_or(0.0));
        }
    }
    times.sort_by(f64::total_cmp);
    api_times.sort_by(f64::total_cmp);
    Ok(PageTiming {
        path,
        median_ms: times[LOADS / 2],
        slowest_ms: times[LOADS - 1],
        api_ms: api_times[LOADS / 2],
    })
}

pub async fn run(items: usize) -> anyhow::Result<ViewerRun> {
    eprintln!("==> web viewer: first screen of a {items}-item evaluation");
    let deployment = Deployment::start(0, 1, None).await?;
    let version = deployment.prompt().await?;
    let dataset = deployment.dataset(items).await?;
    let submitted = deployment
        .client
        .post(
            "/v1/evaluations",
            &json!({"prompt_version_id": version, "dataset_id": dataset, "models": ["mock"],
                    "graders": [{"type": "contains", "value": "{{ expected }}"}]}),
        )
        .await?;
    anyhow::ensure!(submitted.status == 202, "submitting: {:?}", submitted.body);
    let evaluation = submitted.body["id"].as_str().context("an id")?.to_owned();
    seed(&deployment, &evaluation).await?;
    let origin = deployment.client.base_url.clone();
    let key = deployment.client.key.clone().context("a key")?;
    let browser = Browser::start(1280, 900).await?;
    browser.goto(&format!("{origin}/ui/")).await?;
    // (Called by path: diesel's `RunQueryDsl::execute` is in scope too.)
    Browser::execute(
        &browser,
        "sessionStorage.setItem('assay.apiKey', arguments[0]);",
        vec![json!(key)],
    )
    .await?;
    let mut pages = Vec::new();
    for (page, path) in [
        ("evaluations", "/ui/".to_owned()),
        ("evaluation", format!("/ui/evaluations/{evaluation}")),
        ("results", format!("/ui/evaluations/{evaluation}/results")),
        (
            "results",
            format!("/ui/evaluations/{evaluation}/results?status=failed"),
        ),
        (
            "results",
            format!("/ui/evaluations/{evaluation}/results?q=q99999"),
        ),
    ] {
        let timing = time_page(&browser, &origin, page, path).await?;
        eprintln!(
            "    {}: median {:.0} ms, slowest {:.0} ms, API {:.0} ms",
            timing.path.replace(&evaluation, "{id}"),
            timing.median_ms,
            timing.slowest_ms,
            timing.api_ms
        );
        pages.push(timing);
    }
    let pages = pages
        .into_iter()
        .map(|timing| PageTiming {
            path: timing.path.replace(&evaluation, "{id}"),
            ..timing
        })
        .collect();
    Ok(ViewerRun { items, pages })
}

/// The Markdown section for BENCHMARKS.md.
pub fn report(run: &ViewerRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Web viewer: first screen (release API, headless Chromium)\n"
    );
    let _ = writeln!(
        out,
        "One evaluation of {} items (results written into PostgreSQL, summarised as a worker does). Time from navigation start to the page's `assay:ready` mark (Performance API): HTML, scripts, every API request the first screen needs, and drawing. {LOADS} loads per page after one warm-up. Target: under 200 ms.\n",
        run.items
    );
    let _ = writeln!(
        out,
        "| page | median | slowest | its longest API request (median) | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for page in &run.pages {
        let met = if page.slowest_ms < 200.0 {
            "met"
        } else {
            "**not met**"
        };
        let _ = writeln!(
            out,
            "| `{}` | {:.0} ms | {:.0} ms | {:.0} ms | {met} |",
            page.path, page.median_ms, page.slowest_ms, page.api_ms
        );
    }
    out
}
