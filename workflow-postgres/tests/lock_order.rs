//! Operations that lock several instance rows at once, run against each
//! other on one tree of instances at the same time, never deadlock: a
//! cancel (the whole tree, then the root's waiting parent), a child's
//! finish (the child, then the parent it wakes), a parent's suspend (its
//! child, then itself), a timeout (the instance's tree), heartbeats and the
//! release of a dead worker's leases (many unrelated rows).
//!
//! The stores here have no retry budget: the store rides out a deadlock by
//! running the transaction again, but only after the server's
//! `deadlock_timeout` (a second by default) stalled both, so here one
//! surfaces as an error and fails the test.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use workflow_core::store::*;
use workflow_core::testing::new_instance;
use workflow_core::{InstanceId, Status, StoreError};
use workflow_postgres::{PgOptions, PgStore};

const T0: Millis = 1_700_000_000_000;
/// When the instances are claimed; each was created before.
const NOW: Millis = T0 + 100_000;
/// When the racing operations run.
const AT: Millis = NOW + 10;
/// Past every instance's deadline (`new_instance` sets `T0 + 300_000`).
const LATE: Millis = T0 + 400_000;
/// Families (small trees) per scenario.
const FAMILIES: i64 = 40;
/// Families racing at once.
const AT_ONCE: usize = 6;

/// A store that reports every failure at once, a deadlock included.
async fn store(url: &str, schema: &str) -> PgStore {
    let options = PgOptions::new()
        .schema(schema)
        .listen(false)
        .max_connections(32)
        .retry_for(Duration::ZERO);
    PgStore::connect_with(url, options).await.expect("connect")
}

/// An instance of `workflow` created at `T0 + n` (its id sorts by `n`),
/// under `parent` if given.
fn instance(workflow: &str, n: i64, parent: Option<&InstanceId>) -> NewInstance {
    let mut new = new_instance(workflow, n);
    new.parent = parent.cloned();
    new
}

/// Claims every due instance of `workflow` as `owner`.
async fn claim_all(
    s: &PgStore,
    owner: &str,
    workflow: &str,
    n: usize,
) -> HashMap<InstanceId, Lease> {
    let claimed = s
        .claim(ClaimRequest {
            owner: owner.to_owned(),
            workflows: vec![workflow.to_owned()],
            now: NOW,
            due_by: NOW,
            lease_until: NOW + 60_000,
            limit: n,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), n, "{workflow}");
    claimed.into_iter().map(|c| (c.row.id, c.lease)).collect()
}

fn listen_for(child: &InstanceId, at: Millis) -> Suspend {
    Suspend {
        status: Status::Listening,
        run_at: Millis::MAX,
        wait_event: None,
        wait_child: Some(child.clone()),
        retry: None,
        state: None,
        reason: "waiting for a child".into(),
        at,
    }
}

fn finish(status: Status, at: Millis) -> Finish {
    Finish {
        status,
        output: (status == Status::Completed).then(|| "1".to_owned()),
        error: (status != Status::Completed).then(|| "no".to_owned()),
        state: None,
        at,
    }
}

/// Ids of `n` instances per family, for `FAMILIES` families. Half the
/// families get ids that sort before their parents' (as a child started on
/// a machine whose clock is behind gets): the lock order must not rely on
/// ids sorting parents first.
fn ns(family: i64, role: i64) -> i64 {
    let skewed = family % 2 == 1;
    let role = if skewed { 7 - role } else { role };
    family * 8 + role
}

