//! Retention: while an engine built with
//! [`EngineBuilder::retention`](crate::EngineBuilder::retention) runs a
//! worker, a task of its own purges, now and then, the instances of its
//! workflows that ended longer ago than that.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::Millis;

/// The shortest retention: a schedule's tick must still be found by its
/// key when a second engine fires it, and a caller must find a result it
/// reads a moment after the end. So purges come at least 6 s apart.
pub(crate) const MIN_KEEP: Duration = Duration::from_secs(60);
/// The longest pause between two purges: a retention of months need not
/// be exact to the minute, and an idle store is not scanned more often.
const MAX_EVERY: Duration = Duration::from_secs(3600);
/// The first purge comes at a random moment of this window (or of the
/// period, if shorter): processes started together do not purge
/// together, and a restarted one catches up soon.
const FIRST_WITHIN: Duration = Duration::from_secs(60);

/// The engine's retention task and how many of its workers run.
#[derive(Default)]
pub(crate) struct Retainer {
    workers: usize,
    task: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// A running worker, counted by its engine's [`Retainer`] until
/// [`Membership::leave`], or until dropped (a worker task that panicked or
/// was aborted), so the last worker to go always stops the task.
pub(crate) struct Membership {
    engine: Engine,
    counted: bool,
}

/// A worker of `engine` started: the first starts the retention task.
pub(crate) fn worker_started(engine: &Engine) -> Membership {
    let inner = &engine.inner;
    let mut retainer = inner.retention.lock().unwrap_or_else(|p| p.into_inner());
    retainer.workers += 1;
    if let (Some(keep), None) = (inner.config.retention, &retainer.task) {
        let stop = inner.shutdown.child_token();
        let task = tokio::spawn(run(engine.clone(), keep, stop.clone()));
        retainer.task = Some((stop, task));
    }
    Membership {
        engine: engine.clone(),
        counted: true,
    }
}

impl Membership {
    /// Uncounts the worker; the last one cancels the task and returns it.
    fn uncount(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if !std::mem::replace(&mut self.counted, false) {
            return None;
        }
        let mut retainer = self
            .engine
            .inner
            .retention
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        retainer.workers = retainer.workers.saturating_sub(1);
        if retainer.workers > 0 {
            return None;
        }
        let (stop, task) = retainer.task.take()?;
        stop.cancel();
        Some(task)
    }

    /// The worker stopped: the last one waits for the task (it stops
    /// between two batches) up to `within`, then aborts it, so nothing is
    /// deleted after the last `shutdown` returns, even when a purge waits
    /// on a store that does not answer.
    pub(crate) async fn leave(mut self, within: std::time::Duration) {
        if let Some(mut task) = self.uncount() {
            if tokio::time::timeout(within, &mut task).await.is_err() {
                tracing::warn!("the retention task did not stop in time; aborted");
                task.abort();
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Cancelled, the task ends at its next batch.
        self.uncount();
    }
}

/// How long to wait between purges for a retention of `keep`: a tenth of
/// it, at most an hour.
pub(crate) fn period(keep: Duration) -> Duration {
    (keep.max(MIN_KEEP) / 10).min(MAX_EVERY)
}

/// What ended before this (ms since the epoch) goes, at `now`.
pub(crate) fn cutoff(now: Millis, keep: Duration) -> Millis {
    // A retention too long to subtract keeps everything.
    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// Purges what ended more than `keep` ago until `stop` is cancelled.
pub(crate) async fn run(engine: Engine, keep: Duration, stop: CancellationToken) {
    let period = period(keep);
    let mut workflows: Vec<&'static str> = engine.inner.workflows.keys().copied().collect();
    workflows.sort_unstable();
    let mut nap = period.min(FIRST_WITHIN).mul_f64(crate::step::random_unit());
    // A clock moved by hand (a test's) purges as soon as it jumps: a test
    // that moves it past the retention sees the purge without waiting
    // out real time.
    let mut clock_changes = engine.inner.clock.changes();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = crate::schedule::clock_jumped(&mut clock_changes) => {}
            _ = stop.cancelled() => return,
        }
        nap = period;
        let ended_before = cutoff(engine.inner.now(), keep);
        for workflow in &workflows {
            if stop.is_cancelled() {
                return;
            }
            // A store that panics fails this purge, not the task.
            let purge = engine.purge_ended(ended_before, Some(workflow), Some(&stop));
            match AssertUnwindSafe(purge).catch_unwind().await {
                Ok(Ok(0)) => tracing::debug!(workflow, ?keep, "retention: nothing to purge"),
                Ok(Ok(deleted)) => {
                    tracing::info!(
                        workflow,
                        deleted,
                        ?keep,
                        "retention: purged ended instances"
                    )
                }
                Ok(Err(err)) => tracing::warn!(
                    workflow,
                    error = %err,
                    retry_in = ?period,
                    "retention: purging ended instances failed"
                ),
                Err(_) => tracing::error!(
                    workflow,
                    retry_in = ?period,
                    "retention: purging ended instances panicked"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_every_tenth_of_the_retention_within_bounds() {
        assert_eq!(period(Duration::from_millis(10)), Duration::from_secs(6));
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(period(Duration::from_secs(30 * 86_400)), MAX_EVERY);
        assert_eq!(period(Duration::MAX), MAX_EVERY);
    }

    #[test]
    fn the_cutoff_is_keep_before_now() {
        let now = 1_800_000_000_000;
        assert_eq!(cutoff(now, Duration::from_secs(60)), now - 60_000);
        assert_eq!(cutoff(now, Duration::ZERO), now);
        assert!(
            cutoff(now, Duration::MAX) < 0,
            "nothing ended that long ago"
        );
    }
}
