//! The scheduler: turns cron ticks into instances. Every worker runs one;
//! each tick becomes one instance whose dedup key is the tick's time, so any
//! number of engines on one store fire each tick exactly once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Scheduled};
use crate::error::Result;
use crate::id::InstanceId;
use crate::schedule::CatchUp;
use crate::status::Status;
use crate::store::{now_millis, Created, Millis, NewInstance};

/// How often the scheduler records how far it looked when nothing fired.
const MARK_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(engine: Engine, stop: CancellationToken) {
    let inner = &engine.inner;
    if inner.scheduled.is_empty() {
        return;
    }
    let every = inner.config.poll_interval.min(Duration::from_secs(1));
    let mut marked: HashMap<&'static str, tokio::time::Instant> = HashMap::new();
    loop {
        let mut next_due: Option<DateTime<Utc>> = None;
        for scheduled in &inner.scheduled {
            match fire_due(&engine, scheduled, every, &mut marked).await {
                Ok(Some(next)) => next_due = Some(next_due.map_or(next, |due| due.min(next))),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(workflow = scheduled.workflow, error = %err, "schedule check failed")
                }
            }
        }
        let until_due = next_due
            .and_then(|next| (next - inner.clock.now()).to_std().ok())
            .unwrap_or(Duration::ZERO);
        let nap = if until_due.is_zero() {
            every
        } else {
            until_due.min(every)
        };
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Fires the ticks of one schedule that are due; returns its next tick.
async fn fire_due(
    engine: &Engine,
    s: &Scheduled,
    every: Duration,
    marked: &mut HashMap<&'static str, tokio::time::Instant>,
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
        return Ok(s.schedule.next_after(now));
    };
    let from = mark
        .checked_until
        .max(mark.last_tick.unwrap_or(Millis::MIN));
    let from = DateTime::from_timestamp_millis(from).unwrap_or(now);
    let due = s.schedule.ticks_between(from, now, 1_000);
    if due.is_empty() {
        let stale = marked
            .get(s.workflow)
            .is_none_or(|at| at.elapsed() >= MARK_EVERY);
        if stale {
            store.advance_schedule(s.workflow, now_ms, None).await?;
            marked.insert(s.workflow, tokio::time::Instant::now());
        }
        return Ok(s.schedule.next_after(now));
    }
    // A running engine looks at least every `every` and records that at
    // least every MARK_EVERY, so a tick older than that came due while no
    // engine ran: it was missed.
    let window = (every * 2).max(Duration::from_secs(1)) + MARK_EVERY;
    let window = chrono::Duration::from_std(window).unwrap_or_default();
    let (missed, on_time): (Vec<_>, Vec<_>) = due.iter().copied().partition(|t| *t < now - window);
    let fire: Vec<DateTime<Utc>> = match s.catch_up {
        CatchUp::All => due.clone(),
        CatchUp::Latest if on_time.is_empty() => missed.last().copied().into_iter().collect(),
        CatchUp::Latest | CatchUp::None => on_time,
    };
    if fire.len() < due.len() {
        tracing::info!(
            workflow = s.workflow,
            skipped = due.len() - fire.len(),
            catch_up = ?s.catch_up,
            "skipping ticks missed while no engine ran"
        );
    }
    let mut fired = None;
    for tick in fire {
        let id = fire_tick(engine, s, tick).await?;
        fired = Some((tick.timestamp_millis(), id));
    }
    store.advance_schedule(s.workflow, now_ms, fired).await?;
    marked.insert(s.workflow, tokio::time::Instant::now());
    Ok(s.schedule.next_after(now))
}

/// Starts the instance of one tick, unless another engine already did.
async fn fire_tick(engine: &Engine, s: &Scheduled, tick: DateTime<Utc>) -> Result<InstanceId> {
    let inner = &engine.inner;
    let created_at = now_millis();
    let tick_text = tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let new = NewInstance {
        id: InstanceId::at(created_at),
        workflow: s.workflow.to_owned(),
        input: s.input.clone(),
        tags: [("schedule".to_owned(), tick_text.clone())].into(),
        key: Some(format!("schedule:{tick_text}")),
        created_at,
        run_at: created_at,
        deadline_at: Some(crate::store::millis_after(created_at, s.timeout)),
        parent: None,
    };
    Ok(match inner.store.create(new, Some(&Status::ALL)).await? {
        Created::New(row) => {
            tracing::info!(workflow = s.workflow, tick = %tick_text, id = %row.id, "schedule fired");
            inner.wake.notify_one();
            row.id
        }
        Created::Existing(row) => row.id,
    })
}