/// What went wrong in a race, for the final report.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// `Ok` or `LeaseLost` (the other operation won) are fine; whether the
    /// write landed.
    fn landed<T>(&mut self, what: &str, result: Result<T, StoreError>) -> bool {
        match result {
            Ok(_) => true,
            Err(StoreError::LeaseLost(_)) => false,
            Err(err) => {
                self.0.push(format!("{what}: {err}"));
                false
            }
        }
    }

    fn control(&mut self, what: &str, result: Result<Control, StoreError>, allowed: &[Control]) {
        match result {
            Ok(c) if allowed.contains(&c) => {}
            Ok(c) => self.0.push(format!("{what}: unexpected {c:?}")),
            Err(err) => self.0.push(format!("{what}: {err}")),
        }
    }

    fn status(&mut self, what: &str, row: Option<InstanceRow>, want: Status) {
        match row {
            Some(row) if row.status == want => {}
            Some(row) => self.0.push(format!(
                "{what}: {} is {:?}, not {want:?}",
                row.id, row.status
            )),
            None => self.0.push(format!("{what}: gone")),
        }
    }
}

const CANCELLED: Control = Control::Terminal(Status::Cancelled);

/// Many small trees, each with operations racing on it that lock its rows
/// in the orders they need (see the module doc). None may fail, and each
/// tree ends as the winner of each race says. Before, a cancel or timeout
/// locked the root, then its descendants, and a heartbeat its rows in any
/// order: about 150 of these 200 races deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_finishes_suspends_and_heartbeats_never_deadlock() {
    let Some(url) = common::url("concurrent_cancels_finishes_never_deadlock") else {
        return;
    };
    let schema = common::fresh_schema("lockorder");
    // Two processes: one cancelling and sending events (an API server),
    // one running the instances (a worker).
    let admin = Arc::new(store(&url, &schema).await);
    let worker = Arc::new(store(&url, &schema).await);
    let n = FAMILIES as usize;

    // A: a parent listening for the first of its three children. A cancel
    // of the parent races the children finishing, their heartbeat and an
    // event sent to the parent.
    let a_parents: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("a_parent", ns(f, 0), None))
        .collect();
    let a_parent_ids: Vec<InstanceId> = a_parents.iter().map(|p| p.id.clone()).collect();
    admin.create_many(a_parents).await.unwrap();
    let a_parent_leases = claim_all(&worker, "a-parents", "a_parent", n).await;
    let a_children: Vec<Vec<NewInstance>> = (0..FAMILIES)
        .map(|f| {
            (1..=3)
                .map(|k| instance("a_child", ns(f, k), Some(&a_parent_ids[f as usize])))
                .collect()
        })
        .collect();
    let a_child_ids: Vec<Vec<InstanceId>> = a_children
        .iter()
        .map(|kids| kids.iter().map(|k| k.id.clone()).collect())
        .collect();
    worker
        .create_many(a_children.into_iter().flatten().collect())
        .await
        .unwrap();
    let a_child_leases = claim_all(&worker, "a-children", "a_child", 3 * n).await;
    for (f, parent) in a_parent_ids.iter().enumerate() {
        let wait = listen_for(&a_child_ids[f][0], NOW + 1);
        worker
            .suspend(&a_parent_leases[parent], wait)
            .await
            .unwrap();
    }

    // B: a running parent with one running child. A cancel of the parent
    // races the parent suspending to wait for the child, and the child
    // finishing.
    let b_parents: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("b_parent", ns(f, 0), None))
        .collect();
    let b_parent_ids: Vec<InstanceId> = b_parents.iter().map(|p| p.id.clone()).collect();
    admin.create_many(b_parents).await.unwrap();
    let b_parent_leases = claim_all(&worker, "b-parents", "b_parent", n).await;
    let b_children: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("b_child", ns(f, 1), Some(&b_parent_ids[f as usize])))
        .collect();
    let b_child_ids: Vec<InstanceId> = b_children.iter().map(|c| c.id.clone()).collect();
    worker.create_many(b_children).await.unwrap();
    let b_child_leases = claim_all(&worker, "b-children", "b_child", n).await;

    // C: a parent listening for its running child; both are cancelled at
    // once (the child's cancel wakes the parent).
    let c_parents: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("c_parent", ns(f, 0), None))
        .collect();
    let c_parent_ids: Vec<InstanceId> = c_parents.iter().map(|p| p.id.clone()).collect();
    admin.create_many(c_parents).await.unwrap();
    let c_parent_leases = claim_all(&worker, "c-parents", "c_parent", n).await;
    let c_children: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("c_child", ns(f, 1), Some(&c_parent_ids[f as usize])))
        .collect();
    let c_child_ids: Vec<InstanceId> = c_children.iter().map(|c| c.id.clone()).collect();
    worker.create_many(c_children).await.unwrap();
    claim_all(&worker, "c-children", "c_child", n).await;
    for (f, parent) in c_parent_ids.iter().enumerate() {
        let wait = listen_for(&c_child_ids[f], NOW + 1);
        worker
            .suspend(&c_parent_leases[parent], wait)
            .await
            .unwrap();
    }

    // D: three generations; the middle one listens for the youngest. The
    // eldest timing out (which cancels its descendants) races the youngest
    // finishing (which wakes the middle one) and a heartbeat of both.
    let d_tops: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("d_top", ns(f, 0), None))
        .collect();
    let d_top_ids: Vec<InstanceId> = d_tops.iter().map(|p| p.id.clone()).collect();
    admin.create_many(d_tops).await.unwrap();
    let d_top_leases = claim_all(&worker, "d-tops", "d_top", n).await;
    let d_mids: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("d_mid", ns(f, 1), Some(&d_top_ids[f as usize])))
        .collect();
    let d_mid_ids: Vec<InstanceId> = d_mids.iter().map(|c| c.id.clone()).collect();
    worker.create_many(d_mids).await.unwrap();
    let d_mid_leases = claim_all(&worker, "d-mids", "d_mid", n).await;
    let d_leaves: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("d_leaf", ns(f, 2), Some(&d_mid_ids[f as usize])))
        .collect();
    let d_leaf_ids: Vec<InstanceId> = d_leaves.iter().map(|c| c.id.clone()).collect();
    worker.create_many(d_leaves).await.unwrap();
    let d_leaf_leases = claim_all(&worker, "d-leaves", "d_leaf", n).await;
    for (f, mid) in d_mid_ids.iter().enumerate() {
        let wait = listen_for(&d_leaf_ids[f], NOW + 1);
        worker.suspend(&d_mid_leases[mid], wait).await.unwrap();
    }

    // E: parents listening for the first of two children whose worker
    // died. Cancels of the parents race the release of the dead worker's
    // leases.
    let e_parents: Vec<NewInstance> = (0..FAMILIES)
        .map(|f| instance("e_parent", ns(f, 0), None))
        .collect();
    let e_parent_ids: Vec<InstanceId> = e_parents.iter().map(|p| p.id.clone()).collect();
    admin.create_many(e_parents).await.unwrap();
    let e_parent_leases = claim_all(&worker, "e-parents", "e_parent", n).await;
    let e_children: Vec<Vec<NewInstance>> = (0..FAMILIES)
        .map(|f| {
            (1..=2)
                .map(|k| instance("e_child", ns(f, k), Some(&e_parent_ids[f as usize])))
                .collect()
        })
        .collect();
    let e_child_ids: Vec<Vec<InstanceId>> = e_children
        .iter()
        .map(|kids| kids.iter().map(|k| k.id.clone()).collect())
        .collect();
    worker
        .create_many(e_children.into_iter().flatten().collect())
        .await
        .unwrap();
    claim_all(&worker, "e-dead", "e_child", 2 * n).await;
    for (f, parent) in e_parent_ids.iter().enumerate() {
        let wait = listen_for(&e_child_ids[f][0], NOW + 1);
        worker
            .suspend(&e_parent_leases[parent], wait)
            .await
            .unwrap();
    }

    // The races, a few families at a time, the scenarios interleaved; E
    // all at once, with the release.
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    let mut races = tokio::task::JoinSet::new();
    let releasing = {
        let admin = Arc::clone(&admin);
        tokio::spawn(async move { admin.release_owner("e-dead", AT).await })
    };
    for f in 0..n {
        let admin = Arc::clone(&admin);
        let (parent, kids) = (e_parent_ids[f].clone(), e_child_ids[f].clone());
        races.spawn(async move {
            let mut p = Problems::default();
            p.control(
                "E cancel",
                admin.cancel(&parent, AT).await,
                &[Control::Applied],
            );
            p.status(
                "E parent",
                admin.get(&parent).await.unwrap(),
                Status::Cancelled,
            );
            for kid in &kids {
                p.status("E child", admin.get(kid).await.unwrap(), Status::Cancelled);
            }
            p.0
        });
    }
    for f in 0..n {
        let a_leases = a_child_ids[f]
            .iter()
            .map(|k| a_child_leases[k].clone())
            .collect();
        let race = race_a(
            Arc::clone(&admin),
            Arc::clone(&worker),
            a_parent_ids[f].clone(),
            a_child_ids[f].clone(),
            a_leases,
            format!("k{f}"),
        );
        races.spawn(one_at_a_time(Arc::clone(&slots), race));
        let (parent, child) = (&b_parent_ids[f], &b_child_ids[f]);
        let race = race_b(
            Arc::clone(&admin),
            Arc::clone(&worker),
            (parent.clone(), b_parent_leases[parent].clone()),
            (child.clone(), b_child_leases[child].clone()),
        );
        races.spawn(one_at_a_time(Arc::clone(&slots), race));
        let race = race_c(
            Arc::clone(&admin),
            Arc::clone(&worker),
            c_parent_ids[f].clone(),
            c_child_ids[f].clone(),
        );
        races.spawn(one_at_a_time(Arc::clone(&slots), race));
        let (top, leaf) = (&d_top_ids[f], &d_leaf_ids[f]);
        let race = race_d(
            Arc::clone(&worker),
            (top.clone(), d_top_leases[top].clone()),
            d_mid_ids[f].clone(),
            (leaf.clone(), d_leaf_leases[leaf].clone()),
        );
        races.spawn(one_at_a_time(Arc::clone(&slots), race));
    }
    let mut problems = Vec::new();
    while let Some(found) = races.join_next().await {
        problems.extend(found.unwrap());
    }
    if let Err(err) = releasing.await.unwrap() {
        problems.push(format!("E release_owner: {err}"));
    }

    // Every row ended, none keeps a lease, and each has the one terminal
    // event its status says.
    let pool = admin.pool();
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM instances \
         WHERE status NOT IN ('completed', 'failed', 'cancelled', 'timed_out') \
            OR lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if open != 0 {
        problems.push(format!("{open} instances unfinished or still leased"));
    }
    let unmatched: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM instances i WHERE 1 <> ( \
             SELECT COUNT(*) FROM events e WHERE e.instance_id = i.id \
               AND e.kind IN ('completed', 'failed', 'cancelled', 'timed_out')) \
           OR NOT EXISTS (SELECT 1 FROM events e WHERE e.instance_id = i.id AND e.kind = i.status)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if unmatched != 0 {
        problems.push(format!(
            "{unmatched} instances without exactly one terminal event matching their status"
        ));
    }
    let deadlocks = problems.iter().filter(|p| p.contains("deadlock")).count();
    assert!(
        problems.is_empty(),
        "{} problems ({deadlocks} deadlocks):\n{}",
        problems.len(),
        problems.join("\n")
    );
    common::drop_schemas(&url, &[schema]).await;
}

