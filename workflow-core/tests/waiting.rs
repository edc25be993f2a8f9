//! Waiting without memory, on the in-memory store: durable sleep, events,
//! pause/resume, long retry backoffs, child workflows, fan-out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow_core::*;

mod common;
use common::{until_nothing_runs_here, until_status};

/// How often `before` ran, by the sleeper's input: tests of this binary
/// run side by side, each with its own.
static BEFORE_SLEEP: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());

struct Sleeper;

impl Workflow for Sleeper {
    type Input = u64;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "sleeper";

    async fn run(&self, ctx: Ctx, millis: u64) -> Result<u32, BoxError> {
        ctx.step("before", || async {
            *BEFORE_SLEEP.lock().unwrap().entry(millis).or_default() += 1;
            Ok::<_, BoxError>(())
        })
        .await?;
        ctx.sleep("nap", Duration::from_millis(millis)).await?;
        Ok(ctx.run_number() as u32)
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Approval {
    approved: bool,
    by: String,
}

/// Adds up the amounts of `n` `payment` events.
struct Payments;

impl Workflow for Payments {
    type Input = u32;
    type Output = u64;
    type State = ();
    const NAME: &'static str = "payments";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u64, BoxError> {
        let mut total = 0;
        for _ in 0..n {
            let amount: u64 = ctx
                .wait_for_event("payment", Some(Duration::from_secs(60)))
                .await?;
            total += amount;
        }
        Ok(total)
    }
}

struct Approve;

impl Workflow for Approve {
    type Input = u64;
    type Output = String;
    type State = ();
    const NAME: &'static str = "approve";

    async fn run(&self, ctx: Ctx, timeout_ms: u64) -> Result<String, BoxError> {
        match ctx
            .wait_for_event::<Approval>("approval", Some(Duration::from_millis(timeout_ms)))
            .await
        {
            Ok(a) => Ok(format!("approved={} by {}", a.approved, a.by)),
            Err(Error::EventTimeout { .. }) => Ok("timed out".into()),
            Err(e) => Err(e.into()),
        }
    }
}

static PAUSE_STEPS: AtomicU32 = AtomicU32::new(0);

struct Pausable;

impl Workflow for Pausable {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "pausable";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        for n in 0..6 {
            ctx.step("tick", || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // The second tick ends only once the pause was sent, so
                // the pause lands mid-run however loaded the machine.
                while n == 1 && !PAUSE_SENT.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<_, BoxError>(PAUSE_STEPS.fetch_add(1, Ordering::SeqCst))
            })
            .await?;
        }
        Ok(6)
    }
}

static PAUSE_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static SHAKY_CALLS: AtomicU32 = AtomicU32::new(0);

struct Backoff;

impl Workflow for Backoff {
    type Input = bool;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "backoff";

    async fn run(&self, ctx: Ctx, permanent_failure: bool) -> Result<u32, BoxError> {
        let opts = StepOptions::retries(4).backoff(
            Duration::from_millis(150),
            1.0,
            Duration::from_millis(150),
        );
        let n = ctx
            .step_with("shaky", opts, || async move {
                if permanent_failure {
                    return Err(permanent("card declined"));
                }
                let call = SHAKY_CALLS.fetch_add(1, Ordering::SeqCst);
                if call < 2 {
                    return Err("gateway timeout".into());
                }
                Ok(call)
            })
            .await?;
        Ok(n)
    }
}

struct Double;

impl Workflow for Double {
    type Input = u32;
    type Output = u32;
    type State = ();
    const NAME: &'static str = "double";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<u32, BoxError> {
        if n == 13 {
            ctx.fail("unlucky")?;
        }
        if n == 99 {
            ctx.sleep("forever", Duration::from_secs(3600)).await?;
        }
        Ok(n * 2)
    }
}

struct Parent;

impl Workflow for Parent {
    type Input = u32;
    type Output = String;
    type State = ();
    const NAME: &'static str = "parent";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<String, BoxError> {
        let detached = ctx.start_child::<Double>("side", 1).await?;
        match ctx.run_child::<Double>("double", n).await {
            Ok(out) => Ok(format!("{out} (side {detached})")),
            Err(Error::Child {
                message, status, ..
            }) => {
                assert_eq!(status, Status::Failed, "{message}");
                Ok(format!("child {message}"))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Starts one child an hour later and waits for one given 300 ms to run
/// (it sleeps an hour), each with a tag.
struct ParentWithOptions;

impl Workflow for ParentWithOptions {
    type Input = ();
    type Output = (String, String);
    type State = ();
    const NAME: &'static str = "parentWithOptions";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(String, String), BoxError> {
        let later = ChildOptions::new()
            .delay(Duration::from_secs(3600))
            .tag("kind", "later");
        let later = ctx.start_child_with::<Double>("later", 1, later).await?;
        let slow = ChildOptions::new()
            .timeout(Duration::from_millis(300))
            .tag("kind", "slow");
        match ctx.run_child_with::<Double>("slow", 99, slow).await {
            Err(Error::Child {
                message,
                status: Status::TimedOut,
                ..
            }) => Ok((later.to_string(), message)),
            other => Err(format!("expected the child to time out, got {other:?}").into()),
        }
    }
}

struct Fan;

impl Workflow for Fan {
    type Input = Vec<u32>;
    type Output = (Vec<u32>, Vec<u32>);
    type State = ();
    const NAME: &'static str = "fan";

    async fn run(&self, ctx: Ctx, items: Vec<u32>) -> Result<(Vec<u32>, Vec<u32>), BoxError> {
        let squares = ctx
            .map("square", items.clone(), 3, |n| async move {
                // Finish out of order; results still come back in order.
                tokio::time::sleep(Duration::from_millis(u64::from(10 - n % 10))).await;
                Ok::<_, BoxError>(n * n)
            })
            .await?;
        ctx.for_each("touch", items.clone(), 2, |_| async {
            Ok::<_, BoxError>(())
        })
        .await?;
        let sums = ctx
            .batch("sum", items, 2, |chunk| async move {
                Ok::<_, BoxError>(chunk.iter().sum::<u32>())
            })
            .await?;
        Ok((squares, sums))
    }
}

/// Calls of each of `FanWith`'s items and chunks, by key.
static FAN_WITH_CALLS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Fails the first call of `key`, then answers.
fn once_down(key: String) -> Result<(), BoxError> {
    let mut calls = FAN_WITH_CALLS.lock().unwrap();
    calls.push(key.clone());
    if calls.iter().filter(|k| **k == key).count() == 1 {
        return Err("service down".into());
    }
    Ok(())
}

/// The fan-outs with their own retry policy, in a workflow whose own
/// allows one attempt.
struct FanWith;

impl Workflow for FanWith {
    type Input = Vec<u32>;
    type Output = (Vec<u32>, Vec<u32>);
    type State = ();
    const NAME: &'static str = "fanWith";
    const RETRIES: Option<u32> = Some(1);

    async fn run(&self, ctx: Ctx, items: Vec<u32>) -> Result<(Vec<u32>, Vec<u32>), BoxError> {
        let opts = StepOptions::retries(2).backoff(
            Duration::from_millis(5),
            1.0,
            Duration::from_millis(5),
        );
        let doubled = ctx
            .map_with("double", opts, items.clone(), 2, |n| async move {
                once_down(format!("double {n}"))?;
                Ok::<_, BoxError>(n * 2)
            })
            .await?;
        ctx.for_each_with("touch", opts, items.clone(), 2, |n| async move {
            once_down(format!("touch {n}"))
        })
        .await?;
        let sums = ctx
            .batch_with("sum", opts, items, 2, |chunk| async move {
                once_down(format!("sum {chunk:?}"))?;
                Ok::<_, BoxError>(chunk.iter().sum::<u32>())
            })
            .await?;
        Ok((doubled, sums))
    }
}

/// Calls started by `FlakyFan`'s items.
static FLAKY_FAN_CALLS: AtomicU32 = AtomicU32::new(0);

/// Four items side by side against a service that is down; which one fails
/// first changes with every run.
struct FlakyFan;

impl Workflow for FlakyFan {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "flakyFan";
    const RETRIES: Option<u32> = Some(3);
    // Longer than `suspend_after`: every backoff suspends the instance.
    const BACKOFF: Option<workflow_core::Backoff> = Some(workflow_core::Backoff {
        initial: Duration::from_millis(60),
        factor: 1.0,
        max: Duration::from_millis(60),
    });

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        let first = ctx.run_number() as u64 % 4;
        ctx.for_each("call", vec![0u64, 1, 2, 3], 4, |i| async move {
            FLAKY_FAN_CALLS.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(((i + 4 - first) % 4) * 15)).await;
            Err::<(), BoxError>("service down".into())
        })
        .await?;
        Ok(())
    }
}

/// Attempts of [`FailsBesideSleep`]'s step, by its input.
static BESIDE_CALLS: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());

/// A step that keeps failing (short backoffs, in memory) beside a sleep
/// that suspends the instance. Each attempt takes the input's
/// milliseconds: 0 fails while the step is between attempts; 30 is still
/// running when the sleep suspends, and fails while the suspension waits
/// for it.
struct FailsBesideSleep;

impl Workflow for FailsBesideSleep {
    type Input = u64;
    type Output = ();
    type State = ();
    const NAME: &'static str = "failsBesideSleep";

    async fn run(&self, ctx: Ctx, attempt_ms: u64) -> Result<(), BoxError> {
        let opts = StepOptions::attempts(3).backoff(
            Duration::from_millis(20),
            1.0,
            Duration::from_millis(20),
        );
        let failing = ctx.step_with("flaky", opts, || async move {
            tokio::time::sleep(Duration::from_millis(attempt_ms)).await;
            *BESIDE_CALLS.lock().unwrap().entry(attempt_ms).or_default() += 1;
            Err::<(), BoxError>("service down".into())
        });
        let (failed, slept) = tokio::join!(failing, ctx.sleep("nap", Duration::from_millis(100)));
        slept?;
        failed?;
        Ok(())
    }
}

/// How often `send` ran, by the backoff `RetryBesideWait` was given.
static SENDS: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());

/// Sends an email whose first attempt fails while a wait for the answer
/// runs beside it: the answer may only come once the email is out.
struct RetryBesideWait;

impl Workflow for RetryBesideWait {
    type Input = u64;
    type Output = bool;
    type State = ();
    const NAME: &'static str = "retryBesideWait";

    async fn run(&self, ctx: Ctx, backoff_ms: u64) -> Result<bool, BoxError> {
        let backoff = Duration::from_millis(backoff_ms);
        let opts = StepOptions::attempts(3).backoff(backoff, 1.0, backoff);
        let send = ctx.step_with("send", opts, || async move {
            // Long enough for the wait to suspend while it runs.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut sends = SENDS.lock().unwrap();
            let sent = sends.entry(backoff_ms).or_default();
            *sent += 1;
            match *sent {
                1 => Err::<(), BoxError>("421 try again later".into()),
                _ => Ok(()),
            }
        });
        let (sent, approved) = tokio::join!(send, ctx.wait_for_event::<bool>("approval", None));
        sent?;
        Ok(approved?)
    }
}

/// A charge that fails for good while a wait for the shipment runs beside
/// it, under `try_join!`: the failure ends the instance.
struct DeclinedBesideWait;

impl Workflow for DeclinedBesideWait {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "declinedBesideWait";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        let charge = ctx.step("charge", || async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Err::<(), BoxError>(permanent("card declined"))
        });
        tokio::try_join!(charge, ctx.wait_for_event::<bool>("shipped", None))?;
        Ok(())
    }
}

/// Waits for an approval, or escalates after the input's milliseconds,
/// whichever comes first: `select!` polls the wait first when the input
/// says so. It returns right after the `select!`, so no replay goes
/// through it again (where it could take the other branch).
struct ApproveOrEscalate;

impl Workflow for ApproveOrEscalate {
    type Input = (bool, u64);
    type Output = String;
    type State = ();
    const NAME: &'static str = "approveOrEscalate";

    async fn run(&self, ctx: Ctx, (wait_first, ms): (bool, u64)) -> Result<String, BoxError> {
        let approval = ctx.wait_for_event::<String>("approval", None);
        let escalation = ctx.sleep("escalate", Duration::from_millis(ms));
        let outcome = if wait_first {
            tokio::select! {
                biased;
                by = approval => format!("approved by {}", by?),
                slept = escalation => slept.map(|()| "escalated".to_owned())?,
            }
        } else {
            tokio::select! {
                biased;
                slept = escalation => slept.map(|()| "escalated".to_owned())?,
                by = approval => format!("approved by {}", by?),
            }
        };
        Ok(outcome)
    }
}

/// Waits for two events side by side, the first with a 200 ms timeout:
/// `join!` polls that one first when the input says so.
struct TwoWaits;

impl Workflow for TwoWaits {
    type Input = bool;
    type Output = (String, String);
    type State = ();
    const NAME: &'static str = "twoWaits";

