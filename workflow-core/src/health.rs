//! What an engine's workers in this process are up against, for a health
//! endpoint: how many run, which of their store calls keep failing, and
//! whether the store refuses writes until a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::worker::lock;

/// A snapshot of an engine's workers in this process
/// ([`Engine::health`](crate::Engine::health)): read from what they
/// already do (each claims at least every `poll_interval`, and renews its
/// leases every second), so taking one costs no store call, and a probe
/// may take one as often as it likes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Workers of this engine running in this process: started, and not
    /// ended (one shutting down counts until it has).
    pub workers: usize,
    /// Store calls failing now, oldest outage first: claims, lease
    /// renewals, the look for the next due instance, a schedule's look.
    /// Each is listed from its first failure until the call works again,
    /// or until it is no longer made (no lease left to renew): its loop
    /// retries a failing call within seconds, so one whose last failure is
    /// older than 15 s (or three `poll_interval`s) is over.
    pub failing: Vec<Failing>,
    /// Why the store refuses every write until the process restarts
    /// ([`StoreError::Unusable`](crate::StoreError::Unusable)), once a
    /// worker met it (its workers stopped then).
    pub unusable: Option<String>,
}

impl Health {
    /// Whether work goes on here: a worker runs, and none of its store
    /// calls is failing. For a process that runs workers: a liveness
    /// probe wants `workers > 0` and `unusable` unset (a restart mends
    /// those), a readiness probe this. A process that only starts
    /// workflows (its workers run elsewhere) has no worker to report on.
    pub fn is_healthy(&self) -> bool {
        self.workers > 0 && self.failing.is_empty() && self.unusable.is_none()
    }
}

/// One store call that keeps failing ([`Health::failing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failing {
    /// What fails: `claiming work`, `renewing leases`, `looking for the
    /// next due instance`, `checking the schedule of `name``...
    pub what: String,
    /// When it first failed, in this outage.
    pub since: DateTime<Utc>,
    /// Failures so far in this outage.
    pub failures: u64,
    /// The latest failure's error.
    pub error: String,
}

/// The engine's record of its workers, which [`Engine::health`] reads.
#[derive(Default)]
pub(crate) struct Board {
    pub(crate) workers: AtomicUsize,
    next: AtomicU64,
    /// Each failing call, with when it last failed.
    failing: Mutex<BTreeMap<u64, (Failing, Instant)>>,
    unusable: Mutex<Option<String>>,
}

impl Board {
    /// The report, leaving out failures older than `stale`.
    pub(crate) fn health(&self, stale: Duration) -> Health {
        let mut failing: Vec<Failing> = lock(&self.failing)
            .values()
            .filter(|(_, last)| last.elapsed() <= stale)
            .map(|(failing, _)| failing.clone())
            .collect();
        failing.sort_by_key(|f| f.since);
        Health {
            workers: self.workers.load(Ordering::SeqCst),
            failing,
            unusable: lock(&self.unusable).clone(),
        }
    }

    /// A number for a new outage's entry.
    pub(crate) fn entry(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes a failure of entry `n` (what it is, and the error).
    pub(crate) fn failed(&self, n: u64, what: &str, error: String) {
        let mut failing = lock(&self.failing);
        let (entry, last) = failing.entry(n).or_insert_with(|| {
            let failing = Failing {
                what: what.to_owned(),
                since: Utc::now(),
                failures: 0,
                error: String::new(),
            };
            (failing, Instant::now())
        });
        entry.failures += 1;
        entry.error = error;
        *last = Instant::now();
    }

    /// Entry `n` works again (or its loop ended).
    pub(crate) fn over(&self, n: u64) {
        lock(&self.failing).remove(&n);
    }

    pub(crate) fn unusable(&self, why: &str) {
        lock(&self.unusable).get_or_insert_with(|| why.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure no loop repeated (the call stopped being made: no lease
    /// left to renew) drops out once stale; it stayed for ever, and the
    /// engine read unhealthy while it worked.
    #[test]
    fn a_failure_not_repeated_drops_out_once_stale() {
        let board = Board::default();
        let n = board.entry();
        board.failed(n, "renewing leases", "down".into());
        board.failed(n, "renewing leases", "still down".into());
        let health = board.health(Duration::from_secs(60));
        assert_eq!(health.failing.len(), 1);
        assert_eq!(health.failing[0].failures, 2);
        assert_eq!(health.failing[0].error, "still down");
        std::thread::sleep(Duration::from_millis(20));
        assert!(board.health(Duration::from_millis(10)).failing.is_empty());
        board.failed(n, "renewing leases", "again".into());
        assert_eq!(board.health(Duration::from_millis(10)).failing.len(), 1);
        board.over(n);
        assert!(board.health(Duration::from_secs(60)).failing.is_empty());
    }
}
