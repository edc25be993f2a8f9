//! Version gates: new code for new instances, the old path kept for those
//! already past it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::Result;

impl<S> Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// Whether this instance takes the code path of change `id`: `true`
    /// for instances that reach this call under the new code, `false` for
    /// those whose earlier runs went past this point under the code
    /// before it. Temporal calls it `patched`. Deploy a change to a
    /// workflow that instances in flight must not see as
    ///
    /// ```no_run
    /// # use workflow_core::{BoxError, Ctx};
    /// # async fn book_dhl() -> Result<String, BoxError> { Ok(String::new()) }
    /// # async fn book_ups() -> Result<String, BoxError> { Ok(String::new()) }
    /// # async fn handler(ctx: Ctx) -> workflow_core::Result<String> {
    /// let booking: String = if ctx.patched("ship-with-dhl").await? {
    ///     ctx.step("book-dhl", book_dhl).await?
    /// } else {
    ///     ctx.step("book-ups", book_ups).await?
    /// };
    /// # Ok(booking) }
    /// ```
    ///
    /// and remove the old branch once no instance started before the
    /// deploy is unfinished. A step used as a gate does not work: it runs
    /// for old instances too, which have no record of it.
    ///
    /// The first call of `id` in an instance decides, and the answer is
    /// recorded (`{id}@patch`): every later call of it, in a loop, at
    /// another site or in a replay, gets the same. It decides `false` when
    /// earlier runs of the instance recorded anything this run has not
    /// reached yet (a step, a sleep, an event taken: the instance went
    /// past this point under the old code), and `true` otherwise (a new
    /// instance, or one that recorded nothing beyond the call). So call it
    /// before the steps it chooses between, with the work beside it
    /// (`join!` branches, spawned tasks) awaited first, and give each
    /// change its own `id` (the rules of step names). Records no code
    /// reaches any more (a step removed) count as not reached. A wait
    /// records nothing while it waits (an event wait without a timeout, a
    /// child): an old instance parked in one past the gate, with nothing
    /// recorded after the gate yet, decides `true`, as in Temporal.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStepName`](crate::Error::InvalidStepName) for an
    /// `id` a step could not be named, [`Error::NameTooLong`](crate::Error::NameTooLong)
    /// for one too long, [`Error::NestedStep`](crate::Error::NestedStep)
    /// inside a step, and the errors of recording it (the run stops:
    /// [`Error::Interrupted`](crate::Error::Interrupted)).
    pub async fn patched(&self, id: &str) -> Result<bool> {
        let run = self.run();
        run.check()?;
        run.check_call(id)?;
        let key = format!("{id}@patch");
        crate::error::check_length("patch id", &key)?;
        if let Some(decided) = run.recorded(&key) {
            return Ok(decided.output.as_deref() == Some("true"));
        }
        let (answer, deciding) = run.decide_patch(&key);
        if deciding {
            // Recorded either way, before any step of the branch it picks:
            // a later run replays the answer instead of judging again
            // from a history it has reached less or more of.
            self.record_value(key, answer.to_string()).await?;
        }
        Ok(answer)
    }
}
