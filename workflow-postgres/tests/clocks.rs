//! Leases follow the database's clock, not the workers': a worker whose
//! clock runs ahead cannot take instances from live workers, and one whose
//! clock lags still takes over instances whose lease lapsed. Due times of
//! waiting instances (sleeps, retries, timeouts) still follow the claiming
//! worker's clock; a wake-up (an event, a resume, a hand-back) is due by
//! the database's clock at the latest.

mod common;

use std::time::Duration;

use workflow_core::store::*;
use workflow_core::{InstanceId, StoreError};
use workflow_postgres::{PgOptions, PgStore};

/// How far ahead (or behind) a skewed worker's clock is: twice the lease.
const SKEW: Millis = 60_000;
/// The engine's default lease.
const LEASE: Millis = 30_000;
/// A lease short enough to wait out.
const SHORT: Millis = 2_000;

async fn store(url: &str, schema: &str) -> PgStore {
    PgStore::connect_with(url, PgOptions::new().schema(schema).listen(false))
        .await
        .expect("connect")
}

/// A pending instance due now (by this machine's clock, which the
/// database shares here).
async fn create(s: &PgStore) -> InstanceId {
    let new = common::pending("wf", now_millis());
    let id = new.id.clone();
    s.create(new, None).await.unwrap();
    id
}

/// A claim by `owner`, whose clock is `skew` ms off, for a lease of `lease` ms.
async fn claim(s: &PgStore, owner: &str, skew: Millis, lease: Millis) -> Vec<Claimed> {
    let now = now_millis() + skew;
    let claimed = s
        .claim(ClaimRequest {
            owner: owner.into(),
            workflows: vec!["wf".into()],
            now,
            due_by: now,
            lease_until: now + lease,
            limit: 10,
        })
        .await
        .unwrap();
    for c in &claimed {
        assert_eq!(
            c.row.run_at,
            now + lease,
            "the claimed row carries the lease's end by the claimer's clock"
        );
    }
    claimed
}

/// How long `id`'s lease has left by the database's clock, in ms.
async fn lease_left(s: &PgStore, id: &InstanceId) -> Millis {
    sqlx::query_scalar(
        "SELECT lease_expires_at - floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::int8 \
         FROM instances WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_one(s.pool())
    .await
    .unwrap()
}

/// A lease's length by the database's clock, as stored: not shortened or
/// lengthened by the claimer's skew (a little is gone by the time we look).
async fn assert_lease_lasts(s: &PgStore, id: &InstanceId, lease: Millis) {
    let left = lease_left(s, id).await;
    // Room for a slow machine between the write and this look; a skew
    // (a minute in these tests) is far outside it.
    let slack = (lease / 2).min(5_000);
    assert!(
        left <= lease && left > lease - slack,
        "{lease} ms asked, {left} ms left by the database's clock"
    );
}

/// Worker A claims with a right clock; B's clock runs a minute ahead (twice
/// the lease). B takes none of A's instances while their leases run by the
/// database's clock, and takes one over once its lease really lapsed.
#[tokio::test]
async fn a_fast_clock_takes_no_live_lease() {
    let Some(url) = common::url("a_fast_clock_takes_no_live_lease") else {
        return;
    };
    let schema = common::fresh_schema("fast_clock");
    let s = store(&url, &schema).await;
    let long = create(&s).await;
    let a = claim(&s, "a", 0, LEASE).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].row.id, long);
    assert_lease_lasts(&s, &long, LEASE).await;
    let short = create(&s).await;
    let a_short = claim(&s, "a", 0, SHORT).await;
    assert_eq!(a_short.len(), 1);
    assert_eq!(a_short[0].row.id, short);

    let b = claim(&s, "b", SKEW, LEASE).await;
    let taken: Vec<&InstanceId> = b.iter().map(|c| &c.row.id).collect();
    assert!(
        taken.is_empty(),
        "a clock a minute ahead took live instances: {taken:?}"
    );

    // A's short lease lapses by the database's clock; its long one runs on.
    tokio::time::sleep(Duration::from_millis(SHORT as u64 + 500)).await;
    let b = claim(&s, "b", SKEW, LEASE).await;
    let taken: Vec<&InstanceId> = b.iter().map(|c| &c.row.id).collect();
    assert_eq!(taken, [&short], "only the lapsed lease is taken over");
    assert_eq!(b[0].lease.run, 2);
    assert_eq!(b[0].interrupted_runs, 1);
    // B's lease lasts what B asked by the database's clock, not a minute
    // more: a right clock takes it once that is over.
    assert_lease_lasts(&s, &short, LEASE).await;
    // A's late write to the instance B took is refused.
    let step = StepRow {
        key: "late".into(),
        output: Some("1".into()),
        error: None,
        state: None,
        attempts: 1,
        started_at: now_millis(),
        finished_at: now_millis(),
    };
    assert!(matches!(
        s.commit_step(&a_short[0].lease, step).await,
        Err(StoreError::LeaseLost(_))
    ));
    // A keeps the other, and renews it (for twice the lease: a renewal
    // may keep an end still most of the lease away).
    let renewed = s
        .renew(std::slice::from_ref(&a[0].lease), now_millis() + 2 * LEASE)
        .await
        .unwrap();
    assert!(renewed[0].held);
    assert_lease_lasts(&s, &long, 2 * LEASE).await;
    assert!(claim(&s, "b", SKEW, LEASE).await.is_empty());
    common::drop_schemas(&url, &[schema]).await;
}

