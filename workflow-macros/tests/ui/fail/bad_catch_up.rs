use workflow::prelude::*;

#[workflow(schedule = "0 9 * * *", catch_up = "some")]
async fn report(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(catch_up = "all")]
async fn unscheduled(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
