use workflow::prelude::*;

#[workflow(timeout = "1m", name = "once", timeout = "2m")]
async fn twice(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
