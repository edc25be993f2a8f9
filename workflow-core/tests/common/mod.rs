//! Helpers shared by the engine tests.

use std::time::Duration;

use workflow_core::{Instance, Status, Workflow};

/// Polls until `inst` has `status`, for at most 5 seconds.
pub async fn until_status<W: Workflow>(inst: &Instance<W>, status: Status) {
    for _ in 0..500 {
        if inst.status().await.unwrap() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached {status}: {:?}", inst.info().await.unwrap());
}
