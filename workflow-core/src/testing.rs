//! The store conformance suite. Every backend runs it from its own tests:
//!
//! ```text
//! #[tokio::test]
//! async fn conformance() {
//!     workflow_core::testing::conformance(|| async { MyStore::open_fresh().await }).await;
//! }
//! ```
//!
//! `make` must return an empty store each time it is called.
//!
//! [`Unreachable`] wraps a store so that a test can take it away from the
//! engine, as a network partition or a database restart would.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::InstanceId;
use crate::status::Status;
use crate::store::*;
use crate::Definition;

/// Runs every check against fresh stores from `make`; panics on the first failure.
pub async fn conformance<S, F, Fut>(make: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    create_and_get(make().await).await;
    claim_is_exclusive(Arc::new(make().await)).await;
    claim_respects_due_time_and_names(make().await).await;
    claims_judge_leases_and_due_times_by_their_own_clocks(make().await).await;
    claims_take_the_earliest_across_workflows(make().await).await;
    steps_are_fenced_by_the_lease(make().await).await;
    finish_is_final(make().await).await;
    tails_end_the_steps_and_the_history(make().await).await;
    error_texts_with_nul_characters_are_recorded(make().await).await;
    renew_reports_lost_leases(make().await).await;
    cancel_and_deadlines(make().await).await;
    suspend_and_wake(make().await).await;
    a_moved_deadline_makes_waiting_instances_due(make().await).await;
    a_deadline_moved_while_running_bounds_the_next_wait(make().await).await;
    a_deadline_moved_first_beats_the_timeout(make().await).await;
    events_are_kept_until_taken(make().await).await;
    events_with_a_key_are_kept_once(Arc::new(make().await)).await;
    children_wake_parents_and_die_with_them(make().await).await;
    a_cancelled_parent_starts_no_child(make().await).await;
    a_timed_out_parent_cancels_its_children(make().await).await;
    pause_and_resume(make().await).await;
    a_deadline_set_while_paused_counts_from_then(make().await).await;
    schedule_marks_only_move_forward(make().await).await;
    definitions_are_recorded(make().await).await;
    release_owner_frees_instances(make().await).await;
    purge_deletes_ended_instances_and_their_rows(make().await).await;
    interrupted_runs_are_counted(make().await).await;
    dedup_is_atomic(Arc::new(make().await)).await;
    list_filters_and_pages(make().await).await;
}

const T0: Millis = 1_700_000_000_000;

/// A new pending instance of `workflow`, created at `T0 + n`.
pub fn new_instance(workflow: &str, n: i64) -> NewInstance {
    NewInstance {
        id: InstanceId::at(T0 + n),
        workflow: workflow.to_owned(),
        input: format!(r#"{{"n":{n}}}"#),
        tags: BTreeMap::new(),
        key: None,
        created_at: T0 + n,
        run_at: T0 + n,
        deadline_at: Some(T0 + 300_000),
        parent: None,
    }
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

fn step(key: &str, output: &str, state: Option<&str>) -> StepRow {
    StepRow {
        key: key.to_owned(),
        output: Some(output.to_owned()),
        error: None,
        state: state.map(str::to_owned),
        attempts: 1,
        started_at: T0 + 10,
        finished_at: T0 + 11,
    }
}

async fn create_and_get(store: impl Store) {
    let mut new = new_instance("wf", 0);
    new.tags.insert("customer".into(), "42".into());
    new.key = Some("k1".into());
    let id = new.id.clone();
    let row = store.create(new, None).await.unwrap().into_row();
    assert_eq!(row.status, Status::Pending);
    assert_eq!(row.runs, 0);
    let got = store
        .get(&id)
        .await
        .unwrap()
        .expect("created instance is readable");
    assert_eq!(got, row);
    assert_eq!(got.input, r#"{"n":0}"#);
    assert_eq!(got.tags.get("customer").map(String::as_str), Some("42"));
    assert_eq!(got.key.as_deref(), Some("k1"));
    assert_eq!(got.deadline_at, Some(T0 + 300_000));
    assert!(store.get(&InstanceId::new()).await.unwrap().is_none());
    let many: Vec<NewInstance> = (10..20).map(|n| new_instance("wf", n)).collect();
    let rows = store.create_many(many.clone()).await.unwrap();
    assert_eq!(rows.len(), 10);
    for (row, new) in rows.iter().zip(&many) {
        assert_eq!(row.id, new.id);
        assert_eq!(
            store.get(&new.id).await.unwrap().unwrap().status,
            Status::Pending
        );
    }
    let history = store.history(&id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, "created");
    // All or none: a batch with a taken id leaves nothing of itself behind.
    let fresh = new_instance("wf", 30);
    let mut taken = new_instance("wf", 31);
    taken.id = id.clone();
    assert!(store.create_many(vec![fresh.clone(), taken]).await.is_err());
    assert!(
        store.get(&fresh.id).await.unwrap().is_none(),
        "a failed batch kept an instance"
    );
    assert!(store.history(&fresh.id).await.unwrap().is_empty());
}

async fn claim_is_exclusive(store: Arc<impl Store>) {
    for n in 0..20 {
        store.create(new_instance("wf", n), None).await.unwrap();
    }
    let now = T0 + 1_000;
    let (a, b) = tokio::join!(
        store.claim(claim_req("a", now, 15)),
        store.claim(claim_req("b", now, 15))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 20, "every due instance is claimed once");
    let ids: HashSet<_> = a.iter().chain(&b).map(|c| c.row.id.clone()).collect();
    assert_eq!(ids.len(), 20, "no instance is claimed by two workers");
    for c in a.iter().chain(&b) {
        assert_eq!(c.row.status, Status::InProgress);
        assert_eq!(c.row.runs, 1);
        assert_eq!(c.lease.run, 1);
        assert!(c.steps.is_empty());
    }
    assert!(
        store
            .claim(claim_req("c", now, 10))
            .await
            .unwrap()
            .is_empty(),
        "leased instances are not claimable"
    );
    // Past the lease, another worker takes over with a new fencing token.
    let later = now + 60_000;
    let taken = store.claim(claim_req("c", later, 100)).await.unwrap();
    assert_eq!(taken.len(), 20);
    assert!(taken
        .iter()
        .all(|c| c.lease.run == 2 && c.lease.owner == "c"));
}

/// A claim for several workflows takes the earliest due of them all, up to
/// its limit, and leaves other workflows' due rows alone; `next_due` is a
/// bound for the named workflows only.
async fn claims_take_the_earliest_across_workflows(store: impl Store) {
    let mut made = Vec::new();
    for (workflow, n, due) in [
        ("wf", 0, 30),
        ("wf2", 1, 10),
        ("wf", 2, 20),
        ("orphan", 3, 5),
        ("orphan", 4, 200),
    ] {
        let mut new = new_instance(workflow, n);
        new.run_at = T0 + due;
        made.push(new.id.clone());
        store.create(new, None).await.unwrap();
    }
    let due = store
        .next_due(&["wf".to_owned(), "wf2".to_owned()], T0 + 100)
        .await
        .unwrap();
    assert!(
        due.is_none(),
        "only the orphan waits after T0 + 100: {due:?}"
    );
    let req = ClaimRequest {
        workflows: vec!["wf".to_owned(), "wf2".to_owned()],
        ..claim_req("a", T0 + 100, 2)
    };
    let claimed: Vec<_> = store
        .claim(req.clone())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.row.id)
        .collect();
    assert_eq!(claimed, [made[1].clone(), made[2].clone()], "earliest two");
    let rest = store.claim(req).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].row.id, made[0]);
    let orphan = store.get(&made[3]).await.unwrap().unwrap();
    assert_eq!(orphan.status, Status::Pending, "another workflow's row");
    // Due at once in two workflows (a batch started together): the
    // older first, whatever the workflows' names.
    let mut older = new_instance("wf2", 6);
    older.run_at = T0 + 40;
    let older = store.create(older, None).await.unwrap().into_row().id;
    let mut newer = new_instance("wf", 7);
    newer.run_at = T0 + 40;
    store.create(newer, None).await.unwrap();
    let req = ClaimRequest {
        workflows: vec!["wf".to_owned(), "wf2".to_owned()],
        ..claim_req("a", T0 + 100, 1)
    };
    let tie = store.claim(req).await.unwrap();
    assert_eq!(tie.len(), 1);
    assert_eq!(
        tie[0].row.id, older,
        "a tie went to the workflow named first"
    );
    let req = ClaimRequest {
        workflows: vec!["wf".to_owned(), "wf2".to_owned()],
        ..claim_req("a", T0 + 100, 10)
    };
    assert_eq!(store.claim(req).await.unwrap().len(), 1);
    // A name given twice takes its instances once.
    let mut twice = new_instance("wf", 5);
    twice.run_at = T0 + 50;
    let twice = store.create(twice, None).await.unwrap().into_row().id;
    let req = ClaimRequest {
        workflows: vec!["wf".to_owned(), "wf".to_owned()],
        ..claim_req("b", T0 + 100, 2)
    };
    let claimed = store.claim(req).await.unwrap();
    assert_eq!(claimed.len(), 1, "one instance claimed twice");
    assert_eq!(claimed[0].row.id, twice);
    assert_eq!(claimed[0].lease.run, 1);
    assert_eq!(store.get(&twice).await.unwrap().unwrap().runs, 1);
}

async fn claim_respects_due_time_and_names(store: impl Store) {
    let mut later = new_instance("wf", 0);
    later.run_at = T0 + 10_000;
    let later_id = later.id.clone();
    store.create(later, None).await.unwrap();
    store.create(new_instance("other", 1), None).await.unwrap();
    let due = store
        .next_due(&["wf".to_owned()], T0 + 5_000)
        .await
        .unwrap();
    assert!(
        due.is_none_or(|due| due > T0 + 5_000 && due <= T0 + 10_000),
        "next_due is unknown or a bound after `after`: {due:?}"
    );
    // A store that knows (it answered above) counts what is due at `after`.
    let known = due.is_some();
    let due = store
        .next_due(&["wf".to_owned()], T0 + 10_000)
        .await
        .unwrap();
    if known {
        assert_eq!(due, Some(T0 + 10_000), "what is due at `after` counts");
    } else {
        assert!(due.is_none(), "{due:?}");
    }
    let due = store
        .next_due(&["wf".to_owned()], T0 + 10_001)
        .await
        .unwrap();
    assert!(due.is_none(), "nothing waits after T0 + 10 s: {due:?}");
    assert!(store
        .claim(claim_req("a", T0 + 5_000, 10))
        .await
        .unwrap()
        .is_empty());
    let claimed = store.claim(claim_req("a", T0 + 10_000, 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].row.id, later_id);
    assert_eq!(claimed[0].row.started_at, Some(T0 + 10_000));
}

/// Creates instance `n` of `wf` as a child of `parent`, due at `run_at`
/// (`None`: `new_instance`'s), and returns its id.
async fn create_child(
    store: &impl Store,
    parent: &InstanceId,
    n: i64,
    run_at: Option<Millis>,
) -> InstanceId {
    let mut child = new_instance("wf", n);
    child.parent = Some(parent.clone());
    if let Some(run_at) = run_at {
        child.run_at = run_at;
    }
    let id = child.id.clone();
    store.create(child, None).await.unwrap();
    id
}

