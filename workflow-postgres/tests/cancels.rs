//! A cancel made in another process stops a running handler at once: the
//! store's NOTIFY reaches the worker running it, instead of its next
//! heartbeat (up to a second later). Short steps stop anyway, at the
//! first commit the cancel refuses; a long one ran on until then.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use workflow_core::testing::Unreachable;
use workflow_core::{BoxError, Ctx, Engine, EngineBuilder, Status, Store, Timeout, Workflow};
use workflow_postgres::{PgOptions, PgStore};

/// Ticks of `Ticker`'s step.
static TICKS: AtomicU32 = AtomicU32::new(0);

/// Ticks of `KidTicker`'s step.
static KID_TICKS: AtomicU32 = AtomicU32::new(0);

/// `Ticker`'s long step, as a child.
struct KidTicker;

impl Workflow for KidTicker {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "kidTicker";
    const TIMEOUT: Duration = Duration::from_secs(600);

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("long", || async {
            for _ in 0..10_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                KID_TICKS.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// Waits for a `KidTicker` child; the test times it out.
struct Impatient;

impl Workflow for Impatient {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "impatient";
    const TIMEOUT: Duration = Duration::from_secs(600);

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.run_child::<KidTicker>("kid", ()).await?;
        Ok(())
    }
}

/// One long step that ticks every 20 ms (a model call, an export).
struct Ticker;

impl Workflow for Ticker {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "ticker";
    const TIMEOUT: Duration = Duration::from_secs(600);

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("long", || async {
            for _ in 0..10_000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                TICKS.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

async fn store(url: &str, schema: &str) -> PgStore {
    PgStore::connect_with(url, PgOptions::new().schema(schema))
        .await
        .expect("connect")
}

/// An engine running `W` on a store whose renewals can be made to hang,
/// with that store; a lease long enough to outlast the test.
async fn hanging_worker<W: Workflow>(
    url: &str,
    schema: &str,
    workflow: W,
) -> (Engine, Arc<Unreachable<PgStore>>) {
    let store = Arc::new(Unreachable::new(store(url, schema).await));
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(workflow)
        .lease_duration(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    (engine, store)
}

/// Waits until `ticks` passes 3, runs `stop`, then waits for `engine` to
/// run nothing (10 s at most: with its renewals hanging, only a NOTIFY
/// can stop it before its lease lapses), after which `ticks` must stand
/// still.
async fn ticking_then_stopped(
    engine: &Engine,
    ticks: &AtomicU32,
    stop: impl std::future::Future<Output = ()>,
) {
    for _ in 0..1_000 {
        if ticks.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ticks.load(Ordering::SeqCst) >= 3, "it never ran");
    stop.await;
    for _ in 0..1_000 {
        if engine.running_here().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(engine.running_here().is_empty(), "the handler ran on");
    let stopped_at = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        stopped_at,
        "the long step ran on after its handler stopped"
    );
}

/// The worker's heartbeat hangs (its renewals never answer), so only the
/// NOTIFY can tell it of the cancel another engine makes: its handler is
/// dropped mid-step. Before, the step ran on until the lease lapsed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_from_another_process_stops_the_handler_at_once() {
    let Some(url) = common::url("a_cancel_from_another_process_stops_the_handler_at_once") else {
        return;
    };
    let schema = common::fresh_schema("cancels");
    let (worker_engine, running) = hanging_worker(&url, &schema, Ticker).await;
    let _worker = worker_engine.start_worker();
    let other = EngineBuilder::new()
        .store(store(&url, &schema).await)
        .register(Ticker)
        .build()
        .await
        .unwrap();
    let id = other
        .start_json("ticker", serde_json::json!(null), Default::default())
        .await
        .unwrap();
    ticking_then_stopped(&worker_engine, &TICKS, async {
        running.hang_renewals(true);
        other.cancel(&id).await.unwrap();
    })
    .await;
    let info = other.instance(&id).await.unwrap();
    assert_eq!(info.status, Status::Cancelled);
    running.hang_renewals(false);
    common::drop_schemas(&url, &[schema]).await;
}

/// A parent that times out in one process cancels its child running in
/// another, whose heartbeat hangs: the timeout's NOTIFY stops the child's
/// long step at once. Before, it ran on until its lease lapsed.
#[tokio::test(flavor = "multi_thread")]
async fn a_parent_timing_out_elsewhere_stops_its_child_at_once() {
    let Some(url) = common::url("a_parent_timing_out_elsewhere_stops_its_child_at_once") else {
        return;
    };
    let schema = common::fresh_schema("timeouts");
    let (kid_engine, kids) = hanging_worker(&url, &schema, KidTicker).await;
    let _kid_worker = kid_engine.start_worker();
    let parents = EngineBuilder::new()
        .store(store(&url, &schema).await)
        .register(Impatient)
        .build()
        .await
        .unwrap();
    let _parent_worker = parents.start_worker();
    let id = parents
        .start_json("impatient", serde_json::json!(null), Default::default())
        .await
        .unwrap();
    ticking_then_stopped(&kid_engine, &KID_TICKS, async {
        kids.hang_renewals(true);
        // Its deadline now: its worker times it out.
        parents
            .set_timeout(&id, Timeout::In(Duration::ZERO))
            .await
            .unwrap();
        let ended = parents
            .wait_timeout(&id, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(ended.status, Status::TimedOut);
    })
    .await;
    kids.hang_renewals(false);
    common::drop_schemas(&url, &[schema]).await;
}
