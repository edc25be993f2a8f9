//! WAL checkpoints, on a thread of their own.
//!
//! SQLite's automatic checkpoint runs on the connection that commits, right
//! after the commit that takes the WAL past 1,000 pages: the writer thread
//! would stop taking writes while it fsyncs the WAL, copies some 4 MiB of
//! pages into the database file and fsyncs that. Here the writer only
//! nudges a second connection, on this thread, to do that copying with a
//! `PASSIVE` checkpoint, which never blocks the writer.
//!
//! Only a writer starting a transaction can start the WAL over from its
//! beginning, and only once every frame is in the database file; a
//! checkpoint on another thread never catches up with a writer that keeps
//! committing. So once the WAL is [`Policy::restart`] pages long, the
//! writer runs a `PASSIVE` checkpoint itself: it copies only what this
//! thread has not, and its next transaction starts the WAL over.
//!
//! When few callers are writing, the writer checkpoints at
//! [`Policy::nudge`] pages itself, as SQLite would: it has the time, and a
//! WAL that starts over sooner is cheaper to fsync. Each commit that grows
//! the file changes its size, which `fdatasync` must also journal; a
//! commit over frames written before does not. A lone workflow's durable
//! steps took 1.3–1.9 times a raw commit with the WAL growing to 4,000
//! pages, 0.65–0.9 times with it starting over at 1,000.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::Connection;

thread_local! {
    /// Pages in the WAL after the last commit on this thread, as SQLite's
    /// WAL hook reported them (the hook is a plain function; the writer
    /// commits on its own thread, so a thread-local is its own).
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// When the writer asks for checkpoints, in WAL pages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Nudge the checkpoint thread each time the WAL grew by this many pages
    /// (SQLite's own automatic checkpoint runs at 1,000).
    pub(crate) nudge: c_int,
    /// From this many pages on, the writer finishes the checkpoint itself
    /// after each commit until the WAL starts over.
    pub(crate) restart: c_int,
}

impl Default for Policy {
    fn default() -> Self {
        // The writer's own checkpoint then copies what was committed while
        // the last nudged one ran, a few hundred pages, once per 16 MiB of
        // WAL, instead of 1,000 pages and two fsyncs per 4 MiB.
        Policy {
            nudge: 1_000,
            restart: 4_000,
        }
    }
}

