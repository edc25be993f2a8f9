//! Durable mode's fsync, on a thread of its own.
//!
//! The writer's connection runs with `synchronous = NORMAL`: a commit
//! writes its frames to the WAL without an fsync, and SQLite fsyncs only
//! around checkpoints (the WAL before pages are copied out of it, the
//! database after). In durable mode the writer hands each commit's writes
//! here; this thread fsyncs the WAL and only then answers them, so nobody
//! hears "recorded" before the bytes are on disk, as with `FULL`. Meanwhile
//! the writer applies the next writes in a new open transaction and commits
//! it as soon as this fsync is done: the disk's flush and the writer's CPU
//! overlap instead of taking turns.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::WeakUnboundedSender;

use crate::broken::Broken;
use crate::writer::{answer, linger, look_for, Job, Look, Msg};

/// How far commits have reached, shared with the store's readers.
///
/// A reader's connection sees every commit as soon as SQLite has made it,
/// before its fsync: a read could report a step or an output that a power
/// cut then takes back. So a read, once made, checks whether a commit it
/// could have seen is still waiting for its fsync, and if so waits for the
/// next one (see `Writer::settle`), as PostgreSQL shows a commit to other
/// sessions only once it is flushed.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    /// The number of the latest commit readers may see: set before SQLite
    /// commits it, so a reader that saw the commit finds at least its number.
    committed: AtomicU64,
    /// Every commit numbered up to this one is on disk.
    durable: AtomicU64,
}

impl Horizon {
    /// Commit number `commit` is about to become visible.
    pub(crate) fn committing(&self, commit: u64) {
        self.committed.fetch_max(commit, Ordering::SeqCst);
    }

    fn synced(&self, commit: u64) {
        self.durable.fetch_max(commit, Ordering::SeqCst);
    }

    /// Whether every commit a read made before this call could have seen
    /// is on disk. Both counters only grow, so reading `committed` first
    /// never answers yes too early.
    pub(crate) fn settled(&self) -> bool {
        let committed = self.committed.load(Ordering::SeqCst);
        self.durable.load(Ordering::SeqCst) >= committed
    }
}

/// The flush thread, as the writer sees it.
pub(crate) struct Flusher {
    wal: Arc<File>,
    horizon: Arc<Horizon>,
    to_flush: Option<mpsc::Sender<Vec<Job>>>,
    /// How many handed-over batches each finished fsync covered, and
    /// whether it succeeded.
    flushed: mpsc::Receiver<(usize, bool)>,
    /// Commits handed over whose fsync has not been reported done, oldest
    /// first, by the number the writer gave them.
    in_flight: VecDeque<u64>,
    /// The first failed fsync, shared with the thread, the checkpoints and
    /// the writer (see [`Broken`]): from then on no fsync succeeds, so the
    /// horizon's `durable` stays where it was.
    broken: Arc<Broken>,
    thread: Option<JoinHandle<()>>,
}

/// Fsyncs `wal` unless an fsync already failed; records a failure.
fn sync_unless_broken(broken: &Broken, wal: &File) -> Result<(), String> {
    if let Some(refusal) = broken.refusal() {
        return Err(refusal);
    }
    let flushed = sync(wal);
    if let Err(why) = &flushed {
        broken.fail(why.clone());
    }
    flushed
}

impl Flusher {
    /// Starts the thread. `wake` reaches the writer's queue, so a writer
    /// waiting for new writes also hears that the disk is free; it is weak,
    /// so the writer still sees its queue close when the store is dropped.
    /// `horizon` hears of every fsync that succeeds; `broken` of the first
    /// that fails, and once it has, no fsync is tried again.
    pub(crate) fn spawn(
        wal: File,
        wake: WeakUnboundedSender<Msg>,
        horizon: Arc<Horizon>,
        broken: Arc<Broken>,
    ) -> std::io::Result<Self> {
        let wal = Arc::new(wal);
        let (to_flush, batches) = mpsc::channel::<Vec<Job>>();
        let (done, flushed) = mpsc::channel();
        let file = Arc::clone(&wal);
        let thread_broken = Arc::clone(&broken);
        let thread = std::thread::Builder::new()
            .name("workflow-sqlite-fsync".into())
            .spawn(move || flush_loop(&file, &thread_broken, &batches, &done, &wake))?;
        Ok(Flusher {
            wal,
            horizon,
            to_flush: Some(to_flush),
            flushed,
            in_flight: VecDeque::new(),
            broken,
            thread: Some(thread),
        })
    }

    /// Whether no fsync is in flight or waiting.
    pub(crate) fn idle(&mut self) -> bool {
        while !self.in_flight.is_empty() {
            match self.flushed.try_recv() {
                Ok((batches, ok)) => self.done(batches, ok),
                Err(mpsc::TryRecvError::Empty) => break,
                // The thread is gone: nothing is in flight.
                Err(mpsc::TryRecvError::Disconnected) => self.in_flight.clear(),
            }
        }
        self.in_flight.is_empty()
    }

