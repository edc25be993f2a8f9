//! Embedded migrations, tracked in SQLite's own `user_version`.

use sqlx::{Connection, SqliteConnection};

/// Migrations in order; `user_version` is the number applied.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_fewer_instance_indexes.sql"),
    include_str!("../migrations/0003_step_history_in_steps.sql"),
    include_str!("../migrations/0004_run_events_in_instances.sql"),
    include_str!("../migrations/0005_dedup_index_by_key.sql"),
    include_str!("../migrations/0006_event_keys.sql"),
    include_str!("../migrations/0007_interrupted_runs.sql"),
    include_str!("../migrations/0008_runnable_by_workflow.sql"),
];

/// Brings the schema up to date. Safe when several processes start at once:
/// `BEGIN IMMEDIATE` takes the write lock before reading the version.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    // Looked at first without the write lock: a file already current (every
    // open but the first of a new build) need not wait for another
    // process's writes, nor fail after the busy timeout behind a long one.
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if usize::try_from(version).is_ok_and(|v| v == MIGRATIONS.len()) {
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(sqlx::Error::Protocol(format!(
            "database schema version {version} is newer than this build knows ({}); upgrade the workflow crate",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tracing::info!(migration = n + 1, "applying SQLite migration");
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await?;
    }
    if applied < MIGRATIONS.len() {
        // PRAGMA takes no bind parameters; the value is our own constant.
        let pragma = format!("PRAGMA user_version = {}", MIGRATIONS.len());
        sqlx::query(sqlx::AssertSqlSafe(pragma))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Whether the file at `path` holds a workflow store at exactly this
/// build's schema version, read without writing anything (the file is
/// opened read-only and no pragma is set): `Ok(Err(why))` when it does
/// not, `Err` when it could not be read.
pub(crate) fn check_current(path: &std::path::Path) -> Result<Result<(), String>, String> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|err| err.to_string())?;
    let read = |conn: &rusqlite::Connection| -> rusqlite::Result<(bool, i64)> {
        let instances = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'instances')",
            [],
            |r| r.get(0),
        )?;
        let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok((instances, version))
    };
    let (instances, version) = match read(&conn) {
        Ok(read) => read,
        // Not a database at all (a text file): the wrong file.
        Err(rusqlite::Error::SqliteFailure(err, _))
            if err.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Ok(Err("it is not a SQLite database".to_owned()));
        }
        Err(err) => return Err(err.to_string()),
    };
    let current = MIGRATIONS.len() as i64;
    let wrong = if !instances || version == 0 {
        "it is not a workflow database (it has no workflow tables): \
         check the path, or start an engine on it first"
            .to_owned()
    } else if version > current {
        format!(
            "its schema is at version {version}, newer than this build's ({current}): \
             use the workflow crate of the engines that wrote it"
        )
    } else if version < current {
        format!(
            "its schema is at version {version}, older than this build's ({current}), \
             and this store was opened without migrating: open it once with \
             an engine of this build, which migrates it, or use the workflow crate \
             of the engines that wrote it"
        )
    } else {
        return Ok(Ok(()));
    };
    Ok(Err(wrong))
}
