//! The facade end to end on SQLite files: macro-generated workflows, state,
//! retries (the attribute's `retries`/`backoff` defaults too), dedup under
//! concurrency, and several engines sharing one file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct OrderInput {
    order_id: String,
    items: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct OrderOutput {
    status: String,
    total: u32,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct OrderState {
    processed: u32,
}

/// The orders charged, one entry per charge, across every test here.
static CHARGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Process a new customer order
#[workflow(name = "processOrder", timeout = "10m")]
async fn process_order(ctx: Ctx<OrderState>, input: OrderInput) -> workflow::Result<OrderOutput> {
    let price: u32 = ctx
        .step("fetch-order", || async { Ok::<_, BoxError>(5) })
        .await?;
    for _ in 0..input.items {
        ctx.step("pack-item", || async { Ok::<_, BoxError>(()) })
            .await?;
        ctx.state_mut().processed += 1;
    }
    ctx.step("charge-payment", || async {
        CHARGED.lock().unwrap().push(input.order_id.clone());
        Ok::<_, BoxError>(())
    })
    .await?;
    Ok(OrderOutput {
        status: format!("completed {}", input.order_id),
        total: price * input.items,
    })
}

/// An engine builder on SQLite file `file` in `dir`, polling every 20 ms.
fn builder(dir: &tempfile::TempDir, file: &str) -> workflow::EngineBuilder {
    Engine::builder()
        .database_url(format!("sqlite://{}", dir.path().join(file).display()))
        .poll_interval(Duration::from_millis(20))
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    builder(dir, "e2e.db")
        .register(ProcessOrder)
        .build()
        .await
        .expect("engine")
}

#[tokio::test]
async fn macro_workflow_runs_on_sqlite_with_state_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    assert_eq!(ProcessOrder::NAME, "processOrder");
    assert_eq!(ProcessOrder::DESCRIPTION, "Process a new customer order");
    assert_eq!(ProcessOrder::TIMEOUT, Duration::from_secs(600));
    assert_eq!(
        ProcessOrder::STEPS,
        ["fetch-order", "pack-item", "charge-payment"]
    );

    let worker = engine.start_worker();
    let inst = ProcessOrder::start(
        &engine,
        OrderInput {
            order_id: "A".into(),
            items: 3,
        },
    )
    .await
    .unwrap();
    let out = inst.result_timeout(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        out,
        OrderOutput {
            status: "completed A".into(),
            total: 15
        }
    );
    assert_eq!(inst.state().await.unwrap().processed, 3);
    let keys: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(
        keys,
        [
            "fetch-order",
            "pack-item",
            "pack-item#1",
            "pack-item#2",
            "charge-payment"
        ]
    );

    let info = engine.instance(inst.id()).await.unwrap();
    assert_eq!(info.status, Status::Completed);
    assert_eq!(info.output.unwrap()["total"], 15);
    assert_eq!(info.state.unwrap()["processed"], 3);
    assert!(info.deadline_at.unwrap() > info.created_at);
    let history = inst.history().await.unwrap();
    assert_eq!(
        history.first().unwrap().kind,
        workflow::HistoryKind::Created
    );
    assert_eq!(
        history.last().unwrap().kind,
        workflow::HistoryKind::Ended(Status::Completed)
    );
    // The kind also compares with, and serializes as, its stored name.
    assert_eq!(history.last().unwrap().kind, "completed");
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == "step_completed")
            .count(),
        5
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn definition_exposes_schemas() {
    let def = ProcessOrder::definition();
    assert_eq!(def.input_schema["properties"]["order_id"]["type"], "string");
    assert_eq!(
        def.output_schema["required"],
        serde_json::json!(["status", "total"])
    );
    assert_eq!(
        def.state_schema["properties"]["processed"]["type"],
        "integer"
    );
}

#[tokio::test]
async fn sixty_four_concurrent_get_or_create_calls_make_one_instance_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let input = OrderInput {
                order_id: "dup".into(),
                items: 1,
            };
            ProcessOrder::get_or_create(&engine, "order-dup", input)
                .await
                .unwrap()
                .id()
                .clone()
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one instance for one key");
}

#[tokio::test]
async fn engines_sharing_one_file_run_each_instance_once() {
    let dir = tempfile::tempdir().unwrap();
    let engines = [engine(&dir).await, engine(&dir).await, engine(&dir).await];
    let workers: Vec<_> = engines.iter().map(|e| e.start_worker()).collect();
    let mut instances = Vec::new();
    for n in 0..60 {
        let engine = &engines[n % 3];
        let input = OrderInput {
            order_id: format!("multi-{n}"),
            items: 2,
        };
        instances.push(ProcessOrder::start(engine, input).await.unwrap());
    }
    let mut runs_total = 0;
    for inst in &instances {
        inst.result_timeout(Duration::from_secs(60)).await.unwrap();
        runs_total += inst.info().await.unwrap().runs;
    }
    assert_eq!(runs_total, 60, "each instance was claimed exactly once");
    let charged = CHARGED.lock().unwrap().clone();
    for n in 0..60 {
        let order = format!("multi-{n}");
        let times = charged.iter().filter(|o| **o == order).count();
        assert_eq!(times, 1, "{order} charged {times} times");
    }
    for worker in workers {
        worker.shutdown().await;
    }
}

#[tokio::test]
async fn bad_json_input_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let err = engine
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": 7, "items": 1}),
            StartOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid input for workflow `processOrder`: at /order_id: 7 is not of type "string""#
    );
}

