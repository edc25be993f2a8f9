use workflow::prelude::*;

#[workflow(nmae = "processOrder")]
async fn process_order(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(max_backoff = "30s")]
async fn retry_a_lot(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// Keys of other libraries' attributes point to ours.
#[workflow(cron = "0 9 * * *", tz = "Europe/Paris", retry = 3)]
async fn nightly(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
