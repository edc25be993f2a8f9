//! `Ctx`: what a running handler uses to make durable steps and keep state.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{causes, error_chain, BoxError, Error, Interrupt, Result, StoreError};
use crate::id::InstanceId;
use crate::status::Status;
use crate::step::{panic_message, StepOptions};
use crate::store::{Lease, StepRow, Store};

/// The handle a workflow handler gets: durable steps, persisted state, identity.
///
/// `S` is the workflow's state type (default `()`): it starts from
/// `S::default()`, is changed through [`Ctx::state_mut`], and is persisted
/// with the next step. Cloning a `Ctx` is cheap; clones share everything.
///
/// Its `Debug` form names the run (`Ctx { id: "..", workflow: "..",
/// run_number: 1, .. }`) and leaves the state out, whatever `S` is, so
/// `#[tracing::instrument]` on a workflow function needs no `skip(ctx)`;
/// give it `skip(input)` (or `fields(..)` of the parts you want), as the
/// input's `Debug` would otherwise be on every line the run logs.
pub struct Ctx<S = ()> {
    inner: Arc<CtxInner<S>>,
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Without the state: `S` need not be `Debug`, and a state can be large.
impl<S> fmt::Debug for Ctx<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = &self.inner.run;
        f.debug_struct("Ctx")
            .field("id", &run.id.as_str())
            .field("workflow", &run.workflow)
            .field("run_number", &run.lease.run)
            .finish_non_exhaustive()
    }
}

struct CtxInner<S> {
    run: Arc<RunShared>,
    /// Shared with an `Ended` settlement, which reads it once the handler
    /// has stopped.
    state: Arc<StateCell<S>>,
    /// One past the position (in recording order) of the latest recorded
    /// snapshot restored; 0 before any.
    restored: AtomicUsize,
}

/// The handler's state and whether it changed since its last snapshot.
struct StateCell<S> {
    value: Mutex<S>,
    /// The thread holding a guard of `value` from `state()`/`state_mut()`
    /// (0 when none): a second guard on the same thread would wait for the
    /// first forever.
    holder: AtomicU64,
    /// Set by `state_mut`, cleared when a step persists the state: steps that
    /// leave the state alone do not write a snapshot. Set and cleared only
    /// under `value`'s lock: set before it, a snapshot taken meanwhile on
    /// another thread could clear it without the change.
    dirty: AtomicBool,
    /// Held from a snapshot until its record is committed: snapshots of
    /// steps running side by side are recorded in the order they were
    /// taken, so the last one recorded (which replays restore, and which
    /// the instance's row keeps) is the newest.
    order: tokio::sync::Mutex<()>,
    workflow: &'static str,
    /// The engine's `max_payload_bytes`.
    max: usize,
}

impl<S: Serialize + DeserializeOwned> StateCell<S> {
    /// The state as JSON if `state_mut` was called since the last snapshot.
    fn take_dirty(&self) -> Result<Option<String>> {
        let state = lock(&self.value);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        // Recorded only if it reads back as itself: replays restore it.
        let (json, _): (String, S) = crate::error::json_round_trip(&*state, self.max, || {
            format!("state of workflow `{}`", self.workflow)
        })
        .inspect_err(|_| {
            // Still to be saved: a handler that goes on past the error
            // must not lose the state at its next step or its end.
            self.dirty.store(true, Ordering::Release);
        })?;
        Ok(Some(json))
    }

    /// The state as JSON if `state_mut` was called since the last snapshot,
    /// leaving that to the next step: for a suspension's copy in the
    /// instance row, which replays never read. Taken, it would leave a
    /// step running beside the suspension (whose closure made the change)
    /// recorded without it, and replays would lose the change.
    fn peek_dirty(&self) -> Result<Option<String>> {
        let state = lock(&self.value);
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(None);
        }
        let (json, _): (String, S) = crate::error::json_round_trip(&*state, self.max, || {
            format!("state of workflow `{}`", self.workflow)
        })?;
        Ok(Some(json))
    }

    /// As `take_dirty`, when the handler has ended: a state that cannot be
    /// saved is left out of the outcome, with a warning.
    fn take_at_end(&self) -> Option<String> {
        self.take_dirty().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "final state not persisted");
            None
        })
    }
}

/// The state to record with an outcome given by `ctx.complete` or
/// `ctx.fail`, read when the worker records it: the handler has stopped by
/// then, so a state guard held by the very statement that called
/// `complete` (`ctx.complete(Out { n: ctx.state().n })`) is gone instead
/// of deadlocking the call.
#[derive(Clone)]
pub(crate) struct FinalState(Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl FinalState {
    fn read(&self) -> Option<String> {
        (self.0)()
    }
}

impl fmt::Debug for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FinalState")
    }
}

/// A run's [`LeaseEnd`](crate::worker::LeaseEnd), read by its steps while
/// the worker raises it; each clock's end only grows.
#[derive(Debug, Default)]
pub(crate) struct LeaseEndCell {
    mono: std::sync::atomic::AtomicI64,
    wall: std::sync::atomic::AtomicI64,
}

impl LeaseEndCell {
    pub(crate) fn raise(&self, end: crate::worker::LeaseEnd) {
        self.mono.fetch_max(end.mono, Ordering::AcqRel);
        self.wall.fetch_max(end.wall, Ordering::AcqRel);
    }

    /// Whether the lease ended, by either clock (0, before the run starts:
    /// ended).
    pub(crate) fn passed(&self) -> bool {
        crate::worker::LeaseEnd {
            mono: self.mono.load(Ordering::Acquire),
            wall: self.wall.load(Ordering::Acquire),
        }
        .passed()
    }
}

/// What the engine and the handler share about one run of one instance.
pub(crate) struct RunShared {
    pub id: InstanceId,
    /// The instance that started this one as a child, if any.
    pub parent: Option<InstanceId>,
    pub workflow: &'static str,
    pub tags: BTreeMap<String, String>,
    pub store: Arc<dyn Store>,
    pub lease: Lease,
    /// When the lease ends, as the worker knows it (ended until the run
    /// starts; only grows, with each renewal).
    /// A step looks at it itself, rather than trusting the heartbeat to
    /// have stopped the run in time: a heartbeat starved of threads (a
    /// handler blocking them) would let a step start its side effect after
    /// another worker took the instance over.
    pub lease_end: LeaseEndCell,
    pub default_step: StepOptions,
    /// Fired to stop the handler at its next await point.
    pub stop: CancellationToken,
    /// The deadline; moved by `set_timeout` here or, via the heartbeat, elsewhere.
    pub deadline: tokio::sync::watch::Sender<Option<crate::store::Millis>>,
    /// Deadline moves made by this process while it ran.
    deadline_changes: LocalChanges,
    /// Why the handler was stopped, with what the worker needs to settle it.
    pub interrupt: Mutex<Option<(Interrupt, Settlement)>>,
    journal: Mutex<Journal>,
    /// A pause was asked for: stop before the next step.
    pause: AtomicBool,
    /// The worker is shutting down: hand the instance back before the
    /// next step rather than start it (see [`RunShared::drain`]).
    draining: AtomicBool,
    /// When the instance was created: handed back by a shutdown, it is
    /// due from then, ahead of what came due while it ran.
    created_at: crate::store::Millis,
    /// Pauses and resumes made by this process while it ran.
    pause_changes: LocalChanges,
    /// The step backing off when the instance was suspended, and its failed attempts.
    pub retry: Option<(String, u32)>,
    /// The last run ended without recording how (a crash, a lapsed lease):
    /// steps may have failed attempts that `retry` does not name.
    pub(crate) cut_short: bool,
    /// A value that did not read at its first reading is being noted
    /// (`{key}@unread`): a run stopped meanwhile must count as cut short.
    pub(crate) note_pending: AtomicBool,
    /// The message of the last [`Ctx::data`] (outside a step) that found
    /// no value: a handler that returns that error, or panics on it,
    /// pauses instead of failing.
    pub(crate) missing_data: Mutex<Option<String>>,
    /// The handler returned the error of `missing_data` itself.
    pub(crate) returned_missing_data: AtomicBool,
    /// When `retry` is set: every step's failed attempts, from the history
    /// (read once, when a step first needs it). Steps running side
    /// by side (`ctx.map`) may all have been backing off, and the
    /// suspension kept only the first one's count.
    failed_attempts: tokio::sync::OnceCell<HashMap<String, u32>>,
    /// Steps of this run with failed attempts that have not ended: a
    /// suspension for another reason (a sleep beside them) names one, so
    /// that the next run reads their counts instead of starting at zero.
    retrying: Mutex<HashMap<String, u32>>,
    /// A step of a task the handler spawned ended (recorded its output or
    /// its failure) while a suspension was pending: the handler may not
    /// have seen that outcome (its `JoinHandle` answers later), so the
    /// suspension runs it again at once. Changed under the `interrupt`
    /// lock.
    ended_beside: AtomicBool,
    /// The task the handler runs on, to tell its steps from those of tasks
    /// it spawned.
    handler_task: std::sync::OnceLock<tokio::task::Id>,
    /// The suspension each wait in the pending one asked for, by token
    /// (see [`Ctx::suspend`]): the pending one merges those still there.
    /// A wait dropped before the run stops (a `select!` that took another
    /// branch) takes its own out, and the last one out withdraws the
    /// suspension. Locked after `interrupt`.
    waits: Mutex<Vec<(u64, crate::store::Suspend)>>,
    /// Tokens for `waits`.
    next_wait: std::sync::atomic::AtomicU64,
    /// Waits longer than this suspend the instance instead of sleeping in memory.
    pub suspend_after: std::time::Duration,
    /// Steps running now (see [`step_running`](Self::step_running)): a
    /// suspension waits for them (see [`Ctx::suspend`]).
    steps_running: AtomicUsize,
    /// Notified when `steps_running` falls to 0.
    drained: tokio::sync::Notify,
    /// Names held by [`Ctx::hold_name`] now.
    held_names: Mutex<std::collections::HashSet<String>>,
    /// The engine, to start children and wake workers.
    pub engine: crate::engine::Engine,
}

