//! Many worker processes on one database, with crashes: four worker
//! processes run 2,000 workflows of 3 steps; every step counts its side
//! effect in a table of the database. Two workers are SIGKILLed mid-run and
//! two replacements started. Then every workflow must have completed once
//! with the right output, and every step must have run exactly once, except
//! for executions cut short by a kill (the killed worker ran the side
//! effect but its step was not recorded when it died).
//!
//! `harness = false`: the same binary is the parent (no arguments) and a
//! worker (`worker URL LABEL`).

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::postgres::PgStore;
use workflow::prelude::*;

const WORKFLOWS: u32 = 2_000;
const STEPS: u32 = 3;

/// The side-effect table's pool and this worker's label, in a worker.
static EFFECTS: OnceLock<(sqlx::PgPool, String)> = OnceLock::new();

#[derive(Serialize, Deserialize, JsonSchema)]
struct Job {
    n: u32,
}

#[workflow(name = "pgWork")]
async fn pg_work(ctx: Ctx, job: Job) -> workflow::Result<u64> {
    let mut sum = 0;
    for s in 0..STEPS {
        let id = ctx.id().to_string();
        let id = &id;
        sum += ctx
            .step("work", || async move {
                let (pool, label) = EFFECTS.get().expect("effects pool");
                sqlx::query("INSERT INTO effects (instance_id, step, worker) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(s as i32)
                    .bind(label)
                    .execute(pool)
                    .await?;
                // Long enough that kills land inside steps.
                tokio::time::sleep(Duration::from_millis(2 + u64::from((job.n + s) % 5))).await;
                Ok::<_, BoxError>(u64::from(job.n) * 10 + u64::from(s))
            })
            .await?;
    }
    Ok(sum)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return runtime().block_on(worker(&args[2], &args[3]));
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let Some(url) = common::url("four_workers_two_killed") else {
        println!("test result: ok. 0 passed; 0 failed; 1 ignored");
        return;
    };
    let started = Instant::now();
    let report = runtime().block_on(four_workers_two_killed(&url));
    println!(
        "four_workers_two_killed: {WORKFLOWS} workflows x {STEPS} steps, 2 of 4 workers killed \
         ({} executions cut short), all checks passed in {:.1?}",
        report,
        started.elapsed()
    );
    println!("test result: ok. 1 passed; 0 failed");
}

/// A worker process: runs until no workflow is left to run.
async fn worker(url: &str, label: &str) {
    let store = PgStore::connect(url).await.expect("worker store");
    EFFECTS
        .set((store.pool().clone(), label.to_owned()))
        .expect("set once");
    let engine = Engine::builder()
        .store(store)
        .register(PgWork)
        .concurrency(16)
        // Far past the test's deadlines: the killed workers' instances are
        // taken over at once (their pids are gone), not when leases run out.
        .lease_duration(Duration::from_secs(3600))
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("worker engine");
    let worker = engine.start_worker();
    loop {
        let counts = engine.counts(Some("pgWork")).await.expect("counts");
        if counts.keys().all(|s| s.is_terminal()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown().await;
}

/// The `application_name` of a worker's sessions, for the server's views.
fn session_name(label: &str) -> String {
    format!("workers_{}_{label}", std::process::id())
}

fn spawn(url: &str, label: &str) -> Child {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}application_name={}", session_name(label));
    Command::new(std::env::current_exe().expect("own path"))
        .args(["worker", &url, label])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

type Key = (String, i32);

/// Steps recorded by the store, as (instance, step index).
async fn recorded(pool: &sqlx::PgPool) -> HashSet<Key> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT instance_id, key FROM steps")
        .fetch_all(pool)
        .await
        .expect("read steps");
    rows.into_iter()
        .map(|(id, key)| {
            let index = match key.split_once('#') {
                Some((_, n)) => n.parse().expect("step index"),
                None => 0,
            };
            (id, index)
        })
        .collect()
}

async fn effects(pool: &sqlx::PgPool) -> Vec<(String, i32, String)> {
    sqlx::query_as("SELECT instance_id, step, worker FROM effects ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read effects")
}

/// Returns how many executions the kills cut short.
async fn four_workers_two_killed(url: &str) -> usize {
    let schema = common::fresh_schema("workers");
    let url_s = common::with_schema(url, &schema);
    let store = PgStore::connect(&url_s).await.expect("parent store");
    let pool = store.pool().clone();
    sqlx::query(
        "CREATE TABLE effects (seq BIGSERIAL PRIMARY KEY, instance_id TEXT NOT NULL, \
         step INT NOT NULL, worker TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("effects table");
    let engine = Engine::builder()
        .store(store)
        .register(PgWork)
        .build()
        .await
        .expect("parent engine");
    let jobs: Vec<Job> = (0..WORKFLOWS).map(|n| Job { n }).collect();
    let instances = PgWork::start_many(&engine, jobs, StartOptions::new())
        .await
        .expect("start");
    assert_eq!(instances.len(), WORKFLOWS as usize);

    let mut workers: Vec<(String, Child)> = (1..=4)
        .map(|w| (format!("w{w}"), spawn(&url_s, &format!("w{w}"))))
        .collect();

    // Kill two workers once a fifth of the side effects happened.
    let total = (WORKFLOWS * STEPS) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects")
            .fetch_one(&pool)
            .await
            .expect("count effects");
        if done >= total / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "workers made no progress");
        for (label, child) in &mut workers {
            if let Some(status) = child.try_wait().expect("poll worker") {
                panic!("worker {label} exited early with {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed: HashSet<String> = ["w1".to_owned(), "w2".to_owned()].into();
    for (label, child) in &mut workers {
        if killed.contains(label) {
            child.kill().expect("SIGKILL worker");
            child.wait().expect("reap worker");
        }
    }
    // A COMMIT the server received before the kill finishes on its own:
    // wait for the killed workers' sessions to end before reading what
    // they recorded.
    let names: Vec<String> = killed.iter().map(|l| session_name(l)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sessions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ANY($1)",
        )
        .bind(&names)
        .fetch_one(&pool)
        .await
        .expect("count sessions");
        if sessions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed workers' sessions did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded_at_kill = recorded(&pool).await;
    let cut_short: HashMap<Key, usize> = effects(&pool)
        .await
        .into_iter()
        .filter(|(id, step, worker)| {
            killed.contains(worker) && !recorded_at_kill.contains(&(id.clone(), *step))
        })
        .fold(HashMap::new(), |mut m, (id, step, _)| {
            *m.entry((id, step)).or_insert(0) += 1;
            m
        });
    workers.retain(|(label, _)| !killed.contains(label));
    workers.push(("w5".into(), spawn(&url_s, "w5")));
    workers.push(("w6".into(), spawn(&url_s, "w6")));

    let deadline = Instant::now() + Duration::from_secs(300);
    for (label, child) in &mut workers {
        loop {
            if let Some(status) = child.try_wait().expect("poll worker") {
                assert!(status.success(), "worker {label} failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "worker {label} did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Every workflow completed, once, with the right output.
    for (n, inst) in instances.iter().enumerate() {
        let info = inst.info().await.expect("instance");
        assert_eq!(info.status, Status::Completed, "{info:?}");
        let expected: u64 = (0..u64::from(STEPS)).map(|s| n as u64 * 10 + s).sum();
        assert_eq!(info.output, Some(serde_json::json!(expected)));
    }
    let completions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance_id, COUNT(*) FROM events WHERE kind = 'completed' GROUP BY instance_id",
    )
    .fetch_all(&pool)
    .await
    .expect("completions");
    assert_eq!(completions.len(), WORKFLOWS as usize);
    assert!(
        completions.iter().all(|(_, n)| *n == 1),
        "a workflow completed twice"
    );

    // Every step ran exactly once, apart from executions cut short by a kill.
    let all = effects(&pool).await;
    let mut runs: HashMap<Key, usize> = HashMap::new();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for (id, step, worker) in all {
        *runs.entry((id, step)).or_insert(0) += 1;
        *by_worker.entry(worker).or_insert(0) += 1;
    }
    assert_eq!(runs.len(), total as usize, "every step ran");
    for (key, n) in &runs {
        let short = cut_short.get(key).copied().unwrap_or(0);
        assert_eq!(
            n - short,
            1,
            "step {key:?} ran {n} times, {short} of them cut short by a kill: a recorded step ran again"
        );
    }
    let cut: usize = cut_short.values().sum();
    assert!(cut > 0, "the kills should land mid-step");
    assert!(
        by_worker.get("w1").copied().unwrap_or(0) > 0
            && by_worker.get("w2").copied().unwrap_or(0) > 0,
        "the killed workers had been working: {by_worker:?}"
    );
    assert!(
        by_worker.get("w5").copied().unwrap_or(0) + by_worker.get("w6").copied().unwrap_or(0) > 0,
        "the replacements took work: {by_worker:?}"
    );
    engine.shutdown();
    drop(engine);
    common::drop_schemas(url, &[schema]).await;
    cut
}
