//! Workers: claim runnable instances, run their handlers, keep their leases
//! alive, and take over instances of workers that died.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::ctx::{RunShared, Settlement};
use crate::engine::{Engine, EngineInner};
use crate::error::{Interrupt, StoreError};
use crate::id::InstanceId;
use crate::status::Status;
use crate::step::panic_message;
use crate::store::{now_millis, ClaimRequest, Claimed, Finish, Lease, Millis, Renewal, Suspend};

/// Worker ids alive in this process, so a restarted engine in the same
/// process can tell its own live peers from dead predecessors.
static LIVE: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// A running worker. Dropping the handle leaves it running; stop it with
/// [`Worker::shutdown`] or [`Engine::shutdown`].
#[must_use = "a worker runs until shut down; keep the handle to stop it gracefully"]
pub struct Worker {
    shared: Arc<WorkerShared>,
    /// True when it ended leaving handlers it could not stop running.
    task: tokio::task::JoinHandle<bool>,
}

/// How [`Worker::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stopped {
    /// Every handler finished or was stopped, and its instance handed back
    /// (or left to its lease, if the store did not answer).
    Clean,
    /// A handler that blocks its thread (a synchronous call in async code)
    /// could not be stopped, or the worker's task failed before it could
    /// tell. It runs on: the tokio runtime it is on cannot shut down until
    /// it returns, so `main` returning would wait for it; end the process
    /// with `std::process::exit` if it must stop now. Its instance is not
    /// handed back, and resumes elsewhere when its lease ends.
    ///
    /// Only the handlers' own tasks are seen: a blocking call a handler
    /// handed to `spawn_blocking`, or a task it spawned, also keeps the
    /// runtime from ending, and is not reported here.
    HandlersLeftRunning,
    /// The worker stopped by itself: the store became unusable
    /// ([`StoreError::Unusable`]: SQLite after a failed fsync, or a file a
    /// newer build migrated), and every handler finished or was stopped as
    /// for [`Stopped::Clean`]. [`Engine::run`](crate::Engine::run) returns the
    /// store's error instead; restart the process.
    StoreUnusable,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.shared.id)
            .field("stopping", &self.shared.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

struct WorkerShared {
    engine: Engine,
    id: String,
    stop: CancellationToken,
    running: Mutex<HashMap<InstanceId, Arc<RunShared>>>,
    /// Instances claimed ahead of a free slot, oldest due first. The
    /// heartbeat renews their leases like those of running instances.
    ready: Arc<ClaimedAhead>,
    /// When each lease of `running` and `ready` ends at the earliest (see
    /// [`LeaseEnd`]): the claim's asking plus the lease, then each
    /// renewal's. Taken before `ready`
    /// and `running` wherever it is held with them, so that a claim is in
    /// both or neither when the heartbeat looks.
    lease_ends: Mutex<HashMap<(InstanceId, i64), LeaseEnd>>,
    /// Hand-backs under way (see `hand_back_waiting`): a worker that stops
    /// waits for them, so that the instances are free for other workers at
    /// once rather than when their leases end.
    hand_backs: tokio_util::task::TaskTracker,
    /// Cancelled when a shutdown stops waiting for `hand_backs`: those
    /// still waiting on the store give up (their instances resume when
    /// their leases expire) instead of outliving the worker.
    give_up: CancellationToken,
    /// Set when the heartbeat handed back instances that waited here for
    /// a slot (every handler busy for long): no claiming ahead until a
    /// handler ends, or they would be claimed again at once.
    ahead_held_back: AtomicBool,
    /// Why the worker stopped by itself: the store became unusable
    /// ([`StoreError::Unusable`]).
    unusable: Mutex<Option<String>>,
}

/// A worker's instances claimed ahead of a free slot. The engine keeps a
/// weak reference to each worker's, so a cancel, pause or moved deadline
/// in this process reaches an instance before it starts, not at the next
/// heartbeat.
pub(crate) type ClaimedAhead = Mutex<VecDeque<Claimed>>;

/// The instances this engine cancelled, paused, resumed or moved the
/// deadline of lately, numbered, so that a claim that was in flight then
/// starts them as the store now says: the change searched the queues of
/// instances claimed ahead before the claim's answer reached one (a
/// cancelled instance started anyway, a paused one ran steps until its
/// next heartbeat). A worker notes the count when it sends a claim and,
/// holding its queue's lock, applies what changed since (dropping what
/// was cancelled, or whose parent was) as it queues the answer; a change
/// is noted before the queues are searched, so one of the two sees the
/// other. Its lock is taken last (after `lease_ends` and a queue), and
/// alone by a change.
#[derive(Default)]
pub(crate) struct ControlLog {
    /// Changes so far, and the latest of them (the oldest dropped first).
    log: Mutex<(u64, VecDeque<Noted>)>,
}

/// A change as [`ControlLog`] keeps it: numbered.
type Noted = (u64, InstanceId, Change);

/// A change [`ControlLog`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Cancelled,
    /// A pause asked for (`true`) or withdrawn.
    Pause(bool),
    Deadline(crate::store::Millis),
}

impl Change {
    fn apply(self, row: &mut crate::store::InstanceRow) {
        match self {
            Change::Cancelled => {}
            Change::Pause(pause) => row.pause_requested = pause,
            Change::Deadline(at) => row.deadline_at = Some(at),
        }
    }
}

/// How many changes the log keeps: far more than come in one claim's
/// round trip to the store. After a burst of more (one cancel of a tree
/// of thousands running here), the claim that was in flight cannot tell
/// what changed, and hands back what it claimed.
const CHANGES_KEPT: usize = 1024;

impl ControlLog {
    /// How many changes were noted so far.
    pub(crate) fn count(&self) -> u64 {
        lock(&self.log).0
    }

    pub(crate) fn note(&self, ids: &[InstanceId], change: Change) {
        let mut log = lock(&self.log);
        for id in ids {
            log.0 += 1;
            let n = log.0;
            log.1.push_back((n, id.clone(), change));
            if log.1.len() > CHANGES_KEPT {
                log.1.pop_front();
            }
        }
    }

    /// The changes after the first `count`, oldest first; `None` when
    /// some of them were dropped already.
    fn since(&self, count: u64) -> Option<Vec<(InstanceId, Change)>> {
        let log = lock(&self.log);
        // Numbered in order: the newest are at the back.
        let newer = log.1.iter().rev().take_while(|(n, ..)| *n > count).count();
        if log.0 - count > newer as u64 {
            return None;
        }
        Some(
            log.1
                .iter()
                .skip(log.1.len() - newer)
                .map(|(_, id, change)| (id.clone(), *change))
                .collect(),
        )
    }
}

/// Drops `id` from every queue of instances claimed ahead in this engine
/// (it was cancelled: its lease is gone), so it never starts here.
pub(crate) fn forget_claimed_ahead(inner: &EngineInner, id: &InstanceId) {
    for_claimed_ahead(inner, |ready| ready.retain(|c| c.row.id != *id));
}

/// Changes the row `id` starts with, if claimed ahead in this engine (or
/// on its way to be, see [`ControlLog`]), as the store was just changed (a
/// pause asked for or withdrawn, a moved deadline): it starts as the store
/// now says, not as it was claimed.
pub(crate) fn update_claimed_ahead(inner: &EngineInner, id: &InstanceId, change: Change) {
    inner.controls.note(std::slice::from_ref(id), change);
    for_claimed_ahead(inner, |ready| {
        for c in ready.iter_mut().filter(|c| c.row.id == *id) {
            change.apply(&mut c.row);
        }
    });
}

/// The instances claimed ahead in this engine that are children of another,
/// with their parents.
pub(crate) fn children_claimed_ahead(inner: &EngineInner) -> Vec<(InstanceId, InstanceId)> {
    let mut children = Vec::new();
    for_claimed_ahead(inner, |ready| {
        children.extend(
            ready
                .iter()
                .filter_map(|c| Some((c.row.id.clone(), c.row.parent.clone()?))),
        );
    });
    children
}

fn for_claimed_ahead(inner: &EngineInner, mut f: impl FnMut(&mut VecDeque<Claimed>)) {
    let mut queues = lock(&inner.claimed_ahead);
    queues.retain(|queue| match queue.upgrade() {
        Some(queue) => {
            f(&mut lock(&queue));
            true
        }
        None => false,
    });
}