/// A claim's `due_by` (the engine's clock, which a test may move by hand)
/// decides which waiting instances are due; its `now` (the system clock)
/// alone decides whether a lease lapsed. An engine clock days ahead must
/// not take a running instance from its live worker, and one years behind
/// must not keep a dead worker's instance.
async fn claims_judge_leases_and_due_times_by_their_own_clocks(store: impl Store) {
    const DAY: Millis = 86_400_000;
    let running = running(&store).await;
    let mut sleeper = new_instance("wf", 1);
    sleeper.run_at = T0 + 3 * DAY;
    let sleeper = store.create(sleeper, None).await.unwrap().into_row().id;
    // Ten days ahead by the engine's clock, a second after the lease was
    // granted by the system's: the sleeper is due, the lease holds.
    let ahead = ClaimRequest {
        due_by: T0 + 10 * DAY,
        ..claim_req("b", T0 + 1_000, 10)
    };
    let taken = store.claim(ahead).await.unwrap();
    let ids: Vec<_> = taken.iter().map(|c| c.row.id.clone()).collect();
    assert_eq!(
        ids,
        std::slice::from_ref(&sleeper),
        "a live lease was taken, or the due sleeper left"
    );
    assert_eq!(
        taken[0].row.started_at,
        Some(T0 + 10 * DAY),
        "a claim records its times by the engine's clock"
    );
    assert_eq!(
        taken[0].row.run_at,
        T0 + 31_000,
        "the lease ends by the system clock"
    );
    let history = store.history(&sleeper).await.unwrap();
    assert_eq!(
        history.last().map(|e| (e.kind.as_str(), e.at)),
        Some(("started", T0 + 10 * DAY))
    );
    // Years behind by the engine's clock, after the lease lapsed by the
    // system's: the dead worker's instance is taken over.
    let behind = ClaimRequest {
        due_by: T0 - 1_000 * DAY,
        ..claim_req("c", T0 + 60_000, 10)
    };
    let taken = store.claim(behind).await.unwrap();
    let ids: Vec<_> = taken.iter().map(|c| c.row.id.clone()).collect();
    assert!(
        ids.contains(&running.row.id),
        "a lapsed lease was kept because the engine's clock lags: {ids:?}"
    );
    // ...but a waiting instance due by the system clock only is not.
    let mut waiting = new_instance("wf", 2);
    waiting.run_at = T0 + 2;
    let waiting = store.create(waiting, None).await.unwrap().into_row().id;
    let behind = ClaimRequest {
        due_by: T0 - 1_000 * DAY,
        ..claim_req("c", T0 + 120_000, 10)
    };
    let ids: Vec<_> = store
        .claim(behind)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.row.id)
        .collect();
    assert!(
        !ids.contains(&waiting),
        "a waiting instance was due by the system clock instead of the engine's"
    );
}

/// Instance 0 of `wf`, created and claimed by `a` at `T0 + 1`: running.
async fn running(store: &impl Store) -> Claimed {
    store.create(new_instance("wf", 0), None).await.unwrap();
    store
        .claim(claim_req("a", T0 + 1, 1))
        .await
        .unwrap()
        .remove(0)
}

