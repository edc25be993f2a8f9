//! One attempt of each operation: short READ COMMITTED transactions. Every
//! write on behalf of a run is fenced: it applies only while the row still
//! names the run's lease (`lease_owner`, `runs`, status `in_progress`), and
//! the fencing UPDATE also locks the row, so concurrent writes to one
//! instance queue behind each other instead of interleaving.
//!
//! # Lock order
//!
//! A transaction that waits for an instance row while it holds another
//! takes them descendants first: deeper rows of a tree before shallower
//! ones, rows at one depth by id. That is the order a child's `finish`
//! (the child, then the parent it wakes) and a parent's `suspend` (the
//! child it waits for, then itself) need, and a cancel or a timeout locks
//! its whole tree up front in it ([`lock_tree`]) rather than root first.
//! With the root first, a cancel and a child's finish (or its parent's
//! suspend, or a cancel of the child) each held the row the other waited
//! for: PostgreSQL aborted one after `deadlock_timeout` (a second, with
//! both stalled), to be retried. Ids alone cannot give this order (a child
//! started on a machine whose clock is behind sorts before its parent).
//! Statements over many unrelated rows (a heartbeat, freeing a dead
//! worker's leases) cannot know their depths: they take the rows nobody
//! holds with SKIP LOCKED and wait for each of the rest alone, so they
//! never wait while holding another row. What is left out of order (rows
//! a cancel finds created while it waited, a claim waking the parent of a
//! corrupt row, `create_many` under parents at different depths) is rare,
//! and a deadlock there is retried like a lost connection.
//!
//! # Clocks
//!
//! A running instance's `lease_expires_at` (and its `run_at`, the same
//! value) is by the database's clock: a claim or a renewal writes the
//! length its caller asked for after the server's time, and a claim takes
//! it over only once the server's time passed it ([`LeaseAsk`]). Every
//! other time in a row (a waiting instance's `run_at`, deadlines, history
//! times) is an engine's, as the caller gave it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use workflow_core::store::*;
use workflow_core::{InstanceId, Status, StoreError};

use crate::retry::{autocommit, commit, Attempt};

/// How every transaction begins (see `PgStore::begin`), also those on a
/// connection already taken from the pool.
const READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
use crate::rows::{instance_row, step_row, COLUMNS, STEP_COLUMNS};

/// A claim's count of runs, one more, never past its type's largest value:
/// a row written with the largest (a hand edit, a damaged disk) would
/// otherwise fail every claim that picks it, and it is picked first.
const RUNS_PLUS_ONE: &str = "CASE WHEN runs < 9223372036854775807 THEN runs + 1 ELSE runs END";

/// The count of interrupted runs, one more for a run whose lease lapsed,
/// capped likewise (an `INTEGER` column).
const INTERRUPTED_PLUS_ONE: &str = "LEAST(interrupted_runs::int8 \
     + CASE WHEN status = 'in_progress' THEN 1 ELSE 0 END, 2147483647)::int4";

/// Terminal statuses, as stored, for SQL lists.
const TERMINAL: &str = "('completed', 'failed', 'cancelled', 'timed_out')";

/// The fence every write made on behalf of a run carries ($1 id, $2 owner, $3 run).
const FENCE: &str = "id = $1 AND lease_owner = $2 AND runs = $3 AND status = 'in_progress'";

/// The database's clock in epoch milliseconds: the server's time when the
/// statement arrived (`statement_timestamp()`), so one value wherever the
/// statement reads it, taken before the statement waits for any row.
/// Also the cap of a wake-up's due time (an event, a child's end, a
/// resume, a hand-back): "due now" by a sender whose clock runs ahead must
/// not wait out its skew.
const DB_CLOCK: &str = "floor(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::int8";

/// `due`, capped at [`DB_CLOCK`] when it is due now by the sender's clock
/// (no later than `at`, when the sender wrote it): a time ahead (a delayed
/// start, a sleep) keeps its value.
fn due_now_capped(due: &str, at: &str) -> String {
    format!("CASE WHEN {due} <= {at} THEN LEAST({due}, {DB_CLOCK}) ELSE {due} END")
}

/// The clock that judges and dates leases in a statement binding
/// [`LeaseAsk::bind`]'s clock to `$n`: the database's unless a caller's
/// is bound.
fn lease_clock(n: usize) -> String {
    format!("COALESCE(${n}::int8, {DB_CLOCK})")
}

/// What a claim takes of workflow `w.name`: a runnable row due by the
/// claimer's clock (`$3`) if it waits, by the database's (`db`) if it
/// runs under a lease that lapsed.
fn claimable(db: &str) -> String {
    format!(
        "workflow = w.name \
           AND status IN ('pending', 'in_progress', 'listening') \
           AND run_at <= GREATEST($3, {db}) \
           AND CASE WHEN status = 'in_progress' THEN run_at <= {db} ELSE run_at <= $3 END \
           AND (lease_expires_at IS NULL OR lease_expires_at < {db})"
    )
}

/// A lease's end: the length bound to `$n` after `clock`, saturating
/// rather than overflowing (a `Duration::MAX` lease).
fn lease_end(clock: &str, n: usize) -> String {
    format!(
        "LEAST(GREATEST({clock}::numeric + ${n}::int8, {}), {})::int8",
        i64::MIN,
        i64::MAX
    )
}

/// A lease a caller asked for (a claim's, a renewal's): until `until` by
/// its clock, which read `now` at `asked`.
///
/// Written as its length added to the database's clock, and judged lapsed
/// by that clock: workers' clocks disagree, and a lease written and judged
/// by each one's own would be taken from a live worker by one whose clock
/// runs ahead, and kept from a dead one's successors by one whose clock
/// lags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseAsk {
    pub now: Millis,
    pub until: Millis,
    pub asked: Instant,
    /// Judged and dated by the caller's clock instead
    /// ([`PgOptions::leases_by_request_clock`](crate::PgOptions::leases_by_request_clock)).
    pub by_request_clock: bool,
}

impl LeaseAsk {
    /// For a statement sent now: the clock that judges leases and dates
    /// their ends (`None`: the database's, [`DB_CLOCK`]), and how long the
    /// lease lasts from that clock's reading. By the database's clock, the
    /// time since `asked` (a retry, a wait for a row) is taken off,
    /// measured by the monotonic clock: the lease ends when the caller
    /// asked, and neither a late attempt nor a step of the caller's wall
    /// clock lengthens or shortens it.
    pub(crate) fn bind(&self) -> (Option<Millis>, Millis) {
        let length = self.until.saturating_sub(self.now);
        if self.by_request_clock {
            return (Some(self.now), length);
        }
        let gone = Millis::try_from(self.asked.elapsed().as_millis()).unwrap_or(Millis::MAX);
        (None, length.saturating_sub(gone))
    }

    /// Whether a claim with `length` of its lease left (from [`bind`](Self::bind))
    /// comes too late: made after more than half the lease went (retries
    /// through an outage, a long wait for a connection), it would grant
    /// leases about to end, or ended, which another worker may take at once
    /// while this one starts them. It claims nothing, and the worker asks
    /// again with a whole lease.
    pub(crate) fn too_late(&self, length: Millis) -> bool {
        !self.by_request_clock && length < self.until.saturating_sub(self.now) / 2
    }
}

/// A renewal's connection, closed rather than handed back unless the
/// renewal finished: one dropped mid-query (the heartbeat gave up on a
/// connection gone quiet) would be pinged on its way back to the pool,
/// which waits for the hung query, taking the pool's slot with it until TCP
/// gives up (minutes), and every lease would lapse meanwhile.
struct ClosedUnlessDone(sqlx::pool::PoolConnection<sqlx::Postgres>, bool);

impl Drop for ClosedUnlessDone {
    fn drop(&mut self) {
        if !self.1 {
            self.0.close_on_drop();
        }
    }
}

/// The database side of a `PgStore`.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub pool: PgPool,
    /// One connection of its own for lease renewals: a pool busy with
    /// handlers' commits, claims and the application's own queries
    /// (`PgStore::pool`) must not keep heartbeats waiting until every
    /// lease lapses, stopping healthy handlers.
    pub leases: PgPool,
    /// Prefix of dedup advisory-lock keys, so schemas do not contend.
    pub lock_prefix: String,
    /// Asks the notifier (`wake::notifier`) for a NOTIFY.
    pub wakes: std::sync::Arc<crate::wake::Wakes>,
    /// The store's NOTIFY channel.
    pub channel: String,
}

fn lease_lost<T>(lease: &Lease) -> Attempt<Result<T, StoreError>> {
    Ok(Err(StoreError::LeaseLost(lease.instance.clone())))
}