    /// Blocks until no fsync is in flight or waiting.
    fn wait_idle(&mut self) {
        while !self.in_flight.is_empty() {
            match self.flushed.recv() {
                Ok((batches, ok)) => self.done(batches, ok),
                Err(_) => self.in_flight.clear(),
            }
        }
    }

    /// The oldest `batches` in flight were fsynced (`ok`) or failed to be.
    fn done(&mut self, batches: usize, ok: bool) {
        for _ in 0..batches {
            if let Some(commit) = self.in_flight.pop_front() {
                if ok {
                    self.horizon.synced(commit);
                }
            }
        }
    }

    /// Every commit numbered up to this one is on disk.
    pub(crate) fn durable(&self) -> u64 {
        self.horizon.durable.load(Ordering::SeqCst)
    }

    /// Hands over the writes of commit number `commit` to be fsynced and
    /// answered. Commits handed over while an fsync is in flight share the
    /// next one.
    pub(crate) fn flush(&mut self, jobs: Vec<Job>, commit: u64) {
        let sent = match &self.to_flush {
            Some(to_flush) => to_flush.send(jobs),
            None => Err(mpsc::SendError(jobs)),
        };
        match sent {
            Ok(()) => self.in_flight.push_back(commit),
            Err(mpsc::SendError(jobs)) => {
                // Committed but never fsynced: answered as failed, so no
                // later write may be answered as done either (a caller that
                // retried would otherwise duplicate what is already there).
                self.broken
                    .fail("the SQLite fsync thread stopped".to_owned());
                fail(jobs)
            }
        }
    }

