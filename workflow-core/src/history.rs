//! An instance's run history, as [`Engine::history`](crate::Engine::history) returns it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::instance::time;
use crate::status::Status;
use crate::store::EventRow;

/// One entry of an instance's run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEvent {
    /// Orders events.
    pub seq: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: HistoryKind,
    /// The step key, for step events.
    pub step: Option<String>,
    /// The attempt number, for step events.
    pub attempt: Option<u32>,
    /// Detail: the error of a failure, the reason of a suspension or pause,
    /// the name of an event.
    pub message: Option<String>,
    /// For step events: from the step's first attempt to its record.
    pub duration_ms: Option<i64>,
}

impl HistoryEvent {
    /// [`duration_ms`](Self::duration_ms) as a duration (`None` for one
    /// that is not a step's, or negative: written by a clock that stepped
    /// back).
    pub fn duration(&self) -> Option<std::time::Duration> {
        let ms = u64::try_from(self.duration_ms?).ok()?;
        Some(std::time::Duration::from_millis(ms))
    }
}

impl From<EventRow> for HistoryEvent {
    fn from(e: EventRow) -> Self {
        HistoryEvent {
            seq: e.seq,
            at: time(e.at),
            kind: HistoryKind::from(e.kind),
            step: e.step,
            attempt: e.attempt,
            message: e.message,
            duration_ms: e.duration_ms,
        }
    }
}

/// What a [`HistoryEvent`] records.
///
/// Serialized as its snake_case name (`"step_completed"`), the name stores
/// keep; it compares equal to that name too (`event.kind == "created"`).
/// Two kinds are equal when their names are: an [`Other`](Self::Other)
/// that holds a known name equals that kind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HistoryKind {
    /// Started, or created by a schedule or a parent.
    Created,
    /// A worker picked it up (every run, after each suspension or crash).
    Started,
    /// A step recorded its output.
    StepCompleted,
    /// A step failed for good; its error is the message.
    StepFailed,
    /// An attempt of a step failed and will be retried; its error is the
    /// message.
    AttemptFailed,
    /// A step changed the state.
    StateChanged,
    /// The deadline was set, moved or cleared.
    DeadlineChanged,
    /// It stopped running to wait (a sleep, an event, a child, a long
    /// backoff); the reason is the message.
    Suspended,
    /// Paused, by a user or by the engine (the reason is then the message).
    Paused,
    /// Resumed after a pause.
    Resumed,
    /// An event for it was sent; its name is the message.
    EventSent,
    /// A `wait_for_event` step took an event; its name is the message.
    EventReceived,
    /// Its worker let go of it without finishing: a shutdown, or a worker
    /// found dead (then the message says so).
    Released,
    /// It ended with this status.
    Ended(Status),
    /// A kind this version does not know, as stored (written by a newer
    /// version, or by a store of your own).
    Other(String),
}

const NAMED: [(&str, HistoryKind); 13] = [
    ("created", HistoryKind::Created),
    ("started", HistoryKind::Started),
    ("step_completed", HistoryKind::StepCompleted),
    ("step_failed", HistoryKind::StepFailed),
    ("attempt_failed", HistoryKind::AttemptFailed),
    ("state_changed", HistoryKind::StateChanged),
    ("deadline_changed", HistoryKind::DeadlineChanged),
    ("suspended", HistoryKind::Suspended),
    ("paused", HistoryKind::Paused),
    ("resumed", HistoryKind::Resumed),
    ("event_sent", HistoryKind::EventSent),
    ("event_received", HistoryKind::EventReceived),
    ("released", HistoryKind::Released),
];

impl HistoryKind {
    /// The name stores keep: `created`, `step_completed`, … and for
    /// [`Ended`](Self::Ended) the status's (`completed`, `failed`,
    /// `cancelled`, `timed_out`).
    pub fn as_str(&self) -> &str {
        match self {
            HistoryKind::Created => "created",
            HistoryKind::Started => "started",
            HistoryKind::StepCompleted => "step_completed",
            HistoryKind::StepFailed => "step_failed",
            HistoryKind::AttemptFailed => "attempt_failed",
            HistoryKind::StateChanged => "state_changed",
            HistoryKind::DeadlineChanged => "deadline_changed",
            HistoryKind::Suspended => "suspended",
            HistoryKind::Paused => "paused",
            HistoryKind::Resumed => "resumed",
            HistoryKind::EventSent => "event_sent",
            HistoryKind::EventReceived => "event_received",
            HistoryKind::Released => "released",
            HistoryKind::Ended(status) => status.as_str(),
            HistoryKind::Other(name) => name,
        }
    }

    /// Whether it reports the end of the instance.
    pub fn is_end(&self) -> bool {
        // By name, as equality is: an `Other("cancelled")` is an end too.
        self.as_str()
            .parse::<Status>()
            .is_ok_and(|status| status.is_terminal())
    }
}

impl From<&str> for HistoryKind {
    fn from(name: &str) -> Self {
        if let Some((_, kind)) = NAMED.iter().find(|(n, _)| *n == name) {
            return kind.clone();
        }
        match name.parse::<Status>() {
            Ok(status) if status.is_terminal() => HistoryKind::Ended(status),
            _ => HistoryKind::Other(name.to_owned()),
        }
    }
}

impl From<String> for HistoryKind {
    fn from(name: String) -> Self {
        match HistoryKind::from(name.as_str()) {
            HistoryKind::Other(_) => HistoryKind::Other(name),
            known => known,
        }
    }
}

impl fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq for HistoryKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HistoryKind {}

impl std::hash::Hash for HistoryKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for HistoryKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HistoryKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for HistoryKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HistoryKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(HistoryKind::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (name, kind) in &NAMED {
            assert_eq!(HistoryKind::from(*name), *kind);
            assert_eq!(kind.as_str(), *name);
        }
        for status in Status::ALL {
            let kind = HistoryKind::from(status.as_str());
            assert_eq!(kind.is_end(), status.is_terminal(), "{status}");
            assert_eq!(kind.as_str(), status.as_str());
        }
        let odd = HistoryKind::from("compacted".to_owned());
        assert_eq!(odd, HistoryKind::Other("compacted".into()));
        assert_eq!(odd, "compacted");
        assert_eq!(
            serde_json::to_string(&HistoryKind::Ended(Status::TimedOut)).unwrap(),
            r#""timed_out""#
        );
        let back: HistoryKind = serde_json::from_str(r#""step_completed""#).unwrap();
        assert_eq!(back, HistoryKind::StepCompleted);
        assert_eq!(format!("{:<10}|", HistoryKind::Started), "started   |");
        // Equal by name, whichever variant holds it.
        assert_eq!(HistoryKind::Other("created".into()), HistoryKind::Created);
        assert_eq!(
            HistoryKind::Ended(Status::Cancelled),
            HistoryKind::Other("cancelled".into())
        );
        let kinds: std::collections::HashSet<_> =
            [HistoryKind::Created, HistoryKind::Other("created".into())].into();
        assert_eq!(kinds.len(), 1);
        assert!(HistoryKind::Other("cancelled".into()).is_end());
        assert!(!HistoryKind::Paused.is_end());
    }
}
