use workflow::prelude::*;

#[workflow(backoff = "exponential")]
async fn not_a_list(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff())]
async fn empty(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(inital = "1s", jitter = 0.2, cap = "1m"))]
async fn unknown_keys(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = 2.0, factor = 3.0))]
async fn repeated_setting(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = 2.0), jitter = 0.1, backoff(max = "1m"), jitter = 0.2)]
async fn repeated_keys(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(initial = "1s")]
async fn outside_backoff(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
