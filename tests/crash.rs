//! Durability proof with real processes: a child process runs workflows
//! whose steps log their side effects to a file, and each step's
//! acknowledgement (the engine's answer that it is recorded); the parent
//! SIGKILLs it in the middle of steps, restarts it, and checks from the
//! log and the database that no acknowledged step is missing after a kill,
//! every instance completed, no recorded step ran again, and a step in
//! flight at a kill ran at most once more. Each step also changes the
//! workflow's state from inside the step, which replays get back only from
//! the recorded snapshots: every instance ends with the output and state a
//! run without kills gives. (A SIGKILL keeps the kernel's
//! page cache: what a power cut would take back is the fsync's part, which
//! the store's own tests check by failing and holding fsyncs.)
//!
//! A second scenario kills the child while instances sleep, back off
//! before a retry, wait for an event, and run a step whose earlier attempt
//! failed; sends the events and cancels two instances while no worker runs,
//! for at least two seconds; and checks after the restart that every
//! instance finished, with no step run twice and no failed attempt
//! forgotten, that the cancelled ones ran no more, and that every nap woke
//! at the time it recorded when it began (or at the restart, for the naps
//! that came due while no worker ran), not a nap later.
//!
//! A third runs parents that start children (`start_child`, then
//! `run_child`), each child logging its one side-effect step, and kills the
//! child process as parents create children (right after a child's row is
//! written, often before its parent records it) and while they wait for
//! them; at least one kill must find a child its parent has not recorded
//! (more kills come until one does). After the restart every parent
//! completed with its children's sum, each (parent, step) has exactly one
//! child, the one its parent recorded, and no child's step ran again unless
//! a kill landed in it.
//!
//! A fourth runs a schedule firing every second (`catch_up = "all"`) in two
//! processes on one file, kills one or both at random moments (the seed is
//! printed; `CRASH_SEED` replays it), once leaving both down past a tick,
//! then lets one run on: every tick has exactly one instance (key
//! `schedule:<tick>`), no tick between the first and the last is missing,
//! and the ticks that came due while both were down fired late, once.
//!
//! A fifth stops a worker (SIGSTOP) inside a step, under a 1 s lease. A
//! second worker must not reap the stopped, still living process by its pid:
//! it waits out the lease, takes the instance over and completes it. The
//! first is then continued (SIGCONT) and its step sends its commit, which
//! is refused: the instance, its state, steps and history stay as the
//! second worker left them, and the first exits cleanly.
//!
//! A sixth runs a step that aborts its process every time: each restarted
//! worker reaps the dead one's lease and runs it again, until the engine
//! has seen `max_interrupted_runs` interrupted runs in a row and pauses
//! the instance instead; after the "fix", a resume completes it without
//! running its recorded step again. An instance beside it, killed with it,
//! runs each of its steps once, or twice if a crash cut it short.
//!
//! A seventh kills a process while it starts instances, plainly and by
//! dedup key (`get_or_create`), logging each id once its start answered:
//! every answered start exists, and the restarts, asking for the same keys
//! again, get the same instances, one per key.
//!
//! An eighth kills processes while steps of `StepOptions::at_most_once`
//! run: no such step runs twice; one a kill cut short fails, its outcome
//! unknown, and every other instance completes.
//!
//! A ninth stops a service the way systemd and Kubernetes do, with
//! SIGTERM, through `workflow::shutdown_signal`: the step running finishes
//! and is recorded, the instance is handed back before its next one, and
//! the process exits 0 well within its grace period. A second SIGTERM
//! while a step holds the shutdown up ends the process at once (143).
//!
//! `harness = false`: the same binary is the parent (no arguments) and the
//! child (`child DB`, `child-waits DB`, `child-family DB`, `child-cron DB
//! SECONDS`, `child-fence DB A|B`, `child-poison DB`, `child-starts DB
//! LOG`, `child-once DB`, `child-signal DB LOG`). `CRASH_ROUNDS=n` repeats
//! every scenario; `CRASH_ONLY=family,fence` runs only those (of `steps`,
//! `waits`, `family`, `cron`, `fence`, `poison`, `starts`, `once`,
//! `signal`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;
use workflow::sqlite::SqliteStore;
use workflow::InstanceInfo;

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

/// The state of `crashy`: each step pushes its value from inside the step,
/// so a replay, which runs no recorded step, gets the values back only
/// from the snapshot recorded with each step; a step that ran again after a
/// kill pushes on top of the snapshot of the step before it.
#[derive(Default, Clone, Serialize, Deserialize, JsonSchema)]
struct Tally {
    values: Vec<u32>,
}

/// Returns the sum of its steps' outputs and its state.
#[workflow(name = "crashy")]
async fn crashy(ctx: Ctx<Tally>, job: Job) -> workflow::Result<(u32, Tally)> {
    let mut sum = 0;
    for s in 0..STEPS {
        let id = ctx.id().to_string();
        let (log, n, id, ctx) = (&job.log, job.n, &id, &ctx);
        sum += ctx
            .step("work", || async move {
                // With the pid: a kill of that process can cut short only
                // the steps it started.
                log_line(log, &format!("start {id} {s} {}", std::process::id()));
                // Long enough that a kill usually lands inside a step.
                tokio::time::sleep(Duration::from_millis(15 + u64::from((n * 7 + s * 13) % 20)))
                    .await;
                // Once the step's work is done, as a state change in a
                // step should be.
                ctx.state_mut().values.push(n * 100 + s);
                log_line(log, &format!("done {id} {s}"));
                Ok::<_, BoxError>(n * 100 + s)
            })
            .await?;
        // The engine told the workflow the step is recorded: from here on
        // a kill must not lose it.
        log_line(&job.log, &format!("acked {id} {s}"));
    }
    let tally = ctx.state().clone();
    Ok((sum, tally))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child") => return child(&args[2]),
        Some("child-waits") => return waits::child(&args[2]),
        Some("child-family") => return family::child(&args[2]),
        Some("child-cron") => return cron::child(&args[2], &args[3]),
        Some("child-fence") => return fence::child(&args[2], &args[3]),
        Some("child-poison") => return poison::child(&args[2]),
        Some("child-starts") => return starts::child(&args[2], &args[3]),
        Some("child-once") => return once::child(&args[2]),
        Some("child-signal") => return signal::child(&args[2], &args[3]),
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
    // `CRASH_ONLY=family,fence` runs only those scenarios.
    let only = std::env::var("CRASH_ONLY").ok();
    let scenarios: [Scenario; 9] = [
        ("steps", || {
            format!("{} kills mid-step, all checks passed", parent())
        }),
        ("waits", || {
            format!(
                "killed during sleeps, backoffs and event waits, down 2 s, two instances cancelled \
                 meanwhile; naps woke at their recorded times (worst lag {} ms), the cancelled ran no more",
                waits::parent()
            )
        }),
        ("family", || {
            let o = family::parent();
            format!(
                "children: {} kills ({} while parents waited for children, {} mid-child-step, \
                 {} children created but not yet recorded by their parent); each child started once",
                o.kills, o.while_waiting, o.mid_step, o.unrecorded_children
            )
        }),
        ("cron", || {
            let o = cron::parent();
            format!(
                "cron: two schedulers killed {} times (CRASH_SEED={}): {} ticks ({} fired late \
                 after a downtime), each once, none skipped",
                o.kills, o.seed, o.ticks, o.late
            )
        }),
        ("fence", || {
            let o = fence::parent();
            format!(
                "fencing: a worker stopped {} ms inside a step lost it to another by lease \
                 expiry; its late commit was refused ({}; {} stop(s) retried for the write lock)",
                o.stopped_ms, o.refusal, o.restops
            )
        }),
        ("poison", || {
            let o = poison::parent();
            format!(
                "crash loop: a step that aborts its process was run {} times, then paused \
                 (\"{}\"), resumed after the fix and completed",
                poison::LIMIT,
                o.reason
            )
        }),
        ("starts", || {
            let o = starts::parent();
            format!(
                "starts: a starting process killed {} times; each of the {} starts answered \
                 before a kill exists ({} more made whose answer a kill cut off), one instance \
                 per dedup key",
                o.kills, o.answered, o.unanswered
            )
        }),
        ("once", || {
            let o = once::parent();
            format!(
                "at most once: {} kills among charges; each charge ran at most once, \
                 {} cut short and failed as unknown, the rest completed",
                o.kills, o.cut_short
            )
        }),
        ("signal", || {
            let o = signal::parent();
            format!(
                "SIGTERM: the running step finished, the instance was handed back after {} \
                 of its steps, each run once, and the process exited 0 in {:.1?} (grace 30 s); \
                 a second SIGTERM ended a shutdown held up by a step at once (exit 143)",
                o.recorded, o.stopped_in
            )
        }),
    ];
    let chosen: Vec<_> = scenarios
        .iter()
        .filter(|(name, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == *name))
        })
        .collect();
    assert!(
        !chosen.is_empty(),
        "CRASH_ONLY names no scenario: steps, waits, family, cron, fence, poison, starts, once, signal"
    );
    for round in 1..=rounds {
        for (_, scenario) in &chosen {
            let started = Instant::now();
            let what = scenario();
            println!("crash round {round}: {what}, in {:.1?}", started.elapsed());
        }
    }
    println!("test result: ok. {} passed; 0 failed", chosen.len());
}

