//! Human in the loop: an expense waits for an approval event, with a timeout.
//!
//! ```text
//! cargo run --example approval
//! ```
//!
//! While it waits the instance is `Listening` and holds no memory; the
//! event can come from any process sharing the database, days later, and
//! `send_event_once` keeps a redelivered event from counting twice.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Expense {
    employee: String,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Approval {
    approved: bool,
    approver: String,
}

/// The event, named once for the workflow that waits and the code that
/// sends: a typo in either is a compile error.
const APPROVAL: workflow::Event<Approval> = workflow::Event::new("approval");

/// Not an `Approval`: its field is misspelt and `approver` is missing.
/// Only an untyped `send_event` can send it.
#[derive(Serialize)]
struct Typo {
    approve: bool,
}

/// Ask a manager to approve an expense; give up after the timeout.
#[workflow(name = "approveExpense", timeout = "7d")]
async fn approve_expense(ctx: Ctx, expense: Expense) -> workflow::Result<String> {
    ctx.step("notify-manager", || async {
        // Send an email or a chat message with a link that calls send_event.
        workflow::Ok(())
    })
    .await?;
    // In production the timeout would be days; here it is short. A payload
    // that is not an `Approval` (a webhook with a typo) is dropped and a new
    // wait begins, its timeout counted again from then: one bad request
    // must not end a week-long approval.
    let answer = loop {
        match ctx.wait_for(APPROVAL, Some(Duration::from_secs(2))).await {
            Err(workflow::Error::EventPayload { .. }) => continue,
            other => break other,
        }
    };
    match answer {
        Ok(a) if a.approved => Ok(format!(
            "{} cents for {} approved by {}",
            expense.cents, expense.employee, a.approver
        )),
        Ok(a) => Ok(format!("rejected by {}", a.approver)),
        Err(workflow::Error::EventTimeout { .. }) => Ok("no answer in time: escalated".to_owned()),
        Err(other) => Err(other),
    }
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
        .database_url("sqlite://approval.db")
        .register(ApproveExpense)
        .build()
        .await?;
    let worker = engine.start_worker();

    let approved = ApproveExpense::start(
        &engine,
        Expense {
            employee: "ada".into(),
            cents: 4_200,
        },
    )
    .await?;
    let ignored = ApproveExpense::start(
        &engine,
        Expense {
            employee: "bob".into(),
            cents: 99,
        },
    )
    .await?;

    // Once it waits for its event (nothing left for a worker to do).
    let waiting = approved.idle().await?;
    println!("{} is {}", approved.id(), waiting.status);
    // A misspelt call, untyped as a webhook's JSON is: dropped by the
    // handler, which waits on.
    approved
        .send_event(APPROVAL.name(), Typo { approve: true })
        .await?;
    // The approval link may be clicked twice, or its webhook retried: the
    // click's id as the key keeps the event once.
    for click in 1..=2 {
        let approval = Approval {
            approved: true,
            approver: "grace".into(),
        };
        let sent = approved
            .send_once(APPROVAL, "click-7f3a", &approval)
            .await?;
        println!("approval click {click}: {sent:?}");
    }

    println!("approved: {}", approved.result().await?);
    println!("ignored:  {}", ignored.result().await?);
    worker.shutdown().await;
    Ok(())
}
