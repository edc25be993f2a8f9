//! A function whose struct name is refused still has its types checked in
//! the same build: both mistakes are reported at once.
use workflow::prelude::*;

struct Ticket;

#[workflow]
async fn status(_ctx: Ctx, _ticket: Ticket) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
