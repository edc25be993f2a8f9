//! The store's record of a failed fsync, after which it refuses writes.

use std::sync::OnceLock;

/// Once an fsync of the WAL or of the database file has failed, no later
/// one is trusted: on Linux a writeback error is reported once, and the
/// next fsync of the file may succeed although the pages never reached
/// the disk (the kernel marked them clean). For the WAL, SQLite's frames
/// are checksummed in a chain, so recovery after a power cut would stop
/// at the lost frame and drop every commit after it. For the database
/// file, a checkpoint that believed its pages written would let the WAL
/// start over, and its frames, the only good copy, be overwritten: a loss
/// without any power cut. So every write from then on fails, and no
/// checkpoint runs, until the store is reopened (SQLite's recovery then
/// rebuilds from the WAL), as PostgreSQL stops rather than retry a failed
/// fsync.
///
/// A newer build that migrated the file under this store breaks it too
/// ([`Broken::migrated`]): its writes would not fit the new schema, and
/// the process must stop for one running the newer build.
#[derive(Debug, Default)]
pub(crate) struct Broken(
    /// The first failed fsync.
    OnceLock<String>,
    /// Why a newer build's migration of the file refuses every write.
    OnceLock<String>,
    /// Makes the next checkpoint fail as an fsync of the database file
    /// that returned EIO would: a test's way to reach that path.
    #[cfg(test)]
    pub(crate) std::sync::atomic::AtomicBool,
);

impl Broken {
    /// Why no fsync may be trusted any more, once one failed: the fsyncs
    /// and checkpoints stop too.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.0.get().map(|first| {
            format!(
                "an earlier fsync of the SQLite database failed, so no write since is known \
                 to be on disk; reopen the store once the disk is fixed ({first})"
            )
        })
    }

    /// Why no new write may be taken: an fsync failed, or a newer build
    /// migrated the file. (What was committed before a migration is still
    /// fsynced and answered as usual.)
    pub(crate) fn refuses_writes(&self) -> Option<String> {
        self.refusal().or_else(|| self.1.get().cloned())
    }

    /// Whether an fsync has failed.
    pub(crate) fn is_broken(&self) -> bool {
        self.0.get().is_some()
    }

    /// Records a failure; the first one is the one reported.
    pub(crate) fn fail(&self, why: String) {
        let _ = self.0.set(why);
    }

    /// Records that a newer build migrated the file: `refusal` is what
    /// every new write is answered from then on.
    pub(crate) fn migrated(&self, refusal: String) {
        let _ = self.1.set(refusal);
    }
}
