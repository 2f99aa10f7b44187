//! A versioning job's step, run again after a crash between submitting an
//! evaluation and recording it on the job, finds the evaluation it made
//! instead of making (and paying for) another. Real PostgreSQL and Redis.

use assay_core::db::models::datasets;
use assay_core::ids::{DatasetId, VersionId};
use assay_core::providers::ModelCatalog;
use assay_core::providers::call::LlmClient;
use assay_core::queue::JobQueue;
use assay_core::versioning::{Ctx, EvaluationSetup, evaluation_for, job_ref};
use assay_testkit::{TestDatabase, TestRedis, bare_evaluation};
use diesel_async::RunQueryDsl;
use serde_json::json;
use uuid::Uuid;

/// What a promotion's step does for `role`: the evaluation of the dataset's
/// version (tenant, prompt, version and dataset share one id in the fixture).
async fn submit(
    ctx: &Ctx<'_>,
    conn: &mut diesel_async::AsyncPgConnection,
    dataset: &datasets::Dataset,
    setup: &EvaluationSetup,
    job: Uuid,
    role: &str,
) -> (assay_core::db::models::evaluations::Evaluation, bool) {
    let tenant = dataset.tenant_id;
    evaluation_for(
        ctx,
        conn,
        tenant,
        VersionId::from_uuid(tenant.uuid()),
        dataset,
        setup,
        None,
        job_ref("promotion", job, role),
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_step_run_again_finds_the_evaluation_it_made() {
    let database = TestDatabase::create().await.unwrap();
    let redis = TestRedis::new();
    let pool = database.pool(2);
    let mut conn = pool.get().await.unwrap();
    // Tenant, prompt, version and dataset share one id in this fixture.
    let (tenant, _) = bare_evaluation(&mut conn, 10).await.unwrap();
    let dataset = datasets::get(&mut conn, tenant, DatasetId::from_uuid(tenant.uuid()))
        .await
        .unwrap()
        .unwrap();
    let queue = JobQueue::connect(&redis.url, &redis.prefix).await.unwrap();
    let llm = LlmClient::new(ModelCatalog::default(), None, None);
    let ctx = Ctx {
        pool: &pool,
        queue: &queue,
        llm: &llm,
        actor: "worker:test",
        runs_per_chunk: 5,
    };
    let setup = EvaluationSetup {
        dataset_id: dataset.id,
        models: vec!["mock".to_owned()],
        graders: vec![json!({"type": "contains", "value": "x"})],
        params: None,
        repeat: None,
        threshold: None,
    };
    let job = Uuid::now_v7();
    let (first, reused) = submit(&ctx, &mut conn, &dataset, &setup, job, "candidate").await;
    assert!(!reused);
    // The crash: nothing recorded the id; the step runs again.
    let (again, reused) = submit(&ctx, &mut conn, &dataset, &setup, job, "candidate").await;
    assert_eq!(again.id, first.id, "the same evaluation, not a second one");
    assert!(!reused, "it is the job's own evaluation, counted as made");
    // Another role of the same job is another evaluation.
    let (other, _) = submit(&ctx, &mut conn, &dataset, &setup, job, "baseline").await;
    assert_ne!(other.id, first.id);

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let count = diesel::sql_query(format!(
        "SELECT count(*) AS count FROM evaluations WHERE prompt_ref->>'id' = '{job}'"
    ))
    .get_result::<Count>(&mut pool.get().await.unwrap())
    .await
    .unwrap()
    .count;
    assert_eq!(count, 2, "one evaluation per role");
}
