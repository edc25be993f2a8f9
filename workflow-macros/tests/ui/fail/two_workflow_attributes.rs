use workflow::prelude::*;

#[workflow(name = "a")]
#[workflow(name = "b")]
async fn twice(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(description = "  ")]
async fn undescribed(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
