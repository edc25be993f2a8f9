use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct Progress {
    done: u32,
}

#[workflow]
async fn track(_ctx: Ctx<Progress>, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
