//! The benchmark suite: the engine against SQLite itself, in both
//! durability modes, measured side by side in one run.
//!
//! ```text
//! cargo bench --bench engine                   # full run (a few minutes)
//! BENCH_SCALE=0.1 cargo bench --bench engine   # smaller counts, quicker
//! BENCH_ONLY=throughput cargo bench --bench engine   # one section (with its baseline)
//! BENCH_ROUNDS=5 cargo bench --bench engine    # throughput rounds (default 3)
//! ```
//!
//! Sections: `sequential`, `throughput`, `start`, `waiting`, `scale`.
//!
//! Baseline: a single-row INSERT+COMMIT per transaction through SQLite's C
//! API (rusqlite) in WAL mode, with `synchronous = FULL` for durable (an
//! fsync per commit: what the store's durable mode guarantees, though it
//! runs SQLite at NORMAL and fsyncs the WAL itself) and NORMAL for relaxed,
//! and the same loop through sqlx.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection};
use workflow::prelude::*;
use workflow::sqlite::{SqliteOptions, SqliteStore};
use workflow::Durability;

static STEP_LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
/// Handlers that returned; the harness waits on this instead of polling the
/// database, so it measures the engine and not its own queries.
static RETURNED: AtomicU64 = AtomicU64::new(0);
/// The `RETURNED` count the harness waits for; only reaching it wakes the
/// harness, so it does not compete with the engine for the CPU.
static RETURNED_TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static RETURNED_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[derive(Serialize, Deserialize, JsonSchema)]
struct Steps {
    count: u32,
    measure: bool,
}

/// `count` no-op steps in sequence.
#[workflow(name = "noop")]
async fn noop(ctx: Ctx, input: Steps) -> workflow::Result<u32> {
    for i in 0..input.count {
        let started = Instant::now();
        ctx.step("noop", || async move { Ok::<_, BoxError>(i) })
            .await?;
        if input.measure {
            STEP_LATENCIES.lock().unwrap().push(started.elapsed());
        }
    }
    if RETURNED.fetch_add(1, Ordering::SeqCst) + 1 == RETURNED_TARGET.load(Ordering::SeqCst) {
        RETURNED_NOTIFY.notify_one();
    }
    Ok(input.count)
}

/// Sleeps until `due` (ms since the epoch), then reports how late it woke.
#[workflow(name = "napper", timeout = "2d")]
async fn napper(ctx: Ctx, due: i64) -> workflow::Result<i64> {
    let at = DateTime::<Utc>::from_timestamp_millis(due).expect("due time");
    ctx.sleep_until("nap", at).await?;
    let lag = ctx
        .step("woke", || async move {
            Ok::<_, BoxError>(Utc::now().timestamp_millis() - due)
        })
        .await?;
    Ok(lag)
}

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(10)
}

/// Whether `section` runs: all do unless `BENCH_ONLY` names others.
fn runs(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}

fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sorts `values` and returns the middle one.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `0.81 / 0.88 / 0.91`: every round's ratio.
/// Each round's ratio, `decimals` after the point: "0.81 / 0.82 / 0.89".
fn joined(ratios: &[f64], decimals: usize) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

struct Table(Vec<[String; 5]>);

impl Table {
    fn row(
        &mut self,
        mode: &str,
        what: impl Into<String>,
        result: impl Into<String>,
        latency: impl Into<String>,
        target: impl Into<String>,
    ) {
        let row = [
            mode.to_owned(),
            what.into(),
            result.into(),
            latency.into(),
            target.into(),
        ];
        eprintln!("{}", row.join(" | "));
        self.0.push(row);
    }
}

fn sync_pragma(d: Durability) -> &'static str {
    if d == Durability::Durable {
        "FULL"
    } else {
        "NORMAL"
    }
}

fn raw_single(path: &std::path::Path, d: Durability, n: usize) -> (f64, Duration, Duration) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
        sync_pragma(d)
    ))
    .unwrap();
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        conn.execute_batch("BEGIN").unwrap();
        conn.prepare_cached("INSERT INTO t (v) VALUES (?1)")
            .unwrap()
            .execute([format!("row {i}")])
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        latencies.push(t.elapsed());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (
        rate,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    )
}

