//! What `#[workflow]` checks at compile time and the engine checks again
//! at run time, in one place, so both accept the same things and explain a
//! mistake the same way: cron expressions ([`cron`]), step names
//! ([`step_name`]) and the shape of time zone names ([`timezone`]).
#![warn(missing_docs)]

pub mod cron;
pub mod step_name;
pub mod timezone;
