//! Durability proof with real processes: a child process runs workflows
//! whose steps log their side effects to a file; the parent SIGKILLs it in
//! the middle of steps, restarts it, and checks from the log and the
//! database that every instance completed, no recorded step ran again, and
//! a step in flight at a kill ran at most once more.
//!
//! A second scenario kills the child while instances sleep, back off
//! before a retry, wait for an event, and run a step whose earlier attempt
//! failed; sends the events while no worker runs; and checks after the
//! restart that every instance finished on time, with no step run twice
//! and no failed attempt forgotten.
//!
//! `harness = false`: the same binary is the parent (no arguments) and the
//! child (`child DB` or `child-waits DB`).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;
use workflow::sqlite::SqliteStore;

const INSTANCES: u32 = 24;
const STEPS: u32 = 4;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Job {
    n: u32,
    log: String,
}

fn log_line(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open side-effect log");
    // One write per line: O_APPEND keeps lines whole across the kill.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("write side-effect log");
}

#[workflow(name = "crashy")]
async fn crashy(ctx: Ctx, job: Job) -> workflow::Result<u32> {
    let mut sum = 0;
    for s in 0..STEPS {
        let id = ctx.id().to_string();
        let (log, n, id) = (&job.log, job.n, &id);
        sum += ctx
            .step("work", || async move {
                log_line(log, &format!("start {id} {s}"));
                // Long enough that a kill usually lands inside a step.
                tokio::time::sleep(Duration::from_millis(15 + u64::from((n * 7 + s * 13) % 20)))
                    .await;
                log_line(log, &format!("done {id} {s}"));
                Ok::<_, BoxError>(n * 100 + s)
            })
            .await?;
    }
    Ok(sum)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child") => return child(&args[2]),
        Some("child-waits") => return waits::child(&args[2]),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        // `cargo test -- --list` and friends: nothing to list.
        return;
    }
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for round in 1..=rounds {
        let started = Instant::now();
        let kills = parent();
        println!(
            "crash round {round}: {kills} kills mid-step, all checks passed in {:.1?}",
            started.elapsed()
        );
        let started = Instant::now();
        let lag = waits::parent();
        println!(
            "crash round {round}: killed during sleeps, backoffs and event waits; resumed on time (worst wake-up lag {lag} ms) in {:.1?}",
            started.elapsed()
        );
    }
    println!("test result: ok. 2 passed; 0 failed");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The child: run a worker until every instance is terminal.
