use workflow::prelude::*;

#[workflow(timeout = "ten minutes")]
async fn slow(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(timeout = "0s")]
async fn instant(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(timeout = "10M")]
async fn months(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