/// Runs `race` once a slot is free.
async fn one_at_a_time(
    slots: Arc<Semaphore>,
    race: impl std::future::Future<Output = Vec<String>>,
) -> Vec<String> {
    let _slot = slots.acquire().await.unwrap();
    race.await
}

/// A: cancel of a parent listening for its first child, against that
/// child's and a sibling's finish, a heartbeat of the three children (in
/// reverse order) and an event sent to the parent.
async fn race_a(
    admin: Arc<PgStore>,
    worker: Arc<PgStore>,
    parent: InstanceId,
    kids: Vec<InstanceId>,
    leases: Vec<Lease>,
    key: String,
) -> Vec<String> {
    let mut p = Problems::default();
    let beat: Vec<Lease> = leases.iter().rev().cloned().collect();
    let (cancel, first, second, renew, sent) = tokio::join!(
        admin.cancel(&parent, AT),
        worker.finish(&leases[0], finish(Status::Completed, AT)),
        worker.finish(&leases[1], finish(Status::Failed, AT)),
        worker.renew(&beat, NOW + 90_000),
        admin.send_event(&parent, "poke", "{}", Some(&key), AT),
    );
    p.control("A cancel", cancel, &[Control::Applied]);
    let first = p.landed("A finish", first);
    let second = p.landed("A finish", second);
    p.landed("A renew", renew);
    p.control("A send_event", sent, &[Control::Applied, CANCELLED]);
    p.status(
        "A parent",
        admin.get(&parent).await.unwrap(),
        Status::Cancelled,
    );
    let want = if first {
        Status::Completed
    } else {
        Status::Cancelled
    };
    p.status("A first child", admin.get(&kids[0]).await.unwrap(), want);
    let want = if second {
        Status::Failed
    } else {
        Status::Cancelled
    };
    p.status("A second child", admin.get(&kids[1]).await.unwrap(), want);
    p.status(
        "A third child",
        admin.get(&kids[2]).await.unwrap(),
        Status::Cancelled,
    );
    p.0
}