    async fn run(&self, ctx: Ctx, timed_first: bool) -> Result<(String, String), BoxError> {
        let timed = async {
            match ctx
                .wait_for_event::<bool>("timed", Some(Duration::from_millis(200)))
                .await
            {
                Ok(_) => Ok("came".to_owned()),
                Err(Error::EventTimeout { .. }) => Ok("timed out".to_owned()),
                Err(err) => Err(err),
            }
        };
        let other = async {
            ctx.wait_for_event::<bool>("other", None)
                .await
                .map(|_| "came".to_owned())
        };
        let (timed, other) = if timed_first {
            tokio::join!(timed, other)
        } else {
            let (other, timed) = tokio::join!(other, timed);
            (timed, other)
        };
        Ok((timed?, other?))
    }
}

/// How often `send-request` ran, by `AskAndListen`'s input.
static REQUESTS: Mutex<BTreeMap<u64, u32>> = Mutex::new(BTreeMap::new());

/// Listens for the reply to a request it sends beside the wait: `join!`
/// polls the wait first.
struct AskAndListen;

impl Workflow for AskAndListen {
    type Input = u64;
    type Output = String;
    type State = ();
    const NAME: &'static str = "askAndListen";

    async fn run(&self, ctx: Ctx, n: u64) -> Result<String, BoxError> {
        let reply = ctx.wait_for_event::<String>("reply", None);
        let send = ctx.step("send-request", || async move {
            *REQUESTS.lock().unwrap().entry(n).or_default() += 1;
            Ok::<_, BoxError>(())
        });
        let (reply, sent) = tokio::join!(reply, send);
        sent?;
        Ok(reply?)
    }
}

/// Looks a value up, unless a cache-hit event comes first, beside a wait
/// for an approval: the cache-hit wait is dropped once the lookup is in.
struct LookupBesideApproval;

impl Workflow for LookupBesideApproval {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "lookupBesideApproval";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let lookup = async {
            tokio::select! {
                biased;
                hit = ctx.wait_for_event::<String>("cache-hit", None) => hit,
                found = ctx.step("lookup", || async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, BoxError>("looked up".to_owned())
                }) => found,
            }
        };
        let (found, by) = tokio::join!(lookup, ctx.wait_for_event::<String>("approval", None));
        Ok(format!("{}, approved by {}", found?, by?))
    }
}

/// Polls every 20 ms (in memory, were it alone) until a `go` event.
struct PollUntilGo;

impl Workflow for PollUntilGo {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "pollUntilGo";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let polling = async {
            for i in 0.. {
                ctx.step(&format!("poll-{i}"), || async { Ok::<_, BoxError>(()) })
                    .await?;
                ctx.sleep(&format!("nap-{i}"), Duration::from_millis(20))
                    .await?;
            }
            Ok::<_, Error>(())
        };
        tokio::select! {
            biased;
            go = ctx.wait_for_event::<String>("go", None) => Ok(go?),
            polled = polling => polled.map(|()| "never".to_owned()).map_err(Into::into),
        }
    }
}

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct Count {
    done: u32,
}

/// Two items side by side each count themselves into the state; the first
/// one finishes, and records its snapshot, last. A sleep then suspends the
/// instance, so the count after it comes from a replay.
struct CountsSideBySide;

impl Workflow for CountsSideBySide {
    type Input = ();
    type Output = u32;
    type State = Count;
    const NAME: &'static str = "countsSideBySide";

    async fn run(&self, ctx: Ctx<Count>, _: ()) -> Result<u32, BoxError> {
        ctx.map("count", vec![0u64, 1], 2, |i| {
            let ctx = ctx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(80 * (1 - i))).await;
                ctx.state_mut().done += 1;
                Ok::<_, BoxError>(i)
            }
        })
        .await?;
        ctx.sleep("nap", Duration::from_millis(100)).await?;
        Ok(ctx.state().done)
    }
}

static COUNT_AGAIN_FAILED: AtomicU32 = AtomicU32::new(0);

/// Three items count themselves into the state; the first one's first
/// attempt fails after the others recorded theirs, and its backoff
/// suspends the instance. On the next run it runs again beside the
/// replays of the other two.
struct CountsAgainBesideReplays;

impl Workflow for CountsAgainBesideReplays {
    type Input = ();
    type Output = u32;
    type State = Count;
    const NAME: &'static str = "countsAgainBesideReplays";

    async fn run(&self, ctx: Ctx<Count>, _: ()) -> Result<u32, BoxError> {
        let opts = StepOptions::attempts(2).backoff(
            Duration::from_millis(200),
            1.0,
            Duration::from_millis(200),
        );
        ctx.map_with("count", opts, vec![0u32, 1, 2], 3, |i| {
            let ctx = ctx.clone();
            async move {
                if i == 0 && COUNT_AGAIN_FAILED.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    return Err::<u32, BoxError>("transient".into());
                }
                ctx.state_mut().done += 1;
                Ok(i)
            }
        })
        .await?;
        Ok(ctx.state().done)
    }
}

/// A job that needs longer than its `TIMEOUT` extends itself, then sleeps
/// past the old deadline (suspended, so its next run replays the
/// extension).
struct ExtendsItself;

impl Workflow for ExtendsItself {
    type Input = ();
    type Output = i64;
    type State = ();
    const NAME: &'static str = "extendsItself";
    // Time enough to be claimed and move it on a loaded machine; the nap
    // then runs past it.
    const TIMEOUT: Duration = Duration::from_millis(1_500);

    async fn run(&self, ctx: Ctx, _: ()) -> Result<i64, BoxError> {
        let until = ctx
            .set_timeout("extend", Timeout::In(Duration::from_secs(30)))
            .await?;
        ctx.sleep("nap", Duration::from_millis(2_000)).await?;
        Ok(until.timestamp_millis())
    }
}

/// Sends ada's approval and checks that the instance took it.
async fn approve_as_ada(inst: &Instance<Approve>) {
    let approval = Approval {
        approved: true,
        by: "ada".into(),
    };
    inst.send_event("approval", approval).await.unwrap();
    assert_eq!(
        inst.result_timeout(LIMIT).await.unwrap(),
        "approved=true by ada"
    );
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Reserved {
    reserved: bool,
}

/// A step that changes the state before its I/O, beside a wait that
/// suspends the run while the step is still running.
struct ReserveBesideWait;

impl Workflow for ReserveBesideWait {
    type Input = ();
    type Output = bool;
    type State = Reserved;
    const NAME: &'static str = "reserveBesideWait";

    async fn run(&self, ctx: Ctx<Reserved>, _: ()) -> Result<bool, BoxError> {
        let (reserved, approval) = tokio::join!(
            ctx.step("reserve", || async {
                ctx.state_mut().reserved = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, BoxError>(())
            }),
            ctx.wait_for_event::<bool>("approval", None),
        );
        reserved?;
        approval?;
        let reserved = ctx.state().reserved;
        Ok(reserved)
    }
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
struct Tally {
    total: u32,
    audited: bool,
}

static ALERTS: AtomicU32 = AtomicU32::new(0);

/// A slow step beside a fast one that snapshots the state; the handler
/// sets the state from the slow one's result; a sleep makes a replay.
struct CountAndAudit;

impl Workflow for CountAndAudit {
    type Input = ();
    type Output = u32;
    type State = Tally;
    const NAME: &'static str = "countAndAudit";

    async fn run(&self, ctx: Ctx<Tally>, _: ()) -> Result<u32, BoxError> {
        let (counted, audited) = tokio::join!(
            async {
                let n = ctx
                    .step("count", || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, BoxError>(5_u32)
                    })
                    .await?;
                ctx.state_mut().total = n;
                Ok::<_, BoxError>(())
            },
            ctx.step("audit", || async {
                ctx.state_mut().audited = true;
                Ok::<_, BoxError>(())
            }),
        );
        counted?;
        audited?;
        let total = ctx.state().total;
        if total == 0 {
            ctx.step("alert-empty", || async {
                ALERTS.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            })
            .await?;
        }
        ctx.sleep("cool-down", Duration::from_millis(200)).await?;
        let total = ctx.state().total;
        Ok(total)
    }
}

/// A builder on a store of its own for `workflow` alone, looking for work
/// every 20 ms.
fn alone<W: Workflow>(workflow: W) -> EngineBuilder {
    EngineBuilder::new()
        .store(MemoryStore::new())
        .register(workflow)
        .poll_interval(Duration::from_millis(20))
}

async fn engine(store: Arc<dyn Store>) -> Engine {
    EngineBuilder::new()
        .shared_store(store)
        .register(CountsSideBySide)
        .register(Sleeper)
        .register(Approve)
        .register(Payments)
        .register(Pausable)
        .register(Backoff)
        .register(Double)
        .register(Parent)
        .register(ToolCaller)
        .register(ParentWithOptions)
        .register(Fan)
        .register(FanWith)
        .register(FlakyFan)
        .register(FailsBesideSleep)
        .register(CountsAgainBesideReplays)
        .register(ExtendsItself)
        .register(ReserveBesideWait)
        .register(CountAndAudit)
        .register(RetryBesideWait)
        .register(DeclinedBesideWait)
        .register(ApproveOrEscalate)
        .register(TwoWaits)
        .register(AskAndListen)
        .register(LookupBesideApproval)
        .register(PollUntilGo)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap()
}

const LIMIT: Duration = Duration::from_secs(10);

/// A sleep that suspends the instance while a step beside it is between
/// attempts keeps that step's count: three attempts in all, across runs.
/// Before, the suspension forgot it, and the next run started from one.
#[tokio::test]
async fn a_suspension_beside_a_retrying_step_keeps_its_attempts() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = FailsBesideSleep::start(&engine, 0).await.unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("service down"), "{err}");
    assert!(inst.info().await.unwrap().runs >= 2, "it was suspended");
    assert_eq!(BESIDE_CALLS.lock().unwrap()[&0], 3);
}

/// The same when the attempt fails while the suspension waits for it:
/// the failure it records is kept, not overwritten by the suspension.
#[tokio::test]
async fn a_suspension_keeps_an_attempt_that_failed_while_it_waited() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = FailsBesideSleep::start(&engine, 30).await.unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("service down"), "{err}");
    assert!(inst.info().await.unwrap().runs >= 2, "it was suspended");
    assert_eq!(BESIDE_CALLS.lock().unwrap()[&30], 3);
}

/// A step backing off beside a wait is retried when due, not when the
/// wait's event comes: the suspension the wait made runs the instance
/// again at the retry's time, whether the backoff was short (in memory)
/// or long (a suspension of its own, which the wait's came before).
/// Before, the second attempt waited for the event or the deadline.
#[tokio::test]
async fn a_step_backing_off_beside_a_wait_is_retried_when_due() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    for backoff_ms in [20, 100] {
        let inst = RetryBesideWait::start(&engine, backoff_ms).await.unwrap();
        let sends = || SENDS.lock().unwrap().get(&backoff_ms).copied();
        let started = std::time::Instant::now();
        while sends() != Some(2) && started.elapsed() < LIMIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            sends(),
            Some(2),
            "backoff {backoff_ms} ms: retried without the event"
        );
        until_status(&inst, Status::Listening).await;
        inst.send_event("approval", true).await.unwrap();
        assert!(inst.result_timeout(LIMIT).await.unwrap());
        assert_eq!(sends(), Some(2), "sent once more, no more");
    }
}

/// A step that fails for good beside a wait, under `try_join!`, fails
/// the instance: the handler returns its error. Before, the wait's
/// suspension won and the instance listened until its deadline.
#[tokio::test]
async fn a_step_failing_beside_a_wait_fails_the_instance() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = DeclinedBesideWait::start(&engine, ()).await.unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("card declined"), "{err}");
    assert_eq!(inst.info().await.unwrap().status, Status::Failed);
}

/// A wait and a sleep side by side (`select!`) wake the instance at the
/// first of the event and the sleep's end, whichever the handler polls
/// first; the branch not taken is dropped and the handler goes on. Before,
/// a wait polled first suspended the run alone: the sleep never started,
/// and the instance listened until its deadline.
#[tokio::test]
async fn a_wait_and_a_sleep_side_by_side_wake_at_the_first_of_them() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    for wait_first in [true, false] {
        let inst = ApproveOrEscalate::start(&engine, (wait_first, 300))
            .await
            .unwrap();
        assert_eq!(
            inst.result_timeout(LIMIT).await.unwrap(),
            "escalated",
            "wait first: {wait_first}"
        );
        // Time enough on a loaded machine for the event to come first.
        let inst = ApproveOrEscalate::start(&engine, (wait_first, 60_000))
            .await
            .unwrap();
        until_status(&inst, Status::Listening).await;
        inst.send_event("approval", "ada").await.unwrap();
        assert_eq!(
            inst.result_timeout(LIMIT).await.unwrap(),
            "approved by ada",
            "wait first: {wait_first}"
        );
    }
}

