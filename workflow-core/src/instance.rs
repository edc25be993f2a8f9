//! Handles on instances: typed [`Instance`], untyped [`InstanceInfo`], history, queries.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result, StoreError};
use crate::history::HistoryEvent;
use crate::id::InstanceId;
use crate::status::Status;
use crate::store::{InstanceRow, ListQuery, Millis, StepRow};
use crate::workflow::{decode_named, Workflow};

/// A new deadline for [`Instance::set_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// This long from now (also for an instance whose delayed start is
    /// still ahead: the deadline may then fall before it starts).
    In(Duration),
    /// At this time.
    At(DateTime<Utc>),
}

impl Timeout {
    /// The deadline it names, in ms since the epoch, for a move made `now`.
    pub(crate) fn deadline(self, now: crate::store::Millis) -> crate::store::Millis {
        match self {
            Timeout::In(after) => crate::store::millis_after(now, after),
            Timeout::At(at) => at.timestamp_millis(),
        }
    }
}

/// Options for [`Workflow::start_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct StartOptions {
    pub(crate) key: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) delay: Option<Duration>,
}

impl StartOptions {
    /// No key, no tags, the workflow's own timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// A key to find the instance by ([`Query::key`], the console's search
    /// box). [`Workflow::start_with`] does not check it against other
    /// instances: two starts with one key make two instances. To start at
    /// most one per key, use [`Workflow::get_or_create`], which
    /// deduplicates on this same key. At most
    /// [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), with no NUL character and
    /// not starting with `schedule:` (the keys of a schedule's instances),
    /// or the start fails with [`Error::InvalidStartOption`].
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a tag. Its name and value are each at most
    /// [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), with no NUL character, or
    /// the start fails with [`Error::InvalidStartOption`].
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(name.into(), value.into());
        self
    }

    /// Runs the instance no sooner than `delay` from now: it waits as
    /// `Pending` (a row, no memory, as a sleep does) and a worker picks it
    /// up once it is due. Its timeout counts from then.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// A deadline this long after start, instead of the workflow's `TIMEOUT`.
    /// Past it the instance ends `TimedOut` and its unfinished descendants
    /// `Cancelled` (see [`Instance::set_timeout`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Refuses a key or tag not every store can index, and a timeout
    /// under a millisecond, which would end the instance `TimedOut` before
    /// it ran ([`Error::InvalidStartOption`]).
    pub(crate) fn check(&self) -> crate::Result<()> {
        let refuse = |what: String, why| Err(Error::InvalidStartOption { what, why });
        if let Some(timeout) = self.timeout.filter(|t| *t < Duration::from_millis(1)) {
            return refuse(
                format!("timeout {timeout:?}"),
                "must be at least 1ms: the instance would time out before it ran".to_owned(),
            );
        }
        if let Some(key) = &self.key {
            if let Some(why) = crate::error::unusable_key(key) {
                return refuse(format!("dedup key {:?}", crate::error::preview(key)), why);
            }
            if key.starts_with(crate::schedule::SCHEDULE_KEY_PREFIX) {
                return refuse(
                    format!("dedup key {:?}", crate::error::preview(key)),
                    format!(
                        "`{}` starts the keys of a schedule's instances: an instance \
                         started with one would stand for that tick and keep it from firing",
                        crate::schedule::SCHEDULE_KEY_PREFIX
                    ),
                );
            }
        }
        for (name, value) in &self.tags {
            if let Some(why) = crate::error::unusable_key(name) {
                return refuse(format!("tag name {:?}", crate::error::preview(name)), why);
            }
            if let Some(why) = crate::error::unusable_key(value) {
                return refuse(
                    format!("value of tag {:?}", crate::error::preview(name)),
                    why,
                );
            }
        }
        Ok(())
    }

    /// When an instance started `now` is due, and its deadline: the delay
    /// first, then the timeout (this one's, or `default`) from there.
    pub(crate) fn due(
        &self,
        now: crate::store::Millis,
        default: Duration,
    ) -> (crate::store::Millis, crate::store::Millis) {
        let run_at = crate::store::millis_after(now, self.delay.unwrap_or_default());
        let timeout = self.timeout.unwrap_or(default);
        (run_at, crate::store::millis_after(run_at, timeout))
    }
}

