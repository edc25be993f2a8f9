//! The `Engine`: registry of workflows, front door for starting and reading
//! instances, and owner of the workers that run them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ctx::RunShared;
use crate::data::DataMap;
use crate::error::Interrupt;
use crate::error::{Error, Result, StoreError};
use crate::history::HistoryEvent;
use crate::id::InstanceId;
use crate::instance::{
    EventSent, Instance, InstanceInfo, Page, Query, StartOptions, StepInfo, Tail, Timeout,
    Unreadable,
};
use crate::schedule::{CatchUp, Clock, Schedule, ScheduleInfo, SystemClock};
use crate::status::Status;
use crate::step::StepOptions;
use crate::store::{now_millis, Control, Created, InstanceRow, Millis, NewInstance, Store};
use crate::worker::Change;
use crate::worker::Worker;
use crate::workflow::{Definition, ErasedWorkflow, Registered, Workflow};
use chrono::{DateTime, Utc};

/// How hard a store works to keep a finished step. Reads from and
/// prints as `durable` or `relaxed` (serde, [`FromStr`](std::str::FromStr),
/// `Display`), for configuration files.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A step's result is on disk (fsync) before the workflow proceeds past
    /// it; a power loss never forgets a completed step. The default.
    #[default]
    Durable,
    /// Safe against process crashes, but a power loss may forget the last
    /// moments (SQLite: WAL with `synchronous=NORMAL`).
    Relaxed,
}

impl Durability {
    /// `"durable"` or `"relaxed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Durable => "durable",
            Durability::Relaxed => "relaxed",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "durable" => Ok(Durability::Durable),
            "relaxed" => Ok(Durability::Relaxed),
            other => Err(Error::Config(format!(
                "unknown durability `{other}` (expected `durable` or `relaxed`)"
            ))),
        }
    }
}

/// Opens a store from a database URL; how the facade turns
/// `database_url("sqlite://...")` into a store.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Opens the store at `url`, or the default store when `url` is `None`.
    async fn connect(&self, url: Option<&str>, durability: Durability) -> Result<Arc<dyn Store>>;
}

/// The error a [`Connector`] gives for a URL no store it was built with
/// opens. `known` lists the schemes it opens; `needs(feature)` says how to
/// get the store a `sqlite:` or `postgres:` URL wants (`"the `postgres`
/// feature of the `workflow` crate"`). A URL with a scheme is not repeated,
/// as it may carry a password.
pub fn unsupported_url(url: &str, known: &[&str], needs: impl Fn(&str) -> String) -> Error {
    let known = known.join(", ");
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    let feature = match scheme {
        "sqlite" => Some("sqlite"),
        "postgres" | "postgresql" => Some("postgres"),
        _ => None,
    };
    Error::Config(match feature {
        Some(feature) => format!(
            "`{scheme}:` database URLs need {} (this build knows: {known})",
            needs(feature)
        ),
        None if !url.contains(':') => format!(
            "database URL `{url}` has no scheme: for a SQLite file, write `sqlite://{url}` \
             (this build knows: {known})"
        ),
        None => format!("unsupported database URL scheme `{scheme}` (this build knows: {known})"),
    })
}

/// How many trees (an instance with its children) one transaction of
/// [`Engine::purge`] deletes at most.
pub const PURGE_BATCH: usize = 500;

/// Instances that ended more recently than this are never purged: a
/// handler of an instance cancelled or timed out a moment ago may still be
/// winding down, and a scheduler whose clock is a little behind may look
/// at a tick fired by another engine (up to the scheduler's 30 s refire
/// window) and must find its instance by its key, not fire it again.
/// Retention's shortest keep is the same minute, and [`Engine::purge`]
/// keeps them whatever cutoff it is given.
pub const PURGE_MARGIN: Duration = Duration::from_secs(60);

/// The longest event key accepted: every store indexes keys, and
/// PostgreSQL's B-tree refuses entries much over 2 KiB.
pub const MAX_EVENT_KEY_BYTES: usize = MAX_KEY_BYTES;

/// The longest step name, event name, dedup key, tag name and tag value
/// accepted, in bytes. Every store indexes them, and PostgreSQL's B-tree
/// refuses entries much over 2 KiB: a longer step name could never be
/// recorded, and its run would be retried for ever. `#[workflow]` checks
/// literal step names against it at compile time.
pub const MAX_KEY_BYTES: usize = workflow_rules::MAX_KEY_BYTES;

/// The longest error text recorded, in bytes: a step's failure and each
/// failed attempt, an instance's error, a `ctx.fail` reason. A longer one
/// (an error chain holding a whole response body) keeps its first 64 KiB
/// and says how much was cut; the live [`Error::Step`] is the text
/// recorded, so a replay sees the same. Uncut, one could outgrow the row
/// its store can write, and the step would run again and again.
pub const MAX_ERROR_BYTES: usize = 64 << 10;

/// The default of [`EngineBuilder::max_payload_bytes`]: 256 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 256 << 20;

/// The most [`EngineBuilder::max_payload_bytes`] may be set to: 300 MiB.
/// Both SQL stores refuse near 1 GB: SQLite a row (`SQLITE_MAX_LENGTH`),
/// which holds an instance's input, output and state together, and
/// PostgreSQL a field or a request's message. A write the store refuses
/// releases the run to be retried, running its step again each time; the
/// engine's own check must catch such a value first, so three values at
/// the limit must fit in one row.
pub const MAX_PAYLOAD_LIMIT: usize = 300 << 20;

/// How long a caller waits for an instance's end before it is warned that
/// nothing may end it (no worker has taken it, or it is paused).
const UNATTENDED_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
    pub step_options: StepOptions,
    pub suspend_after: Duration,
    pub max_interrupted_runs: Option<u32>,
    pub retention: Option<Duration>,
    pub max_payload: usize,
    /// Workflows that may run at most so many instances at once on each
    /// worker (`EngineBuilder::concurrency_of`).
    pub caps: HashMap<&'static str, usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 64,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            step_options: StepOptions::default(),
            suspend_after: Duration::from_millis(300),
            max_interrupted_runs: Some(20),
            retention: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            caps: HashMap::new(),
        }
    }
}

/// A schedule waiting for `build` to check it.
struct PendingSchedule {
    workflow: &'static str,
    expression: String,
    timezone: String,
    catch_up: CatchUp,
    input: Result<String>,
    timeout: Duration,
}

/// A registered schedule, checked.
pub(crate) struct Scheduled {
    pub workflow: &'static str,
    pub schedule: Schedule,
    pub catch_up: CatchUp,
    pub input: String,
    pub timeout: Duration,
}

/// Builds an [`Engine`]. With the facade crate, start from `Engine::builder()`.
#[must_use]
pub struct EngineBuilder {
    schedules: Vec<PendingSchedule>,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
    url: Option<String>,
    connector: Option<Arc<dyn Connector>>,
    /// `None` unless set: it applies to stores opened by URL only.
    durability: Option<Durability>,
    workflows: Vec<Arc<dyn ErasedWorkflow>>,
    config: Config,
    data: DataMap,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineBuilder {
    /// A builder with no store; give one with [`EngineBuilder::store`] or a
    /// [`Connector`] and a URL.
    pub fn new() -> Self {
        EngineBuilder {
            schedules: Vec::new(),
            clock: Arc::new(SystemClock),
            store: None,
            url: None,
            connector: None,
            durability: None,
            workflows: Vec::new(),
            config: Config::default(),
            data: DataMap::default(),
        }
    }

    /// Hands `value` to every handler of this engine: `ctx.data::<T>()`
    /// returns it (and [`Engine::data`] outside handlers). For what the
    /// steps need and the store should not hold: a database pool, an HTTP
    /// client, settings. One value per type; a second of the same type
    /// replaces the first. Share mutable things through their own
    /// synchronisation (`Arc<Mutex<..>>`, a pool).
    ///
    /// ```no_run
    /// # async fn f() -> workflow_core::Result<()> {
    /// #[derive(Clone)]
    /// struct Mailer { from: String }
    ///
    /// let engine = workflow_core::EngineBuilder::new()
    ///     .store(workflow_core::MemoryStore::new())
    ///     .data(Mailer { from: "shop@example.com".into() })
    ///     .build()
    ///     .await?;
    /// assert_eq!(engine.data::<Mailer>().unwrap().from, "shop@example.com");
    /// # Ok(()) }
    /// ```
    pub fn data<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.data.insert(value);
        self
    }

    /// Uses this store, instead of one opened by URL: with
    /// [`database_url`](Self::database_url) or
    /// [`durability`](Self::durability) too, [`build`](Self::build) fails
    /// (give a store its durability through its own options).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Uses this shared store (several engines in one process on one
    /// store); as [`store`](Self::store).
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the store at this URL when built (`sqlite://path.db`, `postgres://...`).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// How the store is opened from [`database_url`](Self::database_url),
    /// or from none. The facade's `Engine::builder()` sets its URL opener;
    /// this replaces it for every URL, so a connector that adds a scheme
    /// hands the others on to the facade's `UrlConnector`.
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// Durable (default) or relaxed commits, for stores opened by URL
    /// (with [`store`](Self::store), `build` fails: the store was opened
    /// with its own).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Registers a workflow so this engine's workers run it and
    /// `start_json` knows its input.
    ///
    /// A workflow with a `schedule` runs on it for as long as any engine
    /// that registered it has a worker running.
    pub fn register<W: Workflow>(mut self, workflow: W) -> Self {
        if let Some(expression) = W::SCHEDULE {
            let input = W::schedule_input().ok_or_else(|| {
                Error::Config(format!(
                    "workflow `{}` has a schedule but no schedule_input()",
                    W::NAME
                ))
            });
            self.schedules.push(PendingSchedule {
                workflow: W::NAME,
                expression: expression.to_owned(),
                timezone: W::TIMEZONE.to_owned(),
                catch_up: W::CATCH_UP,
                input: input.and_then(|i| json_input::<W>(&i)),
                timeout: W::TIMEOUT,
            });
        }
        self.workflows.push(Arc::new(Registered::new(workflow)));
        self
    }

