//! A context written bare may be an alias of a `Ctx<State>`: the state is
//! the alias's, not `()`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Progress {
    done: u32,
}

type Ctx = workflow::Ctx<Progress>;

#[workflow]
async fn count(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    ctx.state_mut().done += 1;
    let done = ctx.state().done;
    Ok(done)
}

fn main() {
    let _: fn() -> Option<Progress> = || None::<<Count as Workflow>::State>;
}
