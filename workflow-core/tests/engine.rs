//! The engine end to end on the in-memory store, with hand-written workflows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow_core::store::{ClaimRequest, StepRow, Store};
use workflow_core::*;

mod common;
use common::until_status;

/// How often each order's `fetch-order` and `charge` closures ran, by
/// order id: tests of this binary run side by side, each with its own ids.
static FETCHES: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
static CHARGES: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

fn count(calls: &Mutex<BTreeMap<String, u32>>, order: &str) {
    *calls.lock().unwrap().entry(order.to_owned()).or_default() += 1;
}

fn calls(calls: &Mutex<BTreeMap<String, u32>>, order: &str) -> u32 {
    calls
        .lock()
        .unwrap()
        .get(order)
        .copied()
        .unwrap_or_default()
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput {
    order_id: String,
    quantity: u32,
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct OrderState {
    processed: u32,
}

struct ProcessOrder;

impl Workflow for ProcessOrder {
    type Input = OrderInput;
    type Output = String;
    type State = OrderState;
    const NAME: &'static str = "processOrder";

    async fn run(&self, ctx: Ctx<OrderState>, input: OrderInput) -> Result<String, BoxError> {
        let price: u32 = ctx
            .step("fetch-order", || async {
                count(&FETCHES, &input.order_id);
                Ok::<_, BoxError>(7)
            })
            .await?;
        ctx.state_mut().processed += input.quantity;
        let total = price * input.quantity;
        ctx.step("charge", || async {
            count(&CHARGES, &input.order_id);
            Ok::<_, BoxError>(total)
        })
        .await?;
        Ok(format!("{} charged {total}", input.order_id))
    }
}

/// An engine on a memory store running only `workflow`, one instance at a
/// time: the next one waits claimed ahead.
async fn one_slot_engine<W: Workflow>(workflow: W) -> Engine {
    EngineBuilder::new()
        .store(MemoryStore::new())
        .register(workflow)
        .concurrency(1)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap()
}

/// As [`one_slot_engine`], on `store`.
async fn one_slot_engine_on<W: Workflow>(store: Arc<dyn Store>, workflow: W) -> Engine {
    EngineBuilder::new()
        .shared_store(store)
        .register(workflow)
        .concurrency(1)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap()
}

async fn engine_on(store: Arc<dyn Store>) -> Engine {
    EngineBuilder::new()
        .shared_store(store)
        .register(ProcessOrder)
        .register(Repeats)
        .register(Flaky)
        .register(Panics)
        .register(LongErrors)
        .register(OwnCount)
        .register(Starter)
        .register(EndsEarly)
        .register(Slow)
        .register(BadNames)
        .poll_interval(Duration::from_millis(20))
        .step_options(StepOptions::retries(3).backoff(
            Duration::from_millis(5),
            2.0,
            Duration::from_millis(20),
        ))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_workflow_runs_its_steps_and_returns_its_output() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = ProcessOrder::start(
        &engine,
        OrderInput {
            order_id: "A1".into(),
            quantity: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "A1 charged 21"
    );
    let info = inst.info().await.unwrap();
    assert_eq!(info.status, Status::Completed);
    assert_eq!(info.input["order_id"], "A1");
    assert_eq!(info.state.unwrap()["processed"], 3);
    assert_eq!(inst.state().await.unwrap().processed, 3);
    let steps: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(steps, ["fetch-order", "charge"]);
    let kinds: Vec<HistoryKind> = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "started",
            "step_completed",
            "step_completed",
            "state_changed",
            "completed"
        ]
    );
}

/// The next instance of `workflow`, claimed by a worker "ghost" that is
/// to die (`release_owner("ghost", ..)` then frees what it held).
async fn ghost_claim(store: &Arc<dyn Store>, workflow: &str) -> store::Claimed {
    let claim = ClaimRequest {
        owner: "ghost".into(),
        workflows: vec![workflow.into()],
        now: store::now_millis(),
        due_by: store::now_millis(),
        lease_until: store::now_millis() + 60_000,
        limit: 1,
    };
    store.claim(claim).await.unwrap().remove(0)
}

/// A worker records `fetch-order` of a `processOrder` instance with
/// `output`, and dies.
async fn ghost_fetched(store: &Arc<dyn Store>, output: &str) {
    let claimed = ghost_claim(store, "processOrder").await;
    let step = StepRow {
        key: "fetch-order".into(),
        output: Some(output.into()),
        error: None,
        state: None,
        attempts: 1,
        started_at: 0,
        finished_at: 0,
    };
    store.commit_step(&claimed.lease, step).await.unwrap();
    store
        .release_owner("ghost", store::now_millis())
        .await
        .unwrap();
}

#[tokio::test]
async fn recorded_steps_are_replayed_not_rerun() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine_on(Arc::clone(&store)).await;
    let inst = ProcessOrder::start(
        &engine,
        OrderInput {
            order_id: "replayed-1".into(),
            quantity: 2,
        },
    )
    .await
    .unwrap();
    // A worker that "dies" after recording the first step, with state.
    ghost_fetched(&store, "100").await;

    let _worker = engine.start_worker();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "replayed-1 charged 200",
        "the recorded price is reused"
    );
    assert_eq!(
        calls(&FETCHES, "replayed-1"),
        0,
        "fetch-order was not run again"
    );
    assert_eq!(calls(&CHARGES, "replayed-1"), 1);
    assert_eq!(inst.info().await.unwrap().runs, 2);
}

struct Repeats;

impl Workflow for Repeats {
    type Input = u32;
    type Output = Vec<u32>;
    type State = ();
    const NAME: &'static str = "repeats";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<Vec<u32>, BoxError> {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                ctx.step("item", || async move { Ok::<_, BoxError>(i * 10) })
                    .await?,
            );
        }
        Ok(out)
    }
}

#[tokio::test]
async fn repeated_step_names_get_numbered_keys() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Repeats::start(&engine, 3).await.unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        [0, 10, 20]
    );
    let keys: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys, ["item", "item#1", "item#2"]);
}

/// A loop's second `fetch` is keyed `fetch#1`; a step literally named
/// `fetch#1` used to get that key too, so the store kept one record for
/// both and every replay handed the loop's value to the other step.
struct Collides;

impl Workflow for Collides {
    type Input = ();
    type Output = (String, String);
    type State = ();
    const NAME: &'static str = "collides";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(String, String), BoxError> {
        let mut last = String::new();
        for i in 0..2 {
            last = ctx
                .step(
                    "fetch",
                    || async move { Ok::<_, BoxError>(format!("loop {i}")) },
                )
                .await?;
        }
        let other: String = ctx
            .step("fetch#1", || async {
                Ok::<_, BoxError>("other".to_owned())
            })
            .await?;
        // Had `fetch#1` run, the rest would come from replay.
        ctx.sleep("nap", Duration::from_millis(300)).await?;
        Ok((last, other))
    }
}

#[tokio::test]
async fn a_step_name_with_a_reserved_character_fails_the_instance_naming_both() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Collides)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = Collides::start(&engine, ()).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    let Error::Failed { message, .. } = err else {
        panic!("expected Failed, got {err:?}")
    };
    assert!(
        message.starts_with(
            "invalid step name `fetch#1` in workflow `collides`: it contains `#`, which the \
             engine reserves for the keys it derives from step names"
        ),
        "{message}"
    );
    // The loop's keys are as before; the refused step left no record.
    let steps: Vec<(String, Option<serde_json::Value>)> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.key, s.output))
        .collect();
    assert_eq!(
        steps,
        [
            ("fetch".to_owned(), Some("loop 0".into())),
            ("fetch#1".to_owned(), Some("loop 1".into())),
        ]
    );
}

/// Calls one name-taking `ctx` method with a name it must refuse, and
/// returns what the refusal says.
struct BadNames;

impl Workflow for BadNames {
    type Input = String;
    type Output = (String, Option<char>);
    type State = ();
    const NAME: &'static str = "badNames";

    async fn run(&self, ctx: Ctx, method: String) -> Result<(String, Option<char>), BoxError> {
        let item = |i: u32| async move { Ok::<_, BoxError>(i) };
        let outcome: Result<()> = match method.as_str() {
            "step_with" => {
                ctx.step_with("", StepOptions::no_retry(), || async {
                    Ok::<_, BoxError>(())
                })
                .await
            }
            "sleep" => ctx.sleep("nap#2", Duration::from_millis(1)).await,
            "sleep_until" => ctx.sleep_until("nap@", chrono::Utc::now()).await,
            "wait_for_event" => ctx.wait_for_event::<()>("approved[", None).await,
            "start_child" => ctx.start_child::<Repeats>("child]", 1).await.map(drop),
            "run_child" => ctx.run_child::<Repeats>("child#", 1).await.map(drop),
            "map" => ctx.map("items[0]", vec![1], 1, item).await.map(drop),
            "for_each" => {
                ctx.for_each("", vec![1], 1, |_: u32| async { Ok::<_, BoxError>(()) })
                    .await
            }
            "batch" => ctx
                .batch("chunks@2", vec![1], 1, |_: Vec<u32>| async {
                    Ok::<_, BoxError>(())
                })
                .await
                .map(drop),
            "call_tool" => ctx
                .call_tool("tool#", &Toolbox::new(), "t", serde_json::json!({}))
                .await
                .map(drop),
            other => panic!("no method {other}"),
        };
        match outcome {
            Err(Error::InvalidStepName {
                workflow,
                name,
                reserved,
                ..
            }) if workflow == "badNames" => Ok((name, reserved)),
            other => Err(format!("{method}: expected InvalidStepName, got {other:?}").into()),
        }
    }
}

#[tokio::test]
async fn every_name_taking_method_refuses_reserved_and_empty_names() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    for (method, name, reserved) in [
        ("step_with", "", None),
        ("sleep", "nap#2", Some('#')),
        ("sleep_until", "nap@", Some('@')),
        ("wait_for_event", "approved[", Some('[')),
        ("start_child", "child]", Some(']')),
        ("run_child", "child#", Some('#')),
        ("map", "items[0]", Some('[')),
        ("for_each", "", None),
        ("batch", "chunks@2", Some('@')),
        ("call_tool", "tool#", Some('#')),
    ] {
        let inst = BadNames::start(&engine, method.to_owned()).await.unwrap();
        assert_eq!(
            inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
            (name.to_owned(), reserved),
            "{method}"
        );
        assert!(
            inst.steps().await.unwrap().is_empty(),
            "{method} recorded a step"
        );
    }
    let children = engine.list(Query::default()).await.unwrap();
    assert!(
        children.items.iter().all(|i| i.workflow == "badNames"),
        "a refused child was started"
    );
}

/// Runs one step named by its input.
struct NamedStep;

impl Workflow for NamedStep {
    type Input = String;
    type Output = ();
    type State = ();
    const NAME: &'static str = "namedStep";

    async fn run(&self, ctx: Ctx, name: String) -> Result<(), BoxError> {
        ctx.step(&name, || async { Ok::<_, BoxError>(()) }).await?;
        Ok(())
    }
}

/// A step name, dedup key or tag that not every store can index (too long
/// for PostgreSQL's B-tree, or with a NUL) is refused before anything is
/// recorded: before, PostgreSQL refused the step's record and its run was
/// retried for ever, while SQLite took it.
#[tokio::test]
async fn names_and_keys_no_store_can_index_are_refused() {
    let store = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(store)
        .register(NamedStep)
        .register(Repeats)
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let long = "s".repeat(MAX_KEY_BYTES + 1);
    let inst = NamedStep::start(&engine, long.clone()).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("step name") && message.contains("513 bytes"),
        "{message}"
    );
    assert!(inst.steps().await.unwrap().is_empty());
    // At the limit, it runs.
    let inst = NamedStep::start(&engine, "s".repeat(MAX_KEY_BYTES))
        .await
        .unwrap();
    inst.result_timeout(Duration::from_secs(10)).await.unwrap();

    for (options, what) in [
        (StartOptions::new().key("a\0b"), "dedup key"),
        (StartOptions::new().key(long.clone()), "dedup key"),
        // The scheduler's own: it would stand for a tick and keep it from firing.
        (
            StartOptions::new().key("schedule:2026-12-07T09:00:00.000Z"),
            "dedup key",
        ),
        (StartOptions::new().tag("team\0", "x"), "tag name"),
        (
            StartOptions::new().tag("team", long.clone()),
            "value of tag \"team\"",
        ),
        // It would time out before it ran.
        (StartOptions::new().timeout(Duration::ZERO), "timeout"),
        (
            StartOptions::new().timeout(Duration::from_micros(500)),
            "timeout",
        ),
    ] {
        let err = Repeats::start_with(&engine, 1, options).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidStartOption { what: w, .. } if w.starts_with(what)),
            "{what}: {err:?}"
        );
    }
    let err = Repeats::get_or_create(&engine, "k\0", 1).await.unwrap_err();
    assert!(matches!(err, Error::InvalidStartOption { .. }), "{err:?}");
    let repeats = engine.list(Query::new().workflow("repeats")).await.unwrap();
    assert!(repeats.items.is_empty(), "{:?}", repeats.items);
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

struct Flaky;

impl Workflow for Flaky {
    type Input = bool;
    type Output = String;
    type State = ();
    const NAME: &'static str = "flaky";

    async fn run(&self, ctx: Ctx, always_fail: bool) -> Result<String, BoxError> {
        let v = ctx
            .step("shaky", || async move {
                if always_fail {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let call = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
                if call.is_multiple_of(3) {
                    panic!("boom on call {call}");
                }
                Ok("steady".to_owned())
            })
            .await?;
        Ok(v)
    }
}

#[tokio::test]
async fn a_panicking_step_is_a_failed_attempt_and_is_retried() {
    FLAKY_CALLS.store(0, Ordering::SeqCst);
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Flaky::start(&engine, false).await.unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "steady"
    );
    let history = inst.history().await.unwrap();
    let attempt = history
        .iter()
        .find(|e| e.kind == "attempt_failed")
        .expect("the panic is recorded");
    assert_eq!(attempt.step.as_deref(), Some("shaky"));
    assert_eq!(attempt.attempt, Some(1));
    assert!(
        attempt
            .message
            .as_deref()
            .unwrap()
            .contains("panicked: boom on call 0"),
        "{attempt:?}"
    );
    assert_eq!(inst.steps().await.unwrap()[0].attempts, 2);
    // The ends of both, typed, as the full reads give them.
    let tail = inst.history_tail(2).await.unwrap();
    assert_eq!(tail.items, history[history.len() - 2..]);
    assert_eq!(tail.total, history.len() as u64);
    let steps = inst.steps().await.unwrap();
    let tail = inst.steps_tail(1).await.unwrap();
    assert_eq!(
        (tail.items, tail.total),
        (steps[steps.len() - 1..].to_vec(), steps.len() as u64)
    );
}

#[tokio::test]
async fn a_step_out_of_attempts_fails_the_instance_with_its_error() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Flaky::start(&engine, true).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    let Error::Failed { message, .. } = err else {
        panic!("expected Failed, got {err:?}")
    };
    // The workflow is named once, by `Failed`, not again by the step.
    assert_eq!(
        message,
        "step `shaky` failed after 3 attempt(s): disk on fire"
    );
    assert_eq!(
        Error::Failed {
            id: inst.id().clone(),
            workflow: "flaky".into(),
            message
        }
        .to_string()
        .matches("`flaky`")
        .count(),
        1
    );
    let history = inst.history().await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == "attempt_failed")
            .count(),
        2
    );
    assert_eq!(history.last().unwrap().kind, "failed");
}

/// Fails with an error text of a megabyte: from a step (`true`) or by
/// `ctx.fail` (`false`).
struct LongErrors;

