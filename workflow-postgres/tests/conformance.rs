//! The store conformance suite on PostgreSQL, and what only a shared
//! database needs: many pools claiming at once, many processes migrating at
//! once, a late worker fenced off, NOTIFY waking an idle claim.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use workflow_core::store::*;
use workflow_core::testing::new_instance;
use workflow_core::{Status, StoreError};
use workflow_postgres::{PgOptions, PgStore};

async fn store(url: &str, schema: &str) -> PgStore {
    PgStore::connect_with(url, PgOptions::new().schema(schema))
        .await
        .expect("connect")
}

fn claim_req(owner: &str, now: Millis, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        workflows: vec!["wf".to_owned()],
        now,
        due_by: now,
        lease_until: now + 30_000,
        limit,
    }
}

const T0: Millis = 1_700_000_000_000;

/// The suite moves time by hand: it claims "a minute later" to take a
/// lease over, and renews leases until times long past. So here leases
/// follow the requests' clocks, as the suite's stores without a clock of
/// their own do; the same statements judge and date them by the database's
/// clock otherwise (`tests/clocks.rs`).
fn suite_options(schema: String) -> PgOptions {
    PgOptions::new()
        .schema(schema)
        .leases_by_request_clock(true)
}

#[tokio::test]
async fn conformance() {
    let Some(url) = common::url("conformance") else {
        return;
    };
    let schemas = Mutex::new(Vec::new());
    workflow_core::testing::conformance(|| {
        let schema = common::fresh_schema("conf");
        schemas.lock().unwrap().push(schema.clone());
        let url = url.clone();
        async move {
            PgStore::connect_with(&url, suite_options(schema))
                .await
                .expect("connect")
        }
    })
    .await;
    common::drop_schemas(&url, &schemas.into_inner().unwrap()).await;
}

#[tokio::test]
async fn relaxed_conformance() {
    let Some(url) = common::url("relaxed_conformance") else {
        return;
    };
    let schemas = Mutex::new(Vec::new());
    workflow_core::testing::conformance(|| {
        let schema = common::fresh_schema("relaxed");
        schemas.lock().unwrap().push(schema.clone());
        let url = url.clone();
        async move {
            PgStore::connect_with(
                &url,
                suite_options(schema)
                    .durability(workflow_core::Durability::Relaxed)
                    .listen(false),
            )
            .await
            .unwrap()
        }
    })
    .await;
    common::drop_schemas(&url, &schemas.into_inner().unwrap()).await;
}

/// Eight stores (eight pools, as eight processes would have) claim 600
/// instances in small batches at once: each is claimed exactly once.
#[tokio::test]
async fn claimers_on_separate_pools_never_share_an_instance() {
    let Some(url) = common::url("claimers_on_separate_pools") else {
        return;
    };
    let schema = common::fresh_schema("claim");
    let first = store(&url, &schema).await;
    let new: Vec<NewInstance> = (0..600).map(|n| new_instance("wf", n)).collect();
    first.create_many(new).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = PgStore::connect_with(&url, PgOptions::new().schema(&schema).listen(false))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim(claim_req(&format!("w{w}"), T0 + 10_000, 7))
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.row.id));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 600, "every instance claimed");
    assert_eq!(unique.len(), 600, "none claimed twice");
    common::drop_schemas(&url, &[schema]).await;
}

/// Processes starting together on an empty schema all come up; one
/// migrates. Also where the URL asks for serializable as the default
/// isolation: a process that waited for the lock must see what the other
/// committed, and the store's connections keep READ COMMITTED.
#[tokio::test]
async fn concurrent_starts_migrate_once() {
    let Some(url) = common::url("concurrent_starts_migrate_once") else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let serializable =
        format!("{url}{sep}options=-c%20default_transaction_isolation%3Dserializable");
    for url in [url.clone(), serializable] {
        let schema = common::fresh_schema("migrate");
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (url, schema) = (url.clone(), schema.clone());
            tasks.push(tokio::spawn(async move { store(&url, &schema).await }));
        }
        let mut stores = Vec::new();
        for task in tasks {
            stores.push(task.await.unwrap());
        }
        let isolation: String = sqlx::query_scalar("SHOW default_transaction_isolation")
            .fetch_one(stores[0].pool())
            .await
            .unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM migrations ORDER BY version")
                .fetch_all(stores[0].pool())
                .await
                .unwrap();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7], "{isolation}");
        // The store's own transactions run READ COMMITTED whatever the
        // server or the URL says: they rely on it.
        assert_eq!(isolation, "read committed");
        common::drop_schemas(&url, &[schema]).await;
    }
}