/// Two waits side by side (`join!`): the timeout of one runs out on time
/// while the other still waits, in either order. Before, with the other
/// polled first, the timeout did not start until the other's event came.
#[tokio::test]
async fn a_timeout_beside_another_wait_runs_out_on_time() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    for timed_first in [true, false] {
        let inst = TwoWaits::start(&engine, timed_first).await.unwrap();
        let started = std::time::Instant::now();
        let timed_out = || async {
            inst.steps()
                .await
                .unwrap()
                .iter()
                .any(|s| s.key == "timed" && s.error.is_some())
        };
        while !timed_out().await && started.elapsed() < LIMIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            timed_out().await,
            "timed first: {timed_first}: no timeout recorded"
        );
        inst.send_event("other", true).await.unwrap();
        assert_eq!(
            inst.result_timeout(LIMIT).await.unwrap(),
            ("timed out".to_owned(), "came".to_owned()),
            "timed first: {timed_first}"
        );
    }
}

/// A step beside a wait polled first runs before the instance suspends:
/// the request goes out without waiting for its reply. Before, steps were
/// refused while a suspension was pending, and it waited until the reply
/// (which never came) or the deadline.
#[tokio::test]
async fn a_step_beside_a_wait_polled_first_still_runs() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = AskAndListen::start(&engine, 1).await.unwrap();
    until_status(&inst, Status::Listening).await;
    assert_eq!(REQUESTS.lock().unwrap().get(&1), Some(&1), "request sent");
    inst.send_event("reply", "pong").await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), "pong");
    assert_eq!(REQUESTS.lock().unwrap().get(&1), Some(&1), "sent once");
}

/// A wait dropped while others are in the suspension takes its own out:
/// the instance wakes for the approval, not for the cache hit it no
/// longer waits for. Before, the dropped wait's event stayed the row's,
/// and the approval never woke it.
#[tokio::test]
async fn a_wait_dropped_beside_another_leaves_the_suspension() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = LookupBesideApproval::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::Listening).await;
    let info = inst.info().await.unwrap();
    assert!(
        matches!(&info.waiting_for, Some(WaitingFor::Event { name }) if name == "approval"),
        "{info:?}"
    );
    inst.send_event("approval", "ada").await.unwrap();
    assert_eq!(
        inst.result_timeout(LIMIT).await.unwrap(),
        "looked up, approved by ada"
    );
}

/// Short sleeps beside a wait suspend with it rather than sleep in memory:
/// the instance keeps polling and still sees the event that ends it.
/// Before, the polling ran in memory until the deadline and the event
/// was never read.
#[tokio::test]
async fn short_sleeps_beside_a_wait_let_its_event_in() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = PollUntilGo::start(&engine, ()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    inst.send_event("go", "now").await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), "now");
}

#[tokio::test]
async fn a_long_sleep_suspends_and_frees_the_worker() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Sleeper::start(&engine, 4_000).await.unwrap();
    // Pending again after its first run: suspended while it sleeps (seen
    // within 3 s of its 4 s nap, however loaded the machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let info = inst.info().await.unwrap();
        if info.status == Status::Pending && info.runs == 1 && engine.running_here().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not suspended, or its handler still in memory: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let runs = inst.result_timeout(LIMIT).await.unwrap();
    assert_eq!(runs, 2, "woken and replayed once");
    assert_eq!(
        BEFORE_SLEEP.lock().unwrap()[&4_000],
        1,
        "the step before the sleep ran once"
    );
    let kinds: Vec<HistoryKind> = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&HistoryKind::Suspended), "{kinds:?}");
    // A short sleep stays in memory: one run.
    let short = Sleeper::start(&engine, 20).await.unwrap();
    assert_eq!(short.result_timeout(LIMIT).await.unwrap(), 1);
}

#[tokio::test]
async fn events_are_delivered_typed_whenever_they_are_sent() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    // Sent while it listens.
    let waiting = Approve::start(&engine, 60_000).await.unwrap();
    until_status(&waiting, Status::Listening).await;
    approve_as_ada(&waiting).await;
    // Sent before it waits: kept and delivered.
    let early = Approve::start(&engine, 60_000).await.unwrap();
    early
        .send_event(
            "approval",
            serde_json::json!({"approved": false, "by": "bob"}),
        )
        .await
        .unwrap();
    assert_eq!(
        early.result_timeout(LIMIT).await.unwrap(),
        "approved=false by bob"
    );
    // Nobody answers: the timeout branch.
    let ignored = Approve::start(&engine, 200).await.unwrap();
    assert_eq!(ignored.result_timeout(LIMIT).await.unwrap(), "timed out");
    // Events to ended instances are refused.
    let err = ignored
        .send_event(
            "approval",
            Approval {
                approved: true,
                by: "late".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyFinished { .. }), "{err:?}");
}

#[tokio::test]
async fn a_redelivered_event_with_a_key_is_received_once() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Payments::start(&engine, 2).await.unwrap();
    // Sent before the wait and again while it listens: one payment.
    assert_eq!(
        inst.send_event_once("payment", "charge-1", 10)
            .await
            .unwrap(),
        EventSent::Sent
    );
    until_status(&inst, Status::Listening).await;
    for _ in 0..2 {
        assert_eq!(
            inst.send_event_once("payment", "charge-1", 10)
                .await
                .unwrap(),
            EventSent::AlreadySent
        );
    }
    assert_eq!(
        inst.info().await.unwrap().status,
        Status::Listening,
        "a duplicate wakes nobody"
    );
    assert_eq!(
        inst.send_event_once("payment", "charge-2", 5)
            .await
            .unwrap(),
        EventSent::Sent
    );
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 15);
    // Once it ended: a key it saw is still a duplicate, a new one refused.
    assert_eq!(
        inst.send_event_once("payment", "charge-2", 5)
            .await
            .unwrap(),
        EventSent::AlreadySent
    );
    let err = inst
        .send_event_once("payment", "charge-3", 5)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyFinished { .. }), "{err:?}");
    let long = "k".repeat(MAX_EVENT_KEY_BYTES + 1);
    for bad in ["", "a\0b", long.as_str()] {
        let err = inst.send_event_once("payment", bad, 5).await.unwrap_err();
        assert!(matches!(err, Error::InvalidEventKey { .. }), "{err:?}");
        assert!(err.to_string().contains("non-empty"), "{err}");
    }
}

#[tokio::test]
async fn a_payload_of_the_wrong_shape_names_the_event_and_field() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Approve::start(&engine, 60_000).await.unwrap();
    inst.send_event(
        "approval",
        serde_json::json!({"approved": "yes", "by": "eve"}),
    )
    .await
    .unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(r#"event `approval` has a payload that does not fit: approved: invalid type: string "yes", expected a boolean"#), "{text}");
    // The path names the spot; a position in JSON the engine wrote would not.
    assert!(!text.contains("at line"), "{text}");
}

#[tokio::test]
async fn pause_stops_at_the_next_step_and_resume_continues() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Pausable::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    inst.pause().await.unwrap();
    PAUSE_SENT.store(true, Ordering::SeqCst);
    until_status(&inst, Status::Paused).await;
    let done_when_paused = inst.steps().await.unwrap().len();
    assert!(done_when_paused < 6, "paused before the end");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        inst.steps().await.unwrap().len(),
        done_when_paused,
        "nothing runs while paused"
    );
    assert_eq!(inst.status().await.unwrap(), Status::Paused);
    inst.resume().await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 6);
    let keys: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys.len(), 6, "every tick recorded once: {keys:?}");
}

static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A step that runs until `GATE_OPEN`, then a second one.
struct HeldStep;

impl Workflow for HeldStep {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "heldStep";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("gate", || async {
            while !GATE_OPEN.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, BoxError>(())
        })
        .await?;
        ctx.step("after", || async { Ok::<_, BoxError>(()) })
            .await?;
        Ok(())
    }
}

/// A pause asked while a step runs shows on the instance (the console
/// says "pausing") until it takes effect or a resume takes it back; the
/// status alone said `InProgress` as if nothing had been asked.
#[tokio::test]
async fn a_pause_asked_while_running_shows_until_it_takes_effect() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(HeldStep)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = HeldStep::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    assert!(!inst.info().await.unwrap().pause_requested);
    inst.pause().await.unwrap();
    let info = inst.info().await.unwrap();
    assert_eq!(info.status, Status::InProgress);
    assert!(info.pause_requested, "the pause asked shows");
    inst.resume().await.unwrap();
    assert!(!inst.info().await.unwrap().pause_requested, "taken back");
    inst.pause().await.unwrap();
    GATE_OPEN.store(true, Ordering::SeqCst);
    until_status(&inst, Status::Paused).await;
    assert!(!inst.info().await.unwrap().pause_requested, "taken effect");
    assert_eq!(inst.steps().await.unwrap().len(), 1);
    inst.resume().await.unwrap();
    inst.result_timeout(LIMIT).await.unwrap();
}

/// One long step, then a short one.
struct LongStep;

impl Workflow for LongStep {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "longStep";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        ctx.step("long", || async {
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            Ok::<_, BoxError>(())
        })
        .await?;
        ctx.step("short", || async { Ok::<_, BoxError>(()) })
            .await?;
        Ok(ctx.run_number() as u32)
    }
}

/// A pause and a resume made by another engine (another process, say)
/// while a step runs: the handler hears of both through its lease
/// renewals, and goes on without stopping.
#[tokio::test]
async fn a_pause_withdrawn_elsewhere_does_not_stop_the_handler() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let build = || {
        EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .register(LongStep)
            .poll_interval(Duration::from_millis(10))
            // Renewals every 500 ms: one or two while it is paused, and
            // a lease that a busy machine does not let lapse.
            .lease_duration(Duration::from_millis(1_500))
            .build()
    };
    let runner = build().await.unwrap();
    let other = build().await.unwrap();
    let _worker = runner.start_worker();
    let inst = LongStep::start(&runner, ()).await.unwrap();
    until_status(&inst, Status::InProgress).await;
    other.pause(inst.id()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    other.resume(inst.id()).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 1, "one run");
    let kinds: Vec<HistoryKind> = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| matches!(k, HistoryKind::Paused | HistoryKind::Suspended)),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn long_retry_backoffs_suspend_and_count_attempts_durably() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    SHAKY_CALLS.store(0, Ordering::SeqCst);
    let inst = Backoff::start(&engine, false).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 2);
    let step = &inst.steps().await.unwrap()[0];
    assert_eq!(step.attempts, 3, "attempt count survives suspension");
    let history = inst.history().await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == "attempt_failed")
            .count(),
        2
    );
    assert_eq!(
        history.iter().filter(|e| e.kind == "suspended").count(),
        2,
        "each 150 ms backoff suspended"
    );
    assert_eq!(inst.info().await.unwrap().runs, 3);

    let declined = Backoff::start(&engine, true).await.unwrap();
    let err = declined.result_timeout(LIMIT).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("failed after 1 attempt(s): card declined"),
        "{err}"
    );
}

/// Steps backing off side by side each keep their attempt count across
/// the suspensions, though a suspension records only the first one's: the
/// instance fails after 3 attempts of an item instead of retrying until
/// its deadline.
#[tokio::test]
async fn side_by_side_retries_count_every_step_attempts() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = FlakyFan::start(&engine, ()).await.unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("failed after 3 attempt(s): service down"),
        "{err}"
    );
    // A run ends at its first backoff, so it makes one attempt: some item
    // has made 3 within 4 × 2 + 1 runs unless counts started over.
    let runs = inst.info().await.unwrap().runs;
    assert!(runs <= 9, "{runs} runs");
    assert!(FLAKY_FAN_CALLS.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn children_run_once_and_report_back() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let parent = Parent::start(&engine, 21).await.unwrap();
    let out = parent.result_timeout(LIMIT).await.unwrap();
    assert!(out.starts_with("42 (side "), "{out}");
    let children = engine.list(Query::new().workflow("double")).await.unwrap();
    assert_eq!(
        children.items.len(),
        2,
        "one waited-for child and one detached child"
    );
    assert!(children.items.iter().all(|c| c.status == Status::Completed));

    let failing = Parent::start(&engine, 13).await.unwrap();
    assert_eq!(
        failing.result_timeout(LIMIT).await.unwrap(),
        "child failed: unlucky"
    );
}

/// A child's own timeout, delay and tags, given by the call, apply to it
/// instead of its workflow's defaults (`Double` has the 5-minute default
/// and no delay).
#[tokio::test]
async fn children_take_the_options_their_call_gives() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let parent = ParentWithOptions::start(&engine, ()).await.unwrap();
    let started = chrono::Utc::now();
    let (later, message) = parent.result_timeout(LIMIT).await.unwrap();
    assert_eq!(message, "ended timed_out");
    let later = engine.instance(&later.parse().unwrap()).await.unwrap();
    assert_eq!(later.status, Status::Pending);
    assert_eq!(later.tags.get("kind").map(String::as_str), Some("later"));
    let due = later.due_at.expect("a delayed start is due later");
    assert!(due > started + chrono::Duration::minutes(59), "{due}");
    let slow = engine
        .list(Query::new().workflow("double").tag("kind", "slow"))
        .await
        .unwrap();
    assert_eq!(slow.items.len(), 1);
    assert_eq!(slow.items[0].status, Status::TimedOut);
    let info = &slow.items[0];
    let lived = info.finished_at.unwrap() - info.created_at;
    assert!(lived < chrono::Duration::seconds(60), "{lived}");
}

