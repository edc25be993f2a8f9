//! SQLite store for the `workflow` crate: embedded, zero set-up, the default.
//!
//! One file holds everything. Reads run on a small connection pool; every
//! write goes through one writer thread that groups concurrent writes into
//! one transaction and one fsync (group commit), so durability costs
//! latency, not throughput, and our own writers never meet `database is
//! locked`. In durable mode a second thread fsyncs each commit while the
//! writer applies the next writes; under load a third copies the WAL back
//! into the database file (SQLite's checkpoint), so the writer need not.
//! Several processes may share one file: they queue on SQLite's lock
//! (`busy_timeout`), and the writer retries past it rather than failing.
//!
//! In durable mode a read never returns what a power cut could take back:
//! SQLite shows a commit to readers before its fsync, so a read that may
//! have seen a commit still waiting for its fsync waits for it (about one
//! fsync, and only while writes are in flight). This covers the store's
//! own writes: another process's show once that process commits them.
//! If an fsync of the WAL fails, no later one is trusted (the OS may
//! report a lost writeback only once): every write fails from then on, with
//! an error that says so, until the store is reopened.
#![warn(missing_docs)]

mod broken;
mod checkpoint;
mod flush;
mod rows;
mod schema;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite};
use workflow_core::store::*;
use workflow_core::{BoxError, Definition, Durability, Error, InstanceId, Status, StoreError};

// An instance's row holds its input, output and state, each up to the
// engine's limit: together under SQLite's default SQLITE_MAX_LENGTH (10^9
// bytes a row), with room for the other columns. A larger row would be
// refused at every try, and its step run again each time.
const _: () = assert!(3 * workflow_core::MAX_PAYLOAD_LIMIT + (16 << 20) < 1_000_000_000);

use crate::checkpoint::Checkpointer;
use crate::rows::{backend, instance_row, step_row, COLUMNS, SUMMARY_COLUMNS};
use crate::writer::{Op, PurgeFrom, Reply, Writer};

/// A statement slower than this is a warning of sqlx's.
const SLOW_STATEMENT: Duration = Duration::from_secs(10);

/// The most read connections [`SqliteOptions::readers`] takes.
const MAX_READERS: u32 = 1_024;

/// The most writes [`SqliteOptions::max_batch`] takes into one transaction.
const MAX_BATCH: usize = 65_536;

/// About how many rows one purge transaction deletes before it commits
/// and lets other writes in (a larger tree goes over several, leaves
/// first): 5,000 rows hold the writer for some milliseconds, not the
/// seconds that 500 trees of large instances, or one tree of 200,000,
/// would.
const PURGE_ROWS: u64 = 5_000;

/// How a [`SqliteStore`] opens its file.
#[derive(Debug, Clone)]
#[must_use]
pub struct SqliteOptions {
    durability: Durability,
    readers: u32,
    busy_timeout: Duration,
    max_batch: usize,
    migrate: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Durable,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            migrate: true,
        }
    }
}

impl SqliteOptions {
    /// Durable, 4 readers, 5 s busy timeout, up to 512 writes per commit,
    /// migrations on.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Durable` (a write is answered only once the WAL is fsynced, as
    /// with `synchronous=FULL`; the fsync runs on its own thread while the
    /// writer applies the next writes) or `Relaxed` (answered at commit, as
    /// with `synchronous=NORMAL`: safe against process crashes, may lose the
    /// last commits on power loss). In durable mode reads also return only
    /// what is on disk (see the crate's documentation).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Connections for reads (default 4; from 1 to 1,024, to which a
    /// number outside is brought: the pool sets a slot aside for each
    /// up front).
    pub fn readers(mut self, readers: u32) -> Self {
        self.readers = readers.clamp(1, MAX_READERS);
        self
    }

    /// How long one statement waits for another process's lock before the
    /// writer backs off and retries (default 5 s; at most about 24 days,
    /// SQLite's limit, to which a longer one is cut).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(Duration::from_millis(i32::MAX as u64));
        self
    }

    /// Most writes grouped into one transaction (default 512; from 1 to
    /// 65,536, to which a number outside is brought).
    pub fn max_batch(mut self, writes: usize) -> Self {
        self.max_batch = writes.clamp(1, MAX_BATCH);
        self
    }

    /// Whether opening creates the file and the schema, and brings an older
    /// schema up to date (default on). Off, the store opens only a database
    /// whose schema is exactly this build's, and otherwise fails without
    /// writing to the file: for tools that open a database by URL, like
    /// the console, where a mistyped path must not turn some other SQLite
    /// file into a workflow store, nor a newer tool upgrade the schema
    /// under the engines that use it.
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }
}

/// A [`Store`] on a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    writer: Writer,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The rows of `rows` (the last `last`, with the id bound to `?1` and
    /// `last` to `?2`) and the count of `count`, read from one snapshot.
    async fn tail(
        &self,
        rows: &'static str,
        count: &'static str,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<SqliteRow>, u64), StoreError> {
        let mut tx = self.read.begin().await.map_err(backend)?;
        let total: i64 = sqlx::query_scalar(count)
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let rows = sqlx::query(rows)
            .bind(id.as_str())
            .bind(i64::try_from(last).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        self.writer.settle().await?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// Opens (creating if needed) the database at `url` (`sqlite://app.db`,
    /// `sqlite:///abs/path.db`), durable.
    ///
    /// ```no_run
    /// # async fn doc() -> workflow_core::Result<()> {
    /// let store = workflow_sqlite::SqliteStore::connect("sqlite://data/app.db").await?;
    /// let engine = workflow_core::EngineBuilder::new().store(store).build().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Config`]: a URL that does not parse or is not a file
    ///   (`:memory:`); with [`connect_with`](Self::connect_with) and
    ///   `migrate(false)`, a file whose schema is not this build's;
    /// - [`Error::Store`]: the file cannot be opened, created or migrated
    ///   (permissions, a full disk, a file that is not SQLite, a schema a
    ///   newer build wrote).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database file at `path`, durable.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database file at `path` with
    /// `options`: a path that is no URL (not UTF-8, or holding `?` or `#`).
    pub async fn open_with(
        path: impl AsRef<std::path::Path>,
        options: SqliteOptions,
    ) -> Result<Self, Error> {
        Self::open_connect(SqliteConnectOptions::new().filename(path), options).await
    }

    /// Opens the database at `url` with `options`.
    pub async fn connect_with(url: &str, options: SqliteOptions) -> Result<Self, Error> {
        // Refused before sqlx renames `:memory:` to a `file:` name that the
        // writer's connection would create on disk.
        if is_in_memory(url) {
            return Err(in_memory_error());
        }
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|err| Error::Config(format!("invalid SQLite URL `{url}`: {err}")))?;
        Self::open_connect(connect, options).await
    }

    async fn open_connect(
        connect: SqliteConnectOptions,
        options: SqliteOptions,
    ) -> Result<Self, Error> {
        let synchronous = match options.durability {
            Durability::Durable => SqliteSynchronous::Full,
            Durability::Relaxed => SqliteSynchronous::Normal,
        };
        let connect = connect
            .create_if_missing(options.migrate)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(options.busy_timeout)
            .log_statements(tracing::log::LevelFilter::Trace)
            // sqlx warns of any statement over 1 s, with its SQL: a read
            // waiting out another process's lock does that by design, and
            // the store reports what goes wrong itself.
            .log_slow_statements(
                tracing::log::LevelFilter::Warn,
                SLOW_STATEMENT.max(options.busy_timeout.saturating_add(Duration::from_secs(1))),
            );
        let path = connect.get_filename().to_owned();
        let open_error = |err: BoxError| {
            Error::Store(StoreError::context(
                format!("cannot open the SQLite database {}", path.display()),
                err,
            ))
        };
        if !options.migrate {
            let check = path.clone();
            // The wrong database is the caller's mistake, not the store's.
            tokio::task::spawn_blocking(move || schema::check_current(&check))
                .await
                .map_err(|err| open_error(err.into()))?
                .map_err(|err| open_error(err.into()))?
                .map_err(|why| {
                    Error::Config(format!(
                        "cannot use the SQLite database {}: {why}",
                        path.display()
                    ))
                })?;
        }
        // Nothing to set up, as for the file itself: `sqlite://data/app.db`
        // in a fresh checkout creates `data/`.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Off the runtime: its directory fsyncs block.
            let owned = dir.to_owned();
            tokio::task::spawn_blocking(move || create_dir_durably(&owned))
                .await
                .map_err(std::io::Error::other)
                .flatten()
                .map_err(|err| {
                    Error::Store(StoreError::context(
                        format!(
                            "cannot create the directory {} for the SQLite database",
                            dir.display()
                        ),
                        err,
                    ))
                })?;
        }
        // Processes opening a new file at once meet on SQLite's locks where
        // its busy timeout does not apply (switching the file to WAL mode
        // answers `database is locked` at once): such an open is tried
        // again, for as long as the busy timeout.
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match Self::open_once(&connect, &options).await {
                Ok(store) => {
                    // A relative URL resolves against the working directory,
                    // which a service manager picks (systemd's is `/`): say
                    // which file holds the instances.
                    let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
                    tracing::info!(path = %shown.display(), "opened the SQLite database");
                    return Ok(store);
                }
                Err(Opening::Busy(err)) if started.elapsed() < options.busy_timeout => {
                    tracing::debug!(error = %err, ?pause, "SQLite database busy while opening; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(Opening::Busy(err) | Opening::Failed(err)) => return Err(open_error(err)),
                Err(Opening::Other(err)) => return Err(err),
            }
        }
    }

    /// One attempt at opening: migrate, start the writer, open the readers.
    async fn open_once(
        connect: &SqliteConnectOptions,
        options: &SqliteOptions,
    ) -> Result<Self, Opening> {
        if options.migrate {
            let mut conn = connect.connect().await.map_err(Opening::from_sqlx)?;
            schema::migrate(&mut conn)
                .await
                .map_err(Opening::from_sqlx)?;
        }
        // Off the runtime: opening may wait for another process's lock and
        // fsyncs the WAL.
        let writer = {
            let (connect, options) = (connect.clone(), options.clone());
            tokio::task::spawn_blocking(move || open_writer(&connect, &options))
                .await
                .map_err(|err| {
                    Opening::Other(Error::Store(StoreError::backend(format!(
                        "opening the writer connection failed: {err}"
                    ))))
                })??
        };
        // Read-only: a reader that happens to close last must not
        // checkpoint the WAL away behind the writer's back (after a
        // failed fsync, the WAL holds the only good copy of some pages).
        let read = SqlitePoolOptions::new()
            .max_connections(options.readers)
            .connect_with(connect.clone().read_only(true))
            .await
            .map_err(Opening::from_sqlx)?;
        Ok(SqliteStore { read, writer })
    }

    /// Closes the connections; pending writes finish first.
    pub async fn close(&self) {
        // The readers first, so the writer's connection closes last and
        // decides whether the WAL is checkpointed away (not after a failed
        // fsync; read-only, the readers could not anyway).
        self.read.close().await;
        self.writer.close().await;
    }

    async fn write(&self, op: Op) -> Result<Reply, StoreError> {
        self.writer.submit(op).await
    }
}