/// Options for [`Ctx::start_child_with`](crate::Ctx::start_child_with)
/// and [`Ctx::run_child_with`](crate::Ctx::run_child_with): the child's
/// own deadline, a later start, tags. Its key is not an option: the engine
/// keys a child by its parent and step, so that it starts exactly once.
///
/// ```no_run
/// # use std::time::Duration;
/// # use workflow_core::*;
/// # async fn f<W: Workflow<Input = ()>>(ctx: Ctx) -> Result<()> {
/// // An approval that may take a week, under a parent that waits for it.
/// let options = ChildOptions::new().timeout(Duration::from_secs(7 * 86_400)).tag("team", "billing");
/// let approval = ctx.run_child_with::<W>("approval", (), options).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ChildOptions {
    start: StartOptions,
}

impl ChildOptions {
    /// The child's workflow's own timeout, no delay, no tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// A deadline this long after the child starts, instead of its
    /// workflow's `TIMEOUT`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.start = self.start.timeout(timeout);
        self
    }

    /// Runs the child no sooner than `delay` after it is created (as
    /// [`StartOptions::delay`]); its timeout counts from then.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.start = self.start.delay(delay);
        self
    }

    /// Adds a tag, under the rules of [`StartOptions::tag`].
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.start = self.start.tag(name, value);
        self
    }

    /// The options as for a start without a key.
    pub(crate) fn start(&self) -> &StartOptions {
        &self.start
    }
}

/// The future of [`Workflow::get_or_create`]; `.statuses(..)` narrows or
/// widens which existing instances count, then `.await` it.
#[must_use = "get_or_create does nothing until awaited"]
pub struct GetOrCreate<'a, W: Workflow> {
    engine: &'a Engine,
    key: String,
    input: W::Input,
    statuses: Vec<Status>,
    options: StartOptions,
}

impl<W: Workflow> std::fmt::Debug for GetOrCreate<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOrCreate")
            .field("workflow", &W::NAME)
            .field("key", &self.key)
            .field("statuses", &self.statuses)
            .finish_non_exhaustive()
    }
}

impl<'a, W: Workflow> GetOrCreate<'a, W> {
    pub(crate) fn new(engine: &'a Engine, key: String, input: W::Input) -> Self {
        GetOrCreate {
            engine,
            key,
            input,
            statuses: Status::ACTIVE.to_vec(),
            options: StartOptions::default(),
        }
    }

    /// Which statuses of an existing instance with the key make it the answer.
    /// Default: `Pending`, `InProgress`, `Listening`, `Paused`.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = Status>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Tags, timeout and delay for the instance if one is created (its key
    /// is the dedup key).
    pub fn options(mut self, options: StartOptions) -> Self {
        self.options = options;
        self
    }

    /// Resolves to the instance and whether this call created it (`false`:
    /// an existing one matched, and the input was not used).
    ///
    /// ```no_run
    /// # use workflow_core::*;
    /// # async fn f<W: Workflow>(engine: &Engine, input: W::Input) -> Result<()> {
    /// let (instance, created) = W::get_or_create(engine, "order-42", input)
    ///     .with_created()
    ///     .await?;
    /// if !created {
    ///     tracing::info!(id = %instance.id(), "already running");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_created(self) -> Result<(Instance<W>, bool)> {
        let options = self.options.key(self.key);
        self.engine
            .create::<W>(self.input, options, Some(self.statuses))
            .await
            .map(|(id, created)| (Instance::new(self.engine.clone(), id), created))
    }
}

impl<'a, W: Workflow> IntoFuture for GetOrCreate<'a, W> {
    type Output = Result<Instance<W>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.with_created().await.map(|(instance, _)| instance) })
    }
}

/// A typed handle on one instance of workflow `W`.
pub struct Instance<W> {
    engine: Engine,
    id: InstanceId,
    /// Known to be an instance of `W`: made by starting one, or checked
    /// once against the store (a row's workflow never changes).
    checked: AtomicBool,
    _workflow: PhantomData<fn() -> W>,
}

impl<W> Clone for Instance<W> {
    fn clone(&self) -> Self {
        Instance {
            engine: self.engine.clone(),
            id: self.id.clone(),
            checked: AtomicBool::new(self.checked.load(Ordering::Relaxed)),
            _workflow: PhantomData,
        }
    }
}

impl<W> std::fmt::Debug for Instance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("id", &self.id).finish()
    }
}

impl<W: Workflow> Instance<W> {
    /// A handle on an instance known to be `W`'s: just started as one, or
    /// found by `W`'s name.
    pub(crate) fn new(engine: Engine, id: InstanceId) -> Self {
        Instance {
            engine,
            id,
            checked: AtomicBool::new(true),
            _workflow: PhantomData,
        }
    }

