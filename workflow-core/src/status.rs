//! Instance statuses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an instance is in its life. `Completed`, `Failed`, `Cancelled` and
/// `TimedOut` are terminal: once there, an instance never changes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Queued, or due later.
    Pending,
    /// A worker is running it now.
    InProgress,
    /// Waiting for an event (`ctx.wait_for_event`) or a child workflow
    /// (`ctx.run_child`), until it comes or the wait times out. A sleep or
    /// a retry backoff waits as `Pending`, due at its end.
    Listening,
    /// Paused: by `pause` (a user, the console, the CLI), or by the
    /// engine, which pauses rather than fails where a fix can save the
    /// instance: too many runs in a row ended without recording how (a
    /// crash loop), the handler cannot read what an earlier version
    /// recorded or ended for want of a [`Ctx::data`](crate::Ctx::data)
    /// value, or its row is damaged. Its history says why; its deadline
    /// does not count meanwhile. `resume` lets it run on.
    Paused,
    /// Finished with an output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled: by `cancel`, or with its parent (the parent was
    /// cancelled or timed out).
    Cancelled,
    /// Ran past its deadline.
    TimedOut,
}

impl Status {
    /// Every status, in life-cycle order.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::InProgress,
        Status::Listening,
        Status::Paused,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    /// The statuses an instance can still leave.
    pub const ACTIVE: [Status; 4] = [
        Status::Pending,
        Status::InProgress,
        Status::Listening,
        Status::Paused,
    ];

    /// True for `Completed`, `Failed`, `Cancelled` and `TimedOut`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::TimedOut
        )
    }

    /// The stable lower-case name stored in databases (`in_progress`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Listening => "listening",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so widths and alignment (`{:<12}`) apply.
        f.pad(self.as_str())
    }
}

/// A string that is not one of the [`Status`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}` (expected one of pending, in_progress, listening, paused, completed, failed, cancelled, timed_out)")]
pub struct ParseStatusError(pub String);

impl FromStr for Status {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.as_str().into())
            );
        }
        assert!("done".parse::<Status>().is_err());
        // Widths apply, as to any string: CLI tables align with them.
        assert_eq!(format!("{:<9}|", Status::Failed), "failed   |");
        assert_eq!(format!("{:>8}", Status::Paused), "  paused");
    }

    #[test]
    fn terminal_statuses() {
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                Status::Completed,
                Status::Failed,
                Status::Cancelled,
                Status::TimedOut
            ]
        );
        assert!(Status::ACTIVE.iter().all(|s| !s.is_terminal()));
    }
}
