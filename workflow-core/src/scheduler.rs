//! The scheduler: turns cron ticks into instances. Every worker runs one;
//! each tick becomes one instance whose dedup key is the tick's time, so any
//! number of engines on one store fire each tick exactly once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Scheduled};
use crate::error::{Result, StoreError};
use crate::id::InstanceId;
use crate::schedule::{CatchUp, Schedule, SCHEDULE_KEY_PREFIX};
use crate::status::Status;
use crate::store::{Created, Millis, NewInstance};

/// How often the scheduler records how far it looked when nothing fired.
const MARK_EVERY: Duration = Duration::from_secs(5);

/// How far back a tick before the last one fired may still fire, while
/// that last one is ahead of this engine's clock by at most as much (see
/// `fire_due`): an older one's instance may have ended and been purged (no
/// purge takes what ended in the last minute, see `PURGE_MARGIN`, by the
/// purging engine's clock), and firing it again would run it twice.
const REFIRE_WITHIN: Duration = Duration::from_secs(30);

/// The shortest pause between two looks at the schedules.
const MIN_LOOK_EVERY: Duration = Duration::from_millis(25);

/// How late a look may come and still count as this engine running all
/// along (a slow store, a busy runtime). A look later than that follows a
/// process that was frozen (a laptop asleep, a VM paused): the ticks it
/// slept through were missed, and the catch-up policy decides, instead of
/// a `none` or `latest` schedule firing every one of them at once.
const LATE_LOOK_MAX: Duration = Duration::from_secs(600);

/// What this engine's scheduler remembers of one schedule between looks.
struct Look<'a> {
    /// The longest pause between two looks.
    every: Duration,
    /// When it last recorded how far it looked.
    marked: &'a mut Option<tokio::time::Instant>,
    /// Up to when its last look that succeeded handled the schedule: ticks
    /// after that came due while this engine ran.
    looked: &'a mut Option<DateTime<Utc>>,
    /// When this scheduler started: ticks due since came due while this
    /// engine ran, even before its first look at the schedule (which can
    /// come late, after a store that kept failing).
    started: DateTime<Utc>,
    /// Whether the clock is moved by hand (it announces its jumps, as a
    /// test's [`ManualClock`](crate::ManualClock) does): every jump is time
    /// this engine ran through, however long, not a process frozen.
    by_hand: bool,
}

impl Look<'_> {
    /// Records that this look handled the schedule's ticks up to `until`,
    /// never moving back from the last look (`previous`): after the
    /// clock steps back (by less than [`LATE_LOOK_MAX`]; see `fire_due`
    /// for more), the ticks between its new and its old time were
    /// handled already, and firing them again as the clock passes them
    /// once more would run them twice if their instances were purged
    /// meanwhile.
    fn looked(&mut self, previous: Option<DateTime<Utc>>, until: DateTime<Utc>) {
        *self.looked = Some(previous.map_or(until, |p| p.max(until)));
    }
}

/// How long the scheduler waits at most between two tries at recording
/// the schedules in force.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

