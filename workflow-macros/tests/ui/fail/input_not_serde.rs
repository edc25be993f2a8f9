use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize)]
struct OrderInput {
    order_id: String,
}

#[workflow]
async fn process_order(_ctx: Ctx, _input: OrderInput) -> workflow::Result<()> {
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    total: f64,
}

#[workflow]
async fn issue_receipt(_ctx: Ctx, _input: ()) -> workflow::Result<Receipt> {
    Ok(Receipt { total: 0.0 })
}

fn main() {}
