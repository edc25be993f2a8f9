//! The Rust snippets of README.md, docs/*.md and CONTRIBUTING.md, compiled
//! and, where they are whole tests, run. Each snippet sits here verbatim
//! between what it leaves out (the types and services it names);
//! `every_readme_snippet_is_compiled_here` fails when one of those pages
//! gains or changes a snippet that this file does not hold, so the docs
//! cannot drift from the API. Snippets of optional features compile with
//! those features (`.ci/run` clippies this file with them).
//!
//! The snippets are formatted as README shows them, so rustfmt keeps out.
#![allow(dead_code, unused_variables, clippy::unused_async)]

/// README.md: the opening example, a whole program.
#[rustfmt::skip]
mod opening {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Order { prices: Vec<f64> }
    async fn fetch_order(_id: &str) -> Result<Order, std::io::Error> { Ok(Order { prices: vec![1.0] }) }
    async fn charge_payment(_order: &Order, key: Option<String>) -> Result<String, std::io::Error> { Ok(format!("ch_{}", key.unwrap_or_default())) }

use workflow::prelude::*;
use serde::{Deserialize, Serialize};
use schemars::JsonSchema;

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput { order_id: String }

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderOutput { status: String, total: f64 }

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct OrderState { items_processed: u32 }

// `Order`, `fetch_order` and `charge_payment` are your application's own code.

/// Process a new customer order
#[workflow(name = "processOrder", timeout = "10m")]
async fn process_order(ctx: Ctx<OrderState>, input: OrderInput) -> workflow::Result<OrderOutput> {
    let order: Order = ctx.step("fetch-order", || fetch_order(&input.order_id)).await?;
    ctx.state_mut().items_processed = order.prices.len() as u32;     // saved with the next step
    // A step runs at least once: the key lets the payment provider drop a repeat.
    ctx.step("charge-payment", || charge_payment(&order, ctx.idempotency_key())).await?;
    Ok(OrderOutput { status: "completed".into(), total: order.prices.iter().sum() })
}

#[tokio::main]
async fn main() -> workflow::Result<()> {
    let engine = Engine::builder().register(ProcessOrder).build().await?; // ./workflows.db, or $WORKFLOW_DATABASE_URL
    let worker = engine.start_worker();
    let order = ProcessOrder::start(&engine, OrderInput { order_id: "12345".into() }).await?;
    println!("{}", order.result().await?.status);
    worker.shutdown().await; // lets running steps finish before main returns
    Ok(())
}
}

/// README.md, "Errors": compensating for a step that failed for good.
#[rustfmt::skip]
mod compensation {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use workflow::prelude::*;

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Order { id: String }
    #[derive(Serialize, Deserialize, JsonSchema)]
    enum OrderOutcome { Paid(String), Declined(String) }
    #[derive(Serialize, Deserialize)]
    enum Charge { Paid(String), Declined(String) }
    struct Payments;
    impl Payments {
        async fn charge(&self, order: &Order) -> Result<Charge, std::io::Error> { Ok(Charge::Paid(order.id.clone())) }
    }
    struct Mail;
    impl Mail {
        async fn declined(&self, _order: &Order, _why: &str) -> Result<(), std::io::Error> { Ok(()) }
        async fn payment_failed(&self, _order: &Order, _why: &str) -> Result<(), std::io::Error> { Ok(()) }
    }

    #[workflow(name = "readmeCompensation")]
    async fn compensate(ctx: Ctx, order: Order) -> workflow::Result<OrderOutcome> {
        let (payments, mail) = (Payments, Mail);
let receipt = match ctx.step("charge", || async { payments.charge(&order).await }).await {
    Ok(Charge::Paid(receipt)) => receipt,
    // An answer, recorded as the step's output: nothing to retry.
    Ok(Charge::Declined(why)) => {
        ctx.step("notify", || async { mail.declined(&order, &why).await }).await?;
        return Ok(OrderOutcome::Declined(why));
    }
    // Attempts used up, or an error marked permanent.
    Err(workflow::Error::Step { message, .. }) => {
        ctx.step("alert", || async { mail.payment_failed(&order, &message).await }).await?;
        match ctx.fail(message)? {} // ends Failed
    }
    Err(other) => return Err(other), // Interrupted and the rest: propagate
};
        Ok(OrderOutcome::Paid(receipt))
    }
}

/// README.md, "Cron schedules", and docs/schedules.md.
#[rustfmt::skip]
mod cron {
    use workflow::prelude::*;

/// Build and send the daily report.
#[workflow(name = "dailyReport", schedule = "0 9 * * MON-FRI", timezone = "Europe/Paris")]
async fn daily_report(ctx: Ctx, _input: ()) -> workflow::Result<usize> { /* steps */ Ok(0) }
}