impl Workflow for LongErrors {
    type Input = bool;
    type Output = ();
    type State = ();
    const NAME: &'static str = "longErrors";

    async fn run(&self, ctx: Ctx, from_step: bool) -> Result<(), BoxError> {
        let body = "é".repeat(1 << 19);
        if from_step {
            ctx.step("call", || async {
                Err::<(), _>(permanent(format!("upstream said: {body}")))
            })
            .await?;
        }
        ctx.fail(body)?;
        Ok(())
    }
}

/// A step with a count of its own, on the workflow's retry policy; says
/// the policy it saw and how many attempts the step made.
struct OwnCount;

impl Workflow for OwnCount {
    type Input = ();
    type Output = (u32, u64, u32);
    type State = ();
    const NAME: &'static str = "ownCount";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(u32, u64, u32), BoxError> {
        let policy = ctx.step_options();
        let failed = ctx
            .step_with("flaky", policy.with_attempts(2), || async {
                Err::<(), _>("down")
            })
            .await;
        let Err(Error::Step { attempts, .. }) = failed else {
            return Err(format!("{failed:?}").into());
        };
        Ok((
            policy.max_attempts,
            policy.initial_backoff.as_millis() as u64,
            attempts,
        ))
    }
}

/// `ctx.step_options()` is the policy `ctx.step` uses (the engine's
/// here), and `with_attempts` changes only its count.
#[tokio::test]
async fn a_step_can_change_its_count_and_keep_the_policy() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = OwnCount::start(&engine, ()).await.unwrap();
    let (max, initial_ms, attempts) = inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!((max, initial_ms), (3, 5), "the engine's step_options");
    assert_eq!(attempts, 2);
}

/// Error text is recorded up to `MAX_ERROR_BYTES`, saying how much was
/// cut: uncut, a step's error holding a whole response body could
/// outgrow what its store writes in a row, and the step would be run
/// again and again.
#[tokio::test]
async fn long_error_text_is_cut_where_it_is_recorded() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    for from_step in [true, false] {
        let inst = LongErrors::start(&engine, from_step).await.unwrap();
        let err = inst
            .result_timeout(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Workflow, "{err}");
        let error = inst.info().await.unwrap().error.unwrap();
        assert!(error.len() <= MAX_ERROR_BYTES, "{}", error.len());
        assert!(
            error.ends_with(" bytes cut]"),
            "{}",
            &error[error.len() - 40..]
        );
        if from_step {
            let steps = inst.steps().await.unwrap();
            let recorded = steps[0].error.as_deref().unwrap();
            assert!(recorded.len() <= MAX_ERROR_BYTES);
            assert!(recorded.starts_with("upstream said: éé"));
            assert!(recorded.ends_with(" bytes cut]"));
        }
    }
}

struct Panics;

impl Workflow for Panics {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "panics";

    async fn run(&self, _ctx: Ctx, _: ()) -> Result<(), BoxError> {
        panic!("handler exploded")
    }
}

#[tokio::test]
async fn a_panicking_handler_fails_its_instance_and_the_engine_lives_on() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let bad = Panics::start(&engine, ()).await.unwrap();
    let good = Repeats::start(&engine, 1).await.unwrap();
    let err = bad
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("handler panicked: handler exploded"),
        "{err}"
    );
    assert_eq!(
        good.result_timeout(Duration::from_secs(10)).await.unwrap(),
        [0]
    );
}

/// Takes its state twice in one statement, the way that would hang.
struct TwoGuards;

impl Workflow for TwoGuards {
    type Input = ();
    type Output = u32;
    type State = Tally;
    const NAME: &'static str = "twoGuards";

    async fn run(&self, ctx: Ctx<Tally>, _: ()) -> Result<u32, BoxError> {
        // One guard at a time is fine.
        ctx.state_mut().n += 1;
        let n = ctx.state().n;
        ctx.state_mut().n = ctx.state().n + n;
        Ok(ctx.state().n)
    }
}

/// Two state guards alive at once on one thread would wait for each other
/// for ever; the second one panics instead, saying why, and the run fails
/// as any panic fails it.
#[tokio::test]
async fn a_second_state_guard_in_one_statement_panics_instead_of_hanging() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(TwoGuards)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = TwoGuards::start(&engine, ()).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("while this thread still holds the state"),
        "{err}"
    );
}

struct EndsEarly;

#[derive(Serialize, Deserialize, JsonSchema)]
enum Ending {
    Complete,
    Fail,
    FailSwallowed,
}

impl Workflow for EndsEarly {
    type Input = Ending;
    type Output = String;
    type State = ();
    const NAME: &'static str = "endsEarly";

    async fn run(&self, ctx: Ctx, how: Ending) -> Result<String, BoxError> {
        match how {
            Ending::Complete => {
                ctx.complete("early")?;
            }
            Ending::Fail => {
                ctx.fail("Missing order ID")?;
            }
            Ending::FailSwallowed => {
                let _ = ctx.fail("swallowed but final");
                // Further steps refuse to run.
                let next = ctx.step("after", || async { Ok::<_, BoxError>(1) }).await;
                assert!(matches!(next, Err(Error::Interrupted(_))));
                return Ok("ignored".into());
            }
        }
        Ok("late".into())
    }
}

#[tokio::test]
async fn complete_and_fail_end_the_instance_from_inside() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let done = EndsEarly::start(&engine, Ending::Complete).await.unwrap();
    assert_eq!(
        done.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "early"
    );
    let failed = EndsEarly::start(&engine, Ending::Fail).await.unwrap();
    let err = failed
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. } if message == "Missing order ID"),
        "{err:?}"
    );
    let swallowed = EndsEarly::start(&engine, Ending::FailSwallowed)
        .await
        .unwrap();
    let err = swallowed
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. } if message == "swallowed but final"),
        "{err:?}"
    );
}

struct Slow;

impl Workflow for Slow {
    type Input = u64;
    type Output = ();
    type State = ();
    const NAME: &'static str = "slow";
    const TIMEOUT: Duration = Duration::from_millis(200);

    async fn run(&self, ctx: Ctx, millis: u64) -> Result<(), BoxError> {
        ctx.step("nap", || async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

static STARTER_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Starts a `Slow` of its own, not a child, from a step, once: its first
/// attempt fails after the start, and the retry finds what it started.
struct Starter;

impl Workflow for Starter {
    type Input = ();
    type Output = InstanceId;
    type State = ();
    const NAME: &'static str = "starter";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<InstanceId, BoxError> {
        let started = ctx
            .step("start-slow", || async {
                let key = ctx.idempotency_key().expect("inside a step");
                let slow = Slow::get_or_create(ctx.engine(), key, 1)
                    .statuses(Status::ALL)
                    .await?;
                if STARTER_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err("the answer was lost".into());
                }
                Ok::<_, BoxError>(slow.id().clone())
            })
            .await?;
        Ok(started)
    }
}

/// `ctx.engine()` starts an independent workflow from a step: it runs,
/// with no parent, keyed by the step's idempotency key.
#[tokio::test]
async fn a_step_starts_an_independent_workflow_through_ctx_engine() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let starter = Starter::start(&engine, ()).await.unwrap();
    let id = starter
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let slow = Slow::handle(&engine, id);
    slow.result_timeout(Duration::from_secs(5)).await.unwrap();
    let info = slow.info().await.unwrap();
    assert_eq!(info.parent, None);
    let key = format!("{}/start-slow", starter.id());
    assert_eq!(info.key.as_deref(), Some(key.as_str()));
    assert_eq!(STARTER_ATTEMPTS.load(Ordering::SeqCst), 2, "retried once");
    let started = engine
        .list(Query::new().workflow("slow").key(key))
        .await
        .unwrap();
    assert_eq!(started.items.len(), 1, "one start across the retry");
}

/// `W::find` names the instance started with a key: the active one over
/// a newer one that ended, the newest ended one when none is active, and
/// none of another workflow.
#[tokio::test]
async fn find_gives_the_instance_of_a_key() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    assert!(Slow::find(&engine, "job").await.unwrap().is_none());
    let keyed = || {
        StartOptions::new()
            .key("job")
            .timeout(Duration::from_secs(600))
    };
    let first = Slow::start_with(&engine, 1, keyed()).await.unwrap();
    first.result_timeout(Duration::from_secs(5)).await.unwrap();
    let found = Slow::find(&engine, "job").await.unwrap().unwrap();
    assert_eq!(found.id(), first.id(), "the ended one, when none is active");
    let running = Slow::start_with(&engine, 60_000, keyed()).await.unwrap();
    until_status(&running, Status::InProgress).await;
    let newer = Slow::start_with(&engine, 1, keyed()).await.unwrap();
    newer.result_timeout(Duration::from_secs(5)).await.unwrap();
    let found = Slow::find(&engine, "job").await.unwrap().unwrap();
    assert_eq!(
        found.id(),
        running.id(),
        "the active one, over a newer ended one"
    );
    assert!(Flaky::find(&engine, "job").await.unwrap().is_none());
    let info = engine.find("slow", "job").await.unwrap().unwrap();
    assert_eq!(
        (info.id, info.status),
        (running.id().clone(), Status::InProgress)
    );
    running.cancel().await.unwrap();
}

/// A delayed start waits as `Pending` and runs once due; its timeout
/// counts from then, not from the start call.
#[tokio::test]
async fn a_delayed_start_runs_once_due_with_its_whole_timeout() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let delay = Duration::from_millis(1_000);
    let timeout = Duration::from_secs(3);
    let options = || StartOptions::new().delay(delay).timeout(timeout);
    let inst = Slow::start_with(&engine, 10, options()).await.unwrap();
    let info = inst.info().await.unwrap();
    assert_eq!(info.status, Status::Pending);
    assert_eq!(info.started_at, None);
    // The deadline is the whole timeout after the due time.
    let due = info.due_at.expect("due later");
    assert_eq!(due - info.created_at, chrono::Duration::seconds(1));
    assert_eq!(info.deadline_at, Some(due + chrono::Duration::seconds(3)));
    inst.result_timeout(Duration::from_secs(5)).await.unwrap();
    let info = inst.info().await.unwrap();
    assert_eq!(info.status, Status::Completed);
    let waited = info.started_at.unwrap() - info.created_at;
    assert!(waited >= chrono::Duration::milliseconds(1_000), "{waited}");
    // The same for a batch.
    let batch = Slow::start_many(&engine, vec![10, 20], options())
        .await
        .unwrap();
    for inst in batch {
        inst.result_timeout(Duration::from_secs(5)).await.unwrap();
        let info = inst.info().await.unwrap();
        assert!(
            info.started_at.unwrap() - info.created_at >= chrono::Duration::milliseconds(1_000)
        );
    }
}

#[tokio::test]
async fn past_its_deadline_an_instance_times_out() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Slow::start(&engine, 5_000).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ended {
                status: Status::TimedOut,
                ..
            }
        ),
        "{err:?}"
    );
    // A per-instance timeout overrides the workflow's.
    let roomy = Slow::start_with(
        &engine,
        300,
        StartOptions::new().timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    roomy.result_timeout(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn start_json_checks_the_input_and_names_the_field() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let err = engine
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": "x", "quantity": "three"}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid input for workflow `processOrder`: at /quantity: "three" is not of type "integer""#
    );
    // Every violation at once, each with its path.
    let err = engine
        .start_json(
            "processOrder",
            serde_json::json!({"quantity": -1, "extra": true}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    let Error::InvalidInput {
        workflow,
        violations,
    } = err
    else {
        panic!("expected InvalidInput")
    };
    assert_eq!(workflow, "processOrder");
    let found: Vec<(String, String)> = violations
        .into_iter()
        .map(|v| (v.path, v.message))
        .collect();
    assert!(
        found.contains(&(
            String::new(),
            r#""order_id" is a required property"#.to_owned()
        )),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(path, msg)| path == "/quantity" && msg.contains("minimum")),
        "{found:?}"
    );
    let err = engine
        .start_json("nope", serde_json::json!({}), StartOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownWorkflow(name) if name == "nope"));
    let _worker = engine.start_worker();
    let id = engine
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": "J", "quantity": 1}),
            StartOptions::new().tag("via", "json"),
        )
        .await
        .unwrap();
    let inst = ProcessOrder::handle(&engine, id);
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "J charged 7"
    );
    assert_eq!(inst.info().await.unwrap().tags["via"], "json");
}

