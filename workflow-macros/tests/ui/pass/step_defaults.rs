//! `retries`, `backoff(..)` and `jitter` become the `RETRIES`, `BACKOFF`
//! and `JITTER` consts; settings left out of `backoff(..)` keep the
//! runtime's defaults.
use std::time::Duration;

use workflow::prelude::*;
use workflow::Backoff;

#[workflow(retries = 5, backoff(initial = "200ms", factor = 2.0, max = "30s"), jitter = 0.2)]
async fn charge(ctx: Ctx, _input: ()) -> workflow::Result<()> {
    ctx.step("charge", || async { Ok::<_, BoxError>(()) }).await
}

#[workflow(backoff(max = "1m 30s"))]
async fn only_max(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow(backoff(factor = 3), jitter = 0)]
async fn integer_numbers(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

#[workflow]
async fn plain(_ctx: Ctx, _input: ()) -> workflow::Result<()> {
    Ok(())
}

fn main() {
    assert_eq!(Charge::RETRIES, Some(5));
    assert_eq!(
        Charge::BACKOFF,
        Some(Backoff {
            initial: Duration::from_millis(200),
            factor: 2.0,
            max: Duration::from_secs(30),
        })
    );
    assert_eq!(Charge::JITTER, Some(0.2));

    assert_eq!(
        OnlyMax::BACKOFF,
        Some(Backoff {
            max: Duration::from_secs(90),
            ..Backoff::DEFAULT
        })
    );
    assert_eq!(OnlyMax::RETRIES, None);
    assert_eq!(OnlyMax::JITTER, None);

    assert_eq!(IntegerNumbers::BACKOFF.map(|b| b.factor), Some(3.0));
    assert_eq!(IntegerNumbers::JITTER, Some(0.0));

    assert_eq!(Plain::BACKOFF, None);
    assert_eq!(Plain::JITTER, None);
}
