//! Cron schedules with a manual clock: ticks fire once each, however many
//! engines share the store; missed ticks follow the catch-up policy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use workflow_core::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct EveryMinute;

impl Workflow for EveryMinute {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "everyMinute";
    const SCHEDULE: Option<&'static str> = Some("* * * * *");

    fn schedule_input() -> Option<()> {
        Some(())
    }

    /// The tick it ran for.
    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let tick = ctx.scheduled_at().ok_or("started by no schedule")?;
        Ok(tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

async fn engine(store: Arc<dyn Store>, clock: &ManualClock, catch_up: CatchUp) -> Engine {
    engine_on(store, clock, "* * * * *", catch_up).await
}

/// An engine running `EveryMinute` on `expression` instead.
async fn engine_on(
    store: Arc<dyn Store>,
    clock: &ManualClock,
    expression: &str,
    catch_up: CatchUp,
) -> Engine {
    engine_with(store, clock.clone(), expression, catch_up).await
}

/// A clock set by hand that jumps as the system clock does, unannounced
/// (no [`Clock::changes`]): after a process was frozen (a laptop asleep, a
/// paused VM), or when NTP steps it. The engine sees a jump only at its
/// next look, as it would in production.
#[derive(Clone)]
struct WallClock(ManualClock);

impl Clock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
}

/// An engine running `EveryMinute` on `expression`, on any clock.
async fn engine_with(
    store: Arc<dyn Store>,
    clock: impl Clock,
    expression: &str,
    catch_up: CatchUp,
) -> Engine {
    EngineBuilder::new()
        .shared_store(store)
        .register_scheduled(EveryMinute, expression, "UTC", catch_up)
        .clock(clock)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap()
}

async fn fired(engine: &Engine) -> Vec<String> {
    let page = engine
        .list(Query::new().workflow("everyMinute").limit(1000))
        .await
        .unwrap();
    let mut keys: Vec<String> = page.items.into_iter().filter_map(|i| i.key).collect();
    keys.sort();
    keys
}

async fn wait_for(engine: &Engine, count: usize) -> Vec<String> {
    for _ in 0..300 {
        let keys = fired(engine).await;
        if keys.len() >= count {
            // Give a wrongly double-firing scheduler the chance to show itself.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return fired(engine).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fired(engine).await
}

/// Waits for every fired instance to end.
async fn all_ended(engine: &Engine) {
    for info in engine
        .list(Query::new().workflow("everyMinute"))
        .await
        .unwrap()
        .items
    {
        EveryMinute::handle(engine, info.id)
            .result_timeout(Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// Purges everything that ended, as an engine whose clock reads `now`
/// does (nothing that ended in the minute before `now` goes).
async fn purge_at(store: &Arc<dyn Store>, now: DateTime<Utc>) -> u64 {
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(store))
        .clock(ManualClock::new(now))
        .build()
        .await
        .unwrap();
    engine.purge(now, None).await.unwrap()
}

async fn registered(store: &Arc<dyn Store>) {
    for _ in 0..300 {
        if store.schedule_mark("everyMinute").await.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("schedule never registered");
}

#[tokio::test]
async fn three_engines_fire_each_tick_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engines = [
        engine(Arc::clone(&store), &clock, CatchUp::Latest).await,
        engine(Arc::clone(&store), &clock, CatchUp::Latest).await,
        engine(Arc::clone(&store), &clock, CatchUp::Latest).await,
    ];
    let _workers: Vec<_> = engines.iter().map(|e| e.start_worker()).collect();
    registered(&store).await;
    let mut expected = Vec::new();
    for minute in 1..=5 {
        clock.advance(Duration::from_secs(60));
        expected.push(format!("schedule:2026-11-25T10:0{minute}:00.000Z"));
        assert_eq!(
            wait_for(&engines[0], minute).await,
            expected,
            "tick {minute}"
        );
    }
    // Each instance ran with its tick in its tags.
    let page = engines[0]
        .list(Query::new().workflow("everyMinute"))
        .await
        .unwrap();
    for info in page.items {
        let inst = EveryMinute::handle(&engines[0], info.id);
        let tick = inst.result_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(format!("schedule:{tick}"), info.key.unwrap());
    }
    let schedules = engines[1].schedules().await.unwrap();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].next_fire, Some(utc("2026-11-25T10:06:00Z")));
    assert_eq!(schedules[0].last_fired, Some(utc("2026-11-25T10:05:00Z")));
    assert!(schedules[0].last_instance.is_some());
}

/// Runs one engine on `store` until it registered the schedule, stops it
/// and moves the clock (from 10:00:30) `minutes` on: the ticks between
/// were missed.
async fn down_after_registering(
    store: &Arc<dyn Store>,
    catch_up: CatchUp,
    minutes: u64,
) -> ManualClock {
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let first = engine(Arc::clone(store), &clock, catch_up).await;
    let worker = first.start_worker();
    registered(store).await;
    worker.shutdown().await;
    clock.advance(Duration::from_secs(minutes * 60));
    clock
}

/// Runs one engine to register the schedule, stops it, moves the clock
/// `minutes` and starts a new engine with `catch_up` on the same store.
async fn restarted_after(catch_up: CatchUp, minutes: u64) -> (Engine, ManualClock, Worker) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = down_after_registering(&store, catch_up, minutes).await;
    let second = engine(Arc::clone(&store), &clock, catch_up).await;
    let worker = second.start_worker();
    (second, clock, worker)
}

/// The keys fired after five minutes down and one more tick.
async fn after_downtime(catch_up: CatchUp) -> Vec<String> {
    let (second, clock, _worker) = restarted_after(catch_up, 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // And one tick that comes due while running (at 10:06:00): every
    // policy fires it, after what it fired of the missed ones.
    clock.advance(Duration::from_secs(30));
    for _ in 0..1_000 {
        if fired(&second)
            .await
            .iter()
            .any(|key| key.ends_with("10:06:00.000Z"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give a wrongly double-firing scheduler the chance to show itself.
    tokio::time::sleep(Duration::from_millis(100)).await;
    fired(&second).await
}

#[tokio::test]
async fn missed_ticks_follow_the_catch_up_policy() {
    assert_eq!(
        after_downtime(CatchUp::Latest).await,
        [
            "schedule:2026-11-25T10:05:00.000Z",
            "schedule:2026-11-25T10:06:00.000Z"
        ],
        "latest: the most recent missed tick once, then on schedule"
    );
    let all = after_downtime(CatchUp::All).await;
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(all[0], "schedule:2026-11-25T10:01:00.000Z");
    assert_eq!(
        after_downtime(CatchUp::None).await,
        ["schedule:2026-11-25T10:06:00.000Z"],
        "none: only ticks that come due while running"
    );
}

/// A look that comes late while the engine runs (a slow store, a busy
/// runtime: here the clock jumps three minutes between two looks) misses
/// nothing: its ticks came due while an engine ran, so even `none` fires
/// them.
#[tokio::test]
async fn a_late_look_by_a_running_engine_misses_no_tick() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = engine(Arc::clone(&store), &clock, CatchUp::None).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(180));
    assert_eq!(
        wait_for(&engine, 3).await,
        [
            "schedule:2026-11-25T10:01:00.000Z",
            "schedule:2026-11-25T10:02:00.000Z",
            "schedule:2026-11-25T10:03:00.000Z"
        ]
    );
}

/// A look hours late follows a process that was frozen (a laptop asleep,
/// a paused VM), not a slow store: the ticks it slept through were missed,
/// and the catch-up policy decides. Before, a `latest` schedule fired all
/// 180 of them at once.
#[tokio::test]
async fn a_frozen_engine_follows_the_catch_up_policy() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let wall = WallClock(clock.clone());
    let engine = engine_with(Arc::clone(&store), wall, "* * * * *", CatchUp::Latest).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(3 * 3600));
    // Time for a wrong scheduler to fire its chunk.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_for(&engine, 1).await,
        ["schedule:2026-11-25T13:00:00.000Z"],
        "latest: the most recent missed tick, once"
    );
}

/// A test that moves its clock by hand runs the engine through the time it
/// moves: a jump of a day fires the day's every tick, as a day of real
/// time would, whatever the catch-up policy (nothing was missed). Before,
/// a jump past ten minutes counted as a frozen process: `latest` fired
/// one tick of 24, `none` none.
#[tokio::test]
async fn a_manual_clock_moved_a_day_fires_every_tick_of_the_day() {
    for catch_up in [CatchUp::Latest, CatchUp::None] {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
        let engine = engine_on(Arc::clone(&store), &clock, "0 * * * *", catch_up).await;
        let _worker = engine.start_worker();
        registered(&store).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.advance(Duration::from_secs(24 * 3600));
        let fired = wait_for(&engine, 24).await;
        assert_eq!(fired.len(), 24, "{catch_up:?}: {fired:?}");
        assert_eq!(fired[0], "schedule:2026-11-25T11:00:00.000Z");
        assert_eq!(fired[23], "schedule:2026-11-26T10:00:00.000Z");
        // Each run knows its own tick, however late it fired.
        let page = engine
            .list(Query::new().workflow("everyMinute").limit(1000))
            .await
            .unwrap();
        for info in page.items {
            let tick = EveryMinute::handle(&engine, info.id)
                .result_timeout(Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(Some(format!("schedule:{tick}")), info.key);
        }
        // Time for a wrong scheduler to fire one twice.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again: HashSet<String> = self::fired(&engine).await.into_iter().collect();
        assert_eq!(again.len(), 24, "{catch_up:?}");
    }
}

/// A jump past more ticks than a test means to run (a schedule every
/// second moved a day on: 86,400) counts as a frozen process: the catch-up
/// policy decides, instead of the engine starting every one.
#[tokio::test]
async fn a_manual_clock_moved_past_too_many_ticks_follows_the_catch_up_policy() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = engine_on(Arc::clone(&store), &clock, "* * * * * *", CatchUp::Latest).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = fired(&engine).await.len();
    clock.advance(Duration::from_secs(24 * 3600));
    wait_for(&engine, before + 1).await;
    // Time for a scheduler that took it for run through to fire chunks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = fired(&engine).await;
    // The ticks of the last moments, which come due as it runs, fire.
    let started = after.len() - before;
    assert!((1..=20).contains(&started), "{started} started");
    assert_eq!(after.last().unwrap(), "schedule:2026-11-26T10:00:30.000Z");
}

/// An engine whose clock is a little behind another's looks at a tick the
/// other fired a moment ago: a purge by hand in between must not have
/// freed the tick's key, or the tick runs twice.
#[tokio::test]
async fn a_tick_purged_at_once_does_not_run_again_on_a_clock_behind() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ahead_clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let ahead = engine(Arc::clone(&store), &ahead_clock, CatchUp::All).await;
    let _ahead_worker = ahead.start_worker();
    let behind_clock = ManualClock::new(utc("2026-11-25T10:00:20Z"));
    let behind = engine(Arc::clone(&store), &behind_clock, CatchUp::All).await;
    let _behind_worker = behind.start_worker();
    registered(&store).await;
    behind_clock.advance(Duration::from_secs(35));
    ahead_clock.advance(Duration::from_secs(35));
    assert_eq!(
        wait_for(&ahead, 1).await,
        ["schedule:2026-11-25T10:01:00.000Z"]
    );
    all_ended(&ahead).await;
    // `workflow purge --older-than 0s`, three seconds later.
    let purged = purge_at(&store, ahead_clock.now() + chrono::Duration::seconds(3)).await;
    // The clock behind passes 10:01.
    behind_clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = purged as usize + fired(&behind).await.len();
    assert_eq!(runs, 1, "10:01 ran {runs} times ({purged} purged)");
}

