//! The writer: the only connection that writes, on its own OS thread. It
//! takes every write waiting in its queue, applies them in one transaction,
//! commits once (one fsync for the lot), then answers each caller. A caller
//! is answered only after the commit, so "my step is recorded" always means
//! "it is on disk".
//!
//! It talks to SQLite through rusqlite (the C API, cached prepared
//! statements) on a dedicated thread: per statement that costs a few
//! microseconds, against about twenty through an async driver's channel.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Statement};
use tokio::sync::{mpsc, oneshot};
use workflow_core::store::*;
use workflow_core::{InstanceId, Status, StoreError};

use crate::broken::Broken;
use crate::checkpoint::Checkpointer;
use crate::flush::{Flusher, Horizon};
use crate::rows::{decode_instance, RawInstance, COLUMNS};

/// The terminal statuses as an SQL list, a literal so that statements
/// can `concat!` it.
macro_rules! ended {
    () => {
        "('completed', 'failed', 'cancelled', 'timed_out')"
    };
}

type Db = rusqlite::Error;

/// The statements every workflow runs, prepared once for the writer's life.
/// Through rusqlite's statement cache each run would hash the SQL text and
/// update the cache's map twice: about 7% of the writer's instructions.
struct Hot<'c> {
    begin: RefCell<Statement<'c>>,
    commit: RefCell<Statement<'c>>,
    data_version: RefCell<Statement<'c>>,
    lease_held: RefCell<Statement<'c>>,
    insert_step: RefCell<Statement<'c>>,
    insert_event: RefCell<Statement<'c>>,
    insert_instance: RefCell<Statement<'c>>,
    take: RefCell<Statement<'c>>,
    finish: RefCell<Statement<'c>>,
    wake_parent: RefCell<Statement<'c>>,
    last_seq: RefCell<Statement<'c>>,
    save_seq: RefCell<Statement<'c>>,
    /// The claim of one workflow's due rows (`claim_sql`).
    claim: RefCell<Statement<'c>>,
}

impl<'c> Hot<'c> {
    fn prepare(conn: &'c Connection) -> Result<Self, Db> {
        let p = |sql: &str| conn.prepare(sql).map(RefCell::new);
        Ok(Hot {
            begin: p("BEGIN IMMEDIATE")?,
            commit: p("COMMIT")?,
            data_version: p("PRAGMA data_version")?,
            lease_held: p(LEASE_HELD)?,
            insert_step: p(INSERT_STEP)?,
            insert_event: p(INSERT_EVENT)?,
            insert_instance: p(INSERT_INSTANCE)?,
            take: p(TAKE)?,
            finish: p(FINISH)?,
            wake_parent: p(WAKE_PARENT)?,
            last_seq: p(LAST_SEQ)?,
            save_seq: p(SAVE_SEQ)?,
            claim: p(&claim_sql())?,
        })
    }
}

/// Leases this writer granted or confirmed, so a step's commit need not read
/// the instance row to check its lease. Only this writer changes leases in
/// this database unless another connection commits, which `PRAGMA
/// data_version` reveals at the start of each transaction; then, and after
/// any failed transaction, everything known is forgotten.
#[derive(Default)]
struct Leases {
    data_version: Option<i64>,
    /// Instance id → the lease's owner and run, and what the commits of
    /// its steps must know.
    held: HashMap<String, (String, i64, Held)>,
}

/// What this writer knows of an instance whose lease it granted.
#[derive(Clone, Copy)]
struct Held {
    /// It may have a parent to wake when it ends.
    parent: bool,
    /// Its count of interrupted runs may be above 0: the next step it
    /// records sets it back to 0.
    interrupted: bool,
}

impl Leases {
    /// Far more than any engine runs at once; a bound in case of a leak.
    const MAX: usize = 100_000;

    /// For a step of `lease`: `None` if this writer does not know the
    /// lease granted, else whether the step must set the instance's count
    /// of interrupted runs back to 0 (once per grant).
    fn step_of(&mut self, lease: &Lease) -> Option<bool> {
        match self.held.get_mut(lease.instance.as_str()) {
            Some((owner, run, held)) if *owner == lease.owner && *run == lease.run => {
                Some(std::mem::replace(&mut held.interrupted, false))
            }
            _ => None,
        }
    }

    /// Undoes [`step_of`](Self::step_of)'s "once": the step it was for
    /// recorded nothing, so the count of interrupted runs stays to reset.
    fn reset_pending(&mut self, lease: &Lease) {
        if let Some((owner, run, held)) = self.held.get_mut(lease.instance.as_str()) {
            if *owner == lease.owner && *run == lease.run {
                held.interrupted = true;
            }
        }
    }

    fn grant(&mut self, lease: &Lease, held: Held) {
        if self.held.len() >= Self::MAX {
            self.held.clear();
        }
        self.held.insert(
            lease.instance.as_str().to_owned(),
            (lease.owner.clone(), lease.run, held),
        );
    }

    /// Forgets `id`'s lease; returns whether the instance may have a parent
    /// (true when unknown).
    fn end(&mut self, id: &str) -> bool {
        self.held.remove(id).is_none_or(|(_, _, held)| held.parent)
    }
}

/// Which instances were written by commits not yet on disk (durable mode),
/// so a claim that read only rows already on disk can be answered at its
/// commit instead of after the next fsync.
#[derive(Default)]
pub(crate) struct Unsynced {
    /// Relaxed mode tracks nothing: every commit counts as on disk.
    track: bool,
    /// The number the open transaction's commit will be fsynced under.
    next: u64,
    /// Every commit numbered up to this one is on disk.
    durable: u64,
    /// Instance id → the number of the last commit that wrote it.
    last_write: HashMap<String, u64>,
    /// The last commit that wrote rows not tracked one by one (a cascade
    /// cancel, a woken parent, a dead worker's leases).
    wide: u64,
    /// Where readers learn which commits they may have seen.
    horizon: Option<Arc<Horizon>>,
}

impl Unsynced {
    /// Entries kept before those already on disk are swept out.
    const SWEEP_AT: usize = 16_384;
    /// Entries kept at most.
    const FORGET_AT: usize = 4 * Self::SWEEP_AT;

    fn wrote(&mut self, id: &str) {
        if !self.track {
            return;
        }
        if let Some(commit) = self.last_write.get_mut(id) {
            *commit = self.next;
        } else if self.last_write.len() >= Self::FORGET_AT {
            // Nothing reached the disk for a long while (a failing fsync):
            // stop tracking rows one by one; every claim waits.
            self.last_write.clear();
            self.wide = self.next;
        } else {
            self.last_write.insert(id.to_owned(), self.next);
        }
    }

    fn wrote_untracked(&mut self) {
        self.wide = self.next;
    }

    /// Whether every write to `id` so far is on disk.
    fn on_disk(&self, id: &str) -> bool {
        !self.track
            || (self.wide <= self.durable
                && self.last_write.get(id).is_none_or(|c| *c <= self.durable))
    }

    /// The open transaction is about to commit: readers may see it.
    fn committing(&self) {
        if let Some(horizon) = &self.horizon {
            horizon.committing(self.next);
        }
    }

    /// Numbers the open transaction's commit, and opens the next number.
    pub(crate) fn seal(&mut self) -> u64 {
        let commit = self.next;
        self.next += 1;
        commit
    }

    /// Commits numbered up to `commit` are on disk.
    pub(crate) fn synced(&mut self, commit: u64) {
        if commit > self.durable {
            self.durable = commit;
            if self.last_write.len() >= Self::SWEEP_AT {
                let durable = self.durable;
                self.last_write.retain(|_, c| *c > durable);
            }
        }
    }
}

/// The writer's connection with what it keeps across transactions.
pub(crate) struct Session<'c> {
    conn: &'c Connection,
    hot: Hot<'c>,
    leases: RefCell<Leases>,
    unsynced: RefCell<Unsynced>,
    /// Checkpoints on a thread of their own; without it, SQLite's
    /// automatic checkpoint runs on this connection.
    checkpointer: RefCell<Option<Checkpointer>>,
    /// Callers waiting for an answer ([`Writer`]'s count).
    callers: Arc<AtomicUsize>,
    /// The connection's count of changed rows when the open transaction
    /// began: one that changed none (a claim that found nothing) writes
    /// nothing to the WAL, and readers need not wait for its fsync.
    changes_at_begin: Cell<u64>,
}

impl<'c> Session<'c> {
    /// `horizon`, in durable mode (commits wait for an fsync, see
    /// [`Unsynced`]), hears of every commit before it is made.
    pub(crate) fn new(conn: &'c Connection, horizon: Option<Arc<Horizon>>) -> Result<Self, Db> {
        Ok(Session {
            conn,
            hot: Hot::prepare(conn)?,
            leases: RefCell::new(Leases::default()),
            unsynced: RefCell::new(Unsynced {
                track: horizon.is_some(),
                next: 1,
                horizon,
                ..Unsynced::default()
            }),
            checkpointer: RefCell::new(None),
            callers: Arc::default(),
            changes_at_begin: Cell::new(0),
        })
    }

    /// This session, its WAL checkpoints handed to `checkpointer`'s thread.
    /// `callers` counts the callers waiting for an answer: with few of
    /// them, the writer checkpoints sooner itself (see `checkpoint.rs`).
    pub(crate) fn checkpointed(
        self,
        checkpointer: Checkpointer,
        callers: Arc<AtomicUsize>,
    ) -> Self {
        checkpointer.take_over(self.conn);
        Session {
            checkpointer: RefCell::new(Some(checkpointer)),
            callers,
            ..self
        }
    }

    /// Whether a commit of `writes` writes is one of few callers: then the
    /// writer has the time to checkpoint sooner. Under load a commit of a
    /// few writes comes between large ones; counting it as few callers
    /// made the writer copy the WAL every 1,000 pages itself (5–25 ms each
    /// on this project's VM, a tenth to a quarter of its time at 64
    /// workflows in flight).
    fn few_callers(&self, writes: usize) -> bool {
        writes <= FEW && self.callers.load(Ordering::Relaxed) <= FEW
    }

    /// The state of the transaction just begun on this session's connection.
    pub(crate) fn tx(&self) -> Tx<'_, 'c> {
        Tx {
            session: self,
            read_seq: Cell::new(None),
            last_seq: Cell::new(None),
        }
    }
}

/// The writer's open transaction, with the history numbers it hands out.
pub(crate) struct Tx<'s, 'c> {
    session: &'s Session<'c>,
    /// The last number of the history sequence (`events.seq`, `steps.seq`,
    /// `instances.started_seq` and `finished_seq`) as read from
    /// `history_seq` on first use, and as counted since in memory (the
    /// write lock keeps every other writer out until the commit).
    read_seq: Cell<Option<i64>>,
    last_seq: Cell<Option<i64>>,
}

impl<'c> Tx<'_, 'c> {
    /// Reserves `n` consecutive history numbers and returns the first. A
    /// step takes two when it changed the state: its `state_changed` event
    /// is numbered right after it.
    fn next_seq(&self, n: i64) -> Result<i64, Db> {
        let last = match self.last_seq.get() {
            Some(last) => last,
            None => {
                let read = self
                    .hot()
                    .last_seq
                    .borrow_mut()
                    .query_row([], |r| r.get(0))?;
                self.read_seq.set(Some(read));
                read
            }
        };
        // A corrupt `history_seq` fails this write, not the writer thread.
        let Some(next_last) = last.checked_add(n) else {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!(
                    "the history sequence (table history_seq) is at {last}, too large to go on: the database is corrupt"
                )),
            ));
        };
        self.last_seq.set(Some(next_last));
        Ok(last + 1)
    }

    /// Stores where the sequence stands, if this transaction moved it.
    fn save_seq(&self) -> Result<(), Db> {
        if let Some(last) = self.last_seq.get() {
            if self.read_seq.get() != Some(last) {
                self.hot().save_seq.borrow_mut().execute([last])?;
            }
        }
        Ok(())
    }

    fn hot(&self) -> &Hot<'c> {
        &self.session.hot
    }

    fn leases(&self) -> std::cell::RefMut<'_, Leases> {
        self.session.leases.borrow_mut()
    }

    fn unsynced(&self) -> std::cell::RefMut<'_, Unsynced> {
        self.session.unsynced.borrow_mut()
    }
}

impl std::ops::Deref for Tx<'_, '_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.session.conn
    }
}

/// One write.
#[derive(Debug)]
pub(crate) enum Op {
    Create(NewInstance, Option<Vec<Status>>),
    CreateMany(Vec<NewInstance>),
    Claim(ClaimRequest),
    CommitStep(Lease, StepRow),
    Attempt {
        lease: Lease,
        step: String,
        attempt: u32,
        error: String,
        at: Millis,
    },
    Finish(Lease, Finish),
    Release(Lease, Millis),
    Renew(Vec<Lease>, Millis),
    ReleaseOwner(String, Millis),
    /// Trees that ended before `before`, of `workflow`: at most `trees`
    /// of them, in one transaction, stopping after the tree that takes the
    /// rows deleted past `rows`; the scan starts at `from`.
    Purge {
        before: Millis,
        workflow: Option<String>,
        trees: usize,
        rows: u64,
        from: PurgeFrom,
    },
    Cancel(InstanceId, Millis),
    SetDeadline(InstanceId, Millis, Millis),
    Suspend(Lease, Suspend),
    SendEvent {
        id: InstanceId,
        name: String,
        payload: String,
        key: Option<String>,
        at: Millis,
    },
    TakeEvent {
        lease: Lease,
        name: String,
        step: String,
        at: Millis,
    },
    Pause(InstanceId, Millis),
    Resume(InstanceId, Millis),
    AdvanceSchedule(String, Millis, Option<(Millis, InstanceId)>),
    PutDefinitions(Vec<(String, String)>, Millis),
    /// Writes nothing, and opens no transaction: answered by the next
    /// fsync, once what was committed before it is on disk (see
    /// [`Writer::settle`]).
    Sync,
}