/// A store error while starting a child is not the workflow's fault: the
/// run is handed back and starts the child when it resumes, rather than
/// recording the start as failed for good and failing the parent.
#[tokio::test]
async fn a_store_error_starting_a_child_is_retried_not_recorded() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = engine(Arc::clone(&store) as Arc<dyn Store>).await;
    let parent = Parent::start(&engine, 21).await.unwrap();
    // The parent's first write after this is the start of its first child.
    store.fail_next_creates(1);
    let _worker = engine.start_worker();
    let out = parent.result_timeout(LIMIT).await.unwrap();
    assert!(out.starts_with("42 (side "), "{out}");
    let children = engine.list(Query::new().workflow("double")).await.unwrap();
    assert_eq!(children.items.len(), 2, "each child started once");
    let steps = parent.steps().await.unwrap();
    assert!(steps.iter().all(|s| s.error.is_none()), "{steps:?}");
    // Handed back for a while, not at once: an error that stays would
    // otherwise loop at the store's speed.
    let history = parent.history().await.unwrap();
    let at = |kind: &str, n: usize| {
        history
            .iter()
            .filter(|e| e.kind == kind)
            .nth(n)
            .unwrap_or_else(|| panic!("no {kind} #{n}: {history:?}"))
            .at
    };
    let suspended = history
        .iter()
        .find(|e| e.kind == "suspended")
        .unwrap_or_else(|| panic!("{history:?}"));
    assert!(
        suspended
            .message
            .as_deref()
            .is_some_and(|m| m.contains("store unavailable")),
        "{suspended:?}"
    );
    let waited = at("started", 1) - suspended.at;
    assert!(waited >= chrono::Duration::seconds(4), "{waited}");
}

struct ToolCaller;

impl Workflow for ToolCaller {
    type Input = u32;
    /// The reply: whether it is an error, and its content.
    type Output = (bool, serde_json::Value);
    type State = ();
    const NAME: &'static str = "toolCaller";

    async fn run(&self, ctx: Ctx, n: u32) -> Result<(bool, serde_json::Value), BoxError> {
        let tools = Toolbox::new().tool(Double::as_tool().wait(Duration::from_secs(5)));
        let reply = ctx
            .call_tool_with(
                "ask",
                StepOptions::retries(1),
                &tools,
                "double",
                serde_json::json!({ "input": n }),
            )
            .await?;
        Ok((reply.is_error, reply.content))
    }
}

/// The same for a workflow tool: a store error while it starts its child
/// stops the run, to start the child when it resumes, instead of using up
/// the step's attempts and telling the model the tool failed.
#[tokio::test]
async fn a_store_error_starting_a_tool_child_is_retried_not_answered() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    let engine = engine(Arc::clone(&store) as Arc<dyn Store>).await;
    let caller = ToolCaller::start(&engine, 21).await.unwrap();
    // The caller's first create is its tool's child.
    store.fail_next_creates(1);
    let _worker = engine.start_worker();
    let (is_error, content) = caller.result_timeout(LIMIT).await.unwrap();
    assert_eq!((is_error, content), (false, serde_json::json!(42)));
    let steps = caller.steps().await.unwrap();
    assert!(steps.iter().all(|s| s.error.is_none()), "{steps:?}");
    let history = caller.history().await.unwrap();
    assert!(
        history.iter().any(|e| e.kind == "suspended"
            && e.message
                .as_deref()
                .is_some_and(|m| m.contains("store unavailable"))),
        "{history:?}"
    );
}

/// A child whose row cannot be read stays so: its parent is paused,
/// saying why, rather than handed back to fail the same way again and
/// again; resumed once the row reads, it goes on.
#[tokio::test]
async fn an_unreadable_child_pauses_its_parent() {
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    store.unreadable_workflow(Some("double"));
    let engine = engine(Arc::clone(&store) as Arc<dyn Store>).await;
    let _worker = engine.start_worker();
    let parent = Parent::start(&engine, 21).await.unwrap();
    until_status(&parent, Status::Paused).await;
    let history = parent.history().await.unwrap();
    let paused = history.iter().rev().find(|e| e.kind == "paused").unwrap();
    let why = paused.message.as_deref().unwrap_or_default();
    assert!(
        why.contains("cannot be read") && why.contains("unreadable"),
        "{why}"
    );
    let runs = history.iter().filter(|e| e.kind == "started").count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = parent.history().await.unwrap();
    assert_eq!(
        history.iter().filter(|e| e.kind == "started").count(),
        runs,
        "not run again while paused"
    );
    store.unreadable_workflow(None);
    parent.resume().await.unwrap();
    let out = parent.result_timeout(LIMIT).await.unwrap();
    assert!(out.starts_with("42 (side "), "{out}");
}

/// A suspension beside a running step leaves the state change the step's
/// closure made to that step's record: replays see it. (The suspension
/// took it, the step was recorded without it, and the run after the event
/// answered `false`.)
#[tokio::test]
async fn a_state_change_of_a_step_beside_a_suspension_is_replayed() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = ReserveBesideWait::start(&engine, ()).await.unwrap();
    until_status(&inst, Status::Listening).await;
    inst.send_event("approval", true).await.unwrap();
    assert!(
        inst.result_timeout(LIMIT).await.unwrap(),
        "the reservation was lost on replay"
    );
}

/// A replay that meets steps in another order than they were recorded
/// keeps what the handler's code did after the later one: an earlier
/// step's snapshot, replayed last, used to bring back a state from before
/// it (here `total = 0`), and the replay took a path the first run had not.
#[tokio::test]
async fn an_earlier_snapshot_replayed_late_does_not_undo_later_changes() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = CountAndAudit::start(&engine, ()).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 5);
    assert_eq!(
        ALERTS.load(Ordering::SeqCst),
        0,
        "no alert, as in the first run"
    );
    let history = inst.history().await.unwrap();
    let runs = history.iter().filter(|e| e.kind == "started").count();
    assert!(runs >= 2, "the sleep made a replay: {history:?}");
}

/// Version 1 of a workflow: reads its event's payload as any JSON, then
/// sleeps (the run suspends).
struct PayloadV1;

impl Workflow for PayloadV1 {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "payloadChange";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let _: serde_json::Value = ctx.wait_for_event("data", None).await?;
        ctx.sleep("after", Duration::from_secs(2)).await?;
        Ok(1)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Strict {
    #[allow(dead_code)]
    required: u32,
}

/// Version 2: reads the same payload as a type it no longer fits.
struct PayloadV2;

impl Workflow for PayloadV2 {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "payloadChange";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let _: Strict = ctx.wait_for_event("data", None).await?;
        ctx.sleep("after", Duration::from_secs(2)).await?;
        Ok(2)
    }
}

/// An event payload the first run read, that the code deployed since
/// cannot: the instance pauses for a fix (failing it would be for good),
/// as for a step's output. A payload the first reading could not read
/// either gives the same error at every replay.
#[tokio::test]
async fn a_payload_new_code_cannot_read_pauses_the_instance() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = |v2: bool| {
        let builder = EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(10))
            .suspend_after(Duration::from_millis(50));
        let builder = if v2 {
            builder.register(PayloadV2)
        } else {
            builder.register(PayloadV1)
        };
        async move { builder.build().await.unwrap() }
    };
    let old = engine(false).await;
    let worker = old.start_worker();
    let inst = PayloadV1::start(&old, ()).await.unwrap();
    until_status(&inst, Status::Listening).await;
    inst.send_event("data", serde_json::json!({"other": 1}))
        .await
        .unwrap();
    // Past the wait, suspended in the sleep: the next run (due in 2 s, by
    // then on the new code) replays the event.
    let started = std::time::Instant::now();
    let slept = |history: Vec<workflow_core::HistoryEvent>| {
        let last = |kind: &str| history.iter().rposition(|e| e.kind == kind);
        last("event_received").is_some_and(|got| last("suspended").is_some_and(|s| s > got))
    };
    while !slept(inst.history().await.unwrap()) {
        assert!(started.elapsed() < LIMIT, "never suspended in the sleep");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;
    let new = engine(true).await;
    let _worker = new.start_worker();
    let inst = PayloadV2::handle(&new, inst.id().clone());
    until_status(&inst, Status::Paused).await;
    let history = inst.history().await.unwrap();
    let paused = history.iter().rev().find(|e| e.kind == "paused").unwrap();
    let why = paused.message.as_deref().unwrap_or_default();
    assert!(
        why.contains("event `data`") && why.contains("code changed"),
        "{why}"
    );

    // Read by the new code from the start: the same error every time.
    let fresh = PayloadV2::start(&new, ()).await.unwrap();
    until_status(&fresh, Status::Listening).await;
    fresh
        .send_event("data", serde_json::json!({"other": 1}))
        .await
        .unwrap();
    let err = fresh.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("event `data`"), "{err}");
}

/// Version 1 books a step, sleeps, and finishes; version 2 books another
/// step first behind a gate.
struct Gated {
    v2: bool,
}

impl Workflow for Gated {
    type Input = ();
    type Output = bool;
    type State = ();
    const NAME: &'static str = "gated";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<bool, BoxError> {
        ctx.step("a", || async { Ok::<_, BoxError>(()) }).await?;
        let patched = self.v2 && ctx.patched("extra").await?;
        if patched {
            ctx.step("new", || async { Ok::<_, BoxError>(()) }).await?;
        }
        ctx.sleep("nap", Duration::from_millis(300)).await?;
        // Asked again past the history (a loop, another site): the same.
        if self.v2 && ctx.patched("extra").await? != patched {
            return Err("the gate changed its answer".into());
        }
        ctx.step("b", || async { Ok::<_, BoxError>(()) }).await?;
        Ok(patched)
    }
}

