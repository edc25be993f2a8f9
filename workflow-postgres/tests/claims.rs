//! A claim over several workflows locks only the rows it takes: locking
//! `limit` rows of each workflow, to keep the earliest `limit` of them
//! all, held the others until commit, and a worker claiming meanwhile
//! skipped them and came back empty.

mod common;

use workflow_core::store::*;
use workflow_postgres::{PgOptions, PgStore};

#[tokio::test]
async fn a_claim_over_many_workflows_locks_only_what_it_takes() {
    let Some(url) = common::url("a_claim_over_many_workflows_locks_only_what_it_takes") else {
        return;
    };
    let schema = common::fresh_schema("claims");
    let s = PgStore::connect_with(&url, PgOptions::new().schema(&schema).listen(false))
        .await
        .expect("connect");
    let workflows: Vec<String> = (0..10).map(|w| format!("wf{w}")).collect();
    let now = now_millis();
    let mut due = 0;
    for n in 0..10 {
        for w in &workflows {
            due += 1;
            let mut new = common::pending(w, now - 10_000 + due);
            new.key = Some(format!("{w}-{n}"));
            s.create(new, None).await.unwrap();
        }
    }
    let claim = |limit| ClaimRequest {
        owner: "a".into(),
        workflows: workflows.clone(),
        now: now_millis(),
        due_by: now_millis(),
        lease_until: now_millis() + 30_000,
        limit,
    };
    let claimed = s.claim(claim(3)).await.unwrap();
    // The three earliest due, across workflows.
    let taken: Vec<&str> = claimed.iter().map(|c| c.row.workflow.as_str()).collect();
    assert_eq!(taken, ["wf0", "wf1", "wf2"]);
    // A row locked (and not changed) keeps the locker's id in `xmax`
    // after it committed: none of those left pending was locked.
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instances WHERE status = 'pending' AND xmax::text <> '0'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(locked, 0, "the claim locked rows it did not take");
    // The rest are claimed, earliest first, until none is due.
    let mut all = claimed.len();
    loop {
        let more = s.claim(claim(7)).await.unwrap();
        if more.is_empty() {
            break;
        }
        all += more.len();
    }
    assert_eq!(all, 100);
    drop(s);
    common::drop_schemas(&url, &[schema]).await;
}

/// When another claimer holds the earliest rows (its transaction still
/// open), a claim over several workflows takes the next due rows of any
/// of them instead of coming back empty while they wait.
#[tokio::test]
async fn a_claim_takes_other_workflows_when_the_earliest_are_locked() {
    let Some(url) = common::url("a_claim_takes_other_workflows_when_the_earliest_are_locked")
    else {
        return;
    };
    let schema = common::fresh_schema("claims_locked");
    let s = PgStore::connect_with(&url, PgOptions::new().schema(&schema).listen(false))
        .await
        .expect("connect");
    let now = now_millis();
    // wf1's four rows are the earliest due; wf2's come after.
    for n in 0..4 {
        s.create(common::pending("wf1", now - 20_000 + n), None)
            .await
            .unwrap();
    }
    for n in 0..10 {
        s.create(common::pending("wf2", now - 10_000 + n), None)
            .await
            .unwrap();
    }
    // Another claimer has locked wf1's rows and not committed.
    let mut other = s.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM instances WHERE workflow = 'wf1' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let claimed = s
        .claim(ClaimRequest {
            owner: "b".into(),
            workflows: vec!["wf1".into(), "wf2".into()],
            now: now_millis(),
            due_by: now_millis(),
            lease_until: now_millis() + 30_000,
            limit: 4,
        })
        .await
        .unwrap();
    let taken: Vec<&str> = claimed.iter().map(|c| c.row.workflow.as_str()).collect();
    assert_eq!(taken, ["wf2"; 4], "{claimed:?}");
    other.rollback().await.unwrap();
    common::drop_schemas(&url, &[schema]).await;
}

/// Worker `a`'s claim of one instance of `wf`, for a lease of `lease_ms`
/// from now.
fn one_claim(lease_ms: Millis) -> ClaimRequest {
    let now = now_millis();
    ClaimRequest {
        owner: "a".into(),
        workflows: vec!["wf".into()],
        now,
        due_by: now,
        lease_until: now + lease_ms,
        limit: 1,
    }
}

/// A claim that got its connection only after more than half its lease
/// went (a pool exhausted, retries through an outage) takes nothing: the
/// lease it would grant is about to end, and another worker could take the
/// instances over while this one starts them. A timely claim takes them.
#[tokio::test]
async fn a_claim_too_late_for_its_lease_takes_nothing() {
    let Some(url) = common::url("a_claim_too_late_for_its_lease_takes_nothing") else {
        return;
    };
    let schema = common::fresh_schema("claims_late");
    let s = PgStore::connect_with(
        &url,
        PgOptions::new()
            .schema(&schema)
            .listen(false)
            .max_connections(1),
    )
    .await
    .expect("connect");
    s.create(common::pending("wf", now_millis() - 1_000), None)
        .await
        .unwrap();
    let claim = || one_claim(1_000);
    // The pool's only connection is busy for 700 ms of the 1 s lease.
    let held = s.pool().acquire().await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        drop(held);
    });
    let late = s.claim(claim()).await.unwrap();
    release.await.unwrap();
    assert!(
        late.is_empty(),
        "claimed {} with 300 ms of lease left",
        late.len()
    );
    let status: String = sqlx::query_scalar("SELECT status FROM instances")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(status, "pending", "untouched");
    assert_eq!(
        s.claim(claim()).await.unwrap().len(),
        1,
        "a timely claim takes it"
    );
    drop(s);
    common::drop_schemas(&url, &[schema]).await;
}

