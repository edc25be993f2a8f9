//! `PgOptions::migrate(false)`, as the console connects: only a schema at
//! this build's version is used, and nothing is created or upgraded.

mod common;

use sqlx::Connection;
use workflow_core::store::*;
use workflow_postgres::{PgOptions, PgStore};

async fn schema_exists(url: &str, schema: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn without_migrating_only_a_current_schema_is_used() {
    let Some(url) = common::url("without_migrating_only_a_current_schema_is_used") else {
        return;
    };
    let (absent, current) = (
        common::fresh_schema("absent"),
        common::fresh_schema("current"),
    );
    let open = |schema: &str| {
        let url = common::with_schema(&url, schema);
        async move { PgStore::connect_with(&url, PgOptions::new().migrate(false).listen(false)).await }
    };

    let err = open(&absent).await.unwrap_err().to_string();
    assert!(err.contains("holds no workflow store"), "{err}");
    assert!(!schema_exists(&url, &absent).await, "no schema is created");

    let new = common::pending("wf", now_millis());
    let id = new.id.clone();
    {
        let store = PgStore::connect(&common::with_schema(&url, &current))
            .await
            .unwrap();
        store.create(new, None).await.unwrap();
    }
    let store = open(&current).await.unwrap();
    assert!(store.get(&id).await.unwrap().is_some());
    drop(store);

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let newest: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT MAX(version) FROM \"{current}\".migrations"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM \"{current}\".migrations WHERE version = {newest}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let err = open(&current).await.unwrap_err().to_string();
    assert!(err.contains("older than this build's"), "{err}");
    let after: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT MAX(version) FROM \"{current}\".migrations"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(after, newest - 1, "an older schema is left for its engines");

    common::drop_schemas(&url, &[absent, current]).await;
}