    /// A handle on an id from elsewhere ([`Workflow::handle`]): its first
    /// use reads which workflow the instance belongs to.
    pub(crate) fn unchecked(engine: Engine, id: InstanceId) -> Self {
        Instance {
            checked: AtomicBool::new(false),
            ..Instance::new(engine, id)
        }
    }

    /// The instance id.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Everything stored about it now.
    pub async fn info(&self) -> Result<InstanceInfo> {
        let info = self.engine.instance(&self.id).await?;
        self.check_name(&info.workflow)?;
        Ok(info)
    }

    /// Before acting on an instance through a handle from
    /// [`Workflow::handle`]: cancelling, pausing or sending an event to an
    /// instance of another workflow would act on the wrong thing.
    async fn ensure_workflow(&self) -> Result<()> {
        self.check_before(false).await
    }

    /// As [`ensure_workflow`](Self::ensure_workflow); with `or_damaged`, a
    /// row too damaged to say whose it is lets the call go on (a cancel
    /// reaches what cannot be read, as [`Engine::cancel`] does).
    async fn check_before(&self, or_damaged: bool) -> Result<()> {
        if self.checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.engine.row(&self.id).await {
            Ok(row) => self.check_workflow(&row),
            Err(Error::Store(StoreError::Corrupt { .. })) if or_damaged => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Its status now.
    pub async fn status(&self) -> Result<Status> {
        Ok(self.info().await?.status)
    }

    /// Its state now, as last persisted (default until a step changed it).
    /// A state `W::State` does not read is [`Error::WrongType`].
    pub async fn state(&self) -> Result<W::State> {
        let row = self.engine.row(&self.id).await?;
        self.check_workflow(&row)?;
        match row.state {
            Some(json) => decode_named(&json).map_err(|message| Error::WrongType {
                id: self.id.clone(),
                workflow: W::NAME.to_owned(),
                what: "state",
                message,
            }),
            None => Ok(W::State::default()),
        }
    }

    /// Waits until nothing is left for a worker to do with it by the
    /// engine's clock: it waits for a time still ahead (asleep, a retry
    /// backoff, a delayed start), for an event or a child, is paused, or
    /// ended; and returns it as it is then. For tests on a
    /// [`ManualClock`](crate::ManualClock): a sleep counts from the clock's
    /// time when the handler reaches it, so advance the clock once the
    /// instance is idle. (With such a clock every wait suspends the
    /// instance, so none hides in a running handler.) Polls the store
    /// every 10 ms, for as long as that takes.
    pub async fn idle(&self) -> Result<InstanceInfo> {
        loop {
            let info = self.info().await?;
            let now = self.engine.inner.now();
            let idle = match info.status {
                // Due by now: queued for a worker, not idle yet.
                Status::Pending | Status::Listening => {
                    info.due_at.is_none_or(|due| due.timestamp_millis() > now)
                }
                Status::InProgress => false,
                _ => true,
            };
            if idle {
                return Ok(info);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until it reaches a terminal status, and returns its output.
    ///
    /// It waits as long as that takes: an instance no worker runs (none
    /// registers its workflow, or none is started) never ends, even past
    /// its deadline, which workers enforce; nor does a `Paused` one until
    /// someone resumes it, and the engine pauses some itself (see
    /// [`Status::Paused`](crate::Status::Paused)). It logs a warning once
    /// when the instance has been due for 10 s and no worker has taken it,
    /// or after 10 s of waiting for a paused one. Bound the wait with
    /// [`result_timeout`](Self::result_timeout) where a caller is waiting,
    /// as in an HTTP handler.
    ///
    /// # Errors
    ///
    /// - [`Error::Failed`]: it failed, with the recorded error;
    /// - [`Error::Ended`]: it was cancelled or timed out;
    /// - [`Error::WrongType`]: its output does not read as `W::Output`
    ///   (written by another version of the type);
    /// - [`Error::WrongWorkflow`]: the id is an instance of another workflow;
    /// - [`Error::NotFound`]: no instance has the id (or it was purged);
    /// - [`Error::Store`]: the store failed, or the row is damaged.
    pub async fn result(&self) -> Result<W::Output> {
        self.ensure_workflow().await?;
        let row = self.engine.wait_terminal(&self.id, None).await?;
        self.output_of(row)
    }

    /// Like [`Instance::result`], giving up after `limit`.
    ///
    /// # Errors
    ///
    /// Those of [`result`](Self::result), and [`Error::WaitTimeout`] once
    /// `limit` passed (the instance runs on; its `status` says where it is).
    pub async fn result_timeout(&self, limit: Duration) -> Result<W::Output> {
        self.ensure_workflow().await?;
        let row = self.engine.wait_terminal(&self.id, Some(limit)).await?;
        self.output_of(row)
    }

    /// Cancels it: it ends `Cancelled` with its unfinished descendants
    /// (children, grandchildren...), and a running handler sees
    /// `ctx.signal()` fire and is dropped at its next await point: at once
    /// in this process, and in another process on a store that tells its
    /// workers of cancels (PostgreSQL, see
    /// [`Store::cancellations`](crate::Store::cancellations)); otherwise
    /// within about a second, at its worker's next heartbeat, as is a
    /// descendant running here under a parent that does not (a grandchild
    /// under a suspended child).
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyFinished`]: it ended already; nothing changes;
    /// - [`Error::NotFound`], [`Error::WrongWorkflow`]: no such instance
    ///   of `W`;
    /// - [`Error::Store`]: the store failed, and the cancel may or may not
    ///   have taken effect: repeating it is safe (one that had answers
    ///   `AlreadyFinished` with status `Cancelled`); or the row is damaged
    ///   ([`StoreError::Corrupt`](crate::StoreError::Corrupt)), which a
    ///   repeat does not mend.
    pub async fn cancel(&self) -> Result<()> {
        self.check_before(true).await?;
        self.engine.cancel(&self.id).await
    }

    /// Moves its deadline, also while it runs. Past the deadline it ends
    /// `TimedOut`, and its unfinished children, grandchildren... end
    /// `Cancelled` with it (history event `cancelled`, "parent timed out"),
    /// as [`Instance::cancel`] would leave them: their handlers stop at once
    /// when this engine runs them and every parent between, at their next
    /// heartbeat (within about a second) otherwise.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyFinished`]: it ended already; nothing changes;
    /// - [`Error::NotFound`], [`Error::WrongWorkflow`]: no such instance
    ///   of `W`;
    /// - [`Error::Store`]: the store failed (the call may or may not have
    ///   taken effect; repeating it is safe), or the row is damaged
    ///   ([`StoreError::Corrupt`](crate::StoreError::Corrupt)), which a
    ///   repeat does not mend.
    pub async fn set_timeout(&self, timeout: Timeout) -> Result<()> {
        self.ensure_workflow().await?;
        self.engine.set_timeout(&self.id, timeout).await
    }

    /// Sends it a typed [`Event`](crate::Event): `ctx.wait_for(event, ..)`
    /// receives `payload`, of the type the event names. Otherwise as
    /// [`send_event`](Self::send_event).
    pub async fn send<T: Serialize>(&self, event: crate::Event<T>, payload: &T) -> Result<()> {
        self.send_event(event.name(), payload).await
    }

    /// [`send`](Self::send) at most once per `key`; see
    /// [`send_event_once`](Self::send_event_once).
    pub async fn send_once<T: Serialize>(
        &self,
        event: crate::Event<T>,
        key: &str,
        payload: &T,
    ) -> Result<EventSent> {
        self.send_event_once(event.name(), key, payload).await
    }

    /// Sends it an event: `ctx.wait_for_event(name, ..)` receives `payload`.
    /// An event sent before the instance waits for it is kept until it
    /// does. Works from any process sharing the store.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidEventName`] or [`Error::NameTooLong`]: a name no
    ///   wait can have;
    /// - [`Error::PayloadTooLarge`]: the payload is over the engine's
    ///   `max_payload_bytes`; [`Error::Json`]: it does not serialize;
    /// - [`Error::AlreadyFinished`]: it ended already;
    /// - [`Error::NotFound`], [`Error::WrongWorkflow`]: no such instance
    ///   of `W`;
    /// - [`Error::Store`]: the store failed; the event may or may not be
    ///   in its inbox, and sending it again may deliver it twice: send
    ///   with [`send_event_once`](Self::send_event_once) from the first
    ///   try where a retry must not.
    pub async fn send_event(&self, name: &str, payload: impl Serialize) -> Result<()> {
        self.ensure_workflow().await?;
        self.engine.send_event(&self.id, name, payload).await
    }

    /// Sends it an event at most once per `key`: the first call with a key
    /// puts the event in its inbox as [`send_event`](Self::send_event)
    /// does; every later call with the same key, whatever its name and
    /// payload, changes nothing and returns [`EventSent::AlreadySent`],
    /// also once the event was taken or the instance ended. For senders
    /// that may deliver twice: a webhook retried by its provider, a
    /// message queue's redelivery, a caller retrying after a timeout.
    ///
    /// Keys are per instance and kept for its lifetime. A send refused
    /// because the instance had already ended ([`Error::AlreadyFinished`])
    /// does not use its key up. A key must be non-empty, at most
    /// [`MAX_EVENT_KEY_BYTES`](crate::MAX_EVENT_KEY_BYTES) long and contain
    /// no NUL.
    ///
    /// # Errors
    ///
    /// Those of [`send_event`](Self::send_event), and
    /// [`Error::InvalidEventKey`] for a key no store takes. After an
    /// [`Error::Store`], the same call again is safe.
    ///
    /// ```no_run
    /// # async fn f(inst: workflow_core::Instance<impl workflow_core::Workflow>, delivery_id: &str) -> workflow_core::Result<()> {
    /// use workflow_core::EventSent;
    /// match inst.send_event_once("payment", delivery_id, serde_json::json!({"paid": true})).await? {
    ///     EventSent::Sent => println!("payment event recorded"),
    ///     EventSent::AlreadySent => println!("redelivered; already recorded"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_event_once(
        &self,
        name: &str,
        key: &str,
        payload: impl Serialize,
    ) -> Result<EventSent> {
        self.ensure_workflow().await?;
        self.engine
            .send_event_once(&self.id, name, key, payload)
            .await
    }

    /// Pauses it: at once if it is waiting or queued, at its next step if it
    /// runs. Its deadline does not count while it is paused.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyFinished`]: it ended already; nothing changes;
    /// - [`Error::NotFound`], [`Error::WrongWorkflow`]: no such instance
    ///   of `W`;
    /// - [`Error::Store`]: the store failed (the call may or may not have
    ///   taken effect; repeating it is safe), or the row is damaged
    ///   ([`StoreError::Corrupt`](crate::StoreError::Corrupt)), which a
    ///   repeat does not mend.
    pub async fn pause(&self) -> Result<()> {
        self.ensure_workflow().await?;
        self.engine.pause(&self.id).await
    }

    /// Resumes it after [`Instance::pause`], its deadline pushed back by the
    /// time it was paused (a deadline set during the pause, by the time
    /// paused since it was set).
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyFinished`]: it ended already; nothing changes;
    /// - [`Error::NotFound`], [`Error::WrongWorkflow`]: no such instance
    ///   of `W`;
    /// - [`Error::Store`]: the store failed (the call may or may not have
    ///   taken effect; repeating it is safe), or the row is damaged
    ///   ([`StoreError::Corrupt`](crate::StoreError::Corrupt)), which a
    ///   repeat does not mend.
    pub async fn resume(&self) -> Result<()> {
        self.ensure_workflow().await?;
        self.engine.resume(&self.id).await
    }

    /// Its history, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryEvent>> {
        self.ensure_workflow().await?;
        self.engine.history(&self.id).await
    }

    /// Its recorded steps, in the order they completed.
    pub async fn steps(&self) -> Result<Vec<StepInfo>> {
        self.ensure_workflow().await?;
        self.engine.steps(&self.id).await
    }

    /// Its last `last` history events and how many it has
    /// ([`Engine::history_tail`]).
    pub async fn history_tail(&self, last: usize) -> Result<Tail<HistoryEvent>> {
        self.ensure_workflow().await?;
        self.engine.history_tail(&self.id, last).await
    }

    /// Its last `last` recorded steps and how many it has
    /// ([`Engine::steps_tail`]).
    pub async fn steps_tail(&self, last: usize) -> Result<Tail<StepInfo>> {
        self.ensure_workflow().await?;
        self.engine.steps_tail(&self.id, last).await
    }

    /// A handle made with [`Workflow::handle`] is not checked until used:
    /// reading another workflow's output or state as `W`'s could succeed
    /// (same types) and be wrong.
    fn check_workflow(&self, row: &InstanceRow) -> Result<()> {
        self.check_name(&row.workflow)
    }

    fn check_name(&self, workflow: &str) -> Result<()> {
        if workflow == W::NAME {
            self.checked.store(true, Ordering::Relaxed);
            return Ok(());
        }
        Err(Error::WrongWorkflow {
            id: self.id.clone(),
            expected: W::NAME.to_owned(),
            actual: workflow.to_owned(),
        })
    }

    fn output_of(&self, row: InstanceRow) -> Result<W::Output> {
        self.check_workflow(&row)?;
        match row.status {
            Status::Completed => {
                let json = row.output.unwrap_or_else(|| "null".to_owned());
                decode_named(&json).map_err(|message| Error::WrongType {
                    id: self.id.clone(),
                    workflow: W::NAME.to_owned(),
                    what: "output",
                    message,
                })
            }
            Status::Failed => Err(Error::Failed {
                id: self.id.clone(),
                workflow: row.workflow,
                message: row.error.unwrap_or_default(),
            }),
            status => Err(Error::Ended {
                id: self.id.clone(),
                workflow: row.workflow,
                status,
            }),
        }
    }
}

/// Everything stored about an instance, with JSON values parsed. What
/// `engine.instance(id)` returns for any workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// Its id.
    pub id: InstanceId,
    /// The workflow's name.
    pub workflow: String,
    /// Current status.
    pub status: Status,
    /// The input.
    pub input: serde_json::Value,
    /// The output, once `Completed`.
    pub output: Option<serde_json::Value>,
    /// The error, once `Failed` or `TimedOut`. A cancelled instance has
    /// none: the message of its `cancelled` history event says why (a
    /// child's names its parent's end).
    pub error: Option<String>,
    /// The state as last persisted.
    pub state: Option<serde_json::Value>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The key it was started with: what [`Workflow::get_or_create`]
    /// deduplicates on and [`Query::key`] finds. One given with
    /// [`StartOptions::key`] was not checked against other instances.
    pub key: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// First picked up by a worker.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deadline.
    pub deadline_at: Option<DateTime<Utc>>,
    /// How many times a worker picked it up: one more after each suspension
    /// (sleep, event or child wait, long backoff, pause) and each crash or
    /// restart.
    pub runs: i64,
    /// When it is due: for `Pending`, when it may run (its start delay,
    /// sleep or retry backoff ends; a time already past means it is queued
    /// for the next free worker); for `Listening`, when its wait gives up
    /// (the wait's timeout or the deadline, whichever comes first; `None`
    /// when it has neither). `None` in every other status.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// What it waits for: the event or child of a `Listening` instance, or
    /// the step whose long retry backoff a `Pending` one sits out. `None`
    /// otherwise (a sleep or a delayed start is `Pending` with a
    /// [`due_at`](Self::due_at) ahead).
    #[serde(default)]
    pub waiting_for: Option<WaitingFor>,
    /// The instance that started it with `ctx.start_child` or `ctx.run_child`.
    #[serde(default)]
    pub parent: Option<InstanceId>,
    /// [`Engine::pause`](crate::Engine::pause) was asked while it ran: it
    /// is still `InProgress`, and pauses before its next step, at its next
    /// wait, or when its current run ends without finishing.
    /// [`Engine::resume`](crate::Engine::resume) takes the request back.
    #[serde(default)]
    pub pause_requested: bool,
}

/// What a waiting instance waits for: [`InstanceInfo::waiting_for`].
///
/// Serialized with a `kind` tag: `{"kind": "event", "name": "approved"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WaitingFor {
    /// An event of this name (`ctx.wait_for_event`).
    Event {
        /// The event's name.
        name: String,
    },
    /// This child instance to end (`ctx.run_child`).
    Child {
        /// The child's id.
        id: InstanceId,
    },
    /// The retry backoff of this step to end: a wait too long to hold a
    /// worker for, so the instance was suspended until its next attempt.
    Retry {
        /// The step's key.
        step: String,
        /// Its failed attempts so far.
        failed_attempts: u32,
    },
}

impl std::fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitingFor::Event { name } => write!(f, "event `{name}`"),
            WaitingFor::Child { id } => write!(f, "child {id}"),
            WaitingFor::Retry {
                step,
                failed_attempts,
            } => write!(
                f,
                "retry of step `{step}` after {failed_attempts} failed attempt(s)"
            ),
        }
    }
}

/// A stored time. One past what chrono holds (±262,000 years: a sleep of
/// `Duration::MAX`, a row damaged outside the engine) reads as chrono's
/// furthest time on its side, not as 1970, which would read as long due.
pub(crate) fn time(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms > 0 {
        DateTime::<Utc>::MAX_UTC
    } else {
        DateTime::<Utc>::MIN_UTC
    })
}

fn json(id: &InstanceId, column: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt {
        id: id.clone(),
        message: format!("{column} is not valid JSON: {err}"),
    })
}