impl Op {
    /// Notes which instances this write may change, before it runs.
    fn note_writes(&self, unsynced: &mut Unsynced) {
        match self {
            Op::Create(new, _) => unsynced.wrote(new.id.as_str()),
            Op::CreateMany(new) => new.iter().for_each(|n| unsynced.wrote(n.id.as_str())),
            // A timeout cancels the instance's unfinished descendants too
            // (see `cancel_tree`): rows not tracked one by one.
            Op::Finish(lease, finish) => {
                unsynced.wrote(lease.instance.as_str());
                if finish.status == Status::TimedOut {
                    unsynced.wrote_untracked();
                }
            }
            Op::CommitStep(lease, _)
            | Op::Attempt { lease, .. }
            | Op::Release(lease, _)
            | Op::Suspend(lease, _)
            | Op::TakeEvent { lease, .. } => unsynced.wrote(lease.instance.as_str()),
            Op::SetDeadline(id, ..)
            | Op::SendEvent { id, .. }
            | Op::Pause(id, _)
            | Op::Resume(id, _) => unsynced.wrote(id.as_str()),
            Op::Cancel(..) | Op::ReleaseOwner(..) | Op::AdvanceSchedule(..) | Op::Purge { .. } => {
                unsynced.wrote_untracked()
            }
            // A claim's own writes (the lease) need no fsync; renewals
            // touch only leases held; definitions are no instance.
            Op::Claim(_) | Op::Renew(..) | Op::PutDefinitions(..) | Op::Sync => {}
        }
    }
}

impl Job {
    /// Whether this committed write may be answered before the next fsync.
    /// A lease renewal may: lost in a power cut, it is renewed again. A
    /// claim may if every row it read was already on disk: its handler
    /// then acts on nothing a power cut could take back, and losing the
    /// claim itself only means the instance is claimed again. Everything
    /// else waits for the fsync.
    fn may_answer_before_fsync(&self, unsynced: &Unsynced) -> bool {
        match (&self.op, &self.result) {
            (Op::Renew(..), _) => true,
            (Op::Claim(_), Some(Ok(Reply::Claimed(claimed)))) => {
                claimed.iter().all(|c| unsynced.on_disk(c.row.id.as_str()))
            }
            _ => false,
        }
    }
}

/// What a write produced.
#[derive(Debug)]
pub(crate) enum Reply {
    Created(Box<Created>),
    CreatedMany(Vec<InstanceRow>),
    Claimed(Vec<Claimed>),
    Renewed(Vec<Renewal>),
    Control(Control),
    Taken(Option<String>),
    Count(u64),
    Purged(Purged),
    Done,
}

pub(crate) struct Job {
    op: Op,
    /// The op's own answer, kept until the transaction commits.
    result: Option<Result<Reply, StoreError>>,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

#[cfg(test)]
impl Job {
    /// A job as the writer leaves it after applying it, and its answer.
    pub(crate) fn with_result(
        op: Op,
        reply: Reply,
    ) -> (Self, oneshot::Receiver<Result<Reply, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            op,
            result: Some(Ok(reply)),
            reply: tx,
        };
        (job, rx)
    }
}

/// Answers `job`: its own result once its commit is durable, or `why` it
/// cannot be (an fsync failed, or did earlier), after which the store
/// takes nothing until it is opened again.
pub(crate) fn answer(job: Job, durable: Result<(), &str>) {
    let result = match durable {
        Ok(()) => job.result.unwrap_or(Ok(Reply::Done)),
        Err(why) => Err(StoreError::Unusable(why.to_owned())),
    };
    let _ = job.reply.send(result);
}

pub(crate) enum Msg {
    Job(Box<Job>),
    Close(oneshot::Sender<()>),
    /// From the fsync thread: the disk is free for the next commit.
    Synced,
}

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Msg>,
    /// Callers waiting for an answer.
    waiting: Arc<AtomicUsize>,
    /// How long a lone caller looks for its answer before it sleeps.
    spin: Duration,
    /// Durable mode: how far commits have reached (see [`Horizon`]).
    horizon: Option<Arc<Horizon>>,
}

/// Whether the caller runs on a multi-threaded tokio runtime.
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Counts a caller as waiting until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Counts one more caller; true if it is the only one.
    fn enter(count: &'a AtomicUsize) -> (Self, bool) {
        let alone = count.fetch_add(1, Ordering::Relaxed) == 0;
        (Waiting(count), alone)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Writer {
    /// Starts the writer thread on `conn`. With `wal` (durable mode) a
    /// second thread fsyncs that file after each commit before the writes
    /// are answered; without it (relaxed mode) writes are answered at commit.
    pub(crate) fn spawn(
        conn: Connection,
        max_batch: usize,
        wal: Option<std::fs::File>,
        checkpointer: Checkpointer,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let callers = Arc::clone(&waiting);
        let horizon = wal.is_some().then(Arc::<Horizon>::default);
        let broken = checkpointer.broken();
        let flusher = wal
            .zip(horizon.clone())
            .map(|(wal, horizon)| Flusher::spawn(wal, tx.downgrade(), horizon, Arc::clone(&broken)))
            .transpose()?;
        let seen = horizon.clone();
        // Relaxed answers come within microseconds of the commit; durable
        // ones wait for an fsync, which is not worth a spinning core.
        let spin = if flusher.is_some() {
            Duration::ZERO
        } else {
            LINGER
        };
        std::thread::Builder::new()
            .name("workflow-sqlite-writer".into())
            .spawn(move || run(conn, rx, max_batch, flusher, seen, checkpointer, callers))?;
        Ok(Writer {
            tx,
            waiting,
            spin,
            horizon,
        })
    }

    pub(crate) async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            op,
            result: None,
            reply,
        };
        self.tx
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| StoreError::backend("the SQLite store is closed"))?;
        let (_waiting, alone) = Waiting::enter(&self.waiting);
        // Not on a current-thread runtime: its one thread, spinning, would
        // hold up every other task and timer of the runtime meanwhile.
        if alone && !self.spin.is_zero() && multi_threaded() {
            // A lone caller (one workflow stepping through its steps) would
            // otherwise put its runtime thread to sleep and pay for waking
            // it, several times the commit itself. Many callers keep the
            // runtime busy, so they just wait.
            let found = look_for(self.spin, || match answer.try_recv() {
                Ok(result) => Look::Got(result),
                Err(oneshot::error::TryRecvError::Empty) => Look::Empty,
                Err(oneshot::error::TryRecvError::Closed) => Look::Closed,
            });
            if let Look::Got(result) = found {
                return result;
            }
        }
        answer
            .await
            .map_err(|_| StoreError::backend("the SQLite writer stopped before answering"))?
    }

    /// Returns once every commit that a read made before this call could
    /// have seen is on disk: at once in relaxed mode, and in durable mode
    /// when no commit waits for its fsync; otherwise after the next fsync,
    /// which covers everything committed before it. Err if that fsync
    /// failed: what was read may not survive a power cut.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        match &self.horizon {
            Some(horizon) if !horizon.settled() => self.submit(Op::Sync).await.map(drop),
            _ => Ok(()),
        }
    }

    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

// The statements every workflow runs. None may build a temporary B-tree
// (see `hot_statements_build_no_temporary_btrees`).
const INSERT_INSTANCE: &str = "INSERT INTO instances (id, workflow, status, input, tags, dedup_key, created_at, updated_at, run_at, deadline_at, parent_id) \
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)";
const TAKE: &str =
    "UPDATE instances SET status = 'in_progress', lease_owner = ?1, lease_expires_at = ?2, run_at = ?2, \
             runs = runs + (runs < 9223372036854775807), updated_at = ?3, started_at = COALESCE(started_at, ?3), \
             wait_event = NULL, wait_child = NULL, started_seq = COALESCE(?5, started_seq), \
             interrupted_runs = ?6 \
         WHERE id = ?4";
/// `history = 1`: the step's own history events (`step_completed` or
/// `step_failed`, then `state_changed`) are read from this row, not stored
/// as rows of `events`.
const INSERT_STEP: &str = "INSERT INTO steps (instance_id, key, output, error, state, attempts, started_at, finished_at, seq, history) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1) ON CONFLICT (instance_id, key) DO NOTHING";
const INSERT_EVENT: &str =
    "INSERT INTO events (instance_id, at, kind, step, attempt, message, duration_ms, seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// Where the shared history sequence stands.
const LAST_SEQ: &str = "SELECT last FROM history_seq WHERE only = 0";
const SAVE_SEQ: &str = "UPDATE history_seq SET last = ?1 WHERE only = 0";
/// `finished_seq`: the run's terminal event (its kind is the status, its
/// message the error) is read from the row, not stored in `events`.
const FINISH: &str = "UPDATE instances SET status = ?1, output = ?2, error = ?3, state = COALESCE(?4, state), \
                     updated_at = ?5, finished_at = ?5, lease_owner = NULL, lease_expires_at = NULL, finished_seq = ?9 \
                     WHERE id = ?6 AND lease_owner = ?7 AND runs = ?8 AND status = 'in_progress'";
const LEASE_HELD: &str =
    "SELECT 1 FROM instances WHERE id = ?1 AND lease_owner = ?2 AND runs = ?3 AND status = 'in_progress'";
/// Makes the parent of `?2` due now if it is listening for `?2`.
const WAKE_PARENT: &str = "UPDATE instances SET status = 'pending', run_at = ?1, wait_child = NULL \
     WHERE id = (SELECT parent_id FROM instances WHERE id = ?2) AND status = 'listening' AND wait_child = ?2";

/// Slots of the writer connection's lookaside allocator: SQLite's default
/// 40 are all taken by the writer's cached statements, so four in five
/// allocations of every write (records, cursors) went to `malloc` and back:
/// 14% of the writer's instructions per workflow, by callgrind. SQLite splits
/// the 1.2 MiB into 1,200- and 128-byte slots and links them all up front,
/// so all of it is resident: 1.2 MiB per store, for a writer that uses a
/// few hundred slots under load (see
/// `hot_writes_are_served_by_the_lookaside_allocator`) and keeps headroom
/// for the rarer statements it caches.
const LOOKASIDE_SLOTS: i32 = 1_024;
/// SQLite's default slot size.
const LOOKASIDE_SLOT_SIZE: i32 = 1_200;

/// Gives the writer connection a larger lookaside allocator. Must run
/// before the connection allocates from it; if SQLite refuses, the
/// default stays and only speed is lost.
pub(crate) fn enlarge_lookaside(conn: &Connection) {
    // SAFETY: `handle` is the live connection borrowed here; the varargs
    // are the buffer pointer and two ints this option takes, and a null
    // buffer makes SQLite allocate (and later free) the slots itself.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT_SIZE,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(
            rc,
            "SQLite kept its default lookaside allocator for the writer"
        );
    }
}

fn backend(err: Db) -> StoreError {
    StoreError::backend(err)
}

fn run(
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    max_batch: usize,
    mut flusher: Option<Flusher>,
    horizon: Option<Arc<Horizon>>,
    checkpointer: Checkpointer,
    callers: Arc<AtomicUsize>,
) {
    // Shared with the fsync thread and the checkpoints, which set it.
    let broken = checkpointer.broken();
    let session = match Session::new(&conn, horizon) {
        Ok(session) => session.checkpointed(checkpointer, callers),
        Err(err) => {
            // Unreachable after the migrations ran, but never a panic:
            // every write is told why it failed.
            tracing::error!(error = %err, "preparing the writer's statements failed");
            let message = format!("the SQLite writer could not prepare its statements: {err}");
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Job(job) => answer(*job, Err(&message)),
                    Msg::Close(done) => {
                        let _ = done.send(());
                        return;
                    }
                    Msg::Synced => {}
                }
            }
            return;
        }
    };
    // Writes applied in the open transaction, not yet committed.
    let mut open: Option<Tx<'_, '_>> = None;
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch.min(1_024));
    // `Some` once told to stop (`Some(None)`: every handle was dropped).
    let mut closing: Option<Option<oneshot::Sender<()>>> = None;
    let mut last_commit = 0;
    loop {
        // Durable mode commits when the disk is free: the writes that came
        // in during the last fsync share the next one.
        let disk_free = flusher.as_mut().is_none_or(Flusher::idle);
        if !jobs.is_empty() && (disk_free || closing.is_some() || jobs.len() >= max_batch) {
            last_commit = jobs.len();
            if let Some(why) = broken.refuses_writes() {
                // An fsync has failed (or a newer build migrated the
                // file): nothing is committed from then on,
                // so no caller hears "failed" of a write that is done.
                // (The commits whose fsync failed reached the WAL before:
                // after a restart without a power cut they are often there
                // although their callers heard "failed", as with any write
                // whose outcome a crash hid.)
                open = None;
                rollback(&session);
                jobs.drain(..).for_each(|job| answer(job, Err(&why)));
                continue;
            }
            match open.take() {
                Some(tx) => match commit(&session, tx, &jobs) {
                    Ok(()) => answer_committed(&session, &mut flusher, &mut jobs, rx.is_empty()),
                    Err(err) => redo_alone(&session, &mut flusher, &broken, &mut jobs, &err),
                },
                // Only reads waiting for the fsync of what they may have
                // seen: nothing to commit, the next fsync answers them.
                None => answer_committed(&session, &mut flusher, &mut jobs, rx.is_empty()),
            }
            continue;
        }
        if closing.is_some() {
            break;
        }
        // Nothing to commit yet: wait for writes, or, while an fsync is in
        // flight, for whichever comes first: a write or the fsync's end.
        let mut next = if jobs.is_empty() && disk_free {
            next_message(&mut rx, linger(last_commit))
        } else {
            rx.blocking_recv()
        };
        // Apply what came, and whatever else is queued, in the open transaction.
        loop {
            match next {
                Some(Msg::Job(job)) => {
                    jobs.push(*job);
                    let job = jobs.last_mut().expect("just pushed");
                    if let Err(err) = apply_open(&session, &mut open, job) {
                        if open.take().is_some() {
                            rollback(&session);
                        }
                        redo_alone(&session, &mut flusher, &broken, &mut jobs, &err);
                    }
                }
                Some(Msg::Synced) => {}
                Some(Msg::Close(done)) => {
                    closing = Some(Some(done));
                    break;
                }
                None => {
                    closing = Some(None);
                    break;
                }
            }
            if jobs.len() >= max_batch {
                break;
            }
            next = match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(_) => break,
            };
        }
    }
    // Every answer is out before the connection closes.
    drop(flusher);
    // Statements first: a connection closes only once they are finalized.
    drop(session);
    if broken.is_broken() {
        // The last connection to close checkpoints and deletes the WAL:
        // not after a failed fsync, whose lost pages only the WAL holds.
        let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
    }
    drop(conn);
    if let Some(Some(done)) = closing {
        let _ = done.send(());
    }
}

