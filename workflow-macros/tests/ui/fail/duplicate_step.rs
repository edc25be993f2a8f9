use workflow::prelude::*;

#[workflow]
async fn charge_twice(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("charge", || async { Ok::<_, BoxError>(()) })
        .await?;
    ctx.step("notify", || async { Ok::<_, BoxError>(()) })
        .await?;
    ctx.step("charge", || async { Ok::<_, BoxError>(()) })
        .await?;
    Ok(())
}

fn main() {}
