//! Names that look like aliases of `Ctx` and `Result` but are not, and a
//! context-like name the macro does not take for one.
use workflow::prelude::*;

struct SessionCtx;

struct RequestContext;

type MaybeResult<T> = Option<T>;

#[workflow]
async fn first(_ctx: SessionCtx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn second(_ctx: Ctx, _input: ()) -> MaybeResult<()> {
    Some(())
}

#[workflow]
async fn third(_ctx: RequestContext, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