fn raw_batched(path: &std::path::Path, d: Durability, n: usize) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
        sync_pragma(d)
    ))
    .unwrap();
    let started = Instant::now();
    for chunk in 0..n / 100 {
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..100 {
            conn.prepare_cached("INSERT INTO t (v) VALUES (?1)")
                .unwrap()
                .execute([format!("row {chunk} {i}")])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    (n / 100 * 100) as f64 / started.elapsed().as_secs_f64()
}

/// The store's schema and `workflows` pending three-step instances at
/// `path`, created as `start_many` creates them, opened again through the C
/// API with `d`'s pragmas and SQLite's automatic checkpoint off (the store
/// runs checkpoints on a thread of its own); and their ids, oldest first.
async fn raw_store(
    path: &std::path::Path,
    d: Durability,
    workflows: usize,
) -> (rusqlite::Connection, Vec<String>) {
    let store = store(path, d).await;
    let engine = engine_on(store.clone(), 1).await;
    start_three_step(&engine, workflows).await;
    store.close().await;
    drop(engine);

    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA wal_autocheckpoint=0;",
        sync_pragma(d)
    ))
    .unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM instances ORDER BY run_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids.len(), workflows);
    (conn, ids)
}

/// The writes the store's writer makes for a three-step workflow, with its
/// own statements: take the instance, insert each step's row, finish it.
struct WorkflowWrites<'c> {
    take: rusqlite::Statement<'c>,
    step: rusqlite::Statement<'c>,
    finish: rusqlite::Statement<'c>,
    owner: String,
    now: i64,
    seq: i64,
}

impl<'c> WorkflowWrites<'c> {
    fn new(conn: &'c rusqlite::Connection) -> Self {
        let take = conn
            .prepare(
                "UPDATE instances SET status = 'in_progress', lease_owner = ?1, lease_expires_at = ?2, \
                 run_at = ?2, runs = runs + 1, updated_at = ?3, started_at = COALESCE(started_at, ?3), \
                 wait_event = NULL, wait_child = NULL, started_seq = COALESCE(?5, started_seq) WHERE id = ?4",
            )
            .unwrap();
        let step = conn
            .prepare(
                "INSERT INTO steps (instance_id, key, output, error, state, attempts, started_at, \
                 finished_at, seq, history) VALUES (?1, ?2, ?3, NULL, NULL, 1, ?4, ?4, ?5, 1) \
                 ON CONFLICT (instance_id, key) DO NOTHING",
            )
            .unwrap();
        let finish = conn
            .prepare(
                "UPDATE instances SET status = 'completed', output = ?1, error = NULL, \
                 updated_at = ?2, finished_at = ?2, lease_owner = NULL, lease_expires_at = NULL, \
                 finished_seq = ?3 WHERE id = ?4 AND lease_owner = ?5 AND runs = 1 \
                 AND status = 'in_progress'",
            )
            .unwrap();
        WorkflowWrites {
            take,
            step,
            finish,
            owner: format!("bench-host/{}/{}", std::process::id(), "0".repeat(36)),
            now: Utc::now().timestamp_millis(),
            seq: 1_000_000,
        }
    }

    fn take(&mut self, id: &str) {
        self.seq += 1;
        let taken = self
            .take
            .execute(rusqlite::params![
                self.owner,
                self.now + 30_000,
                self.now,
                id,
                self.seq
            ])
            .unwrap();
        assert_eq!(taken, 1);
    }

    /// Step `i` (0, 1 or 2), keyed as the engine keys a repeated name.
    fn step(&mut self, id: &str, i: usize) {
        self.seq += 1;
        let key = ["noop", "noop#1", "noop#2"][i];
        self.step
            .execute(rusqlite::params![
                id,
                key,
                i.to_string(),
                self.now,
                self.seq
            ])
            .unwrap();
    }

