use workflow::prelude::*;

#[workflow(schedule = "61 * * * *")]
async fn hourly(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
