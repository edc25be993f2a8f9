use workflow::prelude::*;

// Every mistake is reported in one build.
#[workflow(schedule = "0 25 * * *", timeout = "soon", colour = "blue")]
fn report(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
