//! What `#[workflow]` checks at compile time and the engine checks again
//! at run time, in one place, so both accept the same things and explain a
//! mistake the same way: cron expressions ([`cron`]) and step names
//! ([`step_name`]).
#![warn(missing_docs)]

pub mod cron;
pub mod step_name;