/// An engine whose clock is 90 s behind another's reaches the ticks the
/// other fired, ran, and purged a minute later by its own clock: none runs
/// again, the last one fired nor the one before it, and the next one
/// fires once. Before, a tick within 30 s of the last one fired (or, while
/// that one was ahead of this clock, any tick before it) was fired again
/// and left to its key to find the first, which the purge had freed.
#[tokio::test]
async fn ticks_fired_by_a_clock_far_ahead_and_purged_do_not_run_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ahead_clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let ahead = engine(Arc::clone(&store), &ahead_clock, CatchUp::All).await;
    let ahead_worker = ahead.start_worker();
    registered(&store).await;
    // A system clock an hour behind, set right (and still 90 s behind)
    // unannounced, as NTP does.
    let behind_clock = ManualClock::new(utc("2026-11-25T08:59:00Z"));
    let wall = WallClock(behind_clock.clone());
    let behind = engine_with(Arc::clone(&store), wall, "* * * * *", CatchUp::All).await;
    let _behind_worker = behind.start_worker();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Both clocks run, 90 s apart; the one ahead fires 10:01 and 10:02.
    behind_clock.set(utc("2026-11-25T09:59:00Z"));
    for _ in 0..10 {
        ahead_clock.advance(Duration::from_secs(10));
        behind_clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        wait_for(&ahead, 2).await,
        [
            "schedule:2026-11-25T10:01:00.000Z",
            "schedule:2026-11-25T10:02:00.000Z"
        ]
    );
    all_ended(&ahead).await;
    ahead_worker.shutdown().await;
    // Retention on the engine ahead: a minute after the end, by its clock.
    let purged = purge_at(&store, ahead_clock.now() + chrono::Duration::seconds(61)).await;
    assert_eq!(purged, 2);
    // The clock behind passes 10:01, 10:02 and 10:03.
    for _ in 0..18 {
        behind_clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let keys = wait_for(&behind, 1).await;
    assert_eq!(keys, ["schedule:2026-11-25T10:03:00.000Z"], "{keys:?}");
}