impl Worker {
    pub(crate) fn spawn(engine: Engine) -> Self {
        let id = format!("{}/{}/{}", host(), std::process::id(), uuid::Uuid::now_v7());
        lock(&LIVE).insert(id.clone());
        // However the task ends (a panic, its runtime dropped, even before
        // its first poll), the id is no longer a live peer's: a new engine
        // in this process frees its leases at once.
        let live = LiveId(id.clone());
        let stop = engine.inner.shutdown.child_token();
        let ready = Arc::new(ClaimedAhead::default());
        {
            // Workers that ended leave their queues behind: drop those here
            // too, so starting workers in a loop does not grow the list.
            let mut queues = lock(&engine.inner.claimed_ahead);
            queues.retain(|queue| queue.strong_count() > 0);
            queues.push(Arc::downgrade(&ready));
        }
        let shared = Arc::new(WorkerShared {
            engine,
            id,
            stop,
            running: Mutex::new(HashMap::new()),
            ready,
            lease_ends: Mutex::new(HashMap::new()),
            hand_backs: tokio_util::task::TaskTracker::new(),
            give_up: CancellationToken::new(),
            ahead_held_back: AtomicBool::new(false),
            unusable: Mutex::new(None),
        });
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            // Counted while its task lives, however it ends.
            let counted = Counted::new(&shared.engine);
            async move {
                let _counted = counted;
                let left_running = worker_loop(shared).await;
                if left_running {
                    // A handler still runs here: its instance must not
                    // look abandoned to an engine in this process, which
                    // would run it beside it at once instead of waiting
                    // out its lease.
                    std::mem::forget(live);
                }
                left_running
            }
        });
        Worker { shared, task }
    }

    /// This worker's id: `host/pid/uuid`, stored as the lease owner. On
    /// Linux `host` also names the machine's boot and, in a container, its
    /// pid namespace (`web-1~1a2b3c4d-4026532281`): a restarted process
    /// frees at once the leases of dead workers of the same place only.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Cancelled to stop this worker.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Completes once the worker is stopping: after [`Worker::shutdown`]
    /// or [`Engine::shutdown`], or by itself when its store became unusable
    /// ([`Stopped::StoreUnusable`]). A service that runs a worker beside
    /// its own tasks selects on this with its stop signal, then calls
    /// `shutdown` (which [`Engine::run_until`] does for it).
    ///
    /// ```no_run
    /// # async fn doc(engine: workflow_core::Engine) {
    /// let worker = engine.start_worker();
    /// tokio::select! {
    ///     () = workflow_core::shutdown_signal() => {}
    ///     () = worker.stopped() => {}
    /// }
    /// let stopped = worker.shutdown().await;
    /// # let _ = stopped; }
    /// ```
    pub async fn stopped(&self) {
        self.shared.stop.cancelled().await;
    }

    /// Stops claiming, lets the steps running finish within the engine's
    /// grace period (counted from this call) and hands each instance back
    /// to the store before its next step; handlers still in a step when
    /// the grace ends are stopped and handed back too. It returns within
    /// the grace period and a few seconds more, whatever the store does:
    /// instances a store that does not answer could not take back resume
    /// when their leases expire.
    /// It says whether a handler blocking its thread was left running
    /// ([`Stopped::HandlersLeftRunning`]), which keeps the runtime, and so
    /// the process, from ending.
    pub async fn shutdown(self) -> Stopped {
        self.shared.stop.cancel();
        let stopped = match self.task.await {
            Ok(false) => Stopped::Clean,
            Ok(true) => Stopped::HandlersLeftRunning,
            Err(err) => {
                // Its handlers were dropped unchecked: one may block on.
                tracing::error!(error = %err, "worker task failed");
                Stopped::HandlersLeftRunning
            }
        };
        match (stopped, lock(&self.shared.unusable).is_some()) {
            (Stopped::Clean, true) => Stopped::StoreUnusable,
            _ => stopped,
        }
    }

    /// Why the worker stopped by itself, if it did: its store became
    /// unusable ([`Stopped::StoreUnusable`]).
    pub(crate) fn unusable(&self) -> Option<String> {
        lock(&self.shared.unusable).clone()
    }
}

