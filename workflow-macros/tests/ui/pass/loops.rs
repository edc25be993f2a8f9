//! A call inside a loop or a closure may repeat its own name: the runtime
//! numbers the runs. `STEPS` lists each literal name once.
use workflow::prelude::*;

#[workflow]
async fn batch(ctx: Ctx, items: Vec<u32>) -> workflow::Result<u32> {
    let mut total = 0;
    let items: Vec<u32> = ctx
        .step("load", || {
            let items = items.clone();
            async move { Ok::<_, BoxError>(items) }
        })
        .await?;
    for item in &items {
        total += ctx
            .step("process-item", || async move { Ok::<_, BoxError>(*item) })
            .await?;
        total += ctx
            .step("check-item", || async move { Ok::<_, BoxError>(*item) })
            .await?;
    }
    let mut tries = 0;
    while tries < 3 {
        ctx.step("poll", || async { Ok::<_, BoxError>(()) }).await?;
        tries += 1;
    }
    loop {
        ctx.step("poll-again", || async { Ok::<_, BoxError>(()) }).await?;
        break;
    }
    let _futures: Vec<_> = items
        .iter()
        .map(|item| ctx.step("mapped", move || async move { Ok::<_, BoxError>(*item) }))
        .collect();
    ctx.step("done", || async { Ok::<_, BoxError>(()) }).await?;
    Ok(total)
}

fn main() {
    assert_eq!(Batch::NAME, "batch");
    assert_eq!(
        Batch::STEPS,
        ["load", "process-item", "check-item", "poll", "poll-again", "mapped", "done"]
    );
}