impl RunShared {
    /// Notes whether the handler's error `err` is the one a [`Ctx::data`]
    /// without a value gave it (see `missing_data`).
    pub(crate) fn note_returned(&self, err: &(dyn std::error::Error + 'static)) {
        let Some(missing) = lock(&self.missing_data).clone() else {
            return;
        };
        // Wherever the handler's own error type wraps it: as a source
        // (`#[from]`, anyhow's context), or by its text alone (thiserror's
        // `transparent` hands on the source's source, not the error).
        let wrapped = causes::<Error>(err)
            .any(|e| matches!(e, Error::Config(message) if *message == missing))
            || error_chain(err).contains(&missing);
        if wrapped {
            self.returned_missing_data.store(true, Ordering::SeqCst);
        }
    }

    /// A pause for a fix (`reason`, logged): the code or the setup cannot
    /// go on, and a failure would be final. It keeps the state as stored
    /// and the step backing off, if any.
    pub(crate) fn pause_for_fix(&self, reason: String) -> crate::store::Suspend {
        tracing::error!(id = %self.id, workflow = self.workflow, "{reason}");
        let at = self.now();
        crate::store::Suspend {
            status: crate::Status::Paused,
            run_at: at,
            wait_event: None,
            wait_child: None,
            retry: self.retry.clone(),
            state: None,
            reason,
            at,
        }
    }

    /// Workflow time, by the engine's clock.
    pub(crate) fn now(&self) -> crate::store::Millis {
        self.engine.inner.now()
    }
}

/// A step, a wait being set up or a timer being recorded; see
/// [`RunShared::step_running`].
pub(crate) struct StepRunning<'a>(&'a RunShared);

/// One suspension for waits side by side: the earliest time, the strongest
/// status (a pause over a wait over a sleep), each thing to wake for. A
/// row holds one event and one child: a second event (or child) waited
/// for beside the first does not wake the instance, which sees it when it
/// runs again (at the earliest time, or for the first event or child).
/// For `join_all` of children that is enough: it needs every one.
fn merge_suspensions(into: &mut crate::store::Suspend, other: crate::store::Suspend) {
    let rank = |status: Status| match status {
        Status::Paused => 2,
        Status::Listening => 1,
        _ => 0,
    };
    if rank(other.status) > rank(into.status) {
        into.status = other.status;
    }
    into.run_at = into.run_at.min(other.run_at);
    if into.wait_event.is_none() {
        into.wait_event = other.wait_event;
    } else if other.wait_event.is_some() && other.wait_event != into.wait_event {
        tracing::warn!(
            first = into.wait_event.as_deref().unwrap_or_default(),
            second = other.wait_event.as_deref().unwrap_or_default(),
            "two events waited for side by side: only the first wakes the instance"
        );
    }
    if into.wait_child.is_none() {
        into.wait_child = other.wait_child;
    }
    if into.retry.is_none() {
        into.retry = other.retry;
    }
    into.reason = format!("{}; {}", into.reason, other.reason);
}

/// The one suspension the waits in `waits` make together, `None` if none
/// is left.
fn merged(waits: &[(u64, crate::store::Suspend)]) -> Option<crate::store::Suspend> {
    let mut waits = waits.iter().map(|(_, s)| s.clone());
    let first = waits.next()?;
    Some(waits.fold(first, |mut into, other| {
        merge_suspensions(&mut into, other);
        into
    }))
}