impl TryFrom<InstanceRow> for InstanceInfo {
    type Error = StoreError;

    fn try_from(row: InstanceRow) -> Result<Self, StoreError> {
        Ok(InstanceInfo {
            input: json(&row.id, "input", &row.input)?,
            output: row
                .output
                .as_deref()
                .map(|o| json(&row.id, "output", o))
                .transpose()?,
            state: row
                .state
                .as_deref()
                .map(|s| json(&row.id, "state", s))
                .transpose()?,
            id: row.id,
            workflow: row.workflow,
            status: row.status,
            error: row.error,
            tags: row.tags,
            key: row.key,
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
            started_at: row.started_at.map(time),
            finished_at: row.finished_at.map(time),
            deadline_at: row.deadline_at.map(time),
            runs: row.runs,
            due_at: match row.status {
                Status::Pending => Some(time(row.run_at)),
                // Without a timeout or deadline the wait's `run_at` is
                // `Millis::MAX`, past anything `DateTime` holds.
                Status::Listening if row.run_at < Millis::MAX => Some(time(row.run_at)),
                _ => None,
            },
            waiting_for: match (row.status, row.wait_event, row.wait_child, row.retry) {
                (Status::Listening, Some(name), _, _) => Some(WaitingFor::Event { name }),
                (Status::Listening, None, Some(id), _) => Some(WaitingFor::Child { id }),
                (Status::Pending, _, _, Some((step, failed_attempts))) => Some(WaitingFor::Retry {
                    step,
                    failed_attempts,
                }),
                _ => None,
            },
            parent: row.parent,
            pause_requested: row.pause_requested && row.status == Status::InProgress,
        })
    }
}