#[tokio::test]
async fn get_or_create_dedups_concurrent_callers() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let (instance, created) = Repeats::get_or_create(&engine, "batch-7", 1)
                .with_created()
                .await
                .unwrap();
            (instance.id().clone(), created)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut creators = 0;
    for task in tasks {
        let (id, created) = task.await.unwrap();
        ids.insert(id);
        creators += usize::from(created);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(creators, 1, "exactly one caller created it");
    let page = engine.list(Query::new().key("batch-7")).await.unwrap();
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn shutdown_hands_running_instances_back() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(Slow)
        .shutdown_grace(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = Slow::start_with(
        &engine,
        60_000,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        if inst.status().await.unwrap() == Status::InProgress {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;
    assert_eq!(
        inst.status().await.unwrap(),
        Status::Pending,
        "released for another worker"
    );
    let kinds: Vec<HistoryKind> = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.last(), Some(&HistoryKind::Released));
}

static STEPS_ENTERED: AtomicU32 = AtomicU32::new(0);

/// Ten steps of 300 ms, counting the closures entered.
struct TenSteps;

impl Workflow for TenSteps {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "tenSteps";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        for i in 0..10u32 {
            ctx.step(&format!("step-{i}"), || async move {
                STEPS_ENTERED.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, BoxError>(i)
            })
            .await?;
        }
        Ok(10)
    }
}

/// A shutdown lets the step running finish and be recorded, then hands
/// the instance back before its next step, rather than run the rest of
/// the handler in the grace period (a step begun late in it would be cut
/// halfway, its side effect made again by the next worker). Before, the
/// handler went on through all ten steps inside the grace.
#[tokio::test]
async fn a_shutdown_hands_instances_back_at_their_next_step() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = || {
        EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .register(TenSteps)
            .poll_interval(Duration::from_millis(10))
            .shutdown_grace(Duration::from_secs(30))
            .build()
    };
    let first = engine().await.unwrap();
    let worker = first.start_worker();
    let inst = TenSteps::start(&first, ()).await.unwrap();
    for _ in 0..500 {
        if STEPS_ENTERED.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.shutdown().await;
    let info = inst.info().await.unwrap();
    assert_eq!(info.status, Status::Pending, "handed back: {info:?}");
    // Due from its creation: ahead of what came due while it ran.
    assert!(
        info.due_at.is_some_and(|due| due <= info.created_at),
        "{info:?}"
    );
    let recorded = inst.steps().await.unwrap().len() as u32;
    assert!(
        (1..10).contains(&recorded),
        "the running step was recorded, the rest left: {recorded}"
    );
    assert_eq!(
        STEPS_ENTERED.load(Ordering::SeqCst),
        recorded,
        "no step begun and left unrecorded"
    );
    let history = inst.history().await.unwrap();
    let handed = history
        .iter()
        .rev()
        .find(|e| e.kind == HistoryKind::Suspended)
        .unwrap();
    assert!(
        handed
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("shutting down"),
        "{handed:?}"
    );

    // The next worker takes it at once and goes on from the record.
    let second = engine().await.unwrap();
    let _worker = second.start_worker();
    let inst = TenSteps::handle(&second, inst.id().clone());
    assert_eq!(
        inst.result_timeout(Duration::from_secs(20)).await.unwrap(),
        10
    );
    assert_eq!(STEPS_ENTERED.load(Ordering::SeqCst), 10, "each step once");
}

/// A store that stops answering claims does not hold a shutdown past its
/// grace period: the claim in flight is given up (what it would claim
/// resumes when leases expire), the running handler is stopped at the
/// end of the grace and handed back. Before, the shutdown waited for the
/// claim for ever.
#[tokio::test]
async fn a_hung_claim_does_not_hold_up_a_shutdown() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(Slow)
        .poll_interval(Duration::from_millis(10))
        .shutdown_grace(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = Slow::start_with(
        &engine,
        60_000,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    until_status(&inst, Status::InProgress).await;
    store.hang_claims(true);
    // A second instance: the worker has a free slot and claims for it.
    Slow::start(&engine, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = tokio::time::timeout(Duration::from_secs(10), worker.shutdown()).await;
    assert!(shutdown.is_ok(), "the shutdown waited for the hung claim");
    assert_eq!(
        inst.status().await.unwrap(),
        Status::Pending,
        "the running instance was handed back"
    );
}

/// How often each `Counted<N>`'s step ran: one count per test that reads
/// one (tests of this binary run side by side).
static COUNTED_CALLS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// One step that counts its calls in `COUNTED_CALLS[N]`.
struct Counted<const N: usize>;

impl<const N: usize> Workflow for Counted<N> {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = ["counted", "counted1"][N];

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("count", || async {
            COUNTED_CALLS[N].fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

fn counted(n: usize) -> u32 {
    COUNTED_CALLS[n].load(Ordering::SeqCst)
}

/// An engine running `Counted<N>` whose store holds claim answers back,
/// a worker, and an instance claimed in the store whose answer is held.
async fn claim_held<const N: usize>() -> (
    Arc<workflow_core::testing::Unreachable<MemoryStore>>,
    Engine,
    Worker,
    Instance<Counted<N>>,
) {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(Counted::<N>)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    store.hold_claim_answers(true);
    let inst = Counted::<N>::start(&engine, ()).await.unwrap();
    let worker = engine.start_worker();
    until_status(&inst, Status::InProgress).await;
    (store, engine, worker, inst)
}

/// A cancel that lands while the claim that took the instance is on its
/// way back: the worker does not start it. Before, the cancel searched
/// the queues before the claim's answer reached one, and the step ran
/// after `cancel()` had returned.
#[tokio::test]
async fn a_cancel_beats_a_claim_in_flight() {
    let (store, engine, worker, inst) = claim_held::<0>().await;
    inst.cancel().await.unwrap();
    store.hold_claim_answers(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counted(0), 0, "the step ran after the cancel");
    assert!(engine.running_here().is_empty());
    assert_eq!(inst.status().await.unwrap(), Status::Cancelled);
    // The worker goes on: a new instance runs.
    let next = Counted::<0>::start(&engine, ()).await.unwrap();
    next.result_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(counted(0), 1);
    worker.shutdown().await;
}

/// A pause that lands while the claim that took the instance is on its
/// way back: the instance starts paused, and runs no step until resumed.
/// Before, the claim queued the row as it was claimed, and steps ran
/// after `pause()` had returned, until the next heartbeat.
#[tokio::test]
async fn a_pause_beats_a_claim_in_flight() {
    let (store, _engine, worker, inst) = claim_held::<1>().await;
    inst.pause().await.unwrap();
    store.hold_claim_answers(false);
    until_status(&inst, Status::Paused).await;
    assert_eq!(counted(1), 0, "the step ran after the pause");
    inst.resume().await.unwrap();
    inst.result_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(counted(1), 1);
    worker.shutdown().await;
}

/// `Engine::health` counts the workers running here and names the store
/// calls that keep failing, clearing them once they work again.
#[tokio::test]
async fn health_reports_workers_and_failing_store_calls() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(Counted::<0>)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let health = engine.health();
    assert_eq!(health.workers, 0);
    assert!(!health.is_healthy(), "no worker runs");
    let worker = engine.start_worker();
    let health = engine.health();
    assert_eq!(health.workers, 1);
    assert!(health.is_healthy(), "{health:?}");
    store.set_down(true);
    let mut failing = Vec::new();
    for _ in 0..200 {
        failing = engine.health().failing;
        if !failing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failing
            .iter()
            .any(|f| f.what == "claiming work" && f.failures >= 1),
        "{failing:?}"
    );
    assert!(!engine.health().is_healthy());
    assert!(failing.iter().all(|f| !f.error.is_empty()), "{failing:?}");
    store.set_down(false);
    let mut health = engine.health();
    for _ in 0..500 {
        health = engine.health();
        if health.is_healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(health.is_healthy(), "{health:?}");
    worker.shutdown().await;
    assert_eq!(engine.health().workers, 0);
}

/// Dropping the future of `Engine::run` (a `select!` that took another
/// branch) stops its worker: nothing is claimed after it.
#[tokio::test]
async fn dropping_run_stops_its_worker() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Slow)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let running = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run().await }
    });
    let before = Slow::start(&engine, 1).await.unwrap();
    before.result_timeout(Duration::from_secs(5)).await.unwrap();
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let after = Slow::start_with(
        &engine,
        1,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(after.info().await.unwrap().runs, 0, "run after the drop");
    // A worker started now runs it: it was due all along.
    let worker = engine.start_worker();
    after.result_timeout(Duration::from_secs(5)).await.unwrap();
    worker.shutdown().await;
}

/// `run_until` runs a worker until its signal: a handler running then
/// finishes within the grace period, the call returns `Clean`, and
/// nothing is claimed afterwards.
#[tokio::test]
async fn run_until_stops_its_worker_at_the_signal() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Slow)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .run_until(async {
                    let _ = signalled.await;
                })
                .await
        }
    });
    let running_then = Slow::start_with(
        &engine,
        300,
        StartOptions::new().timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    until_status(&running_then, Status::InProgress).await;
    signal.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run_until returns once its worker stopped")
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Stopped::Clean);
    assert_eq!(running_then.info().await.unwrap().status, Status::Completed);
    let after = Slow::start(&engine, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(after.info().await.unwrap().runs, 0, "run after the signal");
}

#[tokio::test]
async fn list_pages_newest_first() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(Repeats::start(&engine, n).await.unwrap().id().clone());
    }
    let first = engine
        .list(Query::new().workflow("repeats").limit(2))
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        [ids[4].clone(), ids[3].clone()]
    );
    let second = engine
        .list(
            Query::new()
                .workflow("repeats")
                .limit(2)
                .after(first.next.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(second.items[0].id, ids[2]);
    let pending = engine
        .list(Query::new().status(Status::Pending))
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 5);
    assert!(pending.next.is_none());
    // A page exactly full with nothing after it offers no next page.
    let exact = engine
        .list(Query::new().workflow("repeats").limit(5))
        .await
        .unwrap();
    assert_eq!((exact.items.len(), exact.next), (5, None));
    let short = engine
        .list(Query::new().workflow("repeats").limit(4))
        .await
        .unwrap();
    assert_eq!(short.next.as_ref(), Some(&ids[1]));
}

static SIGNALLED: AtomicU32 = AtomicU32::new(0);

struct Waits;

impl Workflow for Waits {
    type Input = u64;
    type Output = String;
    type State = ();
    const NAME: &'static str = "waits";

    async fn run(&self, ctx: Ctx, millis: u64) -> Result<String, BoxError> {
        let signal = ctx.signal();
        tokio::spawn(async move {
            signal.cancelled().await;
            SIGNALLED.fetch_add(1, Ordering::SeqCst);
        });
        ctx.step("wait", || async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok("done".into())
    }
}

async fn control_engine(store: Arc<dyn Store>) -> Engine {
    EngineBuilder::new()
        .shared_store(store)
        .register(Waits)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn cancel_stops_a_running_handler_and_fires_its_signal() {
    let engine = control_engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Waits::start_with(
        &engine,
        60_000,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    until_status(&inst, Status::InProgress).await;
    let before = SIGNALLED.load(Ordering::SeqCst);
    inst.cancel().await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ended {
                status: Status::Cancelled,
                ..
            }
        ),
        "{err:?}"
    );
    for _ in 0..100 {
        if SIGNALLED.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        SIGNALLED.load(Ordering::SeqCst) > before,
        "ctx.signal() fired"
    );
    // A second cancel is a clear error and changes nothing.
    let err = inst.cancel().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyFinished {
                status: Status::Cancelled,
                ..
            }
        ),
        "{err:?}"
    );
    let history: Vec<HistoryKind> = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(history.iter().filter(|k| *k == "cancelled").count(), 1);
    assert!(!history.contains(&HistoryKind::StepCompleted));
}

/// Another process moves the deadline just before it passes, before this
/// worker's next heartbeat could tell the handler: the run is handed back
/// and goes on under the new deadline instead of ending `TimedOut`.
#[tokio::test]
async fn a_deadline_moved_elsewhere_just_in_time_is_kept() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(Waits)
        .poll_interval(Duration::from_millis(20))
        // Heartbeats every second: none comes before the old deadline.
        .lease_duration(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let other = control_engine(Arc::clone(&store)).await;
    let _worker = runner.start_worker();
    let inst = Waits::start_with(
        &runner,
        2_000,
        StartOptions::new().timeout(Duration::from_millis(1_000)),
    )
    .await
    .unwrap();
    until_status(&inst, Status::InProgress).await;
    other
        .set_timeout(inst.id(), Timeout::In(Duration::from_secs(30)))
        .await
        .unwrap();
    let out = inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(out, "done");
}

/// Cancels the token `ctx.signal()` gave it, as a drop guard would.
struct DropsItsSignal;

impl Workflow for DropsItsSignal {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "dropsItsSignal";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let guard = ctx.signal().drop_guard();
        ctx.step("work", || async { Ok::<_, BoxError>(()) }).await?;
        drop(guard);
        ctx.step("more", || async { Ok::<_, BoxError>(()) }).await?;
        assert!(!ctx.signal().is_cancelled());
        Ok("done".into())
    }
}

#[tokio::test]
async fn a_handler_cancelling_its_own_signal_stops_nothing() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(DropsItsSignal)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = DropsItsSignal::start(&engine, ()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(out, "done");
    let info = engine.instance(inst.id()).await.unwrap();
    assert_eq!(info.runs, 1, "ran once, never handed back");
}

#[tokio::test]
async fn cancel_from_another_engine_reaches_the_running_handler() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runner = control_engine(Arc::clone(&store)).await;
    let other = control_engine(Arc::clone(&store)).await;
    let _worker = runner.start_worker();
    let inst = Waits::start_with(
        &runner,
        60_000,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    until_status(&inst, Status::InProgress).await;
    Waits::handle(&other, inst.id().clone())
        .cancel()
        .await
        .unwrap();
    // The runner learns of it at its next heartbeat (about a second) and drops the handler.
    for _ in 0..300 {
        if runner.running_here().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(runner.running_here().is_empty(), "the handler was stopped");
    assert_eq!(inst.status().await.unwrap(), Status::Cancelled);
}

#[tokio::test]
async fn cancel_a_pending_instance_and_a_finished_one() {
    let engine = control_engine(Arc::new(MemoryStore::new())).await;
    let pending = Waits::start(&engine, 1).await.unwrap();
    pending.cancel().await.unwrap();
    assert_eq!(pending.status().await.unwrap(), Status::Cancelled);
    let _worker = engine.start_worker();
    let done = Waits::start(&engine, 1).await.unwrap();
    assert_eq!(
        done.result_timeout(Duration::from_secs(5)).await.unwrap(),
        "done"
    );
    assert!(matches!(
        done.cancel().await,
        Err(Error::AlreadyFinished {
            status: Status::Completed,
            ..
        })
    ));
    assert_eq!(done.status().await.unwrap(), Status::Completed);
    assert!(matches!(
        engine.cancel(&InstanceId::new()).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn set_timeout_moves_the_deadline_of_a_running_instance() {
    let engine = control_engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    // Shortened while running: times out.
    let long = Waits::start_with(
        &engine,
        60_000,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    until_status(&long, Status::InProgress).await;
    long.set_timeout(Timeout::In(Duration::from_millis(100)))
        .await
        .unwrap();
    let err = long
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ended {
                status: Status::TimedOut,
                ..
            }
        ),
        "{err:?}"
    );
    // Extended while running: completes.
    // The deadline leaves a loaded machine a second to see it running.
    let short = Waits::start_with(
        &engine,
        2_000,
        StartOptions::new().timeout(Duration::from_millis(1_000)),
    )
    .await
    .unwrap();
    until_status(&short, Status::InProgress).await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(30);
    short.set_timeout(Timeout::At(later)).await.unwrap();
    assert_eq!(
        short.result_timeout(Duration::from_secs(5)).await.unwrap(),
        "done"
    );
    let info = short.info().await.unwrap();
    assert_eq!(
        info.deadline_at.unwrap().timestamp_millis(),
        later.timestamp_millis()
    );
    let err = short
        .set_timeout(Timeout::In(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyFinished { .. }));
}

#[tokio::test]
async fn instances_of_unregistered_workflows_are_left_alone_and_listed() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let old = engine_on(Arc::clone(&store)).await;
    let orphan = ProcessOrder::start(
        &old,
        OrderInput {
            order_id: "O".into(),
            quantity: 1,
        },
    )
    .await
    .unwrap();
    // A newer deployment no longer registers processOrder.
    let new = control_engine(Arc::clone(&store)).await;
    let _worker = new.start_worker();
    let done = Waits::start(&new, 1).await.unwrap();
    done.result_timeout(Duration::from_secs(5)).await.unwrap();
    let info = new.instance(orphan.id()).await.unwrap();
    assert_eq!(info.status, Status::Pending, "not failed, not run");
    let listed = new
        .list(Query::new().workflow("processOrder"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        new.counts(Some("processOrder")).await.unwrap()[&Status::Pending],
        1
    );
}

/// A typed start of a workflow no engine on the store registers (the
/// `.register(W)` forgotten) is `UnknownWorkflow`, as `start_json` is, not
/// an instance left `Pending` for ever; a client engine without the
/// registration still starts what another engine recorded.
#[tokio::test]
async fn typed_starts_of_workflows_no_engine_runs_are_unknown() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .build()
        .await
        .unwrap();
    let input = || OrderInput {
        order_id: "U".into(),
        quantity: 1,
    };
    let err = ProcessOrder::start(&client, input()).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownWorkflow(name) if name == "processOrder"),
        "{err:?}"
    );
    let err = ProcessOrder::get_or_create(&client, "k", input())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownWorkflow(_)), "{err:?}");
    let err = ProcessOrder::start_many(&client, vec![input()], StartOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownWorkflow(_)), "{err:?}");
    assert!(client.list(Query::new()).await.unwrap().items.is_empty());

    let worker_side = engine_on(Arc::clone(&store)).await;
    let _worker = worker_side.start_worker();
    let inst = ProcessOrder::start(&client, input()).await.unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(5)).await.unwrap(),
        "U charged 7"
    );
}

/// A typed handle on an instance of another workflow says so when used,
/// rather than reading that workflow's output as its own (both are
/// strings here, so the read would succeed).
#[tokio::test]
async fn a_handle_of_the_wrong_workflow_is_an_error() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let order = completed(&engine, order("W")).await;
    let wrong = Flaky::handle(&engine, order.id().clone());
    let err = wrong.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WrongWorkflow { expected, actual, .. }
            if expected == "flaky" && actual == "processOrder"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "workflow instance {} is an instance of `processOrder`, not of `flaky`",
            order.id()
        )
    );
    assert!(matches!(
        wrong.state().await,
        Err(Error::WrongWorkflow { .. })
    ));
}