/// C's clock lags a minute behind (twice the lease): an instance whose lease
/// lapsed by the database's clock is still taken over, with a lease that
/// lasts what C asked. Due times of pending instances still follow C's clock.
#[tokio::test]
async fn a_slow_clock_takes_a_lapsed_lease() {
    let Some(url) = common::url("a_slow_clock_takes_a_lapsed_lease") else {
        return;
    };
    let schema = common::fresh_schema("slow_clock");
    let s = store(&url, &schema).await;
    let id = create(&s).await;
    let a = claim(&s, "a", 0, SHORT).await;
    assert_eq!(a.len(), 1);
    assert!(
        claim(&s, "c", -SKEW, LEASE).await.is_empty(),
        "a live lease is not taken"
    );
    // A's lease lapses by the database's clock (A died).
    tokio::time::sleep(Duration::from_millis(SHORT as u64 + 500)).await;
    let c = claim(&s, "c", -SKEW, LEASE).await;
    let taken: Vec<&InstanceId> = c.iter().map(|c| &c.row.id).collect();
    assert_eq!(
        taken,
        [&id],
        "a clock a minute behind takes the lapsed lease"
    );
    assert_eq!(c[0].lease.run, 2);
    // C's lease lasts what it asked by the database's clock, not a minute
    // less (it would have lapsed already): a right clock cannot take it.
    assert_lease_lasts(&s, &id, LEASE).await;
    assert!(claim(&s, "d", 0, LEASE).await.is_empty());

    // A pending instance is due by the claimer's clock, as before: created
    // due now, it is not due yet for a clock a minute behind.
    let pending = create(&s).await;
    assert!(claim(&s, "c", -SKEW, LEASE).await.is_empty());
    let d = claim(&s, "d", 0, LEASE).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].row.id, pending);
    common::drop_schemas(&url, &[schema]).await;
}

/// A renewal lasts what it asks from when it is made, by the database's
/// clock: renewed to end a short while from now, the lease lapses then for
/// every clock, and is not taken before, even by a clock running ahead.
#[tokio::test]
async fn a_renewal_lasts_its_length_by_the_database_clock() {
    let Some(url) = common::url("a_renewal_lasts_its_length_by_the_database_clock") else {
        return;
    };
    let schema = common::fresh_schema("renew_clock");
    let s = store(&url, &schema).await;
    let id = create(&s).await;
    let a = claim(&s, "a", 0, LEASE).await;
    let renewed = s
        .renew(std::slice::from_ref(&a[0].lease), now_millis() + SHORT)
        .await
        .unwrap();
    assert!(renewed[0].held);
    assert_lease_lasts(&s, &id, SHORT).await;
    assert!(claim(&s, "b", SKEW, LEASE).await.is_empty());
    tokio::time::sleep(Duration::from_millis(SHORT as u64 + 500)).await;
    let late = claim(&s, "c", -SKEW, LEASE).await;
    assert_eq!(late.len(), 1, "lapsed for a clock a minute behind too");
    assert_eq!(late[0].row.id, id);
    let renewed = s
        .renew(std::slice::from_ref(&a[0].lease), now_millis() + LEASE)
        .await
        .unwrap();
    assert!(!renewed[0].held, "taken over: A's renewal is refused");
    common::drop_schemas(&url, &[schema]).await;
}

/// A row another transaction holds and does not let go (its client cut
/// off mid-transaction) costs a renewal a second at most: the other leases
/// are renewed, and the held one is left out of the answer (it keeps its
/// end). Before, the renewal waited for the row for as long as it was held.
#[tokio::test]
async fn a_row_held_elsewhere_does_not_stall_renewals() {
    let Some(url) = common::url("a_row_held_elsewhere_does_not_stall_renewals") else {
        return;
    };
    let schema = common::fresh_schema("held_row");
    let s = store(&url, &schema).await;
    let held = create(&s).await;
    let free = create(&s).await;
    let claimed = claim(&s, "a", 0, LEASE).await;
    assert_eq!(claimed.len(), 2);
    let leases: Vec<Lease> = claimed.iter().map(|c| c.lease.clone()).collect();
    let mut blocker = s.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE id = $1 FOR UPDATE")
        .bind(held.as_str())
        .execute(&mut *blocker)
        .await
        .unwrap();
    let renewed = tokio::time::timeout(
        Duration::from_secs(10),
        s.renew(&leases, now_millis() + LEASE),
    )
    .await
    .expect("the renewal waited for the held row")
    .unwrap();
    let ids: Vec<&InstanceId> = renewed.iter().map(|r| &r.lease.instance).collect();
    assert_eq!(ids, [&free], "{renewed:?}");
    assert!(renewed[0].held);
    blocker.rollback().await.unwrap();
    // Let go, it renews again.
    let renewed = s.renew(&leases, now_millis() + LEASE).await.unwrap();
    assert_eq!(renewed.len(), 2);
    assert!(renewed.iter().all(|r| r.held));
    common::drop_schemas(&url, &[schema]).await;
}

