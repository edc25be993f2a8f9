//! Workflows as AI tools: `as_tool()` renderings for OpenAI (plain and
//! strict) and Anthropic, description overrides, non-object and
//! flattened-enum inputs, and `Toolbox` dispatch of function tools with
//! validated arguments.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
enum Size {
    Small,
    Large,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Shipping {
    /// Street and number.
    street: String,
    floor: Option<u8>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Order {
    /// The order to process.
    order_id: String,
    size: Size,
    /// Where to ship it.
    shipping: Option<Shipping>,
    note: Option<String>,
}

/// Process a new customer order
#[workflow(name = "processOrder")]
async fn process_order(_ctx: Ctx, order: Order) -> workflow::Result<String> {
    Ok(order.order_id)
}

/// Say hello
#[workflow(name = "hello")]
async fn hello(_ctx: Ctx, _input: ()) -> workflow::Result<String> {
    Ok("hello".into())
}

#[test]
fn as_tool_renders_for_each_provider() {
    let tool = ProcessOrder::as_tool();
    assert_eq!(tool.name(), "processOrder");
    assert_eq!(tool.description(), "Process a new customer order");
    assert_eq!(
        tool.parameters()["properties"]["order_id"]["description"],
        "The order to process."
    );

    let openai = tool.to_openai();
    assert_eq!(openai["type"], "function");
    assert_eq!(openai["function"]["name"], "processOrder");
    assert_eq!(openai["function"]["strict"], false);
    assert_eq!(
        openai["function"]["parameters"]["required"],
        json!(["order_id", "size"])
    );
    assert!(openai["function"]["parameters"].get("$schema").is_none());

    let strict = tool.to_openai_strict();
    assert_eq!(strict["function"]["strict"], true);
    let params = &strict["function"]["parameters"];
    assert_eq!(params["additionalProperties"], false);
    assert_eq!(
        params["required"],
        json!(["note", "order_id", "shipping", "size"])
    );
    assert_eq!(
        params["properties"]["note"]["type"],
        json!(["string", "null"])
    );
    let shipping = params["$defs"]["Shipping"].clone();
    assert_eq!(shipping["additionalProperties"], false);
    assert_eq!(shipping["required"], json!(["floor", "street"]));

    let anthropic = tool
        .with_description("Start order processing")
        .to_anthropic();
    assert_eq!(anthropic["name"], "processOrder");
    assert_eq!(anthropic["description"], "Start order processing");
    assert_eq!(anthropic["input_schema"]["type"], "object");
}

#[test]
fn a_unit_input_takes_an_empty_object() {
    let tool = Hello::as_tool();
    assert_eq!(tool.parameters()["type"], "object");
    assert_eq!(tool.parameters()["properties"], json!({}));
    assert_eq!(tool.to_openai_strict()["function"]["strict"], true);
    assert_eq!(tool.check_arguments(json!({})).unwrap(), json!(null));
    assert!(tool.check_arguments(json!({"x": 1})).is_err());
}

#[derive(Deserialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

/// A toolbox collects from an iterator; of two tools with one name the
/// later one stays, as with `Toolbox::tool`.
#[tokio::test]
async fn a_toolbox_collects_tools_and_keeps_the_last_of_a_name() {
    let engine = Engine::builder()
        .database_url("memory:")
        .build()
        .await
        .unwrap();
    let adds = |offset: i64| {
        Tool::function("add", "Add two numbers", move |x: Add| async move {
            Ok::<_, BoxError>(x.a + x.b + offset)
        })
    };
    // From an array or a Vec as from an iterator (`Execute::tools([..])`).
    let from_array = Toolbox::from([adds(0), adds(100)]);
    assert_eq!(from_array.tools().len(), 1);
    let sum = from_array
        .call(&engine, "add", json!({"a": 2, "b": 3}))
        .await;
    assert_eq!(sum.unwrap(), json!(105));
    assert_eq!(Toolbox::from(vec![adds(0)]).tools().len(), 1);
    let mut tools: Toolbox = [adds(0), adds(100)].into_iter().collect();
    tools.extend([Tool::function("neg", "Negate", |x: Add| async move {
        Ok::<_, BoxError>(-x.a)
    })]);
    let names: Vec<&str> = tools.tools().iter().map(Tool::name).collect();
    assert_eq!(names, ["add", "neg"]);
    let sum = tools.call(&engine, "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(sum.unwrap(), json!(105));
    // Replaced in its place, not moved to the end.
    let tools = tools.tool(adds(1_000));
    let names: Vec<&str> = tools.tools().iter().map(Tool::name).collect();
    assert_eq!(names, ["add", "neg"]);
    let sum = tools.call(&engine, "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(sum.unwrap(), json!(1_005));
}

/// An in-memory engine running `hello`.
async fn hello_engine() -> Engine {
    Engine::builder()
        .database_url("memory:")
        .register(Hello)
        .build()
        .await
        .unwrap()
}

/// A renamed workflow tool is called by its new name and still starts its
/// workflow.
#[tokio::test]
async fn a_renamed_workflow_tool_starts_its_workflow() {
    let engine = hello_engine().await;
    let _worker = engine.start_worker();
    let tool = Hello::as_tool()
        .rename("say_hello")
        .wait(std::time::Duration::from_secs(10));
    assert_eq!(tool.to_openai()["function"]["name"], "say_hello");
    let tools = Toolbox::new().tool(tool);
    let out = tools.call(&engine, "say_hello", json!({})).await.unwrap();
    assert_eq!(out, "hello");
    let started = engine.list(Query::new().workflow("hello")).await.unwrap();
    assert_eq!(started.items.len(), 1);
    // The old name is gone: an error of its own, naming the tools there are.
    let err = tools.call(&engine, "hello", json!({})).await.unwrap_err();
    match &err {
        workflow::Error::UnknownTool { tool, available } => {
            assert_eq!(
                (tool.as_str(), available.as_slice()),
                ("hello", &["say_hello".to_owned()][..])
            );
        }
        other => panic!("not UnknownTool: {other}"),
    }
    assert_eq!(err.kind(), workflow::ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains("no such tool; the tools are: say_hello"),
        "{err}"
    );
}

/// A call repeated with its key (a retried handler, the provider's
/// tool-call id) answers from the instance the first one started.
#[tokio::test]
async fn a_call_repeated_with_its_key_starts_one_instance() {
    let engine = hello_engine().await;
    // No worker: the first instance stays pending, active.
    let tools = Toolbox::new().tool(Hello::as_tool());
    let first = tools
        .call_once(&engine, "hello", json!({}), "call_abc")
        .await
        .unwrap();
    let again = tools
        .call_once(&engine, "hello", json!({}), "call_abc")
        .await
        .unwrap();
    assert_eq!(first["workflowId"], again["workflowId"]);
    let other = tools
        .call_once(&engine, "hello", json!({}), "call_def")
        .await
        .unwrap();
    assert_ne!(first["workflowId"], other["workflowId"]);
    let started = engine.list(Query::new().workflow("hello")).await.unwrap();
    assert_eq!(started.items.len(), 2);

    // Once the first completed, a retry of that call still answers from
    // it (with `wait`, its output) rather than placing a second one.
    let _worker = engine.start_worker();
    let id = InstanceId::from(first["workflowId"].as_str().unwrap());
    engine
        .wait_timeout(&id, Duration::from_secs(10))
        .await
        .expect("the first call's instance completes");
    let waiting = Toolbox::new().tool(Hello::as_tool().wait(Duration::from_secs(5)));
    let late = waiting
        .call_once(&engine, "hello", json!({}), "call_abc")
        .await
        .unwrap();
    assert_eq!(late, json!("hello"), "the first instance's output");
    // Without `wait`, the answer names it with the status it has.
    let again = tools
        .call_once(&engine, "hello", json!({}), "call_abc")
        .await
        .unwrap();
    assert_eq!(again["workflowId"], first["workflowId"]);
    assert_eq!(again["status"], json!("completed"), "{again}");
    let started = engine.list(Query::new().workflow("hello")).await.unwrap();
    assert_eq!(started.items.len(), 2, "no instance more");
}

#[test]
#[should_panic(expected = "must match")]
fn renaming_to_an_invalid_tool_name_panics() {
    let _ = Hello::as_tool().rename("say hello");
}

#[tokio::test]
async fn toolbox_dispatches_function_tools_with_checked_arguments() {
    let engine = Engine::builder()
        .database_url("memory:")
        .build()
        .await
        .unwrap();
    let tools = Toolbox::new().function("add", "Add two numbers", |x: Add| async move {
        Ok::<_, BoxError>(x.a + x.b)
    });
    assert_eq!(
        tools
            .call(&engine, "add", json!({"a": 2, "b": 3}))
            .await
            .unwrap(),
        json!(5)
    );
    let err = tools
        .call(&engine, "add", json!({"a": "two"}))
        .await
        .unwrap_err();
    let text = workflow::ToolReply::from_error(&err).text();
    assert!(
        text.contains("at /a: \"two\" is not of type \"integer\""),
        "{text}"
    );
    assert!(text.contains("\"b\" is a required property"), "{text}");
    let err = tools.call(&engine, "sub", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("the tools are: add"), "{err}");
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct RestockInput {
    units: u32,
}

#[workflow(name = "restock")]
async fn restock(_ctx: Ctx, input: RestockInput) -> workflow::Result<u32> {
    Ok(input.units)
}

#[workflow(name = "countdown")]
async fn countdown(_ctx: Ctx, from: u32) -> workflow::Result<u32> {
    Ok(from)
}

/// An argument the schema lets through but the input type refuses (JSON
/// Schema has no `u32` bound) is bad arguments like any other: the error
/// is `InvalidArguments` at its path in the arguments as sent, worded for
/// the model to correct.
#[tokio::test]
async fn arguments_the_input_type_refuses_are_invalid_arguments() {
    let engine = Engine::builder()
        .database_url("memory:")
        .register(Restock)
        .register(Countdown)
        .build()
        .await
        .unwrap();
    let err = engine
        .call_tool("restock", json!({"units": 4_294_967_296_u64}))
        .await
        .unwrap_err();
    let workflow::Error::InvalidArguments { tool, violations } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(tool, "restock");
    assert_eq!(violations[0].path, "/units");
    assert_eq!(violations[0].rule, "maximum", "{err}");
    // A field the tool's arguments do not have is named at its own path.
    let err = engine
        .call_tool("restock", json!({"units": 4, "colour": "red"}))
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations.len(), 1, "{err}");
    assert_eq!(violations[0].path, "/colour", "{err}");
    assert_eq!(violations[0].rule, "unevaluatedProperties", "{err}");
    assert!(violations[0].message.starts_with("unknown field"), "{err}");
    let err = engine
        .call_tool("restock", json!({"units": 4_294_967_296_u64}))
        .await
        .unwrap_err();
    assert!(
        workflow::ToolReply::from_error(&err)
            .text()
            .contains("Call the tool again"),
        "{err}"
    );
    let err = engine
        .call_tool("countdown", json!({"input": 4_294_967_296_u64}))
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations[0].path, "/input", "{err}");
    assert!(violations[0].message.contains("maximum"), "{err}");
}

/// A function tool's input refused by its type past the schema is
/// reported at its path in the arguments as sent, as a workflow tool's is.
#[tokio::test]
async fn function_tools_report_paths_in_the_arguments_as_sent() {
    let engine = Engine::builder()
        .database_url("memory:")
        .build()
        .await
        .unwrap();
    let tools = Toolbox::new()
        .function("square", "Square a number", |n: u32| async move {
            Ok::<_, BoxError>(n * n)
        })
        .function("restock", "Restock", |r: RestockInput| async move {
            Ok::<_, BoxError>(r.units)
        });
    assert_eq!(
        tools
            .call(&engine, "square", json!({"input": 4}))
            .await
            .unwrap(),
        json!(16)
    );
    let err = tools
        .call(&engine, "square", json!({"input": 4_294_967_296_u64}))
        .await
        .unwrap_err();
    let workflow::Error::InvalidArguments { tool, violations } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(tool, "square");
    assert_eq!(violations[0].path, "/input", "{err}");
    let err = tools
        .call(&engine, "restock", json!({"units": 4_294_967_296_u64}))
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations[0].path, "/units", "{err}");
    // A field the function's input does not have: at its own path too.
    let err = tools
        .call(&engine, "restock", json!({"units": 4, "colour": "red"}))
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations.len(), 1, "{err}");
    assert_eq!(violations[0].path, "/colour", "{err}");
    assert!(violations[0].message.starts_with("unknown field"), "{err}");
    assert!(violations[0].rule == "unevaluatedProperties", "{err}");
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case")]
enum Payment {
    Card { number: String },
    Invoice { days: u32 },
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct PaidOrder {
    order_id: String,
    #[serde(flatten)]
    payment: Payment,
}

#[workflow(name = "payOrder")]
async fn pay_order(_ctx: Ctx, order: PaidOrder) -> workflow::Result<String> {
    Ok(match order.payment {
        Payment::Card { number } => format!("{} by card {number}", order.order_id),
        Payment::Invoice { days } => format!("{} in {days} days", order.order_id),
    })
}

/// A flattened enum puts `oneOf` beside the struct's properties, which
/// providers refuse at the root: the input is wrapped like a non-object
/// one, paths included, and strict mode, which cannot express it, falls
/// back to `strict: false`.
#[tokio::test]
async fn a_flattened_enum_input_is_wrapped_for_providers() {
    let tool = PayOrder::as_tool();
    for params in [
        tool.to_openai()["function"]["parameters"].clone(),
        tool.to_anthropic()["input_schema"].clone(),
    ] {
        assert_eq!(params["type"], "object");
        for keyword in ["oneOf", "anyOf", "allOf", "not", "enum"] {
            assert!(params.get(keyword).is_none(), "{keyword}: {params}");
        }
        assert_eq!(params["required"], json!(["input"]));
    }
    assert_eq!(tool.to_openai_strict()["function"]["strict"], false);

    let engine = Engine::builder()
        .database_url("memory:")
        .register(PayOrder)
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let tool = tool.wait(std::time::Duration::from_secs(10));
    let out = tool
        .call(
            &engine,
            json!({"input": {"order_id": "o1", "method": "invoice", "days": 30}}),
        )
        .await
        .unwrap();
    assert_eq!(out, json!("o1 in 30 days"));
    let err = tool
        .call(
            &engine,
            json!({"input": {"order_id": "o1", "method": "invoice", "days": "soon"}}),
        )
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations[0].path, "/input/days", "{err}");
    // Only that: not also "unknown field" for the variant's own fields,
    // which the failed alternative left unevaluated.
    assert_eq!(violations.len(), 1, "{err}");
    // A misspelt field is named, not dropped by serde.
    let err = tool
        .call(
            &engine,
            json!({"input": {"order_id": "o1", "method": "invoice", "days": 3, "note": "x"}}),
        )
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations.len(), 1, "{err}");
    assert_eq!(violations[0].path, "/input/note", "{err}");
    // Out of the type's range: refused by the schema, which carries the
    // range, at the field (serde, reading a flattened field from a buffer,
    // could only place its refusal at the input).
    let err = tool
        .call(
            &engine,
            json!({"input": {"order_id": "o1", "method": "invoice", "days": 4_294_967_296_u64}}),
        )
        .await
        .unwrap_err();
    let violations = invalid_arguments(&err);
    assert_eq!(violations[0].path, "/input/days", "{err}");
    assert!(violations[0].message.contains("maximum"), "{err}");
}

/// The violations of an `InvalidArguments` error.
fn invalid_arguments(err: &workflow::Error) -> &[workflow::Violation] {
    match err {
        workflow::Error::InvalidArguments { violations, .. } => violations,
        other => panic!("not InvalidArguments: {other:?}"),
    }
}

/// The whole of what each provider receives, so that a change in schemars
/// or in the strict-mode rewrite shows here rather than as a provider's
/// 400 (which is not retried).
#[test]
fn each_provider_gets_exactly_this() {
    let tool = ProcessOrder::as_tool();
    let shipping = |strict: bool| {
        let mut floor = json!({"maximum": 255, "minimum": 0, "type": ["integer", "null"]});
        if !strict {
            floor["format"] = json!("uint8");
        }
        let mut shipping = json!({
            "properties": {
                "floor": floor,
                "street": {"description": "Street and number.", "type": "string"}
            },
            "required": if strict { json!(["floor", "street"]) } else { json!(["street"]) },
            "type": "object"
        });
        if strict {
            shipping["additionalProperties"] = json!(false);
        }
        shipping
    };
    let order = |strict: bool| {
        let mut order = json!({
            "$defs": {
                "Shipping": shipping(strict),
                "Size": {"enum": ["Small", "Large"], "type": "string"}
            },
            "properties": {
                "note": {"type": ["string", "null"]},
                "order_id": {"description": "The order to process.", "type": "string"},
                "shipping": {
                    "anyOf": [{"$ref": "#/$defs/Shipping"}, {"type": "null"}],
                    "description": "Where to ship it."
                },
                "size": {"$ref": "#/$defs/Size"}
            },
            "required": if strict {
                json!(["note", "order_id", "shipping", "size"])
            } else {
                json!(["order_id", "size"])
            },
            "title": "Order",
            "type": "object"
        });
        if strict {
            order["additionalProperties"] = json!(false);
        }
        order
    };
    assert_eq!(
        tool.to_openai_strict(),
        json!({
            "type": "function",
            "function": {
                "name": "processOrder",
                "description": "Process a new customer order",
                "parameters": order(true),
                "strict": true
            }
        })
    );
    assert_eq!(
        tool.to_openai(),
        json!({
            "type": "function",
            "function": {
                "name": "processOrder",
                "description": "Process a new customer order",
                "parameters": order(false),
                "strict": false
            }
        })
    );
    assert_eq!(
        tool.to_anthropic(),
        json!({
            "name": "processOrder",
            "description": "Process a new customer order",
            "input_schema": order(false)
        })
    );
    let hello = Hello::as_tool().to_anthropic();
    assert_eq!(
        hello,
        json!({
            "name": "hello",
            "description": "Say hello",
            "input_schema": {"type": "object", "properties": {}, "additionalProperties": false}
        })
    );
}

/// The same key with other arguments is another call (a provider's
/// `call_0` in another conversation): refused, naming the key, instead of
/// answered from the first call's instance while the second order is never
/// placed. The same arguments again are a retry, answered as before.
#[tokio::test]
async fn a_key_reused_with_other_arguments_is_refused() {
    let engine = Engine::builder()
        .database_url("memory:")
        .register(ProcessOrder)
        .build()
        .await
        .unwrap();
    let tools = Toolbox::new().tool(ProcessOrder::as_tool());
    let order = |id: &str| json!({"order_id": id, "size": "Small", "shipping": null, "note": null});
    let first = tools
        .call_once(&engine, "processOrder", order("A-1"), "call_0")
        .await
        .unwrap();
    let retried = tools
        .call_once(&engine, "processOrder", order("A-1"), "call_0")
        .await
        .unwrap();
    assert_eq!(first["workflowId"], retried["workflowId"]);
    let err = tools
        .call_once(&engine, "processOrder", order("B-2"), "call_0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("call key `call_0`"), "{err}");
    let started = engine
        .list(Query::new().workflow("processOrder"))
        .await
        .unwrap();
    assert_eq!(started.items.len(), 1);
}

/// A retry is the same call whichever engine it lands on: one that
/// registers the workflow stores the input as its type writes it (`null`
/// for each field left out), one that only knows the definition stores it
/// as sent. Neither way round is it taken for another call.
#[tokio::test]
async fn a_retry_through_another_kind_of_engine_is_the_same_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tools.db").display());
    let worker_engine = Engine::builder()
        .database_url(&url)
        .register(ProcessOrder)
        .build()
        .await
        .unwrap();
    // Knows `processOrder` from the definition the other recorded.
    let client_engine = Engine::builder().database_url(&url).build().await.unwrap();
    let tools = Toolbox::new().tool(ProcessOrder::as_tool());
    let sent = json!({"order_id": "A-1", "size": "Small"});
    for (first, retry, key) in [
        (&worker_engine, &client_engine, "conv-1/call_0"),
        (&client_engine, &worker_engine, "conv-2/call_0"),
    ] {
        let started = tools
            .call_once(first, "processOrder", sent.clone(), key)
            .await
            .unwrap();
        let again = tools
            .call_once(retry, "processOrder", sent.clone(), key)
            .await
            .unwrap();
        assert_eq!(started["workflowId"], again["workflowId"], "{key}");
    }
}

/// Asks for a restock through a toolbox whose workflow tool may not be
/// registered anywhere yet.
#[workflow(name = "restocker")]
async fn restocker(ctx: Ctx, _input: ()) -> workflow::Result<String> {
    let tools = Toolbox::new().tool(Restock::as_tool().wait(Duration::from_secs(10)));
    let reply = ctx
        .call_tool("restock", &tools, "restock", json!({"units": 4}))
        .await?;
    Ok(reply.text())
}

/// A workflow tool whose workflow no engine runs yet pauses the instance
/// (a deploy order), as a child workflow does, instead of telling the
/// model, in a reply recorded for good, that the tool does not exist; an
/// engine that runs it deployed, the resumed instance calls it.
#[tokio::test]
async fn a_workflow_tool_no_engine_runs_pauses_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tools.db").display());
    let engine = Engine::builder()
        .database_url(&url)
        .register(Restocker)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = Restocker::start(&engine, ()).await.unwrap();
    let started = std::time::Instant::now();
    while inst.status().await.unwrap() != Status::Paused {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never paused: {:?}",
            inst.info().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;
    let fixed = Engine::builder()
        .database_url(&url)
        .register(Restocker)
        .register(Restock)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = fixed.start_worker();
    fixed.resume(inst.id()).await.unwrap();
    let done = fixed
        .wait_timeout(inst.id(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.output, Some(json!("4")), "{:?}", done.error);
}
