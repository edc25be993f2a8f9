//! A workflow function may be named like the input parameter of the
//! generated `run`: the call in it still reaches the function, not the
//! parameter. (One named `ctx` would make a struct `Ctx`, which is refused:
//! it would hide the prelude's.)

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

fn main() {
    use named_input::Input;
    use workflow::prelude::Workflow;

    assert_eq!(Input::NAME, "input");
    assert_eq!(Input::DESCRIPTION, "Reads the input.");
    fn types<W: Workflow<Input = Order, Output = String>>(_: W) {}
    types(Input);
    let _handler = named_input::input;
}