/// Applies `job` in the open transaction, beginning one if none is open.
fn apply_open<'s, 'c>(
    session: &'s Session<'c>,
    open: &mut Option<Tx<'s, 'c>>,
    job: &mut Job,
) -> Result<(), Db> {
    if matches!(job.op, Op::Sync) {
        // Writes nothing: it begins no transaction, so takes no write
        // lock, which another process may hold for long (a read would
        // wait it out, then fail as "database is locked").
        job.result = Some(Ok(Reply::Done));
        return Ok(());
    }
    let tx = match open {
        Some(tx) => tx,
        None => open.insert(begin(session)?),
    };
    job.result = Some(apply(tx, &job.op)?);
    Ok(())
}

/// One write broke the open transaction (already rolled back): redo each
/// of its writes in a transaction of its own, so none fails its neighbours.
fn redo_alone(
    session: &Session<'_>,
    flusher: &mut Option<Flusher>,
    broken: &Broken,
    jobs: &mut Vec<Job>,
    err: &Db,
) {
    if let Some(why) = broken.refuses_writes() {
        // As at a commit: after a failed fsync (or a migration by a newer
        // build) nothing is committed.
        jobs.drain(..).for_each(|job| answer(job, Err(&why)));
        return;
    }
    if jobs.len() > 1 {
        tracing::warn!(error = %err, writes = jobs.len(), "group commit failed; retrying writes one by one");
    }
    let mut committed = Vec::with_capacity(jobs.len());
    // One budget for all of them: once another process has held the lock
    // past it, the rest fail at once instead of each waiting it out.
    let deadline = Instant::now() + BUSY_BUDGET;
    let mut locked_out: Option<String> = None;
    for mut job in jobs.drain(..) {
        if matches!(job.op, Op::Sync) {
            committed.push(job);
            continue;
        }
        if let Some(why) = &locked_out {
            // A passing lock, not a broken store.
            let _ = job.reply.send(Err(StoreError::backend(why.clone())));
            continue;
        }
        match apply_batch(session, std::slice::from_mut(&mut job), deadline) {
            Ok(()) => committed.push(job),
            Err(err) => {
                if is_busy(&err) {
                    locked_out = Some(format!(
                        "the database stayed locked by another process: {err}"
                    ));
                }
                let _ = job.reply.send(Err(backend(err)));
            }
        }
    }
    match flusher {
        Some(flusher) => {
            let commit = session.unsynced.borrow_mut().seal();
            flusher.flush_here(committed, commit);
        }
        None => committed.into_iter().for_each(|job| answer(job, Ok(()))),
    }
}

/// How long the writer (and the flush thread) keep looking for the next
/// write before they sleep, when few callers are writing.
pub(crate) const LINGER: Duration = Duration::from_micros(100);

/// A commit of at most this many writes means few callers: they gain from
/// the writer lingering for their next write and from an fsync on the
/// writer's own thread. Under load the CPU is better left to them.
pub(crate) const FEW: usize = 4;

/// How long to look for the next write after a commit of `last` writes.
pub(crate) fn linger(last: usize) -> Duration {
    if last <= FEW {
        LINGER
    } else {
        Duration::ZERO
    }
}

/// Answers committed writes: at once in relaxed mode; in durable mode once
/// the WAL is fsynced, except what need not wait (see
/// [`Job::may_answer_before_fsync`]).
fn answer_committed(
    session: &Session<'_>,
    flusher: &mut Option<Flusher>,
    jobs: &mut Vec<Job>,
    queue_empty: bool,
) {
    let Some(flusher) = flusher else {
        jobs.drain(..).for_each(|job| answer(job, Ok(())));
        return;
    };
    let mut unsynced = session.unsynced.borrow_mut();
    let disk_free = flusher.idle();
    unsynced.synced(flusher.durable());
    for job in jobs.extract_if(.., |job| job.may_answer_before_fsync(&unsynced)) {
        answer(job, Ok(()));
    }
    if jobs.is_empty() {
        return;
    }
    let jobs = std::mem::take(jobs);
    let commit = unsynced.seal();
    if jobs.len() <= FEW && queue_empty && disk_free {
        // Few callers: an fsync here spares them two thread hand-offs.
        flusher.flush_here(jobs, commit);
    } else {
        flusher.flush(jobs, commit);
    }
}

/// What one look at a queue found.
pub(crate) enum Look<T> {
    Got(T),
    Empty,
    Closed,
}

/// Looks at a queue until something comes, it closes, or `linger` has
/// passed, yielding the core between looks. A hand-off that arrives within
/// microseconds (a workflow's next step right after its answer) then
/// costs no sleep and wake-up of the thread, which costs as much as a
/// relaxed commit.
pub(crate) fn look_for<T>(linger: Duration, mut look: impl FnMut() -> Look<T>) -> Look<T> {
    let started = std::time::Instant::now();
    loop {
        match look() {
            Look::Empty if started.elapsed() < linger => std::thread::yield_now(),
            found => return found,
        }
    }
}

/// The next message: looked for during `linger`, then waited for.
fn next_message(rx: &mut mpsc::UnboundedReceiver<Msg>, linger: Duration) -> Option<Msg> {
    let found = look_for(linger, || match rx.try_recv() {
        Ok(msg) => Look::Got(msg),
        Err(mpsc::error::TryRecvError::Empty) => Look::Empty,
        Err(mpsc::error::TryRecvError::Disconnected) => Look::Closed,
    });
    match found {
        Look::Got(msg) => Some(msg),
        Look::Closed => None,
        Look::Empty => rx.blocking_recv(),
    }
}

pub(crate) fn is_busy(err: &Db) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// How long a write waits out other processes' locks, all tries together
/// (each `BEGIN IMMEDIATE` itself blocks up to the busy timeout).
const BUSY_BUDGET: Duration = Duration::from_secs(120);