/// B: cancel of a running parent, against it suspending to wait for its
/// running child and that child's finish.
async fn race_b(
    admin: Arc<PgStore>,
    worker: Arc<PgStore>,
    (parent, parent_lease): (InstanceId, Lease),
    (child, child_lease): (InstanceId, Lease),
) -> Vec<String> {
    let mut p = Problems::default();
    let (cancel, suspended, finished) = tokio::join!(
        admin.cancel(&parent, AT),
        worker.suspend(&parent_lease, listen_for(&child, AT)),
        worker.finish(&child_lease, finish(Status::Completed, AT)),
    );
    p.control("B cancel", cancel, &[Control::Applied]);
    p.landed("B suspend", suspended);
    let finished = p.landed("B finish", finished);
    p.status(
        "B parent",
        admin.get(&parent).await.unwrap(),
        Status::Cancelled,
    );
    let want = if finished {
        Status::Completed
    } else {
        Status::Cancelled
    };
    p.status("B child", admin.get(&child).await.unwrap(), want);
    p.0
}

/// C: cancel of a parent listening for its running child, against the
/// child's own cancel (from another process), which wakes the parent.
async fn race_c(
    admin: Arc<PgStore>,
    worker: Arc<PgStore>,
    parent: InstanceId,
    child: InstanceId,
) -> Vec<String> {
    let mut p = Problems::default();
    let (of_parent, of_child) = tokio::join!(admin.cancel(&parent, AT), worker.cancel(&child, AT));
    p.control("C parent cancel", of_parent, &[Control::Applied]);
    p.control("C child cancel", of_child, &[Control::Applied, CANCELLED]);
    p.status(
        "C parent",
        admin.get(&parent).await.unwrap(),
        Status::Cancelled,
    );
    p.status(
        "C child",
        admin.get(&child).await.unwrap(),
        Status::Cancelled,
    );
    p.0
}

