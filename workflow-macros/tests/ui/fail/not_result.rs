use workflow::prelude::*;

#[workflow]
async fn returns_string(_ctx: Ctx, _input: ()) -> String {
    String::new()
}

#[workflow]
async fn returns_nothing(_ctx: Ctx, _input: ()) {}

fn main() {}