/// A recorded step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepInfo {
    /// `name` or `name#n`.
    pub key: String,
    /// Its result when it succeeded.
    pub output: Option<serde_json::Value>,
    /// Its error when it failed for good.
    pub error: Option<String>,
    /// Attempts it took.
    pub attempts: u32,
    /// First attempt started.
    pub started_at: DateTime<Utc>,
    /// Recorded.
    pub finished_at: DateTime<Utc>,
    /// Why the recorded output could not be read (a row damaged outside
    /// the engine; `output` is then `None`). Shown in place, so one
    /// damaged step does not hide the instance's other steps, which are
    /// what explains the damage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl StepInfo {
    pub(crate) fn from_row(id: &InstanceId, s: StepRow) -> Self {
        let (output, unreadable) = match s.output.as_deref().map(|o| json(id, "step output", o)) {
            None => (None, None),
            Some(Ok(output)) => (Some(output), None),
            Some(Err(err)) => (None, Some(err.to_string())),
        };
        StepInfo {
            output,
            unreadable,
            key: s.key,
            error: s.error,
            attempts: s.attempts,
            started_at: time(s.started_at),
            finished_at: time(s.finished_at),
        }
    }
}

/// A filter for [`Engine::list`]: newest first, paged by cursor.
///
/// ```no_run
/// # use workflow_core::*;
/// # async fn doc(engine: Engine) -> Result<()> {
/// // Every failed instance of a workflow, 100 at a time.
/// let mut query = Query::new().workflow("processOrder").status(Status::Failed).limit(100);
/// loop {
///     let page = engine.list(query.clone()).await?;
///     for instance in &page.items {
///         println!("{} {}", instance.id, instance.error.as_deref().unwrap_or(""));
///     }
///     match page.next {
///         Some(next) => query = query.after(next),
///         None => break,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Query {
    pub(crate) inner: ListQuery,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            inner: ListQuery {
                limit: 50,
                ..ListQuery::default()
            },
        }
    }
}

