//! Connections lost mid-run: while an engine runs 400 workflows of 3 steps,
//! every connection it holds is killed with `pg_terminate_backend`, eight
//! times. The engine must reconnect by itself and lose nothing: every
//! workflow completes with the right output, every step is recorded, none
//! fails.
//!
//! With `WORKFLOW_TEST_POSTGRES_RESTART` set to a shell command that restarts
//! the server (say `pg_ctlcluster 15 main restart`), the same run is repeated
//! with the server restarted mid-run.
//!
//! `harness = false`: scenarios share one runtime and print what they saw.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

const WORKFLOWS: u32 = 400;
const STEPS: u32 = 3;

/// How many times each (instance, step) ran its side effect, in this process.
static RAN: LazyLock<Mutex<HashMap<(String, u32), usize>>> = LazyLock::new(Default::default);

#[derive(Serialize, Deserialize, JsonSchema)]
struct Job {
    n: u32,
}

#[workflow(name = "pgSteady")]
async fn pg_steady(ctx: Ctx, job: Job) -> workflow::Result<u64> {
    let mut sum = 0;
    for s in 0..STEPS {
        let id = ctx.id().to_string();
        let id = &id;
        sum += ctx
            .step("work", || async move {
                *RAN.lock().unwrap().entry((id.clone(), s)).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, BoxError>(u64::from(job.n) * 10 + u64::from(s))
            })
            .await?;
    }
    Ok(sum)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(url) = common::url("reconnect") else {
        println!("test result: ok. 0 passed; 0 failed; 1 ignored");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let (killed, reruns) = rt.block_on(run(&url, Disruption::Terminate));
    println!(
        "connections killed mid-run: {killed} backends terminated over 8 rounds, \
         {reruns} step re-runs, nothing lost, in {:.1?}",
        started.elapsed()
    );
    let mut passed = 1;
    if let Ok(command) = std::env::var("WORKFLOW_TEST_POSTGRES_RESTART") {
        let started = Instant::now();
        let (_, reruns) = rt.block_on(run(&url, Disruption::Restart(command)));
        println!(
            "server restarted mid-run: {reruns} step re-runs, nothing lost, in {:.1?}",
            started.elapsed()
        );
        passed += 1;
    } else {
        println!("server restarted mid-run: skipped: WORKFLOW_TEST_POSTGRES_RESTART not set");
    }
    println!("test result: ok. {passed} passed; 0 failed");
}

enum Disruption {
    /// `pg_terminate_backend` on every connection of the engine, 8 times.
    Terminate,
    /// A shell command that restarts the server, once.
    Restart(String),
}

/// Returns (backends terminated, step re-runs).
async fn run(url: &str, disruption: Disruption) -> (usize, usize) {
    RAN.lock().unwrap().clear();
    let schema = common::fresh_schema("reconnect");
    let app = schema.clone();
    let sep = if url.contains('?') { '&' } else { '?' };
    let engine_url = common::with_schema(&format!("{url}{sep}application_name={app}"), &schema);
    let engine = Engine::builder()
        .database_url(&engine_url)
        .register(PgSteady)
        .concurrency(16)
        .poll_interval(Duration::from_millis(50))
        // A run whose release failed while the server was away resumes when
        // its lease runs out.
        .lease_duration(Duration::from_secs(3))
        .build()
        .await
        .expect("engine");
    let jobs: Vec<Job> = (0..WORKFLOWS).map(|n| Job { n }).collect();
    let instances = PgSteady::start_many(&engine, jobs, StartOptions::new())
        .await
        .expect("start");
    let worker = engine.start_worker();

    // Wait until work is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while RAN.lock().unwrap().len() < 60 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = AtomicUsize::new(0);
    match disruption {
        Disruption::Terminate => {
            let admin = sqlx::PgPool::connect(url).await.expect("admin pool");
            for _ in 0..8 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(&app)
                .fetch_one(&admin)
                .await
                .expect("terminate");
                killed.fetch_add(n as usize, Ordering::Relaxed);
                assert!(
                    RAN.lock().unwrap().len() < (WORKFLOWS * STEPS) as usize,
                    "the disruption came mid-run"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            admin.close().await;
            assert!(
                killed.load(Ordering::Relaxed) >= 8,
                "the engine's connections were killed"
            );
        }
        Disruption::Restart(command) => {
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new("sh")
                    .args(["-c", &command])
                    .status()
                    .expect("run restart command")
            })
            .await
            .expect("restart task");
            assert!(status.success(), "restart command failed: {status}");
            assert!(
                RAN.lock().unwrap().len() < (WORKFLOWS * STEPS) as usize,
                "the disruption came mid-run"
            );
        }
    }

    for (n, inst) in instances.iter().enumerate() {
        let out = inst
            .result_timeout(Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("workflow {n} did not complete: {e}"));
        let expected: u64 = (0..u64::from(STEPS)).map(|s| n as u64 * 10 + s).sum();
        assert_eq!(out, expected);
        assert_eq!(inst.steps().await.expect("steps").len(), STEPS as usize);
    }
    let counts = engine.counts(Some("pgSteady")).await.expect("counts");
    assert_eq!(
        counts.get(&Status::Completed).copied(),
        Some(u64::from(WORKFLOWS)),
        "{counts:?}"
    );
    worker.shutdown().await;
    let (steps_ran, reruns) = {
        let ran = RAN.lock().unwrap();
        (ran.len(), ran.values().map(|n| n - 1).sum())
    };
    assert_eq!(steps_ran, (WORKFLOWS * STEPS) as usize, "every step ran");
    drop(engine);
    common::drop_schemas(url, &[schema]).await;
    (killed.load(Ordering::Relaxed), reruns)
}
