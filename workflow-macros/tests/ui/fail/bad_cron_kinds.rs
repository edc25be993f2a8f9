use workflow::prelude::*;

// A day-of-week name that does not exist.
#[workflow(schedule = "0 9 * * FUN")]
async fn weekday_name(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A month out of range, in the 6-field form with seconds.
#[workflow(schedule = "0 0 9 1 13 *")]
async fn month_range(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A nickname croner does not know.
#[workflow(schedule = "@fortnightly")]
async fn nickname(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A step of zero.
#[workflow(schedule = "*/0 * * * *")]
async fn zero_step(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A month name in the day-of-week field (croner would read it as Monday).
#[workflow(schedule = "0 9 * * JAN")]
async fn misplaced_name(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

// A date that never comes.
#[workflow(schedule = "0 0 31 2 *")]
async fn never(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {}
