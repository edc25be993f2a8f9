//! Two stores on one file, as two processes share it: one writing as fast
//! as 32 callers can, the other's writes still get SQLite's lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use workflow_core::store::Store;
use workflow_sqlite::SqliteStore;

/// Under the busy one's sustained durable load, each of the other's writes
/// lands well inside SQLite's busy timeout (5 s), past which it would
/// start backing off, and far inside a lease (30 s), past which its runs
/// would move. Measured here: a few milliseconds at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_not_starved_by_a_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let busy = Arc::new(SqliteStore::open(&path).await.unwrap());
    let other = SqliteStore::open(&path).await.unwrap();
    let stop = Instant::now() + Duration::from_secs(3);
    let load: Vec<_> = (0..32i64)
        .map(|caller| {
            let busy = Arc::clone(&busy);
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < stop {
                    let new = workflow_core::testing::new_instance("wf", caller * 1_000_000 + n);
                    busy.create(new, None).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for n in 0..10 {
        let started = Instant::now();
        let new = workflow_core::testing::new_instance("other", 900_000_000 + n);
        other.create(new, None).await.unwrap();
        worst = worst.max(started.elapsed());
    }
    let mut busy_writes = 0;
    for task in load {
        busy_writes += task.await.unwrap();
    }
    assert!(busy_writes > 1_000, "the load ran: {busy_writes} writes");
    assert!(worst < Duration::from_secs(5), "a write waited {worst:?}");
}
