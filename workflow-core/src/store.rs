//! The storage contract. A backend implements [`Store`]; the engine does the rest.
//!
//! Every value that crosses this trait is plain data: JSON documents travel as
//! text (the engine parses them, so a corrupt row fails only its instance),
//! times are milliseconds since the Unix epoch. Every write made on behalf of
//! a running handler carries a [`Lease`], and the store applies it only while
//! that lease is still the instance's current one: a worker that lost its
//! lease can never overwrite what another worker did.

use std::collections::BTreeMap;

/// The attribute a [`Store`] (or [`Connector`](crate::Connector)) impl
/// needs, re-exported so a store of your own needs no `async-trait`
/// dependency: `#[workflow::store::async_trait] impl Store for MyStore`.
pub use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::InstanceId;
use crate::status::Status;
use crate::workflow::Definition;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A child whose parent is `parent` when the child's row is created: the
/// message of the `cancelled` event it is created with, or `None` to create
/// it `Pending`. A parent cancelled or timed out in another process keeps
/// running there until its next renewal, and a child it starts meanwhile
/// must not run: it ends as the cancel's cascade would have ended it, had
/// it existed then. Every store applies this in `create` and `create_many`.
pub fn cancelled_with_parent(parent: Status) -> Option<&'static str> {
    match parent {
        Status::Cancelled => Some("parent cancelled"),
        Status::TimedOut => Some("parent timed out"),
        _ => None,
    }
}

/// The system clock's time in [`Millis`]: what leases are measured by.
/// Workflow time (due times, deadlines, history) is the engine's
/// [`Clock`](crate::Clock), which a test may move by hand.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// `d` after `at`, saturating at the latest time a `DateTime<Utc>` holds:
/// a `Duration::MAX` timeout or lease means "never", not an overflow into
/// the past.
pub fn millis_after(at: Millis, d: std::time::Duration) -> Millis {
    let latest = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();
    let d = Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX);
    at.saturating_add(d).min(latest)
}

/// A time as RFC 3339 text, for history messages.
pub fn format_millis(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The message a panic carries (its `&str` or `String` payload), for a
/// store that catches one rather than lose its thread.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The last `last` of `rows` and how many there were: what
/// [`Store::steps_tail`] and [`Store::history_tail`] return, for a store
/// that reads every row.
pub fn tail<T>(mut rows: Vec<T>, last: usize) -> (Vec<T>, u64) {
    let total = rows.len();
    rows.drain(..total.saturating_sub(last));
    (rows, total as u64)
}

/// Counts per stored status name, as [`Store::count_by_status`] returns
/// them: a name no status has (a row damaged outside the engine) is left
/// out with a warning, rather than failing every count.
pub fn status_counts(rows: Vec<(String, i64)>) -> Vec<(Status, u64)> {
    rows.into_iter()
        .filter_map(|(name, count)| match name.parse::<Status>() {
            Ok(status) => Some((status, u64::try_from(count).unwrap_or(0))),
            Err(err) => {
                tracing::warn!(status = %name, count, error = %err, "instances with an unknown status left out of the counts");
                None
            }
        })
        .collect()
}

/// Definitions from their stored JSON, by name, as
/// [`Store::definitions`] returns them: one this build cannot read (written
/// by a newer one during a rolling deploy, or damaged) is left out with a
/// warning, rather than failing every caller (starting by name, the
/// console).
pub fn decode_definitions(rows: Vec<(String, String)>) -> Vec<Definition> {
    rows.into_iter()
        .filter_map(|(name, json)| match serde_json::from_str(&json) {
            Ok(definition) => Some(definition),
            Err(err) => {
                tracing::warn!(workflow = %name, error = %err, "a recorded definition cannot be read here; left out");
                None
            }
        })
        .collect()
}

/// An instance to insert.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Its id: a UUIDv7 minted at `created_at` ([`InstanceId::at`]), so ids
    /// sort by creation time; stores may use that to bound time ranges.
    pub id: InstanceId,
    /// The workflow's registered name.
    pub workflow: String,
    /// The input, as JSON text.
    pub input: String,
    /// Tags set at start.
    pub tags: BTreeMap<String, String>,
    /// Deduplication key, if any.
    pub key: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Not runnable before this time.
    pub run_at: Millis,
    /// Ends `TimedOut` past this time.
    pub deadline_at: Option<Millis>,
    /// The instance that started this one as a child (`ctx.start_child`).
    pub parent: Option<InstanceId>,
}

