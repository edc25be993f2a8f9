//! Peers, side by side in one run: our engine against `apalis` (SQLite)
//! and, when `WORKFLOW_TEST_POSTGRES_URL` is set, `underway` (PostgreSQL).
//!
//! ```text
//! cd benches/peers && cargo run --release
//! PEERS_SCALE=0.1 cargo run --release        # smaller counts, quicker
//! ```
//!
//! Every run is timed from worker start (all work already enqueued) until
//! every job's handler returned (an in-process counter, no database polling)
//! and then the store shows them all finished (one count query every 5 ms,
//! from that point only).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_sqlite::{Config as ApalisConfig, SqliteStorage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor};
use workflow::postgres::{PgOptions, PgStore};
use workflow::prelude::*;
use workflow::sqlite::{SqliteOptions, SqliteStore};
use workflow::{Durability, Status};

/// Handlers (apalis jobs, our workflows) that returned.
static RETURNED: AtomicU64 = AtomicU64::new(0);
static RETURNED_NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();

const CONCURRENCY: usize = 64;

fn returned() {
    RETURNED.fetch_add(1, Ordering::SeqCst);
    RETURNED_NOTIFY.notify_waiters();
}

/// Waits (no database reads) until `count` handlers returned since `reset`.
async fn all_returned(count: u64) {
    loop {
        let woke = RETURNED_NOTIFY.notified();
        if RETURNED.load(Ordering::SeqCst) >= count {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), woke).await;
    }
}

