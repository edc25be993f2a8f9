//! Fan-out, a child workflow and a durable sleep.
//!
//! ```text
//! cargo run --example fan_out
//! ```
//!
//! `ctx.map` runs one recorded step per item, a few at a time; after a
//! crash only the items not yet recorded run again. `ctx.run_child` starts
//! another workflow and waits for its output: the child is created once,
//! even across crashes, and the parent holds no worker while it waits.
//! `ctx.sleep` suspends the instance (no memory, no worker) and a restarted
//! process wakes it on time.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Order {
    id: String,
    items: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Parcel {
    order: String,
    items: usize,
}

/// Ship one parcel.
#[workflow(name = "shipParcel")]
async fn ship_parcel(ctx: Ctx, parcel: Parcel) -> workflow::Result<String> {
    ctx.step("print-label", || async {
        // Call the carrier's API here.
        workflow::Ok(format!("LBL-{}-{}", parcel.order, parcel.items))
    })
    .await
}

/// Pack an order's items side by side, ship it, then ask for a review.
// The whole run's deadline (5 minutes by default) must outlast the sleep.
#[workflow(name = "fulfilOrder", timeout = "30d")]
async fn fulfil_order(ctx: Ctx, order: Order) -> workflow::Result<String> {
    // Keys `pack[0]`, `pack[1]`, ...: four at a time, each recorded.
    let packed: Vec<String> = ctx
        .map("pack", order.items, 4, |item| async move {
            workflow::Ok(format!("{item} packed"))
        })
        .await?;
    let label = ctx
        .run_child::<ShipParcel>(
            "ship",
            Parcel {
                order: order.id,
                items: packed.len(),
            },
        )
        .await?;
    // Days in production; the instance is suspended meanwhile.
    ctx.sleep("wait-for-delivery", Duration::from_secs(1))
        .await?;
    ctx.step("ask-for-review", || async {
        // Send the e-mail here.
        workflow::Ok(())
    })
    .await?;
    Ok(format!("{} items packed, shipped as {label}", packed.len()))
}

#[tokio::main]
async fn main() -> workflow::Result<()> {
    // The engine reports what goes wrong through `tracing`: show warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let engine = Engine::builder()
        .database_url("sqlite://fan_out.db")
        .register(FulfilOrder)
        .register(ShipParcel)
        .build()
        .await?;
    let worker = engine.start_worker();

    let items = (1..=10).map(|n| format!("item-{n}")).collect();
    let order = FulfilOrder::start(
        &engine,
        Order {
            id: "A-17".into(),
            items,
        },
    )
    .await?;
    println!("{}", order.result_timeout(Duration::from_secs(30)).await?);
    let keys: Vec<String> = order.steps().await?.into_iter().map(|s| s.key).collect();
    println!("recorded steps: {}", keys.join(", "));
    // Suspended while its child ran and while it slept: three runs.
    println!("runs of the order: {}", order.info().await?.runs);

    worker.shutdown().await;
    Ok(())
}
