//! Throughput of the PostgreSQL store with 1, 2 and 4 worker processes.
//!
//! ```text
//! WORKFLOW_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p workflow-postgres --bench pg
//! BENCH_SCALE=0.2 ...   # smaller counts
//! ```
//!
//! Each run starts the worker processes (this binary, `worker URL DURABILITY`),
//! lets them connect, then creates the workflows (3 no-op steps each) in one
//! transaction and times until every one has completed. Prints one table.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::postgres::{PgOptions, PgStore};
use workflow::prelude::*;
use workflow::Durability;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Steps {
    count: u32,
}

/// `count` no-op steps in sequence.
#[workflow(name = "noop")]
async fn noop(ctx: Ctx, input: Steps) -> workflow::Result<u32> {
    for i in 0..input.count {
        ctx.step("noop", || async move { Ok::<_, BoxError>(i) })
            .await?;
    }
    Ok(input.count)
}

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(10)
}

fn durability(name: &str) -> Durability {
    match name {
        "relaxed" => Durability::Relaxed,
        _ => Durability::Durable,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return runtime().block_on(worker(&args[2], durability(&args[3])));
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let url = match std::env::var("WORKFLOW_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            println!("pg bench: skipped: WORKFLOW_TEST_POSTGRES_URL not set");
            return;
        }
    };
    let workflows = scale(2_000);
    let mut rows = Vec::new();
    for mode in ["durable", "relaxed"] {
        for processes in [1, 2, 4] {
            let (wps, sps) = runtime().block_on(run(&url, mode, processes, workflows));
            rows.push((mode, processes, wps, sps));
        }
    }
    println!(
        "\n| mode | worker processes | measurement | workflows/s | steps/s |\n|---|---|---|---|---|"
    );
    for (mode, processes, wps, sps) in rows {
        println!(
            "| {mode} | {processes} | {workflows} workflows × 3 no-op steps, 32 in flight per process | {wps:.0} | {sps:.0} |"
        );
    }
}

/// A worker process: runs until killed.
async fn worker(url: &str, durability: Durability) {
    let store = PgStore::connect_with(url, PgOptions::new().durability(durability))
        .await
        .expect("worker store");
    let engine = Engine::builder()
        .store(store)
        .register(Noop)
        .concurrency(32)
        .build()
        .await
        .expect("worker engine");
    engine.run().await.expect("worker");
}

fn spawn(url: &str, mode: &str) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args(["worker", url, mode])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

/// Returns (workflows/s, steps/s).
async fn run(url: &str, mode: &str, processes: usize, workflows: usize) -> (f64, f64) {
    let schema = format!("bench_{}_{mode}_{processes}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let url_s = format!("{url}{sep}schema={schema}");
    let store = PgStore::connect(&url_s).await.expect("bench store");
    let pool = store.pool().clone();
    let engine = Engine::builder()
        .store(store)
        .build()
        .await
        .expect("client engine");
    let mut children: Vec<Child> = (0..processes).map(|_| spawn(&url_s, mode)).collect();
    // Wait until every worker has connected (each records the definition;
    // all of them show up in pg_stat_activity), then a little more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.definitions().await.expect("definitions").is_empty() {
        assert!(Instant::now() < deadline, "workers did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let inputs: Vec<serde_json::Value> = (0..workflows)
        .map(|_| serde_json::json!({"count": 3}))
        .collect();
    let started = Instant::now();
    // One transaction for all, through the store: the client engine does
    // not register the workflow, so it cannot run any.
    let now = workflow::store::now_millis();
    let new = inputs
        .into_iter()
        .map(|input| workflow::store::NewInstance {
            id: InstanceId::at(now),
            workflow: "noop".into(),
            input: input.to_string(),
            tags: Default::default(),
            key: None,
            created_at: now,
            run_at: now,
            deadline_at: None,
            parent: None,
        })
        .collect();
    engine.store().create_many(new).await.expect("create");
    loop {
        let counts = engine.counts(Some("noop")).await.expect("counts");
        if counts.get(&Status::Completed).copied().unwrap_or(0) == workflows as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "workers did not finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
    (workflows as f64 / elapsed, (workflows * 3) as f64 / elapsed)
}
