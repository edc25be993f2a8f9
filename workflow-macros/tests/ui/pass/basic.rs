use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput {
    order_id: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderOutput {
    status: String,
    total: f64,
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct OrderState {
    charged: bool,
}

/// Process a new customer order.
///
///   Fetches the order, then charges the card.
#[workflow(name = "processOrder", timeout = "10m")]
async fn process_order(ctx: Ctx<OrderState>, input: OrderInput) -> workflow::Result<OrderOutput> {
    let total: f64 = ctx
        .step("fetch-order", || async { Ok::<_, BoxError>(42.0) })
        .await?;
    ctx.step_with("charge-payment", StepOptions::default(), || async move {
        Ok::<_, BoxError>(total)
    })
    .await?;
    ctx.state_mut().charged = true;
    Ok(OrderOutput {
        status: format!("completed {}", input.order_id),
        total,
    })
}

fn main() {
    assert_eq!(ProcessOrder::NAME, "processOrder");
    assert_eq!(
        ProcessOrder::DESCRIPTION,
        "Process a new customer order.\n\nFetches the order, then charges the card."
    );
    assert_eq!(ProcessOrder::STEPS, ["fetch-order", "charge-payment"]);
    assert_eq!(ProcessOrder::TIMEOUT, Duration::from_secs(600));
    assert_eq!(ProcessOrder::SCHEDULE, None);
    assert_eq!(ProcessOrder::TIMEZONE, "UTC");

    fn types<W: Workflow<Input = OrderInput, Output = OrderOutput, State = OrderState>>(_: W) {}
    types(ProcessOrder);
    // The function itself stays callable.
    let _handler = process_order;
    let _copy: ProcessOrder = ProcessOrder::default();
    assert_eq!(format!("{:?}", ProcessOrder), "ProcessOrder");
}