/// Applies `jobs` in one transaction and commits it. Waits out other
/// processes' locks until `deadline` instead of reporting `database is
/// locked`.
fn apply_batch(session: &Session<'_>, jobs: &mut [Job], deadline: Instant) -> Result<(), Db> {
    let mut delay = Duration::from_millis(5);
    loop {
        match try_batch(session, jobs) {
            Err(err) if is_busy(&err) && Instant::now() + delay < deadline => {
                tracing::debug!(error = %err, ?delay, "database busy; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// One transaction.
fn try_batch(session: &Session<'_>, jobs: &mut [Job]) -> Result<(), Db> {
    let tx = begin(session)?;
    let applied = jobs.iter_mut().try_for_each(|job| {
        job.result = Some(apply(&tx, &job.op)?);
        Ok(())
    });
    match applied {
        Ok(()) => commit(session, tx, jobs),
        Err(err) => {
            rollback(session);
            Err(err)
        }
    }
}

/// Opens the writer's transaction, taking SQLite's write lock.
fn begin<'s, 'c>(session: &'s Session<'c>) -> Result<Tx<'s, 'c>, Db> {
    session.hot.begin.borrow_mut().execute([])?;
    session.changes_at_begin.set(session.conn.total_changes());
    let tx = session.tx();
    if let Err(err) = catch_up_with_other_writers(&tx) {
        rollback(session);
        return Err(err);
    }
    Ok(tx)
}

/// Commits `jobs` (without fsync: see [`Flusher`]); rolls back if that
/// fails.
fn commit(session: &Session<'_>, tx: Tx<'_, '_>, jobs: &[Job]) -> Result<(), Db> {
    let writes = jobs.len();
    // Renewals alone need not be on disk before they are read (one lost to
    // a power cut is renewed again): reads do not wait for their fsync.
    // Every second, for each running instance, they would.
    let renewals_only = !jobs.is_empty() && jobs.iter().all(|job| matches!(job.op, Op::Renew(..)));
    let done = tx.save_seq().and_then(|()| {
        if !renewals_only && session.conn.total_changes() != session.changes_at_begin.get() {
            session.unsynced.borrow().committing();
        }
        session.hot.commit.borrow_mut().execute([]).map(drop)
    });
    match &done {
        Ok(()) => {
            if let Some(checkpointer) = session.checkpointer.borrow_mut().as_mut() {
                checkpointer.after_commit(session.conn, session.few_callers(writes));
            }
        }
        Err(_) => rollback(session),
    }
    done
}

/// Undoes the open transaction, and what it granted with it.
fn rollback(session: &Session<'_>) {
    *session.leases.borrow_mut() = Leases::default();
    let conn = session.conn;
    if !conn.is_autocommit() {
        if let Err(err) = conn
            .prepare_cached("ROLLBACK")
            .and_then(|mut s| s.execute([]))
        {
            tracing::error!(error = %err, "rolling back a failed group commit failed");
        }
    }
}

/// After another connection wrote: forgets the leases this writer trusted
/// and refuses a schema a newer build migrated to. Read under the write
/// lock, so nobody else can commit until ours does.
fn catch_up_with_other_writers(c: &Tx<'_, '_>) -> Result<(), Db> {
    let version: i64 = c
        .hot()
        .data_version
        .borrow_mut()
        .query_row([], |r| r.get(0))?;
    let mut leases = c.leases();
    if leases.data_version != Some(version) {
        // A newer build may have migrated the file since this store opened
        // it (a rolling upgrade of processes sharing it): this writer's
        // statements would then write rows the new schema reads otherwise.
        let schema: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if usize::try_from(schema).unwrap_or(usize::MAX) > crate::schema::MIGRATIONS.len() {
            let why = format!(
                "the database was migrated to schema version {schema} by a newer build while \
                 this store had it open (this build knows {}); writes are refused: restart \
                 this process with the newer build",
                crate::schema::MIGRATIONS.len()
            );
            // For good, as after a failed fsync: every write is answered
            // `Unusable`, so workers stop and `Engine::run` returns, and
            // the supervisor restarts the process. Otherwise it would stay
            // up refusing every write, its workers retrying for ever.
            if let Some(checkpointer) = c.session.checkpointer.borrow().as_ref() {
                checkpointer.broken().migrated(why.clone());
            }
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(why),
            ));
        }
        *leases = Leases {
            data_version: Some(version),
            held: HashMap::new(),
        };
        // Another process's commit may not be fsynced yet (its writer
        // answers only after its own fsync): nothing read now may be
        // answered before ours, which covers the same WAL file.
        c.unsynced().wrote_untracked();
    }
    Ok(())
}

/// Whether `lease` is held on an instance whose deadline is now after `at`:
/// a `set_deadline` came before a timeout recorded at `at`.
fn deadline_moved(c: &Tx<'_, '_>, lease: &Lease, at: Millis) -> Result<bool, Db> {
    let moved: Option<bool> = c
        .prepare_cached(
            "SELECT deadline_at > ?2 FROM instances \
             WHERE id = ?1 AND lease_owner = ?3 AND runs = ?4 AND status = 'in_progress'",
        )?
        .query_row(
            params![lease.instance.as_str(), at, lease.owner, lease.run],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(moved == Some(true))
}

/// Runs one op. The outer error aborts the transaction; the inner one is the
/// op's own answer (lease lost, corrupt row) and commits with the rest.
fn apply(c: &Tx<'_, '_>, op: &Op) -> Result<Result<Reply, StoreError>, Db> {
    // A panic here (a bug, or data no check foresaw) would end the writer
    // thread and close the store for every instance. As an error, it rolls
    // back the open transaction, and the redo fails that write alone.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_op(c, op))).unwrap_or_else(
        |panic| {
            let why = workflow_core::store::panic_message(&*panic);
            tracing::error!(panic = %why, "a write panicked in the SQLite writer");
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                Some(format!("the write panicked: {why}")),
            ))
        },
    )
}

fn apply_op(c: &Tx<'_, '_>, op: &Op) -> Result<Result<Reply, StoreError>, Db> {
    op.note_writes(&mut c.unsynced());
    Ok(match op {
        Op::Create(new, dedup) => {
            create(c, new, dedup.as_deref())?.map(|r| Reply::Created(Box::new(r)))
        }
        Op::CreateMany(new) => {
            let mut rows = Vec::with_capacity(new.len());
            for instance in new {
                match create(c, instance, None)? {
                    Ok(created) => rows.push(created.into_row()),
                    Err(err) => return Ok(Err(err)),
                }
            }
            Ok(Reply::CreatedMany(rows))
        }
        Op::Claim(req) => Ok(Reply::Claimed(claim(c, req)?)),
        Op::Sync => Ok(Reply::Done),
        Op::CommitStep(lease, step) => commit_step(c, lease, step)?.map(|()| Reply::Done),
        Op::Attempt {
            lease,
            step,
            attempt,
            error,
            at,
        } => {
            // The row keeps the step's count too, as a suspension for its
            // backoff would: a run after a crash mid-backoff counts on.
            if touch(c, lease, Some((step, *attempt)))? {
                event(
                    c,
                    lease.instance.as_str(),
                    *at,
                    "attempt_failed",
                    Some(step),
                    Some(*attempt),
                    Some(error),
                    None,
                )?;
                Ok(Reply::Done)
            } else {
                Err(StoreError::LeaseLost(lease.instance.clone()))
            }
        }
        Op::Finish(lease, finish) => {
            if finish.status == Status::TimedOut && deadline_moved(c, lease, finish.at)? {
                return Ok(Err(StoreError::DeadlineMoved(lease.instance.clone())));
            }
            let may_have_parent = c.leases().end(lease.instance.as_str());
            let done = c.hot().finish.borrow_mut().execute(params![
                finish.status.as_str(),
                finish.output,
                finish.error,
                finish.state,
                finish.at,
                lease.instance.as_str(),
                lease.owner,
                lease.run,
                c.next_seq(1)?
            ])? == 1;
            if done {
                if may_have_parent {
                    wake_parent(c, lease.instance.as_str(), finish.at)?;
                }
                // A timeout is the clock cancelling the instance: its
                // unfinished descendants end with it. A completed or failed
                // parent leaves them running (a child may outlive it).
                if finish.status == Status::TimedOut {
                    cancel_tree(c, lease.instance.as_str(), finish.at, "parent timed out")?;
                }
                Ok(Reply::Done)
            } else {
                Err(StoreError::LeaseLost(lease.instance.clone()))
            }
        }
        Op::Release(lease, at) => {
            c.leases().end(lease.instance.as_str());
            let done = c
                .prepare_cached(
                    "UPDATE instances SET status = 'pending', run_at = ?1, updated_at = ?1, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = ?2 AND lease_owner = ?3 AND runs = ?4 AND status = 'in_progress'",
                )?
                .execute(params![at, lease.instance.as_str(), lease.owner, lease.run])?
                == 1;
            if done {
                event(
                    c,
                    lease.instance.as_str(),
                    *at,
                    "released",
                    None,
                    None,
                    None,
                    None,
                )?;
                Ok(Reply::Done)
            } else {
                Err(StoreError::LeaseLost(lease.instance.clone()))
            }
        }
        Op::Renew(leases, until) => {
            let mut out = Vec::with_capacity(leases.len());
            // Columns read leniently: one damaged row (text where a number
            // belongs) must not fail the renewal of every lease the worker
            // holds. Its own lease is reported lost, so only its handler
            // stops, and the claim that takes the row next fails it.
            let number = |v: ValueRef<'_>| v.as_i64_or_null().ok();
            for lease in leases {
                let renewed: Option<Option<(Option<Millis>, i64)>> = c
                    .prepare_cached(
                        "UPDATE instances SET lease_expires_at = ?1, run_at = ?1 \
                         WHERE id = ?2 AND lease_owner = ?3 AND runs = ?4 AND status = 'in_progress' \
                         RETURNING deadline_at, pause_requested",
                    )?
                    .query_row(params![until, lease.instance.as_str(), lease.owner, lease.run], |r| {
                        let deadline = number(r.get_ref(0)?);
                        let pause = number(r.get_ref(1)?).flatten();
                        Ok(deadline.zip(pause))
                    })
                    .optional()?;
                let (held, deadline_at, pause_requested) = match renewed {
                    Some(Some((deadline, pause))) => (true, deadline, pause != 0),
                    Some(None) => {
                        c.leases().end(lease.instance.as_str());
                        tracing::warn!(
                            id = %lease.instance,
                            "an instance's deadline or pause flag is unreadable: its handler stops, and its next claim fails it"
                        );
                        (false, None, false)
                    }
                    None => {
                        c.leases().end(lease.instance.as_str());
                        let deadline: Option<Option<Millis>> = c
                            .prepare_cached("SELECT deadline_at FROM instances WHERE id = ?1")?
                            .query_row(params![lease.instance.as_str()], |r| {
                                Ok(number(r.get_ref(0)?).flatten())
                            })
                            .optional()?;
                        (false, deadline.flatten(), false)
                    }
                };
                out.push(Renewal {
                    lease: lease.clone(),
                    held,
                    until: *until,
                    deadline_at,
                    pause_requested,
                });
            }
            Ok(Reply::Renewed(out))
        }
        Op::Cancel(id, at) => {
            let control = control(c, id)?;
            if control == Control::Applied {
                cancel_tree(c, id.as_str(), *at, "parent cancelled")?;
            }
            Ok(Reply::Control(control))
        }
        Op::SetDeadline(id, deadline_at, at) => {
            let control = control(c, id)?;
            if control == Control::Applied {
                // A waiting instance is due at its deadline at the latest,
                // to end there: only a running handler watches it itself.
                // One set while paused is set in paused time: resume adds
                // only what is paused from now on.
                c.prepare_cached(
                    "UPDATE instances SET deadline_at = ?1, updated_at = ?2, \
                     run_at = CASE WHEN status IN ('pending', 'listening') AND run_at > ?1 \
                     THEN ?1 ELSE run_at END, \
                     paused_at = CASE WHEN status = 'paused' THEN ?2 ELSE paused_at END \
                     WHERE id = ?3",
                )?
                .execute(params![deadline_at, at, id.as_str()])?;
                let message = format_millis(*deadline_at);
                event(
                    c,
                    id.as_str(),
                    *at,
                    "deadline_changed",
                    None,
                    None,
                    Some(&message),
                    None,
                )?;
            }
            Ok(Reply::Control(control))
        }
        Op::Suspend(lease, suspend) => suspend_op(c, lease, suspend)?.map(|()| Reply::Done),
        Op::SendEvent {
            id,
            name,
            payload,
            key,
            at,
        } => {
            let mut control = control(c, id)?;
            if let (Some(key), Control::Applied | Control::Terminal(_)) = (key, control) {
                // A key seen before is a duplicate, whatever became of the
                // instance since; a new one is used up only by an event kept.
                let seen = c
                    .prepare_cached("SELECT 1 FROM event_keys WHERE instance_id = ?1 AND key = ?2")?
                    .exists(params![id.as_str(), key])?;
                if seen {
                    control = Control::Duplicate;
                } else if control == Control::Applied {
                    c.prepare_cached(
                        "INSERT INTO event_keys (instance_id, key, sent_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id.as_str(), key, at])?;
                }
            }
            if control == Control::Applied {
                c.prepare_cached("INSERT INTO inbox (instance_id, name, payload, sent_at) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![id.as_str(), name, payload, at])?;
                c.prepare_cached(
                    "UPDATE instances SET status = 'pending', run_at = ?1, wait_event = NULL \
                     WHERE id = ?2 AND status = 'listening' AND wait_event = ?3",
                )?
                .execute(params![at, id.as_str(), name])?;
                event(
                    c,
                    id.as_str(),
                    *at,
                    "event_sent",
                    None,
                    None,
                    Some(name),
                    None,
                )?;
            }
            Ok(Reply::Control(control))
        }
        Op::TakeEvent {
            lease,
            name,
            step,
            at,
        } => {
            // Fenced without counting as progress: a look that finds
            // nothing starts no count over (see `take_event` below).
            let held = c
                .prepare_cached(
                    "SELECT 1 FROM instances \
                     WHERE id = ?1 AND lease_owner = ?2 AND runs = ?3 AND status = 'in_progress'",
                )?
                .exists(params![lease.instance.as_str(), lease.owner, lease.run])?;
            if !held {
                return Ok(Err(StoreError::LeaseLost(lease.instance.clone())));
            }
            // A key recorded already (a late run of the same wait) answers
            // with its record and takes nothing: an event taken under it
            // would be lost, its record the earlier one's.
            let recorded: Option<Option<String>> = c
                .prepare_cached("SELECT output FROM steps WHERE instance_id = ?1 AND key = ?2")?
                .query_row(params![lease.instance.as_str(), step], |r| r.get(0))
                .optional()?;
            if let Some(output) = recorded {
                return Ok(Ok(Reply::Taken(output)));
            }
            // Read before it is taken: a payload that is not text (bytes
            // written behind the store's back) stays in the inbox for a
            // repair, and the run pauses on it rather than failing the
            // whole batch, and then the instance, every few seconds.
            let next: Option<(i64, Result<String, Db>)> = c
                .prepare_cached(
                    "SELECT seq, payload FROM inbox WHERE instance_id = ?1 AND name = ?2 \
                     ORDER BY seq LIMIT 1",
                )?
                .query_row(params![lease.instance.as_str(), name], |r| {
                    Ok((r.get(0)?, r.get(1)))
                })
                .optional()?;
            let taken = match next {
                None => None,
                Some((_, Err(err))) if unreadable(&err) => {
                    return Ok(Err(StoreError::Corrupt {
                        id: lease.instance.clone(),
                        message: format!("the payload of its event `{name}` cannot be read: {err}"),
                    }))
                }
                Some((_, Err(err))) => return Err(err),
                Some((seq, Ok(payload))) => {
                    c.prepare_cached("DELETE FROM inbox WHERE seq = ?1")?
                        .execute([seq])?;
                    Some(payload)
                }
            };
            if let Some(payload) = &taken {
                // A step recorded: `updated_at` moves as for any other, and
                // the run got somewhere.
                c.prepare_cached(
                    "UPDATE instances SET updated_at = ?1, interrupted_runs = 0 WHERE id = ?2",
                )?
                .execute(params![at, lease.instance.as_str()])?;
                c.prepare_cached(
                    "INSERT INTO steps (instance_id, key, output, attempts, started_at, finished_at, seq) \
                     VALUES (?1, ?2, ?3, 1, ?4, ?4, ?5) ON CONFLICT (instance_id, key) DO NOTHING",
                )?
                .execute(params![lease.instance.as_str(), step, payload, at, c.next_seq(1)?])?;
                event(
                    c,
                    lease.instance.as_str(),
                    *at,
                    "event_received",
                    Some(step),
                    None,
                    Some(name),
                    None,
                )?;
            }
            Ok(Reply::Taken(taken))
        }
        Op::Pause(id, at) => {
            let control = control(c, id)?;
            if control == Control::Applied {
                let paused = c
                    .prepare_cached(
                        "UPDATE instances SET status = 'paused', paused_at = ?1, updated_at = ?1 \
                         WHERE id = ?2 AND status IN ('pending', 'listening')",
                    )?
                    .execute(params![at, id.as_str()])?
                    == 1;
                if paused {
                    event(c, id.as_str(), *at, "paused", None, None, None, None)?;
                } else {
                    c.prepare_cached("UPDATE instances SET pause_requested = 1 WHERE id = ?1 AND status = 'in_progress'")?
                        .execute(params![id.as_str()])?;
                }
            }
            Ok(Reply::Control(control))
        }
        Op::Resume(id, at) => {
            let control = control(c, id)?;
            if control == Control::Applied {
                let resumed = c
                    .prepare_cached(
                        "UPDATE instances SET status = 'pending', \
                             run_at = CASE WHEN runs = 0 THEN MAX(?1, run_at) ELSE ?1 END, \
                             updated_at = ?1, pause_requested = 0, \
                             deadline_at = deadline_at + (?1 - COALESCE(paused_at, ?1)), paused_at = NULL, \
                             interrupted_runs = 0 \
                         WHERE id = ?2 AND status = 'paused'",
                    )?
                    .execute(params![at, id.as_str()])?
                    == 1;
                if resumed {
                    event(c, id.as_str(), *at, "resumed", None, None, None, None)?;
                } else {
                    c.prepare_cached("UPDATE instances SET pause_requested = 0 WHERE id = ?1")?
                        .execute(params![id.as_str()])?;
                }
            }
            Ok(Reply::Control(control))
        }
        Op::ReleaseOwner(owner, at) => {
            c.leases().held.clear();
            let ids: Vec<Option<String>> = c
                .prepare_cached(
                    "UPDATE instances INDEXED BY instances_status \
                     SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ?1, run_at = ?1, status = 'pending', \
                         interrupted_runs = MIN(interrupted_runs, 4294967294) + 1 \
                     WHERE status = 'in_progress' AND lease_owner = ?2 RETURNING id",
                )?
                .query_map(params![at, owner], text_id)?
                .collect::<Result<_, _>>()?;
            for id in ids.iter().flatten() {
                event(
                    c,
                    id,
                    *at,
                    "released",
                    None,
                    None,
                    Some("worker died"),
                    None,
                )?;
            }
            Ok(Reply::Count(ids.len() as u64))
        }
        Op::Purge {
            before,
            workflow,
            trees,
            rows,
            from,
        } => Ok(Reply::Purged(purge(
            c,
            *before,
            workflow.as_deref(),
            *trees,
            *rows,
            from.clone(),
        )?)),
        Op::AdvanceSchedule(workflow, checked, fired) => {
            let (tick, id) = match fired {
                Some((tick, id)) => (Some(*tick), Some(id.as_str())),
                None => (None, None),
            };
            // A mark not stored as an integer (damaged) counts as none,
            // so the next one overwrites it; text would compare above any.
            const LAST_TICK: &str =
                "CASE WHEN typeof(last_tick) = 'integer' THEN last_tick ELSE -1 END";
            c.prepare_cached(&format!(
                "INSERT INTO schedules (workflow, checked_until, last_tick, last_instance) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (workflow) DO UPDATE SET \
                     checked_until = CASE WHEN typeof(checked_until) = 'integer' \
                         AND checked_until > excluded.checked_until \
                         THEN checked_until ELSE excluded.checked_until END, \
                     last_instance = CASE WHEN excluded.last_tick > {LAST_TICK} \
                         THEN excluded.last_instance ELSE last_instance END, \
                     last_tick = CASE WHEN excluded.last_tick > {LAST_TICK} \
                         THEN excluded.last_tick ELSE last_tick END",
            ))?
            .execute(params![workflow, checked, tick, id])?;
            Ok(Reply::Done)
        }
        Op::PutDefinitions(definitions, at) => {
            for (name, json) in definitions {
                c.prepare_cached(
                    "INSERT INTO definitions (name, definition, recorded_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, recorded_at = excluded.recorded_at",
                )?
                .execute(params![name, json, at])?;
            }
            Ok(Reply::Done)
        }
    })
}

/// Ends `root` (unless it already ended) and every unfinished descendant
/// `Cancelled`, each with a `cancelled` event (a descendant's carries
/// `message`), and wakes the parents waiting for them. Their leases end:
/// the writer forgets them. Used by a cancel and by a timeout (`root` is
/// then `TimedOut` already, and only its descendants change). The rows
/// are not tracked one by one: the op's `note_writes` counts it untracked.
fn cancel_tree(c: &Tx<'_, '_>, root: &str, at: Millis, message: &str) -> Result<(), Db> {
    let cancelled = c
        .prepare_cached(concat!(
            "WITH RECURSIVE tree(id) AS ( \
                 SELECT ?1 UNION SELECT i.id FROM instances i JOIN tree t ON i.parent_id = t.id \
             ) \
             UPDATE instances SET status = 'cancelled', updated_at = ?2, finished_at = ?2, \
                 lease_owner = NULL, lease_expires_at = NULL \
             WHERE id IN (SELECT id FROM tree) \
               AND status NOT IN ",
            ended!(),
            " RETURNING id"
        ))?
        .query_map(params![root, at], text_id)?
        .collect::<Result<Vec<_>, _>>()?;
    for cancelled_id in cancelled.iter().flatten() {
        c.leases().end(cancelled_id);
        let message = (cancelled_id != root).then_some(message);
        event(c, cancelled_id, at, "cancelled", None, None, message, None)?;
        wake_parent(c, cancelled_id, at)?;
    }
    Ok(())
}

/// Makes the parent of `child` due now if it is listening for `child`.
fn wake_parent(c: &Tx<'_, '_>, child: &str, at: Millis) -> Result<(), Db> {
    // The parent's id is not at hand; a parent woken counts as untracked.
    c.unsynced().wrote_untracked();
    c.hot()
        .wake_parent
        .borrow_mut()
        .execute(params![at, child])?;
    Ok(())
}

fn suspend_op(c: &Tx<'_, '_>, lease: &Lease, s: &Suspend) -> Result<Result<(), StoreError>, Db> {
    c.leases().end(lease.instance.as_str());
    let pause: Option<i64> = c
        .prepare_cached(
            "SELECT pause_requested FROM instances \
             WHERE id = ?1 AND lease_owner = ?2 AND runs = ?3 AND status = 'in_progress'",
        )?
        .query_row(
            params![lease.instance.as_str(), lease.owner, lease.run],
            |r| r.get(0),
        )
        .optional()?;
    let Some(pause) = pause else {
        return Ok(Err(StoreError::LeaseLost(lease.instance.clone())));
    };
    // Checked in the same transaction as the suspension: a wake-up that
    // arrived while the handler ran is not lost.
    let event_waiting = match &s.wait_event {
        Some(name) => c
            .prepare_cached("SELECT 1 FROM inbox WHERE instance_id = ?1 AND name = ?2 LIMIT 1")?
            .exists(params![lease.instance.as_str(), name])?,
        None => false,
    };
    let child_done = match &s.wait_child {
        Some(child) => c
            .prepare_cached(concat!(
                "SELECT 1 FROM instances WHERE id = ?1 AND status IN ",
                ended!()
            ))?
            .exists(params![child.as_str()])?,
        None => false,
    };
    // Paused by the engine (its reason in the history) or as asked.
    let paused_here = s.status == Status::Paused;
    let (status, run_at, kind, message, paused_at) = if paused_here || pause != 0 {
        let reason = paused_here.then(|| s.reason.clone());
        (Status::Paused, s.run_at, "paused", reason, Some(s.at))
    } else if event_waiting || child_done {
        (
            Status::Pending,
            s.at,
            "suspended",
            Some(format!("{}; already there", s.reason)),
            None,
        )
    } else {
        (
            s.status,
            s.run_at,
            "suspended",
            Some(s.reason.clone()),
            None,
        )
    };
    // `run_at` never later than the stored deadline: one moved while the
    // handler ran may not have reached it yet.
    c.prepare_cached(
        "UPDATE instances SET status = ?1, run_at = MIN(?2, COALESCE(deadline_at, ?2)), \
             wait_event = ?3, wait_child = ?4, retry_key = ?5, \
             retry_attempts = ?6, state = COALESCE(?7, state), updated_at = ?8, paused_at = ?9, \
             pause_requested = 0, lease_owner = NULL, lease_expires_at = NULL, interrupted_runs = 0 \
         WHERE id = ?10",
    )?
    .execute(params![
        status.as_str(),
        run_at,
        s.wait_event,
        s.wait_child.as_ref().map(InstanceId::as_str),
        s.retry.as_ref().map(|(k, _)| k.as_str()),
        s.retry.as_ref().map(|(_, n)| i64::from(*n)),
        s.state,
        s.at,
        paused_at,
        lease.instance.as_str()
    ])?;
    event(
        c,
        lease.instance.as_str(),
        s.at,
        kind,
        None,
        None,
        message.as_deref(),
        None,
    )?;
    Ok(Ok(()))
}

/// Deletes ended instances with their rows in every table: see
/// Where a purge's scan goes on from: the ended status it was at (an index
/// into the terminal statuses of [`Status::ALL`]) and the last root it
/// passed there, with what is left of that root's tree if it was deleted
/// only in part, which the next transaction deletes first.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PurgeFrom {
    status: usize,
    after: Vec<u8>,
    rest: Rest,
}

/// What is left of a tree deleted in part: the first `left` of its
/// members, root first. Shared, not copied: the operation carrying it is
/// cloned for every transaction (and every retry of one).
#[derive(Debug, Clone, Default, PartialEq)]
struct Rest {
    members: Arc<[Member]>,
    left: usize,
}

/// An instance of a tree being purged: its id as stored, and its tags.
type Member = (Vec<u8>, Option<String>);

/// What one purge transaction did.
#[derive(Debug, PartialEq)]
pub(crate) struct Purged {
    /// Instances deleted.
    pub(crate) instances: u64,
    /// Trees deleted.
    pub(crate) trees: usize,
    /// Where to go on from, if it stopped before the end of the scan.
    pub(crate) next: Option<PurgeFrom>,
}

/// [`Store::purge`], one transaction of it: up to `limit` trees, stopping
/// once the rows deleted pass `rows` (a purge of large trees would hold
/// the single writer, and every running workflow's writes, for as long as
/// it deletes), within a tree too: a tree larger than that goes leaves
/// first over several transactions, its root last. Ids are read and
/// bound as the bytes stored, so a row whose id is not UTF-8 does not stop
/// the purge.
fn purge(
    c: &Tx<'_, '_>,
    before: Millis,
    workflow: Option<&str>,
    limit: usize,
    rows: u64,
    from: PurgeFrom,
) -> Result<Purged, Db> {
    let mut done = Purged {
        instances: 0,
        trees: 0,
        next: None,
    };
    if limit == 0 {
        return Ok(done);
    }
    // Trees go whole: roots (no parent row) that ended and were created
    // (ids sort by creation) before `before`, one status at a time in id
    // order (the index's order: nothing to sort), a page at a time. A root
    // with a running child is passed over by the query, one whose tree is
    // not all ended by `purge_tree`; either way the scan goes on past it,
    // so held-back trees never fill a batch, and the next transaction
    // starts after them.
    let (index, workflow_test) = match workflow {
        Some(_) => ("instances_workflow_status", "i.workflow = ?6 AND "),
        None => ("instances_status", ""),
    };
    let sql = format!(
        "SELECT i.id FROM instances i INDEXED BY {index} \
         WHERE {workflow_test}i.status = ?5 AND i.id > ?4 AND i.id < ?2 AND i.finished_at < ?1 \
           AND NOT EXISTS (SELECT 1 FROM instances p WHERE p.id = i.parent_id) \
           AND NOT EXISTS (SELECT 1 FROM instances k \
                           WHERE k.parent_id = i.id AND k.status NOT IN {ENDED}) \
         ORDER BY i.id LIMIT ?3"
    );
    let floor = InstanceId::floor_at(before);
    let page = limit.clamp(1, 500);
    let ended: Vec<Status> = Status::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    let mut deleted_rows = 0;
    let mut at = from;
    if at.rest.left > 0 {
        // Read whole and all ended in an earlier transaction; a child
        // started under one of them since is looked for as each goes.
        let tree = delete_members(c, std::mem::take(&mut at.rest), rows)?;
        if let Some(rest) = tally(&mut done, &mut deleted_rows, tree, limit, rows) {
            tracing::debug!(done.instances, deleted_rows, "purged ended instances");
            at.rest = rest;
            done.next = Some(at);
            return Ok(done);
        }
    }
    while let Some(status) = ended.get(at.status) {
        loop {
            let mut select = c.prepare_cached(&sql)?;
            let id_bytes = |r: &Row<'_>| Ok(r.get_ref(0)?.as_bytes().unwrap_or_default().to_vec());
            let args = params![
                before,
                floor.as_str(),
                page as i64,
                text(&at.after),
                status.as_str()
            ];
            let roots: Vec<Vec<u8>> = match workflow {
                Some(workflow) => {
                    let mut args = args.to_vec();
                    args.push(&workflow);
                    select
                        .query_map(args.as_slice(), id_bytes)?
                        .collect::<Result<_, _>>()?
                }
                None => select
                    .query_map(args, id_bytes)?
                    .collect::<Result<_, _>>()?,
            };
            drop(select);
            for root in &roots {
                at.after.clone_from(root);
                let tree = purge_tree(c, root, before, rows - deleted_rows)?;
                if let Some(rest) = tally(&mut done, &mut deleted_rows, tree, limit, rows) {
                    tracing::debug!(done.instances, deleted_rows, "purged ended instances");
                    at.rest = rest;
                    done.next = Some(at);
                    return Ok(done);
                }
            }
            if roots.len() < page {
                break;
            }
        }
        at = PurgeFrom {
            status: at.status + 1,
            after: Vec::new(),
            rest: Rest::default(),
        };
    }
    if done.instances > 0 {
        tracing::debug!(done.instances, deleted_rows, "purged ended instances");
    }
    Ok(done)
}

/// Counts what [`purge_tree`] did into `done`; `Some` if the transaction
/// stops here, with what is left of a tree deleted only in part.
fn tally(
    done: &mut Purged,
    deleted_rows: &mut u64,
    tree: TreePurge,
    limit: usize,
    rows: u64,
) -> Option<Rest> {
    match tree {
        TreePurge::Kept => None,
        TreePurge::Part { instances, rest } => {
            done.instances += instances;
            Some(rest)
        }
        TreePurge::Whole {
            instances,
            rows: rows_of_tree,
        } => {
            done.instances += instances;
            done.trees += 1;
            *deleted_rows += rows_of_tree;
            (done.trees >= limit || *deleted_rows >= rows).then(Rest::default)
        }
    }
}

/// The terminal statuses, as SQL, for `format!`.
const ENDED: &str = ended!();

/// Column 0 of `r`, an instance id, if it is UTF-8 text. A row whose id was
/// damaged outside the engine (a blob, bytes that are not UTF-8) still
/// changes with the rest of a cancelled tree or a dead worker's leases;
/// it is only left out of what follows by id (events, a parent's wake-up),
/// so that it does not fail the write for all the others.
fn text_id(r: &Row<'_>) -> rusqlite::Result<Option<String>> {
    let id = match r.get_ref(0)? {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        _ => None,
    };
    if id.is_none() {
        tracing::warn!(id = %shown_id(r.get_ref(0)?), "an instance id is not text: no event is recorded for it");
    }
    Ok(id)
}

/// Text bound as the bytes given, UTF-8 or not.
fn text(id: &[u8]) -> rusqlite::types::ToSqlOutput<'_> {
    rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(id))
}