/// A row damaged outside the engine (bad JSON, an unknown status) hides
/// neither the rest of its page nor the pages after it: `list` names it in
/// `unreadable` and pages on.
#[tokio::test]
async fn a_corrupt_row_is_named_in_its_page_not_failing_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let input = OrderInput {
            order_id: format!("o-{n}"),
            items: 1,
        };
        ids.push(
            ProcessOrder::start(&engine, input)
                .await
                .unwrap()
                .id()
                .clone(),
        );
    }
    let db = rusqlite::Connection::open(dir.path().join("e2e.db")).unwrap();
    let corrupt = |sql: &str, id: &InstanceId| {
        db.execute(sql, [id.as_str()]).unwrap();
    };
    corrupt(
        "UPDATE instances SET input = 'not json' WHERE id = ?1",
        &ids[1],
    );
    corrupt(
        "UPDATE instances SET status = 'lost' WHERE id = ?1",
        &ids[3],
    );

    let page = engine.list(Query::new().limit(10)).await.unwrap();
    let listed: Vec<_> = page.items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(listed, [ids[4].clone(), ids[2].clone(), ids[0].clone()]);
    let unreadable: Vec<_> = page.unreadable.iter().map(|u| u.id.clone()).collect();
    assert_eq!(unreadable, [ids[3].clone(), ids[1].clone()]);
    assert!(
        page.unreadable[0].error.contains("lost"),
        "{:?}",
        page.unreadable
    );
    assert!(
        page.unreadable[1].error.contains("input"),
        "{:?}",
        page.unreadable
    );
    assert_eq!(page.next, None);

    // Two rows a page: the cursor moves past unreadable rows too, even one
    // that ends a page.
    let (mut seen, mut skipped, mut cursor) = (Vec::new(), Vec::new(), None);
    loop {
        let mut query = Query::new().limit(2);
        if let Some(after) = cursor.take() {
            query = query.after(after);
        }
        let page = engine.list(query).await.unwrap();
        seen.extend(page.items.into_iter().map(|i| i.id));
        skipped.extend(page.unreadable.into_iter().map(|u| u.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, listed);
    assert_eq!(skipped, unreadable);

    // Read alone, the row is an error naming the instance.
    let err = engine.instance(&ids[1]).await.unwrap_err();
    assert!(err.to_string().contains(ids[1].as_str()), "{err}");

    // Found by its key, a damaged row is an error, not an older instance
    // of the key nor none at all.
    let keyed = |order: &str| {
        let input = OrderInput {
            order_id: order.to_owned(),
            items: 1,
        };
        ProcessOrder::start_with(&engine, input, StartOptions::new().key("order-9"))
    };
    let older = keyed("o-9").await.unwrap();
    let newer = keyed("o-9-again").await.unwrap();
    let found = ProcessOrder::find(&engine, "order-9")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id(), newer.id());
    corrupt(
        "UPDATE instances SET input = 'not json' WHERE id = ?1",
        newer.id(),
    );
    let err = ProcessOrder::find(&engine, "order-9").await.unwrap_err();
    assert!(err.to_string().contains(newer.id().as_str()), "{err}");
    assert_ne!(older.id(), newer.id());
    db.execute("DELETE FROM instances WHERE id = ?1", [newer.id().as_str()])
        .unwrap();
    db.execute("DELETE FROM instances WHERE id = ?1", [older.id().as_str()])
        .unwrap();

    // The counts leave the unknown status out instead of failing.
    let counts = engine.counts(None).await.unwrap();
    assert_eq!(counts.get(&Status::Pending), Some(&4), "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 4);

    // A definition this build cannot read (a newer one's) is left out.
    db.execute(
        "INSERT INTO definitions (name, definition, recorded_at) VALUES ('fromTheFuture', '{\"catch_up\": \"sometimes\"}', 0)",
        [],
    )
    .unwrap();
    let names: Vec<String> = engine
        .definitions()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["processOrder"]);
}

#[tokio::test]
async fn unknown_url_schemes_are_a_clear_error() {
    let err = Engine::builder()
        .database_url("mysql://x")
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported database URL scheme `mysql`"),
        "{err}"
    );
}

/// A URL whose store is behind a feature names the feature; a bare file
/// name says how to write it; neither repeats a password.
#[tokio::test]
async fn urls_of_stores_not_compiled_in_name_the_feature() {
    let error = |url: &'static str| async move {
        Engine::builder()
            .database_url(url)
            .build()
            .await
            .unwrap_err()
            .to_string()
    };
    if !cfg!(feature = "postgres") {
        let err = error("postgres://app:s3cret@db.internal/app").await;
        assert!(
            err.contains("need the `postgres` feature of the `workflow` crate"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
    let err = error("mysql://app:s3cret@db.internal/app").await;
    assert!(!err.contains("s3cret"), "{err}");
    let err = error("workflows.db").await;
    assert!(err.contains("write `sqlite://workflows.db`"), "{err}");
}

/// When each attempt of a flaky step started, per workflow.
static DEFAULTS_ATTEMPTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static EXPLICIT_ATTEMPTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

/// Records an attempt; the first two fail.
fn flaky(attempts: &Mutex<Vec<Instant>>) -> Result<u32, BoxError> {
    let mut attempts = attempts.lock().unwrap();
    attempts.push(Instant::now());
    match attempts.len() {
        n @ (1 | 2) => Err(format!("attempt {n} failed").into()),
        n => Ok(n as u32),
    }
}

/// Every `ctx.step` here waits `500ms * 2^(n-1)` after failed attempt `n`: 500 ms, then 1 s.
#[workflow(
    name = "flakyDefaults",
    retries = 3,
    backoff(initial = "500ms", factor = 2.0, max = "30s")
)]
async fn flaky_defaults(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    ctx.step("call", || async { flaky(&DEFAULTS_ATTEMPTS) })
        .await
}

