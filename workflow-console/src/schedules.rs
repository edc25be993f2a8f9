//! Schedules as tools see them: those the workers recorded in the store,
//! and this engine's own for workflows not recorded yet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use workflow_core::{Engine, Schedule, ScheduleInfo};

/// Every schedule on the engine's store, sorted by workflow.
///
/// The schedules in force are those the workers recorded when they
/// started (their `schedule`, `timezone` and catch-up), with the next tick
/// from now and the last tick fired from the store's mark. This engine's
/// own registrations ([`Engine::schedules`]) stand in only for workflows
/// not recorded yet: an engine that only starts instances (an API server
/// with the console mounted) may register a workflow its workers run on
/// another schedule, or none, and would show the wrong one. A recorded
/// schedule that no longer parses is left out, with a warning.
pub async fn all_schedules(engine: &Engine) -> workflow_core::Result<Vec<ScheduleInfo>> {
    let local: BTreeMap<String, ScheduleInfo> = engine
        .schedules()
        .await?
        .into_iter()
        .map(|s| (s.workflow.clone(), s))
        .collect();
    let recorded = engine.definitions().await?;
    let mut out = BTreeMap::new();
    let now = Utc::now();
    for def in &recorded {
        let Some(expression) = def.schedule.as_deref() else {
            continue;
        };
        // The same as this engine's: its own answer, by its clock.
        if let Some(own) = local.get(&def.name).filter(|own| {
            (own.expression.as_str(), own.timezone.as_str(), own.catch_up)
                == (expression, def.timezone.as_str(), def.catch_up)
        }) {
            out.insert(def.name.clone(), own.clone());
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
                workflow: def.name.clone(),
                expression: schedule.expression().to_owned(),
                timezone: schedule.timezone().to_owned(),
                catch_up: def.catch_up,
                next_fire: schedule.next_after(now),
                last_fired,
                last_instance,
            },
        );
    }
    for (name, own) in local {
        if !recorded.iter().any(|def| def.name == name) {
            out.insert(name, own);
        }
    }
    Ok(out.into_values().collect())
}

fn time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}
