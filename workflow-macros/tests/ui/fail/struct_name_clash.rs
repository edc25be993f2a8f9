use serde::{Deserialize, Serialize};
use workflow::prelude::*;

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Triage {
    queue: String,
}

/// Returns a type spelled like the struct the macro generates from `triage`.
#[workflow]
async fn triage(_ctx: Ctx, ticket: String) -> workflow::Result<Triage> {
    Ok(Triage { queue: ticket })
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Refund {
    cents: u64,
}

/// Takes it inside another type.
#[workflow]
async fn refund(_ctx: Ctx, input: Vec<self::Refund>) -> workflow::Result<u64> {
    Ok(input.iter().map(|r| r.cents).sum())
}

fn main() {}
