//! The dev console: an engine with workflows in every state, and the web
//! console to see and steer them.
//!
//! ```text
//! cargo run --example console --features console
//! ```
//!
//! Open the printed address. In another terminal, the `workflow` CLI reads
//! the same database without this code:
//!
//! ```text
//! cargo run -p workflow-console -- --db sqlite://console.db list
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput {
    /// Order number; numbers ending in 13 are declined.
    order_id: String,
    amount_cents: u64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Receipt {
    receipt: String,
    amount_cents: u64,
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct OrderState {
    reserved_items: u32,
    charged: bool,
}

/// Reserve stock, charge the card and send a receipt.
#[workflow(name = "processOrder", timeout = "10m", retries = 3)]
async fn process_order(ctx: Ctx<OrderState>, input: OrderInput) -> workflow::Result<Receipt> {
    let items: u32 = ctx
        .step("reserve-stock", || async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            workflow::Ok(3)
        })
        .await?;
    ctx.state_mut().reserved_items = items;
    let receipt: String = ctx
        .step("charge-card", || async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            if input.order_id.ends_with("13") {
                return Err::<String, BoxError>(workflow::permanent(format!(
                    "card declined: insufficient funds for order {}",
                    input.order_id
                )));
            }
            Ok(format!("rcpt-{}", input.order_id))
        })
        .await?;
    ctx.state_mut().charged = true;
    ctx.step("email-receipt", || async {
        tokio::time::sleep(Duration::from_millis(25)).await;
        workflow::Ok(())
    })
    .await?;
    Ok(Receipt {
        receipt,
        amount_cents: input.amount_cents,
    })
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Expense {
    employee: String,
    cents: u64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Approval {
    approved: bool,
    approver: String,
}

/// Wait for a manager to approve an expense (send the `approval` event).
#[workflow(name = "approveExpense", timeout = "7d")]
async fn approve_expense(ctx: Ctx, expense: Expense) -> workflow::Result<String> {
    ctx.step("notify-manager", || async { workflow::Ok(()) })
        .await?;
    let answer: Approval = ctx.wait_for_event("approval", None).await?;
    Ok(format!(
        "{} cents for {}: {} by {}",
        expense.cents,
        expense.employee,
        if answer.approved {
            "approved"
        } else {
            "rejected"
        },
        answer.approver
    ))
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Export {
    table: String,
}

/// Export a large table; takes a long time.
#[workflow(name = "exportTable", timeout = "2h")]
async fn export_table(ctx: Ctx, export: Export) -> workflow::Result<u64> {
    ctx.step("export", || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        workflow::Ok(export.table.len() as u64)
    })
    .await
}

/// Build yesterday's sales report every morning.
#[workflow(
    name = "dailyReport",
    schedule = "0 7 * * *",
    timezone = "Europe/Paris"
)]
async fn daily_report(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    ctx.step("aggregate", || async { workflow::Ok(42) }).await
}

async fn wait_for(engine: &Engine, id: &InstanceId, status: Status) -> workflow::Result<()> {
    while engine.instance(id).await?.status != status {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The engine reports what goes wrong through `tracing`: show warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let engine = Engine::builder()
        .database_url("sqlite://console.db")
        .register(ProcessOrder)
        .register(ApproveExpense)
        .register(ExportTable)
        .register(DailyReport)
        // Ctrl-C stops at once: the export's hour-long step would hold a
        // shutdown for the whole grace period (10 s by default) and then be
        // cut off all the same.
        .shutdown_grace(Duration::from_secs(1))
        .build()
        .await?;
    let worker = engine.start_worker();

    // Completed and failed orders.
    for (n, order_id) in ["A-1001", "A-1002", "A-1013", "A-1004"].iter().enumerate() {
        let order = ProcessOrder::start_with(
            &engine,
            OrderInput {
                order_id: (*order_id).into(),
                amount_cents: 1_250 * (n as u64 + 1),
            },
            StartOptions::new()
                .key(format!("order-{order_id}"))
                .tag("customer", ["ada", "grace", "linus", "ken"][n]),
        )
        .await?;
        let _ = order.result().await;
    }
    // Waiting for an event; one of them paused.
    let waiting = ApproveExpense::start(
        &engine,
        Expense {
            employee: "ada".into(),
            cents: 4_200,
        },
    )
    .await?;
    let paused = ApproveExpense::start(
        &engine,
        Expense {
            employee: "bob".into(),
            cents: 99_900,
        },
    )
    .await?;
    wait_for(&engine, waiting.id(), Status::Listening).await?;
    wait_for(&engine, paused.id(), Status::Listening).await?;
    paused.pause().await?;
    // Long-running: one runs, one is cancelled, one runs out of time.
    let cancelled = ExportTable::start(
        &engine,
        Export {
            table: "audit_log".into(),
        },
    )
    .await?;
    wait_for(&engine, cancelled.id(), Status::InProgress).await?;
    cancelled.cancel().await?;
    let timed_out = ExportTable::start_with(
        &engine,
        Export {
            table: "events".into(),
        },
        StartOptions::new().timeout(Duration::from_millis(300)),
    )
    .await?;
    ExportTable::start_with(
        &engine,
        Export {
            table: "customers".into(),
        },
        StartOptions::new().key("nightly-export").tag("env", "prod"),
    )
    .await?;
    wait_for(&engine, timed_out.id(), Status::TimedOut).await?;

    // Serve the console; 8080, or any free port if 8080 is taken. Any
    // other refusal (an address other machines reach, with no token) stops.
    let addr = std::env::var("CONSOLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let server = match engine.console().bind(addr.as_str()).await {
        Ok(server) => server,
        Err(workflow::console::ConsoleError::Io(err))
            if err.kind() == std::io::ErrorKind::AddrInUse =>
        {
            engine.console().bind("127.0.0.1:0").await?
        }
        Err(other) => return Err(other.into()),
    };
    println!("workflow console: {}", server.url());
    println!("Ctrl-C to stop");
    workflow::shutdown_signal().await;
    server.shutdown();
    worker.shutdown().await;
    Ok(())
}
