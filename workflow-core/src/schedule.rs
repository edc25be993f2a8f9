//! Cron schedules: parsing (croner, standard 5-field crontab or 6 fields
//! with seconds, names and `@daily`-style macros, POSIX weekdays), IANA time
//! zones (chrono-tz), and the scheduler that turns each tick into exactly one
//! instance, however many engines share the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::id::InstanceId;

/// What a schedule does about ticks that passed while no engine ran (or
/// while its process was frozen for more than 10 minutes: a laptop asleep,
/// a paused VM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run every missed tick once, oldest first, however many there are.
    /// They start 1,000 at a time, so a long outage of a frequent schedule
    /// catches up over several quick passes of the scheduler.
    All,
    /// Run the most recent missed tick once. The default: a daily report
    /// that missed three days runs once, not three times.
    #[default]
    Latest,
    /// Skip missed ticks; run only the ones that come due while running.
    None,
}

impl CatchUp {
    /// `"all"`, `"latest"` or `"none"`, as `#[workflow(catch_up = ..)]` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::All => "all",
            CatchUp::Latest => "latest",
            CatchUp::None => "none",
        }
    }
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CatchUp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(CatchUp::All),
            "latest" => Ok(CatchUp::Latest),
            "none" => Ok(CatchUp::None),
            other => Err(Error::Config(format!(
                "unknown catch_up `{other}` (expected `all`, `latest` or `none`)"
            ))),
        }
    }
}

/// How the dedup key of a cron tick's instance starts: the key is
/// `schedule:<tick time>` (RFC 3339 in UTC, to the millisecond), which is
/// how engines on one store fire each tick once. Reserved: a start given
/// such a key is refused ([`Error::InvalidStartOption`](crate::Error::InvalidStartOption)),
/// as it would stand for that tick and keep it from firing.
pub const SCHEDULE_KEY_PREFIX: &str = "schedule:";

/// The tag a cron tick's instance carries its tick time in (RFC 3339 in
/// UTC, to the millisecond); [`Ctx::scheduled_at`](crate::Ctx::scheduled_at)
/// reads it. Not reserved: a start may give it, to run for a past tick.
pub const SCHEDULE_TAG: &str = "schedule";

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses `expression` (`"0 9 * * *"`, `"*/30 * * * * *"`, `"0 0 * * MON"`,
    /// `"@daily"`) in the IANA time zone `timezone` (`"UTC"`, `"Europe/Paris"`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self> {
        let cron = workflow_rules::cron::parse(expression).map_err(|why| {
            Error::Config(format!("invalid cron expression `{expression}`: {why}"))
        })?;
        let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
            // Names are case-sensitive: `europe/paris` is a typo to point out.
            let close = chrono_tz::TZ_VARIANTS
                .iter()
                .find(|tz| tz.name().eq_ignore_ascii_case(timezone.trim()));
            Error::Config(match close {
                Some(tz) => format!("unknown time zone `{timezone}`: did you mean `{}`?", tz.name()),
                None => format!(
                    "unknown time zone `{timezone}` (expected an IANA name such as `UTC` or `Europe/Paris`)"
                ),
            })
        })?;
        Ok(Schedule {
            expression: expression.to_owned(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first tick strictly after `after`.
    ///
    /// Ticks follow the wall clock of the time zone. For a fixed time of day
    /// (second, minute and hour each a single value): on a spring-forward
    /// day a tick in the skipped hour (02:30 in Europe/Paris) fires once, at
    /// the first valid time after it (03:00); on a fall-back day a tick in
    /// the repeated hour fires once, at its first occurrence. With a list,
    /// range or step in those fields, croner follows elapsed time: ticks in
    /// a skipped hour do not fire, ticks in a repeated hour fire twice.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Ticks in `(after, until]`, oldest first, at most `limit`.
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::new();
        let mut cursor = after;
        while ticks.len() < limit {
            match self.next_after(cursor) {
                Some(tick) if tick <= until => {
                    ticks.push(tick);
                    cursor = tick;
                }
                _ => break,
            }
        }
        ticks
    }

    /// The latest tick in `(after, before)`, found without walking the ticks
    /// between (a schedule that ticks every second and missed a year has 31
    /// million): croner searches back from `before`, and steps forward from
    /// just before its answer keep the result the one a forward walk gives,
    /// as the scheduler fires what [`Schedule::next_after`] yields, also
    /// around a change of the clocks.
    pub(crate) fn latest_before(
        &self,
        after: DateTime<Utc>,
        before: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let back = self
            .cron
            .find_previous_occurrence(&before.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        let from = back.map_or(after, |t| (t - chrono::Duration::seconds(1)).max(after));
        let mut latest = self.next_after(from).filter(|t| *t < before)?;
        while let Some(next) = self.next_after(latest).filter(|next| *next < before) {
            latest = next;
        }
        Some(latest)
    }
}

/// What time it is for workflows: when cron ticks fire, when sleeps,
/// event waits and retry backoffs end, when deadlines pass, and the times
/// recorded in history. Real by default; tests use [`ManualClock`] to move
/// time forward without waiting. Leases and heartbeats follow the system
/// clock whatever this says: they tell live workers from dead ones.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// For a clock that jumps ([`ManualClock`]): a receiver that sees a new
    /// value whenever it does, so that the engine's timers re-read the
    /// time at once instead of sleeping out a wait measured before the
    /// jump. `None` (the default) for a clock that moves with real time;
    /// a clock of your own that jumps must return one, or the engine
    /// sleeps out waits by real time.
    ///
    /// A clock that returns one is moved by hand: the engine counts each
    /// jump as time it ran through, so the cron ticks jumped over fire,
    /// whatever the schedule's catch-up policy (up to 10,000 of them; a
    /// jump past more counts as a frozen process, as a late look on a real
    /// clock does, and the policy decides).
    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        None
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to. Clones share the time.
///
/// Given to [`EngineBuilder::clock`](crate::EngineBuilder::clock), it
/// drives everything workflows wait for: `clock.advance(3 days)` wakes a
/// workflow sleeping for three days, times out its event waits, ends its
/// retry backoffs and passes its deadline, in a test that takes
/// milliseconds. While it stands still, nothing waiting on time moves,
/// however long the test runs (a step's retry included, however short
/// its backoff).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock showing `start`, from the start of 1970 to the end of the
    /// year 9999 (a time outside is brought to the nearer end): ids,
    /// stores and the engine's time arithmetic count from 1970.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(watch::Sender::new(in_range(start))),
        }
    }

    /// The time it shows.
    pub fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    /// Sets the time, within the range of [`ManualClock::new`]: the
    /// engine's time arithmetic has room past it. Setting it back does not
    /// bring back what already woke; what is due later waits for the clock
    /// again.
    pub fn set(&self, now: DateTime<Utc>) {
        self.now.send_replace(in_range(now));
    }

    /// Moves the time forward by `by`, up to the end of the year 9999.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| {
            *now = chrono::Duration::from_std(by)
                .ok()
                .and_then(|by| now.checked_add_signed(by))
                .map_or_else(far_future, |later| later.min(far_future()));
        });
    }
}