/// A heartbeat's renewal keeps a lease end that is still more than five
/// sixths of the lease away, and says so (`Renewal::until`): the row's
/// indexed `run_at` is left as it was, so PostgreSQL updates it in place
/// (a HOT update) instead of adding an entry to every index of the table
/// once a second for each running instance. Once a sixth of the lease
/// went, the renewal extends it.
#[tokio::test]
async fn a_renewal_keeps_an_end_far_enough_away() {
    let Some(url) = common::url("a_renewal_keeps_an_end_far_enough_away") else {
        return;
    };
    let schema = common::fresh_schema("renewals");
    let s = PgStore::connect_with(&url, PgOptions::new().schema(&schema).listen(false))
        .await
        .expect("connect");
    s.create(common::pending("wf", now_millis() - 1_000), None)
        .await
        .unwrap();
    let claimed = s.claim(one_claim(30_000)).await.unwrap();
    let lease = claimed[0].lease.clone();
    let run_at = || async {
        sqlx::query_scalar::<_, i64>("SELECT run_at FROM instances")
            .fetch_one(s.pool())
            .await
            .unwrap()
    };
    let hot_updates = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT n_tup_hot_upd FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = 'instances'",
        )
        .fetch_one(s.pool())
        .await
        .unwrap()
    };
    let claimed_end = run_at().await;
    let hot_before = hot_updates().await;

    // A second later, 29 of its 30 s are left: kept.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let asked = now_millis() + 30_000;
    let renewed = s.renew(std::slice::from_ref(&lease), asked).await.unwrap();
    assert!(renewed[0].held);
    assert!(
        renewed[0].until < asked - 500 && renewed[0].until > asked - 10_000,
        "the end kept, about a second short of {asked}: {}",
        renewed[0].until
    );
    assert_eq!(run_at().await, claimed_end, "run_at unchanged");
    // Counted by the server once the renewing connection's statistics
    // reach it: a backend reports them when it goes idle, at most once a
    // second (else ten seconds later), so a second renewal a second on
    // (kept too) sends the first's.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let again = s
        .renew(std::slice::from_ref(&lease), now_millis() + 30_000)
        .await
        .unwrap();
    assert!(
        again[0].held && again[0].until < now_millis() + 29_000,
        "kept again"
    );
    let mut hot = hot_updates().await;
    for _ in 0..120 {
        if hot > hot_before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        hot = hot_updates().await;
    }
    assert!(hot > hot_before, "updated in place: {hot_before} -> {hot}");

    // Asked for an end so far off that a sixth of that lease has gone:
    // extended.
    let far = now_millis() + 120_000;
    let renewed = s.renew(std::slice::from_ref(&lease), far).await.unwrap();
    assert!(renewed[0].held);
    assert_eq!(renewed[0].until, far);
    assert!(run_at().await > claimed_end + 60_000, "extended");
    drop(s);
    common::drop_schemas(&url, &[schema]).await;
}

/// Lease renewals have a connection of their own: with every connection
/// of the pool taken (handlers' commits, the application's own queries),
/// a heartbeat still renews at once, instead of waiting until the leases
/// lapse and healthy handlers are stopped.
#[tokio::test]
async fn a_renewal_does_not_wait_for_a_busy_pool() {
    let Some(url) = common::url("a_renewal_does_not_wait_for_a_busy_pool") else {
        return;
    };
    let schema = common::fresh_schema("renew_busy");
    let s = PgStore::connect_with(
        &url,
        PgOptions::new()
            .schema(&schema)
            .listen(false)
            .max_connections(2)
            // Through the pool, the renewal would give up within a second.
            .acquire_timeout(std::time::Duration::from_millis(300))
            .retry_for(std::time::Duration::from_secs(1)),
    )
    .await
    .expect("connect");
    s.create(common::pending("wf", now_millis() - 1_000), None)
        .await
        .unwrap();
    let claimed = s.claim(one_claim(30_000)).await.unwrap();
    let held = [
        s.pool().acquire().await.unwrap(),
        s.pool().acquire().await.unwrap(),
    ];
    let renewed = s
        .renew(
            std::slice::from_ref(&claimed[0].lease),
            now_millis() + 30_000,
        )
        .await;
    drop(held);
    let renewed = renewed.expect("renewed beside a busy pool");
    assert!(renewed[0].held);
    drop(s);
    common::drop_schemas(&url, &[schema]).await;
}
