use workflow::prelude::*;

#[workflow(nmae = "processOrder")]
async fn process_order(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff = "exponential")]
async fn retry_a_lot(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
