//! A workflow function may be named like the input parameter of the
//! generated `run`: the call in it still reaches the function, not the
//! parameter. (One named `ctx` would make a struct `Ctx`, which is refused:
//! it would hide the prelude's.) And a module that shadows the standard
//! prelude's names and the primitive types: the expansion names none of
//! them bare.

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

#[allow(non_camel_case_types, dead_code)]
mod shadows {
    use workflow::prelude::*;

    struct u32;
    struct f64;
    struct str;
    struct Option;
    struct Some;
    struct None;
    struct Box;
    struct String;
    struct Vec;
    struct Default;
    struct Send;
    struct Future;
    type Result = ();

    /// Runs in the shadows.
    #[workflow(retries = 2, backoff(initial = "1s"), jitter = 0.5)]
    pub async fn shadowed(ctx: Ctx, n: ::core::primitive::u8) -> workflow::Result<::core::primitive::u8> {
        let n = ctx.step("double", || async move { workflow::Ok(n * 2) }).await?;
        ::core::result::Result::Ok(n)
    }
}

fn main() {
    use workflow::prelude::Workflow as _;
    assert_eq!(shadows::Shadowed::RETRIES, ::core::option::Option::Some(2));

    use named_input::Input;
    use workflow::prelude::Workflow;

    assert_eq!(Input::NAME, "input");
    assert_eq!(Input::DESCRIPTION, "Reads the input.");
    fn types<W: Workflow<Input = Order, Output = String>>(_: W) {}
    types(Input);
    let _handler = named_input::input;
}
