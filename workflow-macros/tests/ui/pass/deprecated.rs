//! A deprecated workflow warns where the user's code names it, never in
//! the code `#[workflow]` generates (this case denies warnings).
#![deny(warnings)]

use workflow::prelude::*;

/// Kept registered until its last instances end.
#[deprecated(note = "use process_order_v2")]
#[workflow(name = "processOrder")]
async fn process_order(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[allow(deprecated)]
fn main() {
    assert_eq!(ProcessOrder::NAME, "processOrder");
}