/// Every 5 s.
const EVERY_5S: &str = "*/5 * * * * *";

/// An engine whose clock is 25 s ahead joins one that runs (`latest`): it
/// takes the ticks between the mark and its own clock for missed, skips
/// them and fires the latest; the engine with the right time still fires
/// them as they come due on its clock, and each tick runs once.
#[tokio::test]
async fn ticks_a_clock_a_little_ahead_took_for_missed_still_fire() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let right = engine_on(Arc::clone(&store), &clock, EVERY_5S, CatchUp::Latest).await;
    let _right_worker = right.start_worker();
    registered(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ahead_clock = ManualClock::new(utc("2026-11-25T10:00:55Z"));
    let ahead = engine_on(Arc::clone(&store), &ahead_clock, EVERY_5S, CatchUp::Latest).await;
    let _ahead_worker = ahead.start_worker();
    assert!(!wait_for(&ahead, 1).await.is_empty());
    // The right clock goes on, past 10:01, as a running clock goes.
    for _ in 0..32 {
        clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let keys = wait_for(&right, 6).await;
    let expected: Vec<String> = ["00:35", "00:40", "00:45", "00:50", "00:55", "01:00"]
        .iter()
        .map(|t| format!("schedule:2026-11-25T10:{t}.000Z"))
        .collect();
    assert_eq!(keys, expected);
}

/// An engine whose last look is old (its clock stood still while another
/// engine fired ticks, whose instances were then purged) does not fire
/// those ticks again: a purged tick's key is free, so firing it again
/// would run it twice.
#[tokio::test]
async fn a_stale_look_does_not_fire_purged_ticks_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let slow_clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let slow = engine(Arc::clone(&store), &slow_clock, CatchUp::All).await;
    let _slow_worker = slow.start_worker();
    registered(&store).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another engine, three minutes on, fires 10:01 to 10:03.
    let clock = ManualClock::new(utc("2026-11-25T10:03:30Z"));
    let other = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let other_worker = other.start_worker();
    assert_eq!(wait_for(&other, 3).await.len(), 3);
    all_ended(&other).await;
    other_worker.shutdown().await;
    // A minute later, by the other engine's clock, they are purged.
    let purged = purge_at(&store, clock.now() + chrono::Duration::seconds(61)).await;
    assert_eq!(purged, 3);
    // The first engine's clock catches up; its last look was at 10:00:30.
    slow_clock.set(utc("2026-11-25T10:03:40Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fired(&slow).await, Vec::<String>::new());
}

/// A clock stepped back (an NTP correction, a restored VM) does not make a
/// running engine fire again, as its clock passes them a second time, the
/// ticks it fired already: their instances may be purged by then, and
/// nothing would stop them running twice.
#[tokio::test]
async fn a_clock_stepped_back_does_not_fire_ticks_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    for _ in 0..5 {
        clock.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(wait_for(&engine, 5).await.len(), 5);
    all_ended(&engine).await;
    // A minute later, they are purged.
    let purged = purge_at(&store, clock.now() + chrono::Duration::seconds(61)).await;
    assert_eq!(purged, 5);
    // Three minutes back, then on again in steps, as a running clock goes.
    clock.set(utc("2026-11-25T10:02:30Z"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..19 {
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fired(&engine).await, Vec::<String>::new());
    // Ticks after the last one handled still fire.
    clock.set(utc("2026-11-25T10:06:10Z"));
    assert_eq!(
        wait_for(&engine, 1).await,
        ["schedule:2026-11-25T10:06:00.000Z"]
    );
}

/// A clock a day ahead, then stepped back by NTP: the engine fires the
/// ticks that come due from then on, instead of nothing until the clock
/// reaches the wrong time again. Before, it fired nothing, silently.
#[tokio::test]
async fn a_clock_stepped_back_a_day_fires_the_ticks_due_from_then() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let wall = WallClock(clock.clone());
    let engine = engine_with(Arc::clone(&store), wall, "* * * * *", CatchUp::Latest).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    clock.set(utc("2026-11-26T10:00:30Z"));
    assert_eq!(
        wait_for(&engine, 1).await,
        ["schedule:2026-11-26T10:00:00.000Z"]
    );
    clock.set(utc("2026-11-25T10:00:40Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // On in steps, as a running clock goes.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        wait_for(&engine, 2).await,
        [
            "schedule:2026-11-25T10:01:00.000Z",
            "schedule:2026-11-26T10:00:00.000Z"
        ]
    );
}

/// An engine whose clock ran two hours ahead moved the schedule's mark
/// into the future; an engine with the right time still fires the ticks
/// that come due while it runs, instead of waiting for the mark.
#[tokio::test]
async fn a_mark_moved_ahead_by_a_fast_clock_hides_no_tick() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let fast_clock = ManualClock::new(utc("2026-11-25T12:00:30Z"));
    let fast = engine(Arc::clone(&store), &fast_clock, CatchUp::None).await;
    let worker = fast.start_worker();
    registered(&store).await;
    worker.shutdown().await;
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = engine(Arc::clone(&store), &clock, CatchUp::None).await;
    let _worker = engine.start_worker();
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        wait_for(&engine, 1).await,
        ["schedule:2026-11-25T10:01:00.000Z"]
    );
}

#[tokio::test]
async fn schedules_are_checked_when_the_engine_is_built() {
    let err = EngineBuilder::new()
        .store(MemoryStore::new())
        .register_scheduled(EveryMinute, "0 25 * * *", "UTC", CatchUp::Latest)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "engine configuration: schedule of `everyMinute`: invalid cron expression \
             `0 25 * * *`: the hour field `25` is out of range"
        ),
        "{err}"
    );
    assert_eq!(err.matches("engine configuration").count(), 1, "{err}");
    let err = EngineBuilder::new()
        .store(MemoryStore::new())
        .register_scheduled(EveryMinute, "0 9 * * *", "Europe/Pariss", CatchUp::Latest)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown time zone `Europe/Pariss`"), "{err}");
}