    /// Registers a workflow on a schedule chosen at run time (from
    /// configuration, say), instead of or in place of its attribute's.
    /// `expression` and `timezone` are checked when the engine is built.
    /// After [`register`](Self::register) of the same workflow, it replaces
    /// that registration and its schedule.
    pub fn register_scheduled<W: Workflow>(
        mut self,
        workflow: W,
        expression: impl Into<String>,
        timezone: impl Into<String>,
        catch_up: CatchUp,
    ) -> Self
    where
        W::Input: Default,
    {
        self.schedules.retain(|s| s.workflow != W::NAME);
        self.workflows.retain(|w| w.name() != W::NAME);
        self.schedules.push(PendingSchedule {
            workflow: W::NAME,
            expression: expression.into(),
            timezone: timezone.into(),
            catch_up,
            input: json_input::<W>(&W::Input::default()),
            timeout: W::TIMEOUT,
        });
        self.workflows.push(Arc::new(Registered::new(workflow)));
        self
    }

    /// The clock workflows live by (default: the system clock): cron
    /// ticks, sleeps, event-wait timeouts, retry backoffs, deadlines,
    /// retention and the times history records. Tests pass a
    /// [`ManualClock`](crate::ManualClock) to move time forward at will
    /// (keep a clone to call `advance` on): a three-day sleep wakes at
    /// `clock.advance(Duration::from_secs(3 * 86_400))` once
    /// [`Instance::idle`](crate::Instance::idle) says it sleeps. With such a
    /// clock every wait suspends the instance, however short
    /// ([`suspend_after`](Self::suspend_after) is 0). Leases and
    /// heartbeats keep to the system clock, as they tell live workers from
    /// dead ones; engines that share a store should share one clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Handlers each worker runs at once (default 64). A slot is free again
    /// as soon as its handler returns or suspends, while the outcome is
    /// still being written. To start the next instance the moment a slot
    /// frees, a worker with a backlog holds up to a quarter as many
    /// instances claimed ahead (shown `InProgress`, leases renewed), once
    /// one of its handlers has ended (see
    /// [`max_interrupted_runs`](Self::max_interrupted_runs)); it hands
    /// them back to the store when it shuts down, and when one is still
    /// waiting at the next heartbeat (every slot busy with long
    /// handlers: an idle worker should run it now). At least 1; a huge value
    /// (`usize::MAX` for "no bound") is capped at what a tokio semaphore
    /// holds.
    pub fn concurrency(mut self, instances: usize) -> Self {
        self.config.concurrency = instances.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// Runs at most `instances` of workflow `W` at once on each worker of
    /// this engine (at least 1), within [`concurrency`](Self::concurrency):
    /// for a workflow that calls an API with a limit of its own, or a
    /// backfill that must leave room for the rest. The others take the
    /// free slots meanwhile; `W`'s instances wait their turn, due, in the
    /// store. The cap is per worker: a fleet of `n` workers runs up to
    /// `n × instances`. `W` must be registered with this builder
    /// ([`build`](Self::build) says so otherwise).
    ///
    /// ```no_run
    /// # use workflow_core::{Ctx, EngineBuilder, Workflow};
    /// # struct SendEmail;
    /// # impl Workflow for SendEmail {
    /// #     type Input = (); type Output = (); type State = ();
    /// #     const NAME: &'static str = "sendEmail";
    /// #     async fn run(&self, _: Ctx, _: ()) -> Result<(), workflow_core::BoxError> { Ok(()) }
    /// # }
    /// # async fn doc() -> workflow_core::Result<()> {
    /// let engine = EngineBuilder::new()
    ///     .register(SendEmail)
    ///     .concurrency_of::<SendEmail>(4) // the mail provider allows 4 connections
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn concurrency_of<W: Workflow>(mut self, instances: usize) -> Self {
        self.config.caps.insert(W::NAME, instances.max(1));
        self
    }

    /// How long a worker's claim on an instance lasts without a heartbeat
    /// (default 30 s; on PostgreSQL, whose heartbeats extend a lease only
    /// once a sixth of it went, at least five sixths of it after the last
    /// one). Another worker takes over an instance whose lease ran out; on
    /// one machine, instances of a dead process are taken over at once.
    /// At least 100 ms: a shorter lease is raised to it.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How often an idle worker looks for due work written by other
    /// processes (default 500 ms). Work started through this engine wakes
    /// its workers at once. At least 1 ms: a shorter interval is raised to it.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The most bytes of JSON a step's output, a state snapshot, a
    /// workflow's output, a workflow's input or an event's payload may take
    /// (default [`DEFAULT_MAX_PAYLOAD`], 256 MiB), checked before anything
    /// is written: a larger step output or state fails the instance at
    /// once (the step returns [`Error::PayloadTooLarge`], but the record
    /// cannot be written, so the instance ends `Failed` whatever the
    /// handler does with it), a larger output fails the instance, a larger
    /// input fails the start (of a child too), a larger payload fails the
    /// `send_event`, and a state still too large when the handler ends
    /// is not saved (a warning says so). At most [`MAX_PAYLOAD_LIMIT`]
    /// (300 MiB; `build` refuses more): both SQL stores refuse rows near
    /// 1 GB (an instance's holds its input, output and state), and a
    /// write refused by the store would release the run to be retried,
    /// running its step again each time; far smaller values
    /// already hold the store's single writer for a long while. Lower it
    /// to catch large data passed through the workflow early (Temporal
    /// allows 2 MB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }

    /// How long `shutdown` lets the steps running finish before stopping
    /// their handlers (default 10 s). Handlers start no new step
    /// meanwhile: each instance is handed back before its next step, due
    /// from its creation, for another worker to take ahead of the work
    /// that came due while it ran. Stopped ones resume on the next start.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Waits (sleeps, retry backoffs) longer than this suspend the instance
    /// (its handler is dropped, its worker slot freed, it replays when due);
    /// shorter ones sleep in memory, holding their slot. Default 300 ms:
    /// longer in-memory naps would let sleepers crowd out due work, and the
    /// default retry's first wait (272 ms) still stays in memory instead of
    /// costing a replay; its later waits (0.74 s, 2 s, 5 s) suspend. With
    /// a clock that jumps ([`ManualClock`](crate::ManualClock)) every wait
    /// suspends, whatever this says.
    pub fn suspend_after(mut self, threshold: Duration) -> Self {
        self.config.suspend_after = threshold;
        self
    }

    /// Pauses an instance instead of running it again once this many runs
    /// in a row were interrupted: the process running it died, or stalled
    /// past its lease, before the run recorded how it ended. Default 20
    /// (at least 1); `None` runs it again every time.
    ///
    /// A step that crashes the process (`std::process::abort`, a panic
    /// under `panic = "abort"`, a fault in C code, the OOM killer) cannot
    /// be caught and recorded as a failed attempt: without this limit its
    /// instance would take down every worker that claims it, with the
    /// other instances they run, until its deadline. Paused, it keeps its
    /// recorded steps and waits for [`Instance::resume`] after a fix, and
    /// its `paused` history event says why. A run that gets somewhere
    /// (records a step or a failed attempt, takes an event it waited
    /// for, or suspends) starts the count over, as does a resume. A crash counts
    /// against every instance its process held. A worker claims instances
    /// ahead of its free slots only once one of its handlers has ended, so
    /// a worker that a step kills before that held only running ones; but
    /// one beside the culprit that records nothing between crashes (inside
    /// one long step, or claimed ahead after another handler ended) can be
    /// paused with it: resume it.
    ///
    /// An instance past its deadline is run anyway, to end `TimedOut`.
    /// A paused instance's deadline does not count, so a parent waiting
    /// for a paused child (`run_child`) waits until the child is resumed
    /// or the parent's own deadline passes.
    pub fn max_interrupted_runs(mut self, limit: Option<u32>) -> Self {
        self.config.max_interrupted_runs = limit;
        self
    }

    /// Has this engine delete, now and then, while any of its workers
    /// runs, the instances of the
    /// workflows registered here that ended more than `keep` ago, with
    /// everything stored about them, as [`Engine::purge`] does: whole trees
    /// only (a root of a registered workflow, with its children of any
    /// workflow), once every member ended. Default: none; instances are
    /// kept until purged. At least a minute: a shorter `keep` counts as one
    /// (see below).
    ///
    /// It purges soon after a worker starts (within a minute, at a random
    /// moment so that processes started together do not purge together),
    /// then every tenth of `keep` (so at least 6 s apart), and at least
    /// once an hour. So an ended tree goes about `keep` after its
    /// last member ended, plus up to one such period, while a worker runs.
    /// One task per engine, however many workers it runs; every process
    /// with a worker purges, and any one of them is enough. A
    /// failed purge is logged and tried again a period later.
    ///
    /// What is purged is gone: its id is [`Error::NotFound`] and its dedup
    /// key free again, so a `start` with that key runs the workflow anew.
    /// The minute is why: a schedule's tick is found by its key when two
    /// engines fire it, and a caller reading a result a moment after the
    /// end finds it. Instances of workflows that no engine with a
    /// retention registers are left to [`Engine::purge`] or `workflow
    /// purge`.
    ///
    /// ```no_run
    /// # async fn f() -> workflow_core::Result<()> {
    /// # use std::time::Duration;
    /// // With the `workflow` facade: `Engine::builder()`, any database URL.
    /// let engine = workflow_core::EngineBuilder::new()
    ///     .store(workflow_core::MemoryStore::new())
    ///     .retention(Duration::from_secs(30 * 24 * 3600))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, keep: Duration) -> Self {
        self.config.retention = Some(keep.max(crate::retention::MIN_KEEP));
        self
    }

    /// Retry policy of `ctx.step` (default: 5 attempts, see [`StepOptions`]).
    /// A workflow's `retries`, `backoff(..)` and `jitter` attributes replace
    /// their parts of it for its own steps (a `backoff` whole, its settings
    /// left out taken from [`Backoff::DEFAULT`](crate::Backoff::DEFAULT));
    /// `ctx.step_with` replaces it for one step.
    pub fn step_options(mut self, options: StepOptions) -> Self {
        self.config.step_options = options;
        self
    }

