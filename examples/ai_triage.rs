//! Triage a support ticket with a model, as a durable workflow: each model
//! call and each tool call is a recorded step, so a crash mid-conversation
//! resumes from the last recorded answer: only a call in flight when the
//! process died is made again.
//!
//! Runs against any OpenAI-compatible endpoint:
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example ai_triage --features ai
//! OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_MODEL=qwen2.5-7b-instruct \
//!     cargo run --example ai_triage --features ai      # llama.cpp, vLLM, Ollama...
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
enum Category {
    Bug,
    Billing,
    Question,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Triage {
    category: Category,
    /// One sentence on why.
    reason: String,
    /// True if the customer cannot work at all.
    urgent: bool,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Ticket {
    /// What the customer wrote.
    text: String,
    /// Their e-mail address.
    email: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Lookup {
    /// The customer's e-mail address.
    email: String,
}

/// Classify a support ticket as a bug, a billing issue or a question
// The timeout bounds the whole model loop, retries of rate-limited calls included.
#[workflow(name = "triageTicket", timeout = "30m")]
async fn triage_ticket(ctx: Ctx, ticket: Ticket) -> Result<Triage, BoxError> {
    let tools = Toolbox::new().function(
        "lookup_customer",
        "Find a customer's plan by e-mail address",
        |q: Lookup| async move {
            // A real lookup would query a CRM; this one knows one customer.
            let plan = if q.email.ends_with("@example.com") {
                "enterprise"
            } else {
                "free"
            };
            workflow::Ok(serde_json::json!({ "email": q.email, "plan": plan }))
        },
    );
    let triage = ctx
        .execute_typed::<Triage>(
            Execute::new(
                "You triage support tickets. Look the customer up first; enterprise \
                 customers who cannot work are urgent. Answer with the classification.",
            )
            .input(format!("From {}:\n{}", ticket.email, ticket.text))
            .tools(tools)
            // The model: OpenAiCompatible::from_env() unless `.model(..)` names one.
            .max_turns(6),
        )
        .await?;
    Ok(triage.output)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The engine reports what goes wrong through `tracing`: show warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // The workflow as a tool for some other agent (name, description,
    // schema), which needs no model.
    let tool = TriageTicket::as_tool();
    println!(
        "as an OpenAI tool: {}",
        serde_json::to_string_pretty(&tool.to_openai_strict())?
    );
    println!(
        "as an Anthropic tool: {}",
        serde_json::to_string_pretty(&tool.to_anthropic())?
    );
    if let Err(err) = OpenAiCompatible::from_env() {
        println!("ai_triage needs a model endpoint and none is configured.");
        println!("  {err}");
        println!("For example:");
        println!("  OPENAI_API_KEY=sk-... cargo run --example ai_triage --features ai");
        println!("  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_MODEL=<model> cargo run --example ai_triage --features ai");
        return Ok(());
    }
    let engine = Engine::builder()
        .database_url("sqlite://ai_triage.db")
        .register(TriageTicket)
        .build()
        .await?;
    let worker = engine.start_worker();

    let instance = TriageTicket::start(
        &engine,
        Ticket {
            text: "Since this morning nobody in our team can log in; we get error 500.".into(),
            email: "ops@example.com".into(),
        },
    )
    .await?;
    // Longer than the model calls' retries (8 attempts, about two minutes
    // of waits against a rate-limited endpoint), so a slow answer is not
    // reported as a failure while it is still being retried.
    match instance.result_timeout(Duration::from_secs(300)).await {
        Ok(triage) => println!("triage of {}: {triage:?}", instance.id()),
        Err(err) => println!("triage of {} failed: {err}", instance.id()),
    }
    for step in instance.steps().await? {
        println!("  step {} ({} attempt(s))", step.key, step.attempts);
    }
    worker.shutdown().await;
    Ok(())
}
