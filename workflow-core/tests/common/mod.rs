//! Helpers shared by the engine tests.

use std::time::Duration;

use workflow_core::{Engine, Instance, Status, Workflow};

/// Polls until `inst` has `status`, for at most 30 seconds (a loaded CI
/// machine; a passing test waits only as long as it takes).
pub async fn until_status<W: Workflow>(inst: &Instance<W>, status: Status) {
    for _ in 0..3_000 {
        if inst.status().await.unwrap() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached {status}: {:?}", inst.info().await.unwrap());
}

/// Polls until no handler runs in `engine`'s process, for at most 10 s.
/// Tests that mean a stop sent at once hang the store's renewals
/// (`Unreachable::hang_renewals`), so that no heartbeat stops it instead.
#[allow(dead_code)]
pub async fn until_nothing_runs_here(engine: &Engine, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !engine.running_here().is_empty() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `inst` is paused, and returns the reason its history gives.
#[allow(dead_code)]
pub async fn paused_reason<W: Workflow>(inst: &Instance<W>) -> String {
    until_status(inst, Status::Paused).await;
    let history = inst.history().await.unwrap();
    let paused = history
        .iter()
        .rfind(|e| e.kind == "paused")
        .expect("a `paused` event");
    paused.message.clone().unwrap_or_default()
}