/// docs/testing.md: a whole test, run here.
#[rustfmt::skip]
mod testing {
use std::time::Duration;
use workflow::prelude::*;

/// Stands in for a payment API in tests.
#[derive(Default)]
struct FakePayments { charged: std::sync::Mutex<Vec<u64>> }

#[workflow(name = "charge")]
async fn charge(ctx: Ctx, cents: u64) -> workflow::Result<String> {
    let payments: &FakePayments = ctx.data()?;
    ctx.step("charge", || async {
        payments.charged.lock().unwrap().push(cents);
        workflow::Ok(format!("paid {cents}"))
    })
    .await
}

#[tokio::test]
async fn a_charge_runs_once() -> workflow::Result<()> {
    let engine = Engine::builder()
        .store(workflow::MemoryStore::new())
        .data(FakePayments::default())
        .register(Charge)
        .step_options(StepOptions::retries(3).backoff( // quick retries in tests
            Duration::from_millis(1), 1.0, Duration::from_millis(1)))
        .build()
        .await?;
    let worker = engine.start_worker();
    let run = Charge::start(&engine, 1999).await?;
    assert_eq!(run.result_timeout(Duration::from_secs(5)).await?, "paid 1999");
    let steps: Vec<String> = run.steps().await?.into_iter().map(|s| s.key).collect();
    assert_eq!(steps, ["charge"]);
    let payments = engine.data::<FakePayments>().expect("given to the builder");
    assert_eq!(*payments.charged.lock().unwrap(), [1999]);
    worker.shutdown().await;
    Ok(())
}
}

/// docs/testing.md, "Time": time moved by hand, run here.
#[rustfmt::skip]
mod manual_clock {
    use std::time::Duration;
    use workflow::prelude::*;
    use chrono::Utc;

    /// Sleeps three days, then reminds.
    #[workflow(name = "readmeReminder", timeout = "30d")]
    async fn reminder(ctx: Ctx, who: String) -> workflow::Result<String> {
        ctx.sleep("three-days", Duration::from_secs(3 * 86_400)).await?;
        Ok(format!("reminded {who}"))
    }

    #[tokio::test]
    async fn a_reminder_sleeps_three_days_of_the_clock() -> workflow::Result<()> {
let clock = ManualClock::new(Utc::now());
let engine = Engine::builder()
    .store(MemoryStore::new())
    .register(Reminder) // timeout = "30d": sleeps three days, then reminds
    .clock(clock.clone())
    .build()
    .await?;
let worker = engine.start_worker();
let reminder = Reminder::start(&engine, "ada".into()).await?;
reminder.idle().await?; // asleep: its sleep counts from the clock's time then
clock.advance(Duration::from_secs(3 * 86_400));
assert_eq!(reminder.result_timeout(Duration::from_secs(10)).await?, "reminded ada");
        worker.shutdown().await;
        Ok(())
    }
}

/// docs/console.md.
#[cfg(feature = "console")]
#[rustfmt::skip]
mod console {
    async fn serve(engine: workflow::Engine) -> workflow::Result<()> {
use workflow::prelude::*; // with features = ["console"]: ConsoleExt
// errors are workflow::console::ConsoleError, which `?` also turns into workflow::Error

// Either serve it here, until the server fails (this never returns otherwise):
engine.serve_console("127.0.0.1:8080").await?;

// Or in the background, with a token; it serves while `server` lives:
let server = engine.console().token("s3cret").bind("127.0.0.1:8080").await?;
println!("{}", server.url()); // http://127.0.0.1:8080/#token=s3cret
        Ok(())
    }
}

/// docs/storage.md, docs/postgres.md and docs/deploying.md: compiled, not
/// run (they open files and servers).
#[rustfmt::skip]
mod stores {
    use workflow::prelude::*;

    #[workflow(name = "processOrder")]
    async fn process_order(ctx: Ctx, _input: ()) -> workflow::Result<()> { Ok(()) }

    async fn urls() -> workflow::Result<()> {
let engine = Engine::builder().database_url("sqlite://data/app.db").register(ProcessOrder).build().await?;
let engine = Engine::builder().store(workflow::MemoryStore::new()).register(ProcessOrder).build().await?;
        Ok(())
    }

    async fn postgres() -> workflow::Result<()> {
let engine = Engine::builder()
    .database_url("postgres://app:secret@db.internal/app")   // or postgresql://
    .register(ProcessOrder)
    .build()
    .await?;
let _worker = engine.start_worker();
        Ok(())
    }