/// Stops the worker for good: its store keeps nothing it is given any
/// more, and a worker going on would only fail every run. `run` returns
/// the error, for the process to exit and be restarted.
fn stop_unusable(w: &WorkerShared, why: String) {
    let mut unusable = lock(&w.unusable);
    if unusable.is_none() {
        tracing::error!(error = %why, "the store is unusable; the worker stops, for the process to be restarted");
        w.engine.inner.health.unusable(&why);
        *unusable = Some(why);
    }
    w.stop.cancel();
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the worker; true if it left handlers it could not stop running
/// (one blocking its thread).
async fn worker_loop(w: Arc<WorkerShared>) -> bool {
    let inner = &w.engine.inner;
    let config = &inner.config;
    // Error-level spans: enabled wherever warnings and errors are, so those
    // carry the worker and the instance under a `warn` filter too.
    let span = tracing::error_span!("worker", worker = %w.id);
    async {
        if w.stop.is_cancelled() {
            // Started after `Engine::shutdown`: it stops at once, writing
            // nothing (an old binary during a deploy must not record its
            // schedules over the new one's).
            tracing::info!("worker not started: the engine was shut down");
            return false;
        }
        tracing::info!(concurrency = config.concurrency, "worker started");
        tokio::select! {
            _ = reap_dead_owners(&w) => {}
            // A store that hangs must not hold up a shutdown.
            _ = w.stop.cancelled() => {}
        }
        if w.stop.is_cancelled() {
            // Stopped while starting: nothing claimed, nothing to fire.
            tracing::info!("worker stopped before it began");
            return false;
        }
        // Aborted with this task, however it ends; in the worker's span,
        // so what they log names the worker.
        let heartbeat = AbortOnDropHandle::new(tokio::spawn(
            heartbeat_loop(Arc::clone(&w)).in_current_span(),
        ));
        let _cancels = inner.store.cancellations().map(|heard| {
            AbortOnDropHandle::new(tokio::spawn(
                hear_cancels(w.engine.clone(), heard).in_current_span(),
            ))
        });
        let scheduler = AbortOnDropHandle::new(tokio::spawn(
            crate::scheduler::run(w.engine.clone(), w.stop.clone()).in_current_span(),
        ));
        let membership = crate::retention::worker_started(&w.engine);
        let mut runs = JoinSet::new();
        // A slot is a running handler. It is free again as soon as the
        // handler ends, while its outcome is still being recorded.
        let slots = Arc::new(Semaphore::new(config.concurrency));
        // How many instances to hold claimed ahead of free slots: a slot
        // that frees then starts the next instance at once instead of
        // waiting a claim's round trip through the store. Only once a
        // handler has ended here: a process that a step kills before any
        // does (a crash loop) would otherwise count the crash against
        // instances it held without ever starting them, and pause them
        // with the culprit (`max_interrupted_runs`).
        let prefetch = config.concurrency.div_ceil(4);
        let mut a_run_ended = false;
        let mut claims = JoinSet::new();
        // The last claim came back full: more may be due right now.
        let mut draining = true;
        // The engine's time at the last claim: what was due by then was
        // claimable at it.
        let mut claimed_at = inner.now();
        // A clock that jumps (a test's `ManualClock`) wakes the idle loop.
        let mut clock_changes = inner.clock.changes();
        let mut store_backoff = Duration::from_millis(50);
        let mut claims_failing = Outage::new(&w.engine, "claiming work");
        // Apart from claims: one may fail while the other works.
        let mut due_failing = Outage::new(&w.engine, "looking for the next due instance");
        // Whose turn the next claim is, under caps.
        let mut claim_turn: usize = 0;
        let workflows: Vec<String> = inner.workflows.keys().map(|s| (*s).to_owned()).collect();
        let mut wakeups = inner.store.wakeups();
        while !w.stop.is_cancelled() {
            while let Some(ran) = runs.try_join_next() {
                a_run_ended |= ran_a_handler(ran);
                w.ahead_held_back.store(false, Ordering::Relaxed);
            }
            let ready = start_ready(&w, &slots, &mut runs);
            let ahead = if a_run_ended && !w.ahead_held_back.load(Ordering::Relaxed) {
                prefetch
            } else {
                0
            };
            let wanted = (slots.available_permits() + ahead).saturating_sub(ready);
            // Under caps, claims take turns: the uncapped workflows up to
            // every free slot, each capped one up to what its cap leaves;
            // those at their cap sit out (see `capped`).
            let (open, group, wanted) = match capped(&w, &workflows) {
                Some((open, mut groups)) if !groups.is_empty() => {
                    let (names, room) = groups.swap_remove(claim_turn % groups.len());
                    (Cow::Owned(open), Cow::Owned(names), wanted.min(room))
                }
                Some((open, _)) => (Cow::Owned(open), Cow::Borrowed(&workflows), wanted),
                None => (Cow::Borrowed(&workflows), Cow::Borrowed(&workflows), wanted),
            };
            if draining && wanted > 0 && claims.is_empty() && !open.is_empty() {
                claim_turn = claim_turn.wrapping_add(1);
                let now = now_millis();
                let asked = (lease_now(), now);
                let due_by = inner.now();
                let req = ClaimRequest {
                    owner: w.id.clone(),
                    workflows: group.into_owned(),
                    now,
                    due_by,
                    lease_until: crate::store::millis_after(now, config.lease),
                    limit: wanted,
                };
                let store = Arc::clone(&inner.store);
                let changes = inner.controls.count();
                claims.spawn(
                    async move { (store.claim(req).await, wanted, (asked, due_by), changes) }
                        .in_current_span(),
                );
            }
            // With every workflow at its cap there is nothing to claim: the
            // nap below waits for a handler to end (it waited for a claim
            // that was never made, for ever).
            if (draining && !open.is_empty()) || !claims.is_empty() {
                tokio::select! {
                    Some(joined) = claims.join_next() => {
                        let (claimed, wanted, (at, due_by), changes) = match joined {
                            Ok(claim) => claim,
                            Err(err) => {
                                // What it claimed, if anything, waits for its leases to end.
                                tracing::error!(error = %err, "a claim's task panicked");
                                continue;
                            }
                        };
                        claimed_at = due_by;
                        match claimed {
                            Ok(claimed) => {
                                store_backoff = Duration::from_millis(50);
                                claims_failing.over();
                                draining = claimed.len() == wanted;
                                let until = LeaseEnd::after(at, config.lease);
                                // `lease_ends` first, then the queue (the
                                // heartbeat's order), and the changes read
                                // under the queue's lock (see `ControlLog`).
                                let mut ends = lock(&w.lease_ends);
                                let mut ready = lock(&w.ready);
                                let changes = inner.controls.since(changes);
                                // More changes than the log keeps came
                                // meanwhile: which of these they touched
                                // is unknown, so none starts here.
                                let unknown = changes.is_none();
                                let changes = changes.unwrap_or_default();
                                let mut cancelled: HashSet<InstanceId> = changes
                                    .iter()
                                    .filter(|(_, change)| *change == Change::Cancelled)
                                    .map(|(id, _)| id.clone())
                                    .collect();
                                // A child and its own child in one answer:
                                // until no more are found.
                                let mut claimed = claimed;
                                loop {
                                    let before = claimed.len();
                                    claimed.retain(|c| {
                                        let gone = cancelled.contains(&c.row.id)
                                            || c.row.parent.as_ref().is_some_and(|p| cancelled.contains(p));
                                        if gone {
                                            tracing::debug!(id = %c.row.id, "cancelled while its claim was in flight; not started");
                                            cancelled.insert(c.row.id.clone());
                                        }
                                        !gone
                                    });
                                    if claimed.len() == before {
                                        break;
                                    }
                                }
                                // An answer that came after the lease it
                                // granted ended (a store that kept retrying
                                // through an outage): another worker may
                                // hold those instances by now, so none of
                                // them starts here. Handed back (a release
                                // of this run's lease only), so they are
                                // not counted as runs cut short.
                                if until.passed() || unknown {
                                    if unknown {
                                        tracing::info!(
                                            claimed = claimed.len(),
                                            "more cancels, pauses and deadline moves than are kept came while a claim was in flight; handing its instances back"
                                        );
                                    } else {
                                        tracing::warn!(
                                            claimed = claimed.len(),
                                            "a claim answered after its leases ended; handing them back"
                                        );
                                    }
                                    let late = std::mem::take(&mut claimed);
                                    let engine = w.engine.clone();
                                    tokio::spawn(async move { hand_back(&engine, late).await });
                                }
                                for mut c in claimed {
                                    for (id, change) in &changes {
                                        if *id == c.row.id {
                                            change.apply(&mut c.row);
                                        }
                                    }
                                    ends.insert(lease_key(&c.lease), until);
                                    ready.push_back(c);
                                }
                            }
                            Err(StoreError::Unusable(why)) => stop_unusable(&w, why),
                            Err(err) => {
                                claims_failing.failed(&err);
                                tokio::select! {
                                    _ = tokio::time::sleep(store_backoff) => {}
                                    _ = w.stop.cancelled() => {}
                                }
                                store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                            }
                        }
                    }
                    // A slot for a ready instance, or, with every slot
                    // taken and nothing claimed ahead, for the next claim.
                    _ = slots.acquire(), if ready > 0 || wanted == 0 => {}
                    _ = w.stop.cancelled() => {}
                }
                continue;
            }
            // Nap until the next waiting instance is due, polling at least
            // every poll_interval for work written by other processes.
            // Anything due before the last claim's `now` was claimable then.
            // Every workflow at its cap: a handler's end is what to wait for.
            let next_due = if open.is_empty() {
                Ok(None)
            } else {
                tokio::select! {
                    due = caught(inner.store.next_due(&open, claimed_at)) => due,
                    _ = w.stop.cancelled() => break,
                }
            };
            // Only a look that was made says the store answers again.
            if next_due.is_ok() && !open.is_empty() {
                due_failing.over();
            }
            let nap = match next_due {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(inner.now()).max(0) as u64)
                    .min(config.poll_interval),
                Ok(None) => config.poll_interval,
                Err(err) => {
                    // Said once, then once a minute: the loop comes here
                    // every poll interval while the store is down.
                    due_failing.failed(&err);
                    config.poll_interval
                }
            };
            let hinted = async {
                match wakeups.as_mut() {
                    Some(hint) => hint.changed().await.is_err(),
                    None => std::future::pending().await,
                }
            };
            let mut hint_closed = false;
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
                _ = crate::schedule::clock_jumped(&mut clock_changes) => {}
                closed = hinted => hint_closed = closed,
                Some(ran) = runs.join_next() => {
                    a_run_ended |= ran_a_handler(ran);
                    w.ahead_held_back.store(false, Ordering::Relaxed);
                }
                _ = slots.acquire(), if ready > 0 => {}
                _ = w.stop.cancelled() => {}
            }
            if hint_closed {
                // The store's listener is gone: back to polling alone.
                wakeups = None;
            }
            draining = true;
        }
        // The grace period counts from the stop, for everything below: a
        // store that hangs does not hold a shutdown past it (and a few
        // seconds to record outcomes), whatever the orchestrator allows.
        let stopped = tokio::time::Instant::now();
        let deadline = stopped
            .checked_add(config.shutdown_grace)
            .unwrap_or_else(|| stopped + FOREVER);
        // What was claimed ahead, and what a claim still in flight brings,
        // go back to the store for any worker to take at once, while
        // handlers finish.
        let ahead: Vec<Claimed> = lock(&w.ready).drain(..).collect();
        hand_back_later(&w, ahead, false);
        let engine = w.engine.clone();
        let give_up = w.give_up.clone();
        // A claim answers in milliseconds: even a grace of none waits a
        // little for one, whose instances would otherwise wait out their
        // leases.
        let claims_until = deadline.max(stopped + SETTLE_WITHIN);
        w.hand_backs.spawn(async move {
            let mut brought: Vec<Claimed> = Vec::new();
            let joined = tokio::time::timeout_at(claims_until, async {
                while let Some(joined) = claims.join_next().await {
                    if let Ok((Ok(claimed), _, _, _)) = joined {
                        brought.extend(claimed);
                    }
                }
            });
            if give_up.run_until_cancelled(joined).await.is_none_or(|j| j.is_err()) {
                claims.abort_all();
                tracing::warn!("a claim did not come back in time; what it claimed resumes when its leases expire");
            }
            give_up.run_until_cancelled(hand_back(&engine, brought)).await;
        });
        let left_running = drain(&w, &mut runs, deadline).await;
        drop(heartbeat);
        w.hand_backs.close();
        if tokio::time::timeout(SETTLE_WITHIN, w.hand_backs.wait())
            .await
            .is_err()
        {
            tracing::warn!("handing back instances claimed ahead is taking long; they resume when their leases expire");
            w.give_up.cancel();
        }
        drop(scheduler);
        // Its purge may wait on a store that does not answer.
        membership.leave(SETTLE_WITHIN).await;
        tracing::info!("worker stopped");
        left_running
    }
    .instrument(span)
    .await
}

/// Stops the handlers here of instances other processes cancel, as the
/// store hears of them (see `Store::cancellations`), instead of at their
/// next heartbeat. This process's own cancels come back too, and change
/// nothing more.
async fn hear_cancels(engine: Engine, mut heard: tokio::sync::broadcast::Receiver<InstanceId>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match heard.recv().await {
            Ok(id) => {
                tracing::debug!(%id, "heard of a cancel");
                engine.heard_cancel(&id);
                // The rest of a burst first: callers of children look
                // again once for all of it.
                while let Ok(id) = heard.try_recv() {
                    engine.heard_cancel(&id);
                }
                engine.inner.finished.ended_all();
            }
            // Missed ones are found by the heartbeat.
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "cancels went by unheard; the heartbeat finds them");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// A deadline past any shutdown (a grace of `Duration::MAX`).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Starts ready instances on the free slots; returns how many still wait.
fn start_ready(w: &Arc<WorkerShared>, slots: &Arc<Semaphore>, runs: &mut JoinSet<bool>) -> usize {
    let mut ready = lock(&w.ready);
    while !ready.is_empty() {
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            break;
        };
        if let Some(claimed) = ready.pop_front() {
            // Listed as running before the queue's lock is let go: a
            // cancel, pause or moved deadline looks in the queue and then
            // among the running, and finds it in one of them.
            let started = start_run(w, claimed);
            runs.spawn(run_claimed(Arc::clone(w), started, slot));
        }
    }
    ready.len()
}