impl Db {
    /// Every transaction says READ COMMITTED itself (see `connect`): a
    /// pooler in transaction mode may drop the session's startup
    /// settings, and a session `SET` made through `PgStore::pool` stays
    /// on the connection.
    async fn begin(&self) -> Attempt<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin_with(READ_COMMITTED).await?)
    }

    /// Wakes idle claimers (in every process); called once the work they
    /// should see is committed.
    fn wake(&self) {
        self.wakes.ask(None);
    }

    /// Wakes the idle claimers of `workflow` (in every process), once new
    /// instances of it are committed.
    fn wake_for(&self, workflow: &str) {
        self.wakes.ask(Some(workflow));
    }

    /// Creates `new`. `again`: an earlier attempt of this same call failed,
    /// perhaps after its commit landed; an instance with `new`'s id (minted
    /// for this call alone) is then that commit's, and is returned as
    /// created rather than inserted twice.
    pub(crate) async fn create(
        &self,
        new: &NewInstance,
        dedup: Option<&[Status]>,
        again: bool,
    ) -> Attempt<Result<Created, StoreError>> {
        let mut tx = self.begin().await?;
        let keyed = match (dedup, &new.key) {
            (Some(statuses), Some(key)) => {
                // Serializes creates of one (workflow, key) until commit;
                // under READ COMMITTED the lookups below then see what the
                // previous holder inserted (an earlier attempt of this
                // call, still committing, included).
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("{}\n{}\n{key}", self.lock_prefix, new.workflow))
                    .execute(&mut *tx)
                    .await?;
                Some((statuses, key))
            }
            _ => None,
        };
        if again {
            if let Some(row) = self.own_row(&mut tx, new).await? {
                return Ok(instance_row(&row).map(Created::New));
            }
        }
        if let Some((statuses, key)) = keyed {
            let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
            let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM instances WHERE workflow = $1 AND dedup_key = $2 \
                 AND status = ANY($3) ORDER BY id DESC LIMIT 1"
            )))
            .bind(&new.workflow)
            .bind(key)
            .bind(&statuses)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                return Ok(instance_row(&row).map(Created::Existing));
            }
        }
        let parents: Vec<&str> = new.parent.iter().map(InstanceId::as_str).collect();
        let cancelled = cancelled_parents(&mut tx, &parents).await?;
        let mut row = match insert(&mut tx, new).await {
            Ok(row) => row,
            // An earlier attempt of this call was still committing when
            // the lookup above ran: its row is this call's.
            Err(err) if again && taken_id(&err) => {
                drop(tx);
                let mut conn = self.pool.acquire().await?;
                return match self.own_row(&mut conn, new).await? {
                    Some(row) => Ok(instance_row(&row).map(Created::New)),
                    None => Err(err.into()),
                };
            }
            Err(err) => return Err(err.into()),
        };
        event(&mut tx, new.id.as_str(), new.created_at, "created").await?;
        let cancelled = cancelled.into_values().next();
        if let Some(message) = cancelled {
            row = cancel_new(&mut tx, new.id.as_str(), new.created_at, message).await?;
        }
        commit(tx).await?;
        if cancelled.is_none() {
            self.wake_for(&new.workflow);
        }
        Ok(instance_row(&row).map(Created::New))
    }

    /// The row of `new`'s id, an earlier attempt's of the same call.
    async fn own_row(&self, conn: &mut PgConnection, new: &NewInstance) -> Attempt<Option<PgRow>> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM instances WHERE id = $1"
        )))
        .bind(new.id.as_str())
        .fetch_optional(conn)
        .await?)
    }

    /// The rows of `new`'s ids, in their order, if an earlier attempt of
    /// the same call made them (all or none: one transaction).
    async fn own_rows(
        &self,
        conn: &mut PgConnection,
        new: &[NewInstance],
    ) -> Attempt<Option<Result<Vec<InstanceRow>, StoreError>>> {
        let ids: Vec<&str> = new.iter().map(|n| n.id.as_str()).collect();
        let mine = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM instances WHERE id = ANY($1)"
        )))
        .bind(&ids)
        .fetch_all(conn)
        .await?;
        if mine.is_empty() {
            return Ok(None);
        }
        let mut rows: HashMap<String, PgRow> = HashMap::new();
        for row in mine {
            let id: String = row.try_get("id")?;
            rows.insert(id, row);
        }
        Ok(Some(
            new.iter()
                .filter_map(|n| rows.get(n.id.as_str()))
                .map(instance_row)
                .collect(),
        ))
    }

    /// Creates every one of `new` in one transaction. `again`: as for
    /// [`Db::create`], the rows of an earlier attempt whose commit landed
    /// are returned instead of inserted twice (all or none of them are).
    pub(crate) async fn create_many(
        &self,
        new: &[NewInstance],
        again: bool,
    ) -> Attempt<Result<Vec<InstanceRow>, StoreError>> {
        let mut tx = self.begin().await?;
        if again {
            if let Some(rows) = self.own_rows(&mut tx, new).await? {
                return Ok(rows);
            }
        }
        let tags: Vec<String> = new.iter().map(|n| tags_json(&n.tags)).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO instances (id, workflow, status, input, tags, dedup_key, created_at, \
                 updated_at, run_at, deadline_at, parent_id) \
             SELECT id, workflow, 'pending', input, tags::jsonb, dedup_key, created_at, created_at, \
                 {due}, \
                 deadline_at, parent_id \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
                 $7::int8[], $8::int8[], $9::text[]) \
                 AS n(id, workflow, input, tags, dedup_key, created_at, run_at, deadline_at, parent_id) \
             RETURNING {COLUMNS}",
            due = due_now_capped("run_at", "created_at")
        )))
        .bind(new.iter().map(|n| n.id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.workflow.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.input.as_str()).collect::<Vec<_>>())
        .bind(&tags)
        .bind(new.iter().map(|n| n.key.as_deref()).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.created_at).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.run_at).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.deadline_at).collect::<Vec<_>>())
        .bind(
            new.iter()
                .map(|n| n.parent.as_ref().map(InstanceId::as_str))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await;
        let mut rows = match rows {
            Ok(rows) => rows,
            // An earlier attempt of this call was still committing when
            // the lookup above ran: its rows are this call's.
            Err(err) if again && taken_id(&err) => {
                drop(tx);
                let mut conn = self.pool.acquire().await?;
                let mine = self.own_rows(&mut conn, new).await?;
                return match mine {
                    Some(rows) => Ok(rows),
                    None => Err(err.into()),
                };
            }
            Err(err) => return Err(err.into()),
        };
        sqlx::query(
            "INSERT INTO events (instance_id, at, kind) \
             SELECT id, at, 'created' FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS e(id, at, n) \
             ORDER BY n",
        )
        .bind(new.iter().map(|n| n.id.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.created_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let parents: Vec<&str> = new
            .iter()
            .filter_map(|n| n.parent.as_ref().map(InstanceId::as_str))
            .collect();
        let cancelled = cancelled_parents(&mut tx, &parents).await?;
        for n in new {
            let parent = n.parent.as_ref().map(InstanceId::as_str);
            if let Some(message) = parent.and_then(|p| cancelled.get(p)) {
                rows.push(cancel_new(&mut tx, n.id.as_str(), n.created_at, message).await?);
            }
        }
        commit(tx).await?;
        let workflows: std::collections::BTreeSet<&str> =
            new.iter().map(|n| n.workflow.as_str()).collect();
        for workflow in workflows {
            self.wake_for(workflow);
        }
        // RETURNING gives no order guarantee; answer in the order asked.
        // A row cancelled after its insert comes later and replaces it.
        let mut by_id: HashMap<String, InstanceRow> = HashMap::with_capacity(rows.len());
        for row in &rows {
            match instance_row(row) {
                Ok(row) => {
                    by_id.insert(row.id.as_str().to_owned(), row);
                }
                Err(err) => return Ok(Err(err)),
            }
        }
        Ok(Ok(new
            .iter()
            .filter_map(|n| by_id.remove(n.id.as_str()))
            .collect()))
    }

    pub(crate) async fn claim(&self, req: &ClaimRequest, lease: LeaseAsk) -> Attempt<Vec<Claimed>> {
        // Before waiting for a connection too: a retry already too late
        // need not take one from the pool to give it back.
        if lease.too_late(lease.bind().1) {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        // SKIP LOCKED: concurrent claimers each take different rows and
        // never wait for one another. FOR UPDATE re-checks the conditions
        // on the newest version of a row changed since the snapshot. One
        // bounded range of `instances_runnable` per workflow, for its share
        // of the earliest due rows: other workflows' due rows are never
        // read.
        //
        // A waiting row is due at its `run_at` by the claimer's engine
        // clock (`due_by`, $3): that time came from an engine's clock (a
        // sleep's end, a retry, a timeout), and is compared as it always
        // was; the claim records its times by that clock too. A
        // running row's `run_at` is its lease's end by the database's
        // clock, and it is taken over only once that clock passed it.
        let (clock, length) = lease.bind();
        if lease.too_late(length) {
            tracing::debug!(
                left_ms = length,
                "claim attempt too late for its lease; claiming nothing"
            );
            return Ok(Vec::new());
        }
        let db = lease_clock(6);
        let end = lease_end(&db, 2);
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        // Each workflow's range is walked under locks for only its share of
        // the earliest due rows: locking `limit` rows in each, to keep the
        // earliest `limit` of them all, held the rest until commit, and
        // another worker claiming meanwhile skipped them all and came back
        // empty. The shares are read first without locks; a claimer that
        // finds some of its share locked takes the next rows of that range.
        let (workflows, shares) = if req.workflows.len() > 1 {
            let shares: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT d.workflow, count(*) FROM ( \
                     SELECT c.workflow, c.run_at FROM UNNEST($1::text[]) AS w(name) \
                     CROSS JOIN LATERAL ( \
                         SELECT workflow, run_at, id FROM instances WHERE {} \
                         ORDER BY run_at LIMIT $2 \
                     ) c \
                     ORDER BY c.run_at, c.id LIMIT $2 \
                 ) d GROUP BY d.workflow",
                claimable(&lease_clock(4))
            )))
            .bind(&req.workflows)
            .bind(limit)
            .bind(req.due_by)
            .bind(clock)
            .fetch_all(&mut *tx)
            .await?;
            if shares.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            shares.into_iter().unzip()
        } else {
            (req.workflows.clone(), vec![limit; req.workflows.len()])
        };
        let take = format!(
            "WITH due AS ( \
                 SELECT d.id AS due_id, d.run_at AS due_at FROM UNNEST($4::text[], $7::int8[]) AS w(name, share) \
                 CROSS JOIN LATERAL ( \
                     SELECT id, run_at FROM instances WHERE {due} \
                     ORDER BY run_at LIMIT w.share \
                     FOR UPDATE SKIP LOCKED \
                 ) d \
                 ORDER BY d.run_at, d.id LIMIT $5 \
             ) \
             UPDATE instances SET status = 'in_progress', lease_owner = $1, lease_expires_at = {end}, \
                 run_at = {end}, runs = {RUNS_PLUS_ONE}, updated_at = $3, started_at = COALESCE(started_at, $3), \
                 wait_event = NULL, wait_child = NULL, \
                 interrupted_runs = {INTERRUPTED_PLUS_ONE} \
             FROM due WHERE id = due.due_id \
             RETURNING {COLUMNS}, due.due_at, interrupted_runs",
            due = claimable(&db)
        );
        let mut rows: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(take.clone()))
            .bind(&req.owner)
            .bind(length)
            .bind(req.due_by)
            .bind(&workflows)
            .bind(limit)
            .bind(clock)
            .bind(&shares)
            .fetch_all(&mut *tx)
            .await?;
        // Some of the shares' rows were locked by another claimer (a
        // NOTIFY wakes every worker at once): what is left of the limit
        // goes to any workflow's next due rows, not to an empty answer
        // while other workflows' rows wait. The rows just taken are
        // leased now, so not taken twice.
        let asked: i64 = shares.iter().sum();
        let got = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        if req.workflows.len() > 1 && got < asked && got < limit {
            let left = limit - got;
            let more: Vec<PgRow> = sqlx::query(sqlx::AssertSqlSafe(take))
                .bind(&req.owner)
                .bind(length)
                .bind(req.due_by)
                .bind(&req.workflows)
                .bind(left)
                .bind(clock)
                .bind(vec![left; req.workflows.len()])
                .fetch_all(&mut *tx)
                .await?;
            rows.extend(more);
        }
        let mut claimed = Vec::with_capacity(rows.len());
        let mut failed: Vec<(String, String, Option<String>)> = Vec::new();
        for row in &rows {
            match instance_row(row) {
                Ok(mut instance) => {
                    // Stored by the database's clock; the claimer knows its
                    // lease's end by its own, as it asked for it.
                    instance.run_at = req.lease_until;
                    let lease = Lease {
                        instance: instance.id.clone(),
                        owner: req.owner.clone(),
                        run: instance.runs,
                    };
                    // `run_at` is now the lease's end; order by when it was due.
                    let due_at: Millis = row.try_get("due_at")?;
                    let interrupted: i32 = row.try_get("interrupted_runs")?;
                    claimed.push((
                        due_at,
                        Claimed {
                            row: instance,
                            lease,
                            steps: Vec::new(),
                            interrupted_runs: u32::try_from(interrupted.max(0)).unwrap_or(u32::MAX),
                        },
                    ));
                }
                Err(err) => {
                    let id: String = row.try_get("id")?;
                    tracing::error!(id = %id, error = %err, "failing an instance whose row is corrupt");
                    // A parent waiting for it wakes to see it failed.
                    let parent: Option<String> = row.try_get("parent_id").ok().flatten();
                    failed.push((id, err.to_string(), parent));
                }
            }
        }
        // A first run has no steps to replay; skip the lookup.
        let replay: Vec<&str> = claimed
            .iter()
            .filter(|(_, c)| c.row.runs > 1)
            .map(|(_, c)| c.row.id.as_str())
            .collect();
        if !replay.is_empty() {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT instance_id, {STEP_COLUMNS} FROM steps WHERE instance_id = ANY($1) ORDER BY seq"
            )))
            .bind(&replay)
            .fetch_all(&mut *tx)
            .await?;
            let mut steps: HashMap<String, Vec<StepRow>> = HashMap::new();
            let mut unreadable: HashMap<String, String> = HashMap::new();
            for row in &rows {
                let id: String = row.try_get("instance_id")?;
                if unreadable.contains_key(&id) {
                    continue;
                }
                match step_row(&id, row) {
                    Ok(step) => steps.entry(id).or_default().push(step),
                    // Fails the instance, as SQLite does: replayed without
                    // that step, its body would run a second time.
                    Err(err) => {
                        unreadable.insert(id, err.to_string());
                    }
                }
            }
            claimed.retain_mut(|(_, c)| {
                if let Some(error) = unreadable.remove(c.row.id.as_str()) {
                    tracing::error!(id = %c.row.id, %error, "failing an instance whose step row is corrupt");
                    let parent = c.row.parent.as_ref().map(|p| p.as_str().to_owned());
                    failed.push((c.row.id.as_str().to_owned(), error, parent));
                    return false;
                }
                if let Some(steps) = steps.remove(c.row.id.as_str()) {
                    c.steps = steps;
                }
                true
            });
        }
        for (id, error, parent) in &failed {
            sqlx::query(
                "UPDATE instances SET status = 'failed', error = $2, finished_at = $3, updated_at = $3, \
                 lease_owner = NULL, lease_expires_at = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .bind(req.due_by)
            .execute(&mut *tx)
            .await?;
            event_full(
                &mut tx,
                id,
                req.due_by,
                "failed",
                None,
                None,
                Some(error),
                None,
            )
            .await?;
            if let Some(parent) = parent {
                wake_parents(&mut tx, &[(id.as_str(), parent.as_str())], req.due_by).await?;
            }
        }
        if !claimed.is_empty() {
            // Oldest due first, and history in that order.
            claimed.sort_by(|(a_due, a), (b_due, b)| (a_due, &a.row.id).cmp(&(b_due, &b.row.id)));
        }
        let claimed: Vec<Claimed> = claimed.into_iter().map(|(_, c)| c).collect();
        if !claimed.is_empty() {
            let ids: Vec<&str> = claimed.iter().map(|c| c.row.id.as_str()).collect();
            sqlx::query(
                "INSERT INTO events (instance_id, at, kind) \
                 SELECT id, $2, 'started' FROM UNNEST($1::text[]) WITH ORDINALITY AS e(id, n) ORDER BY n",
            )
            .bind(&ids)
            .bind(req.due_by)
            .execute(&mut *tx)
            .await?;
        }
        commit(tx).await?;
        // A parent woken above for a failed child runs on any worker:
        // other processes' idle ones hear of it now, not at their next poll.
        if failed.iter().any(|(_, _, parent)| parent.is_some()) {
            self.wake();
        }
        Ok(claimed)
    }

    /// One statement, so one round trip on the hot path: the fence, the
    /// step (first record of a key wins) and its events. Idempotent: run
    /// again after an unclear commit, it finds the step and adds nothing.
    pub(crate) async fn commit_step(
        &self,
        lease: &Lease,
        step: &StepRow,
    ) -> Attempt<Result<(), StoreError>> {
        let kind = if step.error.is_some() {
            "step_failed"
        } else {
            "step_completed"
        };
        let held: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "WITH held AS ( \
                 SELECT id FROM instances WHERE {FENCE} FOR UPDATE \
             ), recorded AS ( \
                 INSERT INTO steps (instance_id, key, output, error, state, attempts, started_at, finished_at) \
                 SELECT id, $6, $7, $8, $5, $9, $10, $4 FROM held \
                 ON CONFLICT (instance_id, key) DO NOTHING \
                 RETURNING instance_id \
             ), updated AS ( \
                 UPDATE instances SET state = COALESCE($5, state), \
                     updated_at = CASE WHEN $5::text IS NULL THEN updated_at ELSE $4 END, \
                     interrupted_runs = 0, \
                     retry_attempts = CASE WHEN retry_key = $6 THEN NULL ELSE retry_attempts END, \
                     retry_key = CASE WHEN retry_key = $6 THEN NULL ELSE retry_key END \
                 WHERE id IN (SELECT instance_id FROM recorded) \
             ), logged AS ( \
                 INSERT INTO events (instance_id, at, kind, step, attempt, message, duration_ms) \
                 SELECT r.instance_id, $4, e.kind, $6, e.attempt, e.message, e.duration \
                 FROM recorded r, (VALUES \
                     (1, $11::text, $9::int8, $8::text, $4::int8 - $10::int8), \
                     (2, 'state_changed', NULL, NULL, NULL) \
                 ) AS e(n, kind, attempt, message, duration) \
                 WHERE e.n = 1 OR $5::text IS NOT NULL \
                 ORDER BY e.n \
             ) \
             SELECT EXISTS (SELECT 1 FROM held)"
        )))
        .bind(lease.instance.as_str())
        .bind(&lease.owner)
        .bind(lease.run)
        .bind(step.finished_at)
        .bind(&step.state)
        .bind(&step.key)
        .bind(&step.output)
        .bind(step.error.as_deref().map(text))
        .bind(i64::from(step.attempts))
        .bind(step.started_at)
        .bind(kind)
        .fetch_one(&self.pool)
        .await
        .map_err(autocommit)?;
        if !held {
            return lease_lost(lease);
        }
        Ok(Ok(()))
    }

    pub(crate) async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Attempt<Result<(), StoreError>> {
        let mut tx = self.begin().await?;
        // The row keeps the step's count too, as a suspension for its
        // backoff would: a run after a crash mid-backoff counts on.
        if !fence(&mut tx, lease, Some((step, attempt))).await? {
            return lease_lost(lease);
        }
        event_full(
            &mut tx,
            lease.instance.as_str(),
            at,
            "attempt_failed",
            Some(step),
            Some(attempt),
            Some(error),
            None,
        )
        .await?;
        commit(tx).await?;
        Ok(Ok(()))
    }

    pub(crate) async fn finish(
        &self,
        lease: &Lease,
        finish: &Finish,
    ) -> Attempt<Result<(), StoreError>> {
        let mut tx = self.begin().await?;
        if finish.status == Status::TimedOut {
            // A timeout cancels the unfinished descendants below: lock them
            // before this row, as a cancel does (see the lock order). The
            // fence below still decides; a lost lease just unlocks them.
            lock_tree(&mut tx, lease.instance.as_str()).await?;
        }
        let done: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET status = $4, output = $5, error = $6, state = COALESCE($7, state), \
                 updated_at = $8, finished_at = $8, lease_owner = NULL, lease_expires_at = NULL \
             WHERE {FENCE} AND ($4 <> 'timed_out' OR deadline_at IS NULL OR deadline_at <= $8) \
             RETURNING parent_id"
        )))
        .bind(lease.instance.as_str())
        .bind(&lease.owner)
        .bind(lease.run)
        .bind(finish.status.as_str())
        .bind(&finish.output)
        .bind(finish.error.as_deref().map(text))
        .bind(&finish.state)
        .bind(finish.at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(parent) = done else {
            if finish.status == Status::TimedOut {
                // The row as the update saw it, after any `set_deadline` it
                // waited for: held, so it was the deadline that failed it.
                let held: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT 1 FROM instances WHERE {FENCE}"
                )))
                .bind(lease.instance.as_str())
                .bind(&lease.owner)
                .bind(lease.run)
                .fetch_optional(&mut *tx)
                .await?;
                if held.is_some() {
                    return Ok(Err(StoreError::DeadlineMoved(lease.instance.clone())));
                }
            }
            return lease_lost(lease);
        };
        event_full(
            &mut tx,
            lease.instance.as_str(),
            finish.at,
            finish.status.as_str(),
            None,
            None,
            finish.error.as_deref(),
            None,
        )
        .await?;
        let mut woke = 0;
        if let Some(parent) = parent {
            let pairs = [(lease.instance.as_str(), parent.as_str())];
            woke += wake_parents(&mut tx, &pairs, finish.at).await?;
        }
        // A timeout is the clock cancelling the instance: its unfinished
        // descendants end with it. A completed or failed parent leaves them
        // running (a child may outlive it).
        let mut cancelled = Cancelled::default();
        if finish.status == Status::TimedOut {
            let root = lease.instance.as_str();
            cancelled = cancel_tree(&mut tx, root, finish.at, "parent timed out").await?;
        }
        commit(tx).await?;
        if woke + cancelled.woke > 0 {
            self.wake();
        }
        // Its descendants running in other processes stop at once.
        if finish.status == Status::TimedOut {
            self.announce_cancel(&lease.instance, cancelled.running);
        }
        Ok(Ok(()))
    }

    pub(crate) async fn release(
        &self,
        lease: &Lease,
        at: Millis,
    ) -> Attempt<Result<(), StoreError>> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET status = 'pending', run_at = LEAST($4, {DB_CLOCK}), updated_at = $4, \
                 lease_owner = NULL, lease_expires_at = NULL \
             WHERE {FENCE}"
        )))
        .bind(lease.instance.as_str())
        .bind(&lease.owner)
        .bind(lease.run)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return lease_lost(lease);
        }
        event(&mut tx, lease.instance.as_str(), at, "released").await?;
        commit(tx).await?;
        self.wake();
        Ok(Ok(()))
    }

    pub(crate) async fn renew(&self, leases: &[Lease], ask: LeaseAsk) -> Attempt<Vec<Renewal>> {
        let mut conn = ClosedUnlessDone(self.leases.acquire().await?, false);
        let out = self.renew_on(&mut conn.0, leases, ask).await;
        conn.1 = out.is_ok();
        out
    }

    async fn renew_on(
        &self,
        conn: &mut PgConnection,
        leases: &[Lease],
        ask: LeaseAsk,
    ) -> Attempt<Vec<Renewal>> {
        // The rows are unrelated, of any depth: one UPDATE waiting for each
        // in turn would hold some while it waited for others, out of the
        // lock order (with a cancel holding two of them, each waited for
        // the other). So the rows nobody holds are renewed at once, and each
        // one another transaction holds (a step being recorded, a cancel)
        // is renewed alone after, holding nothing else while it waits.
        let rows = renew_rows(conn, leases, ask, true).await?;
        let mut out = Vec::with_capacity(leases.len());
        for row in rows {
            let Some(lease) = usize::try_from(row.n - 1).ok().and_then(|i| leases.get(i)) else {
                continue;
            };
            let row = if row.busy {
                // Waited for a while only: a transaction that holds the row
                // and hangs (its client cut off mid-transaction) must not
                // stall the renewal of every other lease. Left out of the
                // answer, this lease keeps its end and lapses if it stays so.
                let mut tx = sqlx::Connection::begin_with(&mut *conn, READ_COMMITTED).await?;
                sqlx::query("SET LOCAL lock_timeout = '1s'")
                    .execute(&mut *tx)
                    .await?;
                let alone = match renew_rows(&mut tx, std::slice::from_ref(lease), ask, false).await
                {
                    Ok(alone) => alone,
                    Err(failure) if lock_timed_out(&failure.err) => {
                        tracing::warn!(id = %lease.instance, "a lease was not renewed: another transaction has held its row for over a second");
                        continue;
                    }
                    Err(failure) => return Err(failure),
                };
                commit(tx).await?;
                match alone.into_iter().next() {
                    Some(row) => row,
                    None => continue,
                }
            } else {
                row
            };
            out.push(Renewal {
                lease: lease.clone(),
                held: row.held,
                until: ask.until.saturating_sub(row.short),
                deadline_at: row.deadline_at,
                pause_requested: row.held && row.pause_requested,
            });
        }
        Ok(out)
    }

    pub(crate) async fn cancel(&self, id: &InstanceId, at: Millis) -> Attempt<Control> {
        let mut tx = self.begin().await?;
        // The whole tree, deepest first, then the root: not the root first
        // (see the lock order). A terminal root leaves the tree alone.
        let control = control_of(lock_tree(&mut tx, id.as_str()).await?);
        if control != Control::Applied {
            return Ok(control);
        }
        let cancelled = cancel_tree(&mut tx, id.as_str(), at, "parent cancelled").await?;
        commit(tx).await?;
        if cancelled.woke > 0 {
            self.wake();
        }
        self.announce_cancel(id, cancelled.running);
        Ok(control)
    }

    /// Tells the workers of every process that the instances `running`
    /// (which workers were running) were cancelled, so the one running each
    /// stops its handler at once, and that `root` ended, so callers waiting
    /// for it look again (see `Store::cancellations`). Once
    /// committed, on a task of its own (a busy pool does not hold up the
    /// cancel), and without waiting for its own flush: a notification lost
    /// leaves the stop to the heartbeat, within about a second.
    fn announce_cancel(&self, root: &InstanceId, mut running: Vec<String>) {
        if !running.iter().any(|id| id == root.as_str()) {
            running.push(root.to_string());
        }
        let (pool, channel) = (self.pool.clone(), self.channel.clone());
        tokio::spawn(async move {
            for payload in crate::wake::cancel_payloads(&running) {
                let sent = sqlx::query(
                    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)",
                )
                .bind(&channel)
                .bind(payload)
                .execute(&pool)
                .await;
                if let Err(err) = sent {
                    tracing::debug!(error = %err, "NOTIFY of a cancel failed");
                }
            }
        });
    }

    pub(crate) async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Attempt<Control> {
        let mut tx = self.begin().await?;
        let control = control(&mut tx, id).await?;
        if control != Control::Applied {
            return Ok(control);
        }
        // A waiting instance is due at its deadline at the latest, to end
        // there: only a running handler watches the deadline itself. One set
        // while paused is set in paused time: resume adds only what is
        // paused from now on.
        // A deadline already past is due now, by the database's clock at
        // the latest (a caller's clock may run ahead).
        let sooner: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET deadline_at = $2, updated_at = $3, \
             run_at = CASE WHEN status IN ('pending', 'listening') AND run_at > $2 \
             THEN {due} ELSE run_at END, \
             paused_at = CASE WHEN status = 'paused' THEN $3 ELSE paused_at END \
             FROM (SELECT run_at AS old_run_at FROM instances WHERE id = $1) AS old \
             WHERE id = $1 \
             RETURNING status IN ('pending', 'listening') AND run_at < old.old_run_at",
            due = due_now_capped("$2", "$3"),
        )))
        .bind(id.as_str())
        .bind(deadline_at)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        let message = format_millis(deadline_at);
        event_full(
            &mut tx,
            id.as_str(),
            at,
            "deadline_changed",
            None,
            None,
            Some(&message),
            None,
        )
        .await?;
        commit(tx).await?;
        // Due sooner: idle workers in other processes nap until then, not
        // until the time they had read.
        if sooner {
            self.wake();
        }
        Ok(control)
    }

    pub(crate) async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Attempt<u64> {
        // Trees go whole: roots (no parent row) that ended and were created
        // (ids sort by creation) before the cutoff, in id order, a page at
        // a time. A tree not all ended is passed over, not counted, so
        // held-back trees never fill a batch. An ended tree can neither
        // change nor grow (only running parents start children): it is
        // checked without locks, then locked (waiting for a concurrent
        // write such as a refused `send_event`) and deleted.
        let mut tx = self.begin().await?;
        let floor = InstanceId::floor_at(ended_before);
        let page = limit.clamp(1, 500);
        // Two texts, not `($2 IS NULL OR workflow = $2)`: under the generic
        // plan a prepared statement settles on, that catch-all could not use
        // the `(workflow, id)` index, and one workflow's purge would walk
        // every old row of all of them.
        let by_workflow = if workflow.is_some() {
            "AND i.workflow = $2"
        } else {
            "AND $2::text IS NULL"
        };
        let roots_sql = format!(
            "SELECT i.id FROM instances i \
             WHERE i.status IN {TERMINAL} AND i.id > $3 AND i.id < $4 AND i.finished_at < $1 \
               {by_workflow} \
               AND NOT EXISTS (SELECT 1 FROM instances p WHERE p.id = i.parent_id) \
               AND NOT EXISTS (SELECT 1 FROM instances k \
                               WHERE k.parent_id = i.id AND k.status NOT IN {TERMINAL}) \
             ORDER BY i.id LIMIT $5"
        );
        let tree_sql = format!(
            "WITH RECURSIVE tree(id) AS ( \
                 SELECT $1::text COLLATE \"C\" \
                 UNION SELECT i.id FROM instances i JOIN tree t ON i.parent_id = t.id \
             ) \
             SELECT i.id, COALESCE(i.status IN {TERMINAL} AND i.finished_at < $2, false) \
             FROM instances i WHERE i.id IN (SELECT id FROM tree)"
        );
        let (mut after, mut trees, mut deleted) = (String::new(), 0, 0);
        'scan: loop {
            let roots: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(roots_sql.as_str()))
                .bind(ended_before)
                .bind(workflow)
                .bind(&after)
                .bind(floor.as_str())
                .bind(page as i64)
                .fetch_all(&mut *tx)
                .await?;
            for root in &roots {
                after.clone_from(root);
                let members: Vec<(String, bool)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(tree_sql.as_str()))
                        .bind(root)
                        .bind(ended_before)
                        .fetch_all(&mut *tx)
                        .await?;
                if members.is_empty() || !members.iter().all(|(_, ended)| *ended) {
                    continue;
                }
                let ids: Vec<String> = members.into_iter().map(|(id, _)| id).collect();
                // In id order: two purges of one tree lock it in the same order.
                sqlx::query("SELECT 1 FROM instances WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                // Read again under the locks: a child created meanwhile (by a
                // handler that had not yet heard its parent ended, holding
                // the parent `FOR SHARE`, which the lock above waited for)
                // would be left pointing at a deleted parent. A tree goes
                // whole or not at all.
                let locked: Vec<(String, bool)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(tree_sql.as_str()))
                        .bind(root)
                        .bind(ended_before)
                        .fetch_all(&mut *tx)
                        .await?;
                if locked.len() != ids.len() || !locked.iter().all(|(_, ended)| *ended) {
                    continue;
                }
                for sql in [
                    "DELETE FROM steps WHERE instance_id = ANY($1)",
                    "DELETE FROM events WHERE instance_id = ANY($1)",
                    "DELETE FROM inbox WHERE instance_id = ANY($1)",
                    "DELETE FROM event_keys WHERE instance_id = ANY($1)",
                ] {
                    sqlx::query(sql).bind(&ids).execute(&mut *tx).await?;
                }
                let gone = sqlx::query("DELETE FROM instances WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                deleted += gone;
                // A tree another purge deleted meanwhile (its lock waited
                // for that one's commit) takes no room in this batch.
                if gone > 0 {
                    trees += 1;
                }
                if trees >= limit {
                    break 'scan;
                }
            }
            if roots.len() < page {
                break;
            }
        }
        commit(tx).await?;
        Ok(deleted)
    }

    pub(crate) async fn release_owner(&self, owner: &str, at: Millis) -> Attempt<u64> {
        // The rows are unrelated, as a heartbeat's are (see `renew`): the
        // ones nobody holds are freed at once, then each of the rest in a
        // transaction of its own, which waits for it holding nothing else.
        // Run again after a failure part way, it frees only what is left.
        let mut freed = self.release_owned(owner, None, at).await?;
        let busy: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM instances WHERE lease_owner = $1 AND status NOT IN {TERMINAL}"
        )))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        for id in &busy {
            freed += self.release_owned(owner, Some(id), at).await?;
        }
        if freed > 0 {
            self.wake();
        }
        Ok(freed)
    }

    /// Frees the leases `owner` holds on the rows no other transaction
    /// holds (SKIP LOCKED), or on `only` (waiting for it), each with a
    /// `released` event; returns how many.
    async fn release_owned(&self, owner: &str, only: Option<&str>, at: Millis) -> Attempt<u64> {
        let mut tx = self.begin().await?;
        let skip = if only.is_none() { "SKIP LOCKED" } else { "" };
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET lease_owner = NULL, lease_expires_at = NULL, updated_at = $2, \
                 run_at = CASE WHEN status = 'in_progress' THEN LEAST($2, {DB_CLOCK}) ELSE run_at END, \
                 interrupted_runs = {INTERRUPTED_PLUS_ONE}, \
                 status = CASE WHEN status = 'in_progress' THEN 'pending' ELSE status END \
             WHERE id IN ( \
                 SELECT id FROM instances \
                 WHERE lease_owner = $1 AND status NOT IN {TERMINAL} AND ($3::text IS NULL OR id = $3) \
                 FOR UPDATE {skip} \
             ) AND lease_owner = $1 AND status NOT IN {TERMINAL} RETURNING id"
        )))
        .bind(owner)
        .bind(at)
        .bind(only)
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO events (instance_id, at, kind, message) \
                 SELECT id, $2, 'released', 'worker died' FROM UNNEST($1::text[]) AS e(id)",
            )
            .bind(&ids)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        commit(tx).await?;
        Ok(ids.len() as u64)
    }

    pub(crate) async fn suspend(
        &self,
        lease: &Lease,
        s: &Suspend,
    ) -> Attempt<Result<(), StoreError>> {
        let mut tx = self.begin().await?;
        // Whether the child it waits for already ended, read under a share
        // lock: a finish (or cancel) of the child that has run its wake-up
        // but not committed holds the child's row, so this waits for it and
        // then sees it ended. A plain read would see it running, and the
        // wake-up, run while this instance still ran, woke nothing: the
        // parent would sleep on. A child ending after this lock waits for
        // this transaction, then finds the parent listening. The child is
        // locked before the parent, in the lock order (a finish's, and a
        // cancel's of the parent).
        let child_done = match &s.wait_child {
            Some(child) => sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(format!(
                "SELECT status IN {TERMINAL} FROM instances WHERE id = $1 FOR SHARE"
            )))
            .bind(child.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(false),
            None => false,
        };
        // Locks the row: a send_event that wants to wake it waits for this
        // transaction, then sees it listening.
        let pause: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pause_requested FROM instances WHERE {FENCE} FOR UPDATE"
        )))
        .bind(lease.instance.as_str())
        .bind(&lease.owner)
        .bind(lease.run)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(pause) = pause else {
            return lease_lost(lease);
        };
        // Checked in the same transaction as the suspension: a wake-up that
        // arrived while the handler ran is not lost.
        let event_waiting = match &s.wait_event {
            Some(name) => sqlx::query_scalar::<_, i32>(
                "SELECT 1 FROM inbox WHERE instance_id = $1 AND name = $2 LIMIT 1",
            )
            .bind(lease.instance.as_str())
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some(),
            None => false,
        };
        // Paused by the engine (its reason in the history) or as asked.
        let paused_here = s.status == Status::Paused;
        let (status, run_at, kind, message, paused_at) = if paused_here || pause {
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
        // `run_at` never later than the stored deadline: one moved while
        // the handler ran may not have reached it yet.
        // Due now (the event or the child's end already there): by the
        // database's clock at the latest, as for a wake-up.
        let stored_run_at: Millis = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET status = $2, \
                 run_at = LEAST({due}, \
                     COALESCE(deadline_at, $3)), \
                 wait_event = $4, wait_child = $5, \
                 retry_key = $6, retry_attempts = $7, state = COALESCE($8, state), updated_at = $9, \
                 paused_at = $10, pause_requested = FALSE, lease_owner = NULL, lease_expires_at = NULL, \
                 interrupted_runs = 0 \
             WHERE id = $1 RETURNING run_at",
            due = due_now_capped("$3", "$9"),
        )))
        .bind(lease.instance.as_str())
        .bind(status.as_str())
        .bind(run_at)
        .bind(&s.wait_event)
        .bind(s.wait_child.as_ref().map(InstanceId::as_str))
        .bind(s.retry.as_ref().map(|(k, _)| k.as_str()))
        .bind(s.retry.as_ref().map(|(_, n)| i64::from(*n)))
        .bind(&s.state)
        .bind(s.at)
        .bind(paused_at)
        .fetch_one(&mut *tx)
        .await?;
        event_full(
            &mut tx,
            lease.instance.as_str(),
            s.at,
            kind,
            None,
            None,
            message.as_deref(),
            None,
        )
        .await?;
        commit(tx).await?;
        // Due now, also when a deadline already past pulled it in: other
        // processes should see to it (to time it out) at once.
        if status != Status::Paused && stored_run_at <= s.at {
            self.wake();
        }
        Ok(Ok(()))
    }

    pub(crate) async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        token: Option<&str>,
        at: Millis,
    ) -> Attempt<Control> {
        let mut tx = self.begin().await?;
        // Locks the instance's row: sends to one instance take turns.
        let control = control(&mut tx, id).await?;
        if let (Some(key), Control::Applied | Control::Terminal(_)) = (key, control) {
            // A key seen before is a duplicate, whatever became of the
            // instance since; a new one is used up only by an event kept.
            // Unless this very call recorded it (its token): an attempt
            // whose commit landed though its answer was lost delivered it.
            let seen: Option<Option<String>> = sqlx::query_scalar(
                "SELECT token FROM event_keys WHERE instance_id = $1 AND key = $2",
            )
            .bind(id.as_str())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            match seen {
                Some(seen) if token.is_some() && seen.as_deref() == token => {
                    return Ok(Control::Applied)
                }
                Some(_) => return Ok(Control::Duplicate),
                None => {}
            }
            if control == Control::Applied {
                sqlx::query(
                    "INSERT INTO event_keys (instance_id, key, sent_at, token) VALUES ($1, $2, $3, $4)",
                )
                .bind(id.as_str())
                .bind(key)
                .bind(at)
                .bind(token)
                .execute(&mut *tx)
                .await?;
            }
        }
        if control != Control::Applied {
            return Ok(control);
        }
        sqlx::query(
            "INSERT INTO inbox (instance_id, name, payload, sent_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(payload)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let woke = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET status = 'pending', run_at = LEAST($2, {DB_CLOCK}), wait_event = NULL \
             WHERE id = $1 AND status = 'listening' AND wait_event = $3"
        )))
        .bind(id.as_str())
        .bind(at)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        event_full(
            &mut tx,
            id.as_str(),
            at,
            "event_sent",
            None,
            None,
            Some(name),
            None,
        )
        .await?;
        commit(tx).await?;
        if woke {
            self.wake();
        }
        Ok(control)
    }

    pub(crate) async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Attempt<Result<Option<String>, StoreError>> {
        let mut tx = self.begin().await?;
        // Fenced without counting as progress: a look that finds nothing
        // starts no count over.
        let held: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM instances WHERE {FENCE} FOR UPDATE"
        )))
        .bind(lease.instance.as_str())
        .bind(&lease.owner)
        .bind(lease.run)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return lease_lost(lease);
        }
        // A key recorded already (a late run of the same wait) answers
        // with its record and takes nothing: an event taken under it
        // would be lost, its record the earlier one's.
        let recorded: Option<Option<String>> =
            sqlx::query_scalar("SELECT output FROM steps WHERE instance_id = $1 AND key = $2")
                .bind(lease.instance.as_str())
                .bind(step)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(output) = recorded {
            commit(tx).await?;
            return Ok(Ok(output));
        }
        // Only the lease holder takes from this inbox, and the fence above
        // holds the instance's row lock: no two takers race.
        let taken: Option<String> = sqlx::query_scalar(
            "DELETE FROM inbox WHERE seq = ( \
                 SELECT seq FROM inbox WHERE instance_id = $1 AND name = $2 ORDER BY seq LIMIT 1 \
             ) RETURNING payload",
        )
        .bind(lease.instance.as_str())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(payload) = &taken {
            // A step recorded: `updated_at` moves as for any other, and the
            // run got somewhere.
            sqlx::query("UPDATE instances SET updated_at = $2, interrupted_runs = 0 WHERE id = $1")
                .bind(lease.instance.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO steps (instance_id, key, output, attempts, started_at, finished_at) \
                 VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (instance_id, key) DO NOTHING",
            )
            .bind(lease.instance.as_str())
            .bind(step)
            .bind(payload)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            event_full(
                &mut tx,
                lease.instance.as_str(),
                at,
                "event_received",
                Some(step),
                None,
                Some(name),
                None,
            )
            .await?;
        }
        commit(tx).await?;
        Ok(Ok(taken))
    }

    pub(crate) async fn pause(&self, id: &InstanceId, at: Millis) -> Attempt<Control> {
        let mut tx = self.begin().await?;
        let control = control(&mut tx, id).await?;
        if control != Control::Applied {
            return Ok(control);
        }
        let paused = sqlx::query(
            "UPDATE instances SET status = 'paused', paused_at = $2, updated_at = $2 \
             WHERE id = $1 AND status IN ('pending', 'listening')",
        )
        .bind(id.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if paused {
            event(&mut tx, id.as_str(), at, "paused").await?;
        } else {
            sqlx::query(
                "UPDATE instances SET pause_requested = TRUE WHERE id = $1 AND status = 'in_progress'",
            )
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        commit(tx).await?;
        Ok(control)
    }

    pub(crate) async fn resume(&self, id: &InstanceId, at: Millis) -> Attempt<Control> {
        let mut tx = self.begin().await?;
        let control = control(&mut tx, id).await?;
        if control != Control::Applied {
            return Ok(control);
        }
        let resumed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE instances SET status = 'pending', \
                 run_at = CASE WHEN runs = 0 THEN GREATEST(LEAST($2, {DB_CLOCK}), run_at) \
                     ELSE LEAST($2, {DB_CLOCK}) END, \
                 updated_at = $2, pause_requested = FALSE, \
                 deadline_at = deadline_at + ($2 - COALESCE(paused_at, $2)), paused_at = NULL, \
                 interrupted_runs = 0 \
             WHERE id = $1 AND status = 'paused'"
        )))
        .bind(id.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if resumed {
            event(&mut tx, id.as_str(), at, "resumed").await?;
        } else {
            sqlx::query("UPDATE instances SET pause_requested = FALSE WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        commit(tx).await?;
        if resumed {
            self.wake();
        }
        Ok(control)
    }

    pub(crate) async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, &str)>,
    ) -> Attempt<()> {
        // Idempotent: a retry after an unclear commit cannot move it back.
        sqlx::query(
            "INSERT INTO schedules AS s (workflow, checked_until, last_tick, last_instance) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workflow) DO UPDATE SET \
                 checked_until = GREATEST(s.checked_until, EXCLUDED.checked_until), \
                 last_instance = CASE WHEN EXCLUDED.last_tick IS NOT NULL \
                     AND (s.last_tick IS NULL OR EXCLUDED.last_tick > s.last_tick) \
                     THEN EXCLUDED.last_instance ELSE s.last_instance END, \
                 last_tick = CASE WHEN EXCLUDED.last_tick IS NOT NULL \
                     AND (s.last_tick IS NULL OR EXCLUDED.last_tick > s.last_tick) \
                     THEN EXCLUDED.last_tick ELSE s.last_tick END",
        )
        .bind(workflow)
        .bind(checked_until)
        .bind(fired.map(|(tick, _)| tick))
        .bind(fired.map(|(_, id)| id))
        .execute(&self.pool)
        .await
        .map_err(autocommit)?;
        Ok(())
    }

    pub(crate) async fn put_definitions(
        &self,
        rows: &[(String, String)],
        at: Millis,
    ) -> Attempt<()> {
        // Sorted, so engines starting together lock the rows in one order.
        let mut rows: Vec<&(String, String)> = rows.iter().collect();
        rows.sort();
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, READ_COMMITTED).await?;
        for (name, json) in rows {
            sqlx::query(
                "INSERT INTO definitions (name, definition, recorded_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, \
                     recorded_at = EXCLUDED.recorded_at",
            )
            .bind(name)
            .bind(json)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await.map_err(autocommit)?;
        Ok(())
    }
}

