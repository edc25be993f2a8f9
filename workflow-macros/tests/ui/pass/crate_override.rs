//! `crate = ...` for when the facade is reached under another path.
mod reexport {
    pub use ::workflow as wf;
}

use workflow::prelude::*;

#[workflow(crate = ::workflow, name = "greet")]
pub(crate) async fn greet(_ctx: Ctx, name: String) -> workflow::Result<String> {
    Ok(format!("hello {name}"))
}

#[workflow(crate = crate::reexport::wf, name = "greet-again")]
async fn greet_again(_ctx: Ctx, name: String) -> workflow::Result<String> {
    Ok(format!("hello again {name}"))
}

fn main() {
    assert_eq!(Greet::NAME, "greet");
    assert_eq!(GreetAgain::NAME, "greet-again");
}
