//! A workflow function may be named like the parameters of the generated
//! `run`: the call in it still reaches the function, not a parameter.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Order {
    id: String,
}

mod named_input {
    use super::Order;
    use workflow::prelude::*;

    /// Reads the input.
    #[workflow]
    pub async fn input(_ctx: Ctx, input: Order) -> workflow::Result<String> {
        Ok(input.id)
    }
}

mod named_ctx {
    // The generated struct is `Ctx`: the context type is named by its path.
    use workflow::prelude::{workflow, Workflow};

    #[workflow(name = "context")]
    pub async fn ctx(ctx: workflow::Ctx, _input: ()) -> workflow::Result<String> {
        Ok(ctx.name().to_owned())
    }

    pub fn name() -> &'static str {
        <Ctx as Workflow>::NAME
    }
}

fn main() {
    use named_input::Input;
    use workflow::prelude::Workflow;

    assert_eq!(Input::NAME, "input");
    assert_eq!(Input::DESCRIPTION, "Reads the input.");
    assert_eq!(named_ctx::name(), "context");
    fn types<W: Workflow<Input = Order, Output = String>>(_: W) {}
    types(Input);
    let _handlers = (named_input::input, named_ctx::ctx);
}