/// One lease as a renewal statement answers it.
struct RenewRow {
    /// The lease's place in the list, from 1.
    n: i64,
    held: bool,
    /// How much earlier than asked the lease ends (an end kept).
    short: Millis,
    deadline_at: Option<Millis>,
    pause_requested: bool,
    /// Skipped: another transaction held the row.
    busy: bool,
}

/// One statement: extends the held leases among `leases` to `ask`'s end
/// (by the database's clock, see [`LeaseAsk`]; idempotent, so a retry after
/// an unclear commit is harmless) and reads every deadline. With
/// `skip_locked`, a row another transaction holds is skipped and answered
/// `busy` instead of waited for (see [`Db::renew`]).
async fn renew_rows(
    conn: &mut PgConnection,
    leases: &[Lease],
    ask: LeaseAsk,
    skip_locked: bool,
) -> Attempt<Vec<RenewRow>> {
    let ids: Vec<&str> = leases.iter().map(|l| l.instance.as_str()).collect();
    let owners: Vec<&str> = leases.iter().map(|l| l.owner.as_str()).collect();
    let runs: Vec<i64> = leases.iter().map(|l| l.run).collect();
    let skip = if skip_locked { "SKIP LOCKED" } else { "" };
    let (clock, length) = ask.bind();
    let end = lease_end(&lease_clock(5), 1);
    // Extended only once a sixth of the lease went (so the end stays at
    // least five sixths of a lease away, 25 s of the default 30, for an
    // outage to be ridden out): an end kept as it was
    // leaves `run_at` (indexed) unchanged, so PostgreSQL updates the row
    // in place (HOT) instead of adding an entry to each of its indexes at
    // every heartbeat. The worker learns the end kept (`short` of the one
    // asked) and judges the lease by it.
    let kept = format!(
        "CASE WHEN i.lease_expires_at > {end} - $1::int8 / 6 AND i.lease_expires_at <= {end} \
         THEN i.lease_expires_at ELSE {end} END"
    );
    // The deadline and pause request as the renewal left them where it
    // renewed (it may have waited for a change); otherwise as of the start.
    let rows: Vec<(i64, bool, Millis, Option<Millis>, bool, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH asked AS ( \
             SELECT * FROM UNNEST($2::text[], $3::text[], $4::int8[]) WITH ORDINALITY AS l(id, owner, run, n) \
         ), locked AS ( \
             SELECT i.id FROM instances i JOIN asked ON i.id = asked.id \
             WHERE i.lease_owner = asked.owner AND i.runs = asked.run AND i.status = 'in_progress' \
             FOR UPDATE OF i {skip} \
         ), renewed AS ( \
             UPDATE instances i SET lease_expires_at = {kept}, run_at = {kept} FROM asked \
             WHERE i.id = asked.id AND i.id IN (SELECT id FROM locked) \
               AND i.lease_owner = asked.owner AND i.runs = asked.run AND i.status = 'in_progress' \
             RETURNING asked.n, i.deadline_at, i.pause_requested, \
                 GREATEST({end} - i.lease_expires_at, 0)::int8 AS short \
         ) \
         SELECT asked.n, renewed.n IS NOT NULL, COALESCE(renewed.short, 0), \
             CASE WHEN renewed.n IS NULL THEN i.deadline_at ELSE renewed.deadline_at END, \
             COALESCE(renewed.pause_requested, i.pause_requested, FALSE), \
             renewed.n IS NULL AND COALESCE(i.lease_owner = asked.owner AND i.runs = asked.run \
                 AND i.status = 'in_progress', FALSE) \
         FROM asked LEFT JOIN renewed ON renewed.n = asked.n LEFT JOIN instances i ON i.id = asked.id \
         ORDER BY asked.n"
    )))
    .bind(length)
    .bind(&ids)
    .bind(&owners)
    .bind(&runs)
    .bind(clock)
    .fetch_all(conn)
    .await
    .map_err(autocommit)?;
    Ok(rows
        .into_iter()
        .map(
            |(n, held, short, deadline_at, pause_requested, busy)| RenewRow {
                n,
                held,
                short,
                deadline_at,
                pause_requested,
                busy,
            },
        )
        .collect())
}

