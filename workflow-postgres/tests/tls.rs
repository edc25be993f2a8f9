//! TLS to the server: with `sslmode=require` in the URL, every connection
//! the store opens is encrypted (the store is built with rustls, feature
//! `tls`, on by default). Without TLS support sqlx refuses such a URL, and
//! with `sslmode=prefer` (its default) it falls back to plaintext.

mod common;

use sqlx::Connection;
use workflow_core::store::*;
use workflow_postgres::PgStore;

#[tokio::test]
async fn sslmode_require_encrypts_every_connection_of_the_store() {
    let test = "sslmode_require_encrypts_every_connection_of_the_store";
    let Some(url) = common::url(test) else {
        return;
    };
    let schema = common::fresh_schema("tls");
    // Named so that the server's views tell this test's sessions apart.
    let app = format!("workflow_tls_{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let tls_url = format!("{url}{sep}sslmode=require&application_name={app}");
    let store = match PgStore::connect(&common::with_schema(&tls_url, &schema)).await {
        Ok(store) => store,
        Err(err) => {
            let message = err.to_string();
            assert!(
                !message.contains("without TLS support"),
                "the store was built without TLS: {message}"
            );
            // A server with `ssl = off` cannot be reached this way at all;
            // any other failure (auth, a missing database) is the test's.
            assert!(
                message.contains("does not support TLS"),
                "connecting with sslmode=require failed: {message}"
            );
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: the server does not accept TLS ({message})"
            );
            return;
        }
    };
    let new = common::pending("wf", now_millis());
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().id, id);

    let mut observer = sqlx::PgConnection::connect(&url).await.unwrap();
    let sessions: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(&app)
    .fetch_all(&mut observer)
    .await
    .unwrap();
    assert!(!sessions.is_empty(), "no session of the store was found");
    for (ssl, version) in &sessions {
        assert!(ssl, "a session of the store is not encrypted: {sessions:?}");
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLS")),
            "{version:?}"
        );
    }
    drop(store);
    common::drop_schemas(&url, &[schema]).await;
}
