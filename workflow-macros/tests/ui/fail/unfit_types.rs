use std::borrow::Cow;

use workflow::prelude::*;

// Inside the types too: an `impl Trait` or a borrow anywhere in what the
// workflow persists is named where it is written.
#[workflow]
async fn tags(_ctx: Ctx, _input: Vec<impl Into<String>>) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn pair(_ctx: Ctx, _input: (&str, u32)) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn note(_ctx: Ctx, _input: Option<Cow<'_, str>>) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn summary(_ctx: Ctx, _input: ()) -> workflow::Result<impl serde::Serialize> {
    Ok(1)
}

fn main() {}