/// A version gate: an instance past it under the old code (it slept
/// there) goes on down the old path under the new; one that reaches it
/// under the new code takes the new path. Each keeps its answer when it
/// asks again, in the same run or the next.
#[tokio::test]
async fn patched_sends_old_instances_down_the_old_path() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = |v2: bool| {
        let builder = EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(10))
            .suspend_after(Duration::from_millis(50))
            .register(Gated { v2 });
        async move { builder.build().await.unwrap() }
    };
    let keys = |steps: Vec<StepInfo>| -> Vec<String> { steps.into_iter().map(|s| s.key).collect() };
    let old = engine(false).await;
    let worker = old.start_worker();
    let before = Gated::start(&old, ()).await.unwrap();
    let started = std::time::Instant::now();
    while !keys(before.steps().await.unwrap()).contains(&"nap".to_owned()) {
        assert!(started.elapsed() < LIMIT, "never slept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.shutdown().await;

    let new = engine(true).await;
    let _worker = new.start_worker();
    let before = Gated::handle(&new, before.id().clone());
    assert!(!before.result_timeout(LIMIT).await.unwrap(), "the old path");
    assert_eq!(
        keys(before.steps().await.unwrap()),
        ["a", "nap", "extra@patch", "b"]
    );

    let after = Gated::start(&new, ()).await.unwrap();
    assert!(after.result_timeout(LIMIT).await.unwrap(), "the new path");
    assert_eq!(
        keys(after.steps().await.unwrap()),
        ["a", "extra@patch", "new", "nap", "b"]
    );
}

/// Asks again until an answer fits: version 1 reads it as `Strict`,
/// version 2 as any JSON.
struct AskAgain {
    v2: bool,
}

impl Workflow for AskAgain {
    type Input = ();
    type Output = serde_json::Value;
    type State = ();
    const NAME: &'static str = "askAgain";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<serde_json::Value, BoxError> {
        loop {
            let answer = if self.v2 {
                ctx.wait_for_event::<serde_json::Value>("answer", None)
                    .await
            } else {
                ctx.wait_for_event::<Strict>("answer", None)
                    .await
                    .map(|s| serde_json::json!({ "required": s.required }))
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(Error::EventPayload { .. }) => {
                    ctx.step("ask-again", || async { Ok::<_, BoxError>(()) })
                        .await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// A payload the first reading could not read, and the handler went on
/// from that error (asked again): a replay under code that reads it now
/// gives the same error, and the handler the same branch. Before, the
/// replay took the payload it had refused, and the answer to its second
/// question was never read.
#[tokio::test]
async fn a_payload_first_read_as_unfit_stays_so_under_code_that_reads_it() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = |v2: bool| {
        let builder = EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(10))
            .suspend_after(Duration::from_millis(50))
            .register(AskAgain { v2 });
        async move { builder.build().await.unwrap() }
    };
    let old = engine(false).await;
    let worker = old.start_worker();
    let inst = AskAgain::start(&old, ()).await.unwrap();
    until_status(&inst, Status::Listening).await;
    inst.send_event("answer", serde_json::json!({"other": 1}))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let asked = inst
            .steps()
            .await
            .unwrap()
            .iter()
            .any(|s| s.key == "ask-again");
        if asked && inst.info().await.unwrap().status == Status::Listening {
            break;
        }
        assert!(started.elapsed() < LIMIT, "never asked again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;

    let new = engine(true).await;
    let _worker = new.start_worker();
    let inst = AskAgain::handle(&new, inst.id().clone());
    inst.send_event("answer", serde_json::json!({"required": 7}))
        .await
        .unwrap();
    assert_eq!(
        inst.result_timeout(LIMIT).await.unwrap(),
        serde_json::json!({"required": 7})
    );
}

/// Version 1 and 2 of a workflow that reads a value, then waits for an
/// event with no timeout (which records nothing while it waits): the value
/// read is the last thing recorded. `child` picks the value: a child's
/// output, or an event's payload.
struct ReadThenWait {
    v2: bool,
    child: bool,
}

/// `double`'s output as a later version might read it.
struct DoubleAsText;

impl Workflow for DoubleAsText {
    type Input = u32;
    type Output = String;
    type State = ();
    const NAME: &'static str = "double";

    async fn run(&self, _ctx: Ctx, n: u32) -> Result<String, BoxError> {
        Ok(n.to_string())
    }
}

impl Workflow for ReadThenWait {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "readThenWait";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        match (self.child, self.v2) {
            (true, false) => {
                ctx.run_child::<Double>("child", 2).await?;
            }
            (true, true) => {
                ctx.run_child::<DoubleAsText>("child", 2).await?;
            }
            (false, false) => {
                ctx.wait_for_event::<serde_json::Value>("data", None)
                    .await?;
            }
            (false, true) => {
                ctx.wait_for_event::<Strict>("data", None).await?;
            }
        }
        let _: serde_json::Value = ctx.wait_for_event("more", None).await?;
        Ok(if self.v2 { 2 } else { 1 })
    }
}

/// A value the first run read, last recorded before the instance waited
/// for its next event: new code that cannot read it pauses the instance,
/// as when something was recorded after it. Before, a value recorded last
/// was taken for a first reading cut short, and the instance failed for
/// good, for a child's output (read before it is recorded, so never cut
/// short) as for an event's.
#[tokio::test]
async fn a_value_recorded_last_that_new_code_cannot_read_pauses_the_instance() {
    for child in [true, false] {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let engine = |v2: bool| {
            let builder = EngineBuilder::new()
                .shared_store(Arc::clone(&store))
                .poll_interval(Duration::from_millis(10))
                .suspend_after(Duration::from_millis(50))
                .register(ReadThenWait { v2, child })
                .register(Double);
            async move { builder.build().await.unwrap() }
        };
        let old = engine(false).await;
        let worker = old.start_worker();
        let inst = ReadThenWait::start(&old, ()).await.unwrap();
        if !child {
            until_status(&inst, Status::Listening).await;
            inst.send_event("data", serde_json::json!({"other": 1}))
                .await
                .unwrap();
        }
        // Past the read, waiting for `more`.
        for _ in 0..500 {
            let info = inst.info().await.unwrap();
            if matches!(&info.waiting_for, Some(WaitingFor::Event { name }) if name == "more") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worker.shutdown().await;
        let new = engine(true).await;
        let _worker = new.start_worker();
        let inst = ReadThenWait::handle(&new, inst.id().clone());
        inst.send_event("more", true).await.unwrap();
        until_status(&inst, Status::Paused).await;
        let paused = inst.history().await.unwrap();
        let paused = paused.iter().rev().find(|e| e.kind == "paused").unwrap();
        let why = paused.message.as_deref().unwrap_or_default();
        assert!(why.contains("code changed"), "child {child}: {why}");
        assert!(
            inst.steps()
                .await
                .unwrap()
                .iter()
                .all(|s| !s.key.ends_with("@unread")),
            "child {child}: noted as unreadable"
        );
    }
}

/// A child's output the parent reads as another type than the child's
/// own (parent and child code deployed apart): the parent pauses, nothing
/// recorded, and once code that agrees is deployed and the parent
/// resumed, it reads the output and goes on. Before, the handler got
/// `Error::Child` and, with `?`, the parent failed for good.
#[tokio::test]
async fn a_child_output_the_parent_reads_as_another_type_pauses_it() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = |v2: bool| {
        let builder = EngineBuilder::new()
            .shared_store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(10))
            .register(ReadThenWait { v2, child: true })
            .register(Double);
        async move { builder.build().await.unwrap() }
    };
    let skewed = engine(true).await;
    let worker = skewed.start_worker();
    let inst = ReadThenWait::start(&skewed, ()).await.unwrap();
    until_status(&inst, Status::Paused).await;
    let history = inst.history().await.unwrap();
    let paused = history.iter().rev().find(|e| e.kind == "paused").unwrap();
    let why = paused.message.as_deref().unwrap_or_default();
    assert!(
        why.contains("does not fit") && why.contains("the child's own code wrote it"),
        "{why}"
    );
    assert!(
        inst.steps()
            .await
            .unwrap()
            .iter()
            .all(|s| !s.key.starts_with("child@")),
        "nothing recorded of the child's end"
    );
    worker.shutdown().await;

    let fixed = engine(false).await;
    let _worker = fixed.start_worker();
    let inst = ReadThenWait::handle(&fixed, inst.id().clone());
    inst.resume().await.unwrap();
    until_status(&inst, Status::Listening).await;
    inst.send_event("more", true).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 1);
}

/// An engine from `builder` on `store` running version 2 of `ReadThenWait`
/// (it reads an event), no worker started yet, and an instance of it sent
/// a payload that does not fit.
async fn sent_an_unfit_payload(
    store: &Arc<dyn Store>,
    builder: EngineBuilder,
) -> (Engine, Instance<ReadThenWait>) {
    let engine = builder
        .shared_store(Arc::clone(store))
        .poll_interval(Duration::from_millis(10))
        .register(ReadThenWait {
            v2: true,
            child: false,
        })
        .build()
        .await
        .unwrap();
    let inst = ReadThenWait::start(&engine, ()).await.unwrap();
    inst.send_event("data", serde_json::json!({"other": 1}))
        .await
        .unwrap();
    (engine, inst)
}

/// `inst` failed on its event's payload at a first reading, and noted so.
async fn failed_on_the_payload(inst: &Instance<ReadThenWait>) {
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let steps = inst.steps().await.unwrap();
    assert!(steps.iter().any(|s| s.key == "data@unread"), "{steps:?}");
}

/// An event taken (the store records it as it hands it over) by a worker
/// that died before it could read it: the next run's reading is the first,
/// so a payload that does not fit fails the instance and is noted, as it
/// would have been, rather than pausing it for a change of code.
#[tokio::test]
async fn an_event_taken_by_a_run_cut_short_is_read_for_the_first_time() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (engine, inst) = sent_an_unfit_payload(&store, EngineBuilder::new()).await;
    let now = store::now_millis();
    let claim = store::ClaimRequest {
        owner: "ghost".into(),
        workflows: vec![ReadThenWait::NAME.into()],
        now,
        due_by: now,
        lease_until: now + 60_000,
        limit: 1,
    };
    let ghost = store.claim(claim).await.unwrap().remove(0);
    let taken = store
        .take_event(&ghost.lease, "data", "data", now)
        .await
        .unwrap();
    assert!(taken.is_some());
    store.release_owner("ghost", now).await.unwrap();

    let _worker = engine.start_worker();
    failed_on_the_payload(&inst).await;
}

/// The note that a payload did not read at its first reading failed to
/// commit (the store blinked): the run is left to lapse, so the next one
/// follows a run cut short and reads the payload as for the first time,
/// failing the instance with the payload's error. Before, it was suspended
/// in order, and every later run took the payload for a change of code
/// and paused the instance, again after each resume.
#[tokio::test]
async fn a_note_that_failed_to_commit_is_written_by_the_next_run() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    let builder = EngineBuilder::new().lease_duration(Duration::from_millis(300));
    let (engine, inst) = sent_an_unfit_payload(&store, builder).await;
    // The event is taken by the store's own write; the first step commit
    // is the note.
    flaky.fail_next_step_commits(1);
    let _worker = engine.start_worker();
    failed_on_the_payload(&inst).await;
}

/// A child workflow no engine registers pauses its parent at once, naming
/// the workflow, instead of leaving it listening until its deadline; and
/// not failing it for good either: once an engine that runs the child is
/// deployed, the parent is resumed and completes. Before, the parent
/// failed, and no deploy could bring it back.
#[tokio::test]
async fn a_child_no_engine_runs_pauses_the_parent_until_one_does() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(Parent)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let parent = Parent::start(&engine, 21).await.unwrap();
    let why = common::paused_reason(&parent).await;
    assert!(
        why.contains("no workflow `double`: it is not registered"),
        "{why}"
    );
    assert!(engine
        .list(Query::new().workflow("double"))
        .await
        .unwrap()
        .items
        .is_empty());
    worker.shutdown().await;
    let done = resumed_where_double_runs(store, Parent, parent.id()).await;
    assert_eq!(done.status, Status::Completed, "{:?}", done.error);
    let out = done.output.unwrap_or_default();
    assert!(out.to_string().starts_with("\"42 (side "), "{out}");
}

/// How often `ChildBesideStep`'s slow step ran.
static SLOW_BESIDE_CHILD: AtomicU32 = AtomicU32::new(0);

/// Starts a child beside a slow step (`join!`).
#[derive(Clone)]
struct ChildBesideStep;

impl Workflow for ChildBesideStep {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "childBesideStep";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let slow = ctx.step("slow", || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, BoxError>(SLOW_BESIDE_CHILD.fetch_add(1, Ordering::SeqCst) + 1)
        });
        let child = ctx.run_child::<Double>("child", 5);
        let (slow, child) = tokio::join!(slow, child);
        Ok(slow? + child?)
    }
}

/// How often `ChildBesideStepTry`'s slow step ran.
static SLOW_BESIDE_CHILD_TRY: AtomicU32 = AtomicU32::new(0);

/// `ChildBesideStep` with `try_join!`, whose first error drops the other
/// branch, and an arm that fails the instance on the child's error.
#[derive(Clone)]
struct ChildBesideStepTry;

impl Workflow for ChildBesideStepTry {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "childBesideStepTry";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let slow = ctx.step("slow", || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, BoxError>(SLOW_BESIDE_CHILD_TRY.fetch_add(1, Ordering::SeqCst) + 1)
        });
        let child = ctx.run_child::<Double>("child", 5);
        match tokio::try_join!(slow, child) {
            Ok((slow, child)) => Ok(slow + child),
            Err(err) => match ctx.fail(err.to_string())? {},
        }
    }
}

