//! Cron and a hand-moved clock on PostgreSQL: three engines on one database (each with its own
//! connection pool, opened through a `postgres://` URL) fire each tick once;
//! first in one process with a manual clock, then as three processes with a
//! real per-second schedule.
//!
//! `harness = false`: the binary is the parent (no arguments) and a child
//! engine (`child URL SECONDS`).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use workflow::prelude::*;
use workflow::ManualClock;

/// Ticks every minute (in-process test, manual clock).
#[workflow(name = "minutely", schedule = "* * * * *")]
async fn minutely(ctx: Ctx, _input: ()) -> workflow::Result<String> {
    Ok(ctx.tags().get("schedule").cloned().unwrap_or_default())
}

/// Ticks every second (multi-process test, real clock).
#[workflow(name = "secondly", schedule = "* * * * * *", catch_up = "none")]
async fn secondly(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// Sleeps three days (manual clock).
#[workflow(name = "threeDayNap", timeout = "30d")]
async fn three_day_nap(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.sleep("nap", Duration::from_secs(3 * 86_400)).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let seconds: u64 = args[3].parse().expect("seconds");
        return runtime().block_on(child(&args[2], seconds));
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let Some(url) = common::url("cron") else {
        println!("test result: ok. 0 passed; 0 failed; 3 ignored");
        return;
    };
    runtime().block_on(three_engines_manual_clock(&url));
    println!("three engines, manual clock: each of 5 ticks fired once");
    runtime().block_on(a_sleep_wakes_at_the_clocks_advance(&url));
    println!("manual clock: a three-day sleep woke at the advance");
    let (ticks, span) = three_processes(&url);
    println!("three engine processes: {ticks} ticks over {span} s, each fired once");
    println!("test result: ok. 3 passed; 0 failed");
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn three_engines_manual_clock(url: &str) {
    let schema = common::fresh_schema("cron");
    let url_s = common::with_schema(url, &schema);
    let clock = ManualClock::new(utc("2026-11-30T08:59:30Z"));
    let mut engines = Vec::new();
    for _ in 0..3 {
        let engine = Engine::builder()
            .database_url(&url_s)
            .register(Minutely)
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(10))
            .build()
            .await
            .expect("engine");
        engines.push(engine);
    }
    let workers: Vec<_> = engines.iter().map(|e| e.start_worker()).collect();
    let started = Instant::now();
    while engines[0]
        .store()
        .schedule_mark("minutely")
        .await
        .expect("mark")
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "schedule never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for minute in 0..5 {
        clock.advance(Duration::from_secs(if minute == 0 { 30 } else { 60 }));
        let wanted = minute + 1;
        let started = Instant::now();
        loop {
            let page = engines[1]
                .list(Query::new().workflow("minutely"))
                .await
                .expect("list");
            if page.items.len() >= wanted {
                // Give a double-firing engine the chance to show itself.
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "tick {wanted} never fired"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let page = engines[2]
        .list(Query::new().workflow("minutely").limit(100))
        .await
        .expect("list");
    let mut keys: Vec<String> = page.items.iter().filter_map(|i| i.key.clone()).collect();
    keys.sort();
    let expected: Vec<String> = (0..5)
        .map(|m| format!("schedule:2026-11-30T09:0{m}:00.000Z"))
        .collect();
    assert_eq!(keys, expected, "each tick once, none twice");
    for info in page.items {
        let out = Minutely::handle(&engines[0], info.id)
            .result_timeout(Duration::from_secs(10))
            .await
            .expect("ran");
        assert_eq!(format!("schedule:{out}"), info.key.expect("key"));
    }
    // Once every engine has stopped, nothing more can fire: no late
    // duplicate of the last tick came after the list above.
    for worker in workers {
        worker.shutdown().await;
    }
    let after = engines[0]
        .list(Query::new().workflow("minutely").limit(100))
        .await
        .expect("list");
    assert_eq!(after.items.len(), expected.len(), "no tick fired twice");
    common::drop_schemas(url, &[schema]).await;
}

/// Two engines sharing a database and a manual clock (years behind the
/// database's, which judges leases): a three-day sleep wakes when the
/// clock is moved past it, not before, with polling too slow to matter.
async fn a_sleep_wakes_at_the_clocks_advance(url: &str) {
    let schema = common::fresh_schema("clock");
    let url_s = common::with_schema(url, &schema);
    let clock = ManualClock::new(utc("2001-01-01T09:00:00Z"));
    let mut engines = Vec::new();
    for _ in 0..2 {
        let engine = Engine::builder()
            .database_url(&url_s)
            .register(ThreeDayNap)
            .clock(clock.clone())
            .poll_interval(Duration::from_secs(60))
            .build()
            .await
            .expect("engine");
        engines.push(engine);
    }
    let workers: Vec<_> = engines.iter().map(|e| e.start_worker()).collect();
    let nap = ThreeDayNap::start(&engines[0], ()).await.expect("start");
    let started = Instant::now();
    loop {
        let info = nap.info().await.expect("info");
        if info.runs >= 1 && info.status == Status::Pending {
            assert_eq!(info.due_at, Some(utc("2001-01-04T09:00:00Z")));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never slept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clock.advance(Duration::from_secs(3 * 86_400 - 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        nap.status().await.expect("status"),
        Status::Pending,
        "woke early"
    );
    clock.advance(Duration::from_secs(1));
    nap.result_timeout(Duration::from_secs(10))
        .await
        .expect("woke at the advance");
    for worker in workers {
        worker.shutdown().await;
    }
    common::drop_schemas(url, &[schema]).await;
}

async fn child(url: &str, seconds: u64) {
    let engine = Engine::builder()
        .database_url(url)
        .register(Secondly)
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("engine");
    let worker = engine.start_worker();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    worker.shutdown().await;
}

/// Returns (ticks fired, seconds spanned).
fn three_processes(url: &str) -> (usize, i64) {
    let schema = common::fresh_schema("cronp");
    let url_s = common::with_schema(url, &schema);
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(std::env::current_exe().expect("own path"))
                .args(["child", &url_s, "5"])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut child in children {
        let status = child.wait().expect("wait child");
        assert!(status.success(), "child failed: {status}");
    }
    runtime().block_on(async {
        let engine = Engine::builder()
            .database_url(&url_s)
            .build()
            .await
            .expect("engine");
        let page = engine
            .list(Query::new().workflow("secondly").limit(1000))
            .await
            .expect("list");
        let mut per_tick: BTreeMap<String, usize> = BTreeMap::new();
        for info in &page.items {
            *per_tick.entry(info.key.clone().expect("key")).or_default() += 1;
        }
        assert!(
            per_tick.values().all(|n| *n == 1),
            "a tick fired twice: {per_tick:?}"
        );
        let ticks: Vec<DateTime<Utc>> = per_tick
            .keys()
            .map(|k| utc(k.trim_start_matches("schedule:")))
            .collect();
        assert!(ticks.len() >= 3, "too few ticks fired: {ticks:?}");
        // No gaps: every second between the first and last tick fired.
        let span = (ticks[ticks.len() - 1] - ticks[0]).num_seconds();
        assert_eq!(
            span as usize + 1,
            ticks.len(),
            "a tick was skipped: {ticks:?}"
        );
        drop(engine);
        common::drop_schemas(url, &[schema]).await;
        (ticks.len(), span)
    })
}