/// The migrations apply together or not at all: one that fails (here a
/// table of the third is in the way) leaves the schema as it was, and the
/// next start, with the obstacle gone, applies them all.
#[tokio::test]
async fn a_failed_migration_leaves_the_schema_as_it_was() {
    let Some(url) = common::url("a_failed_migration_leaves_the_schema") else {
        return;
    };
    let schema = common::fresh_schema("failedmig");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".event_keys (x INT)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let err = PgStore::connect_with(&url, PgOptions::new().schema(&schema))
        .await
        .expect_err("the third migration fails");
    assert!(err.to_string().contains("event_keys"), "{err}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        tables,
        ["event_keys"],
        "nothing of migrations 1 and 2 stays"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{schema}\".event_keys"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let store = store(&url, &schema).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM migrations ORDER BY version")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    common::drop_schemas(&url, &[schema]).await;
}

/// A worker whose lease expired and was taken over can write nothing, not
/// even after the new owner finished.
#[tokio::test]
async fn a_late_worker_cannot_overwrite_a_finished_instance() {
    let Some(url) = common::url("a_late_worker_cannot_overwrite") else {
        return;
    };
    let schema = common::fresh_schema("late");
    let (a, b) = (store(&url, &schema).await, store(&url, &schema).await);
    let new = new_instance("wf", 0);
    let id = new.id.clone();
    a.create(new, None).await.unwrap();
    let slow = a
        .claim(ClaimRequest {
            lease_until: T0 + 301,
            ..claim_req("slow", T0 + 1, 1)
        })
        .await
        .unwrap()
        .remove(0);
    // The slow worker's lease (300 ms by the database's clock) runs out;
    // another takes over and finishes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fast = b
        .claim(claim_req("fast", T0 + 60_000, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(fast.lease.run, 2);
    let done = Finish {
        status: Status::Completed,
        output: Some("\"fast\"".into()),
        error: None,
        state: None,
        at: T0 + 60_001,
    };
    b.finish(&fast.lease, done).await.unwrap();
    let late = Finish {
        status: Status::Failed,
        output: None,
        error: Some("slow".into()),
        state: None,
        at: T0 + 60_002,
    };
    let step = StepRow {
        key: "s".into(),
        output: Some("1".into()),
        error: None,
        state: Some("9".into()),
        attempts: 1,
        started_at: T0,
        finished_at: T0 + 1,
    };
    assert!(matches!(
        a.commit_step(&slow.lease, step).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        a.finish(&slow.lease, late).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        a.release(&slow.lease, T0 + 60_003).await,
        Err(StoreError::LeaseLost(_))
    ));
    let renewed = a
        .renew(std::slice::from_ref(&slow.lease), T0 + 90_000)
        .await
        .unwrap();
    assert!(!renewed[0].held);
    let row = a.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Completed);
    assert_eq!(row.output.as_deref(), Some("\"fast\""));
    assert_eq!(row.state, None);
    assert!(a.steps(&id).await.unwrap().is_empty());
    common::drop_schemas(&url, &[schema]).await;
}

/// An idle claim returns work created by another process while it waited,
/// woken by NOTIFY rather than by its next poll.
#[tokio::test]
async fn notify_wakes_an_idle_claim() {
    let Some(url) = common::url("notify_wakes_an_idle_claim") else {
        return;
    };
    let schema = common::fresh_schema("notify");
    let waiting = PgStore::connect_with(
        &url,
        PgOptions::new()
            .schema(&schema)
            .claim_wait(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let other = store(&url, &schema).await;
    // Wait until the listener listens (its connect after a reconnect also
    // wakes claims, which would end the wait below early).
    let listening = format!("LISTEN \"workflow_{schema}\"");
    for _ in 0..500 {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE query = $1")
            .bind(&listening)
            .fetch_one(other.pool())
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claim = tokio::spawn({
        let waiting = waiting.clone();
        async move {
            let now = now_millis();
            waiting
                .claim(ClaimRequest {
                    owner: "idle".into(),
                    workflows: vec!["wf".into()],
                    now,
                    due_by: now,
                    lease_until: now + 30_000,
                    limit: 1,
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = new_instance("wf", 0);
    let created_at = now_millis();
    new.created_at = created_at;
    new.run_at = created_at;
    let id = new.id.clone();
    other.create(new, None).await.unwrap();
    let claimed = claim.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1, "the wait ended with the new instance");
    assert_eq!(claimed[0].row.id, id);
    common::drop_schemas(&url, &[schema]).await;
}

/// The store's wakeup signal (what idle engine workers wait on) changes
/// when another process creates work.
#[tokio::test]
async fn notify_changes_the_wakeup_signal() {
    let Some(url) = common::url("notify_changes_the_wakeup_signal") else {
        return;
    };
    let schema = common::fresh_schema("wakeups");
    let (_listening, mut wakeups, other) = listener_and_other(&url, &schema).await;
    assert!(other.wakeups().is_none(), "listen(false) gives no signal");
    // A create NOTIFYs; the listener may also bump the signal on connect.
    // Either way it must change within a few seconds of the create.
    wakeups.borrow_and_update();
    let mut new = new_instance("wf", 0);
    new.created_at = now_millis();
    new.run_at = new.created_at;
    let mut changed = false;
    for _ in 0..3 {
        other.create(new.clone(), None).await.unwrap();
        new.id = workflow_core::InstanceId::at(now_millis());
        if tokio::time::timeout(Duration::from_secs(2), wakeups.changed())
            .await
            .is_ok()
        {
            changed = true;
            break;
        }
    }
    assert!(changed, "a NOTIFY from another store changed the signal");
    common::drop_schemas(&url, &[schema]).await;
}

/// A store listening for NOTIFY on `schema` (kept alive by the caller),
/// its wake-up signal, and another store on the schema that does not
/// listen, as another process would write.
async fn listener_and_other(
    url: &str,
    schema: &str,
) -> (PgStore, tokio::sync::watch::Receiver<u64>, PgStore) {
    let listening = PgStore::connect_with(url, PgOptions::new().schema(schema))
        .await
        .unwrap();
    let wakeups = listening.wakeups().expect("listening by default");
    let other = PgStore::connect_with(url, PgOptions::new().schema(schema).listen(false))
        .await
        .unwrap();
    (listening, wakeups, other)
}

/// A deadline moved closer to a waiting instance, though not yet passed,
/// NOTIFYs: idle workers in other processes napping until the instance's
/// old wake-up time look again. Before, only a deadline already past did.
#[tokio::test]
async fn a_deadline_moved_closer_notifies() {
    let Some(url) = common::url("a_deadline_moved_closer_notifies") else {
        return;
    };
    let schema = common::fresh_schema("deadline_notify");
    let (_listening, mut wakeups, other) = listener_and_other(&url, &schema).await;
    let now = now_millis();
    let mut new = new_instance("wf", 0);
    new.created_at = now;
    new.run_at = now;
    new.deadline_at = Some(now + 3_600_000);
    let id = new.id.clone();
    other.create(new, None).await.unwrap();
    let claimed = other.claim(claim_req("w", now, 1)).await.unwrap();
    let wait = Suspend {
        status: Status::Listening,
        run_at: now + 3_600_000,
        wait_event: Some("never".into()),
        wait_child: None,
        retry: None,
        state: None,
        reason: "waiting".into(),
        at: now,
    };
    other.suspend(&claimed[0].lease, wait).await.unwrap();
    // What the create and the suspension sent is heard first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wakeups.borrow_and_update();
    other.set_deadline(&id, now + 60_000, now).await.unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(5), wakeups.changed()).await;
    assert!(changed.is_ok(), "no NOTIFY for a deadline moved closer");
    common::drop_schemas(&url, &[schema]).await;
}

/// A TCP proxy to the test server that can cut the connections open at a
/// moment off without a reset, as a NAT or a load balancer that forgot an
/// idle flow does: what they send either way is dropped from then on, and
/// connections opened later pass.
struct Proxy {
    url: String,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    opened: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(url: &str) -> Proxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        // postgres://user@host:port/db?...: the host and port are swapped
        // for the proxy's.
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (user, server) = match authority.rsplit_once('@') {
            Some((user, server)) => (format!("{user}@"), server),
            None => (String::new(), authority),
        };
        let server = if server.contains(':') {
            server.to_owned()
        } else {
            format!("{server}:5432")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("{scheme}://{user}{}{path}", listener.local_addr().unwrap());
        let frozen_below = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (frozen, count) = (Arc::clone(&frozen_below), Arc::clone(&opened));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(Proxy::pipe(cr, uw, n, Arc::clone(&frozen)));
                tokio::spawn(Proxy::pipe(ur, cw, n, Arc::clone(&frozen)));
            }
        });
        Proxy {
            url: proxy_url,
            frozen_below,
            opened,
        }
    }

    /// Forwards connection `n`'s bytes one way until it is cut off.
    async fn pipe(
        mut from: impl tokio::io::AsyncRead + Unpin,
        mut to: impl tokio::io::AsyncWrite + Unpin,
        n: u64,
        frozen_below: Arc<std::sync::atomic::AtomicU64>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buf).await {
            if n < frozen_below.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..read]).await.is_err() {
                break;
            }
        }
        // Held open: a forgotten flow is never closed.
        std::future::pending::<()>().await;
    }

    /// Cuts off every connection open now.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A LISTEN connection cut off without a reset delivers nothing and says
/// nothing: once quiet for a while, the listener sends itself a
/// notification, and when that does not come back it listens on a new
/// connection. Before, every wake-up from other processes was lost from
/// then on, and idle workers waited out their poll interval for good.
#[tokio::test]
async fn a_listen_connection_cut_off_silently_is_replaced() {
    let Some(url) = common::url("a_listen_connection_cut_off_silently_is_replaced") else {
        return;
    };
    let schema = common::fresh_schema("silent_listen");
    let proxy = Proxy::start(&url).await;
    let listening = PgStore::connect_with(&proxy.url, PgOptions::new().schema(&schema))
        .await
        .unwrap();
    let mut wakeups = listening.wakeups().expect("listening by default");
    // Listening once the first bump comes.
    tokio::time::timeout(Duration::from_secs(10), wakeups.changed())
        .await
        .expect("listening")
        .unwrap();
    proxy.freeze();
    wakeups.borrow_and_update();
    let other = PgStore::connect_with(&url, PgOptions::new().schema(&schema).listen(false))
        .await
        .unwrap();
    // Within the quiet time and the check's wait, the listener gives the
    // connection up (and says so: the signal changes)...
    tokio::time::timeout(Duration::from_secs(70), wakeups.changed())
        .await
        .expect("the silent connection was never given up")
        .unwrap();
    // ... and listens on a new one, which NOTIFYs from other processes
    // reach again: one sent after it reconnected changes the signal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wakeups.borrow_and_update();
    let mut changed = false;
    for _ in 0..5 {
        let mut new = new_instance("wf", 0);
        new.created_at = now_millis();
        new.run_at = new.created_at;
        new.id = workflow_core::InstanceId::at(new.created_at);
        other.create(new, None).await.unwrap();
        if tokio::time::timeout(Duration::from_secs(2), wakeups.changed())
            .await
            .is_ok()
        {
            changed = true;
            break;
        }
    }
    assert!(
        changed,
        "no wake-up reached the store after its LISTEN connection was replaced"
    );
    listening.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// A `schema` parameter in the URL picks the schema.
#[tokio::test]
async fn url_schema_parameter() {
    let Some(url) = common::url("url_schema_parameter") else {
        return;
    };
    let schema = common::fresh_schema("url");
    let s = PgStore::connect(&common::with_schema(&url, &schema))
        .await
        .unwrap();
    assert_eq!(s.schema(), schema);
    let bad = PgStore::connect(&common::with_schema(&url, "Robert'); DROP TABLE x;--")).await;
    assert!(bad.is_err(), "odd schema names are refused");
    common::drop_schemas(&url, &[schema]).await;
}

/// A row that does not decode fails its own instance, not the claim.
#[tokio::test]
async fn a_corrupt_row_fails_only_its_instance() {
    let Some(url) = common::url("a_corrupt_row_fails_only_its_instance") else {
        return;
    };
    let schema = common::fresh_schema("corrupt");
    let s = store(&url, &schema).await;
    let (good, bad) = (new_instance("wf", 1), new_instance("wf", 2));
    let (good_id, bad_id) = (good.id.clone(), bad.id.clone());
    s.create(good, None).await.unwrap();
    s.create(bad, None).await.unwrap();
    sqlx::query("UPDATE instances SET tags = '{\"n\": 1}' WHERE id = $1")
        .bind(bad_id.as_str())
        .execute(s.pool())
        .await
        .unwrap();
    let claimed = s.claim(claim_req("w", T0 + 10, 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].row.id, good_id);
    let err = s.get(&bad_id).await.unwrap_err();
    assert!(err.to_string().contains("corrupt row"), "{err}");
    let status: String = sqlx::query_scalar("SELECT status FROM instances WHERE id = $1")
        .bind(bad_id.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(status, "failed");
    common::drop_schemas(&url, &[schema]).await;
}

/// A step row that does not decode fails its instance at the next claim,
/// as on SQLite: replayed without it, the step's body would run again.
#[tokio::test]
async fn a_corrupt_step_row_fails_its_instance() {
    let Some(url) = common::url("a_corrupt_step_row_fails_its_instance") else {
        return;
    };
    let schema = common::fresh_schema("corrupt_step");
    let s = store(&url, &schema).await;
    let bad = new_instance("wf", 1);
    let bad_id = bad.id.clone();
    s.create(bad, None).await.unwrap();
    let first = s
        .claim(claim_req("w", T0 + 10, 10))
        .await
        .unwrap()
        .remove(0);
    let step = StepRow {
        key: "charge".into(),
        output: Some("1".into()),
        error: None,
        state: None,
        attempts: 1,
        started_at: T0 + 11,
        finished_at: T0 + 12,
    };
    s.commit_step(&first.lease, step).await.unwrap();
    s.release(&first.lease, T0 + 13).await.unwrap();
    // The typed column cannot hold a bad value; one of another type can.
    sqlx::query("ALTER TABLE steps ALTER COLUMN attempts TYPE TEXT")
        .execute(s.pool())
        .await
        .unwrap();
    // A first run reads no steps, so this one is not hurt.
    let good = new_instance("wf", 2);
    let good_id = good.id.clone();
    s.create(good, None).await.unwrap();
    let claimed = s.claim(claim_req("w", T0 + 20, 10)).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| &c.row.id).collect();
    assert_eq!(ids, [&good_id], "the corrupt instance is not run again");
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM instances WHERE id = $1")
            .bind(bad_id.as_str())
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(error.contains("step"), "names the step row: {error}");
    common::drop_schemas(&url, &[schema]).await;
}

/// A child failed for its corrupt row wakes a parent waiting for it.
#[tokio::test]
async fn a_child_failed_as_corrupt_wakes_its_parent() {
    let Some(url) = common::url("a_child_failed_as_corrupt_wakes_its_parent") else {
        return;
    };
    let schema = common::fresh_schema("corrupt_child");
    let s = store(&url, &schema).await;
    let parent = new_instance("wf", 1);
    let parent_id = parent.id.clone();
    s.create(parent, None).await.unwrap();
    let p = s.claim(claim_req("w", T0 + 10, 1)).await.unwrap().remove(0);
    let mut child = new_instance("wf", 2);
    child.parent = Some(parent_id.clone());
    let child_id = child.id.clone();
    s.create(child, None).await.unwrap();
    let wait = Suspend {
        status: Status::Listening,
        run_at: Millis::MAX,
        wait_event: None,
        wait_child: Some(child_id.clone()),
        retry: None,
        state: None,
        reason: "waiting for a child".into(),
        at: T0 + 11,
    };
    s.suspend(&p.lease, wait).await.unwrap();
    sqlx::query("UPDATE instances SET tags = '{\"n\": 1}' WHERE id = $1")
        .bind(child_id.as_str())
        .execute(s.pool())
        .await
        .unwrap();
    assert!(s
        .claim(claim_req("w", T0 + 20, 10))
        .await
        .unwrap()
        .is_empty());
    let claimed = s.claim(claim_req("w", T0 + 30, 10)).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| &c.row.id).collect();
    assert_eq!(
        ids,
        [&parent_id],
        "the parent is due again to see its child failed"
    );
    common::drop_schemas(&url, &[schema]).await;
}

/// One store shared by many tasks creates concurrently.
#[tokio::test]
async fn shared_store_is_usable_from_many_tasks() {
    let Some(url) = common::url("shared_store_is_usable_from_many_tasks") else {
        return;
    };
    let schema = common::fresh_schema("shared");
    let s = Arc::new(store(&url, &schema).await);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.create(new_instance("wf", n), None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        s.count_by_status(Some("wf")).await.unwrap(),
        [(Status::Pending, 50)]
    );
    common::drop_schemas(&url, &[schema]).await;
}

/// A child that ends while its parent suspends to wait for it wakes the
/// parent, whichever commits first. The child's `finish` wakes a parent
/// that is listening; the parent's `suspend` looks for a child already
/// ended. Here the child's `finish` has run its wake-up (the parent still
/// runs: nothing to wake) but not yet committed when the parent suspends:
/// the parent must not read the child as unfinished and sleep forever.
#[tokio::test]
async fn a_child_ending_while_its_parent_suspends_wakes_it() {
    let Some(url) = common::url("a_child_ending_while_its_parent_suspends") else {
        return;
    };
    let schema = common::fresh_schema("child_race");
    let s = store(&url, &schema).await;
    let parent = new_instance("wf", 1);
    let parent_id = parent.id.clone();
    s.create(parent, None).await.unwrap();
    let p = s.claim(claim_req("a", T0 + 10, 1)).await.unwrap().remove(0);
    let mut child = new_instance("wf", 2);
    child.parent = Some(parent_id.clone());
    let child_id = child.id.clone();
    s.create(child, None).await.unwrap();
    let c = s.claim(claim_req("b", T0 + 10, 1)).await.unwrap().remove(0);
    assert_eq!(c.row.id, child_id);
    // Holds the child's finish between its last statement and its commit.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON instances \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
             WHEN (NEW.status = 'completed') EXECUTE FUNCTION slow_commit();",
    )
    .execute(s.pool())
    .await
    .unwrap();
    let finishing = {
        let s = s.clone();
        tokio::spawn(async move {
            let done = Finish {
                status: Status::Completed,
                output: Some("7".into()),
                error: None,
                state: None,
                at: T0 + 12,
            };
            s.finish(&c.lease, done).await.unwrap();
        })
    };
    // Inside the trigger's sleep, its commit held back.
    common::until_counted(
        s.pool(),
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
        "the finish never reached its commit",
    )
    .await;
    let wait = Suspend {
        status: Status::Listening,
        run_at: Millis::MAX,
        wait_event: None,
        wait_child: Some(child_id.clone()),
        retry: None,
        state: None,
        reason: "waiting for a child".into(),
        at: T0 + 13,
    };
    s.suspend(&p.lease, wait).await.unwrap();
    finishing.await.unwrap();
    assert_eq!(
        s.get(&child_id).await.unwrap().unwrap().status,
        Status::Completed
    );
    let row = s.get(&parent_id).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.run_at),
        (Status::Pending, T0 + 13),
        "the parent is due at once to see its child ended"
    );
    common::drop_schemas(&url, &[schema]).await;
}