pub(crate) async fn insert(
    conn: &mut PgConnection,
    new: &NewInstance,
) -> Result<PgRow, sqlx::Error> {
    // Due now (run_at no later than its creation): by the database's clock
    // at the latest, as a wake-up is. A delayed start keeps its time.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO instances (id, workflow, status, input, tags, dedup_key, created_at, updated_at, \
             run_at, deadline_at, parent_id) \
         VALUES ($1, $2, 'pending', $3, $4::jsonb, $5, $6, $6, \
             {due}, $8, $9) \
         RETURNING {COLUMNS}",
        due = due_now_capped("$7", "$6")
    )))
    .bind(new.id.as_str())
    .bind(&new.workflow)
    .bind(&new.input)
    .bind(tags_json(&new.tags))
    .bind(&new.key)
    .bind(new.created_at)
    .bind(new.run_at)
    .bind(new.deadline_at)
    .bind(new.parent.as_ref().map(InstanceId::as_str))
    .fetch_one(conn)
    .await
}

/// Free text as PostgreSQL can store it. Its text type cannot hold NUL,
/// which error texts (a handler's error chain, a panic message) may carry;
/// a write that failed on one would leave the run's outcome unrecorded, and
/// the run would be run again, and fail again, for ever. NUL becomes
/// U+FFFD, the rest is kept.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Which of `parents` are cancelled or timed out, with the message their
/// children are cancelled with ([`cancelled_with_parent`]), locking them
/// (FOR SHARE) until the transaction ends: a cancel or timeout of one waits
/// for the child inserted here and then cancels it with its parent, or has
/// committed and is seen here.
async fn cancelled_parents(
    conn: &mut PgConnection,
    parents: &[&str],
) -> Result<HashMap<String, &'static str>, sqlx::Error> {
    if parents.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM instances WHERE id = ANY($1) ORDER BY id FOR SHARE")
            .bind(parents)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, status)| {
            let message = cancelled_with_parent(status.parse().ok()?)?;
            Some((id, message))
        })
        .collect())
}

