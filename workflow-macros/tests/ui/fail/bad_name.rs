use workflow::prelude::*;

#[workflow(name = "process order")]
async fn process_order(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(name = "")]
async fn unnamed(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow("processOrder", timeout = "1h")]
async fn positional(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
