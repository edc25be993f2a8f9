use workflow::prelude::*;

#[workflow]
async fn greet(_ctx: Ctx, name: &str) -> workflow::Result<String> {
    Ok(format!("hello {name}"))
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Order {
    id: String,
}

#[workflow]
async fn ship(_ctx: Ctx, order: &'static Order) -> workflow::Result<String> {
    Ok(order.id.clone())
}

fn main() {}
