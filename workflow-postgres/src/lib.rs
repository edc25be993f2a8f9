//! PostgreSQL store for the `workflow` crate: many engine processes on many
//! machines share one database.
//!
//! - Workers claim due instances with `SELECT ... FOR UPDATE SKIP LOCKED` in
//!   one short READ COMMITTED transaction, so claimers never wait for one
//!   another and never take the same instance.
//! - A claim is a lease (owner, claim number, expiry) kept alive by the
//!   engine's heartbeats; an expired lease is taken over by another worker.
//!   Every write made on behalf of a run is fenced by that lease, so a late
//!   worker can never overwrite an instance another worker took over or
//!   finished.
//! - Leases follow the database server's clock, not the workers': a lease
//!   lasts the length its claim or heartbeat asked for (`lease_until` less
//!   the request's `now`) from the server's time, and has lapsed once the
//!   server's clock passed its end. A worker whose clock runs ahead cannot
//!   take instances whose leases are live, and one whose clock lags takes
//!   over lapsed ones on time. Due times of sleeps, retries and wait
//!   timeouts do not: the engine that sets one computes it by its clock,
//!   and a waiting instance is taken once the claiming worker's clock
//!   passed it (a worker an hour ahead ends an hour-long sleep at once).
//!   Keep the workers' clocks in sync (NTP), as for any scheduler.
//! - LISTEN/NOTIFY wakes idle workers when work becomes due elsewhere; it is
//!   only a hint, polling stays the truth. It is sent after the commit, not
//!   inside it: notifying transactions commit one at a time server-wide.
//!   A listening connection quiet for 30 s is checked with a notification
//!   to itself, and replaced when that does not come back (a flow a NAT
//!   forgot without a reset delivers nothing and reports nothing).
//! - Connections run READ COMMITTED whatever the server's default: the
//!   store's transactions rely on a statement seeing what the holder of a
//!   lock it waited for committed.
//! - Transactions that lock several instances lock them in one order,
//!   descendants before ancestors, so a cancel or timeout of a tree queues
//!   behind (or ahead of) its children finishing and its parents
//!   suspending instead of deadlocking with them; heartbeats never wait
//!   for one row while holding another.
//! - Lost connections, server restarts and deadlocks are retried
//!   transparently while it is safe (see [`PgOptions::retry_for`]).
//! - Migrations are embedded and run on connect, in one transaction under
//!   an advisory lock, so many processes may start at once and a failed
//!   migration changes nothing.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// On docs.rs: each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod ops;
mod retry;
mod rows;
mod schema;
mod wake;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Postgres, QueryBuilder};
use tokio::sync::{broadcast, watch};
use workflow_core::store::*;
use workflow_core::{Definition, Durability, Error, InstanceId, Status, StoreError};

use crate::ops::{Db, LeaseAsk};

use crate::retry::retrying;
use crate::rows::{
    event_row, instance_row, step_row, tail_total, COLUMNS, STEP_COLUMNS, SUMMARY_COLUMNS,
};
/// The sqlx this store is built on, whose [`PgPool`](sqlx::PgPool)
/// [`PgStore::pool`] returns: queries of your own on it need no sqlx
/// dependency of a matching version.
pub use sqlx;

/// The schema a store uses when none is given.
pub const DEFAULT_SCHEMA: &str = "workflow";

/// How a [`PgStore`] connects.
#[derive(Debug, Clone)]
#[must_use]
pub struct PgOptions {
    schema: Option<String>,
    max_connections: u32,
    durability: Durability,
    claim_wait: Duration,
    listen: bool,
    retry_for: Duration,
    acquire_timeout: Duration,
    request_timeout: Duration,
    leases_by_request_clock: bool,
    migrate: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            max_connections: 10,
            durability: Durability::Durable,
            claim_wait: Duration::ZERO,
            listen: true,
            retry_for: Duration::from_secs(15),
            acquire_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            leases_by_request_clock: false,
            migrate: true,
        }
    }
}

impl PgOptions {
    /// The URL's `schema` parameter or else [`DEFAULT_SCHEMA`], 10
    /// connections, durable commits, LISTEN on, 15 s of retries, 5 s to
    /// wait for a connection, migrations on.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the store's tables (default [`DEFAULT_SCHEMA`], or
    /// the URL's `schema` parameter); created if missing. Stores on
    /// different schemas of one database are independent. Lower-case
    /// letters, digits and `_`, not starting with a digit, at most 48
    /// bytes; another name fails [`PgStore::connect_with`] with
    /// [`Error::Config`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Most connections this process opens (default 10; from 1 to 10,000,
    /// to which a number outside is brought: the pool sets a slot aside
    /// for each up front), plus one for LISTEN and two for lease renewals
    /// (a busy pool must not keep heartbeats waiting until leases lapse).
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.clamp(1, 10_000);
        self
    }

    /// `Durable` (the default: each commit waits for the WAL flush) or
    /// `Relaxed` (`synchronous_commit = off`: safe against process crashes,
    /// the server may lose its last fraction of a second of commits if it
    /// crashes; never inconsistent).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a claim that found nothing waits for a NOTIFY saying work
    /// became due before it returns empty (default zero: engine workers
    /// wait on [`Store::wakeups`] instead, next to their own timers). A
    /// non-zero wait also turns LISTEN on. Leave it at zero under a
    /// [`ManualClock`](workflow_core::ManualClock): the second look moves
    /// the claim's times on by the real time waited, which a clock that
    /// stands still does not.
    pub fn claim_wait(mut self, wait: Duration) -> Self {
        self.claim_wait = wait;
        self
    }

    /// Whether to LISTEN for NOTIFYs from other processes so idle workers
    /// wake at once when work appears (default on). Off, workers find work
    /// written elsewhere by polling alone.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// How long an operation keeps retrying after losing its connection,
    /// the server restarting, or a deadlock (default 15 s). Only attempts
    /// that certainly did not commit are retried, unless the operation is
    /// idempotent.
    pub fn retry_for(mut self, budget: Duration) -> Self {
        self.retry_for = budget;
        self
    }

    /// How long an operation waits for a free connection of the pool
    /// (default 5 s) before that attempt fails; a wait that runs out is
    /// retried within [`retry_for`](Self::retry_for). Raise it with
    /// many workers on few connections.
    ///
    /// At most [`LONGEST_TIMEOUT`] (some 24 days), so `Duration::MAX`
    /// reads as "no limit".
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout.min(LONGEST_TIMEOUT);
        self
    }

    /// How long one attempt of an operation waits for the server's
    /// answer before it gives the connection up (default 10 s); opening
    /// the store waits as long for its first connection. A
    /// connection whose peer vanished without a reset (a failover, a NAT
    /// or load balancer that forgot the flow) is otherwise noticed only
    /// when TCP gives up, some 15 minutes later, and a claim, a step's
    /// commit or a heartbeat would wait that long. A read given up on runs
    /// again on another connection within [`retry_for`](Self::retry_for);
    /// a write may have committed, so only one that is safe to repeat
    /// does, and another fails with [`StoreError::Backend`], which the
    /// engine rides out (the run resumes later). The wait for a pooled
    /// connection counts in it: keep it above
    /// [`acquire_timeout`](Self::acquire_timeout). A query given up on
    /// is cancelled by the server a second later: the store's
    /// connections, the [`pool`](PgStore::pool)'s included, carry it (plus
    /// that second) as their `statement_timeout`. Raise it if single queries
    /// take longer (counting the instances of a very large table for the
    /// console). At least 1 ms, at most a second under
    /// [`LONGEST_TIMEOUT`] (some 24 days), so `Duration::MAX` reads as "no
    /// limit".
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        // A second under the longest: the server's `statement_timeout` is
        // a second more.
        let longest = LONGEST_TIMEOUT - Duration::from_secs(1);
        self.request_timeout = timeout.clamp(Duration::from_millis(1), longest);
        self
    }

    /// Whether connecting creates the schema and brings an older one up to
    /// date (default on). Off, the store connects only to a schema at
    /// exactly this build's version, and otherwise fails without writing:
    /// for tools that open a database by URL, like the console, where a
    /// mistyped database must not get the store's tables, nor a newer tool
    /// upgrade the schema under the engines that use it.
    pub fn migrate(mut self, on: bool) -> Self {
        self.migrate = on;
        self
    }

    /// For tests that move time by hand only (the store conformance suite
    /// claims "a minute later" to take a lease over): leases are judged
    /// and dated by the callers' clocks, as stores without a clock of
    /// their own do, instead of the database's. A claim's `now` then
    /// decides which leases lapsed, and a lease ends at the `lease_until`
    /// or `until` asked. Never with real workers: one whose clock runs
    /// ahead would take live instances from the others.
    #[doc(hidden)]
    pub fn leases_by_request_clock(mut self, on: bool) -> Self {
        self.leases_by_request_clock = on;
        self
    }
}

