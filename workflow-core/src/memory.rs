//! An in-memory [`Store`]: fast, shared by engines in one process, gone at exit.
//! For tests and for workflows that need no durability.
//!
//! Built for the thousands of instances of a test, not millions: claims,
//! lists and purges scan every instance it holds under one lock, and it
//! gives no memory back. A long-running process that keeps a large
//! history wants SQLite.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::InstanceId;
use crate::status::Status;
use crate::store::*;

/// A [`Store`] that keeps everything in process memory. Every claim, list
/// and purge scans all the instances it holds: for tests and small,
/// short-lived runs (see the module's documentation).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    instances: HashMap<InstanceId, Entry>,
    events: Vec<EventRow>,
    /// The last event's `seq`: it only grows, purges or not.
    last_seq: i64,
    schedules: HashMap<String, ScheduleMark>,
    definitions: std::collections::BTreeMap<String, crate::workflow::Definition>,
}

#[derive(Debug)]
struct Entry {
    row: InstanceRow,
    lease_owner: Option<String>,
    lease_until: Option<Millis>,
    steps: Vec<StepRow>,
    /// The keys of `steps`: a fan-out of many items looks each up once,
    /// not along all the others.
    step_keys: HashSet<String>,
    /// Events sent to it: (name, payload), oldest first; taken ones are removed.
    inbox: Vec<(String, String)>,
    /// Keys of the events sent to it with one, taken or not.
    event_keys: std::collections::HashSet<String>,
    paused_at: Option<Millis>,
    /// Runs in a row that ended without recording how.
    interrupted_runs: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The error for a second instance with one id.
fn taken_id(id: &InstanceId) -> StoreError {
    StoreError::backend(format!("an instance with id {id} exists already"))
}

impl Tables {
    /// Inserts `new` with its `created` event, or finds the active
    /// instance with its dedup key.
    fn create(
        &mut self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError> {
        let t = self;
        if let (Some(statuses), Some(key)) = (dedup, new.key.as_deref()) {
            // The newest, as the SQL stores pick (ids sort by creation).
            let existing = t
                .instances
                .values()
                .filter(|e| {
                    e.row.workflow == new.workflow
                        && e.row.key.as_deref() == Some(key)
                        && statuses.contains(&e.row.status)
                })
                .max_by(|a, b| a.row.id.as_str().cmp(b.row.id.as_str()));
            if let Some(entry) = existing {
                return Ok(Created::Existing(entry.row.clone()));
            }
        }
        // The SQL stores' primary key: a second row with one id would
        // orphan the first's steps and history.
        if t.instances.contains_key(&new.id) {
            return Err(taken_id(&new.id));
        }
        // A child started by a parent already cancelled (its handler has
        // not heard yet) is cancelled with it, as `cancel` would have.
        let cancelled = new
            .parent
            .as_ref()
            .and_then(|p| t.instances.get(p))
            .and_then(|p| cancelled_with_parent(p.row.status));
        let parent_cancelled = cancelled.is_some();
        let id = new.id.clone();
        let row = new.into_row(parent_cancelled);
        t.event(&row.id, row.created_at, "created", None, None, None);
        if cancelled.is_some() {
            t.event(&row.id, row.created_at, "cancelled", None, None, cancelled);
        }
        t.instances.insert(
            id,
            Entry {
                row: row.clone(),
                lease_owner: None,
                lease_until: None,
                steps: Vec::new(),
                step_keys: HashSet::new(),
                inbox: Vec::new(),
                event_keys: Default::default(),
                interrupted_runs: 0,
                paused_at: None,
            },
        );
        Ok(Created::New(row))
    }

    fn event(
        &mut self,
        instance: &InstanceId,
        at: Millis,
        kind: &str,
        step: Option<&str>,
        attempt: Option<u32>,
        message: Option<&str>,
    ) {
        self.event_timed(instance, at, kind, step, attempt, message, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn event_timed(
        &mut self,
        instance: &InstanceId,
        at: Millis,
        kind: &str,
        step: Option<&str>,
        attempt: Option<u32>,
        message: Option<&str>,
        duration_ms: Option<i64>,
    ) {
        self.last_seq += 1;
        let seq = self.last_seq;
        self.events.push(EventRow {
            seq,
            instance: instance.clone(),
            at,
            kind: kind.to_owned(),
            step: step.map(str::to_owned),
            attempt,
            message: message.map(str::to_owned),
            duration_ms,
        });
    }

    /// Makes `parent` due now if it waits for `child`.
    fn wake_parent(&mut self, parent: &InstanceId, child: &InstanceId, at: Millis) {
        if let Some(p) = self.instances.get_mut(parent) {
            if p.row.status == Status::Listening && p.row.wait_child.as_ref() == Some(child) {
                p.row.status = Status::Pending;
                p.row.run_at = at;
                p.row.wait_child = None;
            }
        }
    }

    /// Ends `root` (unless it already ended) and its unfinished children,
    /// grandchildren... `Cancelled`, each with a `cancelled` event (a
    /// descendant's carries `message`), their leases void, waking the
    /// parents waiting for them. Used by a cancel and by a timeout (`root`
    /// is then `TimedOut` already, and only its descendants change).
    fn cancel_tree(&mut self, root: &InstanceId, at: Millis, message: &str) {
        let mut todo = vec![root.clone()];
        while let Some(next) = todo.pop() {
            let Some(entry) = self.instances.get_mut(&next) else {
                continue;
            };
            if !entry.row.status.is_terminal() {
                entry.row.status = Status::Cancelled;
                entry.row.updated_at = at;
                entry.row.finished_at = Some(at);
                entry.lease_owner = None;
                entry.lease_until = None;
                let parent = entry.row.parent.clone();
                let message = (&next != root).then_some(message);
                self.event(&next, at, "cancelled", None, None, message);
                if let Some(parent) = parent {
                    self.wake_parent(&parent, &next, at);
                }
            }
            // Through children that already ended too: theirs may not have.
            todo.extend(
                self.instances
                    .values()
                    .filter(|e| e.row.parent.as_ref() == Some(&next))
                    .map(|e| e.row.id.clone()),
            );
        }
    }

    /// The entry if `lease` is its current lease.
    fn leased(&mut self, lease: &Lease) -> Result<&mut Entry, StoreError> {
        match self.instances.get_mut(&lease.instance) {
            Some(entry)
                if entry.row.status == Status::InProgress
                    && entry.lease_owner.as_deref() == Some(lease.owner.as_str())
                    && entry.row.runs == lease.run =>
            {
                Ok(entry)
            }
            _ => Err(StoreError::LeaseLost(lease.instance.clone())),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError> {
        self.tables().create(new, dedup)
    }

    /// All or none, as the SQL stores' one transaction: a retry after an
    /// error must not find half the batch there already.
    async fn create_many(&self, new: Vec<NewInstance>) -> Result<Vec<InstanceRow>, StoreError> {
        let mut t = self.tables();
        let mut ids = HashSet::new();
        if let Some(taken) = new
            .iter()
            .find(|n| t.instances.contains_key(&n.id) || !ids.insert(&n.id))
        {
            return Err(taken_id(&taken.id));
        }
        new.into_iter()
            .map(|n| t.create(n, None).map(Created::into_row))
            .collect()
    }

    async fn get(&self, id: &InstanceId) -> Result<Option<InstanceRow>, StoreError> {
        Ok(self.tables().instances.get(id).map(|e| e.row.clone()))
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        let mut t = self.tables();
        let mut due: Vec<(Millis, InstanceId)> = t
            .instances
            .values()
            .filter(|e| {
                // A running row's `run_at` is its lease's end, by the
                // system clock; a waiting row's is its due time, by the
                // engine's.
                let due = match e.row.status {
                    Status::Pending | Status::Listening => e.row.run_at <= req.due_by,
                    Status::InProgress => e.row.run_at <= req.now,
                    _ => false,
                };
                due && e.lease_until.is_none_or(|until| until < req.now)
                    && req.workflows.contains(&e.row.workflow)
            })
            .map(|e| (e.row.run_at, e.row.id.clone()))
            .collect();
        due.sort();
        due.truncate(req.limit);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, id) in due {
            let entry = t.instances.get_mut(&id).expect("selected above");
            if entry.row.status == Status::InProgress {
                // Its last run's lease lapsed before the run recorded how it ended.
                entry.interrupted_runs = entry.interrupted_runs.saturating_add(1);
            }
            entry.row.status = Status::InProgress;
            entry.row.runs += 1;
            entry.row.run_at = req.lease_until;
            entry.row.updated_at = req.due_by;
            entry.row.started_at.get_or_insert(req.due_by);
            entry.row.wait_event = None;
            entry.row.wait_child = None;
            entry.lease_owner = Some(req.owner.clone());
            entry.lease_until = Some(req.lease_until);
            let lease = Lease {
                instance: id.clone(),
                owner: req.owner.clone(),
                run: entry.row.runs,
            };
            claimed.push(Claimed {
                row: entry.row.clone(),
                lease,
                steps: entry.steps.clone(),
                interrupted_runs: entry.interrupted_runs,
            });
            t.event(&id, req.due_by, "started", None, None, None);
        }
        Ok(claimed)
    }

    async fn next_due(
        &self,
        workflows: &[String],
        after: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let t = self.tables();
        Ok(t.instances
            .values()
            .filter(|e| {
                matches!(e.row.status, Status::Pending | Status::Listening)
                    && e.row.run_at >= after
                    && workflows.contains(&e.row.workflow)
            })
            .map(|e| e.row.run_at)
            .min())
    }

    /// A commit is done in its first poll, under the tables' lock.
    fn commits_in_call_order(&self) -> bool {
        true
    }

    async fn commit_step(&self, lease: &Lease, step: StepRow) -> Result<(), StoreError> {
        let mut t = self.tables();
        let entry = t.leased(lease)?;
        if !entry.step_keys.insert(step.key.clone()) {
            return Ok(());
        }
        // A step recorded: this run got somewhere.
        entry.interrupted_runs = 0;
        if let Some(state) = &step.state {
            entry.row.state = Some(state.clone());
            entry.row.updated_at = step.finished_at;
        }
        // Its failed attempts are history now.
        if entry
            .row
            .retry
            .as_ref()
            .is_some_and(|(key, _)| *key == step.key)
        {
            entry.row.retry = None;
        }
        let kind = if step.error.is_some() {
            "step_failed"
        } else {
            "step_completed"
        };
        let (at, attempts, message) = (step.finished_at, step.attempts, step.error.clone());
        let duration = step.finished_at - step.started_at;
        let state_changed = step.state.is_some();
        let key = step.key.clone();
        entry.steps.push(step);
        t.event_timed(
            &lease.instance,
            at,
            kind,
            Some(&key),
            Some(attempts),
            message.as_deref(),
            Some(duration),
        );
        if state_changed {
            t.event(&lease.instance, at, "state_changed", Some(&key), None, None);
        }
        Ok(())
    }

    async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        let mut t = self.tables();
        // The row keeps the step's count too, as a suspension for its
        // backoff would: a run after a crash mid-backoff counts on.
        let entry = t.leased(lease)?;
        entry.row.retry = Some((step.to_owned(), attempt));
        entry.interrupted_runs = 0;
        t.event(
            &lease.instance,
            at,
            "attempt_failed",
            Some(step),
            Some(attempt),
            Some(error),
        );
        Ok(())
    }

    async fn finish(&self, lease: &Lease, finish: Finish) -> Result<(), StoreError> {
        let mut t = self.tables();
        let entry = t.leased(lease)?;
        if finish.status == Status::TimedOut && entry.row.deadline_at.is_some_and(|d| d > finish.at)
        {
            return Err(StoreError::DeadlineMoved(lease.instance.clone()));
        }
        entry.row.status = finish.status;
        entry.row.output = finish.output;
        entry.row.error = finish.error.clone();
        if let Some(state) = finish.state {
            entry.row.state = Some(state);
        }
        entry.row.updated_at = finish.at;
        entry.row.finished_at = Some(finish.at);
        entry.lease_owner = None;
        entry.lease_until = None;
        let parent = entry.row.parent.clone();
        t.event(
            &lease.instance,
            finish.at,
            finish.status.as_str(),
            None,
            None,
            finish.error.as_deref(),
        );
        if let Some(parent) = parent {
            t.wake_parent(&parent, &lease.instance, finish.at);
        }
        // A timeout is the clock cancelling the instance: its unfinished
        // descendants end with it. A completed or failed parent leaves them
        // running (a child may outlive it).
        if finish.status == Status::TimedOut {
            t.cancel_tree(&lease.instance, finish.at, "parent timed out");
        }
        Ok(())
    }

    async fn release(&self, lease: &Lease, at: Millis) -> Result<(), StoreError> {
        let mut t = self.tables();
        let entry = t.leased(lease)?;
        entry.row.status = Status::Pending;
        entry.row.run_at = at;
        entry.row.updated_at = at;
        entry.lease_owner = None;
        entry.lease_until = None;
        t.event(&lease.instance, at, "released", None, None, None);
        Ok(())
    }

    async fn renew(&self, leases: &[Lease], until: Millis) -> Result<Vec<Renewal>, StoreError> {
        let mut t = self.tables();
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            let (held, deadline_at) = match t.leased(lease) {
                Ok(entry) => {
                    entry.lease_until = Some(until);
                    entry.row.run_at = until;
                    (true, entry.row.deadline_at)
                }
                Err(_) => (
                    false,
                    t.instances
                        .get(&lease.instance)
                        .and_then(|e| e.row.deadline_at),
                ),
            };
            // A request is the holder's business, as in the SQL stores.
            let pause_requested = held
                && t.instances
                    .get(&lease.instance)
                    .is_some_and(|e| e.row.pause_requested);
            out.push(Renewal {
                lease: lease.clone(),
                held,
                until,
                deadline_at,
                pause_requested,
            });
        }
        Ok(out)
    }

    async fn cancel(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        let mut t = self.tables();
        let Some(entry) = t.instances.get_mut(id) else {
            return Ok(Control::NotFound);
        };
        if entry.row.status.is_terminal() {
            return Ok(Control::Terminal(entry.row.status));
        }
        t.cancel_tree(id, at, "parent cancelled");
        Ok(Control::Applied)
    }

    async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Result<Control, StoreError> {
        let mut t = self.tables();
        let Some(entry) = t.instances.get_mut(id) else {
            return Ok(Control::NotFound);
        };
        if entry.row.status.is_terminal() {
            return Ok(Control::Terminal(entry.row.status));
        }
        entry.row.deadline_at = Some(deadline_at);
        entry.row.updated_at = at;
        // Set in paused time: resume adds only what is paused from now on.
        if entry.row.status == Status::Paused {
            entry.paused_at = Some(at);
        }
        // A waiting instance is due at its deadline at the latest, to end
        // there: only a running handler watches the deadline itself.
        if matches!(entry.row.status, Status::Pending | Status::Listening) {
            entry.row.run_at = entry.row.run_at.min(deadline_at);
        }
        let message = format_millis(deadline_at);
        t.event(id, at, "deadline_changed", None, None, Some(&message));
        Ok(Control::Applied)
    }

    async fn lease_owners(&self) -> Result<Vec<String>, StoreError> {
        let t = self.tables();
        let mut owners: Vec<String> = t
            .instances
            .values()
            .filter(|e| !e.row.status.is_terminal())
            .filter_map(|e| e.lease_owner.clone())
            .collect();
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut t = self.tables();
        let ended = |e: &Entry| {
            e.row.status.is_terminal() && e.row.finished_at.is_some_and(|f| f < ended_before)
        };
        let mut children: HashMap<&InstanceId, Vec<&InstanceId>> = HashMap::new();
        for e in t.instances.values() {
            if let Some(parent) = &e.row.parent {
                children.entry(parent).or_default().push(&e.row.id);
            }
        }
        let floor = InstanceId::floor_at(ended_before);
        // Trees go whole, from roots (no parent row) that ended before the
        // cutoff, as the SQL stores do.
        let roots = t.instances.values().filter(|e| {
            ended(e)
                && e.row.id < floor
                && workflow.is_none_or(|w| e.row.workflow == w)
                && e.row
                    .parent
                    .as_ref()
                    .is_none_or(|p| !t.instances.contains_key(p))
        });
        // Held-back trees (a member not ended) are passed over, not counted.
        let mut doomed: Vec<InstanceId> = Vec::new();
        let mut trees = 0;
        for root in roots {
            if trees >= limit {
                break;
            }
            let mut tree = vec![&root.row.id];
            let mut at = 0;
            while at < tree.len() {
                tree.extend(children.get(tree[at]).into_iter().flatten());
                at += 1;
            }
            if tree.iter().all(|id| ended(&t.instances[*id])) {
                doomed.extend(tree.into_iter().cloned());
                trees += 1;
            }
        }
        drop(children);
        let gone: std::collections::HashSet<&InstanceId> = doomed.iter().collect();
        t.events.retain(|e| !gone.contains(&e.instance));
        for id in &doomed {
            t.instances.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn release_owner(&self, owner: &str, at: Millis) -> Result<u64, StoreError> {
        let mut t = self.tables();
        let mut freed = Vec::new();
        for entry in t.instances.values_mut() {
            if entry.lease_owner.as_deref() == Some(owner) && !entry.row.status.is_terminal() {
                entry.lease_owner = None;
                entry.lease_until = None;
                if entry.row.status == Status::InProgress {
                    entry.row.status = Status::Pending;
                    entry.row.run_at = at;
                    entry.interrupted_runs = entry.interrupted_runs.saturating_add(1);
                }
                entry.row.updated_at = at;
                freed.push(entry.row.id.clone());
            }
        }
        for id in &freed {
            t.event(id, at, "released", None, None, Some("worker died"));
        }
        Ok(freed.len() as u64)
    }

    async fn steps(&self, id: &InstanceId) -> Result<Vec<StepRow>, StoreError> {
        Ok(self
            .tables()
            .instances
            .get(id)
            .map(|e| e.steps.clone())
            .unwrap_or_default())
    }

    async fn history(&self, id: &InstanceId) -> Result<Vec<EventRow>, StoreError> {
        Ok(self
            .tables()
            .events
            .iter()
            .filter(|e| &e.instance == id)
            .cloned()
            .collect())
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Listed>, StoreError> {
        let t = self.tables();
        let mut rows: Vec<InstanceRow> = t
            .instances
            .values()
            .map(|e| &e.row)
            .filter(|r| q.workflow.as_ref().is_none_or(|w| &r.workflow == w))
            .filter(|r| q.statuses.is_empty() || q.statuses.contains(&r.status))
            .filter(|r| q.tags.iter().all(|(k, v)| r.tags.get(k) == Some(v)))
            .filter(|r| q.key.is_none() || r.key == q.key)
            .filter(|r| q.created_from.is_none_or(|from| r.created_at >= from))
            .filter(|r| q.created_to.is_none_or(|to| r.created_at < to))
            .filter(|r| q.before.as_ref().is_none_or(|before| &r.id < before))
            .cloned()
            .collect();
        rows.sort_by(|a, b| b.id.cmp(&a.id));
        rows.truncate(q.limit);
        Ok(rows.into_iter().map(Ok).collect())
    }

    async fn suspend(&self, lease: &Lease, suspend: Suspend) -> Result<(), StoreError> {
        let mut t = self.tables();
        let child_done = suspend
            .wait_child
            .as_ref()
            .and_then(|c| t.instances.get(c))
            .is_some_and(|c| c.row.status.is_terminal());
        let entry = t.leased(lease)?;
        let event_waiting = suspend
            .wait_event
            .as_ref()
            .is_some_and(|name| entry.inbox.iter().any(|(n, _)| n == name));
        entry.interrupted_runs = 0;
        // Paused by the engine (its reason in the history) or as asked.
        let paused_here = suspend.status == Status::Paused;
        let (status, run_at, kind, message) = if paused_here || entry.row.pause_requested {
            entry.paused_at = Some(suspend.at);
            entry.row.pause_requested = false;
            let reason = paused_here.then(|| suspend.reason.clone());
            (Status::Paused, suspend.run_at, "paused", reason)
        } else if event_waiting || child_done {
            (
                Status::Pending,
                suspend.at,
                "suspended",
                Some(format!("{}; already there", suspend.reason)),
            )
        } else {
            (
                suspend.status,
                suspend.run_at,
                "suspended",
                Some(suspend.reason.clone()),
            )
        };
        entry.row.status = status;
        // Never later than the deadline held here: one moved while the
        // handler ran may not have reached it yet.
        entry.row.run_at = entry.row.deadline_at.map_or(run_at, |d| run_at.min(d));
        entry.row.wait_event = suspend.wait_event;
        entry.row.wait_child = suspend.wait_child;
        entry.row.retry = suspend.retry;
        if let Some(state) = suspend.state {
            entry.row.state = Some(state);
        }
        entry.row.updated_at = suspend.at;
        entry.lease_owner = None;
        entry.lease_until = None;
        t.event(
            &lease.instance,
            suspend.at,
            kind,
            None,
            None,
            message.as_deref(),
        );
        Ok(())
    }

    async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        at: Millis,
    ) -> Result<Control, StoreError> {
        let mut t = self.tables();
        let Some(entry) = t.instances.get_mut(id) else {
            return Ok(Control::NotFound);
        };
        if key.is_some_and(|key| entry.event_keys.contains(key)) {
            return Ok(Control::Duplicate);
        }
        if entry.row.status.is_terminal() {
            return Ok(Control::Terminal(entry.row.status));
        }
        if let Some(key) = key {
            entry.event_keys.insert(key.to_owned());
        }
        entry.inbox.push((name.to_owned(), payload.to_owned()));
        if entry.row.status == Status::Listening && entry.row.wait_event.as_deref() == Some(name) {
            entry.row.status = Status::Pending;
            entry.row.run_at = at;
            entry.row.wait_event = None;
        }
        t.event(id, at, "event_sent", None, None, Some(name));
        Ok(Control::Applied)
    }

    async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Result<Option<String>, StoreError> {
        let mut t = self.tables();
        let entry = t.leased(lease)?;
        // A key recorded already (a late run of the same wait) answers
        // with its record and takes nothing.
        if entry.step_keys.contains(step) {
            let recorded = entry.steps.iter().find(|s| s.key == step);
            return Ok(recorded.and_then(|s| s.output.clone()));
        }
        let Some(index) = entry.inbox.iter().position(|(n, _)| n == name) else {
            return Ok(None);
        };
        entry.interrupted_runs = 0;
        let (_, payload) = entry.inbox.remove(index);
        entry.step_keys.insert(step.to_owned());
        entry.steps.push(StepRow {
            key: step.to_owned(),
            output: Some(payload.clone()),
            error: None,
            state: None,
            attempts: 1,
            started_at: at,
            finished_at: at,
        });
        entry.row.updated_at = at;
        t.event(
            &lease.instance,
            at,
            "event_received",
            Some(step),
            None,
            Some(name),
        );
        Ok(Some(payload))
    }

    async fn pause(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        let mut t = self.tables();
        let Some(entry) = t.instances.get_mut(id) else {
            return Ok(Control::NotFound);
        };
        match entry.row.status {
            status if status.is_terminal() => return Ok(Control::Terminal(status)),
            Status::Paused => return Ok(Control::Applied),
            Status::InProgress => entry.row.pause_requested = true,
            _ => {
                entry.row.status = Status::Paused;
                entry.paused_at = Some(at);
                entry.row.updated_at = at;
                t.event(id, at, "paused", None, None, None);
            }
        }
        Ok(Control::Applied)
    }

    async fn resume(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        let mut t = self.tables();
        let Some(entry) = t.instances.get_mut(id) else {
            return Ok(Control::NotFound);
        };
        if entry.row.status.is_terminal() {
            return Ok(Control::Terminal(entry.row.status));
        }
        entry.row.pause_requested = false;
        if entry.row.status == Status::Paused {
            let paused_for = at - entry.paused_at.take().unwrap_or(at);
            entry.row.status = Status::Pending;
            // A start delayed past now (never run yet) keeps its time.
            entry.row.run_at = if entry.row.runs == 0 {
                entry.row.run_at.max(at)
            } else {
                at
            };
            entry.row.deadline_at = entry.row.deadline_at.map(|d| d.saturating_add(paused_for));
            entry.row.updated_at = at;
            entry.interrupted_runs = 0;
            t.event(id, at, "resumed", None, None, None);
        }
        Ok(Control::Applied)
    }

    async fn put_definitions(
        &self,
        definitions: &[crate::workflow::Definition],
        _at: Millis,
    ) -> Result<(), StoreError> {
        let mut t = self.tables();
        for def in definitions {
            t.definitions.insert(def.name.clone(), def.clone());
        }
        Ok(())
    }

    async fn definitions(&self) -> Result<Vec<crate::workflow::Definition>, StoreError> {
        Ok(self.tables().definitions.values().cloned().collect())
    }

    async fn schedule_mark(&self, workflow: &str) -> Result<Option<ScheduleMark>, StoreError> {
        Ok(self.tables().schedules.get(workflow).cloned())
    }

    async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, InstanceId)>,
    ) -> Result<(), StoreError> {
        let mut t = self.tables();
        let mark = t
            .schedules
            .entry(workflow.to_owned())
            .or_insert(ScheduleMark {
                checked_until,
                last_tick: None,
                last_instance: None,
            });
        mark.checked_until = mark.checked_until.max(checked_until);
        if let Some((tick, id)) = fired {
            if mark.last_tick.is_none_or(|last| tick > last) {
                mark.last_tick = Some(tick);
                mark.last_instance = Some(id);
            }
        }
        Ok(())
    }

    async fn count_by_status(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<(Status, u64)>, StoreError> {
        let t = self.tables();
        let mut counts = std::collections::BTreeMap::new();
        for entry in t.instances.values() {
            if workflow.is_none_or(|w| entry.row.workflow == w) {
                *counts.entry(entry.row.status).or_insert(0u64) += 1;
            }
        }
        Ok(counts.into_iter().collect())
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use crate::store::Store;

    #[tokio::test]
    async fn conformance() {
        crate::testing::conformance(|| async { super::MemoryStore::new() }).await;
    }

    /// A second row with an id in use is refused, as a primary key refuses
    /// it, instead of replacing the first and orphaning its records.
    #[tokio::test]
    async fn an_id_in_use_is_refused() {
        let store = super::MemoryStore::new();
        let first = crate::testing::new_instance("wf", 1);
        let id = first.id.clone();
        store.create(first, None).await.unwrap();
        let mut again = crate::testing::new_instance("other", 2);
        again.id = id.clone();
        let err = store.create(again, None).await.unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        assert_eq!(store.get(&id).await.unwrap().unwrap().workflow, "wf");
    }
}