    /// Opens the store and checks the registrations.
    ///
    /// # Errors
    ///
    /// [`Error::Config`], its message saying what to change, for a
    /// configuration that cannot work: `max_payload_bytes` over
    /// [`MAX_PAYLOAD_LIMIT`]; a workflow registered twice, or whose
    /// `TIMEOUT` is under 1 ms; a schedule whose expression, time zone or
    /// input does not parse (all of them listed in one message); both
    /// `.store(..)` and `.database_url(..)`, or `.durability(..)` with
    /// `.store(..)`; no store and no connector; a URL no connector opens.
    /// [`Error::Store`] if the store cannot be opened or cannot record
    /// the registered workflows' definitions.
    pub async fn build(self) -> Result<Engine> {
        if self.config.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(Error::Config(format!(
                "max_payload_bytes is {} bytes, more than MAX_PAYLOAD_LIMIT ({MAX_PAYLOAD_LIMIT}): \
                 the stores refuse values near 1 GB, and a step whose record they refuse \
                 would run again on every retry",
                self.config.max_payload
            )));
        }
        let mut workflows: HashMap<&'static str, Arc<dyn ErasedWorkflow>> = HashMap::new();
        for workflow in self.workflows {
            let name = workflow.name();
            // The macro refuses it; a hand-written impl is checked here.
            if workflow.timeout() < Duration::from_millis(1) {
                return Err(Error::Config(format!(
                    "workflow `{name}` has a TIMEOUT under 1ms: its instances would time out \
                     before they ran"
                )));
            }
            if workflows.insert(name, workflow).is_some() {
                return Err(Error::Config(format!(
                    "workflow `{name}` is registered twice"
                )));
            }
        }
        let mut uncapped: Vec<&str> = self
            .config
            .caps
            .keys()
            .filter(|name| !workflows.contains_key(*name))
            .copied()
            .collect();
        if !uncapped.is_empty() {
            uncapped.sort_unstable();
            return Err(Error::Config(format!(
                "concurrency_of names {} not registered with this builder: register it, or \
                 leave its cap to the engines that run it",
                uncapped
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut scheduled = Vec::new();
        let mut problems = Vec::new();
        for pending in self.schedules {
            let parsed = Schedule::parse(&pending.expression, &pending.timezone)
                .and_then(|schedule| Ok((schedule, pending.input?)));
            match parsed {
                Ok((schedule, input)) => scheduled.push(Scheduled {
                    workflow: pending.workflow,
                    schedule,
                    catch_up: pending.catch_up,
                    input,
                    timeout: pending.timeout,
                }),
                Err(err) => {
                    // Reported inside the builder's own configuration error.
                    let why = match err {
                        Error::Config(why) => why,
                        other => other.to_string(),
                    };
                    problems.push(format!("schedule of `{}`: {why}", pending.workflow));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let store = match (self.store, self.connector) {
            // Either would be silently ignored: refuse what cannot apply.
            (Some(_), _) if self.url.is_some() => {
                return Err(Error::Config(
                    "both `.store(..)` and `.database_url(..)` given: use one".to_owned(),
                ))
            }
            (Some(_), _) if self.durability.is_some() => {
                return Err(Error::Config(
                    "`.durability(..)` applies to stores opened by `.database_url(..)`; \
                     a store given to `.store(..)` keeps the durability it was opened with \
                     (set it in its options)"
                        .to_owned(),
                ))
            }
            (Some(store), _) => store,
            (None, Some(connector)) => {
                connector
                    .connect(self.url.as_deref(), self.durability.unwrap_or_default())
                    .await?
            }
            (None, None) => {
                return Err(Error::Config(match self.url {
                    Some(url) => format!(
                        "cannot open `{}`: no connector; use `workflow::Engine::builder()` from the facade crate, or `.store(..)`",
                        redact_password(&url)
                    ),
                    None => "no store: call `.store(..)`, or build with `workflow::Engine::builder()` from the facade crate, which opens `.database_url(..)` (./workflows.db if none)".to_owned(),
                }))
            }
        };
        if !workflows.is_empty() {
            // What the schedules are is for the engines that run them to
            // say, when their workers start (`record_schedules`): an
            // engine that only starts instances keeps what is recorded.
            // A store that cannot say fails the build, as one that cannot
            // record does: recording this engine's schedules blindly could
            // write an API server's over the workers'.
            let mut definitions = definitions_in_force(&workflows, &scheduled);
            let recorded = store.definitions().await?;
            keep_recorded_schedules(&mut definitions, &recorded);
            store.put_definitions(&definitions, now_millis()).await?;
        }
        tracing::debug!(workflows = workflows.len(), "engine built");
        let mut config = self.config;
        if self.clock.changes().is_some() {
            // On a clock moved by hand every wait is in the store, where a
            // test sees it (`Instance::idle`) before it moves the clock: a
            // wait slept in memory would look like a running handler.
            config.suspend_after = Duration::ZERO;
        }
        Ok(Engine {
            inner: Arc::new(EngineInner {
                store,
                workflows,
                config,
                wake: Notify::new(),
                finished: FinishWaiters::default(),
                shutdown: CancellationToken::new(),
                running: std::sync::Mutex::new(HashMap::new()),
                claimed_ahead: std::sync::Mutex::new(Vec::new()),
                recorded_checks: RecordedChecks::default(),
                controls: Default::default(),
                health: Default::default(),
                cancels_in_flight: CancelsInFlight::default(),
                recorded: std::sync::Mutex::new(Default::default()),
                retention: Default::default(),
                scheduled,
                clock: self.clock,
                data: self.data,
            }),
        })
    }
}

/// Records the schedules this engine runs, as its worker's scheduler
/// starts (before its first look): a schedule whose expression or time
/// zone differs from the recorded one, or that was not recorded, has its
/// mark restarted (see [`restart_changed_schedules`]), and a workflow this
/// engine runs without a schedule is recorded without one (its schedule
/// was removed).
///
/// A store that fails leaves the records as they were, and the error is
/// for the caller to try again: recorded as changed without its mark
/// restarted, a schedule would go on from its old mark under the new
/// expression, and `CatchUp::All` start every tick of it since.
pub(crate) async fn record_schedules(engine: &Engine) -> std::result::Result<(), StoreError> {
    let inner = &engine.inner;
    if inner.workflows.is_empty() {
        return Ok(());
    }
    let store = inner.store.as_ref();
    let definitions = definitions_in_force(&inner.workflows, &inner.scheduled);
    let recorded = store.definitions().await?;
    let changed = |def: &Definition| {
        recorded
            .iter()
            .find(|old| old.name == def.name)
            .is_none_or(|old| {
                (&old.schedule, &old.timezone, old.catch_up)
                    != (&def.schedule, &def.timezone, def.catch_up)
            })
    };
    if !definitions.iter().any(changed) {
        return Ok(());
    }
    let now = inner.clock.now().timestamp_millis();
    restart_changed_schedules(store, &definitions, &recorded, now).await?;
    store.put_definitions(&definitions, now_millis()).await?;
    // Said once the record is made. Workers of one workflow with and
    // without its schedule (a web tier that registers it only to start
    // it, but runs a worker) undo each other's records: each start of a
    // scheduled one then counts the schedule from now, and catches up on
    // nothing missed while none ran.
    for def in definitions.iter().filter(|def| def.schedule.is_none()) {
        if let Some(was) = recorded
            .iter()
            .find(|old| old.name == def.name)
            .and_then(|old| old.schedule.as_deref())
        {
            tracing::warn!(
                workflow = %def.name,
                was,
                "this worker runs the workflow without a schedule: recorded as removed. Workers that \
                 still run it on one go on firing it, and record it again as they start, counting it \
                 from then; give every worker of the workflow the same schedule, or run it on a \
                 worker of its own"
            );
        }
    }
    Ok(())
}

/// Moves the mark of every schedule whose expression or time zone differs
/// from the store's recorded definition to `now`, as for a schedule seen
/// for the first time: the ticks of the new expression between the old
/// mark and now were never due, and `CatchUp::All` would start them all
/// (a month of them, after a month with the schedule switched off). The
/// first store error ends it, returned. Workers of two
/// versions started in turn (a rolling deploy, a rollback) restart it each time,
/// which skips nothing an engine was running for: a running engine goes on
/// from its own last look. The expressions are compared as text, so one
/// merely reworded restarts too.
async fn restart_changed_schedules(
    store: &dyn Store,
    definitions: &[Definition],
    recorded: &[Definition],
    now: Millis,
) -> std::result::Result<(), StoreError> {
    for new in definitions.iter().filter(|d| d.schedule.is_some()) {
        let Some(old) = recorded.iter().find(|old| old.name == new.name) else {
            continue;
        };
        if (&old.schedule, &old.timezone) == (&new.schedule, &new.timezone) {
            continue;
        }
        if store.schedule_mark(&new.name).await?.is_some() {
            store.advance_schedule(&new.name, now, None).await?;
        }
        tracing::info!(
            workflow = %new.name,
            from = ?old.schedule,
            to = ?new.schedule,
            timezone = %new.timezone,
            "schedule changed: it counts from now"
        );
    }
    Ok(())
}

/// Keeps the recorded schedule (or its absence) of every workflow already
/// recorded: an engine that only starts instances (an API server) may
/// register a workflow that its workers run on a schedule chosen at run
/// time, or none. Recording its own would show the wrong one in the
/// console, and the next worker would take the recorded schedule for a
/// changed one and restart it, skipping the ticks missed while no worker
/// ran. A worker records the schedules in force when it starts.
fn keep_recorded_schedules(definitions: &mut [Definition], recorded: &[Definition]) {
    for def in definitions.iter_mut() {
        if let Some(old) = recorded.iter().find(|old| old.name == def.name) {
            def.schedule.clone_from(&old.schedule);
            def.timezone.clone_from(&old.timezone);
            def.catch_up = old.catch_up;
        }
    }
}

/// The definitions of `workflows`, by name, each with the schedule in
/// force: [`EngineBuilder::register_scheduled`] may have chosen one at run
/// time instead of the attribute's, or none.
fn definitions_in_force(
    workflows: &HashMap<&'static str, Arc<dyn ErasedWorkflow>>,
    scheduled: &[Scheduled],
) -> Vec<Definition> {
    let mut definitions: Vec<Definition> = workflows.values().map(|w| w.definition()).collect();
    for def in &mut definitions {
        let scheduled = scheduled.iter().find(|s| s.workflow == def.name);
        def.schedule = scheduled.map(|s| s.schedule.expression().to_owned());
        if let Some(s) = scheduled {
            def.timezone = s.schedule.timezone().to_owned();
            def.catch_up = s.catch_up;
        }
    }
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    definitions
}

/// Runs workflows. Cheap to clone; clones share everything.
///
/// Build one with `Engine::builder()`, which the `workflow` facade adds
/// (trait `workflow::EngineExt`, in `workflow::prelude`) so that database
/// URLs reach the stores compiled in; [`EngineBuilder`] is the same
/// builder without them.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub store: Arc<dyn Store>,
    pub workflows: HashMap<&'static str, Arc<dyn ErasedWorkflow>>,
    pub config: Config,
    /// New work may be runnable: wakes one idle worker.
    pub wake: Notify,
    /// Callers waiting for instances to reach a terminal status.
    pub finished: FinishWaiters,
    pub shutdown: CancellationToken,
    /// Handlers running in this process, for control operations to reach at once.
    pub running: std::sync::Mutex<HashMap<InstanceId, Arc<RunShared>>>,
    /// Each worker's instances claimed ahead, for the same.
    pub claimed_ahead: std::sync::Mutex<Vec<std::sync::Weak<crate::worker::ClaimedAhead>>>,
    /// Input checks compiled from recorded schemas (workflows another
    /// process registers), by name, with the schema compiled: a start by
    /// name compiles one once, not at every call.
    pub recorded_checks: RecordedChecks,
    /// Instances cancelled, paused, resumed or given a new deadline
    /// through this engine lately, for claims that were in flight
    /// meanwhile (their answers reach no queue yet).
    pub controls: crate::worker::ControlLog,
    /// What [`Engine::health`] reports: the workers' count and outages.
    pub health: crate::health::Board,
    /// Cancels this engine is writing now: see [`CancelsInFlight`].
    pub cancels_in_flight: CancelsInFlight,
    /// Checked schedules of registered workflows.
    pub scheduled: Vec<Scheduled>,
    pub clock: Arc<dyn Clock>,
    /// Workflows not registered here found recorded in the store: a client
    /// engine reads the definitions once per name, not once per start.
    pub recorded: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The retention task, while any worker of this engine runs.
    pub retention: std::sync::Mutex<crate::retention::Retainer>,
    /// What [`EngineBuilder::data`] gave, for handlers.
    pub data: DataMap,
}

impl EngineInner {
    /// Workflow time: the engine's [`Clock`] in epoch milliseconds. What
    /// workflows wait for and what history records; leases keep to
    /// [`now_millis`].
    pub(crate) fn now(&self) -> Millis {
        self.clock.now().timestamp_millis()
    }

    /// Waits for the engine's clock to read `at`: on a clock that moves
    /// with real time, sleeps out the gap once (a timer may end a moment
    /// early, or late if the wall clock steps); on one that jumps
    /// ([`Clock::changes`]), returns only once it reads `at` or later.
    pub(crate) async fn sleep_until(&self, at: Millis) {
        let mut changes = self.clock.changes();
        if changes.is_none() {
            let left = at.saturating_sub(self.now()).max(0);
            return tokio::time::sleep(Duration::from_millis(left as u64)).await;
        }
        // Subscribed before the time is read: a jump after the read is a
        // change still to see.
        while self.now() < at {
            crate::schedule::clock_jumped(&mut changes).await;
        }
    }

    pub(crate) fn local_run(&self, id: &InstanceId) -> Option<Arc<RunShared>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// The workflows and settings; the URL shows without its password.
impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.workflows.iter().map(|w| w.name()).collect();
        f.debug_struct("EngineBuilder")
            .field("workflows", &names)
            .field("store", &self.store.as_ref().map(|_| ".."))
            .field("database_url", &self.url.as_deref().map(redact_password))
            .field("durability", &self.durability)
            .field("concurrency", &self.config.concurrency)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`: the user information's,
/// and a `password=` or `sslpassword=` query parameter's.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // scheme://user:password@host/..?query: the user information ends at
    // the last `@` before the query, or, if there is none, at the last `@`
    // with no `=` before it (a password holding an unescaped `?`); an `@`
    // in the query (`user=me@server`) ends nothing.
    let at = match rest.find('?') {
        Some(query) => rest[..query]
            .rfind('@')
            .or_else(|| rest.rfind('@').filter(|&at| !rest[..at].contains('='))),
        None => rest.rfind('@'),
    };
    let shown = match at.map(|at| rest.split_at(at)) {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    };
    // And the password parameters of the query.
    match shown.split_once('?') {
        None => shown,
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("password")
                            || name.eq_ignore_ascii_case("sslpassword") =>
                    {
                        format!("{name}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.inner.workflows.keys().collect();
        names.sort();
        f.debug_struct("Engine").field("workflows", &names).finish()
    }
}

impl Engine {
    /// The store behind this engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The value of type `T` given to [`EngineBuilder::data`], if any.
    pub fn data<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.data.get()
    }

    /// The registered workflows, by name, each with the schedule in force
    /// (the one [`EngineBuilder::register_scheduled`] chose, if it did).
    pub fn workflows(&self) -> Vec<Definition> {
        definitions_in_force(&self.inner.workflows, &self.inner.scheduled)
    }

    /// Starts a worker on the tokio runtime: it claims runnable instances of
    /// the registered workflows and runs up to `concurrency` at once. Several
    /// workers, in one process or many, may share a store.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does: call it from async
    /// code (`#[tokio::main]`) or inside `Runtime::enter`.
    pub fn start_worker(&self) -> Worker {
        Worker::spawn(self.clone())
    }

    /// Runs a worker until [`Engine::shutdown`] is called (or its store
    /// becomes unusable), then waits for it to hand its instances back,
    /// and says how it stopped, as [`Worker::shutdown`] does
    /// ([`Stopped`](crate::Stopped)). It fails
    /// when the worker stopped by itself because the store became unusable
    /// ([`StoreError::Unusable`]: SQLite after a failed fsync): a `main`
    /// that returns the error exits non-zero, for its supervisor (systemd,
    /// Kubernetes) to start it again, and the fresh open recovers.
    ///
    /// Dropping the future before it ends (a `select!` that took another
    /// branch) stops the worker too, as [`Worker::shutdown`] does, without
    /// waiting for it: it must not go on claiming work after the call that
    /// ran it is gone.
    pub async fn run(&self) -> Result<crate::worker::Stopped> {
        self.run_until(std::future::pending()).await
    }

    /// [`run`](Self::run) until `signal` completes too, as axum's
    /// `with_graceful_shutdown` does: the worker stops claiming, lets the
    /// steps running finish (the grace period) and hands the instances
    /// back before their next step. A service's `main` ends with it:
    ///
    /// ```no_run
    /// # async fn doc(engine: workflow_core::Engine) -> workflow_core::Result<()> {
    /// // Ctrl-C or SIGTERM.
    /// engine.run_until(workflow_core::shutdown_signal()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Only this worker stops: other workers of the engine, and instances
    /// started, go on. Dropping the future stops the worker without
    /// waiting, as for `run`.
    pub async fn run_until(
        &self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<crate::worker::Stopped> {
        let worker = self.start_worker();
        let stop = worker.stop_token();
        let stop_on_drop = stop.clone().drop_guard();
        tokio::select! {
            () = signal => {}
            () = self.inner.shutdown.cancelled() => {}
            // The worker stopped by itself: its store became unusable.
            () = stop.cancelled() => {}
        }
        let unusable = worker.unusable();
        let stopped = worker.shutdown().await;
        stop_on_drop.disarm();
        match unusable {
            Some(why) => {
                if stopped == crate::worker::Stopped::HandlersLeftRunning {
                    // Said here: the error returned in its place cannot.
                    tracing::error!("a handler blocking its thread is still running: the process cannot end until it returns; call std::process::exit to end it now");
                }
                Err(Error::Store(StoreError::Unusable(why)))
            }
            None => Ok(stopped),
        }
    }

    /// Stops every worker of this engine: no new claims, the steps running
    /// get the grace period to finish, and each instance is handed back to
    /// the store before its next step (or stopped at the grace's end), to
    /// resume at once on another worker or on the next start.
    ///
    /// It returns at once: await [`Worker::shutdown`] (or the
    /// [`run`](Self::run) it ends) to know the workers are done. It is for
    /// good: workers this engine (or a clone) starts afterwards stop at
    /// once; build a new engine to run again. Starting, inspecting and
    /// steering instances still work.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    pub(crate) async fn start<W: Workflow>(
        &self,
        input: W::Input,
        options: StartOptions,
    ) -> Result<Instance<W>> {
        let (id, _) = self.create::<W>(input, options, None).await?;
        Ok(Instance::new(self.clone(), id))
    }

    pub(crate) async fn create<W: Workflow>(
        &self,
        input: W::Input,
        options: StartOptions,
        dedup: Option<Vec<Status>>,
    ) -> Result<(InstanceId, bool)> {
        let input = encode_input::<W>(&input, "workflow", self.inner.config.max_payload)?;
        self.check_runnable(W::NAME).await?;
        self.create_raw(W::NAME, W::TIMEOUT, input, options, dedup)
            .await
    }

    /// Typed starts and child workflows, like [`Engine::start_json`], need
    /// a workflow that some engine runs: registered here, or recorded in the store by an engine
    /// that registers it (a client engine starting work for workers
    /// elsewhere). Otherwise a forgotten `.register(W)` would leave the
    /// instance `Pending`, its deadline unenforced, and `result()` waiting
    /// for ever.
    pub(crate) async fn check_runnable(&self, workflow: &str) -> Result<()> {
        let recorded = || {
            self.inner
                .recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if self.inner.workflows.contains_key(workflow) || recorded().contains(workflow) {
            return Ok(());
        }
        let definitions = self.inner.store.definitions().await?;
        if !definitions.iter().any(|d| d.name == workflow) {
            return Err(Error::UnknownWorkflow(workflow.to_owned()));
        }
        recorded().insert(workflow.to_owned());
        Ok(())
    }

    pub(crate) async fn start_many<W: Workflow>(
        &self,
        inputs: Vec<W::Input>,
        options: StartOptions,
    ) -> Result<Vec<Instance<W>>> {
        self.check_runnable(W::NAME).await?;
        options.check()?;
        let now = self.inner.now();
        let (run_at, deadline_at) = options.due(now, W::TIMEOUT);
        let mut new = Vec::with_capacity(inputs.len());
        for (n, input) in inputs.iter().enumerate() {
            // Which one of the batch: its position in `inputs`.
            let what = format!("workflow (item {n} of start_many)");
            let input = encode_input::<W>(input, &what, self.inner.config.max_payload)?;
            new.push(NewInstance {
                id: InstanceId::at(now),
                workflow: W::NAME.to_owned(),
                input,
                tags: options.tags.clone(),
                key: options.key.clone(),
                created_at: now,
                run_at,
                deadline_at: Some(deadline_at),
                parent: None,
            });
        }
        let rows = self.inner.store.create_many(new).await?;
        self.inner.wake.notify_one();
        Ok(rows
            .into_iter()
            .map(|row| Instance::new(self.clone(), row.id))
            .collect())
    }

    async fn create_raw(
        &self,
        workflow: &str,
        default_timeout: Duration,
        input: String,
        options: StartOptions,
        dedup: Option<Vec<Status>>,
    ) -> Result<(InstanceId, bool)> {
        options.check()?;
        let now = self.inner.now();
        let (run_at, deadline_at) = options.due(now, default_timeout);
        let new = NewInstance {
            id: InstanceId::at(now),
            workflow: workflow.to_owned(),
            input,
            tags: options.tags,
            key: options.key,
            created_at: now,
            run_at,
            deadline_at: Some(deadline_at),
            parent: None,
        };
        let created = self.inner.store.create(new, dedup.as_deref()).await?;
        Ok(match created {
            Created::New(row) => {
                tracing::debug!(workflow, id = %row.id, "instance created");
                self.inner.wake.notify_one();
                (row.id, true)
            }
            Created::Existing(row) => (row.id, false),
        })
    }

    /// Starts a workflow by name from JSON input, which is checked against
    /// the workflow's input schema (and type, when registered here) first;
    /// the error lists every violation with its JSON path. A workflow not
    /// registered with this engine is started from the definition another
    /// engine recorded in the store, for a worker elsewhere to run.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidInput`]: the input breaks the schema (or the
    ///   type refuses it), every violation listed with its path and rule;
    /// - [`Error::UnknownWorkflow`]: no engine on this store registers it;
    /// - [`Error::InvalidStartOption`] or [`Error::NameTooLong`]: an
    ///   option that cannot apply (a zero timeout, a key too long);
    /// - [`Error::PayloadTooLarge`]: the input is over `max_payload_bytes`;
    /// - [`Error::Store`]: the store failed; the instance may or may not
    ///   exist, so retry with a key ([`get_or_start_json`](Self::get_or_start_json)).
    pub async fn start_json(
        &self,
        workflow: &str,
        input: serde_json::Value,
        options: StartOptions,
    ) -> Result<InstanceId> {
        let (id, _) = self.create_json(workflow, input, options, None).await?;
        Ok(id)
    }

    /// [`Engine::start_json`] at most once per key: returns the instance of
    /// `workflow` with `key` that is still active (`Pending`, `InProgress`,
    /// `Listening` or `Paused`), or starts one, atomically, as
    /// [`Workflow::get_or_create`](crate::Workflow::get_or_create) does;
    /// and whether it started one. For callers that retry a start whose
    /// answer they did not get (an HTTP client after a timeout): while the
    /// first start's instance is active, the retry finds it instead of
    /// making a second (once it ended, the key starts another).
    pub async fn get_or_start_json(
        &self,
        workflow: &str,
        key: impl Into<String>,
        input: serde_json::Value,
        options: StartOptions,
    ) -> Result<(InstanceId, bool)> {
        let options = options.key(key);
        self.create_json(workflow, input, options, Some(Status::ACTIVE.to_vec()))
            .await
    }

    pub(crate) async fn create_json(
        &self,
        workflow: &str,
        input: serde_json::Value,
        options: StartOptions,
        dedup: Option<Vec<Status>>,
    ) -> Result<(InstanceId, bool)> {
        let (input, timeout) = self.checked_input(workflow, &input).await?;
        self.create_raw(workflow, timeout, input, options, dedup)
            .await
    }

    /// Checks JSON input for workflow `name` (against its type when it is
    /// registered here, else against the input schema an engine recorded)
    /// and its size; returns the input to store and the workflow's default
    /// timeout. Every start from JSON goes through here.
    pub(crate) async fn checked_input(
        &self,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<(String, Duration)> {
        let (json, timeout) = match self.inner.workflows.get(name) {
            Some(def) => (def.check_input(input)?, def.timeout()),
            None => {
                let recorded = self
                    .inner
                    .store
                    .definitions()
                    .await?
                    .into_iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| Error::UnknownWorkflow(name.to_owned()))?;
                let _: serde_json::Value = self
                    .inner
                    .recorded_checks
                    .get(name, &recorded.input_schema)
                    .check(input)
                    .map_err(|violations| Error::InvalidInput {
                        workflow: name.to_owned(),
                        violations,
                    })?;
                (
                    input.to_string(),
                    Duration::from_millis(recorded.timeout_ms),
                )
            }
        };
        crate::error::within(&json, self.inner.config.max_payload, || {
            format!("input of workflow `{name}`")
        })?;
        Ok((json, timeout))
    }

    /// The definitions every engine on this store recorded (names, schemas,
    /// schedules, timeouts), for tools that do not have the workflow code.
    pub async fn definitions(&self) -> Result<Vec<Definition>> {
        Ok(self.inner.store.definitions().await?)
    }

    pub(crate) async fn row(&self, id: &InstanceId) -> Result<InstanceRow> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Cancels an instance of any workflow; see [`Instance::cancel`].
    pub async fn cancel(&self, id: &InstanceId) -> Result<()> {
        // The runs here that the cancel ends begin no step attempt until
        // it is answered: the store says `Cancelled` from its commit, and
        // a side effect begun in the fsync's wait would have its record
        // refused. Answered on every path out, dropped futures included.
        let _held = self
            .inner
            .cancels_in_flight
            .hold(self.with_local_descendants(id));
        let control = self.inner.store.cancel(id, self.inner.now()).await?;
        self.check_control(id, control)?;
        tracing::info!(%id, "instance cancelled");
        self.stop_local_descendants(id);
        // It ended, wherever it ran (or waited), and its descendants with it.
        self.inner.finished.ended(id);
        self.inner.finished.ended_all();
        // A parent that waited for it is due now: an idle worker here
        // takes it at once, not at the end of its nap.
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The store cancelled `id`'s unfinished descendants with it (a cancel,
    /// or a timeout): those this process runs or holds claimed ahead hear
    /// of it now, as `id` does, instead of at their next heartbeat.
    pub(crate) fn stop_local_descendants(&self, id: &InstanceId) {
        // The root before anything is searched: a claim answered meanwhile
        // reads the log as it queues what it claimed, drops the root's
        // children with it (see `ControlLog`), and what it queued before is
        // found below.
        self.inner
            .controls
            .note(std::slice::from_ref(id), Change::Cancelled);
        let cancelled = self.with_local_descendants(id);
        self.inner.controls.note(&cancelled[1..], Change::Cancelled);
        for cancelled in cancelled {
            crate::worker::forget_claimed_ahead(&self.inner, &cancelled);
            if let Some(run) = self.inner.local_run(&cancelled) {
                run.interrupt(Interrupt::Cancelled, crate::ctx::Settlement::Plain);
            }
        }
    }

    /// A cancel another process made (see
    /// [`Store::cancellations`](crate::Store::cancellations)): stops `id`
    /// and its descendants if they run (or wait, claimed ahead) here, and
    /// wakes callers waiting for `id` here. Noted whatever runs here: a
    /// claim of `id` in flight must not start it.
    pub(crate) fn heard_cancel(&self, id: &InstanceId) {
        self.stop_local_descendants(id);
        self.inner.finished.ended(id);
    }

    /// `id` and the instances running or claimed ahead in this process that
    /// descend from it through parents this process knows (a grandchild
    /// under a parent running elsewhere is left to its heartbeat).
    fn with_local_descendants(&self, id: &InstanceId) -> Vec<InstanceId> {
        // Those claimed ahead first: one that starts meanwhile is listed as
        // running before it leaves the queue, so it is in one list or both.
        let mut children = crate::worker::children_claimed_ahead(&self.inner);
        {
            let running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            children.extend(
                running
                    .values()
                    .filter_map(|run| Some((run.id.clone(), run.parent.clone()?))),
            );
        }
        let mut found = vec![id.clone()];
        let mut next = 0;
        while let Some(parent) = found.get(next).cloned() {
            next += 1;
            for (child, _) in children.iter().filter(|(_, p)| *p == parent) {
                if !found.contains(child) {
                    found.push(child.clone());
                }
            }
        }
        found
    }

    /// Moves the deadline of an instance of any workflow; see [`Instance::set_timeout`].
    pub async fn set_timeout(&self, id: &InstanceId, timeout: Timeout) -> Result<()> {
        self.move_deadline(id, timeout.deadline(self.inner.now()))
            .await
    }

    /// [`Engine::set_timeout`] to `deadline` (ms since the epoch).
    pub(crate) async fn move_deadline(&self, id: &InstanceId, deadline: Millis) -> Result<()> {
        let now = self.inner.now();
        let control = self.inner.store.set_deadline(id, deadline, now).await?;
        self.check_control(id, control)?;
        crate::worker::update_claimed_ahead(&self.inner, id, Change::Deadline(deadline));
        if let Some(run) = self.inner.local_run(id) {
            run.move_deadline(Some(deadline));
        }
        // A waiting instance is due at its deadline at the latest: an idle
        // worker napping until a later time looks again.
        self.inner.wake.notify_one();
        Ok(())
    }

    /// How this engine's workers in this process are doing, for a health
    /// endpoint: how many run, which of their store calls keep failing
    /// (claims, lease renewals, schedules), and whether the store became
    /// unusable. It makes no store call (it reads what the workers met
    /// last: each claims at least every `poll_interval`), so a probe may
    /// ask as often as it likes.
    ///
    /// ```no_run
    /// # async fn doc(engine: workflow_core::Engine) {
    /// // In an axum handler: 503 while work cannot go on here.
    /// let health = engine.health();
    /// let status = if health.is_healthy() { 200 } else { 503 };
    /// # }
    /// ```
    pub fn health(&self) -> crate::Health {
        // Every loop retries a failing call within 5 s, or its poll.
        let stale = self
            .inner
            .config
            .poll_interval
            .saturating_mul(3)
            .max(Duration::from_secs(15));
        self.inner.health.health(stale)
    }

    /// Instances whose handlers this engine's workers are running now, in this process.
    pub fn running_here(&self) -> Vec<InstanceId> {
        let running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        running.keys().cloned().collect()
    }

    /// [`send`](Self::send) at most once per `key`; see
    /// [`Instance::send_event_once`].
    pub async fn send_once<T: Serialize>(
        &self,
        id: &InstanceId,
        event: crate::Event<T>,
        key: &str,
        payload: &T,
    ) -> Result<EventSent> {
        self.send_event_once(id, event.name(), key, payload).await
    }

    /// Sends a typed [`Event`](crate::Event) to an instance of any
    /// workflow, by id; see [`Instance::send`].
    pub async fn send<T: Serialize>(
        &self,
        id: &InstanceId,
        event: crate::Event<T>,
        payload: &T,
    ) -> Result<()> {
        self.send_event(id, event.name(), payload).await
    }

    /// Sends an event to an instance of any workflow; see [`Instance::send_event`].
    pub async fn send_event(
        &self,
        id: &InstanceId,
        name: &str,
        payload: impl Serialize,
    ) -> Result<()> {
        let payload = event_payload(name, payload)?;
        self.deliver(id, name, &payload, None).await.map(|_| ())
    }

    /// Sends an event to an instance of any workflow at most once per
    /// `key`; see [`Instance::send_event_once`].
    pub async fn send_event_once(
        &self,
        id: &InstanceId,
        name: &str,
        key: &str,
        payload: impl Serialize,
    ) -> Result<EventSent> {
        let payload = event_payload(name, payload)?;
        if key.is_empty() || crate::error::unusable_key(key).is_some() {
            return Err(Error::InvalidEventKey {
                key: key.to_owned(),
            });
        }
        self.deliver(id, name, &payload, Some(key)).await
    }

    async fn deliver(
        &self,
        id: &InstanceId,
        name: &str,
        payload: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<EventSent> {
        // A wait names its event as it names a step: a name no wait can
        // have would sit in the inbox for ever.
        crate::ctx::check_step_name(name).map_err(|reserved| Error::InvalidEventName {
            name: name.to_owned(),
            reserved,
        })?;
        crate::error::check_length("event name", name)?;
        let payload = payload.to_string();
        crate::error::within(&payload, self.inner.config.max_payload, || {
            format!("payload of event `{name}` to instance {id}")
        })?;
        let control = self
            .inner
            .store
            .send_event(id, name, &payload, key, self.inner.now())
            .await?;
        if control == Control::Duplicate {
            tracing::debug!(%id, event = name, key, "event already sent under this key");
            return Ok(EventSent::AlreadySent);
        }
        self.check_control(id, control)?;
        tracing::debug!(%id, event = name, "event sent");
        self.inner.wake.notify_one();
        Ok(EventSent::Sent)
    }

    /// Deletes instances that ended (completed, failed, cancelled, timed
    /// out) before `ended_before`, of `workflow` only if given, with
    /// everything stored about them: steps, history, inbox, event keys,
    /// tags. Returns how many it deleted. Only this and
    /// [`EngineBuilder::retention`] (which runs it from a worker) delete
    /// instances: use one of them to keep the database from growing for ever.
    ///
    /// Parents and children go together: an instance started with
    /// `start_child`/`run_child` is deleted with the top instance of its
    /// tree (whatever its own workflow), and only once every instance of
    /// that tree ended before `ended_before`, so a cancel or a timeout
    /// still reaches every running descendant. Nothing that ended in the
    /// last minute ([`PURGE_MARGIN`], by the engine's [`Clock`]) is deleted, whatever
    /// `ended_before` says: a handler cancelled a moment ago may still be
    /// winding down, and another engine's scheduler, on a clock a little
    /// behind, must still find a tick's instance by its key. A purged
    /// instance's dedup key is free again and its id unknown
    /// ([`Error::NotFound`]); a schedule's last instance or a `rerun_of`
    /// tag may name it. Works in transactions of at most 500
    /// trees (on SQLite, also of about 5,000 rows, as its one writer
    /// serves every workflow), so writes of running workflows go on
    /// between them.
    ///
    /// ```no_run
    /// # async fn f(engine: workflow_core::Engine) -> workflow_core::Result<()> {
    /// let month_ago = chrono::Utc::now() - chrono::Duration::days(30);
    /// let deleted = engine.purge(month_ago, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn purge(&self, ended_before: DateTime<Utc>, workflow: Option<&str>) -> Result<u64> {
        let deleted = self
            .purge_ended(ended_before.timestamp_millis(), workflow, None)
            .await?;
        tracing::info!(deleted, %ended_before, workflow, "purged ended instances");
        Ok(deleted)
    }

    /// [`Engine::purge`] of what ended before `ended_before` (ms since the
    /// epoch); stops between batches once `stop` is cancelled.
    pub(crate) async fn purge_ended(
        &self,
        ended_before: Millis,
        workflow: Option<&str>,
        stop: Option<&CancellationToken>,
    ) -> Result<u64> {
        let before = ended_before.min(self.inner.now() - PURGE_MARGIN.as_millis() as i64);
        let mut deleted = 0;
        loop {
            let n = self
                .inner
                .store
                .purge(before, workflow, PURGE_BATCH)
                .await?;
            deleted += n;
            // A batch that deleted fewer than PURGE_BATCH instances
            // deleted fewer than PURGE_BATCH trees: none is left. One that
            // deleted more goes on; the cutoff is fixed, so this ends.
            if n < PURGE_BATCH as u64 || stop.is_some_and(CancellationToken::is_cancelled) {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Pauses an instance of any workflow; see [`Instance::pause`].
    pub async fn pause(&self, id: &InstanceId) -> Result<()> {
        let control = self.inner.store.pause(id, self.inner.now()).await?;
        self.check_control(id, control)?;
        crate::worker::update_claimed_ahead(&self.inner, id, Change::Pause(true));
        if let Some(run) = self.inner.local_run(id) {
            run.request_pause(true);
        }
        Ok(())
    }

    /// Resumes a paused instance of any workflow; see [`Instance::resume`].
    pub async fn resume(&self, id: &InstanceId) -> Result<()> {
        let control = self.inner.store.resume(id, self.inner.now()).await?;
        self.check_control(id, control)?;
        crate::worker::update_claimed_ahead(&self.inner, id, Change::Pause(false));
        if let Some(run) = self.inner.local_run(id) {
            run.request_pause(false);
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    fn check_control(&self, id: &InstanceId, control: Control) -> Result<()> {
        match control {
            Control::Applied => Ok(()),
            Control::Terminal(status) => Err(Error::AlreadyFinished {
                id: id.clone(),
                status,
            }),
            Control::NotFound => Err(Error::NotFound(id.clone())),
            // Only sends with a key are answered so, and they look first.
            Control::Duplicate => Ok(()),
        }
    }

    /// Everything stored about an instance of any workflow.
    pub async fn instance(&self, id: &InstanceId) -> Result<InstanceInfo> {
        Ok(InstanceInfo::try_from(self.row(id).await?)?)
    }

    /// Waits until instance `id` ends (any terminal status) and returns it
    /// as it ended: the untyped counterpart of [`Instance::result`], for
    /// instances started by name ([`Engine::start_json`]) or by another
    /// process. It wakes when a run of this process settles and otherwise
    /// polls the store (every 10 ms at first, backing off to 500 ms). An
    /// unknown (or purged) id is [`Error::NotFound`] at once; a row that
    /// cannot be read is an [`Error::Store`].
    pub async fn wait(&self, id: &InstanceId) -> Result<InstanceInfo> {
        Ok(InstanceInfo::try_from(self.wait_terminal(id, None).await?)?)
    }

    /// [`Engine::wait`], giving up after `limit` with
    /// [`Error::WaitTimeout`] (the instance runs on).
    pub async fn wait_timeout(&self, id: &InstanceId, limit: Duration) -> Result<InstanceInfo> {
        Ok(InstanceInfo::try_from(
            self.wait_terminal(id, Some(limit)).await?,
        )?)
    }

    /// A page of instances matching `query`, newest first. A row damaged
    /// outside the engine does not fail the page: it is named in
    /// [`Page::unreadable`], and the paging goes on past it.
    pub async fn list(&self, query: Query) -> Result<Page> {
        // One row more than the page: a page that is exactly full then
        // knows whether anything follows it, instead of offering a next
        // page that turns out empty.
        let limit = query.inner.limit;
        let mut one_more = query.inner.clone();
        one_more.limit = limit.saturating_add(1);
        let mut rows = self.inner.store.list(&one_more).await?;
        // Counted before unreadable rows are set aside, so one of them
        // last on a full page does not end the paging.
        let next = if rows.len() > limit {
            rows.truncate(limit);
            match rows.last() {
                Some(Ok(row)) => Some(row.id.clone()),
                Some(Err(StoreError::Corrupt { id, .. })) => Some(id.clone()),
                _ => None,
            }
        } else {
            None
        };
        let mut page = Page {
            items: Vec::with_capacity(rows.len()),
            unreadable: Vec::new(),
            next,
        };
        let summaries = query.inner.summaries;
        for row in rows {
            let row = row.map(|mut row| {
                if summaries {
                    // As asked, whether or not the store read them.
                    row.input = "null".to_owned();
                    row.output = None;
                    row.state = None;
                }
                row
            });
            match row.and_then(InstanceInfo::try_from) {
                Ok(info) => page.items.push(info),
                Err(StoreError::Corrupt { id, message }) => {
                    // The store said so (at error) when it failed the
                    // instance; a console refreshing a page must not repeat it.
                    tracing::debug!(%id, error = %message, "listing an instance whose row is corrupt");
                    page.unreadable.push(Unreadable { id, error: message });
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(page)
    }

    /// The instance of `workflow` started with dedup key `key`: the newest
    /// still active (`Pending`, `InProgress`, `Listening` or `Paused`),
    /// else the newest that ended, else `None` (never started, or
    /// purged). For a caller that knows only its own id for the work (a
    /// webhook naming an order) and has an event to send or a status to
    /// show; [`Workflow::find`] is the typed counterpart. Two reads,
    /// neither locking: an instance started between them may be missed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the instance it would answer with is a
    /// row damaged outside the engine (rather than an older instance, or
    /// none); [`Error::Store`] when the store fails.
    pub async fn find(&self, workflow: &str, key: &str) -> Result<Option<InstanceInfo>> {
        let by_key = Query::new().workflow(workflow).key(key).limit(1);
        let mut active = by_key.clone();
        for status in Status::ACTIVE {
            active = active.status(status);
        }
        for query in [active, by_key] {
            // One row: an item, or an unreadable one.
            let page = self.list(query).await?;
            if let Some(bad) = page.unreadable.into_iter().next() {
                return Err(StoreError::Corrupt {
                    id: bad.id,
                    message: bad.error,
                }
                .into());
            }
            if let Some(found) = page.items.into_iter().next() {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The schedules of the registered workflows: next fire time, last tick
    /// fired and the instance it started.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        let now = self.inner.clock.now();
        let mut out = Vec::with_capacity(self.inner.scheduled.len());
        for s in &self.inner.scheduled {
            let mark = self.inner.store.schedule_mark(s.workflow).await?;
            let (last_fired, last_instance) = match mark {
                Some(mark) => (
                    mark.last_tick.map(crate::instance::time),
                    mark.last_instance,
                ),
                None => (None, None),
            };
            out.push(ScheduleInfo {
                workflow: s.workflow.to_owned(),
                expression: s.schedule.expression().to_owned(),
                timezone: s.schedule.timezone().to_owned(),
                catch_up: s.catch_up,
                next_fire: s.schedule.next_after(now),
                last_fired,
                last_instance,
            });
        }
        out.sort_by(|a, b| a.workflow.cmp(&b.workflow));
        Ok(out)
    }

    /// How many instances are in each status, for one workflow or all;
    /// statuses with none are left out.
    pub async fn counts(
        &self,
        workflow: Option<&str>,
    ) -> Result<std::collections::BTreeMap<Status, u64>> {
        Ok(self
            .inner
            .store
            .count_by_status(workflow)
            .await?
            .into_iter()
            .collect())
    }

    /// The history of an instance, oldest first. An id with no instance
    /// (never started, or purged) is [`Error::NotFound`], here and in the
    /// three methods below.
    pub async fn history(&self, id: &InstanceId) -> Result<Vec<HistoryEvent>> {
        let events = self.inner.store.history(id).await?;
        if events.is_empty() {
            self.must_exist(id).await?;
        }
        Ok(events.into_iter().map(HistoryEvent::from).collect())
    }

    /// The recorded steps of an instance.
    pub async fn steps(&self, id: &InstanceId) -> Result<Vec<StepInfo>> {
        let steps = self.inner.store.steps(id).await?;
        if steps.is_empty() {
            self.must_exist(id).await?;
        }
        Ok(steps
            .into_iter()
            .map(|s| StepInfo::from_row(id, s))
            .collect())
    }

    /// The last `last` events of an instance's history, oldest first, and
    /// how many it has: a view of a long-running instance that stays cheap
    /// however long its history grows.
    pub async fn history_tail(&self, id: &InstanceId, last: usize) -> Result<Tail<HistoryEvent>> {
        let (events, total) = self.inner.store.history_tail(id, last).await?;
        if total == 0 {
            self.must_exist(id).await?;
        }
        Ok(Tail {
            items: events.into_iter().map(HistoryEvent::from).collect(),
            total,
        })
    }

    /// The last `last` recorded steps of an instance, in the order they
    /// were recorded, and how many it has.
    pub async fn steps_tail(&self, id: &InstanceId, last: usize) -> Result<Tail<StepInfo>> {
        let (steps, total) = self.inner.store.steps_tail(id, last).await?;
        if total == 0 {
            self.must_exist(id).await?;
        }
        Ok(Tail {
            items: steps
                .into_iter()
                .map(|s| StepInfo::from_row(id, s))
                .collect(),
            total,
        })
    }

    /// [`Error::NotFound`] for an id with no instance (never started, or
    /// purged): an empty history or list of steps would read as "nothing
    /// happened yet". A row that exists but does not decode exists.
    async fn must_exist(&self, id: &InstanceId) -> Result<()> {
        match self.inner.store.get(id).await {
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => Ok(()),
            Ok(None) => Err(Error::NotFound(id.clone())),
            Err(err) => Err(err.into()),
        }
    }

    /// Waits until the instance is terminal. Wakes at once for instances
    /// finished in this process, and polls (10 ms growing to 500 ms) for
    /// those finished elsewhere.
    pub(crate) async fn wait_terminal(
        &self,
        id: &InstanceId,
        limit: Option<Duration>,
    ) -> Result<InstanceRow> {
        let started = tokio::time::Instant::now();
        let mut poll = Duration::from_millis(10);
        let watch = self.inner.finished.watch(id);
        let mut root = false;
        let mut told = false;
        loop {
            let finished = watch.notify.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let row = self.row(id).await?;
            if row.status.is_terminal() {
                return Ok(row);
            }
            // A wait that can only end by someone's hand (no worker runs
            // the workflow, the instance is paused) says so once, rather
            // than hang without a word.
            if !told && started.elapsed() >= UNATTENDED_AFTER {
                if row.status == Status::Paused {
                    told = true;
                    tracing::warn!(
                        %id,
                        workflow = %row.workflow,
                        "waiting for an instance that is paused: it ends only once resumed \
                         (its history says why it paused)"
                    );
                } else if row.status == Status::Pending
                    && row.started_at.is_none()
                    && crate::store::millis_after(row.run_at, UNATTENDED_AFTER) <= self.inner.now()
                {
                    told = true;
                    tracing::warn!(
                        %id,
                        workflow = %row.workflow,
                        waited = ?started.elapsed(),
                        "waiting for an instance that no worker has taken in the 10 s since it \
                         came due: is a worker running (`engine.start_worker()`) with its \
                         workflow registered, or are all of them busy?"
                    );
                }
            }
            if !root && row.parent.is_none() {
                root = true;
                watch.is_root();
            }
            let mut wait = poll;
            if let Some(limit) = limit {
                let left = limit.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Error::WaitTimeout {
                        id: id.clone(),
                        workflow: row.workflow,
                        waited: limit,
                        status: row.status,
                    });
                }
                wait = wait.min(left);
            }
            let _ = tokio::time::timeout(wait, finished).await;
            poll = (poll * 2).min(Duration::from_millis(500));
        }
    }
}

/// The longest a step attempt waits for a cancel this engine is writing
/// (see [`CancelsInFlight`]).
pub(crate) const CANCEL_HOLD_MAX: Duration = Duration::from_secs(5);

/// The cancels this engine is writing now, by the instances they end here
/// (the root, and its descendants running or claimed ahead here): no step
/// attempt of those begins until the cancel is answered, so that a side
/// effect does not begin after the store says `Cancelled` (from its
/// commit, before the fsync answers) only to have its record refused.
#[derive(Default)]
pub(crate) struct CancelsInFlight {
    /// How many holds are taken: a step looks no further while 0.
    holds: std::sync::atomic::AtomicUsize,
    ids: std::sync::Mutex<HashMap<InstanceId, usize>>,
    answered: Notify,
}

impl CancelsInFlight {
    /// Holds back `ids` until the returned guard is dropped.
    fn hold(&self, ids: Vec<InstanceId>) -> CancelHold<'_> {
        let mut held = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        for id in &ids {
            *held.entry(id.clone()).or_default() += 1;
        }
        self.holds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CancelHold { cancels: self, ids }
    }

    /// Whether any cancel is being written.
    pub(crate) fn any(&self) -> bool {
        self.holds.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    fn holds_back(&self, id: &InstanceId) -> bool {
        let held = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        held.contains_key(id)
    }

    /// Ready once no cancel being written holds back `id`.
    pub(crate) async fn released(&self, id: &InstanceId) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !self.holds_back(id) {
                return;
            }
            answered.await;
        }
    }
}

/// A cancel's hold on the instances it ends here (see
/// [`CancelsInFlight`]); let go when dropped, which [`Engine::cancel`]
/// does after it interrupted them, or on any error (or a dropped future).
struct CancelHold<'a> {
    cancels: &'a CancelsInFlight,
    ids: Vec<InstanceId>,
}

impl Drop for CancelHold<'_> {
    fn drop(&mut self) {
        let mut held = self.cancels.ids.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            if let Some(n) = held.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    held.remove(id);
                }
            }
        }
        drop(held);
        self.cancels
            .holds
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.cancels.answered.notify_waiters();
    }
}

/// See [`EngineInner::recorded_checks`].
#[derive(Default)]
pub(crate) struct RecordedChecks(
    std::sync::Mutex<HashMap<String, (serde_json::Value, Arc<crate::validate::SchemaCheck>)>>,
);

impl RecordedChecks {
    /// The check of `schema`, recorded for workflow `name`: compiled now
    /// only if it is not the one compiled last for that name.
    pub(crate) fn get(
        &self,
        name: &str,
        schema: &serde_json::Value,
    ) -> Arc<crate::validate::SchemaCheck> {
        let mut checks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((compiled, check)) = checks.get(name) {
            if compiled == schema {
                return Arc::clone(check);
            }
        }
        let check = Arc::new(crate::validate::SchemaCheck::recorded(schema));
        checks.insert(name.to_owned(), (schema.clone(), Arc::clone(&check)));
        check
    }
}

/// Callers waiting for instances to end, by instance: an end in this
/// process wakes those waiting for that instance only, so a thousand
/// callers awaiting a thousand results do not all read their rows again
/// at every end.
#[derive(Default)]
pub(crate) struct FinishWaiters(std::sync::Mutex<HashMap<InstanceId, Waiting>>);

/// The callers waiting for one instance.
struct Waiting {
    notify: Arc<Notify>,
    callers: usize,
    /// The instance has no parent, so no cascade ends it: only its own end
    /// wakes its callers.
    root: bool,
}

/// One caller's registration; dropping it ends it.
pub(crate) struct FinishWatch<'a> {
    waiters: &'a FinishWaiters,
    id: InstanceId,
    pub notify: Arc<Notify>,
}

impl FinishWaiters {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Waiting>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a wait for `id` to end.
    pub(crate) fn watch(&self, id: &InstanceId) -> FinishWatch<'_> {
        let mut map = self.map();
        let waiting = map.entry(id.clone()).or_insert_with(|| Waiting {
            notify: Arc::new(Notify::new()),
            callers: 0,
            root: false,
        });
        waiting.callers += 1;
        FinishWatch {
            waiters: self,
            id: id.clone(),
            notify: Arc::clone(&waiting.notify),
        }
    }

    /// `id` ended in this process.
    pub(crate) fn ended(&self, id: &InstanceId) {
        if let Some(waiting) = self.map().get(id) {
            waiting.notify.notify_waiters();
        }
    }

    /// Instances this process cannot name ended (a cancel's or a
    /// timeout's descendants): every caller of an instance that may be one
    /// looks again. Callers of roots do not: a thousand callers awaiting
    /// results would each read their row at every cancel.
    pub(crate) fn ended_all(&self) {
        for waiting in self.map().values().filter(|w| !w.root) {
            waiting.notify.notify_waiters();
        }
    }
}

impl FinishWatch<'_> {
    /// The instance has no parent: a cascade never ends it.
    pub(crate) fn is_root(&self) {
        if let Some(waiting) = self.waiters.map().get_mut(&self.id) {
            waiting.root = true;
        }
    }
}

impl Drop for FinishWatch<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        if let Some(waiting) = map.get_mut(&self.id) {
            waiting.callers -= 1;
            if waiting.callers == 0 {
                map.remove(&self.id);
            }
        }
    }
}

fn json_input<W: Workflow>(input: &W::Input) -> Result<String> {
    encode_input::<W>(input, "workflow", usize::MAX)
}

/// `input` as the JSON its handler will read, checked to read back (see
/// [`json_round_trip`](crate::error::json_round_trip)): refused at the
/// start, not failed later in a worker. `what` names the kind of workflow;
/// `max` is the most bytes it may take.
pub(crate) fn encode_input<W: Workflow>(
    input: &W::Input,
    what: &str,
    max: usize,
) -> Result<String> {
    let (json, _) =
        crate::error::json_round_trip(input, max, || format!("input of {what} `{}`", W::NAME))?;
    Ok(json)
}

/// An event's payload as JSON, before anything is looked up.
fn event_payload(name: &str, payload: impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(payload).map_err(|error| Error::Json {
        context: format!("payload of event `{name}`"),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durability reads from configuration as it prints.
    #[test]
    fn durability_round_trips_as_text() {
        for d in [Durability::Durable, Durability::Relaxed] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
            assert_eq!(serde_json::from_str::<Durability>(&json).unwrap(), d);
        }
        let err = "fast".parse::<Durability>().unwrap_err().to_string();
        assert!(err.contains("`durable` or `relaxed`"), "{err}");
        for c in [CatchUp::All, CatchUp::Latest, CatchUp::None] {
            assert_eq!(c.to_string().parse::<CatchUp>().unwrap(), c);
        }
    }

    /// An end wakes the callers waiting for that instance, not the others;
    /// a cascade wakes all but the callers of roots; registrations go when
    /// their callers do.
    #[tokio::test]
    async fn an_end_wakes_only_the_callers_waiting_for_it() {
        let waiters = FinishWaiters::default();
        let (a, b) = (InstanceId::from("a"), InstanceId::from("b"));
        let (wa, wb) = (waiters.watch(&a), waiters.watch(&b));
        {
            let (na, nb) = (wa.notify.notified(), wb.notify.notified());
            tokio::pin!(na, nb);
            na.as_mut().enable();
            nb.as_mut().enable();
            waiters.ended(&a);
            let quick = Duration::from_millis(20);
            assert!(
                tokio::time::timeout(quick, na).await.is_ok(),
                "a's caller woke"
            );
            assert!(
                tokio::time::timeout(quick, nb.as_mut()).await.is_err(),
                "b's caller slept on"
            );
            waiters.ended_all();
            assert!(
                tokio::time::timeout(quick, nb).await.is_ok(),
                "a cascade wakes all that may descend from another"
            );
        }
        {
            wb.is_root();
            let nb = wb.notify.notified();
            tokio::pin!(nb);
            nb.as_mut().enable();
            waiters.ended_all();
            let quick = Duration::from_millis(20);
            assert!(
                tokio::time::timeout(quick, nb.as_mut()).await.is_err(),
                "a root's callers sleep through a cascade"
            );
            waiters.ended(&b);
            assert!(tokio::time::timeout(quick, nb).await.is_ok());
        }
        drop((wa, wb));
        assert!(waiters.map().is_empty());
    }

    /// A recorded schema is compiled once per name, again only when it
    /// changes (a start by name from the console or CLI compiled it at
    /// every call, and warned each time for one that does not compile).
    #[test]
    fn recorded_schemas_compile_once() {
        let checks = RecordedChecks::default();
        let schema = serde_json::json!({"type": "object"});
        let first = checks.get("w", &schema);
        assert!(Arc::ptr_eq(&first, &checks.get("w", &schema)));
        let changed = serde_json::json!({"type": "integer"});
        let second = checks.get("w", &changed);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.check::<i64>(&serde_json::json!(3)).is_ok());
    }

    /// A recorded schema that does not compile refuses every input: it
    /// is all that could check one (it let every input through, to be
    /// stored for a worker that might not read it).
    #[test]
    fn a_recorded_schema_that_does_not_compile_refuses_input() {
        let checks = RecordedChecks::default();
        let broken = serde_json::json!({"type": 5});
        let violations = checks
            .get("w", &broken)
            .check::<serde_json::Value>(&serde_json::json!({"any": "thing"}))
            .unwrap_err();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].rule, "schema");
        assert!(
            violations[0].message.contains("does not compile"),
            "{violations:?}"
        );
    }

    /// A cancel wakes the callers of the instance it cancelled, a root
    /// included (a cascade no longer wakes roots' callers).
    #[tokio::test]
    async fn a_cancel_wakes_the_callers_of_its_instance() {
        let engine = EngineBuilder::new()
            .store(crate::MemoryStore::new())
            .build()
            .await
            .unwrap();
        let id = InstanceId::new();
        let new = crate::store::NewInstance {
            id: id.clone(),
            workflow: "w".into(),
            input: "null".into(),
            tags: Default::default(),
            key: None,
            created_at: 1,
            run_at: 1,
            deadline_at: None,
            parent: None,
        };
        engine.inner.store.create(new, None).await.unwrap();
        let watch = engine.inner.finished.watch(&id);
        watch.is_root();
        let woken = watch.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        engine.cancel(&id).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), woken)
                .await
                .is_ok(),
            "the caller of the cancelled root woke"
        );
    }

    /// An engine without a connector names the URL it cannot open, not
    /// its password.
    #[tokio::test]
    async fn a_url_without_a_connector_is_refused_without_its_password() {
        let err = EngineBuilder::new()
            .database_url("postgres://app:hunter2@db/x")
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no connector") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_builder_shows_its_url_without_the_password() {
        assert_eq!(
            redact_password("postgres://app:s3cr@t@db.internal:5432/jobs"),
            "postgres://app:***@db.internal:5432/jobs"
        );
        assert_eq!(
            redact_password("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
        assert_eq!(redact_password("sqlite://a@b.db"), "sqlite://a@b.db");
        assert_eq!(
            redact_password("postgres://u@h/d?sslmode=require&password=hunter2"),
            "postgres://u@h/d?sslmode=require&password=***"
        );
        // Unescaped `/`, `?` or `#` in a password (base64 keys) hide it too.
        for url in [
            "postgres://u:a/b?c@h/d",
            "postgres://u:x#y@h/d?sslmode=require",
        ] {
            let shown = redact_password(url);
            assert!(shown.starts_with("postgres://u:***@h/d"), "{shown}");
        }
        // An `@` in the query hides no `password` parameter, nor ends the
        // user information (`user=admin@server`, as on Azure).
        assert_eq!(
            redact_password("postgres://db:5432/app?user=admin@srv&password=hunter2"),
            "postgres://db:5432/app?user=admin@srv&password=***"
        );
        assert_eq!(
            redact_password("sqlite://relative.db"),
            "sqlite://relative.db"
        );
        for url in [
            "postgres://h/d?password=hunter2&user=me@corp",
            "postgres://u@h/d?password=hunter2&application_name=a@b",
            "postgres://u:hunter2@h/d?application_name=a@b&sslpassword=hunter2",
        ] {
            let shown = redact_password(url);
            assert!(
                !shown.contains("hunter2") && shown.contains("password=***"),
                "{shown}"
            );
        }
        let shown = format!(
            "{:?}",
            EngineBuilder::new().database_url("postgres://u:hunter2@h/d")
        );
        assert!(
            shown.contains("u:***@h/d") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
