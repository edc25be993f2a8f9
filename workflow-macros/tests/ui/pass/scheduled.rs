use std::time::Duration;

use workflow::prelude::*;

/// Nightly clean-up.
#[workflow(
    schedule = "0 30 2 * * MON-FRI",
    timezone = "Europe/Berlin",
    timeout = "1h 30m"
)]
async fn nightly_cleanup(ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    let removed: u32 = ctx.step("purge", || async { Ok::<_, BoxError>(3) }).await?;
    Ok(removed)
}

#[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Report {
    verbose: bool,
}

#[workflow(schedule = "@daily", description = "Daily report", retries = 3, catch_up = "all")]
async fn daily_report(_ctx: Ctx, _input: Report) -> workflow::Result<()> {
    Ok(())
}

fn main() {
    assert_eq!(NightlyCleanup::NAME, "nightly_cleanup");
    assert_eq!(NightlyCleanup::DESCRIPTION, "Nightly clean-up.");
    assert_eq!(NightlyCleanup::SCHEDULE, Some("0 30 2 * * MON-FRI"));
    assert_eq!(NightlyCleanup::TIMEZONE, "Europe/Berlin");
    assert_eq!(NightlyCleanup::TIMEOUT, Duration::from_secs(5400));
    assert_eq!(NightlyCleanup::STEPS, ["purge"]);

    assert_eq!(DailyReport::SCHEDULE, Some("@daily"));
    assert_eq!(DailyReport::DESCRIPTION, "Daily report");
    assert_eq!(DailyReport::TIMEZONE, "UTC");
    assert_eq!(DailyReport::RETRIES, Some(3));
    assert_eq!(DailyReport::CATCH_UP, workflow::CatchUp::All);
    assert_eq!(NightlyCleanup::CATCH_UP, workflow::CatchUp::Latest);
    assert!(DailyReport::schedule_input().is_some());
    assert_eq!(NightlyCleanup::RETRIES, None);
}