    #[cfg(feature = "postgres")]
    async fn postgres_options() -> workflow::Result<()> {
use workflow::postgres::{PgOptions, PgStore};

let store = PgStore::connect_with(
    "postgres://app:secret@db.internal/app",
    PgOptions::new().max_connections(32).schema("orders"),
)
.await?;
let engine = Engine::builder().store(store).register(ProcessOrder).build().await?;
        Ok(())
    }

    async fn deploying() -> workflow::Result<()> {
let engine = Engine::builder()
    .database_url("postgres://app:secret@db.internal/app?sslmode=verify-full")
    .register(ProcessOrder)
    .build()
    .await?;
// Runs a worker until Ctrl-C, or the SIGTERM of systemd or Kubernetes; then it
// stops claiming, lets the steps running finish (10 s at most) and hands the
// instances back before their next step. A second signal exits at once.
engine.run_until(workflow::shutdown_signal()).await?;
        Ok(())
    }
}

/// docs/instances.md, "Events": a typed event.
#[rustfmt::skip]
mod typed_events {
    use std::time::Duration;
    use workflow::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Approval { approved: bool }

    #[workflow(name = "readmeTypedEvents")]
    async fn typed(_ctx: Ctx, _input: ()) -> workflow::Result<()> { Ok(()) }

    async fn both(ctx: Ctx, instance: Instance<Typed>) -> workflow::Result<bool> {
const APPROVAL: workflow::Event<Approval> = workflow::Event::new("approval");

// The workflow:
let answer = ctx.wait_for(APPROVAL, Some(Duration::from_secs(86_400))).await?;
// Anywhere else:
instance.send(APPROVAL, &Approval { approved: true }).await?;
instance.send_once(APPROVAL, "delivery-7f3a", &Approval { approved: true }).await?;
        Ok(answer.approved)
    }
}

/// docs/deploying.md's health route, on the console's axum.
#[cfg(feature = "console")]
#[rustfmt::skip]
mod health {
    use workflow::console::axum;

use axum::{http::StatusCode, routing::get, Router};
use workflow::Engine;

fn health_routes(engine: Engine) -> Router {
    Router::new().route(
        "/healthz",
        get(move || async move {
            let health = engine.health();
            let status = if health.is_healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, format!("{health:?}"))
        }),
    )
}
}

/// docs/ai.md.
#[cfg(feature = "ai")]
#[rustfmt::skip]
mod ai {
    use std::time::Duration;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use workflow::prelude::*;

    #[derive(Serialize, Deserialize, JsonSchema)]
    struct OrderInput { order_id: String }
    #[workflow(name = "processOrder")]
    async fn process_order(ctx: Ctx, input: OrderInput) -> workflow::Result<String> { Ok(input.order_id) }
    #[derive(Deserialize, JsonSchema)]
    struct Lookup { email: String }
    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Triage { urgent: bool }
    mod crm {
        pub async fn find(email: &str) -> Result<String, std::io::Error> { Ok(email.to_owned()) }
    }
    struct ToolCall { id: String }

    async fn both(
        engine: Engine, args: serde_json::Value, tool_call: ToolCall,
        ctx: Ctx, ticket_text: String, text: String,
    ) -> workflow::Result<()> {
// 1. A workflow as a tool: name, doc comment, JSON Schema of its input
//    (doc comments on fields become descriptions).
let tool = ProcessOrder::as_tool();
tool.to_openai();          // {"type":"function","function":{name, description, parameters, strict}}
tool.to_openai_strict();   // strict structured-outputs form: all required, additionalProperties false
tool.to_anthropic();       // {name, description, input_schema}
tool.parameters();         // plain JSON Schema of the arguments

// 2. Calling it with a model's arguments: every violation, with its JSON
//    path, in words the model can correct itself from; then it starts and
//    returns {"workflowId", "status"} at once. (`args`: the JSON arguments
//    a model sent, `tool_call.id`: its call id; `crm` is your code.)
let started = engine.call_tool("processOrder", args.clone()).await?;
// Or wait up to a bound for the output, with plain async fns alongside:
let tools = Toolbox::new()
    .tool(ProcessOrder::as_tool().wait(Duration::from_secs(30)).with_description("Place an order"))
    .function("lookup_customer", "Find a customer by e-mail", |q: Lookup| async move {
        workflow::Ok(crm::find(&q.email).await?)
    });
let reply = tools.call(&engine, "lookup_customer", args.clone()).await?;
// A call your own loop may repeat (a retried request): keyed by the
// provider's tool-call id, a workflow tool starts one instance, and a
// retry answers from it even once it completed. A tool-call id is
// unique within one conversation at best: prefix the conversation's id
// (a key reused with other arguments is refused, not answered from the
// first call).
let reply = tools.call_once(&engine, "processOrder", args, &tool_call.id).await?;
// Arguments are checked closed: a misspelt field is named, not dropped.
// 3. A model loop inside a workflow's handler (feature `ai`): each model
//    call and each tool call is a recorded step: after a crash, only the
//    calls in flight are made again.
// (Execute and ExecuteExt are in the prelude with feature `ai`.)
// The model: OpenAiCompatible::from_env() unless .model(..) names one.
let run = ctx.execute(
    Execute::new("You triage support tickets.")
        .input(ticket_text)
        .tools(tools)
        .max_turns(8),        // default 10 model calls, then Error::MaxTurns
).await?;
println!("{}", run.text);
let typed = ctx.execute_typed::<Triage>(Execute::new("Classify.").input(text)).await?; // typed.output: Triage
        Ok(())
    }
}