/// D: timeout of the eldest of three generations (cancelling the other
/// two), against the youngest finishing (waking the middle one) and a
/// heartbeat of both.
async fn race_d(
    worker: Arc<PgStore>,
    (top, top_lease): (InstanceId, Lease),
    mid: InstanceId,
    (leaf, leaf_lease): (InstanceId, Lease),
) -> Vec<String> {
    let mut p = Problems::default();
    let beat = [leaf_lease.clone(), top_lease.clone()];
    let (timed_out, finished, renew) = tokio::join!(
        worker.finish(&top_lease, finish(Status::TimedOut, LATE)),
        worker.finish(&leaf_lease, finish(Status::Completed, LATE)),
        worker.renew(&beat, NOW + 90_000),
    );
    // Nothing else touches the eldest's lease.
    if let Err(err) = timed_out {
        p.0.push(format!("D timeout: {err}"));
    }
    let finished = p.landed("D finish", finished);
    p.landed("D renew", renew);
    p.status("D top", worker.get(&top).await.unwrap(), Status::TimedOut);
    p.status(
        "D middle",
        worker.get(&mid).await.unwrap(),
        Status::Cancelled,
    );
    let want = if finished {
        Status::Completed
    } else {
        Status::Cancelled
    };
    p.status("D leaf", worker.get(&leaf).await.unwrap(), want);
    p.0
}

