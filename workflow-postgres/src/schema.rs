//! Embedded migrations, tracked in a `migrations` table of the store's schema.

use sqlx::{Connection, PgConnection};

/// Migrations in order; version n is `MIGRATIONS[n - 1]`.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_init.sql")];

/// Creates the schema if needed and brings it up to date. Safe when several
/// processes start at once: a session advisory lock keyed by the schema name
/// lets one process migrate while the others wait, then find nothing to do.
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let key = format!("workflow-migrate:{schema}");
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&key)
        .execute(&mut *conn)
        .await?;
    let applied = apply(conn, schema).await;
    // The lock also ends with the session; unlock anyway so a long-lived
    // connection does not keep it.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&key)
        .execute(&mut *conn)
        .await;
    applied?;
    unlocked.map(|_| ())
}

async fn apply(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    // `schema` was checked to be a plain lower-case identifier.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         CREATE TABLE IF NOT EXISTS \"{schema}\".migrations ( \
             version BIGINT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now() \
         )"
    )))
    .execute(&mut *conn)
    .await?;
    let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COALESCE(MAX(version), 0) FROM \"{schema}\".migrations"
    )))
    .fetch_one(&mut *conn)
    .await?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(sqlx::Error::Protocol(format!(
            "schema `{schema}` is at version {version}, newer than this build knows ({}); upgrade the workflow crate",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = n as i64 + 1;
        tracing::info!(schema, migration = version, "applying PostgreSQL migration");
        let mut tx = conn.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL search_path TO \"{schema}\""
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}
