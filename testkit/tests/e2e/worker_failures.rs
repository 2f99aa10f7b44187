//! A worker whose Redis is gone for good exits non-zero, so that its
//! supervisor restarts it. (Workers killed or stopped mid-run are in
//! `recovery.rs`.)

use std::time::Duration;

use crate::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_redis_for_good_exits_non_zero() {
    let mut stack = Stack::start(0, &[]).await;
    let proxy = assay_testkit::Proxy::start("127.0.0.1:6379").await;
    let index = stack
        .start_worker_via(
            &["--max-restarts", "2"],
            format!("redis://{}", proxy.address),
        )
        .await;
    proxy.cut();
    // Every restart of the queue consumer fails; after the last one the process
    // exits with an error, so that its supervisor restarts it.
    let code = stack.workers[index]
        .0
        .wait(Duration::from_secs(90))
        .await
        .unwrap();
    assert!(
        matches!(code, Some(code) if code != 0),
        "exit code {code:?}"
    );
}
