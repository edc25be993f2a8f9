//! Shared by the PostgreSQL tests: the server URL, fresh schemas, clean-up.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

/// The variable naming the test server.
pub const URL_VAR: &str = "WORKFLOW_TEST_POSTGRES_URL";

/// The test server's URL, or `None` (after saying so) when unset: the
/// calling test then passes without running.
pub fn url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to stderr: the test harness would swallow `println!`.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{test}: skipped: {URL_VAR} not set");
            None
        }
    }
}

/// A new instance of `workflow`, created and due at `at`.
pub fn pending(
    workflow: &str,
    at: workflow_core::store::Millis,
) -> workflow_core::store::NewInstance {
    workflow_core::store::NewInstance {
        id: workflow_core::InstanceId::at(at),
        workflow: workflow.to_owned(),
        input: "{}".into(),
        tags: Default::default(),
        key: None,
        created_at: at,
        run_at: at,
        deadline_at: None,
        parent: None,
    }
}

/// A schema name no other test or run uses.
pub fn fresh_schema(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{tag}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// `url` with `?schema=` (or `&schema=`) appended.
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// Drops the schemas a test created.
pub async fn drop_schemas(url: &str, schemas: &[String]) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return;
    };
    for schema in schemas {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Waits until `count_sql` (a `SELECT count(*)` of server activity) counts
/// something: another session reached the point a test needs it at (a
/// lock wait, a sleep). Fails with `never` after 10 s.
pub async fn until_counted(pool: &sqlx::PgPool, count_sql: &'static str, never: &str) {
    let started = std::time::Instant::now();
    loop {
        let counted: i64 = sqlx::query_scalar(count_sql).fetch_one(pool).await.unwrap();
        if counted > 0 {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{never}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
