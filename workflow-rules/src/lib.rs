//! What `#[workflow]` checks at compile time and the engine checks again
//! at run time, in one place, so both accept the same things and explain a
//! mistake the same way: cron expressions ([`cron`]), step names
//! ([`step_name`]), durations ([`duration`]) and the shape of time zone
//! names ([`timezone`]).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cron;
pub mod duration;
pub mod step_name;
pub mod timezone;

/// The longest step name, event name, dedup key, tag name and tag value
/// accepted, in bytes. Every store indexes them, and PostgreSQL's B-tree
/// refuses entries much over 2 KiB: a longer step name could never be
/// recorded, and its run would be retried for ever.
pub const MAX_KEY_BYTES: usize = 512;
