use workflow::prelude::*;

#[workflow(schedule = "@daily", timezone = "CEST")]
async fn daily(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A time zone only means something for a schedule.
#[workflow(timezone = "Europe/Berlin")]
async fn unscheduled(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
