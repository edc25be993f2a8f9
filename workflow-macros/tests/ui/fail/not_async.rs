use workflow::prelude::*;

#[workflow]
fn sync_handler(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {
    // The function is still emitted: no "cannot find function" here.
    let _ = sync_handler;
}
