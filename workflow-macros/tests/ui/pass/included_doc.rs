//! A doc comment the macro cannot read (`include_str!`) is the
//! description all the same, whole and in its place, through `concat!`.
use workflow::prelude::*;

/// Refund.
#[doc = include_str!("included_doc.md")]
#[workflow]
async fn refund(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {
    assert_eq!(
        Refund::DESCRIPTION,
        "Refund.\nRefunds an order in full.\n\nOnly for orders that shipped.\n"
    );
}