/// Resolves at the next jump seen on a clock's [`Clock::changes`]; never
/// for a clock that moves with real time (or whose every handle is gone).
pub(crate) async fn clock_jumped(changes: &mut Option<watch::Receiver<DateTime<Utc>>>) {
    let gone = match changes.as_mut() {
        Some(changes) => changes.changed().await.is_err(),
        None => true,
    };
    if gone {
        std::future::pending::<()>().await;
    }
}

/// `t` within what a [`ManualClock`] shows: 1970 to the end of 9999.
fn in_range(t: DateTime<Utc>) -> DateTime<Utc> {
    t.clamp(DateTime::UNIX_EPOCH, far_future())
}

/// Where a [`ManualClock`] stops.
fn far_future() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map_or(DateTime::<Utc>::MAX_UTC, |t| t.and_utc())
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        ManualClock::now(self)
    }

    fn changes(&self) -> Option<watch::Receiver<DateTime<Utc>>> {
        Some(self.now.subscribe())
    }
}

/// A registered schedule, as `engine.schedules()` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// The workflow.
    pub workflow: String,
    /// Its cron expression.
    pub expression: String,
    /// Its time zone.
    pub timezone: String,
    /// What it does about missed ticks.
    pub catch_up: CatchUp,
    /// The next tick after now.
    pub next_fire: Option<DateTime<Utc>>,
    /// The last tick that started an instance.
    pub last_fired: Option<DateTime<Utc>>,
    /// The instance that tick started.
    pub last_instance: Option<InstanceId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    #[test]
    fn a_manual_clock_stops_at_the_year_9999() {
        let clock = ManualClock::new(Utc::now());
        clock.advance(Duration::MAX);
        assert_eq!(clock.now(), far_future());
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), far_future());
        clock.set(DateTime::<Utc>::MAX_UTC);
        assert_eq!(clock.now(), far_future());
        let tick = Schedule::parse("@daily", "UTC").unwrap();
        assert_eq!(tick.next_after(clock.now()), None);
    }

    /// Nor does it go before 1970, where the scheduler's arithmetic
    /// (`now - 10 minutes`) would overflow and stop it.
    #[test]
    fn a_manual_clock_starts_no_earlier_than_1970() {
        let clock = ManualClock::new(DateTime::<Utc>::MIN_UTC);
        assert_eq!(clock.now(), DateTime::UNIX_EPOCH);
        clock.set(DateTime::<Utc>::MIN_UTC);
        assert_eq!(clock.now(), DateTime::UNIX_EPOCH);
        assert!(clock
            .now()
            .checked_sub_signed(chrono::Duration::minutes(10))
            .is_some());
    }

    /// What the macro lets through without a database is what the engine
    /// knows: every one-word zone, and every other name by its shape.
    #[test]
    fn the_macros_time_zone_names_are_the_databases() {
        let mut one_word: Vec<&str> = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| tz.name())
            .filter(|name| !name.contains('/'))
            .collect();
        one_word.sort_unstable();
        let mut listed = workflow_rules::timezone::ONE_WORD.to_vec();
        listed.sort_unstable();
        assert_eq!(listed, one_word);
        for tz in chrono_tz::TZ_VARIANTS {
            assert!(
                workflow_rules::timezone::plausible(tz.name()),
                "{}",
                tz.name()
            );
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn standard_expressions() {
        let start = utc("2026-11-25T10:17:00Z"); // a Wednesday
        let next = |expr: &str| {
            Schedule::parse(expr, "UTC")
                .unwrap()
                .next_after(start)
                .unwrap()
        };
        assert_eq!(next("0 9 * * *"), utc("2026-11-26T09:00:00Z"));
        assert_eq!(next("0 */6 * * *"), utc("2026-11-25T12:00:00Z"));
        assert_eq!(next("*/30 * * * *"), utc("2026-11-25T10:30:00Z"));
        assert_eq!(next("@daily"), utc("2026-11-26T00:00:00Z"));
        assert_eq!(next("@hourly"), utc("2026-11-25T11:00:00Z"));
        assert_eq!(next("15 10 * JAN *"), utc("2027-01-01T10:15:00Z"));
        assert_eq!(
            next("*/20 * * * * *"),
            utc("2026-11-25T10:17:20Z"),
            "6 fields: seconds first"
        );
    }

    /// The trap of prepending "0 " to reuse a Quartz parser: `0 0 * * 1`
    /// must fire on Monday (POSIX weekdays: 0 and 7 are Sunday).
    #[test]
    fn weekday_numbers_are_posix() {
        let start = utc("2026-11-25T10:17:00Z");
        for expr in ["0 0 * * 1", "0 0 * * MON"] {
            let t = Schedule::parse(expr, "UTC")
                .unwrap()
                .next_after(start)
                .unwrap();
            assert_eq!(t.weekday(), Weekday::Mon, "{expr}");
            assert_eq!(t, utc("2026-11-30T00:00:00Z"));
        }
        for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"] {
            let t = Schedule::parse(expr, "UTC")
                .unwrap()
                .next_after(start)
                .unwrap();
            assert_eq!(t.weekday(), Weekday::Sun, "{expr}");
        }
    }

    #[test]
    fn time_zones_follow_the_wall_clock() {
        let paris = Schedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        // Winter: UTC+1.
        assert_eq!(
            paris.next_after(utc("2026-01-10T00:00:00Z")).unwrap(),
            utc("2026-01-10T08:00:00Z")
        );
        // Summer: UTC+2.
        assert_eq!(
            paris.next_after(utc("2026-07-10T00:00:00Z")).unwrap(),
            utc("2026-07-10T07:00:00Z")
        );
    }

    /// 2026-03-29 in Paris: 02:00 jumps to 03:00, so 02:30 does not exist.
    #[test]
    fn spring_forward_runs_a_skipped_tick_once_at_the_first_valid_time() {
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let ticks = s.ticks_between(utc("2026-03-28T00:00:00Z"), utc("2026-03-31T00:00:00Z"), 10);
        let local: Vec<String> = ticks
            .iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Paris)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(local, ["03-28 02:30", "03-29 03:00", "03-30 02:30"]);
    }

    /// 2026-10-25 in Paris: 03:00 falls back to 02:00, so 02:30 happens twice.
    #[test]
    fn fall_back_runs_a_repeated_tick_once() {
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let ticks = s.ticks_between(utc("2026-10-24T00:00:00Z"), utc("2026-10-27T00:00:00Z"), 10);
        assert_eq!(ticks.len(), 3, "{ticks:?}");
        let on_the_day: Vec<_> = ticks.iter().filter(|t| t.day() == 25).collect();
        assert_eq!(on_the_day.len(), 1);
        // The first 02:30 (still summer time, UTC+2).
        assert_eq!(*on_the_day[0], utc("2026-10-25T00:30:00Z"));
        // An hourly job still runs every real hour through the repeat.
        let hourly = Schedule::parse("0 * * * *", "Europe/Paris").unwrap();
        let ticks =
            hourly.ticks_between(utc("2026-10-24T23:30:00Z"), utc("2026-10-25T02:30:00Z"), 10);
        assert_eq!(ticks.len(), 3, "{ticks:?}");
        assert!(ticks.iter().all(|t| t.minute() == 0));
    }

    /// With a list in the hour field croner follows elapsed time: the 02:30
    /// of a spring-forward day does not run, that of a fall-back day runs
    /// in both hours (as documented on `next_after`).
    #[test]
    fn a_list_of_hours_follows_elapsed_time_across_dst() {
        let s = Schedule::parse("30 2,14 * * *", "Europe/Paris").unwrap();
        let local = |after: &str, until: &str| -> Vec<String> {
            s.ticks_between(utc(after), utc(until), 10)
                .iter()
                .map(|t| {
                    t.with_timezone(&chrono_tz::Europe::Paris)
                        .format("%d %H:%M %Z")
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            local("2026-03-28T22:00:00Z", "2026-03-29T22:00:00Z"),
            ["29 14:30 CEST"]
        );
        assert_eq!(
            local("2026-10-24T22:00:00Z", "2026-10-25T22:00:00Z"),
            ["25 02:30 CEST", "25 02:30 CET", "25 14:30 CET"]
        );
    }

    /// Bisection agrees with walking every tick, across both DST changes
    /// of 2026 in Paris and for sparse and dense schedules.
    #[test]
    fn latest_before_is_the_last_tick_of_a_walk() {
        let cases = [
            ("30 2 * * *", "Europe/Paris"),
            ("0 * * * *", "Europe/Paris"),
            ("*/7 * * * *", "Europe/Paris"),
            ("*/20 * * * * *", "UTC"),
            ("0 0 29 2 *", "UTC"),
            ("* * 1 * *", "UTC"),
        ];
        // Around spring forward and fall back.
        let spans = [
            ("2026-03-27T23:59:59.250Z", "2026-03-29T01:00:00Z"),
            ("2026-03-27T23:59:59.250Z", "2026-03-29T01:00:00.001Z"),
            ("2026-03-27T23:59:59.250Z", "2026-03-30T00:00:00Z"),
            ("2026-10-24T00:00:00Z", "2026-10-25T00:30:00Z"),
            ("2026-10-24T00:00:00Z", "2026-10-25T01:30:00.500Z"),
            ("2026-10-24T00:00:00Z", "2026-10-25T03:00:00Z"),
        ];
        for (expr, tz) in cases {
            let s = Schedule::parse(expr, tz).unwrap();
            for (after, before) in spans {
                let (after, before) = (utc(after), utc(before));
                let walked = s
                    .ticks_between(after, before, usize::MAX)
                    .into_iter()
                    .rfind(|t| *t < before);
                assert_eq!(
                    s.latest_before(after, before),
                    walked,
                    "{expr} {tz} in ({after}, {before})"
                );
            }
        }
        let leap_day = Schedule::parse("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            leap_day.latest_before(utc("2026-01-01T00:00:00Z"), utc("2028-03-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn latest_before_a_long_gap_does_not_walk_it() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        let started = std::time::Instant::now();
        // 315 million ticks.
        let latest = s.latest_before(utc("2016-01-01T00:00:00Z"), utc("2026-01-01T00:00:00.500Z"));
        assert_eq!(latest, Some(utc("2026-01-01T00:00:00Z")));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            s.latest_before(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:00:01Z")),
            None,
            "both ends are left out"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_clear_errors() {
        let err = Schedule::parse("61 * * * *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid cron expression `61 * * * *`: the minute field `61`"),
            "{err}"
        );
        let err = Schedule::parse("0 9 * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown time zone `Mars/Olympus`"), "{err}");
        let err = Schedule::parse("0 9 * * *", "europe/paris")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("did you mean `Europe/Paris`?"), "{err}");
        assert_eq!("all".parse::<CatchUp>().unwrap(), CatchUp::All);
        assert!("some".parse::<CatchUp>().is_err());
    }
}
