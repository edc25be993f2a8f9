use std::rc::Rc;

use workflow::prelude::*;

#[workflow]
async fn holds_rc(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    let shared = Rc::new(1);
    ctx.step("use-rc", || async { Ok::<_, BoxError>(()) })
        .await?;
    drop(shared);
    Ok(())
}

fn main() {}