/// A claimed instance, about to run.
enum Started {
    Run {
        run: Arc<RunShared>,
        def: Arc<dyn crate::workflow::ErasedWorkflow>,
        row: Box<crate::store::InstanceRow>,
        /// Its place in the lists of running instances, given up when
        /// dropped: with the run's task, even one never polled.
        listed: Listed,
    },
    /// Not registered here: handed back.
    Unknown(Lease),
    /// Interrupted too many times in a row: paused, not run.
    CrashLoop(Lease, crate::store::Suspend),
}

/// The workflows below their cap, and the groups claims take turns at,
/// each with how many it may take.
type ClaimGroups = (Vec<String>, Vec<(Vec<String>, usize)>);

/// With caps on workflows (`EngineBuilder::concurrency_of`): the
/// workflows below their cap, and the groups claims take turns at: the
/// uncapped workflows (any number), then each capped one below its cap
/// (what the cap leaves, counting those running here and claimed ahead).
/// One claim for all would be bounded by the smallest room left, a cap of
/// 1 making every claim take one instance. `None` without caps.
fn capped(w: &WorkerShared, workflows: &[String]) -> Option<ClaimGroups> {
    let caps = &w.engine.inner.config.caps;
    if caps.is_empty() {
        return None;
    }
    let mut held: HashMap<&str, usize> = HashMap::new();
    for run in lock(&w.running).values() {
        *held.entry(run.workflow).or_default() += 1;
    }
    for claimed in lock(&w.ready).iter() {
        if let Some((name, _)) = caps.get_key_value(claimed.row.workflow.as_str()) {
            *held.entry(name).or_default() += 1;
        }
    }
    let mut open = Vec::new();
    let mut uncapped = Vec::new();
    let mut groups = Vec::new();
    for name in workflows {
        match caps.get(name.as_str()) {
            None => uncapped.push(name.clone()),
            Some(cap) => {
                let left = cap.saturating_sub(held.get(name.as_str()).copied().unwrap_or(0));
                if left == 0 {
                    continue;
                }
                groups.push((vec![name.clone()], left));
            }
        }
        open.push(name.clone());
    }
    if !uncapped.is_empty() {
        groups.insert(0, (uncapped, usize::MAX));
    }
    Some((open, groups))
}

/// Lists `claimed` as running (for control operations to reach it), or
/// says it cannot run here.
fn start_run(w: &Arc<WorkerShared>, claimed: Claimed) -> Started {
    let Claimed {
        row,
        lease,
        steps,
        interrupted_runs,
    } = claimed;
    let inner = &w.engine.inner;
    let Some(def) = inner.workflows.get(row.workflow.as_str()).cloned() else {
        // Claimed only registered names; unreachable unless the store ignores the filter.
        return Started::Unknown(lease);
    };
    let over_limit = inner
        .config
        .max_interrupted_runs
        .is_some_and(|limit| interrupted_runs >= limit.max(1));
    // Past its deadline it runs, to end `TimedOut` at once: paused, it
    // would keep a waiting parent and its children waiting.
    if over_limit && row.deadline_at.is_none_or(|d| d > inner.now()) {
        let pause = crash_loop_pause(&row, &steps, interrupted_runs, inner.now());
        return Started::CrashLoop(lease, pause);
    }
    let step_options = def.step_options(inner.config.step_options);
    let run = Arc::new(RunShared::new(
        w.engine.clone(),
        &row,
        def.name(),
        lease,
        step_options,
        steps,
        interrupted_runs > 0,
    ));
    // An earlier run of the instance here, still winding down after its
    // lease lapsed, must not go on beside this one out of every list's
    // reach (heartbeat, cancel, shutdown).
    for running in [&w.running, &inner.running] {
        if let Some(earlier) = lock(running).insert(row.id.clone(), Arc::clone(&run)) {
            earlier.interrupt(Interrupt::LeaseLost, Settlement::Plain);
        }
    }
    Started::Run {
        listed: Listed {
            worker: Arc::clone(w),
            run: Arc::clone(&run),
        },
        run,
        def,
        row: Box::new(row),
    }
}

/// The pause of an instance whose runs kept being interrupted, with the
/// last step it recorded: the one it runs next is the likely culprit.
fn crash_loop_pause(
    row: &crate::store::InstanceRow,
    steps: &[crate::store::StepRow],
    interrupted: u32,
    at: Millis,
) -> crate::store::Suspend {
    let after = match steps.last() {
        Some(step) => format!("after step `{}`", step.key),
        None => "before its first step was recorded".to_owned(),
    };
    let reason = format!(
        "paused after {interrupted} interrupted run{} in a row: each time the process running it \
         died or lost its lease {after} (a step that crashes the process?); resume it once fixed",
        if interrupted == 1 { "" } else { "s" }
    );
    tracing::error!(id = %row.id, workflow = %row.workflow, interrupted, "{reason}");
    crate::store::Suspend {
        status: Status::Paused,
        run_at: at,
        wait_event: None,
        wait_child: None,
        // A step backing off keeps its count of attempts.
        retry: row.retry.clone(),
        state: None,
        reason,
        at,
    }
}

/// How long a shutdown waits, past the grace period, for stopped handlers
/// to record how far they got and for claimed instances to be handed
/// back: a store that does not answer by then leaves them to their
/// leases' expiry.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);

/// Waits for the running handlers until `deadline`, then stops them;
/// true if some did not stop (they block their threads).
async fn drain(w: &WorkerShared, runs: &mut JoinSet<bool>, deadline: tokio::time::Instant) -> bool {
    if !runs.is_empty() {
        let grace = deadline.saturating_duration_since(tokio::time::Instant::now());
        tracing::info!(
            running = runs.len(),
            ?grace,
            "waiting for running steps, then handing instances back"
        );
    }
    // Steps running finish; no new one starts (see `RunShared::drain`).
    for run in lock(&w.running).values() {
        run.drain();
    }
    let all_done = async { while runs.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        let running: Vec<_> = lock(&w.running).values().cloned().collect();
        tracing::warn!(
            stopped = running.len(),
            "grace period over, stopping handlers"
        );
        for run in running {
            run.interrupt(Interrupt::Shutdown, Settlement::Plain);
        }
        let settled = async { while runs.join_next().await.is_some() {} };
        if tokio::time::timeout(SETTLE_WITHIN, settled).await.is_err() {
            tracing::warn!(
                left = runs.len(),
                "stopped handlers did not hand their instances back in time (a handler blocking its thread, or a store not answering); they resume when their leases expire"
            );
            runs.abort_all();
            // An aborted task stops at its next await; one that blocks its
            // thread runs on.
            let aborted = async { while runs.join_next().await.is_some() {} };
            return tokio::time::timeout(Duration::from_secs(1), aborted)
                .await
                .is_err();
        }
    }
    false
}

/// A worker id in [`LIVE`] for as long as the worker's task lives.
struct LiveId(String);

impl Drop for LiveId {
    fn drop(&mut self) {
        lock(&LIVE).remove(&self.0);
    }
}

