//! Time in tests: with a `ManualClock`, `clock.advance(..)` wakes what
//! workflows wait for (sleeps, event timeouts, retry backoffs, deadlines)
//! in milliseconds, while leases keep to the system clock.
//!
//! Every engine here polls the store once a minute only: what the tests
//! see after an advance comes from the clock's jump waking the worker.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use workflow::prelude::*;

const DAY: Duration = Duration::from_secs(86_400);

/// Sleeps three days, then reminds.
#[workflow(name = "reminder", timeout = "30d")]
async fn reminder(ctx: Ctx, user: String) -> workflow::Result<String> {
    ctx.sleep("three days", 3 * DAY).await?;
    ctx.step("remind", || async {
        workflow::Ok(format!("reminded {user}"))
    })
    .await
}

/// Sleeps a day, then two more.
#[workflow(name = "twoNaps", timeout = "30d")]
async fn two_naps(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.sleep("first", DAY).await?;
    ctx.sleep("second", 2 * DAY).await
}

/// Sleeps until two days after the time it started, by the engine's clock.
#[workflow(name = "twoDaysFromNow", timeout = "30d")]
async fn two_days_from_now(ctx: Ctx, _input: ()) -> workflow::Result<(String, String)> {
    let start = ctx.now("start").await?;
    ctx.sleep_until("two days on", start + chrono::Duration::days(2))
        .await?;
    let end = ctx.now("end").await?;
    Ok((start.to_rfc3339(), end.to_rfc3339()))
}

/// Waits a day for an answer, then escalates.
#[workflow(name = "approval", timeout = "30d")]
async fn approval(ctx: Ctx, _input: ()) -> workflow::Result<String> {
    match ctx.wait_for_event::<bool>("answer", Some(DAY)).await {
        Ok(yes) => Ok(format!("answered {yes}")),
        Err(workflow::Error::EventTimeout { .. }) => Ok("escalated".to_owned()),
        Err(other) => Err(other),
    }
}

static GATEWAY_CALLS: AtomicU32 = AtomicU32::new(0);

/// Its first call is told to come back in an hour.
#[workflow(name = "rateLimited", timeout = "30d")]
async fn rate_limited(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    ctx.step("call", || async {
        let call = GATEWAY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if call == 1 {
            return Err(RetryAfter::new("rate limited", Duration::from_secs(3600)));
        }
        Ok(call)
    })
    .await
}

/// A sleep short enough to be slept in memory, not suspended.
#[workflow(name = "shortNap", timeout = "30d")]
async fn short_nap(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.sleep("nap", Duration::from_millis(100)).await
}

/// Waits for an event that never comes, within an hour.
#[workflow(name = "patient", timeout = "1h")]
async fn patient(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.wait_for_event::<()>("never", None).await
}

/// A step that never ends, within an hour.
#[workflow(name = "stuck", timeout = "1h")]
async fn stuck(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("forever", || async {
        std::future::pending::<()>().await;
        workflow::Ok(())
    })
    .await
}

static BLOCKED_STARTED: AtomicBool = AtomicBool::new(false);
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A step that runs until the test opens the gate.
#[workflow(name = "blocked", timeout = "30d")]
async fn blocked(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("work", || async {
        BLOCKED_STARTED.store(true, Ordering::SeqCst);
        GATE.notified().await;
        workflow::Ok(())
    })
    .await
}

async fn engine(dir: &tempfile::TempDir, clock: &ManualClock) -> Engine {
    Engine::builder()
        .database_url(format!("sqlite://{}", dir.path().join("time.db").display()))
        .register(Reminder)
        .register(TwoNaps)
        .register(TwoDaysFromNow)
        .register(Approval)
        .register(RateLimited)
        .register(ShortNap)
        .register(Patient)
        .register(Stuck)
        .register(Blocked)
        .clock(clock.clone())
        .poll_interval(Duration::from_secs(60))
        .lease_duration(Duration::from_secs(1))
        .build()
        .await
        .expect("engine")
}