/// Least-privilege roles, as a DBA sets them up: a role that owns a schema
/// made for it but may not create schemas in the database migrates it; an
/// application role with data rights alone (no DDL) connects to the
/// migrated schema and works. Before, every connect ran `CREATE SCHEMA IF
/// NOT EXISTS` and `CREATE TABLE IF NOT EXISTS`, which PostgreSQL refuses
/// without the CREATE privilege even when the object exists.
#[tokio::test]
async fn roles_without_ddl_rights_connect_to_a_migrated_schema() {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let Some(url) = common::url("roles_without_ddl_rights") else {
        return;
    };
    let schema = common::fresh_schema("roles");
    let (owner, app) = (format!("{schema}_owner"), format!("{schema}_app"));
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {owner} LOGIN PASSWORD 'pw'; CREATE ROLE {app} LOGIN PASSWORD 'pw'; \
         CREATE SCHEMA {schema} AUTHORIZATION {owner};"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let as_role = |role: &str| {
        sqlx::postgres::PgConnectOptions::from_str(&url)
            .unwrap()
            .username(role)
            .password("pw")
            .to_url_lossy()
            .to_string()
    };
    let migrated = PgStore::connect_with(&as_role(&owner), PgOptions::new().schema(&schema)).await;
    let migrated = migrated.expect("the schema's owner migrates it");
    migrated.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA {schema} TO {app}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app}; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {app};"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let s = PgStore::connect_with(&as_role(&app), PgOptions::new().schema(&schema))
        .await
        .expect("a role with data rights alone connects");
    s.create(new_instance("wf", 0), None).await.unwrap();
    assert_eq!(s.claim(claim_req("a", T0 + 1, 1)).await.unwrap().len(), 1);
    s.close().await;
    common::drop_schemas(&url, std::slice::from_ref(&schema)).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP OWNED BY {app}; DROP ROLE {app}; DROP OWNED BY {owner}; DROP ROLE {owner};"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

