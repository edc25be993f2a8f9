use workflow::prelude::*;

struct Jobs;

impl Jobs {
    #[workflow]
    async fn nightly(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
        Ok(())
    }
}

fn main() {}