async fn steps_are_fenced_by_the_lease(store: impl Store) {
    let c = running(&store).await;
    let id = c.row.id.clone();
    let claimed_at = store.get(&id).await.unwrap().unwrap().updated_at;
    assert!(claimed_at < T0 + 11);
    store
        .commit_step(&c.lease, step("fetch", "1", None))
        .await
        .unwrap();
    // A step that leaves the state alone does not bump `updated_at`.
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().updated_at,
        claimed_at
    );
    store
        .commit_step(
            &c.lease,
            step("charge", r#"{"ok":true}"#, Some(r#"{"count":2}"#)),
        )
        .await
        .unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().updated_at, T0 + 11);
    // A second record of the same key keeps the first, and changes
    // nothing else.
    store
        .commit_step(&c.lease, step("fetch", "999", Some(r#"{"count":99}"#)))
        .await
        .unwrap();
    store
        .record_attempt(&c.lease, "ship", 1, "timeout", T0 + 12)
        .await
        .unwrap();
    // The row counts the failed attempt, for a run after a crash; a
    // failed attempt changes neither status, state, deadline nor lease, so
    // `updated_at` stays.
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.retry, Some(("ship".to_owned(), 1)));
    assert_eq!(row.updated_at, T0 + 11);

    let steps = store.steps(&id).await.unwrap();
    let keys: Vec<_> = steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["fetch", "charge"]);
    assert_eq!(steps[0].output.as_deref(), Some("1"));
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().state.as_deref(),
        Some(r#"{"count":2}"#)
    );

    // A stale lease (wrong owner or an older run) writes nothing.
    let stale = Lease {
        run: c.lease.run - 1,
        ..c.lease.clone()
    };
    assert!(matches!(
        store.commit_step(&stale, step("x", "0", None)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let other = Lease {
        owner: "b".into(),
        ..c.lease.clone()
    };
    assert!(matches!(
        store.commit_step(&other, step("x", "0", None)).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.record_attempt(&other, "x", 1, "e", T0).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(store.steps(&id).await.unwrap().len(), 2);

    // Replay after a takeover sees the recorded steps, in order.
    let c2 = store
        .claim(claim_req("b", T0 + 60_000, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        c2.steps.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
        ["fetch", "charge"]
    );
    assert_eq!(c2.steps[1].state.as_deref(), Some(r#"{"count":2}"#));
    assert!(matches!(
        store.commit_step(&c.lease, step("late", "0", None)).await,
        Err(StoreError::LeaseLost(_))
    ));

    let history = store.history(&id).await.unwrap();
    let kinds: Vec<_> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "started",
            "step_completed",
            "step_completed",
            "state_changed",
            "attempt_failed",
            "started"
        ]
    );
    assert_eq!(
        history[2].duration_ms,
        Some(1),
        "step events carry their duration"
    );
    assert_eq!(history[2].step.as_deref(), Some("fetch"));
    assert_eq!(history[4].step.as_deref(), Some("charge"));
    assert_eq!(history[5].attempt, Some(1));
    assert_eq!(history[5].message.as_deref(), Some("timeout"));
    assert!(
        history.windows(2).all(|w| w[0].seq < w[1].seq),
        "history is ordered"
    );

    // The retried step recorded at last: the row's count is gone with it.
    assert_eq!(c2.row.retry, Some(("ship".to_owned(), 1)));
    store
        .commit_step(&c2.lease, step("other", "0", None))
        .await
        .unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.retry, Some(("ship".to_owned(), 1)), "another step");
    let shipped = StepRow {
        attempts: 2,
        ..step("ship", "3", None)
    };
    store.commit_step(&c2.lease, shipped).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().retry, None);
}

async fn tails_end_the_steps_and_the_history(store: impl Store) {
    let c = running(&store).await;
    let id = c.row.id.clone();
    for n in 0..5 {
        let state = (n % 2 == 0).then(|| n.to_string());
        store
            .commit_step(&c.lease, step(&format!("s{n}"), "1", state.as_deref()))
            .await
            .unwrap();
        if n == 3 {
            // An event taken between steps: recorded as a step of its own.
            store
                .send_event(&id, "go", "true", None, T0 + 12)
                .await
                .unwrap();
            let taken = store.take_event(&c.lease, "go", "wait-go", T0 + 12);
            assert_eq!(taken.await.unwrap().as_deref(), Some("true"));
        }
    }
    store
        .record_attempt(&c.lease, "s5", 1, "timeout", T0 + 12)
        .await
        .unwrap();
    let finish = Finish {
        status: Status::Failed,
        output: None,
        error: Some("gave up".into()),
        state: None,
        at: T0 + 50,
    };
    store.finish(&c.lease, finish).await.unwrap();

    let steps = store.steps(&id).await.unwrap();
    assert_eq!(steps.len(), 6);
    for n in 0..=7 {
        let tail = steps[steps.len().saturating_sub(n)..].to_vec();
        assert_eq!(
            store.steps_tail(&id, n).await.unwrap(),
            (tail, 6),
            "last {n}"
        );
    }

    // Events of every kind the store keeps: created, started, the steps'
    // own and their state changes, an event sent and received, a failed
    // attempt, the terminal event. Every tail ends the full history.
    let history = store.history(&id).await.unwrap();
    let total = history.len() as u64;
    assert!(total >= 13, "{history:?}");
    for n in 1..history.len() {
        let (last, all) = store.history_tail(&id, n).await.unwrap();
        let expected = &history[history.len() - n..];
        assert_eq!((last.as_slice(), all), (expected, total), "last {n}");
    }
    let (last, _) = store.history_tail(&id, 1).await.unwrap();
    assert_eq!(last[0].kind, "failed");
    assert_eq!(store.history_tail(&id, 99).await.unwrap(), (history, total));
    assert_eq!(store.history_tail(&id, 0).await.unwrap(), (vec![], total));

    let unknown = InstanceId::new();
    assert_eq!(store.steps_tail(&unknown, 5).await.unwrap(), (vec![], 0));
    assert_eq!(store.history_tail(&unknown, 5).await.unwrap(), (vec![], 0));
}

async fn finish_is_final(store: impl Store) {
    let c = running(&store).await;
    let id = c.row.id.clone();
    let finish = Finish {
        status: Status::Completed,
        output: Some(r#""done""#.into()),
        error: None,
        state: Some("7".into()),
        at: T0 + 50,
    };
    store.finish(&c.lease, finish.clone()).await.unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Completed);
    assert_eq!(row.output.as_deref(), Some(r#""done""#));
    assert_eq!(row.state.as_deref(), Some("7"));
    assert_eq!(row.finished_at, Some(T0 + 50));
    let history = store.history(&id).await.unwrap();
    let events: Vec<_> = history
        .iter()
        .map(|e| (e.kind.as_str(), e.at, e.message.as_deref()))
        .collect();
    assert_eq!(
        events[1..],
        [("started", T0 + 1, None), ("completed", T0 + 50, None)],
        "{history:?}"
    );
    assert!(
        matches!(
            store.finish(&c.lease, finish).await,
            Err(StoreError::LeaseLost(_))
        ),
        "a finished instance cannot be finished again"
    );
    assert!(
        store
            .claim(claim_req("b", T0 + 100_000, 10))
            .await
            .unwrap()
            .is_empty(),
        "terminal instances are never claimed"
    );
    assert!(store.lease_owners().await.unwrap().is_empty());

    // Release hands an instance back for another worker.
    let new = new_instance("wf", 1);
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    let c = store
        .claim(claim_req("a", T0 + 2, 1))
        .await
        .unwrap()
        .remove(0);
    store.release(&c.lease, T0 + 3).await.unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!((row.status, row.run_at), (Status::Pending, T0 + 3));
    let again = store.claim(claim_req("b", T0 + 4, 1)).await.unwrap();
    assert_eq!(again.len(), 1, "a released instance is claimable at once");
    assert_eq!(again[0].lease.run, 2);
}

/// Error texts come from handlers (an error chain, a panic message) and may
/// hold any character, NUL included (say, bytes of a binary reply decoded
/// lossily). Recording them must not fail: a run whose outcome cannot be
/// recorded is run again, and fails the same way, for ever. A store may
/// replace what it cannot hold, but keeps the rest.
async fn error_texts_with_nul_characters_are_recorded(store: impl Store) {
    let c = running(&store).await;
    let id = c.row.id.clone();
    store
        .record_attempt(&c.lease, "parse", 1, "bad byte \0 at 3", T0 + 2)
        .await
        .unwrap();
    let failed = StepRow {
        output: None,
        error: Some("bad byte \0 at 3".into()),
        ..step("parse", "null", None)
    };
    store.commit_step(&c.lease, failed).await.unwrap();
    let finish = Finish {
        status: Status::Failed,
        output: None,
        error: Some("step `parse` failed: bad byte \0 at 3".into()),
        state: None,
        at: T0 + 20,
    };
    store.finish(&c.lease, finish).await.unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed);
    let error = row.error.unwrap();
    assert!(
        error.starts_with("step `parse` failed: bad byte ") && error.ends_with(" at 3"),
        "{error:?}"
    );
    let steps = store.steps(&id).await.unwrap();
    assert!(steps[0].error.as_deref().unwrap().starts_with("bad byte "));
    let history = store.history(&id).await.unwrap();
    assert_eq!(history.last().unwrap().kind, "failed");
}

async fn renew_reports_lost_leases(store: impl Store) {
    store.create(new_instance("wf", 0), None).await.unwrap();
    store.create(new_instance("wf", 1), None).await.unwrap();
    let claimed = store.claim(claim_req("a", T0 + 1, 2)).await.unwrap();
    assert_eq!(
        claimed[0].row.run_at,
        T0 + 30_001,
        "a claimed instance is due again when its lease ends"
    );
    let leases: Vec<Lease> = claimed.iter().map(|c| c.lease.clone()).collect();
    let renewed = store.renew(&leases, T0 + 100_000).await.unwrap();
    let row = store.get(&leases[0].instance).await.unwrap().unwrap();
    assert_eq!(row.run_at, T0 + 100_000, "renewing moves the due time too");
    assert_eq!(renewed.len(), 2);
    assert!(renewed
        .iter()
        .all(|r| r.held && r.deadline_at == Some(T0 + 300_000)));
    // The end reported is the one asked, or the one the lease had (a
    // store may keep an end still far enough away), never another.
    assert!(
        renewed
            .iter()
            .all(|r| (T0 + 30_001..=T0 + 100_000).contains(&r.until)),
        "{renewed:?}"
    );
    assert_eq!(
        renewed[0].lease, leases[0],
        "answers come in the order asked"
    );
    // Renewed: still held at a time past the original lease.
    assert!(store
        .claim(claim_req("b", T0 + 60_000, 10))
        .await
        .unwrap()
        .is_empty());
    let taken = store.claim(claim_req("b", T0 + 200_000, 1)).await.unwrap();
    assert_eq!(taken.len(), 1);
    let lost: Vec<Renewal> = store
        .renew(&leases, T0 + 300_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.held)
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].lease.instance, taken[0].row.id);
    // A pause asked of the new holder is not the old one's to hear.
    store.pause(&taken[0].row.id, T0 + 200_001).await.unwrap();
    let old = store
        .renew(std::slice::from_ref(&lost[0].lease), T0 + 300_000)
        .await
        .unwrap();
    assert!(!old[0].held);
    assert!(
        !old[0].pause_requested,
        "a lost lease was told of a pause request"
    );
}

async fn cancel_and_deadlines(store: impl Store) {
    let pending = new_instance("wf", 0);
    let pending_id = pending.id.clone();
    store.create(pending, None).await.unwrap();
    let running = new_instance("wf", 1);
    let running_id = running.id.clone();
    store.create(running, None).await.unwrap();
    let mut later = new_instance("wf", 2);
    later.run_at = T0 + 1_000_000;
    let later_id = later.id.clone();
    store.create(later, None).await.unwrap();
    let c = store
        .claim(claim_req("a", T0 + 1, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.row.id, pending_id);

    // Moving a deadline is seen by the lease holder's next renewal.
    assert_eq!(
        store
            .set_deadline(&pending_id, T0 + 5, T0 + 2)
            .await
            .unwrap(),
        Control::Applied
    );
    assert_eq!(
        store.get(&pending_id).await.unwrap().unwrap().deadline_at,
        Some(T0 + 5)
    );
    let renewed = store
        .renew(std::slice::from_ref(&c.lease), T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(renewed[0].deadline_at, Some(T0 + 5));

    // Cancelling a running instance voids its lease.
    assert_eq!(
        store.cancel(&pending_id, T0 + 3).await.unwrap(),
        Control::Applied
    );
    let row = store.get(&pending_id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Cancelled);
    assert_eq!(row.finished_at, Some(T0 + 3));
    assert!(
        !store
            .renew(std::slice::from_ref(&c.lease), T0 + 60_000)
            .await
            .unwrap()[0]
            .held
    );
    assert!(matches!(
        store.commit_step(&c.lease, step("s", "1", None)).await,
        Err(StoreError::LeaseLost(_))
    ));
    let done = Finish {
        status: Status::Completed,
        output: Some("1".into()),
        error: None,
        state: None,
        at: T0 + 4,
    };
    assert!(
        matches!(
            store.finish(&c.lease, done).await,
            Err(StoreError::LeaseLost(_))
        ),
        "a cancelled instance stays cancelled"
    );

    // Cancelling a pending instance, even one not due yet; it is never claimed.
    assert_eq!(
        store.cancel(&later_id, T0 + 3).await.unwrap(),
        Control::Applied
    );
    assert_eq!(
        store.cancel(&running_id, T0 + 3).await.unwrap(),
        Control::Applied
    );
    assert!(store
        .claim(claim_req("b", T0 + 2_000_000, 10))
        .await
        .unwrap()
        .is_empty());

    // Terminal instances are left alone, and say why.
    assert_eq!(
        store.cancel(&pending_id, T0 + 9).await.unwrap(),
        Control::Terminal(Status::Cancelled)
    );
    assert_eq!(
        store
            .set_deadline(&pending_id, T0 + 9, T0 + 9)
            .await
            .unwrap(),
        Control::Terminal(Status::Cancelled)
    );
    assert_eq!(
        store.cancel(&InstanceId::new(), T0).await.unwrap(),
        Control::NotFound
    );
    let kinds: Vec<String> = store
        .history(&pending_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["created", "started", "deadline_changed", "cancelled"]
    );
}

async fn release_owner_frees_instances(store: impl Store) {
    for n in 0..3 {
        store.create(new_instance("wf", n), None).await.unwrap();
    }
    store.claim(claim_req("dead", T0 + 10, 2)).await.unwrap();
    store.claim(claim_req("alive", T0 + 10, 1)).await.unwrap();
    assert_eq!(store.lease_owners().await.unwrap(), ["alive", "dead"]);
    assert_eq!(store.release_owner("dead", T0 + 11).await.unwrap(), 2);
    assert_eq!(store.lease_owners().await.unwrap(), ["alive"]);
    let taken = store.claim(claim_req("new", T0 + 12, 10)).await.unwrap();
    assert_eq!(
        taken.len(),
        2,
        "a dead worker's instances are claimable before their lease expires"
    );
}

async fn dedup_is_atomic(store: Arc<impl Store>) {
    let active = Status::ACTIVE;
    let mut tasks = Vec::new();
    for n in 0..64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut new = new_instance("wf", n);
            new.key = Some("order-1".into());
            store.create(new, Some(&active)).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Created::New(row) => {
                created += 1;
                ids.insert(row.id);
            }
            Created::Existing(row) => {
                ids.insert(row.id);
            }
        }
    }
    assert_eq!(created, 1, "exactly one caller creates");
    assert_eq!(ids.len(), 1, "all 64 callers get the same instance");

    // Once it ended, the key starts a new instance.
    let c = store
        .claim(claim_req("a", T0 + 1_000, 1))
        .await
        .unwrap()
        .remove(0);
    let finish = Finish {
        status: Status::Failed,
        output: None,
        error: Some("x".into()),
        state: None,
        at: T0 + 1_001,
    };
    store.finish(&c.lease, finish).await.unwrap();
    let mut new = new_instance("wf", 100);
    new.key = Some("order-1".into());
    let newest = match store.create(new.clone(), Some(&active)).await.unwrap() {
        Created::New(row) => row.id,
        Created::Existing(row) => panic!("the ended one was returned: {row:?}"),
    };
    // With Failed among the statuses, the failed one would have been returned.
    new.id = InstanceId::at(T0 + 101);
    let row = store
        .create(new.clone(), Some(&[Status::Failed]))
        .await
        .unwrap();
    assert!(matches!(row, Created::Existing(r) if r.status == Status::Failed));
    // Of several with the key, the newest.
    new.id = InstanceId::at(T0 + 102);
    let row = store.create(new, Some(&Status::ALL)).await.unwrap();
    assert!(
        matches!(&row, Created::Existing(r) if r.id == newest),
        "{row:?}"
    );
}

/// `store.list(q)`, every row readable.
async fn rows(store: &impl Store, q: &ListQuery) -> Vec<InstanceRow> {
    let listed = store.list(q).await.unwrap();
    listed.into_iter().map(Result::unwrap).collect()
}

async fn list_filters_and_pages(store: impl Store) {
    let mut ids = Vec::new();
    for n in 0..25 {
        let mut new = new_instance(if n % 5 == 0 { "other" } else { "wf" }, n);
        if n % 2 == 0 {
            new.tags.insert("even".into(), "yes".into());
        }
        ids.push(new.id.clone());
        store.create(new, None).await.unwrap();
    }
    let all = |limit| ListQuery {
        limit,
        ..ListQuery::default()
    };
    let page = rows(&store, &all(10)).await;
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].id, ids[24], "newest first");
    // Summaries: the same rows, each without its documents or as it is.
    let summaries = rows(
        &store,
        &ListQuery {
            summaries: true,
            ..all(10)
        },
    )
    .await;
    assert_eq!(summaries.len(), page.len());
    for (summary, full) in summaries.iter().zip(&page) {
        let bare = InstanceRow {
            input: "null".to_owned(),
            output: None,
            state: None,
            ..full.clone()
        };
        assert!(
            *summary == bare || summary == full,
            "a summary is the row without its documents, or the row: {summary:?}"
        );
    }
    // Paging by cursor is stable under inserts made between pages.
    store.create(new_instance("wf", 99), None).await.unwrap();
    let next = rows(
        &store,
        &ListQuery {
            before: Some(page[9].id.clone()),
            ..all(10)
        },
    )
    .await;
    assert_eq!(next[0].id, ids[14]);
    let wf = rows(
        &store,
        &ListQuery {
            workflow: Some("other".into()),
            ..all(100)
        },
    )
    .await;
    assert_eq!(wf.len(), 5);
    let even = rows(
        &store,
        &ListQuery {
            tags: [("even".to_owned(), "yes".to_owned())].into(),
            ..all(100)
        },
    )
    .await;
    assert_eq!(even.len(), 13);
    let ranged = rows(
        &store,
        &ListQuery {
            created_from: Some(T0 + 5),
            created_to: Some(T0 + 10),
            ..all(100)
        },
    )
    .await;
    assert_eq!(ranged.len(), 5);
    // The widest bounds take every row (and do not overflow).
    let widest = rows(
        &store,
        &ListQuery {
            created_from: Some(i64::MIN),
            created_to: Some(i64::MAX),
            ..all(100)
        },
    )
    .await;
    assert_eq!(widest.len(), rows(&store, &all(100)).await.len());
    let pending = rows(
        &store,
        &ListQuery {
            statuses: vec![Status::Pending],
            ..all(100)
        },
    )
    .await;
    assert_eq!(pending.len(), 26);
    let none = rows(
        &store,
        &ListQuery {
            statuses: vec![Status::Completed],
            ..all(100)
        },
    )
    .await;
    assert!(none.is_empty());
    assert_eq!(
        store.count_by_status(None).await.unwrap(),
        [(Status::Pending, 26)]
    );
    assert_eq!(
        store.count_by_status(Some("other")).await.unwrap(),
        [(Status::Pending, 5)]
    );
    let c = store
        .claim(ClaimRequest {
            workflows: vec!["other".into()],
            ..claim_req("a", T0 + 100, 2)
        })
        .await
        .unwrap();
    assert_eq!(c.len(), 2);
    let mut counts = store.count_by_status(Some("other")).await.unwrap();
    counts.sort();
    assert_eq!(counts, [(Status::Pending, 3), (Status::InProgress, 2)]);
    // Several statuses (one named twice): newest first across them, each
    // row once, and the cursor pages on through them.
    let several = |before: Option<InstanceId>, limit| ListQuery {
        statuses: vec![Status::InProgress, Status::Pending, Status::InProgress],
        before,
        ..all(limit)
    };
    let ids_of = |rows: &[InstanceRow]| rows.iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
    let both = ids_of(&rows(&store, &several(None, 100)).await);
    assert_eq!(both.len(), 26);
    assert!(both.windows(2).all(|w| w[0] > w[1]), "{both:?}");
    let first = rows(&store, &several(None, 10)).await;
    assert_eq!(ids_of(&first), both[..10]);
    let next = rows(&store, &several(Some(first[9].id.clone()), 10)).await;
    assert_eq!(ids_of(&next), both[10..20]);
    assert!(store
        .count_by_status(Some("nope"))
        .await
        .unwrap()
        .is_empty());
}

fn completed(output: &str, at: Millis) -> Finish {
    Finish {
        status: Status::Completed,
        output: Some(output.into()),
        error: None,
        state: None,
        at,
    }
}

fn suspend_at(status: Status, run_at: Millis, at: Millis) -> Suspend {
    Suspend {
        status,
        run_at,
        wait_event: None,
        wait_child: None,
        retry: None,
        state: None,
        reason: "test".into(),
        at,
    }
}

async fn suspend_and_wake(store: impl Store) {
    let c = running(&store).await;
    let id = c.row.id.clone();
    let mut sleep = suspend_at(Status::Pending, T0 + 10_000, T0 + 2);
    sleep.retry = Some(("charge".into(), 2));
    sleep.state = Some(r#"{"n":1}"#.into());
    store.suspend(&c.lease, sleep.clone()).await.unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Pending);
    assert_eq!(row.run_at, T0 + 10_000);
    assert_eq!(row.retry, Some(("charge".into(), 2)));
    assert_eq!(row.state.as_deref(), Some(r#"{"n":1}"#));
    assert!(
        store.lease_owners().await.unwrap().is_empty(),
        "a suspended instance holds no lease"
    );
    assert!(matches!(
        store.suspend(&c.lease, sleep).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(
        store
            .claim(claim_req("b", T0 + 9_999, 10))
            .await
            .unwrap()
            .is_empty(),
        "not before it is due"
    );
    let again = store.claim(claim_req("b", T0 + 10_000, 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].row.retry, Some(("charge".into(), 2)));
    assert_eq!(again[0].lease.run, 2);

    // Listening with a timeout: due at the timeout.
    store
        .suspend(
            &again[0].lease,
            suspend_at(Status::Listening, T0 + 20_000, T0 + 10_001),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().status,
        Status::Listening
    );
    assert!(store
        .claim(claim_req("c", T0 + 19_999, 10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .claim(claim_req("c", T0 + 20_000, 10))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The deadline does not count while paused, and a deadline set during a
/// pause was set in paused time: `resume` pushes it back only by the time
/// paused since it was set, not since the pause began.
async fn a_deadline_set_while_paused_counts_from_then(store: impl Store) {
    let new = new_instance("wf", 0);
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    assert_eq!(
        store.pause(&id, T0 + 1_000).await.unwrap(),
        Control::Applied
    );
    // A day into the pause, a new deadline an hour out.
    let set_at = T0 + 86_400_000;
    assert_eq!(
        store
            .set_deadline(&id, set_at + 3_600_000, set_at)
            .await
            .unwrap(),
        Control::Applied
    );
    // Resumed ten minutes later: ten minutes added, not a day and ten.
    assert_eq!(
        store.resume(&id, set_at + 600_000).await.unwrap(),
        Control::Applied
    );
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Pending);
    assert_eq!(row.deadline_at, Some(set_at + 3_600_000 + 600_000));
}

/// Only a running handler watches its deadline: a waiting instance must be
/// due by its deadline, also when the deadline moves while it waits.
async fn a_moved_deadline_makes_waiting_instances_due(store: impl Store) {
    let mut ids = Vec::new();
    for (n, status, run_at) in [
        (0, Status::Listening, Millis::MAX),
        (1, Status::Pending, T0 + 3_600_000),
    ] {
        let new = new_instance("wf", n);
        ids.push(new.id.clone());
        store.create(new, None).await.unwrap();
        let c = store
            .claim(claim_req("a", T0 + 2, 1))
            .await
            .unwrap()
            .remove(0);
        store
            .suspend(&c.lease, suspend_at(status, run_at, T0 + 3))
            .await
            .unwrap();
    }
    assert!(store
        .claim(claim_req("b", T0 + 100, 10))
        .await
        .unwrap()
        .is_empty());
    for id in &ids {
        let control = store.set_deadline(id, T0 + 50, T0 + 10).await.unwrap();
        assert_eq!(control, Control::Applied);
    }
    let due = store.claim(claim_req("b", T0 + 100, 10)).await.unwrap();
    let mut claimed: Vec<_> = due.iter().map(|c| c.row.id.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, ids, "both are due at their new deadline");
    // A later deadline does not make an instance due sooner than it was.
    let new = new_instance("wf", 2);
    let late = new.id.clone();
    store.create(new, None).await.unwrap();
    let c = store
        .claim(claim_req("a", T0 + 200, 1))
        .await
        .unwrap()
        .remove(0);
    store
        .suspend(&c.lease, suspend_at(Status::Pending, T0 + 5_000, T0 + 201))
        .await
        .unwrap();
    store
        .set_deadline(&late, T0 + 9_000, T0 + 202)
        .await
        .unwrap();
    assert_eq!(store.get(&late).await.unwrap().unwrap().run_at, T0 + 5_000);
}

/// A deadline moved while the handler runs reaches the handler only with
/// its next renewal; a wait it suspends to before then is computed from the
/// old deadline. The store, which holds the new one, must still make the
/// instance due by it: else it sleeps past its deadline, for ever if the
/// wait has no timeout.
async fn a_deadline_moved_while_running_bounds_the_next_wait(store: impl Store) {
    let mut ids = Vec::new();
    for (n, status) in [(0, Status::Listening), (1, Status::Pending)] {
        let new = new_instance("wf", n);
        ids.push(new.id.clone());
        store.create(new, None).await.unwrap();
        let c = store
            .claim(claim_req("a", T0 + 2, 1))
            .await
            .unwrap()
            .remove(0);
        let control = store
            .set_deadline(&c.row.id, T0 + 50, T0 + 3)
            .await
            .unwrap();
        assert_eq!(control, Control::Applied);
        // The handler still knows the old deadline (T0 + 300 s).
        let run_at = c.row.deadline_at.expect("instances have a deadline");
        store
            .suspend(&c.lease, suspend_at(status, run_at, T0 + 4))
            .await
            .unwrap();
        assert_eq!(
            store.get(&c.row.id).await.unwrap().unwrap().run_at,
            T0 + 50,
            "{status:?}: due at the deadline the store holds"
        );
    }
    let due = store.claim(claim_req("b", T0 + 50, 10)).await.unwrap();
    let mut claimed: Vec<_> = due.iter().map(|c| c.row.id.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, ids, "both are due at their new deadline");
}

/// `set_timeout` and the worker's timeout race: the deadline moved first,
/// so the `TimedOut` finish (recorded at the old deadline) changes nothing
/// and says why; the lease is still held, and the run can be released.
/// Nothing of the tree is cancelled.
async fn a_deadline_moved_first_beats_the_timeout(store: impl Store) {
    let c = running(&store).await;
    let child = create_child(&store, &c.row.id, 1, None).await;
    let old = c.row.deadline_at.expect("instances have a deadline");
    let control = store
        .set_deadline(&c.row.id, old + 3_600_000, old - 1)
        .await
        .unwrap();
    assert_eq!(control, Control::Applied);
    let timed_out = Finish {
        status: Status::TimedOut,
        output: None,
        error: Some("deadline passed".into()),
        state: None,
        at: old,
    };
    assert!(matches!(
        store.finish(&c.lease, timed_out.clone()).await,
        Err(StoreError::DeadlineMoved(_))
    ));
    let row = store.get(&c.row.id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::InProgress);
    assert_eq!(row.deadline_at, Some(old + 3_600_000));
    assert_eq!(
        store.get(&child).await.unwrap().unwrap().status,
        Status::Pending,
        "the child was not cancelled"
    );
    store.release(&c.lease, old + 1).await.unwrap();
    // Past the new deadline, the same finish applies.
    let c = store
        .claim(claim_req("b", old + 2, 10))
        .await
        .unwrap()
        .into_iter()
        .find(|claimed| claimed.row.id == c.row.id)
        .expect("the released parent is claimed again");
    let late = Finish {
        at: old + 3_600_000,
        ..timed_out
    };
    store.finish(&c.lease, late).await.unwrap();
    assert_eq!(
        store.get(&c.row.id).await.unwrap().unwrap().status,
        Status::TimedOut
    );
    assert_eq!(
        store.get(&child).await.unwrap().unwrap().status,
        Status::Cancelled
    );
}

async fn events_are_kept_until_taken(store: impl Store) {
    let new = new_instance("wf", 0);
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    // Sent before anyone waits: kept.
    assert_eq!(
        store
            .send_event(&id, "approval", r#"{"ok":true}"#, None, T0 + 1)
            .await
            .unwrap(),
        Control::Applied
    );
    store
        .send_event(&id, "approval", r#"{"ok":false}"#, None, T0 + 2)
        .await
        .unwrap();
    let c = store
        .claim(claim_req("a", T0 + 3, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store
            .take_event(&c.lease, "other", "o", T0 + 4)
            .await
            .unwrap(),
        None
    );
    let first = store
        .take_event(&c.lease, "approval", "approval", T0 + 4)
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some(r#"{"ok":true}"#), "oldest first");
    let steps = store.steps(&id).await.unwrap();
    assert_eq!(steps[0].key, "approval");
    assert_eq!(
        steps[0].output.as_deref(),
        Some(r#"{"ok":true}"#),
        "taking records the step"
    );
    // Taken again under a key already recorded (a late run of the same
    // wait): the record answers, and no event goes (it would be lost).
    store
        .send_event(&id, "approval", r#"{"ok":"again"}"#, None, T0 + 4)
        .await
        .unwrap();
    let again = store
        .take_event(&c.lease, "approval", "approval", T0 + 4)
        .await
        .unwrap();
    assert_eq!(again.as_deref(), Some(r#"{"ok":true}"#));
    let steps = store.steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1, "one record per key: {steps:?}");
    assert_eq!(steps[0].output.as_deref(), Some(r#"{"ok":true}"#));
    let next = store
        .take_event(&c.lease, "approval", "approval#1", T0 + 4)
        .await
        .unwrap();
    assert_eq!(
        next.as_deref(),
        Some(r#"{"ok":false}"#),
        "kept for the next wait"
    );

    // Suspending to listen while a matching event waits: due at once.
    let mut listen = suspend_at(Status::Listening, Millis::MAX, T0 + 5);
    listen.wait_event = Some("approval".into());
    store.suspend(&c.lease, listen.clone()).await.unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.run_at),
        (Status::Pending, T0 + 5),
        "no lost wake-up"
    );
    let c = store
        .claim(claim_req("a", T0 + 6, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store
            .take_event(&c.lease, "approval", "approval#2", T0 + 7)
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"ok":"again"}"#)
    );

    // Listening with an empty inbox, then an event wakes it.
    listen.wait_event = Some("shipped".into());
    store.suspend(&c.lease, listen).await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().status,
        Status::Listening
    );
    assert!(store
        .claim(claim_req("a", T0 + 100, 1))
        .await
        .unwrap()
        .is_empty());
    store
        .send_event(&id, "unrelated", "1", None, T0 + 101)
        .await
        .unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().status,
        Status::Listening,
        "other names do not wake it"
    );
    store
        .send_event(&id, "shipped", "2", None, T0 + 102)
        .await
        .unwrap();
    let row = store.get(&id).await.unwrap().unwrap();
    assert_eq!((row.status, row.run_at), (Status::Pending, T0 + 102));
    let c = store
        .claim(claim_req("a", T0 + 103, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.row.wait_event, None, "claiming clears the wait");

    // Events to ended instances are refused.
    store
        .finish(&c.lease, completed("1", T0 + 104))
        .await
        .unwrap();
    assert_eq!(
        store
            .send_event(&id, "late", "1", None, T0 + 105)
            .await
            .unwrap(),
        Control::Terminal(Status::Completed)
    );
    assert_eq!(
        store
            .send_event(&InstanceId::new(), "x", "1", None, T0)
            .await
            .unwrap(),
        Control::NotFound
    );
    let kinds: Vec<String> = store
        .history(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"event_sent".to_owned()) && kinds.contains(&"event_received".to_owned()),
        "{kinds:?}"
    );
}

async fn events_with_a_key_are_kept_once<S: Store>(store: Arc<S>) {
    let new = new_instance("wf", 0);
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    let send = |name: &'static str, payload: &'static str, key: &'static str, at| {
        let store = Arc::clone(&store);
        let id = id.clone();
        async move { store.send_event(&id, name, payload, Some(key), at).await }
    };
    assert_eq!(
        send("approval", "1", "k1", T0 + 1).await.unwrap(),
        Control::Applied
    );
    // Redelivered, under another name or payload: the key alone decides.
    assert_eq!(
        send("approval", "1", "k1", T0 + 2).await.unwrap(),
        Control::Duplicate
    );
    assert_eq!(
        send("other", "2", "k1", T0 + 2).await.unwrap(),
        Control::Duplicate
    );
    // Keys are per instance: the same key reaches another instance.
    let other = new_instance("wf", 1);
    let other_id = other.id.clone();
    store.create(other, None).await.unwrap();
    assert_eq!(
        store
            .send_event(&other_id, "approval", "3", Some("k1"), T0 + 3)
            .await
            .unwrap(),
        Control::Applied
    );
    // Concurrent sends of one key: exactly one is kept.
    let racing: Vec<_> = (0..8)
        .map(|_| tokio::spawn(send("approval", "4", "k2", T0 + 4)))
        .collect();
    let mut applied = 0;
    for r in racing {
        match r.await.unwrap().unwrap() {
            Control::Applied => applied += 1,
            Control::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1, "one of the racing sends is kept");
    // An event without a key is never a duplicate.
    store
        .send_event(&id, "approval", "5", None, T0 + 5)
        .await
        .unwrap();

    let c = store
        .claim(claim_req("a", T0 + 6, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.row.id, id);
    let mut taken = Vec::new();
    for n in 0..4 {
        let step = format!("approval#{n}");
        taken.push(
            store
                .take_event(&c.lease, "approval", &step, T0 + 7)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        taken,
        [
            Some("1".to_owned()),
            Some("4".to_owned()),
            Some("5".to_owned()),
            None
        ],
        "the inbox holds each keyed event once"
    );
    // Still a duplicate once taken, and once the instance has ended.
    assert_eq!(
        send("approval", "1", "k1", T0 + 8).await.unwrap(),
        Control::Duplicate
    );
    store
        .finish(&c.lease, completed("1", T0 + 9))
        .await
        .unwrap();
    assert_eq!(
        send("approval", "1", "k2", T0 + 10).await.unwrap(),
        Control::Duplicate
    );
    // A key never used is refused as any event to an ended instance, and
    // not used up by that refusal.
    assert_eq!(
        send("approval", "1", "k3", T0 + 11).await.unwrap(),
        Control::Terminal(Status::Completed)
    );
    assert_eq!(
        send("approval", "1", "k3", T0 + 12).await.unwrap(),
        Control::Terminal(Status::Completed)
    );
    assert_eq!(
        store
            .send_event(&InstanceId::new(), "x", "1", Some("k1"), T0)
            .await
            .unwrap(),
        Control::NotFound
    );
}

async fn interrupted_runs_are_counted(store: impl Store) {
    let new = new_instance("wf", 0);
    let id = new.id.clone();
    store.create(new, None).await.unwrap();
    let claim = |owner: &'static str, now: Millis| {
        let store = &store;
        async move {
            let mut got = store.claim(claim_req(owner, now, 1)).await.unwrap();
            assert_eq!(got.len(), 1, "{owner} claims it at {now}");
            got.remove(0)
        }
    };
    assert_eq!(claim("a", T0 + 1).await.interrupted_runs, 0, "a first run");
    // Each lease lapses while its run is in progress.
    assert_eq!(claim("b", T0 + 40_000).await.interrupted_runs, 1);
    assert_eq!(claim("c", T0 + 80_000).await.interrupted_runs, 2);
    // A dead owner's lease freed: one more, kept by the next claim.
    assert_eq!(store.release_owner("c", T0 + 80_001).await.unwrap(), 1);
    let d = claim("d", T0 + 80_002).await;
    assert_eq!(d.interrupted_runs, 3);
    // A run that suspends starts the count over.
    store
        .suspend(
            &d.lease,
            suspend_at(Status::Pending, T0 + 80_003, T0 + 80_003),
        )
        .await
        .unwrap();
    let e = claim("e", T0 + 80_004).await;
    assert_eq!(e.interrupted_runs, 0);

    // The engine's pause of a crash loop: `Paused`, its reason in the history.
    assert_eq!(claim("f", T0 + 120_000).await.interrupted_runs, 1);
    let f = store.release_owner("f", T0 + 120_001).await.unwrap();
    assert_eq!(f, 1);
    let g = claim("g", T0 + 120_002).await;
    assert_eq!(g.interrupted_runs, 2);
    let mut pause = suspend_at(Status::Paused, T0 + 120_003, T0 + 120_003);
    pause.reason = "interrupted too often".into();
    store.suspend(&g.lease, pause).await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().status,
        Status::Paused
    );
    let last = store.history(&id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.message.as_deref()),
        ("paused", Some("interrupted too often"))
    );
    assert!(
        store
            .claim(claim_req("h", T0 + 200_000, 1))
            .await
            .unwrap()
            .is_empty(),
        "a paused instance is not claimed"
    );
    assert_eq!(
        store.resume(&id, T0 + 200_001).await.unwrap(),
        Control::Applied
    );
    let h = claim("h", T0 + 200_002).await;
    assert_eq!(h.interrupted_runs, 0, "suspended, then resumed");

    // Paused by a user while a dead owner's run counted: resumed, from 0.
    assert_eq!(store.release_owner("h", T0 + 200_003).await.unwrap(), 1);
    store.pause(&id, T0 + 200_004).await.unwrap();
    assert_eq!(
        store.get(&id).await.unwrap().unwrap().status,
        Status::Paused
    );
    store.resume(&id, T0 + 200_005).await.unwrap();
    assert_eq!(claim("i", T0 + 200_006).await.interrupted_runs, 0);

    // A run that records a step or a failed attempt, or takes an event,
    // got somewhere: only the interruption after it counts. A look that
    // finds no event is no progress: a step that kills the process beside
    // a wait (`join!`) would otherwise never be paused.
    let j = claim("j", T0 + 240_000).await;
    assert_eq!(j.interrupted_runs, 1);
    store
        .commit_step(&j.lease, step("s1", "1", None))
        .await
        .unwrap();
    let k = claim("k", T0 + 280_000).await;
    assert_eq!(k.interrupted_runs, 1, "j recorded a step");
    store
        .record_attempt(&k.lease, "s2", 1, "boom", T0 + 280_001)
        .await
        .unwrap();
    let l = claim("l", T0 + 320_000).await;
    assert_eq!(l.interrupted_runs, 1, "k recorded a failed attempt");
    store
        .take_event(&l.lease, "none", "none", T0 + 320_001)
        .await
        .unwrap();
    let m = claim("m", T0 + 360_000).await;
    assert_eq!(m.interrupted_runs, 2, "l found no event: no progress");
    store
        .send_event(&id, "go", "1", None, T0 + 360_001)
        .await
        .unwrap();
    let taken = store
        .take_event(&m.lease, "go", "go", T0 + 360_002)
        .await
        .unwrap();
    assert_eq!(taken.as_deref(), Some("1"));
    assert_eq!(
        claim("n", T0 + 400_000).await.interrupted_runs,
        1,
        "m took an event"
    );
}

async fn purge_deletes_ended_instances_and_their_rows(store: impl Store) {
    let mut made: std::collections::HashMap<&str, InstanceId> = std::collections::HashMap::new();
    let all_statuses = Status::ALL;
    for (name, workflow, n, parent) in [
        ("old", "wf", 1, None),
        ("recent", "wf", 2, None),
        ("running", "wf", 3, None),
        ("other", "wf2", 4, None),
        ("p", "wf", 5, None),
        ("q", "wf", 6, None),
        ("s", "wf", 7, None),
        ("k", "wf", 8, Some("p")),
        ("r", "wf", 9, Some("q")),
        ("u", "wf", 10, Some("s")),
    ] {
        let mut new = new_instance(workflow, n);
        new.parent = parent.map(|p: &str| made[p].clone());
        if name == "old" {
            new.key = Some("k-old".into());
            new.tags.insert("team".into(), "a".into());
        }
        made.insert(name, new.id.clone());
        store.create(new, Some(&all_statuses)).await.unwrap();
    }
    let mut leases = std::collections::HashMap::new();
    for workflow in ["wf", "wf2"] {
        let req = ClaimRequest {
            workflows: vec![workflow.to_owned()],
            ..claim_req("a", T0 + 100, 100)
        };
        for c in store.claim(req).await.unwrap() {
            leases.insert(c.row.id.clone(), c.lease);
        }
    }
    assert_eq!(leases.len(), 10);
    let lease = |name: &str| leases[&made[name]].clone();
    store
        .commit_step(&lease("old"), step("s1", "1", Some("{}")))
        .await
        .unwrap();
    store
        .send_event(&made["old"], "e", "1", Some("key"), T0 + 102)
        .await
        .unwrap();
    for (name, at) in [
        ("old", T0 + 110),
        ("recent", T0 + 1_000),
        ("other", T0 + 110),
        ("k", T0 + 110),
        ("q", T0 + 110),
        ("r", T0 + 110),
        ("s", T0 + 110),
    ] {
        store
            .finish(&lease(name), completed("1", at))
            .await
            .unwrap();
    }
    let exists = |name: &'static str| {
        let store = &store;
        let made = &made;
        async move { store.get(&made[name]).await.unwrap().is_some() }
    };

    let mut last_seq = 0;
    for id in made.values() {
        for event in store.history(id).await.unwrap() {
            last_seq = last_seq.max(event.seq);
        }
    }

    // A limit of 0 deletes nothing.
    assert_eq!(store.purge(T0 + 500, Some("wf"), 0).await.unwrap(), 0);
    assert!(exists("old").await);
    // Ended before the cutoff, of `wf`, with no running parent or child.
    assert_eq!(store.purge(T0 + 500, Some("wf"), 100).await.unwrap(), 3);
    for gone in ["old", "q", "r"] {
        assert!(!exists(gone).await, "{gone} is deleted");
    }
    for kept in ["recent", "running", "other", "p", "k", "s", "u"] {
        assert!(exists(kept).await, "{kept} is kept");
    }
    // History goes on numbering past what was deleted.
    store
        .commit_step(&lease("running"), step("after-purge", "1", None))
        .await
        .unwrap();
    let history = store.history(&made["running"]).await.unwrap();
    let after = history.last().unwrap();
    assert_eq!(after.step.as_deref(), Some("after-purge"));
    assert!(after.seq > last_seq, "{} after {last_seq}", after.seq);
    let old = &made["old"];
    assert!(
        store.steps(old).await.unwrap().is_empty(),
        "its steps go too"
    );
    assert!(
        store.history(old).await.unwrap().is_empty(),
        "its history too"
    );
    assert_eq!(
        store
            .send_event(old, "e", "1", Some("key"), T0 + 600)
            .await
            .unwrap(),
        Control::NotFound,
        "and its event keys"
    );
    let tagged = ListQuery {
        tags: [("team".to_owned(), "a".to_owned())].into(),
        limit: 10,
        ..ListQuery::default()
    };
    assert!(store.list(&tagged).await.unwrap().is_empty());
    // Its dedup key is free again.
    let mut again = new_instance("wf", 11);
    again.key = Some("k-old".into());
    assert!(matches!(
        store.create(again, Some(&all_statuses)).await.unwrap(),
        Created::New(_)
    ));

    // Every workflow, at most `limit` at a time.
    assert_eq!(store.purge(T0 + 500, None, 1).await.unwrap(), 1);
    assert!(!exists("other").await);
    assert_eq!(store.purge(T0 + 500, None, 100).await.unwrap(), 0);
    // Once the parent ends, it and its child go; once the child ends, the
    // parent that waited for it.
    store
        .finish(&lease("p"), completed("1", T0 + 200))
        .await
        .unwrap();
    store
        .finish(&lease("u"), completed("1", T0 + 200))
        .await
        .unwrap();
    assert_eq!(store.purge(T0 + 500, None, 100).await.unwrap(), 4);
    for gone in ["p", "k", "s", "u"] {
        assert!(!exists(gone).await, "{gone} is deleted");
    }
    assert!(exists("recent").await && exists("running").await);

    // A tree goes whole or not at all: with `a` and `e` running, none of
    // b, c, d goes, so a cancel of `a` still reaches `e` through them.
    let mut chain: Vec<InstanceId> = Vec::new();
    for n in 20..25 {
        let mut new = new_instance("wf", n);
        new.parent = chain.last().cloned();
        // Due before the pending `again`, so the claim takes this one.
        new.run_at = T0 + 5;
        chain.push(new.id.clone());
        store.create(new, Some(&all_statuses)).await.unwrap();
        let c = store
            .claim(claim_req("a", T0 + 120, 1))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(c.row.id, chain[chain.len() - 1]);
        if (1..4).contains(&chain.len().saturating_sub(1)) {
            store
                .finish(&c.lease, completed("1", T0 + 130))
                .await
                .unwrap();
        }
    }
    assert_eq!(store.purge(T0 + 500, None, 100).await.unwrap(), 0);
    store.cancel(&chain[0], T0 + 140).await.unwrap();
    let e = store.get(&chain[4]).await.unwrap().unwrap();
    assert_eq!(e.status, Status::Cancelled, "the cancel reached the last");
    // Every member ended now: the whole tree goes, children included.
    assert_eq!(store.purge(T0 + 500, None, 100).await.unwrap(), 5);
    for id in &chain {
        assert!(store.get(id).await.unwrap().is_none());
    }

    // A held-back tree (its grandchild runs) first in line does not use
    // up a batch: with a limit of 1, the ended tree after it goes.
    let mut held: Vec<InstanceId> = Vec::new();
    for (n, parent, ends) in [
        (30, None, true),
        (31, Some(0), true),
        (32, Some(1), false),
        (33, None, true),
    ] {
        let mut new = new_instance("wf", n);
        new.parent = parent.map(|p: usize| held[p].clone());
        new.run_at = T0 + 5;
        held.push(new.id.clone());
        store.create(new, Some(&all_statuses)).await.unwrap();
        let c = store
            .claim(claim_req("a", T0 + 150, 1))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(&c.row.id, held.last().unwrap());
        if ends {
            store
                .finish(&c.lease, completed("1", T0 + 160))
                .await
                .unwrap();
        }
    }
    assert_eq!(store.purge(T0 + 500, None, 1).await.unwrap(), 1);
    assert!(
        store.get(&held[3]).await.unwrap().is_none(),
        "the ended tree went"
    );
    for id in &held[..3] {
        assert!(
            store.get(id).await.unwrap().is_some(),
            "the held-back tree stays"
        );
    }
}

async fn children_wake_parents_and_die_with_them(store: impl Store) {
    let p = running(&store).await;
    let parent_id = p.row.id.clone();
    let mut child = new_instance("wf", 1);
    child.parent = Some(parent_id.clone());
    child.key = Some(format!("{parent_id}/child"));
    let child_id = child.id.clone();
    store
        .create(child.clone(), Some(&Status::ALL))
        .await
        .unwrap();
    // Created again after a crash: the same child.
    let mut again = child.clone();
    again.id = InstanceId::at(T0 + 2);
    assert!(
        matches!(store.create(again, Some(&Status::ALL)).await.unwrap(), Created::Existing(r) if r.id == child_id)
    );
    assert_eq!(
        store.get(&child_id).await.unwrap().unwrap().parent.as_ref(),
        Some(&parent_id)
    );

    let mut wait = suspend_at(Status::Listening, Millis::MAX, T0 + 3);
    wait.wait_child = Some(child_id.clone());
    store.suspend(&p.lease, wait).await.unwrap();
    assert_eq!(
        store.get(&parent_id).await.unwrap().unwrap().status,
        Status::Listening
    );
    let c = store
        .claim(claim_req("b", T0 + 4, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.row.id, child_id);
    store
        .finish(
            &c.lease,
            Finish {
                status: Status::Completed,
                output: Some("7".into()),
                error: None,
                state: None,
                at: T0 + 5,
            },
        )
        .await
        .unwrap();
    let row = store.get(&parent_id).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.run_at),
        (Status::Pending, T0 + 5),
        "the child's end wakes its parent"
    );

    // Cancelling a parent cancels its unfinished descendants.
    let p = store
        .claim(claim_req("a", T0 + 6, 1))
        .await
        .unwrap()
        .remove(0);
    let kid_id = create_child(&store, &parent_id, 7, None).await;
    let grandkid_id = create_child(&store, &kid_id, 8, None).await;
    let _ = p;
    assert_eq!(
        store.cancel(&parent_id, T0 + 9).await.unwrap(),
        Control::Applied
    );
    for id in [&parent_id, &kid_id, &grandkid_id] {
        assert_eq!(
            store.get(id).await.unwrap().unwrap().status,
            Status::Cancelled
        );
    }
    assert_eq!(
        store.get(&child_id).await.unwrap().unwrap().status,
        Status::Completed,
        "ended children stay as they are"
    );
}

/// A cancel made in another process reaches a running parent's handler
/// only with its next renewal; a child it starts meanwhile must not run
/// for a parent that is already cancelled (a payment taken for an order
/// the user cancelled). It is created `Cancelled`, as the cancel would have
/// left it had it existed then.
async fn a_cancelled_parent_starts_no_child(store: impl Store) {
    let parent_id = running(&store).await.row.id;
    let control = store.cancel(&parent_id, T0 + 2).await.unwrap();
    assert_eq!(control, Control::Applied);
    let mut child = new_instance("wf", 3);
    child.parent = Some(parent_id.clone());
    child.key = Some(format!("{parent_id}/charge"));
    let child_id = child.id.clone();
    let row = store
        .create(child, Some(&Status::ALL))
        .await
        .unwrap()
        .into_row();
    assert_eq!(row.status, Status::Cancelled);
    assert_eq!(row, store.get(&child_id).await.unwrap().unwrap());
    assert!(
        store
            .claim(claim_req("b", T0 + 100_000, 10))
            .await
            .unwrap()
            .is_empty(),
        "the child never runs"
    );
    let history = store.history(&child_id).await.unwrap();
    let events: Vec<_> = history
        .iter()
        .map(|e| (e.kind.as_str(), e.message.as_deref()))
        .collect();
    assert_eq!(
        events,
        [("created", None), ("cancelled", Some("parent cancelled"))]
    );
    // Children of a running parent start as before.
    let other = new_instance("wf", 4);
    let other_id = other.id.clone();
    store.create(other, None).await.unwrap();
    let mut child = new_instance("wf", 5);
    child.parent = Some(other_id);
    let row = store.create(child, None).await.unwrap().into_row();
    assert_eq!(row.status, Status::Pending);
    // The same when started in a batch.
    let mut late = new_instance("wf", 6);
    late.parent = Some(parent_id);
    let rows = store
        .create_many(vec![new_instance("wf", 7), late])
        .await
        .unwrap();
    let statuses: Vec<_> = rows.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Pending, Status::Cancelled]);
}

/// A timeout is the clock cancelling the instance: a parent finished
/// `TimedOut` takes its unfinished descendants with it, as a cancel would,
/// in the same transaction. A parent that completes or fails leaves its
/// children running: a child may be meant to outlive it.
async fn a_timed_out_parent_cancels_its_children(store: impl Store) {
    let p = running(&store).await;
    let parent_id = p.row.id.clone();
    // A child that already ended.
    let done_id = create_child(&store, &parent_id, 2, None).await;
    let d = store
        .claim(claim_req("b", T0 + 2, 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(d.row.id, done_id);
    let completed = Finish {
        status: Status::Completed,
        output: Some("1".into()),
        error: None,
        state: None,
        at: T0 + 3,
    };
    store.finish(&d.lease, completed).await.unwrap();
    // Its own child, not due yet, outlived it.
    let orphan_id = create_child(&store, &done_id, 3, Some(T0 + 100_000)).await;
    // A pending child (not due yet) and its running grandchild.
    let kid_id = create_child(&store, &parent_id, 4, Some(T0 + 100_000)).await;
    let grandkid_id = create_child(&store, &kid_id, 5, None).await;
    let g = store
        .claim(claim_req("c", T0 + 5, 10))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(g.row.id, grandkid_id);

    let timed_out = Finish {
        status: Status::TimedOut,
        output: None,
        error: Some("deadline passed".into()),
        state: None,
        at: T0 + 10,
    };
    // Its deadline passed at T0 + 10 (a timeout needs that, see
    // `a_deadline_moved_first_beats_the_timeout`).
    store
        .set_deadline(&parent_id, T0 + 10, T0 + 6)
        .await
        .unwrap();
    store.finish(&p.lease, timed_out).await.unwrap();
    assert_eq!(
        store.get(&parent_id).await.unwrap().unwrap().status,
        Status::TimedOut
    );
    for id in [&kid_id, &grandkid_id, &orphan_id] {
        let row = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.finished_at),
            (Status::Cancelled, Some(T0 + 10)),
            "a timed-out parent's descendants are cancelled with it"
        );
        let history = store.history(id).await.unwrap();
        let last = history.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.at, last.message.as_deref()),
            ("cancelled", T0 + 10, Some("parent timed out")),
            "{history:?}"
        );
    }
    assert!(
        matches!(
            store.commit_step(&g.lease, step("s", "1", None)).await,
            Err(StoreError::LeaseLost(_))
        ),
        "a cancelled grandchild's lease is void"
    );
    assert_eq!(
        store.get(&done_id).await.unwrap().unwrap().status,
        Status::Completed,
        "ended children stay as they are"
    );
    assert!(
        store
            .claim(claim_req("d", T0 + 200_000, 10))
            .await
            .unwrap()
            .is_empty(),
        "none of them runs again"
    );
    // A child its handler starts after the timeout (it runs on elsewhere
    // until it hears) never runs either.
    let mut late = new_instance("wf", 6);
    late.parent = Some(parent_id.clone());
    let late_id = late.id.clone();
    let row = store.create(late, None).await.unwrap().into_row();
    assert_eq!(row.status, Status::Cancelled);
    let history = store.history(&late_id).await.unwrap();
    let events: Vec<_> = history
        .iter()
        .map(|e| (e.kind.as_str(), e.message.as_deref()))
        .collect();
    assert_eq!(
        events,
        [("created", None), ("cancelled", Some("parent timed out"))]
    );

    // A parent that fails or completes leaves its children alone.
    for (n, status) in [(20, Status::Failed), (30, Status::Completed)] {
        store.create(new_instance("wf", n), None).await.unwrap();
        let q = store
            .claim(claim_req("a", T0 + n, 1))
            .await
            .unwrap()
            .remove(0);
        let child_id = create_child(&store, &q.row.id, n + 1, Some(T0 + 500_000)).await;
        let finish = Finish {
            status,
            output: (status == Status::Completed).then(|| "2".into()),
            error: (status == Status::Failed).then(|| "boom".into()),
            state: None,
            at: T0 + n + 2,
        };
        store.finish(&q.lease, finish).await.unwrap();
        let row = store.get(&child_id).await.unwrap().unwrap();
        assert_eq!(
            row.status,
            Status::Pending,
            "a {status} parent leaves its children running"
        );
        let kinds: Vec<String> = store
            .history(&child_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created"]);
    }
}

async fn pause_and_resume(store: impl Store) {
    let waiting = new_instance("wf", 0);
    let waiting_id = waiting.id.clone();
    store.create(waiting, None).await.unwrap();
    assert_eq!(
        store.pause(&waiting_id, T0 + 1_000).await.unwrap(),
        Control::Applied
    );
    assert_eq!(
        store.get(&waiting_id).await.unwrap().unwrap().status,
        Status::Paused
    );
    assert!(
        store
            .claim(claim_req("a", T0 + 2_000, 10))
            .await
            .unwrap()
            .is_empty(),
        "paused instances are not run"
    );
    assert_eq!(
        store.resume(&waiting_id, T0 + 61_000).await.unwrap(),
        Control::Applied
    );
    let row = store.get(&waiting_id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Pending);
    assert_eq!(row.run_at, T0 + 61_000);
    // A start delayed past the resume (never run yet) keeps its time.
    let mut delayed = new_instance("wf", 50);
    delayed.run_at = T0 + 500_000;
    let delayed_id = delayed.id.clone();
    store.create(delayed, None).await.unwrap();
    store.pause(&delayed_id, T0 + 1_000).await.unwrap();
    store.resume(&delayed_id, T0 + 2_000).await.unwrap();
    let delayed_row = store.get(&delayed_id).await.unwrap().unwrap();
    assert_eq!(
        (delayed_row.status, delayed_row.run_at),
        (Status::Pending, T0 + 500_000)
    );
    assert_eq!(
        row.deadline_at,
        Some(T0 + 360_000),
        "paused time does not count against the deadline"
    );

    // A running instance is asked to pause and pauses when it suspends.
    let c = store
        .claim(claim_req("a", T0 + 61_001, 1))
        .await
        .unwrap()
        .remove(0);
    store.pause(&waiting_id, T0 + 61_002).await.unwrap();
    assert!(
        store
            .get(&waiting_id)
            .await
            .unwrap()
            .unwrap()
            .pause_requested
    );
    let renewed = store
        .renew(std::slice::from_ref(&c.lease), T0 + 90_000)
        .await
        .unwrap();
    assert!(renewed[0].held && renewed[0].pause_requested);
    store
        .suspend(
            &c.lease,
            suspend_at(Status::Pending, T0 + 61_003, T0 + 61_003),
        )
        .await
        .unwrap();
    let row = store.get(&waiting_id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Paused);
    assert!(!row.pause_requested);
    store.resume(&waiting_id, T0 + 62_003).await.unwrap();
    assert_eq!(
        store.get(&waiting_id).await.unwrap().unwrap().deadline_at,
        Some(T0 + 361_000)
    );
    let kinds: Vec<String> = store
        .history(&waiting_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "paused").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "resumed").count(),
        2,
        "{kinds:?}"
    );
}

async fn schedule_marks_only_move_forward(store: impl Store) {
    assert_eq!(store.schedule_mark("daily").await.unwrap(), None);
    store.advance_schedule("daily", T0, None).await.unwrap();
    let mark = store.schedule_mark("daily").await.unwrap().unwrap();
    assert_eq!((mark.checked_until, mark.last_tick), (T0, None));
    let first = InstanceId::at(T0 + 10);
    store
        .advance_schedule("daily", T0 + 10, Some((T0 + 10, first.clone())))
        .await
        .unwrap();
    // An engine with an older view cannot move it back.
    store
        .advance_schedule("daily", T0 + 5, Some((T0 + 5, InstanceId::at(T0 + 5))))
        .await
        .unwrap();
    let mark = store.schedule_mark("daily").await.unwrap().unwrap();
    assert_eq!(mark.checked_until, T0 + 10);
    assert_eq!(mark.last_tick, Some(T0 + 10));
    assert_eq!(mark.last_instance, Some(first));
    assert_eq!(store.schedule_mark("other").await.unwrap(), None);
}

async fn definitions_are_recorded(store: impl Store) {
    use crate::workflow::Definition;
    let def = |name: &str, timeout_ms| Definition {
        name: name.to_owned(),
        description: "Does things".into(),
        schedule: Some("0 9 * * *".into()),
        timezone: "UTC".into(),
        timeout_ms,
        catch_up: crate::CatchUp::Latest,
        steps: vec!["a".into(), "b".into()],
        input_schema: serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        output_schema: serde_json::json!({"type": "string"}),
        state_schema: serde_json::json!({"type": "null"}),
    };
    assert!(store.definitions().await.unwrap().is_empty());
    store
        .put_definitions(&[def("b", 1), def("a", 2)], T0)
        .await
        .unwrap();
    store.put_definitions(&[def("a", 3)], T0 + 1).await.unwrap();
    let defs = store.definitions().await.unwrap();
    assert_eq!(
        defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        defs[0],
        def("a", 3),
        "the newer definition replaces the older"
    );
    assert_eq!(defs[1], def("b", 1));
}

/// A store that can be made unreachable: while [`Unreachable::set_down`] is
/// on, every call fails with a backend error, as if the database were gone.
/// [`Unreachable::fail_next_creates`] makes only a few calls fail, as a
/// dropped connection would.
#[derive(Debug)]
pub struct Unreachable<S> {
    inner: S,
    down: AtomicBool,
    failing_creates: AtomicU32,
    failing_advances: AtomicU32,
    failing_step_commits: AtomicU32,
    lost_attempt_answers: AtomicU32,
    /// Creates left before every create fails; negative: no limit.
    creates_until_failing: AtomicI64,
    hanging: AtomicBool,
    panicking_renewals: AtomicBool,
    hanging_claims: AtomicBool,
    failing_next_due: AtomicBool,
    held_claim_answers: AtomicBool,
    held_cancel_answers: AtomicBool,
    /// Rows of this workflow read as corrupt through [`Store::get`].
    unreadable: std::sync::Mutex<Option<String>>,
    /// The schedule whose [`Store::schedule_mark`] hangs.
    hanging_mark: std::sync::Mutex<Option<String>>,
    /// The step key whose [`Store::commit_step`] waits, and how long.
    slow_commit: std::sync::Mutex<Option<(String, std::time::Duration)>>,
}

impl<S: Store> Unreachable<S> {
    /// Wraps `inner`, reachable.
    pub fn new(inner: S) -> Self {
        Unreachable {
            inner,
            down: AtomicBool::new(false),
            failing_creates: AtomicU32::new(0),
            failing_advances: AtomicU32::new(0),
            failing_step_commits: AtomicU32::new(0),
            lost_attempt_answers: AtomicU32::new(0),
            creates_until_failing: AtomicI64::new(-1),
            hanging: AtomicBool::new(false),
            panicking_renewals: AtomicBool::new(false),
            hanging_claims: AtomicBool::new(false),
            failing_next_due: AtomicBool::new(false),
            held_claim_answers: AtomicBool::new(false),
            held_cancel_answers: AtomicBool::new(false),
            unreadable: std::sync::Mutex::new(None),
            hanging_mark: std::sync::Mutex::new(None),
            slow_commit: std::sync::Mutex::new(None),
        }
    }

    /// Makes [`Store::get`] of the instances of `workflow`, and a
    /// [`Store::create`] that finds one by its key, fail as a damaged row
    /// does ([`StoreError::Corrupt`]), or no longer (`None`). Claims still
    /// read them, so they run.
    pub fn unreadable_workflow(&self, workflow: Option<&str>) {
        *self.unreadable.lock().unwrap_or_else(|p| p.into_inner()) = workflow.map(str::to_owned);
    }

    /// Makes [`Store::renew`] wait without answering while on (`true`), as
    /// over a connection gone quiet; it answers once turned off.
    pub fn hang_renewals(&self, hang: bool) {
        self.hanging.store(hang, Ordering::SeqCst);
    }

    /// Makes [`Store::renew`] panic while on (`true`), as a store with a
    /// bug would.
    pub fn panic_renewals(&self, panic: bool) {
        self.panicking_renewals.store(panic, Ordering::SeqCst);
    }

    /// Makes [`Store::claim`] wait without answering while on (`true`), as
    /// a store that hangs does; it answers once turned off.
    pub fn hang_claims(&self, hang: bool) {
        self.hanging_claims.store(hang, Ordering::SeqCst);
    }

    /// Makes [`Store::next_due`] fail while on (`true`), the other calls
    /// going through: a query of its own that the database refuses.
    pub fn fail_next_due(&self, fail: bool) {
        self.failing_next_due.store(fail, Ordering::SeqCst);
    }

    /// Makes [`Store::schedule_mark`] of `workflow`'s schedule wait without
    /// answering, or no longer (`None`), as a call on a dead connection
    /// does; the other schedules' calls go through.
    pub fn hang_schedule_mark(&self, workflow: Option<&str>) {
        *self.hanging_mark.lock().unwrap_or_else(|p| p.into_inner()) = workflow.map(str::to_owned);
    }

    /// Makes [`Store::claim`] hold its answer back while on (`true`): the
    /// claim is made, and its caller hears of it once turned off, as over
    /// a slow network.
    pub fn hold_claim_answers(&self, hold: bool) {
        self.held_claim_answers.store(hold, Ordering::SeqCst);
    }

    /// Makes [`Store::cancel`] answer only once turned off (`false`), after
    /// the cancel is made, as a store answering once its commit is
    /// fsynced does.
    pub fn hold_cancel_answers(&self, hold: bool) {
        self.held_cancel_answers.store(hold, Ordering::SeqCst);
    }

    /// Makes the next `n` calls to [`Store::create`] fail with a backend
    /// error (and change nothing) while every other call goes through.
    pub fn fail_next_creates(&self, n: u32) {
        self.failing_creates.store(n, Ordering::SeqCst);
    }

    /// Makes [`Store::commit_step`] of the step `key` wait `delay` before
    /// going through, as over a slow connection, or no longer (`None`);
    /// other steps' commits go through at once.
    pub fn slow_step_commit(&self, slow: Option<(&str, std::time::Duration)>) {
        *self.slow_commit.lock().unwrap_or_else(|p| p.into_inner()) =
            slow.map(|(key, delay)| (key.to_owned(), delay));
    }

    /// Makes the next `n` calls to [`Store::commit_step`] fail with a
    /// backend error (and change nothing).
    pub fn fail_next_step_commits(&self, n: u32) {
        self.failing_step_commits.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` calls to [`Store::record_attempt`] go through and
    /// then fail with a backend error, as a commit whose answer a dropped
    /// connection lost does.
    pub fn lose_next_attempt_answers(&self, n: u32) {
        self.lost_attempt_answers.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` calls to [`Store::advance_schedule`] fail with a
    /// backend error (and change nothing).
    pub fn fail_next_schedule_advances(&self, n: u32) {
        self.failing_advances.store(n, Ordering::SeqCst);
    }

    /// Lets the next `ok` calls to [`Store::create`] through, then fails
    /// every create (changing nothing) until called with `None`.
    pub fn fail_creates_after(&self, ok: Option<u32>) {
        self.creates_until_failing
            .store(ok.map_or(-1, i64::from), Ordering::SeqCst);
    }

    /// Makes every call fail (`true`) or reach the store again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The wrapped store, reachable whatever the switch says.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// `row`, or the error of a damaged row if its workflow's rows are
    /// made unreadable ([`Unreachable::unreadable_workflow`]).
    fn readable(&self, row: InstanceRow) -> Result<InstanceRow, StoreError> {
        let unreadable = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        if unreadable.as_deref() == Some(row.workflow.as_str()) {
            return Err(StoreError::Corrupt {
                id: row.id,
                message: "unreadable (testing::Unreachable)".into(),
            });
        }
        Ok(row)
    }

    fn up(&self) -> Result<&S, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::backend(
                "store unreachable (testing::Unreachable)",
            ))
        } else {
            Ok(&self.inner)
        }
    }
}

/// A backend error saying `what`, if `left` has failures left to give
/// (counting one down).
fn fail_one(left: &AtomicU32, what: &str) -> Result<(), StoreError> {
    match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => Err(StoreError::backend(what.to_owned())),
        Err(_) => Ok(()),
    }
}

#[async_trait]
impl<S: Store> Store for Unreachable<S> {
    async fn create(
        &self,
        new: NewInstance,
        dedup: Option<&[Status]>,
    ) -> Result<Created, StoreError> {
        let store = self.up()?;
        fail_one(
            &self.failing_creates,
            "create failed (testing::Unreachable::fail_next_creates)",
        )?;
        let exhausted =
            self.creates_until_failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n > 0).then(|| n - 1)
                });
        if exhausted == Err(0) {
            return Err(StoreError::backend(
                "create failed (testing::Unreachable::fail_creates_after)",
            ));
        }
        match store.create(new, dedup).await? {
            Created::Existing(row) => self.readable(row).map(Created::Existing),
            created => Ok(created),
        }
    }
    async fn create_many(&self, new: Vec<NewInstance>) -> Result<Vec<InstanceRow>, StoreError> {
        self.up()?.create_many(new).await
    }
    async fn get(&self, id: &InstanceId) -> Result<Option<InstanceRow>, StoreError> {
        self.up()?
            .get(id)
            .await?
            .map(|row| self.readable(row))
            .transpose()
    }
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        while self.hanging_claims.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let claimed = self.up()?.claim(req).await;
        while self.held_claim_answers.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        claimed
    }
    async fn next_due(
        &self,
        workflows: &[String],
        after: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        if self.failing_next_due.load(Ordering::SeqCst) {
            return Err(StoreError::backend(
                "next_due refused (testing::Unreachable)",
            ));
        }
        self.up()?.next_due(workflows, after).await
    }
    fn wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.wakeups()
    }
    fn cancellations(&self) -> Option<tokio::sync::broadcast::Receiver<InstanceId>> {
        self.inner.cancellations()
    }
    /// The inner store's, unless a commit is made slow
    /// ([`Unreachable::slow_step_commit`]): it waits before going through.
    fn commits_in_call_order(&self) -> bool {
        self.inner.commits_in_call_order()
            && self
                .slow_commit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
    }

    async fn commit_step(&self, lease: &Lease, step: StepRow) -> Result<(), StoreError> {
        let store = self.up()?;
        fail_one(
            &self.failing_step_commits,
            "commit failed (testing::Unreachable::fail_next_step_commits)",
        )?;
        let delay = self
            .slow_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|(key, delay)| (*key == step.key).then_some(*delay));
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        store.commit_step(lease, step).await
    }
    async fn record_attempt(
        &self,
        lease: &Lease,
        step: &str,
        attempt: u32,
        error: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        self.up()?
            .record_attempt(lease, step, attempt, error, at)
            .await?;
        fail_one(
            &self.lost_attempt_answers,
            "answer lost after the commit (testing::Unreachable::lose_next_attempt_answers)",
        )
    }
    async fn finish(&self, lease: &Lease, finish: Finish) -> Result<(), StoreError> {
        self.up()?.finish(lease, finish).await
    }
    async fn release(&self, lease: &Lease, at: Millis) -> Result<(), StoreError> {
        self.up()?.release(lease, at).await
    }
    async fn renew(&self, leases: &[Lease], until: Millis) -> Result<Vec<Renewal>, StoreError> {
        // Some milliseconds, as a store answering over a channel or the
        // network takes: a renewal given no time at all fails.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(
            !self.panicking_renewals.load(Ordering::SeqCst),
            "renew panicked (Unreachable::panic_renewals)"
        );
        while self.hanging.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.up()?.renew(leases, until).await
    }
    async fn cancel(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        let cancelled = self.up()?.cancel(id, at).await;
        while self.held_cancel_answers.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        cancelled
    }
    async fn set_deadline(
        &self,
        id: &InstanceId,
        deadline_at: Millis,
        at: Millis,
    ) -> Result<Control, StoreError> {
        self.up()?.set_deadline(id, deadline_at, at).await
    }
    async fn lease_owners(&self) -> Result<Vec<String>, StoreError> {
        self.up()?.lease_owners().await
    }
    async fn release_owner(&self, owner: &str, at: Millis) -> Result<u64, StoreError> {
        self.up()?.release_owner(owner, at).await
    }
    async fn steps(&self, id: &InstanceId) -> Result<Vec<StepRow>, StoreError> {
        self.up()?.steps(id).await
    }
    async fn history(&self, id: &InstanceId) -> Result<Vec<EventRow>, StoreError> {
        self.up()?.history(id).await
    }
    async fn steps_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<StepRow>, u64), StoreError> {
        self.up()?.steps_tail(id, last).await
    }
    async fn history_tail(
        &self,
        id: &InstanceId,
        last: usize,
    ) -> Result<(Vec<EventRow>, u64), StoreError> {
        self.up()?.history_tail(id, last).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Listed>, StoreError> {
        self.up()?.list(query).await
    }
    async fn suspend(&self, lease: &Lease, suspend: Suspend) -> Result<(), StoreError> {
        self.up()?.suspend(lease, suspend).await
    }
    async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &str,
        key: Option<&str>,
        at: Millis,
    ) -> Result<Control, StoreError> {
        self.up()?.send_event(id, name, payload, key, at).await
    }
    async fn purge(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.up()?.purge(ended_before, workflow, limit).await
    }
    async fn take_event(
        &self,
        lease: &Lease,
        name: &str,
        step: &str,
        at: Millis,
    ) -> Result<Option<String>, StoreError> {
        self.up()?.take_event(lease, name, step, at).await
    }
    async fn pause(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        self.up()?.pause(id, at).await
    }
    async fn resume(&self, id: &InstanceId, at: Millis) -> Result<Control, StoreError> {
        self.up()?.resume(id, at).await
    }
    async fn schedule_mark(&self, workflow: &str) -> Result<Option<ScheduleMark>, StoreError> {
        let hangs = || {
            self.hanging_mark
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(workflow)
        };
        while hangs() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.up()?.schedule_mark(workflow).await
    }
    async fn advance_schedule(
        &self,
        workflow: &str,
        checked_until: Millis,
        fired: Option<(Millis, InstanceId)>,
    ) -> Result<(), StoreError> {
        let store = self.up()?;
        fail_one(
            &self.failing_advances,
            "advance failed (testing::Unreachable::fail_next_schedule_advances)",
        )?;
        store.advance_schedule(workflow, checked_until, fired).await
    }
    async fn put_definitions(
        &self,
        definitions: &[Definition],
        at: Millis,
    ) -> Result<(), StoreError> {
        self.up()?.put_definitions(definitions, at).await
    }
    async fn definitions(&self) -> Result<Vec<Definition>, StoreError> {
        self.up()?.definitions().await
    }
    async fn count_by_status(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<(Status, u64)>, StoreError> {
        self.up()?.count_by_status(workflow).await
    }
}