impl NewInstance {
    /// The row a create inserts for it: `Pending` and never run, or
    /// `Cancelled` (ended at its creation) when `parent_cancelled` (its
    /// parent ended cancelled or timed out before it was created).
    pub fn into_row(self, parent_cancelled: bool) -> InstanceRow {
        InstanceRow {
            id: self.id,
            workflow: self.workflow,
            status: if parent_cancelled {
                Status::Cancelled
            } else {
                Status::Pending
            },
            input: self.input,
            output: None,
            error: None,
            state: None,
            tags: self.tags,
            key: self.key,
            created_at: self.created_at,
            updated_at: self.created_at,
            started_at: None,
            finished_at: parent_cancelled.then_some(self.created_at),
            run_at: self.run_at,
            deadline_at: self.deadline_at,
            runs: 0,
            parent: self.parent,
            wait_event: None,
            wait_child: None,
            retry: None,
            pause_requested: false,
        }
    }
}

/// What [`Store::create`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new instance was inserted.
    New(InstanceRow),
    /// An instance with the same workflow and key in one of the given statuses existed.
    Existing(InstanceRow),
}

impl Created {
    /// The row, new or existing.
    pub fn into_row(self) -> InstanceRow {
        match self {
            Created::New(row) | Created::Existing(row) => row,
        }
    }
}

/// One instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Its id.
    pub id: InstanceId,
    /// The workflow's registered name.
    pub workflow: String,
    /// Current status.
    pub status: Status,
    /// Input JSON.
    pub input: String,
    /// Output JSON, once `Completed`.
    pub output: Option<String>,
    /// Error text, once `Failed` or `TimedOut` (why an instance was
    /// cancelled is the message of its `cancelled` history event).
    pub error: Option<String>,
    /// Latest persisted state JSON (`None` until the first step that changed it).
    pub state: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Deduplication key.
    pub key: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change of its state, deadline or lease, or of its status by a
    /// worker or a control call (a step that leaves the state alone does
    /// not bump it, nor does an event or a child's end waking it).
    pub updated_at: Millis,
    /// First time a worker picked it up.
    pub started_at: Option<Millis>,
    /// When it reached a terminal status.
    pub finished_at: Option<Millis>,
    /// Not runnable before this time.
    pub run_at: Millis,
    /// Ends `TimedOut` past this time.
    pub deadline_at: Option<Millis>,
    /// How many times a worker has claimed it (1 on a first run, more after
    /// crashes, and after every wake-up from a sleep or a wait).
    pub runs: i64,
    /// The parent instance, for children.
    pub parent: Option<InstanceId>,
    /// While suspended: the event name it waits for.
    pub wait_event: Option<String>,
    /// While suspended: the child it waits for.
    pub wait_child: Option<InstanceId>,
    /// A step waiting out a long retry backoff: its key and failed attempts so far.
    pub retry: Option<(String, u32)>,
    /// A pause was asked for while it ran; it pauses at its next step.
    pub pause_requested: bool,
}

/// The right to write on behalf of one run of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The instance.
    pub instance: InstanceId,
    /// The worker holding it.
    pub owner: String,
    /// The claim number ([`InstanceRow::runs`] at claim time); a fencing token.
    pub run: i64,
}

/// Parameters of [`Store::claim`].
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The claiming worker.
    pub owner: String,
    /// Only instances of these workflows (the ones this worker can run).
    pub workflows: Vec<String>,
    /// Now by the system clock: judges whether a running instance's lease
    /// lapsed (and when such an instance is due again: its `run_at` is its
    /// lease's end).
    pub now: Millis,
    /// Now by the engine's clock ([`Clock`](crate::Clock)): what a waiting
    /// instance (`Pending`, `Listening`) must be due by, and the time the
    /// claim records (`started_at`, `updated_at`, the `started` event). The
    /// same as `now` unless a test moves the engine's clock by hand.
    pub due_by: Millis,
    /// The lease lasts until then (by the system clock) unless renewed.
    pub lease_until: Millis,
    /// At most this many instances.
    pub limit: usize,
}

/// An instance handed to a worker, with its completed steps for replay.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The instance, as it was claimed (status `InProgress`).
    pub row: InstanceRow,
    /// The lease to write with.
    pub lease: Lease,
    /// Its recorded steps, in the order they were recorded.
    pub steps: Vec<StepRow>,
    /// How many runs in a row before this one ended without recording how:
    /// the process running it died, or its lease lapsed. Counted when such
    /// a run's instance is claimed again or its dead owner's lease freed
    /// ([`Store::release_owner`]); back to 0 when a run gets somewhere:
    /// records a step ([`Store::commit_step`]) or a failed attempt
    /// ([`Store::record_attempt`]), takes an event ([`Store::take_event`]
    /// finding one: a look that finds none is no progress, and a step
    /// that kills its process beside a wait would otherwise never count
    /// up), or suspends; and when the instance is resumed.
    pub interrupted_runs: u32,
}

