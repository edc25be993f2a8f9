use workflow::prelude::*;

/// Not an input: no serde, no schema.
struct Ticket;

// Every mistake is reported in one build: the attribute's, the missing
// `async`, and the input type's missing traits.
#[workflow(schedule = "0 25 * * *", timeout = "soon", colour = "blue")]
fn report(_ctx: Ctx, _input: Ticket) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