/// Holds `id`'s row (FOR SHARE, as a parent's suspend holds the child it
/// waits for) until the returned transaction ends.
async fn hold(s: &PgStore, id: &InstanceId) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE id = $1 FOR SHARE")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// A heartbeat over many rows, one of which another transaction holds,
/// renews the others and commits them while it waits for that one: it
/// never holds a row while waiting for another, so it can be part of no
/// deadlock however the rows relate.
#[tokio::test]
async fn a_heartbeat_waits_for_a_held_row_holding_no_other() {
    let Some(url) = common::url("a_heartbeat_waits_for_a_held_row") else {
        return;
    };
    let schema = common::fresh_schema("beat_held");
    let s = store(&url, &schema).await;
    let new: Vec<NewInstance> = (0..3).map(|n| instance("wf", n, None)).collect();
    let ids: Vec<InstanceId> = new.iter().map(|n| n.id.clone()).collect();
    s.create_many(new).await.unwrap();
    let leases = claim_all(&s, "w", "wf", 3).await;
    let leases: Vec<Lease> = ids.iter().map(|id| leases[id].clone()).collect();
    let mut claimed = Vec::new();
    for id in &ids {
        claimed.push(lease_end(&s, id).await);
    }
    let held = hold(&s, &ids[1]).await;
    // Half a minute past the claim's lease (leases follow the database's
    // clock, which this machine's shares here).
    let until = now_millis() + 90_000;
    let beat = tokio::spawn({
        let (s, leases) = (s.clone(), leases.clone());
        async move { s.renew(&leases, until).await }
    });
    // The rows not held are renewed (and committed) while it waits, however
    // slow the server is today.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lease_end(&s, &ids[0]).await <= claimed[0] || lease_end(&s, &ids[2]).await <= claimed[2] {
        assert!(std::time::Instant::now() < deadline, "rows 0 and 2 renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!beat.is_finished(), "waits for the held row");
    assert_eq!(
        lease_end(&s, &ids[1]).await,
        claimed[1],
        "the held row waits"
    );
    held.commit().await.unwrap();
    let renewals = beat.await.unwrap().unwrap();
    let answered: Vec<(InstanceId, bool)> = renewals
        .iter()
        .map(|r| (r.lease.instance.clone(), r.held))
        .collect();
    let expected: Vec<(InstanceId, bool)> = ids.iter().map(|id| (id.clone(), true)).collect();
    assert_eq!(
        answered, expected,
        "every lease renewed, in the order asked"
    );
    let row = s.get(&ids[1]).await.unwrap().unwrap();
    assert!(row.run_at > claimed[1], "renewed once let go");
    assert_eq!(row.run_at, lease_end(&s, &ids[1]).await, "due when it ends");
    common::drop_schemas(&url, &[schema]).await;
}

/// When `id`'s lease ends, as stored.
async fn lease_end(s: &PgStore, id: &InstanceId) -> Millis {
    sqlx::query_scalar("SELECT lease_expires_at FROM instances WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap()
}

/// Freeing a dead worker's leases, one of whose rows another transaction
/// holds, frees (and commits) the others while it waits for that one, then
/// frees it too.
#[tokio::test]
async fn freeing_a_dead_workers_leases_waits_for_a_held_row_holding_no_other() {
    let Some(url) = common::url("freeing_a_dead_workers_leases_waits") else {
        return;
    };
    let schema = common::fresh_schema("release_held");
    let s = store(&url, &schema).await;
    let new: Vec<NewInstance> = (0..3).map(|n| instance("wf", n, None)).collect();
    let ids: Vec<InstanceId> = new.iter().map(|n| n.id.clone()).collect();
    s.create_many(new).await.unwrap();
    claim_all(&s, "dead", "wf", 3).await;
    let held = hold(&s, &ids[1]).await;
    let releasing = tokio::spawn({
        let s = s.clone();
        async move { s.release_owner("dead", AT).await }
    });
    // The rows not held are freed (and committed) while it waits, however
    // slow the server is today.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for id in [&ids[0], &ids[2]] {
        while s.get(id).await.unwrap().unwrap().status != Status::Pending {
            assert!(std::time::Instant::now() < deadline, "{id} freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(!releasing.is_finished(), "waits for the held row");
    let row = s.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(row.status, Status::InProgress, "the held row waits");
    held.commit().await.unwrap();
    assert_eq!(releasing.await.unwrap().unwrap(), 3);
    for id in &ids {
        let row = s.get(id).await.unwrap().unwrap();
        assert_eq!(row.status, Status::Pending, "{id}");
        let released = s.history(id).await.unwrap();
        assert_eq!(
            released.iter().filter(|e| e.kind == "released").count(),
            1,
            "{id}"
        );
    }
    common::drop_schemas(&url, &[schema]).await;
}

/// A purge that waits to lock a tree (a transaction holds its root `FOR
/// SHARE`, as a create of a child under it does) reads the tree again once
/// it has the locks: the child that transaction added keeps the tree, and
/// no child is left pointing at a deleted parent. Before, the purge
/// deleted the members it had read before it waited.
#[tokio::test]
async fn a_purge_keeps_a_tree_a_child_joined_while_it_waited() {
    use sqlx::Connection;
    let Some(url) = common::url("a_purge_keeps_a_tree_a_child_joined_while_it_waited") else {
        return;
    };
    let schema = common::fresh_schema("purge_join");
    let s = store(&url, &schema).await;
    let root = s.create(instance("w", 1, None), None).await.unwrap();
    let root = root.into_row().id;
    s.cancel(&root, T0 + 10).await.unwrap();
    let mut joining = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path TO \"{schema}\"; BEGIN"
    )))
    .execute(&mut joining)
    .await
    .unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE id = $1 FOR SHARE")
        .bind(root.as_str())
        .execute(&mut joining)
        .await
        .unwrap();
    let child = InstanceId::at(NOW);
    sqlx::query(
        "INSERT INTO instances (id, workflow, status, input, created_at, updated_at, \
             finished_at, run_at, parent_id) \
         VALUES ($1, 'w', 'cancelled', '{}', $2, $2, $2, $2, $3)",
    )
    .bind(child.as_str())
    .bind(NOW)
    .bind(root.as_str())
    .execute(&mut joining)
    .await
    .unwrap();
    let purging = tokio::spawn({
        let s = s.clone();
        async move { s.purge(T0 + 1_000, None, 10).await }
    });
    // Until the purge waits for the root's lock.
    common::until_counted(
        s.pool(),
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND a.query LIKE '%FOR UPDATE%'",
        "the purge never waited for the root",
    )
    .await;
    sqlx::raw_sql("COMMIT").execute(&mut joining).await.unwrap();
    let purged = purging.await.unwrap().unwrap();
    assert_eq!(purged, 0, "the tree a child joined was purged");
    assert!(s.get(&root).await.unwrap().is_some(), "the root went");
    assert!(s.get(&child).await.unwrap().is_some());
    common::drop_schemas(&url, &[schema]).await;
}
