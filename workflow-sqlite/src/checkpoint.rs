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
use rusqlite::{Connection, ErrorCode};

use crate::broken::Broken;

thread_local! {
    /// Pages in the WAL after the last commit on this thread, as SQLite's
    /// WAL hook reported them (the hook is a plain function; the writer
    /// commits on its own thread, so a thread-local is its own).
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// Pages in the WAL after the last commit on this thread.
#[cfg(test)]
pub(crate) fn wal_pages() -> c_int {
    WAL_PAGES.with(Cell::get)
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
    /// The WAL file's length, in bytes, it is cut back to when it starts
    /// over (SQLite's `journal_size_limit`). Starting over reuses the
    /// file from its beginning without shrinking it, so one long read
    /// that held checkpoints back would otherwise leave the file as long
    /// as it grew meanwhile, for good.
    pub(crate) wal_limit: i64,
}

impl Default for Policy {
    fn default() -> Self {
        // The writer's own checkpoint then copies what was committed while
        // the last nudged one ran, a few hundred pages, once per 16 MiB of
        // WAL, instead of 1,000 pages and two fsyncs per 4 MiB.
        Policy {
            nudge: 1_000,
            restart: 4_000,
            // Four times the longest WAL under steady writes, so that
            // steady writes never truncate it (a truncate is a change of
            // size the next fsync must journal).
            wal_limit: 64 << 20,
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
    /// Set by a checkpoint whose I/O failed (see [`Broken`]): no checkpoint
    /// runs after it, so the WAL never starts over and keeps every frame.
    broken: Arc<Broken>,
    nudge: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and starts the
    /// thread that checkpoints through it. `broken` hears of a checkpoint
    /// whose reads, writes or fsyncs failed, and stops every checkpoint.
    pub(crate) fn spawn(path: &Path, policy: Policy, broken: Arc<Broken>) -> std::io::Result<Self> {
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
        let thread_broken = Arc::clone(&broken);
        let thread = std::thread::Builder::new()
            .name("workflow-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &nudges, &flag, &thread_broken))?;
        Ok(Checkpointer {
            policy,
            nudged_at: 0,
            busy,
            broken,
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// What stops the writes and the checkpoints once an fsync failed.
    pub(crate) fn broken(&self) -> Arc<Broken> {
        Arc::clone(&self.broken)
    }

    /// Takes the checkpoints off `conn` (the writer's connection, used only
    /// on the calling thread from now on): SQLite's automatic checkpoint
    /// is replaced by a hook that counts the WAL's pages, and the WAL is cut
    /// back to [`Policy::wal_limit`] bytes each time it starts over.
    pub(crate) fn take_over(&self, conn: &Connection) {
        WAL_PAGES.with(|p| p.set(0));
        // Registering a WAL hook replaces SQLite's automatic checkpoint,
        // which is itself one.
        conn.wal_hook(Some(note_wal_pages));
        // Only the connection that starts the WAL over truncates it: the
        // writer's.
        if let Err(err) = conn.pragma_update(None, "journal_size_limit", self.policy.wal_limit) {
            tracing::warn!(error = %err, "cannot limit the WAL's length; it will not shrink");
        }
    }

    /// After each commit on the writer's connection (`light`: of few
    /// callers, see the module doc): nudges the thread as the WAL grows, and
    /// past [`Policy::restart`] pages (or [`Policy::nudge`] when `light`)
    /// checkpoints on `conn` so that the next transaction starts the WAL over.
    pub(crate) fn after_commit(&mut self, conn: &Connection, light: bool) {
        if self.broken.is_broken() {
            return;
        }
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
        match checkpoint(conn, &self.broken) {
            Ok((_, copied)) => {
                tracing::trace!(pages, copied, "the writer checkpointed the WAL");
            }
            // Another process checkpointing: it copies the same frames.
            Err(err) if crate::writer::is_busy(&err) => {
                tracing::debug!(error = %err, pages, "WAL checkpoint busy elsewhere");
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
///
/// None once `broken`: after a failed write or fsync of the database file,
/// pages an earlier partial checkpoint counted as copied (SQLite fsyncs
/// the file only when a checkpoint reaches the WAL's end) may never reach
/// the disk, and the next checkpoint's fsync may succeed all the same (the
/// kernel reports a writeback error once): the WAL would start over with
/// the only good copy of those pages. An I/O error here breaks the store.
fn checkpoint(conn: &Connection, broken: &Broken) -> rusqlite::Result<(i64, i64)> {
    if let Some(why) = broken.refusal() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(why),
        ));
    }
    #[cfg(test)]
    let done = if broken.2.swap(false, Ordering::SeqCst) {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            Some("disk I/O error (injected)".into()),
        ))
    } else {
        run_checkpoint(conn)
    };
    #[cfg(not(test))]
    let done = run_checkpoint(conn);
    if let Err(rusqlite::Error::SqliteFailure(e, message)) = &done {
        if loses_pages(e) && !broken.is_broken() {
            let why = format!(
                "a WAL checkpoint failed to write the database file: {}",
                message.as_deref().unwrap_or("disk I/O error")
            );
            tracing::error!(error = %why, "the SQLite store stops taking writes until reopened");
            broken.fail(why);
        }
    }
    done
}

/// Whether a checkpoint's error may have lost pages it wrote: a failed
/// read, write, fsync or truncate, or an I/O error SQLite does not name.
/// Not the I/O codes of locks, shared memory or allocation, which lose
/// nothing and pass.
fn loses_pages(e: &rusqlite::ffi::Error) -> bool {
    use rusqlite::ffi;
    e.code == ErrorCode::SystemIoFailure
        && matches!(
            e.extended_code,
            ffi::SQLITE_IOERR
                | ffi::SQLITE_IOERR_READ
                | ffi::SQLITE_IOERR_SHORT_READ
                | ffi::SQLITE_IOERR_WRITE
                | ffi::SQLITE_IOERR_FSYNC
                | ffi::SQLITE_IOERR_DIR_FSYNC
                | ffi::SQLITE_IOERR_TRUNCATE
                | ffi::SQLITE_IOERR_DATA
        )
}

fn run_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

fn checkpoint_loop(
    conn: &Connection,
    nudges: &mpsc::Receiver<()>,
    busy: &AtomicBool,
    broken: &Broken,
) {
    while nudges.recv().is_ok() {
        if broken.is_broken() {
            continue;
        }
        busy.store(true, Ordering::Release);
        match checkpoint(conn, broken) {
            Ok((pages, copied)) => tracing::trace!(pages, copied, "WAL checkpoint"),
            Err(err) if crate::writer::is_busy(&err) => {
                tracing::debug!(error = %err, "WAL checkpoint busy elsewhere");
            }
            Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed"),
        }
        busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_io_errors_that_may_lose_pages_break_the_store() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR,
        ] {
            assert!(loses_pages(&ffi::Error::new(code)), "{code}");
        }
        for code in [
            ffi::SQLITE_IOERR_NOMEM,
            ffi::SQLITE_IOERR_SHMMAP,
            ffi::SQLITE_IOERR_LOCK,
            ffi::SQLITE_BUSY,
        ] {
            assert!(!loses_pages(&ffi::Error::new(code)), "{code}");
        }
    }

    const PAGE: u64 = 4_096;
    /// A WAL frame: a page and its 24-byte header.
    const FRAME: u64 = PAGE + 24;

    /// A database in WAL mode whose checkpoints `policy` governs, after
    /// `commits` commits of about two pages each (`light` or not). SQLite's
    /// own checkpoint is set to run every 10 pages, to show it never does.
    /// The checkpoint thread has finished (and ended) when this returns.
    fn after_commits(policy: Policy, commits: usize, light: bool) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA wal_autocheckpoint = 10; CREATE TABLE t (b BLOB);",
        )
        .unwrap();
        let before = len(&db);
        let mut checkpointer = Checkpointer::spawn(&db, policy, Default::default()).unwrap();
        checkpointer.take_over(&conn);
        for _ in 0..commits {
            conn.execute_batch(
                "BEGIN; INSERT INTO t VALUES (zeroblob(3000)); \
                 INSERT INTO t VALUES (zeroblob(3000)); COMMIT;",
            )
            .unwrap();
            checkpointer.after_commit(&conn, light);
        }
        drop(checkpointer);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2 * commits as i64);
        Files {
            grown: len(&db) - before,
            wal: len(&crate::wal_path(&db)),
            _conn: conn,
            _dir: dir,
        }
    }

    struct Files {
        /// How much the database file grew: the pages copied into it.
        grown: u64,
        /// The WAL's length: it never shrinks, so this is its longest.
        wal: u64,
        _conn: Connection,
        _dir: tempfile::TempDir,
    }

    impl Files {
        /// After 200 two-page commits: about 400 pages written and copied,
        /// and the WAL never held more than 16 pages and one commit.
        fn assert_started_over_at_16_pages(&self) {
            assert!(self.wal <= 32 + 20 * FRAME, "the WAL grew to {}", self.wal);
            assert!(self.grown >= 390 * PAGE, "{} bytes copied", self.grown);
        }
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// The writer's commits reach the database file through the thread,
    /// never through a checkpoint of the writer's own.
    #[test]
    fn the_thread_copies_the_wal_into_the_database_file() {
        let policy = Policy {
            nudge: 8,
            restart: c_int::MAX,
            ..Policy::default()
        };
        let files = after_commits(policy, 50, false);
        assert!(files.grown >= 90 * PAGE, "{} bytes copied", files.grown);
        // The writer never checkpointed, so its WAL never started over.
        assert!(files.wal >= 100 * FRAME, "{}", files.wal);
        assert!(WAL_PAGES.with(Cell::get) >= 100);
    }

    /// A thread that copies in the background never lets the WAL start
    /// over; the writer's own checkpoint does, so the WAL stays short.
    #[test]
    fn the_writer_starts_the_wal_over_past_the_restart_length() {
        let policy = Policy {
            nudge: c_int::MAX,
            restart: 16,
            ..Policy::default()
        };
        let files = after_commits(policy, 200, false);
        files.assert_started_over_at_16_pages();
    }

    /// Light commits (few callers) start the WAL over at `nudge` pages,
    /// on the writer, as SQLite's automatic checkpoint would.
    #[test]
    fn light_commits_start_the_wal_over_sooner() {
        let policy = Policy {
            nudge: 16,
            restart: c_int::MAX,
            ..Policy::default()
        };
        let files = after_commits(policy, 200, true);
        files.assert_started_over_at_16_pages();
    }

    /// A long read holds every checkpoint back, so the WAL grows; once it
    /// ends and the WAL starts over, the file is cut back to the limit
    /// instead of keeping its longest length for good.
    #[test]
    fn the_wal_shrinks_back_after_a_long_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE t (b BLOB);",
        )
        .unwrap();
        let policy = Policy {
            nudge: c_int::MAX,
            restart: 16,
            wal_limit: (32 * FRAME) as i64,
        };
        let mut checkpointer = Checkpointer::spawn(&db, policy, Default::default()).unwrap();
        checkpointer.take_over(&conn);
        let mut commit = || {
            conn.execute_batch(
                "BEGIN; INSERT INTO t VALUES (zeroblob(3000)); \
                 INSERT INTO t VALUES (zeroblob(3000)); COMMIT;",
            )
            .unwrap();
            checkpointer.after_commit(&conn, false);
        };
        commit();
        let reader = Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 2);
        for _ in 0..200 {
            commit();
        }
        let pinned = len(&crate::wal_path(&db));
        assert!(pinned >= 300 * FRAME, "the WAL held {pinned} bytes");
        reader.execute_batch("COMMIT").unwrap();
        for _ in 0..20 {
            commit();
        }
        drop(checkpointer);
        let wal = len(&crate::wal_path(&db));
        assert!(wal <= 32 * FRAME + 32, "the WAL kept {wal} bytes");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 442);
    }

    /// Nothing nudged, nothing past the restart length: nothing is copied,
    /// though SQLite's own checkpoint would have run every 10 pages.
    #[test]
    fn the_hook_replaces_sqlites_automatic_checkpoint() {
        let policy = Policy {
            nudge: c_int::MAX,
            restart: c_int::MAX,
            ..Policy::default()
        };
        let files = after_commits(policy, 20, false);
        assert_eq!(files.grown, 0);
        assert!(files.wal >= 40 * FRAME, "{}", files.wal);
    }
}