impl Query {
    /// Every instance, 50 per page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Without the instances' JSON documents: each item's `input` is
    /// `null` and its `output` and `state` are `None`, which the store
    /// then need not read (a page of instances with large payloads reads
    /// every one of them otherwise). For listings such as the console's.
    pub fn summaries(mut self) -> Self {
        self.inner.summaries = true;
        self
    }

    /// Only instances of this workflow (its name, as
    /// [`InstanceInfo::workflow`] gives it).
    pub fn workflow(mut self, name: impl Into<String>) -> Self {
        self.inner.workflow = Some(name.into());
        self
    }

    /// The earlier name of [`workflow`](Self::workflow).
    #[deprecated(note = "use `Query::workflow`, named as `InstanceInfo::workflow` is")]
    pub fn name(self, workflow: impl Into<String>) -> Self {
        self.workflow(workflow)
    }

    /// Only this status (call again to allow more).
    pub fn status(mut self, status: Status) -> Self {
        self.inner.statuses.push(status);
        self
    }

    /// Only instances with this tag.
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.tags.insert(name.into(), value.into());
        self
    }

    /// Only this dedup key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.inner.key = Some(key.into());
        self
    }

    /// Only instances created in `[from, to)`.
    pub fn created_between(mut self, from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        self.inner.created_from = Some(from.timestamp_millis());
        self.inner.created_to = Some(to.timestamp_millis());
        self
    }

    /// Page size (default 50, at most 1000).
    pub fn limit(mut self, limit: usize) -> Self {
        self.inner.limit = limit.clamp(1, 1000);
        self
    }

    /// Continue after a page: pass the previous [`Page::next`].
    pub fn after(mut self, cursor: InstanceId) -> Self {
        self.inner.before = Some(cursor);
        self
    }
}