/// What [`purge_tree`] did.
enum TreePurge {
    /// Nothing: an instance of the tree has not ended, or not before the
    /// purge's time.
    Kept,
    /// All of it, root included.
    Whole { instances: u64, rows: u64 },
    /// Its deepest instances, up to about the rows it was given: the rest,
    /// its root last, is left for the next transaction.
    Part { instances: u64, rest: Rest },
}

/// Deletes `root` and all its descendants, with their rows in every table,
/// if every one of them ended before `before`: leaves first, stopping
/// once more than `budget` rows went (at least one instance goes), so
/// that what is left is still one tree under its root.
fn purge_tree(c: &Tx<'_, '_>, root: &[u8], before: Millis, budget: u64) -> Result<TreePurge, Db> {
    // Root first, deepest last: deleted from the end.
    let tree: Vec<(Member, bool)> = c
        .prepare_cached(concat!(
            "WITH RECURSIVE tree(id, depth) AS ( \
                 SELECT ?1, 0 UNION SELECT i.id, t.depth + 1 FROM instances i JOIN tree t ON i.parent_id = t.id \
             ) \
             SELECT i.id, i.tags, COALESCE(i.status IN ",
            ended!(),
            " AND i.finished_at < ?2, 0) FROM tree t JOIN instances i ON i.id = t.id \
             ORDER BY t.depth"
        ))?
        .query_map(params![text(root), before], |r| {
            Ok((
                (
                    r.get_ref(0)?.as_bytes().unwrap_or_default().to_vec(),
                    r.get(1).ok().flatten(),
                ),
                r.get::<_, bool>(2)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    if tree.is_empty() || !tree.iter().all(|(_, ended)| *ended) {
        return Ok(TreePurge::Kept);
    }
    let members: Arc<[Member]> = tree.into_iter().map(|(member, _)| member).collect();
    let left = members.len();
    delete_members(c, Rest { members, left }, budget)
}

/// Deletes the instances of an ended tree from the end of `rest`
/// (deepest first, its root last), with their rows in every table, until
/// more than `budget` rows went. One with a child not ended (started
/// since the tree was read, by a handler that had not heard its parent
/// ended) stops it: the rest stays, as a tree not all ended does.
fn delete_members(c: &Tx<'_, '_>, mut rest: Rest, budget: u64) -> Result<TreePurge, Db> {
    let (mut rows, mut instances) = (0, 0);
    while rest.left > 0 {
        let (id, tags) = &rest.members[rest.left - 1];
        let running_child = c
            .prepare_cached(concat!(
                "SELECT 1 FROM instances WHERE parent_id = ?1 AND status NOT IN ",
                ended!(),
                " LIMIT 1"
            ))?
            .exists(params![text(id)])?;
        if running_child {
            return Ok(TreePurge::Part {
                instances,
                rest: Rest::default(),
            });
        }
        rest.left -= 1;
        let id = id.as_slice();
        for sql in [
            "DELETE FROM steps WHERE instance_id = ?1",
            "DELETE FROM events WHERE instance_id = ?1",
            "DELETE FROM inbox WHERE instance_id = ?1",
            "DELETE FROM event_keys WHERE instance_id = ?1",
        ] {
            rows += c.prepare_cached(sql)?.execute(params![text(id)])? as u64;
        }
        // Tags are keyed by (name, value, instance): delete them by key
        // from the row's own copy, or by a scan if that does not read.
        match tags
            .as_deref()
            .and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(t).ok())
        {
            Some(tags) => {
                for (name, value) in &tags {
                    c.prepare_cached(
                        "DELETE FROM instance_tags WHERE name = ?1 AND value = ?2 AND instance_id = ?3",
                    )?
                    .execute(params![name, value, text(id)])?;
                }
            }
            None => {
                c.prepare_cached("DELETE FROM instance_tags WHERE instance_id = ?1")?
                    .execute(params![text(id)])?;
            }
        }
        // Counted only if it was still there.
        let gone = c
            .prepare_cached("DELETE FROM instances WHERE id = ?1")?
            .execute(params![text(id)])? as u64;
        rows += gone;
        instances += gone;
        if rows > budget && rest.left > 0 {
            return Ok(TreePurge::Part { instances, rest });
        }
    }
    Ok(TreePurge::Whole { instances, rows })
}

/// Whether a control operation applies to `id`: it exists and is unfinished.
fn control(c: &Tx<'_, '_>, id: &InstanceId) -> Result<Control, Db> {
    // Read as whatever it holds: a status that is not even text must not
    // make its instance impossible to cancel.
    let status: Option<Option<Status>> = c
        .prepare_cached("SELECT status FROM instances WHERE id = ?1")?
        .query_row(params![id.as_str()], |r| {
            Ok(r.get_ref(0)?.as_str().ok().and_then(|s| s.parse().ok()))
        })
        .optional()?;
    Ok(match status {
        None => Control::NotFound,
        Some(Some(status)) if status.is_terminal() => Control::Terminal(status),
        // An unreadable status is treated as unfinished, so it can be cancelled.
        Some(_) => Control::Applied,
    })
}

/// Zeroes the count of interrupted runs (the run got somewhere) and
/// records a step's failed attempts, when given, if `lease` is current;
/// false when it is not. `updated_at` stays: neither status, state,
/// deadline nor lease changes.
fn touch(c: &Tx<'_, '_>, lease: &Lease, retry: Option<(&str, u32)>) -> Result<bool, Db> {
    Ok(c.prepare_cached(
        "UPDATE instances SET interrupted_runs = 0, \
             retry_key = COALESCE(?4, retry_key), retry_attempts = COALESCE(?5, retry_attempts) \
         WHERE id = ?1 AND lease_owner = ?2 AND runs = ?3 AND status = 'in_progress'",
    )?
    .execute(params![
        lease.instance.as_str(),
        lease.owner,
        lease.run,
        retry.map(|(step, _)| step),
        retry.map(|(_, attempts)| i64::from(attempts))
    ])? == 1)
}

#[allow(clippy::too_many_arguments)]
fn event(
    c: &Tx<'_, '_>,
    instance: &str,
    at: Millis,
    kind: &str,
    step: Option<&str>,
    attempt: Option<u32>,
    message: Option<&str>,
    duration_ms: Option<i64>,
) -> Result<(), Db> {
    let seq = c.next_seq(1)?;
    c.hot().insert_event.borrow_mut().execute(params![
        instance,
        at,
        kind,
        step,
        attempt.map(i64::from),
        message,
        duration_ms,
        seq
    ])?;
    Ok(())
}

/// How many columns `raw_instance` reads: those of `COLUMNS`.
const COLUMNS_READ: usize = 22;

fn raw_instance(r: &Row<'_>) -> Result<RawInstance, Db> {
    Ok(RawInstance {
        id: r.get(0)?,
        workflow: r.get(1)?,
        status: r.get(2)?,
        input: r.get(3)?,
        output: r.get(4)?,
        error: r.get(5)?,
        state: r.get(6)?,
        tags: r.get(7)?,
        key: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        run_at: r.get(13)?,
        deadline_at: r.get(14)?,
        runs: r.get(15)?,
        parent: r.get(16)?,
        wait_event: r.get(17)?,
        wait_child: r.get(18)?,
        retry_key: r.get(19)?,
        retry_attempts: r.get(20)?,
        pause_requested: r.get(21)?,
    })
}

fn create(
    c: &Tx<'_, '_>,
    new: &NewInstance,
    dedup: Option<&[Status]>,
) -> Result<Result<Created, StoreError>, Db> {
    // Atomic: this runs inside the writer's IMMEDIATE transaction, which
    // holds SQLite's write lock across the lookup and the insert.
    if let (Some(statuses), Some(key)) = (dedup, &new.key) {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM instances WHERE workflow = ?1 AND dedup_key = ?2 \
             AND status IN (SELECT value FROM json_each(?3)) ORDER BY id DESC LIMIT 1"
        );
        let existing = c
            .prepare_cached(&sql)?
            .query_row(
                params![
                    new.workflow,
                    key,
                    serde_json::to_string(&statuses).unwrap_or_default()
                ],
                // A damaged row holding the key is that instance's error
                // (`Corrupt`, naming it), not the database's: the batch
                // it came in commits.
                |r| match raw_instance(r) {
                    Ok(raw) => Ok(Ok(raw)),
                    Err(err) if unreadable(&err) => Ok(Err(StoreError::Corrupt {
                        id: InstanceId::from(shown_id(r.get_ref(0)?)),
                        message: err.to_string(),
                    })),
                    Err(err) => Err(err),
                },
            )
            .optional()?;
        match existing {
            Some(Ok(raw)) => return Ok(decode_instance(raw).map(Created::Existing)),
            Some(Err(corrupt)) => return Ok(Err(corrupt)),
            None => {}
        }
    }
    // A child started by a parent already cancelled or timed out (its
    // handler has not heard yet) is cancelled with it, as the cascade would
    // have.
    let cancelled = match &new.parent {
        Some(parent) => c
            .prepare_cached("SELECT status FROM instances WHERE id = ?1")?
            .query_row(params![parent.as_str()], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|status| status.parse().ok())
            .and_then(cancelled_with_parent),
        None => None,
    };
    let parent_cancelled = cancelled.is_some();
    let tags = serde_json::to_string(&new.tags).unwrap_or_else(|_| "{}".to_owned());
    c.hot().insert_instance.borrow_mut().execute(params![
        new.id.as_str(),
        new.workflow,
        new.input,
        tags,
        new.key,
        new.created_at,
        new.run_at,
        new.deadline_at,
        new.parent.as_ref().map(InstanceId::as_str)
    ])?;
    for (name, value) in &new.tags {
        c.prepare_cached(
            "INSERT INTO instance_tags (name, value, instance_id) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![name, value, new.id.as_str()])?;
    }
    event(
        c,
        new.id.as_str(),
        new.created_at,
        "created",
        None,
        None,
        None,
        None,
    )?;
    if parent_cancelled {
        c.prepare_cached(
            "UPDATE instances SET status = 'cancelled', finished_at = ?1 WHERE id = ?2",
        )?
        .execute(params![new.created_at, new.id.as_str()])?;
        let message = cancelled;
        let id = new.id.as_str();
        event(
            c,
            id,
            new.created_at,
            "cancelled",
            None,
            None,
            message,
            None,
        )?;
    }
    // The row as inserted, without reading it back.
    Ok(Ok(Created::New(new.clone().into_row(parent_cancelled))))
}

/// A claim walks one workflow's range of `instances_runnable` in `run_at`
/// order and stops at `limit`; a claim for several workflows runs it for
/// each and keeps the earliest. The index is named because, without
/// `ANALYZE` statistics, SQLite's planner prefers
/// `instances_workflow_status` and then sorts every pending row on each
/// claim. `LIMIT ?2 + 0`, not `LIMIT ?2`: the planner reads a bare bound
/// limit, so SQLite would re-prepare the statement on every claim.
///
/// Two clocks meet in `run_at`: a running row's is its lease's end, judged
/// by the system clock (`?1`); a waiting row's is its due time, judged by
/// the engine's (`?4`, the same unless a test moves it by hand).
pub(crate) fn claim_sql() -> String {
    format!(
        "SELECT {COLUMNS}, interrupted_runs FROM instances INDEXED BY instances_runnable \
         WHERE workflow = ?3 \
           AND (status = 'pending' OR status = 'in_progress' OR status = 'listening') \
           AND run_at <= MAX(?1, ?4) \
           AND run_at <= CASE WHEN status = 'in_progress' THEN ?1 ELSE ?4 END \
           AND (lease_expires_at IS NULL OR lease_expires_at < ?1) \
         ORDER BY run_at LIMIT ?2 + 0"
    )
}

/// Selects the due rows, then takes each by primary key, inside the
/// writer's transaction. One `UPDATE ... WHERE id IN (SELECT ...)
/// RETURNING` would build two temporary B-trees per claim; this builds none.
fn claim<'c>(c: &Tx<'_, 'c>, req: &ClaimRequest) -> Result<Vec<Claimed>, Db> {
    let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
    let mut select = c.hot().claim.borrow_mut();
    let mut read: Vec<Claimable> = Vec::new();
    // A name given twice would read, and take, its rows twice.
    let mut workflows: Vec<&String> = req.workflows.iter().collect();
    workflows.sort();
    workflows.dedup();
    for workflow in &workflows {
        for row in select.query_map(params![req.now, limit, workflow, req.due_by], claimable)? {
            read.push(row?);
        }
    }
    drop(select);
    if workflows.len() > 1 {
        // The earliest due of them all, the oldest first among those due
        // at once (a batch started together), whatever their workflow;
        // unreadable rows first, as they are failed whatever the limit.
        fn due(row: &Claimable) -> Option<(Millis, &str)> {
            match row {
                Claimable::Row(raw, _) => Some((raw.run_at, raw.id.as_str())),
                Claimable::Unreadable { .. } => None,
            }
        }
        read.sort_by(|a, b| due(a).cmp(&due(b)));
        let unreadable = read
            .iter()
            .filter(|row| matches!(row, Claimable::Unreadable { .. }))
            .count();
        read.truncate(unreadable.saturating_add(req.limit));
    }
    let mut raws = Vec::with_capacity(read.len());
    for row in read {
        match row {
            Claimable::Row(raw, interrupted) => {
                // One more for a run whose lease lapsed; `TAKE` writes it.
                // Saturating: a damaged counter must not panic the writer.
                let interrupted =
                    interrupted.saturating_add(u32::from(raw.status == "in_progress"));
                raws.push((raw, interrupted));
            }
            // Failed alone, before the others are taken: it would be the
            // oldest due row of every claim from now on.
            Claimable::Unreadable { id, why } => fail_corrupt(c, id.as_ref(), &why, req.due_by)?,
        }
    }
    let mut take = c.hot().take.borrow_mut();
    for (raw, interrupted_runs) in &mut raws {
        // A first run's `started` event is its row's `started_seq`.
        let started_seq = if raw.runs == 0 {
            Some(c.next_seq(1)?)
        } else {
            None
        };
        take.execute(params![
            req.owner,
            req.lease_until,
            req.due_by,
            raw.id,
            started_seq,
            *interrupted_runs
        ])?;
        // The row as the update left it, without reading it back.
        raw.status = Status::InProgress.as_str().to_owned();
        raw.runs = raw.runs.saturating_add(1);
        raw.run_at = req.lease_until;
        raw.updated_at = req.due_by;
        raw.started_at = raw.started_at.or(Some(req.due_by));
        raw.wait_event = None;
        raw.wait_child = None;
    }
    drop(take);
    let mut claimed = Vec::with_capacity(raws.len());
    for (raw, interrupted_runs) in raws {
        let id = raw.id.clone();
        let row = match decode_instance(raw) {
            Ok(row) => row,
            Err(err) => {
                fail_corrupt(
                    c,
                    ValueRef::Text(id.as_bytes()),
                    &err.to_string(),
                    req.due_by,
                )?;
                continue;
            }
        };
        // A first run has no steps to replay; skip the lookup.
        let steps = if row.runs > 1 {
            event(
                c,
                row.id.as_str(),
                req.due_by,
                "started",
                None,
                None,
                None,
                None,
            )?;
            match load_steps(c, &row.id) {
                Ok(steps) => steps,
                Err(err) if unreadable(&err) => {
                    let why = format!("corrupt row of instance {id}: step: {err}");
                    fail_corrupt(c, ValueRef::Text(id.as_bytes()), &why, req.due_by)?;
                    continue;
                }
                Err(err) => return Err(err),
            }
        } else {
            Vec::new()
        };
        let lease = Lease {
            instance: row.id.clone(),
            owner: req.owner.clone(),
            run: row.runs,
        };
        c.leases().grant(
            &lease,
            Held {
                parent: row.parent.is_some(),
                interrupted: interrupted_runs > 0,
            },
        );
        claimed.push(Claimed {
            row,
            lease,
            steps,
            interrupted_runs,
        });
    }
    // Oldest due first, as the claim query ordered them.
    Ok(claimed)
}

/// A row the claim's select read.
// Boxing the row would cost an allocation per claimed instance; a claim's
// rows were a `Vec<RawInstance>` before, just as large.
#[allow(clippy::large_enum_variant)]
enum Claimable {
    /// The row, and its count of interrupted runs before this claim.
    Row(RawInstance, u32),
    /// A column holds what it cannot (text that is not UTF-8, text where a
    /// number belongs): the instance is failed, the claim goes on.
    /// `id` is the value stored, of whatever type, so that failing the
    /// row updates that row.
    Unreadable { id: StoredId, why: String },
}

fn claimable(r: &Row<'_>) -> Result<Claimable, Db> {
    let read = raw_instance(r).and_then(|raw| {
        // The claim's select reads `interrupted_runs` after `COLUMNS`.
        let interrupted: i64 = r.get(COLUMNS_READ)?;
        // Past u32 (a damaged row) counts as the most, not as none:
        // the crash-loop guard must still trip.
        Ok(Claimable::Row(
            raw,
            u32::try_from(interrupted.max(0)).unwrap_or(u32::MAX),
        ))
    });
    match read {
        Ok(claimable) => Ok(claimable),
        Err(err) if unreadable(&err) => {
            let id = match r.get_ref(0)? {
                ValueRef::Text(bytes) => StoredId::Text(bytes.to_vec()),
                other => StoredId::Other(other.try_into().unwrap_or(rusqlite::types::Value::Null)),
            };
            let why = format!("corrupt row of instance {}: {err}", shown_id(id.as_ref()));
            Ok(Claimable::Unreadable { id, why })
        }
        Err(err) => Err(err),
    }
}

/// A row's id as stored: text, UTF-8 or not, or a value of another type
/// that damage left there.
enum StoredId {
    Text(Vec<u8>),
    Other(rusqlite::types::Value),
}

impl StoredId {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            StoredId::Text(bytes) => ValueRef::Text(bytes),
            StoredId::Other(value) => value.into(),
        }
    }
}