fn reset() {
    RETURNED.store(0, Ordering::SeqCst);
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Steps {
    count: u32,
}

/// `count` no-op steps in sequence; the same workflow as `benches/engine.rs`.
#[workflow(name = "noop")]
async fn noop(ctx: Ctx, input: Steps) -> workflow::Result<u32> {
    for i in 0..input.count {
        ctx.step("noop", || async move { Ok::<_, BoxError>(i) })
            .await?;
    }
    returned();
    Ok(input.count)
}

/// The apalis job: a no-op.
async fn apalis_noop(_job: u32) -> Result<(), BoxDynError> {
    returned();
    Ok(())
}

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("PEERS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(10)
}

/// How apalis's connections are set up.
#[derive(Clone, Copy)]
enum ApalisMode {
    /// `SqlitePool::connect` + `SqliteStorage::setup`, as apalis documents it.
    AsDocumented,
    /// Every pooled connection opened with WAL and this `synchronous`.
    Pragmas(SqliteSynchronous),
}

/// Seconds from worker start until all `n` one-step apalis jobs are `Done`.
async fn apalis_run(path: &Path, mode: ApalisMode, n: usize) -> f64 {
    let pool = match mode {
        ApalisMode::AsDocumented => {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
            SqliteStorage::setup(&pool).await.unwrap();
            pool
        }
        ApalisMode::Pragmas(sync) => {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(sync)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .unwrap();
            // setup() minus its connection-local PRAGMAs (synchronous=OFF
            // etc. on whichever pooled connection runs them).
            SqliteStorage::migrations().run(&pool).await.unwrap();
            pool
        }
    };
    let config = ApalisConfig::default()
        .queue("peers")
        .batch_size(CONCURRENCY);
    let mut backend = SqliteStorage::<u32>::new(&pool).with_config(config);
    for chunk in (0..n as u32).collect::<Vec<_>>().chunks(1_000) {
        backend.push_bulk(chunk.to_vec()).await.unwrap();
    }

    reset();
    let stop = Arc::new(tokio::sync::Notify::new());
    let worker = WorkerBuilder::new("peers-apalis")
        .backend(backend)
        .concurrency(CONCURRENCY)
        .build(apalis_noop);
    let started = Instant::now();
    let running = tokio::spawn({
        let stop = stop.clone();
        worker.run_with_ctx(move |ctx| {
            let stop = stop.clone();
            async move {
                stop.notified().await;
                ctx.stop()?;
                Ok(())
            }
        })
    });
    all_returned(n as u64).await;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM Jobs WHERE status = 'Done'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    pool.close().await;
    elapsed
}

/// Seconds from worker start until all `n` workflows of `steps` steps are
/// `Completed`.
async fn ours_run(engine: Engine, n: usize, steps: u32) -> f64 {
    let inputs: Vec<Steps> = (0..n).map(|_| Steps { count: steps }).collect();
    for chunk in inputs.chunks(1_000) {
        let chunk = chunk.iter().map(|s| Steps { count: s.count }).collect();
        Noop::start_many(&engine, chunk, StartOptions::new())
            .await
            .unwrap();
    }
    reset();
    let started = Instant::now();
    let worker = engine.start_worker();
    all_returned(n as u64).await;
    loop {
        let counts = engine.counts(Some("noop")).await.unwrap();
        assert_eq!(counts.get(&Status::Failed), None, "no instance may fail");
        if counts.get(&Status::Completed).copied().unwrap_or(0) >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    worker.shutdown().await;
    elapsed
}

async fn ours_sqlite(path: &Path, d: Durability, n: usize) -> f64 {
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect_with(&url, SqliteOptions::new().durability(d))
        .await
        .unwrap();
    let engine = Engine::builder()
        .store(store)
        .register(Noop)
        .concurrency(CONCURRENCY)
        .build()
        .await
        .unwrap();
    ours_run(engine, n, 1).await
}

async fn ours_postgres(url: &str, n: usize) -> f64 {
    let store = PgStore::connect_with(url, PgOptions::new().schema("peers_workflow"))
        .await
        .unwrap();
    let engine = Engine::builder()
        .store(store)
        .register(Noop)
        .concurrency(CONCURRENCY)
        .build()
        .await
        .unwrap();
    ours_run(engine, n, 3).await
}

/// Builds and runs `underway/` (a separate cargo project: see its
/// Cargo.toml) and returns its measured seconds.
fn underway_run(url: &str, n: usize, connections: u32) -> Result<f64, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("underway/Cargo.toml");
    // Next to our own binary: <target>/release/peers -> <target>/underway.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target dir")?
        .join("underway");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the underway runner (first time: a few minutes) ...");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("building {} failed", manifest.display()));
    }
    let output = Command::new(target.join("release/peers-underway"))
        .args([
            url,
            &n.to_string(),
            &CONCURRENCY.to_string(),
            &connections.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("elapsed_secs="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "underway runner failed: {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// `postgres://.../db?x` -> `postgres://.../<db>?x`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..host_end])
}

struct Table(Vec<[String; 6]>);

impl Table {
    fn row(&mut self, cells: [&str; 6]) {
        let row = cells.map(str::to_owned);
        eprintln!("{}", row.join(" | "));
        self.0.push(row);
    }
}

fn rate(n: usize, secs: f64) -> String {
    format!("{:.0}/s ({secs:.2} s)", n as f64 / secs)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    let mut file = |name: &str| {
        files += 1;
        dir.path().join(format!("{name}-{files}.db"))
    };
    let mut t = Table(Vec::new());
    let n = scale(10_000);
    let job = format!("{n} × 1-step no-op job, {CONCURRENCY} in flight");

    // (a)+(b): SQLite, like for like: the same pragmas on both sides.
    let apalis_doc = apalis_run(&file("apalis-doc"), ApalisMode::AsDocumented, n).await;
    t.row([
        "apalis 1.0 (apalis-sqlite 1.0)",
        "SQLite, as documented: `setup()` (WAL; synchronous=OFF on one pooled connection, sqlx default FULL on the rest)",
        &job,
        &rate(n, apalis_doc),
        "",
        "",
    ]);
    for (mode, d, sync) in [
        ("durable", Durability::Durable, SqliteSynchronous::Full),
        ("relaxed", Durability::Relaxed, SqliteSynchronous::Normal),
    ] {
        let pragmas = if d == Durability::Durable {
            "WAL, synchronous=FULL"
        } else {
            "WAL, synchronous=NORMAL"
        };
        let apalis = apalis_run(&file("apalis"), ApalisMode::Pragmas(sync), n).await;
        t.row([
            "apalis 1.0 (apalis-sqlite 1.0)",
            &format!("SQLite, {pragmas}"),
            &job,
            &rate(n, apalis),
            "",
            "",
        ]);
        let ours = ours_sqlite(&file("ours"), d, n).await;
        let ratio = apalis / ours;
        // Ours runs SQLite at NORMAL in both modes; durable adds an fsync
        // of the WAL before each answer, which is what FULL guarantees.
        let ours_settings = if d == Durability::Durable {
            "WAL fsynced before each answer, as synchronous=FULL"
        } else {
            "WAL, synchronous=NORMAL"
        };
        t.row([
            "workflow (ours)",
            &format!("SQLite, {mode} ({ours_settings})"),
            &job,
            &rate(n, ours),
            &format!("{ratio:.2}× apalis ({pragmas})"),
            if ratio > 1.0 { "ahead" } else { "BEHIND" },
        ]);
    }

    // (c): PostgreSQL, a fresh database per run.
    match std::env::var("WORKFLOW_TEST_POSTGRES_URL") {
        Ok(admin_url) => {
            let db = format!("peers_{}", std::process::id());
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .await
                .unwrap();
            let url = with_database(&admin_url, &db);
            let wn = scale(2_000);
            let job = format!("{wn} × 3-step no-op workflow, {CONCURRENCY} in flight");
            let underway = underway_run(&url, wn, 10);
            match &underway {
                Ok(secs) => t.row([
                    "underway 0.2 (sqlx 0.8)",
                    "PostgreSQL, synchronous_commit=on, 10 connections",
                    &job,
                    &rate(wn, *secs),
                    "",
                    "",
                ]),
                Err(e) => {
                    eprintln!("{e}");
                    t.row([
                        "underway 0.2 (sqlx 0.8)",
                        "PostgreSQL",
                        &job,
                        "FAILED (see stderr)",
                        "",
                        "",
                    ])
                }
            }
            let ours = ours_postgres(&url, wn).await;
            let (ratio, verdict) = match underway {
                Ok(u) => (
                    format!("{:.2}× underway", u / ours),
                    if u / ours > 1.0 { "ahead" } else { "BEHIND" },
                ),
                Err(_) => ("n/a".to_owned(), ""),
            };
            t.row([
                "workflow (ours)",
                "PostgreSQL, durable (synchronous_commit=on), 10 connections",
                &job,
                &rate(wn, ours),
                &ratio,
                verdict,
            ]);
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {db} WITH (FORCE)"
                )))
                .await
                .unwrap();
        }
        Err(_) => eprintln!("WORKFLOW_TEST_POSTGRES_URL unset: skipping underway (PostgreSQL)"),
    }

    println!(
        "\n| system | backend · settings | workload | throughput (worker start → all done) | ours ÷ peer (throughput) | target: ahead |\n|---|---|---|---|---|---|"
    );
    for r in &t.0 {
        println!("| {} |", r.join(" | "));
    }
}
