//! A name may repeat after a branch that always leaves (`return`, `let ..
//! else`, `bail!`, anywhere in an `else if` chain): only one of the two
//! calls runs. Methods of other receivers
//! named like `ctx` methods (a client's `batch`) are not steps.
use workflow::prelude::*;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct LoadInput {
    cached: bool,
    id: Option<u32>,
}

struct Client;

impl Client {
    async fn batch(&self, table: &str) -> Result<u32, BoxError> {
        Ok(table.len() as u32)
    }
}

#[workflow]
async fn load(ctx: Ctx, input: LoadInput) -> Result<u32, BoxError> {
    let client = Client;
    if input.cached {
        let n = ctx
            .step("load", || async { client.batch("cache").await })
            .await?;
        return Ok(n);
    }
    let Some(id) = input.id else {
        return Ok(0);
    };
    let n = ctx
        .step("load", || async { client.batch("users").await })
        .await?;
    Ok(n + id + client.batch("users").await?)
}

/// anyhow's, as a crate would have it.
macro_rules! bail {
    ($($why:tt)*) => {
        return Err(format!($($why)*).into())
    };
}

#[workflow]
async fn refund(ctx: Ctx, amount: u32) -> Result<u32, BoxError> {
    if amount > 1_000 {
        ctx.step("notify", || async { workflow::Ok(()) }).await?;
        bail!("{amount} needs a person to approve it");
    }
    ctx.step("notify", || async { workflow::Ok(()) }).await?;
    Ok(amount)
}

#[workflow]
async fn route(ctx: Ctx, amount: u32) -> Result<u32, BoxError> {
    if amount == 0 {
        return Ok(0);
    } else if amount > 1_000 {
        ctx.step("notify", || async { workflow::Ok(()) }).await?;
        return Ok(1);
    } else if amount > 100 {
        ctx.step("review", || async { workflow::Ok(()) }).await?;
    }
    ctx.step("notify", || async { workflow::Ok(()) }).await?;
    Ok(amount)
}

fn main() {
    assert_eq!(Load::STEPS, ["load"]);
    assert_eq!(Refund::STEPS, ["notify"]);
    assert_eq!(Route::STEPS, ["notify", "review"]);
}
