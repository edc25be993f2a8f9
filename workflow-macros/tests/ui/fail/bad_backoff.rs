use workflow::prelude::*;

#[workflow(backoff(initial = "soon"))]
async fn bad_duration(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(initial = 200ms))]
async fn unquoted_duration(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = 0.5))]
async fn shrinking(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = 1e400))]
async fn infinite(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = "2"))]
async fn quoted_factor(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(initial = "10s", max = "1s"))]
async fn initial_above_max(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(initial = "10s"))]
async fn initial_above_default_max(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(jitter = 1.5)]
async fn too_much_jitter(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(jitter = -0.1)]
async fn negative_jitter(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(retries = 1, backoff(initial = "1s", max = "10s"), jitter = 0.2)]
async fn never_retried(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
