//! A signature the macro refuses still has the types it could read checked
//! in the same build: here the input is borrowed, and the output is not
//! `Serialize`.
use workflow::prelude::*;

struct Receipt;

#[workflow]
async fn charge(_ctx: Ctx, _order: &str) -> workflow::Result<Receipt> {
    Ok(Receipt)
}

fn main() {}