/// `processOrder` as a later version might declare it: its output is a
/// number now, and its state has gained a required field.
struct ProcessOrderRetyped;

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct RetypedState {
    processed: u32,
    refunded: bool,
}

impl Workflow for ProcessOrderRetyped {
    type Input = OrderInput;
    type Output = u32;
    type State = RetypedState;
    const NAME: &'static str = "processOrder";

    async fn run(&self, _ctx: Ctx<RetypedState>, input: OrderInput) -> Result<u32, BoxError> {
        Ok(input.quantity)
    }
}

/// A stored output or state that does not read as the handle's type is
/// the caller's mismatch, named as such: not a damaged row of the store,
/// whose kind says a retry may pass.
#[tokio::test]
async fn an_output_of_another_type_is_a_wrong_type_not_a_store_error() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let order = completed(
        &engine,
        OrderInput {
            quantity: 2,
            ..order("T")
        },
    )
    .await;
    let retyped = ProcessOrderRetyped::handle(&engine, order.id().clone());
    let err = retyped.result().await.unwrap_err();
    assert!(
        matches!(&err, Error::WrongType { id, workflow, what: "output", .. }
            if id == order.id() && workflow == "processOrder"),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = retyped.state().await.unwrap_err();
    assert!(
        matches!(&err, Error::WrongType { what: "state", message, .. }
            if message.contains("refunded")),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // The original type still reads both.
    assert_eq!(order.state().await.unwrap().processed, 2);
}

/// Acting through a handle on another workflow's instance is refused
/// before it changes anything: cancelling the wrong instance is worse
/// than reading it.
#[tokio::test]
async fn a_handle_of_the_wrong_workflow_changes_nothing() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    // No worker: the instance stays pending, so every control call could act.
    let order = ProcessOrder::start(
        &engine,
        OrderInput {
            order_id: "X".into(),
            quantity: 1,
        },
    )
    .await
    .unwrap();
    let wrong = Flaky::handle(&engine, order.id().clone());
    let wrong_workflow = |r: Result<(), Error>| matches!(r, Err(Error::WrongWorkflow { .. }));
    assert!(wrong_workflow(wrong.cancel().await));
    assert!(wrong_workflow(wrong.pause().await));
    assert!(wrong_workflow(wrong.resume().await));
    assert!(wrong_workflow(wrong.send_event("go", 1).await));
    assert!(wrong_workflow(
        wrong.send_event_once("go", "k", 1).await.map(drop)
    ));
    assert!(wrong_workflow(
        wrong
            .set_timeout(Timeout::In(Duration::from_secs(60)))
            .await
    ));
    assert!(wrong_workflow(wrong.history().await.map(drop)));
    assert!(wrong_workflow(wrong.steps().await.map(drop)));
    assert!(wrong_workflow(wrong.info().await.map(drop)));
    let info = order.info().await.unwrap();
    assert_eq!(info.status, Status::Pending);
    let history = order.history().await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    // The right workflow's handle on the same id works, and an unknown id
    // says so.
    let right = ProcessOrder::handle(&engine, order.id().clone());
    right.cancel().await.unwrap();
    assert_eq!(order.status().await.unwrap(), Status::Cancelled);
    let unknown = Flaky::handle(&engine, "no-such-instance");
    assert!(
        matches!(unknown.cancel().await, Err(Error::NotFound(_))),
        "{:?}",
        unknown.cancel().await
    );
}

#[tokio::test]
async fn start_json_works_from_definitions_other_engines_recorded() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let worker_side = engine_on(Arc::clone(&store)).await;
    // A tool with no workflow code, on the same store.
    let tool = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .build()
        .await
        .unwrap();
    let names: Vec<String> = tool
        .definitions()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&"processOrder".to_owned()), "{names:?}");
    let err = tool
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": 5}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("at /order_id: 5 is not of type \"string\""),
        "{text}"
    );
    assert!(
        text.contains("\"quantity\" is a required property"),
        "{text}"
    );
    let id = tool
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": "T", "quantity": 2}),
            StartOptions::new(),
        )
        .await
        .unwrap();
    let _worker = worker_side.start_worker();
    let inst = ProcessOrder::handle(&worker_side, id);
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "T charged 14"
    );
    assert!(matches!(
        tool.start_json("nope", serde_json::json!({}), StartOptions::new())
            .await,
        Err(Error::UnknownWorkflow(_))
    ));
}

/// Schemars' description of a chrono timestamp (its `chrono04` feature).
fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Reminder {
    #[schemars(schema_with = "date_time")]
    due: chrono::DateTime<chrono::Utc>,
}

struct Remind;

impl Workflow for Remind {
    type Input = Reminder;
    type Output = i64;
    type State = ();
    const NAME: &'static str = "remind";

    async fn run(&self, _ctx: Ctx, input: Reminder) -> Result<i64, BoxError> {
        Ok(input.due.timestamp())
    }
}

/// Where the workflow's type is not here to decode an input, the recorded
/// schema's formats are checked: a timestamp spelt "tomorrow" is refused
/// at the start, naming the field and the rule, rather than accepted and
/// left to pause the instance when a worker fails to decode it.
#[tokio::test]
async fn start_json_from_a_recorded_definition_checks_formats() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let worker_side = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(Remind)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let tool = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .build()
        .await
        .unwrap();
    let err = tool
        .start_json(
            "remind",
            serde_json::json!({"due": "tomorrow"}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    let Error::InvalidInput { violations, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(
        (violations[0].path.as_str(), violations[0].rule.as_str()),
        ("/due", "format")
    );
    let id = tool
        .start_json(
            "remind",
            serde_json::json!({"due": "2026-12-07T09:00:00Z"}),
            StartOptions::new(),
        )
        .await
        .unwrap();
    let _worker = worker_side.start_worker();
    let out = Remind::handle(&worker_side, id)
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out, 1_796_634_000);
}

static RUNNING: AtomicU32 = AtomicU32::new(0);
static MOST_RUNNING: AtomicU32 = AtomicU32::new(0);

/// Holds its slot for a moment, counting how many handlers run at once.
struct Crowded;

impl Workflow for Crowded {
    type Input = u32;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "crowded";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u32, BoxError> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_RUNNING.fetch_max(now, Ordering::SeqCst);
        let out = ctx
            .step("work", || async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, BoxError>(n * 2)
            })
            .await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(out?)
    }
}

#[tokio::test]
async fn concurrency_bounds_the_handlers_running_at_once() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Crowded)
        .concurrency(3)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let started = Crowded::start_many(&engine, (0..30).collect(), StartOptions::new())
        .await
        .unwrap();
    for (n, inst) in started.iter().enumerate() {
        assert_eq!(inst.result().await.unwrap(), n as u32 * 2);
    }
    worker.shutdown().await;
    // Never more than 3, and the slots were kept full.
    assert_eq!(MOST_RUNNING.load(Ordering::SeqCst), 3);
}

static CAPPED_RUNNING: AtomicU32 = AtomicU32::new(0);
static CAPPED_MOST: AtomicU32 = AtomicU32::new(0);
static FREE_MOST: AtomicU32 = AtomicU32::new(0);
static FREE_RUNNING: AtomicU32 = AtomicU32::new(0);

/// Holds a slot for a moment, counting how many of it run at once.
struct Limited {
    capped: bool,
}

impl Workflow for Limited {
    type Input = u32;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "limited";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u32, BoxError> {
        let (running, most) = if self.capped {
            (&CAPPED_RUNNING, &CAPPED_MOST)
        } else {
            (&FREE_RUNNING, &FREE_MOST)
        };
        most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        let out = ctx
            .step("work", || async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, BoxError>(n)
            })
            .await;
        running.fetch_sub(1, Ordering::SeqCst);
        Ok(out?)
    }
}

/// The same, under another name and with no cap.
struct Unlimited;

impl Workflow for Unlimited {
    type Input = u32;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "unlimited";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u32, BoxError> {
        Limited { capped: false }.run(ctx, n).await
    }
}

/// `concurrency_of` caps one workflow's handlers on a worker, claims
/// ahead included, while another takes the remaining slots.
#[tokio::test]
async fn concurrency_of_caps_one_workflow() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Limited { capped: true })
        .register(Unlimited)
        .concurrency(8)
        .concurrency_of::<Limited>(2)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let capped = Limited::start_many(&engine, (0..20).collect(), StartOptions::new())
        .await
        .unwrap();
    let free = Unlimited::start_many(&engine, (0..20).collect(), StartOptions::new())
        .await
        .unwrap();
    for (n, inst) in capped.iter().enumerate() {
        assert_eq!(inst.result().await.unwrap(), n as u32);
    }
    for (n, inst) in free.iter().enumerate() {
        assert_eq!(inst.result().await.unwrap(), n as u32);
    }
    worker.shutdown().await;
    assert_eq!(CAPPED_MOST.load(Ordering::SeqCst), 2, "the cap, reached");
    assert!(
        FREE_MOST.load(Ordering::SeqCst) > 2,
        "the rest used the free slots: {}",
        FREE_MOST.load(Ordering::SeqCst)
    );

    // Every workflow registered at its cap: the worker waits for a
    // handler to end, then claims the next.
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Limited { capped: true })
        .concurrency(8)
        .concurrency_of::<Limited>(1)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let all = Limited::start_many(&engine, (0..5).collect(), StartOptions::new())
        .await
        .unwrap();
    for (n, inst) in all.iter().enumerate() {
        assert_eq!(
            inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
            n as u32
        );
    }
    worker.shutdown().await;

    // A cap on a workflow the builder does not register is refused.
    let err = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Unlimited)
        .concurrency_of::<Limited>(2)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`limited` not registered"),
        "{err}"
    );
}

/// A worker claims a few instances ahead of its free slots (so a slot that
/// frees starts the next at once); at shutdown those go back to the store
/// unstarted, and the next worker runs them.
#[tokio::test]
async fn instances_claimed_ahead_go_back_at_shutdown() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(Slow)
        .concurrency(1)
        .shutdown_grace(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let long = StartOptions::new().timeout(Duration::from_secs(600));
    let worker = engine.start_worker();
    // A worker claims ahead once one of its handlers has ended.
    let warm_up = Slow::start_with(&engine, 1, long.clone()).await.unwrap();
    warm_up
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let first = Slow::start_with(&engine, 60_000, long.clone())
        .await
        .unwrap();
    let others = Slow::start_many(&engine, vec![1; 4], long).await.unwrap();
    let mut in_progress = 0;
    for _ in 0..200 {
        let counts = engine.counts(Some("slow")).await.unwrap();
        in_progress = counts.get(&Status::InProgress).copied().unwrap_or(0);
        if in_progress >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One running, at least one more claimed ahead (its lease shows it
    // in progress), never more than the prefetch allows.
    assert_eq!(in_progress, 2, "one running and one claimed ahead");
    worker.shutdown().await;
    let counts = engine.counts(Some("slow")).await.unwrap();
    assert_eq!(counts.get(&Status::InProgress), None, "{counts:?}");
    assert_eq!(counts.get(&Status::Pending), Some(&5), "{counts:?}");
    // Nothing was lost: a new worker runs the claimed-ahead ones.
    let worker = engine.start_worker();
    for inst in &others {
        inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    }
    first.cancel().await.unwrap();
    worker.shutdown().await;
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Tally {
    n: u32,
}

/// Sets the state after its one step, then ends as `how` says.
struct EndsWithState;

impl Workflow for EndsWithState {
    type Input = Ending;
    type Output = u32;
    type State = Tally;
    const NAME: &'static str = "endsWithState";

    async fn run(&self, ctx: Ctx<Tally>, how: Ending) -> Result<u32, BoxError> {
        ctx.step("one", || async { Ok::<_, BoxError>(1u32) })
            .await?;
        ctx.state_mut().n = 7;
        // The state's guard lives to the end of each statement, while
        // `complete`/`fail` run: they must not take it again.
        if matches!(how, Ending::Complete) {
            ctx.complete(ctx.state().n)?;
        } else {
            ctx.fail(format!("stop at {}", ctx.state().n))?;
        }
        Ok(0)
    }
}

/// `ctx.complete` and `ctx.fail` save the state set since the last step,
/// as returning from the handler does, also when given a value read from
/// the state in the same statement.
#[tokio::test]
async fn complete_and_fail_keep_the_state_set_before_them() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(EndsWithState)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let done = EndsWithState::start(&engine, Ending::Complete)
        .await
        .unwrap();
    assert_eq!(
        done.result_timeout(Duration::from_secs(5)).await.unwrap(),
        7
    );
    assert_eq!(done.state().await.unwrap().n, 7);
    let failed = EndsWithState::start(&engine, Ending::Fail).await.unwrap();
    let err = failed
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. } if message == "stop at 7"),
        "{err:?}"
    );
    assert_eq!(failed.state().await.unwrap().n, 7);
}

static LONG_LEASE_RUNS: AtomicU32 = AtomicU32::new(0);

struct OneStep;

impl Workflow for OneStep {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "oneStep";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        Ok(ctx
            .step("work", || async {
                LONG_LEASE_RUNS.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, BoxError>(1u32)
            })
            .await?)
    }
}

/// `Duration::MAX` as a timeout or a lease means "never", not a time that
/// overflowed into the past (an instant time-out; a lease expired as it
/// was granted, so one worker re-ran its own instance over and over).
#[tokio::test]
async fn a_timeout_or_lease_of_duration_max_never_expires() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(OneStep)
        .lease_duration(Duration::MAX)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = OneStep::start_with(&engine, (), StartOptions::new().timeout(Duration::MAX))
        .await
        .unwrap();
    let deadline = inst.info().await.unwrap().deadline_at.unwrap();
    assert!(
        deadline > chrono::Utc::now(),
        "deadline in the past: {deadline}"
    );
    assert_eq!(
        inst.result_timeout(Duration::from_secs(5)).await.unwrap(),
        1
    );
    assert_eq!(LONG_LEASE_RUNS.load(Ordering::SeqCst), 1);
}

static AHEAD_RUNS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

struct Ahead;

impl Workflow for Ahead {
    type Input = u32;
    type Output = ();
    type State = ();
    const NAME: &'static str = "ahead";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<(), BoxError> {
        ctx.step("side-effect", || async move {
            AHEAD_RUNS.lock().unwrap().push(n);
            // The first of the test's pair holds the one slot long enough
            // for the cancel of the second to land, on a loaded machine too.
            let hold = if n == 1 { 1_500 } else { 300 };
            tokio::time::sleep(Duration::from_millis(hold)).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// An instance held claimed ahead of a free slot hears of a cancel in this
/// process at once: it never starts, rather than running a step before the
/// next heartbeat finds its lease gone.
#[tokio::test]
async fn a_cancelled_instance_claimed_ahead_never_starts() {
    let engine = one_slot_engine(Ahead).await;
    let _worker = engine.start_worker();
    // A worker claims ahead once one of its handlers has ended.
    let warm_up = Ahead::start(&engine, 0).await.unwrap();
    warm_up
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let insts = Ahead::start_many(&engine, vec![1, 2], StartOptions::new())
        .await
        .unwrap();
    until_status(&insts[0], Status::InProgress).await;
    // Claimed ahead: leased, waiting for the one slot.
    until_status(&insts[1], Status::InProgress).await;
    insts[1].cancel().await.unwrap();
    insts[0]
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(insts[1].status().await.unwrap(), Status::Cancelled);
    assert_eq!(*AHEAD_RUNS.lock().unwrap(), [0, 1]);
}

static NAN_STEP_CALLS: AtomicU32 = AtomicU32::new(0);

/// A step whose value JSON cannot hold.
struct NotANumber;

impl Workflow for NotANumber {
    type Input = f64;
    type Output = f64;
    type State = ();
    const NAME: &'static str = "notANumber";

    async fn run(&self, ctx: Ctx, x: f64) -> Result<f64, BoxError> {
        let y: f64 = ctx
            .step("halve", || async move {
                NAN_STEP_CALLS.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(if x > 0.0 { f64::NAN } else { x / 2.0 })
            })
            .await?;
        Ok(y)
    }
}

/// JSON writes NaN as `null`. A step value or an input that would not read
/// back is refused at once (nothing recorded, the start refused), not
/// found out on a replay after a restart.
#[tokio::test]
async fn values_json_cannot_hold_are_refused_at_once() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(NotANumber)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let err = NotANumber::start(&engine, f64::NAN).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not read back from JSON as null"),
        "{err}"
    );
    // In a batch, the one at fault is named by its position.
    let err = NotANumber::start_many(&engine, vec![1.0, f64::NAN], StartOptions::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("input of workflow (item 1 of start_many) `notANumber`"),
        "{err}"
    );
    let inst = NotANumber::start(&engine, 1.0).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("output of step `halve` of workflow `notANumber` does not read back"),
        "{err}"
    );
    assert!(inst.steps().await.unwrap().is_empty(), "nothing recorded");
    assert_eq!(NAN_STEP_CALLS.load(Ordering::SeqCst), 1, "not retried");
}

