use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct ReportInput {
    recipient: String,
}

#[workflow(schedule = "0 9 * * MON")]
async fn weekly_report(_ctx: Ctx, _input: ReportInput) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
