use workflow::prelude::*;

/// Its struct would be `Send`, hiding the marker trait in this module.
#[workflow]
async fn send(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// Its struct would be `Default`, hiding the trait.
#[workflow(name = "default")]
async fn default(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// Its struct would be `Workflow`, hiding the trait of `workflow::prelude`.
#[workflow(name = "workflow")]
async fn workflow(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// Its struct would be `Status`, hiding the prelude's enum.
#[workflow(name = "status")]
async fn status(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