/// An input whose type reads a field it never writes.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Sealed {
    #[serde(skip_serializing)]
    token: String,
    label: String,
}

struct TakesSealed;

impl Workflow for TakesSealed {
    type Input = Sealed;
    type Output = String;
    type State = ();
    const NAME: &'static str = "takesSealed";

    async fn run(&self, _: Ctx, input: Sealed) -> Result<String, BoxError> {
        Ok(format!("{}: {}", input.label, input.token))
    }
}

/// A JSON start whose value, written back as JSON by its type, no longer
/// reads as that type is refused, saying why, as a typed start is. Before,
/// it was stored (without `token`) and the start succeeded; the worker
/// then paused the instance for good on input it could not read.
#[tokio::test]
async fn a_json_start_the_type_would_change_is_refused() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(TakesSealed)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let err = engine
        .start_json(
            "takesSealed",
            serde_json::json!({"token": "t", "label": "l"}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    let Error::InvalidInput { violations, .. } = &err else {
        panic!("expected InvalidInput: {err}")
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].path, "");
    assert_eq!(violations[0].rule, "deserialize");
    assert!(
        violations[0].message
            == "the value does not read back once written as JSON: missing field `token`",
        "{}",
        violations[0].message
    );
    // The typed start refuses it the same way.
    let err = TakesSealed::start(
        &engine,
        Sealed {
            token: "t".into(),
            label: "l".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("missing field `token`"), "{err}");
    // Without the field at all, the schema itself refuses it: the two
    // checks agree on what a start may store.
    let err = engine
        .start_json(
            "takesSealed",
            serde_json::json!({"label": "l"}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    let page = engine.list(Query::new()).await.unwrap();
    assert!(page.items.is_empty(), "nothing stored");
}

/// Catches the error of a step whose value JSON cannot hold, and goes on.
struct CatchesNotANumber;

impl Workflow for CatchesNotANumber {
    type Input = ();
    type Output = f64;
    type State = ();
    const NAME: &'static str = "catchesNotANumber";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<f64, BoxError> {
        match ctx
            .step("ratio", || async { Ok::<_, BoxError>(f64::NAN) })
            .await
        {
            Ok(ratio) => Ok(ratio),
            Err(_) => {
                ctx.step("fallback", || async { Ok::<_, BoxError>(0.0) })
                    .await?;
                Ok(0.0)
            }
        }
    }
}

/// That error cannot be caught: the step's side effect happened and
/// nothing recorded it, so a replay would run it again and might take
/// the other path. The instance fails, and no step after it runs.
#[tokio::test]
async fn a_value_json_cannot_hold_fails_the_instance_even_if_caught() {
    let engine = one_slot_engine(CatchesNotANumber).await;
    let _worker = engine.start_worker();
    let inst = CatchesNotANumber::start(&engine, ()).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("output of step `ratio`"), "{err}");
    assert!(
        inst.steps().await.unwrap().is_empty(),
        "the fallback did not run"
    );
}

/// How many times each `LongStep` test's step finished (input: the slot).
static LAPSED_DONE: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

/// One step of 3 s that counts itself in its slot of `LAPSED_DONE`.
struct LongStep;

impl Workflow for LongStep {
    type Input = usize;
    type Output = ();
    type State = ();
    const NAME: &'static str = "longStep";

    async fn run(&self, ctx: Ctx, slot: usize) -> Result<(), BoxError> {
        ctx.step("long", || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            LAPSED_DONE[slot].fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// An engine of `workflow` alone under leases of `lease`, on a store the
/// test can take down.
async fn with_leases<W: Workflow>(
    workflow: W,
    lease: Duration,
) -> (
    Arc<workflow_core::testing::Unreachable<MemoryStore>>,
    Engine,
) {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(workflow)
        .lease_duration(lease)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    (store, engine)
}

/// Runs a 3 s step under 600 ms leases, has `cut` make renewals fail or
/// hang (`true`) for 3.5 s, then lets them through (`false`): the step
/// must not have finished while they did not, and must finish after.
async fn leases_lapse(
    slot: usize,
    cut: fn(&workflow_core::testing::Unreachable<MemoryStore>, bool),
) {
    let (store, engine) = with_leases(LongStep, Duration::from_millis(600)).await;
    let _worker = engine.start_worker();
    let inst = LongStep::start(&engine, slot).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    cut(&store, true);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        LAPSED_DONE[slot].load(Ordering::SeqCst),
        0,
        "the step ran on past its lapsed lease"
    );
    cut(&store, false);
    // Back: the instance is taken up again and finishes.
    inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(LAPSED_DONE[slot].load(Ordering::SeqCst), 1);
}

/// While the store cannot be reached, a worker's leases lapse and another
/// worker may take its instances over: once a whole lease has passed
/// without a renewal, its handlers stop rather than run on beside the new
/// owner.
#[tokio::test]
async fn handlers_stop_once_their_leases_lapse_unrenewed() {
    leases_lapse(0, |store, down| store.set_down(down)).await;
}

/// A renewal that hangs (the store retrying, a connection gone quiet)
/// does not keep handlers running past their leases: they stop when the
/// leases end, as when renewals fail.
#[tokio::test]
async fn handlers_stop_when_a_hanging_renewal_outlasts_their_leases() {
    leases_lapse(1, |store, hang| store.hang_renewals(hang)).await;
}

/// A renewal that panics (a custom store's bug) is a failed renewal: the
/// heartbeat lives on, and stops the handlers when their leases end
/// (its task died with the panic, and they ran on beside a new owner).
#[tokio::test]
async fn handlers_stop_when_renewals_panic() {
    leases_lapse(2, |store, panic| store.panic_renewals(panic)).await;
}

/// A lease that lapsed by this worker's clock alone (its renewals hang;
/// the store answers everything else) is handed back at once: event
/// `released`, and the instance runs again at once. Before, it was left
/// in progress until the store's lease ended, and its next run counted as
/// one cut short, towards the crash-loop pause.
#[tokio::test]
async fn a_lease_that_lapsed_here_alone_is_handed_back() {
    let (store, engine) = with_leases(LongStep, Duration::from_millis(600)).await;
    let _worker = engine.start_worker();
    let inst = LongStep::start(&engine, 3).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    store.hang_renewals(true);
    let started = std::time::Instant::now();
    let released = loop {
        let history = inst.history().await.unwrap();
        if let Some(event) = history.iter().find(|e| e.kind == HistoryKind::Released) {
            break event.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never handed back: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(released.message.is_none(), "{released:?}");
    store.hang_renewals(false);
    inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(LAPSED_DONE[3].load(Ordering::SeqCst), 1);
}

/// `CancelGated`'s handler is waiting outside any step, and may go on.
static CANCEL_GATE_REACHED: AtomicU32 = AtomicU32::new(0);
static CANCEL_GATE_OPEN: AtomicU32 = AtomicU32::new(0);
/// How many times `CancelGated`'s step began.
static CANCEL_GATED_STEPS: AtomicU32 = AtomicU32::new(0);

/// Waits outside any step until `CANCEL_GATE_OPEN`, then runs one step.
struct CancelGated;

impl Workflow for CancelGated {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "cancelGated";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        CANCEL_GATE_REACHED.store(1, Ordering::SeqCst);
        while CANCEL_GATE_OPEN.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ctx.step("charge", || async {
            CANCEL_GATED_STEPS.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A cancel made here holds back the step attempts of the run it ends
/// until it is answered: a step the handler reaches after the store has
/// the cancel, while the canceller waits for its answer (an fsync), does
/// not begin. Before, it began, and only its record was refused.
#[tokio::test]
async fn no_step_begins_while_a_cancel_here_is_being_answered() {
    let (store, engine) = with_leases(CancelGated, Duration::from_secs(30)).await;
    let _worker = engine.start_worker();
    let inst = CancelGated::start(&engine, ()).await.unwrap();
    let started = std::time::Instant::now();
    while CANCEL_GATE_REACHED.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.hold_cancel_answers(true);
    let cancel = tokio::spawn({
        let engine = engine.clone();
        let id = inst.id().clone();
        async move { engine.cancel(&id).await }
    });
    loop {
        let row = store.inner().get(inst.id()).await.unwrap().unwrap();
        if row.status == Status::Cancelled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    CANCEL_GATE_OPEN.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        CANCEL_GATED_STEPS.load(Ordering::SeqCst),
        0,
        "a step began after the cancel was made"
    );
    store.hold_cancel_answers(false);
    cancel.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(CANCEL_GATED_STEPS.load(Ordering::SeqCst), 0);
    assert_eq!(inst.info().await.unwrap().status, Status::Cancelled);
}

/// When `UntilStopped`'s step was dropped (its handler stopped).
static STOPPED_AT: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);

/// A step that runs until its handler is stopped, and notes when.
struct UntilStopped;

impl Workflow for UntilStopped {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "untilStopped";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        struct NoteDrop;
        impl Drop for NoteDrop {
            fn drop(&mut self) {
                *STOPPED_AT.lock().unwrap() = Some(std::time::Instant::now());
            }
        }
        ctx.step("forever", || async {
            let _note = NoteDrop;
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// Heartbeats tick every second under leases of 3.1 s: a lease unrenewed
/// since the store went down ends between two ticks, and its handler
/// stops at that end, not at the tick after, when another worker may have
/// taken the instance over already (up to 0.9 s of the two handlers side
/// by side).
#[tokio::test]
async fn a_handler_stops_before_its_unrenewed_lease_ends() {
    let lease = Duration::from_millis(3_100);
    let (store, engine) = with_leases(UntilStopped, lease).await;
    let started = std::time::Instant::now();
    let _worker = engine.start_worker();
    let inst = UntilStopped::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    // Just after the first heartbeat's renewal (ticks a second apart from
    // the worker's start): the lease then ends about 3.0 s after the store
    // goes down, and the tick after that end comes about 0.9 s later.
    tokio::time::sleep_until((started + Duration::from_millis(1_100)).into()).await;
    let down = std::time::Instant::now();
    store.set_down(true);
    let stopped = loop {
        if let Some(at) = *STOPPED_AT.lock().unwrap() {
            break at;
        }
        assert!(down.elapsed() < Duration::from_secs(10), "never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    store.set_down(false);
    // The last renewal came before `down`, so the lease ends by down +
    // lease; slack for the timer and the handler's drop. Before, the
    // handler ran on to the next tick, about 0.8 s past that.
    assert!(
        stopped <= down + lease + Duration::from_millis(300),
        "stopped {:?} after the store went down, past the lease's end",
        stopped - down
    );
}

/// How many times each `Backlogged` instance's step finished (input: its slot).
static BACKLOG_DONE: [AtomicU32; 6] = [const { AtomicU32::new(0) }; 6];

/// One step of 1 s that counts itself in its slot of `BACKLOG_DONE`.
struct Backlogged;

impl Workflow for Backlogged {
    type Input = usize;
    type Output = ();
    type State = ();
    const NAME: &'static str = "backlogged";

    async fn run(&self, ctx: Ctx, slot: usize) -> Result<(), BoxError> {
        ctx.step("long", || async {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            BACKLOG_DONE[slot].fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// Once the store is back after the leases lapsed, the instances claimed
/// since keep theirs: a worker with a backlog (always some lease held at a
/// heartbeat) used to judge every later lease by the lapsed ones' end, and
/// stopped each run about a second in, forever.
#[tokio::test]
async fn leases_claimed_after_a_lapse_are_renewed() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(Backlogged)
        .concurrency(1)
        .lease_duration(Duration::from_millis(600))
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let mut insts = Vec::new();
    for slot in 0..BACKLOG_DONE.len() {
        insts.push(Backlogged::start(&engine, slot).await.unwrap());
    }
    until_status(&insts[0], Status::InProgress).await;
    // Claims go through meanwhile: the worker takes the next instance as
    // soon as the first one stops.
    store.hang_renewals(true);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    store.hang_renewals(false);
    for inst in &insts {
        inst.result_timeout(Duration::from_secs(20)).await.unwrap();
    }
    let done: Vec<u32> = BACKLOG_DONE
        .iter()
        .map(|d| d.load(Ordering::SeqCst))
        .collect();
    assert_eq!(done, [1; 6], "each step ran to its end once");
}

static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Its one step waits until the test opens the gate (input `true`), or
/// returns at once (`false`).
struct Gated;

impl Workflow for Gated {
    type Input = bool;
    type Output = ();
    type State = ();
    const NAME: &'static str = "gated";

    async fn run(&self, ctx: Ctx, wait: bool) -> Result<(), BoxError> {
        ctx.step("gate", || async move {
            while wait && !GATE_OPEN.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A deadline moved in this process reaches an instance claimed ahead of a
/// free slot at once: extended after its old deadline passed, it starts and
/// completes instead of timing out on the deadline it was claimed with.
#[tokio::test]
async fn a_deadline_moved_while_claimed_ahead_is_the_one_it_starts_with() {
    let engine = one_slot_engine(Gated).await;
    let _worker = engine.start_worker();
    // A worker claims ahead once one of its handlers has ended.
    let warm_up = Gated::start(&engine, false).await.unwrap();
    warm_up
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let blocker = Gated::start_with(
        &engine,
        true,
        StartOptions::new().timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    until_status(&blocker, Status::InProgress).await;
    let queued = Gated::start_with(
        &engine,
        false,
        StartOptions::new().timeout(Duration::from_millis(1_000)),
    )
    .await
    .unwrap();
    // Claimed ahead: leased, waiting for the one slot.
    until_status(&queued, Status::InProgress).await;
    // Past its deadline.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    queued
        .set_timeout(Timeout::In(Duration::from_secs(60)))
        .await
        .unwrap();
    GATE_OPEN.store(true, Ordering::SeqCst);
    blocker
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    queued
        .result_timeout(Duration::from_secs(5))
        .await
        .expect("extended before it started, it must not time out");
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Average {
    mean: f64,
}

/// Returns, or keeps as its state, a float JSON cannot hold.
struct NotANumberAtTheEnd;

impl Workflow for NotANumberAtTheEnd {
    type Input = bool;
    type Output = f64;
    type State = Average;
    const NAME: &'static str = "notANumberAtTheEnd";

    async fn run(&self, ctx: Ctx<Average>, in_state: bool) -> Result<f64, BoxError> {
        if in_state {
            ctx.state_mut().mean = f64::NAN;
            ctx.step("count", || async { Ok::<_, BoxError>(0u32) })
                .await?;
            return Ok(1.0);
        }
        Ok(f64::NAN)
    }
}

/// An output or a state that would not read back from JSON (NaN is stored
/// as `null`) fails the instance at once, naming it, like a step value
/// does. It used to be stored: the instance showed Completed while its
/// result and state could only be read as a corrupt row, and a replay
/// after a restart failed on the state.
#[tokio::test]
async fn outputs_and_state_json_cannot_hold_fail_the_instance_naming_them() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(NotANumberAtTheEnd)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let output = NotANumberAtTheEnd::start(&engine, false).await.unwrap();
    let err = output
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. }
            if message.contains("output of workflow `notANumberAtTheEnd` does not read back from JSON as null")),
        "{err:?}"
    );
    let state = NotANumberAtTheEnd::start(&engine, true).await.unwrap();
    let err = state
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. }
            if message.contains("state of workflow `notANumberAtTheEnd` does not read back from JSON")),
        "{err:?}"
    );
    assert!(state.steps().await.unwrap().is_empty(), "nothing recorded");
    assert_eq!(state.state().await.unwrap().mean, 0.0);
}

/// "As many as you like" is a concurrency the engine can honour: a worker
/// with `concurrency(usize::MAX)` runs instances (its semaphore used to
/// panic in the worker's task, which then ran nothing, and `result()`
/// waited for ever).
#[tokio::test]
async fn an_unbounded_concurrency_still_runs_instances() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(OneStepQuick)
        .concurrency(usize::MAX)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = OneStepQuick::start(&engine, ()).await.unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(5)).await.unwrap(),
        1
    );
}

struct OneStepQuick;

impl Workflow for OneStepQuick {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "oneStepQuick";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        Ok(ctx
            .step("work", || async { Ok::<_, BoxError>(1u32) })
            .await?)
    }
}

/// A state without `Debug`.
#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct Opaque {
    seen: u32,
}

struct Traced;

impl Workflow for Traced {
    type Input = u32;
    type Output = String;
    type State = Opaque;
    const NAME: &'static str = "traced";

    async fn run(&self, ctx: Ctx<Opaque>, input: u32) -> Result<String, BoxError> {
        traced(ctx, input).await
    }
}

/// `#[tracing::instrument]` records every argument with `Debug`, `ctx`
/// included: without it this would not compile unless `skip(ctx)`.
#[tracing::instrument]
async fn traced(ctx: Ctx<Opaque>, input: u32) -> Result<String, BoxError> {
    Ok(format!("{ctx:?}"))
}

#[tokio::test]
async fn ctx_debug_names_the_run_whatever_the_state() {
    let engine = one_slot_engine(Traced).await;
    let _worker = engine.start_worker();
    let inst = Traced::start(&engine, 7).await.unwrap();
    let debug = inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        debug,
        format!(
            r#"Ctx {{ id: "{}", workflow: "traced", run_number: 1, .. }}"#,
            inst.id()
        )
    );
}

/// Claims one `processOrder` instance `n` times as a worker that dies at
/// once: each claim's lease lapses before the next.
async fn interrupt(store: &Arc<dyn Store>, n: u32) {
    for _ in 0..n {
        let now = store::now_millis();
        let claim = ClaimRequest {
            owner: "ghost".into(),
            workflows: vec!["processOrder".into()],
            now,
            due_by: now,
            lease_until: now + 1,
            limit: 1,
        };
        assert_eq!(store.claim(claim).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn crash_loop_engine(store: &Arc<dyn Store>, limit: Option<u32>) -> Engine {
    EngineBuilder::new()
        .shared_store(Arc::clone(store))
        .register(ProcessOrder)
        .max_interrupted_runs(limit)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap()
}

/// `input` run to completion on `engine`, whose worker runs.
async fn completed(engine: &Engine, input: OrderInput) -> Instance<ProcessOrder> {
    let order = ProcessOrder::start(engine, input).await.unwrap();
    order.result_timeout(Duration::from_secs(5)).await.unwrap();
    order
}

fn order(id: &str) -> OrderInput {
    OrderInput {
        order_id: id.into(),
        quantity: 1,
    }
}

#[tokio::test]
async fn interrupted_runs_pause_an_instance_unless_unlimited_or_overdue() {
    // A limit of 0 counts as 1: one interrupted run pauses it.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = crash_loop_engine(&store, Some(0)).await;
    let inst = ProcessOrder::start(&engine, order("P1")).await.unwrap();
    interrupt(&store, 1).await;
    let _worker = engine.start_worker();
    until_status(&inst, Status::Paused).await;
    let last = inst.history().await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "paused");
    let why = last.message.unwrap_or_default();
    assert!(
        why.contains("after 1 interrupted run in a row") && why.contains("before its first step"),
        "{why}"
    );
    // Resumed, it starts the count over and runs.
    inst.resume().await.unwrap();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "P1 charged 7"
    );

    // No limit: run again however often it was interrupted.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = crash_loop_engine(&store, None).await;
    let inst = ProcessOrder::start(&engine, order("P2")).await.unwrap();
    interrupt(&store, 30).await;
    let _worker = engine.start_worker();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        "P2 charged 7"
    );

    // Past its deadline: run, to end `TimedOut`, not paused.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = crash_loop_engine(&store, Some(1)).await;
    let inst = ProcessOrder::start_with(
        &engine,
        order("P3"),
        StartOptions::new().timeout(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    interrupt(&store, 3).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let _worker = engine.start_worker();
    until_status(&inst, Status::TimedOut).await;
}

#[tokio::test]
async fn purge_deletes_ended_instances_in_batches() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = crash_loop_engine(&store, None).await;
    let n = PURGE_BATCH * 2 + 100;
    let inputs = (0..n).map(|i| order(&format!("B{i}"))).collect();
    let instances = ProcessOrder::start_many(&engine, inputs, StartOptions::new())
        .await
        .unwrap();
    let worker = engine.start_worker();
    for inst in &instances {
        inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    }
    let fresh = ProcessOrder::start(&engine, order("fresh")).await.unwrap();
    fresh.result_timeout(Duration::from_secs(30)).await.unwrap();
    let waiting = ProcessOrder::start(&engine, order("later")).await.unwrap();
    worker.shutdown().await;
    let before = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    assert_eq!(
        engine.purge(before, Some("other")).await.unwrap(),
        0,
        "another workflow's name"
    );
    let early = engine.purge(before, None).await.unwrap();
    assert_eq!(early, 0, "nothing that ended in the last minute goes");
    assert!(fresh.info().await.is_ok());
    // An engine whose clock is a minute on purges them.
    let later = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .clock(ManualClock::new(
            chrono::Utc::now() + chrono::Duration::seconds(61),
        ))
        .build()
        .await
        .unwrap();
    let late = later.purge(before, None).await.unwrap();
    assert_eq!(early + late, n as u64 + 1);
    assert!(fresh.info().await.is_err());
    assert!(matches!(instances[0].info().await, Err(Error::NotFound(_))));
    assert_eq!(
        waiting.status().await.unwrap(),
        Status::Pending,
        "not ended: kept"
    );
}

/// An instance of `workflow` that ended `ago` before now, written to `store`.
async fn ended_ago(store: &Arc<dyn Store>, workflow: &str, ago: Duration) -> InstanceId {
    let at = chrono::Utc::now().timestamp_millis() - ago.as_millis() as i64;
    let id = InstanceId::at(at - 10);
    let new = store::NewInstance {
        id: id.clone(),
        workflow: workflow.into(),
        input: "{}".into(),
        tags: Default::default(),
        key: None,
        created_at: at - 10,
        run_at: at - 10,
        deadline_at: None,
        parent: None,
    };
    store.create(new, None).await.unwrap();
    let claimed = store
        .claim(ClaimRequest {
            owner: "earlier".into(),
            workflows: vec![workflow.into()],
            now: at - 5,
            due_by: at - 5,
            lease_until: at + 30_000,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(claimed[0].row.id, id);
    let finish = store::Finish {
        status: Status::Completed,
        output: Some("0".into()),
        error: None,
        state: None,
        at,
    };
    store.finish(&claimed[0].lease, finish).await.unwrap();
    id
}

/// On a clock moved by hand, retention purges when the clock jumps past
/// it, as a test expects, instead of at its looks by real time (the first
/// somewhere in the first minute, then one an hour).
#[tokio::test]
async fn retention_follows_a_manual_clock() {
    let clock = ManualClock::new(chrono::Utc::now());
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(ProcessOrder)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .retention(Duration::from_secs(30 * 86_400))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let done = ProcessOrder::start(&engine, order("R")).await.unwrap();
    done.result_timeout(Duration::from_secs(5)).await.unwrap();
    let id = done.id().clone();
    clock.advance(Duration::from_secs(29 * 86_400));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(engine.store().get(&id).await.unwrap().is_some(), "kept");
    clock.advance(Duration::from_secs(2 * 86_400));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while engine.store().get(&id).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "not purged a month and a day after it ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retention_has_a_worker_purge_what_ended_more_than_keep_ago() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let old = ended_ago(&store, "processOrder", Duration::from_secs(120)).await;
    let recent = ended_ago(&store, "processOrder", Duration::from_secs(30)).await;
    let unregistered = ended_ago(&store, "elsewhere", Duration::from_secs(120)).await;
    // Goes once a minute old, 10 s from now: after the first purge (within
    // 6 s), by a later one. Written now, as a running worker could claim it.
    let later = ended_ago(&store, "processOrder", Duration::from_secs(50)).await;
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(ProcessOrder)
        .poll_interval(Duration::from_millis(10))
        // Below the floor: counts as a minute.
        .retention(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let paused = ProcessOrder::start(&engine, order("P")).await.unwrap();
    paused.pause().await.unwrap();
    // Beside it, an engine without retention.
    let keeping: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let kept = ended_ago(&keeping, "processOrder", Duration::from_secs(120)).await;
    let keeps = crash_loop_engine(&keeping, None).await;
    let _keeping = keeps.start_worker();
    let worker = engine.start_worker();
    let second = engine.start_worker();
    // The first purge comes within a tenth of the minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.get(&old).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance that ended two minutes ago is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exists = |store: &Arc<dyn Store>, id: &InstanceId| {
        let (store, id) = (Arc::clone(store), id.clone());
        async move { store.get(&id).await.unwrap().is_some() }
    };
    assert!(exists(&store, &recent).await, "ended 30 s ago: kept");
    assert!(
        exists(&store, &unregistered).await,
        "a workflow not registered here: kept"
    );
    assert_eq!(paused.status().await.unwrap(), Status::Paused, "not ended");
    assert!(exists(&keeping, &kept).await, "no retention: kept");
    // One task per engine: it goes on while any worker runs.
    worker.shutdown().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while exists(&store, &later).await {
        assert!(
            std::time::Instant::now() < deadline,
            "purging stopped with the first worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last worker stops it: nothing is purged after its shutdown.
    second.shutdown().await;
    let after = ended_ago(&store, "processOrder", Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        exists(&store, &after).await,
        "purged with no worker running"
    );
}

/// Waits in its one step until its gate lets it through.
struct Held(Arc<tokio::sync::Semaphore>);

impl Workflow for Held {
    type Input = u32;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "held";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u32, BoxError> {
        let gate = Arc::clone(&self.0);
        ctx.step("through", || {
            let gate = Arc::clone(&gate);
            async move {
                gate.acquire().await?.forget();
                Ok::<_, BoxError>(())
            }
        })
        .await?;
        Ok(n)
    }
}

/// A worker claims ahead of its free slots only once a handler of its own
/// has ended: a process that a step kills before any does must not count
/// the crash against instances it never started.
#[tokio::test]
async fn a_worker_claims_ahead_only_once_a_handler_ended() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Held(Arc::clone(&gate)))
        .concurrency(4)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let inputs = (0..7).collect();
    let all = Held::start_many(&engine, inputs, StartOptions::new())
        .await
        .unwrap();
    let counts = || async {
        let counts = engine.counts(Some("held")).await.unwrap();
        let of = |s| counts.get(&s).copied().unwrap_or(0);
        (
            of(Status::Pending),
            of(Status::InProgress),
            of(Status::Completed),
        )
    };
    let worker = engine.start_worker();
    until_status(&all[3], Status::InProgress).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        counts().await,
        (3, 4, 0),
        "four running, none claimed ahead"
    );
    // One ends: its slot and one more (a quarter of 4) are claimed.
    gate.add_permits(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counts().await != (1, 5, 1) {
        assert!(std::time::Instant::now() < deadline, "{:?}", counts().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(6);
    for inst in &all {
        inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    }
    worker.shutdown().await;
}

/// A workflow tool that waits for its output but cannot read it (the
/// store went away after the start) answers with the id of the instance
/// it started, not an error: told "the call failed", a model would call
/// again and start a second one.
#[tokio::test]
async fn a_waiting_workflow_tool_that_cannot_read_its_outcome_names_the_instance() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    // No worker: the instance stays `Pending` until the wait is over.
    let engine = engine_on(Arc::clone(&store) as Arc<dyn Store>).await;
    let tool = Repeats::as_tool().wait(Duration::from_millis(500));
    let cut = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.set_down(true);
        })
    };
    let reply = tool.call(&engine, serde_json::json!({"input": 3})).await;
    cut.await.unwrap();
    store.set_down(false);
    let reply = reply.expect("the instance was started");
    assert_eq!(reply["status"], "pending", "{reply}");
    let id = InstanceId::from_string(reply["workflowId"].as_str().unwrap());
    assert_eq!(engine.instance(&id).await.unwrap().workflow, "repeats");
}

static NESTED_OUTER: AtomicU32 = AtomicU32::new(0);
static NESTED_INNER: AtomicU32 = AtomicU32::new(0);

/// Calls a step from inside another step's closure.
struct Nested;

impl Workflow for Nested {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "nested";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let inner = ctx.clone();
        let n = ctx
            .step("outer", || {
                let ctx = inner.clone();
                async move {
                    NESTED_OUTER.fetch_add(1, Ordering::SeqCst);
                    ctx.step("fetch", || async {
                        Ok::<_, BoxError>(NESTED_INNER.fetch_add(1, Ordering::SeqCst))
                    })
                    .await
                }
            })
            .await?;
        Ok(n)
    }
}

/// A step inside a step would vanish from replays and run again at every
/// retry of the outer one: it is refused, and the outer step fails at
/// once, naming both.
#[tokio::test]
async fn a_step_inside_a_step_fails_without_running() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Nested)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = Nested::start(&engine, ()).await.unwrap();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step `fetch` of workflow `nested` is called inside step `outer`"),
        "{err}"
    );
    assert_eq!(
        NESTED_INNER.load(Ordering::SeqCst),
        0,
        "the inner step never ran"
    );
    assert_eq!(NESTED_OUTER.load(Ordering::SeqCst), 1, "no retries");
}

static KEYED_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Reports the idempotency keys its steps saw; its first step fails once.
struct Keyed;

impl Workflow for Keyed {
    type Input = ();
    type Output = Vec<Option<String>>;
    type State = ();
    const NAME: &'static str = "keyed";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<Vec<Option<String>>, BoxError> {
        let mut seen = vec![ctx.idempotency_key()];
        let first: Vec<Option<String>> = ctx
            .step("charge", || async {
                let key = ctx.idempotency_key();
                if KEYED_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(BoxError::from(format!("flaky, key {key:?}")));
                }
                Ok(vec![key])
            })
            .await?;
        seen.extend(first);
        seen.push(
            ctx.step("charge", || async {
                Ok::<_, BoxError>(ctx.idempotency_key())
            })
            .await?,
        );
        let items = ctx
            .map("items", vec![0, 1], 2, |_| async {
                Ok::<_, BoxError>(ctx.idempotency_key())
            })
            .await?;
        seen.extend(items);
        Ok(seen)
    }
}

/// A step's idempotency key names the instance and the step's key, is the
/// same at a retry as at the first attempt, and is `None` outside steps.
#[tokio::test]
async fn steps_see_an_idempotency_key_that_retries_keep() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Keyed)
        .poll_interval(Duration::from_millis(20))
        .step_options(StepOptions::retries(2).backoff(
            Duration::from_millis(1),
            1.0,
            Duration::from_millis(1),
        ))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let instance = Keyed::start(&engine, ()).await.unwrap();
    let keys = instance
        .result_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    let id = instance.id();
    let expected: Vec<Option<String>> = vec![
        None,
        Some(format!("{id}/charge")),
        Some(format!("{id}/charge#1")),
        Some(format!("{id}/items[0]")),
        Some(format!("{id}/items[1]")),
    ];
    assert_eq!(keys, expected);
    // The failed first attempt saw the key the second one recorded.
    let history = instance.history().await.unwrap();
    let failed = history
        .iter()
        .find_map(|e| e.message.as_deref().filter(|m| m.contains("flaky")))
        .expect("the failed attempt is in the history");
    assert!(failed.contains(&format!("{id}/charge")), "{failed}");
    assert_eq!(KEYED_ATTEMPTS.load(Ordering::SeqCst), 2);
}

/// A builder setting that cannot apply is refused, not dropped: a store
/// given with a URL, or with a durability meant for stores opened by URL.
#[tokio::test]
async fn the_builder_refuses_settings_a_given_store_would_ignore() {
    let with_url = EngineBuilder::new()
        .store(MemoryStore::new())
        .database_url("sqlite://other.db")
        .build()
        .await
        .expect_err("refused");
    assert!(
        matches!(&with_url, Error::Config(why) if why.contains("database_url")),
        "{with_url}"
    );
    let with_durability = EngineBuilder::new()
        .store(MemoryStore::new())
        .durability(Durability::Relaxed)
        .build()
        .await
        .expect_err("refused");
    assert!(
        matches!(&with_durability, Error::Config(why) if why.contains("durability")),
        "{with_durability}"
    );
    assert!(EngineBuilder::new()
        .store(MemoryStore::new())
        .build()
        .await
        .is_ok());
}

static GATE: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(0));