/// The lease of the engines the scenarios kill (steps, waits, family).
const TAKEOVER_ONLY_BY_PID: Duration = Duration::from_secs(3600);

/// A scenario's name (for `CRASH_ONLY`) and its run, which says what it proved.
type Scenario = (&'static str, fn() -> String);

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
            // Far past every deadline here: a restarted process takes over
            // a dead one's instances at once (its pid is gone), never by
            // waiting out their leases.
            .lease_duration(TAKEOVER_ONLY_BY_PID)
            .poll_interval(Duration::from_millis(20))
            .build()
            .await
            .expect("child engine");
        let _worker = engine.start_worker();
        loop {
            let active = engine
                .list(
                    Query::new()
                        .workflow("crashy")
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
    spawn_with(mode, db, &[])
}

fn spawn_with(mode: &str, db: &Path, extra: &[&str]) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .arg(mode)
        .arg(db)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// A child process that is SIGKILLed and reaped when dropped, so a failed
/// assertion in the parent leaves no child behind (not even a stopped one).
struct Proc(Option<Child>);

impl Proc {
    fn spawn(mode: &str, db: &Path, extra: &[&str]) -> Proc {
        Proc(Some(spawn_with(mode, db, extra)))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("child running").id()
    }

    /// Waits (a minute at most) until `done` says so; the child exiting
    /// first fails the test, as it would otherwise wait the minute out.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: no progress");
            let child = self.0.as_mut().expect("child running");
            if let Some(status) = child.try_wait().expect("poll child") {
                panic!("{what}: the child exited early with {status}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Not killed, nor seen to exit, by the parent yet.
    fn alive(&self) -> bool {
        self.0.is_some()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the child.
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid");
        // SAFETY: signals our own child, which is not reaped yet (its pid is ours).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// SIGKILLs the child and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().expect("SIGKILL child");
            child.wait().expect("reap child");
        }
    }

    /// Waits for the child to exit on its own, successfully, within `limit`.
    fn wait_success(&mut self, limit: Duration, what: &str) {
        let child = self.0.as_mut().expect("child running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                self.0 = None;
                assert!(status.success(), "{what} failed: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not finish in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An engine that runs nothing, for the parent to read the database with.
async fn reader(db: &Path) -> Engine {
    Engine::builder()
        .database_url(format!("sqlite://{}", db.display()))
        .build()
        .await
        .expect("reading engine")
}

/// Every instance of `workflow`, across pages.
async fn list_all(engine: &Engine, workflow: &str) -> Vec<InstanceInfo> {
    let mut all = Vec::new();
    let mut query = Query::new().workflow(workflow).limit(1000);
    loop {
        let page = engine.list(query.clone()).await.expect("list");
        assert!(
            page.unreadable.is_empty(),
            "unreadable rows: {:?}",
            page.unreadable
        );
        all.extend(page.items);
        match page.next {
            Some(cursor) => query = Query::new().workflow(workflow).limit(1000).after(cursor),
            None => return all,
        }
    }
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

/// The steps whose runs process `pid` logged (`KIND ID STEP PID` lines):
/// a kill of `pid` can cut short only those.
fn started_by(log: &[String], kind: &str, pid: u32) -> HashSet<(String, u32)> {
    let pid = pid.to_string();
    log.iter()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                [k, id, step, by] if k == kind && by == pid => {
                    Some((id.to_owned(), step.parse().expect("step number")))
                }
                _ => None,
            }
        })
        .collect()
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
    for kill_after in [6usize, 30, 55, 80, 110, 160, 210] {
        let mut child = spawn_child(&db);
        let deadline = Instant::now() + Duration::from_secs(60);
        while lines(&log).len() < kill_after {
            assert!(Instant::now() < deadline, "child made no progress");
            if let Some(status) = child.try_wait().expect("poll child") {
                panic!("child exited early with {status}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let pid = child.id();
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");

        let log_now = lines(&log);
        let done_steps = rt.block_on(async {
            let store = SqliteStore::open(&db).await.expect("open db");
            let rec = recorded(&store, &ids).await;
            store.close().await;
            rec
        });
        let acked: HashSet<_> = count(&log_now, "acked").into_keys().collect();
        let mut lost: Vec<_> = acked.difference(&done_steps).collect();
        lost.sort();
        assert!(
            lost.is_empty(),
            "steps the engine answered as recorded are not in the database after the kill: {lost:?}"
        );
        let started = started_by(&log_now, "start", pid);
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
            // What a run without kills gives: each step's value, once.
            let values: Vec<u32> = (0..STEPS).map(|s| n as u32 * 100 + s).collect();
            let tally = serde_json::json!({ "values": values });
            let sum: u32 = values.iter().sum();
            assert_eq!(
                info.output,
                Some(serde_json::json!([sum, tally])),
                "instance {id} output: its steps' sum and its state"
            );
            assert_eq!(info.state, Some(tally), "instance {id} state");
        }
        // Recorded once each, from the store's own rows: every step with
        // its key and the output its one recorded run gave, and one end.
        use workflow::store::Store;
        let store = SqliteStore::open(&db).await.expect("open db");
        for (n, id) in ids.iter().enumerate() {
            let steps: Vec<(String, Option<String>)> = store
                .steps(id)
                .await
                .expect("steps")
                .into_iter()
                .map(|step| (step.key, step.output))
                .collect();
            let want: Vec<(String, Option<String>)> = (0..STEPS)
                .map(|s| {
                    let key = if s == 0 {
                        "work".to_owned()
                    } else {
                        format!("work#{s}")
                    };
                    (key, Some((n as u32 * 100 + s).to_string()))
                })
                .collect();
            assert_eq!(steps, want, "the steps of {id}, each recorded once");
            let history = store.history(id).await.expect("history");
            let ends = history.iter().filter(|e| e.kind == "completed").count();
            assert_eq!(ends, 1, "{id} completed once: {history:?}");
        }
        store.close().await;
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
    /// The naps: half the nappers take the short one, which ends while no
    /// worker runs, the others the long one, which ends after the restart.
    /// Both long enough that every napper still sleeps at the kill, however
    /// slow the machine is to get 24 instances to their waits.
    const SHORT_NAP_MS: u64 = 3_000;
    const NAP_MS: u64 = 6_000;
    /// How long no worker runs after the kill, at least: a restart that
    /// slept a nap again from its replay would wake this much later (or
    /// the whole nap, for one that came due meanwhile) than its recorded time.
    const DOWN_MS: i64 = 2_000;
    /// How late a nap may wake after its recorded time, or the restart
    /// when it came due while no worker ran.
    const ON_TIME_MS: i64 = 1_000;
    /// A retrier's backoff: the window in which the kill lands between two
    /// of its attempts.
    const BACKOFF_MS: u64 = 1_500;

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64
    }

    /// The times logged after `prefix` (`before ID `, `after ID `).
    fn stamps(log: &[String], prefix: &str) -> Vec<i64> {
        log.iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|t| t.parse().expect("time"))
            .collect()
    }

    /// The wake time a napper recorded for its nap.
    async fn wake_time(engine: &Engine, id: &InstanceId) -> i64 {
        let steps = Napper::handle(engine, id.clone())
            .steps()
            .await
            .expect("steps");
        let nap = steps.iter().find(|s| s.key == "nap").expect("nap recorded");
        nap.output
            .as_ref()
            .and_then(|v| v.as_i64())
            .expect("wake time")
    }

    /// Sleeps `job.n` ms between two logged steps, which log when they ran.
    #[workflow(name = "napper", timeout = "1h")]
    async fn napper(ctx: Ctx, job: Job) -> workflow::Result<()> {
        let id = ctx.id().to_string();
        let log = &job.log;
        ctx.step("before", || async {
            log_line(log, &format!("before {id} {}", now_ms()));
            Ok::<_, BoxError>(())
        })
        .await?;
        ctx.sleep("nap", Duration::from_millis(u64::from(job.n)))
            .await?;
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
            Duration::from_millis(BACKOFF_MS),
            1.0,
            Duration::from_millis(BACKOFF_MS),
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
            // Far past every deadline here: a restarted process takes over
            // a dead one's instances at once (its pid is gone), never by
            // waiting out their leases.
            .lease_duration(TAKEOVER_ONLY_BY_PID)
            .suspend_after(Duration::from_millis(200))
            .build()
            .await
            .expect("engine")
    }

    pub fn child(db: &str) {
        runtime().block_on(async {
            let engine = engine(db).await;
            // When this process can run anything: the naps' lag counts
            // from here, not from a spawn that a busy machine makes slow.
            let log = Path::new(db).with_file_name("effects.log");
            log_line(&log.display().to_string(), &format!("ready {}", now_ms()));
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
        let job = |n| Job {
            n,
            log: log.display().to_string(),
        };
        let (nappers, retriers, listeners, hangers) = rt.block_on(async {
            let engine = engine(&db_text).await;
            let mut n = Vec::new();
            let mut r = Vec::new();
            let mut l = Vec::new();
            let mut m = Vec::new();
            for i in 0..EACH {
                let nap = if i % 2 == 0 { SHORT_NAP_MS } else { NAP_MS };
                let nap = u32::try_from(nap).expect("nap");
                n.push(Napper::start(&engine, job(nap)).await.expect("start"));
                r.push(Retrier::start(&engine, job(0)).await.expect("start"));
                l.push(Listener::start(&engine, job(0)).await.expect("start"));
                m.push(MemoryRetrier::start(&engine, job(0)).await.expect("start"));
            }
            (n, r, l, m)
        });
        // Cancelled while no worker runs: a napper asleep (long nap) and a
        // hanger whose attempt was in flight at the kill. The restart must
        // run neither again.
        let (nappers, cancelled_napper) =
            (&nappers[..EACH as usize - 1], &nappers[EACH as usize - 1]);
        let (hangers, cancelled_hanger) =
            (&hangers[..EACH as usize - 1], &hangers[EACH as usize - 1]);

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
        // Then until every napper, retrier and listener has suspended (its
        // last event in the store), so that only the hangers have an attempt
        // in flight at the kill.
        rt.block_on(async {
            let engine = engine(&db_text).await;
            let waiting: Vec<InstanceId> = nappers
                .iter()
                .chain([cancelled_napper])
                .map(|i| i.id().clone())
                .chain(retriers.iter().map(|i| i.id().clone()))
                .chain(listeners.iter().map(|i| i.id().clone()))
                .collect();
            'poll: loop {
                assert!(
                    Instant::now() < deadline,
                    "the child's instances did not all suspend"
                );
                for id in &waiting {
                    let last = engine.history_tail(id, 1).await.expect("history");
                    if last.items.last().map(|e| &e.kind) != Some(&workflow::HistoryKind::Suspended)
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue 'poll;
                    }
                }
                break;
            }
        });
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

        // With no worker running, events are sent and kept, and two
        // instances are cancelled.
        let latest_short_wake = rt.block_on(async {
            let engine = engine(&db_text).await;
            for l in &listeners {
                let inst = Listener::handle(&engine, l.id().clone());
                assert_eq!(inst.status().await.expect("status"), Status::Listening);
                inst.send_event("go", format!("go {}", l.id()))
                    .await
                    .expect("send while down");
            }
            Napper::handle(&engine, cancelled_napper.id().clone())
                .cancel()
                .await
                .expect("cancel a sleeping napper");
            MemoryRetrier::handle(&engine, cancelled_hanger.id().clone())
                .cancel()
                .await
                .expect("cancel a hanger cut short by the kill");
            let mut latest = 0;
            for n in nappers.iter().step_by(2) {
                latest = latest.max(wake_time(&engine, n.id()).await);
            }
            latest
        });
        // Down long enough that the short naps come due while no worker
        // runs, and that a restart sleeping a nap again from its replay
        // would wake far later than the time it recorded.
        let up_at = (killed_at + DOWN_MS).max(latest_short_wake + 200);
        std::thread::sleep(Duration::from_millis((up_at - now_ms()).max(0) as u64));
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
        let restarted_at = *stamps(&log_end, "ready ")
            .last()
            .expect("the restarted child's `ready`");
        let mut worst_lag = 0;
        rt.block_on(async {
            let engine = engine(&db_text).await;
            // Naps that came due while no worker ran, and after the restart.
            let (mut due_while_down, mut due_after) = (0, 0);
            for n in nappers {
                let inst = Napper::handle(&engine, n.id().clone());
                inst.result().await.expect("napper completed");
                let id = n.id().to_string();
                let info = inst.info().await.expect("info");
                let nap = info.input["n"].as_i64().expect("nap");
                let before = stamps(&log_end, &format!("before {id} "));
                assert_eq!(before.len(), 1, "`before` ran once");
                let after = stamps(&log_end, &format!("after {id} "));
                assert_eq!(after.len(), 1, "`after` ran once");
                let (before, after) = (before[0], after[0]);
                let wake_at = wake_time(&engine, n.id()).await;
                // The time recorded is the nap from when it began.
                assert!(
                    (0..ON_TIME_MS).contains(&(wake_at - before - nap)),
                    "{id} recorded a wake time {} ms after its `before` step for a {nap} ms nap",
                    wake_at - before
                );
                assert!(wake_at > killed_at, "the kill came while it slept");
                assert!(after >= wake_at, "woke {} ms early", wake_at - after);
                // On time: at the recorded time, or at the restart if it
                // came due while no worker ran. A replay that slept the
                // nap again from its start would wake DOWN_MS late, or the
                // whole nap late.
                let lag = after - wake_at.max(restarted_at);
                assert!(
                    lag < ON_TIME_MS,
                    "{id} woke {lag} ms late ({nap} ms nap from {before}, recorded wake time {wake_at}, \
                     restarted at {restarted_at}, woke at {after})"
                );
                if wake_at < restarted_at {
                    due_while_down += 1;
                } else {
                    due_after += 1;
                    assert!(
                        after - before < nap + ON_TIME_MS,
                        "{id} slept {} ms for a {nap} ms nap",
                        after - before
                    );
                }
                worst_lag = worst_lag.max(lag);
            }
            assert!(
                due_while_down >= 1 && due_after >= 1,
                "naps should come due both while no worker ran ({due_while_down}) and after the \
                 restart ({due_after}): killed at {killed_at}, restarted at {restarted_at}"
            );
            // Cancelled while down: ended so, and never run again.
            for id in [cancelled_napper.id(), cancelled_hanger.id()] {
                let info = engine.instance(id).await.expect("instance");
                assert_eq!(info.status, Status::Cancelled, "{info:?}");
                let history = engine.history(id).await.expect("history");
                assert!(
                    history.last().is_some_and(|e| e.kind == "cancelled"),
                    "{id} ran again after its cancel: {history:#?}"
                );
            }
            let cancelled = cancelled_napper.id().to_string();
            assert!(
                !log_end.iter().any(|l| l.starts_with(&format!("after {cancelled} "))),
                "the napper cancelled while asleep woke up"
            );
            let cancelled = cancelled_hanger.id().to_string();
            assert_eq!(
                log_end
                    .iter()
                    .filter(|x| **x == format!("mem {cancelled}"))
                    .count(),
                2,
                "the step cut short by the kill ran again after its instance was cancelled"
            );
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
            for m in hangers {
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
        worst_lag
    }
}

mod family {
    //! Parents that start children: kills while parents create children and
    //! while they wait for them.

    use super::*;

    const PARENTS: u32 = 16;

    /// The step keys under which each parent starts a child, with the
    /// child's slot: two `start_child`s, then three `run_child`s, each pair
    /// from one call site in a loop (`name`, `name#1`, ...).
    const CHILDREN: [(&str, u32); 5] = [
        ("early", 0),
        ("early#1", 1),
        ("wait", 2),
        ("wait#1", 3),
        ("wait#2", 4),
    ];

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Chore {
        n: u32,
        slot: u32,
        log: String,
    }

    /// A child: one logged side-effect step.
    #[workflow(name = "kid", timeout = "1h")]
    async fn kid(ctx: Ctx, chore: Chore) -> workflow::Result<u32> {
        let id = ctx.id().to_string();
        let (log, id) = (&chore.log, &id);
        let value = chore.n * 10 + chore.slot;
        let nap = 10 + u64::from((chore.n * 7 + chore.slot * 13) % 20);
        ctx.step("effect", || async move {
            log_line(log, &format!("kid {id} 0 {}", std::process::id()));
            tokio::time::sleep(Duration::from_millis(nap)).await;
            Ok::<_, BoxError>(value)
        })
        .await
    }

    /// Starts two children without waiting, then runs three one by one.
    #[workflow(name = "guardian", timeout = "1h")]
    async fn guardian(ctx: Ctx, job: Job) -> workflow::Result<u32> {
        let chore = |slot| Chore {
            n: job.n,
            slot,
            log: job.log.clone(),
        };
        for slot in 0..2 {
            ctx.start_child::<Kid>("early", chore(slot)).await?;
        }
        let mut sum = 0;
        for slot in 2..5 {
            sum += ctx.run_child::<Kid>("wait", chore(slot)).await?;
        }
        Ok(sum)
    }

    async fn engine(db: &str) -> Engine {
        Engine::builder()
            .database_url(format!("sqlite://{db}"))
            .register(Guardian)
            .register(Kid)
            .concurrency(16)
            // Far past every deadline here: a restarted process takes over
            // a dead one's instances at once (its pid is gone), never by
            // waiting out their leases.
            .lease_duration(TAKEOVER_ONLY_BY_PID)
            .poll_interval(Duration::from_millis(20))
            .build()
            .await
            .expect("engine")
    }

    /// Runs a worker until every parent and child is terminal.
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

    pub struct Outcome {
        pub kills: usize,
        /// Kills while at least one parent waited for a child of
        /// `run_child`: the child's creation recorded, its result not yet.
        pub while_waiting: usize,
        /// Kills while at least one child's side-effect step was in flight.
        pub mid_step: usize,
        /// Children found created whose parent had not recorded the step
        /// that created them, summed over the kills: the restart must find
        /// them again instead of creating others.
        pub unrecorded_children: usize,
    }

    /// The children in the database, by dedup key.
    async fn children(engine: &Engine) -> HashMap<String, Vec<InstanceInfo>> {
        let mut by_key: HashMap<String, Vec<InstanceInfo>> = HashMap::new();
        for info in list_all(engine, "kid").await {
            let key = info
                .key
                .clone()
                .unwrap_or_else(|| panic!("child without a key: {info:?}"));
            by_key.entry(key).or_default().push(info);
        }
        by_key
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("family.db");
        let db_text = db.display().to_string();
        let log = dir.path().join("effects.log");
        let rt = runtime();
        let parents: Vec<InstanceId> = rt.block_on(async {
            let engine = engine(&db_text).await;
            let mut ids = Vec::new();
            for n in 0..PARENTS {
                let job = Job {
                    n,
                    log: log.display().to_string(),
                };
                ids.push(
                    Guardian::start(&engine, job)
                        .await
                        .expect("start")
                        .id()
                        .clone(),
                );
            }
            ids
        });

        let mut outcome = Outcome {
            kills: 0,
            while_waiting: 0,
            mid_step: 0,
            unrecorded_children: 0,
        };
        // The first kills come as children are created (counted in the
        // database: a kill right after a child's row is written may land
        // before its parent records it), the later ones as children run
        // (each logs one line per run of its step) while parents wait.
        // Until a kill has found a child its parent had not recorded (the
        // case where the restart must find that child, not start another),
        // a few more kills come as children are created.
        let mut plan: VecDeque<(usize, usize)> =
            [(3, 0), (20, 0), (40, 0), (0, 30), (0, 48), (0, 66)].into();
        let mut extra_kills = 0;
        let mut in_flight_at_kills: Vec<HashSet<(String, u32)>> = Vec::new();
        // What each kill found, for the messages of failed checks.
        let mut found_at_kills: Vec<String> = Vec::new();
        let count_rows = |sql: &str| -> usize {
            let conn = rusqlite::Connection::open(&db).expect("open db");
            conn.busy_timeout(Duration::from_secs(5))
                .expect("busy timeout");
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_or(0, |n| n as usize)
        };
        let kids_created = || count_rows("SELECT count(*) FROM instances WHERE workflow = 'kid'");
        let parents_listening = || {
            count_rows("SELECT count(*) FROM instances WHERE workflow = 'guardian' AND status = 'listening'")
        };
        while let Some((created, ran)) = plan.pop_front() {
            let mut child = Proc::spawn("child-family", &db, &[]);
            let deadline = Instant::now() + Duration::from_secs(60);
            // A kill as children run waits (a while) for a parent to be
            // waiting for one: on a slow machine the restarted process may
            // run children before their parents get back to their waits.
            let listen_by = Instant::now() + Duration::from_secs(10);
            while kids_created() < created
                || lines(&log).len() < ran
                || (created == 0 && parents_listening() == 0 && Instant::now() < listen_by)
            {
                assert!(Instant::now() < deadline, "child made no progress");
                if let Some(status) = child.0.as_mut().expect("child").try_wait().expect("poll") {
                    panic!("child exited early with {status}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let pid = child.pid();
            child.kill();
            outcome.kills += 1;

            let log_now = lines(&log);
            rt.block_on(async {
                let engine = reader(&db).await;
                let store = engine.store();
                // Kids' side-effect steps the killed process started and
                // did not record.
                let started = started_by(&log_now, "kid", pid);
                let kid_ids: Vec<InstanceId> = started
                    .iter()
                    .map(|(id, _)| InstanceId::from(id.as_str()))
                    .collect();
                let mut done = HashSet::new();
                for id in &kid_ids {
                    for step in store.steps(id).await.expect("steps") {
                        if step.key == "effect" {
                            done.insert((id.to_string(), 0));
                        }
                    }
                }
                let in_flight: HashSet<_> = started.difference(&done).cloned().collect();
                if !in_flight.is_empty() {
                    outcome.mid_step += 1;
                }
                // Parents waiting for a child (whether `Listening` or
                // already woken by its end); children their parent has not
                // recorded yet.
                let mut statuses: HashMap<Status, usize> = HashMap::new();
                let mut waiting = 0;
                let mut recorded_keys = HashSet::new();
                for p in &parents {
                    let row = store.get(p).await.expect("get").expect("parent row");
                    *statuses.entry(row.status).or_default() += 1;
                    let keys: HashSet<String> = store
                        .steps(p)
                        .await
                        .expect("steps")
                        .into_iter()
                        .map(|s| s.key)
                        .collect();
                    if keys
                        .iter()
                        .any(|k| k.starts_with("wait") && !k.ends_with("@result") && !keys.contains(&format!("{k}@result")))
                    {
                        waiting += 1;
                    }
                    recorded_keys.extend(keys.into_iter().map(|k| format!("{p}/{k}")));
                }
                if waiting > 0 {
                    outcome.while_waiting += 1;
                }
                let unrecorded = children(&engine)
                    .await
                    .keys()
                    .filter(|key| !recorded_keys.contains(*key))
                    .count();
                outcome.unrecorded_children += unrecorded;
                found_at_kills.push(format!(
                    "kill {} (kids created >= {created}, kid steps run >= {ran}): parents {statuses:?}, \
                     {waiting} waiting for a child, {} kid steps in flight, {unrecorded} children unrecorded",
                    outcome.kills,
                    in_flight.len()
                ));
                in_flight_at_kills.push(in_flight);
            });
            let creating = created > 0 && plan.front().is_some_and(|(next, _)| *next == 0);
            if creating && outcome.unrecorded_children == 0 && extra_kills < 5 {
                extra_kills += 1;
                let all = (PARENTS as usize) * CHILDREN.len();
                plan.push_front(((kids_created() + 3).min(all), 0));
            }
        }
        assert!(
            outcome.unrecorded_children >= 1,
            "no kill found a child its parent had not recorded yet:\n{}",
            found_at_kills.join("\n")
        );
        assert!(
            outcome.while_waiting >= 3,
            "kills should land while parents wait for children (only {} did):\n{}",
            outcome.while_waiting,
            found_at_kills.join("\n")
        );
        assert!(
            outcome.mid_step >= 2,
            "kills should land inside children's steps (only {} did):\n{}",
            outcome.mid_step,
            found_at_kills.join("\n")
        );

        let mut last = Proc::spawn("child-family", &db, &[]);
        last.wait_success(Duration::from_secs(120), "final child");

        let log_end = lines(&log);
        let starts = count(&log_end, "kid");
        rt.block_on(async {
            let engine = reader(&db).await;
            let store = engine.store();
            let by_key = children(&engine).await;
            let mut expected_keys = HashSet::new();
            for (n, p) in parents.iter().enumerate() {
                let n = n as u32;
                let info = engine.instance(p).await.expect("parent");
                assert_eq!(info.status, Status::Completed, "parent {p} must complete: {info:?}");
                let sum: u32 = (2..5).map(|slot| n * 10 + slot).sum();
                assert_eq!(info.output, Some(serde_json::json!(sum)), "parent {p} output");
                let steps: HashMap<String, Option<String>> = store
                    .steps(p)
                    .await
                    .expect("steps")
                    .into_iter()
                    .map(|s| (s.key, s.output))
                    .collect();
                for (step, slot) in CHILDREN {
                    let key = format!("{p}/{step}");
                    let found = by_key
                        .get(&key)
                        .unwrap_or_else(|| panic!("no child for {key}"));
                    assert_eq!(
                        found.len(),
                        1,
                        "child {key} started {} times: {found:#?}",
                        found.len()
                    );
                    let kid = &found[0];
                    // The parent's record names this very child.
                    let recorded = steps
                        .get(step)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| panic!("parent {p} has no record of `{step}`"));
                    assert_eq!(
                        serde_json::from_str::<String>(&recorded).expect("recorded id"),
                        kid.id.to_string(),
                        "parent {p} recorded another child for `{step}` than the one keyed by it"
                    );
                    let row = store.get(&kid.id).await.expect("get").expect("kid row");
                    assert_eq!(row.parent.as_ref(), Some(p), "parent of {key}");
                    assert_eq!(kid.input["slot"], serde_json::json!(slot), "input of {key}");
                    assert_eq!(kid.status, Status::Completed, "child {key}: {kid:?}");
                    assert_eq!(
                        kid.output,
                        Some(serde_json::json!(n * 10 + slot)),
                        "output of child {key}"
                    );
                    expected_keys.insert(key);
                }
            }
            let extra: Vec<&String> = by_key.keys().filter(|k| !expected_keys.contains(*k)).collect();
            assert!(extra.is_empty(), "children nobody asked for: {extra:?}");
            for infos in by_key.values() {
                let id = infos[0].id.to_string();
                let key = (id.clone(), 0);
                let runs = starts.get(&key).copied().unwrap_or(0);
                let kills_in_flight = in_flight_at_kills.iter().filter(|set| set.contains(&key)).count();
                assert!(runs >= 1, "the step of child {id} never ran");
                assert!(
                    runs <= 1 + kills_in_flight,
                    "the step of child {id} ran {runs} times but was in flight at only {kills_in_flight} kill(s)"
                );
            }
        });
        outcome
    }
}

mod cron {
    //! Two engine processes run one schedule; both are killed at random
    //! moments, alone or together; then one runs on. Each tick must be one
    //! instance, and with `catch_up = "all"` no tick may be skipped.

    use super::*;
    use std::sync::OnceLock;

    /// The side-effect log, next to the database.
    static LOG: OnceLock<String> = OnceLock::new();

    fn log_path(db: &str) -> String {
        format!("{db}.log")
    }

    /// Fires every second; missed ticks are all fired late, none skipped.
    #[workflow(
        name = "ticker",
        schedule = "*/1 * * * * *",
        catch_up = "all",
        timeout = "1h"
    )]
    async fn ticker(ctx: Ctx, _input: ()) -> workflow::Result<String> {
        let id = ctx.id().to_string();
        let log = LOG.get().expect("log path");
        let id = &id;
        ctx.step("effect", || async move {
            log_line(log, &format!("tick {id} 0 {}", std::process::id()));
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(ctx.tags().get("schedule").cloned().unwrap_or_default())
    }

    /// Runs the schedule for `seconds` (0: until killed), then shuts down
    /// gracefully.
    pub fn child(db: &str, seconds: &str) {
        LOG.set(log_path(db)).expect("log path set once");
        let seconds: u64 = seconds.parse().expect("seconds");
        runtime().block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{db}"))
                .register(Ticker)
                .poll_interval(Duration::from_millis(50))
                .build()
                .await
                .expect("engine");
            let worker = engine.start_worker();
            if seconds == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            worker.shutdown().await;
        });
    }

    /// xorshift64*: random kill times, reproducible from the seed printed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
        }

        fn millis(&mut self, from: u64, to: u64) -> Duration {
            Duration::from_millis(from + self.below(to - from))
        }
    }

    pub struct Outcome {
        pub kills: usize,
        pub ticks: usize,
        /// Ticks fired at least 250 ms after their time: caught up.
        pub late: usize,
        pub seed: u64,
    }

    fn tick_time(key: &str) -> chrono::DateTime<chrono::Utc> {
        let text = key
            .strip_prefix("schedule:")
            .unwrap_or_else(|| panic!("not a schedule key: {key}"));
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("tick `{text}`: {e}"))
            .with_timezone(&chrono::Utc)
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("cron.db");
        let log = PathBuf::from(log_path(&db.display().to_string()));
        let rt = runtime();
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64
            })
            | 1;
        let mut rng = Rng(seed);
        // The file exists before the schedulers start. Processes that
        // create one file at the same moment may fail to open it: SQLite
        // refuses the switch to WAL with `database is locked` at once,
        // without waiting out the busy timeout (not this test's subject).
        rt.block_on(async { drop(reader(&db).await) });
        let spawn = || Proc::spawn("child-cron", &db, &["0"]);
        // A scheduler must run until it is killed.
        let check_running = |p: &mut Proc| {
            if let Some(status) = p.0.as_mut().and_then(|c| c.try_wait().expect("poll child")) {
                panic!("a scheduler exited on its own with {status} (seed {seed})");
            }
        };
        let mut procs = [spawn(), spawn()];
        let mut kills = 0;
        let mut in_flight_at_kills: Vec<HashSet<(String, u32)>> = Vec::new();
        // The tick steps that the processes `pids`, just killed, started
        // and did not record.
        let in_flight = |pids: &[u32]| -> HashSet<(String, u32)> {
            let log_now = lines(&log);
            let started: HashSet<(String, u32)> = pids
                .iter()
                .flat_map(|pid| started_by(&log_now, "tick", *pid))
                .collect();
            let done = rt.block_on(async {
                let ids: Vec<InstanceId> = started
                    .iter()
                    .map(|(id, _)| InstanceId::from(id.as_str()))
                    .collect();
                let store = SqliteStore::open(&db).await.expect("open db");
                let rec = recorded(&store, &ids).await;
                store.close().await;
                rec
            });
            started.difference(&done).cloned().collect()
        };
        // Six rounds: run a while, kill one or both, stay down a while
        // (once for longer than a tick, both down), restart.
        for round in 0..6 {
            std::thread::sleep(rng.millis(150, 700));
            let victims: &[usize] = match rng.below(3) {
                0 => &[0],
                1 => &[1],
                _ => &[0, 1],
            };
            let victims = if round == 3 { &[0, 1][..] } else { victims };
            for p in procs.iter_mut() {
                check_running(p);
            }
            let mut pids = Vec::new();
            for &v in victims {
                pids.push(procs[v].pid());
                procs[v].kill();
                kills += 1;
            }
            in_flight_at_kills.push(in_flight(&pids));
            std::thread::sleep(if round == 3 {
                Duration::from_millis(1_300)
            } else {
                rng.millis(0, 500)
            });
            for p in procs.iter_mut().filter(|p| !p.alive()) {
                *p = spawn();
            }
        }
        let mut pids = Vec::new();
        for p in &mut procs {
            check_running(p);
            pids.push(p.pid());
            p.kill();
            kills += 1;
        }
        in_flight_at_kills.push(in_flight(&pids));
        let mut last = Proc::spawn("child-cron", &db, &["3"]);
        last.wait_success(Duration::from_secs(30), "final scheduler");
        let stopped = chrono::Utc::now();

        let log_end = lines(&log);
        let runs = count(&log_end, "tick");
        let ticks = rt.block_on(async {
            let engine = reader(&db).await;
            let all = list_all(&engine, "ticker").await;
            let mut per_tick: HashMap<String, Vec<&InstanceInfo>> = HashMap::new();
            for info in &all {
                let key = info.key.clone().unwrap_or_else(|| panic!("tick without a key: {info:?}"));
                per_tick.entry(key).or_default().push(info);
            }
            let twice: Vec<_> = per_tick.iter().filter(|(_, v)| v.len() > 1).collect();
            assert!(twice.is_empty(), "ticks with more than one instance: {twice:#?}");
            let mut times: Vec<_> = per_tick.keys().map(|k| tick_time(k)).collect();
            times.sort();
            assert!(times.len() >= 6, "too few ticks: {times:?}");
            for pair in times.windows(2) {
                assert_eq!(
                    (pair[1] - pair[0]).num_milliseconds(),
                    1_000,
                    "ticks skipped between {} and {} (seed {seed})",
                    pair[0],
                    pair[1]
                );
            }
            for info in &all {
                let key = info.key.as_deref().expect("key");
                assert_eq!(info.tags.get("schedule").map(|t| format!("schedule:{t}")).as_deref(), Some(key));
                // Fired in the last moments of the final run: may wait for
                // the next engine.
                let recent = stopped - tick_time(key) < chrono::Duration::milliseconds(2_500);
                match info.status {
                    Status::Completed => {}
                    Status::Pending if recent => continue,
                    other => panic!("tick {key} is {other} (seed {seed}): {info:?}"),
                }
                assert_eq!(
                    info.output,
                    Some(serde_json::json!(key.trim_start_matches("schedule:"))),
                    "output of {key}"
                );
                let id = info.id.to_string();
                let step = (id.clone(), 0);
                let ran = runs.get(&step).copied().unwrap_or(0);
                let kills_in_flight = in_flight_at_kills.iter().filter(|s| s.contains(&step)).count();
                assert!(ran >= 1, "tick {key} completed without its step");
                assert!(
                    ran <= 1 + kills_in_flight,
                    "the step of tick {key} ran {ran} times but was in flight at only {kills_in_flight} kill(s)"
                );
            }
            // The ticks that came due while both schedulers were down (once
            // for 1.3 s) fired when one came back: late, and once.
            let late = all
                .iter()
                .filter(|i| {
                    let tick = tick_time(i.key.as_deref().expect("key"));
                    i.created_at - tick >= chrono::Duration::milliseconds(250)
                })
                .count();
            assert!(late >= 1, "no tick was fired late after a downtime (seed {seed})");
            (times.len(), late)
        });
        Outcome {
            kills,
            ticks: ticks.0,
            late: ticks.1,
            seed,
        }
    }
}

mod fence {
    //! A worker that is alive but late: stopped (SIGSTOP) inside a step
    //! until its lease runs out and another worker has taken the instance
    //! over and finished it; then continued (SIGCONT), it tries to commit
    //! the step. The first record must win and the late worker change
    //! nothing.

    use super::*;
    use std::sync::OnceLock;

    /// `A` (the worker that is stopped) or `B` (the one that takes over).
    static WHO: OnceLock<String> = OnceLock::new();

    const LEASE: Duration = Duration::from_secs(1);

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64
    }

    /// The file whose existence lets worker A's step end.
    fn release_path(log: &str) -> PathBuf {
        PathBuf::from(format!("{log}.release"))
    }

    /// Saved with the `slow` step: an unfenced late commit would overwrite it.
    #[derive(Default, Serialize, Deserialize, JsonSchema)]
    struct Marks {
        slow_by: Option<String>,
    }

    #[workflow(name = "fenced", timeout = "1h")]
    async fn fenced(ctx: Ctx<Marks>, job: Job) -> workflow::Result<String> {
        let who = WHO.get().expect("who").as_str();
        let log = &job.log;
        ctx.state_mut().slow_by = Some(who.to_owned());
        let slow = ctx
            .step("slow", || async move {
                log_line(log, &format!("slow-start {who} {}", now_ms()));
                if who == "A" {
                    // Holds this thread, not the runtime: the heartbeat goes
                    // on until the SIGSTOP. After the SIGCONT the step ends
                    // at once and its commit goes out in the same poll.
                    let release = release_path(log);
                    tokio::task::block_in_place(|| {
                        while !release.exists() {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    });
                }
                log_line(log, &format!("slow-done {who} {}", now_ms()));
                Ok::<_, BoxError>(format!("slow by {who}"))
            })
            .await;
        let slow = match slow {
            Ok(slow) => slow,
            Err(err) => {
                log_line(log, &format!("refused {who} {err}"));
                return Err(err);
            }
        };
        let after = ctx
            .step("after", || async move {
                log_line(log, &format!("after {who}"));
                Ok::<_, BoxError>(format!("after by {who}"))
            })
            .await?;
        Ok(format!("{slow}; {after}"))
    }

    /// Runs a worker with a short lease until the instance is terminal.
    /// Where worker A's store says what it refused.
    fn trace_path(db: &str) -> PathBuf {
        PathBuf::from(format!("{db}.trace-A"))
    }

    pub fn child(db: &str, who: &str) {
        WHO.set(who.to_owned()).expect("who set once");
        if who == "A" {
            let trace = std::fs::File::create(trace_path(db)).expect("trace file");
            tracing_subscriber::fmt()
                .with_env_filter("workflow_sqlite=info")
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(trace))
                .init();
        }
        runtime().block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{db}"))
                .register(Fenced)
                .lease_duration(LEASE)
                .poll_interval(Duration::from_millis(20))
                .build()
                .await
                .expect("engine");
            let _worker = engine.start_worker();
            loop {
                let counts = engine.counts(Some("fenced")).await.expect("counts");
                if counts.keys().all(|s| s.is_terminal()) && engine.running_here().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // One writer thread applies this store's writes in order: once
            // this write is answered, the commit A's step sent before it has
            // been applied or refused, not lost with the process.
            for info in list_all(&engine, "fenced").await {
                let err = engine.cancel(&info.id).await.expect_err("already ended");
                assert!(
                    matches!(err, workflow::Error::AlreadyFinished { .. }),
                    "{err}"
                );
            }
        });
    }

    /// The lease on `id` as stored: owner and expiry.
    fn lease(db: &Path, id: &InstanceId) -> (Option<String>, Option<i64>) {
        let conn = rusqlite::Connection::open(db).expect("open db");
        conn.query_row(
            "SELECT lease_owner, lease_expires_at FROM instances WHERE id = ?1",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("lease")
    }

    /// Whether a writer could take SQLite's write lock now. A process
    /// stopped inside a write transaction keeps the lock, and no other
    /// process can write until it is continued.
    fn write_lock_free(db: &Path) -> bool {
        let conn = rusqlite::Connection::open(db).expect("open db");
        conn.busy_timeout(Duration::ZERO).expect("busy timeout");
        match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
            Ok(()) => true,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                false
            }
            Err(e) => panic!("taking the write lock: {e}"),
        }
    }

    pub struct Outcome {
        /// How long A stayed stopped.
        pub stopped_ms: u128,
        /// What A's handler heard of its refused commit.
        pub refusal: String,
        /// Stops that caught A inside a write transaction (it was
        /// continued and stopped again).
        pub restops: usize,
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("fence.db");
        let log = dir.path().join("effects.log");
        let log_text = log.display().to_string();
        let rt = runtime();
        let id = rt.block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{}", db.display()))
                .register(Fenced)
                .build()
                .await
                .expect("engine");
            let job = Job {
                n: 0,
                log: log_text.clone(),
            };
            Fenced::start(&engine, job)
                .await
                .expect("start")
                .id()
                .clone()
        });
        let stamp = |prefix: &str| -> Option<i64> {
            lines(&log)
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|t| t.parse().expect("time")))
        };

        let mut a = Proc::spawn("child-fence", &db, &["A"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stamp("slow-start A ").is_none() {
            assert!(Instant::now() < deadline, "A never reached its step");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Stop A outside a write transaction (its heartbeat writes every
        // third of a lease): a stopped writer would block B's writes.
        let mut tries = 0;
        loop {
            a.signal(libc::SIGSTOP);
            // Let the stop land before looking at the lock.
            std::thread::sleep(Duration::from_millis(20));
            if write_lock_free(&db) {
                break;
            }
            tries += 1;
            assert!(tries < 50, "A holds the write lock whenever it is stopped");
            a.signal(libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(7));
        }
        let stopped = Instant::now();
        let (owner, expires) = lease(&db, &id);
        let owner = owner.expect("A holds a lease while stopped");
        let a_lease_ends = expires.expect("lease expiry");
        assert!(
            owner.split('/').nth(1) == Some(&a.pid().to_string()),
            "the lease is A's (pid {}): {owner}",
            a.pid()
        );

        // B starts at once: A's process is alive, so B must wait out the
        // lease instead of reaping A by its pid.
        let mut b = Proc::spawn("child-fence", &db, &["B"]);
        b.wait_success(Duration::from_secs(30), "worker B");
        let b_started = stamp("slow-start B ").expect("B ran the step");
        assert!(
            b_started > a_lease_ends,
            "B took over {} ms before A's lease ended",
            a_lease_ends - b_started
        );
        let (before, steps_before, history_before) = rt.block_on(async {
            let engine = reader(&db).await;
            (
                engine.instance(&id).await.expect("instance"),
                engine.steps(&id).await.expect("steps"),
                engine.history(&id).await.expect("history"),
            )
        });
        assert_eq!(
            before.status,
            Status::Completed,
            "B finished it: {before:?}"
        );
        assert_eq!(
            before.output,
            Some(serde_json::json!("slow by B; after by B")),
            "B's outcome"
        );
        assert_eq!(before.runs, 2, "claimed by A, then by B");
        assert_eq!(
            before.state,
            Some(serde_json::json!({"slow_by": "B"})),
            "B's state"
        );

        // A goes on: its step returns and commits under its old lease.
        std::fs::write(release_path(&log_text), b"").expect("release file");
        a.signal(libc::SIGCONT);
        let stopped_ms = stopped.elapsed().as_millis();
        a.wait_success(Duration::from_secs(30), "worker A after SIGCONT");

        let log_end = lines(&log);
        assert!(
            log_end.iter().any(|l| l.starts_with("slow-done A ")),
            "A's step ran to its end and sent its commit: {log_end:?}"
        );
        assert!(
            !log_end.iter().any(|l| l == "after A"),
            "A went on past the refused step: {log_end:?}"
        );
        // A's store refused the commit, whether A's handler heard of it or
        // its heartbeat had stopped it first: the write went out either way.
        let trace =
            std::fs::read_to_string(trace_path(&db.display().to_string())).expect("A's trace");
        assert!(
            trace
                .lines()
                .any(|l| l.contains("a late step result was refused")
                    && l.contains(id.as_str())
                    && l.contains("step=slow")),
            "A's late commit reached its store and was refused: {trace}"
        );
        let refusal = log_end
            .iter()
            .find_map(|l| l.strip_prefix("refused A "))
            .map_or_else(
                || {
                    "refused by A's store; A's handler was stopped by its heartbeat first"
                        .to_owned()
                },
                |why| format!("A's handler heard: {why}"),
            );
        if let Some(why) = log_end.iter().find_map(|l| l.strip_prefix("refused A ")) {
            assert!(
                why.contains("lease"),
                "A's commit was refused for its lease: {why}"
            );
        }
        rt.block_on(async {
            let engine = reader(&db).await;
            let after = engine.instance(&id).await.expect("instance");
            assert_eq!(after, before, "A's late commit changed the instance");
            let steps = engine.steps(&id).await.expect("steps");
            assert_eq!(steps, steps_before, "A's late commit changed the steps");
            let slow = steps
                .iter()
                .find(|s| s.key == "slow")
                .expect("slow recorded");
            assert_eq!(
                slow.output,
                Some(serde_json::json!("slow by B")),
                "first record wins"
            );
            let history = engine.history(&id).await.expect("history");
            assert_eq!(history, history_before, "A's late commit added history");
            let completed = history.iter().filter(|e| e.kind == "completed").count();
            assert_eq!(completed, 1, "completed once: {history:#?}");
        });
        Outcome {
            stopped_ms,
            refusal,
            restops: tries,
        }
    }
}

mod poison {
    //! A step that crashes its process every time (`abort`, as a panic
    //! does under `panic = "abort"`): each restart reaps the dead worker's
    //! lease and runs it again, until the engine has seen `LIMIT`
    //! interrupted runs in a row and pauses the instance instead of
    //! running it. The step runs beside a wait for an event that has not
    //! come (a request and its reply, `join!`): each run looks for the
    //! event and finds none, which is no progress (it was counted as
    //! some, and the loop was never stopped). Once "fixed", a resume runs
    //! it to the end from its recorded steps. An instance running beside
    //! it, killed with it every time but recording steps in between, is
    //! not paused.

    use super::*;

    pub const LIMIT: u32 = 3;

    /// The file whose existence stands for the fix being deployed.
    fn fixed_path(log: &str) -> PathBuf {
        PathBuf::from(format!("{log}.fixed"))
    }

    #[workflow(name = "poisoned", timeout = "1h")]
    async fn poisoned(ctx: Ctx, job: Job) -> workflow::Result<u32> {
        let log = &job.log;
        let before = ctx
            .step("before", || async move {
                log_line(log, "before");
                Ok::<_, BoxError>(job.n)
            })
            .await?;
        let boom = ctx.step("boom", || async move {
            if !fixed_path(log).exists() {
                // Until the steady instance records steps in this
                // process too (bounded, in case it has ended).
                let ticks = || {
                    lines(Path::new(log))
                        .iter()
                        .filter(|l| l.starts_with("tick "))
                        .count()
                };
                let (before, deadline) = (ticks(), Instant::now() + Duration::from_secs(5));
                while ticks() < before + 3 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                log_line(log, &format!("boom {}", std::process::id()));
                std::process::abort();
            }
            log_line(log, "fixed");
            Ok::<_, BoxError>(10)
        });
        let (reply, boom) = tokio::join!(ctx.wait_for_event::<u32>("reply", None), boom);
        Ok(before + boom? + reply?)
    }

    /// Killed along with `poisoned`, but gets somewhere in between. Each
    /// step logs its index: `tick I`.
    #[workflow(name = "steady", timeout = "1h")]
    async fn steady(ctx: Ctx, job: Job) -> workflow::Result<u32> {
        let log = &job.log;
        for i in 0..STEADY_STEPS {
            ctx.step("tick", || async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                log_line(log, &format!("tick {i}"));
                Ok::<_, BoxError>(())
            })
            .await?;
        }
        Ok(STEADY_STEPS)
    }

    const STEADY_STEPS: u32 = 60;

    /// Runs a worker until both instances are paused or have ended.
    pub fn child(db: &str) {
        // SAFETY: setrlimit only reads the struct it is given. No core
        // files from the aborts.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
        }
        runtime().block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{db}"))
                .register(Poisoned)
                .register(Steady)
                .max_interrupted_runs(Some(LIMIT))
                .lease_duration(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(20))
                .build()
                .await
                .expect("engine");
            let _worker = engine.start_worker();
            loop {
                let counts = engine.counts(None).await.expect("counts");
                if counts
                    .keys()
                    .all(|s| s.is_terminal() || *s == Status::Paused)
                    && engine.running_here().is_empty()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    pub struct Outcome {
        /// The pause's history message.
        pub reason: String,
    }

    /// Spawns workers one after another until one exits cleanly; returns
    /// how many were killed by their step (SIGABRT).
    fn run_until_clean_exit(db: &Path) -> u32 {
        use std::os::unix::process::ExitStatusExt;
        let mut aborted = 0;
        loop {
            let mut proc = Proc::spawn("child-poison", db, &[]);
            let mut child = proc.0.take().expect("child");
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("a worker neither crashed nor finished within 60 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if status.success() {
                return aborted;
            }
            assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
            aborted += 1;
            assert!(
                aborted <= LIMIT,
                "{aborted} workers crashed: the crash loop was not stopped"
            );
        }
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("poison.db");
        let log = dir.path().join("effects.log");
        let log_text = log.display().to_string();
        let rt = runtime();
        let (engine, id, steady) = rt.block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{}", db.display()))
                .register(Poisoned)
                .register(Steady)
                .build()
                .await
                .expect("engine");
            let job = |n| Job {
                n,
                log: log_text.clone(),
            };
            let id = Poisoned::start(&engine, job(5))
                .await
                .expect("start")
                .id()
                .clone();
            let steady = Steady::start(&engine, job(0))
                .await
                .expect("start")
                .id()
                .clone();
            (engine, id, steady)
        });

        let aborted = run_until_clean_exit(&db);
        assert_eq!(aborted, LIMIT, "one crash per run until the limit");
        let log_now = lines(&log);
        let booms = log_now.iter().filter(|l| l.starts_with("boom ")).count();
        assert_eq!(booms as u32, LIMIT, "{log_now:?}");
        assert_eq!(
            log_now.iter().filter(|l| *l == "before").count(),
            1,
            "the recorded step did not run again: {log_now:?}"
        );
        let (info, last) = rt.block_on(async {
            let info = engine.instance(&id).await.expect("instance");
            let history = Poisoned::handle(&engine, id.clone())
                .history()
                .await
                .expect("history");
            (info, history.last().cloned().expect("history"))
        });
        assert_eq!(info.status, Status::Paused);
        assert_eq!(last.kind, "paused");
        // Killed with it up to three times, it recorded steps in between.
        let steady_info = rt.block_on(async { engine.instance(&steady).await.expect("steady") });
        assert_eq!(
            steady_info.status,
            Status::Completed,
            "the instance beside it ran on"
        );
        // A step re-runs only if a crash cut it short: each crash comes
        // after at least three ticks of its process, so it cuts short at
        // most one tick, never one the crash before cut short too.
        let mut runs: std::collections::BTreeMap<u32, u32> = Default::default();
        for i in log_now.iter().filter_map(|l| l.strip_prefix("tick ")) {
            *runs.entry(i.parse().expect("tick index")).or_default() += 1;
        }
        for i in 0..STEADY_STEPS {
            let ran = runs.get(&i).copied().unwrap_or(0);
            assert!((1..=2).contains(&ran), "tick {i} ran {ran} times: {runs:?}");
        }
        assert_eq!(
            runs.len() as u32,
            STEADY_STEPS,
            "ticks past the last: {runs:?}"
        );
        let again = runs.values().filter(|ran| **ran > 1).count() as u32;
        assert!(
            again <= LIMIT,
            "{again} ticks ran again for {LIMIT} crashes: {runs:?}"
        );
        let reason = last.message.clone().unwrap_or_default();
        assert!(
            reason.contains(&format!("{LIMIT} interrupted runs in a row"))
                && reason.contains("after step `before`"),
            "{reason}"
        );

        // The fix is deployed and the reply comes; resumed, it ends from
        // its recorded steps.
        std::fs::write(fixed_path(&log_text), b"").expect("fix");
        rt.block_on(async {
            engine
                .send_event(&id, "reply", 100)
                .await
                .expect("send the reply");
            engine.resume(&id).await.expect("resume")
        });
        assert_eq!(run_until_clean_exit(&db), 0, "no crash once fixed");
        let info = rt.block_on(async { engine.instance(&id).await.expect("instance") });
        assert_eq!(info.status, Status::Completed);
        assert_eq!(info.output, Some(serde_json::json!(115)));
        let log_now = lines(&log);
        assert_eq!(log_now.iter().filter(|l| *l == "before").count(), 1);
        assert_eq!(log_now.iter().filter(|l| *l == "fixed").count(), 1);
        Outcome { reason }
    }
}

