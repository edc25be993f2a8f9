//! Retention: every worker of an engine built with
//! [`EngineBuilder::retention`](crate::EngineBuilder::retention) purges, now
//! and then, the instances that ended longer ago than that.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::now_millis;

/// The longest pause between two purges: a retention of months need not
/// be exact to the minute, and an idle store is not scanned more often.
const MAX_EVERY: Duration = Duration::from_secs(3600);
/// The shortest: a retention of seconds (tests, demos) still purges.
const MIN_EVERY: Duration = Duration::from_secs(1);
/// The first purge comes at a random moment of this window (or of the
/// period, if shorter): workers started together do not purge together,
/// and a restarted process catches up soon.
const FIRST_WITHIN: Duration = Duration::from_secs(60);

/// How long a worker waits between purges for a retention of `keep`: a
/// tenth of it, from a second to an hour.
pub(crate) fn period(keep: Duration) -> Duration {
    (keep / 10).clamp(MIN_EVERY, MAX_EVERY)
}

/// Purges what ended more than `keep` ago until `stop` is cancelled.
pub(crate) async fn run(engine: Engine, keep: Duration, stop: CancellationToken) {
    let period = period(keep);
    let mut nap = period.min(FIRST_WITHIN).mul_f64(crate::step::random_unit());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.cancelled() => return,
        }
        nap = period;
        // A retention too long to subtract keeps everything.
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let ended_before = now_millis().saturating_sub(keep_ms);
        match engine.purge_ended(ended_before, None, Some(&stop)).await {
            Ok(0) => tracing::debug!(?keep, "retention: nothing to purge"),
            Ok(deleted) => {
                tracing::info!(deleted, ?keep, "retention: purged ended instances")
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?period, "retention: purging ended instances failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_every_tenth_of_the_retention_within_bounds() {
        assert_eq!(period(Duration::from_millis(10)), MIN_EVERY);
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(period(Duration::from_secs(30 * 86_400)), MAX_EVERY);
        assert_eq!(period(Duration::MAX), MAX_EVERY);
    }
}
