//! Retries: exponential backoff with jitter and a cap, errors that are not
//! worth retrying, and long backoffs that suspend instead of holding memory.
//!
//! ```text
//! cargo run --example retries
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use workflow::prelude::*;

static CALLS: AtomicU32 = AtomicU32::new(0);

// Every `ctx.step` here gets 5 attempts, waiting about 0.3 s, 0.6 s, 1.2 s
// and 2.4 s (±20%) after each failure. For one step only, the same policy
// is `ctx.step_with("charge", StepOptions::retries(5).backoff(..).jitter(0.2), ..)`.
// (A `//` comment: the `///` one is the workflow's description, which a
// model reads when the workflow is its tool.)
/// Call a flaky payment gateway: it times out twice, then answers.
#[workflow(
    name = "chargeCard",
    retries = 5,
    backoff(initial = "300ms", factor = 2.0, max = "10s"),
    jitter = 0.2
)]
async fn charge_card(ctx: Ctx, cents: u64) -> workflow::Result<String> {
    let receipt = ctx
        .step("charge", || async {
            // A timeout may hide a charge that went through: the gateway
            // gets the same key at every attempt and charges it once.
            let key = ctx.idempotency_key().expect("inside a step");
            if CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err::<String, BoxError>("gateway timeout".into());
            }
            Ok(format!("rcpt-{cents} ({key})"))
        })
        .await?;
    Ok(receipt)
}

/// An expired card is final: retrying will not help, so the error is
/// marked permanent and the step fails at once. (An answer the workflow
/// goes on from, such as a decline it reports, is better returned as the
/// step's output: see the README's Errors.)
#[workflow(name = "chargeExpiredCard")]
async fn charge_expired_card(ctx: Ctx, cents: u64) -> workflow::Result<String> {
    ctx.step("charge", || async move {
        Err::<String, BoxError>(workflow::permanent(format!(
            "card expired: {cents} cents not charged"
        )))
    })
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
    let engine = Engine::builder()
        .database_url("sqlite://retries.db")
        .register(ChargeCard)
        .register(ChargeExpiredCard)
        // Backoffs longer than this suspend the instance (it replays when
        // due): the first wait here (0.24-0.36 s) stays in memory, the
        // second (0.48-0.72 s) suspends.
        .suspend_after(Duration::from_millis(400))
        .build()
        .await?;
    let worker = engine.start_worker();

    let ok = ChargeCard::start(&engine, 1_999).await?;
    println!("chargeCard -> {}", ok.result().await?);
    for event in ok.history().await? {
        let detail = event.message.unwrap_or_default();
        println!(
            "  {:<15} {:<7} {detail}",
            event.kind,
            event.step.unwrap_or_default()
        );
    }

    let expired = ChargeExpiredCard::start(&engine, 500).await?;
    println!(
        "chargeExpiredCard -> {}",
        expired.result().await.unwrap_err()
    );

    worker.shutdown().await;
    Ok(())
}