/// Runs `W` (a slow step beside a child no engine registers) until it
/// pauses, checks the step was recorded, then deploys an engine that
/// registers the child and resumes it; returns how it ended.
async fn paused_for_the_child_then_fixed<W: Workflow<Input = ()> + Clone>(
    workflow: W,
) -> InstanceInfo {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(workflow.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let inst = W::start(&engine, ()).await.unwrap();
    let why = common::paused_reason(&inst).await;
    assert!(why.contains("no workflow `double`"), "{why}");
    let steps = inst.steps().await.unwrap();
    assert!(steps.iter().any(|s| s.key == "slow"), "{steps:?}");
    worker.shutdown().await;
    resumed_where_double_runs(store, workflow, inst.id()).await
}

/// Deploys an engine on `store` that runs `workflow` and `Double` (the
/// child that was missing), resumes paused instance `id`, and returns how
/// it ended.
async fn resumed_where_double_runs<W: Workflow>(
    store: Arc<dyn Store>,
    workflow: W,
    id: &InstanceId,
) -> InstanceInfo {
    let fixed = EngineBuilder::new()
        .shared_store(store)
        .register(workflow)
        .register(Double)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = fixed.start_worker();
    fixed.resume(id).await.unwrap();
    fixed.wait_timeout(id, LIMIT).await.unwrap()
}

/// With `try_join!` and a catch-all arm: the step beside the pause is
/// still recorded, and the instance is paused, not failed by the arm.
#[tokio::test]
async fn a_pause_for_setup_outlasts_try_join_and_a_failing_arm() {
    let done = paused_for_the_child_then_fixed(ChildBesideStepTry).await;
    assert_eq!(done.status, Status::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(serde_json::json!(11)));
    assert_eq!(SLOW_BESIDE_CHILD_TRY.load(Ordering::SeqCst), 1);
}

/// A pause for a missing child workflow lets the step running beside it
/// finish and be recorded: stopped halfway, its side effect would happen
/// again after the resume. Before, the run stopped at once and the step
/// ran twice.
#[tokio::test]
async fn a_pause_for_setup_lets_the_step_beside_it_finish() {
    let done = paused_for_the_child_then_fixed(ChildBesideStep).await;
    assert_eq!(done.status, Status::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(serde_json::json!(11)));
    assert_eq!(SLOW_BESIDE_CHILD.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_children() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let parent = Parent::start(&engine, 99).await.unwrap();
    until_status(&parent, Status::Listening).await;
    parent.cancel().await.unwrap();
    let children = engine
        .list(Query::new().workflow("double").status(Status::Cancelled))
        .await
        .unwrap();
    assert_eq!(
        children.items.len(),
        1,
        "the sleeping child was cancelled with its parent"
    );
}

/// Cancels itself through the store, as another process would (so no
/// local interrupt reaches it), then starts a child before its lease is
/// found gone.
struct CancelledMidRun(Arc<dyn Store>);

impl Workflow for CancelledMidRun {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "cancelledMidRun";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        self.0
            .cancel(ctx.id(), chrono::Utc::now().timestamp_millis())
            .await?;
        ctx.start_child::<Double>("late", 99).await?;
        Ok(())
    }
}

/// A child started after its parent's cancel cascaded (the parent's run had
/// not heard of the cancel yet) is cancelled too, not left running on its
/// own.
#[tokio::test]
async fn a_child_started_after_its_parent_was_cancelled_is_cancelled() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(CancelledMidRun(Arc::clone(&store)))
        .register(Double)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let parent = CancelledMidRun::start(&engine, ()).await.unwrap();
    until_status(&parent, Status::Cancelled).await;
    let mut children = Vec::new();
    for _ in 0..200 {
        children = engine
            .list(Query::new().workflow("double"))
            .await
            .unwrap()
            .items;
        if !children.is_empty() && children.iter().all(|c| c.status.is_terminal()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(children.len(), 1, "the child was started");
    assert_eq!(children[0].status, Status::Cancelled, "{:?}", children[0]);
}

static BUSY_DONE: AtomicU32 = AtomicU32::new(0);

/// A child whose one step takes two seconds: a cancel lands within it on
/// a loaded machine too.
struct Busy;

impl Workflow for Busy {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "busy";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("work", || async {
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            BUSY_DONE.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

struct AwaitsBusy;

impl Workflow for AwaitsBusy {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "awaitsBusy";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.run_child::<Busy>("busy", ()).await?;
        Ok(())
    }
}

/// Cancelling a parent stops a child running in this process at once, as
/// cancelling the child itself would, not at the next heartbeat: the
/// child's step in flight is dropped, not run to its end.
#[tokio::test]
async fn cancelling_a_parent_stops_its_child_running_here_at_once() {
    // Renewals hang: no heartbeat can stop the child, only the stop sent
    // at once.
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    store.hang_renewals(true);
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(AwaitsBusy)
        .register(Busy)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let parent = AwaitsBusy::start(&engine, ()).await.unwrap();
    until_status(&parent, Status::Listening).await;
    let child = loop {
        let running = engine.running_here();
        if let [child] = running.as_slice() {
            break Busy::handle(&engine, child.clone());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    parent.cancel().await.unwrap();
    assert_eq!(child.status().await.unwrap(), Status::Cancelled);
    until_nothing_runs_here(&engine, "the cancelled child still runs here").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        BUSY_DONE.load(Ordering::SeqCst),
        0,
        "its step ran to its end"
    );
}

static SLOW_DONE: AtomicU32 = AtomicU32::new(0);

/// A child whose one step takes far longer than its parent may run.
struct Slow;

impl Workflow for Slow {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "slow";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step("work", || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            SLOW_DONE.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// Waits for `Slow`, but may run only a second (time enough to start it
/// on a loaded machine).
struct ImpatientForSlow;

impl Workflow for ImpatientForSlow {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "impatientForSlow";
    const TIMEOUT: Duration = Duration::from_millis(1_000);

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.run_child::<Slow>("slow", ()).await?;
        Ok(())
    }
}

/// A parent timing out stops a child running in this process at once, as
/// cancelling the parent would, not at the next heartbeat.
#[tokio::test]
async fn a_timed_out_parent_stops_its_child_running_here_at_once() {
    // Renewals hang: no heartbeat can stop the child, only the stop sent
    // at once.
    let store = Arc::new(workflow_core::testing::Unreachable::new(MemoryStore::new()));
    store.hang_renewals(true);
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store) as Arc<dyn Store>)
        .register(ImpatientForSlow)
        .register(Slow)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let parent = ImpatientForSlow::start(&engine, ()).await.unwrap();
    until_status(&parent, Status::TimedOut).await;
    let children = engine
        .list(Query::new().workflow("slow"))
        .await
        .unwrap()
        .items;
    assert_eq!(children.len(), 1, "the child was started");
    assert_eq!(children[0].status, Status::Cancelled, "{:?}", children[0]);
    until_nothing_runs_here(&engine, "the cancelled child still runs here").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        SLOW_DONE.load(Ordering::SeqCst),
        0,
        "its step ran to its end"
    );
}

#[tokio::test]
async fn fan_out_keeps_input_order_with_one_step_per_item() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = Fan::start(&engine, vec![1, 2, 3, 4, 5]).await.unwrap();
    let (squares, sums) = inst.result_timeout(LIMIT).await.unwrap();
    assert_eq!(squares, [1, 4, 9, 16, 25]);
    assert_eq!(sums, [3, 7, 5]);
    let keys: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    for i in 0..5 {
        assert!(keys.contains(&format!("square[{i}]")), "{keys:?}");
        assert!(keys.contains(&format!("touch[{i}]")), "{keys:?}");
    }
    assert!(keys.contains(&"sum[2]".to_owned()));
    assert_eq!(keys.len(), 13);
}

struct ListensLong;

impl Workflow for ListensLong {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "listensLong";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        let _: serde_json::Value = ctx.wait_for_event("go", None).await?;
        Ok(())
    }
}

struct NapsLong;

impl Workflow for NapsLong {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "napsLong";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.sleep("nap", Duration::from_secs(3600)).await?;
        Ok(())
    }
}

/// Moving the deadline of an instance that waits (for an event without a
/// timeout, or in an hour-long sleep) ends it at the new deadline, not when
/// it would have woken.
#[tokio::test]
async fn a_shorter_deadline_ends_a_waiting_instance() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(ListensLong)
        .register(NapsLong)
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let hour = StartOptions::new().timeout(Duration::from_secs(7200));
    let listens = ListensLong::start_with(&engine, (), hour.clone())
        .await
        .unwrap();
    let naps = NapsLong::start_with(&engine, (), hour).await.unwrap();
    until_status(&listens, Status::Listening).await;
    for _ in 0..500 {
        let info = naps.info().await.unwrap();
        if info.runs == 1 && info.status == Status::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for inst in [listens.id(), naps.id()] {
        engine
            .set_timeout(inst, Timeout::In(Duration::from_millis(200)))
            .await
            .unwrap();
    }
    let ended = |err: Error| {
        matches!(
            err,
            Error::Ended {
                status: Status::TimedOut,
                ..
            }
        )
    };
    let listened = listens.result_timeout(Duration::from_secs(5)).await;
    let status = listens.status().await.unwrap();
    assert!(
        listened.is_err_and(ended),
        "the listening instance timed out: {status:?}"
    );
    let napped = naps.result_timeout(Duration::from_secs(5)).await;
    assert!(napped.is_err_and(ended), "the sleeping instance timed out");
}

#[tokio::test]
async fn a_corrupt_wake_time_is_passed_not_a_panic() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = engine(Arc::clone(&store)).await;
    let inst = Sleeper::start(&engine, 3_600_000).await.unwrap();
    // The sleep's recorded wake time, as far in the past as an i64 goes.
    let now = chrono::Utc::now().timestamp_millis();
    let claimed = store
        .claim(store::ClaimRequest {
            owner: "writer-of-bad-rows".into(),
            workflows: vec!["sleeper".into()],
            now,
            due_by: now,
            lease_until: now + 30_000,
            limit: 1,
        })
        .await
        .unwrap();
    for (key, output) in [("before", "null".to_owned()), ("nap", i64::MIN.to_string())] {
        let step = store::StepRow {
            key: key.into(),
            output: Some(output),
            error: None,
            state: None,
            attempts: 1,
            started_at: now,
            finished_at: now,
        };
        store.commit_step(&claimed[0].lease, step).await.unwrap();
    }
    store.release(&claimed[0].lease, now).await.unwrap();
    let _worker = engine.start_worker();
    assert_eq!(
        inst.result_timeout(Duration::from_secs(10)).await.unwrap(),
        2,
        "long past: the second run wakes at once"
    );
}

/// Polls until `inst` is back `Pending` after its first run: suspended.
async fn until_suspended<W: Workflow>(inst: &Instance<W>) -> InstanceInfo {
    for _ in 0..500 {
        let info = inst.info().await.unwrap();
        if info.status == Status::Pending && info.runs >= 1 {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never suspended: {:?}", inst.info().await.unwrap());
}

/// `info()` tells a sleeping instance from a queued one and says what a
/// listening one waits for, until when, and whose child it is.
#[tokio::test]
async fn info_says_what_an_instance_waits_for_and_until_when() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    // Stored times have millisecond precision.
    let before =
        chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap();
    let minute = chrono::TimeDelta::minutes(1);

    // Not picked up yet: queued, due already.
    let queued = Approve::start(&engine, 60_000).await.unwrap();
    let info = queued.info().await.unwrap();
    assert_eq!(info.status, Status::Pending);
    assert!(info.due_at.unwrap() <= chrono::Utc::now(), "{info:?}");
    assert_eq!(info.waiting_for, None);

    let _worker = engine.start_worker();
    until_status(&queued, Status::Listening).await;
    let info = queued.info().await.unwrap();
    assert_eq!(
        info.waiting_for,
        Some(WaitingFor::Event {
            name: "approval".into()
        })
    );
    let gives_up = info.due_at.expect("the wait's timeout");
    assert!(gives_up >= before + minute && gives_up <= chrono::Utc::now() + minute);

    let sleeper = Sleeper::start(&engine, 60_000).await.unwrap();
    let info = until_suspended(&sleeper).await;
    let wakes = info.due_at.expect("due when the sleep ends");
    assert!(wakes >= before + minute && wakes <= chrono::Utc::now() + minute);
    assert_eq!((info.waiting_for, info.parent), (None, None));

    // `Double(99)` sleeps for an hour, past its deadline: the parent
    // listens for it, as long as its own deadline lets it.
    let parent = Parent::start(&engine, 99).await.unwrap();
    until_status(&parent, Status::Listening).await;
    let info = parent.info().await.unwrap();
    let Some(WaitingFor::Child { id }) = &info.waiting_for else {
        panic!("{info:?}");
    };
    assert_eq!(info.due_at, info.deadline_at, "no timeout but the deadline");
    let child = engine.instance(id).await.unwrap();
    assert_eq!(child.workflow, "double");
    assert_eq!(child.parent.as_ref(), Some(parent.id()));

    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["waiting_for"]["kind"], "child");
    assert_eq!(json["waiting_for"]["id"], id.as_str());

    // Ended: nothing to wait for.
    queued
        .send_event(
            "approval",
            Approval {
                approved: true,
                by: "ann".into(),
            },
        )
        .await
        .unwrap();
    queued.result_timeout(LIMIT).await.unwrap();
    let info = queued.info().await.unwrap();
    assert_eq!((info.due_at, info.waiting_for), (None, None));
    sleeper.cancel().await.unwrap();
    parent.cancel().await.unwrap();
}

/// A replay restores the snapshot recorded last, not the one of the step
/// it replays last: side-by-side steps replay in code order.
#[tokio::test]
async fn side_by_side_state_replays_as_last_recorded() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = CountsSideBySide::start(&engine, ()).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 2);
    assert!(inst.info().await.unwrap().runs >= 2, "it was replayed");
    let keys: Vec<String> = inst
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys[..2], ["count[1]", "count[0]"], "recorded out of order");
}

/// An item of `ctx.map` that runs again beside the replays of items
/// recorded in an earlier run counts on top of their state: before, it
/// counted from the default state, and the replays then put their older
/// snapshots over its change.
#[tokio::test]
async fn an_item_run_again_beside_replays_keeps_its_state_change() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = CountsAgainBesideReplays::start(&engine, ()).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), 3);
    assert!(inst.info().await.unwrap().runs >= 2, "it was replayed");
    assert_eq!(inst.state().await.unwrap().done, 3);
}

/// A handler moves its own deadline once: past the workflow's `TIMEOUT`
/// it completes, and the replay after its sleep does not move it again.
#[tokio::test]
async fn a_handler_extends_its_own_deadline_once() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = ExtendsItself::start(&engine, ()).await.unwrap();
    let until = inst.result_timeout(LIMIT).await.unwrap();
    let info = inst.info().await.unwrap();
    assert!(info.runs >= 2, "it was replayed");
    assert_eq!(info.deadline_at.unwrap().timestamp_millis(), until);
    let moved = inst
        .history()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == HistoryKind::DeadlineChanged)
        .count();
    assert_eq!(moved, 1, "moved once, not at each run");
}