/// The attribute's 1 ms backoff is overridden by the step's own options.
#[workflow(
    name = "flakyExplicit",
    retries = 3,
    backoff(initial = "1ms", factor = 1.0, max = "1ms")
)]
async fn flaky_explicit(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    let opts = StepOptions::retries(3).backoff(
        Duration::from_millis(300),
        1.0,
        Duration::from_millis(300),
    );
    ctx.step_with("call", opts, || async { flaky(&EXPLICIT_ATTEMPTS) })
        .await
}

/// An engine whose own step policy is 2 attempts 1 ms apart: a step that
/// needs 3 attempts, or waits longer, got that from its workflow.
async fn quick_retry_engine(dir: &tempfile::TempDir) -> Engine {
    Engine::builder()
        .database_url(format!(
            "sqlite://{}",
            dir.path().join("retry.db").display()
        ))
        .register(FlakyDefaults)
        .register(FlakyExplicit)
        .step_options(StepOptions::retries(2).backoff(
            Duration::from_millis(1),
            1.0,
            Duration::from_millis(1),
        ))
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("engine")
}

/// The gaps between the starts of consecutive attempts.
fn gaps(attempts: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let attempts = attempts.lock().unwrap();
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// From the history of step `call`: its `attempt_failed` attempt numbers,
/// and the time from each of those events to the step's next outcome (the
/// next `attempt_failed`, or its record).
fn history_gaps(history: &[workflow::HistoryEvent]) -> (Vec<u32>, Vec<Duration>) {
    let events: Vec<_> = history
        .iter()
        .filter(|e| e.step.as_deref() == Some("call"))
        .filter(|e| {
            use workflow::HistoryKind::*;
            matches!(e.kind, AttemptFailed | StepCompleted | StepFailed)
        })
        .collect();
    let failed = events
        .iter()
        .filter(|e| e.kind == workflow::HistoryKind::AttemptFailed)
        .filter_map(|e| e.attempt)
        .collect();
    let gaps = events
        .windows(2)
        .filter(|w| w[0].kind == "attempt_failed")
        .map(|w| (w[1].at - w[0].at).to_std().expect("events in order"))
        .collect();
    (failed, gaps)
}

#[tokio::test]
async fn attribute_retries_and_backoff_apply_to_every_step() {
    assert_eq!(FlakyDefaults::RETRIES, Some(3));
    let dir = tempfile::tempdir().unwrap();
    let engine = quick_retry_engine(&dir).await;
    let worker = engine.start_worker();
    let inst = FlakyDefaults::start(&engine, ()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await;
    worker.shutdown().await;
    // Three attempts, where the engine's policy allows two.
    assert_eq!(out.unwrap(), 3);

    let expected = [Duration::from_millis(500), Duration::from_millis(1000)];
    let gaps = gaps(&DEFAULTS_ATTEMPTS);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    for (gap, min) in gaps.iter().zip(expected) {
        assert!(
            *gap >= min,
            "attempts {gaps:?} apart, expected at least {expected:?}"
        );
    }

    // The history shows the same: each failed attempt is followed by the
    // next attempt's outcome no sooner than the backoff.
    let (failed, gaps) = history_gaps(&inst.history().await.unwrap());
    assert_eq!(failed, [1, 2]);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    for (gap, min) in gaps.iter().zip(expected) {
        assert!(
            *gap >= min,
            "history events {gaps:?} apart, expected at least {expected:?}"
        );
    }
}

#[tokio::test]
async fn explicit_step_options_win_over_the_attribute_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let engine = quick_retry_engine(&dir).await;
    let worker = engine.start_worker();
    let inst = FlakyExplicit::start(&engine, ()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await;
    worker.shutdown().await;
    assert_eq!(out.unwrap(), 3);

    // 300 ms each, not the attribute's 1 ms.
    let min = Duration::from_millis(300);
    let gaps = gaps(&EXPLICIT_ATTEMPTS);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps.iter().all(|g| *g >= min), "attempts {gaps:?} apart");
    let (failed, gaps) = history_gaps(&inst.history().await.unwrap());
    assert_eq!(failed, [1, 2]);
    assert!(
        gaps.iter().all(|g| *g >= min),
        "history events {gaps:?} apart"
    );
}

/// Waits for an event nobody sends, far longer than its parent may run.
#[workflow(name = "waitsForever", timeout = "10m")]
async fn waits_forever(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    let _: serde_json::Value = ctx.wait_for_event("never", None).await?;
    Ok(())
}

/// Waits for `waitsForever`, but may run only three seconds (time enough
/// to start it on a loaded machine).
#[workflow(name = "impatientParent", timeout = "3s")]
async fn impatient_parent(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.run_child::<WaitsForever>("forever", ()).await?;
    Ok(())
}

/// A timeout is the clock cancelling the instance: the parent's deadline
/// passing while it waits in `ctx.run_child` ends the child `Cancelled`
/// too, instead of leaving it to run on for nothing.
#[tokio::test]
async fn a_timed_out_parent_cancels_the_child_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(&dir, "e2e.db")
        .register(ImpatientParent)
        .register(WaitsForever)
        .build()
        .await
        .expect("engine");
    let _worker = engine.start_worker();
    let parent = ImpatientParent::start(&engine, ()).await.unwrap();
    let out = parent.result_timeout(Duration::from_secs(30)).await;
    assert!(out.is_err(), "{out:?}");
    assert_eq!(parent.status().await.unwrap(), Status::TimedOut);

    let mut children = Vec::new();
    for _ in 0..500 {
        children = engine
            .list(Query::new().workflow("waitsForever"))
            .await
            .unwrap()
            .items;
        if !children.is_empty() && children.iter().all(|c| c.status.is_terminal()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(children.len(), 1, "the child was started");
    assert_eq!(children[0].status, Status::Cancelled, "{:?}", children[0]);
    let child = WaitsForever::handle(&engine, children[0].id.clone());
    let history = child.history().await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.message.as_deref()),
        ("cancelled", Some("parent timed out")),
        "{history:?}"
    );
}

