//! No attribute keys, no doc comment, a two-argument `Result`, a bare `Ctx`
//! written through its full path, and patterns as parameters.
use std::time::Duration;

use workflow::prelude::*;

#[derive(Debug)]
pub struct MyError;

impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}

impl std::error::Error for MyError {}

#[workflow]
pub async fn add_numbers(_ctx: workflow::Ctx, (a, b): (i64, i64)) -> Result<i64, MyError> {
    if a < 0 {
        return Err(MyError);
    }
    Ok(a + b)
}

fn main() {
    assert_eq!(AddNumbers::NAME, "add_numbers");
    assert_eq!(AddNumbers::DESCRIPTION, "");
    assert_eq!(AddNumbers::TIMEOUT, Duration::from_secs(300));
    assert_eq!(AddNumbers::STEPS, [] as [&str; 0]);
    fn types<W: Workflow<Input = (i64, i64), Output = i64, State = ()>>(_: W) {}
    types(AddNumbers);
}
