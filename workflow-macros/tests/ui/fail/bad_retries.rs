use workflow::prelude::*;

#[workflow(retries = 0)]
async fn never_tried(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(retries = 3u32)]
async fn suffixed(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(timeout = 10m)]
async fn unquoted(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(retries = -1)]
async fn negative(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(retries = 5_000_000_000)]
async fn too_many(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