/// Holds its worker slot until the test opens `GATE`.
struct Blocker;

impl Workflow for Blocker {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "blocker";

    async fn run(&self, _ctx: Ctx, _: ()) -> Result<(), BoxError> {
        GATE.acquire().await?.forget();
        Ok(())
    }
}

/// Returns at once.
struct Quick;

impl Workflow for Quick {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "quick";

    async fn run(&self, _ctx: Ctx, _: ()) -> Result<(), BoxError> {
        Ok(())
    }
}

/// An instance claimed ahead by a worker whose every slot stays busy is
/// handed back for an idle worker to run, instead of waiting, its lease
/// renewed, until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_claimed_ahead_behind_busy_slots_goes_to_an_idle_worker() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let build = |store: Arc<dyn Store>| {
        EngineBuilder::new()
            .shared_store(store)
            .register(Quick)
            .register(Blocker)
            .concurrency(2)
            .lease_duration(Duration::from_millis(600))
            .poll_interval(Duration::from_millis(20))
            .build()
    };
    let busy = build(Arc::clone(&store)).await.unwrap();
    let _busy_worker = busy.start_worker();
    // A handler has ended on this worker, so it claims ahead from now on.
    let first = Quick::start(&busy, ()).await.unwrap();
    first.result_timeout(Duration::from_secs(5)).await.unwrap();
    let blockers = [
        Blocker::start(&busy, ()).await.unwrap(),
        Blocker::start(&busy, ()).await.unwrap(),
    ];
    for blocker in &blockers {
        common::until_status(blocker, Status::InProgress).await;
    }
    let held = Quick::start(&busy, ()).await.unwrap();
    common::until_status(&held, Status::InProgress).await;
    // Claimed ahead: it cannot run here while both slots are taken.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(held.status().await.unwrap(), Status::InProgress);

    let idle = build(Arc::clone(&store)).await.unwrap();
    let _idle_worker = idle.start_worker();
    held.result_timeout(Duration::from_secs(5))
        .await
        .expect("handed back and run by the idle worker");
    let history = held.history().await.unwrap();
    assert!(history.iter().any(|e| e.kind == "released"), "{history:?}");
    GATE.add_permits(2);
    for blocker in &blockers {
        blocker
            .result_timeout(Duration::from_secs(5))
            .await
            .unwrap();
    }
}

