//! `peers-underway URL N CONCURRENCY POOL`: enqueues N jobs of 3 no-op
//! steps through underway, then times one worker (concurrency CONCURRENCY,
//! POOL connections) from start until every job's last step returned and
//! every step's task row is `succeeded`. Prints `elapsed_secs=<f64>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use underway::{Job, To};

#[derive(Serialize, Deserialize)]
struct Step {
    n: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let n: usize = args[2].parse()?;
    let concurrency: usize = args[3].parse()?;
    let connections: u32 = args[4].parse()?;

    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    underway::run_migrations(&pool).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let job = Job::builder()
        .state((done.clone(), notify.clone()))
        .step(|_cx, Step { n }| async move { To::next(Step { n: n + 1 }) })
        .step(|_cx, Step { n }| async move { To::next(Step { n: n + 1 }) })
        .step(|cx, Step { n: _ }| async move {
            let (done, notify) = &cx.state;
            done.fetch_add(1, Ordering::SeqCst);
            notify.notify_waiters();
            To::done()
        })
        .name("peers_noop3")
        .pool(pool.clone())
        .build()
        .await?;

    for i in 0..n {
        job.enqueue(&Step { n: i as u32 }).await?;
    }

    let mut worker = job.worker();
    worker.set_concurrency_limit(concurrency);
    let started = Instant::now();
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    loop {
        let woke = notify.notified();
        if done.load(Ordering::SeqCst) >= n {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), woke).await;
    }
    // The last step returned; its task row commits right after.
    loop {
        let (succeeded,): (i64,) = sqlx::query_as(
            "select count(*) from underway.task where task_queue_name = 'peers_noop3' and state = 'succeeded'",
        )
        .fetch_one(&pool)
        .await?;
        if succeeded as usize >= 3 * n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    worker.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    println!("elapsed_secs={elapsed}");
    Ok(())
}