/// A [`Store`] on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    db: Db,
    schema: String,
    claim_wait: Duration,
    retry_for: Duration,
    /// [`PgOptions::request_timeout`].
    request_timeout: Duration,
    /// When an attempt last gave its connection up, for the pools' check
    /// of released connections.
    gave_up: Arc<retry::GaveUp>,
    /// Leases follow the callers' clocks ([`PgOptions::leases_by_request_clock`]).
    leases_by_request_clock: bool,
    /// Changes when a NOTIFY arrives on this store's channel.
    hint: watch::Receiver<u64>,
    /// The workflows claims here asked for: wake-ups for others' are not
    /// heard.
    interest: Arc<wake::Interest>,
    /// The task that LISTENs on connections of its own, when listening.
    listen: Option<wake::Listening>,
    /// The instances other processes cancel, as the listener hears.
    cancels: broadcast::Sender<InstanceId>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Splits our own `schema` parameter off a connection URL.
fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(value) => {
                schema = Some(value.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// The longest [`PgOptions::acquire_timeout`] (and a second more than the
/// longest [`PgOptions::request_timeout`]): PostgreSQL's longest
/// `statement_timeout`, 2^31 − 1 ms (some 24 days). A longer one is cut
/// to it (the pool would overflow its clock on `Duration::MAX`).
pub const LONGEST_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The `statement_timeout` setting for `request_timeout`: a second more, so
/// the server cancels only statements the client gave up on (a read
/// cancelled at the server first would fail where the client retries one
/// it gave up on); whole milliseconds, at most PostgreSQL's largest.
fn statement_timeout(request_timeout: Duration) -> String {
    let ms = request_timeout
        .saturating_add(Duration::from_secs(1))
        .as_millis()
        .min(i32::MAX as u128);
    format!("{ms}ms")
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
}

/// The server and database `connect` names, for errors (no credentials).
fn server(connect: &PgConnectOptions) -> String {
    let database = connect.get_database().unwrap_or_default();
    match connect.get_socket() {
        Some(socket) => format!("PostgreSQL at {}/{database}", socket.display()),
        None => format!(
            "PostgreSQL at {}:{}/{database}",
            connect.get_host(),
            connect.get_port()
        ),
    }
}

/// A pooled connection idle at least this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

impl PgStore {
    /// A lease asked for until `until` by a caller's clock, which read
    /// `now` at `asked`.
    fn lease(&self, now: Millis, until: Millis, asked: std::time::Instant) -> LeaseAsk {
        LeaseAsk {
            now,
            until,
            asked,
            by_request_clock: self.leases_by_request_clock,
        }
    }

    /// The rows of a tail query (`sql`, oldest first, with the id bound to
    /// `$1`, the `LIMIT` to `$2`, and each row's `total`, all from the
    /// statement's one snapshot): the last `last`, and the total.
    async fn tail(
        &self,
        op: &'static str,
        sql: &str,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<PgRow>, u64), StoreError> {
        if absent(id.as_str()) {
            return Ok((Vec::new(), 0));
        }
        // At least one row, to carry the total.
        let limit = i64::try_from(last.max(1)).unwrap_or(i64::MAX);
        let mut rows = retrying!(self, op, idempotent = true, async {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.as_str())
                .bind(limit)
                .fetch_all(&self.db.pool)
                .await?)
        })?;
        let total = tail_total(id, &rows)?;
        rows.drain(..rows.len().saturating_sub(last));
        Ok((rows, total))
    }

    /// Connects to the database at `url` (`postgres://user:pass@host/db`,
    /// optionally `?schema=name`), creating and migrating the store's
    /// schema if needed.
    ///
    /// ```no_run
    /// # async fn doc() -> workflow_core::Result<()> {
    /// use workflow_postgres::{PgOptions, PgStore};
    ///
    /// let store = PgStore::connect_with(
    ///     "postgres://app@db.internal/app",
    ///     PgOptions::new().schema("billing").max_connections(32),
    /// )
    /// .await?;
    /// let engine = workflow_core::EngineBuilder::new().store(store).build().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::Config`]: a URL or schema name that does not parse,
    ///   connections whose settings the store cannot work under (a pooler
    ///   that dropped its schema, isolation or `synchronous_commit`), or,
    ///   with [`connect_with`](Self::connect_with) and `migrate(false)`, a
    ///   schema that is not this build's;
    /// - [`Error::Store`]: no connection within the request timeout, or the
    ///   server refused it or the migration (a schema a newer build
    ///   wrote).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects with `options`; a schema set in `options` wins over the URL's.
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, Error> {
        let (url, url_schema) = split_schema(url);
        let schema = options
            .schema
            .clone()
            .or(url_schema)
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        if !valid_schema(&schema) {
            return Err(Error::Config(format!(
                "invalid PostgreSQL schema name `{schema}`: use lower-case letters, digits and `_`"
            )));
        }
        let connect = PgConnectOptions::from_str(&url)
            .map_err(|err| Error::Config(format!("invalid PostgreSQL URL: {err}")))?;
        // Every transaction relies on READ COMMITTED: a statement that
        // waited for a lock (a dedup key's advisory lock, an instance row's
        // FOR UPDATE) must then see what the holder committed. A server
        // whose default is REPEATABLE READ would let it read an older
        // snapshot: duplicate instances, lost wake-ups.
        let mut settings = vec![
            ("search_path", schema.clone()),
            ("default_transaction_isolation", "read committed".to_owned()),
            // The store's transactions never wait on the client for long;
            // one whose client was cut off mid-transaction must not hold
            // its rows' locks (and every renewal of them) for the hours
            // TCP takes to notice.
            // A third of the default lease: renewals wait a second for a
            // locked row, then skip it until the next heartbeat.
            ("idle_in_transaction_session_timeout", "10s".to_owned()),
            // A statement the client gave up on (`request_timeout`) would
            // otherwise run on at the server, holding its locks and a
            // backend, with no one to read its answer.
            (
                "statement_timeout",
                statement_timeout(options.request_timeout),
            ),
        ];
        if options.durability == Durability::Relaxed {
            settings.push(("synchronous_commit", "off".to_owned()));
        }
        let connect = connect
            .options(settings)
            .log_statements(tracing::log::LevelFilter::Trace)
            // sqlx warns of any statement over 1 s, with its SQL: a renewal
            // waiting out its 1 s lock timeout does that by design, and the
            // store reports what goes wrong itself.
            .log_slow_statements(
                tracing::log::LevelFilter::Warn,
                std::time::Duration::from_secs(10),
            );
        let server = server(&connect);
        let cannot_connect = |err: sqlx::Error| {
            Error::Store(StoreError::context(
                format!("cannot connect to {server}"),
                err,
            ))
        };
        // A host that takes the connection and never answers (a firewall
        // that drops, a server hung in recovery) would hold `build()` for
        // as long as TCP waits: minutes, with no word.
        let mut conn = tokio::time::timeout(options.request_timeout, connect.connect())
            .await
            .map_err(|elapsed| {
                Error::Store(StoreError::context(
                    format!(
                        "cannot connect to {server}: no answer within {:?} (request_timeout)",
                        options.request_timeout
                    ),
                    elapsed,
                ))
            })?
            .map_err(cannot_connect)?;
        if options.migrate {
            schema::migrate(&mut conn, &schema).await.map_err(|err| {
                Error::Store(StoreError::context(
                    format!("cannot migrate the schema `{schema}` of {server}"),
                    err,
                ))
            })?;
        } else {
            // The wrong schema is the caller's mistake; a server that
            // could not be read is not.
            schema::check_current(&mut conn, &schema)
                .await
                .map_err(|err| {
                    Error::Store(StoreError::context(
                        format!("cannot read the schema `{schema}` of {server}"),
                        err,
                    ))
                })?
                .map_err(|why| {
                    Error::Config(format!(
                        "cannot use the schema `{schema}` of {server}: {why}"
                    ))
                })?;
        }
        // A durable store must not inherit `synchronous_commit = off` from
        // the server, the database or the role (a common tuning): commits
        // would be answered before their WAL is flushed, and a server crash
        // would take back steps callers were told are recorded. Any other
        // value (`local`, `remote_write`, `on`, `remote_apply`) flushes
        // locally at least, and is kept.
        let connect = if options.durability == Durability::Durable {
            let inherited: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&mut conn)
                .await
                .map_err(cannot_connect)?;
            if inherited == "off" {
                tracing::info!(
                    server = %server,
                    "synchronous_commit is off on the server: this durable store sets it on for its connections"
                );
                connect.options([("synchronous_commit", "on")])
            } else {
                connect
            }
        } else {
            connect
        };
        // Used for the pool's first connection check, then closed.
        drop(conn);
        let gave_up = Arc::new(retry::GaveUp::new());
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .after_release(check_released(&gave_up))
            .connect_with(connect.clone())
            .await
            .map_err(cannot_connect)?;
        check_settings(&pool, &schema, options.durability)
            .await
            .map_err(cannot_connect)?
            .map_err(|why| Error::Config(format!("{server}: {why}")))?;
        // Opened at the first renewal, with the pool's settings. Two: a
        // renewal waiting out a row's lock, or one whose connection is
        // being closed, leaves the other for the next heartbeat.
        let leases = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .after_release(check_released(&gave_up))
            .connect_lazy_with(connect.clone());
        let channel = format!("workflow_{schema}");
        // A burst of cancels a worker cannot keep up with skips some: the
        // heartbeat finds those.
        let (cancels, _) = broadcast::channel(256);
        let interest = Arc::new(wake::Interest::default());
        let (hint, listen) = if !options.listen && options.claim_wait.is_zero() {
            (watch::channel(0).1, None)
        } else {
            let (hint, listen) = wake::spawn(
                connect,
                options.acquire_timeout,
                pool.clone(),
                channel.clone(),
                cancels.clone(),
                Arc::clone(&interest),
            );
            (hint, Some(listen))
        };
        Ok(PgStore {
            db: Db {
                wakes: Arc::new(wake::notifier(pool.clone(), channel.clone())),
                channel,
                pool,
                leases,
                lock_prefix: schema.clone(),
            },
            schema,
            claim_wait: options.claim_wait,
            retry_for: options.retry_for,
            request_timeout: options.request_timeout,
            gave_up,
            leases_by_request_clock: options.leases_by_request_clock,
            hint,
            interest,
            listen,
            cancels,
        })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool, for applications that keep their own tables
    /// next to the store's (the pool's `search_path` is the store's schema).
    /// Its connections' `statement_timeout` is a second past
    /// [`PgOptions::request_timeout`]: a longer query of your own lifts it
    /// in its transaction with `SET LOCAL statement_timeout = 0`.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.db.pool
    }

    /// Closes the connections, the LISTEN one included. Operations on a
    /// closed store fail.
    pub async fn close(&self) {
        if let Some(listen) = &self.listen {
            listen.close().await;
        }
        self.db.leases.close().await;
        self.db.pool.close().await;
    }
}