pub(crate) async fn run(engine: Engine, stop: CancellationToken) {
    let inner = &engine.inner;
    // Before any look, and until it succeeds: a changed schedule must
    // have its mark restarted before it fires from it.
    let mut wait = Duration::from_millis(100);
    let mut failing = crate::worker::Outage::new(
        &engine,
        "recording the schedules in force (no schedule fires until it is done)",
    );
    loop {
        match crate::worker::caught(crate::engine::record_schedules(&engine)).await {
            Ok(()) => {
                failing.over();
                break;
            }
            Err(err) => failing.failed(&err),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(RECORD_RETRY_MAX);
    }
    if inner.scheduled.is_empty() {
        return;
    }
    // At least every second; not so often, whatever the poll interval,
    // that every worker's scheduler keeps the store busy.
    let every = inner
        .config
        .poll_interval
        .clamp(MIN_LOOK_EVERY, Duration::from_secs(1));
    let started = inner.clock.now();
    // Each schedule on its own task: a store call that hangs for one (a
    // dead connection in the pool) leaves the others firing. Aborted with
    // the set when this future is dropped.
    let mut schedules = tokio::task::JoinSet::new();
    for index in 0..inner.scheduled.len() {
        schedules.spawn(look_at(engine.clone(), index, every, started, stop.clone()));
    }
    while schedules.join_next().await.is_some() {}
}

/// Looks at schedule `index` of the engine's every `every` at most, and
/// fires its due ticks, until `stop`.
async fn look_at(
    engine: Engine,
    index: usize,
    every: Duration,
    started: DateTime<Utc>,
    stop: CancellationToken,
) {
    let inner = &engine.inner;
    let scheduled = &inner.scheduled[index];
    let (mut marked, mut looked) = (None, None);
    // A clock moved by hand (a test's) fires its ticks at once.
    let mut clock_changes = inner.clock.changes();
    let by_hand = clock_changes.is_some();
    // Every look, a second apart at most: a store down would write a line
    // per schedule per second.
    let mut failing = crate::worker::Outage::new(
        &engine,
        format!("checking the schedule of `{}`", scheduled.workflow),
    );
    while !stop.is_cancelled() {
        let look = Look {
            every,
            marked: &mut marked,
            looked: &mut looked,
            started,
            by_hand,
        };
        // A store that panics fails this look, not the scheduler: the
        // schedule would stop firing while the worker looked healthy.
        let next_due = match crate::worker::caught(fire_due(&engine, scheduled, look)).await {
            Ok(next) => {
                failing.over();
                next
            }
            Err(err) => {
                failing.failed(&err);
                None
            }
        };
        let now = inner.clock.now();
        let nap = match next_due {
            // A schedule still catching up reports a tick already due: its
            // next chunk starts at once rather than a poll interval later.
            Some(next) if next <= now => Duration::ZERO,
            Some(next) => (next - now).to_std().unwrap_or(every).min(every),
            None => every,
        };
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = crate::schedule::clock_jumped(&mut clock_changes) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Fires the ticks of one schedule that are due; returns its next tick not
/// yet handled, which is already due while the schedule is catching up.
async fn fire_due(
    engine: &Engine,
    s: &Scheduled,
    mut look: Look<'_>,
) -> Result<Option<DateTime<Utc>>> {
    let inner = &engine.inner;
    let store = &inner.store;
    let now = inner.clock.now();
    let now_ms = now.timestamp_millis();
    let Some(mark) = store.schedule_mark(s.workflow).await? else {
        // The first engine to see this schedule counts from now: no ticks
        // from before the schedule existed.
        store.advance_schedule(s.workflow, now_ms, None).await?;
        tracing::info!(
            workflow = s.workflow,
            expression = s.schedule.expression(),
            "schedule registered"
        );
        *look.looked = Some(now);
        return Ok(s.schedule.next_after(now));
    };
    let marked_until = mark
        .checked_until
        .max(mark.last_tick.unwrap_or(Millis::MIN));
    let marked_until = DateTime::from_timestamp_millis(marked_until).unwrap_or(now);
    let late_look_max = chrono::Duration::from_std(LATE_LOOK_MAX).unwrap_or_default();
    // A running engine looks at least every `every` and records that at
    // least every MARK_EVERY, so a tick older than that came due while no
    // engine ran: it was missed. Unless this engine has looked since: a
    // look that came late (a slow store, a busy runtime) misses nothing.
    let window = (look.every * 2).max(Duration::from_secs(1)) + MARK_EVERY;
    let window = chrono::Duration::from_std(window).unwrap_or_default();
    // A test that moves its clock a day on runs the engine through that
    // day: every tick in it fires, as a day of real time would fire them.
    // Up to RAN_THROUGH_MAX of them: a clock set years on (or a schedule
    // every second moved a week) counts as a frozen process, whose ticks
    // the catch-up policy decides, not as millions of instances to start.
    let ran_through = |since: DateTime<Utc>| {
        since >= now - late_look_max
            || (look.by_hand
                && s.schedule
                    .ticks_between(since, now, RAN_THROUGH_MAX + 1)
                    .len()
                    <= RAN_THROUGH_MAX)
    };
    let previous = look.looked.filter(|p| ran_through(*p));
    if look.by_hand && look.looked.is_some() && previous.is_none() {
        tracing::warn!(
            workflow = s.workflow,
            now = %now,
            "the clock was moved past more than {RAN_THROUGH_MAX} ticks at once: the catch-up policy decides which fire"
        );
    }
    // A last look far ahead of now: the clock stepped back from a wrong
    // time (a day ahead at boot, then NTP). Counting from that look
    // would fire nothing until the clock got there again, silently; this
    // engine counts from now instead, as if it had looked a moment ago
    // (the ticks fired meanwhile are found by their keys). A small step
    // back keeps the look, so its ticks are not fired twice.
    let previous = match previous {
        Some(p) if p > now + late_look_max => {
            tracing::warn!(
                workflow = s.workflow,
                last_look = %p,
                now = %now,
                "the clock stepped back past this engine's last look at the schedule; counting from now"
            );
            Some(now - window)
        }
        previous => previous,
    };
    // Once per schedule and engine: the mark stays ahead until the clocks
    // meet again.
    if previous.is_none() && marked_until > now + chrono::Duration::seconds(5) {
        tracing::warn!(
            workflow = s.workflow,
            mark = %marked_until,
            "the schedule's mark is ahead of this engine's clock: a clock ran ahead, here or on another engine"
        );
    }
    // From the mark, or from this engine's last look if that is earlier: a
    // mark that a clock running ahead moved forward must not hide the
    // ticks after this engine's last look (firing one twice finds the
    // first by its key).
    let from = previous.map_or(marked_until, |p| p.min(marked_until));
    // Never before the last tick fired, as a rule: everything up to it was
    // fired, or skipped as missed, by whoever fired it. A tick there fired
    // again would run twice once its instance was purged (its key free
    // again), which retention does a minute after the end by the purging
    // engine's clock, whatever this one's says.
    //
    // While that last tick is still ahead of this clock, fired by a clock
    // ahead of it, the ticks before it come due here as this engine runs.
    // A clock ahead by little (the mark, which every look moves to its
    // engine's time, tells by how much) may have taken some for missed and
    // skipped them: those of the last moments fire here, found by their
    // keys where it fired them, as far back as no purge can have freed a
    // key (the window plus the clocks' gap stays within PURGE_MARGIN, a
    // minute). A clock ahead by more leaves them, as a purge could have: a
    // tick lost beats a tick run twice. And a last tick far ahead (a clock a day wrong at boot,
    // then stepped back) hides nothing.
    let refire_within = chrono::Duration::from_std(REFIRE_WITHIN).unwrap_or_default();
    // The mark trails the clock ahead by up to a look and a mark's
    // interval: the window shrinks by that too, so a tick a purge could
    // have freed never falls in it.
    let ahead_by = marked_until - now
        + chrono::Duration::from_std(MARK_EVERY + look.every).unwrap_or_default();
    let purge_margin = chrono::Duration::from_std(crate::engine::PURGE_MARGIN).unwrap_or_default();
    let refire = refire_within.min(purge_margin - ahead_by);
    let from = match mark.last_tick.and_then(DateTime::from_timestamp_millis) {
        Some(last) if last <= now => from.max(last),
        Some(_) if refire > chrono::Duration::zero() => from.max(now - refire),
        Some(last) if last > now + late_look_max => from.max(now - refire_within),
        Some(last) => from.max(last),
        None => from,
    };
    // Before this engine's first look at it, from when it started (unless
    // that was a frozen process's long ago).
    let first_look = look.looked.is_none();
    let running_since = previous
        .or_else(|| Some(look.started).filter(|started| first_look && ran_through(*started)));
    let missed_before = running_since.map_or(now - window, |p| p.min(now - window));
    let plan = plan(&s.schedule, s.catch_up, from, now, missed_before);
    if plan.fire.is_empty() && plan.skipped.is_none() {
        let stale = look.marked.is_none_or(|at| at.elapsed() >= MARK_EVERY);
        if stale {
            store.advance_schedule(s.workflow, now_ms, None).await?;
            *look.marked = Some(tokio::time::Instant::now());
        }
        look.looked(previous, now);
        return Ok(s.schedule.next_after(now));
    }
    if let Some((first, last)) = plan.skipped {
        tracing::info!(
            workflow = s.workflow,
            first = %first,
            last = %last,
            catch_up = ?s.catch_up,
            "skipping ticks missed while no engine ran"
        );
    }
    let behind = plan.checked_until < now;
    if behind {
        tracing::info!(
            workflow = s.workflow,
            ticks = plan.fire.len(),
            through = %plan.checked_until,
            "catching up on ticks missed while no engine ran"
        );
    }
    // A catch-up records how far it got as it goes (every RECORD_EVERY,
    // and when a tick fails to start): a chunk cut short would otherwise
    // leave the mark before ticks whose instances may end and be purged
    // (their keys free again) before the next look fires them again. Not
    // at each tick: each record is a durable write.
    let mut fired: Option<(Millis, InstanceId)> = None;
    let mut recorded_at = tokio::time::Instant::now();
    let last = plan.fire.len().saturating_sub(1);
    for (n, tick) in plan.fire.into_iter().enumerate() {
        let id = match fire_tick(engine, s, tick).await {
            Ok(id) => id,
            Err(err) => {
                if let Some((tick, id)) = fired {
                    if let Err(err) = store
                        .advance_schedule(s.workflow, tick, Some((tick, id)))
                        .await
                    {
                        tracing::warn!(workflow = s.workflow, error = %err, "recording a catch-up's progress failed");
                    }
                }
                return Err(err);
            }
        };
        let tick = tick.timestamp_millis();
        if n < last && recorded_at.elapsed() >= RECORD_EVERY {
            store
                .advance_schedule(s.workflow, tick, Some((tick, id.clone())))
                .await?;
            recorded_at = tokio::time::Instant::now();
        }
        fired = Some((tick, id));
    }
    // Only as far as the ticks handled: an engine that stops here, or any
    // other engine, goes on from there, and creating an instance twice
    // finds the first by its key.
    store
        .advance_schedule(s.workflow, plan.checked_until.timestamp_millis(), fired)
        .await?;
    *look.marked = Some(tokio::time::Instant::now());
    look.looked(previous, plan.checked_until);
    Ok(s.schedule
        .next_after(if behind { plan.checked_until } else { now }))
}

/// How often a catch-up records how far it got.
const RECORD_EVERY: Duration = Duration::from_millis(100);

/// The most ticks a clock moved by hand may jump over and still fire each
/// (see `fire_due`).
const RAN_THROUGH_MAX: usize = 10_000;

/// The most ticks one look at a schedule starts, which bounds the memory
/// and the time of a look however long the outage was.
const CHUNK: usize = 1_000;

/// What one look at a schedule does.
#[derive(Debug, PartialEq)]
struct Plan {
    /// The ticks to start, oldest first.
    fire: Vec<DateTime<Utc>>,
    /// How far the mark moves once they have started: `now`, or the last
    /// of `fire` when a full chunk leaves more ticks for the next look.
    checked_until: DateTime<Utc>,
    /// The first and last missed ticks the catch-up policy leaves out.
    skipped: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Which ticks in `(from, now]` to start; those before `missed_before` came
/// due while no engine ran.
fn plan(
    schedule: &Schedule,
    catch_up: CatchUp,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    missed_before: DateTime<Utc>,
) -> Plan {
    let chunk = |after| {
        let ticks = schedule.ticks_between(after, now, CHUNK);
        let checked_until = match ticks.last() {
            Some(last) if ticks.len() == CHUNK => *last,
            _ => now,
        };
        (ticks, checked_until)
    };
    if catch_up == CatchUp::All {
        let (fire, checked_until) = chunk(from);
        return Plan {
            fire,
            checked_until,
            skipped: None,
        };
    }
    // Only the ends of the missed ticks are looked up, not the ticks
    // between them: there can be millions.
    let Some(latest_missed) = schedule.latest_before(from, missed_before) else {
        let (fire, checked_until) = chunk(from);
        return Plan {
            fire,
            checked_until,
            skipped: None,
        };
    };
    let first_missed = schedule.next_after(from).unwrap_or(latest_missed);
    let (on_time, checked_until) = chunk(latest_missed);
    if catch_up == CatchUp::Latest && on_time.is_empty() {
        let skipped = schedule
            .latest_before(from, latest_missed)
            .map(|last| (first_missed, last));
        return Plan {
            fire: vec![latest_missed],
            checked_until,
            skipped,
        };
    }
    Plan {
        fire: on_time,
        checked_until,
        skipped: Some((first_missed, latest_missed)),
    }
}

/// Starts the instance of one tick, unless another engine already did.
async fn fire_tick(engine: &Engine, s: &Scheduled, tick: DateTime<Utc>) -> Result<InstanceId> {
    let inner = &engine.inner;
    let created_at = inner.now();
    let tick_text = tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let new = NewInstance {
        id: InstanceId::at(created_at),
        workflow: s.workflow.to_owned(),
        input: s.input.clone(),
        tags: [(crate::SCHEDULE_TAG.to_owned(), tick_text.clone())].into(),
        key: Some(format!("{SCHEDULE_KEY_PREFIX}{tick_text}")),
        created_at,
        run_at: created_at,
        deadline_at: Some(crate::store::millis_after(created_at, s.timeout)),
        parent: None,
    };
    Ok(match inner.store.create(new, Some(&Status::ALL)).await {
        Ok(Created::New(row)) => {
            tracing::info!(workflow = s.workflow, tick = %tick_text, id = %row.id, "schedule fired");
            inner.wake.notify_one();
            row.id
        }
        Ok(Created::Existing(row)) => row.id,
        // The tick's instance exists, damaged: the tick fired. Refused, it
        // would hold the schedule's mark there, and no later tick would fire.
        Err(StoreError::Corrupt { id, message }) => {
            tracing::warn!(workflow = s.workflow, tick = %tick_text, %id, %message, "the tick's instance is corrupt; counted as fired");
            id
        }
        Err(err) => return Err(err.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn minutely() -> Schedule {
        Schedule::parse("* * * * *", "UTC").unwrap()
    }

    /// Looks again from where each plan left the mark, as the scheduler
    /// does, until a plan reaches `now`.
    fn passes(catch_up: CatchUp, from: &str, now: &str) -> Vec<Plan> {
        let now = utc(now);
        let missed_before = now - chrono::Duration::seconds(7);
        let mut from = utc(from);
        let mut plans = Vec::new();
        loop {
            let plan = plan(&minutely(), catch_up, from, now, missed_before);
            assert!(plan.fire.len() <= CHUNK);
            from = plan.checked_until;
            plans.push(plan);
            if from == now {
                return plans;
            }
            assert!(plans.len() < 10, "no progress");
        }
    }

    #[test]
    fn all_goes_on_from_the_last_tick_of_a_full_chunk() {
        let plans = passes(CatchUp::All, "2026-11-25T10:00:30Z", "2026-11-27T05:40:30Z");
        let sizes: Vec<usize> = plans.iter().map(|p| p.fire.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 620]);
        assert_eq!(plans[0].checked_until, utc("2026-11-26T02:40:00Z"));
        let fired: Vec<DateTime<Utc>> = plans.into_iter().flat_map(|p| p.fire).collect();
        let every = minutely().ticks_between(
            utc("2026-11-25T10:00:30Z"),
            utc("2026-11-27T05:40:30Z"),
            usize::MAX,
        );
        assert_eq!(fired, every, "each tick once, in order");
    }

    #[test]
    fn latest_and_none_leave_out_a_long_gap_in_one_look() {
        let plans = passes(
            CatchUp::Latest,
            "2025-11-25T10:00:30Z",
            "2026-11-25T10:00:30Z",
        );
        assert_eq!(
            plans,
            [Plan {
                fire: vec![utc("2026-11-25T10:00:00Z")],
                checked_until: utc("2026-11-25T10:00:30Z"),
                skipped: Some((utc("2025-11-25T10:01:00Z"), utc("2026-11-25T09:59:00Z"))),
            }]
        );
        let plans = passes(
            CatchUp::None,
            "2025-11-25T10:00:30Z",
            "2026-11-25T10:00:30Z",
        );
        assert_eq!(
            plans,
            [Plan {
                fire: vec![],
                checked_until: utc("2026-11-25T10:00:30Z"),
                skipped: Some((utc("2025-11-25T10:01:00Z"), utc("2026-11-25T10:00:00Z"))),
            }]
        );
    }

    #[test]
    fn a_tick_within_the_window_is_on_time() {
        // 10:01:00 came due 3 s ago, 10:00:00 a minute ago.
        let now = utc("2026-11-25T10:01:03Z");
        let missed_before = now - chrono::Duration::seconds(7);
        let from = utc("2026-11-25T09:59:30Z");
        for catch_up in [CatchUp::Latest, CatchUp::None] {
            let plan = plan(&minutely(), catch_up, from, now, missed_before);
            assert_eq!(plan.fire, [utc("2026-11-25T10:01:00Z")], "{catch_up:?}");
            assert_eq!(
                plan.skipped,
                Some((utc("2026-11-25T10:00:00Z"), utc("2026-11-25T10:00:00Z")))
            );
        }
        let plan = plan(
            &minutely(),
            CatchUp::Latest,
            utc("2026-11-25T10:00:30Z"),
            now,
            missed_before,
        );
        assert_eq!(
            plan,
            Plan {
                fire: vec![utc("2026-11-25T10:01:00Z")],
                checked_until: now,
                skipped: None,
            }
        );
    }
}
