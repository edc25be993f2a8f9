use std::time::Duration;

use workflow::prelude::*;

#[workflow]
async fn approve(ctx: Ctx, users: Vec<String>) -> workflow::Result<()> {
    ctx.step("approval", || async { Ok::<_, BoxError>(()) })
        .await?;
    let _decision: bool = ctx.wait_for_event("approval", None).await?;
    ctx.sleep("cool-down", Duration::from_secs(1)).await?;
    ctx.sleep("cool-down", Duration::from_secs(2)).await?;
    // Two waits for one event may share its name: senders use it.
    let _shipped: bool = ctx.wait_for_event("shipped", None).await?;
    let _shipped_again: bool = ctx.wait_for_event("shipped", None).await?;
    // A name a loop repeats is the loop's alone.
    for _user in &users {
        ctx.step("email", || async { Ok::<_, BoxError>(()) }).await?;
    }
    ctx.step("email", || async { Ok::<_, BoxError>(()) }).await?;
    Ok(())
}

fn main() {}