/// `list`'s query, after `prefix` (`EXPLAIN QUERY PLAN ` in the tests).
/// Several statuses make one arm per status, each walking its index in id
/// order, merged by SQLite (`MERGE (UNION ALL)`) up to the limit: `status
/// IN (..)` would read and sort every matching row to return the newest.
fn list_query(prefix: &str, q: &ListQuery) -> QueryBuilder<Sqlite> {
    let mut statuses: Vec<&str> = q.statuses.iter().map(|s| s.as_str()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let arms: Vec<Option<&str>> = if statuses.is_empty() {
        vec![None]
    } else {
        statuses.into_iter().map(Some).collect()
    };
    let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(prefix);
    for (n, status) in arms.into_iter().enumerate() {
        if n > 0 {
            sql.push(" UNION ALL ");
        }
        let columns = if q.summaries {
            SUMMARY_COLUMNS
        } else {
            COLUMNS
        };
        sql.push(format!("SELECT {columns} FROM instances WHERE 1 = 1"));
        if let Some(status) = status {
            sql.push(" AND status = ").push_bind(status);
        }
        if let Some(workflow) = &q.workflow {
            sql.push(" AND workflow = ").push_bind(workflow.clone());
        }
        for (name, value) in &q.tags {
            sql.push(" AND id IN (SELECT instance_id FROM instance_tags WHERE name = ")
                .push_bind(name.clone())
                .push(" AND value = ")
                .push_bind(value.clone())
                .push(")");
        }
        if let Some(key) = &q.key {
            sql.push(" AND dedup_key = ").push_bind(key.clone());
        }
        // Ids are UUIDv7, whose text starts with the creation time: bounding
        // the id too lets the range walk the primary key instead of every row.
        // A second of slack covers the id being minted just before `created_at`.
        if let Some(from) = q.created_from {
            sql.push(" AND created_at >= ").push_bind(from);
            sql.push(" AND id >= ")
                .push_bind(uuid7_floor(from.saturating_sub(1_000)));
        }
        if let Some(to) = q.created_to {
            sql.push(" AND created_at < ").push_bind(to);
            sql.push(" AND id < ")
                .push_bind(uuid7_floor(to.saturating_add(1_000)));
        }
        if let Some(before) = &q.before {
            sql.push(" AND id < ").push_bind(before.to_string());
        }
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::try_from(q.limit).unwrap_or(i64::MAX));
    sql
}

/// The smallest UUIDv7 text minted at `ms`.
fn uuid7_floor(ms: Millis) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// Whether `url` names an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `sqlite://`, `?mode=memory`, `file::memory:`),
/// read as sqlx reads SQLite URLs.
fn is_in_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (db, params) = rest.split_once('?').unwrap_or((rest, ""));
    db.is_empty()
        || db == ":memory:"
        || db.starts_with("file::memory:")
        || params.split('&').any(|param| param == "mode=memory")
}

fn in_memory_error() -> Error {
    Error::Config(
        "an in-memory SQLite database cannot be shared by the store's connections; \
         use a file, or the `memory:` URL (MemoryStore)"
            .into(),
    )
}

/// Why one attempt at opening the store failed.
enum Opening {
    /// Another connection held a lock: worth another try.
    Busy(BoxError),
    /// SQLite refused to open or set up the file.
    Failed(BoxError),
    /// Anything else, reported as it is.
    Other(Error),
}

impl Opening {
    fn from_sqlx(err: sqlx::Error) -> Self {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), extended codes included.
        let busy = err
            .as_database_error()
            .and_then(|e| e.code())
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6));
        if busy {
            Opening::Busy(err.into())
        } else {
            Opening::Failed(err.into())
        }
    }

    fn from_rusqlite(err: rusqlite::Error) -> Self {
        if crate::writer::is_busy(&err) {
            Opening::Busy(err.into())
        } else {
            Opening::Failed(err.into())
        }
    }
}

impl From<Error> for Opening {
    fn from(err: Error) -> Self {
        Opening::Other(err)
    }
}

/// The writer's own connection, with the same file and pragmas.
fn open_writer(connect: &SqliteConnectOptions, options: &SqliteOptions) -> Result<Writer, Opening> {
    let path = connect.get_filename();
    if path.as_os_str() == ":memory:" || path.as_os_str().is_empty() {
        return Err(in_memory_error().into());
    }
    let conn = rusqlite::Connection::open(path).map_err(Opening::from_rusqlite)?;
    crate::writer::enlarge_lookaside(&conn);
    // Before the pragmas, which may wait for another process's lock.
    conn.busy_timeout(options.busy_timeout)
        .map_err(Opening::from_rusqlite)?;
    // `NORMAL` in both modes: SQLite writes each commit to the WAL and
    // fsyncs around checkpoints. Durable mode adds an fsync of the WAL
    // after every commit, on the flush thread, before any write of it is
    // answered: what `FULL` does, without holding the writer while the
    // disk flushes. Statement journals stay in memory.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;",
    )
    .map_err(Opening::from_rusqlite)?;
    conn.set_prepared_statement_cache_capacity(64);
    let wal = match options.durability {
        Durability::Durable => Some(open_wal(&conn).map_err(|err| {
            Error::Store(StoreError::context(
                format!("cannot open the WAL file of {} to fsync it", path.display()),
                err,
            ))
        })?),
        Durability::Relaxed => None,
    };
    let checkpointer = Checkpointer::spawn(path, checkpoint::Policy::default(), Default::default())
        .map_err(|err| {
            Error::Store(StoreError::context(
                format!(
                    "cannot open the checkpoint connection to {}",
                    path.display()
                ),
                err,
            ))
        })?;
    Writer::spawn(conn, options.max_batch, wal, checkpointer)
        .map_err(|err| Opening::Other(Error::Store(StoreError::backend(err))))
}

/// Creates `dir` and any missing parents, each one's entry in its parent
/// fsynced: SQLite fsyncs the directory of the files it creates, not the
/// directories above it, which a power cut could otherwise take back with
/// everything in them.
fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another process made it meanwhile, and fsyncs its entry.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
            return Ok(())
        }
        Err(err) => return Err(err),
    }
    std::fs::File::open(parent.unwrap_or(std::path::Path::new(".")))?.sync_all()
}

/// Text read as bytes, its invalid UTF-8 replaced.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Where SQLite keeps the WAL of the database at `db`.
pub(crate) fn wal_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// The WAL file of `conn`'s database (which the connection keeps in
/// existence while it is open), for the flush thread to fsync; and its
/// directory entry made durable, as SQLite does when it creates the file.
///
/// Found from the path SQLite resolved, not the one given: SQLite puts the
/// WAL beside the file a symbolic link points to, and a stale `-wal` file
/// beside the link would be fsynced instead, silently.
fn open_wal(conn: &rusqlite::Connection) -> std::io::Result<std::fs::File> {
    let db = conn
        .path()
        .filter(|path| !path.is_empty())
        .map(std::path::Path::new)
        .ok_or_else(|| std::io::Error::other("the database has no file"))?;
    let wal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(wal_path(db))?;
    // What a process that died before its fsync committed is in the WAL,
    // and readers see it: on disk first, or a power cut could take back
    // an output this store's reads showed.
    flush::sync(&wal).map_err(std::io::Error::other)?;
    let dir = match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(wal)
}

/// An instance's history (its id bound to `?1`): its `events` rows (read
/// from `$events`), the events of the steps that carry their own
/// (`history = 1`, read from `$steps`, a table and its condition), and the
/// first run's `started` and the terminal event of `finish` kept in the
/// instance row. A macro, so that statements can `concat!` it.
macro_rules! history_union {
    ($events:literal, $steps:literal) => {
        concat!(
            "SELECT seq, at, kind, step, attempt, message, duration_ms FROM ",
            $events,
            " UNION ALL \
             SELECT seq, finished_at, CASE WHEN error IS NULL THEN 'step_completed' ELSE 'step_failed' END, \
                    key, attempts, error, finished_at - started_at FROM ",
            $steps,
            " AND history = 1 \
             UNION ALL \
             SELECT seq + 1, finished_at, 'state_changed', key, NULL, NULL, NULL FROM ",
            $steps,
            " AND history = 1 AND state IS NOT NULL \
             UNION ALL \
             SELECT started_seq, started_at, 'started', NULL, NULL, NULL, NULL \
               FROM instances WHERE id = ?1 AND started_seq IS NOT NULL \
             UNION ALL \
             SELECT finished_seq, finished_at, status, NULL, NULL, error, NULL \
               FROM instances WHERE id = ?1 AND finished_seq IS NOT NULL"
        )
    };
}

/// The history in the order of its shared `seq`.
const HISTORY: &str = concat!(
    history_union!(
        "events WHERE instance_id = ?1",
        "steps WHERE instance_id = ?1"
    ),
    " ORDER BY 1"
);

/// The last `?2` events of the history, oldest first. Each source gives at
/// most its own last `?2`: every step recorded after another adds at least
/// one event after that one's (its own, at its `seq` and `seq + 1`, or, for
/// a step with `history = 0` such as a taken event, a row of `events`), so
/// the events of a step older than the last `?2` steps are never among the
/// last `?2`. Only the index entries of older steps are read, not their
/// rows.
const HISTORY_TAIL: &str = concat!(
    "SELECT * FROM (",
    history_union!(
        "(SELECT * FROM events WHERE instance_id = ?1 ORDER BY seq DESC LIMIT ?2)",
        "steps WHERE seq IN (SELECT seq FROM steps WHERE instance_id = ?1 ORDER BY seq DESC LIMIT ?2)"
    ),
    " ORDER BY 1 DESC LIMIT ?2) ORDER BY seq"
);

/// How many events the history of `?1` has. Which steps changed the state
/// is only in their rows, so this reads every step row of the instance
/// (unlike the tail itself).
const HISTORY_COUNT: &str = "SELECT (SELECT COUNT(*) FROM events WHERE instance_id = ?1) \
     + (SELECT COUNT(*) + COUNT(state) FROM steps WHERE instance_id = ?1 AND history = 1) \
     + COALESCE((SELECT (started_seq IS NOT NULL) + (finished_seq IS NOT NULL) \
                 FROM instances WHERE id = ?1), 0)";

/// The last `?2` steps of instance `?1`, oldest first. The inner query
/// reads only the index on `(instance_id, key)`, whose entries carry
/// `seq` (the rowid): the outputs and states of older steps are never read.
const STEPS_TAIL: &str = "SELECT key, output, error, state, attempts, started_at, finished_at \
     FROM steps WHERE seq IN \
         (SELECT seq FROM steps WHERE instance_id = ?1 ORDER BY seq DESC LIMIT ?2) \
     ORDER BY seq";

const STEPS_COUNT: &str = "SELECT COUNT(*) FROM steps WHERE instance_id = ?1";

/// The next due time of workflow `?1` after `?2`: the first entry of its
/// range of `instances_runnable` past it, read straight off the index. A
/// running instance's entry is when its lease ends (it is claimable again
/// if its worker died), so this is a lower bound of the next waiting
/// instance's due time, as [`Store::next_due`] allows.
const NEXT_DUE: &str = "SELECT run_at FROM instances INDEXED BY instances_runnable \
     WHERE workflow = ?1 \
     AND (status = 'pending' OR status = 'in_progress' OR status = 'listening') \
     AND run_at >= ?2 ORDER BY run_at LIMIT 1";

/// Workers holding leases. Only in-progress rows hold one, so this reads
/// the in-progress range of `instances_status`, never the whole table.
const LEASE_OWNERS: &str =
    "SELECT DISTINCT lease_owner FROM instances INDEXED BY instances_status \
     WHERE status = 'in_progress' AND lease_owner IS NOT NULL";

