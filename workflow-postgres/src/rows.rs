//! Decoding rows into store types. A row that does not decode is reported as
//! `StoreError::Corrupt` naming its instance, never as a panic.

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::Row;
use workflow_core::store::{EventRow, InstanceRow, StepRow};
use workflow_core::{InstanceId, Status, StoreError};

/// The columns `instance_row` reads, in order. Tags are JSONB in the table
/// and read back as text, like every other JSON document.
pub(crate) const COLUMNS: &str =
    "id, workflow, status, input, output, error, state, tags::text AS tags, dedup_key, \
     created_at, updated_at, started_at, finished_at, run_at, deadline_at, runs, parent_id, \
     wait_event, wait_child, retry_key, retry_attempts, pause_requested";

/// [`COLUMNS`] without the JSON documents (`ListQuery::summaries`).
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, workflow, status, 'null'::text AS input, NULL::text AS output, error, NULL::text AS state, \
     tags::text AS tags, dedup_key, \
     created_at, updated_at, started_at, finished_at, run_at, deadline_at, runs, parent_id, \
     wait_event, wait_child, retry_key, retry_attempts, pause_requested";

/// The columns `step_row` reads.
pub(crate) const STEP_COLUMNS: &str =
    "key, output, error, state, attempts, started_at, finished_at";

fn corrupt(id: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: InstanceId::from(id),
        message: message.to_string(),
    }
}

pub(crate) fn instance_row(row: &PgRow) -> Result<InstanceRow, StoreError> {
    let id: String = row.try_get("id").map_err(StoreError::backend)?;
    let get = |e: sqlx::Error| corrupt(&id, e);
    let status: String = row.try_get("status").map_err(get)?;
    let status: Status = status.parse().map_err(|e| corrupt(&id, e))?;
    let tags: String = row.try_get("tags").map_err(get)?;
    let tags: BTreeMap<String, String> =
        serde_json::from_str(&tags).map_err(|e| corrupt(&id, format!("tags: {e}")))?;
    Ok(InstanceRow {
        workflow: row.try_get("workflow").map_err(get)?,
        status,
        input: row.try_get("input").map_err(get)?,
        output: row.try_get("output").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        tags,
        key: row.try_get("dedup_key").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
        run_at: row.try_get("run_at").map_err(get)?,
        deadline_at: row.try_get("deadline_at").map_err(get)?,
        runs: row.try_get("runs").map_err(get)?,
        parent: row
            .try_get::<Option<String>, _>("parent_id")
            .map_err(get)?
            .map(InstanceId::from_string),
        wait_event: row.try_get("wait_event").map_err(get)?,
        wait_child: row
            .try_get::<Option<String>, _>("wait_child")
            .map_err(get)?
            .map(InstanceId::from_string),
        retry: {
            let key: Option<String> = row.try_get("retry_key").map_err(get)?;
            let attempts: Option<i64> = row.try_get("retry_attempts").map_err(get)?;
            key.map(|k| {
                (
                    k,
                    u32::try_from(attempts.unwrap_or(0).max(0)).unwrap_or(u32::MAX),
                )
            })
        },
        pause_requested: row.try_get("pause_requested").map_err(get)?,
        id: InstanceId::from_string(id),
    })
}

pub(crate) fn step_row(id: &str, row: &PgRow) -> Result<StepRow, StoreError> {
    let get = |e: sqlx::Error| corrupt(id, format!("step: {e}"));
    let attempts: i64 = row.try_get("attempts").map_err(get)?;
    Ok(StepRow {
        key: row.try_get("key").map_err(get)?,
        output: row.try_get("output").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
    })
}

pub(crate) fn event_row(id: &InstanceId, row: &PgRow) -> Result<EventRow, StoreError> {
    let get = |e: sqlx::Error| corrupt(id.as_str(), format!("event: {e}"));
    let attempt: Option<i64> = row.try_get("attempt").map_err(get)?;
    Ok(EventRow {
        seq: row.try_get("seq").map_err(get)?,
        instance: id.clone(),
        at: row.try_get("at").map_err(get)?,
        kind: row.try_get("kind").map_err(get)?,
        step: row.try_get("step").map_err(get)?,
        attempt: attempt.map(|a| u32::try_from(a).unwrap_or(u32::MAX)),
        message: row.try_get("message").map_err(get)?,
        duration_ms: row.try_get("duration_ms").map_err(get)?,
    })
}

/// The `total` column a tail query's rows carry (no rows: nothing at all).
pub(crate) fn tail_total(id: &InstanceId, rows: &[PgRow]) -> Result<u64, StoreError> {
    let Some(row) = rows.first() else {
        return Ok(0);
    };
    let total: i64 = row
        .try_get("total")
        .map_err(|e| corrupt(id.as_str(), format!("count: {e}")))?;
    Ok(u64::try_from(total).unwrap_or(0))
}