/// Cancels an instance just inserted because its parent is cancelled (its
/// handler, in another process, had not heard yet when it started it): it
/// never runs, as if the cancel had found it.
async fn cancel_new(
    conn: &mut PgConnection,
    id: &str,
    at: Millis,
    message: &str,
) -> Result<PgRow, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE instances SET status = 'cancelled', finished_at = $2 WHERE id = $1 \
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    event_full(conn, id, at, "cancelled", None, None, Some(message), None).await?;
    Ok(row)
}

fn tags_json(tags: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".to_owned())
}

/// Bumps `updated_at`, zeroes the count of interrupted runs (the run got
/// somewhere) and records a step's failed attempts, when given,
/// if `lease` is current, locking the row; false when it is not.
async fn fence(
    conn: &mut PgConnection,
    lease: &Lease,
    retry: Option<(&str, u32)>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE instances SET interrupted_runs = 0, \
             retry_key = COALESCE($4, retry_key), retry_attempts = COALESCE($5, retry_attempts) \
         WHERE {FENCE}"
    )))
    .bind(lease.instance.as_str())
    .bind(&lease.owner)
    .bind(lease.run)
    .bind(retry.map(|(step, _)| step))
    .bind(retry.map(|(_, attempts)| i64::from(attempts)))
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Whether a control operation applies to `id` (it exists and is
/// unfinished), locking its row until the transaction ends.
async fn control(conn: &mut PgConnection, id: &InstanceId) -> Result<Control, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM instances WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(control_of(status))
}

