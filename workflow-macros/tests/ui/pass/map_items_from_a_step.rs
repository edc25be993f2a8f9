//! `map`'s items built from a recorded step, as `Ctx::map` advises: only
//! the closure runs inside the map's steps.
use workflow::prelude::*;

#[workflow]
async fn charge_all(ctx: Ctx, _input: ()) -> workflow::Result<Vec<u32>> {
    let charged = ctx
        .map(
            "charge",
            ctx.step("load-orders", || async { Ok::<_, BoxError>(vec![1_u32, 2]) })
                .await?,
            4,
            |order: u32| async move { Ok::<_, BoxError>(order * 10) },
        )
        .await?;
    Ok(charged)
}

fn main() {
    assert_eq!(ChargeAll::STEPS, ["load-orders"]);
}