impl Drop for StepRunning<'_> {
    fn drop(&mut self) {
        if self.0.steps_running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// What the worker does with an interrupted run, besides stopping it.
#[derive(Debug, Clone, Default)]
pub(crate) enum Settlement {
    /// Nothing more than the interrupt says.
    #[default]
    Plain,
    /// `ctx.complete`'s output JSON, or `None` for `ctx.fail`, with the
    /// state if it changed since the last step, saved with the outcome as
    /// a returning handler's is.
    Ended {
        output: Option<String>,
        state: FinalState,
    },
    /// Give the worker back until the instance is due again.
    Suspend(crate::store::Suspend),
    /// The lease ended by this process's clock, unrenewed (the store slow
    /// or unreachable), which the store may not know: hand the instance
    /// back if it is still this run's, rather than leave it idle until
    /// the store's lease ends and count its next run as one cut short.
    Lapsed,
}

impl Settlement {
    /// The output and state of an `Ended` settlement; none for the others.
    /// Call it once the handler has stopped.
    pub(crate) fn ended(self) -> (Option<String>, Option<String>) {
        match self {
            Settlement::Ended { output, state } => (output, state.read()),
            _ => (None, None),
        }
    }
}

/// Counts the changes this process makes to a value the store holds too
/// (the pause request, the deadline), so that a store read taken before the
/// latest of them (a lease renewal in flight) does not undo it.
#[derive(Default)]
struct LocalChanges(Mutex<u64>);

impl LocalChanges {
    /// Makes a local change.
    fn make(&self, apply: impl FnOnce()) {
        let mut changes = lock(&self.0);
        *changes += 1;
        apply();
    }

    /// Which local change the value reflects now.
    fn seen(&self) -> u64 {
        *lock(&self.0)
    }

    /// Applies what the store said, read after local change `seen`,
    /// unless this process changed the value since.
    fn apply_stored(&self, seen: u64, apply: impl FnOnce()) {
        let changes = lock(&self.0);
        if *changes == seen {
            apply();
        }
    }
}

tokio::task_local! {
    /// The key of the step whose closure this task is running: `ctx` calls
    /// that take a name are refused there ([`Error::NestedStep`]).
    static IN_STEP: String;
}

struct Journal {
    /// Steps of earlier runs by key, with their position in recording order.
    recorded: HashMap<String, (usize, StepRow)>,
    /// The positions of those that recorded a state snapshot, in order,
    /// with their keys.
    snapshots: Vec<(usize, String)>,
    /// Uses of each step name so far in this run, for `name#n` keys.
    seen: HashMap<String, u32>,
    /// Whether any of `recorded` is a step that failed for good: a
    /// fan-out looks for the first only then.
    any_failed: bool,
    /// The latest position (in `recorded`) this run has reached: a record
    /// past it is ahead of the run, which is still replaying.
    reached: Option<usize>,
    /// The answers of `Ctx::patched` given in this run, by key: the first
    /// call of an id decides, later ones (a loop, another site) agree.
    patches: HashMap<String, bool>,
}

impl RunShared {
    pub(crate) fn new(
        engine: crate::engine::Engine,
        row: &crate::store::InstanceRow,
        workflow: &'static str,
        lease: Lease,
        default_step: StepOptions,
        steps: Vec<StepRow>,
        cut_short: bool,
    ) -> Self {
        let snapshots = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.is_some())
            .map(|(position, s)| (position, s.key.clone()))
            .collect();
        let recorded: HashMap<String, (usize, StepRow)> = steps
            .into_iter()
            .enumerate()
            .map(|(position, s)| (s.key.clone(), (position, s)))
            .collect();
        RunShared {
            id: row.id.clone(),
            parent: row.parent.clone(),
            workflow,
            tags: row.tags.clone(),
            store: Arc::clone(engine.store()),
            lease,
            lease_end: LeaseEndCell::default(),
            default_step,
            pause: AtomicBool::new(row.pause_requested),
            draining: AtomicBool::new(false),
            created_at: row.created_at,
            pause_changes: LocalChanges::default(),
            retry: row.retry.clone(),
            cut_short,
            note_pending: AtomicBool::new(false),
            missing_data: Mutex::new(None),
            returned_missing_data: AtomicBool::new(false),
            failed_attempts: tokio::sync::OnceCell::new(),
            retrying: Mutex::new(HashMap::new()),
            ended_beside: AtomicBool::new(false),
            handler_task: std::sync::OnceLock::new(),
            waits: Mutex::new(Vec::new()),
            next_wait: std::sync::atomic::AtomicU64::new(0),
            suspend_after: engine.inner.config.suspend_after,
            steps_running: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            held_names: Mutex::new(std::collections::HashSet::new()),
            engine,
            stop: CancellationToken::new(),
            deadline: tokio::sync::watch::Sender::new(row.deadline_at),
            deadline_changes: LocalChanges::default(),
            interrupt: Mutex::new(None),
            journal: Mutex::new(Journal {
                any_failed: recorded.values().any(|(_, step)| step.error.is_some()),
                recorded,
                snapshots,
                seen: HashMap::new(),
                reached: None,
                patches: HashMap::new(),
            }),
        }
    }

    /// The engine's `max_payload_bytes`.
    pub(crate) fn max_payload(&self) -> usize {
        self.engine.inner.config.max_payload
    }

    /// Waits, before a step attempt begins, while this engine writes a
    /// cancel that ends this run (see
    /// [`CancelsInFlight`](crate::engine::CancelsInFlight)), then
    /// [`check`](Self::check)s.
    pub(crate) async fn cancel_settled(&self) -> Result<()> {
        let cancels = &self.engine.inner.cancels_in_flight;
        if cancels.any() {
            let held = cancels.released(&self.id);
            // A cancel the store is slow to answer (retrying, waiting for
            // a lock) must not stall the run's steps for as long: past the
            // bound they go on, and a record the cancel refuses stops them.
            let _ = tokio::time::timeout(crate::engine::CANCEL_HOLD_MAX, async {
                tokio::select! {
                    () = held => {}
                    () = self.stop.cancelled() => {}
                }
            })
            .await;
        }
        self.check()
    }

    /// Stops the handler; see [`RunShared::record_interrupt`] for which
    /// reason counts.
    pub(crate) fn interrupt(&self, why: Interrupt, settlement: Settlement) {
        self.record_interrupt(why, settlement);
        self.stop.cancel();
    }

    /// A step of this run with failed attempts that has not ended, and its
    /// count, for a suspension to keep. Any one will do: the next run reads
    /// every step's count from the history when one is named.
    pub(crate) fn backing_off(&self) -> Option<(String, u32)> {
        lock(&self.retrying)
            .iter()
            .next()
            .map(|(key, failed)| (key.clone(), *failed))
    }

    /// When a suspension must run the instance again at the latest: at
    /// once after a step ended that the handler has not seen
    /// ([`ended_beside`](Self::ended_beside)).
    pub(crate) fn due_beside(&self, now: crate::store::Millis) -> crate::store::Millis {
        if self.ended_beside.load(Ordering::SeqCst) {
            now
        } else {
            crate::store::Millis::MAX
        }
    }

    /// Notes that a step ended; see [`ended_beside`](Self::ended_beside).
    fn step_ended(&self) {
        // The handler's own steps, nearly all, take no lock here.
        let spawned = tokio::task::try_id().is_some_and(|id| self.handler_task.get() != Some(&id));
        if spawned && matches!(&*lock(&self.interrupt), Some((Interrupt::Suspended, _))) {
            self.ended_beside.store(true, Ordering::SeqCst);
        }
    }

    /// Notes the task the handler runs on: called by the worker as the
    /// run starts.
    pub(crate) fn note_handler_task(&self) {
        if let Some(id) = tokio::task::try_id() {
            let _ = self.handler_task.set(id);
        }
    }

    /// Whether a suspension is pending that pauses the instance: the
    /// handler's new steps are refused, and it is never withdrawn.
    fn kept(slot: &Option<(Interrupt, Settlement)>) -> bool {
        matches!(slot, Some((Interrupt::Suspended, Settlement::Suspend(s))) if s.status == Status::Paused)
    }

    /// Whether a pause that is never withdrawn is pending (see
    /// [`kept`](Self::kept)), the run not stopped yet.
    fn pause_kept(&self) -> bool {
        let slot = lock(&self.interrupt);
        Self::kept(&slot) && !self.stop.is_cancelled()
    }

    /// Whether a suspension is pending: waits beside it add theirs rather
    /// than wait in memory, so that the run settles and an event for any
    /// of them can wake it.
    pub(crate) fn suspension_pending(&self) -> bool {
        let slot = lock(&self.interrupt);
        matches!(&*slot, Some((Interrupt::Suspended, _))) && !self.stop.is_cancelled()
    }

    /// Why the handler stopped, for the worker once it has: none for a
    /// suspension not settled yet, when the handler stopped (a deadline)
    /// or returned (a spawned task's wait was still in it) before the pass
    /// that settles it, unless it pauses the instance. Read under one lock.
    pub(crate) fn outcome_interrupt(&self) -> Option<(Interrupt, Settlement)> {
        let slot = lock(&self.interrupt);
        let unsettled = matches!(&*slot, Some((Interrupt::Suspended, _)))
            && !self.stop.is_cancelled()
            && !Self::kept(&slot);
        if unsettled {
            None
        } else {
            slot.clone()
        }
    }

    /// A suspension that has the instance run again `after` from `at`
    /// (capped at its deadline), keeping the count of a step backing off.
    pub(crate) fn resume_later(
        &self,
        at: crate::store::Millis,
        after: std::time::Duration,
        reason: String,
    ) -> crate::store::Suspend {
        let retry = self.backing_off().or_else(|| self.retry.clone());
        let mut run_at = crate::store::millis_after(at, after);
        if let Some(deadline) = *self.deadline.borrow() {
            run_at = run_at.min(deadline);
        }
        crate::store::Suspend {
            status: Status::Pending,
            run_at,
            wait_event: None,
            wait_child: None,
            retry,
            state: None,
            reason,
            at,
        }
    }

    /// Records why the handler stops: the first reason given wins, except
    /// that a suspension still waiting for the steps beside it (see
    /// [`Ctx::suspend`]) gives way to any other (a cancel, a lost lease,
    /// an end). Suspensions are added by [`add_suspension`](Self::add_suspension).
    fn record_interrupt(&self, why: Interrupt, settlement: Settlement) {
        let mut slot = lock(&self.interrupt);
        let pending =
            matches!(&*slot, Some((Interrupt::Suspended, _))) && !self.stop.is_cancelled();
        // A pause that waits for the steps beside it stands against an end
        // a branch gives meanwhile (an arm that fails or completes on the
        // error): the instance waits for the fix. A cancel, a lost lease
        // or a shutdown still takes its place.
        let ending = matches!(why, Interrupt::Completed | Interrupt::Failed(_));
        if slot.is_none() || pending && !(ending && Self::kept(&slot)) {
            *slot = Some((why, settlement));
        }
    }

    /// Waits until nothing counted by [`step_running`](Self::step_running)
    /// runs, or the handler is stopped. Whether it had to wait.
    async fn steps_finished(&self) -> bool {
        let mut waited = false;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.steps_running.load(Ordering::SeqCst) == 0 || self.stop.is_cancelled() {
                return waited;
            }
            waited = true;
            tokio::select! {
                _ = drained => {}
                _ = self.stop.cancelled() => return waited,
            }
        }
    }

    /// Adds a wait's suspension to the pending one, or makes it the
    /// pending one; its token for [`leave_suspension`](Self::leave_suspension).
    /// `None` if the run stops for another reason (a cancel, an end, a
    /// lost lease), which nothing is to be added to.
    fn add_suspension(&self, suspend: crate::store::Suspend) -> Option<u64> {
        let mut slot = lock(&self.interrupt);
        if self.stop.is_cancelled() {
            return None;
        }
        let mut waits = lock(&self.waits);
        match &*slot {
            None => {
                waits.clear();
                self.ended_beside.store(false, Ordering::SeqCst);
            }
            Some((Interrupt::Suspended, Settlement::Suspend(_))) => {}
            Some(_) => return None,
        }
        let token = self.next_wait.fetch_add(1, Ordering::SeqCst);
        waits.push((token, suspend));
        *slot = merged(&waits).map(|s| (Interrupt::Suspended, Settlement::Suspend(s)));
        Some(token)
    }

    /// The wait of `token` is gone before the run stopped (a `select!`
    /// took another branch, a `try_join!` failed): its suspension goes
    /// out of the pending one, and the last one out withdraws it, so the
    /// handler goes on, unless it pauses the instance.
    fn leave_suspension(&self, token: u64) {
        let mut slot = lock(&self.interrupt);
        if self.stop.is_cancelled()
            || Self::kept(&slot)
            || !matches!(&*slot, Some((Interrupt::Suspended, _)))
        {
            return;
        }
        let mut waits = lock(&self.waits);
        waits.retain(|(t, _)| *t != token);
        *slot = merged(&waits).map(|s| (Interrupt::Suspended, Settlement::Suspend(s)));
        if slot.is_none() {
            tracing::debug!("suspension withdrawn: the handler went on without its waits");
        }
    }

    /// Counts a step (from its start to its record, backoffs in memory
    /// included), a wait that may still add a suspension, or a timer
    /// being recorded, as running until the guard drops: a suspension
    /// waits for them.
    pub(crate) fn step_running(&self) -> StepRunning<'_> {
        self.steps_running.fetch_add(1, Ordering::SeqCst);
        StepRunning(self)
    }

    /// How many attempts of step `key` failed in earlier runs: none unless
    /// the row names a step with failed attempts (the last run suspended
    /// while a step backed off, or ended in a crash after a failed
    /// attempt) or the last run was interrupted, which is when a step may
    /// be retried in a new run. The row names one step only: after a crash
    /// while steps side by side backed off, it may name none of them (the
    /// last attempt recorded was another's, which then succeeded).
    pub(crate) async fn failed_attempts(&self, key: &str) -> u32 {
        let kept = match &self.retry {
            Some((retry_key, failed)) if retry_key == key => *failed,
            Some(_) => 0,
            None if self.cut_short => 0,
            None => return 0,
        };
        let all = self
            .failed_attempts
            .get_or_init(|| async {
                match self.store.history(&self.id).await {
                    Ok(events) => {
                        let mut failed: HashMap<String, u32> = HashMap::new();
                        for event in events.into_iter().filter(|e| e.kind == "attempt_failed") {
                            if let (Some(step), Some(attempt)) = (event.step, event.attempt) {
                                let n = failed.entry(step).or_default();
                                *n = (*n).max(attempt);
                            }
                        }
                        failed
                    }
                    Err(err) => {
                        // The suspension's own count is still known.
                        tracing::warn!(error = %err, "reading failed attempts from the history failed");
                        HashMap::new()
                    }
                }
            })
            .await;
        kept.max(all.get(key).copied().unwrap_or(0))
    }

    /// Moves the deadline: a `set_timeout` made in this process.
    pub(crate) fn move_deadline(&self, deadline: Option<crate::store::Millis>) {
        self.deadline_changes.make(|| {
            self.deadline.send_replace(deadline);
        });
    }

    /// Which local deadline move the deadline reflects now; pass it to
    /// [`deadline_as_stored`](Self::deadline_as_stored) with what the
    /// store said.
    pub(crate) fn deadline_seen(&self) -> u64 {
        self.deadline_changes.seen()
    }

    /// The store's deadline, read after local move `seen`: it wins (another
    /// process moved it) unless this process moved it since: a renewal must
    /// not put back the deadline a `set_timeout` here just replaced.
    pub(crate) fn deadline_as_stored(&self, deadline: Option<crate::store::Millis>, seen: u64) {
        self.deadline_changes.apply_stored(seen, || {
            self.deadline.send_if_modified(|current| {
                let moved = *current != deadline;
                *current = deadline;
                moved
            });
        });
    }

    /// Asks the handler to pause before its next step (or withdraws that):
    /// a pause or resume made in this process.
    pub(crate) fn request_pause(&self, pause: bool) {
        self.pause_changes
            .make(|| self.pause.store(pause, Ordering::Release));
    }

    /// Which local pause or resume the flag reflects now; pass it to
    /// [`pause_as_stored`](Self::pause_as_stored) with what the store said.
    pub(crate) fn pause_seen(&self) -> u64 {
        self.pause_changes.seen()
    }

    /// The store's pause request, read after local change `seen`: it wins
    /// (a resume from another process withdraws the pause) unless this
    /// process paused or resumed since.
    pub(crate) fn pause_as_stored(&self, pause: bool, seen: u64) {
        self.pause_changes
            .apply_stored(seen, || self.pause.store(pause, Ordering::Release));
    }

    pub(crate) fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// The worker is shutting down: the steps running finish and are
    /// recorded, and the handler starts no new one (nor an attempt after
    /// a failed one, once its backoff in memory ends, nor a timer); it
    /// suspends, due from its creation (see [`requeued_at`](Self::requeued_at)),
    /// for another worker. Work is durable at each step's end, so nothing
    /// is gained by running the rest of the handler in the grace period,
    /// and a step begun in it would be cut halfway when the grace ends:
    /// run again by the next worker, or, `at_most_once`, failed for good.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// When an instance handed back by a shutdown is due: since its
    /// creation, so that the next worker takes it before the work that
    /// came due while it ran (due now, it would wait behind a backlog).
    pub(crate) fn requeued_at(&self) -> crate::store::Millis {
        self.created_at.min(self.now())
    }

    /// Whether the handler may go on calling `ctx`. A pending suspension
    /// lets it: steps, children and waits beside the waits that suspend
    /// run until every branch waits (see [`Ctx::suspend`]).
    pub(crate) fn check(&self) -> Result<()> {
        if self.lease_end.passed() {
            // The heartbeat would stop it too, at its next look.
            self.interrupt(Interrupt::LeaseLost, Settlement::Lapsed);
        }
        let slot = lock(&self.interrupt);
        match slot.as_ref().map(|(why, _)| why.clone()) {
            Some(Interrupt::Suspended) if !self.stop.is_cancelled() && !Self::kept(&slot) => Ok(()),
            Some(why) => Err(Error::Interrupted(why)),
            // Stopped with no reason given: the handler returned, or its
            // deadline passed. A task it spawned with a clone of `ctx` may
            // still call it; its step must not run, as its record would be
            // refused (the lease is gone) after the side effect.
            None if self.stop.is_cancelled() => Err(Error::Interrupted(Interrupt::Ended)),
            None => Ok(()),
        }
    }

    /// The key of the next use of step `name` in this run, and its record
    /// from an earlier run if there is one. Refuses names that could be
    /// mistaken for a derived key: see [`RESERVED_STEP_CHARS`].
    pub(crate) fn next_key(&self, name: &str) -> Result<(String, Option<StepRow>)> {
        self.check_call(name)?;
        let mut guard = lock(&self.journal);
        let Journal {
            recorded,
            seen,
            reached,
            ..
        } = &mut *guard;
        let n = seen.entry(name.to_owned()).or_insert(0);
        let key = if *n == 0 {
            name.to_owned()
        } else {
            format!("{name}#{n}")
        };
        let recorded = match recorded.get(&key) {
            Some((position, step)) => {
                *reached = (*reached).max(Some(*position));
                Some(step.clone())
            }
            // A name recorded under an earlier build that took it replays.
            None => {
                crate::error::check_length("step name", name)?;
                None
            }
        };
        *n += 1;
        Ok((key, recorded))
    }

    /// Refuses a call named `name` that could be mistaken for a derived
    /// key ([`RESERVED_STEP_CHARS`]), or made inside a step.
    pub(crate) fn check_call(&self, name: &str) -> Result<()> {
        check_step_name(name).map_err(|reserved| Error::InvalidStepName {
            workflow: self.workflow.to_owned(),
            name: name.to_owned(),
            reserved,
        })?;
        if let Ok(outer) = IN_STEP.try_with(String::clone) {
            return Err(Error::NestedStep {
                workflow: self.workflow.to_owned(),
                outer,
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) fn recorded(&self, key: &str) -> Option<StepRow> {
        let mut journal = lock(&self.journal);
        let (position, step) = journal.recorded.get(key)?;
        let (position, step) = (*position, step.clone());
        journal.reached = journal.reached.max(Some(position));
        Some(step)
    }

    /// Counts the records among `keys` as reached: those a call replays
    /// as a whole (a fan-out's items, some of which it never starts again).
    pub(crate) fn reach(&self, keys: impl Iterator<Item = String>) {
        let mut journal = lock(&self.journal);
        let furthest = keys
            .filter_map(|key| journal.recorded.get(&key).map(|(position, _)| *position))
            .max();
        journal.reached = journal.reached.max(furthest);
    }

    /// The answer of gate `key` (see `Ctx::patched`) in this run: the one
    /// given earlier in it, or else whether the run has reached everything
    /// earlier runs recorded (it is past their history), kept for the run;
    /// and whether this call decided it, to record it.
    pub(crate) fn decide_patch(&self, key: &str) -> (bool, bool) {
        let mut journal = lock(&self.journal);
        if let Some(answer) = journal.patches.get(key) {
            return (*answer, false);
        }
        let recorded = journal.recorded.len();
        let replaying = journal
            .reached
            .map_or(recorded > 0, |reached| reached + 1 < recorded);
        journal.patches.insert(key.to_owned(), !replaying);
        (!replaying, true)
    }

    /// The lowest index `i >= from` of a recorded `{base}[i]`, if any.
    pub(crate) fn recorded_index_from(&self, base: &str, from: usize) -> Option<usize> {
        let journal = lock(&self.journal);
        journal
            .recorded
            .keys()
            .filter_map(|key| {
                // An item of `at_most_once` that only began counts too.
                let key = key.strip_suffix("@started").unwrap_or(key);
                key.strip_prefix(base)?
                    .strip_prefix('[')?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .filter(|index: &usize| *index >= from)
            .min()
    }

    /// Where an earlier run recorded step `key`, in recording order.
    fn recorded_at(&self, key: &str) -> Option<usize> {
        lock(&self.journal)
            .recorded
            .get(key)
            .map(|(position, _)| *position)
    }

    /// The latest place an earlier run recorded any of `keys`, under one
    /// look at the journal (and none of `keys` made on a first run).
    fn recorded_last_of(&self, keys: impl Iterator<Item = String>) -> Option<usize> {
        let journal = lock(&self.journal);
        if journal.recorded.is_empty() {
            return None;
        }
        keys.filter_map(|key| journal.recorded.get(&key).map(|(position, _)| *position))
            .max()
    }

    /// The first of `keys` (in their order) that an earlier run recorded
    /// as failed, by its place among them; none on a first run.
    pub(crate) fn first_recorded_failure(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> Option<usize> {
        let journal = lock(&self.journal);
        if !journal.any_failed {
            return None;
        }
        keys.enumerate()
            .find(|(_, key)| {
                journal
                    .recorded
                    .get(key)
                    .is_some_and(|(_, step)| step.error.is_some())
            })
            .map(|(index, _)| index)
    }

    /// Whether `key` is the last thing an earlier run recorded.
    pub(crate) fn recorded_last(&self, key: &str) -> bool {
        let journal = lock(&self.journal);
        journal
            .recorded
            .get(key)
            .is_some_and(|(position, _)| position + 1 == journal.recorded.len())
    }

    /// The last state snapshot recorded at or before `position`: its
    /// position, the key of its step and its JSON.
    fn snapshot_at_or_before(&self, position: usize) -> Option<(usize, String, String)> {
        let journal = lock(&self.journal);
        let after = journal.snapshots.partition_point(|(p, _)| *p <= position);
        let (at, key) = journal.snapshots[..after].last()?;
        let state = journal.recorded.get(key)?.1.state.clone()?;
        Some((*at, key.clone(), state))
    }
}

/// The characters the engine writes into the keys it derives from a step
/// name: `name#1` for the second use of a name in one run, `name@timeout`
/// and `name@result` for the parts of a wait, `name@started` for the start
/// of a [`StepOptions::at_most_once`] step, `name[0]` for the items of
/// [`Ctx::map`] and [`Ctx::batch`]. No step name may contain them, so that
/// a key derived from one name is never the plain key of another (a step
/// named `fetch#1` would otherwise share its record with the second
/// `fetch`). Every method that takes a step name refuses one with
/// [`Error::InvalidStepName`], and `#[workflow]` refuses a literal name
/// given to any of them at compile time.
pub const RESERVED_STEP_CHARS: [char; 4] = workflow_rules::step_name::RESERVED;

/// `Err(Some(c))` for a name containing the reserved `c` (the first one)
/// or a NUL (`'\0'`, which PostgreSQL's text cannot hold: the step's record
/// could never be written, and its run would be retried for ever),
/// `Err(None)` for an empty name.
pub(crate) fn check_step_name(name: &str) -> std::result::Result<(), Option<char>> {
    if name.is_empty() {
        return Err(None);
    }
    if name.contains('\0') {
        return Err(Some('\0'));
    }
    match workflow_rules::step_name::reserved_in(name) {
        Some(reserved) => Err(Some(reserved)),
        None => Ok(()),
    }
}

/// A number for the calling thread, never 0.
fn this_thread() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static ME: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ME.with(|me| *me)
}

/// The state's lock, and who holds it.
struct Held<'a, S> {
    guard: MutexGuard<'a, S>,
    holder: &'a AtomicU64,
}

impl<S> Drop for Held<'_, S> {
    fn drop(&mut self) {
        // Before the lock itself is released (fields drop after this).
        self.holder.store(0, Ordering::Release);
    }
}

/// The workflow's state, for reading: [`Ctx::state`]. Not `Send`, so it
/// cannot be held across an `.await`.
pub struct StateRef<'a, S>(Held<'a, S>);

/// The workflow's state, for changing: [`Ctx::state_mut`]. The change is
/// saved with the next step. Not `Send`, so it cannot be held across an
/// `.await`.
pub struct StateMut<'a, S>(Held<'a, S>);