static BIG_RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize, Deserialize, JsonSchema)]
enum Big {
    StepOutput,
    State,
    Output,
    ChildInput,
    /// Given to `ctx.complete`, whose error the handler ignores.
    Completed,
}

/// Returns its input.
struct Echo;

impl Workflow for Echo {
    type Input = String;
    type Output = String;
    type State = ();
    const NAME: &'static str = "echo";

    async fn run(&self, _ctx: Ctx, text: String) -> Result<String, BoxError> {
        Ok(text)
    }
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct Bulky {
    text: String,
}

/// Makes one value larger than the engine's limit, as `Big` says.
struct TooBig;

impl Workflow for TooBig {
    type Input = Big;
    type Output = String;
    type State = Bulky;
    const NAME: &'static str = "tooBig";

    async fn run(&self, ctx: Ctx<Bulky>, big: Big) -> Result<String, BoxError> {
        let large = "x".repeat(2_000);
        match big {
            Big::StepOutput => {
                let out: String = ctx
                    .step("export", || async {
                        BIG_RUNS.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, BoxError>(large.clone())
                    })
                    .await?;
                Ok(out)
            }
            Big::State => {
                ctx.state_mut().text = large;
                ctx.step("after", || async { Ok::<_, BoxError>(1) }).await?;
                Ok("saved".into())
            }
            Big::Output => Ok(large),
            Big::ChildInput => Ok(ctx.run_child::<Echo>("child", large).await?),
            Big::Completed => {
                let _ = ctx.complete(large);
                Ok("went on".into())
            }
        }
    }
}

/// A value over `max_payload_bytes` fails its instance with an error that
/// names it, once: not a store error that would release the run and run
/// the step again and again.
#[tokio::test]
async fn a_value_over_the_payload_limit_fails_once_naming_it() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(TooBig)
        .register(Echo)
        .max_payload_bytes(1_000)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    for (big, what) in [
        (Big::StepOutput, "output of step `export`"),
        (Big::State, "state of workflow `tooBig`"),
        (Big::Output, "output of workflow `tooBig`"),
        (Big::ChildInput, "input of child workflow `echo`"),
        (Big::Completed, "output passed to ctx.complete"),
    ] {
        let instance = TooBig::start(&engine, big).await.unwrap();
        let err = instance
            .result_timeout(Duration::from_secs(5))
            .await
            .unwrap_err();
        let Error::Failed { message, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(
            message.contains(what) && message.contains("more than the 1000 bytes"),
            "{message}"
        );
    }
    assert_eq!(BIG_RUNS.load(Ordering::SeqCst), 1, "the step ran once");
}

/// A start from JSON (the console's, the CLI's, a tool call's) is held to
/// `max_payload_bytes` as a typed start is, for registered workflows and
/// for those only recorded by another engine; and a limit the stores could
/// not honour is refused when the engine is built.
#[tokio::test]
async fn a_json_start_over_the_payload_limit_is_refused() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(store.clone())
        .register(Echo)
        .max_payload_bytes(1_000)
        .build()
        .await
        .unwrap();
    // Another engine on the same store, without the workflow's code.
    let client = EngineBuilder::new()
        .shared_store(store)
        .max_payload_bytes(1_000)
        .build()
        .await
        .unwrap();
    let large = serde_json::json!("x".repeat(2_000));
    for engine in [&engine, &client] {
        for err in [
            engine
                .start_json("echo", large.clone(), StartOptions::new())
                .await
                .unwrap_err(),
            engine
                .get_or_start_json("echo", "k", large.clone(), StartOptions::new())
                .await
                .unwrap_err(),
            engine
                .call_tool("echo", serde_json::json!({ "input": large }))
                .await
                .unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::PayloadTooLarge { what, .. } if what == "input of workflow `echo`"),
                "{err:?}"
            );
        }
    }
    assert!(engine.list(Query::new()).await.unwrap().items.is_empty());
    assert!(engine
        .start_json("echo", serde_json::json!("small"), StartOptions::new())
        .await
        .is_ok());

    let err = EngineBuilder::new()
        .store(MemoryStore::new())
        .max_payload_bytes(MAX_PAYLOAD_LIMIT + 1)
        .build()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::Config(why) if why.contains("MAX_PAYLOAD_LIMIT")),
        "{err}"
    );
}

/// `Query::summaries` lists the same instances without their documents.
#[tokio::test]
async fn summaries_list_instances_without_their_documents() {
    let engine = one_slot_engine(ProcessOrder).await;
    let input = OrderInput {
        order_id: "o-1".into(),
        quantity: 2,
    };
    let started = ProcessOrder::start(&engine, input).await.unwrap();
    let full = engine.list(Query::new()).await.unwrap();
    assert_eq!(full.items[0].input["order_id"], "o-1");
    let bare = engine.list(Query::new().summaries()).await.unwrap();
    assert_eq!(bare.items.len(), 1);
    let item = &bare.items[0];
    assert_eq!(&item.id, started.id());
    assert_eq!(item.input, serde_json::Value::Null);
    assert_eq!((item.output.as_ref(), item.state.as_ref()), (None, None));
    assert_eq!(item.status, full.items[0].status);
}

static LATE_STEPS: AtomicU32 = AtomicU32::new(0);
static LATE_ANSWER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Returns while a task it spawned, holding a clone of `ctx`, has yet to
/// call a step.
struct SpawnsLate;

impl Workflow for SpawnsLate {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "spawnsLate";

    async fn run(&self, ctx: Ctx, _input: ()) -> Result<(), BoxError> {
        let late = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answer = late
                .step("too-late", || async {
                    LATE_STEPS.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                })
                .await;
            *LATE_ANSWER.lock().unwrap() = Some(format!("{answer:?}"));
        });
        Ok(())
    }
}

/// A step a spawned task calls after its run ended does not run: its side
/// effect would happen with no record of it (the lease is gone). Before,
/// only a run stopped for a reason (suspended, cancelled...) refused it.
#[tokio::test]
async fn a_step_called_after_the_run_ended_does_not_run() {
    let engine = one_slot_engine(SpawnsLate).await;
    let _worker = engine.start_worker();
    let inst = SpawnsLate::start(&engine, ()).await.unwrap();
    inst.result().await.unwrap();
    for _ in 0..100 {
        if LATE_ANSWER.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = LATE_ANSWER.lock().unwrap().clone().expect("the task asked");
    assert!(answer.contains("Interrupted(Ended)"), "{answer}");
    assert_eq!(
        LATE_STEPS.load(Ordering::SeqCst),
        0,
        "the step's closure ran"
    );
}

static SIDE_A_CALLS: AtomicU32 = AtomicU32::new(0);

/// Runs `inst` on a new worker of `engine` until its step `a` has failed
/// for good: three attempts in all, `calls` of them (counted in `counter`)
/// in this process.
async fn a_fails_on_a_new_worker<W: Workflow<Output = ()>>(
    engine: &Engine,
    inst: &Instance<W>,
    counter: &AtomicU32,
    calls: u32,
) {
    let _worker = engine.start_worker();
    let err = inst
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still down"), "{err}");
    assert_eq!(counter.load(Ordering::SeqCst), calls, "attempts 2 and 3");
    let a = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.key == "a");
    assert_eq!(a.map(|s| s.attempts), Some(3));
}

/// Step `a` always fails; step `b` before it is recorded by a worker that
/// dies (see the test).
struct RetriesSideBySide;

impl Workflow for RetriesSideBySide {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "retriesSideBySide";

    async fn run(&self, ctx: Ctx, _input: ()) -> Result<(), BoxError> {
        ctx.step("b", || async { Ok::<_, BoxError>(1) }).await?;
        let quick = StepOptions::retries(3).backoff(
            Duration::from_millis(1),
            1.0,
            Duration::from_millis(1),
        );
        ctx.step_with("a", quick, || async {
            SIDE_A_CALLS.fetch_add(1, Ordering::SeqCst);
            Err::<(), BoxError>("still down".into())
        })
        .await?;
        Ok(())
    }
}

/// Steps `a` and `b` side by side each failed an attempt, `b` then
/// succeeded (its record clears the row's note of the step backing off,
/// which named `b`, the last to fail), and the process died while `a`
/// backed off. The next run counts `a`'s attempts on from the history:
/// three in all. Before, it started `a` from one, over the limit.
#[tokio::test]
async fn attempts_count_on_after_a_crash_beside_another_retried_step() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = one_slot_engine_on(Arc::clone(&store), RetriesSideBySide).await;
    let inst = RetriesSideBySide::start(&engine, ()).await.unwrap();
    let lease = ghost_claim(&store, RetriesSideBySide::NAME).await.lease;
    let now = store::now_millis();
    store
        .record_attempt(&lease, "a", 1, "still down", now)
        .await
        .unwrap();
    store
        .record_attempt(&lease, "b", 1, "flaky", now)
        .await
        .unwrap();
    let b = StepRow {
        key: "b".into(),
        output: Some("1".into()),
        error: None,
        state: None,
        attempts: 2,
        started_at: now,
        finished_at: now,
    };
    store.commit_step(&lease, b).await.unwrap();
    store.release_owner("ghost", now).await.unwrap();

    a_fails_on_a_new_worker(&engine, &inst, &SIDE_A_CALLS, 2).await;
}

static BESIDE_A_CALLS: AtomicU32 = AtomicU32::new(0);
static BESIDE_B_CALLS: AtomicU32 = AtomicU32::new(0);

/// Step `a` always fails, backing off in memory; step `b` beside it fails
/// once, a little later, and then succeeds.
struct ShutdownBesideRetry;

impl Workflow for ShutdownBesideRetry {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "shutdownBesideRetry";

    async fn run(&self, ctx: Ctx, _input: ()) -> Result<(), BoxError> {
        // Long enough that a stalled test still shuts down within it.
        let slow = StepOptions::retries(3)
            .backoff(Duration::from_secs(1), 1.0, Duration::from_secs(1))
            .jitter(0.0);
        let quick = StepOptions::retries(3)
            .backoff(Duration::from_millis(1), 1.0, Duration::from_millis(1))
            .jitter(0.0);
        let a = ctx.step_with("a", slow, || async {
            BESIDE_A_CALLS.fetch_add(1, Ordering::SeqCst);
            Err::<(), BoxError>("still down".into())
        });
        let b = ctx.step_with("b", quick, || async {
            if BESIDE_B_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                // After `a`'s failure: the row's note of a step backing
                // off names `b`, and `b`'s success clears it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err::<(), BoxError>("flaky".into());
            }
            Ok(())
        });
        let (a, b) = tokio::join!(a, b);
        b?;
        a?;
        Ok(())
    }
}

