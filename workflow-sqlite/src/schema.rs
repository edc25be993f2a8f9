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