async fn heartbeat_loop(w: Arc<WorkerShared>) {
    let inner = &w.engine.inner;
    // Often enough that a cancel or a moved deadline from another process
    // reaches the handler within about a second.
    let every = (inner.config.lease / 3).min(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut renewals_failing = Outage::new(&w.engine, "renewing leases");
    // Claims ahead (instance, run) still waiting at the last tick.
    let mut waiting: HashSet<(InstanceId, i64)> = HashSet::new();
    // The last look for dead workers' leases, while it runs; stopped with
    // the heartbeat (a detached one would go on after the worker stopped,
    // taking its own id, no longer live, for a dead worker's).
    let mut reaping: Option<AbortOnDropHandle<()>> = None;
    loop {
        tokio::time::sleep(until_next_look(&w, every)).await;
        ticks += 1;
        let now = (lease_now(), now_millis());
        let (runs, leases, earliest) = {
            let mut ends = lock(&w.lease_ends);
            // The queue before the running: an instance started between
            // the two looks is then in one of them at least.
            let ready: Vec<Lease> = lock(&w.ready).iter().map(|c| c.lease.clone()).collect();
            let runs: Vec<Arc<RunShared>> = lock(&w.running).values().cloned().collect();
            let held: HashSet<(InstanceId, i64)> = runs
                .iter()
                .map(|r| lease_key(&r.lease))
                .chain(ready.iter().map(lease_key))
                .collect();
            ends.retain(|key, _| held.contains(key));
            // Unknown: ended (never renewed here).
            let left = |lease: &Lease| {
                ends.get(&lease_key(lease))
                    .map_or(Duration::ZERO, |end| end.left_at(now))
            };
            // A lease that ended already is not renewed: another worker
            // may hold the instance now. Its handler stops below.
            let runs: Vec<Arc<RunShared>> = runs
                .into_iter()
                .filter(|r| !left(&r.lease).is_zero())
                .collect();
            let mut leases: Vec<Lease> = runs.iter().map(|r| r.lease.clone()).collect();
            leases.extend(ready.into_iter().filter(|l| !left(l).is_zero()));
            let earliest = leases.iter().map(left).min();
            (runs, leases, earliest)
        };
        stop_lapsed(&w);
        // Taken before the store is read: see `RunShared::pause_as_stored`
        // and `RunShared::deadline_as_stored`.
        let seen: Vec<(u64, u64)> = runs
            .iter()
            .map(|r| (r.pause_seen(), r.deadline_seen()))
            .collect();
        if let Some(left) = earliest {
            // Both clocks read before the store call.
            let until = LeaseEnd::after(now, inner.config.lease);
            // Bounded by the leases held: a renewal still hanging when the
            // first of them ends (a store retrying, a connection gone
            // quiet) cannot keep its handler running past it.
            match tokio::time::timeout(left, caught(inner.store.renew(&leases, until.wall))).await {
                Ok(Ok(renewals)) => {
                    renewals_failing.over();
                    // A store may keep an end it had (still most
                    // of a lease away) rather than extend it: that end, as
                    // far short of `until` as it is of what was asked.
                    let end = |renewal: &Renewal| {
                        until.short_by(until.wall.saturating_sub(renewal.until).max(0))
                    };
                    let mut ends = lock(&w.lease_ends);
                    for renewal in &renewals {
                        if renewal.held {
                            ends.insert(lease_key(&renewal.lease), end(renewal));
                        }
                    }
                    drop(ends);
                    for renewal in renewals {
                        let until = end(&renewal);
                        match runs.iter().position(|r| r.lease == renewal.lease) {
                            Some(at) => apply_renewal(&runs[at], &renewal, until, seen[at]),
                            None => renew_ready(&w, &renewal, until),
                        }
                    }
                }
                // Every slot may be busy with long steps, and no claim made:
                // the heartbeat tells too.
                Ok(Err(StoreError::Unusable(why))) => stop_unusable(&w, why),
                Ok(Err(err)) => {
                    renewals_failing.failed(&err);
                    stop_lapsed(&w);
                }
                Err(_) => {
                    renewals_failing.failed(&"no answer before the first lease lapsed");
                    stop_lapsed(&w);
                }
            }
        }
        // After the renewal, and without waiting for the store: the
        // leases of running handlers must not wait behind hand-backs.
        waiting = hand_back_waiting(&w, &waiting);
        // On a task of its own, for the same reason; one look at a time.
        if ticks.is_multiple_of(3) && reaping.as_ref().is_none_or(|r| r.is_finished()) {
            let w = Arc::clone(&w);
            reaping = Some(AbortOnDropHandle::new(tokio::spawn(
                async move { reap_dead_owners(&w).await }.in_current_span(),
            )));
        }
    }
}

/// The key of a lease in [`WorkerShared::lease_ends`].
fn lease_key(lease: &Lease) -> (InstanceId, i64) {
    (lease.instance.clone(), lease.run)
}

/// Hands back to the store the instances claimed ahead that were already
/// waiting at the last heartbeat (`waiting`): every slot has stayed busy
/// since (long handlers), and a worker with a free slot, here or in
/// another process, should run them now rather than this one later (a
/// woken sleeper, a delivered event would otherwise wait behind long
/// steps, their deadlines running). Returns what waits now.
///
/// The releases run on a task of their own: a store that hangs must not
/// hold up the heartbeat, whose renewals keep the running handlers' leases.
fn hand_back_waiting(
    w: &WorkerShared,
    waiting: &HashSet<(InstanceId, i64)>,
) -> HashSet<(InstanceId, i64)> {
    let key = |c: &Claimed| (c.row.id.clone(), c.lease.run);
    let mut ready = lock(&w.ready);
    let (stale, kept): (VecDeque<Claimed>, VecDeque<Claimed>) = std::mem::take(&mut *ready)
        .into_iter()
        .partition(|c| waiting.contains(&key(c)));
    *ready = kept;
    let now_waiting = ready.iter().map(key).collect();
    drop(ready);
    if !stale.is_empty() {
        w.ahead_held_back.store(true, Ordering::Relaxed);
        tracing::debug!(
            count = stale.len(),
            "handing back instances claimed ahead: every slot stayed busy"
        );
        hand_back_later(w, stale, true);
    }
    now_waiting
}

/// Gives `claimed` back on a task of the worker's own (given up with its
/// shutdown), then, if `wake`, wakes the workers here to take them: every
/// one napping now, and (a permit kept) one between two naps.
fn hand_back_later<C>(w: &WorkerShared, claimed: C, wake: bool)
where
    C: IntoIterator<Item = Claimed> + Send + 'static,
    C::IntoIter: Send,
{
    let engine = w.engine.clone();
    let give_up = w.give_up.clone();
    w.hand_backs.spawn(async move {
        give_up
            .run_until_cancelled(hand_back(&engine, claimed))
            .await;
        if wake {
            engine.inner.wake.notify_waiters();
            engine.inner.wake.notify_one();
        }
    });
}

/// A store call a loop makes again and again (claims, renewals), logged as
/// an outage: at error when it first fails, then once a minute while it
/// goes on (each failure between at debug), and at info when it works
/// again. A database down must not write a line per heartbeat and claim
/// of every worker, nor hide that it is still down.
pub(crate) struct Outage {
    what: std::borrow::Cow<'static, str>,
    /// When it began, how many failures so far, when last said at error.
    since: Option<(Instant, u64, Instant)>,
    /// Whose [`Engine::health`] reports it, under its entry's number.
    engine: Engine,
    entry: u64,
}

/// How often an ongoing [`Outage`] is said again.
const OUTAGE_REPEAT: Duration = Duration::from_secs(60);

impl Outage {
    pub(crate) fn new(engine: &Engine, what: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Outage {
            what: what.into(),
            since: None,
            engine: engine.clone(),
            entry: engine.inner.health.entry(),
        }
    }

    pub(crate) fn failed(&mut self, err: &dyn std::fmt::Display) {
        let what = &self.what;
        self.engine
            .inner
            .health
            .failed(self.entry, what, crate::error::logged(&err.to_string()));
        match &mut self.since {
            None => {
                tracing::error!(error = %err, "{what} failed; trying again");
                let now = Instant::now();
                self.since = Some((now, 1, now));
            }
            Some((began, failures, said)) => {
                *failures += 1;
                if said.elapsed() >= OUTAGE_REPEAT {
                    *said = Instant::now();
                    tracing::error!(error = %err, failures = *failures, for_secs = began.elapsed().as_secs(), "{what} still failing");
                } else {
                    tracing::debug!(error = %err, "{what} failed again");
                }
            }
        }
    }

    pub(crate) fn over(&mut self) {
        if let Some((began, failures, _)) = self.since.take() {
            self.engine.inner.health.over(self.entry);
            let what = &self.what;
            tracing::info!(
                failures,
                for_secs = began.elapsed().as_secs(),
                "{what} works again"
            );
        }
    }
}

/// A running worker, as [`Engine::health`] counts it.
struct Counted(Engine);

impl Counted {
    fn new(engine: &Engine) -> Self {
        engine.inner.health.workers.fetch_add(1, Ordering::SeqCst);
        Counted(engine.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.inner.health.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Outage {
    /// A loop that stopped fails no more.
    fn drop(&mut self) {
        self.engine.inner.health.over(self.entry);
    }
}

/// Gives instances claimed ahead back to the store, for any worker to take.
async fn hand_back(engine: &Engine, claimed: impl IntoIterator<Item = Claimed>) {
    for c in claimed {
        match engine
            .inner
            .store
            .release(&c.lease, engine.inner.now())
            .await
        {
            Ok(()) => {}
            // Cancelled, or taken over, meanwhile: nothing to hand back.
            Err(StoreError::LeaseLost(_)) => {}
            Err(err) => {
                tracing::warn!(id = %c.row.id, error = %err, "handing back a claimed instance failed; it resumes when its lease expires");
            }
        }
    }
}

/// When a lease held here ends, by two clocks; it has ended once either
/// says so. The monotonic one ([`lease_now`]) because NTP may step the
/// wall clock back while the store cannot be reached, and a handler would
/// run on past the end the store dated; the wall clock because the
/// monotonic one stops while the machine is suspended, and a handler
/// would run on after a resume though the store's clock went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseEnd {
    pub mono: Millis,
    pub wall: Millis,
}

impl LeaseEnd {
    /// A lease of `length` asked at `(lease_now(), now_millis())`.
    fn after((mono, wall): (Millis, Millis), length: Duration) -> Self {
        LeaseEnd {
            mono: crate::store::millis_after(mono, length),
            wall: crate::store::millis_after(wall, length),
        }
    }

    /// The same end, `short` milliseconds earlier.
    fn short_by(self, short: Millis) -> Self {
        LeaseEnd {
            mono: self.mono.saturating_sub(short),
            wall: self.wall.saturating_sub(short),
        }
    }

    /// How long it has left at `(lease_now(), now_millis())`: zero once it
    /// passed by either clock.
    fn left_at(&self, (mono, wall): (Millis, Millis)) -> Duration {
        let left = (self.mono - mono).min(self.wall - wall);
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }

    /// Whether it passed, by either clock.
    pub(crate) fn passed(&self) -> bool {
        self.left_at((lease_now(), now_millis())).is_zero()
    }
}

/// Now, by the monotonic clock a worker judges its leases with (besides
/// the wall clock, see [`LeaseEnd`]): milliseconds since this process
/// first asked.
pub(crate) fn lease_now() -> Millis {
    static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    // From 1: a lease end of 0 is "not known yet", and has always ended.
    Millis::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(Millis::MAX)
        .saturating_add(1)
}

/// How long the heartbeat sleeps: a tick (`every`), or less when a lease
/// held here ends sooner. Looked at only at ticks, an unrenewed lease (the
/// store unreachable) would run on past its end, by up to a tick when the
/// lease is no multiple of it, beside the worker that took the instance
/// over; so the heartbeat wakes at that end, and stops its handler there.
fn until_next_look(w: &WorkerShared, every: Duration) -> Duration {
    let now = (lease_now(), now_millis());
    let next_end = lock(&w.lease_ends)
        .values()
        .map(|end| end.left_at(now))
        .filter(|left| !left.is_zero())
        .min();
    next_end.map_or(every, |left| every.min(left))
}

/// Leases that ended by `now` without a renewal (the store could not be
/// reached, or took too long to answer): another worker may have taken
/// their instances over, so none of them may run on here. Stops their
/// handlers (their next commit would be refused anyway) and drops those
/// claimed ahead; the store hands them out again once reachable. Leases
/// claimed or renewed since keep running.
fn stop_lapsed(w: &WorkerShared) {
    let ends = lock(&w.lease_ends);
    let lapsed = |lease: &Lease| ends.get(&lease_key(lease)).is_none_or(LeaseEnd::passed);
    let lapsed_ahead: VecDeque<Claimed> = {
        let mut ready = lock(&w.ready);
        let (lapsed_ahead, kept) = std::mem::take(&mut *ready)
            .into_iter()
            .partition(|c| lapsed(&c.lease));
        *ready = kept;
        lapsed_ahead
    };
    let dropped = lapsed_ahead.len();
    let stopped: Vec<Arc<RunShared>> = lock(&w.running)
        .values()
        .filter(|r| lapsed(&r.lease) && !r.stop.is_cancelled())
        .cloned()
        .collect();
    drop(ends);
    if stopped.is_empty() && dropped == 0 {
        return;
    }
    tracing::warn!(
        stopped = stopped.len(),
        dropped,
        "leases lapsed without a renewal (the store unreachable or slow); stopping their handlers"
    );
    for run in stopped {
        run.interrupt(Interrupt::LeaseLost, Settlement::Lapsed);
    }
    if !lapsed_ahead.is_empty() {
        // Never started: handed back as a running one is (fenced by the
        // lease), so their next claim does not count a run cut short.
        hand_back_later(w, lapsed_ahead, false);
    }
}

/// Tells a running handler what its lease renewal found; `seen` is the
/// run's local pause changes and deadline moves when the renewal was sent.
fn apply_renewal(
    run: &RunShared,
    renewal: &Renewal,
    until: LeaseEnd,
    (pause_seen, deadline_seen): (u64, u64),
) {
    if renewal.held {
        run.lease_end.raise(until);
        run.pause_as_stored(renewal.pause_requested, pause_seen);
        run.deadline_as_stored(renewal.deadline_at, deadline_seen);
    } else {
        tracing::warn!(id = %renewal.lease.instance, "lease lost (cancelled, or taken over); stopping handler");
        run.interrupt(Interrupt::LeaseLost, Settlement::Plain);
    }
}

/// Applies a renewal to an instance claimed ahead that has not started: it
/// does not start if its lease is gone, and a pause asked for elsewhere
/// pauses it before its first step. Its deadline is left as it is: the
/// renewal read it before changes this process may have made since
/// (`update_claimed_ahead`), which it would undo; one moved elsewhere
/// reaches it from its first heartbeat, as it reaches any running
/// instance. (A pause read before a resume made here since would pause it
/// once more: the one change a renewal cannot tell apart.)
fn renew_ready(w: &WorkerShared, renewal: &Renewal, until: LeaseEnd) {
    let mut ready = lock(&w.ready);
    let Some(at) = ready.iter().position(|c| c.lease == renewal.lease) else {
        drop(ready);
        // Started since (its run read the lease's end before this renewal
        // wrote it, maybe): its steps must see the renewed end, or a short
        // lease would end for them before the next heartbeat renews it as
        // running.
        if renewal.held {
            if let Some(run) = lock(&w.running).get(&renewal.lease.instance) {
                if run.lease == renewal.lease {
                    run.lease_end.raise(until);
                }
            }
        }
        return;
    };
    if renewal.held {
        ready[at].row.pause_requested |= renewal.pause_requested;
    } else {
        tracing::info!(id = %renewal.lease.instance, "lease lost before the instance started (cancelled, or taken over)");
        ready.remove(at);
    }
}

/// Frees the leases of workers on this host whose process is gone, so a
/// restarted process resumes its instances at once instead of waiting for
/// the leases to expire. Workers on other hosts are left to lease expiry.
async fn reap_dead_owners(w: &WorkerShared) {
    let store = &w.engine.inner.store;
    let owners = match store.lease_owners().await {
        Ok(owners) => owners,
        Err(err) => {
            // Every three heartbeats: a store down is said by the claims'
            // and renewals' outages already, once a minute.
            tracing::debug!(error = %err, "listing lease owners failed");
            return;
        }
    };
    for owner in owners.into_iter().filter(|o| owner_is_dead(o)) {
        match store.release_owner(&owner, w.engine.inner.now()).await {
            Ok(0) => {}
            Ok(freed) => tracing::info!(%owner, freed, "took over instances of a dead worker"),
            Err(err) => {
                tracing::warn!(%owner, error = %err, "releasing a dead worker's leases failed")
            }
        }
    }
}

fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.splitn(3, '/');
    let (Some(host), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != self::host() {
        return false;
    }
    if pid == std::process::id() {
        return !lock(&LIVE).contains(owner);
    }
    // On Linux without a readable boot id and pid namespace, the host part
    // is the bare host name, which containers sharing it all have: their
    // pids cannot be compared, so the leases are left to expire.
    if cfg!(target_os = "linux") && !HOST_HAS_PLACE.load(Ordering::Relaxed) {
        return false;
    }
    !process_alive(pid)
}

/// Whether [`host`] names this boot and pid namespace, not only the host name.
static HOST_HAS_PLACE: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // Signal 0 checks existence without delivering anything.
    // SAFETY: kill with signal 0 has no effect on the target process.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    // No cheap check: leave it to lease expiry.
    true
}

/// Where this process runs, as the first part of its workers' lease
/// owners: only owners naming the same place may be judged dead by their
/// pid ([`owner_is_dead`]). A host name alone is not enough: machines
/// cloned from one image, or containers sharing the host's name (host
/// networking), would each read the other's pids as dead and take over
/// leases that are alive. So on Linux it also names this boot of the
/// machine (the first bytes of `/proc/sys/kernel/random/boot_id`) and,
/// inside a container, its pid namespace, whose pids mean nothing outside.
/// Elsewhere it is the host name, as it was.
fn host() -> &'static str {
    static HOST: LazyLock<String> = LazyLock::new(|| {
        let name = hostname();
        match place() {
            Some(place) => {
                HOST_HAS_PLACE.store(true, Ordering::Relaxed);
                format!("{name}~{place}")
            }
            None => name,
        }
    });
    &HOST
}

/// This boot of the machine and, unless it is the initial one, this pid
/// namespace: `1a2b3c4d` or `1a2b3c4d-4026532281`.
#[cfg(target_os = "linux")]
fn place() -> Option<String> {
    // The kernel numbers the initial pid namespace with this fixed inode.
    const INITIAL_PID_NAMESPACE: &str = "4026531836";
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot: String = boot
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    if boot.len() < 8 {
        return None;
    }
    // `pid:[4026532281]`
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let namespace: String = namespace
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    Some(
        if namespace.is_empty() || namespace == INITIAL_PID_NAMESPACE {
            boot
        } else {
            format!("{boot}-{namespace}")
        },
    )
}

#[cfg(not(target_os = "linux"))]
fn place() -> Option<String> {
    None
}

fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).replace('/', "_");
        }
    }
    "localhost".to_owned()
}