/// A worker shut down while `a` backed off beside `b`, which had failed
/// an attempt and then succeeded. The next worker counts `a`'s attempts
/// on: three in all. Before, the shutdown gave the instance back with no
/// step named, and `a` started over from one.
#[tokio::test]
async fn attempts_count_on_after_a_shutdown_beside_another_retried_step() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(ShutdownBesideRetry)
        .poll_interval(Duration::from_millis(10))
        // Stopped while `a` backs off, not let run out of attempts.
        .shutdown_grace(Duration::ZERO)
        // `a`'s backoff waits in memory.
        .suspend_after(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = ShutdownBesideRetry::start(&engine, ()).await.unwrap();
    for _ in 0..200 {
        if BESIDE_B_CALLS.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // `b` recorded, `a` backing off after its first attempt.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(BESIDE_A_CALLS.load(Ordering::SeqCst), 1);
    worker.shutdown().await;
    assert_eq!(inst.status().await.unwrap(), Status::Pending);

    a_fails_on_a_new_worker(&engine, &inst, &BESIDE_A_CALLS, 3).await;
}

/// A recorded output the code's type no longer reads (the code changed
/// under a running instance) pauses the instance with the reason, instead
/// of failing it for good; the steps after it do not run.
#[tokio::test]
async fn a_record_the_code_no_longer_reads_pauses_the_instance() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine_on(Arc::clone(&store)).await;
    let inst = ProcessOrder::start(&engine, order("unreadable-1"))
        .await
        .unwrap();
    // An earlier version's run recorded the price as text.
    ghost_fetched(&store, r#"{"amount":"7"}"#).await;

    let _worker = engine.start_worker();
    until_status(&inst, Status::Paused).await;
    let last = inst.history().await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "paused");
    let why = last.message.unwrap_or_default();
    assert!(
        why.contains("recorded output of step `fetch-order` does not fit")
            && why.contains("resume"),
        "{why}"
    );
    assert_eq!(calls(&CHARGES, "unreadable-1"), 0, "charge did not run");
    inst.cancel().await.unwrap();
    assert_eq!(inst.info().await.unwrap().status, Status::Cancelled);
}

/// The same for an input the input type no longer reads.
#[tokio::test]
async fn an_input_the_code_no_longer_reads_pauses_the_instance() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine_on(Arc::clone(&store)).await;
    let now = store::now_millis();
    let new = store::NewInstance {
        id: InstanceId::new(),
        workflow: "processOrder".into(),
        // As an earlier version took it.
        input: r#"{"order":"D4","qty":1}"#.into(),
        tags: Default::default(),
        key: None,
        created_at: now,
        run_at: now,
        deadline_at: Some(now + 60_000),
        parent: None,
    };
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    let inst = ProcessOrder::handle(&engine, id);
    let _worker = engine.start_worker();
    until_status(&inst, Status::Paused).await;
    let why = inst.history().await.unwrap().pop().unwrap().message;
    let why = why.unwrap_or_default();
    assert!(
        why.contains("the input does not fit the input type") && why.contains("order_id"),
        "{why}"
    );
}

/// Reading the history or steps of an id with no instance is an error, as
/// reading the instance is; an instance with no step yet has an empty list.
#[tokio::test]
async fn history_and_steps_of_an_unknown_id_are_not_found() {
    let engine = engine_on(Arc::new(MemoryStore::new())).await;
    let unknown = InstanceId::from("no-such-instance");
    let not_found = |r: Result<usize, Error>| matches!(r, Err(Error::NotFound(_)));
    assert!(not_found(engine.history(&unknown).await.map(|v| v.len())));
    assert!(not_found(engine.steps(&unknown).await.map(|v| v.len())));
    assert!(not_found(
        engine
            .history_tail(&unknown, 5)
            .await
            .map(|t| t.items.len())
    ));
    assert!(not_found(
        engine.steps_tail(&unknown, 5).await.map(|t| t.items.len())
    ));
    // No worker: created, not run.
    let fresh = Repeats::start(&engine, 1).await.unwrap();
    assert!(engine.steps(fresh.id()).await.unwrap().is_empty());
    assert_eq!(engine.steps_tail(fresh.id(), 5).await.unwrap().total, 0);
    assert_eq!(engine.history(fresh.id()).await.unwrap().len(), 1);
}

/// A hand-written workflow whose `TIMEOUT` is zero.
struct Instant0;

impl Workflow for Instant0 {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "instant0";
    const TIMEOUT: Duration = Duration::ZERO;

    async fn run(&self, _ctx: Ctx, _: ()) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Its instances would all time out before they ran: refused when the
/// engine is built (the macro refuses it at compile time).
#[tokio::test]
async fn a_timeout_under_a_millisecond_is_refused_at_build() {
    let err = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Instant0)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(why) if why.contains("`instant0` has a TIMEOUT under 1ms")),
        "{err}"
    );
}

/// A state whose `Serialize` panics once it is told to.
#[derive(Default, Deserialize, JsonSchema)]
struct Touchy {
    explode: bool,
}

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(!self.explode, "state would not serialize");
        s.serialize_bool(self.explode)
    }
}

/// Ends through `ctx.complete` or `ctx.fail` with a state that panics
/// when the run's end serializes it: as the handler returns (0, 1), or
/// after the handler's own guard, where the engine stopped it (2).
struct EndsTouchy;

impl Workflow for EndsTouchy {
    type Input = u8;
    type Output = ();
    type State = Touchy;
    const NAME: &'static str = "endsTouchy";

    async fn run(&self, ctx: Ctx<Touchy>, how: u8) -> Result<(), BoxError> {
        if how == 3 {
            // Its own panic after giving the outcome: the outcome stands.
            let _ = ctx.complete(());
            panic!("unwrapped the Interrupted of a later call");
        }
        ctx.state_mut().explode = true;
        match how {
            0 => match ctx.complete(())? {},
            1 => match ctx.fail("gave up")? {},
            _ => {
                let _ = ctx.complete(());
                std::future::pending().await
            }
        }
    }
}

#[tokio::test]
async fn a_state_that_panics_at_the_end_fails_its_instance_at_once() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(EndsTouchy)
        .poll_interval(Duration::from_millis(20))
        // Were the panic to escape, the run's lease would lapse and the
        // instance run again, until it paused: not within this test.
        .lease_duration(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    for (how, reason) in [
        (0, "handler panicked"),
        (1, "gave up; handler panicked"),
        (2, "handler panicked"),
    ] {
        let run = EndsTouchy::start(&engine, how).await.unwrap();
        let err = run
            .result_timeout(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(reason) && err.to_string().contains("would not serialize"),
            "{how}: {err}"
        );
        assert_eq!(run.info().await.unwrap().status, Status::Failed);
    }
    let run = EndsTouchy::start(&engine, 3).await.unwrap();
    run.result_timeout(Duration::from_secs(10)).await.unwrap();
}

/// Set once `BlocksItsThread`'s step is about to block.
static BLOCKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Blocks its thread in a step, as a synchronous call in async code does.
struct BlocksItsThread;

impl Workflow for BlocksItsThread {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "blocksItsThread";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("sync-call", || async {
            BLOCKING.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(10));
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A shutdown that cannot stop a handler blocking its thread says so (the
/// runtime, and the process, cannot end until it returns), and one that
/// stopped everything says that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_says_whether_it_left_a_handler_running() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(BlocksItsThread)
        .register(Repeats)
        .poll_interval(Duration::from_millis(10))
        .shutdown_grace(Duration::ZERO)
        .build()
        .await
        .unwrap();
    assert_eq!(engine.start_worker().shutdown().await, Stopped::Clean);
    let worker = engine.start_worker();
    BlocksItsThread::start(&engine, ()).await.unwrap();
    while !BLOCKING.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(worker.shutdown().await, Stopped::HandlersLeftRunning);
}

static STARVED_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
static STARVED_SIDE_EFFECTS: AtomicU32 = AtomicU32::new(0);

/// Blocks its thread (as a handler calling blocking code does) the first
/// time, between two steps.
struct StarvesItsHeartbeat;

impl Workflow for StarvesItsHeartbeat {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "starvesItsHeartbeat";

    async fn run(&self, ctx: Ctx, _input: ()) -> Result<(), BoxError> {
        ctx.step("before", || async { Ok::<_, BoxError>(()) })
            .await?;
        if STARVED_FIRST.swap(false, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1_500));
        }
        ctx.step("charge", || async {
            STARVED_SIDE_EFFECTS.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A handler that blocked its runtime's only thread past its lease, so
/// that its heartbeat could neither renew the lease nor stop it, does not
/// start its next step when it wakes: another worker took the instance
/// over meanwhile and ran that step. Before, the step looked only at
/// whether the heartbeat had stopped the run, and charged twice.
#[tokio::test(flavor = "current_thread")]
async fn a_step_after_the_lease_lapsed_does_not_run_though_the_heartbeat_starved() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = |store: Arc<dyn Store>| async move {
        EngineBuilder::new()
            .shared_store(store)
            .register(StarvesItsHeartbeat)
            .lease_duration(Duration::from_millis(300))
            .poll_interval(Duration::from_millis(20))
            .build()
            .await
            .unwrap()
    };
    // Two workers, each on a runtime with one thread: whichever claims
    // the instance blocks its thread, and the other takes over.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let other = store.clone();
    let elsewhere = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let there = engine(other).await;
            let worker = there.start_worker();
            ready_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || stop_rx.recv())
                .await
                .unwrap()
                .unwrap();
            worker.shutdown().await;
        });
    });
    ready_rx.recv().unwrap();
    let here = engine(store).await;
    let worker = here.start_worker();
    let inst = StarvesItsHeartbeat::start(&here, ()).await.unwrap();
    inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    // The blocked handler has woken by now (1.5 s), and met its step.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    stop_tx.send(()).unwrap();
    worker.shutdown().await;
    tokio::task::spawn_blocking(move || elsewhere.join().unwrap())
        .await
        .unwrap();
    assert!(!STARVED_FIRST.load(Ordering::SeqCst), "a handler blocked");
    assert_eq!(
        STARVED_SIDE_EFFECTS.load(Ordering::SeqCst),
        1,
        "the step ran in the run that held the lease only"
    );
}

static LATE_CLAIM_CHARGES: AtomicU32 = AtomicU32::new(0);

/// One step that counts its calls.
struct ChargedOnce;

impl Workflow for ChargedOnce {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "chargedOnce";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("charge", || async {
            LATE_CLAIM_CHARGES.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A claim whose answer comes after the lease it granted ended (a slow
/// network, a store retrying) is not started: another worker took the
/// instance over meanwhile and runs it, once.
#[tokio::test]
async fn a_claim_answered_after_its_lease_is_not_started() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = || async {
        EngineBuilder::new()
            .shared_store(Arc::clone(&store) as Arc<dyn Store>)
            .register(ChargedOnce)
            .lease_duration(Duration::from_millis(300))
            .poll_interval(Duration::from_millis(10))
            .build()
            .await
            .unwrap()
    };
    let late = engine().await;
    store.hold_claim_answers(true);
    let inst = ChargedOnce::start(&late, ()).await.unwrap();
    let late_worker = late.start_worker();
    until_status(&inst, Status::InProgress).await;
    // Its lease ends unheard of; another worker claims the instance (its
    // answer held back too, until both come).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let other = engine().await;
    let other_worker = other.start_worker();
    for _ in 0..500 {
        if inst.info().await.unwrap().runs >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(inst.info().await.unwrap().runs, 2, "taken over");
    store.hold_claim_answers(false);
    inst.result_timeout(Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    late_worker.shutdown().await;
    other_worker.shutdown().await;
    assert_eq!(LATE_CLAIM_CHARGES.load(Ordering::SeqCst), 1, "charged once");
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct Log {
    items: Vec<String>,
}

/// Two items of a `map` that each change the state; the first one's
/// record is slow to commit.
struct TwoNotes;

impl Workflow for TwoNotes {
    type Input = ();
    type Output = ();
    type State = Log;
    const NAME: &'static str = "twoNotes";

    async fn run(&self, ctx: Ctx<Log>, _: ()) -> Result<(), BoxError> {
        let items = vec!["a".to_owned(), "b".to_owned()];
        ctx.map("note", items, 2, |item: String| {
            let ctx = ctx.clone();
            async move {
                if item == "b" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ctx.state_mut().items.push(item);
                Ok::<_, BoxError>(())
            }
        })
        .await?;
        Ok(())
    }
}

/// Snapshots of the state are recorded in the order they were taken, so
/// the newest is the one kept. Before, item `a` snapshotted `[a]`, item
/// `b` then `[a, b]` and committed first, and `a`'s slow commit, landing
/// last, left the instance's state at `[a]`.
#[tokio::test]
async fn state_snapshots_are_recorded_in_the_order_taken() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    store.slow_step_commit(Some(("note[0]", Duration::from_millis(300))));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(TwoNotes)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = TwoNotes::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::Completed).await;
    let state: Log = inst.state().await.unwrap();
    assert_eq!(state.items, ["a", "b"], "the newest snapshot is kept");
    worker.shutdown().await;
}

/// How many items `Shipping` fans out: a deploy may change it.
static SHIPPED_ITEMS: AtomicU32 = AtomicU32::new(3);

/// Ships each item, then waits for a go-ahead.
struct Shipping;

impl Workflow for Shipping {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "shipping";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let items: Vec<u32> = (0..SHIPPED_ITEMS.load(Ordering::SeqCst)).collect();
        let shipped = ctx
            .map(
                "ship",
                items,
                4,
                |item| async move { Ok::<_, BoxError>(item) },
            )
            .await?;
        ctx.wait_for_event::<()>("go", None).await?;
        Ok(shipped.iter().sum())
    }
}

/// A replay whose fan-out is given fewer items than its first run
/// recorded pauses, naming the map, instead of handing results to the
/// wrong items; with the items back as they were, it resumes. Before, the
/// replay matched the first two records to the two items given and went on.
#[tokio::test]
async fn a_fan_out_replayed_with_fewer_items_pauses() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Shipping)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = Shipping::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::Listening).await;
    SHIPPED_ITEMS.store(2, Ordering::SeqCst);
    inst.send_event("go", ()).await.unwrap();
    let why = common::paused_reason(&inst).await;
    assert!(
        why.contains("`ship` was run with more items than the 2 it is given now"),
        "{why}"
    );
    SHIPPED_ITEMS.store(3, Ordering::SeqCst);
    inst.resume().await.unwrap();
    let total = inst.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(total, 3, "0 + 1 + 2");
}

/// Item `b` changes the state, then runs on; item `a` changes it after,
/// and its snapshot (holding both changes) is slow to commit.
struct SnapshotThenPlain;

impl Workflow for SnapshotThenPlain {
    type Input = ();
    type Output = ();
    type State = Log;
    const NAME: &'static str = "snapshotThenPlain";

    async fn run(&self, ctx: Ctx<Log>, _: ()) -> Result<(), BoxError> {
        let items = vec!["a".to_owned(), "b".to_owned()];
        ctx.map("note", items, 2, |item: String| {
            let ctx = ctx.clone();
            async move {
                if item == "a" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ctx.state_mut().items.push(item);
                } else {
                    ctx.state_mut().items.push(item);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<_, BoxError>(())
            }
        })
        .await?;
        Ok(())
    }
}

/// A record without a snapshot waits for one in flight: `b`'s change is
/// in `a`'s snapshot, so `b`, recorded first, would replay after a crash
/// without its change while `a` runs again. Before, `b`'s record landed
/// first, during `a`'s slow commit.
#[tokio::test]
async fn a_record_after_a_snapshot_holding_its_change_lands_after_it() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    store.slow_step_commit(Some(("note[0]", Duration::from_millis(300))));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(SnapshotThenPlain)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = SnapshotThenPlain::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::Completed).await;
    let steps = inst.steps().await.unwrap();
    let order: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(order, ["note[0]", "note[1]"], "recording order");
    worker.shutdown().await;
}
