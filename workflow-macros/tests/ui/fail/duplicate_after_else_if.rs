//! A step in an `else if` condition runs whenever the branches before it
//! were not taken, leaving or not: its name may not repeat after the chain,
//! nor in the body it guards.
use workflow::prelude::*;

#[workflow]
async fn check(ctx: Ctx, amount: u32) -> workflow::Result<u32> {
    if amount == 0 {
        return Ok(0);
    } else if ctx.step("flag", || async { workflow::Ok(amount > 9) }).await? {
        ctx.step("flag", || async { workflow::Ok(true) }).await?;
        return Ok(1);
    }
    ctx.step("flag", || async { workflow::Ok(false) }).await?;
    Ok(amount)
}

fn main() {}
