//! Decoding rows into store types. A row that does not decode is reported as
//! `StoreError::Corrupt` naming its instance, never as a panic.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use workflow_core::store::{EventRow, InstanceRow, StepRow};
use workflow_core::{InstanceId, Status, StoreError};

/// The columns `instance_row` reads, in order.
pub(crate) const COLUMNS: &str =
    "id, workflow, status, input, output, error, state, tags, dedup_key, \
     created_at, updated_at, started_at, finished_at, run_at, deadline_at, runs, parent_id, \
     wait_event, wait_child, retry_key, retry_attempts, pause_requested";

/// [`COLUMNS`] without the JSON documents (`ListQuery::summaries`).
pub(crate) const SUMMARY_COLUMNS: &str =
    "id, workflow, status, 'null' AS input, NULL AS output, error, NULL AS state, tags, dedup_key, \
     created_at, updated_at, started_at, finished_at, run_at, deadline_at, runs, parent_id, \
     wait_event, wait_child, retry_key, retry_attempts, pause_requested";

pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    StoreError::backend(err)
}

/// Bytes stored as an id, as a message shows them: UTF-8 as itself, else
/// as the SQL literal that finds the row (`x'ff01'`), which a lossy
/// decoding would not.
pub(crate) fn shown_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

fn corrupt(id: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: InstanceId::from(id),
        message: message.to_string(),
    }
}

/// An instance row as read, before its text columns are checked.
pub(crate) struct RawInstance {
    pub id: String,
    pub workflow: String,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub state: Option<String>,
    pub tags: String,
    pub key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub run_at: i64,
    pub deadline_at: Option<i64>,
    pub runs: i64,
    pub parent: Option<String>,
    pub wait_event: Option<String>,
    pub wait_child: Option<String>,
    pub retry_key: Option<String>,
    pub retry_attempts: Option<i64>,
    pub pause_requested: i64,
}

/// Checks the columns that can be corrupt (status, tags).
pub(crate) fn decode_instance(raw: RawInstance) -> Result<InstanceRow, StoreError> {
    let status: Status = raw.status.parse().map_err(|e| corrupt(&raw.id, e))?;
    let tags: BTreeMap<String, String> =
        serde_json::from_str(&raw.tags).map_err(|e| corrupt(&raw.id, format!("tags: {e}")))?;
    Ok(InstanceRow {
        workflow: raw.workflow,
        status,
        input: raw.input,
        output: raw.output,
        error: raw.error,
        state: raw.state,
        tags,
        key: raw.key,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
        started_at: raw.started_at,
        finished_at: raw.finished_at,
        run_at: raw.run_at,
        deadline_at: raw.deadline_at,
        runs: raw.runs,
        parent: raw.parent.map(InstanceId::from_string),
        wait_event: raw.wait_event,
        wait_child: raw.wait_child.map(InstanceId::from_string),
        retry: raw.retry_key.map(|k| {
            (
                k,
                u32::try_from(raw.retry_attempts.unwrap_or(0).max(0)).unwrap_or(u32::MAX),
            )
        }),
        pause_requested: raw.pause_requested != 0,
        id: InstanceId::from_string(raw.id),
    })
}

pub(crate) fn instance_row(row: &SqliteRow) -> Result<InstanceRow, StoreError> {
    let id: String = match row.try_get("id") {
        Ok(id) => id,
        // An id that is not text (a blob, bytes that are not UTF-8) is
        // that row's damage, not the database's: as a backend error it
        // failed every page it fell on, and it sorts first.
        Err(err) => {
            let bytes: Vec<u8> = row.try_get("id").map_err(backend)?;
            return Err(corrupt(&shown_bytes(&bytes), format!("id: {err}")));
        }
    };
    let get = |e: sqlx::Error| corrupt(&id, e);
    let raw = RawInstance {
        workflow: row.try_get("workflow").map_err(get)?,
        status: row.try_get("status").map_err(get)?,
        input: row.try_get("input").map_err(get)?,
        output: row.try_get("output").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        tags: row.try_get("tags").map_err(get)?,
        key: row.try_get("dedup_key").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        started_at: row.try_get("started_at").map_err(get)?,
        finished_at: row.try_get("finished_at").map_err(get)?,
        run_at: row.try_get("run_at").map_err(get)?,
        deadline_at: row.try_get("deadline_at").map_err(get)?,
        runs: row.try_get("runs").map_err(get)?,
        parent: row.try_get("parent_id").map_err(get)?,
        wait_event: row.try_get("wait_event").map_err(get)?,
        wait_child: row.try_get("wait_child").map_err(get)?,
        retry_key: row.try_get("retry_key").map_err(get)?,
        retry_attempts: row.try_get("retry_attempts").map_err(get)?,
        pause_requested: row.try_get("pause_requested").map_err(get)?,
        id: id.clone(),
    };
    decode_instance(raw)
}

pub(crate) fn step_row(id: &InstanceId, row: &SqliteRow) -> Result<StepRow, StoreError> {
    let get = |e: sqlx::Error| corrupt(id.as_str(), format!("step: {e}"));
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

pub(crate) fn event_row(id: &InstanceId, row: &SqliteRow) -> Result<EventRow, StoreError> {
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