/// Runs a claimed instance; returns whether its handler ran (an unknown
/// workflow or a crash loop's pause does not).
async fn run_claimed(w: Arc<WorkerShared>, started: Started, slot: OwnedSemaphorePermit) -> bool {
    let inner = &w.engine.inner;
    let (run, def, row, listed) = match started {
        Started::Run {
            run,
            def,
            row,
            listed,
        } => (run, def, *row, listed),
        Started::Unknown(lease) => {
            if let Err(err) = inner.store.release(&lease, inner.now()).await {
                tracing::warn!(id = %lease.instance, error = %err, "handing back an instance of a workflow not registered here failed; it resumes when its lease expires");
            }
            return false;
        }
        Started::CrashLoop(lease, pause) => {
            drop(slot);
            settle(&w, &lease, Settle::Suspend(pause)).await;
            return false;
        }
    };
    let lease = run.lease.clone();
    // Read here, not where the run was listed (under the queue's lock,
    // which the lease ends' lock must not follow); a renewal meanwhile
    // raised it already, hence the max.
    if let Some(end) = lock(&w.lease_ends).get(&lease_key(&lease)) {
        run.lease_end.raise(*end);
    }
    // Its own worker too: the task is spawned outside the worker's span.
    let span = tracing::error_span!(
        "workflow",
        workflow = %row.workflow,
        id = %row.id,
        run = lease.run,
        worker = %w.id
    );
    async {
        let mut finish = execute(&run, def.as_ref(), row.input).await;
        // Whatever ended the run, tasks the handler spawned with ctx.signal() stop too.
        run.stop.cancel();
        if matches!(&finish, Settle::Finish(f) if f.status == Status::TimedOut)
            && deadline_moved_on(inner.store.as_ref(), &row.id, inner.now()).await
        {
            finish = Settle::Release;
        }
        drop(listed);
        drop(slot);
        let timed_out = matches!(&finish, Settle::Finish(f) if f.status == Status::TimedOut);
        if settle(&w, &lease, finish).await && timed_out {
            // The store cancelled its unfinished descendants with it.
            w.engine.stop_local_descendants(&row.id);
            inner.finished.ended_all();
        }
        inner.finished.ended(&row.id);
        // A finished child may have woken its parent; a suspended instance
        // whose event was already there is due now.
        inner.wake.notify_one();
    }
    .instrument(span)
    .await;
    true
}