#[tokio::test]
async fn the_attribute_schedule_is_used_by_register() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(EveryMinute)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    registered(&store).await;
    clock.advance(Duration::from_secs(30));
    let keys: HashSet<String> = wait_for(&engine, 1).await.into_iter().collect();
    assert_eq!(
        keys,
        HashSet::from(["schedule:2026-11-25T10:01:00.000Z".to_owned()])
    );
}

#[tokio::test]
async fn a_run_time_schedule_is_what_the_store_records() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        // Registered with its attribute's schedule first: replaced.
        .register(EveryMinute)
        .register_scheduled(EveryMinute, "*/5 * * * *", "Europe/Paris", CatchUp::None)
        .build()
        .await
        .unwrap();
    // What the store recorded and what the engine reports as registered
    // (the console's Workflows tab) agree on the schedule in force.
    let recorded = engine.definitions().await.unwrap();
    let registered = engine.workflows();
    for defs in [&recorded, &registered] {
        assert_eq!(defs.len(), 1);
        assert_eq!(defs[0].schedule.as_deref(), Some("*/5 * * * *"));
        assert_eq!(defs[0].timezone, "Europe/Paris");
        assert_eq!(defs[0].catch_up, CatchUp::None);
    }
}

/// How many instances of `everyMinute` exist once the count stops moving.
async fn settled_count(engine: &Engine) -> u64 {
    let count = || async {
        engine
            .counts(Some("everyMinute"))
            .await
            .unwrap()
            .values()
            .sum::<u64>()
    };
    let mut last = count().await;
    let mut still = 0;
    // Stable for 300 ms, or 30 s in all: a catch-up that stops short of the
    // end shows up as a count that settles too low.
    for _ in 0..3000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = count().await;
        if now == last && now > 0 {
            still += 1;
            if still >= 30 {
                break;
            }
        } else {
            still = 0;
            last = now;
        }
    }
    last
}