impl<S> std::ops::Deref for StateRef<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0.guard
    }
}

impl<S> std::ops::Deref for StateMut<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0.guard
    }
}

impl<S> std::ops::DerefMut for StateMut<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0.guard
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for StateRef<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for StateMut<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Locks a mutex, ignoring poisoning: the data behind these locks stays
/// consistent even if a panic unwound through a holder.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn run(&self) -> &Arc<RunShared> {
        &self.inner.run
    }

    pub(crate) fn new(run: Arc<RunShared>, state: S) -> Self {
        let state = Arc::new(StateCell {
            value: Mutex::new(state),
            holder: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            order: tokio::sync::Mutex::new(()),
            workflow: run.workflow,
            max: run.engine.inner.config.max_payload,
        });
        Ctx {
            inner: Arc::new(CtxInner {
                run,
                state,
                restored: AtomicUsize::new(0),
            }),
        }
    }

    /// This instance's id.
    pub fn id(&self) -> &InstanceId {
        &self.inner.run.id
    }

    /// The engine running this instance, for work on other instances from
    /// inside a step: starting a workflow that is not a child (it outlives
    /// this one, and a cancel of this one does not reach it), once, keyed
    /// by the step's [`idempotency_key`](Self::idempotency_key); sending
    /// an event to another instance by its key.
    ///
    /// What it does is not recorded. Outside a step, a replay does it
    /// again and may see another answer: use
    /// [`run_child`](Self::run_child), [`send_event_to`](Self::send_event_to)
    /// and the like there. Inside a step, a retry does it again: key it
    /// (`get_or_create` or `send_event_once` with the step's idempotency
    /// key). Do not wait for another instance to end in a step
    /// (`result()`, `engine.wait`): the wait holds this instance's worker
    /// slot all along; [`run_child`](Self::run_child) waits without.
    ///
    /// ```no_run
    /// # use workflow_core::*;
    /// # struct SendWelcome;
    /// # impl Workflow for SendWelcome {
    /// #     type Input = String; type Output = (); type State = ();
    /// #     const NAME: &'static str = "sendWelcome";
    /// #     async fn run(&self, _: Ctx, _: String) -> Result<(), BoxError> { Ok(()) }
    /// # }
    /// async fn handler(ctx: Ctx, email: String) -> Result<(), BoxError> {
    ///     ctx.step("start-welcome", || async {
    ///         let key = ctx.idempotency_key().expect("inside a step");
    ///         let welcome = SendWelcome::get_or_create(ctx.engine(), key, email.clone())
    ///             .statuses(Status::ALL)
    ///             .await?;
    ///         Ok::<_, BoxError>(welcome.id().clone())
    ///     })
    ///     .await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn engine(&self) -> &crate::Engine {
        &self.inner.run.engine
    }

    /// The workflow's registered name.
    pub fn name(&self) -> &'static str {
        self.inner.run.workflow
    }

    /// The tags the instance was started with.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.inner.run.tags
    }

    /// The cron tick this instance was started for, if a schedule started
    /// it: the day a daily report is for, the same in every run and
    /// replay, and however late the tick fired (a catch-up after
    /// downtime). Read from its [`SCHEDULE_TAG`](crate::SCHEDULE_TAG), so
    /// a start given that tag runs for that tick too: a console re-run of
    /// a tick's instance (which copies its tags), or a backfill of a past
    /// day (`.tag(SCHEDULE_TAG, "2026-12-01T09:00:00.000Z")`).
    pub fn scheduled_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let tick = self.inner.run.tags.get(crate::SCHEDULE_TAG)?;
        chrono::DateTime::parse_from_rfc3339(tick)
            .ok()
            .map(|tick| tick.with_timezone(&chrono::Utc))
    }

    /// The value of type `T` the engine was given with
    /// [`EngineBuilder::data`](crate::EngineBuilder::data): a database pool,
    /// an HTTP client, settings. Without one, an [`Error::Config`] that
    /// names the type. A handler that returns it (with `?`, bare or
    /// wrapped in its own error type) or panics on it
    /// (`.expect(..)`) **pauses** the instance, with that message in its
    /// history, rather than failing it:
    /// a deploy that forgot a `.data(..)` must not end every instance that
    /// reaches this line for good. Deploy the fix and resume them
    /// (`workflow list --status paused`). Read it in the handler's body, not
    /// inside a step's closure, whose failure is recorded as the step's.
    ///
    /// ```no_run
    /// # use workflow_core::{BoxError, Ctx};
    /// # struct Db;
    /// # impl Db { async fn load(&self, id: u64) -> Result<String, BoxError> { Ok(id.to_string()) } }
    /// async fn handler(ctx: Ctx, id: u64) -> Result<String, BoxError> {
    ///     let db: &Db = ctx.data()?;
    ///     let order = ctx.step("load", || db.load(id)).await?;
    ///     Ok(order)
    /// }
    /// ```
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<&T> {
        let run = &self.inner.run;
        run.engine.inner.data.require().inspect_err(|err| {
            // Not inside a step: its failure is recorded, and the replay
            // after a resume would fail the instance with it all the same.
            if let (Error::Config(message), Err(_)) = (err, IN_STEP.try_with(|_| ())) {
                *lock(&run.missing_data) = Some(message.clone());
            }
        })
    }

    /// Stops the run and pauses the instance, `reason` in its history (and
    /// logged): a setup the code needs is missing (settings a worker was
    /// deployed without, a workflow no engine runs), and a failure would
    /// be final where a fix and a resume let it go on. Returned from a
    /// step's closure, nothing is recorded for the step. For the crate's
    /// own extensions (the AI loop's model settings).
    ///
    /// Steps already running beside it (`join!`, `ctx.map`) finish and
    /// are recorded first (stopped halfway, their side effects would
    /// happen again after the resume); no new one starts.
    #[doc(hidden)]
    pub fn pause_for_setup(&self, reason: String) -> Error {
        let run = &self.inner.run;
        let why = Interrupt::Suspended;
        let mut pause = run.pause_for_fix(reason);
        pause.retry = run.backing_off().or(pause.retry);
        // A pause is kept: from here `check` refuses new steps and waits.
        if run.add_suspension(pause).is_none() {
            // Stopping for another reason already.
            run.stop.cancel();
            return Error::Interrupted(why);
        }
        // Called from inside a step, which counts as running until its
        // closure returns this error: the run is stopped from a task of
        // its own once every step has, as `Ctx::suspend` settles.
        let run = Arc::clone(run);
        tokio::spawn(async move {
            loop {
                run.steps_finished().await;
                // A step beside it backing off counts on after the resume.
                let retry = run.backing_off();
                let mut slot = lock(&run.interrupt);
                // Under the lock a step takes to start (`check`).
                if run.steps_running.load(Ordering::SeqCst) != 0 && !run.stop.is_cancelled() {
                    continue;
                }
                if let Some((Interrupt::Suspended, Settlement::Suspend(pause))) = &mut *slot {
                    pause.retry = retry.or(pause.retry.take());
                }
                run.stop.cancel();
                return;
            }
        });
        Error::Interrupted(why)
    }

    /// Holds `name` until the guard is dropped, or says that something
    /// else in this run holds it now. For libraries whose calls make many
    /// steps from one name (a model loop's turns): two such calls at once
    /// (`join!`) would have their steps numbered in whichever order they
    /// finish, and a replay could hand one of them the other's records.
    #[doc(hidden)]
    pub fn hold_name(&self, name: &str) -> Option<HeldName> {
        let run = Arc::clone(&self.inner.run);
        if !lock(&run.held_names).insert(name.to_owned()) {
            return None;
        }
        Some(HeldName {
            run,
            name: name.to_owned(),
        })
    }

    /// Inside a step's closure, a key naming this step of this instance,
    /// the same at every attempt and in every run: `"{instance id}/{step
    /// key}"` (`ord-1/charge`, `ord-1/charge#2`, `ord-1/items[3]`).
    /// Outside one, `None`.
    ///
    /// A step runs at least once: a crash after its side effect and
    /// before its result is recorded runs it again. Give this key to
    /// services that deduplicate requests (a payment provider's
    /// `Idempotency-Key` header, a unique column) and the repeat changes
    /// nothing.
    ///
    /// ```no_run
    /// # use workflow_core::{BoxError, Ctx};
    /// # async fn charge(cents: u64, idempotency_key: &str) -> Result<String, BoxError> { Ok(String::new()) }
    /// async fn handler(ctx: Ctx, cents: u64) -> Result<String, BoxError> {
    ///     let receipt: String = ctx
    ///         .step("charge", || async {
    ///             let key = ctx.idempotency_key().expect("inside a step");
    ///             charge(cents, &key).await
    ///         })
    ///         .await?;
    ///     Ok(receipt)
    /// }
    /// ```
    pub fn idempotency_key(&self) -> Option<String> {
        IN_STEP
            .try_with(|key| format!("{}/{key}", self.inner.run.id))
            .ok()
    }

    /// How many times a worker has picked this instance up: 1 on a first run,
    /// one more after each suspension (a long sleep, an event or child wait,
    /// a long retry backoff, a pause) and after each crash or restart; recorded
    /// steps are replayed.
    pub fn run_number(&self) -> i64 {
        self.inner.run.lease.run
    }

    /// Fires when the handler must stop: cancelled, timed out, suspended to
    /// wait, paused, lease lost, engine shutting down, and once the run
    /// ends. Long-running code inside a step can select on it, and so
    /// should a task the handler spawns with a clone of `ctx`: once the
    /// run is over, the steps and waits such a task asks for are refused
    /// before they run ([`Interrupt::Ended`](crate::Interrupt::Ended)). Each call returns a child of the
    /// run's own token: cancelling it (a drop guard, a helper that cancels
    /// its group on error) stops nothing but what listens to it.
    pub fn signal(&self) -> CancellationToken {
        self.inner.run.stop.child_token()
    }

    /// The persisted state, for reading. The guard cannot be held across
    /// an `.await` (it is not `Send`).
    ///
    /// # Panics
    ///
    /// When a guard from `state()` or `state_mut()` is still alive on this
    /// thread: a temporary guard lives to the end of its statement, so
    /// `ctx.state_mut().n = ctx.state().n + 1` takes the state twice, and
    /// would otherwise hang. Read into a local first, or change it through
    /// one guard (`ctx.state_mut().n += 1`). `ctx.complete(..)` and
    /// `ctx.fail(..)` may be given values read from a guard in the same
    /// statement. A panic in a handler fails its run as a panic does.
    pub fn state(&self) -> StateRef<'_, S> {
        StateRef(self.lock_state())
    }

    /// The persisted state, for changing; the change is saved with the next
    /// step. Panics as [`Ctx::state`] does when this thread holds a guard
    /// already.
    pub fn state_mut(&self) -> StateMut<'_, S> {
        let held = self.lock_state();
        self.inner.state.dirty.store(true, Ordering::Release);
        StateMut(held)
    }

    fn lock_state(&self) -> Held<'_, S> {
        let cell = &self.inner.state;
        let me = this_thread();
        if cell.holder.load(Ordering::Acquire) == me {
            panic!(
                "ctx.state() or ctx.state_mut() was called while this thread still holds \
                 the state (a guard lives to the end of its statement, as in \
                 `ctx.state_mut().n = ctx.state().n + 1`): read into a local first"
            );
        }
        let guard = lock(&cell.value);
        cell.holder.store(me, Ordering::Release);
        Held {
            guard,
            holder: &cell.holder,
        }
    }

    /// The retry policy [`Ctx::step`] uses here: the engine's
    /// [`step_options`](crate::EngineBuilder::step_options) with the
    /// workflow's own `retries`, `backoff` and `jitter` over them. A step
    /// with options of its own starts from these, so that what the engine
    /// and the workflow set (a test's fast backoff) still holds:
    /// `ctx.step_with("charge", ctx.step_options().with_attempts(3), ..)`.
    /// [`StepOptions::attempts`] starts from the library's defaults
    /// instead.
    pub fn step_options(&self) -> StepOptions {
        self.inner.run.default_step
    }

    /// Runs `f` as a durable step named `name`, with the workflow's default
    /// retry policy. See [`Ctx::step_with`].
    ///
    /// A step name must not be empty nor contain `#`, `@`, `[` or `]`
    /// ([`RESERVED_STEP_CHARS`]): the engine uses those in the keys it
    /// derives from names, and a name containing one could share its record
    /// with another step. Such a name gives [`Error::InvalidStepName`]
    /// without calling `f`. The same rule holds for the name given to every
    /// other `ctx` method that records something (`sleep`,
    /// `wait_for_event`, `run_child`, `map`, `call_tool`, ...).
    pub async fn step<T, E, F, Fut>(&self, name: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        self.step_with(name, self.inner.run.default_step, f).await
    }

    /// Runs `f` as a durable step.
    ///
    /// If this step already has a recorded result (the instance is being
    /// replayed after a restart), returns it without calling `f`. Otherwise
    /// calls `f` up to `opts.max_attempts` times until it returns `Ok`, then
    /// records the result, the state (if changed) and a history event in one
    /// transaction before returning. A panic inside `f` counts as a failed
    /// attempt. Uses of the same `name` after the first in one run get keys
    /// `name#1`, `name#2`, ... (the second use is `name#1`).
    /// `name` follows the rule of [`Ctx::step`]: not empty, none of
    /// [`RESERVED_STEP_CHARS`].
    ///
    /// # Concurrent branches
    ///
    /// The `#n` numbers follow the order in which the calls are made. In
    /// branches that run at once (`tokio::join!`, `join_all`), two calls of
    /// one name that come after waits of different length can be made in
    /// one order on the first run and in the other on a replay, where
    /// recorded steps return at once: each would then get the other's
    /// result. Give the steps of each branch names of their own
    /// (`format!("save-{id}")`), or run the items through [`Ctx::map`],
    /// [`Ctx::for_each`] or [`Ctx::batch`], which key each by its index.
    /// The same holds for every `ctx` call that takes a name.
    ///
    /// Which calls are made must follow from recorded results alone: a
    /// `tokio::time::timeout` or a `select!` around `ctx` calls may take
    /// one branch on the first run and another on a replay, where recorded
    /// steps are ready at once. Race inside a step instead.
    ///
    /// # Steps inside steps
    ///
    /// `f` is one unit of work, recorded as one: a `ctx` call that takes a
    /// name made from inside it fails this step at once, without retries,
    /// with [`Error::NestedStep`]. `f` may use `ctx.state_mut()` and the
    /// like. State changed by steps side by side is saved as each
    /// finishes; a replay restores the snapshot recorded last.
    ///
    /// Change the state in `f` only from what its attempt succeeded in
    /// doing (after the awaited call, not before): a change made by an
    /// attempt that then fails stays while the next attempt runs in
    /// memory, and is lost when the retry waits long enough to suspend the
    /// run, or the process dies, since only recorded steps carry state.
    ///
    /// # Errors
    ///
    /// - [`Error::Step`]: it failed for good (its attempts used up, or an
    ///   error marked [`permanent`](crate::permanent)), now or when it was
    ///   recorded: the handler may compensate;
    /// - [`Error::InvalidStepName`] or [`Error::NameTooLong`]: a name the
    ///   engine refuses, before `f` runs;
    /// - [`Error::NestedStep`]: called from inside another step;
    /// - [`Error::Json`] or [`Error::PayloadTooLarge`]: its output, or
    ///   the state it changed, does not serialize to JSON that reads back,
    ///   or is too large to record: the instance fails with it, whatever
    ///   the handler does;
    /// - [`Error::Interrupted`]: the run must stop (cancelled, suspended,
    ///   shutting down...): propagate it with `?`.
    pub async fn step_with<T, E, F, Fut>(&self, name: &str, opts: StepOptions, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let run = &self.inner.run;
        run.check()?;
        let (key, recorded) = run.next_key(name)?;
        match recorded {
            Some(step) => self.replay(step).await,
            None => self.step_keyed(key, opts, f).await,
        }
    }

    /// Runs a step under an exact key, replaying it if recorded.
    pub(crate) async fn step_keyed<T, E, F, Fut>(
        &self,
        key: String,
        opts: StepOptions,
        mut f: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        let run = &self.inner.run;
        run.check()?;
        if let Some(step) = run.recorded(&key) {
            return self.replay(step).await;
        }
        if run.pause_requested() {
            return Err(self
                .suspend(crate::store::Suspend {
                    status: crate::Status::Pending,
                    run_at: run.now(),
                    wait_event: None,
                    wait_child: None,
                    // A step still backing off counts on after the pause.
                    retry: run.retry.clone(),
                    state: None,
                    reason: format!("paused before step `{key}`"),
                    at: run.now(),
                })
                .await);
        }
        if run.draining() {
            return Err(self.hand_back_before(&key, run.retry.clone()).await);
        }
        let opts = if opts.at_most_once {
            StepOptions {
                max_attempts: 1,
                ..opts
            }
        } else {
            opts
        };
        let started_key = opts.at_most_once.then(|| format!("{key}@started"));
        if let Some(started) = &started_key {
            if run.recorded(started).is_some() {
                return self.cut_short_once(key).await;
            }
        }
        // At the run span's level: a user's own logs inside the step carry
        // its key under any filter that shows them.
        let span = tracing::error_span!("step", step = %key);
        async {
            let started_at = run.now();
            // Running from here: a suspension beside it waits for it while
            // it reads its count, then while it runs and backs off.
            let mut running = Some(run.step_running());
            let mut started_key = started_key;
            // After a suspension for a long backoff, count on from the attempts made.
            let mut attempt = run.failed_attempts(&key).await;
            // Whether `retrying` names this step (a lock per step otherwise).
            let mut noted = attempt > 0;
            if noted {
                lock(&run.retrying).insert(key.clone(), attempt);
            }
            loop {
                if run.draining() {
                    // No new attempt either, once a backoff in memory ends.
                    drop(running.take());
                    let retry = (attempt > 0)
                        .then(|| (key.clone(), attempt))
                        .or_else(|| run.retry.clone());
                    return Err(self.hand_back_before(&key, retry).await);
                }
                // The count comes from the store: a corrupt one must not overflow.
                attempt = attempt.saturating_add(1);
                run.cancel_settled().await?;
                if let Some(started) = started_key.take() {
                    // Durable before the closure runs, and nothing between
                    // the two that could stop it: a run that finds the
                    // record and no outcome knows the closure began. It
                    // carries no state: a snapshot taken as the step begins
                    // could hold changes of steps beside it not recorded yet.
                    self.commit(StepRow {
                        key: started,
                        output: Some("null".to_owned()),
                        error: None,
                        state: None,
                        attempts: 1,
                        started_at,
                        finished_at: started_at,
                    })
                    .await?;
                }
                // A span of its own per attempt, so that a user's log from a
                // retry can be told from the first attempt's (a field
                // recorded again on the step's span would be printed twice).
                let attempt_span = tracing::error_span!("attempt", attempt);
                let outcome = AssertUnwindSafe(
                    IN_STEP
                        .scope(key.clone(), async { f().await })
                        .instrument(attempt_span),
                )
                .catch_unwind()
                .await;
                // A wait the error asked for (`RetryAfter`), at least.
                let mut asked_wait = std::time::Duration::ZERO;
                let (message, retryable) = match outcome {
                    Ok(Ok(value)) => {
                        // Recorded only if it reads back as itself: the
                        // first run and every replay see the same value.
                        // Otherwise the instance fails, whatever the handler
                        // does with the error (see `state_for_record`).
                        let (output, replayed): (String, T) =
                            crate::error::json_round_trip(&value, run.max_payload(), || {
                                format!("output of step `{key}` of workflow `{}`", run.workflow)
                            })
                            .inspect_err(|err| {
                                let _ = self.fail(err.to_string());
                            })?;
                        self.record(StepRow {
                            key: key.clone(),
                            output: Some(output),
                            error: None,
                            state: None,
                            attempts: attempt,
                            started_at,
                            finished_at: run.now(),
                        })
                        .await?;
                        if noted {
                            lock(&run.retrying).remove(&key);
                        }
                        run.step_ended();
                        tracing::debug!(attempts = attempt, "step recorded");
                        return Ok(replayed);
                    }
                    Ok(Err(err)) => {
                        let err: BoxError = err.into();
                        // Markers count wherever the error wraps them
                        // (anyhow's context, an application's own enum):
                        // a declined charge under `.context(..)` is as
                        // permanent as a bare one.
                        let engine_error = || causes::<Error>(&*err);
                        let interrupted = engine_error().find_map(|e| match e {
                            Error::Interrupted(why) => Some(why.clone()),
                            _ => None,
                        });
                        if let Some(why) = interrupted {
                            if run.pause_kept() {
                                // Paused from inside this step (a setup is
                                // missing): the error would let a
                                // `try_join!` drop the steps beside it
                                // halfway, or an arm carry on. Held until
                                // they are recorded and the run stops.
                                drop(running.take());
                                run.stop.cancelled().await;
                            }
                            return Err(Error::Interrupted(why));
                        }
                        if let Some(hint) = causes::<crate::step::RetryAfter>(&*err).next() {
                            asked_wait = hint.after;
                        }
                        // A nested call fails the same way at every attempt.
                        let retryable = causes::<crate::step::NonRetryable>(&*err).next().is_none()
                            && !engine_error().any(|e| matches!(e, Error::NestedStep { .. }));
                        (error_chain(&*err), retryable)
                    }
                    Err(payload) => (format!("panicked: {}", panic_message(&*payload)), true),
                };
                let message = crate::error::stored(message);
                if attempt >= opts.max_attempts || !retryable {
                    // The step's name on the event itself: log pipelines
                    // that drop span fields (OpenTelemetry's log bridge)
                    // would not say which step. The message is cut: the
                    // history keeps more.
                    tracing::warn!(
                        step = %key,
                        attempts = attempt,
                        error = %crate::error::logged(&message),
                        "step failed for good"
                    );
                    let step = StepRow {
                        key: key.clone(),
                        output: None,
                        error: Some(message),
                        state: None,
                        attempts: attempt,
                        started_at,
                        finished_at: run.now(),
                    };
                    self.record(step.clone()).await?;
                    if noted {
                        lock(&run.retrying).remove(&key);
                    }
                    run.step_ended();
                    // Recorded: a suspension need not wait for it any more.
                    drop(running);
                    return self.replay(step).await;
                }
                let delay = opts.jittered_delay_after(attempt).max(asked_wait);
                tracing::info!(
                    step = %key,
                    attempt,
                    error = %crate::error::logged(&message),
                    retry_in = ?delay,
                    "step attempt failed"
                );
                // Noted before the record: should the store fail to
                // answer (the record may have committed all the same),
                // the run's suspension still names the attempt made, and
                // the next run does not give the step its attempts anew.
                lock(&run.retrying).insert(key.clone(), attempt);
                noted = true;
                run.store
                    .record_attempt(&run.lease, &key, attempt, &message, run.now())
                    .await
                    .map_err(|e| self.store_error(e))?;
                if delay > run.suspend_after || run.draining() {
                    // Its own suspension must not wait for it.
                    drop(running.take());
                    let at = run.now();
                    return Err(self
                        .suspend(crate::store::Suspend {
                            status: crate::Status::Pending,
                            run_at: crate::store::millis_after(at, delay),
                            wait_event: None,
                            wait_child: None,
                            retry: Some((key.clone(), attempt)),
                            state: None,
                            reason: format!(
                                "retrying step `{key}` in {delay:?} (attempt {} of {})",
                                attempt + 1,
                                opts.max_attempts
                            ),
                            at,
                        })
                        .await);
                }
                // By the engine's clock, which a test may move by hand. Still
                // running: a suspension beside it waits for the next attempt.
                run.engine
                    .inner
                    .sleep_until(crate::store::millis_after(run.now(), delay))
                    .await;
            }
        }
        .instrument(span)
        .await
    }

    /// Suspends the run before step `key` for a worker that is shutting
    /// down (see [`RunShared::drain`]), due from the instance's creation;
    /// `retry` keeps the count of a step backing off.
    async fn hand_back_before(&self, key: &str, retry: Option<(String, u32)>) -> Error {
        let run = &self.inner.run;
        self.suspend(crate::store::Suspend {
            status: crate::Status::Pending,
            run_at: run.requeued_at(),
            wait_event: None,
            wait_child: None,
            retry,
            state: None,
            reason: format!("handed back before step `{key}`: the worker is shutting down"),
            at: run.now(),
        })
        .await
    }

    /// Fails step `key` of [`StepOptions::at_most_once`], whose one attempt
    /// an earlier run started and never recorded the outcome of: running
    /// it again could make its side effect twice.
    async fn cut_short_once<T: DeserializeOwned>(&self, key: String) -> Result<T> {
        let run = &self.inner.run;
        let at = run.now();
        let message = "its one attempt (StepOptions::at_most_once) was cut short: the worker \
                       crashed, lost its lease or shut down while it ran, so whether it took \
                       effect is unknown, and it is not run again";
        tracing::warn!(step = %key, "step failed for good: {message}");
        let step = StepRow {
            key,
            output: None,
            error: Some(message.to_owned()),
            state: None,
            attempts: 1,
            started_at: at,
            finished_at: at,
        };
        let running = run.step_running();
        self.record(step.clone()).await?;
        run.step_ended();
        drop(running);
        self.replay(step).await
    }

    /// Stops the handler and gives the worker back until the instance is due
    /// (never later than its deadline). Returns the error to hand the caller.
    ///
    /// The suspension is settled once every branch of the handler waits:
    /// the caller yields, and goes on only after a pass of the handler in
    /// which no step ran. Meanwhile the branches beside it (`join!`,
    /// `select!`, `ctx.map`) run on: their steps finish and are recorded
    /// (stopped halfway, their side effects would happen again on the
    /// next run), new steps and children start, and their waits add
    /// theirs, so the instance runs again at the earliest of their times
    /// (sleeps, timeouts), for the first event or child (see
    /// `merge_suspensions`). A wait dropped before the run stops (a
    /// `select!` took another branch) leaves; when none is left, the
    /// handler goes on without suspending. A cancel, a lost lease or the
    /// deadline still stops the run at once. The caller's error is
    /// returned only then, as it would drop the branches beside it
    /// (`try_join!`, `map`'s first error).
    pub(crate) async fn suspend(&self, mut suspend: crate::store::Suspend) -> Error {
        let run = &self.inner.run;
        if suspend.retry.is_none() {
            suspend.retry = run.backing_off();
        }
        if let Some(deadline) = *run.deadline.borrow() {
            suspend.run_at = suspend.run_at.min(deadline);
        }
        tracing::debug!(reason = %suspend.reason, "suspending");
        let Some(token) = run.add_suspension(suspend) else {
            // The run stops for another reason: nothing is waited for.
            run.stop.cancel();
            return Error::Interrupted(Interrupt::Suspended);
        };
        // Dropped before the run stops: this wait leaves the suspension.
        struct Leave<'a>(Option<(&'a RunShared, u64)>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if let Some((run, token)) = self.0 {
                    run.leave_suspension(token);
                }
            }
        }
        let mut leave = Leave(Some((run, token)));
        // Settled only after a pass of the handler in which nothing ran:
        // every branch then waits, or has left (a `select!` that returned).
        loop {
            tokio::task::yield_now().await;
            if run.steps_finished().await {
                continue;
            }
            if run.stop.is_cancelled() {
                // Settled by another wait, or stopped for another reason.
                break;
            }
            // The state as it is now, unless a step recorded it (the row
            // has that one). A step beside it may have failed an attempt
            // meanwhile: the suspension writes the row's retry record, and
            // must not write that count away. Read before the lock: the
            // state's own lock is never taken under it. The waits leave the
            // state to this one reading; one JSON cannot hold is the
            // caller's error, as it was theirs, and this wait leaves.
            let state = match self.suspended_state() {
                Ok(state) => state,
                Err(err) => return err,
            };
            let retry = run.backing_off();
            let mut slot = lock(&run.interrupt);
            // Checked again, and settled, under the lock a step of a
            // spawned task takes to start (`check`): none starts once this
            // one settles, and the worker reads the settlement whole.
            if run.steps_running.load(Ordering::SeqCst) != 0 {
                continue;
            }
            if let Some((Interrupt::Suspended, Settlement::Suspend(pending))) = &mut *slot {
                pending.state = state;
                if pending.retry.is_none() {
                    pending.retry = retry;
                }
            }
            leave.0 = None;
            run.stop.cancel();
            return Error::Interrupted(Interrupt::Suspended);
        }
        leave.0 = None;
        run.stop.cancel();
        Error::Interrupted(Interrupt::Suspended)
    }

    /// Ends the instance now as `Completed` with `output`, without running the
    /// rest of the handler. Returns an error to propagate with `?`; the
    /// outcome is recorded even if the caller ignores it, with the state
    /// as it is once the handler has stopped. An output JSON cannot hold
    /// ([`Error::Json`]) or larger than
    /// [`max_payload_bytes`](crate::EngineBuilder::max_payload_bytes)
    /// ([`Error::PayloadTooLarge`]) ends it `Failed` with that error
    /// instead.
    ///
    /// `output` should be the workflow's `Output`: `Ctx` is typed by the
    /// state, not the output, so it takes any `Serialize`, and the engine
    /// checks the JSON against `Output` when it records the end. A value
    /// that does not read back as `Output` ends the instance `Failed`,
    /// with an error naming the mismatch. [`Workflow::complete`](crate::Workflow::complete)
    /// (`ProcessOrder::complete(&ctx, output)`) checks the type at compile
    /// time instead.
    pub fn complete<O: Serialize>(&self, output: O) -> Result<Infallible> {
        let what = || {
            format!(
                "output passed to ctx.complete in workflow `{}`",
                self.name()
            )
        };
        let json = serde_json::to_string(&output)
            .map_err(|error| Error::Json {
                context: what(),
                error,
            })
            .and_then(|json| {
                crate::error::within(&json, self.inner.run.max_payload(), what).map(|()| json)
            })
            // As the caller may ignore the error, the end is recorded all
            // the same: a failure naming it.
            .inspect_err(|err| {
                let _ = self.fail(err.to_string());
            })?;
        self.inner.run.interrupt(
            Interrupt::Completed,
            Settlement::Ended {
                output: Some(json),
                state: self.final_state(),
            },
        );
        Err(Error::Interrupted(Interrupt::Completed))
    }

    /// Ends the instance now as `Failed` with `reason`, without retries.
    /// Returns an error to propagate with `?`; the outcome is recorded even if
    /// the caller ignores it, with the state as it is once the handler has
    /// stopped.
    pub fn fail(&self, reason: impl Into<String>) -> Result<Infallible> {
        let why = Interrupt::Failed(reason.into());
        let settlement = Settlement::Ended {
            output: None,
            state: self.final_state(),
        };
        self.inner.run.interrupt(why.clone(), settlement);
        Err(Error::Interrupted(why))
    }

    /// The state for a suspension's copy (see `StateCell::peek_dirty`).
    pub(crate) fn suspended_state(&self) -> Result<Option<String>> {
        self.inner.state.peek_dirty()
    }

    /// The state as JSON if `state_mut` was called since the last snapshot.
    pub(crate) fn dirty_state(&self) -> Result<Option<String>> {
        self.inner.state.take_dirty()
    }

    /// [`Ctx::dirty_state`] for a record about to be written, with a guard
    /// to hold until that record is committed when it carries a snapshot
    /// (see `StateCell::order`). A state JSON cannot hold fails the
    /// instance whatever the handler does with the error: the record (a
    /// step whose side effect happened) cannot be written, and a replay
    /// would run it again.
    async fn state_for_record(
        &self,
    ) -> Result<(Option<String>, Option<tokio::sync::MutexGuard<'_, ()>>)> {
        let cell = &self.inner.state;
        // A record without a snapshot still comes after one in flight: its
        // own step's change may be in that snapshot (taken while the step
        // ran), and recorded first, a crash before the snapshot landed
        // would replay the step without its change. Uncontended, no wait.
        if !cell.dirty.load(Ordering::Acquire) {
            if cell.order.try_lock().is_err() {
                drop(cell.order.lock().await);
            }
            return Ok((None, None));
        }
        let order = cell.order.lock().await;
        let state = self.dirty_state().inspect_err(|err| {
            let _ = self.fail(err.to_string());
        })?;
        let order = state.is_some().then_some(order);
        Ok((state, order))
    }

    /// The state to record with `ctx.complete`'s or `ctx.fail`'s outcome.
    fn final_state(&self) -> FinalState {
        let cell = Arc::clone(&self.inner.state);
        FinalState(Arc::new(move || cell.take_at_end()))
    }

    /// The state to record with the outcome of a handler that returned.
    pub(crate) fn state_at_end(&self) -> Option<String> {
        self.inner.state.take_at_end()
    }

    /// Records `step` (a step's outcome, a timer, a child's result) with
    /// the state snapshot due, if the state changed since the last one.
    pub(crate) async fn record(&self, mut step: StepRow) -> Result<()> {
        let (state, order) = self.state_for_record().await?;
        step.state = state;
        self.commit_in_order(step, order).await
    }

    /// Records a step carrying the state snapshot `order` guards (see
    /// `StateCell::order`), in the order the snapshots were taken: a store
    /// that records commits in the order they are queued has it queued
    /// before the next snapshot is taken (snapshots commit side by side,
    /// in one group commit); any other, committed first.
    async fn commit_in_order(
        &self,
        step: StepRow,
        order: Option<tokio::sync::MutexGuard<'_, ()>>,
    ) -> Result<()> {
        let Some(order) = order else {
            return self.commit(step).await;
        };
        // Not recorded, the snapshot's changes are still to be saved: a
        // record after it must not pass for one made after them.
        let unsaved = |committed: &Result<()>| {
            if committed.is_err() {
                let cell = &self.inner.state;
                let _value = lock(&cell.value);
                cell.dirty.store(true, Ordering::Release);
            }
        };
        if !self.inner.run.store.commits_in_call_order() {
            let committed = self.commit(step).await;
            unsaved(&committed);
            drop(order);
            return committed;
        }
        let mut commit = std::pin::pin!(self.commit(step));
        // The first poll queues it.
        let first = std::future::poll_fn(|cx| Poll::Ready(commit.as_mut().poll(cx))).await;
        if let Poll::Ready(committed) = &first {
            unsaved(committed);
        }
        drop(order);
        match first {
            Poll::Ready(committed) => committed,
            Poll::Pending => {
                let committed = commit.await;
                unsaved(&committed);
                committed
            }
        }
    }

    /// Records a step. The journal is not updated: keys never repeat within
    /// a run, so only steps recorded by earlier runs are ever looked up.
    pub(crate) async fn commit(&self, step: StepRow) -> Result<()> {
        let run = &self.inner.run;
        run.store
            .commit_step(&run.lease, step)
            .await
            .map_err(|e| self.store_error(e))
    }

    pub(crate) fn store_error(&self, err: StoreError) -> Error {
        // None of these is the workflow's fault: stop the run without
        // failing the instance, so it resumes from its last recorded step.
        let run = &self.inner.run;
        let (why, settlement) = match err {
            StoreError::LeaseLost(_) => (Interrupt::LeaseLost, Settlement::Plain),
            // A damaged row (a child's, another's this run reads) stays
            // damaged: another run would only fail the same way. Paused
            // until someone repairs it.
            corrupt @ StoreError::Corrupt { .. } => {
                let message = corrupt.to_string();
                let at = run.now();
                let mut pause = run.resume_later(
                    at,
                    std::time::Duration::ZERO,
                    format!(
                        "paused: a row it needs cannot be read ({message}); repair it and resume"
                    ),
                );
                pause.status = Status::Paused;
                (Interrupt::Store(message), Settlement::Suspend(pause))
            }
            other => (Interrupt::Store(other.to_string()), Settlement::Plain),
        };
        run.interrupt(why.clone(), settlement);
        Error::Interrupted(why)
    }

    /// Brings the state to where the first run had it past the replayed
    /// `step`: the last snapshot recorded at or before it, unless the
    /// replay has already passed that point.
    ///
    /// Steps side by side (`join!`, `ctx.map`) replay in the order the code
    /// asks for them, which need not be the order they were recorded in.
    /// The replay keeps how far in recording order it has come: a step
    /// recorded before that point restores nothing (the state has moved
    /// on, by a later snapshot or by the handler's own code after a later
    /// step), and one past it restores the latest snapshot up to it, its
    /// own or an earlier step's. A step this run recorded itself holds the
    /// state as it is. A recorded state the code's type no longer reads
    /// pauses the instance (see [`Ctx::replay`]).
    pub(crate) async fn restore_state(&self, step: &StepRow) -> Result<()> {
        match self.inner.run.recorded_at(&step.key) {
            Some(position) => self.restore_state_to(position).await,
            None => Ok(()),
        }
    }

    /// Before steps side by side (`ctx.map`) whose recorded ones replay
    /// out of order beside ones that run again: the state as the last of
    /// `keys` recorded left it. An item run again then changes that, and
    /// the replay of an item recorded earlier does not restore its older
    /// snapshot over the change.
    pub(crate) async fn restore_state_through(
        &self,
        keys: impl Iterator<Item = String>,
    ) -> Result<()> {
        match self.inner.run.recorded_last_of(keys) {
            Some(position) => self.restore_state_to(position).await,
            None => Ok(()),
        }
    }

    /// The state as recorded at journal `position`, unless the replay is
    /// past it.
    async fn restore_state_to(&self, position: usize) -> Result<()> {
        let run = &self.inner.run;
        let passed = self
            .inner
            .restored
            .fetch_max(position + 1, Ordering::AcqRel);
        if passed > position {
            return Ok(());
        }
        // Only a snapshot the replay has not passed yet.
        let Some((_, key, state)) = run
            .snapshot_at_or_before(position)
            .filter(|(at, _, _)| *at >= passed)
        else {
            return Ok(());
        };
        let de = &mut serde_json::Deserializer::from_str(&state);
        let restored: S = match serde_path_to_error::deserialize(de) {
            Ok(restored) => restored,
            Err(err) => {
                let what = format!(
                    "the state recorded by step `{key}` does not fit the state type at `{}`: {}",
                    err.path(),
                    err.inner()
                );
                return Err(self.pause_for_code(what).await);
            }
        };
        let mut value = lock(&self.inner.state.value);
        *value = restored;
        self.inner.state.dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// A recorded step's outcome, as the step's call returns it. A recorded
    /// output (or state) that the code's type no longer reads means the code
    /// changed under a running instance: failing it would be for good, and
    /// a rerun would repeat every step's side effects, so the instance is
    /// paused instead, with the reason, until the code reads it again and
    /// someone resumes it (or cancels it).
    pub(crate) async fn replay<T: DeserializeOwned>(&self, step: StepRow) -> Result<T> {
        let run = &self.inner.run;
        self.restore_state(&step).await?;
        match (step.output, step.error) {
            (Some(output), _) => {
                let de = &mut serde_json::Deserializer::from_str(&output);
                match serde_path_to_error::deserialize(de) {
                    Ok(value) => Ok(value),
                    Err(err) => {
                        let what = format!(
                            "the recorded output of step `{}` does not fit the step's type at `{}`: {}",
                            step.key,
                            err.path(),
                            err.inner()
                        );
                        Err(self.pause_for_code(what).await)
                    }
                }
            }
            (None, error) => Err(Error::Step {
                workflow: run.workflow.to_owned(),
                step: step.key,
                attempts: step.attempts,
                message: error.unwrap_or_else(|| "failed".to_owned()),
            }),
        }
    }

    /// Pauses the instance because its code does not read what an earlier
    /// run recorded (`what`).
    pub(crate) async fn pause_for_code(&self, what: String) -> Error {
        let run = &self.inner.run;
        let reason = format!(
            "paused: {what}; the workflow's code changed under a running instance? \
             Deploy code that reads it (see docs/versioning.md) and resume \
             the instance, or cancel it"
        );
        self.suspend(run.pause_for_fix(reason)).await
    }
}