/// Waits for `waitsForever`, and says how it ended.
#[workflow(name = "patientParent", timeout = "10m")]
async fn patient_parent(ctx: Ctx, _input: ()) -> workflow::Result<String> {
    match ctx.run_child::<WaitsForever>("forever", ()).await {
        Ok(()) => Ok("completed".into()),
        Err(workflow::Error::Child { status, .. }) => Ok(status.to_string()),
        Err(other) => Err(other),
    }
}

/// Polls until `id` has `status`, for at most 10 s: far less than the
/// workers' minute-long naps.
async fn until_status_within(engine: &Engine, id: &InstanceId, status: Status) {
    let started = Instant::now();
    loop {
        let now = engine.instance(id).await.unwrap().status;
        if now == status {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {now}, not {status}: an idle worker waited out its nap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle worker hears of a cancel that makes a parent due, and of a
/// deadline moved closer, at once, not at the end of its nap (here a
/// minute). Before, both waited out `poll_interval`.
#[tokio::test]
async fn idle_workers_hear_of_cancels_and_moved_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(&dir, "e2e.db")
        .poll_interval(Duration::from_secs(60))
        .register(PatientParent)
        .register(WaitsForever)
        .build()
        .await
        .expect("engine");
    let _worker = engine.start_worker();
    let parent = PatientParent::start(&engine, ()).await.unwrap();
    until_status_within(&engine, parent.id(), Status::Listening).await;
    let child = engine
        .list(Query::new().workflow("waitsForever"))
        .await
        .unwrap()
        .items
        .remove(0);
    until_status_within(&engine, &child.id, Status::Listening).await;
    engine.cancel(&child.id).await.unwrap();
    until_status_within(&engine, parent.id(), Status::Completed).await;
    assert_eq!(parent.result().await.unwrap(), "cancelled");

    let waiting = WaitsForever::start(&engine, ()).await.unwrap();
    until_status_within(&engine, waiting.id(), Status::Listening).await;
    waiting
        .set_timeout(Timeout::In(Duration::from_millis(100)))
        .await
        .unwrap();
    until_status_within(&engine, waiting.id(), Status::TimedOut).await;
}

/// Approves, or escalates after a second, whichever comes first. The wait
/// is polled first: the sleep adds its time to the wait's suspension. It
/// returns right after the `select!`, so no replay goes through it again
/// (where it could take the other branch).
#[workflow(name = "approveOrEscalate", timeout = "10m")]
async fn approve_or_escalate(ctx: Ctx, _input: ()) -> workflow::Result<String> {
    let approval = ctx.wait_for_event::<String>("approval", None);
    let escalation = ctx.sleep("escalate", Duration::from_secs(1));
    tokio::select! {
        biased;
        by = approval => Ok(format!("approved by {}", by?)),
        slept = escalation => slept.map(|()| "escalated".to_owned()),
    }
}

/// On SQLite, where each wait's store calls take their time: the instance
/// suspends once, for the event and until the sleep's end, and escalates
/// when no approval came.
#[tokio::test]
async fn a_sleep_beside_a_wait_wakes_the_instance_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(&dir, "e2e.db")
        .register(ApproveOrEscalate)
        .build()
        .await
        .expect("engine");
    let _worker = engine.start_worker();
    let inst = ApproveOrEscalate::start(&engine, ()).await.unwrap();
    let out = inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    assert_eq!(out, "escalated");
    let history = inst.history().await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.message.as_deref().is_some_and(|m| {
                m.contains("waiting for event `approval`") && m.contains("sleeping until")
            })),
        "{history:?}"
    );
}

/// What a handler needs from the application (a pool, a client), given
/// once to the engine and asked for by type.
struct Prices {
    per_item: u32,
    quoted: AtomicU32,
}

#[workflow(name = "quote")]
async fn quote(ctx: Ctx, items: u32) -> workflow::Result<u32> {
    let prices: &Prices = ctx.data()?;
    ctx.step("price", || async {
        prices.quoted.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BoxError>(items * prices.per_item)
    })
    .await
}

/// Takes the price list for granted.
#[workflow(name = "quoteStrict")]
async fn quote_strict(ctx: Ctx, items: u32) -> workflow::Result<u32> {
    let prices = ctx.data::<Prices>().expect("a price list");
    Ok(items * prices.per_item)
}