/// Every key of `everyMinute`, through all pages, sorted.
async fn all_keys(engine: &Engine) -> Vec<String> {
    let mut keys = Vec::new();
    let mut query = Query::new().workflow("everyMinute").limit(1000);
    loop {
        let page = engine.list(query.clone()).await.unwrap();
        keys.extend(page.items.into_iter().filter_map(|i| i.key));
        match page.next {
            Some(cursor) => {
                query = Query::new()
                    .workflow("everyMinute")
                    .limit(1000)
                    .after(cursor)
            }
            None => break,
        }
    }
    keys.sort();
    keys
}

/// More missed ticks than one pass of the scheduler handles: every one
/// still fires, once.
#[tokio::test]
async fn catch_up_all_fires_every_missed_tick() {
    let (engine, _clock, _worker) = restarted_after(CatchUp::All, 1_500).await;
    assert_eq!(settled_count(&engine).await, 1_500);
    let start = utc("2026-11-25T10:01:00Z");
    let expected: Vec<String> = (0..1_500)
        .map(|m| {
            let tick = start + chrono::Duration::minutes(m);
            format!(
                "schedule:{}",
                tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        })
        .collect();
    assert_eq!(all_keys(&engine).await, expected);
    let schedules = engine.schedules().await.unwrap();
    assert_eq!(schedules[0].last_fired, Some(utc("2026-11-26T11:00:00Z")));
}

/// More missed ticks than one pass of the scheduler looks at: the one that
/// fires is still the latest.
#[tokio::test]
async fn catch_up_latest_fires_the_latest_missed_tick() {
    let (engine, _clock, _worker) = restarted_after(CatchUp::Latest, 1_500).await;
    assert_eq!(settled_count(&engine).await, 1);
    let page = engine
        .list(Query::new().workflow("everyMinute"))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let info = &page.items[0];
    assert_eq!(
        info.key.as_deref(),
        Some("schedule:2026-11-26T11:00:00.000Z")
    );
    assert_eq!(
        info.tags.get("schedule").map(String::as_str),
        Some("2026-11-26T11:00:00.000Z")
    );
    let tick = EveryMinute::handle(&engine, info.id.clone())
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(tick, "2026-11-26T11:00:00.000Z");
}

/// A schedule deployed with another expression counts from then, as a new
/// one does: the downtime before it is not caught up under the new
/// expression. The same expression catches up (`after_downtime`).
#[tokio::test]
async fn a_changed_expression_counts_from_its_first_engine() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = down_after_registering(&store, CatchUp::All, 5).await;
    let every_two = |catch_up| {
        EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .register_scheduled(EveryMinute, "*/2 * * * *", "UTC", catch_up)
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(10))
            .build()
    };
    let second = every_two(CatchUp::All).await.unwrap();
    let worker = second.start_worker();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fired(&second).await, Vec::<String>::new());
    // 10:06:00 comes due while it runs.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        wait_for(&second, 1).await,
        ["schedule:2026-11-25T10:06:00.000Z"]
    );
    // Built again with the same expression: the mark stays.
    worker.shutdown().await;
    let mark = store.schedule_mark("everyMinute").await.unwrap().unwrap();
    clock.advance(Duration::from_secs(60));
    let _third = every_two(CatchUp::All).await.unwrap();
    assert_eq!(
        store.schedule_mark("everyMinute").await.unwrap(),
        Some(mark)
    );
}