/// A recorded step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// Step key: `name`, or `name#n` for the n-th repeat in one run.
    pub key: String,
    /// Result JSON when the step succeeded.
    pub output: Option<String>,
    /// Error text when it failed for good.
    pub error: Option<String>,
    /// State JSON after the step, when the step changed it.
    pub state: Option<String>,
    /// Attempts it took.
    pub attempts: u32,
    /// When its first attempt started.
    pub started_at: Millis,
    /// When it was recorded.
    pub finished_at: Millis,
}

/// How a run ended, for [`Store::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// A terminal status.
    pub status: Status,
    /// Output JSON for `Completed`.
    pub output: Option<String>,
    /// Error text otherwise.
    pub error: Option<String>,
    /// Final state JSON, when it changed since the last step.
    pub state: Option<String>,
    /// When.
    pub at: Millis,
}

/// One entry of an instance's history.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Increasing per store; orders the history.
    pub seq: i64,
    /// The instance.
    pub instance: InstanceId,
    /// When.
    pub at: Millis,
    /// What happened: `created`, `started`, `step_completed`, `step_failed`,
    /// `attempt_failed`, `state_changed`, `deadline_changed`, `suspended`,
    /// `paused`, `resumed`, `event_sent`, `event_received`, `released`, or a
    /// terminal status name (`completed`, `failed`, `cancelled`, `timed_out`):
    /// the names of [`HistoryKind`](crate::HistoryKind).
    pub kind: String,
    /// The step key, for step events.
    pub step: Option<String>,
    /// The attempt number, for step events.
    pub attempt: Option<u32>,
    /// Error text or other detail.
    pub message: Option<String>,
    /// For step events: from the step's first attempt to its record.
    pub duration_ms: Option<i64>,
}

/// How a running instance gives its worker back while it waits, for
/// [`Store::suspend`].
#[derive(Debug, Clone, PartialEq)]
pub struct Suspend {
    /// `Pending` (sleeping, or backing off before a retry), `Listening`
    /// (waiting for an event or a child), or `Paused` (paused by the engine,
    /// `reason` in its `paused` history event).
    pub status: Status,
    /// When a worker should run it again even if nothing wakes it (a sleep's
    /// end, a wait's timeout, its deadline); `Millis::MAX` for never.
    pub run_at: Millis,
    /// The event it waits for.
    pub wait_event: Option<String>,
    /// The child it waits for.
    pub wait_child: Option<InstanceId>,
    /// The step backing off: its key and failed attempts so far.
    pub retry: Option<(String, u32)>,
    /// State JSON, if changed since the last step.
    pub state: Option<String>,
    /// For the history: what it waits for, in words.
    pub reason: String,
    /// Now.
    pub at: Millis,
}

/// A lease after [`Store::renew`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The lease.
    pub lease: Lease,
    /// Still current; when false the worker must stop the handler.
    pub held: bool,
    /// When the lease ends now, by the clock of the `until` given to
    /// [`Store::renew`]: that `until` when the store extended it, earlier
    /// when it kept the end it had (a store may extend a lease only once
    /// part of it went, to save writes: PostgreSQL does, after a sixth).
    /// Meaningful
    /// while `held`.
    pub until: Millis,
    /// The instance's deadline now, which another process may have moved.
    pub deadline_at: Option<Millis>,
    /// A pause was asked for.
    pub pause_requested: bool,
}

/// What a control operation ([`Store::cancel`], [`Store::set_deadline`],
/// [`Store::send_event`], ...) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Done.
    Applied,
    /// Nothing changed: the instance had already ended with this status.
    Terminal(Status),
    /// No such instance.
    NotFound,
    /// Nothing changed: an event with the same key was sent to this
    /// instance before ([`Store::send_event`] with a key).
    Duplicate,
}

/// Where a cron schedule stands, shared by every engine on the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleMark {
    /// Ticks up to this time have been looked at.
    pub checked_until: Millis,
    /// The newest tick that started an instance.
    pub last_tick: Option<Millis>,
    /// The instance it started.
    pub last_instance: Option<InstanceId>,
}

