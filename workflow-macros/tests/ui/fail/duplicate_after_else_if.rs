//! A step in an `else if` condition runs whenever the branches before it
//! were not taken, leaving or not: its name may not repeat in the body it
//! guards, in a later branch or condition of the chain, nor after it.
use workflow::prelude::*;

#[workflow]
async fn after_the_chain(ctx: Ctx, amount: u32) -> workflow::Result<u32> {
    if amount == 0 {
        return Ok(0);
    } else if ctx.step("flag", || async { workflow::Ok(amount > 9) }).await? {
        ctx.step("flag", || async { workflow::Ok(true) }).await?;
        return Ok(1);
    }
    ctx.step("flag", || async { workflow::Ok(false) }).await?;
    Ok(amount)
}

#[workflow]
async fn later_in_the_chain(ctx: Ctx, amount: u32) -> workflow::Result<u32> {
    if amount == 0 {
        return Ok(0);
    } else if ctx.step("check", || async { workflow::Ok(amount > 9) }).await? {
        return Ok(1);
    } else if ctx.step("check", || async { workflow::Ok(amount > 5) }).await? {
        return Ok(2);
    } else {
        ctx.step("check", || async { workflow::Ok(true) }).await?;
    }
    Ok(amount)
}

fn main() {}