/// The same when restarting the changed schedule's mark fails at first
/// (the store blinked as the worker started): nothing fires from the old
/// mark under the new expression, and the restart is tried again. Before,
/// the new definition was recorded anyway, and the schedule caught up
/// every `*/2` tick of the five minutes down.
#[tokio::test]
async fn a_changed_expression_whose_restart_failed_fires_nothing_old() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    let clock = down_after_registering(&store, CatchUp::All, 5).await;
    let second = engine_on(Arc::clone(&store), &clock, "*/2 * * * *", CatchUp::All).await;
    flaky.fail_next_schedule_advances(1);
    let _worker = second.start_worker();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fired(&second).await, Vec::<String>::new());
    let recorded = store.definitions().await.unwrap();
    assert_eq!(recorded[0].schedule.as_deref(), Some("*/2 * * * *"));
    // 10:06:00 comes due while it runs: the one tick of the new schedule.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        wait_for(&second, 1).await,
        ["schedule:2026-11-25T10:06:00.000Z"]
    );
}

/// A second schedule, every minute too.
struct AlsoEveryMinute;

impl Workflow for AlsoEveryMinute {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "alsoEveryMinute";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        Ok(ctx.tags().get("schedule").cloned().unwrap_or_default())
    }
}

/// A store call that hangs for one schedule (a dead connection) leaves
/// the others firing. Before, schedules were looked at one after another,
/// and the first one's hang stopped them all.
#[tokio::test]
async fn a_schedule_whose_store_call_hangs_does_not_stop_the_others() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    flaky.hang_schedule_mark(Some("everyMinute"));
    let store: Arc<dyn Store> = flaky.clone();
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register_scheduled(EveryMinute, "* * * * *", "UTC", CatchUp::Latest)
        .register_scheduled(AlsoEveryMinute, "* * * * *", "UTC", CatchUp::Latest)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let mut registered = false;
    for _ in 0..300 {
        if store
            .schedule_mark("alsoEveryMinute")
            .await
            .unwrap()
            .is_some()
        {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(registered, "the second schedule was never registered");
    clock.advance(Duration::from_secs(60));
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys = engine
            .list(Query::new().workflow("alsoEveryMinute"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|i| i.key)
            .collect();
        if !keys.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(keys, ["schedule:2026-11-25T10:01:00.000Z"]);
    flaky.hang_schedule_mark(None);
}

/// A catch-up cut short (here by creates failing after two ticks) records
/// the ticks it fired: once their instances ended and were purged, the
/// next engine goes on after them instead of firing them a second time.
#[tokio::test]
async fn a_catch_up_cut_short_does_not_fire_its_ticks_again() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    // 10:01 to 10:05 are missed; only the first two can start.
    let clock = down_after_registering(&store, CatchUp::All, 5).await;
    flaky.fail_creates_after(Some(2));
    let second = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let worker = second.start_worker();
    let cut_short = wait_for(&second, 2).await;
    assert_eq!(
        cut_short,
        [
            "schedule:2026-11-25T10:01:00.000Z",
            "schedule:2026-11-25T10:02:00.000Z"
        ]
    );
    all_ended(&second).await;
    worker.shutdown().await;
    // A minute later, they are purged.
    let purged = purge_at(&store, clock.now() + chrono::Duration::seconds(61)).await;
    assert_eq!(purged, 2);
    flaky.fail_creates_after(None);
    let third = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let _worker = third.start_worker();
    assert_eq!(
        wait_for(&third, 3).await,
        [
            "schedule:2026-11-25T10:03:00.000Z",
            "schedule:2026-11-25T10:04:00.000Z",
            "schedule:2026-11-25T10:05:00.000Z"
        ],
        "10:01 and 10:02 ran already"
    );
}

/// The workflow as an API server registers it: same name, no schedule
/// (its workers choose one at run time).
struct EveryMinuteUnscheduled;

impl Workflow for EveryMinuteUnscheduled {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "everyMinute";

    async fn run(&self, _: Ctx, _: ()) -> Result<String, BoxError> {
        Ok(String::new())
    }
}

/// An engine with the workflow as `EveryMinuteUnscheduled` has it.
async fn unscheduled(store: &Arc<dyn Store>, clock: &ManualClock) -> Engine {
    EngineBuilder::new()
        .shared_store(Arc::clone(store))
        .register(EveryMinuteUnscheduled)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap()
}

/// An engine that registers a scheduled workflow without its schedule
/// changes neither the recorded schedule nor the mark: the next worker
/// still catches up on the ticks missed while none ran.
#[tokio::test]
async fn an_engine_without_the_schedule_leaves_it_as_it_was() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = down_after_registering(&store, CatchUp::Latest, 5).await;
    drop(unscheduled(&store, &clock).await);
    let recorded = store.definitions().await.unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].schedule.as_deref(), Some("* * * * *"));
    let second = engine(Arc::clone(&store), &clock, CatchUp::Latest).await;
    let _worker = second.start_worker();
    assert_eq!(
        wait_for(&second, 1).await,
        ["schedule:2026-11-25T10:05:00.000Z"],
        "the latest missed tick runs"
    );
}