/// Listing by dedup key (the console's search box, `Query::key`) reads
/// the key's rows off an index, with or without a workflow, in id order.
/// Before, the only key index led with the workflow: a search by key alone
/// read the whole table, every two seconds while the console was open.
#[tokio::test]
async fn listing_by_key_is_index_backed() {
    let Some(url) = common::url("listing_by_key_is_index_backed") else {
        return;
    };
    let schema = common::fresh_schema("key_plan");
    let s = store(&url, &schema).await;
    let new: Vec<NewInstance> = (0..20_000)
        .map(|n| {
            let mut new = new_instance(if n % 2 == 0 { "wf" } else { "other" }, n);
            new.key = Some(format!("order-{n}"));
            new
        })
        .collect();
    s.create_many(new).await.unwrap();
    sqlx::query("ANALYZE instances")
        .execute(s.pool())
        .await
        .unwrap();
    // The statements `list` builds for these filters.
    for sql in [
        "SELECT id FROM instances WHERE TRUE AND dedup_key = 'order-77' ORDER BY id DESC LIMIT 50",
        "SELECT id FROM instances WHERE TRUE AND workflow = 'other' AND dedup_key = 'order-77' \
         ORDER BY id DESC LIMIT 50",
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .fetch_all(s.pool())
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("instances_dedup")
                && !plan.contains("Seq Scan")
                && !plan.contains("Sort"),
            "{sql}:\n{plan}"
        );
    }
    let found = s
        .list(&ListQuery {
            key: Some("order-77".into()),
            limit: 50,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    common::drop_schemas(&url, &[schema]).await;
}

/// A server that cannot be reached is named in the error, as the SQLite
/// store names its file: not just "Connection refused".
#[tokio::test]
async fn an_unreachable_server_is_named_in_the_error() {
    let options = PgOptions::new().schema("nowhere").retry_for(Duration::ZERO);
    let err = PgStore::connect_with("postgres://someone@127.0.0.1:1/appdb", options)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PostgreSQL") && err.contains("127.0.0.1:1/appdb"),
        "{err}"
    );
}