    fn finish(&mut self, id: &str) {
        self.seq += 1;
        let finished = self
            .finish
            .execute(rusqlite::params!["3", self.now, self.seq, id, self.owner])
            .unwrap();
        assert_eq!(finished, 1);
    }
}

/// SQLite's own limit for the engine's workload: a three-step workflow's
/// writes ([`WorkflowWrites`]) issued straight through the C API,
/// `per_commit` workflows per transaction, each commit durable before the
/// next. It leaves out what the engine cannot: the claim's select, the
/// history sequence, running the handlers. Returns workflows/s.
async fn raw_workflow_writes(
    path: &std::path::Path,
    d: Durability,
    workflows: usize,
    per_commit: usize,
) -> f64 {
    let (conn, ids) = raw_store(path, d, workflows).await;
    let mut writes = WorkflowWrites::new(&conn);
    let started = Instant::now();
    for chunk in ids.chunks(per_commit) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for id in chunk {
            writes.take(id);
            for i in 0..3 {
                writes.step(id, i);
            }
            writes.finish(id);
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    workflows as f64 / started.elapsed().as_secs_f64()
}

/// The store's durable pipeline with no engine around it, at `in_flight`
/// workflows in flight: the same writes ([`WorkflowWrites`]) in a closed
/// loop. One thread applies every write whose workflow's last write is on
/// disk, commits when the disk is free (with `synchronous = NORMAL`), and a
/// second thread fsyncs the WAL and reports it, as the store's writer and
/// flush threads do. It spends nothing on handlers, channels or wake-ups,
/// and a workflow's take shares a commit with its first step; but it moves
/// every workflow in one wave, where the engine's handlers and writer can
/// overlap, so on a slow disk the engine can be ahead of it. Returns
/// steps/s.
async fn raw_closed_loop(path: &std::path::Path, workflows: usize, in_flight: usize) -> f64 {
    let (conn, ids) = raw_store(path, Durability::Relaxed, workflows).await;
    // SQLite creates the WAL at the first write.
    conn.execute_batch("BEGIN IMMEDIATE; UPDATE history_seq SET last = last; COMMIT;")
        .unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
    let (to_flush, commits) = std::sync::mpsc::channel::<u64>();
    let (flushed, on_disk) = std::sync::mpsc::channel::<u64>();
    let flusher = std::thread::spawn(move || {
        while let Ok(mut commit) = commits.recv() {
            while let Ok(later) = commits.try_recv() {
                commit = later;
            }
            wal.sync_data().unwrap();
            if flushed.send(commit).is_err() {
                return;
            }
        }
    });

    struct Slot {
        workflow: usize,
        /// The next write: 0 takes the instance with its first step, 1 and
        /// 2 are steps, 3 finishes it and takes the next one.
        next: usize,
        /// The commit its last write went into.
        waits_for: u64,
    }
    let mut writes = WorkflowWrites::new(&conn);
    let mut slots: Vec<Slot> = (0..in_flight.min(workflows))
        .map(|workflow| Slot {
            workflow,
            next: 0,
            waits_for: 0,
        })
        .collect();
    let mut next_workflow = slots.len();
    let (mut durable, mut committed, mut open, mut flushing) = (0_u64, 0_u64, 0_usize, false);
    let started = Instant::now();
    let mut finished = 0;
    while finished < workflows {
        for slot in &mut slots {
            if slot.workflow >= workflows || slot.waits_for > durable {
                continue;
            }
            if open == 0 {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            }
            if slot.next == 3 {
                writes.finish(&ids[slot.workflow]);
                finished += 1;
                slot.workflow = next_workflow;
                next_workflow += 1;
                slot.next = 0;
            }
            if slot.workflow < workflows {
                let id = &ids[slot.workflow];
                if slot.next == 0 {
                    writes.take(id);
                }
                writes.step(id, slot.next);
                slot.next += 1;
            }
            open += 1;
            slot.waits_for = committed + 1;
        }
        if open > 0 && !flushing {
            conn.execute_batch("COMMIT").unwrap();
            committed += 1;
            open = 0;
            to_flush.send(committed).unwrap();
            flushing = true;
        } else if flushing {
            durable = on_disk.recv().unwrap();
            flushing = false;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if open > 0 {
        conn.execute_batch("COMMIT").unwrap();
    }
    drop(to_flush);
    flusher.join().unwrap();
    (workflows * 3) as f64 / elapsed
}

async fn raw_sqlx(path: &std::path::Path, d: Durability, n: usize) -> (f64, Duration) {
    let sync = if d == Durability::Durable {
        sqlx::sqlite::SqliteSynchronous::Full
    } else {
        sqlx::sqlite::SqliteSynchronous::Normal
    };
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sync)
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("INSERT INTO t (v) VALUES (?)")
            .bind(format!("row {i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        latencies.push(t.elapsed());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, percentile(&latencies, 0.5))
}

async fn store(path: &std::path::Path, d: Durability) -> SqliteStore {
    let url = format!("sqlite://{}", path.display());
    SqliteStore::connect_with(&url, SqliteOptions::new().durability(d))
        .await
        .unwrap()
}

async fn engine(path: &std::path::Path, d: Durability, concurrency: usize) -> Engine {
    engine_on(store(path, d).await, concurrency).await
}

async fn engine_on(store: SqliteStore, concurrency: usize) -> Engine {
    Engine::builder()
        .store(store)
        .register(Noop)
        .register(Napper)
        .concurrency(concurrency)
        .build()
        .await
        .unwrap()
}

/// Waits until `count` more handlers than `returned_before` returned (no
/// database reads), then until the store shows them all `Completed`.
async fn completed(engine: &Engine, name: &str, count: u64, returned_before: u64) {
    let target = returned_before + count;
    RETURNED_TARGET.store(target, Ordering::SeqCst);
    while RETURNED.load(Ordering::SeqCst) < target {
        let _ = tokio::time::timeout(Duration::from_millis(100), RETURNED_NOTIFY.notified()).await;
    }
    loop {
        let counts = engine.counts(Some(name)).await.unwrap();
        let done = counts.get(&Status::Completed).copied().unwrap_or(0);
        assert_eq!(counts.get(&Status::Failed), None, "no instance may fail");
        if done >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sequential(path: &std::path::Path, d: Durability, steps: usize) -> (Duration, Duration) {
    let engine = engine(path, d, 1).await;
    let worker = engine.start_worker();
    STEP_LATENCIES.lock().unwrap().clear();
    let inst = Noop::start(
        &engine,
        Steps {
            count: steps as u32,
            measure: true,
        },
    )
    .await
    .unwrap();
    inst.result().await.unwrap();
    worker.shutdown().await;
    let mut latencies = std::mem::take(&mut *STEP_LATENCIES.lock().unwrap());
    latencies.sort();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

/// What the whole process spent on the CPU while the engine ran.
#[derive(Clone, Copy)]
struct Cpu {
    per_workflow_us: f64,
    /// The kernel's part of `per_workflow_us` (fsync and the WAL's writes
    /// weigh here, and vary with the disk from hour to hour).
    kernel_us: f64,
    /// CPU time over wall time: 2.0 is both cores of this machine.
    cores: f64,
}

/// User and system CPU time of this process, all threads.
fn cpu_time() -> (Duration, Duration) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// Workflows in flight in the durable throughput rounds' extra run.
const WIDE: usize = 256;

/// Throughput rounds per mode: `BENCH_ROUNDS`, default 3.
fn rounds_wanted() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// SQLite alone issuing the throughput rounds' writes, `per_commit`
/// workflows per commit (`raw_workflow_writes`), and the engine's share of
/// it, round by round.
struct Limit {
    per_commit: usize,
    /// What the row means, in the table's last column.
    note: &'static str,
    /// How the share's row names it.
    name: &'static str,
    steps: Vec<f64>,
    share: Vec<f64>,
}

impl Limit {
    fn new(per_commit: usize, note: &'static str, name: &'static str) -> Self {
        Limit {
            per_commit,
            note,
            name,
            steps: Vec::new(),
            share: Vec::new(),
        }
    }
}

/// Starts `workflows` instances of 3 no-op steps, in one batch.
async fn start_three_step(engine: &Engine, workflows: usize) {
    let inputs = (0..workflows)
        .map(|_| Steps {
            count: 3,
            measure: false,
        })
        .collect();
    Noop::start_many(engine, inputs, StartOptions::new())
        .await
        .unwrap();
}

async fn throughput(
    path: &std::path::Path,
    d: Durability,
    workflows: usize,
    in_flight: usize,
) -> (f64, f64, Cpu) {
    let engine = engine(path, d, in_flight).await;
    start_three_step(&engine, workflows).await;
    let returned_before = RETURNED.load(Ordering::SeqCst);
    let started = Instant::now();
    let cpu_before = cpu_time();
    let worker = engine.start_worker();
    completed(&engine, "noop", workflows as u64, returned_before).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_time();
    let user = (cpu_after.0 - cpu_before.0).as_secs_f64();
    let kernel = (cpu_after.1 - cpu_before.1).as_secs_f64();
    let cpu = user + kernel;
    worker.shutdown().await;
    let cpu = Cpu {
        per_workflow_us: cpu * 1e6 / workflows as f64,
        kernel_us: kernel * 1e6 / workflows as f64,
        cores: cpu / elapsed,
    };
    (
        workflows as f64 / elapsed,
        (workflows * 3) as f64 / elapsed,
        cpu,
    )
}

async fn start_rates(path: &std::path::Path, d: Durability, n: usize) -> (f64, f64) {
    let engine = engine(path, d, 1).await;
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..64 {
        let engine = engine.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..n / 64 {
                Noop::start(
                    &engine,
                    Steps {
                        count: 0,
                        measure: false,
                    },
                )
                .await
                .unwrap();
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let concurrent = (n / 64 * 64) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..n / 1_000 {
        let inputs = (0..1_000)
            .map(|_| Steps {
                count: 0,
                measure: false,
            })
            .collect();
        Noop::start_many(&engine, inputs, StartOptions::new())
            .await
            .unwrap();
    }
    let batched = (n / 1_000 * 1_000) as f64 / started.elapsed().as_secs_f64();
    (concurrent, batched)
}

/// Parks `parked` instances in a long sleep, then times `measured` short
/// sleepers' wake-ups. Returns (RSS before, RSS with them parked, p50 lag, p99 lag).
async fn waiting(path: &std::path::Path, parked: usize, measured: usize) -> (f64, f64, i64, i64) {
    // Memory the earlier sections freed but glibc kept in its per-thread
    // arenas is not this engine's: hand it back first.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let engine = engine(path, Durability::Durable, 64).await;
    let rss_before = rss_mib();
    let worker = engine.start_worker();
    let far = Utc::now().timestamp_millis() + 86_400_000;
    for chunk in 0..parked.div_ceil(5_000) {
        let n = 5_000.min(parked - chunk * 5_000);
        Napper::start_many(&engine, vec![far; n], StartOptions::new())
            .await
            .unwrap();
    }
    // Parked when every one of them has run once and given its worker back.
    loop {
        let counts = engine.counts(Some("napper")).await.unwrap();
        let busy = counts.get(&Status::InProgress).copied().unwrap_or(0);
        let page = engine
            .list(
                Query::new()
                    .workflow("napper")
                    .status(Status::Pending)
                    .limit(1),
            )
            .await
            .unwrap();
        if busy == 0 && page.items.first().is_some_and(|i| i.runs > 0) {
            let unstarted = engine
                .list(
                    Query::new()
                        .workflow("napper")
                        .status(Status::Pending)
                        .limit(1000),
                )
                .await
                .unwrap()
                .items
                .iter()
                .any(|i| i.runs == 0);
            if !unstarted {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_parked = rss_mib();
    // Short sleepers due over the next few seconds, among all the parked ones.
    let base = Utc::now().timestamp_millis() + 4_000;
    let dues: Vec<i64> = (0..measured)
        .map(|i| base + (i as i64 * 3_000) / measured as i64)
        .collect();
    let sleepers = Napper::start_many(&engine, dues, StartOptions::new())
        .await
        .unwrap();
    let mut lags = Vec::with_capacity(measured);
    for inst in &sleepers {
        lags.push(inst.result().await.unwrap());
    }
    worker.shutdown().await;
    lags.sort();
    (
        rss_before,
        rss_parked,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
    )
}

/// Latency of `start`, `instance(id)` and `list(limit 50)` (p50 of 200 each).
async fn store_latencies(engine: &Engine) -> [Duration; 3] {
    let mut starts = Vec::new();
    let mut gets = Vec::new();
    let mut lists = Vec::new();
    // The first 50 rounds warm the reader connections' statement caches
    // and the page cache; only the next 200 count.
    for round in 0..250 {
        let t = Instant::now();
        let inst = Noop::start(
            engine,
            Steps {
                count: 0,
                measure: false,
            },
        )
        .await
        .unwrap();
        starts.push(t.elapsed());
        let t = Instant::now();
        engine.instance(inst.id()).await.unwrap();
        gets.push(t.elapsed());
        let t = Instant::now();
        engine
            .list(
                Query::new()
                    .workflow("noop")
                    .status(Status::Pending)
                    .limit(50),
            )
            .await
            .unwrap();
        lists.push(t.elapsed());
        if round < 50 {
            for v in [&mut starts, &mut gets, &mut lists] {
                v.clear();
            }
        }
    }
    for v in [&mut starts, &mut gets, &mut lists] {
        v.sort();
    }
    [
        percentile(&starts, 0.5),
        percentile(&gets, 0.5),
        percentile(&lists, 0.5),
    ]
}

async fn store_scale(path: &std::path::Path, rows: usize) -> ([Duration; 3], [Duration; 3]) {
    let engine = engine(path, Durability::Durable, 1).await;
    let inputs = |n: usize| {
        (0..n)
            .map(|_| Steps {
                count: 0,
                measure: false,
            })
            .collect()
    };
    Noop::start_many(&engine, inputs(1_000), StartOptions::new())
        .await
        .unwrap();
    let small = store_latencies(&engine).await;
    let mut have = 1_200;
    while have < rows {
        let n = 20_000.min(rows - have);
        Noop::start_many(&engine, inputs(n), StartOptions::new())
            .await
            .unwrap();
        have += n;
    }
    let large = store_latencies(&engine).await;
    (small, large)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let mut n = 0;
    let mut file = |name: &str| {
        n += 1;
        dir.path().join(format!("{name}-{n}.db"))
    };
    let mut t = Table(Vec::new());
    for (mode, d) in [
        ("durable", Durability::Durable),
        ("relaxed", Durability::Relaxed),
    ] {
        let raw_n = if d == Durability::Durable {
            scale(500)
        } else {
            scale(10_000)
        };
        let (raw_rate, raw_p50, raw_p99) = raw_single(&file("raw"), d, raw_n);
        t.row(
            mode,
            "raw SQLite C API: 1-row INSERT+COMMIT",
            format!("{raw_rate:.0} commits/s"),
            format!("p50 {} · p99 {}", micros(raw_p50), micros(raw_p99)),
            "baseline",
        );
        let batched = raw_batched(&file("batched"), d, scale(50_000));
        t.row(
            mode,
            "raw SQLite C API: 100 rows per COMMIT",
            format!("{batched:.0} rows/s"),
            "",
            "",
        );
        let (sqlx_rate, sqlx_p50) = raw_sqlx(&file("sqlx"), d, raw_n).await;
        t.row(
            mode,
            "raw sqlx: 1-row INSERT+COMMIT",
            format!("{sqlx_rate:.0} commits/s"),
            format!("p50 {}", micros(sqlx_p50)),
            "",
        );

        if runs("sequential") {
            let steps = scale(1_000);
            let (p50, p99) = sequential(&file("seq"), d, steps).await;
            let limit = if d == Durability::Durable { 1.2 } else { 5.0 };
            let ratio = p50.as_secs_f64() / raw_p50.as_secs_f64();
            t.row(
                mode,
                format!("1 workflow × {steps} sequential steps"),
                format!("{:.0} steps/s", 1.0 / p50.as_secs_f64()),
                format!("p50 {} · p99 {}", micros(p50), micros(p99)),
                format!("p50 = {ratio:.2}× raw (target ≤ {limit}×)"),
            );
        }

        if runs("throughput") {
            // The VM's disk and CPU drift over seconds, so each round
            // measures its own baseline right before the engine, and the
            // ratio reported is the median of the rounds'.
            let workflows = scale(10_000);
            let mut rounds = Vec::new();
            // Each round also issues the same writes with no engine around
            // them, 64 workflows per commit: the most SQLite itself does
            // with this schema and workload; and 13 per commit (65 writes):
            // about what 64 workflows in flight can put in one commit, each
            // having one write outstanding.
            let mut limits = [
                Limit::new(64, "SQLite's own limit here", "SQLite's own limit"),
                Limit::new(
                    13,
                    "65 writes per COMMIT: about what 64 in flight can group",
                    "SQLite at 13 workflows per COMMIT",
                ),
            ];
            // Durable rounds also run the same workload without fsyncs
            // right after: what share of that speed survives the fsyncs
            // shows how well group commit hides them, whatever the disk.
            let mut kept = Vec::new();
            // Durable rounds also run the closed-loop bound (`raw_closed_loop`):
            // its steps/s over the raw commit rate, and the engine's share of it.
            let mut bound = Vec::new();
            let mut bound_factor = Vec::new();
            let mut bound_share = Vec::new();
            // Durable rounds also run the workload with 256 in flight
            // (`concurrency(256)`): more workflows share each fsync.
            let mut wide = Vec::new();
            let mut wide_factor = Vec::new();
            for _ in 0..rounds_wanted() {
                let (raw, _, _) = raw_single(&file("raw"), d, raw_n);
                let mut sqlite = Vec::new();
                for limit in &limits {
                    sqlite.push(
                        raw_workflow_writes(&file("limit"), d, workflows, limit.per_commit).await,
                    );
                }
                let closed = if d == Durability::Durable {
                    Some(raw_closed_loop(&file("bound"), workflows, 64).await)
                } else {
                    None
                };
                let (wps, sps, cpu) = throughput(&file("tp"), d, workflows, 64).await;
                rounds.push((sps / raw, wps, sps, cpu));
                if let Some(closed) = closed {
                    bound.push(closed);
                    bound_factor.push(closed / raw);
                    bound_share.push(sps / closed);
                }
                for (limit, sqlite_wps) in limits.iter_mut().zip(sqlite) {
                    limit.steps.push(sqlite_wps * 3.0);
                    limit.share.push(wps / sqlite_wps);
                }
                if d == Durability::Durable {
                    let (_, unsynced, _) =
                        throughput(&file("tp"), Durability::Relaxed, workflows, 64).await;
                    kept.push(sps / unsynced);
                    let (_, wider, _) = throughput(&file("tp"), d, workflows, WIDE).await;
                    wide.push(wider);
                    wide_factor.push(wider / raw);
                }
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (factor, wps, sps, cpu) = rounds[rounds.len() / 2];
            for limit in &mut limits {
                t.row(
                    mode,
                    format!(
                        "raw SQLite C API: a 3-step workflow's writes, {} workflows per COMMIT",
                        limit.per_commit
                    ),
                    format!("{:.0} steps/s", median(&mut limit.steps)),
                    "",
                    format!("median of {} rounds: {}", limit.steps.len(), limit.note),
                );
            }
            if !bound.is_empty() {
                t.row(
                    mode,
                    "raw SQLite C API, closed loop: the same writes, 64 workflows in flight, \
                     each write answered after its fsync, commits when the disk is free (no engine)",
                    format!("{:.0} steps/s", median(&mut bound)),
                    "",
                    format!(
                        "{:.2}× raw, median of {} rounds: {} (the pipeline's cost without the engine's)",
                        median(&mut bound_factor),
                        bound_factor.len(),
                        joined(&bound_factor, 1)
                    ),
                );
            }
            let each = joined(&rounds.iter().map(|r| r.0).collect::<Vec<_>>(), 1);
            let want = if d == Durability::Durable {
                "≥ 20× raw commits/s"
            } else {
                "≥ 0.3× raw commits/s"
            };
            t.row(
                mode,
                format!("{workflows} workflows × 3 steps, 64 in flight"),
                format!("{wps:.0} wf/s · {sps:.0} steps/s"),
                format!(
                    "CPU {:.0} µs per workflow, {:.0} of it in the kernel ({:.2} cores busy)",
                    cpu.per_workflow_us, cpu.kernel_us, cpu.cores
                ),
                format!(
                    "{factor:.2}× raw, median of {} rounds: {each} ({want})",
                    rounds.len()
                ),
            );
            for limit in &mut limits {
                t.row(
                    mode,
                    format!("the same, ÷ {}, same round", limit.name),
                    format!("{:.2}×", median(&mut limit.share)),
                    "",
                    format!(
                        "median of {} rounds: {}",
                        limit.share.len(),
                        joined(&limit.share, 2)
                    ),
                );
            }
            if !bound_share.is_empty() {
                t.row(
                    mode,
                    "the same, ÷ the closed loop, same round",
                    format!("{:.2}×", median(&mut bound_share)),
                    "",
                    format!(
                        "median of {} rounds: {}",
                        bound_share.len(),
                        joined(&bound_share, 2)
                    ),
                );
            }
            if !kept.is_empty() {
                let middle = median(&mut kept);
                let each = joined(&kept, 2);
                t.row(
                    mode,
                    "the same, ÷ the same engine without fsync (relaxed), run right after",
                    format!("{middle:.2}×"),
                    "",
                    format!(
                        "median of {} rounds: {each} (1.0: the fsyncs cost nothing)",
                        kept.len()
                    ),
                );
            }
            if !wide.is_empty() {
                t.row(
                    mode,
                    format!("the same, {WIDE} in flight (`concurrency({WIDE})`)"),
                    format!("{:.0} steps/s", median(&mut wide)),
                    "",
                    format!(
                        "{:.2}× raw, median of {} rounds: {}",
                        median(&mut wide_factor),
                        wide_factor.len(),
                        joined(&wide_factor, 1)
                    ),
                );
            }
        }

        if runs("start") {
            let (concurrent, batched) = start_rates(&file("start"), d, scale(10_000)).await;
            t.row(
                mode,
                "start: 64 concurrent callers",
                format!("{concurrent:.0} starts/s"),
                "",
                "",
            );
            t.row(
                mode,
                "start_many: batches of 1,000",
                format!("{batched:.0} starts/s"),
                "",
                "",
            );
        }
    }

    if runs("waiting") {
        let parked = scale(100_000);
        let (rss_before, rss_parked, lag50, lag99) = waiting(&file("wait"), parked, 1_000).await;
        t.row(
            "durable",
            format!("{parked} sleeping instances"),
            format!("RSS {rss_parked:.0} MiB (bench process; {rss_before:.0} MiB before)"),
            format!("wake-up lag p50 {lag50} ms · p99 {lag99} ms"),
            "RSS ≤ 64 MiB, p99 ≤ 100 ms",
        );
    }

    if runs("scale") {
        let rows = scale(1_000_000);
        let (small, large) = store_scale(&file("scale"), rows).await;
        for (i, what) in ["start", "instance(id)", "list(limit 50)"]
            .iter()
            .enumerate()
        {
            t.row(
                "durable",
                format!("{what}: 1,000 rows vs {rows} rows"),
                format!("{:.2}×", large[i].as_secs_f64() / small[i].as_secs_f64()),
                format!("p50 {} vs {}", micros(small[i]), micros(large[i])),
                "within 2×",
            );
        }
    }

    println!("\n| mode | measurement | result | latency | against target |\n|---|---|---|---|---|");
    for r in &t.0 {
        println!("| {} |", r.join(" | "));
    }
}
