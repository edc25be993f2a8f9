use workflow::prelude::*;

struct NotAnError;

#[workflow]
async fn fallible(_ctx: Ctx, _input: ()) -> Result<(), NotAnError> {
    Ok(())
}

fn main() {}