/// The checkpoint thread, as the writer sees it.
pub(crate) struct Checkpointer {
    policy: Policy,
    /// The WAL's length in pages when the thread was last nudged.
    nudged_at: c_int,
    /// Whether the thread is checkpointing; the writer's own checkpoint
    /// waits until it is not, rather than fail on its lock.
    busy: Arc<AtomicBool>,
    nudge: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and starts the
    /// thread that checkpoints through it.
    pub(crate) fn spawn(path: &Path, policy: Policy) -> std::io::Result<Self> {
        let conn = Connection::open(path).map_err(std::io::Error::other)?;
        // Checkpoints fsync the WAL before copying it and the database file
        // after, in both durability modes (what `NORMAL` does), so no page
        // reaches the database file before the WAL frame it came from is on
        // disk.
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(std::io::Error::other)?;
        let busy = Arc::new(AtomicBool::new(false));
        // One pending nudge is enough: a checkpoint copies everything
        // committed before it starts.
        let (nudge, nudges) = mpsc::sync_channel(1);
        let flag = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("workflow-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &nudges, &flag))?;
        Ok(Checkpointer {
            policy,
            nudged_at: 0,
            busy,
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// Takes the checkpoints off `conn` (the writer's connection, used only
    /// on the calling thread from now on): SQLite's automatic checkpoint
    /// is replaced by a hook that counts the WAL's pages.
    pub(crate) fn take_over(&self, conn: &Connection) {
        WAL_PAGES.with(|p| p.set(0));
        // Registering a WAL hook replaces SQLite's automatic checkpoint,
        // which is itself one.
        conn.wal_hook(Some(note_wal_pages));
    }

    /// After each commit on the writer's connection (`light`: one of few
    /// writes, see the module doc): nudges the thread as the WAL grows, and
    /// past [`Policy::restart`] pages (or [`Policy::nudge`] when `light`)
    /// checkpoints on `conn` so that the next transaction starts the WAL over.
    pub(crate) fn after_commit(&mut self, conn: &Connection, light: bool) {
        let pages = WAL_PAGES.with(Cell::get);
        if pages < self.nudged_at {
            // The WAL started over.
            self.nudged_at = 0;
        }
        let restart = if light {
            self.policy.nudge
        } else {
            self.policy.restart
        };
        if pages >= restart && !self.busy.load(Ordering::Acquire) {
            self.checkpoint_here(conn, pages);
        } else if pages >= self.nudged_at.saturating_add(self.policy.nudge) {
            self.nudged_at = pages;
            if let Some(nudge) = &self.nudge {
                // Full: a nudge is already waiting, which will do.
                let _ = nudge.try_send(());
            }
        }
    }

    /// The writer's own checkpoint.
    fn checkpoint_here(&self, conn: &Connection, pages: c_int) {
        match checkpoint(conn) {
            Ok((_, copied)) => {
                tracing::trace!(pages, copied, "the writer checkpointed the WAL");
            }
            Err(err) => {
                tracing::warn!(error = %err, pages, "the writer's WAL checkpoint failed");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudge = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A `PASSIVE` checkpoint: copies the WAL frames no reader still needs into
/// the database file, without waiting for readers or the writer. Returns
/// the WAL's length and how much of it is now copied, in pages.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

fn checkpoint_loop(conn: &Connection, nudges: &mpsc::Receiver<()>, busy: &AtomicBool) {
    while nudges.recv().is_ok() {
        busy.store(true, Ordering::Release);
        match checkpoint(conn) {
            Ok((pages, copied)) => tracing::trace!(pages, copied, "WAL checkpoint"),
            Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed"),
        }
        busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    const PAGE: u64 = 4_096;
    /// A WAL frame: a page and its 24-byte header.
    const FRAME: u64 = PAGE + 24;

    fn wal_database(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("c.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE t (b BLOB);",
        )
        .unwrap();
        (path, conn)
    }

    /// A commit of about two pages.
    fn commit_two_pages(conn: &Connection) {
        conn.execute_batch("BEGIN; INSERT INTO t VALUES (zeroblob(3000)); INSERT INTO t VALUES (zeroblob(3000)); COMMIT;")
            .unwrap();
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    fn wal(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push("-wal");
        name.into()
    }

    /// The writer's commits reach the database file through the thread,
    /// never through a checkpoint of the writer's own.
    #[test]
    fn the_thread_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        let policy = Policy {
            nudge: 8,
            restart: c_int::MAX,
        };
        let mut checkpointer = Checkpointer::spawn(&path, policy).unwrap();
        checkpointer.take_over(&conn);
        let before = len(&path);
        for _ in 0..50 {
            commit_two_pages(&conn);
            checkpointer.after_commit(&conn, false);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while len(&path) < before + 90 * PAGE && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            len(&path) >= before + 90 * PAGE,
            "the database file grew from {before} to {} bytes",
            len(&path)
        );
        // The writer never checkpointed, so its WAL never started over.
        assert!(len(&wal(&path)) >= 100 * FRAME, "{}", len(&wal(&path)));
        assert!(WAL_PAGES.with(Cell::get) >= 100);
    }

    /// A thread that copies in the background never lets the WAL start
    /// over; the writer's own checkpoint does, so the WAL stays short.
    #[test]
    fn the_writer_starts_the_wal_over_past_the_restart_length() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        let policy = Policy {
            nudge: c_int::MAX,
            restart: 16,
        };
        let mut checkpointer = Checkpointer::spawn(&path, policy).unwrap();
        checkpointer.take_over(&conn);
        for _ in 0..200 {
            commit_two_pages(&conn);
            checkpointer.after_commit(&conn, false);
        }
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 400);
        // 400 pages written; the WAL never held more than 16 and one commit.
        let wal = len(&wal(&path));
        assert!(wal <= 32 + 20 * FRAME, "the WAL grew to {wal} bytes");
        assert!(len(&path) >= 400 * PAGE);
    }

    /// Without the thread (SQLite's automatic checkpoint replaced, nothing
    /// nudged), nothing is copied: the hook really took over.
    #[test]
    fn the_hook_replaces_sqlites_automatic_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        conn.execute_batch("PRAGMA wal_autocheckpoint = 10;")
            .unwrap();
        let policy = Policy {
            nudge: c_int::MAX,
            restart: c_int::MAX,
        };
        let mut checkpointer = Checkpointer::spawn(&path, policy).unwrap();
        checkpointer.take_over(&conn);
        let before = len(&path);
        for _ in 0..20 {
            commit_two_pages(&conn);
            checkpointer.after_commit(&conn, false);
        }
        assert_eq!(len(&path), before);
        assert!(len(&wal(&path)) >= 40 * FRAME);
    }

    /// Light commits (few callers) start the WAL over at `nudge` pages,
    /// on the writer, as SQLite's automatic checkpoint would.
    #[test]
    fn light_commits_start_the_wal_over_sooner() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_database(dir.path());
        let policy = Policy {
            nudge: 16,
            restart: c_int::MAX,
        };
        let mut checkpointer = Checkpointer::spawn(&path, policy).unwrap();
        checkpointer.take_over(&conn);
        for _ in 0..200 {
            commit_two_pages(&conn);
            checkpointer.after_commit(&conn, true);
        }
        let wal = len(&wal(&path));
        assert!(wal <= 32 + 20 * FRAME, "the WAL grew to {wal} bytes");
        assert!(len(&path) >= 400 * PAGE);
    }
}