/// sqlx pings every connection it hands out, a second round trip for each
/// operation. Only one idle long enough to have lost its server is pinged;
/// one lost under load fails its operation, which is retried on a fresh
/// connection when that is safe and otherwise hands its run back, as any
/// lost connection does.
fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IF_IDLE_FOR {
            sqlx::Connection::ping(conn).await?;
        }
        Ok(true)
    })
}

/// The pools' `after_release` hook: [`retry::GaveUp::check_released`].
#[allow(clippy::type_complexity)]
fn check_released(
    gave_up: &Arc<retry::GaveUp>,
) -> impl for<'c> Fn(
    &'c mut sqlx::PgConnection,
    sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + 'c>,
> + Send
       + Sync
       + 'static {
    let gave_up = Arc::clone(gave_up);
    move |conn, _| {
        let gave_up = Arc::clone(&gave_up);
        Box::pin(async move { gave_up.check_released(conn).await })
    }
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

#[async_trait]
impl Store for PgStore {
    async fn create(
        &self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError> {
        // Idempotent: a retry finds its own earlier commit by the id.
        let mut again = false;
        retrying!(self, "create", idempotent = true, {
            let attempt = self.db.create(&new, dedup, again);
            again = true;
            attempt
        })?
    }

    async fn create_many(&self, new: Vec<NewInstance>) -> Result<Vec<InstanceRow>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut again = false;
        retrying!(self, "create_many", idempotent = true, {
            let attempt = self.db.create_many(&new, again);
            again = true;
            attempt
        })?
    }