/// An application's own error, wrapping the engine's.
#[derive(Debug, thiserror::Error)]
enum QuoteError {
    #[error("quoting: {0}")]
    Workflow(#[from] workflow::Error),
}

/// Returns the missing price list's error in its own error type.
#[workflow(name = "quoteWrapped")]
async fn quote_wrapped(ctx: Ctx, items: u32) -> Result<u32, QuoteError> {
    let prices: &Prices = ctx.data()?;
    Ok(items * prices.per_item)
}

/// Does without a price list, and fails for a reason of its own.
#[workflow(name = "quoteOrFail")]
async fn quote_or_fail(ctx: Ctx, items: u32) -> workflow::Result<u32> {
    if let Ok(prices) = ctx.data::<Prices>() {
        return Ok(items * prices.per_item);
    }
    ctx.step("list-prices", || async {
        Err::<u32, BoxError>(workflow::permanent("no price list to read"))
    })
    .await
}

/// An engine on `url` that quotes at `per_item` each.
async fn priced(url: &str, per_item: u32) -> Engine {
    Engine::builder()
        .database_url(url)
        .register(Quote)
        .register(QuoteStrict)
        .register(QuoteWrapped)
        .register(QuoteOrFail)
        .data(Prices {
            per_item,
            quoted: AtomicU32::new(0),
        })
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn handlers_read_the_engines_data_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("data.db").display());
    let engine = priced(&url, 7).await;
    let _worker = engine.start_worker();
    let total = Quote::start(&engine, 3)
        .await
        .unwrap()
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(total, 21);
    let prices = engine.data::<Prices>().expect("given to the builder");
    assert_eq!(prices.quoted.load(Ordering::SeqCst), 1);

    // An engine not given one (on a file of its own, so that the first
    // engine's worker cannot take the instance): a deploy that forgot it.
    // The instance pauses, naming the type, instead of failing for good.
    let bare_url = format!("sqlite://{}", dir.path().join("bare.db").display());
    let bare = Engine::builder()
        .database_url(&bare_url)
        .register(Quote)
        .register(QuoteStrict)
        .register(QuoteWrapped)
        .register(QuoteOrFail)
        .build()
        .await
        .unwrap();
    let worker = bare.start_worker();
    let inst = Quote::start(&bare, 3).await.unwrap();
    // `.expect(..)` on it pauses too, and so does the error wrapped in the
    // handler's own error type.
    let strict = QuoteStrict::start(&bare, 2).await.unwrap();
    let wrapped = QuoteWrapped::start(&bare, 4).await.unwrap();
    for id in [inst.id(), strict.id(), wrapped.id()] {
        let started = Instant::now();
        while bare.instance(id).await.unwrap().status != Status::Paused {
            assert!(started.elapsed() < Duration::from_secs(10), "never paused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let history = bare.history(id).await.unwrap();
        let paused = history.iter().find(|e| e.kind == "paused").expect("paused");
        let why = paused.message.as_deref().unwrap_or_default();
        assert!(
            why.contains("no value of type `sqlite_engine::Prices`"),
            "{why}"
        );
    }
    // A handler that only looked, then failed for a reason of its own,
    // fails.
    let err = QuoteOrFail::start(&bare, 1)
        .await
        .unwrap()
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no price list to read"), "{err}");
    worker.shutdown().await;
    // The fix deployed: resumed, they complete.
    let fixed = priced(&bare_url, 5).await;
    let _worker = fixed.start_worker();
    for (id, total) in [(inst.id(), 15), (strict.id(), 10), (wrapped.id(), 20)] {
        fixed.resume(id).await.unwrap();
        let done = fixed
            .wait_timeout(id, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(done.output, Some(serde_json::json!(total)));
    }
}

/// An instance started by name is awaited by id: `Engine::wait` returns it
/// as it ended; `wait_timeout` gives up with `WaitTimeout` and leaves it.
#[tokio::test]
async fn instances_started_by_name_are_awaited_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let input = serde_json::json!({"order_id": "W-1", "items": 2});
    let id = engine
        .start_json("processOrder", input.clone(), StartOptions::new())
        .await
        .unwrap();
    // No worker yet: the wait gives up, the instance is still pending.
    let err = engine
        .wait_timeout(&id, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, workflow::Error::WaitTimeout { .. }),
        "{err:?}"
    );
    assert_eq!(engine.instance(&id).await.unwrap().status, Status::Pending);
    let _worker = engine.start_worker();
    let info = engine.wait(&id).await.unwrap();
    assert_eq!(info.status, Status::Completed);
    assert_eq!(info.output.unwrap()["status"], "completed W-1");
}

/// Sleeps, so that its row can be damaged while it waits.
#[workflow(name = "napperKid", timeout = "1m")]
async fn napper_kid(ctx: Ctx, n: u32) -> workflow::Result<u32> {
    // Long enough for the test to damage its row while it sleeps, on a
    // loaded machine too.
    ctx.sleep("nap", Duration::from_millis(3_000)).await?;
    Ok(n)
}

/// Runs a `napperKid` and reports how it went.
#[workflow(name = "kidWatcher", timeout = "1m")]
async fn kid_watcher(ctx: Ctx, n: u32) -> workflow::Result<String> {
    match ctx.run_child::<NapperKid>("kid", n).await {
        Ok(n) => Ok(format!("kid returned {n}")),
        Err(err) => Ok(format!("kid failed: {err}")),
    }
}

/// On a real file: a child whose row is damaged fails (its claim fails
/// it), and its parent, which cannot read that row either, is paused
/// saying so; once the row is repaired and the parent resumed, it sees
/// the failed child.
#[tokio::test]
async fn a_corrupt_child_pauses_its_parent_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kids.db");
    let engine = Engine::builder()
        .database_url(format!("sqlite://{}", path.display()))
        .register(NapperKid)
        .register(KidWatcher)
        .poll_interval(Duration::from_millis(20))
        // The kid's nap suspends it rather than sleeping in memory.
        .suspend_after(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let parent = KidWatcher::start(&engine, 7).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let kid = loop {
        let kids = engine
            .list(Query::new().workflow("napperKid").status(Status::Pending))
            .await
            .unwrap();
        // Pending again after a run: asleep.
        if let Some(kid) = kids.items.iter().find(|k| k.runs > 0) {
            break kid.id.clone();
        }
        assert!(Instant::now() < deadline, "the kid never slept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute(
        "UPDATE instances SET tags = 'not json' WHERE id = ?1",
        [kid.as_str()],
    )
    .unwrap();
    while parent.status().await.unwrap() != Status::Paused {
        assert!(Instant::now() < deadline, "the parent was not paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let history = parent.history().await.unwrap();
    let paused = history.iter().rev().find(|e| e.kind == "paused").unwrap();
    let why = paused.message.as_deref().unwrap_or_default();
    assert!(
        why.contains(kid.as_str()) && why.contains("repair"),
        "{why}"
    );
    assert_eq!(
        engine
            .counts(Some("napperKid"))
            .await
            .unwrap()
            .get(&Status::Failed),
        Some(&1)
    );
    db.execute(
        "UPDATE instances SET tags = '{}' WHERE id = ?1",
        [kid.as_str()],
    )
    .unwrap();
    parent.resume().await.unwrap();
    let said = parent
        .result_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        said.starts_with("kid failed: ") && said.contains("tags"),
        "{said}"
    );
    assert_eq!(parent.status().await.unwrap(), Status::Completed);
    worker.shutdown().await;
}

/// Attempts of the `marked` step, by how its error wraps the marker.
static MARKED_ATTEMPTS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

/// An application's own error type that keeps its cause as `source()`.
#[derive(Debug)]
struct ChargeError(workflow::NonRetryable);

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("charging failed")
    }
}

impl std::error::Error for ChargeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Fails its step with a retry marker wrapped the way `how` says.
#[workflow(
    name = "wrappedMarkers",
    retries = 3,
    backoff(initial = "1ms", factor = 1.0, max = "1ms")
)]
async fn wrapped_markers(ctx: Ctx, how: String) -> workflow::Result<()> {
    ctx.step("marked", || async {
        let first = {
            let mut attempts = MARKED_ATTEMPTS.lock().unwrap();
            attempts.push((how.clone(), Instant::now()));
            attempts.iter().filter(|(h, _)| *h == how).count() == 1
        };
        let err: BoxError = match how.as_str() {
            "anyhow context" => anyhow::Error::new(workflow::NonRetryable::new("card declined"))
                .context("charging")
                .into(),
            "own error" => Box::new(ChargeError(workflow::NonRetryable::new("card declined"))),
            "retry after" if first => anyhow::Error::new(workflow::RetryAfter::new(
                "rate limited",
                Duration::from_millis(400),
            ))
            .context("calling the gateway")
            .into(),
            _ => return Ok(()),
        };
        Err(err)
    })
    .await
}