fn unexpected(reply: Reply) -> StoreError {
    StoreError::backend(format!("sqlite writer gave an unexpected reply: {reply:?}"))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(
        &self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError> {
        match self
            .write(Op::Create(new, dedup.map(<[Status]>::to_vec)))
            .await?
        {
            Reply::Created(created) => Ok(*created),
            other => Err(unexpected(other)),
        }
    }

    async fn create_many(&self, new: Vec<NewInstance>) -> Result<Vec<InstanceRow>, StoreError> {
        match self.write(Op::CreateMany(new)).await? {
            Reply::CreatedMany(rows) => Ok(rows),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, id: &InstanceId) -> Result<Option<InstanceRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM instances WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(backend)?;
        self.writer.settle().await?;
        row.as_ref().map(instance_row).transpose()
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        match self.write(Op::Claim(req)).await? {
            Reply::Claimed(claimed) => Ok(claimed),
            other => Err(unexpected(other)),
        }
    }

    async fn next_due(
        &self,
        workflows: &[String],
        after: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let mut next: Option<Millis> = None;
        for workflow in workflows {
            let due: Option<Millis> = sqlx::query_scalar(NEXT_DUE)
                .bind(workflow)
                .bind(after)
                .fetch_optional(&self.read)
                .await
                .map_err(backend)?;
            next = next.into_iter().chain(due).min();
        }
        Ok(next)
    }

    /// The writer applies writes in the order they were queued, and
    /// `commit_step` queues its write in its first poll.
    fn commits_in_call_order(&self) -> bool {
        true
    }

    async fn commit_step(&self, lease: &Lease, step: StepRow) -> Result<(), StoreError> {
        match self.write(Op::CommitStep(lease.clone(), step)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        let op = Op::Attempt {
            lease: lease.clone(),
            step: step.to_owned(),
            attempt,
            error: error.to_owned(),
            at,
        };
        match self.write(op).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn finish(&self, lease: &Lease, finish: Finish) -> Result<(), StoreError> {
        match self.write(Op::Finish(lease.clone(), finish)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn release(&self, lease: &Lease, at: Millis) -> Result<(), StoreError> {
        match self.write(Op::Release(lease.clone(), at)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn renew(&self, leases: &[Lease], until: Millis) -> Result<Vec<Renewal>, StoreError> {
        match self.write(Op::Renew(leases.to_vec(), until)).await? {
            Reply::Renewed(renewed) => Ok(renewed),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        match self.write(Op::Cancel(id.clone(), at)).await? {
            Reply::Control(control) => Ok(control),
            other => Err(unexpected(other)),
        }
    }

    async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Result<Control, StoreError> {
        match self
            .write(Op::SetDeadline(id.clone(), deadline_at, at))
            .await?
        {
            Reply::Control(control) => Ok(control),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_owners(&self) -> Result<Vec<String>, StoreError> {
        // As bytes: one owner that is not UTF-8 (damage) must not fail them all.
        let owners: Vec<Vec<u8>> = sqlx::query_scalar(LEASE_OWNERS)
            .fetch_all(&self.read)
            .await
            .map_err(backend)?;
        let mut owners: Vec<String> = owners.into_iter().map(lossy).collect();
        owners.sort_unstable();
        Ok(owners)
    }

    async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        // Several transactions when the trees are large, each going on
        // where the last stopped: running workflows' writes go between.
        let (mut instances, mut trees) = (0, 0);
        let mut from = PurgeFrom::default();
        loop {
            let op = Op::Purge {
                before: ended_before,
                workflow: workflow.map(str::to_owned),
                trees: limit - trees,
                rows: PURGE_ROWS,
                from,
            };
            match self.write(op).await? {
                Reply::Purged(done) => {
                    instances += done.instances;
                    trees += done.trees;
                    match done.next {
                        Some(next) if trees < limit => from = next,
                        _ => return Ok(instances),
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn release_owner(&self, owner: &str, at: Millis) -> Result<u64, StoreError> {
        match self.write(Op::ReleaseOwner(owner.to_owned(), at)).await? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    async fn steps(&self, id: &InstanceId) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, output, error, state, attempts, started_at, finished_at FROM steps WHERE instance_id = ? ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend)?;
        self.writer.settle().await?;
        rows.iter().map(|r| step_row(id, r)).collect()
    }

    async fn history(&self, id: &InstanceId) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(HISTORY)
            .bind(id.as_str())
            .fetch_all(&self.read)
            .await
            .map_err(backend)?;
        self.writer.settle().await?;
        rows.iter().map(|r| rows::event_row(id, r)).collect()
    }

    async fn steps_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<StepRow>, u64), StoreError> {
        let (rows, total) = self.tail(STEPS_TAIL, STEPS_COUNT, id, last).await?;
        let steps = rows.iter().map(|r| step_row(id, r));
        Ok((steps.collect::<Result<_, _>>()?, total))
    }

    async fn history_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<EventRow>, u64), StoreError> {
        let (rows, total) = self.tail(HISTORY_TAIL, HISTORY_COUNT, id, last).await?;
        let events = rows.iter().map(|r| rows::event_row(id, r));
        Ok((events.collect::<Result<_, _>>()?, total))
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Listed>, StoreError> {
        let rows = list_query("", q)
            .build()
            .fetch_all(&self.read)
            .await
            .map_err(backend)?;
        self.writer.settle().await?;
        Ok(rows.iter().map(instance_row).collect())
    }

    async fn suspend(&self, lease: &Lease, suspend: Suspend) -> Result<(), StoreError> {
        match self.write(Op::Suspend(lease.clone(), suspend)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        at: Millis,
    ) -> Result<Control, StoreError> {
        let op = Op::SendEvent {
            id: id.clone(),
            name: name.to_owned(),
            payload: payload.to_owned(),
            key: key.map(str::to_owned),
            at,
        };
        match self.write(op).await? {
            Reply::Control(control) => Ok(control),
            other => Err(unexpected(other)),
        }
    }

    async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Result<Option<String>, StoreError> {
        let op = Op::TakeEvent {
            lease: lease.clone(),
            name: name.to_owned(),
            step: step.to_owned(),
            at,
        };
        match self.write(op).await? {
            Reply::Taken(taken) => Ok(taken),
            other => Err(unexpected(other)),
        }
    }

    async fn pause(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        match self.write(Op::Pause(id.clone(), at)).await? {
            Reply::Control(control) => Ok(control),
            other => Err(unexpected(other)),
        }
    }

    async fn resume(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        match self.write(Op::Resume(id.clone(), at)).await? {
            Reply::Control(control) => Ok(control),
            other => Err(unexpected(other)),
        }
    }

    async fn put_definitions(
        &self,
        definitions: &[Definition],
        at: Millis,
    ) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(definitions.len());
        for def in definitions {
            let json = serde_json::to_string(def).map_err(StoreError::backend)?;
            rows.push((def.name.clone(), json));
        }
        match self.write(Op::PutDefinitions(rows, at)).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn definitions(&self) -> Result<Vec<Definition>, StoreError> {
        // As bytes: a row that is not UTF-8 is skipped with the others that
        // do not decode, instead of failing them all.
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT name, definition FROM definitions ORDER BY name")
                .fetch_all(&self.read)
                .await
                .map_err(backend)?;
        let rows = rows.into_iter().map(|(n, d)| (lossy(n), lossy(d)));
        Ok(workflow_core::store::decode_definitions(rows.collect()))
    }

    async fn schedule_mark(&self, workflow: &str) -> Result<Option<ScheduleMark>, StoreError> {
        // Read as whatever the row holds (its table is not STRICT): a
        // damaged mark must not stop the schedule, or hide every other
        // one from `schedules()`.
        let row: Option<(Option<i64>, Option<i64>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT CASE WHEN typeof(checked_until) = 'integer' THEN checked_until END, \
                    CASE WHEN typeof(last_tick) = 'integer' THEN last_tick END, \
                    CAST(last_instance AS BLOB) \
             FROM schedules WHERE workflow = ?",
        )
        .bind(workflow)
        .fetch_optional(&self.read)
        .await
        .map_err(backend)?;
        Ok(match row {
            None => None,
            // As if never checked: the scheduler starts over from now, and
            // its next mark overwrites this one.
            Some((None, ..)) => {
                tracing::warn!(
                    workflow,
                    "schedule mark unreadable; the schedule starts over from now"
                );
                None
            }
            Some((Some(checked_until), last_tick, last_instance)) => Some(ScheduleMark {
                checked_until,
                last_tick,
                last_instance: last_instance.map(|id| InstanceId::from_string(lossy(id))),
            }),
        })
    }

    async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, InstanceId)>,
    ) -> Result<(), StoreError> {
        match self
            .write(Op::AdvanceSchedule(
                workflow.to_owned(),
                checked_until,
                fired,
            ))
            .await?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn count_by_status(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<(Status, u64)>, StoreError> {
        // As bytes: a status that is not UTF-8 is counted out with a
        // warning, as an unknown one is, instead of failing every count.
        let rows: Vec<(Vec<u8>, i64)> = match workflow {
            Some(workflow) => {
                sqlx::query_as(
                    "SELECT status, COUNT(*) FROM instances WHERE workflow = ? GROUP BY status",
                )
                .bind(workflow)
                .fetch_all(&self.read)
                .await
            }
            None => {
                sqlx::query_as("SELECT status, COUNT(*) FROM instances GROUP BY status")
                    .fetch_all(&self.read)
                    .await
            }
        }
        .map_err(backend)?;
        self.writer.settle().await?;
        let rows = rows.into_iter().map(|(s, n)| (lossy(s), n)).collect();
        Ok(workflow_core::store::status_counts(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causes of a failed open stay errors of their own, under what
    /// was being done: a caller can tell an I/O error from a SQLite one
    /// (they were text before), and the message reads as it did.
    #[tokio::test]
    async fn a_failed_open_keeps_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = SqliteStore::open(file.join("app.db")).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("cannot create the directory") && message.contains("plain-file"),
            "{message}"
        );
        let Error::Store(StoreError::Backend(backend)) = &err else {
            panic!("{err:?}");
        };
        let source = backend.source().expect("the cause");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an I/O error");
        assert!(message.ends_with(&io.to_string()), "{message}");

        // A file that is not a database: SQLite's own error.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
        let err = SqliteStore::open(&junk).await.unwrap_err();
        let Error::Store(StoreError::Backend(backend)) = &err else {
            panic!("{err:?}");
        };
        let source = backend.source().expect("the cause");
        assert!(
            source.downcast_ref::<sqlx::Error>().is_some()
                || source.downcast_ref::<rusqlite::Error>().is_some(),
            "{source:?}"
        );
        assert!(
            err.to_string().contains("cannot open the SQLite database"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        workflow_core::testing::conformance(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("conformance-{n}.db"));
            async move { SqliteStore::open(path).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn relaxed_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        workflow_core::testing::conformance(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = format!(
                "sqlite://{}",
                dir.path().join(format!("relaxed-{n}.db")).display()
            );
            async move {
                SqliteStore::connect_with(
                    &url,
                    SqliteOptions::new().durability(Durability::Relaxed),
                )
                .await
                .unwrap()
            }
        })
        .await;
    }

    /// sqlx's in-memory URLs are refused with the configuration error, not
    /// a failure to fsync a WAL that does not exist, and leave no file
    /// behind (sqlx names `:memory:` `file:sqlx-in-memory-N`, which the
    /// writer's connection used to create in the working directory).
    #[tokio::test]
    async fn in_memory_urls_are_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.db");
        for url in [
            "sqlite::memory:".to_owned(),
            "sqlite://:memory:".to_owned(),
            "sqlite://".to_owned(),
            "sqlite://file::memory:?cache=shared".to_owned(),
            format!("sqlite://{}?mode=memory", file.display()),
        ] {
            let err = SqliteStore::connect(&url).await.unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains("in-memory SQLite database")),
                "{url}: {err}"
            );
        }
        assert!(!file.exists());
        assert!(!std::path::Path::new("sqlx-in-memory-0").exists());
        assert!(!is_in_memory("sqlite://data/app.db?mode=rwc"));
        assert!(!is_in_memory("sqlite:///tmp/memory.db"));
    }

    #[test]
    fn uuid7_floor_sorts_with_minted_ids() {
        let id = workflow_core::InstanceId::new();
        let now = chrono::Utc::now().timestamp_millis();
        assert!(uuid7_floor(now - 1_000).as_str() < id.as_str());
        assert!(uuid7_floor(now + 1_000).as_str() > id.as_str());
    }

    /// `open_with` takes a path no URL could name, and applies its options.
    #[tokio::test]
    async fn open_with_takes_any_path_and_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd?name#1.db");
        let store = SqliteStore::open_with(&odd, SqliteOptions::new().readers(1))
            .await
            .unwrap();
        store
            .create(workflow_core::testing::new_instance("w", 0), None)
            .await
            .unwrap();
        assert!(odd.exists(), "the file is at the path given");
        // `migrate(false)` refuses a file with no schema, and creates none.
        let fresh = dir.path().join("fresh.db");
        let refused = SqliteStore::open_with(&fresh, SqliteOptions::new().migrate(false)).await;
        assert!(refused.is_err());
        assert!(!fresh.exists());
    }

    /// A value that is not UTF-8 (damage) in one row leaves the counts,
    /// the definitions and the lease owners of the others readable: sqlx
    /// failed the whole query on it.
    #[tokio::test]
    async fn one_row_that_is_not_utf8_does_not_fail_a_whole_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("utf8.db")).await.unwrap();
        for n in 0..3 {
            store
                .create(workflow_core::testing::new_instance("w", n), None)
                .await
                .unwrap();
        }
        let conn = rusqlite::Connection::open(dir.path().join("utf8.db")).unwrap();
        conn.execute_batch(
            "UPDATE instances SET status = CAST(X'FF' AS TEXT), lease_owner = CAST(X'FE' AS TEXT) \
               WHERE id = (SELECT min(id) FROM instances); \
             INSERT INTO definitions (name, definition, recorded_at) \
               VALUES ('a', CAST(X'FF' AS TEXT), 0);",
        )
        .unwrap();
        drop(conn);
        let counts = store.count_by_status(None).await.unwrap();
        assert_eq!(counts, [(workflow_core::Status::Pending, 2)]);
        store.lease_owners().await.unwrap();
        store.definitions().await.unwrap();
    }

    /// Trees larger than one purge transaction's rows are purged whole,
    /// one per transaction here, with everything they stored; the limit
    /// on trees holds across those transactions.
    #[tokio::test]
    async fn a_purge_of_trees_larger_than_a_transaction_takes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("purge.db"))
            .await
            .unwrap();
        let steps_each = PURGE_ROWS as usize + 1;
        for n in 0..3 {
            store
                .create(crate::writer::new_instance(n + 1), None)
                .await
                .unwrap();
            let claimed = store
                .claim(ClaimRequest {
                    owner: "o".into(),
                    workflows: vec!["w".into()],
                    now: 10,
                    due_by: 10,
                    lease_until: 10_000,
                    limit: 1,
                })
                .await
                .unwrap()
                .remove(0);
            for k in 0..steps_each {
                let step = crate::writer::done_step(format!("s{k}"), 12);
                store.commit_step(&claimed.lease, step).await.unwrap();
            }
            let finish = crate::writer::completed_at(20);
            store.finish(&claimed.lease, finish).await.unwrap();
        }
        let steps = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM steps")
                .fetch_one(&store.read)
                .await
                .unwrap()
        };
        assert_eq!(store.purge(21, None, 2).await.unwrap(), 2);
        assert_eq!(steps().await, steps_each as i64, "one tree left");
        assert_eq!(store.purge(21, None, 500).await.unwrap(), 1);
        assert_eq!(steps().await, 0);
    }

    /// A tree larger than one transaction's rows goes leaves first over
    /// several, its root last, so that what is left between them is still
    /// a tree the next one finds.
    #[tokio::test]
    async fn a_tree_larger_than_a_transaction_goes_leaves_first() {
        purge_a_large_tree(false).await;
    }

    /// A child started under a tree being purged in part (by a handler
    /// that had not heard its parent ended) keeps what is left of it: its
    /// parent is not deleted from under it.
    #[tokio::test]
    async fn a_child_started_under_a_tree_being_purged_keeps_its_parent() {
        purge_a_large_tree(true).await;
    }

    /// Purges a root with four children, five rows each, five rows per
    /// transaction; with `late_child`, a pending child of the root is
    /// created after the first transaction.
    async fn purge_a_large_tree(late_child: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("tree.db")).await.unwrap();
        let root = crate::writer::new_instance(1);
        let root_id = root.id.clone();
        store.create(root, None).await.unwrap();
        for n in 2..=5 {
            let mut child = crate::writer::new_instance(n);
            child.parent = Some(root_id.clone());
            store.create(child, None).await.unwrap();
        }
        let claimed = store
            .claim(ClaimRequest {
                owner: "o".into(),
                workflows: vec!["w".into()],
                now: 10,
                due_by: 10,
                lease_until: 10_000,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 5);
        for c in &claimed {
            for k in 0..3 {
                let step = crate::writer::done_step(format!("s{k}"), 12);
                store.commit_step(&c.lease, step).await.unwrap();
            }
            let finish = crate::writer::completed_at(20);
            store.finish(&c.lease, finish).await.unwrap();
        }
        let count = |table: &'static str| {
            let read = store.read.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table}"
                )))
                .fetch_one(&read)
                .await
                .unwrap()
            }
        };
        // Each instance has more rows than one transaction may take here.
        let mut from = PurgeFrom::default();
        let mut rounds = Vec::new();
        loop {
            let op = Op::Purge {
                before: 21,
                workflow: None,
                trees: 500,
                rows: 5,
                from,
            };
            let Reply::Purged(done) = store.write(op).await.unwrap() else {
                panic!("a purge answers Purged");
            };
            rounds.push(done.instances);
            let root_left = store.get(&root_id).await.unwrap().is_some();
            let left = count("instances").await;
            assert_eq!(root_left, left > 0, "the root goes last, after {rounds:?}");
            if late_child && rounds.len() == 1 {
                let mut child = crate::writer::new_instance(50);
                child.parent = Some(root_id.clone());
                store.create(child, None).await.unwrap();
            }
            match done.next {
                Some(next) => from = next,
                None => break,
            }
            assert!(rounds.len() < 10, "{rounds:?}");
        }
        assert!(rounds.len() > 1, "several transactions: {rounds:?}");
        if late_child {
            assert!(
                store.get(&root_id).await.unwrap().is_some(),
                "the parent stays"
            );
            assert!(rounds.iter().sum::<u64>() < 5, "{rounds:?}");
        } else {
            assert_eq!(rounds.iter().sum::<u64>(), 5);
            assert_eq!((count("instances").await, count("steps").await), (0, 0));
        }
    }

    /// The list and count queries must use indexes, not sort or scan the table.
    #[tokio::test]
    async fn list_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("plan.db")).await.unwrap();
        let plan = |sql: String| {
            let read = store.read.clone();
            async move {
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                        .fetch_all(&read)
                        .await
                        .unwrap();
                rows.into_iter()
                    .map(|r| r.3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
        };
        let cases = [
            // The dedup lookup of `create` (writer.rs).
            "SELECT id FROM instances WHERE workflow = 'w' AND dedup_key = 'k' \
             AND status IN (SELECT value FROM json_each('[\"pending\"]')) ORDER BY id DESC LIMIT 1",
            "SELECT status, COUNT(*) FROM instances WHERE workflow = 'w' GROUP BY status",
            "SELECT status, COUNT(*) FROM instances GROUP BY status",
            NEXT_DUE,
            LEASE_OWNERS,
            "SELECT seq, at, kind FROM events WHERE instance_id = 'x' ORDER BY seq",
        ];
        // `list` itself, as it builds its query for each kind of filter.
        let query = |edit: fn(&mut ListQuery)| {
            let mut q = ListQuery {
                limit: 50,
                ..ListQuery::default()
            };
            edit(&mut q);
            q
        };
        let queries = [
            query(|_| {}),
            query(|q| q.statuses = vec![Status::Failed]),
            query(|q| q.statuses = vec![Status::Failed, Status::Completed, Status::Failed]),
            query(|q| {
                q.workflow = Some("w".into());
                q.statuses = vec![Status::Pending, Status::InProgress, Status::Listening];
                q.before = Some(InstanceId::new());
            }),
            query(|q| {
                q.statuses = vec![Status::Cancelled, Status::TimedOut];
                q.tags.insert("a".into(), "b".into());
            }),
            query(|q| q.workflow = Some("w".into())),
            query(|q| {
                q.workflow = Some("w".into());
                q.statuses = vec![Status::Failed];
            }),
            query(|q| {
                q.tags.insert("a".into(), "b".into());
            }),
            query(|q| {
                q.created_from = Some(1);
                q.created_to = Some(2);
            }),
            query(|q| q.before = Some(InstanceId::new())),
            // The console's search box lists by key alone.
            query(|q| q.key = Some("k".into())),
            query(|q| {
                q.workflow = Some("w".into());
                q.key = Some("k".into());
            }),
        ];
        for q in &queries {
            let rows = list_query("EXPLAIN QUERY PLAN ", q)
                .build()
                .fetch_all(&store.read)
                .await
                .unwrap();
            let plan = rows
                .iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 3))
                .collect::<Vec<_>>()
                .join(" | ");
            // Unfiltered, the newest first is the primary key's own order.
            let filtered = *q != query(|_| {});
            let scans = filtered && plan.contains("SCAN instances");
            assert!(
                !plan.contains("TEMP B-TREE") && !scans,
                "list {q:?} sorts or scans: {plan}"
            );
            // And it returns what it plans: one query per status, merged.
            store.list(q).await.unwrap();
        }
        let claim = crate::writer::claim_sql();
        // Claims and the next due time read one workflow's range of the
        // index: other workflows' due rows are never read.
        for sql in [claim.as_str(), NEXT_DUE] {
            let plan = plan(sql.to_owned()).await;
            assert!(
                plan.contains("instances_runnable (workflow=? AND run_at"),
                "{sql}: {plan}"
            );
        }
        for sql in cases.into_iter().map(String::from).chain([claim]) {
            let plan = plan(sql.clone()).await;
            assert!(
                !plan.contains("TEMP B-TREE FOR ORDER BY"),
                "{sql} sorts: {plan}"
            );
            assert!(
                plan.contains("INDEX")
                    || plan.contains("PRIMARY KEY")
                    || plan.contains("USING ROWID"),
                "{sql} scans without an index: {plan}"
            );
        }
    }

    /// A database written by the first schema keeps its steps and history,
    /// in order, through the later migrations, and both go on.
    #[tokio::test]
    async fn migrating_from_the_first_schema_keeps_steps_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(schema::MIGRATIONS[0]).unwrap();
            c.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO instances (id, workflow, status, input, created_at, updated_at, run_at, runs, lease_owner, lease_expires_at)
                     VALUES ('a', 'wf', 'in_progress', '1', 1, 1, 1, 1, 'me', 9999999999999),
                            ('b', 'wf', 'pending', '2', 1, 1, 1, 0, NULL, NULL);
                 INSERT INTO events (seq, instance_id, at, kind) VALUES (1, 'a', 1, 'created'), (2, 'b', 1, 'created'), (3, 'a', 2, 'started');
                 INSERT INTO events (seq, instance_id, at, kind, step, attempt, duration_ms) VALUES (4, 'a', 3, 'step_completed', 'one', 1, 1), (6, 'a', 4, 'step_completed', 'two', 1, 1);
                 INSERT INTO steps (seq, instance_id, key, output, attempts, started_at, finished_at) VALUES (1, 'a', 'one', '1', 1, 2, 3), (2, 'b', 'x', '0', 1, 2, 3), (3, 'a', 'two', '2', 1, 3, 4);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let a = InstanceId::from("a");
        let keys = |steps: Vec<StepRow>| steps.into_iter().map(|s| s.key).collect::<Vec<_>>();
        assert_eq!(keys(store.steps(&a).await.unwrap()), ["one", "two"]);
        assert_eq!(
            keys(store.steps(&InstanceId::from("b")).await.unwrap()),
            ["x"]
        );
        let kinds =
            |history: &[EventRow]| history.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();
        let history = store.history(&a).await.unwrap();
        assert_eq!(
            kinds(&history),
            ["created", "started", "step_completed", "step_completed"]
        );
        assert_eq!(history[3].step.as_deref(), Some("two"));

        let lease = Lease {
            instance: a.clone(),
            owner: "me".into(),
            run: 1,
        };
        let three = StepRow {
            key: "three".into(),
            output: Some("3".into()),
            error: None,
            state: None,
            attempts: 1,
            started_at: 5,
            finished_at: 6,
        };
        store.commit_step(&lease, three).await.unwrap();
        assert_eq!(
            keys(store.steps(&a).await.unwrap()),
            ["one", "two", "three"]
        );
        let history = store.history(&a).await.unwrap();
        assert_eq!(history.last().unwrap().step.as_deref(), Some("three"));
        assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    /// A URL into a directory that does not exist yet creates it; a path
    /// that cannot be opened is named in the error.
    #[tokio::test]
    async fn a_missing_directory_is_created_and_a_bad_path_named() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("data/more/app.db");
        let url = format!("sqlite://{}", nested.display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.close().await;
        assert!(nested.exists());
        // A file where a directory should be is named.
        let blocked = dir.path().join("data/more/app.db/x.db");
        let err = SqliteStore::open(&blocked).await.unwrap_err().to_string();
        assert!(err.contains("cannot create the directory"), "{err}");
        // A directory where the file should be.
        let err = SqliteStore::open(dir.path().join("data"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&dir.path().join("data").display().to_string()),
            "{text}"
        );
    }

    /// A durable store opened on a file whose WAL holds commits no one
    /// fsynced (their process died first) fsyncs them before it reads
    /// anything: its reads would show them otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_fsyncs_what_a_dead_process_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.db");
        SqliteStore::open(&path).await.unwrap().close().await;
        // A commit through SQLite's `NORMAL`, which does not fsync it; the
        // connection stays open, so the WAL stays (as a killed process's).
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("PRAGMA synchronous = NORMAL; UPDATE history_seq SET last = last;")
            .unwrap();
        let held = HeldFsyncs::hold();
        let opening = tokio::spawn({
            let path = path.clone();
            async move { SqliteStore::open(&path).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!opening.is_finished(), "opened without an fsync of the WAL");
        drop(held);
        opening.await.unwrap().unwrap();
        drop(other);
    }

    /// A newer build that migrates the file while this store has it open
    /// (processes sharing it, upgraded one by one) makes this store refuse
    /// writes, with a message that says why, instead of writing rows the
    /// new schema reads otherwise; for good (`Unusable`), so that its
    /// workers stop and the process is restarted with the newer build.
    /// Before, each write failed on its own (`Backend`), and workers went
    /// on retrying in a process that could do nothing.
    #[tokio::test]
    async fn a_file_migrated_by_a_newer_build_meanwhile_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newer.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .create(workflow_core::testing::new_instance("w", 1), None)
            .await
            .unwrap();
        let newer = rusqlite::Connection::open(&path).unwrap();
        newer
            .execute_batch(&format!(
                "PRAGMA user_version = {}",
                schema::MIGRATIONS.len() + 1
            ))
            .unwrap();
        let err = store
            .create(workflow_core::testing::new_instance("w", 2), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("newer build"), "{err}");
        assert!(matches!(err, StoreError::Unusable(_)), "{err:?}");
        // For good, whatever the file says next.
        newer
            .execute_batch(&format!(
                "PRAGMA user_version = {}",
                schema::MIGRATIONS.len()
            ))
            .unwrap();
        let err = store
            .create(workflow_core::testing::new_instance("w", 3), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unusable(why) if why.contains("newer build")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reopen.db");
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.create(new, None).await.unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let row = store
            .get(&id)
            .await
            .unwrap()
            .expect("row survives reopening");
        assert_eq!(row.workflow, "wf");
    }

    /// Opened without migrating, a store takes only a file at this build's
    /// schema, and leaves every other file as it found it: not created,
    /// not switched to WAL, no tables added, no version changed.
    #[tokio::test]
    async fn without_migrating_only_a_current_schema_opens() {
        let dir = tempfile::tempdir().unwrap();
        let open = |path: &std::path::Path| {
            let url = format!("sqlite://{}", path.display());
            async move { SqliteStore::connect_with(&url, SqliteOptions::new().migrate(false)).await }
        };
        let shape = |path: &std::path::Path| {
            let c = rusqlite::Connection::open(path).unwrap();
            let tables: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let mode: String = c
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let version: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            (tables, mode, version)
        };

        let missing = dir.path().join("missing.db");
        assert!(open(&missing).await.is_err());
        assert!(!missing.exists(), "a missing file is not created");

        let foreign = dir.path().join("app.db");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE users (id INTEGER); PRAGMA user_version = 3;")
            .unwrap();
        let before = shape(&foreign);
        let err = open(&foreign).await.unwrap_err().to_string();
        assert!(err.contains("not a workflow database"), "{err}");
        assert_eq!(shape(&foreign), before);

        let old = dir.path().join("old.db");
        {
            let c = rusqlite::Connection::open(&old).unwrap();
            c.execute_batch(schema::MIGRATIONS[0]).unwrap();
            c.execute_batch("PRAGMA user_version = 1").unwrap();
        }
        let before = shape(&old);
        let err = open(&old).await.unwrap_err().to_string();
        assert!(err.contains("version 1, older than this build's"), "{err}");
        assert_eq!(
            shape(&old),
            before,
            "an older schema is left for its engines"
        );

        let current = dir.path().join("current.db");
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        {
            let store = SqliteStore::open(&current).await.unwrap();
            store.create(new, None).await.unwrap();
            store.close().await;
        }
        let store = open(&current).await.unwrap();
        assert!(store.get(&id).await.unwrap().is_some());
        store.close().await;

        rusqlite::Connection::open(&current)
            .unwrap()
            .execute_batch(&format!(
                "PRAGMA user_version = {}",
                schema::MIGRATIONS.len() + 1
            ))
            .unwrap();
        let err = open(&current).await.unwrap_err().to_string();
        assert!(err.contains("newer than this build's"), "{err}");
    }

    /// Holds back every fsync of this test binary's flush threads while
    /// alive, and lets them go when dropped, also by a failing assertion.
    /// One test at a time: another's drop would let this one's go.
    struct HeldFsyncs(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

    static FSYNC_HOLDER: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl HeldFsyncs {
        fn hold() -> Self {
            let turn = FSYNC_HOLDER
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            flush::HOLD_FSYNCS.store(true, std::sync::atomic::Ordering::SeqCst);
            HeldFsyncs(turn)
        }
    }

    impl Drop for HeldFsyncs {
        fn drop(&mut self) {
            flush::HOLD_FSYNCS.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Stores opening one new file at once meet on locks SQLite's busy
    /// timeout does not cover (the switch to WAL mode): every open must
    /// still succeed, as processes starting together on a fresh file do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_opening_a_new_file_at_once_all_open() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("fresh-{round}.db"));
            let opens: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    tokio::spawn(async move { SqliteStore::open(&path).await })
                })
                .collect();
            for open in opens {
                let store = open.await.unwrap();
                assert!(store.is_ok(), "round {round}: {:?}", store.err());
            }
        }
    }

    /// Every write of a durable store waits for the fsync that covers it
    /// before it answers (only a renewal, and a claim of rows already on
    /// disk, may answer sooner): a step, an attempt, a suspension, an end,
    /// an event sent or taken, a control operation, a schedule's mark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_durable_write_waits_for_its_fsync() {
        use workflow_core::store::Suspend;
        type Write = Box<dyn FnOnce(SqliteStore) -> tokio::task::JoinHandle<bool>>;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fsync.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..12 {
            let new = workflow_core::testing::new_instance("wf", n);
            ids.push(new.id.clone());
            store.create(new, None).await.unwrap();
        }
        // Instances 0-5 claimed, 6 by an owner of its own (released whole);
        // 7-11 left pending for control operations.
        let mut claimed = store.claim(claim_due("w", 6)).await.unwrap();
        claimed.extend(store.claim(claim_due("w6", 1)).await.unwrap());
        assert_eq!(claimed.len(), 7);
        let lease = |n: usize| {
            claimed
                .iter()
                .find(|c| c.row.id == ids[n])
                .map(|c| c.lease.clone())
                .expect("claimed")
        };
        store
            .send_event(&ids[5], "go", "1", None, 10)
            .await
            .unwrap();
        store.pause(&ids[10], 10).await.unwrap();
        let suspend = Suspend {
            status: Status::Pending,
            run_at: 1_000,
            wait_event: None,
            wait_child: None,
            retry: None,
            state: None,
            reason: "nap".into(),
            at: 20,
        };
        let id = |n: usize| ids[n].to_string();
        // Each write, and what shows it committed (to another connection).
        let writes: Vec<(&str, Write, String)> = vec![
            (
                "commit_step",
                {
                    let l = lease(0);
                    Box::new(move |s| {
                        tokio::spawn(async move {
                            s.commit_step(&l, crate::writer::done_step("a", 12))
                                .await
                                .is_ok()
                        })
                    })
                },
                format!(
                    "SELECT count(*) = 1 FROM steps WHERE instance_id = '{}'",
                    id(0)
                ),
            ),
            (
                "record_attempt",
                {
                    let l = lease(1);
                    Box::new(move |s| {
                        tokio::spawn(
                            async move { s.record_attempt(&l, "a", 1, "no", 12).await.is_ok() },
                        )
                    })
                },
                format!(
                    "SELECT retry_attempts = 1 FROM instances WHERE id = '{}'",
                    id(1)
                ),
            ),
            (
                "suspend",
                {
                    let l = lease(2);
                    Box::new(move |s| {
                        tokio::spawn(async move { s.suspend(&l, suspend).await.is_ok() })
                    })
                },
                format!(
                    "SELECT lease_owner IS NULL FROM instances WHERE id = '{}'",
                    id(2)
                ),
            ),
            (
                "finish",
                {
                    let l = lease(3);
                    Box::new(move |s| {
                        tokio::spawn(async move {
                            s.finish(&l, crate::writer::completed_at(30)).await.is_ok()
                        })
                    })
                },
                format!(
                    "SELECT status = 'completed' FROM instances WHERE id = '{}'",
                    id(3)
                ),
            ),
            (
                "release",
                {
                    let l = lease(4);
                    Box::new(move |s| tokio::spawn(async move { s.release(&l, 30).await.is_ok() }))
                },
                format!(
                    "SELECT lease_owner IS NULL FROM instances WHERE id = '{}'",
                    id(4)
                ),
            ),
            (
                "take_event",
                {
                    let l = lease(5);
                    Box::new(move |s| {
                        tokio::spawn(async move { s.take_event(&l, "go", "go", 30).await.is_ok() })
                    })
                },
                format!(
                    "SELECT count(*) = 1 FROM steps WHERE instance_id = '{}'",
                    id(5)
                ),
            ),
            (
                "release_owner",
                {
                    let l = lease(6);
                    Box::new(move |s| {
                        tokio::spawn(async move { s.release_owner(&l.owner, 30).await.is_ok() })
                    })
                },
                format!(
                    "SELECT lease_owner IS NULL FROM instances WHERE id = '{}'",
                    id(6)
                ),
            ),
            (
                "send_event",
                {
                    let id = ids[7].clone();
                    Box::new(move |s| {
                        tokio::spawn(async move {
                            s.send_event(&id, "e", "1", Some("k"), 30).await.is_ok()
                        })
                    })
                },
                format!(
                    "SELECT count(*) = 1 FROM event_keys WHERE instance_id = '{}'",
                    id(7)
                ),
            ),
            (
                "cancel",
                {
                    let id = ids[8].clone();
                    Box::new(move |s| tokio::spawn(async move { s.cancel(&id, 30).await.is_ok() }))
                },
                format!(
                    "SELECT status = 'cancelled' FROM instances WHERE id = '{}'",
                    id(8)
                ),
            ),
            (
                "pause",
                {
                    let id = ids[9].clone();
                    Box::new(move |s| tokio::spawn(async move { s.pause(&id, 30).await.is_ok() }))
                },
                format!(
                    "SELECT status = 'paused' FROM instances WHERE id = '{}'",
                    id(9)
                ),
            ),
            (
                "resume",
                {
                    let id = ids[10].clone();
                    Box::new(move |s| tokio::spawn(async move { s.resume(&id, 30).await.is_ok() }))
                },
                format!(
                    "SELECT status = 'pending' FROM instances WHERE id = '{}'",
                    id(10)
                ),
            ),
            (
                "set_deadline",
                {
                    let id = ids[11].clone();
                    Box::new(move |s| {
                        tokio::spawn(async move { s.set_deadline(&id, 90_000, 30).await.is_ok() })
                    })
                },
                format!(
                    "SELECT deadline_at = 90000 FROM instances WHERE id = '{}'",
                    id(11)
                ),
            ),
            (
                "create_many",
                {
                    let new = vec![workflow_core::testing::new_instance("wf", 100)];
                    Box::new(move |s| tokio::spawn(async move { s.create_many(new).await.is_ok() }))
                },
                "SELECT count(*) = 13 FROM instances".to_owned(),
            ),
            (
                "advance_schedule",
                {
                    Box::new(move |s| {
                        tokio::spawn(
                            async move { s.advance_schedule("wf", 50, None).await.is_ok() },
                        )
                    })
                },
                "SELECT count(*) = 1 FROM schedules".to_owned(),
            ),
        ];
        let peek = rusqlite::Connection::open(&path).unwrap();
        // One at a time: the writer commits when the disk is free, so a
        // write behind a held fsync would wait uncommitted, and its
        // answer's wait would prove nothing.
        for (name, write, committed) in writes {
            let held = HeldFsyncs::hold();
            let task = write(store.clone());
            let started = std::time::Instant::now();
            while !peek
                .query_row(&committed, [], |r| r.get::<_, Option<bool>>(0))
                .unwrap()
                .unwrap_or(false)
            {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{name} never committed"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Time for an early answer to arrive, on a loaded machine too.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answered = task.is_finished();
            drop(held);
            assert!(!answered, "{name} answered before its fsync");
            assert!(task.await.unwrap(), "{name} failed");
        }
    }

    /// Creates an instance on `store` (a durable one on the file at
    /// `path`) with fsyncs held: returns once it is committed, its fsync
    /// not done. The fsyncs go on when the returned guard is dropped.
    async fn committed_not_synced(
        store: &SqliteStore,
        path: &std::path::Path,
    ) -> (
        HeldFsyncs,
        tokio::task::JoinHandle<Result<workflow_core::store::Created, StoreError>>,
        InstanceId,
        rusqlite::Connection,
    ) {
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        let peek = rusqlite::Connection::open(path).unwrap();
        let held = HeldFsyncs::hold();
        let creating = tokio::spawn({
            let store = store.clone();
            async move { store.create(new, None).await }
        });
        let started = std::time::Instant::now();
        while peek
            .query_row(
                "SELECT COUNT(*) FROM instances WHERE id = ?1",
                [id.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 0
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never committed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (held, creating, id, peek)
    }

    /// SQLite shows a commit to readers before its fsync. A durable
    /// store's reads must not return such a row, or `result()` could
    /// report an output that a power cut then takes back.
    #[tokio::test]
    async fn durable_reads_return_only_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("horizon.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let relaxed = SqliteStore::connect_with(
            &format!("sqlite://{}", dir.path().join("relaxed.db").display()),
            SqliteOptions::new().durability(Durability::Relaxed),
        )
        .await
        .unwrap();
        let (held, creating, id, _peek) = committed_not_synced(&store, &path).await;
        assert!(!creating.is_finished(), "answered before its fsync");
        let read = tokio::time::timeout(Duration::from_millis(300), store.get(&id)).await;
        assert!(read.is_err(), "read a row not yet on disk: {read:?}");
        let listed = tokio::time::timeout(
            Duration::from_millis(100),
            store.list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            }),
        )
        .await;
        assert!(listed.is_err(), "listed a row not yet on disk: {listed:?}");
        // Relaxed mode promises nothing past a crash of the process: its
        // reads never wait (nor do its writes, which have no fsync thread).
        let other = workflow_core::testing::new_instance("wf", 2);
        let other_id = other.id.clone();
        tokio::time::timeout(Duration::from_secs(5), relaxed.create(other, None))
            .await
            .expect("a relaxed write waited for an fsync")
            .unwrap();
        let row = tokio::time::timeout(Duration::from_secs(5), relaxed.get(&other_id))
            .await
            .expect("a relaxed read waited for an fsync")
            .unwrap();
        assert!(row.is_some());

        drop(held);
        creating.await.unwrap().unwrap();
        let row = store.get(&id).await.unwrap().expect("on disk now");
        assert_eq!(row.id, id);
    }

    /// A commit of lease renewals alone does not make reads wait for an
    /// fsync: renewals need not survive a power cut (one lost is renewed
    /// again), so what they change may be read before it is on disk.
    /// Before, every read after a renewal (each second, per running
    /// instance) waited for, and asked for, an fsync of its own.
    #[tokio::test]
    async fn reads_after_a_renewal_do_not_wait_for_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("renewed.db"))
            .await
            .unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        store.create(new, None).await.unwrap();
        let claimed = store.claim(claim_due("w", 1)).await.unwrap();
        // The claim's commit on disk first (a read waits for it).
        store.get(&id).await.unwrap();
        let held = HeldFsyncs::hold();
        let renewed = tokio::time::timeout(
            Duration::from_secs(5),
            store.renew(&[claimed[0].lease.clone()], i64::MAX / 2 + 2),
        )
        .await
        .expect("a renewal waits for no fsync")
        .unwrap();
        assert_eq!(renewed.len(), 1);
        let read = tokio::time::timeout(Duration::from_secs(5), store.get(&id)).await;
        drop(held);
        let row = read.expect("the read waited for an fsync").unwrap();
        assert_eq!(row.map(|r| r.status), Some(Status::InProgress));
    }

    /// Opening a file already at this build's schema takes no write lock:
    /// another process holding one (a long purge) does not make the open
    /// wait out the busy timeout and fail.
    #[tokio::test]
    async fn opening_a_current_file_takes_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.db");
        drop(SqliteStore::open(&path).await.unwrap());
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let opened = SqliteStore::open_with(
            &path,
            SqliteOptions::new().busy_timeout(Duration::from_millis(200)),
        )
        .await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        other.execute_batch("ROLLBACK").unwrap();
    }

    /// A durable read that waits for the fsync of what it saw needs no
    /// write lock: another process holding one (a long purge, a
    /// migration) does not hold it up. Before, the wait went through an
    /// empty transaction, which waited out the busy timeout and then
    /// failed with "database is locked".
    #[tokio::test]
    async fn a_read_waiting_for_an_fsync_takes_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let (held, creating, id, peek) = committed_not_synced(&store, &path).await;
        // Another process takes the write lock, and keeps it.
        peek.execute_batch("BEGIN IMMEDIATE").unwrap();
        let reading = tokio::spawn({
            let store = store.clone();
            let id = id.clone();
            async move { store.get(&id).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let row = tokio::time::timeout(Duration::from_secs(2), reading)
            .await
            .expect("the read waited for the other process's lock")
            .unwrap()
            .unwrap()
            .expect("the row, on disk");
        assert_eq!(row.id, id);
        creating.await.unwrap().unwrap();
        peek.execute_batch("ROLLBACK").unwrap();
    }

    /// The writer hands checkpoints to a thread of their own, yet the WAL
    /// still starts over: it stays near `Policy::restart` pages however
    /// much is written, and the pages reach the database file.
    #[tokio::test]
    async fn the_wal_stays_short_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let input = serde_json::to_string(&"x".repeat(4_000)).unwrap();
        // 64 commits of about 1 MiB each.
        for batch in 0..64 {
            let news = (0..256)
                .map(|i| {
                    let mut new = workflow_core::testing::new_instance("wf", batch * 256 + i);
                    new.input = input.clone();
                    new
                })
                .collect();
            store.create_many(news).await.unwrap();
        }
        let wal = std::fs::metadata(wal_path(&path)).unwrap().len();
        let restart = checkpoint::Policy::default().restart as u64 * (4_096 + 24);
        assert!(
            wal <= 2 * restart,
            "the WAL grew to {wal} bytes (restart at {restart})"
        );
        let db = std::fs::metadata(&path).unwrap().len();
        assert!(db >= 64 << 20, "the database file holds {db} bytes");
    }

    /// Claims up to `limit` instances of `wf`, whatever their due time.
    fn claim_due(owner: &str, limit: usize) -> ClaimRequest {
        ClaimRequest {
            owner: owner.into(),
            workflows: vec!["wf".into()],
            now: i64::MAX / 2,
            due_by: i64::MAX / 2,
            lease_until: i64::MAX / 2 + 1,
            limit,
        }
    }

    /// The writer trusts the leases it granted without reading them back,
    /// until another connection commits: a lease taken over from outside
    /// must still fence off the old holder's steps.
    #[tokio::test]
    async fn a_lease_changed_by_another_connection_fences_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("fence.db"))
            .await
            .unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        store.create(new, None).await.unwrap();
        let claimed = store.claim(claim_due("a", 1)).await.unwrap();
        let lease = claimed[0].lease.clone();
        store.commit_step(&lease, step("one")).await.unwrap();
        // Another process's worker takes the instance over.
        sqlx::query("UPDATE instances SET lease_owner = 'b', runs = runs + 1 WHERE id = ?")
            .bind(lease.instance.as_str())
            .execute(&mut outside(&store).await)
            .await
            .unwrap();
        let err = store.commit_step(&lease, step("two")).await.unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost(_)), "{err}");
        let steps = store.steps(&lease.instance).await.unwrap();
        assert_eq!(steps.len(), 1, "the fenced step is not recorded");
    }

    /// A recorded step `key` with output `1`.
    fn step(key: &str) -> StepRow {
        crate::writer::done_step(key, 2)
    }

    /// A connection that writes to the store's file from outside it (the
    /// store's readers are read-only), as another process would.
    async fn outside(store: &SqliteStore) -> sqlx::SqliteConnection {
        (*store.read.connect_options())
            .clone()
            .read_only(false)
            .connect()
            .await
            .unwrap()
    }

    /// Runs `sql` (with `?1` bound to `id`) on the store's file from outside.
    async fn corrupt(store: &SqliteStore, sql: &str, id: &InstanceId) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id.as_str())
            .execute(&mut outside(store).await)
            .await
            .unwrap();
    }

    async fn status_of(store: &SqliteStore, id: &InstanceId) -> String {
        sqlx::query_scalar("SELECT status FROM instances WHERE id = ?")
            .bind(id.as_str())
            .fetch_one(&store.read)
            .await
            .unwrap()
    }

    /// Bytes a column cannot hold (text that is not UTF-8, text where a
    /// number belongs) fail that instance alone: the claim goes on. Before,
    /// the whole claim failed, and as the oldest due row it failed every
    /// claim after it: all work stopped.
    #[tokio::test]
    async fn unreadable_bytes_fail_only_their_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bytes.db"))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 1..=3 {
            let new = workflow_core::testing::new_instance("wf", n);
            ids.push(new.id.clone());
            store.create(new, None).await.unwrap();
        }
        let bad_text = "UPDATE instances SET input = CAST(X'FF' AS TEXT) WHERE id = ?1";
        let bad_number = "UPDATE instances SET runs = 'many' WHERE id = ?1";
        corrupt(&store, bad_text, &ids[0]).await;
        corrupt(&store, bad_number, &ids[1]).await;
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].row.id, ids[2]);
        for bad in &ids[..2] {
            assert_eq!(status_of(&store, bad).await, "failed");
        }
    }

    /// A row whose id is not text (a blob, or bytes that are not UTF-8) is
    /// listed as that row's damage, `Corrupt`, beside the readable rows.
    /// Before, it was a backend error that failed the whole page, and as
    /// such ids sort first, every unfiltered first page.
    #[tokio::test]
    async fn a_row_whose_id_is_not_text_is_listed_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("ids.db")).await.unwrap();
        let mut ids = Vec::new();
        for n in 1..=3 {
            let new = workflow_core::testing::new_instance("wf", n);
            ids.push(new.id.clone());
            store.create(new, None).await.unwrap();
        }
        corrupt(
            &store,
            "UPDATE instances SET id = X'FF01' WHERE id = ?1",
            &ids[0],
        )
        .await;
        corrupt(
            &store,
            "UPDATE instances SET id = CAST(X'FF02' AS TEXT) WHERE id = ?1",
            &ids[1],
        )
        .await;
        let listed = store
            .list(&ListQuery {
                limit: 10,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        let mut read = Vec::new();
        let mut damaged = Vec::new();
        for row in &listed {
            match row {
                Ok(row) => read.push(row.id.clone()),
                Err(StoreError::Corrupt { id, message }) => {
                    assert!(message.starts_with("id: "), "{message}");
                    damaged.push(id.to_string());
                }
                Err(other) => panic!("not named as corrupt: {other:?}"),
            }
        }
        assert_eq!(read, [ids[2].clone()]);
        // Named as the SQL literal that finds them.
        damaged.sort();
        assert_eq!(damaged, ["x'ff01'", "x'ff02'"]);
    }

    /// A damaged row found by a create's key is that instance's error,
    /// `Corrupt` naming it, as at a claim. Before, the lookup's decoding
    /// error was the database's (`Backend`), and rolled the whole batch
    /// back, to be redone one write at a time.
    #[tokio::test]
    async fn a_damaged_row_found_by_its_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("key.db")).await.unwrap();
        let mut first = workflow_core::testing::new_instance("wf", 1);
        first.key = Some("order-7".into());
        let id = first.id.clone();
        store.create(first, None).await.unwrap();
        corrupt(
            &store,
            "UPDATE instances SET runs = 'many' WHERE id = ?1",
            &id,
        )
        .await;
        let mut again = workflow_core::testing::new_instance("wf", 2);
        again.key = Some("order-7".into());
        let err = store.create(again, Some(&Status::ALL)).await.unwrap_err();
        match err {
            StoreError::Corrupt { id: named, .. } => assert_eq!(named, id),
            other => panic!("not named as corrupt: {other:?}"),
        }
    }

    /// A running instance whose deadline is damaged loses only its own
    /// lease at a renewal: the worker's other leases are renewed. Before,
    /// the renewal of every lease failed, and every handler stopped.
    #[tokio::test]
    async fn a_damaged_running_row_fails_only_its_own_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("renew.db"))
            .await
            .unwrap();
        for n in 1..=2 {
            let new = workflow_core::testing::new_instance("wf", n);
            store.create(new, None).await.unwrap();
        }
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let leases: Vec<Lease> = claimed.iter().map(|c| c.lease.clone()).collect();
        let bad = &leases[0].instance;
        corrupt(
            &store,
            "UPDATE instances SET deadline_at = 'soon' WHERE id = ?1",
            bad,
        )
        .await;
        let renewed = store.renew(&leases, i64::MAX / 2 + 2).await.unwrap();
        let held: Vec<(&InstanceId, bool)> = renewed
            .iter()
            .map(|r| (&r.lease.instance, r.held))
            .collect();
        assert_eq!(
            held,
            [(bad, false), (&leases[1].instance, true)],
            "only the damaged one's handler stops"
        );
    }

    /// "Wait for ever" is cut to SQLite's longest busy timeout: sqlx and
    /// rusqlite panic (in their own threads) on a longer one.
    #[tokio::test]
    async fn a_busy_timeout_past_sqlites_limit_is_cut_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("busy.db").display());
        let store =
            SqliteStore::connect_with(&url, SqliteOptions::new().busy_timeout(Duration::MAX))
                .await
                .unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        store.create(new, None).await.unwrap();
    }

    /// "No limit" as the largest number: a store that works, not a
    /// writer thread dead of a capacity overflow or a process aborted
    /// allocating billions of pool slots.
    #[tokio::test]
    async fn the_largest_batch_and_pool_are_cut_to_limits() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("huge.db").display());
        let options = SqliteOptions::new().max_batch(usize::MAX).readers(u32::MAX);
        assert_eq!(
            (options.max_batch, options.readers),
            (MAX_BATCH, MAX_READERS)
        );
        let store = SqliteStore::connect_with(&url, options).await.unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        store.create(new, None).await.unwrap();
        assert!(store.get(&id).await.unwrap().is_some());
    }

    /// A damaged schedule mark reads as none (the schedule starts over),
    /// or with what it holds, never as an error that stops the schedule.
    #[tokio::test]
    async fn a_damaged_schedule_mark_starts_the_schedule_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("marks.db"))
            .await
            .unwrap();
        let id = InstanceId::new();
        store
            .advance_schedule("wf", 100, Some((90, id.clone())))
            .await
            .unwrap();
        let wf = InstanceId::from_string("wf");
        corrupt(
            &store,
            "UPDATE schedules SET last_instance = X'FF' WHERE workflow = ?1",
            &wf,
        )
        .await;
        let mark = store.schedule_mark("wf").await.unwrap().unwrap();
        assert_eq!((mark.checked_until, mark.last_tick), (100, Some(90)));
        assert_eq!(mark.last_instance.unwrap().as_str(), "\u{fffd}");
        corrupt(
            &store,
            "UPDATE schedules SET checked_until = 'x' WHERE workflow = ?1",
            &wf,
        )
        .await;
        assert_eq!(store.schedule_mark("wf").await.unwrap(), None);
        corrupt(
            &store,
            "UPDATE schedules SET last_tick = 'x' WHERE workflow = ?1",
            &wf,
        )
        .await;
        // The scheduler's next mark mends it.
        let next = InstanceId::new();
        store
            .advance_schedule("wf", 200, Some((150, next.clone())))
            .await
            .unwrap();
        let mark = store.schedule_mark("wf").await.unwrap().unwrap();
        assert_eq!((mark.checked_until, mark.last_tick), (200, Some(150)));
        assert_eq!(mark.last_instance, Some(next));
    }

    /// A status that is not even text can still be cancelled.
    #[tokio::test]
    async fn a_status_of_bytes_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("status.db"))
            .await
            .unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        store.create(new, None).await.unwrap();
        corrupt(
            &store,
            "UPDATE instances SET status = CAST(X'FF' AS TEXT) WHERE id = ?1",
            &id,
        )
        .await;
        assert_eq!(store.cancel(&id, 5).await.unwrap(), Control::Applied);
        assert_eq!(status_of(&store, &id).await, "cancelled");
    }

    /// The same for a recorded step of an instance claimed again.
    #[tokio::test]
    async fn an_unreadable_step_fails_only_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("step.db")).await.unwrap();
        let bad = workflow_core::testing::new_instance("wf", 1);
        let bad_id = bad.id.clone();
        store.create(bad, None).await.unwrap();
        let first = store.claim(claim_due("w", 1)).await.unwrap().remove(0);
        store.commit_step(&first.lease, step("one")).await.unwrap();
        store.release(&first.lease, 3).await.unwrap();
        let good = workflow_core::testing::new_instance("wf", 2);
        let good_id = good.id.clone();
        store.create(good, None).await.unwrap();
        let sql = "UPDATE steps SET output = CAST(X'FF' AS TEXT) WHERE instance_id = ?1";
        corrupt(&store, sql, &bad_id).await;
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].row.id, good_id);
        assert_eq!(status_of(&store, &bad_id).await, "failed");
    }

    /// An event payload that is not text is a corrupt row of its
    /// instance: taking it says so and leaves the inbox as it was (the run
    /// pauses for a repair), where the failed read used to fail the whole
    /// batch, and the instance's run again every few seconds.
    #[tokio::test]
    async fn an_unreadable_event_payload_is_corrupt_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("inbox.db"))
            .await
            .unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        store.create(new, None).await.unwrap();
        let c = store.claim(claim_due("w", 1)).await.unwrap().remove(0);
        for (n, bad) in ["CAST(X'FF' AS TEXT)", "X'7B7D'"].into_iter().enumerate() {
            let wait = format!("wait#{n}");
            store.send_event(&id, "go", "{}", None, 2).await.unwrap();
            let sql = format!("UPDATE inbox SET payload = {bad} WHERE instance_id = ?1");
            corrupt(&store, &sql, &id).await;
            let err = store.take_event(&c.lease, "go", &wait, 3).await;
            assert!(
                matches!(&err, Err(StoreError::Corrupt { id: i, message })
                    if *i == id && message.contains("event `go`")),
                "{err:?}"
            );
            // Repaired, it is taken, and recorded as the step.
            let sql = "UPDATE inbox SET payload = '\"fixed\"' WHERE instance_id = ?1";
            corrupt(&store, sql, &id).await;
            let taken = store.take_event(&c.lease, "go", &wait, 4).await.unwrap();
            assert_eq!(taken.as_deref(), Some("\"fixed\""));
        }
        let keys: Vec<_> = store
            .steps(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(keys, ["wait#0", "wait#1"]);
        assert_eq!(status_of(&store, &id).await, "in_progress");
    }

    /// The tails read the rows of the last steps only: an older step whose
    /// output cannot be read fails a full read, not a tail, nor its count.
    #[tokio::test]
    async fn tails_read_only_the_last_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("tail.db")).await.unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = new.id.clone();
        store.create(new, None).await.unwrap();
        let c = store.claim(claim_due("w", 1)).await.unwrap().remove(0);
        for key in ["one", "two", "three"] {
            store.commit_step(&c.lease, step(key)).await.unwrap();
        }
        let sql = "UPDATE steps SET output = CAST(X'FF' AS TEXT) \
                   WHERE instance_id = ?1 AND key = 'one'";
        corrupt(&store, sql, &id).await;
        assert!(matches!(
            store.steps(&id).await,
            Err(StoreError::Corrupt { .. })
        ));
        let (steps, total) = store.steps_tail(&id, 2).await.unwrap();
        let keys: Vec<_> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!((keys.as_slice(), total), (["two", "three"].as_slice(), 3));
        // created, started, three steps.
        let (events, total) = store.history_tail(&id, 2).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.step.as_deref()).collect();
        assert_eq!(
            (kinds.as_slice(), total),
            ([Some("two"), Some("three")].as_slice(), 5)
        );
    }

    /// A child failed for its corrupt row wakes a parent waiting for it, as
    /// every other way a child ends does.
    #[tokio::test]
    async fn a_child_failed_as_corrupt_wakes_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("parent.db"))
            .await
            .unwrap();
        let mut parent = workflow_core::testing::new_instance("wf", 1);
        // No deadline: `claim_due` claims far past any.
        parent.deadline_at = None;
        let parent_id = parent.id.clone();
        store.create(parent, None).await.unwrap();
        let p = store.claim(claim_due("w", 1)).await.unwrap().remove(0);
        let mut child = workflow_core::testing::new_instance("wf", 2);
        child.parent = Some(parent_id.clone());
        let child_id = child.id.clone();
        store.create(child, None).await.unwrap();
        let wait = Suspend {
            status: Status::Listening,
            run_at: Millis::MAX,
            wait_event: None,
            wait_child: Some(child_id.clone()),
            retry: None,
            state: None,
            reason: "waiting for a child".into(),
            at: 10,
        };
        store.suspend(&p.lease, wait).await.unwrap();
        corrupt(
            &store,
            "UPDATE instances SET tags = 'not json' WHERE id = ?1",
            &child_id,
        )
        .await;
        assert!(store.claim(claim_due("w", 10)).await.unwrap().is_empty());
        assert_eq!(status_of(&store, &child_id).await, "failed");
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|c| &c.row.id).collect();
        assert_eq!(
            ids,
            [&parent_id],
            "the parent is due again to see its child failed"
        );
    }

    #[tokio::test]
    async fn a_corrupt_row_fails_only_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("corrupt.db"))
            .await
            .unwrap();
        let good = workflow_core::testing::new_instance("wf", 1);
        let bad = workflow_core::testing::new_instance("wf", 2);
        let (good_id, bad_id) = (good.id.clone(), bad.id.clone());
        store.create(good, None).await.unwrap();
        store.create(bad, None).await.unwrap();
        let sql = "UPDATE instances SET tags = 'not json' WHERE id = ?1";
        corrupt(&store, sql, &bad_id).await;
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].row.id, good_id);
        let err = store.get(&bad_id).await.unwrap_err();
        assert!(err.to_string().contains("corrupt row"), "{err}");
        assert_eq!(status_of(&store, &bad_id).await, "failed");
    }

    /// Summaries leave the documents unread.
    #[tokio::test]
    async fn summaries_leave_the_documents_unread() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
        store
            .create(workflow_core::testing::new_instance("wf", 1), None)
            .await
            .unwrap();
        let q = ListQuery {
            limit: 10,
            summaries: true,
            ..ListQuery::default()
        };
        let listed = store.list(&q).await.unwrap();
        let row = listed[0].as_ref().unwrap();
        assert_eq!(row.input, "null");
        assert_eq!((row.output.as_ref(), row.state.as_ref()), (None, None));
    }

    /// A healthy store on a new file, and a second connection to it for a
    /// writer the test sets up itself.
    async fn store_and_writer_connection() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        rusqlite::Connection,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .unwrap();
        (dir, path, store, conn)
    }

    /// Once an fsync of the WAL has failed, later writes are refused
    /// without being applied: a caller told its write failed never finds
    /// it done after a restart.
    #[tokio::test]
    async fn after_a_failed_fsync_writes_are_refused_not_applied() {
        let (_dir, path, store, conn) = store_and_writer_connection().await;
        // A pipe in place of the WAL: fsyncing it fails (EINVAL).
        let (_reader, pipe) = std::io::pipe().unwrap();
        let wal = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
        let checkpointer =
            Checkpointer::spawn(&path, checkpoint::Policy::default(), Default::default()).unwrap();
        let broken = SqliteStore {
            read: store.read.clone(),
            writer: Writer::spawn(conn, 64, Some(wal), checkpointer).unwrap(),
        };
        let first = workflow_core::testing::new_instance("wf", 1);
        let err = broken.create(first, None).await.unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        let second = workflow_core::testing::new_instance("wf", 2);
        let second_id = second.id.clone();
        let err = broken.create(second, None).await.unwrap_err();
        assert!(err.to_string().contains("an earlier fsync"), "{err}");
        assert!(store.get(&second_id).await.unwrap().is_none());
        // The healthy store's own writer is untouched.
        store
            .create(workflow_core::testing::new_instance("wf", 3), None)
            .await
            .unwrap();
    }

    /// An engine on a store whose fsync failed stops its worker, and `run`
    /// returns the store's error, for the process to exit and be started
    /// again (whose fresh open recovers from the WAL). Before, the worker
    /// backed off and claimed again for ever, its process alive and doing
    /// nothing, with an error logged once a minute.
    #[tokio::test]
    async fn an_engine_on_a_store_whose_fsync_failed_stops() {
        struct Noop;
        impl workflow_core::Workflow for Noop {
            type Input = ();
            type Output = ();
            type State = ();
            const NAME: &'static str = "noop";
            async fn run(
                &self,
                _ctx: workflow_core::Ctx<()>,
                _input: (),
            ) -> Result<(), workflow_core::BoxError> {
                Ok(())
            }
        }
        let (_dir, path, store, conn) = store_and_writer_connection().await;
        let wal = open_wal(&conn).unwrap();
        let broken = std::sync::Arc::<crate::broken::Broken>::default();
        let checkpointer = Checkpointer::spawn(
            &path,
            checkpoint::Policy::default(),
            std::sync::Arc::clone(&broken),
        )
        .unwrap();
        let breaking = SqliteStore {
            read: store.read.clone(),
            writer: Writer::spawn(conn, 64, Some(wal), checkpointer).unwrap(),
        };
        let engine = workflow_core::EngineBuilder::new()
            .store(breaking)
            .register(Noop)
            .build()
            .await
            .unwrap();
        // Once running: as the fsync thread records an fsync that failed.
        broken.fail("fsync of the SQLite WAL failed (a test's)".to_owned());
        let ran = tokio::time::timeout(std::time::Duration::from_secs(20), engine.run())
            .await
            .expect("the worker went on claiming on a broken store");
        let err = ran.unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::Unusable(why)) if why.contains("fsync")),
            "{err:?}"
        );
        assert!(err.to_string().contains("restart the process"), "{err}");
    }

    /// The WAL fsynced is the one SQLite writes, beside the file a symbolic
    /// link to the database points to, not a stale one beside the link.
    #[test]
    fn the_wal_of_a_linked_database_is_the_one_fsynced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::fs::write(wal_path(&link), b"stale").unwrap();
        let conn = rusqlite::Connection::open(&link).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let wal = open_wal(&conn).unwrap();
        let written = std::fs::metadata(wal_path(&real)).unwrap();
        assert_eq!(wal.metadata().unwrap().ino(), written.ino());
    }

    /// A checkpoint whose write or fsync of the database file failed stops
    /// the store as a failed fsync of the WAL does: writes are refused,
    /// and no checkpoint runs again (one that succeeded next would let the
    /// WAL start over with the only good copy of pages the kernel dropped).
    /// Relaxed mode, which fsyncs nothing else, too.
    #[tokio::test]
    async fn after_a_failed_checkpoint_writes_are_refused_not_applied() {
        let (_dir, path, store, conn) = store_and_writer_connection().await;
        let broken = std::sync::Arc::<crate::broken::Broken>::default();
        broken.2.store(true, std::sync::atomic::Ordering::SeqCst);
        let policy = checkpoint::Policy {
            nudge: 8,
            restart: 16,
            ..checkpoint::Policy::default()
        };
        let checkpointer =
            Checkpointer::spawn(&path, policy, std::sync::Arc::clone(&broken)).unwrap();
        let relaxed = SqliteStore {
            read: store.read.clone(),
            writer: Writer::spawn(conn, 64, None, checkpointer).unwrap(),
        };
        let mut refused = None;
        for n in 0..500 {
            let new = workflow_core::testing::new_instance("wf", n);
            let id = new.id.clone();
            if let Err(err) = relaxed.create(new, None).await {
                refused = Some((err, id));
                break;
            }
        }
        let (err, id) = refused.expect("a write refused once the checkpoint failed");
        assert!(broken.is_broken());
        assert!(err.to_string().contains("reopen the store"), "{err}");
        assert!(store.get(&id).await.unwrap().is_none());
        // Refused from then on, however many come.
        let later = relaxed
            .create(workflow_core::testing::new_instance("wf", 1_000), None)
            .await
            .unwrap_err();
        assert!(later.to_string().contains("checkpoint"), "{later}");
    }

    /// Counters at their largest values (written from outside) never panic
    /// the writer thread: the claims go on, and the store keeps writing.
    #[tokio::test]
    async fn counters_at_their_limits_do_not_stop_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("limits.db"))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 1..=2 {
            let new = workflow_core::testing::new_instance("wf", n);
            ids.push(new.id.clone());
            store.create(new, None).await.unwrap();
        }
        // A run whose lease lapsed, with its interrupted-run count past u32.
        let lapsed = "UPDATE instances SET status = 'in_progress', runs = 1, \
                      interrupted_runs = 4294967296 WHERE id = ?1";
        corrupt(&store, lapsed, &ids[0]).await;
        corrupt(
            &store,
            "UPDATE instances SET runs = 9223372036854775807 WHERE id = ?1",
            &ids[1],
        )
        .await;
        let claimed = store.claim(claim_due("w", 10)).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let lapsed = claimed.iter().find(|c| c.row.id == ids[0]).unwrap();
        assert_eq!(lapsed.interrupted_runs, u32::MAX);
        // The run at the largest count holds its lease: the count stays an
        // integer, so the fence still matches it.
        let last = claimed.iter().find(|c| c.row.id == ids[1]).unwrap();
        store.commit_step(&last.lease, step("one")).await.unwrap();
        assert!(store.get(&ids[1]).await.is_ok());
        // The writer lives on.
        let new = workflow_core::testing::new_instance("wf", 3);
        store.create(new, None).await.unwrap();
    }

    /// A history sequence at its largest value fails each write that needs
    /// a number, with the reason; the writer thread lives on.
    #[tokio::test]
    async fn an_exhausted_history_sequence_fails_writes_not_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("seq.db")).await.unwrap();
        let new = workflow_core::testing::new_instance("wf", 1);
        store.create(new, None).await.unwrap();
        let lease = store.claim(claim_due("w", 1)).await.unwrap()[0]
            .lease
            .clone();
        let mut other = outside(&store).await;
        let mut set_seq = async |last: i64| {
            sqlx::query("UPDATE history_seq SET last = ?1")
                .bind(last)
                .execute(&mut other)
                .await
        };
        set_seq(i64::MAX).await.unwrap();
        let err = store.commit_step(&lease, step("one")).await.unwrap_err();
        assert!(err.to_string().contains("history_seq"), "{err}");
        set_seq(1_000).await.unwrap();
        store.commit_step(&lease, step("one")).await.unwrap();
        assert_eq!(store.steps(&lease.instance).await.unwrap().len(), 1);
    }
}