    async fn get(&self, id: &InstanceId) -> Result<Option<InstanceRow>, StoreError> {
        if absent(id.as_str()) {
            return Ok(None);
        }
        let sql = format!("SELECT {COLUMNS} FROM instances WHERE id = $1");
        let row = retrying!(self, "get", idempotent = true, async {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id.as_str())
                .fetch_optional(&self.db.pool)
                .await?)
        })?;
        row.as_ref().map(instance_row).transpose()
    }

    async fn claim(&self, mut req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        let called = std::time::Instant::now();
        self.interest.note(&req.workflows);
        let mut hint = self.hint.clone();
        hint.borrow_and_update();
        let claimed = retrying!(
            self,
            "claim",
            idempotent = false,
            self.db
                .claim(&req, self.lease(req.now, req.lease_until, called))
        )?;
        if !claimed.is_empty() || self.claim_wait.is_zero() {
            return Ok(claimed);
        }
        // Nothing due: wait a little for a NOTIFY saying something became
        // due (a new instance, an event, a woken parent), then look once more.
        match tokio::time::timeout(self.claim_wait, hint.changed()).await {
            Ok(Ok(())) => {
                // Keep the caller's clock (tests pass their own): move its
                // `now` on by the time this call has taken.
                let again = std::time::Instant::now();
                let elapsed = i64::try_from(again.duration_since(called).as_millis()).unwrap_or(0);
                req.now = req.now.saturating_add(elapsed);
                req.due_by = req.due_by.saturating_add(elapsed);
                req.lease_until = req.lease_until.saturating_add(elapsed);
                retrying!(
                    self,
                    "claim",
                    idempotent = false,
                    self.db
                        .claim(&req, self.lease(req.now, req.lease_until, again))
                )
            }
            _ => Ok(claimed),
        }
    }

    async fn commit_step(&self, lease: &Lease, step: StepRow) -> Result<(), StoreError> {
        retrying!(
            self,
            "commit_step",
            // Recording a key twice keeps the first record.
            idempotent = true,
            self.db.commit_step(lease, &step)
        )?
    }

    async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        retrying!(
            self,
            "record_attempt",
            idempotent = false,
            self.db.record_attempt(lease, step, attempt, error, at)
        )?
    }

    async fn finish(&self, lease: &Lease, finish: Finish) -> Result<(), StoreError> {
        retrying!(
            self,
            "finish",
            idempotent = false,
            self.db.finish(lease, &finish)
        )?
    }

    async fn release(&self, lease: &Lease, at: Millis) -> Result<(), StoreError> {
        retrying!(
            self,
            "release",
            idempotent = false,
            self.db.release(lease, at)
        )?
    }

    async fn renew(&self, leases: &[Lease], until: Millis) -> Result<Vec<Renewal>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        // The caller computed `until` from its clock a moment ago: the
        // lease's length is measured from this reading of the same clock.
        let ask = self.lease(now_millis(), until, std::time::Instant::now());
        retrying!(self, "renew", idempotent = true, self.db.renew(leases, ask))
    }

    async fn cancel(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        if absent(id.as_str()) {
            return Ok(Control::NotFound);
        }
        retrying!(self, "cancel", idempotent = false, self.db.cancel(id, at))
    }

    async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Result<Control, StoreError> {
        if absent(id.as_str()) {
            return Ok(Control::NotFound);
        }
        retrying!(
            self,
            "set_deadline",
            idempotent = false,
            self.db.set_deadline(id, deadline_at, at)
        )
    }

    fn wakeups(&self) -> Option<watch::Receiver<u64>> {
        self.listen.as_ref().map(|_| self.hint.clone())
    }

    fn cancellations(&self) -> Option<broadcast::Receiver<InstanceId>> {
        self.listen.as_ref().map(|_| self.cancels.subscribe())
    }

    async fn next_due(
        &self,
        workflows: &[String],
        after: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        // Every workflow the worker runs, where a claim under
        // `concurrency_of` may ask for some only.
        self.interest.note(workflows);
        // One bounded range of `instances_runnable` per workflow, the
        // earliest kept, as a claim reads: `MIN` over `workflow = ANY(..)`
        // aggregated every waiting row (a parallel sequential scan, 45 ms
        // with 400,000 sleepers, at every idle worker's nap; this: 0.1 ms).
        retrying!(self, "next_due", idempotent = true, async {
            Ok(sqlx::query_scalar(
                "SELECT MIN(d.run_at) FROM UNNEST($2::text[]) AS w(name) \
                 CROSS JOIN LATERAL ( \
                     SELECT run_at FROM instances \
                     WHERE workflow = w.name AND status IN ('pending', 'listening') AND run_at >= $1 \
                     ORDER BY run_at LIMIT 1 \
                 ) d",
            )
            .bind(after)
            .bind(workflows)
            .fetch_one(&self.db.pool)
            .await?)
        })
    }

    async fn lease_owners(&self) -> Result<Vec<String>, StoreError> {
        retrying!(self, "lease_owners", idempotent = true, async {
            Ok(sqlx::query_scalar(
                "SELECT DISTINCT lease_owner FROM instances WHERE lease_owner IS NOT NULL ORDER BY lease_owner",
            )
            .fetch_all(&self.db.pool)
            .await?)
        })
    }

    async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        // Repeating it after a lost answer only deletes what is left.
        retrying!(
            self,
            "purge",
            idempotent = true,
            self.db.purge(ended_before, workflow, limit)
        )
    }

    async fn release_owner(&self, owner: &str, at: Millis) -> Result<u64, StoreError> {
        retrying!(
            self,
            "release_owner",
            idempotent = false,
            self.db.release_owner(owner, at)
        )
    }

    async fn steps(&self, id: &InstanceId) -> Result<Vec<StepRow>, StoreError> {
        if absent(id.as_str()) {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {STEP_COLUMNS} FROM steps WHERE instance_id = $1 ORDER BY seq");
        let rows = retrying!(self, "steps", idempotent = true, async {
            Ok(sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id.as_str())
                .fetch_all(&self.db.pool)
                .await?)
        })?;
        rows.iter().map(|r| step_row(id.as_str(), r)).collect()
    }

    async fn history(&self, id: &InstanceId) -> Result<Vec<EventRow>, StoreError> {
        if absent(id.as_str()) {
            return Ok(Vec::new());
        }
        let rows = retrying!(self, "history", idempotent = true, async {
            Ok(sqlx::query(
                "SELECT seq, at, kind, step, attempt, message, duration_ms FROM events \
                 WHERE instance_id = $1 ORDER BY seq",
            )
            .bind(id.as_str())
            .fetch_all(&self.db.pool)
            .await?)
        })?;
        rows.iter().map(|r| event_row(id, r)).collect()
    }

    async fn steps_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<StepRow>, u64), StoreError> {
        // The count is a subquery, not a window, so that the LIMIT cuts
        // the read short: older steps' outputs and states are never read.
        let sql = format!(
            "SELECT {STEP_COLUMNS}, (SELECT COUNT(*) FROM steps WHERE instance_id = $1) AS total \
             FROM steps WHERE seq IN \
                 (SELECT seq FROM steps WHERE instance_id = $1 ORDER BY seq DESC LIMIT $2) \
             ORDER BY seq"
        );
        let (rows, total) = self.tail("steps_tail", &sql, id, last).await?;
        let steps = rows.iter().map(|r| step_row(id.as_str(), r));
        Ok((steps.collect::<Result<_, _>>()?, total))
    }

    async fn history_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<EventRow>, u64), StoreError> {
        // Read backwards along `events_instance` and cut by the LIMIT.
        let sql = "SELECT * FROM ( \
                 SELECT seq, at, kind, step, attempt, message, duration_ms, \
                        (SELECT COUNT(*) FROM events WHERE instance_id = $1) AS total \
                 FROM events WHERE instance_id = $1 ORDER BY seq DESC LIMIT $2) last \
             ORDER BY seq";
        let (rows, total) = self.tail("history_tail", sql, id, last).await?;
        let events = rows.iter().map(|r| event_row(id, r));
        Ok((events.collect::<Result<_, _>>()?, total))
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Listed>, StoreError> {
        let texts = [q.workflow.as_deref(), q.key.as_deref()];
        if texts
            .into_iter()
            .flatten()
            .chain(q.tags.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
            .any(absent)
        {
            return Ok(Vec::new());
        }
        let build = || {
            let columns = if q.summaries {
                SUMMARY_COLUMNS
            } else {
                COLUMNS
            };
            let mut sql: QueryBuilder<Postgres> =
                QueryBuilder::new(format!("SELECT {columns} FROM instances WHERE TRUE"));
            if let Some(workflow) = &q.workflow {
                sql.push(" AND workflow = ").push_bind(workflow.clone());
            }
            if !q.statuses.is_empty() {
                let statuses: Vec<String> =
                    q.statuses.iter().map(|s| s.as_str().to_owned()).collect();
                sql.push(" AND status = ANY(").push_bind(statuses).push(")");
            }
            if !q.tags.is_empty() {
                let tags = serde_json::to_string(&q.tags).unwrap_or_else(|_| "{}".to_owned());
                sql.push(" AND tags @> ").push_bind(tags).push("::jsonb");
            }
            if let Some(key) = &q.key {
                sql.push(" AND dedup_key = ").push_bind(key.clone());
            }
            // Ids are UUIDv7, whose text starts with the creation time:
            // bounding the id too lets the range walk the primary key. A
            // second of slack covers the id being minted just before
            // `created_at`.
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
                // What sorts below text with a NUL, which no id holds: up
                // to its part before the NUL, that included.
                match before.as_str().split_once('\0') {
                    Some((below, _)) => sql.push(" AND id <= ").push_bind(below.to_owned()),
                    None => sql.push(" AND id < ").push_bind(before.to_string()),
                };
            }
            sql.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::try_from(q.limit).unwrap_or(i64::MAX));
            sql
        };
        let rows = retrying!(self, "list", idempotent = true, async {
            let mut sql = build();
            Ok(sql.build().fetch_all(&self.db.pool).await?)
        })?;
        Ok(rows.iter().map(instance_row).collect())
    }

    async fn suspend(&self, lease: &Lease, suspend: Suspend) -> Result<(), StoreError> {
        retrying!(
            self,
            "suspend",
            idempotent = false,
            self.db.suspend(lease, &suspend)
        )?
    }

    async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        at: Millis,
    ) -> Result<Control, StoreError> {
        if absent(id.as_str()) {
            return Ok(Control::NotFound);
        }
        // With a key, a send that may have committed is safe to repeat: a
        // second copy is recognised as a duplicate, and this call's own
        // earlier attempt, by its token, as sent.
        let token = key.map(|_| InstanceId::new().to_string());
        retrying!(
            self,
            "send_event",
            idempotent = key.is_some(),
            self.db
                .send_event(id, name, payload, key, token.as_deref(), at)
        )
    }

    async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Result<Option<String>, StoreError> {
        // A retry after a commit whose answer was lost finds the step
        // recorded, and answers with its record.
        retrying!(
            self,
            "take_event",
            idempotent = true,
            self.db.take_event(lease, name, step, at)
        )?
    }

    async fn pause(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        if absent(id.as_str()) {
            return Ok(Control::NotFound);
        }
        retrying!(self, "pause", idempotent = false, self.db.pause(id, at))
    }

    async fn resume(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        if absent(id.as_str()) {
            return Ok(Control::NotFound);
        }
        retrying!(self, "resume", idempotent = false, self.db.resume(id, at))
    }

    async fn schedule_mark(&self, workflow: &str) -> Result<Option<ScheduleMark>, StoreError> {
        let row: Option<(i64, Option<i64>, Option<String>)> = retrying!(
            self,
            "schedule_mark",
            idempotent = true,
            async {
                Ok(sqlx::query_as(
                    "SELECT checked_until, last_tick, last_instance FROM schedules WHERE workflow = $1",
                )
                .bind(workflow)
                .fetch_optional(&self.db.pool)
                .await?)
            }
        )?;
        Ok(
            row.map(|(checked_until, last_tick, last_instance)| ScheduleMark {
                checked_until,
                last_tick,
                last_instance: last_instance.map(InstanceId::from_string),
            }),
        )
    }

    async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, InstanceId)>,
    ) -> Result<(), StoreError> {
        let fired = fired.as_ref().map(|(tick, id)| (*tick, id.as_str()));
        retrying!(
            self,
            "advance_schedule",
            idempotent = true,
            self.db.advance_schedule(workflow, checked_until, fired)
        )
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
        retrying!(
            self,
            "put_definitions",
            idempotent = true,
            self.db.put_definitions(&rows, at)
        )
    }

    async fn definitions(&self) -> Result<Vec<Definition>, StoreError> {
        let rows: Vec<(String, String)> =
            retrying!(self, "definitions", idempotent = true, async {
                Ok(
                    sqlx::query_as("SELECT name, definition FROM definitions ORDER BY name")
                        .fetch_all(&self.db.pool)
                        .await?,
                )
            })?;
        Ok(workflow_core::store::decode_definitions(rows))
    }

    async fn count_by_status(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<(Status, u64)>, StoreError> {
        if workflow.is_some_and(absent) {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, i64)> = retrying!(
            self,
            "count_by_status",
            idempotent = true,
            async {
                Ok(match workflow {
                Some(workflow) => {
                    sqlx::query_as(
                        "SELECT status, COUNT(*) FROM instances WHERE workflow = $1 GROUP BY status",
                    )
                    .bind(workflow)
                    .fetch_all(&self.db.pool)
                    .await?
                }
                None => {
                    sqlx::query_as("SELECT status, COUNT(*) FROM instances GROUP BY status")
                        .fetch_all(&self.db.pool)
                        .await?
                }
            })
            }
        )?;
        Ok(workflow_core::store::status_counts(rows))
    }
}