/// A cancel's walk of the tree runs as of its statement's start: a
/// grandchild committed while the walk waited for its parent's lock (the
/// create holds it, FOR SHARE, to see whether the parent is cancelled) must
/// still end `Cancelled` with the rest.
#[tokio::test]
async fn a_cancel_reaches_a_grandchild_created_while_it_waited() {
    let Some(url) = common::url("a_cancel_reaches_a_grandchild") else {
        return;
    };
    let schema = common::fresh_schema("cascade");
    let s = Arc::new(store(&url, &schema).await);
    let root = new_instance("wf", 0);
    let root_id = root.id.clone();
    s.create(root, None).await.unwrap();
    let mut child = new_instance("wf", 1);
    child.parent = Some(root_id.clone());
    let child_id = child.id.clone();
    s.create(child, None).await.unwrap();
    // The child's handler creating a grandchild, as the store's create
    // does, its transaction still open.
    let grandchild = new_instance("wf", 2).id;
    let mut creating = s.pool().begin().await.unwrap();
    sqlx::query("SELECT status FROM instances WHERE id = $1 FOR SHARE")
        .bind(child_id.as_str())
        .execute(&mut *creating)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO instances (id, workflow, status, input, created_at, updated_at, run_at, parent_id) \
         VALUES ($1, 'wf', 'pending', '{}', $2, $2, $2, $3)",
    )
    .bind(grandchild.as_str())
    .bind(T0 + 2)
    .bind(child_id.as_str())
    .execute(&mut *creating)
    .await
    .unwrap();
    let cancel = tokio::spawn({
        let s = Arc::clone(&s);
        let root_id = root_id.clone();
        async move { s.cancel(&root_id, T0 + 10).await }
    });
    // The cancel's statement has started and waits for the child's lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!cancel.is_finished());
    creating.commit().await.unwrap();
    assert_eq!(cancel.await.unwrap().unwrap(), Control::Applied);
    for id in [&root_id, &child_id, &grandchild] {
        let row = s.get(id).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Cancelled, "{id}");
    }
    common::drop_schemas(&url, &[schema]).await;
}

