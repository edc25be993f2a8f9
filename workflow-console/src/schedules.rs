//! Schedules as tools see them: those of the workflows registered with this
//! engine, plus those recorded in the store by engines elsewhere.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use workflow_core::{Engine, Schedule, ScheduleInfo};

/// Every schedule on the engine's store, sorted by workflow.
///
/// `engine.schedules()` reports only the workflows registered with this
/// engine, which for the CLI (a pure client) is none; the others come from
/// the definitions engines recorded: their `schedule` and `timezone`, the
/// next tick from now, and the last tick fired from the store's mark.
/// A recorded schedule that no longer parses is left out, with a warning.
pub async fn all_schedules(engine: &Engine) -> workflow_core::Result<Vec<ScheduleInfo>> {
    let mut out: BTreeMap<String, ScheduleInfo> = engine
        .schedules()
        .await?
        .into_iter()
        .map(|s| (s.workflow.clone(), s))
        .collect();
    let now = Utc::now();
    for def in engine.definitions().await? {
        let Some(expression) = def.schedule.as_deref() else {
            continue;
        };
        if out.contains_key(&def.name) {
            continue;
        }
        let schedule = match Schedule::parse(expression, &def.timezone) {
            Ok(schedule) => schedule,
            Err(err) => {
                tracing::warn!(workflow = %def.name, error = %err, "recorded schedule does not parse");
                continue;
            }
        };
        let mark = engine.store().schedule_mark(&def.name).await?;
        let (last_fired, last_instance) = match mark {
            Some(mark) => (mark.last_tick.and_then(time), mark.last_instance),
            None => (None, None),
        };
        out.insert(
            def.name.clone(),
            ScheduleInfo {
                workflow: def.name,
                expression: schedule.expression().to_owned(),
                timezone: schedule.timezone().to_owned(),
                catch_up: def.catch_up,
                next_fire: schedule.next_after(now),
                last_fired,
                last_instance,
            },
        );
    }
    Ok(out.into_values().collect())
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}