/// Whether no row can hold `text`: PostgreSQL's text holds no NUL, and a
/// query binding one fails (SQLSTATE 22021) where the answer is "none"
/// (an id typed into the console, a filter).
fn absent(text: &str) -> bool {
    text.contains('\0')
}

/// Checks that a pooled connection has the settings the store gave its
/// connections as startup options: a pooler that drops them (PgBouncer
/// with `ignore_startup_parameters = options`) would otherwise leave the
/// store on the role's own schema, isolation and commit setting, silently.
/// Fails with the server's error if it cannot be asked (a store error),
/// and answers why not when a setting is wrong (a configuration error).
async fn check_settings(
    pool: &sqlx::PgPool,
    schema: &str,
    durability: Durability,
) -> std::result::Result<std::result::Result<(), String>, sqlx::Error> {
    let (current, isolation, sync): (Option<String>, String, String) = sqlx::query_as(
        "SELECT current_schema(), current_setting('default_transaction_isolation'), \
                current_setting('synchronous_commit')",
    )
    .fetch_one(pool)
    .await?;
    Ok(settings_fit(current, &isolation, &sync, schema, durability))
}

/// Why the settings a connection has do not fit the store, if they do not.
fn settings_fit(
    current: Option<String>,
    isolation: &str,
    sync: &str,
    schema: &str,
    durability: Durability,
) -> std::result::Result<(), String> {
    let dropped = "the connection's startup options did not take (a pooler such as PgBouncer \
                   with `ignore_startup_parameters = options` drops them); set them for the role";
    if current.as_deref() != Some(schema) {
        return Err(format!(
            "connections use the schema `{}` instead of the store's schema `{schema}`: {dropped}: \
             ALTER ROLE <role> SET search_path = {schema}",
            current.unwrap_or_default()
        ));
    }
    if isolation != "read committed" {
        return Err(format!(
            "connections default to `{isolation}` isolation, and the store needs `read committed` \
             (a statement that waited for a lock must see what its holder committed): \
             {dropped}: ALTER ROLE <role> SET default_transaction_isolation = 'read committed'"
        ));
    }
    if durability == Durability::Durable && sync == "off" {
        return Err(format!(
            "connections have synchronous_commit off, and a durable store needs it on (a step \
             must be on disk before its workflow goes on): {dropped}: \
             ALTER ROLE <role> SET synchronous_commit = on, or use Durability::Relaxed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection;

    /// A host that takes the connection and never answers fails the open
    /// within `request_timeout`, naming the server. Before, it waited as
    /// long as TCP does.
    #[tokio::test]
    async fn a_server_that_never_answers_fails_the_open_in_time() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            loop {
                let (conn, _) = silent.accept().await.unwrap();
                kept.push(conn);
            }
        });
        let started = std::time::Instant::now();
        let opened = tokio::time::timeout(
            Duration::from_secs(20),
            PgStore::connect_with(
                &format!("postgres://app@{addr}/app"),
                PgOptions::new().request_timeout(Duration::from_millis(500)),
            ),
        )
        .await
        .expect("still waiting for a server that never answers");
        let err = opened.unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err}");
        assert!(err.to_string().contains(&addr.port().to_string()), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }

    /// A server that cannot be reached: the message names it, and the
    /// driver's error stays reachable as the cause (it was text before).
    #[tokio::test]
    async fn a_failed_connect_keeps_the_drivers_error() {
        let err = PgStore::connect_with(
            "postgres://app@127.0.0.1:1/app",
            PgOptions::new().acquire_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cannot connect to"), "{err}");
        let Error::Store(StoreError::Backend(backend)) = &err else {
            panic!("{err:?}");
        };
        let cause = backend.source().expect("the driver's error");
        assert!(cause.downcast_ref::<sqlx::Error>().is_some(), "{cause:?}");
    }

    /// `Duration::MAX`, "no limit", is the longest timeout PostgreSQL
    /// takes: adding the server's second to it panicked, as the pool did
    /// waiting that long for a connection.
    #[tokio::test]
    async fn the_longest_timeouts_are_cut_not_overflowed() {
        let options = PgOptions::new()
            .request_timeout(Duration::MAX)
            .acquire_timeout(Duration::MAX);
        assert_eq!(
            options.request_timeout,
            LONGEST_TIMEOUT - Duration::from_secs(1)
        );
        assert_eq!(options.acquire_timeout, LONGEST_TIMEOUT);
        assert_eq!(statement_timeout(Duration::MAX), "2147483647ms");
        let Some(url) = test_url() else {
            return;
        };
        let store = PgStore::connect_with(&url, options).await.unwrap();
        let (timeout,): (String,) = sqlx::query_as("SHOW statement_timeout")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(timeout, "2147483647ms");
    }

    /// sqlx sets a slot aside for each connection up front: "no limit" as
    /// the largest number must not ask for billions of them.
    #[test]
    fn the_largest_pool_is_cut_to_a_limit() {
        assert_eq!(
            PgOptions::new().max_connections(u32::MAX).max_connections,
            10_000
        );
        assert_eq!(PgOptions::new().max_connections(0).max_connections, 1);
    }

    /// A store on a schema of its own, named after `tag`.
    async fn store_in_fresh_schema(url: &str, tag: &str) -> (PgStore, String) {
        let schema = format!("t_{tag}_{}", std::process::id());
        let store = PgStore::connect_with(url, PgOptions::new().schema(&schema).listen(false))
            .await
            .unwrap();
        (store, schema)
    }

    async fn drop_schema(url: &str, schema: &str) {
        let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    /// Counters at their largest values (written from outside) do not fail
    /// the claims that pick their rows: the claim goes on, capped.
    #[tokio::test]
    async fn counters_at_their_limits_do_not_stop_the_claims() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "limits").await;
        let mut ids = Vec::new();
        for n in 1..=2 {
            let new = workflow_core::testing::new_instance("wf", n);
            ids.push(new.id.clone());
            store.create(new, None).await.unwrap();
        }
        // A run whose lease lapsed, with its interrupted-run count at the
        // column's largest; another with its runs at theirs.
        sqlx::query(
            "UPDATE instances SET status = 'in_progress', lease_owner = 'dead', runs = 1, \
             lease_expires_at = 0, run_at = 0, interrupted_runs = 2147483647 WHERE id = $1",
        )
        .bind(ids[0].as_str())
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query("UPDATE instances SET runs = 9223372036854775807 WHERE id = $1")
            .bind(ids[1].as_str())
            .execute(store.pool())
            .await
            .unwrap();
        let now = i64::MAX / 4;
        let claimed = store
            .claim(ClaimRequest {
                owner: "w".into(),
                workflows: vec!["wf".into()],
                now,
                due_by: now,
                lease_until: now + 60_000,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let lapsed = claimed.iter().find(|c| c.row.id == ids[0]).unwrap();
        assert_eq!(lapsed.interrupted_runs, i32::MAX as u32);
        // Freeing a worker's leases goes on too.
        store.release_owner("w", now).await.unwrap();
        drop_schema(&url, &schema).await;
    }

    /// Connections that come without the store's settings (a pooler that
    /// dropped the startup options) are refused, saying what to set.
    #[tokio::test]
    async fn connections_without_the_stores_settings_are_refused() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "settings").await;
        let misfit = |pool: sqlx::PgPool, durability| {
            let schema = schema.clone();
            async move {
                check_settings(&pool, &schema, durability)
                    .await
                    .unwrap()
                    .err()
            }
        };
        assert_eq!(
            misfit(store.pool().clone(), Durability::Durable).await,
            None
        );
        // As a pooler hands them out when it dropped the `options`.
        let bare = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let set = |sql: String| {
            let bare = bare.clone();
            async move {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&bare)
                    .await
                    .unwrap();
            }
        };
        let why = misfit(bare.clone(), Durability::Relaxed).await.unwrap();
        assert!(why.contains(&format!("schema `{schema}`")), "{why}");
        assert!(why.contains("ALTER ROLE"), "{why}");
        set("SET default_transaction_isolation = 'repeatable read'".into()).await;
        set(format!("SET search_path = {schema}")).await;
        let why = misfit(bare.clone(), Durability::Relaxed).await.unwrap();
        assert!(why.contains("repeatable read"), "{why}");
        set("SET default_transaction_isolation = 'read committed'".into()).await;
        set("SET synchronous_commit = off".into()).await;
        assert_eq!(misfit(bare.clone(), Durability::Relaxed).await, None);
        let why = misfit(bare.clone(), Durability::Durable).await.unwrap();
        assert!(why.contains("synchronous_commit"), "{why}");
        drop_schema(&url, &schema).await;
    }

    /// The test server's URL, or `None` after saying the test is skipped
    /// (on stderr itself: the harness swallows `eprintln!` of a passing test).
    fn test_url() -> Option<String> {
        match std::env::var("WORKFLOW_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "workflow-postgres unit test skipped: WORKFLOW_TEST_POSTGRES_URL not set"
                );
                None
            }
        }
    }

    /// A wake-up for new instances of a workflow wakes only the processes
    /// whose claims ask for it: another service sharing the schema sleeps
    /// on. Before, every start woke every idle worker of every process,
    /// each to claim and find nothing. A wake-up for anything (an event)
    /// still reaches every one.
    #[tokio::test]
    async fn wake_ups_reach_only_the_claimers_of_their_workflow() {
        let Some(url) = test_url() else {
            return;
        };
        let schema = format!("t_wake_for_{}", std::process::id());
        let open = || {
            PgStore::connect_with(
                &url,
                PgOptions::new().schema(&schema).claim_wait(Duration::ZERO),
            )
        };
        let a = open().await.unwrap();
        let b = open().await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let claimed = b
            .claim(ClaimRequest {
                owner: "w".into(),
                workflows: vec!["b".into()],
                now,
                due_by: now,
                lease_until: now + 60_000,
                limit: 10,
            })
            .await
            .unwrap();
        assert!(claimed.is_empty());
        let mut hint = b.wakeups().expect("listening");
        // Its LISTEN connection up (it says so with a change).
        tokio::time::timeout(Duration::from_secs(5), hint.changed())
            .await
            .expect("listening within 5 s")
            .unwrap();
        hint.borrow_and_update();
        a.create(workflow_core::testing::new_instance("a", 1), None)
            .await
            .unwrap();
        let heard = tokio::time::timeout(Duration::from_millis(500), hint.changed()).await;
        assert!(heard.is_err(), "woken for another workflow's start");
        a.create(workflow_core::testing::new_instance("b", 2), None)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), hint.changed())
            .await
            .expect("not woken for its own workflow's start")
            .unwrap();
        hint.borrow_and_update();
        a.db.wakes.ask(None);
        tokio::time::timeout(Duration::from_secs(5), hint.changed())
            .await
            .expect("not woken for anything")
            .unwrap();
        a.close().await;
        b.close().await;
        drop_schema(&url, &schema).await;
    }

    /// A create run again after an attempt whose commit may have landed
    /// (the connection lost during COMMIT) finds that commit's instance by
    /// the id it minted and returns it as created: no second instance, no
    /// second `created` event.
    #[tokio::test]
    async fn a_create_run_again_finds_its_own_commit() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "again").await;
        let new = workflow_core::testing::new_instance("wf", 1);
        let first = store.db.create(&new, None, false).await.unwrap().unwrap();
        let again = store.db.create(&new, None, true).await.unwrap().unwrap();
        assert!(matches!(&again, Created::New(row) if row.id == new.id));
        assert_eq!(first.into_row(), again.into_row());
        let batch: Vec<NewInstance> = (2..5)
            .map(|n| workflow_core::testing::new_instance("wf", n))
            .collect();
        store.db.create_many(&batch, false).await.unwrap().unwrap();
        let rows = store.db.create_many(&batch, true).await.unwrap().unwrap();
        let ids: Vec<&InstanceId> = rows.iter().map(|r| &r.id).collect();
        let asked: Vec<&InstanceId> = batch.iter().map(|n| &n.id).collect();
        assert_eq!(ids, asked);
        let counts = store.count_by_status(Some("wf")).await.unwrap();
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 4);
        let events = store.history(&new.id).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "created").count(), 1);
        drop_schema(&url, &schema).await;
    }

    /// The same while the earlier attempt is still committing (a standby
    /// slow to confirm, a pooler that cut the answer off): the retry
    /// waits for it on the id and returns its row as created, instead of
    /// failing on the duplicate id; a keyed one too, instead of calling
    /// its own instance one that existed.
    #[tokio::test]
    async fn a_create_run_again_waits_for_its_own_commit() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "again_inflight").await;
        let mut keyed = workflow_core::testing::new_instance("wf", 1);
        keyed.key = Some("k".into());
        let plain = workflow_core::testing::new_instance("wf", 2);
        let batch: Vec<NewInstance> = (3..5)
            .map(|n| workflow_core::testing::new_instance("wf", n))
            .collect();
        for (new, dedup) in [(&plain, None), (&keyed, Some(&Status::ACTIVE[..]))] {
            // The first attempt, its COMMIT not yet through.
            let mut first = store.pool().begin().await.unwrap();
            if dedup.is_some() {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("{}\n{}\nk", store.db.lock_prefix, new.workflow))
                    .execute(&mut *first)
                    .await
                    .unwrap();
            }
            crate::ops::insert(&mut first, new).await.unwrap();
            let retry = store.db.create(new, dedup, true);
            let commit = async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                first.commit().await.unwrap();
            };
            let (again, ()) = tokio::join!(retry, commit);
            let again = again.unwrap().unwrap();
            assert!(
                matches!(&again, Created::New(row) if row.id == new.id),
                "{again:?}"
            );
        }
        let mut first = store.pool().begin().await.unwrap();
        for new in &batch {
            crate::ops::insert(&mut first, new).await.unwrap();
        }
        let retry = store.db.create_many(&batch, true);
        let commit = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            first.commit().await.unwrap();
        };
        let (rows, ()) = tokio::join!(retry, commit);
        let rows = rows.unwrap().unwrap();
        assert_eq!(rows.len(), 2);
        let counts = store.count_by_status(Some("wf")).await.unwrap();
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 4);
        drop_schema(&url, &schema).await;
    }

    /// A keyed send run again after an attempt whose commit landed though
    /// its answer was lost (the connection dropped during COMMIT) finds
    /// the key its own attempt recorded and answers "sent": the event was
    /// delivered, once. Another call with the key is a duplicate.
    #[tokio::test]
    async fn a_keyed_send_run_again_finds_its_own_delivery() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "send_again").await;
        let new = workflow_core::testing::new_instance("wf", 1);
        let id = store.create(new, None).await.unwrap().into_row().id;
        let send = |token| store.db.send_event(&id, "e", "1", Some("k"), token, 10);
        assert_eq!(send(Some("call-1")).await.unwrap(), Control::Applied);
        assert_eq!(send(Some("call-1")).await.unwrap(), Control::Applied);
        assert_eq!(send(Some("call-2")).await.unwrap(), Control::Duplicate);
        let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(inbox, 1, "delivered once");
        drop_schema(&url, &schema).await;
    }

    /// An id or filter with a NUL, which no row can hold, finds nothing,
    /// and a cursor with one bounds the list as text would (PostgreSQL
    /// refuses to compare such text: it was a store error, a 500 in the
    /// console).
    #[tokio::test]
    async fn ids_and_filters_with_a_nul_find_nothing() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "nul").await;
        let id = InstanceId::from_string("a\0b");
        assert!(store.get(&id).await.unwrap().is_none());
        assert!(store.steps(&id).await.unwrap().is_empty());
        assert!(store.history(&id).await.unwrap().is_empty());
        assert_eq!(store.steps_tail(&id, 10).await.unwrap().1, 0);
        assert_eq!(store.history_tail(&id, 10).await.unwrap().1, 0);
        assert_eq!(store.cancel(&id, 1).await.unwrap(), Control::NotFound);
        assert_eq!(store.pause(&id, 1).await.unwrap(), Control::NotFound);
        assert_eq!(store.resume(&id, 1).await.unwrap(), Control::NotFound);
        assert_eq!(
            store.set_deadline(&id, 5, 1).await.unwrap(),
            Control::NotFound
        );
        assert_eq!(
            store.send_event(&id, "e", "1", None, 1).await.unwrap(),
            Control::NotFound
        );
        let store = &store;
        let query = |q: ListQuery| async move { store.list(&q).await.unwrap().len() };
        let base = || ListQuery {
            limit: 10,
            ..ListQuery::default()
        };
        assert_eq!(
            query(ListQuery {
                workflow: Some("w\0".into()),
                ..base()
            })
            .await,
            0
        );
        assert_eq!(
            query(ListQuery {
                key: Some("k\0".into()),
                ..base()
            })
            .await,
            0
        );
        // As a cursor, it bounds: what sorts before `a`, `a` included.
        let mut new = workflow_core::testing::new_instance("w", 1);
        new.id = InstanceId::from_string("a");
        store.create(new, None).await.unwrap();
        let below = ListQuery {
            before: Some(id.clone()),
            ..base()
        };
        assert_eq!(query(below).await, 1);
        let tags = std::collections::BTreeMap::from([("t".to_owned(), "\0".to_owned())]);
        assert_eq!(query(ListQuery { tags, ..base() }).await, 0);
        assert!(store.count_by_status(Some("w\0")).await.unwrap().is_empty());
        drop_schema(&url, &schema).await;
    }

    /// Summaries leave the documents unread.
    #[tokio::test]
    async fn summaries_leave_the_documents_unread() {
        let Some(url) = test_url() else {
            return;
        };
        let (store, schema) = store_in_fresh_schema(&url, "summaries").await;
        for n in 0..4 {
            let new = workflow_core::testing::new_instance("wf", n);
            store.create(new, None).await.unwrap();
        }
        let q = ListQuery {
            limit: 10,
            summaries: true,
            ..ListQuery::default()
        };
        let listed = store.list(&q).await.unwrap();
        assert_eq!(listed.len(), 4);
        assert!(listed.iter().all(|r| r
            .as_ref()
            .is_ok_and(|r| r.input == "null" && r.state.is_none())));
        drop_schema(&url, &schema).await;
    }

    /// A durable store sets `synchronous_commit` back on where the server
    /// (here the database) turned it off; a relaxed one leaves it off.
    #[tokio::test]
    async fn a_durable_store_commits_synchronously_whatever_the_server_says() {
        let Some(url) = test_url() else {
            return;
        };
        let database = format!("wf_async_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {database}"),
            format!("CREATE DATABASE {database}"),
            format!("ALTER DATABASE {database} SET synchronous_commit = off"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let options = PgConnectOptions::from_str(&url)
            .unwrap()
            .database(&database);
        let there = format!(
            "postgres://{}@{}:{}/{database}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        );
        let setting = |store: PgStore| async move {
            sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
                .fetch_one(&store.db.pool)
                .await
                .unwrap()
        };
        let durable = PgStore::connect_with(&there, PgOptions::new().listen(false))
            .await
            .unwrap();
        assert_eq!(setting(durable).await, "on");
        let relaxed = PgStore::connect_with(
            &there,
            PgOptions::new()
                .listen(false)
                .durability(Durability::Relaxed),
        )
        .await
        .unwrap();
        assert_eq!(setting(relaxed).await, "off");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}
