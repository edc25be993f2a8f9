use std::time::Duration;

use workflow::prelude::*;

#[workflow]
async fn approve(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("approval", || async { Ok::<_, BoxError>(()) })
        .await?;
    let _decision: bool = ctx.wait_for_event("approval", None).await?;
    ctx.sleep("cool-down", Duration::from_secs(1)).await?;
    ctx.sleep("cool-down", Duration::from_secs(2)).await?;
    Ok(())
}

fn main() {}