/// An event no wait can name, or too large, is refused when sent: before,
/// the send succeeded and the event sat in the inbox for ever.
#[tokio::test]
async fn events_no_wait_can_take_are_refused_when_sent() {
    let store = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(store)
        .register(Approve)
        .max_payload_bytes(64)
        .build()
        .await
        .unwrap();
    let inst = Approve::start(&engine, 60_000).await.unwrap();
    for name in ["", "approval#1", "approval@timeout", "approval[0]", "a\0b"] {
        let err = inst.send_event(name, 1).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidEventName { name: n, .. } if n == name),
            "{name:?}: {err:?}"
        );
        assert!(err.to_string().contains("no wait can name it"), "{err}");
    }
    let long = "e".repeat(MAX_KEY_BYTES + 1);
    let err = inst.send_event(&long, 1).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NameTooLong {
                what: "event name",
                bytes: 513,
                ..
            }
        ),
        "{err:?}"
    );
    let err = inst
        .send_event_once("approval", "k", "x".repeat(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { max: 64, .. }),
        "{err:?}"
    );
    // Nothing reached the inbox: the first event it takes is the one sent now.
    let _worker = engine.start_worker();
    approve_as_ada(&inst).await;
}

static SLOW_STARTS: AtomicU32 = AtomicU32::new(0);

/// A sleep that suspends beside a slow step; the step changes the state.
struct SleepsBesideSlowStep;

#[derive(Default, Serialize, Deserialize, JsonSchema)]
struct Seen {
    slow: u32,
}

impl Workflow for SleepsBesideSlowStep {
    type Input = ();
    type Output = (u32, u32);
    type State = Seen;
    const NAME: &'static str = "sleepsBesideSlowStep";

    async fn run(&self, ctx: Ctx<Seen>, _input: ()) -> Result<(u32, u32), BoxError> {
        // The step starts first, then the sleep suspends.
        let (slow, slept) = tokio::join!(
            ctx.step("slow", || async {
                SLOW_STARTS.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                ctx.state_mut().slow += 1;
                Ok::<_, BoxError>(7)
            }),
            ctx.sleep("nap", Duration::from_millis(100)),
        );
        slept?;
        let slow = slow?;
        Ok((slow, ctx.state().slow))
    }
}

/// A suspension waits for the steps running beside it to finish and be
/// recorded, with the state they left. Before, it dropped them halfway, so
/// their side effects happened again in the next run.
#[tokio::test]
async fn a_suspension_lets_the_steps_beside_it_finish() {
    let engine = EngineBuilder::new()
        .shared_store(Arc::new(MemoryStore::new()))
        .register(SleepsBesideSlowStep)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = SleepsBesideSlowStep::start(&engine, ()).await.unwrap();
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), (7, 1));
    assert_eq!(
        SLOW_STARTS.load(Ordering::SeqCst),
        1,
        "the slow step ran once"
    );
    assert!(inst.info().await.unwrap().runs >= 2, "the sleep suspended");
}

static LONG_STEP_STARTED: AtomicU32 = AtomicU32::new(0);
static LONG_STEP_ENDED: AtomicU32 = AtomicU32::new(0);

/// A sleep that suspends beside a step that takes a minute.
struct SleepsBesideLongStep;

impl Workflow for SleepsBesideLongStep {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "sleepsBesideLongStep";

    async fn run(&self, ctx: Ctx, _input: ()) -> Result<(), BoxError> {
        let (long, slept) = tokio::join!(
            ctx.step("long", || async {
                LONG_STEP_STARTED.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(60)).await;
                LONG_STEP_ENDED.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }),
            ctx.sleep("nap", Duration::from_millis(100)),
        );
        long?;
        slept?;
        Ok(())
    }
}

/// While a suspension waits for the steps beside it, a cancel still stops
/// the run at once.
#[tokio::test]
async fn a_cancel_stops_a_suspension_waiting_for_steps() {
    let engine = EngineBuilder::new()
        .shared_store(Arc::new(MemoryStore::new()))
        .register(SleepsBesideLongStep)
        .poll_interval(Duration::from_millis(10))
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = SleepsBesideLongStep::start(&engine, ()).await.unwrap();
    while LONG_STEP_STARTED.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The sleep has asked to suspend; the long step holds the run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inst.info().await.unwrap().status, Status::InProgress);
    inst.cancel().await.unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ended {
                status: Status::Cancelled,
                ..
            }
        ),
        "{err:?}"
    );
    // Stopped long before the step's minute is up.
    for _ in 0..500 {
        if engine.running_here().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(engine.running_here().is_empty(), "the handler stopped");
    assert_eq!(LONG_STEP_ENDED.load(Ordering::SeqCst), 0);
}

/// `map_with`, `for_each_with` and `batch_with` give every item and chunk
/// the attempts of their options, not the workflow's one: each fails once
/// and succeeds on its second attempt.
#[tokio::test]
async fn fan_outs_take_their_own_retry_policy() {
    let engine = engine(Arc::new(MemoryStore::new())).await;
    let _worker = engine.start_worker();
    let inst = FanWith::start(&engine, vec![1, 2, 3]).await.unwrap();
    let (doubled, sums) = inst.result_timeout(LIMIT).await.unwrap();
    assert_eq!((doubled, sums), (vec![2, 4, 6], vec![3, 3]));
    let steps = inst.steps().await.unwrap();
    assert_eq!(steps.len(), 3 + 3 + 2, "{steps:?}");
    assert!(steps.iter().all(|s| s.attempts == 2), "{steps:?}");
}

/// Version 1 of a workflow that waits for its approval event by one name.
struct WaitsApproved;

impl Workflow for WaitsApproved {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "renamedWait";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let by: String = ctx.wait_for_event("approved", None).await?;
        Ok(format!("v1 {by}"))
    }
}

/// Version 2: the same workflow, its event renamed.
struct WaitsApproval;

impl Workflow for WaitsApproval {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "renamedWait";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let by: String = ctx.wait_for_event("approval", None).await?;
        Ok(format!("v2 {by}"))
    }
}

/// README's remedy for a renamed event: an instance listening under the
/// old name is paused and resumed, and replays into the new wait, which
/// finds the event sent meanwhile.
#[tokio::test]
async fn an_instance_listening_under_a_renamed_event_moves_on_after_pause_and_resume() {
    let store: Arc<dyn store::Store> = Arc::new(MemoryStore::new());
    let engine = |build: EngineBuilder| {
        build
            .shared_store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(20))
            .suspend_after(Duration::ZERO)
            .build()
    };
    let old = engine(EngineBuilder::new().register(WaitsApproved))
        .await
        .unwrap();
    let worker = old.start_worker();
    let run = WaitsApproved::start(&old, ()).await.unwrap();
    until_status(&run, Status::Listening).await;
    worker.shutdown().await;

    let new = engine(EngineBuilder::new().register(WaitsApproval))
        .await
        .unwrap();
    let _worker = new.start_worker();
    let run = WaitsApproval::handle(&new, run.id().clone());
    run.send_event("approval", "ada").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        run.info().await.unwrap().status,
        Status::Listening,
        "the old name only wakes it"
    );
    run.pause().await.unwrap();
    run.resume().await.unwrap();
    let out = run.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(out, "v2 ada");
}

/// Items of `FailsBesideRunning` that ran to their end, by input.
static DRAINED: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

/// Item 0 fails for good at once while items 1 and 2 are still at work;
/// the handler catches the failure, as a compensation would.
struct FailsBesideRunning;

impl Workflow for FailsBesideRunning {
    type Input = u32;
    type Output = String;
    type State = ();
    const NAME: &'static str = "failsBesideRunning";

    async fn run(&self, ctx: Ctx, tag: u32) -> Result<String, BoxError> {
        let out = ctx
            .map("charge", vec![0u32, 1, 2], 3, |i| async move {
                if i == 0 {
                    return Err::<u32, BoxError>(permanent("declined"));
                }
                tokio::time::sleep(Duration::from_millis(60)).await;
                *DRAINED.lock().unwrap().entry(tag).or_default() += 1;
                Ok(i)
            })
            .await;
        match out {
            Err(Error::Step { step, .. }) => Ok(step),
            other => Err(format!("expected a step failure, got {other:?}").into()),
        }
    }
}

/// The items running beside one that failed for good finish and are
/// recorded before `map` returns its failure: their side effects
/// happened, and a replay (which meets the failure first) would never run
/// them again.
#[tokio::test]
async fn items_running_beside_a_failure_finish_and_are_recorded() {
    let engine = alone(FailsBesideRunning).build().await.unwrap();
    let _worker = engine.start_worker();
    let run = FailsBesideRunning::start(&engine, 1).await.unwrap();
    let failed = run.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(failed, "charge[0]");
    assert_eq!(DRAINED.lock().unwrap().get(&1), Some(&2));
    let keys: BTreeSet<String> = run
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["charge[0]".into(), "charge[1]".into(), "charge[2]".into()])
    );
}

/// How many quick items had ended when the slow one did, by input.
static QUICK_BEFORE_SLOW: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

/// One slow item first, twenty quick ones after it, four at a time.
struct SlowFirst;

impl Workflow for SlowFirst {
    type Input = u32;
    type Output = ();
    type State = ();
    const NAME: &'static str = "slowFirst";

    async fn run(&self, ctx: Ctx, tag: u32) -> Result<(), BoxError> {
        let quick_done = Arc::new(AtomicU32::new(0));
        ctx.for_each("item", (0u32..21).collect(), 4, |i| {
            let quick_done = Arc::clone(&quick_done);
            async move {
                if i == 0 {
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                    let seen = quick_done.load(Ordering::SeqCst);
                    QUICK_BEFORE_SLOW.lock().unwrap().insert(tag, seen);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    quick_done.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, BoxError>(())
            }
        })
        .await?;
        Ok(())
    }
}

/// A slow item keeps one slot, not all of them: the quick items after it
/// run through the other three meanwhile (they waited behind it before).
#[tokio::test]
async fn a_slow_item_does_not_hold_up_the_items_after_it() {
    let engine = alone(SlowFirst).build().await.unwrap();
    let _worker = engine.start_worker();
    let run = SlowFirst::start(&engine, 1).await.unwrap();
    run.result_timeout(Duration::from_secs(20)).await.unwrap();
    let seen = QUICK_BEFORE_SLOW.lock().unwrap()[&1];
    assert_eq!(seen, 20, "every quick item ended while the slow one ran");
}

/// Side effects of `SuspendsBesideItems`' items, by (input, item).
static BESIDE_SUSPENSION: Mutex<BTreeMap<(u32, u32), u32>> = Mutex::new(BTreeMap::new());

/// Item 0 fails once with a backoff long enough to suspend the instance
/// while items 1 and 2 are at work; item 1 ends first, freeing a slot for
/// item 3 while the suspension waits for item 2.
struct SuspendsBesideItems;

impl Workflow for SuspendsBesideItems {
    type Input = u32;
    type Output = Vec<u32>;
    type State = ();
    const NAME: &'static str = "suspendsBesideItems";

