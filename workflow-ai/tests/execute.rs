//! `ctx.execute` against a real HTTP server on loopback speaking the
//! chat-completions protocol, with scripted replies: tool calls with bad
//! and corrected arguments, retries of 429 but not 400, the turn bound,
//! typed outputs, and a SIGKILL between turns (the workflow runs in a
//! child process, `crash_child` below) with no repeated model call.

mod common;

use std::time::{Duration, Instant};

use common::{error, last_message, text, tool_call, tool_call_raw, tool_calls, Server};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use workflow::prelude::*;
use workflow_ai::{Execute, ExecuteExt, OpenAiCompatible};

/// Set in the child process of the crash test.
const CRASH_CHILD: &str = "WORKFLOW_AI_CRASH_CHILD";

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
enum Priority {
    Low,
    High,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct NewTicket {
    /// One-line summary of the problem.
    title: String,
    priority: Priority,
}

/// Open a support ticket
#[workflow(name = "create_ticket")]
async fn create_ticket(_ctx: Ctx, ticket: NewTicket) -> workflow::Result<String> {
    Ok(format!(
        "ticket opened: {} ({:?})",
        ticket.title, ticket.priority
    ))
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Lookup {
    /// The customer's e-mail address.
    email: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct AgentInput {
    base_url: String,
    ticket: String,
    max_turns: u32,
}

fn model(base_url: &str) -> Result<OpenAiCompatible, BoxError> {
    Ok(OpenAiCompatible::builder()
        .base_url(base_url)
        .api_key("test-key")
        .model("test-model")
        .build()?)
}

fn fast_retries() -> StepOptions {
    StepOptions::retries(3).backoff(Duration::from_millis(10), 2.0, Duration::from_millis(40))
}

/// Triage a ticket with a model
#[workflow(name = "agent")]
async fn agent(ctx: Ctx, input: AgentInput) -> Result<String, BoxError> {
    let tools = Toolbox::new()
        .tool(CreateTicket::as_tool().wait(Duration::from_secs(10)))
        .function(
            "lookup_customer",
            "Find a customer's plan by e-mail",
            |q: Lookup| async move {
                if std::env::var_os(CRASH_CHILD).is_some() {
                    // The crash test kills the process here, between turns.
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(json!({"email": q.email, "plan": "pro"}))
            },
        );
    let run = ctx
        .execute(
            Execute::new("You triage support tickets.")
                .input(input.ticket)
                .tools(tools)
                .model(model(&input.base_url)?)
                .max_turns(input.max_turns)
                .model_step_options(fast_retries()),
        )
        .await?;
    Ok(run.text)
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
enum Category {
    Bug,
    Billing,
    Question,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Triage {
    category: Category,
    /// Why, in one sentence.
    reason: String,
    urgent: Option<bool>,
}

/// Classify a ticket into a typed answer, asking for no strict schema.
#[workflow(name = "classifyLoose")]
async fn classify_loose(ctx: Ctx, input: AgentInput) -> Result<Triage, BoxError> {
    let run = ctx
        .execute_typed::<Triage>(
            Execute::new("Classify the ticket.")
                .input(input.ticket)
                .model(model(&input.base_url)?)
                .strict_output(false),
        )
        .await?;
    Ok(run.output)
}

/// Classify a ticket into a typed answer
#[workflow(name = "classify")]
async fn classify(ctx: Ctx, input: AgentInput) -> Result<Triage, BoxError> {
    let run = ctx
        .execute_typed::<Triage>(
            Execute::new("Classify the ticket.")
                .input(input.ticket)
                .model(model(&input.base_url)?)
                .max_turns(input.max_turns),
        )
        .await?;
    Ok(run.output)
}

/// A model loop whose model is given on the first run only, as on a
/// worker with the settings, then a sleep that suspends: the run after it
/// replays the recorded turn as a worker without them (no `OPENAI_*`
/// variables) would.
#[workflow(name = "replayedTurn")]
async fn replayed_turn(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let mut loop_ = Execute::new("Answer.").input("Hello?");
    if ctx.run_number() == 1 {
        loop_ = loop_.model(model(&base_url)?);
    }
    let run = ctx.execute(loop_).await?;
    ctx.sleep("pause", Duration::from_millis(500)).await?;
    Ok(run.text)
}

/// A model loop without a model on its first run, as on a worker deployed
/// without the settings; given one from the next run on, as after the fix.
#[workflow(name = "settingsLater")]
async fn settings_later(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let mut loop_ = Execute::new("Answer.").input("Hello?");
    if ctx.run_number() > 1 {
        loop_ = loop_.model(model(&base_url)?);
    }
    Ok(ctx.execute(loop_).await?.text)
}

/// A toolbox of one function, `lookup_customer`: every customer is on `pro`.
fn lookup_customer() -> Toolbox {
    Toolbox::new().function(
        "lookup_customer",
        "Find a customer's plan by e-mail",
        |q: Lookup| async move { Ok::<_, BoxError>(json!({"email": q.email, "plan": "pro"})) },
    )
}

/// Looks customers up, two calls of a turn at most.
#[workflow(name = "capped")]
async fn capped(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let tools = lookup_customer();
    let run = ctx
        .execute(
            Execute::new("Look them up.")
                .input("ada, bob, cy, dee, eve")
                .tools(tools)
                .model(model(&base_url)?)
                .max_tool_calls(2),
        )
        .await?;
    Ok(run.text)
}

/// Two people who meet: each call waits for the other one's, which only
/// calls running side by side get. The first to arrive leaves last.
#[derive(Debug, Deserialize, JsonSchema)]
struct Meet {
    who: String,
}

static MEETING: std::sync::LazyLock<tokio::sync::Barrier> =
    std::sync::LazyLock::new(|| tokio::sync::Barrier::new(2));

/// Asks two tools of one turn to meet.
#[workflow(name = "meeting")]
async fn meeting(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let tools = Toolbox::new().function("meet", "Meet the other one", |m: Meet| async move {
        match tokio::time::timeout(Duration::from_secs(5), MEETING.wait()).await {
            Ok(_) if m.who == "ada" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, BoxError>(json!(format!("{} met", m.who)))
            }
            Ok(_) => Ok(json!(format!("{} met", m.who))),
            Err(_) => Ok(json!(format!("{} waited alone", m.who))),
        }
    });
    let run = ctx
        .execute(
            Execute::new("Meet.")
                .input("ada and bob")
                .tools(tools)
                .model(model(&base_url)?),
        )
        .await?;
    Ok(run.text)
}

/// A loop out of turns: what the conversation had, from the error.
#[workflow(name = "outOfTurns")]
async fn out_of_turns(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let tools = lookup_customer();
    let run = ctx
        .execute(
            Execute::new("Look them up.")
                .input("ada")
                .tools(tools)
                .model(model(&base_url)?)
                .max_turns(2),
        )
        .await;
    match run {
        Ok(run) => Ok(run.text),
        Err(err @ workflow::Error::MaxTurns { .. }) => {
            let so_far = workflow_ai::conversation(&err).unwrap_or_default();
            let roles: Vec<String> = so_far
                .iter()
                .map(|m| serde_json::to_value(m).unwrap()["role"].to_string())
                .collect();
            Ok(roles.join(" "))
        }
        Err(err) => Err(err.into()),
    }
}

/// Waits (30 s at most) for `inst` to pause, and says why it did.
async fn paused_reason<W: Workflow>(inst: &Instance<W>) -> String {
    let started = Instant::now();
    while inst.status().await.unwrap() != Status::Paused {
        assert!(started.elapsed() < Duration::from_secs(30), "never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let history = inst.history().await.unwrap();
    let paused = history
        .iter()
        .rfind(|e| e.kind == "paused")
        .expect("paused");
    paused.message.clone().unwrap_or_default()
}

/// A loop whose conversation outgrows the model: the error, and the
/// roles of the conversation `conversation` gives back from it.
#[workflow(name = "tooLong")]
async fn too_long(ctx: Ctx, base_url: String) -> Result<String, BoxError> {
    let run = ctx
        .execute(
            Execute::new("Look them up.")
                .input("ada")
                .tools(lookup_customer())
                .model(model(&base_url)?),
        )
        .await;
    match run {
        Ok(run) => Ok(run.text),
        Err(err) => {
            let Some(so_far) = workflow_ai::conversation(&err) else {
                return Err(err.into());
            };
            let roles: Vec<String> = so_far
                .iter()
                .map(|m| serde_json::to_value(m).unwrap()["role"].to_string())
                .collect();
            Ok(format!("{err} | {}", roles.join(" ")))
        }
    }
}

/// Starts `W` and waits for its end (a minute at most).
async fn outcome<W: Workflow>(engine: &Engine, input: W::Input) -> workflow::Result<W::Output> {
    W::start(engine, input)
        .await
        .unwrap()
        .result_timeout(Duration::from_secs(60))
        .await
}

async fn engine(url: &str) -> Engine {
    Engine::builder()
        .database_url(url)
        .register(Agent)
        .register(CreateTicket)
        .register(Classify)
        .register(ClassifyLoose)
        .register(ReplayedTurn)
        .register(SettingsLater)
        .register(Capped)
        .register(Meeting)
        .register(OutOfTurns)
        .register(TooLong)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("engine")
}

fn input(server: &Server, max_turns: u32) -> AgentInput {
    AgentInput {
        base_url: server.url.clone(),
        ticket: "I cannot log in since this morning.".into(),
        max_turns,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tool_arguments_come_back_as_a_message_and_the_model_corrects_them() {
    let server = Server::start(|n, _| match n {
        0 => tool_call(
            "c1",
            "create_ticket",
            json!({"title": 5, "priority": "urgent"}),
        ),
        1 => tool_call(
            "c2",
            "create_ticket",
            json!({"title": "Login broken", "priority": "High"}),
        ),
        _ => text("Opened a ticket."),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let instance = Agent::start(&engine, input(&server, 5)).await.unwrap();
    let out = instance
        .result_timeout(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out, "Opened a ticket.");

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let first = &requests[0];
    assert_eq!(first.authorization.as_deref(), Some("Bearer test-key"));
    assert_eq!(first.body["model"], "test-model");
    let names: Vec<&str> = first.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["create_ticket", "lookup_customer"]);
    let params = &first.body["tools"][0]["function"]["parameters"];
    assert_eq!(
        params["properties"]["title"]["description"],
        "One-line summary of the problem."
    );
    assert_eq!(
        first.body["tools"][0]["function"]["description"],
        "Open a support ticket"
    );

    // The validation message names every violation by its JSON path.
    let correction = last_message(&requests[1].body);
    assert_eq!(correction["role"], "tool");
    assert_eq!(correction["tool_call_id"], "c1");
    let message = correction["content"].as_str().unwrap();
    assert!(
        message.contains("Invalid arguments for tool `create_ticket`"),
        "{message}"
    );
    assert!(
        message.contains("at /title: 5 is not of type \"string\""),
        "{message}"
    );
    assert!(message.contains("at /priority:"), "{message}");
    assert!(message.contains("urgent"), "{message}");

    // The corrected call started the workflow (as a child), waited for its output.
    let result = last_message(&requests[2].body);
    assert_eq!(result["tool_call_id"], "c2");
    assert_eq!(result["content"], "ticket opened: Login broken (High)");
    let tickets = engine
        .list(Query::new().workflow("create_ticket"))
        .await
        .unwrap();
    assert_eq!(tickets.items.len(), 1, "the bad call started nothing");
    assert_eq!(
        tickets.items[0].input,
        json!({"title": "Login broken", "priority": "High"})
    );

    // Every turn and tool call is a step.
    let keys: Vec<String> = instance
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    for key in [
        "execute:turn-0",
        "execute:turn-0:create_ticket",
        "execute:turn-1",
        "execute:turn-1:create_ticket",
        "execute:turn-2",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
}

/// A made-up tool name of any length is answered as an unknown tool,
/// without a step (its key would hold the name), and no arguments at all
/// read as `{}`.
#[tokio::test(flavor = "multi_thread")]
async fn odd_tool_calls_are_answered_not_recorded() {
    let long = "x".repeat(5_000);
    let server = Server::start(move |n, _| match n {
        0 => tool_call("c1", &long, json!({})),
        1 => tool_call_raw("c2", "lookup_customer", " "),
        _ => text("Done."),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let instance = Agent::start(&engine, input(&server, 5)).await.unwrap();
    let out = instance
        .result_timeout(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out, "Done.");
    let requests = server.requests();
    let unknown = last_message(&requests[1].body)["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(unknown.contains("no such tool"), "{unknown}");
    let empty = last_message(&requests[2].body)["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!empty.contains("not valid JSON"), "{empty}");
    assert!(empty.contains("email"), "read as {{}}: {empty}");
    let keys: Vec<String> = instance
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(
        keys,
        [
            "execute:turn-0",
            "execute:turn-1",
            "execute:turn-1:lookup_customer",
            "execute:turn-2"
        ]
    );
}

/// A loop out of turns hands its conversation back in the error: the
/// handler can go on from it, or ask for a summary. Before, it was lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_loop_out_of_turns_gives_its_conversation_back() {
    let server = Server::start(|n, _| {
        tool_call(
            &format!("c{n}"),
            "lookup_customer",
            json!({"email": "a@b.c"}),
        )
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<OutOfTurns>(&engine, server.url.clone())
        .await
        .unwrap();
    // Instructions, input, a turn and its tool's reply, the last turn and
    // the reply that its call was not run: every call answered, as a
    // server asks of a conversation sent to it.
    assert_eq!(
        out, r#""system" "user" "assistant" "tool" "assistant" "tool""#,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_stops_at_max_turns() {
    let server = Server::start(|n, _| {
        tool_call(
            &format!("c{n}"),
            "lookup_customer",
            json!({"email": "a@b.c"}),
        )
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let instance = Agent::start(&engine, input(&server, 3)).await.unwrap();
    let err = instance
        .result_timeout(Duration::from_secs(30))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("used all 3 turn(s)"), "{message}");
    assert_eq!(server.requests().len(), 3);
    // The last turn's tool call is not run: no turn is left to read it.
    let keys: Vec<String> = instance
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert!(
        keys.contains(&"execute:turn-1:lookup_customer".to_owned())
            && !keys.iter().any(|k| k.starts_with("execute:turn-2:")),
        "{keys:?}"
    );
    // Each turn's tool result reached the next turn.
    let last = last_message(&server.requests()[2].body).clone();
    assert_eq!(last["role"], "tool");
    assert!(last["content"]
        .as_str()
        .unwrap()
        .contains("\"plan\":\"pro\""));
}

/// A refusal, a reply cut off at the token limit and one withheld by a
/// content filter are no answers: the loop fails saying which, instead of
/// returning the text as the result.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_that_is_no_answer_fails_the_loop() {
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let cut_off = |reason: &'static str| {
        move |_: usize, _: &Value| {
            let (status, mut body) = text("Partial answ");
            body["choices"][0]["finish_reason"] = json!(reason);
            (status, body)
        }
    };
    let refusing = |_: usize, _: &Value| {
        let (status, mut body) = text("");
        body["choices"][0]["message"] =
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."});
        (status, body)
    };
    let cases: Vec<(Server, &str)> = vec![
        (
            Server::start(cut_off("length")).await,
            "cut off at the token limit",
        ),
        (
            Server::start(cut_off("content_filter")).await,
            "content filter withheld",
        ),
        (
            Server::start(refusing).await,
            "the model refused: I can't help with that.",
        ),
    ];
    for (server, why) in &cases {
        let err = Agent::start(&engine, input(server, 3))
            .await
            .unwrap()
            .result_timeout(Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model loop `execute` got no answer") && err.contains(why),
            "{err}"
        );
        assert_eq!(server.requests().len(), 1, "not retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_retried_and_bad_requests_are_not() {
    let server = Server::start(|n, _| match n {
        0 => error(429),
        1 => error(503),
        _ => text("fine"),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<Agent>(&engine, input(&server, 3)).await.unwrap();
    assert_eq!(out, "fine");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // The 429's `retry-after-ms` is waited for, though the step's own
    // backoff is 10 ms; the 503's wait is the backoff.
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(common::RETRY_AFTER_MS - 20),
        "{waited:?}"
    );

    // A quota used up is a 429 that waiting does not mend: not retried,
    // the instance paused until it is topped up.
    let broke = Server::start(|_, _| {
        let (status, mut body) = error(429);
        body["error"]["code"] = json!("insufficient_quota");
        (status, body)
    })
    .await;
    let inst = Agent::start(&engine, input(&broke, 3)).await.unwrap();
    let why = paused_reason(&inst).await;
    assert!(why.contains("insufficient_quota"), "{why}");
    assert_eq!(broke.requests().len(), 1, "not retried");

    let bad = Server::start(|_, _| error(400)).await;
    let err = outcome::<Agent>(&engine, input(&bad, 3)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("HTTP 400"), "{message}");
    assert!(message.contains("1 attempt(s)"), "{message}");
    assert_eq!(bad.requests().len(), 1, "a 400 is not retried");
}

/// Servers that ignore `response_format` often fence the JSON asked for:
/// one fence is taken off, with no correction turn.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_typed_answer_is_read_in_one_turn() {
    let server = Server::start(|_, _| {
        text("```json\n{\"category\": \"Billing\", \"reason\": \"Refund.\", \"urgent\": true}\n```")
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<Classify>(&engine, input(&server, 4))
        .await
        .unwrap();
    assert_eq!(out.category, Category::Billing);
    assert_eq!(out.urgent, Some(true));
    assert_eq!(server.requests().len(), 1, "no correction turn");
}

/// A response past 16 MiB (a server streaming by mistake) is refused, not
/// read into memory whole; it is not a passing fault, so not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_response_fails_the_call() {
    let server = Server::start(|_, _| text(&"x".repeat(17 << 20))).await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let err = outcome::<Agent>(&engine, input(&server, 3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
    assert_eq!(server.requests().len(), 1, "not retried");

    // A huge error page is a status like any other: a 503 is retried.
    let server = Server::start(|n, _| match n {
        0 => (503, serde_json::Value::String("x".repeat(17 << 20))),
        _ => text("fine"),
    })
    .await;
    let out = outcome::<Agent>(&engine, input(&server, 3)).await.unwrap();
    assert_eq!(out, "fine");
    assert_eq!(server.requests().len(), 2, "retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_output_is_schema_constrained_and_corrected() {
    let server = Server::start(|n, _| match n {
        0 => text("It is a bug, I think."),
        1 => text(r#"{"category": "Bug", "reason": "Login fails.", "urgent": null}"#),
        _ => text("unexpected"),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<Classify>(&engine, input(&server, 4))
        .await
        .unwrap();
    assert_eq!(
        out,
        Triage {
            category: Category::Bug,
            reason: "Login fails.".into(),
            urgent: None
        }
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let format = &requests[0].body["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    let schema = &format["json_schema"]["schema"];
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], json!(["category", "reason", "urgent"]));
    assert_eq!(
        schema["properties"]["urgent"]["type"],
        json!(["boolean", "null"])
    );
    let feedback = last_message(&requests[1].body);
    assert_eq!(feedback["role"], "user");
    assert!(
        feedback["content"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{feedback}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_turns_does_not_repeat_the_recorded_model_call() {
    let server = Server::start(|n, _| match n {
        0 => tool_call("c1", "lookup_customer", json!({"email": "ada@example.com"})),
        _ => text("Ada is on the pro plan."),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ai.db").display());
    // No worker here until the child is dead: the child runs the instance.
    let engine = engine(&url).await;
    let instance = Agent::start(&engine, input(&server, 5)).await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD, &url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");

    // Wait until the first model call is recorded; the child then hangs in
    // the tool call that follows.
    let started = Instant::now();
    loop {
        let steps = instance.steps().await.unwrap();
        if steps.iter().any(|s| s.key == "execute:turn-0") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "turn 0 never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    assert_eq!(server.requests().len(), 1);

    // Restart: this process takes over the dead child's instance.
    let _worker = engine.start_worker();
    let out = instance
        .result_timeout(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out, "Ada is on the pro plan.");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "the recorded turn was not asked again");
    // The one new request is turn 1, carrying turn 0's recorded reply and the tool result.
    let messages = requests[1].body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    assert_eq!(messages[2]["tool_calls"][0]["id"], "c1");
    assert!(messages[3]["content"].as_str().unwrap().contains("pro"));
    assert!(instance.info().await.unwrap().runs >= 2);
}

/// A gateway's error in a 200 answer (a numbered code or one of
/// OpenAI's named ones), a generation that failed on the server, a 200
/// whose body is no chat completion (a proxy's page), and a reply with
/// nothing in it are tried again, not recorded as the answer.
#[tokio::test(flavor = "multi_thread")]
async fn server_side_failures_are_retried() {
    let server = Server::start(|n, _| match n {
        0 => (
            200,
            json!({"error": {"code": 502, "message": "upstream down"}}),
        ),
        1 => (
            200,
            json!({"choices": [{"message": {"content": null}, "finish_reason": "error"}]}),
        ),
        _ => text("fine"),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<Agent>(&engine, input(&server, 4)).await.unwrap();
    assert_eq!(out, "fine");
    assert_eq!(server.requests().len(), 3);

    // Three attempts a turn here: a server of its own.
    let server = Server::start(|n, _| match n {
        0 => (
            200,
            json!({"error": {"code": "server_error", "message": "try again"}}),
        ),
        1 => (200, json!("<html>Bad gateway</html>")),
        _ => text("fine"),
    })
    .await;
    let out = outcome::<Agent>(&engine, input(&server, 4)).await.unwrap();
    assert_eq!(out, "fine");
    assert_eq!(server.requests().len(), 3);

    // Replies with nothing in them, ended as normal ones: before, the
    // first was the loop's answer, an empty text.
    let server = Server::start(|n, _| match n {
        0 => (
            200,
            json!({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}),
        ),
        // A server's own word for a normal end.
        1 => (
            200,
            json!({"choices": [{"message": {"content": " \n"}, "finish_reason": "end_turn"}]}),
        ),
        _ => text("fine"),
    })
    .await;
    let out = outcome::<Agent>(&engine, input(&server, 4)).await.unwrap();
    assert_eq!(out, "fine");
    assert_eq!(server.requests().len(), 3);
}

/// One reply asking for five calls runs two (`max_tool_calls(2)`); the
/// model is told the other three did not run.
#[tokio::test(flavor = "multi_thread")]
async fn a_turn_runs_at_most_max_tool_calls() {
    let server = Server::start(|n, _| match n {
        0 => tool_calls(
            "lookup_customer",
            ["ada", "bob", "cy", "dee", "eve"]
                .iter()
                .map(|who| json!({"email": format!("{who}@example.com")})),
        ),
        _ => text("done"),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let inst = Capped::start(&engine, server.url.clone()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "done");
    let ran = inst
        .steps()
        .await
        .unwrap()
        .iter()
        .filter(|s| s.key.contains(":lookup_customer"))
        .count();
    assert_eq!(ran, 2);
    let requests = server.requests();
    let replies: Vec<&str> = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(replies.len(), 5, "every call is answered");
    assert_eq!(
        replies.iter().filter(|r| r.starts_with("Not run")).count(),
        3
    );
}

/// A replay needs no model for the turns it reads from the record: an
/// instance whose next run lands on a worker without model settings goes
/// on. Before, the loop asked the environment for a model first, and
/// failed the instance for good with a configuration error.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_turns_replay_without_model_settings() {
    if common::model_settings_set("recorded_turns_replay_without_model_settings") {
        return;
    }
    let server = Server::start(|_, _| text("Hello!")).await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let inst = ReplayedTurn::start(&engine, server.url.clone())
        .await
        .unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "Hello!");
    assert!(
        inst.info().await.unwrap().runs >= 2,
        "replayed after the sleep"
    );
    assert_eq!(server.requests().len(), 1);
}

/// The crash test's child process: runs a worker on the database until killed.
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(CRASH_CHILD) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let engine = engine(&url).await;
            let _worker = engine.start_worker();
            tokio::time::sleep(Duration::from_secs(120)).await;
            panic!("the crash test should have killed this process");
        });
}

#[tokio::test(flavor = "multi_thread")]
async fn call_tool_validates_and_starts_or_waits() {
    let engine = engine("memory:").await;
    let err = engine
        .call_tool("create_ticket", json!({"title": 1, "priority": "Meh"}))
        .await
        .unwrap_err();
    let text = workflow::ToolReply::from_error(&err).text();
    assert!(text.contains("at /title"), "{text}");
    assert!(text.contains("at /priority"), "{text}");
    assert!(engine.list(Query::new()).await.unwrap().items.is_empty());

    let started: Value = engine
        .call_tool("create_ticket", json!({"title": "t", "priority": "Low"}))
        .await
        .unwrap();
    assert_eq!(started["status"], "pending");
    assert!(started["workflowId"].is_string());

    let _worker = engine.start_worker();
    let waiting = Toolbox::new().tool(CreateTicket::as_tool().wait(Duration::from_secs(10)));
    let out = waiting
        .call(
            &engine,
            "create_ticket",
            json!({"title": "t2", "priority": "High"}),
        )
        .await
        .unwrap();
    assert_eq!(out, json!("ticket opened: t2 (High)"));
}

/// Answers every call at once with the same text.
struct Fixed;

#[async_trait::async_trait]
impl workflow_ai::Model for Fixed {
    async fn complete(
        &self,
        _request: &workflow_ai::ModelRequest,
    ) -> Result<workflow_ai::ModelResponse, workflow_ai::ModelError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(workflow_ai::ModelResponse {
            content: Some("done".into()),
            tool_calls: Vec::new(),
            finish_reason: Some("stop".into()),
            usage: None,
        })
    }
}

/// Two model loops side by side: named apart, or one after the other
/// under one name, or (refused) at once under one name.
#[workflow(name = "twoLoops")]
async fn two_loops(ctx: Ctx, same_name: bool) -> Result<String, BoxError> {
    let loop_named = |name: &str| Execute::new("Answer.").input("Go.").model(Fixed).name(name);
    let second = if same_name { "execute" } else { "other" };
    let (a, b) = tokio::join!(
        ctx.execute(loop_named("execute")),
        ctx.execute(loop_named(second))
    );
    let after = ctx.execute(loop_named("execute")).await?;
    Ok(format!("{} {} {}", a?.text, b?.text, after.text))
}

#[tokio::test(flavor = "multi_thread")]
async fn loops_of_one_name_at_once_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("loops.db").display());
    let engine = Engine::builder()
        .database_url(&url)
        .register(TwoLoops)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let apart = TwoLoops::start(&engine, false).await.unwrap();
    assert_eq!(
        apart.result_timeout(Duration::from_secs(20)).await.unwrap(),
        "done done done"
    );
    let same = TwoLoops::start(&engine, true).await.unwrap();
    let err = same
        .result_timeout(Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("two model loops named `execute` run at once"),
        "{err}"
    );
}

/// A gateway's query (`?api-version=..`) stays a query: the path goes
/// before it. A key pasted with its line break is sent without it. A key
/// in the query never shows in a transport error, which goes into the
/// step's history and the logs. Before, the path went into the query, the
/// line break failed every request, and the error printed the URL whole.
#[tokio::test]
async fn the_endpoint_keeps_the_query_and_errors_do_not_show_it() {
    use workflow_ai::{Model, ModelRequest};
    let server = Server::start(|_, _| text("fine")).await;
    let client = OpenAiCompatible::builder()
        .base_url(format!("{}/?api-version=2024-10", server.url))
        .api_key("sk-test\n")
        .build()
        .unwrap();
    let request = ModelRequest {
        messages: Vec::new(),
        tools: Vec::new(),
        strict_tools: false,
        output: None,
    };
    let reply = client.complete(&request).await.unwrap();
    assert_eq!(reply.content.as_deref(), Some("fine"));
    let seen = server.requests();
    assert_eq!(seen[0].target, "/v1/chat/completions?api-version=2024-10");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));

    // Nothing listens on port 1.
    let unreachable = OpenAiCompatible::builder()
        .base_url("http://127.0.0.1:1/v1?api-key=sk-secret")
        .build()
        .unwrap();
    let err = unreachable.complete(&request).await.unwrap_err();
    assert!(!err.to_string().contains("sk-secret"), "{err}");
    assert!(!format!("{err:?}").contains("sk-secret"), "{err:?}");

    let err = OpenAiCompatible::builder()
        .base_url(&server.url)
        .api_key("sk-a\nsk-b")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("control character"), "{err}");
}

/// Extra headers go with every request, beside the bearer token: an
/// Azure deployment's `api-key`, a gateway's routing header. One that no
/// header can carry, or a second Authorization, is refused when building;
/// `Debug` shows names, not values. Before, no header but the bearer
/// token could be sent, and Azure's key-based deployments were out of reach.
#[tokio::test]
async fn extra_headers_go_with_every_request() {
    use workflow_ai::{Model, ModelRequest};
    let server = Server::start(|_, _| text("fine")).await;
    let client = OpenAiCompatible::builder()
        .base_url(&server.url)
        .header("api-key", "azure-key\n")
        .header("X-Title", "first")
        .header("x-title", "workflow")
        .build()
        .unwrap();
    assert!(!format!("{client:?}").contains("azure-key"), "{client:?}");
    let request = ModelRequest {
        messages: Vec::new(),
        tools: Vec::new(),
        strict_tools: false,
        output: None,
    };
    client.complete(&request).await.unwrap();
    let seen = &server.requests()[0];
    let has = |line: &str| seen.headers.iter().any(|h| h.eq_ignore_ascii_case(line));
    assert!(has("api-key: azure-key"), "{:?}", seen.headers);
    assert!(has("x-title: workflow"), "{:?}", seen.headers);
    assert!(!has("x-title: first"), "{:?}", seen.headers);
    assert_eq!(seen.authorization, None);

    let refused = |builder: workflow_ai::OpenAiBuilder| builder.build().unwrap_err().to_string();
    let base = || OpenAiCompatible::builder().base_url(&server.url);
    let err = refused(base().header("bad name", "v"));
    assert!(err.contains("not an HTTP header name"), "{err}");
    let err = refused(base().header("X-Key", "a\nb"));
    assert!(err.contains("`x-key`"), "{err}");
    let err = refused(base().api_key("sk").header("Authorization", "Bearer other"));
    assert!(err.contains("both set"), "{err}");
}

/// A turn to run on a worker without model settings pauses the instance,
/// saying what is missing; resumed once the worker has them, it goes on.
/// Before, the turn's step failed for good, and the instance with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_model_settings_pauses_the_loop() {
    if common::model_settings_set("a_worker_without_model_settings_pauses_the_loop") {
        return;
    }
    let server = Server::start(|_, _| text("Hello!")).await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let inst = SettingsLater::start(&engine, server.url.clone())
        .await
        .unwrap();
    let started = Instant::now();
    while inst.status().await.unwrap() != Status::Paused {
        assert!(started.elapsed() < Duration::from_secs(30), "never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let history = inst.history().await.unwrap();
    let paused = history
        .iter()
        .rfind(|e| e.kind == "paused")
        .expect("paused");
    let why = paused.message.as_deref().unwrap_or_default();
    assert!(why.contains("no model endpoint configured"), "{why}");
    assert!(server.requests().is_empty());
    inst.resume().await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "Hello!");
}

/// `strict_output(false)` sends the output's plain schema, `strict: false`,
/// for servers that refuse strict ones; the answer is still checked.
#[tokio::test(flavor = "multi_thread")]
async fn typed_output_can_ask_for_no_strict_schema() {
    let server = Server::start(|_, _| {
        text(r#"{"category": "Bug", "reason": "Login fails.", "urgent": true}"#)
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<ClassifyLoose>(&engine, input(&server, 4))
        .await
        .unwrap();
    assert_eq!(out.urgent, Some(true));
    let format = &server.requests()[0].body["response_format"];
    assert_eq!(format["json_schema"]["strict"], false, "{format}");
    assert_ne!(
        format["json_schema"]["schema"]["additionalProperties"], false,
        "the plain schema, not the strict form: {format}"
    );
}

/// The tool calls of one turn run side by side: two that wait for each
/// other both get through. Their steps are numbered in the order of the
/// calls, whichever ends first (the first call here ends last), and each
/// reply goes back under its own call's id. Before, they ran one after the
/// other and each waited alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_tool_calls_of_a_turn_run_side_by_side() {
    let server = Server::start(|n, _| match n {
        0 => tool_calls("meet", [json!({"who": "ada"}), json!({"who": "bob"})]),
        _ => text("done"),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let inst = Meeting::start(&engine, server.url.clone()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "done");
    let requests = server.requests();
    let replies: Vec<(String, String)> = requests[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].0, "c0");
    assert!(replies[0].1.contains("ada met"), "{replies:?}");
    assert_eq!(replies[1].0, "c1");
    assert!(replies[1].1.contains("bob met"), "{replies:?}");
    let steps = inst.steps().await.unwrap();
    let output = |key: &str| {
        steps
            .iter()
            .find(|s| s.key.ends_with(key))
            .and_then(|s| s.output.clone())
            .unwrap_or_else(|| panic!("no step {key} in {steps:?}"))
            .to_string()
    };
    assert!(output(":meet").contains("ada"), "{steps:?}");
    assert!(output(":meet#1").contains("bob"), "{steps:?}");
}

/// Arguments cut off mid-object go back to the model, in the history of
/// every later turn, as `{}`: local servers (llama.cpp, vLLM) parse the
/// arguments of each call in the history and refuse a request whose do
/// not read. The model is told what was wrong; the recorded turn keeps
/// what it sent. Before, the text went back as it came.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_arguments_are_sent_back_as_json() {
    let server = Server::start(|n, _| match n {
        0 => tool_call_raw("c1", "lookup_customer", r#"{"email": "#),
        _ => text("Done."),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let instance = Agent::start(&engine, input(&server, 5)).await.unwrap();
    let out = instance
        .result_timeout(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out, "Done.");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let messages = requests[1].body["messages"].as_array().unwrap();
    let assistant = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the turn sent back");
    let sent = assistant["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    let parsed: Value = serde_json::from_str(sent).expect("arguments sent back are JSON");
    assert!(parsed.is_object(), "{sent}");
    let reply = last_message(&requests[1].body)["content"].as_str().unwrap();
    assert!(reply.contains("not valid JSON"), "{reply}");
    let steps = instance.steps().await.unwrap();
    let turn = steps
        .iter()
        .find(|s| s.key == "execute:turn-0")
        .and_then(|s| s.output.clone())
        .expect("turn 0 recorded");
    assert_eq!(
        turn["tool_calls"][0]["function"]["arguments"], r#"{"email": "#,
        "the record keeps what the model sent"
    );
}

/// A key refused mid-loop (HTTP 401) pauses the instance, saying so,
/// rather than failing it for good; resumed once the key is mended, the
/// loop goes on from the refused turn, the turn before it read from the
/// record. Before, the instance failed, and only a new one, paying for
/// every turn again, could go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_pauses_the_loop_until_resumed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mended = Arc::new(AtomicBool::new(false));
    let server = Server::start({
        let mended = Arc::clone(&mended);
        move |n, _| match n {
            0 => tool_call("c1", "lookup_customer", json!({"email": "ada@example.com"})),
            _ if !mended.load(Ordering::SeqCst) => error(401),
            _ => text("Ada is on the pro plan."),
        }
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let inst = Agent::start(&engine, input(&server, 5)).await.unwrap();
    let why = paused_reason(&inst).await;
    assert!(why.contains("HTTP 401"), "{why}");
    assert!(why.contains("resume the instance"), "{why}");
    assert_eq!(server.requests().len(), 2, "a 401 is not retried");

    mended.store(true, Ordering::SeqCst);
    inst.resume().await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "Ada is on the pro plan.");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Only the first request is turn 0's: the others carry its reply.
    for later in &requests[1..] {
        let roles: Vec<&str> = later.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    }
}

/// A conversation grown past the model's context window ends the loop
/// with `NoAnswer`, its conversation in the error, for a loop that sums it
/// up. Before, it was a failed step, the conversation lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_too_long_for_the_model_is_handed_back() {
    let server = Server::start(|n, _| match n {
        0 => tool_call("c1", "lookup_customer", json!({"email": "ada@example.com"})),
        _ => (
            400,
            json!({"error": {"code": "context_length_exceeded", "type": "invalid_request_error",
                "message": "This model's maximum context length is 8192 tokens."}}),
        ),
    })
    .await;
    let engine = engine("memory:").await;
    let _worker = engine.start_worker();
    let out = outcome::<TooLong>(&engine, server.url.clone())
        .await
        .unwrap();
    assert!(
        out.starts_with("model loop `execute` got no answer: "),
        "{out}"
    );
    assert!(out.contains("context window"), "{out}");
    assert!(
        out.ends_with(r#"| "system" "user" "assistant" "tool""#),
        "{out}"
    );
    assert_eq!(server.requests().len(), 2, "a 400 is not retried");
}