mod starts {
    //! A process that starts instances, killed among its starts: every
    //! start it was answered exists, and a restart asking for the same
    //! dedup keys again gets the same instances.

    use super::*;

    /// Starts per run of the child: as many plain ones, and as many by
    /// dedup key (`get_or_create`, keys `k0`, `k1`, ...).
    const STARTS: u32 = 120;
    /// Tasks starting side by side, so that the kill lands among starts in
    /// flight.
    const TASKS: u32 = 4;

    /// Only started: no worker runs here.
    #[workflow(name = "started", timeout = "1h")]
    async fn started(_ctx: Ctx, n: u32) -> workflow::Result<u32> {
        Ok(n)
    }

    /// Starts every `n` once plainly and once by key, logging each id
    /// only once its start has answered.
    pub fn child(db: &str, log: &str) {
        runtime().block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{db}"))
                .register(Started)
                .build()
                .await
                .expect("engine");
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let (engine, log) = (engine.clone(), log.to_owned());
                tasks.push(tokio::spawn(async move {
                    for n in (task..STARTS).step_by(TASKS as usize) {
                        let plain = Started::start(&engine, n).await.expect("start");
                        log_line(&log, &format!("plain {} {n}", plain.id()));
                        let keyed = Started::get_or_create(&engine, format!("k{n}"), n)
                            .await
                            .expect("get_or_create");
                        log_line(&log, &format!("keyed {} {n}", keyed.id()));
                    }
                }));
            }
            for task in tasks {
                task.await.expect("starting task");
            }
        });
    }

    pub struct Outcome {
        pub kills: usize,
        /// Starts answered before a kill.
        pub answered: usize,
        /// Plain instances made whose start's answer was cut off by a kill.
        pub unanswered: usize,
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("starts.db");
        let log = dir.path().join("starts.log");
        let log_text = log.display().to_string();
        let rt = runtime();
        // Kill after a growing number of answered starts (counted over all
        // runs); then a last run makes every start, to the end.
        let mut kills = 0;
        let mut answered = 0;
        for kill_after in [25, 110, 200] {
            let mut child = Proc::spawn("child-starts", &db, &[&log_text]);
            child.wait_until("the starter", || lines(&log).len() >= kill_after);
            child.kill();
            kills += 1;
            answered = lines(&log).len();
        }
        let mut last = Proc::spawn("child-starts", &db, &[&log_text]);
        last.wait_success(Duration::from_secs(60), "final starter");

        // What the log says each start answered: (id, n) per kind.
        let answers = |kind: &str| -> Vec<(String, u32)> {
            lines(&log)
                .iter()
                .filter_map(|line| {
                    let parts: Vec<&str> = line.split(' ').collect();
                    match parts[..] {
                        [k, id, n] if k == kind => Some((id.to_owned(), n.parse().expect("n"))),
                        _ => None,
                    }
                })
                .collect()
        };
        let (plain_answers, keyed_answers) = (answers("plain"), answers("keyed"));
        let unanswered = rt.block_on(async {
            let engine = reader(&db).await;
            let all = list_all(&engine, "started").await;
            let by_id: HashMap<String, &InstanceInfo> =
                all.iter().map(|i| (i.id.to_string(), i)).collect();
            for (id, n) in plain_answers.iter().chain(&keyed_answers) {
                let info = by_id.get(id).unwrap_or_else(|| {
                    panic!("start of {n} answered {id}, which is not in the database")
                });
                assert_eq!(info.input, serde_json::json!(n), "input of {id}");
                assert_eq!(info.status, Status::Pending, "{info:?}");
            }
            // One instance per key, whichever run asked for it, and the one
            // every run that asked was answered with.
            let mut by_key: HashMap<String, Vec<&InstanceInfo>> = HashMap::new();
            for info in all.iter().filter(|i| i.key.is_some()) {
                by_key
                    .entry(info.key.clone().expect("key"))
                    .or_default()
                    .push(info);
            }
            assert_eq!(by_key.len(), STARTS as usize, "keys: {:?}", by_key.keys());
            for (id, n) in &keyed_answers {
                let found = &by_key[&format!("k{n}")];
                assert_eq!(
                    found.len(),
                    1,
                    "key k{n} has {} instances: {found:#?}",
                    found.len()
                );
                assert_eq!(
                    found[0].id.as_str(),
                    id,
                    "key k{n} answered another instance"
                );
            }
            // A start that was not answered created one instance at most:
            // each task had at most one start in flight at each kill.
            let plain = all.len() - by_key.len();
            let bound = plain_answers.len() + kills * TASKS as usize;
            assert!(
                (plain_answers.len()..=bound).contains(&plain),
                "{plain} plain instances for {} answered starts and {kills} kills",
                plain_answers.len()
            );
            plain - plain_answers.len()
        });
        Outcome {
            kills,
            answered,
            unanswered,
        }
    }
}