    async fn run(&self, ctx: Ctx, tag: u32) -> Result<Vec<u32>, BoxError> {
        let opts = StepOptions::attempts(2).backoff(
            Duration::from_millis(300),
            1.0,
            Duration::from_millis(300),
        );
        let out = ctx
            .map_with("item", opts, vec![0u32, 1, 2, 3], 3, |i| async move {
                let calls = {
                    let mut map = BESIDE_SUSPENSION.lock().unwrap();
                    let calls = map.entry((tag, i)).or_default();
                    *calls += 1;
                    *calls
                };
                match i {
                    0 if calls == 1 => {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        return Err::<u32, BoxError>("not yet".into());
                    }
                    1 => tokio::time::sleep(Duration::from_millis(60)).await,
                    2 => tokio::time::sleep(Duration::from_millis(300)).await,
                    _ => {}
                }
                Ok(i)
            })
            .await?;
        Ok(out)
    }
}

/// A suspension that waits for the items running beside it gets them: a
/// slot freed meanwhile starts nothing that would return at once and
/// drop them unrecorded (their side effects would run again).
#[tokio::test]
async fn a_suspension_in_a_fan_out_keeps_the_items_running_beside_it() {
    let engine = alone(SuspendsBesideItems)
        .suspend_after(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let run = SuspendsBesideItems::start(&engine, 1).await.unwrap();
    let out = run.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(out, [0, 1, 2, 3]);
    assert!(run.info().await.unwrap().runs >= 2, "it suspended");
    let calls = BESIDE_SUSPENSION.lock().unwrap();
    assert_eq!(calls.get(&(1, 2)), Some(&1), "item 2 ran once: {calls:?}");
    assert_eq!(calls.get(&(1, 0)), Some(&2), "item 0 ran twice: {calls:?}");
}

/// Side effects of `CompensatesFanOut`'s items, by (input, item).
static COMPENSATED: Mutex<BTreeMap<(u32, u32), u32>> = Mutex::new(BTreeMap::new());

/// Two at a time: item 0 is slow, item 1 quick, item 2 fails for good;
/// the handler compensates, then naps long enough to be replayed.
struct CompensatesFanOut;

impl Workflow for CompensatesFanOut {
    type Input = u32;
    type Output = String;
    type State = ();
    const NAME: &'static str = "compensatesFanOut";

    async fn run(&self, ctx: Ctx, tag: u32) -> Result<String, BoxError> {
        let out = ctx
            .map("charge", vec![0u32, 1, 2, 3], 2, |i| async move {
                *COMPENSATED.lock().unwrap().entry((tag, i)).or_default() += 1;
                match i {
                    0 => tokio::time::sleep(Duration::from_millis(150)).await,
                    2 => return Err::<u32, BoxError>(permanent("declined")),
                    _ => {}
                }
                Ok(i)
            })
            .await;
        let failed = match out {
            Err(Error::Step { step, .. }) => step,
            other => return Err(format!("expected a step failure, got {other:?}").into()),
        };
        ctx.sleep("nap", Duration::from_millis(100)).await?;
        Ok(failed)
    }
}

/// A replay of a fan-out that failed starts no item the first run had not
/// started: with every record answering at once, item 3 would otherwise
/// run for the first time after the compensation.
#[tokio::test]
async fn a_replayed_fan_out_starts_nothing_past_its_failure() {
    let engine = alone(CompensatesFanOut)
        .suspend_after(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let run = CompensatesFanOut::start(&engine, 1).await.unwrap();
    let failed = run.result_timeout(Duration::from_secs(10)).await.unwrap();
    assert_eq!(failed, "charge[2]");
    assert!(run.info().await.unwrap().runs >= 2, "it was replayed");
    let calls = COMPENSATED.lock().unwrap();
    assert_eq!(calls.get(&(1, 3)), None, "item 3 never ran: {calls:?}");
    for i in 0..3 {
        assert_eq!(calls.get(&(1, i)), Some(&1), "item {i} ran once: {calls:?}");
    }
}

/// `inst`'s result, moving `clock` on while it waits: a store error has a
/// run go on 5 s later, by the engine's clock.
async fn result_past_store_retries<W: Workflow>(
    inst: &Instance<W>,
    clock: &ManualClock,
) -> Result<W::Output> {
    for _ in 0..200 {
        match inst.result_timeout(Duration::from_millis(50)).await {
            Err(Error::WaitTimeout { .. }) => clock.advance(Duration::from_secs(6)),
            other => return other,
        }
    }
    panic!("{} never ended", inst.id());
}

/// Runs of `FailsEveryTime`'s step.
static FAILING_RUNS: AtomicU32 = AtomicU32::new(0);

/// A step that fails at every attempt, three in all, without a wait.
struct FailsEveryTime;

impl Workflow for FailsEveryTime {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "failsEveryTime";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        let opts = StepOptions::retries(3).backoff(Duration::ZERO, 1.0, Duration::ZERO);
        ctx.step_with("flaky", opts, || async {
            FAILING_RUNS.fetch_add(1, Ordering::SeqCst);
            Err::<(), BoxError>("down".into())
        })
        .await?;
        Ok(())
    }
}

/// A failed attempt whose record committed but whose answer was lost (a
/// dropped connection) still counts: the run stops for the store's error,
/// and the next one goes on from the attempts made. Before, the
/// suspension named no step backing off, and the next run gave the step
/// its three attempts again (four runs).
#[tokio::test]
async fn an_attempt_whose_record_lost_its_answer_still_counts() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    let clock = ManualClock::new(chrono::Utc::now());
    let engine = EngineBuilder::new()
        .shared_store(store)
        .register(FailsEveryTime)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    flaky.lose_next_attempt_answers(1);
    let _worker = engine.start_worker();
    let inst = FailsEveryTime::start(&engine, ()).await.unwrap();
    let err = result_past_store_retries(&inst, &clock).await.unwrap_err();
    assert!(err.to_string().contains("down"), "{err}");
    assert_eq!(FAILING_RUNS.load(Ordering::SeqCst), 3);
}

/// Runs of `ChargesOnce`'s step.
static CHARGES: AtomicU32 = AtomicU32::new(0);

/// A step that runs at most once, whose first run never comes back.
struct ChargesOnce;

impl Workflow for ChargesOnce {
    type Input = ();
    type Output = ();
    type State = ();
    const NAME: &'static str = "chargesOnce";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<(), BoxError> {
        ctx.step_with("charge", StepOptions::at_most_once(), || async {
            if CHARGES.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(())
        })
        .await?;
        Ok(())
    }
}

/// A step of `StepOptions::at_most_once` whose run was cut short (here its
/// worker's lease is taken away, as after a crash) is not run again: the
/// next run finds that its attempt started and fails it, its outcome
/// unknown. With `no_retry` it ran twice.
#[tokio::test]
async fn an_at_most_once_step_cut_short_is_not_run_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(ChargesOnce)
        .lease_duration(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = ChargesOnce::start(&engine, ()).await.unwrap();
    for _ in 0..500 {
        if CHARGES.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
    let steps = inst.steps().await.unwrap();
    assert!(steps.iter().any(|s| s.key == "charge@started"), "{steps:?}");
    // The worker is taken for dead: its lease goes, and the instance is
    // due again.
    for owner in store.lease_owners().await.unwrap() {
        store
            .release_owner(&owner, store::now_millis())
            .await
            .unwrap();
    }
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1);
}

/// Waits for event `go` twice; returns the first payload.
struct TwoGoes;

impl Workflow for TwoGoes {
    type Input = ();
    type Output = u32;
    type State = ();
    const NAME: &'static str = "twoGoes";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<u32, BoxError> {
        let first: u32 = ctx.wait_for_event("go", None).await?;
        let _second: u32 = ctx.wait_for_event("go", None).await?;
        Ok(first)
    }
}

/// Sends `go` to the instance it is given.
struct Nudger;

impl Workflow for Nudger {
    type Input = InstanceId;
    type Output = ();
    type State = ();
    const NAME: &'static str = "nudger";

    async fn run(&self, ctx: Ctx, id: InstanceId) -> Result<(), BoxError> {
        ctx.send_event_to("nudge", &id, "go", 7u32).await?;
        Ok(())
    }
}

/// `ctx.send_event_to` delivers an event to another instance once, even
/// when its step runs again (its record failed to commit): the repeat is
/// found sent under the step's key. With a plain send, the waiter got a
/// second `go` and completed.
#[tokio::test]
async fn an_event_sent_from_a_step_run_again_arrives_once() {
    let flaky = Arc::new(testing::Unreachable::new(MemoryStore::new()));
    let store: Arc<dyn Store> = flaky.clone();
    let clock = ManualClock::new(chrono::Utc::now());
    let engine = EngineBuilder::new()
        .shared_store(store)
        .register(TwoGoes)
        .register(Nudger)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let waiter = TwoGoes::start(&engine, ()).await.unwrap();
    until_status(&waiter, Status::Listening).await;
    flaky.fail_next_step_commits(1);
    let nudger = Nudger::start(&engine, waiter.id().clone()).await.unwrap();
    result_past_store_retries(&nudger, &clock).await.unwrap();
    let runs = engine.instance(nudger.id()).await.unwrap().runs;
    assert!(runs >= 2, "the step ran again: {runs} runs");
    // The waiter took the one `go` and waits for a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = engine.instance(waiter.id()).await.unwrap();
    assert_eq!(info.status, Status::Listening, "{info:?}");
    let history = waiter.history().await.unwrap();
    let taken = history
        .iter()
        .filter(|e| e.kind == "event_received")
        .count();
    assert_eq!(taken, 1, "{history:?}");
}

/// Sending to an instance that does not exist fails the step at once.
#[tokio::test]
async fn an_event_sent_to_no_instance_fails_the_step() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(Nudger)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let nobody = InstanceId::new();
    let nudger = Nudger::start(&engine, nobody).await.unwrap();
    let err = nudger.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("nudge"), "{err}");
    let steps = nudger.steps().await.unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].attempts, 1, "{steps:?}");
}

/// Sends `go` under a step name that fits alone, not with the instance id.
struct NudgerLongName;

impl Workflow for NudgerLongName {
    type Input = InstanceId;
    type Output = ();
    type State = ();
    const NAME: &'static str = "nudgerLongName";

    async fn run(&self, ctx: Ctx, id: InstanceId) -> Result<(), BoxError> {
        let name = "n".repeat(MAX_KEY_BYTES - 10);
        ctx.send_event_to(&name, &id, "go", 7u32).await?;
        Ok(())
    }
}

/// A step name too long for the event's key (the instance id, `/` and the
/// step key) fails the call before anything is recorded, not the step.
#[tokio::test]
async fn an_event_key_too_long_is_refused_before_the_step() {
    let engine = EngineBuilder::new()
        .store(MemoryStore::new())
        .register(NudgerLongName)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let inst = NudgerLongName::start(&engine, InstanceId::new())
        .await
        .unwrap();
    let err = inst.result_timeout(LIMIT).await.unwrap_err();
    assert!(err.to_string().contains("event key"), "{err}");
    assert!(inst.steps().await.unwrap().is_empty());
}

/// How many items `OnceItems` is given.
static ONCE_ITEMS: AtomicU32 = AtomicU32::new(3);

/// Charges each of its items at most once.
struct OnceItems;

impl Workflow for OnceItems {
    type Input = ();
    type Output = Vec<u32>;
    type State = ();
    const NAME: &'static str = "onceItems";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<Vec<u32>, BoxError> {
        let items: Vec<u32> = (0..ONCE_ITEMS.load(Ordering::SeqCst)).collect();
        let charged = ctx
            .map_with(
                "charge",
                StepOptions::at_most_once(),
                items,
                4,
                |i| async move { Ok::<_, BoxError>(i) },
            )
            .await?;
        Ok(charged)
    }
}

/// A fan-out of `at_most_once` items replayed with fewer items than began
/// pauses, though the last one only began (`charge[2]@started`): its side
/// effect may have happened. Before, only finished items counted, and the
/// instance completed without a word about it.
#[tokio::test]
async fn a_fan_out_item_that_only_began_counts_when_items_shrink() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = EngineBuilder::new()
        .shared_store(Arc::clone(&store))
        .register(OnceItems)
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let inst = OnceItems::start(&engine, ()).await.unwrap();
    // A first run, cut short after item 2 began.
    let now = store::now_millis();
    let claim = store::ClaimRequest {
        owner: "ghost".into(),
        workflows: vec![OnceItems::NAME.into()],
        now,
        due_by: now,
        lease_until: now + 60_000,
        limit: 1,
    };
    let ghost = store.claim(claim).await.unwrap().remove(0);
    for (key, output) in [
        ("charge[0]", "0"),
        ("charge[1]", "1"),
        ("charge[2]@started", "null"),
    ] {
        let row = store::StepRow {
            key: key.into(),
            output: Some(output.into()),
            error: None,
            state: None,
            attempts: 1,
            started_at: now,
            finished_at: now,
        };
        store.commit_step(&ghost.lease, row).await.unwrap();
    }
    store.release_owner("ghost", now).await.unwrap();
    ONCE_ITEMS.store(2, Ordering::SeqCst);
    let _worker = engine.start_worker();
    let why = common::paused_reason(&inst).await;
    assert!(
        why.contains("`charge` was run with more items than the 2 it is given now"),
        "{why}"
    );
}

/// The approval event, typed.
const APPROVAL: Event<Approval> = Event::new("approval");

/// Waits for [`APPROVAL`], typed.
struct ApproveTyped;

impl Workflow for ApproveTyped {
    type Input = ();
    type Output = String;
    type State = ();
    const NAME: &'static str = "approveTyped";

    async fn run(&self, ctx: Ctx, _: ()) -> Result<String, BoxError> {
        let answer = ctx.wait_for(APPROVAL, None).await?;
        Ok(answer.by)
    }
}

/// A typed event goes from `send`, and `send_once` (a redelivery changes
/// nothing), to `wait_for`, under the name the constant gives.
#[tokio::test]
async fn a_typed_event_reaches_its_typed_wait() {
    let engine = alone(ApproveTyped).build().await.unwrap();
    let _worker = engine.start_worker();
    let inst = ApproveTyped::start(&engine, ()).await.unwrap();
    let approval = Approval {
        approved: true,
        by: "grace".into(),
    };
    let first = inst
        .send_once(APPROVAL, "click-1", &approval)
        .await
        .unwrap();
    let again = inst
        .send_once(APPROVAL, "click-1", &approval)
        .await
        .unwrap();
    assert_eq!((first, again), (EventSent::Sent, EventSent::AlreadySent));
    assert_eq!(inst.result_timeout(LIMIT).await.unwrap(), "grace");
    let history = inst.history().await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.kind == "event_received" && e.step.as_deref() == Some("approval")),
        "{history:?}"
    );
    // And to an instance by id, untyped.
    let other = ApproveTyped::start(&engine, ()).await.unwrap();
    engine.send(other.id(), APPROVAL, &approval).await.unwrap();
    assert_eq!(other.result_timeout(LIMIT).await.unwrap(), "grace");
}
