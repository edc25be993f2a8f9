use workflow::prelude::*;

// "fetch#1" would share its record with the second run of "fetch".
#[workflow]
async fn fetch_twice(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    for _ in 0..2 {
        ctx.step("fetch", || async { Ok::<_, BoxError>(()) })
            .await?;
    }
    ctx.step("fetch#1", || async { Ok::<_, BoxError>(()) })
        .await?;
    ctx.step_with("items[0]", StepOptions::no_retry(), || async {
        Ok::<_, BoxError>(())
    })
    .await?;
    ctx.step("", || async { Ok::<_, BoxError>(()) }).await?;
    ctx.step("charge\0", || async { Ok::<_, BoxError>(()) })
        .await?;
    // A wait's name is a step name too.
    ctx.sleep("cool@down", std::time::Duration::from_secs(1))
        .await?;
    Ok(())
}

fn main() {}
