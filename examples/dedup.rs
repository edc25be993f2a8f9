//! Deduplication, tags and queries: one instance per invoice key, however
//! many times the request arrives (while it runs, and after it ended when
//! `Completed` is among the statuses matched), and one charge per instance
//! even if a crash runs the step again (the provider is given the step's
//! idempotency key).
//!
//! ```text
//! cargo run --example dedup
//! ```

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
struct Invoice {
    invoice_id: String,
    cents: u64,
}

/// Charge an invoice.
#[workflow(name = "chargeInvoice")]
async fn charge_invoice(ctx: Ctx, invoice: Invoice) -> workflow::Result<String> {
    let receipt: String = ctx
        .step("charge", || async {
            // The same at every attempt and after a crash: the provider
            // answers a repeated request with the first one's receipt.
            let key = ctx.idempotency_key().expect("inside a step");
            charge_card(&key, invoice.cents).await
        })
        .await?;
    Ok(receipt)
}

/// Stands in for a payment provider's API that deduplicates by key.
async fn charge_card(idempotency_key: &str, cents: u64) -> Result<String, BoxError> {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    Ok(format!("rcpt-{cents}-{idempotency_key}"))
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
        .database_url("sqlite://dedup.db")
        .register(ChargeInvoice)
        .build()
        .await?;
    let worker = engine.start_worker();
    let invoice = Invoice {
        invoice_id: "inv-42".into(),
        cents: 1999,
    };

    // Eight retries of the same request race each other: one instance.
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (engine, invoice) = (engine.clone(), invoice.clone());
        calls.push(tokio::spawn(async move {
            ChargeInvoice::get_or_create(&engine, "inv-42", invoice).await
        }));
    }
    let mut ids = HashSet::new();
    for call in calls {
        ids.insert(call.await.expect("task")?.id().clone());
    }
    println!("8 concurrent get_or_create calls -> {} instance", ids.len());
    let id = ids.into_iter().next().expect("one id");
    let first = ChargeInvoice::handle(&engine, id);
    println!("receipt: {}", first.result().await?);

    // Once it ended, the key is free: the default statuses only match
    // instances still active. Ask for Completed too (beside the active
    // ones, Status::ACTIVE) to get the old one back.
    let again = ChargeInvoice::get_or_create(&engine, "inv-42", invoice.clone())
        .statuses(Status::ACTIVE.into_iter().chain([Status::Completed]))
        .await?;
    println!(
        "same key after completion, Completed included -> same instance: {}",
        again.id() == first.id()
    );

    // Keys, tags and a per-instance timeout at start; then query by tag.
    let options = StartOptions::new()
        .key("inv-43")
        .tag("customer", "acme")
        .timeout(std::time::Duration::from_secs(60));
    let tagged = ChargeInvoice::start_with(
        &engine,
        Invoice {
            invoice_id: "inv-43".into(),
            cents: 500,
        },
        options,
    )
    .await?;
    tagged.result().await?;
    let page = engine
        .list(
            Query::new()
                .workflow("chargeInvoice")
                .tag("customer", "acme"),
        )
        .await?;
    println!("instances tagged customer=acme: {}", page.items.len());
    println!(
        "counts by status: {:?}",
        engine.counts(Some("chargeInvoice")).await?
    );

    worker.shutdown().await;
    Ok(())
}
