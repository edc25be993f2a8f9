//! Embedded migrations, tracked in a `migrations` table of the store's schema.

use sqlx::{Connection, PgConnection};

/// Migrations in order; version n is `MIGRATIONS[n - 1]`.
///
/// Each runs in the one migration transaction while older workers may
/// still run against the schema (a rolling upgrade): it must hold no lock
/// on `instances` for long. A `CREATE INDEX` on it (as 0002 and 0006 do)
/// blocks every claim, heartbeat and step of the fleet until it is built,
/// which on a large table can outlast the leases; a new one belongs in a
/// `CREATE INDEX CONCURRENTLY` run outside the transaction. Adding a
/// nullable column (0007) takes the lock only for a moment.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_dedup_index_by_key.sql"),
    include_str!("../migrations/0003_event_keys.sql"),
    include_str!("../migrations/0004_interrupted_runs.sql"),
    include_str!("../migrations/0005_steps_by_instance_seq.sql"),
    include_str!("../migrations/0006_runnable_by_workflow.sql"),
    include_str!("../migrations/0007_event_key_tokens.sql"),
];

/// Creates the schema if needed and brings it up to date, in one
/// transaction under a transaction-level advisory lock keyed by the schema
/// name: when several processes start at once, one migrates while the
/// others wait, then find nothing to do. A session lock would be taken on
/// one server connection and released on another behind a pooler in
/// transaction mode (PgBouncer), leaking it; and one transaction leaves
/// the schema as it was if any migration fails.
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let key = format!("workflow-migrate:{schema}");
    // READ COMMITTED whatever the server's default: each statement after
    // the lock sees what the process that held it committed. Under
    // REPEATABLE READ the snapshot taken before the wait would see its
    // `migrations` table but not its rows, and migrate again.
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    // A migration may wait for another process's, and build an index over
    // a large table: longer than the store's `statement_timeout`.
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    apply(&mut tx, schema).await?;
    tx.commit().await
}

async fn apply(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let applied = match applied(conn, schema).await? {
        Some(version) => version,
        None => {
            create_tracking(conn, schema).await?;
            0
        }
    };
    if applied > MIGRATIONS.len() {
        return Err(sqlx::Error::Protocol(format!(
            "schema `{schema}` is at version {applied}, newer than this build knows ({}); upgrade the workflow crate",
            MIGRATIONS.len()
        )));
    }
    if applied < MIGRATIONS.len() {
        // For the rest of the transaction, which only migrates.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL search_path TO \"{schema}\""
        )))
        .execute(&mut *conn)
        .await?;
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = n as i64 + 1;
        tracing::info!(schema, migration = version, "applying PostgreSQL migration");
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether `schema` holds a workflow store at exactly this build's version,
/// read without writing anything: `Ok(Err(why))` when it does not, `Err`
/// when it could not be read.
pub(crate) async fn check_current(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<Result<(), String>, sqlx::Error> {
    let current = MIGRATIONS.len();
    Ok(match applied(conn, schema).await? {
        None | Some(0) => Err(
            "it holds no workflow store: check the URL and the schema, or start an engine on it first"
                .to_owned(),
        ),
        Some(version) if version > current => Err(format!(
            "it is at version {version}, newer than this build's ({current}): \
             use the workflow crate of the engines that wrote it"
        )),
        Some(version) if version < current => Err(format!(
            "it is at version {version}, older than this build's ({current}), and this \
             store was opened without migrating: connect once with an engine of this \
             build, which migrates it, or use the workflow crate of the engines that wrote it"
        )),
        Some(_) => Ok(()),
    })
}

/// How many migrations the schema has, or `None` when it has no
/// `migrations` table yet. Reads only: a role without DDL rights can
/// connect to a schema that is up to date.
async fn applied(conn: &mut PgConnection, schema: &str) -> Result<Option<usize>, sqlx::Error> {
    // `schema` was checked to be a plain lower-case identifier.
    let table = format!("\"{schema}\".migrations");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COALESCE(MAX(version), 0) FROM {table}"
    )))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(usize::try_from(version).unwrap_or(0)))
}

/// Creates the schema, unless it exists, and its `migrations` table.
/// PostgreSQL checks the CREATE privilege on the database before it looks
/// whether a schema exists, so `CREATE SCHEMA IF NOT EXISTS` would fail for
/// a role that owns a schema made for it but may not create others.
async fn create_tracking(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".migrations ( \
             version BIGINT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now() \
         )"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
