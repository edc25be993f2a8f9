use serde::{Deserialize, Serialize};
use workflow::prelude::*;

/// Private to this module, while the workflow is public.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Order {
    id: String,
}

#[workflow]
pub async fn ship(_ctx: Ctx, order: Order) -> workflow::Result<String> {
    Ok(order.id)
}

fn main() {}