/// A name held by [`Ctx::hold_name`], let go when dropped.
#[doc(hidden)]
pub struct HeldName {
    run: Arc<RunShared>,
    name: String,
}

impl Drop for HeldName {
    fn drop(&mut self) {
        lock(&self.run.held_names).remove(&self.name);
    }
}

impl fmt::Debug for HeldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HeldName").field(&self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_may_not_be_empty_or_hold_a_reserved_character() {
        for ok in [
            "fetch",
            "fetch-1",
            "charge payment",
            "user:42/order.7",
            "execute:turn-0:lookup",
            "étape",
        ] {
            assert_eq!(check_step_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_step_name(""), Err(None));
        assert_eq!(check_step_name("charge-\0x#1"), Err(Some('\0')));
        for (bad, reserved) in [
            ("fetch#1", '#'),
            ("wait@timeout", '@'),
            ("items[0]", '['),
            ("x]", ']'),
            // The first reserved character is the one named.
            ("a@b#c", '@'),
        ] {
            assert_eq!(check_step_name(bad), Err(Some(reserved)), "{bad}");
        }
    }

    #[test]
    fn the_refusal_names_the_step_the_workflow_and_the_character() {
        let err = Error::InvalidStepName {
            workflow: "collides".to_owned(),
            name: "fetch#1".to_owned(),
            reserved: Some('#'),
        };
        assert_eq!(
            err.to_string(),
            "invalid step name `fetch#1` in workflow `collides`: it contains `#`, which the \
             engine reserves for the keys it derives from step names (`name#1` for a repeated \
             name, `name@timeout`, `name[0]`); a step name may not contain `#`, `@`, `[` or `]`"
        );
        let err = Error::InvalidStepName {
            workflow: "collides".to_owned(),
            name: String::new(),
            reserved: None,
        };
        assert_eq!(
            err.to_string(),
            "invalid step name in workflow `collides`: it is empty"
        );
    }
}
