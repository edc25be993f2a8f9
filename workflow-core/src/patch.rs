//! Version gates: new code for new instances, the old path kept for those
//! already past it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::store::StepRow;

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
    /// The first run to reach the call decides, and every replay gives the
    /// same answer. An instance is past the call when its earlier runs
    /// recorded anything this run has not reached yet (a step, a sleep,
    /// an event taken): it gets `false`. One that recorded nothing beyond
    /// it (new, or waiting right before it) gets `true`, recorded under
    /// `{id}@patch`. So call it outside `join!` branches and before the
    /// steps it chooses between, and give each change its own `id` (the
    /// rules of step names). Records the new code no longer reaches (a
    /// step removed) count as not reached: such an instance gets `false`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStepName`](crate::Error::InvalidStepName) for an
    /// `id` a step could not be named, [`Error::NestedStep`](crate::Error::NestedStep)
    /// inside a step, and the errors of recording it (the run stops:
    /// [`Error::Interrupted`](crate::Error::Interrupted)).
    pub async fn patched(&self, id: &str) -> Result<bool> {
        let run = self.run();
        run.check()?;
        run.check_call(id)?;
        let key = format!("{id}@patch");
        if run.recorded(&key).is_some() {
            return Ok(true);
        }
        if run.replaying() {
            return Ok(false);
        }
        // Counted as a step while it is recorded: a suspension beside it
        // waits for the record.
        let _recording = run.step_running();
        let now = run.now();
        self.record(StepRow {
            key,
            output: Some("true".to_owned()),
            error: None,
            state: None,
            attempts: 1,
            started_at: now,
            finished_at: now,
        })
        .await?;
        Ok(true)
    }
}