/// What a control operation does to an instance with `status` (`None`: no
/// such instance).
fn control_of(status: Option<String>) -> Control {
    match status.map(|s| s.parse::<Status>()) {
        None => Control::NotFound,
        Some(Ok(status)) if status.is_terminal() => Control::Terminal(status),
        // An unreadable status is treated as unfinished, so it can be cancelled.
        Some(_) => Control::Applied,
    }
}

/// Locks, in the [lock order](self#lock-order), the unfinished descendants
/// of `root`, deepest first, then `root` itself whatever its status, until
/// the transaction ends; returns `root`'s status (`None`: no such row),
/// as it is once locked. A cancel or a timeout takes this before it writes
/// any of them: walking down from the root it would hold each parent while
/// waiting for its children, the reverse of a child's finish and of a
/// parent's suspend.
///
/// The path guards the walk against a cycle of `parent_id`s (only a
/// hand-edited row could make one), as `UNION` does in [`cancel_tree`].
async fn lock_tree(conn: &mut PgConnection, root: &str) -> Result<Option<String>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE tree(id, path) AS ( \
             SELECT $1::text COLLATE \"C\", ARRAY[$1::text COLLATE \"C\"] \
             UNION ALL SELECT i.id, t.path || i.id FROM instances i JOIN tree t ON i.parent_id = t.id \
             WHERE i.id <> ALL (t.path) \
         ) \
         SELECT i.id, i.status FROM instances i JOIN tree t ON i.id = t.id \
         WHERE i.id = $1 OR i.status NOT IN {TERMINAL} \
         ORDER BY cardinality(t.path) DESC, i.id \
         FOR UPDATE OF i"
    )))
    .bind(root)
    .fetch_all(conn)
    .await?;
    // The root sorts last; a row of it is the last one.
    Ok(rows
        .into_iter()
        .last()
        .filter(|(id, _)| id == root)
        .map(|(_, status)| status))
}

