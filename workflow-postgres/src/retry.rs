//! Riding out lost connections, restarts and deadlocks.
//!
//! A transaction that failed before its `COMMIT` was sent left nothing
//! behind (the server rolls back what a dead connection had begun), so it
//! is run again on a fresh connection while the retry budget lasts. A
//! failure during `COMMIT` (or a lone statement) may have committed: only
//! idempotent operations are run again; the rest report the error, which
//! the engine handles (the run is released and resumes later).

use std::time::{Duration, Instant};

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub err: sqlx::Error,
    /// The error came while committing: the writes may have landed.
    pub maybe_committed: bool,
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure {
            err,
            maybe_committed: false,
        }
    }
}

/// One attempt's result.
pub(crate) type Attempt<T> = Result<T, Failure>;

/// Commits, marking a failure as possibly committed unless the server
/// answered it with an error (which it sends only after rolling back).
pub(crate) async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Attempt<()> {
    tx.commit().await.map_err(|err| Failure {
        maybe_committed: !matches!(err, sqlx::Error::Database(_)),
        err,
    })
}

/// Marks the error of a lone (autocommit) write as possibly committed.
pub(crate) fn autocommit(err: sqlx::Error) -> Failure {
    Failure {
        err,
        maybe_committed: true,
    }
}

/// Errors that say "the connection or the server went away" or "run me
/// again" (deadlock, serialization failure), not "this is wrong".
pub(crate) fn transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: admin/crash shutdown,
            // cannot connect now; 53300: too many connections;
            // 40001/40P01: serialization failure, deadlock.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// The retry schedule of one operation.
pub(crate) struct Retry {
    started: Instant,
    budget: Duration,
    delay: Duration,
    idempotent: bool,
}

impl Retry {
    pub(crate) fn new(budget: Duration, idempotent: bool) -> Self {
        Retry {
            started: Instant::now(),
            budget,
            delay: Duration::from_millis(20),
            idempotent,
        }
    }

    /// Whether to run the operation again after `failure`; waits first.
    pub(crate) async fn again(&mut self, failure: &Failure, op: &'static str) -> bool {
        let retryable = transient(&failure.err) && (self.idempotent || !failure.maybe_committed);
        if !retryable || self.started.elapsed() + self.delay > self.budget {
            return false;
        }
        tracing::debug!(op, error = %failure.err, retry_in = ?self.delay, "PostgreSQL unavailable; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_millis(500));
        true
    }
}

/// Runs `$attempt` (an expression evaluating to a future of
/// `Attempt<T>`, re-evaluated on each try) under the store's retry budget,
/// giving `Result<T, StoreError>`.
macro_rules! retrying {
    ($store:expr, $op:expr, idempotent = $idem:expr, $attempt:expr) => {{
        let mut retry = $crate::retry::Retry::new($store.retry_for, $idem);
        loop {
            match $attempt.await {
                Ok(value) => break Ok(value),
                Err(failure) => {
                    if !retry.again(&failure, $op).await {
                        break Err(workflow_core::StoreError::backend(failure.err));
                    }
                }
            }
        }
    }};
}
pub(crate) use retrying;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_transient_and_bad_sql_is_not() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(transient(&io));
        assert!(transient(&sqlx::Error::PoolTimedOut));
        assert!(!transient(&sqlx::Error::RowNotFound));
        assert!(!transient(&sqlx::Error::PoolClosed));
    }

    #[tokio::test]
    async fn maybe_committed_writes_are_not_retried_unless_idempotent() {
        let failure = || Failure {
            err: sqlx::Error::PoolTimedOut,
            maybe_committed: true,
        };
        let budget = Duration::from_secs(5);
        assert!(!Retry::new(budget, false).again(&failure(), "t").await);
        assert!(Retry::new(budget, true).again(&failure(), "t").await);
        let clean = Failure::from(sqlx::Error::PoolTimedOut);
        assert!(Retry::new(budget, false).again(&clean, "t").await);
        assert!(!Retry::new(Duration::ZERO, true).again(&clean, "t").await);
    }
}
