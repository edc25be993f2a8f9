//! Riding out lost connections, restarts and deadlocks.
//!
//! A transaction that failed before its `COMMIT` was sent left nothing
//! behind (the server rolls back what a dead connection had begun), so it
//! is run again on a fresh connection while the retry budget lasts. A
//! failure during `COMMIT` (or a lone statement) may have committed: only
//! idempotent operations are run again; the rest report the error, which
//! the engine handles (the run is released and resumes later).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// answered it with an error it sends only after rolling back.
pub(crate) async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Attempt<()> {
    tx.commit().await.map_err(|err| Failure {
        maybe_committed: commit_may_have_landed(&err),
        err,
    })
}

/// Whether a `COMMIT` that failed with `err` may have committed. An error
/// the server itself answers (a deferred constraint, a serialization
/// failure) comes after its rollback; but a pooler in between (PgBouncer)
/// answers a server connection lost mid-`COMMIT` with an error too, of
/// class 08 (connection exception), as a server shutting down answers
/// with 57P0x, and an internal error (XX) says nothing either way.
fn commit_may_have_landed(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("XX")
        }),
        _ => true,
    }
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

/// When the store last gave up waiting for the server's answer.
///
/// sqlx pings every connection handed back to the pool, with no time
/// limit: one given up on because its peer went silent (a failover, a
/// NAT that forgot the flow) would keep its pool slot until TCP gives up,
/// about 15 minutes. The pool's `after_release` hook reads this to ping
/// connections released just after such a give-up within a bound, and
/// close the one that does not answer, without a second round trip on
/// every release otherwise.
#[derive(Debug)]
pub(crate) struct GaveUp {
    since: Instant,
    /// Milliseconds after `since`, plus one; 0 for never.
    last: AtomicU64,
}

/// How long after a give-up released connections are pinged first.
const PING_AFTER_GIVING_UP_FOR: Duration = Duration::from_secs(10);

/// How long that ping may take before its connection is closed.
const RELEASE_PING_WITHIN: Duration = Duration::from_secs(2);

impl GaveUp {
    pub(crate) fn new() -> Self {
        GaveUp {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let at = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(at + 1, Ordering::Relaxed);
    }

    fn recent(&self) -> bool {
        match self.last.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
                now.saturating_sub(at - 1) <= PING_AFTER_GIVING_UP_FOR.as_millis() as u64
            }
        }
    }

    /// The pool's `after_release` check: a connection released soon after
    /// a give-up must answer a ping within [`RELEASE_PING_WITHIN`], or it
    /// is closed. (Over TLS, sqlx's close waits to read the peer's
    /// goodbye, so the slot still waits for TCP to give up.)
    pub(crate) async fn check_released(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<bool, sqlx::Error> {
        if !self.recent() {
            return Ok(true);
        }
        match tokio::time::timeout(RELEASE_PING_WITHIN, sqlx::Connection::ping(conn)).await {
            Ok(pinged) => pinged.map(|()| true),
            Err(_) => {
                tracing::warn!("closing a PostgreSQL connection that stopped answering");
                Ok(false)
            }
        }
    }
}

/// Runs one attempt, giving up on it when the server has not answered
/// within `within`: the connection is silent (TCP does not notice a
/// peer gone without a reset for minutes). A write given up on may have
/// committed, so only idempotent operations run again.
pub(crate) async fn answered<T>(
    within: Duration,
    gave_up: &GaveUp,
    attempt: impl Future<Output = Attempt<T>>,
) -> Attempt<T> {
    let mut attempt = std::pin::pin!(attempt);
    tokio::select! {
        biased;
        done = &mut attempt => done,
        () = tokio::time::sleep(within) => {
            // Before the attempt, and the connection it holds, is dropped
            // (at the end of this function), so that its release sees it.
            gave_up.mark();
            Err(Failure {
                err: sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("PostgreSQL did not answer within {within:?} (request_timeout)"),
                )),
                maybe_committed: true,
            })
        }
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
            match $crate::retry::answered($store.request_timeout, &$store.gave_up, $attempt).await {
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

    /// A server error with a SQLSTATE, as the server or a pooler sends it.
    #[derive(Debug)]
    struct Answered(&'static str);

    impl std::fmt::Display for Answered {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Answered {}

    impl sqlx::error::DatabaseError for Answered {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_commit_a_pooler_answered_with_a_lost_connection_may_have_landed() {
        let answered = |code| sqlx::Error::Database(Box::new(Answered(code)));
        // PgBouncer: "server conn crashed?"; a shutdown; an internal error.
        for code in ["08P01", "08006", "57P01", "XX000"] {
            assert!(commit_may_have_landed(&answered(code)), "{code}");
        }
        // Sent by the server after its rollback.
        for code in ["40001", "23505", "40P01"] {
            assert!(!commit_may_have_landed(&answered(code)), "{code}");
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(commit_may_have_landed(&io));
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
