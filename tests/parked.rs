//! Waiting costs disk, not memory: park many instances in `ctx.sleep` and
//! `ctx.wait_for_event` on SQLite and check the engine's resident memory
//! stays within a fixed bound, then wake a sample of them.
//!
//! `PARKED=100000 cargo test --release --test parked -- --nocapture` for the
//! full-size run; the default (20,000) keeps CI quick.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Park {
    /// Sleep this long, or, when zero, wait for an event.
    sleep_secs: u64,
}

#[workflow(name = "parked", timeout = "2d")]
async fn parked(ctx: Ctx, input: Park) -> workflow::Result<String> {
    if input.sleep_secs > 0 {
        ctx.sleep("nap", Duration::from_secs(input.sleep_secs))
            .await?;
        return Ok("slept".into());
    }
    let word: String = ctx.wait_for_event("wake", None).await?;
    Ok(word)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

async fn park_all(engine: &Engine, total: usize) -> Vec<Instance<Parked>> {
    let mut all = Vec::with_capacity(total);
    for chunk in 0..total.div_ceil(1_000) {
        let inputs = (0..1_000.min(total - chunk * 1_000))
            .map(|i| Park {
                sleep_secs: if i % 2 == 0 { 86_400 } else { 0 },
            })
            .collect();
        all.extend(
            Parked::start_many(engine, inputs, StartOptions::new())
                .await
                .expect("start_many"),
        );
    }
    // Wait until every one of them has run up to its wait and been suspended.
    let deadline = Instant::now() + Duration::from_secs(1_200);
    loop {
        let counts = engine.counts(Some("parked")).await.expect("counts");
        let listening = counts.get(&Status::Listening).copied().unwrap_or(0);
        let sleeping = engine
            .list(
                Query::new()
                    .workflow("parked")
                    .status(Status::InProgress)
                    .limit(1),
            )
            .await
            .expect("list")
            .items
            .is_empty();
        let runs_left = engine
            .list(
                Query::new()
                    .workflow("parked")
                    .status(Status::Pending)
                    .limit(1000),
            )
            .await
            .expect("list")
            .items
            .iter()
            .filter(|i| i.runs == 0)
            .count();
        if listening as usize >= total / 2 && sleeping && runs_left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "parking took too long: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_instances_cost_disk_not_memory() {
    let total: usize = std::env::var("PARKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::builder()
        .database_url(format!(
            "sqlite://{}",
            dir.path().join("parked.db").display()
        ))
        .durability(workflow::Durability::Relaxed)
        .register(Parked)
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("engine");
    let _worker = engine.start_worker();

    let started = Instant::now();
    let warm = park_all(&engine, 1_000).await;
    let rss_small = rss_kib();
    let all = park_all(&engine, total).await;
    let rss_large = rss_kib();
    let counts = engine.counts(Some("parked")).await.expect("counts");
    println!(
        "parked {} instances in {:.1?}: RSS {} MiB with 1,000 parked, {} MiB with {} parked; {:?}",
        total + 1_000,
        started.elapsed(),
        rss_small / 1024,
        rss_large / 1024,
        total + 1_000,
        counts
    );
    assert!(
        engine.running_here().is_empty(),
        "no handler stays in memory"
    );
    let growth_mib = rss_large.saturating_sub(rss_small) / 1024;
    assert!(
        growth_mib <= 48,
        "RSS grew by {growth_mib} MiB for {total} more parked instances"
    );

    // Parked ones still wake: send events to a sample.
    let listening: Vec<_> = all
        .iter()
        .chain(&warm)
        .skip(1)
        .step_by(2)
        .take(20)
        .collect();
    for inst in &listening {
        inst.send_event("wake", "hello").await.expect("send");
    }
    for inst in &listening {
        assert_eq!(
            inst.result_timeout(Duration::from_secs(30))
                .await
                .expect("woken"),
            "hello"
        );
    }
}
