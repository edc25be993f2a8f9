//! A context or a `Result` under another name: an alias, or an import
//! renamed, whose name ends in `Ctx` and `Result` (`RequestContext` is
//! refused: see `fail/not_an_alias.rs`).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;
use workflow::Ctx as WfCtx;

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Progress {
    done: u32,
}

#[derive(Debug)]
struct AppError;

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("app error")
    }
}

impl std::error::Error for AppError {}

type AppResult<T> = std::result::Result<T, AppError>;
type OrderCtx = workflow::Ctx<Progress>;

#[workflow]
async fn renamed(_ctx: WfCtx, _input: ()) -> AppResult<String> {
    Ok("done".to_owned())
}

#[workflow]
async fn aliased(ctx: OrderCtx, _input: ()) -> AppResult<u32> {
    ctx.state_mut().done += 1;
    let done = ctx.state().done;
    Ok(done)
}

fn main() {
    let _: fn() -> Option<String> = || None::<<Renamed as Workflow>::Output>;
    let _: fn() -> Option<u32> = || None::<<Aliased as Workflow>::Output>;
    let _: fn() -> Option<Progress> = || None::<<Aliased as Workflow>::State>;
}
