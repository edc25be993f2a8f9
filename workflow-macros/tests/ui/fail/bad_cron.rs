use workflow::prelude::*;

#[workflow(schedule = "every morning at nine")]
async fn morning(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