mod once {
    //! Steps of `StepOptions::at_most_once` (a charge no idempotency key
    //! guards), killed while they run: none runs twice. An instance whose
    //! charge a kill cut short fails, saying its outcome is unknown; every
    //! other one completes, having charged once.

    use super::*;

    const INSTANCES: u32 = 24;

    #[workflow(name = "chargeOnce", timeout = "1h")]
    async fn charge_once(ctx: Ctx, job: Job) -> workflow::Result<u32> {
        let (log, n) = (&job.log, job.n);
        let id = ctx.id().to_string();
        let id = &id;
        ctx.step_with("charge", StepOptions::at_most_once(), || async move {
            log_line(log, &format!("charge {id}"));
            // Long enough that kills land inside charges.
            tokio::time::sleep(Duration::from_millis(40 + u64::from(n * 7 % 30))).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(n)
    }

    /// Runs a worker until every instance has ended.
    pub fn child(db: &str) {
        runtime().block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{db}"))
                .register(ChargeOnce)
                .concurrency(4)
                .lease_duration(TAKEOVER_ONLY_BY_PID)
                .poll_interval(Duration::from_millis(20))
                .build()
                .await
                .expect("child engine");
            let _worker = engine.start_worker();
            while !list_all(&engine, "chargeOnce")
                .await
                .iter()
                .all(|i| i.status.is_terminal())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    pub struct Outcome {
        pub kills: usize,
        /// Instances failed for a charge a kill cut short.
        pub cut_short: usize,
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("once.db");
        let log = dir.path().join("once.log");
        let rt = runtime();
        rt.block_on(async {
            let engine = Engine::builder()
                .database_url(format!("sqlite://{}", db.display()))
                .register(ChargeOnce)
                .build()
                .await
                .expect("parent engine");
            for n in 0..INSTANCES {
                let log = log.display().to_string();
                ChargeOnce::start(&engine, Job { n, log })
                    .await
                    .expect("start");
            }
        });
        let charges = |log: &Path| {
            lines(log)
                .iter()
                .filter(|l| l.starts_with("charge "))
                .count()
        };
        // Kill after a growing number of charges begun: 4 run at once, so
        // a kill nearly always lands inside some.
        let mut kills = 0;
        for kill_after in [3usize, 9, 15] {
            let mut child = Proc::spawn("child-once", &db, &[]);
            child.wait_until("the charging worker", || charges(&log) >= kill_after);
            child.kill();
            kills += 1;
        }
        let mut last = Proc::spawn("child-once", &db, &[]);
        last.wait_success(Duration::from_secs(60), "final run");

        let mut runs: HashMap<String, usize> = HashMap::new();
        for line in lines(&log) {
            if let Some(id) = line.strip_prefix("charge ") {
                *runs.entry(id.to_owned()).or_default() += 1;
            }
        }
        let cut_short = rt.block_on(async {
            let engine = reader(&db).await;
            let all = list_all(&engine, "chargeOnce").await;
            assert_eq!(all.len(), INSTANCES as usize);
            let mut cut_short = 0;
            for info in &all {
                let id = info.id.to_string();
                let ran = runs.get(&id).copied().unwrap_or(0);
                assert!(ran <= 1, "{id}'s charge ran {ran} times");
                match info.status {
                    Status::Completed => assert_eq!(ran, 1, "{id} completed"),
                    Status::Failed => {
                        let error = info.error.clone().unwrap_or_default();
                        assert!(error.contains("cut short"), "{id}: {error}");
                        cut_short += 1;
                    }
                    other => panic!("{id} ended {other:?}"),
                }
            }
            cut_short
        });
        // Not vacuous: the kills landed inside charges.
        assert!(cut_short >= 1, "no kill cut a charge short");
        Outcome { kills, cut_short }
    }
}

mod signal {
    //! A service stopped with SIGTERM, as systemd and Kubernetes stop one,
    //! through `workflow::shutdown_signal`.

    use super::*;

    /// Many short steps, each logging `step I` as it begins.
    #[workflow(name = "stepper", timeout = "1h")]
    async fn stepper(ctx: Ctx, log: String) -> workflow::Result<u32> {
        for i in 0..200u32 {
            let log = &log;
            ctx.step(&format!("step-{i}"), || async move {
                log_line(log, &format!("step {i}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, BoxError>(())
            })
            .await?;
        }
        Ok(200)
    }

    /// One step that outlasts any shutdown's patience.
    #[workflow(name = "stuck", timeout = "1h")]
    async fn stuck(ctx: Ctx, log: String) -> workflow::Result<()> {
        ctx.step("forever", || async {
            log_line(&log, "stuck");
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }

    fn engine(db: &str) -> workflow::EngineBuilder {
        Engine::builder()
            .database_url(format!("sqlite://{db}"))
            .register(Stepper)
            .register(Stuck)
            .poll_interval(Duration::from_millis(20))
            .lease_duration(TAKEOVER_ONLY_BY_PID)
            .shutdown_grace(Duration::from_secs(30))
    }

    /// A service: a worker until SIGINT or SIGTERM.
    pub fn child(db: &str, _log: &str) {
        runtime().block_on(async {
            let engine = engine(db).build().await.expect("engine");
            engine
                .run_until(workflow::shutdown_signal())
                .await
                .expect("run");
        });
    }

    pub struct Outcome {
        pub recorded: usize,
        pub stopped_in: Duration,
    }

    /// The child's exit code, waiting at most `limit` for it.
    fn exit_code(proc: &mut Proc, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = proc.0.as_mut().expect("child running");
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                proc.0 = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn parent() -> Outcome {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("signal.db");
        let db_text = db.display().to_string();
        let log = dir.path().join("steps.log");
        let log_text = log.display().to_string();
        let rt = runtime();
        let engine = rt.block_on(async { engine(&db_text).build().await.expect("engine") });
        let id = rt.block_on(async {
            Stepper::start(&engine, log_text.clone())
                .await
                .expect("start")
                .id()
                .clone()
        });

        let mut proc = Proc::spawn("child-signal", &db, &[&log_text]);
        proc.wait_until("three steps", || lines(&log).len() >= 3);
        proc.signal(libc::SIGTERM);
        let sent = Instant::now();
        assert_eq!(exit_code(&mut proc, Duration::from_secs(25)), Some(0));
        let stopped_in = sent.elapsed();
        let (info, steps, history) = rt.block_on(async {
            let handle = Stepper::handle(&engine, id.clone());
            (
                handle.info().await.expect("info"),
                handle.steps().await.expect("steps"),
                handle.history().await.expect("history"),
            )
        });
        assert_eq!(info.status, Status::Pending, "handed back: {info:?}");
        let begun = lines(&log);
        assert!(steps.len() < 200, "stopped before the end: {}", steps.len());
        assert_eq!(
            begun.len(),
            steps.len(),
            "every step begun was recorded, none begun after: {begun:?}"
        );
        let handed = history.last().expect("history");
        assert!(
            handed
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("shutting down"),
            "{handed:?}"
        );

        // A step that holds the shutdown up: a second SIGTERM ends it now.
        rt.block_on(async {
            engine.cancel(&id).await.expect("cancel");
            Stuck::start(&engine, log_text.clone())
                .await
                .expect("start");
        });
        let mut proc = Proc::spawn("child-signal", &db, &[&log_text]);
        proc.wait_until("the stuck step", || {
            lines(&log).iter().any(|l| l == "stuck")
        });
        proc.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            proc.0
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("poll")
                .is_none(),
            "the first SIGTERM waits for the step"
        );
        proc.signal(libc::SIGTERM);
        assert_eq!(exit_code(&mut proc, Duration::from_secs(10)), Some(143));
        Outcome {
            recorded: steps.len(),
            stopped_in,
        }
    }
}