/// A schedule removed from the workers' code is recorded removed once one
/// of them starts, and, added back later, counts from then: the time it
/// was gone is not caught up as downtime, even with `catch_up = "all"`.
#[tokio::test]
async fn a_schedule_removed_from_the_workers_is_recorded_and_restarts_when_back() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = down_after_registering(&store, CatchUp::All, 5).await;
    let worker = unscheduled(&store, &clock).await.start_worker();
    let mut recorded = None;
    for _ in 0..300 {
        recorded = store.definitions().await.unwrap().pop();
        if recorded.as_ref().is_some_and(|d| d.schedule.is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorded.unwrap().schedule, None, "recorded removed");
    worker.shutdown().await;
    clock.advance(Duration::from_secs(5 * 60));
    let back = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let _worker = back.start_worker();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fired(&back).await,
        Vec::<String>::new(),
        "no burst of the gap"
    );
    // 10:11:00 comes due while it runs.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        wait_for(&back, 1).await,
        ["schedule:2026-11-25T10:11:00.000Z"]
    );
}

/// A tick fired again (its mark was not moved: the store blinked) whose
/// instance is found damaged counts as fired: the schedule goes on to its
/// next tick. Before, the create's error held the mark at that tick, and
/// the schedule never fired again.
#[tokio::test]
async fn a_tick_whose_instance_is_corrupt_counts_as_fired() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    let clock = ManualClock::new(utc("2026-11-25T10:00:30Z"));
    let engine = engine(Arc::clone(&store), &clock, CatchUp::All).await;
    let _worker = engine.start_worker();
    registered(&store).await;
    flaky.fail_next_schedule_advances(1);
    flaky.unreadable_workflow(Some("everyMinute"));
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        wait_for(&engine, 1).await,
        ["schedule:2026-11-25T10:01:00.000Z"]
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        wait_for(&engine, 2).await,
        [
            "schedule:2026-11-25T10:01:00.000Z",
            "schedule:2026-11-25T10:02:00.000Z"
        ]
    );
}
