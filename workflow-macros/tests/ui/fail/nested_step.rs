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
    // And with their own options; the items (built outside) are not a step.
    let images = vec![1, 2];
    ctx.for_each_with("store", StepOptions::retries(2), images, 2, move |image: i32| async move {
        c.sleep("settle", std::time::Duration::from_millis(image as u64)).await?;
        Ok::<_, BoxError>(())
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
