//! The queue's own scripts against real Redis: which pushes are alive,
//! depth, and the deletion of finished jobs after their retention.

use std::time::Duration;

use assay_core::domain::Priority;
use assay_core::ids::{EvaluationId, TenantId};
use assay_core::queue::{ChunkJob, JobQueue, Push, chunk_queue};
use assay_testkit::TestRedis;
use uuid::Uuid;

fn push(priority: Priority, chunk_index: i32) -> Push {
    Push {
        job: ChunkJob::new(
            TenantId::from_uuid(Uuid::nil()),
            EvaluationId::from_uuid(Uuid::from_u128(7)),
            chunk_index,
        ),
        priority,
        job_id: Uuid::now_v7(),
    }
}

/// Marks a job finished `age_seconds` ago, as apalis' ack does.
fn finish(redis: &TestRedis, queue: &str, job_id: Uuid, age_seconds: i64) {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let id = job_id.to_string();
    let done_at = chrono::Utc::now().timestamp() - age_seconds;
    redis::pipe()
        .cmd("ZREM")
        .arg(format!("{queue}:scheduled"))
        .arg(&id)
        .cmd("SADD")
        .arg(format!("{queue}:done"))
        .arg(&id)
        .cmd("HSET")
        .arg(format!("{queue}:meta:{id}"))
        .arg("status")
        .arg("Done")
        .arg("done_at")
        .arg(done_at)
        .query::<()>(&mut conn)
        .unwrap();
}

#[tokio::test]
async fn pushes_are_alive_until_finished_and_finished_ones_go_after_their_retention() {
    let redis = TestRedis::new();
    let queue = JobQueue::connect(&redis.url, &redis.prefix).await.unwrap();
    let pushes = [
        push(Priority::Normal, 0),
        push(Priority::Normal, 1),
        push(Priority::Normal, 2),
    ];
    queue.push(&pushes).await.unwrap();
    queue.push(&[push(Priority::High, 3)]).await.unwrap();
    let ids: Vec<Uuid> = pushes.iter().map(|push| push.job_id).collect();
    let unknown = Uuid::now_v7();
    let mut asked = ids.clone();
    asked.push(unknown);
    assert_eq!(
        queue.alive(Priority::Normal, &asked).await.unwrap(),
        [true, true, true, false]
    );
    assert_eq!(
        queue.alive(Priority::Low, &ids).await.unwrap(),
        [false, false, false],
        "per queue"
    );
    let depth = queue.depth(Priority::Normal).await.unwrap();
    assert_eq!((depth.ready, depth.delayed, depth.running), (3, 0, 0));
    assert_eq!(queue.depth(Priority::High).await.unwrap().ready, 1);

    let normal = chunk_queue(&redis.prefix, Priority::Normal);
    finish(&redis, &normal, ids[0], 7200);
    finish(&redis, &normal, ids[1], 10);
    assert_eq!(
        queue.alive(Priority::Normal, &ids).await.unwrap(),
        [false, false, true]
    );
    assert_eq!(queue.depth(Priority::Normal).await.unwrap().ready, 1);

    // An hour's retention: only the job finished two hours ago goes, whole.
    let removed = queue
        .forget_finished(Priority::Normal, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let keys = redis.keys().unwrap();
    let first = ids[0].to_string();
    assert!(
        !keys.iter().any(|key| key.ends_with(&first)),
        "its metadata is gone: {keys:?}"
    );
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let payloads: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{normal}:data"))
        .query(&mut conn)
        .unwrap();
    assert!(!payloads.contains(&first) && payloads.contains(&ids[1].to_string()));
    let done: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{normal}:done"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(done, [ids[1].to_string()]);
    // Without retention, the other finished job goes too; the waiting one stays.
    assert_eq!(
        queue
            .forget_finished(Priority::Normal, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        queue.alive(Priority::Normal, &ids[2..]).await.unwrap(),
        [true]
    );
}