/// `permanent`/`NonRetryable` and `RetryAfter` count wherever they sit in
/// the error's `source()` chain: under anyhow's context or inside the
/// application's own error, a declined charge must not be retried.
#[tokio::test]
async fn retry_markers_count_anywhere_in_the_error_chain() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(&dir, "m.db")
        .register(WrappedMarkers)
        .build()
        .await
        .expect("engine");
    let worker = engine.start_worker();
    for how in ["anyhow context", "own error"] {
        let id = engine
            .start_json("wrappedMarkers", serde_json::json!(how), Default::default())
            .await
            .unwrap();
        let info = engine
            .wait_timeout(&id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(info.status, Status::Failed, "{how}");
        let error = info.error.unwrap_or_default();
        assert!(error.contains("card declined"), "{how}: {error}");
        let attempts = MARKED_ATTEMPTS.lock().unwrap();
        let count = attempts.iter().filter(|(h, _)| h == how).count();
        assert_eq!(count, 1, "{how}: a permanent error was retried");
    }
    let id = engine
        .start_json(
            "wrappedMarkers",
            serde_json::json!("retry after"),
            Default::default(),
        )
        .await
        .unwrap();
    let info = engine
        .wait_timeout(&id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(info.status, Status::Completed);
    let attempts: Vec<Instant> = MARKED_ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(h, _)| h == "retry after")
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1] - attempts[0] >= Duration::from_millis(400),
        "RetryAfter under context was ignored: {:?}",
        attempts[1] - attempts[0]
    );
    worker.shutdown().await;
}

/// Ends early through the typed `complete`, or tries another workflow's.
#[workflow(name = "endsEarly")]
async fn ends_early(ctx: Ctx, wrong: bool) -> workflow::Result<String> {
    if wrong {
        // `quote` shares the state type, so this compiles; it must not end
        // this instance as if it were a `quote`.
        let err = Quote::complete(&ctx, 1).unwrap_err();
        return Ok(format!("refused: {err}"));
    }
    EndsEarly::complete(&ctx, "early".to_owned())?;
    Ok("late".to_owned())
}

