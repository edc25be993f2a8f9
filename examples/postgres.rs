//! Workers on several machines sharing one PostgreSQL database.
//!
//! ```text
//! WORKFLOW_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example postgres --features postgres
//! ```
//!
//! Two engines stand in for two machines: each claims runnable instances
//! with `FOR UPDATE SKIP LOCKED`, hears new work through `LISTEN/NOTIFY`,
//! and resumes the other's instances if it dies (after the lease, 30 s).
//! Every instance runs to the end once, whoever runs it.

use std::collections::BTreeMap;
use std::time::Duration;

use workflow::prelude::*;

/// Which machine this engine stands for.
struct Machine(&'static str);

/// Reserve stock, charge, and say which machine charged.
#[workflow(name = "chargeOrder")]
async fn charge_order(ctx: Ctx, order: u32) -> workflow::Result<String> {
    ctx.step("reserve", || async { workflow::Ok(order) })
        .await?;
    let machine = ctx.data::<Machine>()?.0;
    ctx.step("charge", || async move { workflow::Ok(machine.to_owned()) })
        .await
}

async fn machine(url: &str, name: &'static str) -> workflow::Result<Engine> {
    Engine::builder()
        .database_url(url)
        .register(ChargeOrder)
        .data(Machine(name))
        .build()
        .await
}

#[tokio::main]
async fn main() -> workflow::Result<()> {
    // The engine reports what goes wrong through `tracing`: show warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let Ok(url) = std::env::var("WORKFLOW_DATABASE_URL") else {
        eprintln!(
            "set WORKFLOW_DATABASE_URL to a PostgreSQL database, e.g.\n  \
             WORKFLOW_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
             cargo run --example postgres --features postgres"
        );
        std::process::exit(2);
    };
    // The tables live in the schema `workflow` (`?schema=name` picks another).
    let a = machine(&url, "machine-a").await?;
    let b = machine(&url, "machine-b").await?;
    let workers = [a.start_worker(), b.start_worker()];

    let inputs: Vec<u32> = (1..=200).collect();
    let orders = ChargeOrder::start_many(&a, inputs, StartOptions::new()).await?;
    let mut charged_by: BTreeMap<String, usize> = BTreeMap::new();
    for order in &orders {
        let machine = order.result_timeout(Duration::from_secs(60)).await?;
        *charged_by.entry(machine).or_default() += 1;
    }
    println!("{} orders charged once each: {charged_by:?}", orders.len());

    for worker in workers {
        worker.shutdown().await;
    }
    Ok(())
}