/// How long an instance whose run a store error stopped waits before it
/// runs again. Released at once, it was claimed again at once: an error
/// that does not go away (a damaged row of another instance it reads)
/// made a loop at the store's speed, two history events per turn.
const STORE_FAILED_RETRY: Duration = Duration::from_secs(5);

/// Takes a run off the lists of running instances when dropped: when its
/// outcome is known, or by a panic on the way there (a store, or the
/// state's `Serialize`, panicking outside the handler's own guard). A run
/// left listed would have its lease renewed for as long as the process
/// lives, and no other worker could take its instance.
struct Listed {
    worker: Arc<WorkerShared>,
    run: Arc<RunShared>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.run.stop.cancel();
        // Only this run's entry: if this worker claimed the instance again
        // (its lease lapsed while this handler hung), the newer run's stays.
        for running in [&self.worker.engine.inner.running, &self.worker.running] {
            let mut running = lock(running);
            if running
                .get(&self.run.id)
                .is_some_and(|r| Arc::ptr_eq(r, &self.run))
            {
                running.remove(&self.run.id);
            }
        }
    }
}

/// Whether a run task ran a handler; a panic that escaped it is logged.
fn ran_a_handler(joined: Result<bool, tokio::task::JoinError>) -> bool {
    joined.unwrap_or_else(|err| {
        tracing::error!(error = %err, "a run's task panicked outside its handler");
        false
    })
}

/// Whether the store holds a deadline still ahead: moved by another
/// process since the last heartbeat brought the deadline here. The run is
/// then handed back, to replay under the new deadline, instead of ending
/// `TimedOut`. A store error counts as no: the deadline this worker knows
/// has passed.
async fn deadline_moved_on(store: &dyn crate::store::Store, id: &InstanceId, now: Millis) -> bool {
    match store.get(id).await {
        Ok(Some(row)) if row.deadline_at.is_some_and(|at| at > now) => {
            tracing::info!("the deadline was moved elsewhere; handing the instance back to run on");
            true
        }
        _ => false,
    }
}

/// The instance ends `TimedOut` at `at`.
fn time_out(at: crate::store::Millis) -> Settle {
    Settle::Finish(Finish {
        status: Status::TimedOut,
        output: None,
        error: Some("deadline passed before the workflow finished".to_owned()),
        state: None,
        at,
    })
}

/// What to do with the instance once its handler stopped.
enum Settle {
    Finish(Finish),
    Suspend(Suspend),
    Release,
    Abandon,
}

/// Resolves when the run's deadline passes, following moves of the deadline.
async fn deadline_passed(run: &RunShared) {
    let mut deadline = run.deadline.subscribe();
    loop {
        let at = *deadline.borrow_and_update();
        let Some(at) = at else {
            if deadline.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            continue;
        };
        // By the engine's clock, which a test may move by hand; it decides,
        // not the timer: re-check in case it slept short.
        tokio::select! {
            _ = run.engine.inner.sleep_until(at) => {
                if run.now() >= at {
                    return;
                }
            }
            _ = deadline.changed() => {}
        }
    }
}

async fn execute(
    run: &Arc<RunShared>,
    def: &dyn crate::workflow::ErasedWorkflow,
    input: String,
) -> Settle {
    // Claimed at or past its deadline (a wait capped at the deadline, or a
    // deadline moved while it waited): it ends here. The handler would only
    // wait again, and its timer may not fire before it suspends.
    let now = run.now();
    if run.deadline.borrow().is_some_and(|at| at <= now) {
        return time_out(now);
    }
    run.note_handler_task();
    let handler = AssertUnwindSafe(def.run(Arc::clone(run), input)).catch_unwind();
    let timed_out = deadline_passed(run);
    enum End {
        Returned(crate::workflow::HandlerEnd),
        Panicked(String),
        Stopped,
        TimedOut,
    }
    let end = tokio::select! {
        biased;
        _ = run.stop.cancelled() => End::Stopped,
        _ = timed_out => End::TimedOut,
        out = handler => match out {
            Ok(end) => End::Returned(end),
            Err(payload) => End::Panicked(panic_message(&*payload)),
        },
    };
    let at = run.now();
    let finish = |status, output, error: Option<String>, state| {
        Settle::Finish(Finish {
            status,
            output,
            error: error.map(crate::error::stored),
            state,
            at,
        })
    };
    // A suspension the handler left unsettled (its deadline came first,
    // or it returned while a spawned task's wait was in it) is not the
    // outcome: the end is.
    let interrupt = run.outcome_interrupt();
    if let Some((why, settlement)) = interrupt {
        // A handler that returned right after `ctx.complete`/`ctx.fail`
        // took the state's last change with it; one stopped before that
        // left it to the settlement.
        let (returned_state, panicked) = match end {
            // A state that panicked as it was read fails the instance.
            End::Returned(end) => (end.state, end.state_panicked),
            // The handler's own panic after `complete`/`fail` (an unwrap of
            // a later call, which returns `Interrupted`) leaves the outcome
            // it gave.
            End::Panicked(message) => {
                tracing::error!(panic = %crate::error::logged(&message), "handler panicked after giving its outcome");
                (None, None)
            }
            _ => (None, None),
        };
        return match (why, settlement) {
            // Stopped while noting that a value did not read at its first
            // reading: left to lapse, the next run counts as following one
            // cut short and reads the value as for the first time, instead
            // of taking it for a change of code (see `Ctx::unreadable`).
            (Interrupt::Store(_) | Interrupt::Shutdown, _)
            | (Interrupt::LeaseLost, Settlement::Lapsed)
                if run.note_pending.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                tracing::warn!("stopped while noting an unreadable value; the instance resumes when its lease lapses");
                Settle::Abandon
            }
            (Interrupt::Suspended, Settlement::Suspend(mut suspend)) => {
                if suspend.status != Status::Paused {
                    suspend.run_at = suspend.run_at.min(run.due_beside(at));
                }
                Settle::Suspend(suspend)
            }
            // The settlement serializes the state and the output is read
            // back here, after the handler's guard: user serde code that
            // panics must end the run as a panicking handler does, not
            // unwind the task and leave the instance to lapse and rerun.
            (Interrupt::Completed, settlement) => match guarded(|| {
                let (output, state) = settlement.ended();
                let output = output.unwrap_or_else(|| "null".to_owned());
                let checked = def.check_output(&output);
                (output, state, checked)
            }) {
                Ok((_, _, _)) if panicked.is_some() => finish(Status::Failed, None, panicked, None),
                Ok((output, state, Ok(()))) => finish(
                    Status::Completed,
                    Some(output),
                    None,
                    state.or(returned_state),
                ),
                Ok((_, state, Err(message))) => finish(
                    Status::Failed,
                    None,
                    Some(message),
                    state.or(returned_state),
                ),
                Err(panic) => finish(Status::Failed, None, Some(panic), None),
            },
            (Interrupt::Failed(reason), settlement) => {
                match (guarded(|| settlement.ended().1), panicked) {
                    (Ok(state), None) => {
                        finish(Status::Failed, None, Some(reason), state.or(returned_state))
                    }
                    (Err(panic), _) | (Ok(_), Some(panic)) => finish(
                        Status::Failed,
                        None,
                        Some(format!("{reason}; {panic}")),
                        None,
                    ),
                }
            }
            // Steps backing off in memory: the row must name one, so that
            // the next run counts their attempts on from the history (a
            // step beside them that succeeded cleared the row's note).
            (Interrupt::Shutdown, _) if run.backing_off().is_some() => {
                Settle::Suspend(run.resume_later(
                    at,
                    Duration::ZERO,
                    "engine shut down while a step backed off".to_owned(),
                ))
            }
            (Interrupt::LeaseLost, Settlement::Lapsed) if run.backing_off().is_some() => {
                Settle::Suspend(run.resume_later(
                    at,
                    Duration::ZERO,
                    "lease lapsed unrenewed while a step backed off".to_owned(),
                ))
            }
            // `Ended` is never stored: only a check after the run makes it.
            // A lease that lapsed here alone is handed back: the store
            // fences the hand-back by the lease, so one another worker
            // took meanwhile is left alone.
            (Interrupt::Shutdown | Interrupt::Suspended | Interrupt::Ended, _)
            | (Interrupt::LeaseLost, Settlement::Lapsed) => Settle::Release,
            // The store already says Cancelled, or another worker owns it.
            (Interrupt::Cancelled | Interrupt::LeaseLost, _) => Settle::Abandon,
            (Interrupt::Store(message), Settlement::Suspend(pause)) => {
                tracing::error!(error = %message, "a row the run needs cannot be read; pausing the instance");
                Settle::Suspend(pause)
            }
            (Interrupt::Store(message), _) => {
                tracing::warn!(error = %message, retry_in = ?STORE_FAILED_RETRY, "store failed under a running handler; it resumes later");
                Settle::Suspend(run.resume_later(
                    at,
                    STORE_FAILED_RETRY,
                    format!("store unavailable: {message}"),
                ))
            }
        };
    }
    match end {
        End::Returned(end) => match (end.result, end.state_panicked) {
            (Ok(output), None) => finish(Status::Completed, Some(output), None, end.state),
            (Err(error), None) => match pause_for_missing_data(run, None) {
                Some(pause) => Settle::Suspend(pause),
                None => finish(Status::Failed, None, Some(error), end.state),
            },
            (result, Some(panicked)) => {
                let error = match result {
                    Ok(_) => panicked,
                    Err(error) => format!("{error}; {panicked}"),
                };
                finish(Status::Failed, None, Some(error), None)
            }
        },
        End::Panicked(message) => {
            // `ctx.data::<T>().expect(..)` of a value the engine lacks.
            if let Some(pause) = pause_for_missing_data(run, Some(&message)) {
                return Settle::Suspend(pause);
            }
            tracing::error!(panic = %crate::error::logged(&message), "handler panicked");
            finish(
                Status::Failed,
                None,
                Some(format!("handler panicked: {message}")),
                None,
            )
        }
        End::TimedOut => time_out(at),
        // Interrupts always set a reason first, and handlers only get child
        // tokens (`Ctx::signal`): if this happens anyway, hand the instance
        // back rather than guess at an outcome.
        End::Stopped => {
            tracing::error!("handler stopped without a reason; releasing the instance");
            Settle::Release
        }
    }
}

