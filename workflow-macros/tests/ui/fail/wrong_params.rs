use workflow::prelude::*;

#[workflow]
async fn only_ctx(_ctx: Ctx) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn three(_ctx: Ctx, _input: String, _extra: u32) -> workflow::Result<()> {
    Ok(())
}

struct Engineish;

impl Engineish {
    #[workflow]
    async fn method(&self, _ctx: Ctx, _input: ()) -> workflow::Result<()> {
        Ok(())
    }
}

#[workflow]
async fn generic<T>(_ctx: Ctx, _input: T) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
