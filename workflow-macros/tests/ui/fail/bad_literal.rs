use workflow::prelude::*;

#[workflow(timeout = b"1h")]
async fn byte_string(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(name = 'x')]
async fn char_name(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(name = "kept", "1h")]
async fn stray_value(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