    /// Fsyncs commit number `commit` on the calling thread, then answers
    /// `jobs`; first waits for the thread's fsyncs, so answers keep the
    /// order of the commits.
    pub(crate) fn flush_here(&mut self, jobs: Vec<Job>, commit: u64) {
        self.wait_idle();
        let flushed = sync_unless_broken(&self.broken, &self.wal);
        if flushed.is_ok() {
            self.horizon.synced(commit);
        }
        for job in jobs {
            answer(job, outcome(&flushed));
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its last batch is answered.
        self.to_flush = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn fail(jobs: Vec<Job>) {
    for job in jobs {
        answer(
            job,
            Err("the SQLite fsync thread stopped: the write's durability is unknown"),
        );
    }
}

/// While set, fsyncs wait: a test's way to look at the store between a
/// commit and its fsync.
#[cfg(test)]
pub(crate) static HOLD_FSYNCS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Fsyncs the WAL; the error is the message every write of the batch gets.
pub(crate) fn sync(wal: &File) -> Result<(), String> {
    #[cfg(test)]
    while HOLD_FSYNCS.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    wal.sync_data().map_err(|err| {
        tracing::error!(error = %err, "fsync of the SQLite WAL failed");
        format!(
            "fsync of the SQLite WAL failed after the commit, so the write may not survive a power loss: {err}"
        )
    })
}

fn outcome(flushed: &Result<(), String>) -> Result<(), &str> {
    flushed.as_ref().map(|_| ()).map_err(String::as_str)
}

fn flush_loop(
    wal: &File,
    broken: &Broken,
    batches: &mpsc::Receiver<Vec<Job>>,
    done: &mpsc::Sender<(usize, bool)>,
    wake: &WeakUnboundedSender<Msg>,
) {
    let mut last = 0;
    while let Some(mut jobs) = next_batch(batches, linger(last)) {
        // Everything committed so far shares this fsync.
        let mut covered = 1;
        while let Ok(more) = batches.try_recv() {
            jobs.extend(more);
            covered += 1;
        }
        last = jobs.len();
        let flushed = sync_unless_broken(broken, wal);
        // The writer first, so its next commit is on its way while the
        // callers are woken.
        let _ = done.send((covered, flushed.is_ok()));
        if let Some(writer) = wake.upgrade() {
            let _ = writer.send(Msg::Synced);
        }
        for job in jobs {
            answer(job, outcome(&flushed));
        }
    }
}

/// The next batch: looked for during `linger`, then waited for.
fn next_batch(batches: &mpsc::Receiver<Vec<Job>>, linger: Duration) -> Option<Vec<Job>> {
    let found = look_for(linger, || match batches.try_recv() {
        Ok(jobs) => Look::Got(jobs),
        Err(mpsc::TryRecvError::Empty) => Look::Empty,
        Err(mpsc::TryRecvError::Disconnected) => Look::Closed,
    });
    match found {
        Look::Got(jobs) => Some(jobs),
        Look::Closed => None,
        Look::Empty => batches.recv().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{Op, Reply};
    use tokio::sync::mpsc::unbounded_channel;
    use workflow_core::StoreError;

    fn job() -> (
        Job,
        tokio::sync::oneshot::Receiver<Result<Reply, StoreError>>,
    ) {
        Job::with_result(Op::Renew(Vec::new(), 0), Reply::Count(7))
    }

    /// A flusher of `wal` whose writer's queue is `wake`, with a store
    /// not broken yet.
    fn flusher(
        wal: File,
        wake: &tokio::sync::mpsc::UnboundedSender<Msg>,
        horizon: &Arc<Horizon>,
    ) -> Flusher {
        Flusher::spawn(
            wal,
            wake.downgrade(),
            Arc::clone(horizon),
            Default::default(),
        )
        .unwrap()
    }

    fn pipe_file() -> File {
        let (_reader, writer) = std::io::pipe().unwrap();
        File::from(std::os::fd::OwnedFd::from(writer))
    }

    #[test]
    fn writes_are_answered_after_their_fsync() {
        let file = tempfile::tempfile().unwrap();
        let (wake, mut woken) = unbounded_channel();
        let horizon = Arc::<Horizon>::default();
        let mut flusher = flusher(file, &wake, &horizon);
        assert!(horizon.settled());
        let (a, a_rx) = job();
        let (b, b_rx) = job();
        horizon.committing(1);
        horizon.committing(2);
        // Readers may see commits 1 and 2 before they are on disk.
        assert!(!horizon.settled());
        flusher.flush(vec![a], 1);
        flusher.flush(vec![b], 2);
        assert!(matches!(a_rx.blocking_recv().unwrap(), Ok(Reply::Count(7))));
        assert!(matches!(b_rx.blocking_recv().unwrap(), Ok(Reply::Count(7))));
        // The writer hears the disk is free, and counts both batches done.
        assert!(matches!(woken.blocking_recv(), Some(Msg::Synced)));
        flusher.wait_idle();
        assert!(flusher.idle());
        assert_eq!(flusher.durable(), 2);
        assert!(horizon.settled());
        let (c, c_rx) = job();
        horizon.committing(3);
        assert!(!horizon.settled());
        flusher.flush_here(vec![c], 3);
        assert_eq!(flusher.durable(), 3);
        assert!(horizon.settled());
        assert!(matches!(c_rx.blocking_recv().unwrap(), Ok(Reply::Count(7))));
    }

    /// fdatasync of a pipe fails (EINVAL), as a failing disk would: the
    /// write must be reported failed, never answered as recorded.
    #[test]
    fn a_failed_fsync_fails_every_write_of_its_batch() {
        let (wake, _woken) = unbounded_channel();
        let horizon = Arc::<Horizon>::default();
        let mut flusher = flusher(pipe_file(), &wake, &horizon);
        let (a, a_rx) = job();
        let (b, b_rx) = job();
        horizon.committing(1);
        flusher.flush(vec![a, b], 1);
        for rx in [a_rx, b_rx] {
            let err = rx.blocking_recv().unwrap().unwrap_err();
            assert!(
                err.to_string().contains("fsync of the SQLite WAL failed"),
                "{err}"
            );
        }
        flusher.wait_idle();
        let (c, c_rx) = job();
        flusher.flush_here(vec![c], 2);
        assert_eq!(flusher.durable(), 0);
        // Readers never hear that the failed commits are on disk.
        assert!(!horizon.settled());
        let err = c_rx.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
    }

    /// After a failed fsync the next one may succeed without the earlier
    /// frames on disk: later writes fail too, on both paths, however the
    /// file behaves now.
    #[test]
    fn no_fsync_is_trusted_after_one_failed() {
        let (wake, _woken) = unbounded_channel();
        let horizon = Arc::<Horizon>::default();
        let mut flusher = flusher(pipe_file(), &wake, &horizon);
        let (a, a_rx) = job();
        horizon.committing(1);
        flusher.flush(vec![a], 1);
        assert!(a_rx.blocking_recv().unwrap().is_err());
        flusher.wait_idle();
        // The file is a good one from now on (as a disk that recovered).
        flusher.wal = Arc::new(tempfile::tempfile().unwrap());
        let (b, b_rx) = job();
        horizon.committing(2);
        flusher.flush_here(vec![b], 2);
        let err = b_rx.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("an earlier fsync of the SQLite database failed")
                && err.contains("reopen the store"),
            "{err}"
        );
        assert_eq!(flusher.durable(), 0);
        assert!(!horizon.settled());
    }

    #[test]
    fn dropping_the_flusher_answers_what_it_holds() {
        let (wake, _woken) = unbounded_channel();
        let mut flusher = flusher(tempfile::tempfile().unwrap(), &wake, &Arc::default());
        let receivers: Vec<_> = (0..10)
            .map(|_| {
                let (j, rx) = job();
                flusher.flush(vec![j], 1);
                rx
            })
            .collect();
        drop(flusher);
        for rx in receivers {
            assert!(matches!(rx.blocking_recv().unwrap(), Ok(Reply::Count(7))));
        }
    }
}