/// A row of [`Store::list`]: the instance, or why its row could not be read
/// ([`StoreError::Corrupt`], naming the instance).
pub type Listed = Result<InstanceRow, StoreError>;

/// Filters of [`Store::list`]. Results are newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only these statuses (any when empty).
    pub statuses: Vec<Status>,
    /// Only instances carrying every one of these tags.
    pub tags: BTreeMap<String, String>,
    /// Only this dedup key.
    pub key: Option<String>,
    /// Only instances created at or after this time.
    pub created_from: Option<Millis>,
    /// Only instances created before this time.
    pub created_to: Option<Millis>,
    /// Only ids strictly less than this one (the paging cursor).
    pub before: Option<InstanceId>,
    /// At most this many rows.
    pub limit: usize,
    /// Rows for a listing that shows none of their JSON documents: a store
    /// may leave `input` as `"null"` and `output` and `state` as `None`
    /// instead of reading them (a page of instances with large payloads
    /// costs the payloads otherwise). A store may also ignore it.
    pub summaries: bool,
}

/// A storage backend. Implemented by `MemoryStore`, `SqliteStore` and
/// `PgStore`; checked by the conformance suite in `workflow_core::testing` (feature `testing`).
///
/// Its methods are `async` through [`async_trait`](macro@async_trait): implement it under
/// `#[workflow::store::async_trait]` (re-exported here).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts an instance and its `created` event. With `dedup` set and a
    /// key on `new`, atomically returns the existing instance of the same
    /// workflow and key whose status is in `dedup` instead, if there is one.
    /// A child whose parent already ended `Cancelled` or `TimedOut` (its
    /// handler had not heard yet) is inserted `Cancelled`, with a
    /// `cancelled` event, and never runs: as [`Store::cancel`] would have
    /// left it.
    async fn create(
        &self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError>;

    /// Inserts many instances (no dedup) with their `created` events, all
    /// or none: a caller that retries after an error must not find part
    /// of the batch there. Override it (one transaction): the default
    /// calls [`Store::create`] for each, which keeps the ones before a
    /// failure, and fails the [`testing`](crate::testing) suite.
    async fn create_many(&self, new: Vec<NewInstance>) -> Result<Vec<InstanceRow>, StoreError> {
        let mut rows = Vec::with_capacity(new.len());
        for instance in new {
            rows.push(self.create(instance, None).await?.into_row());
        }
        Ok(rows)
    }

    /// Reads one instance.
    async fn get(&self, id: &InstanceId) -> Result<Option<InstanceRow>, StoreError>;

    /// Claims up to `limit` runnable instances of one of `workflows`: a
    /// `Pending` or `Listening` one due by `due_by` (`run_at <= due_by`),
    /// or an `InProgress` one whose lease lapsed by `now` (`run_at <= now`
    /// and its lease's end before `now`). A running instance with a live
    /// lease is never taken, whatever `due_by` says. The earliest `run_at`
    /// first, across all `workflows`; between workflows, of two due at
    /// once the older (smaller id) first (within one workflow, such a tie
    /// may go the way the store's index reads). Each gets status `InProgress`, a lease for `owner`
    /// until `lease_until` (also its new `run_at`: when it is claimable again
    /// if the lease is not renewed), `runs + 1`, its wait cleared, and a
    /// `started` event. [`Store::renew`] moves `run_at` with the lease, and
    /// [`Store::release`] makes it due at once. An instance claimed while
    /// still `InProgress` (its last run's lease lapsed) counts one more
    /// interrupted run ([`Claimed::interrupted_runs`]).
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError>;

    /// The earliest `run_at` at or after `after` of a waiting (`Pending` or
    /// `Listening`) instance of `workflows`, so an idle worker can nap
    /// exactly until then. Workers pass the `due_by` of their last claim:
    /// anything due before then was claimable at that claim (and one due
    /// just then may have been made due by that claim: a parent woken for
    /// its child's corrupt row). A lower bound is
    /// fine (a store may ignore `workflows`); the default says "unknown",
    /// and workers fall back to polling.
    async fn next_due(
        &self,
        workflows: &[String],
        after: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let _ = (workflows, after);
        Ok(None)
    }

    /// A signal that changes when another process may have made work due
    /// (PostgreSQL's LISTEN/NOTIFY). Idle workers wait on it next to their
    /// own timers and wake-ups; it is only a hint, claims stay the truth.
    /// The default is none: workers rely on `next_due` and polling.
    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The instances other processes cancel, as they do (PostgreSQL's
    /// LISTEN/NOTIFY), so that a worker stops their handlers at once
    /// rather than at its next heartbeat, up to a second later. Only a
    /// hint: one missed (a dropped connection, a full channel) is still
    /// found by the heartbeat. The default is none.
    fn cancellations(&self) -> Option<tokio::sync::broadcast::Receiver<InstanceId>> {
        None
    }

    /// Records a finished step, the state after it (when changed) and its
    /// events (`step_completed` or `step_failed` with its duration, and
    /// `state_changed` when it carries state), in one transaction, if `lease`
    /// is current. Recording a key twice keeps the first record.
    async fn commit_step(&self, lease: &Lease, step: StepRow) -> Result<(), StoreError>;

    /// Whether [`Store::commit_step`] calls are recorded in the order
    /// their futures are first polled: true for a store that queues every
    /// write to one writer in its first poll (SQLite's, the memory store).
    /// Steps side by side that carry state snapshots then commit together;
    /// otherwise (the default) each waits for the one before it, so that
    /// the newest snapshot is the one recorded last. A wrapper passes the
    /// inner store's answer on only if its `commit_step` reaches the inner
    /// one's without awaiting anything first.
    fn commits_in_call_order(&self) -> bool {
        false
    }

    /// Records a failed attempt of a step as an `attempt_failed` event.
    async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Result<(), StoreError>;

    /// Ends the run with a terminal status and its event, if `lease` is
    /// current; wakes the parent if it waits for this instance.
    ///
    /// A `TimedOut` finish applies only while the instance's deadline is at
    /// or before `finish.at`: if a `set_deadline` moved it later first, the
    /// finish changes nothing and returns [`StoreError::DeadlineMoved`]
    /// (the lease stays held).
    ///
    /// A `TimedOut` finish is the clock cancelling the instance: in the same
    /// transaction, its unfinished children, grandchildren... end
    /// `Cancelled` exactly as [`Store::cancel`] leaves them (a `cancelled`
    /// event with the message `parent timed out`, leases void, parents
    /// waiting for them woken). `Completed` and `Failed` leave descendants
    /// alone: a child started with `ctx.start_child` may outlive its parent.
    async fn finish(&self, lease: &Lease, finish: Finish) -> Result<(), StoreError>;

    /// Gives the instance back (status `Pending`, no lease) so another worker
    /// can run it, if `lease` is current. Used on shutdown.
    async fn release(&self, lease: &Lease, at: Millis) -> Result<(), StoreError>;

    /// Extends the still-current `leases` to `until`, reporting, for the
    /// leases it reached, in order, whether each is still held, when it
    /// ends ([`Renewal::until`]: a store may keep an end that is still
    /// most of the lease away) and the instance's deadline
    /// now. A store may leave a lease it could not
    /// reach in time out of the answer (PostgreSQL: a row another transaction holds locked for over
    /// a second); that lease keeps its end, so callers match answers by
    /// lease, not by position.
    async fn renew(&self, leases: &[Lease], until: Millis) -> Result<Vec<Renewal>, StoreError>;

    /// Ends an unfinished instance `Cancelled` (any worker's lease on it is
    /// void from then on) with a `cancelled` event, and its unfinished
    /// children, grandchildren... with it (their events say `parent
    /// cancelled`). A parent waiting for it wakes. A terminal instance is
    /// left alone. A `TimedOut` [`Store::finish`] cascades the same way.
    async fn cancel(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError>;

    /// Moves the deadline of an unfinished instance, with a
    /// `deadline_changed` event. A terminal instance is left alone.
    async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Result<Control, StoreError>;

    /// The distinct owners holding leases on unfinished instances.
    async fn lease_owners(&self) -> Result<Vec<String>, StoreError>;

    /// Deletes up to `limit` whole trees of ended instances, with
    /// everything stored about them: steps, history, inbox, event keys,
    /// tags. A tree is a root (an instance without a parent row, so
    /// children only go with their tree) that was created before
    /// `ended_before`, of `workflow` if given, with all its descendants;
    /// it goes only if every one of them ended (a terminal status) before
    /// `ended_before`, and a tree that does not is passed over without
    /// counting toward `limit`. Returns how many instances it deleted.
    /// Which trees a call that reaches `limit` takes first is the store's
    /// choice (the order its indexes give): call again until it returns 0.
    async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Frees every lease `owner` holds (a worker known to be dead), so other
    /// workers can take its instances at once, each counting one more
    /// interrupted run. Returns how many were freed.
    async fn release_owner(&self, owner: &str, at: Millis) -> Result<u64, StoreError>;

    /// The recorded steps of an instance, in the order they were recorded.
    async fn steps(&self, id: &InstanceId) -> Result<Vec<StepRow>, StoreError>;

    /// The history of an instance, oldest first.
    async fn history(&self, id: &InstanceId) -> Result<Vec<EventRow>, StoreError>;

    /// The last `last` recorded steps of an instance, in the order they
    /// were recorded, and how many it has in all, read together. The
    /// console's page of a running instance polls this: a store should
    /// read only those rows (the default reads them all, then cuts).
    async fn steps_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<StepRow>, u64), StoreError> {
        Ok(tail(self.steps(id).await?, last))
    }

    /// The last `last` events of an instance's history, oldest first, and
    /// how many it has in all; see [`steps_tail`](Self::steps_tail).
    async fn history_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<EventRow>, u64), StoreError> {
        Ok(tail(self.history(id).await?, last))
    }

    /// Instances matching `query`, newest first. A row that does not
    /// decode is [`StoreError::Corrupt`] naming its instance, in its place:
    /// one bad row must neither hide the others nor end the paging early.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Listed>, StoreError>;

    /// Gives the worker back while the instance waits: no lease, status and
    /// wake-up from `suspend`, if `lease` is current. Atomically with that,
    /// so no wake-up is lost: if the event it waits for is already in its
    /// inbox, or the child it waits for already ended, it becomes `Pending`
    /// and due now instead; if a pause was asked for, it becomes `Paused`.
    /// It is due by its stored deadline at the latest, which may have moved
    /// since the handler computed `suspend.run_at`. Its count of interrupted
    /// runs goes back to 0. Writes a `suspended` history event (`paused`
    /// when it pauses).
    async fn suspend(&self, lease: &Lease, suspend: Suspend) -> Result<(), StoreError>;

    /// Puts an event in an unfinished instance's inbox (kept until taken),
    /// with an `event_sent` history event, and wakes the instance if it is
    /// `Listening` for that name.
    ///
    /// With a `key`, at most once per instance and key: if an event with
    /// that key was sent to the instance before (taken or not, whatever its
    /// name), nothing changes and the answer is [`Control::Duplicate`],
    /// even once the instance has ended. The key is recorded with the event
    /// in the same transaction, and only when the event is (`Applied`), so
    /// a send refused because the instance had ended does not use it up.
    async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        at: Millis,
    ) -> Result<Control, StoreError>;

    /// Takes the oldest untaken event called `name` from the inbox, if
    /// there is one, and records it as step `step` (its payload as the
    /// output) with an `event_received` history event, in one transaction,
    /// if `lease` is current. A `step` recorded already answers with its
    /// record's output (`None` for a wait that timed out) and takes
    /// nothing: an event taken under it would be lost, the record staying
    /// the earlier one's. So a call repeated after its answer was lost
    /// answers the same.
    async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Result<Option<String>, StoreError>;

    /// Pauses an unfinished instance: a waiting one at once (`Paused`), a
    /// running one at its next step (it is asked to, see
    /// [`InstanceRow::pause_requested`]). Its deadline stops counting.
    /// Writes a `paused` history event when it pauses.
    async fn pause(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError>;

    /// Resumes a paused instance (due now, its deadline pushed back by the
    /// time it was paused, its count of interrupted runs back to 0), or
    /// withdraws a pause not yet taken. Writes a `resumed` history event
    /// when it resumes.
    async fn resume(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError>;

    /// Where the schedule of `workflow` stands, if any engine looked at it yet.
    async fn schedule_mark(&self, workflow: &str) -> Result<Option<ScheduleMark>, StoreError>;

    /// Moves the schedule's mark forward, never back: `checked_until` to at
    /// least the given time, and, with `fired`, the last tick and its
    /// instance if that tick is newer.
    async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, InstanceId)>,
    ) -> Result<(), StoreError>;

    /// Records workflow definitions (name, schemas, schedule...), replacing
    /// earlier ones of the same name, so tools without the code (the CLI,
    /// the console) can read them. Engines call it when built.
    async fn put_definitions(
        &self,
        definitions: &[Definition],
        at: Millis,
    ) -> Result<(), StoreError>;

    /// Every recorded definition, by name.
    async fn definitions(&self) -> Result<Vec<Definition>, StoreError>;

    /// How many instances are in each status (statuses with none are left
    /// out), for one workflow or all.
    async fn count_by_status(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<(Status, u64)>, StoreError>;
}