/// An engine on a fresh SQLite file with `clock`, its worker running
/// (the file lives as long as this does).
struct Setup {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    engine: Engine,
    worker: workflow::Worker,
}

async fn started(clock: ManualClock) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &clock).await;
    let worker = engine.start_worker();
    Setup {
        _dir: dir,
        clock,
        engine,
        worker,
    }
}

/// `instance.idle()`, within 10 s.
async fn idle<W: Workflow>(instance: &Instance<W>) -> workflow::InstanceInfo {
    tokio::time::timeout(Duration::from_secs(10), instance.idle())
        .await
        .expect("idle within 10 s")
        .unwrap()
}

/// A clock in 2001: far behind the system clock, as the leases are.
fn in_2001() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2001, 1, 1, 9, 0, 0).unwrap())
}

/// Waits (real time) until `instance` has `status` after a first run.
async fn until<W: Workflow>(instance: &Instance<W>, status: Status) -> workflow::InstanceInfo {
    let started = Instant::now();
    loop {
        let info = instance.info().await.unwrap();
        if info.status == status && info.runs >= 1 {
            return info;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {} after 10 s, waiting for {status}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_three_day_sleep_wakes_when_the_clock_gets_there() {
    let t = started(in_2001()).await;
    let instance = Reminder::start(&t.engine, "ada".into()).await.unwrap();
    let info = idle(&instance).await;
    assert_eq!(info.status, Status::Pending);
    let due = info.due_at.expect("asleep, with its wake-up time");
    assert_eq!(due, t.clock.now() + chrono::Duration::days(3));
    t.clock.advance(3 * DAY - Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        instance.status().await.unwrap(),
        Status::Pending,
        "woke early"
    );
    t.clock.advance(Duration::from_secs(1));
    let woke = Instant::now();
    let output = instance
        .result_timeout(Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(output, "reminded ada");
    // Woken by the advance, not by a poll (a minute apart), however loaded
    // the machine.
    assert!(
        woke.elapsed() < Duration::from_secs(30),
        "{:?}",
        woke.elapsed()
    );
    // History is dated by the engine's clock.
    let history = instance.history().await.unwrap();
    let ended = history.last().unwrap();
    assert!(ended.at >= due, "{:?} before {due}", ended.at);
    t.worker.shutdown().await;
}

#[tokio::test]
async fn an_event_timeout_fires_when_the_clock_passes_it() {
    let t = started(in_2001()).await;
    let answered = Approval::start(&t.engine, ()).await.unwrap();
    let ignored = Approval::start(&t.engine, ()).await.unwrap();
    until(&answered, Status::Listening).await;
    until(&ignored, Status::Listening).await;
    // An event wakes its instance at once, the clock standing still.
    answered.send_event("answer", true).await.unwrap();
    let output = answered
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(output, "answered true");
    assert_eq!(ignored.status().await.unwrap(), Status::Listening);
    t.clock.advance(DAY);
    let output = ignored
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(output, "escalated");
    t.worker.shutdown().await;
}

#[tokio::test]
async fn a_retry_backoff_ends_when_the_clock_passes_it() {
    let t = started(in_2001()).await;
    let instance = RateLimited::start(&t.engine, ()).await.unwrap();
    until(&instance, Status::Pending).await;
    assert_eq!(GATEWAY_CALLS.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(GATEWAY_CALLS.load(Ordering::SeqCst), 1, "retried early");
    t.clock.advance(Duration::from_secs(3600));
    let calls = instance
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(calls, 2);
    t.worker.shutdown().await;
}

/// However short, a wait is in the store, where `idle` sees it: none
/// hides in a running handler while the clock stands still.
#[tokio::test]
async fn a_short_sleep_waits_for_the_clock_in_the_store() {
    let t = started(in_2001()).await;
    let instance = ShortNap::start(&t.engine, ()).await.unwrap();
    let info = idle(&instance).await;
    assert_eq!(info.status, Status::Pending);
    assert_eq!(
        info.due_at,
        Some(t.clock.now() + chrono::Duration::milliseconds(100))
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        instance.status().await.unwrap(),
        Status::Pending,
        "a 100 ms sleep ended while the clock stood still"
    );
    t.clock.advance(Duration::from_millis(100));
    instance
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    t.worker.shutdown().await;
}

#[tokio::test]
async fn deadlines_pass_when_the_clock_passes_them() {
    let t = started(in_2001()).await;
    // One waits suspended, the other runs a step that never ends.
    let waiting = Patient::start(&t.engine, ()).await.unwrap();
    let running = Stuck::start(&t.engine, ()).await.unwrap();
    until(&waiting, Status::Listening).await;
    until(&running, Status::InProgress).await;
    t.clock.advance(Duration::from_secs(3599));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waiting.status().await.unwrap(), Status::Listening);
    assert_eq!(running.status().await.unwrap(), Status::InProgress);
    t.clock.advance(Duration::from_secs(1));
    until(&waiting, Status::TimedOut).await;
    let info = until(&running, Status::TimedOut).await;
    // Ended by the engine's clock, which stood at the deadline since.
    assert_eq!(
        info.finished_at.map(|t| t.timestamp_millis()),
        Some(t.clock.now().timestamp_millis())
    );
    t.worker.shutdown().await;
}

/// Leases tell live workers from dead ones by the system clock: a jump of
/// the engine's clock by days takes no running instance from its worker.
#[tokio::test]
async fn a_jump_of_days_leaves_running_instances_with_their_worker() {
    let t = started(ManualClock::new(Utc::now())).await;
    let instance = Blocked::start(&t.engine, ()).await.unwrap();
    let started = Instant::now();
    while !BLOCKED_STARTED.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(10), "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.clock.advance(10 * DAY);
    // Three leases' worth of real time: renewed, never taken over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = instance.info().await.unwrap();
    assert_eq!(info.status, Status::InProgress);
    assert_eq!(info.runs, 1, "the running instance was claimed again");
    GATE.notify_one();
    instance
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let info = instance.info().await.unwrap();
    assert_eq!(info.runs, 1);
    let started_events = instance
        .history()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == workflow::HistoryKind::Started)
        .count();
    assert_eq!(started_events, 1);
    t.worker.shutdown().await;
}

/// `idle` waits for the next wait to be reached, not for the one the
/// clock just ended: advancing after each `idle` walks a workflow through
/// its sleeps one by one.
#[tokio::test]
async fn idle_then_advance_walks_through_sleep_after_sleep() {
    let t = started(in_2001()).await;
    let instance = TwoNaps::start(&t.engine, ()).await.unwrap();
    let first = idle(&instance).await;
    assert_eq!(
        first.due_at,
        Some(t.clock.now() + chrono::Duration::days(1))
    );
    t.clock.advance(DAY);
    let second = idle(&instance).await;
    assert_eq!(
        second.due_at,
        Some(t.clock.now() + chrono::Duration::days(2)),
        "idle came back before the second sleep was reached"
    );
    t.clock.advance(2 * DAY);
    instance
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    t.worker.shutdown().await;
}

/// `ctx.now` reads the engine's clock, so a handler's own date arithmetic
/// follows a manual clock too; each reading is recorded for replays.
#[tokio::test]
async fn a_handler_reads_the_engines_clock() {
    let t = started(in_2001()).await;
    let start = t.clock.now();
    let instance = TwoDaysFromNow::start(&t.engine, ()).await.unwrap();
    let asleep = idle(&instance).await;
    assert_eq!(asleep.due_at, Some(start + chrono::Duration::days(2)));
    t.clock.advance(2 * DAY);
    let (started, ended) = instance
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(started, start.to_rfc3339());
    assert_eq!(ended, (start + chrono::Duration::days(2)).to_rfc3339());
    t.worker.shutdown().await;
}