/// Ends `root` (unless it already ended) and every unfinished descendant
/// `Cancelled`, each with a `cancelled` event (a descendant's carries
/// `message`, the root's first), their leases void, and wakes the parents
/// waiting for them. Used by a cancel and by a timeout (`root` is then
/// `TimedOut` already, and only its descendants change), both holding the
/// tree's locks already ([`lock_tree`]). Returns how many parents woke and which instances a worker was running.
///
/// One statement walks the tree as of its start: a grandchild whose
/// insert locked its parent (FOR SHARE, see [`cancelled_parents`]) and
/// committed while the statement waited for that lock is not in its walk.
/// So the walk repeats until it cancels nothing; the parents it cancelled
/// stay locked, and a create under them from then on sees them cancelled.
/// Such a late row is the one this locks after its parent, out of the
/// lock order; a deadlock there is rare and retried.
async fn cancel_tree(
    conn: &mut PgConnection,
    root: &str,
    at: Millis,
    message: &str,
) -> Result<Cancelled, sqlx::Error> {
    let mut done = Cancelled::default();
    while cancel_tree_once(conn, root, at, message, &mut done).await? {}
    Ok(done)
}

/// What [`cancel_tree`] did.
#[derive(Default)]
struct Cancelled {
    /// How many parents woke.
    woke: u64,
    /// The instances it cancelled that a worker was running, whose
    /// handlers are to stop (see [`Db::announce_cancel`]).
    running: Vec<String>,
}