/// An id as a message shows it: bytes that are no UTF-8 text as the SQL
/// literal that finds them (see [`crate::rows::shown_bytes`]).
fn shown_id(id: ValueRef<'_>) -> String {
    match id {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => crate::rows::shown_bytes(bytes),
        other => format!("{other:?}"),
    }
}

/// Whether `err` says a stored value does not decode, rather than that the
/// database failed.
fn unreadable(err: &Db) -> bool {
    matches!(
        err,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

/// Fails the instance whose row is corrupt, alone: the other instances
/// run, and its parent, if it waits for it, wakes to see it failed. `id` is
/// bound as stored (text, UTF-8 or not, or another type), so that the row
/// it names is the one updated: a row left due would take a slot of every
/// claim from then on.
fn fail_corrupt(c: &Tx<'_, '_>, id: ValueRef<'_>, why: &str, at: Millis) -> Result<(), Db> {
    let shown = shown_id(id);
    tracing::error!(id = %shown, error = %why, "failing an instance whose row is corrupt");
    c.leases().end(&shown);
    c.prepare_cached(
        "UPDATE instances SET status = 'failed', error = ?1, finished_at = ?2, \
         lease_owner = NULL, lease_expires_at = NULL WHERE id = ?3",
    )?
    .execute(params![why, at, rusqlite::types::ToSqlOutput::Borrowed(id)])?;
    // An id that is not UTF-8 text cannot be read back through the API anyway.
    if let Ok(id) = id.as_str() {
        event(c, id, at, "failed", None, None, Some(why), None)?;
        wake_parent(c, id, at)?;
    }
    Ok(())
}

fn load_steps(c: &Tx<'_, '_>, id: &InstanceId) -> Result<Vec<StepRow>, Db> {
    c.prepare_cached(
        "SELECT key, output, error, state, attempts, started_at, finished_at FROM steps WHERE instance_id = ?1 ORDER BY seq",
    )?
    .query_map(params![id.as_str()], |r| {
        let attempts: i64 = r.get(4)?;
        Ok(StepRow {
            key: r.get(0)?,
            output: r.get(1)?,
            error: r.get(2)?,
            state: r.get(3)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            started_at: r.get(5)?,
            finished_at: r.get(6)?,
        })
    })?
    .collect()
}

fn commit_step(
    c: &Tx<'_, '_>,
    lease: &Lease,
    step: &StepRow,
) -> Result<Result<(), StoreError>, Db> {
    // A read guards the write (the instance row is only rewritten when the
    // step changed the state, so most steps dirty only the steps table),
    // and only when this writer has not seen the lease granted.
    let known = c.leases().step_of(lease);
    let reset_interrupted = match known {
        Some(reset) => reset,
        None => {
            let held = c.hot().lease_held.borrow_mut().exists(params![
                lease.instance.as_str(),
                lease.owner,
                lease.run
            ])?;
            if !held {
                // Said here too: the run that sent it may be gone by the
                // answer (stopped by its own heartbeat for the same reason).
                tracing::info!(
                    id = %lease.instance,
                    step = %step.key,
                    run = lease.run,
                    "a late step result was refused: this run no longer holds the instance"
                );
                return Ok(Err(StoreError::LeaseLost(lease.instance.clone())));
            }
            // Its count is not known here: set it to 0 now, once.
            c.leases().grant(
                lease,
                Held {
                    parent: true,
                    interrupted: false,
                },
            );
            true
        }
    };
    // The step's history events are its row (see `INSERT_STEP`). First,
    // so that a second record of a key (never made by the engine) keeps
    // the first one and changes nothing else.
    let seq = c.next_seq(if step.state.is_some() { 2 } else { 1 })?;
    let inserted = c.hot().insert_step.borrow_mut().execute(params![
        lease.instance.as_str(),
        step.key,
        step.output,
        step.error,
        step.state,
        i64::from(step.attempts),
        step.started_at,
        step.finished_at,
        seq
    ])?;
    if inserted == 0 {
        if reset_interrupted {
            // Nothing recorded: the next step of this run still resets it.
            c.leases().reset_pending(lease);
        }
        return Ok(Ok(()));
    }
    if reset_interrupted {
        // A step recorded: this run got somewhere.
        c.prepare_cached(
            "UPDATE instances SET interrupted_runs = 0 WHERE id = ?1 AND interrupted_runs > 0",
        )?
        .execute(params![lease.instance.as_str()])?;
    }
    if step.state.is_some() {
        c.prepare_cached("UPDATE instances SET updated_at = ?1, state = ?2 WHERE id = ?3")?
            .execute(params![
                step.finished_at,
                step.state,
                lease.instance.as_str()
            ])?;
    }
    if step.attempts > 1 {
        // Retried: the row may hold its count of failed attempts, history
        // now. Only then, so most steps still leave the row alone.
        c.prepare_cached(
            "UPDATE instances SET retry_key = NULL, retry_attempts = NULL \
             WHERE id = ?1 AND retry_key = ?2",
        )?
        .execute(params![lease.instance.as_str(), step.key])?;
    }
    Ok(Ok(()))
}

/// A new instance of workflow `w`, created and due at `n`.
#[cfg(test)]
pub(crate) fn new_instance(n: Millis) -> NewInstance {
    NewInstance {
        id: InstanceId::at(n),
        workflow: "w".into(),
        input: "null".into(),
        tags: Default::default(),
        key: None,
        created_at: n,
        run_at: n,
        deadline_at: None,
        parent: None,
    }
}

/// A finish that completes the instance at `at`, output `1`.
#[cfg(test)]
pub(crate) fn completed_at(at: Millis) -> Finish {
    Finish {
        status: Status::Completed,
        output: Some("1".into()),
        error: None,
        state: None,
        at,
    }
}

/// A step recorded done at `at` (started a moment before), output `1`.
#[cfg(test)]
pub(crate) fn done_step(key: impl Into<String>, at: Millis) -> StepRow {
    StepRow {
        key: key.into(),
        output: Some("1".into()),
        error: None,
        state: None,
        attempts: 1,
        started_at: at - 1,
        finished_at: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A lone relaxed caller spins for its answer on a multi-threaded
    /// runtime only: on a current-thread one it would stall every task.
    #[test]
    fn callers_spin_on_multi_threaded_runtimes_only() {
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!current.block_on(async { multi_threaded() }));
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(multi.block_on(async { multi_threaded() }));
        assert!(!multi_threaded(), "outside a runtime");
    }

    /// What a durable store's writer is given.
    fn durable() -> Option<Arc<Horizon>> {
        Some(Arc::default())
    }

    /// `c` with the schema.
    fn migrate(c: Connection) -> Connection {
        for migration in crate::schema::MIGRATIONS {
            c.execute_batch(migration).unwrap();
        }
        c
    }

    /// An in-memory database with the schema.
    fn migrated() -> Connection {
        migrate(Connection::open_in_memory().unwrap())
    }

    fn claim_request(limit: usize) -> ClaimRequest {
        ClaimRequest {
            owner: "me".into(),
            workflows: vec!["w".into()],
            now: 100,
            due_by: 100,
            lease_until: 200,
            limit,
        }
    }

    #[test]
    fn the_claim_reads_interrupted_runs_right_after_the_columns() {
        assert_eq!(COLUMNS.split(',').count(), COLUMNS_READ);
        let sql = claim_sql();
        assert!(
            sql.contains(&format!("{COLUMNS}, interrupted_runs FROM")),
            "{sql}"
        );
    }

    /// A cached statement that SQLite re-prepares on each run costs a full
    /// parse and plan per claim; the hot path must not have one.
    #[test]
    fn claims_reuse_their_prepared_statement() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        for n in 0..10 {
            assert!(matches!(
                create(&t, &new_instance(n), None).unwrap(),
                Ok(Created::New(_))
            ));
        }
        let mut claimed = 0;
        for limit in 1..=4 {
            claimed += claim(&t, &claim_request(limit)).unwrap().len();
        }
        assert_eq!(claimed, 1 + 2 + 3 + 4);
        let select = session.hot.claim.borrow();
        assert_eq!(select.get_status(StatementStatus::RePrepare), 0);
    }

    /// A step of a lease this writer has forgotten (another connection
    /// wrote) still sets the count of interrupted runs back to 0.
    #[test]
    fn a_step_of_a_forgotten_lease_resets_interrupted_runs() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        create(&t, &new_instance(0), None).unwrap().unwrap();
        let mut req = claim_request(1);
        let mut last = None;
        for n in 0..3 {
            // Each claim comes after the last one's lease lapsed.
            req.now = 100 + n * 1_000;
            req.lease_until = req.now + 500;
            last = claim(&t, &req).unwrap().pop();
        }
        let last = last.expect("claimed");
        assert_eq!(last.interrupted_runs, 2);
        let count = |t: &Tx<'_, '_>| -> i64 {
            t.query_row("SELECT interrupted_runs FROM instances", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&t), 2);
        t.leases().held.clear();
        commit_step(&t, &last.lease, &done_step("s", 2_101))
            .unwrap()
            .unwrap();
        assert_eq!(count(&t), 0, "the run got somewhere");
    }

    /// A second record of a step already recorded records nothing, so it
    /// does not use up the reset of the count of interrupted runs: the
    /// run's next new step still makes it 0.
    #[test]
    fn a_step_recorded_twice_leaves_the_reset_to_the_next() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        create(&t, &new_instance(0), None).unwrap().unwrap();
        let mut req = claim_request(1);
        req.now = 100;
        req.lease_until = 600;
        let first = claim(&t, &req).unwrap().pop().expect("claimed");
        let step = |key: &str| done_step(key, 201);
        commit_step(&t, &first.lease, &step("a")).unwrap().unwrap();
        // Taken again after its lease lapsed: one interrupted run.
        req.now = 1_000;
        req.lease_until = 1_500;
        let second = claim(&t, &req).unwrap().pop().expect("claimed again");
        assert_eq!(second.interrupted_runs, 1);
        commit_step(&t, &second.lease, &step("a")).unwrap().unwrap();
        commit_step(&t, &second.lease, &step("b")).unwrap().unwrap();
        let count: i64 = t
            .query_row("SELECT interrupted_runs FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 0, "step b reset it");
    }

    /// A purge leaves no row of the instance in any table, tags included
    /// (which no read through the store would show).
    #[test]
    fn a_purge_leaves_no_rows_behind() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        let mut new = new_instance(0);
        new.tags.insert("team".into(), "a".into());
        new.tags.insert("tier".into(), "gold".into());
        create(&t, &new, None).unwrap().unwrap();
        let claimed = claim(&t, &claim_request(1)).unwrap().remove(0);
        let id = claimed.row.id.clone();
        let step = StepRow {
            key: "s".into(),
            output: Some("1".into()),
            error: None,
            state: Some("{}".into()),
            attempts: 1,
            started_at: 101,
            finished_at: 102,
        };
        commit_step(&t, &claimed.lease, &step).unwrap().unwrap();
        let send = Op::SendEvent {
            id: id.clone(),
            name: "e".into(),
            payload: "1".into(),
            key: Some("k".into()),
            at: 103,
        };
        apply(&t, &send).unwrap().unwrap();
        let finish = completed_at(104);
        apply(&t, &Op::Finish(claimed.lease, finish))
            .unwrap()
            .unwrap();
        let rows = |t: &Tx<'_, '_>| -> Vec<i64> {
            [
                "instances",
                "instance_tags",
                "steps",
                "events",
                "inbox",
                "event_keys",
            ]
            .iter()
            .map(|table| {
                t.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap()
            })
            .collect()
        };
        let before = rows(&t);
        assert!(before.iter().all(|n| *n > 0), "{before:?}");
        assert_eq!(
            purge(&t, 104, None, 10, u64::MAX, PurgeFrom::default())
                .unwrap()
                .instances,
            0,
            "ended at, not before"
        );
        assert_eq!(
            purge(&t, 105, None, 10, u64::MAX, PurgeFrom::default())
                .unwrap()
                .instances,
            1
        );
        assert_eq!(rows(&t), vec![0; 6]);
    }

    /// A descendant whose id is not text is cancelled with its tree, and a
    /// dead worker's row with such an id is released with the others; the
    /// rows of readable ids get their events. Before, reading the ids back
    /// failed the whole write: the parent could not be cancelled or time
    /// out, and no lease of the dead worker was released.
    #[test]
    fn rows_whose_id_is_not_text_do_not_fail_a_cancel_or_a_release() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        let parent = create(&t, &new_instance(1), None)
            .unwrap()
            .unwrap()
            .into_row();
        for (id, status, owner) in [
            ("X'FF01'", "pending", "NULL"),
            ("CAST(X'FF02' AS TEXT)", "in_progress", "'dead'"),
        ] {
            t.execute(
                &format!(
                    "INSERT INTO instances (id, workflow, status, input, created_at, updated_at, \
                         run_at, parent_id, lease_owner, lease_expires_at) \
                     VALUES ({id}, 'w', '{status}', 'null', 0, 0, 0, ?1, {owner}, 500)"
                ),
                [parent.id.as_str()],
            )
            .unwrap();
        }
        let released = apply(&t, &Op::ReleaseOwner("dead".into(), 50))
            .unwrap()
            .unwrap();
        assert!(matches!(released, Reply::Count(1)));
        let cancelled = apply(&t, &Op::Cancel(parent.id.clone(), 60))
            .unwrap()
            .unwrap();
        assert!(matches!(cancelled, Reply::Control(Control::Applied)));
        let statuses: Vec<String> = t
            .prepare("SELECT status FROM instances ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(statuses, ["cancelled"; 3]);
        let events: i64 = t
            .query_row(
                "SELECT count(*) FROM events WHERE instance_id = ?1 AND kind = 'cancelled'",
                [parent.id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(events, 1);
    }

    /// A row whose id is not UTF-8 (damaged outside the engine, then
    /// failed by a claim) is purged like any other, not an error that
    /// would stop every purge after it.
    #[test]
    fn a_purge_takes_rows_whose_id_is_not_text() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        t.execute(
            "INSERT INTO instances (id, workflow, status, input, created_at, updated_at, \
                 finished_at, run_at) VALUES (CAST(X'00ff31' AS TEXT), 'w', 'failed', 'null', 0, 0, 1, 0)",
            [],
        )
        .unwrap();
        create(&t, &new_instance(2), None).unwrap().unwrap();
        assert_eq!(
            purge(&t, 100, None, 10, u64::MAX, PurgeFrom::default())
                .unwrap()
                .instances,
            1
        );
        let left: i64 = t
            .query_row("SELECT count(*) FROM instances", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1, "the pending one stays");
    }

    /// A purge of large trees stops once it deleted about `rows` rows
    /// (after the tree it is at), saying where to go on from; going on
    /// from there deletes the rest, passing no tree twice and none over.
    #[test]
    fn a_purge_stops_after_its_rows_and_goes_on_from_there() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        for n in 0..5 {
            create(&t, &new_instance(n), None).unwrap().unwrap();
            let claimed = claim(&t, &claim_request(1)).unwrap().remove(0);
            for k in 0..100 {
                let step = done_step(format!("s{k}"), 102);
                commit_step(&t, &claimed.lease, &step).unwrap().unwrap();
            }
            let finish = completed_at(104);
            apply(&t, &Op::Finish(claimed.lease, finish))
                .unwrap()
                .unwrap();
        }
        // 101 rows a tree: a budget of 150 rows stops after the second.
        let first = purge(&t, 105, None, 10, 150, PurgeFrom::default()).unwrap();
        assert_eq!((first.instances, first.trees), (2, 2));
        let next = first.next.expect("stopped before the end");
        let second = purge(&t, 105, None, 10, 150, next).unwrap();
        assert_eq!((second.instances, second.trees), (2, 2));
        let third = purge(&t, 105, None, 10, 150, second.next.unwrap()).unwrap();
        assert_eq!((third.instances, third.trees), (1, 1));
        assert_eq!(third.next, None, "the scan reached its end");
        let left: i64 = t
            .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        // A pending instance stays, and the scan runs to its end.
        create(&t, &new_instance(9), None).unwrap().unwrap();
        let none = purge(&t, 105, None, 10, 150, PurgeFrom::default()).unwrap();
        assert_eq!(
            (none.instances, none.next),
            (0, None),
            "the pending one stays"
        );
    }

    /// A due row whose id is not even text (a BLOB, left by damage) is
    /// failed by the claim that meets it, itself and not a text look-alike:
    /// left due, it took a slot of every claim from then on and added a
    /// `failed` event for a ghost instance each time.
    #[test]
    fn a_claim_fails_a_row_whose_id_is_a_blob() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        t.execute(
            "INSERT INTO instances (id, workflow, status, input, created_at, updated_at, run_at) \
             VALUES (X'0102', 'w', 'pending', 'null', 0, 0, 0)",
            [],
        )
        .unwrap();
        let good = create(&t, &new_instance(5), None).unwrap().unwrap();
        let first = claim(&t, &claim_request(1)).unwrap();
        assert!(first.is_empty(), "the damaged row is failed, alone");
        let status: String = t
            .query_row("SELECT status FROM instances WHERE id = X'0102'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(status, "failed");
        let second = claim(&t, &claim_request(1)).unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].row.id, good.into_row().id);
    }

    fn claim_job(t: &Tx<'_, '_>, limit: usize) -> Job {
        let op = Op::Claim(claim_request(limit));
        let result = apply(t, &op).unwrap();
        let (reply, _answer) = oneshot::channel();
        Job {
            op,
            result: Some(result),
            reply,
        }
    }

    /// A claim may be answered before the next fsync only if every row it
    /// read is already on disk: a handler must not act on an instance (or
    /// an event, a wake-up) that a power cut could still take back.
    #[test]
    fn claims_wait_for_the_fsync_of_what_they_read() {
        let mut c = migrated();
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        // Commit 1 creates two instances; it is not on disk yet.
        for n in 0..2 {
            apply(&t, &Op::CreateMany(vec![new_instance(n)]))
                .unwrap()
                .unwrap();
        }
        assert_eq!(session.unsynced.borrow_mut().seal(), 1);
        let first = claim_job(&t, 1);
        assert!(matches!(&first.result, Some(Ok(Reply::Claimed(c))) if c.len() == 1));
        assert!(!first.may_answer_before_fsync(&session.unsynced.borrow()));
        // Once commit 1 is fsynced, a claim of its rows need not wait.
        session.unsynced.borrow_mut().synced(1);
        assert!(first.may_answer_before_fsync(&session.unsynced.borrow()));
        let second = claim_job(&t, 1);
        assert!(second.may_answer_before_fsync(&session.unsynced.borrow()));
        // Rows written in ways not tracked one by one hold every claim back.
        apply(&t, &Op::CreateMany(vec![new_instance(5)]))
            .unwrap()
            .unwrap();
        session.unsynced.borrow_mut().wrote_untracked();
        let third = claim_job(&t, 1);
        assert!(!third.may_answer_before_fsync(&session.unsynced.borrow()));
        assert_eq!(session.unsynced.borrow_mut().seal(), 2);
        session.unsynced.borrow_mut().synced(2);
        assert!(third.may_answer_before_fsync(&session.unsynced.borrow()));
        // Relaxed mode answers everything at commit.
        let relaxed = Session::new(&tx, None).unwrap();
        assert!(relaxed.unsynced.borrow().on_disk("anything"));
    }

    /// A row another process committed may not be on disk yet: a claim
    /// that reads it waits for this writer's next fsync.
    #[test]
    fn claims_after_another_connection_wrote_wait_for_the_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("others.db");
        let c = migrate(Connection::open(&path).unwrap());
        c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        let session = Session::new(&c, durable()).unwrap();
        let first = begin(&session).unwrap();
        apply(&first, &Op::CreateMany(vec![new_instance(0)]))
            .unwrap()
            .unwrap();
        commit(&session, first, &[]).unwrap();
        let sealed = session.unsynced.borrow_mut().seal();
        session.unsynced.borrow_mut().synced(sealed);
        // Another process creates an instance (and does its own fsync later).
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                INSERT_INSTANCE,
                params![
                    "other",
                    "w",
                    "null",
                    "{}",
                    None::<String>,
                    1,
                    1,
                    None::<i64>,
                    None::<String>
                ],
            )
            .unwrap();
        let t = begin(&session).unwrap();
        let job = claim_job(&t, 10);
        assert!(matches!(&job.result, Some(Ok(Reply::Claimed(c))) if c.len() == 2));
        assert!(!job.may_answer_before_fsync(&session.unsynced.borrow()));
    }

    /// A claim that found nothing wrote nothing: readers need not wait for
    /// an fsync of it (an idle worker's polls made every next read sync).
    #[test]
    fn an_empty_claim_leaves_readers_settled() {
        let horizon: Arc<Horizon> = Arc::default();
        let dir = tempfile::tempdir().unwrap();
        let c = migrate(Connection::open(dir.path().join("idle.db")).unwrap());
        c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        let session = Session::new(&c, Some(Arc::clone(&horizon))).unwrap();
        let t = begin(&session).unwrap();
        let job = claim_job(&t, 10);
        assert!(matches!(&job.result, Some(Ok(Reply::Claimed(c))) if c.is_empty()));
        commit(&session, t, &[]).unwrap();
        assert!(horizon.settled(), "nothing to wait for");
        // A write is waited for until its fsync.
        let t = begin(&session).unwrap();
        apply(&t, &Op::CreateMany(vec![new_instance(0)]))
            .unwrap()
            .unwrap();
        commit(&session, t, &[]).unwrap();
        assert!(!horizon.settled(), "a commit not yet on disk");
    }

    /// `(current, highwater)` of a `sqlite3_db_status` counter; `reset`
    /// zeroes the highwater mark (and, for miss counters, the count).
    fn db_status(c: &Connection, op: i32, reset: bool) -> (i32, i32) {
        let (mut current, mut highwater) = (0, 0);
        // SAFETY: `c` is open and used by this thread only.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                c.handle(),
                op,
                &mut current,
                &mut highwater,
                i32::from(reset),
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        (current, highwater)
    }

    /// With SQLite's default 40 lookaside slots, the writer's cached
    /// statements took them all and every write went to `malloc`.
    #[test]
    fn hot_writes_are_served_by_the_lookaside_allocator() {
        use rusqlite::ffi::{
            SQLITE_DBSTATUS_LOOKASIDE_HIT, SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL,
            SQLITE_DBSTATUS_LOOKASIDE_USED,
        };
        // A file, opened as the store opens its writer.
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        enlarge_lookaside(&c);
        let mut c = migrate(c);
        let tx = c.transaction().unwrap();
        let session = Session::new(&tx, durable()).unwrap();
        let t = session.tx();
        // Warm every statement (and the claim's) before counting.
        let run = |from: i64, count: i64| {
            let news = (from..from + count).map(new_instance).collect();
            apply(&t, &Op::CreateMany(news)).unwrap().unwrap();
            let Reply::Claimed(claimed) = apply(&t, &Op::Claim(claim_request(count as usize)))
                .unwrap()
                .unwrap()
            else {
                panic!("a claim answers Claimed");
            };
            assert_eq!(claimed.len(), count as usize);
            for c in claimed {
                for step in 0..3 {
                    let row = StepRow {
                        key: format!("s{step}"),
                        output: Some("1".into()),
                        error: None,
                        state: None,
                        attempts: 1,
                        started_at: 100,
                        finished_at: 100,
                    };
                    apply(&t, &Op::CommitStep(c.lease.clone(), row))
                        .unwrap()
                        .unwrap();
                }
                let finish = Finish {
                    status: Status::Completed,
                    output: Some("3".into()),
                    error: None,
                    state: None,
                    at: 100,
                };
                apply(&t, &Op::Finish(c.lease, finish)).unwrap().unwrap();
            }
        };
        run(0, 16);
        db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL, true);
        db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_HIT, true);
        db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_USED, true);
        run(16, 64);
        let (_, used) = db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_USED, false);
        let (_, misses) = db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL, false);
        let (_, hits) = db_status(&tx, SQLITE_DBSTATUS_LOOKASIDE_HIT, false);
        eprintln!("lookaside: {used} slots at most, {hits} hits, {misses} misses");
        assert!(
            hits > 64 * 5,
            "the writes allocate from the lookaside: {hits} hits"
        );
        assert_eq!(
            misses, 0,
            "the lookaside ran out ({used} slots in use at most)"
        );
        assert!(
            used < LOOKASIDE_SLOTS,
            "{used} slots used of {LOOKASIDE_SLOTS}"
        );
    }

    /// Under load, a commit of one write (it came in alone between large
    /// ones) does not make the writer copy the WAL at `nudge` pages itself,
    /// as it does when few callers are writing.
    #[test]
    fn only_few_callers_make_the_writer_checkpoint_sooner() {
        use crate::checkpoint::{wal_pages, Checkpointer, Policy};
        let longest_wal = |callers: usize| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("w.db");
            let c = migrate(Connection::open(&path).unwrap());
            c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                .unwrap();
            let policy = Policy {
                nudge: 16,
                restart: i32::MAX,
                ..Policy::default()
            };
            let checkpointer = Checkpointer::spawn(&path, policy, Default::default()).unwrap();
            let waiting = Arc::new(AtomicUsize::new(callers));
            let session = Session::new(&c, durable())
                .unwrap()
                .checkpointed(checkpointer, waiting);
            let mut longest = 0;
            for n in 0..200 {
                let tx = begin(&session).unwrap();
                let news = (n * 8..n * 8 + 8).map(new_instance).collect();
                apply(&tx, &Op::CreateMany(news)).unwrap().unwrap();
                commit(&session, tx, &[]).unwrap();
                longest = longest.max(wal_pages());
            }
            longest
        };
        // Each commit writes about ten pages; the WAL starts over at the
        // transaction after a checkpoint, if no reader holds it back.
        let alone = longest_wal(1);
        assert!(alone <= 64, "one caller: the WAL reached {alone} pages");
        let busy = longest_wal(64);
        assert!(
            busy >= 1_000,
            "64 callers: the WAL started over at {busy} pages"
        );
    }

    /// A partial index whose condition is a three-value `IN` list, or an
    /// `UPDATE ... RETURNING`, makes SQLite build and zero a temporary
    /// B-tree on every run; on the hot path that was a quarter of the
    /// writer's instructions.
    #[test]
    fn hot_statements_build_no_temporary_btrees() {
        let c = migrated();
        let claim = claim_sql();
        for sql in [
            INSERT_INSTANCE,
            claim.as_str(),
            TAKE,
            INSERT_STEP,
            INSERT_EVENT,
            LAST_SEQ,
            FINISH,
        ] {
            let mut explain = c.prepare(&format!("EXPLAIN {sql}")).unwrap();
            // Unbound parameters are NULL; the plan does not depend on them.
            let mut rows = explain.raw_query();
            let mut opcodes: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                opcodes.push(row.get(1).unwrap());
            }
            assert!(opcodes.len() > 3, "{sql}: {opcodes:?}");
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "{sql} builds a temporary B-tree: {opcodes:?}"
            );
        }
    }
}
