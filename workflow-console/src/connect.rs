//! Opening a database by URL without the user's workflow code.
//!
//! The facade's `UrlConnector` cannot be used here (the facade depends on
//! this crate), so the console carries its own, over the store crates it was
//! built with.

use std::sync::Arc;

use async_trait::async_trait;
use workflow_core::{Connector, Durability, Engine, EngineBuilder, Error, Store};

/// The database the CLI opens when given none: the facade's default.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://workflows.db";

/// Opens the stores this crate was built with, by URL scheme: `sqlite:`
/// (feature `sqlite`, default) and `postgres:`/`postgresql:` (feature
/// `postgres`). `memory:` is refused: a memory store cannot be reached
/// from another process.
///
/// It never creates or migrates a schema: a database is opened only when
/// an engine of this build has set it up (see `SqliteOptions::migrate`),
/// so a mistyped URL is an error rather than a new, empty store, and a
/// newer console does not upgrade the schema under running engines.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleConnector;

#[async_trait]
impl Connector for ConsoleConnector {
    async fn connect(
        &self,
        url: Option<&str>,
        durability: Durability,
    ) -> workflow_core::Result<Arc<dyn Store>> {
        let url = url.unwrap_or(DEFAULT_DATABASE_URL);
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let store = workflow_sqlite::SqliteStore::connect_with(
                    url,
                    workflow_sqlite::SqliteOptions::new()
                        .durability(durability)
                        .migrate(false),
                )
                .await?;
                Ok(Arc::new(store))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let store = workflow_postgres::PgStore::connect_with(
                    url,
                    workflow_postgres::PgOptions::new()
                        .durability(durability)
                        .migrate(false),
                )
                .await?;
                Ok(Arc::new(store))
            }
            // A memory store lives inside the process that made it: the
            // CLI's own would be new and empty, and say nothing is there.
            "memory" => Err(Error::Config(format!(
                "`{url}` is a store inside one process, which no other process can open: \
                 give the URL of the SQLite file or PostgreSQL database your engines use"
            ))),
            _ => {
                let _ = durability;
                Err(workflow_core::unsupported_url(
                    url,
                    KNOWN_SCHEMES,
                    |feature| {
                        format!(
                            "the `{feature}` feature of `workflow-console` \
                         (cargo install --path workflow-console --features {feature})"
                        )
                    },
                ))
            }
        }
    }
}

const KNOWN_SCHEMES: &[&str] = &[
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
];

/// Opens the database at `url` as a pure client: an [`Engine`] with no
/// workflows registered and no worker, that reads instances and the
/// definitions other engines recorded, and starts and steers instances for
/// those engines' workers to run.
///
/// A `sqlite:` URL naming a file that does not exist is an error rather than
/// a new empty database: a typo in `--db` should not look like "no workflows".
pub async fn connect(url: &str) -> workflow_core::Result<Engine> {
    if let Some(path) = sqlite_file(url) {
        if !std::path::Path::new(&path).exists() {
            return Err(Error::Config(format!(
                "no database at `{path}` (from `{url}`); pass the URL your engines use, e.g. --db sqlite://path/to/workflows.db"
            )));
        }
    }
    EngineBuilder::new()
        .connector(ConsoleConnector)
        .database_url(url)
        .build()
        .await
}

/// The file a `sqlite:` URL names, if it names one (not `:memory:`).
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file("sqlite://workflows.db").as_deref(),
            Some("workflows.db")
        );
        assert_eq!(
            sqlite_file("sqlite:///tmp/a.db?mode=rwc").as_deref(),
            Some("/tmp/a.db")
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://x/y"), None);
    }

    #[tokio::test]
    async fn missing_file_and_unknown_scheme_are_clear_errors() {
        let err = connect("sqlite:///definitely/not/here.db")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no database at `/definitely/not/here.db`"),
            "{err}"
        );
        let err = connect("mysql://x").await.unwrap_err().to_string();
        assert!(
            err.contains("unsupported database URL scheme `mysql`"),
            "{err}"
        );
        let err = connect("memory:").await.unwrap_err().to_string();
        assert!(err.contains("inside one process"), "{err}");
    }

    /// A URL whose store is behind a feature names the feature and how to
    /// install with it; no message repeats a password.
    #[tokio::test]
    async fn urls_of_stores_not_compiled_in_name_the_feature() {
        if !cfg!(feature = "postgres") {
            let err = connect("postgres://app:s3cret@db.internal/app")
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("--features postgres"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = connect("mysql://app:s3cret@db/app")
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        let err = connect("workflows.db").await.unwrap_err().to_string();
        assert!(err.contains("write `sqlite://workflows.db`"), "{err}");
    }
}