/// A pause instead of a failure, when the handler returned the error of a
/// value the engine was not given ([`Ctx::data`](crate::Ctx::data), outside
/// a step), or panicked on it (`panic`, as `.expect(..)` does): the setup
/// needs a fix, after which the instance can go on.
fn pause_for_missing_data(run: &RunShared, panic: Option<&str>) -> Option<crate::store::Suspend> {
    let missing = lock(&run.missing_data).clone()?;
    let on_it = match panic {
        None => run.returned_missing_data.load(Ordering::SeqCst),
        Some(panic) => panic.contains(&missing),
    };
    on_it.then(|| {
        run.pause_for_fix(format!(
            "paused: {missing}. Deploy code that gives it and resume the instance, or cancel it"
        ))
    })
}

/// Runs user code (serde impls) outside the handler's guard, a panic
/// becoming the reason the instance failed (`handler panicked: ..`).
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(&*payload);
        tracing::error!(panic = %crate::error::logged(&message), "handler panicked");
        format!("handler panicked: {message}")
    })
}

/// A store call of a background task whose panic (a bug of a custom
/// store) is an error of that call: the task lives on. The heartbeat above
/// all: were it to die, no lease would be renewed and no handler stopped
/// when its lease lapsed, while another worker took the instance over.
pub(crate) async fn caught<T, E: From<StoreError>>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            Err(
                StoreError::backend(format!("the store panicked: {}", panic_message(&*payload)))
                    .into(),
            )
        })
}

/// Records how the run ended; true if the store took it.
async fn settle(w: &WorkerShared, lease: &Lease, settle: Settle) -> bool {
    let store = &w.engine.inner.store;
    let result = match settle {
        Settle::Finish(finish) => {
            let status = finish.status;
            // A failure is worth a warning, with why (cut: the instance
            // keeps more); a completion, at tens of thousands a
            // second, only a debug line.
            let error = (status != Status::Completed)
                .then(|| crate::error::logged(finish.error.as_deref().unwrap_or("")));
            let result = store.finish(lease, finish).await;
            if result.is_ok() {
                // The id on the event itself too, not only on the run's
                // span: log pipelines that drop span fields (OpenTelemetry's
                // log bridge) would say an instance failed, not which.
                let id = &lease.instance;
                match error {
                    Some(error) => tracing::warn!(%id, %status, %error, "instance ended"),
                    None => tracing::debug!(%id, %status, "instance finished"),
                }
            }
            result
        }
        Settle::Suspend(suspend) => store.suspend(lease, suspend).await,
        Settle::Release => store.release(lease, w.engine.inner.now()).await,
        Settle::Abandon => Ok(()),
    };
    match result {
        Ok(()) => true,
        Err(StoreError::DeadlineMoved(_)) => {
            // `set_timeout` won the race with the timeout: run on.
            tracing::info!("the deadline moved before the timeout was recorded; handing the instance back to run on");
            if let Err(err) = store.release(lease, w.engine.inner.now()).await {
                tracing::warn!(error = %err, "releasing the instance failed; it resumes when its lease expires");
            }
            false
        }
        Err(StoreError::LeaseLost(_)) => {
            tracing::warn!(
                "lease lost before the outcome was recorded: the instance was cancelled, \
                 timed out, or taken over by another worker"
            );
            false
        }
        Err(err) => {
            tracing::error!(error = %err, "recording the outcome failed; the instance resumes when its lease expires");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log gives the changes after a count in order, and says when
    /// some of them were dropped (a claim then starts none of its rows).
    #[test]
    fn the_control_log_says_when_it_lost_changes() {
        let log = ControlLog::default();
        let (a, b) = (InstanceId::new(), InstanceId::new());
        let start = log.count();
        log.note(std::slice::from_ref(&a), Change::Pause(true));
        log.note(std::slice::from_ref(&b), Change::Cancelled);
        log.note(std::slice::from_ref(&a), Change::Pause(false));
        assert_eq!(
            log.since(start).unwrap(),
            vec![
                (a.clone(), Change::Pause(true)),
                (b.clone(), Change::Cancelled),
                (a.clone(), Change::Pause(false)),
            ]
        );
        assert_eq!(log.since(log.count()).unwrap(), vec![]);
        let before = log.count();
        let many: Vec<InstanceId> = (0..CHANGES_KEPT + 1).map(|_| InstanceId::new()).collect();
        log.note(&many, Change::Cancelled);
        assert!(log.since(before).is_none(), "one of them was dropped");
        assert_eq!(log.since(before + 1).unwrap().len(), CHANGES_KEPT);
    }

    #[test]
    fn owners_on_other_hosts_are_never_reaped() {
        assert!(!owner_is_dead("some-other-host/1/abc"));
        assert!(!owner_is_dead("garbage"));
    }

    /// Another machine, or a container, with this host's name: its pids
    /// are not ours to check, whatever they are.
    #[test]
    #[cfg(target_os = "linux")]
    fn owners_elsewhere_under_this_host_name_are_never_reaped() {
        assert_ne!(host(), hostname(), "the place is part of the host");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        for elsewhere in [
            hostname(),
            format!("{}~00000000", hostname()),
            format!("{}-4026532999", host()),
        ] {
            assert!(
                !owner_is_dead(&format!("{elsewhere}/{pid}/x")),
                "{elsewhere}"
            );
            let me = format!("{elsewhere}/{}/x", std::process::id());
            assert!(!owner_is_dead(&me), "{elsewhere}");
        }
    }

    #[test]
    fn own_process_owners_are_dead_unless_live() {
        let me = format!("{}/{}/x", host(), std::process::id());
        assert!(owner_is_dead(&me));
        lock(&LIVE).insert(me.clone());
        assert!(!owner_is_dead(&me));
        lock(&LIVE).remove(&me);
    }

    /// A worker's claimed-ahead queue goes with it, however many came
    /// and went.
    #[tokio::test]
    async fn ended_workers_leave_no_queues_behind() {
        let engine = crate::EngineBuilder::new()
            .store(crate::MemoryStore::new())
            .build()
            .await
            .unwrap();
        for _ in 0..50 {
            engine.start_worker().shutdown().await;
        }
        let _live = engine.start_worker();
        assert_eq!(lock(&engine.inner.claimed_ahead).len(), 1);
    }

    #[test]
    fn dead_pids_on_this_host_are_reaped() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(owner_is_dead(&format!("{}/{pid}/x", host())));
    }
}
