use workflow::prelude::*;

#[workflow]
async fn nested(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("outer", || async {
        ctx.step("inner", || async { Ok::<_, BoxError>(()) })
            .await?;
        Ok::<_, BoxError>(())
    })
    .await?;
    // The items of `map`, `for_each` and `batch` run as steps too.
    let c = &ctx;
    ctx.map("resize", vec![1, 2], 2, move |image: i32| async move {
        c.step("upload", move || async move { Ok::<_, BoxError>(image) })
            .await
    })
    .await?;
    // However the closure is built.
    ctx.step("wrapped", {
        let c = &ctx;
        move || async move {
            c.sleep("nap", std::time::Duration::from_secs(1)).await?;
            Ok::<_, BoxError>(())
        }
    })
    .await?;
    Ok(())
}

fn main() {}
