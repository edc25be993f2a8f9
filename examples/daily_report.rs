//! A cron-scheduled workflow. The schedule here fires every 3 seconds so you
//! can watch it; a real daily report would say `schedule = "0 9 * * *"`.
//!
//! ```text
//! cargo run --example daily_report
//! ```
//!
//! Start it in two terminals at once: each tick still runs once.

use std::time::Duration;

use workflow::prelude::*;

/// Build and send the daily report.
#[workflow(
    name = "dailyReport",
    schedule = "*/3 * * * * *",
    timezone = "Europe/Paris"
)]
async fn daily_report(ctx: Ctx, _input: ()) -> workflow::Result<usize> {
    // The tick it runs for, however late it fired: the report's day.
    let tick = ctx
        .scheduled_at()
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    let rows: usize = ctx.step("collect", || async { workflow::Ok(42) }).await?;
    // Printing stands for sending: inside the step, so that a replay
    // after a crash does not send it again.
    ctx.step("send", || async {
        println!("report for tick {tick}: {rows} rows");
        workflow::Ok(())
    })
    .await?;
    Ok(rows)
}

#[tokio::main]
async fn main() -> workflow::Result<()> {
    // The engine reports what goes wrong through `tracing`: show warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let engine = Engine::builder()
        .database_url("sqlite://daily_report.db")
        .register(DailyReport)
        // A report a week old is gone: the file stops growing.
        .retention(std::time::Duration::from_secs(7 * 86_400))
        .build()
        .await?;
    let worker = engine.start_worker();

    for s in engine.schedules().await? {
        let next = s.next_fire.map(|t| t.to_rfc3339()).unwrap_or_default();
        println!(
            "{} runs on `{}` ({}), next at {next}",
            s.workflow, s.expression, s.timezone
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;

    let s = &engine.schedules().await?[0];
    if let (Some(tick), Some(id)) = (s.last_fired, &s.last_instance) {
        println!("last tick fired: {} -> instance {id}", tick.to_rfc3339());
    }
    worker.shutdown().await;
    Ok(())
}