/// One page of [`Engine::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Page {
    /// The instances, newest first.
    pub items: Vec<InstanceInfo>,
    /// Instances of this page whose stored row could not be read (a row
    /// damaged outside the engine); the others are still listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
    /// Cursor for the next page (`Query::after`), when more instances
    /// follow this page (an exactly full last page has none).
    pub next: Option<InstanceId>,
}

/// The end of a long list: [`Engine::steps_tail`] and
/// [`Engine::history_tail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tail<T> {
    /// The last items, oldest first.
    pub items: Vec<T>,
    /// How many there are in all.
    pub total: u64,
}

/// An instance [`Engine::list`] found but could not read. Reading it with
/// [`Engine::instance`] reports the same error; running it fails it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Unreadable {
    /// The instance.
    pub id: InstanceId,
    /// What is wrong with its row.
    pub error: String,
}

/// What [`Instance::send_event_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSent {
    /// The event is in the instance's inbox now.
    Sent,
    /// An event with this key was sent to the instance before (perhaps
    /// by this very call, repeated by the store after a lost connection):
    /// nothing changed.
    AlreadySent,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times beyond chrono's range keep their side: a sleep of
    /// `Duration::MAX` is due in the far future, not in 1970.
    #[test]
    fn times_out_of_range_keep_their_side() {
        assert_eq!(time(Millis::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(time(Millis::MIN), DateTime::<Utc>::MIN_UTC);
        assert_eq!(time(1_000).timestamp_millis(), 1_000);
    }

    fn row(status: Status) -> InstanceRow {
        InstanceRow {
            id: InstanceId::from_string("i"),
            workflow: "wf".into(),
            status,
            input: "null".into(),
            output: None,
            error: None,
            state: None,
            tags: BTreeMap::new(),
            key: None,
            created_at: 1_000,
            updated_at: 1_000,
            started_at: None,
            finished_at: None,
            run_at: 5_000,
            deadline_at: None,
            runs: 1,
            parent: None,
            wait_event: None,
            wait_child: None,
            retry: None,
            pause_requested: false,
        }
    }

    fn info(row: InstanceRow) -> InstanceInfo {
        InstanceInfo::try_from(row).unwrap()
    }

    #[test]
    fn due_at_and_waiting_for_follow_the_status() {
        let due = Some(time(5_000));
        let pending = info(row(Status::Pending));
        assert_eq!((pending.due_at, pending.waiting_for), (due, None));

        let backing_off = info(InstanceRow {
            retry: Some(("charge".into(), 2)),
            ..row(Status::Pending)
        });
        assert_eq!(
            backing_off.waiting_for,
            Some(WaitingFor::Retry {
                step: "charge".into(),
                failed_attempts: 2
            })
        );

        let listening = info(InstanceRow {
            wait_event: Some("approved".into()),
            ..row(Status::Listening)
        });
        assert_eq!(listening.due_at, due);
        assert_eq!(
            listening.waiting_for,
            Some(WaitingFor::Event {
                name: "approved".into()
            })
        );
        let forever = info(InstanceRow {
            run_at: Millis::MAX,
            wait_child: Some(InstanceId::from_string("c")),
            parent: Some(InstanceId::from_string("p")),
            ..row(Status::Listening)
        });
        assert_eq!(forever.due_at, None, "no timeout, no deadline");
        assert_eq!(
            forever.waiting_for,
            Some(WaitingFor::Child {
                id: InstanceId::from_string("c")
            })
        );
        assert_eq!(forever.parent.unwrap().as_str(), "p");

        // Leftovers of a wait mean nothing once it runs or ended.
        for status in [Status::InProgress, Status::Paused, Status::Completed] {
            let other = info(InstanceRow {
                wait_event: Some("approved".into()),
                retry: Some(("charge".into(), 2)),
                ..row(status)
            });
            assert_eq!((other.due_at, other.waiting_for), (None, None), "{status}");
        }
    }
}
