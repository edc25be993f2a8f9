use workflow::prelude::*;

#[workflow(nmae = "processOrder")]
async fn process_order(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(max_backoff = "30s")]
async fn retry_a_lot(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