/// docs/versioning.md.
#[rustfmt::skip]
mod versioning {
    use workflow::prelude::*;

    struct Order;
    async fn book_dhl(_order: &Order) -> Result<String, BoxError> { Ok(String::new()) }
    async fn book_ups(_order: &Order) -> Result<String, BoxError> { Ok(String::new()) }

    async fn gate(ctx: Ctx, order: Order) -> workflow::Result<String> {
let booking: String = if ctx.patched("ship-with-dhl").await? {
    ctx.step("book-dhl", || book_dhl(&order)).await?
} else {
    ctx.step("book-ups", || book_ups(&order)).await?
};
        Ok(booking)
    }
}

/// Every page whose Rust blocks this file must hold. A new page under
/// docs/ goes here too: `every_docs_page_is_listed` fails until it does.
const PAGES: &[(&str, &str)] = &[
    ("README.md", include_str!("../README.md")),
    ("CONTRIBUTING.md", include_str!("../CONTRIBUTING.md")),
    ("docs/ai.md", include_str!("../docs/ai.md")),
    ("docs/console.md", include_str!("../docs/console.md")),
    ("docs/deploying.md", include_str!("../docs/deploying.md")),
    ("docs/guarantees.md", include_str!("../docs/guarantees.md")),
    ("docs/instances.md", include_str!("../docs/instances.md")),
    (
        "docs/performance.md",
        include_str!("../docs/performance.md"),
    ),
    ("docs/postgres.md", include_str!("../docs/postgres.md")),
    ("docs/schedules.md", include_str!("../docs/schedules.md")),
    ("docs/storage.md", include_str!("../docs/storage.md")),
    ("docs/testing.md", include_str!("../docs/testing.md")),
    ("docs/versioning.md", include_str!("../docs/versioning.md")),
    ("docs/workflows.md", include_str!("../docs/workflows.md")),
];

/// Every Rust block of the pages in `PAGES`, whitespace aside, is in this
/// file.
#[test]
fn every_readme_snippet_is_compiled_here() {
    let here: String = squeeze(include_str!("readme.rs"));
    let mut total = 0;
    let mut missing = Vec::new();
    for &(page, text) in PAGES {
        let blocks = rust_blocks(text);
        if page == "README.md" {
            // The opening example, "Errors" and "Cron schedules" at least.
            assert!(
                blocks.len() >= 3,
                "README.md has {} rust blocks: were they moved?",
                blocks.len()
            );
        }
        total += blocks.len();
        for (line, body) in blocks {
            let body = squeeze(&body);
            if body.is_empty() || !here.contains(&body) {
                missing.push(format!("{page}:{line}"));
            }
        }
    }
    assert!(
        total >= 10,
        "the pages have {total} rust blocks: were they moved?"
    );
    assert!(
        missing.is_empty(),
        "the rust blocks at {missing:?} are not in tests/readme.rs: \
         copy them there, between what they need, so they compile"
    );
}

/// Every Markdown file in docs/ is in `PAGES`, so none escapes the check
/// above.
#[test]
fn every_docs_page_is_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            if !PAGES.iter().any(|&(page, _)| page == name) {
                unlisted.push(name);
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "{unlisted:?} not in PAGES of tests/readme.rs: add them, so their rust blocks are checked"
    );
}

/// The Rust blocks of a Markdown page: the line each starts on (1-based)
/// and its body.
fn rust_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        if !line.trim().starts_with("```") {
            continue;
        }
        // `rust`, `rust,no_run`, `rs`...: every fence of Rust code.
        let info = line.trim().trim_start_matches('`');
        // Skip every other fence's body, so a line in it cannot pass for a fence.
        let rust = info.starts_with("rust") || info.starts_with("rs");
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| l.trim() != "```")
            .collect();
        if rust {
            blocks.push((at + 1, body.join("\n")));
        }
    }
    blocks
}

/// `text` without its whitespace: rustfmt and indentation aside, the same code.
fn squeeze(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}
