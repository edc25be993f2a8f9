//! Quickstart: two workflows on an embedded SQLite file, nothing to configure.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Run it twice: the second run finds the first run's instances in
//! `workflows.db` (counted at the end), because everything is persisted.

use std::sync::atomic::{AtomicU32, Ordering};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput {
    /// The order to process.
    order_id: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct OrderOutput {
    status: String,
    total: f64,
}

/// Persisted with every step; a new instance starts from `Default`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct OrderState {
    items_processed: u32,
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    prices: Vec<f64>,
}

async fn fetch_order(order_id: &str) -> Result<Order, std::io::Error> {
    let items = order_id.bytes().map(|b| f64::from(b % 7) + 0.99).collect();
    Ok(Order {
        id: order_id.to_owned(),
        prices: items,
    })
}

/// A stand-in for a payment provider. A real one takes the idempotency key
/// (Stripe's `Idempotency-Key` header) and charges a repeated key once.
/// `ctx.idempotency_key()` is `Some` inside a step.
async fn charge_payment(
    order: &Order,
    idempotency_key: Option<String>,
) -> Result<String, std::io::Error> {
    let key = idempotency_key.ok_or_else(|| std::io::Error::other("called outside a step"))?;
    Ok(format!("ch_{}_{key}", order.id))
}

/// Process a new customer order
#[workflow(name = "processOrder", timeout = "10m")]
async fn process_order(ctx: Ctx<OrderState>, input: OrderInput) -> workflow::Result<OrderOutput> {
    let order: Order = ctx
        .step("fetch-order", || fetch_order(&input.order_id))
        .await?;
    ctx.state_mut().items_processed = order.prices.len() as u32;
    // A step runs at least once (a crash after the charge and before its
    // result is recorded runs it again): the key is the same at every try.
    let charge: String = ctx
        .step("charge-payment", || {
            charge_payment(&order, ctx.idempotency_key())
        })
        .await?;
    Ok(OrderOutput {
        status: format!("completed ({charge})"),
        total: order.prices.iter().sum(),
    })
}

/// A stand-in for a mail client: the first delivery fails. Handlers get it
/// from the engine (`.data(..)` below), as they would a database pool.
#[derive(Default)]
struct MailServer {
    attempts: AtomicU32,
}

/// Send a welcome email; the mail server fails the first attempt.
#[workflow(name = "sendWelcome")]
async fn send_welcome(ctx: Ctx, email: String) -> workflow::Result<String> {
    let mail: &MailServer = ctx.data()?;
    let body: String = ctx
        .step("render", || async {
            workflow::Ok(format!("Welcome aboard, {email}!"))
        })
        .await?;
    ctx.step("deliver", || async {
        if mail.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("mail server busy".into());
        }
        workflow::Ok(body.len())
    })
    .await?;
    Ok(format!("sent {} bytes to {email}", body.len()))
}

#[tokio::main]
async fn main() -> workflow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // No URL: `$WORKFLOW_DATABASE_URL` if set, else the embedded SQLite
    // file `workflows.db` in the current directory.
    let engine = Engine::builder()
        .register(ProcessOrder)
        .register(SendWelcome)
        .data(MailServer::default())
        .build()
        .await?;
    let worker = engine.start_worker();

    let mut orders = Vec::new();
    for order_id in ["12345", "12346", "12347"] {
        orders.push(
            ProcessOrder::start(
                &engine,
                OrderInput {
                    order_id: order_id.into(),
                },
            )
            .await?,
        );
    }
    let welcome = SendWelcome::start(&engine, "ada@example.com".to_owned()).await?;

    for order in &orders {
        let output = order.result().await?;
        let state = order.state().await?;
        println!(
            "processOrder {} -> {} total {:.2} ({} items)",
            order.id(),
            output.status,
            output.total,
            state.items_processed
        );
    }
    println!(
        "sendWelcome  {} -> {}",
        welcome.id(),
        welcome.result().await?
    );

    println!("\nhistory of {}:", welcome.id());
    for event in welcome.history().await? {
        let step = event.step.as_deref().unwrap_or("");
        let detail = event.message.as_deref().unwrap_or("");
        let line = format!("  {:<15} {step:<8} {detail}", event.kind);
        println!("{}", line.trim_end());
    }

    let counts = engine.counts(None).await?;
    let completed = counts.get(&Status::Completed).copied().unwrap_or(0);
    println!("\n{completed} completed instances in workflows.db");
    worker.shutdown().await;
    Ok(())
}
