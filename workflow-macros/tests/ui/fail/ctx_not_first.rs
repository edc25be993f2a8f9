use workflow::prelude::*;

#[workflow]
async fn swapped(_input: String, _ctx: Ctx) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn no_ctx(_input: String, _other: u32) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