/// What is due now (an instance handed back, woken by an event, resumed) is
/// due by the database's clock at the latest: a sender whose clock runs a
/// minute ahead no longer makes every claimer wait that minute.
#[tokio::test]
async fn a_fast_senders_wake_up_is_due_now() {
    let Some(url) = common::url("a_fast_senders_wake_up_is_due_now") else {
        return;
    };
    let schema = common::fresh_schema("fast_sender");
    let s = store(&url, &schema).await;
    let id = create(&s).await;
    let a = claim(&s, "a", 0, LEASE).await;
    assert_eq!(a.len(), 1);
    // Handed back by a worker whose clock is a minute ahead.
    s.release(&a[0].lease, now_millis() + SKEW).await.unwrap();
    let b = claim(&s, "b", 0, LEASE).await;
    assert_eq!(b.len(), 1, "due now, not in a minute");
    assert_eq!(b[0].row.id, id);
    // Listening for an event that a fast sender sends.
    let mut wait = Suspend {
        status: workflow_core::Status::Listening,
        run_at: Millis::MAX,
        wait_event: Some("go".into()),
        wait_child: None,
        retry: None,
        state: None,
        reason: "waiting for go".into(),
        at: now_millis(),
    };
    s.suspend(&b[0].lease, wait.clone()).await.unwrap();
    s.send_event(&id, "go", "1", None, now_millis() + SKEW)
        .await
        .unwrap();
    let c = claim(&s, "c", 0, LEASE).await;
    assert_eq!(c.len(), 1, "woken now, not in a minute");
    // Paused, then resumed by a fast caller.
    wait.wait_event = Some("more".into());
    s.suspend(&c[0].lease, wait).await.unwrap();
    s.pause(&id, now_millis()).await.unwrap();
    s.resume(&id, now_millis() + SKEW).await.unwrap();
    let d = claim(&s, "d", 0, LEASE).await;
    assert_eq!(d.len(), 1, "resumed now");
    // Listening, and the event came before it suspended.
    s.send_event(&id, "again", "2", None, now_millis())
        .await
        .unwrap();
    let early = Suspend {
        status: workflow_core::Status::Listening,
        run_at: Millis::MAX,
        wait_event: Some("again".into()),
        wait_child: None,
        retry: None,
        state: None,
        reason: "waiting for again".into(),
        at: now_millis() + SKEW,
    };
    s.suspend(&d[0].lease, early).await.unwrap();
    let e = claim(&s, "e", 0, LEASE).await;
    assert_eq!(e.len(), 1, "the event was there: due now");
    // Every lease of a worker handed back at once (its shutdown).
    s.release_owner("e", now_millis() + SKEW).await.unwrap();
    assert_eq!(claim(&s, "f", 0, LEASE).await.len(), 1, "handed back now");

    // Started by a fast machine (an API server), due now...
    let ahead = now_millis() + SKEW;
    let fresh = common::pending("wf", ahead);
    let fresh_id = fresh.id.clone();
    s.create(fresh, None).await.unwrap();
    let g = claim(&s, "g", 0, LEASE).await;
    assert_eq!(g.len(), 1, "created due now");
    assert_eq!(g[0].row.id, fresh_id);
    // ... or in a batch; a delayed start keeps its time.
    let mut later = common::pending("wf", ahead);
    later.run_at = ahead + SKEW;
    s.create_many(vec![common::pending("wf", ahead), later])
        .await
        .unwrap();
    assert_eq!(claim(&s, "h", 0, LEASE).await.len(), 1, "only the due one");
    // Paused before its first run, resumed by a fast caller.
    let first = common::pending("wf", now_millis());
    let first_id = first.id.clone();
    s.create(first, None).await.unwrap();
    s.pause(&first_id, now_millis()).await.unwrap();
    s.resume(&first_id, now_millis() + SKEW).await.unwrap();
    assert_eq!(claim(&s, "i", 0, LEASE).await.len(), 1, "resumed now");
    common::drop_schemas(&url, &[schema]).await;
}