/// A connection cut off without a reset while a request is on it: the
/// request gives the connection up after `request_timeout` and a read
/// runs again on a new one, while a write that may have committed fails.
/// The pool has one connection, so the retry also needs the one given up
/// on closed rather than pinged on its way back (sqlx's ping waits as
/// long as TCP does); without TLS, whose close sqlx makes wait for the
/// peer too. Before, both calls waited for as long as TCP does.
#[tokio::test]
async fn a_request_on_a_connection_cut_off_silently_gives_it_up() {
    let Some(url) = common::url("a_request_on_a_connection_cut_off_silently_gives_it_up") else {
        return;
    };
    let schema = common::fresh_schema("silent_request");
    let proxy = Proxy::start(&url).await;
    let sep = if proxy.url.contains('?') { '&' } else { '?' };
    let s = PgStore::connect_with(
        &format!("{}{sep}sslmode=disable", proxy.url),
        PgOptions::new()
            .schema(&schema)
            .listen(false)
            .max_connections(1)
            .request_timeout(Duration::from_secs(1))
            .retry_for(Duration::from_secs(8)),
    )
    .await
    .unwrap();
    let new = new_instance("wf", 1);
    let id = new.id.clone();
    s.create(new, None).await.unwrap();

    // The pool pings a connection handed back (this waits for that), and
    // one idle for a second before use: the read goes out unchecked on the
    // connection now cut off.
    s.get(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.freeze();
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(20), s.get(&id))
        .await
        .expect("a read on a silent connection never gave it up");
    assert_eq!(read.unwrap().expect("the instance").id, id);
    assert!(started.elapsed() >= Duration::from_secs(1));

    s.get(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.freeze();
    let claimed = tokio::time::timeout(
        Duration::from_secs(20),
        s.claim(claim_req("w", T0 + 10, 10)),
    )
    .await
    .expect("a claim on a silent connection never gave it up");
    let err = claimed.unwrap_err().to_string();
    assert!(err.contains("did not answer within"), "{err}");
    // And the store goes on, on a new connection.
    assert_eq!(s.get(&id).await.unwrap().expect("the instance").id, id);
    s.close().await;
    common::drop_schemas(&url, &[schema]).await;
}

/// A statement past `request_timeout`, which the client gives up on, is
/// cancelled by the server too (`statement_timeout`) instead of running on
/// with its locks and a backend; a transaction of the application's own
/// may lift it. Before, the server ran it to its end.
#[tokio::test]
async fn statements_past_the_request_timeout_are_cancelled_at_the_server() {
    let Some(url) = common::url("statements_past_the_request_timeout_are_cancelled_at_the_server")
    else {
        return;
    };
    let schema = common::fresh_schema("statement_timeout");
    let s = PgStore::connect_with(
        &url,
        PgOptions::new()
            .schema(&schema)
            .listen(false)
            .request_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(s.pool())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "ran to its end");
    match &err {
        sqlx::Error::Database(db) => assert_eq!(db.code().as_deref(), Some("57014"), "{err}"),
        other => panic!("not a cancel: {other}"),
    }
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT pg_sleep(0.5)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The store's own work is not bound by less than the option asks.
    s.create(new_instance("wf", 1), None).await.unwrap();
    s.close().await;
    common::drop_schemas(&url, &[schema]).await;
}
