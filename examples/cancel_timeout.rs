//! Steering running workflows: cancel, timeouts, and ending from inside.
//!
//! ```text
//! cargo run --example cancel_timeout
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

/// Render a report page by page; each page takes a while.
#[workflow(name = "renderReport", timeout = "2s")]
async fn render_report(ctx: Ctx, pages: u32) -> workflow::Result<u32> {
    for page in 0..pages {
        let signal = ctx.signal();
        ctx.step("render-page", || async {
            // Long work inside a step can watch the cancellation signal.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => workflow::Ok(page),
                _ = signal.cancelled() => Err("stopped".into()),
            }
        })
        .await?;
    }
    Ok(pages)
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Order {
    order_id: String,
    express: bool,
}

/// Ship an order; ends early when there is nothing to do.
#[workflow(name = "shipOrder")]
async fn ship_order(ctx: Ctx, order: Order) -> workflow::Result<String> {
    if order.order_id.is_empty() {
        ctx.fail("Missing order ID")?;
    }
    if !order.express {
        ShipOrder::complete(&ctx, "queued for the weekly truck".into())?;
    }
    ctx.step("book-courier", || async { workflow::Ok(()) })
        .await?;
    Ok(format!("{} sent by courier", order.order_id))
}

async fn wait_until_running(inst: &Instance<RenderReport>) -> workflow::Result<()> {
    while inst.status().await? != Status::InProgress {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
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
        .database_url("sqlite://cancel_timeout.db")
        .register(RenderReport)
        .register(ShipOrder)
        .build()
        .await?;
    let worker = engine.start_worker();

    // Cancel a running instance: its handler stops at the next await.
    let report = RenderReport::start(&engine, 50).await?;
    wait_until_running(&report).await?;
    report.cancel().await?;
    println!("cancelled:    {}", report.result().await.unwrap_err());
    println!("cancel again: {}", report.cancel().await.unwrap_err());

    // The attribute's timeout (2 s) is too short for 20 pages.
    let report = RenderReport::start(&engine, 20).await?;
    println!("timed out:    {}", report.result().await.unwrap_err());

    // Give one instance more time while it runs.
    let report = RenderReport::start(&engine, 15).await?;
    wait_until_running(&report).await?;
    report
        .set_timeout(Timeout::In(Duration::from_secs(30)))
        .await?;
    println!("extended:     {} pages", report.result().await?);

    // Ending from inside.
    let missing = ShipOrder::start(
        &engine,
        Order {
            order_id: String::new(),
            express: true,
        },
    )
    .await?;
    println!("ctx.fail:     {}", missing.result().await.unwrap_err());
    let slow = ShipOrder::start(
        &engine,
        Order {
            order_id: "A7".into(),
            express: false,
        },
    )
    .await?;
    println!("complete:     {}", slow.result().await?);
    let fast = ShipOrder::start(
        &engine,
        Order {
            order_id: "A8".into(),
            express: true,
        },
    )
    .await?;
    println!("normal:       {}", fast.result().await?);

    worker.shutdown().await;
    Ok(())
}
