//! Calls in different arms of one `if` or `match` may share a step name:
//! at most one of them runs. `STEPS` lists the name once.
use workflow::prelude::*;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
enum Channel {
    Email,
    Sms,
}

#[workflow]
async fn notify(ctx: Ctx, channel: Channel) -> workflow::Result<String> {
    let sent = match channel {
        Channel::Email => {
            ctx.step("send", || async { Ok::<_, BoxError>("mail".to_owned()) })
                .await?
        }
        Channel::Sms => {
            ctx.step("send", || async { Ok::<_, BoxError>("text".to_owned()) })
                .await?
        }
    };
    if sent.len() > 3 {
        ctx.step("log", || async { Ok::<_, BoxError>(()) }).await?;
    } else {
        ctx.step("log", || async { Ok::<_, BoxError>(()) }).await?;
    }
    Ok(sent)
}

fn main() {
    assert_eq!(Notify::STEPS, ["send", "log"]);
}
