use workflow::prelude::*;

#[workflow]
async fn nested(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("outer", || async {
        ctx.step("inner", || async { Ok::<_, BoxError>(()) })
            .await?;
        Ok::<_, BoxError>(())
    })
    .await?;
    Ok(())
}

fn main() {}