/// One walk of [`cancel_tree`], adding to `done`; whether it cancelled
/// anything.
async fn cancel_tree_once(
    conn: &mut PgConnection,
    root: &str,
    at: Millis,
    message: &str,
    done: &mut Cancelled,
) -> Result<bool, sqlx::Error> {
    // What each was before: one in progress then, or claimed since (its
    // `runs` moved; a grandchild inserted while `lock_tree` waited is not
    // locked), has a worker to tell. The status is checked again on the
    // row itself, which a transaction that committed meanwhile may have
    // ended.
    let cancelled: Vec<(String, Option<String>, bool)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE tree(id) AS ( \
             SELECT $1::text COLLATE \"C\" \
             UNION SELECT i.id FROM instances i JOIN tree t ON i.parent_id = t.id \
         ), prior AS ( \
             SELECT id, status, runs FROM instances \
             WHERE id IN (SELECT id FROM tree) AND status NOT IN {TERMINAL} \
         ) \
         UPDATE instances i SET status = 'cancelled', updated_at = $2, finished_at = $2, \
             lease_owner = NULL, lease_expires_at = NULL \
         FROM prior WHERE i.id = prior.id AND i.status NOT IN {TERMINAL} \
         RETURNING i.id, i.parent_id, prior.status = 'in_progress' OR i.runs <> prior.runs"
        )))
        .bind(root)
        .bind(at)
        .fetch_all(&mut *conn)
        .await?;
    if cancelled.is_empty() {
        return Ok(false);
    }
    done.running.extend(
        cancelled
            .iter()
            .filter(|(_, _, running)| *running)
            .map(|(id, _, _)| id.clone()),
    );
    // The root's event first.
    let mut ids: Vec<&str> = cancelled.iter().map(|(c, _, _)| c.as_str()).collect();
    ids.sort_by_key(|c| *c != root);
    let messages: Vec<Option<&str>> = ids
        .iter()
        .map(|c| (*c != root).then_some(message))
        .collect();
    sqlx::query(
        "INSERT INTO events (instance_id, at, kind, message) \
         SELECT id, $3, 'cancelled', message \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS e(id, message, n) ORDER BY n",
    )
    .bind(&ids)
    .bind(&messages)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let pairs: Vec<(&str, &str)> = cancelled
        .iter()
        .filter_map(|(c, p, _)| p.as_deref().map(|p| (c.as_str(), p)))
        .collect();
    done.woke += wake_parents(conn, &pairs, at).await?;
    Ok(true)
}

/// Makes each parent due now if it is listening for its (child, parent)
/// child. Returns how many woke.
async fn wake_parents(
    conn: &mut PgConnection,
    pairs: &[(&str, &str)],
    at: Millis,
) -> Result<u64, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let children: Vec<&str> = pairs.iter().map(|(c, _)| *c).collect();
    let parents: Vec<&str> = pairs.iter().map(|(_, p)| *p).collect();
    Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE instances p SET status = 'pending', run_at = LEAST($3, {DB_CLOCK}), wait_child = NULL \
         FROM UNNEST($1::text[], $2::text[]) AS c(child, parent) \
         WHERE p.id = c.parent AND p.status = 'listening' AND p.wait_child = c.child"
    )))
    .bind(&children)
    .bind(&parents)
    .bind(at)
    .execute(conn)
    .await?
    .rows_affected())
}

async fn event(
    conn: &mut PgConnection,
    instance: &str,
    at: Millis,
    kind: &str,
) -> Result<(), sqlx::Error> {
    event_full(conn, instance, at, kind, None, None, None, None).await
}

#[allow(clippy::too_many_arguments)]
async fn event_full(
    conn: &mut PgConnection,
    instance: &str,
    at: Millis,
    kind: &str,
    step: Option<&str>,
    attempt: Option<u32>,
    message: Option<&str>,
    duration_ms: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (instance_id, at, kind, step, attempt, message, duration_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(instance)
    .bind(at)
    .bind(kind)
    .bind(step)
    .bind(attempt.map(i64::from))
    .bind(message.map(text))
    .bind(duration_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// PostgreSQL's `lock_not_available`: a `lock_timeout` ran out.
fn lock_timed_out(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// A unique index refused the row: here, an id already taken.
fn taken_id(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}