#[tokio::test]
async fn the_typed_complete_ends_its_own_workflow_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder(&dir, "c.db")
        .register(EndsEarly)
        .register(Quote)
        .build()
        .await
        .expect("engine");
    let worker = engine.start_worker();
    let early = EndsEarly::start(&engine, false).await.unwrap();
    let out = early.result_timeout(Duration::from_secs(20)).await.unwrap();
    assert_eq!(out, "early");
    let wrong = EndsEarly::start(&engine, true).await.unwrap();
    let out = wrong.result_timeout(Duration::from_secs(20)).await.unwrap();
    assert!(
        out.contains("is an instance of `endsEarly`, not of `quote`"),
        "{out}"
    );
    worker.shutdown().await;
}

/// Fails its one step for good.
#[workflow(name = "failsLoudly")]
async fn fails_loudly(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("charge-card", || async {
        tracing::warn!("the gateway says no");
        Err::<(), BoxError>(permanent("card declined"))
    })
    .await?;
    Ok(())
}

/// Holds its step for a few seconds.
#[workflow(name = "slowCharge")]
async fn slow_charge(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("charge-slowly", || async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        workflow::Ok(())
    })
    .await
}

/// Log output, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Warnings and errors logged on this thread while the guard lives.
    fn warnings() -> (Captured, impl Drop) {
        use tracing_subscriber::util::SubscriberInitExt;
        let logs = Captured::default();
        let guard = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish()
            .set_default();
        (logs, guard)
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Under a subscriber that records nothing below `warn` (as production
/// often runs), a step that failed for good is logged with its step, its
/// instance and its workflow: the spans that carry them are enabled there.
/// So is the step's own logging, with its step key (its span was at debug).
#[test]
fn a_failed_step_is_logged_with_its_instance_under_a_warn_filter() {
    let (logs, _guard) = Captured::warnings();
    // One thread: every task logs under this thread's subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = runtime.block_on(async {
        let engine = Engine::builder()
            .store(workflow::MemoryStore::new())
            .register(FailsLoudly)
            .build()
            .await
            .unwrap();
        let worker = engine.start_worker();
        let run = FailsLoudly::start(&engine, ()).await.unwrap();
        assert!(run.result_timeout(Duration::from_secs(10)).await.is_err());
        worker.shutdown().await;
        run.id().clone()
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("step failed for good"))
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    for part in [
        "charge-card",
        id.as_str(),
        "failsLoudly",
        "card declined",
        "worker=",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    let own = text
        .lines()
        .find(|line| line.contains("the gateway says no"))
        .unwrap_or_else(|| panic!("the step's own warning is missing:\n{text}"));
    for part in ["step=charge-card", "attempt=1", id.as_str(), "failsLoudly"] {
        assert!(own.contains(part), "{part} missing from: {own}");
    }
}

/// A store that cannot be reached for a while is logged as one outage, not
/// a line per claim or heartbeat: one error when claims (and lease
/// renewals) first fail, the failures after it at debug (again at error
/// once a minute while it lasts). Before, every claim, retried every 50 ms
/// to 5 s, and every heartbeat logged its own error, the heartbeat's
/// without the worker it came from.
#[test]
fn a_store_down_is_logged_once_not_at_every_claim() {
    let (logs, _guard) = Captured::warnings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = std::sync::Arc::new(workflow_core::testing::Unreachable::new(
            workflow::MemoryStore::new(),
        ));
        let engine = Engine::builder()
            .shared_store(std::sync::Arc::clone(&store) as std::sync::Arc<dyn workflow::Store>)
            .register(SlowCharge)
            .poll_interval(Duration::from_millis(10))
            .shutdown_grace(Duration::ZERO)
            .build()
            .await
            .unwrap();
        let worker = engine.start_worker();
        let slow = SlowCharge::start(&engine, ()).await.unwrap();
        let started = Instant::now();
        while slow.info().await.unwrap().status != Status::InProgress {
            assert!(started.elapsed() < Duration::from_secs(10), "never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store.set_down(true);
        // Claims at 50, 100, 200, 400, 800 ms... apart: six or so fail,
        // and a heartbeat's renewal each second.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        store.set_down(false);
        // Claims going through (once their backoff of up to 1.6 s is
        // over), and the look for the next due instance failing at each
        // poll (every 10 ms here).
        store.fail_next_due(true);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        store.fail_next_due(false);
        worker.shutdown().await;
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for what in ["claiming work failed", "renewing leases failed"] {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(what)).collect();
        assert_eq!(lines.len(), 1, "{what}:\n{text}");
        assert!(lines[0].contains("worker="), "{}", lines[0]);
    }
    // The worker's look for the next due instance is one outage of its own.
    let looks = text
        .lines()
        .filter(|l| l.contains("looking for the next due instance failed"))
        .count();
    assert_eq!(looks, 1, "{looks} lines:\n{text}");
    assert!(!text.contains("still failing"), "{text}");
}

/// Ticks every second, for the outage below.
#[workflow(name = "everySecond", schedule = "* * * * * *", catch_up = "none")]
async fn every_second(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// The same for the scheduler, which looks at each schedule every second
/// and at startup records the schedules in force until it can, and for the
/// look for dead workers' leases every three heartbeats: a store down is
/// one error each, not a line a second. Before, each look logged a
/// warning.
#[test]
fn a_store_down_is_logged_once_by_the_scheduler() {
    let (logs, _guard) = Captured::warnings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = std::sync::Arc::new(workflow_core::testing::Unreachable::new(
            workflow::MemoryStore::new(),
        ));
        let engine = Engine::builder()
            .shared_store(std::sync::Arc::clone(&store) as std::sync::Arc<dyn workflow::Store>)
            .register(EverySecond)
            .poll_interval(Duration::from_millis(10))
            .shutdown_grace(Duration::ZERO)
            .build()
            .await
            .unwrap();
        // Down as the worker starts: the schedules in force cannot be
        // recorded.
        store.set_down(true);
        let worker = engine.start_worker();
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        store.set_down(false);
        let started = Instant::now();
        while engine
            .store()
            .schedule_mark("everySecond")
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "never recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Down while it runs: every look fails.
        store.set_down(true);
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        store.set_down(false);
        worker.shutdown().await;
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for what in [
        "recording the schedules in force (no schedule fires until it is done) failed",
        "checking the schedule of `everySecond` failed",
    ] {
        let lines = text.lines().filter(|l| l.contains(what)).count();
        assert_eq!(lines, 1, "{what}:\n{text}");
    }
    assert!(!text.contains("lease owners"), "{text}");
}

/// A caller waiting for the result of an instance that nothing will end
/// without someone's hand is told so once in the log: no worker has taken
/// it (none was started), or it is paused. Before, `result()` hung
/// without a word.
#[test]
fn waiting_for_an_instance_nothing_runs_says_why() {
    let (logs, _guard) = Captured::warnings();
    // Paused time: the 10 s before the warning pass at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (queued_id, idle, paused) = runtime.block_on(async {
        let clock = workflow::ManualClock::new(chrono::Utc::now());
        let engine = Engine::builder()
            .store(workflow::MemoryStore::new())
            .register(FailsLoudly)
            .clock(clock.clone())
            .build()
            .await
            .unwrap();
        // Queued a moment: no warning, however long the wait.
        let queued = FailsLoudly::start(&engine, ()).await.unwrap();
        let waited = queued.result_timeout(Duration::from_secs(30)).await;
        assert!(
            matches!(waited, Err(workflow::Error::WaitTimeout { .. })),
            "{waited:?}"
        );
        // Due for 20 s, by the engine's clock, that no worker took.
        let idle = FailsLoudly::start(&engine, ()).await.unwrap();
        clock.advance(Duration::from_secs(20));
        let waited = idle.result_timeout(Duration::from_secs(30)).await;
        assert!(
            matches!(
                waited,
                Err(workflow::Error::WaitTimeout {
                    status: Status::Pending,
                    ..
                })
            ),
            "{waited:?}"
        );
        let paused = FailsLoudly::start(&engine, ()).await.unwrap();
        paused.pause().await.unwrap();
        let waited = paused.result_timeout(Duration::from_secs(30)).await;
        // The error says why the wait could not end, for a test that
        // reports it rather than reading the log.
        match &waited {
            Err(err @ workflow::Error::WaitTimeout { status, .. }) => {
                assert_eq!(*status, Status::Paused);
                assert!(
                    err.to_string().contains("it ends only once resumed"),
                    "{err}"
                );
            }
            other => panic!("{other:?}"),
        }
        (queued.id().clone(), idle.id().clone(), paused.id().clone())
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let said = |id: &InstanceId, what: &str| {
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(id.as_str()))
            .collect();
        assert_eq!(lines.len(), 1, "one warning for {id} in:\n{text}");
        assert!(lines[0].contains(what), "{what} missing from: {}", lines[0]);
    };
    assert!(!text.contains(queued_id.as_str()), "{text}");
    said(&idle, "no worker has taken in the 10 s since it came due");
    said(&paused, "paused: it ends only once resumed");
}

/// Runs at 03:00 in Paris.
#[workflow(name = "nightly", schedule = "0 3 * * *", timezone = "Europe/Paris")]
async fn nightly_scheduled(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// The same workflow as a worker without its schedule registers it.
#[workflow(name = "nightly")]
async fn nightly_unscheduled(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

/// A worker that runs a scheduled workflow without its schedule (a web
/// tier registering it only to start it) records it removed, which undoes
/// the scheduled workers' record: it says so, and what to do. It was
/// silent, and the schedule restarted at each scheduled worker's start.
#[test]
fn a_worker_that_records_a_schedule_removed_says_so() {
    let (logs, _guard) = Captured::warnings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store: std::sync::Arc<dyn workflow::Store> =
            std::sync::Arc::new(workflow::MemoryStore::new());
        let recorded = |scheduled: bool| {
            let store = std::sync::Arc::clone(&store);
            async move {
                for _ in 0..500 {
                    let defs = store.definitions().await.unwrap();
                    if defs
                        .first()
                        .is_some_and(|d| d.schedule.is_some() == scheduled)
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("never recorded with scheduled = {scheduled}");
            }
        };
        let cron = Engine::builder()
            .shared_store(std::sync::Arc::clone(&store))
            .register(NightlyScheduled)
            .build()
            .await
            .unwrap();
        let cron_worker = cron.start_worker();
        recorded(true).await;
        let web = Engine::builder()
            .shared_store(std::sync::Arc::clone(&store))
            .register(NightlyUnscheduled)
            .build()
            .await
            .unwrap();
        let web_worker = web.start_worker();
        recorded(false).await;
        web_worker.shutdown().await;
        cron_worker.shutdown().await;
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("recorded as removed"))
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    for part in ["nightly", "0 3 * * *", "the same schedule"] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
}
