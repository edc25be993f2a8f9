//! Names that look like aliases of `Ctx` and `Result` but are not.
use workflow::prelude::*;

struct RequestContext;

type MaybeResult<T> = Option<T>;

#[workflow]
async fn first(_ctx: RequestContext, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn second(_ctx: Ctx, _input: ()) -> MaybeResult<()> {
    Some(())
}

fn main() {}