fn child(db: &str) {
    runtime().block_on(async {
        let engine = Engine::builder()
            .database_url(format!("sqlite://{db}"))
            .register(Crashy)
            .concurrency(8)
            .poll_interval(Duration::from_millis(20))
            .build()
            .await
            .expect("child engine");
        let _worker = engine.start_worker();
        loop {
            let active = engine
                .list(
                    Query::new()
                        .name("crashy")
                        .status(Status::Pending)
                        .status(Status::InProgress),
                )
                .await
                .expect("list");
            if active.items.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

fn spawn_child(db: &Path) -> Child {
    spawn("child", db)
}

fn spawn(mode: &str, db: &Path) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .arg(mode)
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(log: &[String], kind: &str) -> HashMap<(String, u32), usize> {
    let mut counts = HashMap::new();
    for line in log {
        let mut parts = line.split(' ');
        if parts.next() == Some(kind) {
            let id = parts.next().expect("id").to_owned();
            let step: u32 = parts.next().expect("step").parse().expect("step number");
            *counts.entry((id, step)).or_insert(0) += 1;
        }
    }
    counts
}

/// Steps recorded in the database, as (instance, step index).
async fn recorded(store: &SqliteStore, ids: &[InstanceId]) -> HashSet<(String, u32)> {
    use workflow::store::Store;
    let mut out = HashSet::new();
    for id in ids {
        for step in store.steps(id).await.expect("read steps") {
            let index = match step.key.split_once('#') {
                Some((_, n)) => n.parse().expect("step index"),
                None => 0,
            };
            out.insert((id.to_string(), index));
        }
    }
    out
}

/// One full scenario; returns how many kills landed while a step was in flight.
fn parent() -> usize {
    let dir = tempfile::tempdir().expect("temp dir");
    let db: PathBuf = dir.path().join("crash.db");
    let log: PathBuf = dir.path().join("effects.log");
    let rt = runtime();

    let ids: Vec<InstanceId> = rt.block_on(async {
        let engine = Engine::builder()
            .database_url(format!("sqlite://{}", db.display()))
            .register(Crashy)
            .build()
            .await
            .expect("parent engine");
        let mut ids = Vec::new();
        for n in 0..INSTANCES {
            let job = Job {
                n,
                log: log.display().to_string(),
            };
            ids.push(
                Crashy::start(&engine, job)
                    .await
                    .expect("start")
                    .id()
                    .clone(),
            );
        }
        ids
    });

    // Kill after a growing number of side effects, so kills land at
    // different points of different steps.
    let mut in_flight_at_kills: Vec<HashSet<(String, u32)>> = Vec::new();
    let mut kills_mid_step = 0;
    for kill_after in [6usize, 30, 55, 80, 110] {
        let mut child = spawn_child(&db);
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines(&log).len() < kill_after {
            assert!(Instant::now() < deadline, "child made no progress");
            if let Some(status) = child.try_wait().expect("poll child") {
                panic!("child exited early with {status}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");

        let log_now = lines(&log);
        let done_steps = rt.block_on(async {
            let store = SqliteStore::open(&db).await.expect("open db");
            let rec = recorded(&store, &ids).await;
            store.close().await;
            rec
        });
        let started: HashSet<_> = count(&log_now, "start").into_keys().collect();
        let in_flight: HashSet<_> = started.difference(&done_steps).cloned().collect();
        if !in_flight.is_empty() {
            kills_mid_step += 1;
        }
        in_flight_at_kills.push(in_flight);
    }
    assert!(
        kills_mid_step >= 3,
        "kills should land mid-step (only {kills_mid_step} did)"
    );

    // The last child runs everything to the end.
    let mut child = spawn_child(&db);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            assert!(status.success(), "final child failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "final child did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }

    let log_end = lines(&log);
    let starts = count(&log_end, "start");
    rt.block_on(async {
        let engine = Engine::builder()
            .database_url(format!("sqlite://{}", db.display()))
            .register(Crashy)
            .build()
            .await
            .expect("check engine");
        for (n, id) in ids.iter().enumerate() {
            let info = engine.instance(id).await.expect("instance");
            assert_eq!(
                info.status,
                Status::Completed,
                "instance {id} must complete: {info:?}"
            );
            let expected: u32 = (0..STEPS).map(|s| n as u32 * 100 + s).sum();
            assert_eq!(
                info.output,
                Some(serde_json::json!(expected)),
                "instance {id} output"
            );
        }
    });
    for id in &ids {
        for s in 0..STEPS {
            let key = (id.to_string(), s);
            let runs = starts.get(&key).copied().unwrap_or(0);
            let kills_in_flight = in_flight_at_kills
                .iter()
                .filter(|set| set.contains(&key))
                .count();
            assert!(runs >= 1, "step {s} of {id} never ran");
            assert!(
                runs <= 1 + kills_in_flight,
                "step {s} of {id} ran {runs} times but was in flight at only {kills_in_flight} kill(s): a recorded step ran again"
            );
        }
    }
    kills_mid_step
}

mod waits {
    //! Kills while instances wait: in a sleep, in a retry backoff, for an event.

    use super::*;

    const EACH: u32 = 6;
    const NAP_MS: u64 = 1_500;

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64
    }

    /// Sleeps between two logged steps; `after` logs when it ran.
    #[workflow(name = "napper", timeout = "1h")]
    async fn napper(ctx: Ctx, job: Job) -> workflow::Result<()> {
        let id = ctx.id().to_string();
        let log = &job.log;
        ctx.step("before", || async {
            log_line(log, &format!("before {id}"));
            Ok::<_, BoxError>(())
        })
        .await?;
        ctx.sleep("nap", Duration::from_millis(NAP_MS)).await?;
        ctx.step("after", || async {
            log_line(log, &format!("after {id} {}", now_ms()));
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }

    /// A step that fails twice with a backoff long enough to suspend.
    #[workflow(name = "retrier", timeout = "1h")]
    async fn retrier(ctx: Ctx, job: Job) -> workflow::Result<usize> {
        let id = ctx.id().to_string();
        let log = &job.log;
        let opts = StepOptions::retries(5).backoff(
            Duration::from_millis(700),
            1.0,
            Duration::from_millis(700),
        );
        let attempts = ctx
            .step_with("flaky", opts, || async {
                log_line(log, &format!("flaky {id}"));
                let tries = lines(Path::new(log))
                    .iter()
                    .filter(|l| **l == format!("flaky {id}"))
                    .count();
                if tries < 3 {
                    return Err::<usize, BoxError>("gateway timeout".into());
                }
                Ok(tries)
            })
            .await?;
        Ok(attempts)
    }

    /// A step that always fails, retried after short backoffs spent in
    /// memory (shorter than `suspend_after`); its second attempt hangs
    /// until the kill. The restart must count on from the one attempt that
    /// failed: 4 calls in all for 3 attempts, not 5.
    #[workflow(name = "memoryRetrier", timeout = "1h")]
    async fn memory_retrier(ctx: Ctx, job: Job) -> workflow::Result<()> {
        let id = ctx.id().to_string();
        let log = &job.log;
        let opts = StepOptions::retries(3).backoff(
            Duration::from_millis(100),
            1.0,
            Duration::from_millis(100),
        );
        ctx.step_with("shaky", opts, || async {
            log_line(log, &format!("mem {id}"));
            let calls = lines(Path::new(log))
                .iter()
                .filter(|l| **l == format!("mem {id}"))
                .count();
            if calls == 2 {
                log_line(log, &format!("hang {id}"));
                std::future::pending::<()>().await;
            }
            Err::<(), BoxError>("still broken".into())
        })
        .await?;
        Ok(())
    }

    /// Waits for the event `go`.
    #[workflow(name = "listener", timeout = "1h")]
    async fn listener(ctx: Ctx, job: Job) -> workflow::Result<String> {
        let id = ctx.id().to_string();
        let log = &job.log;
        ctx.step("before", || async {
            log_line(log, &format!("listen {id}"));
            Ok::<_, BoxError>(())
        })
        .await?;
        let word: String = ctx.wait_for_event("go", None).await?;
        Ok(word)
    }

    async fn engine(db: &str) -> Engine {
        Engine::builder()
            .database_url(format!("sqlite://{db}"))
            .register(Napper)
            .register(Retrier)
            .register(Listener)
            .register(MemoryRetrier)
            .poll_interval(Duration::from_millis(20))
            .suspend_after(Duration::from_millis(200))
            .build()
            .await
            .expect("engine")
    }

    pub fn child(db: &str) {
        runtime().block_on(async {
            let engine = engine(db).await;
            let _worker = engine.start_worker();
            loop {
                let counts = engine.counts(None).await.expect("counts");
                if counts.keys().all(|s| s.is_terminal()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Returns the worst lag between a nap's due time and its `after` step.
    pub fn parent() -> i64 {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("waits.db");
        let db_text = db.display().to_string();
        let log = dir.path().join("effects.log");
        let rt = runtime();
        let job = || Job {
            n: 0,
            log: log.display().to_string(),
        };
        let (nappers, retriers, listeners, hangers) = rt.block_on(async {
            let engine = engine(&db_text).await;
            let mut n = Vec::new();
            let mut r = Vec::new();
            let mut l = Vec::new();
            let mut m = Vec::new();
            for _ in 0..EACH {
                n.push(Napper::start(&engine, job()).await.expect("start"));
                r.push(Retrier::start(&engine, job()).await.expect("start"));
                l.push(Listener::start(&engine, job()).await.expect("start"));
                m.push(MemoryRetrier::start(&engine, job()).await.expect("start"));
            }
            (n, r, l, m)
        });

        // Run until everyone is waiting: nappers asleep, retriers backing
        // off, listeners listening. Then kill.
        let mut child = spawn("child-waits", &db);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log_now = lines(&log);
            let count = |prefix: &str| log_now.iter().filter(|l| l.starts_with(prefix)).count();
            if count("before ") == EACH as usize
                && count("flaky ") >= EACH as usize
                && count("listen ") == EACH as usize
                && count("hang ") == EACH as usize
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "child did not reach the waits: {log_now:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let the last ones suspend.
        std::thread::sleep(Duration::from_millis(100));
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        let killed_at = now_ms();
        assert_eq!(
            lines(&log)
                .iter()
                .filter(|l| l.starts_with("after "))
                .count(),
            0,
            "killed before any nap ended"
        );

        // With no worker running, events are sent and kept.
        rt.block_on(async {
            let engine = engine(&db_text).await;
            for l in &listeners {
                let inst = Listener::handle(&engine, l.id().clone());
                assert_eq!(inst.status().await.expect("status"), Status::Listening);
                inst.send_event("go", format!("go {}", l.id()))
                    .await
                    .expect("send while down");
            }
        });

        let mut child = spawn("child-waits", &db);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                assert!(status.success(), "restarted child failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "restarted child did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }

        let log_end = lines(&log);
        let mut worst_lag = 0;
        rt.block_on(async {
            let engine = engine(&db_text).await;
            for n in &nappers {
                let inst = Napper::handle(&engine, n.id().clone());
                inst.result().await.expect("napper completed");
                let id = n.id().to_string();
                assert_eq!(
                    log_end
                        .iter()
                        .filter(|l| **l == format!("before {id}"))
                        .count(),
                    1,
                    "`before` ran once"
                );
                let after: Vec<i64> = log_end
                    .iter()
                    .filter_map(|l| l.strip_prefix(&format!("after {id} ")))
                    .map(|t| t.parse().expect("time"))
                    .collect();
                assert_eq!(after.len(), 1, "`after` ran once");
                let steps = inst.steps().await.expect("steps");
                let nap = steps.iter().find(|s| s.key == "nap").expect("nap recorded");
                let wake_at = nap
                    .output
                    .as_ref()
                    .and_then(|v| v.as_i64())
                    .expect("wake time");
                assert!(after[0] >= wake_at, "woke {} ms early", wake_at - after[0]);
                assert!(wake_at > killed_at, "the kill came while it slept");
                worst_lag = worst_lag.max(after[0] - wake_at);
            }
            for r in &retriers {
                let inst = Retrier::handle(&engine, r.id().clone());
                assert_eq!(
                    inst.result().await.expect("retrier completed"),
                    3,
                    "exactly three attempts ran"
                );
                let steps = inst.steps().await.expect("steps");
                assert_eq!(steps[0].attempts, 3, "the attempt count survived the kill");
            }
            for m in &hangers {
                let inst = MemoryRetrier::handle(&engine, m.id().clone());
                let err = inst.result().await.expect_err("fails for good");
                assert!(
                    err.to_string().contains("failed after 3 attempt(s)"),
                    "{err}"
                );
                let id = m.id().to_string();
                assert_eq!(
                    log_end
                        .iter()
                        .filter(|x| **x == format!("mem {id}"))
                        .count(),
                    4,
                    "the failed attempt before the kill still counts: 2 calls before, 2 after"
                );
            }
            for l in &listeners {
                let inst = Listener::handle(&engine, l.id().clone());
                assert_eq!(
                    inst.result().await.expect("listener completed"),
                    format!("go {}", l.id())
                );
                let id = l.id().to_string();
                assert_eq!(
                    log_end
                        .iter()
                        .filter(|x| **x == format!("listen {id}"))
                        .count(),
                    1
                );
            }
        });
        assert!(worst_lag < 1_000, "naps woke {worst_lag} ms late");
        worst_lag
    }
}
