//! The `Workflow` trait that `#[workflow]` implements, and its type-erased form.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ctx::{Ctx, RunShared};
use crate::engine::Engine;
use crate::error::{error_chain, BoxError, Error, Result};
use crate::instance::{GetOrCreate, Instance, StartOptions};
use crate::schema::schema_for;
use crate::step::{Backoff, StepOptions};
use crate::validate::SchemaCheck;

/// A durable workflow. Written by `#[workflow]`; implement it by hand
/// where the macro does not fit (a workflow generic over a type of yours,
/// a handler that is a method of a struct holding clients). Its settings
/// are associated constants, fixed at compile time either way (a schedule
/// may still be chosen at run time, with
/// [`EngineBuilder::register_scheduled`](crate::EngineBuilder::register_scheduled)). Override
/// only `run` and the constants: the provided methods (`start`,
/// `definition`, ...) are what the engine and callers rely on, and the
/// engine records and checks runs against `definition`.
pub trait Workflow: Send + Sync + Sized + 'static {
    /// The input it is started with.
    type Input: Serialize + DeserializeOwned + JsonSchema + Send + 'static;
    /// What it returns when it completes.
    type Output: Serialize + DeserializeOwned + JsonSchema + Send + 'static;
    /// Its persisted state (`()` when it has none); a new instance starts from `Default`.
    type State: Serialize + DeserializeOwned + JsonSchema + Default + Send + 'static;

    /// Registered name, unique per engine.
    const NAME: &'static str;
    /// Human (and AI model) readable description: the doc comment by default.
    const DESCRIPTION: &'static str = "";
    /// Cron schedule, if it runs on one.
    const SCHEDULE: Option<&'static str> = None;
    /// IANA time zone of the schedule.
    const TIMEZONE: &'static str = "UTC";
    /// Default deadline of an instance, counted from its start (its
    /// creation, or the end of a `StartOptions::delay`), so time spent
    /// queued behind other work, sleeping, and waiting for events or
    /// children counts. Five minutes unless the attribute says otherwise.
    /// Past it the instance ends `TimedOut`, and its unfinished child
    /// workflows (and theirs) end `Cancelled` with it. The deadline is
    /// enforced by the worker that runs or claims the instance: with no
    /// worker running its workflow, an instance past its deadline stays as
    /// it is until one starts.
    const TIMEOUT: Duration = Duration::from_secs(300);
    /// The step names written as literals in the handler's
    /// `ctx.step(..)` / `ctx.step_with(..)` calls, in source order, each
    /// once: not sleeps, event waits, children or fan-out items, nor names
    /// built at run time. For consoles; the engine does not check runs
    /// against it.
    const STEPS: &'static [&'static str] = &[];
    /// What the schedule does about ticks missed while no engine ran.
    const CATCH_UP: crate::CatchUp = crate::CatchUp::Latest;
    /// Attempts each `ctx.step` gets by default (`retries = N` in the
    /// attribute); `None` uses the engine's [`StepOptions`](crate::StepOptions).
    const RETRIES: Option<u32> = None;
    /// The waits between the attempts of each `ctx.step` by default
    /// (`backoff(initial = "200ms", factor = 2.0, max = "30s")` in the
    /// attribute); `None` uses the engine's [`StepOptions`](crate::StepOptions).
    /// Like [`RETRIES`](Workflow::RETRIES), it does not apply to
    /// `ctx.step_with`, which brings its own options.
    const BACKOFF: Option<Backoff> = None;
    /// The jitter of each `ctx.step`'s waits by default (`jitter = 0.2` in
    /// the attribute): each wait is scaled by a random factor in
    /// `[1 - jitter, 1 + jitter]`. `None` uses the engine's
    /// [`StepOptions`](crate::StepOptions); values outside `0..=1` are
    /// clamped when applied. Not applied to `ctx.step_with` either.
    const JITTER: Option<f64> = None;

    /// The input each cron tick starts the workflow with. `#[workflow]`
    /// returns `Some(Default::default())` for scheduled workflows (their
    /// input must be `()` or `Default`).
    fn schedule_input() -> Option<Self::Input> {
        None
    }

    /// The handler.
    fn run(
        &self,
        ctx: Ctx<Self::State>,
        input: Self::Input,
    ) -> impl Future<Output = std::result::Result<Self::Output, BoxError>> + Send;

    /// [`Ctx::complete`] typed by this workflow's `Output`:
    /// `ShipOrder::complete(&ctx, "queued".into())?` ends the instance
    /// `Completed` now, and a value of another type is a compile error
    /// instead of an instance failed when the end is recorded. Called with
    /// the `ctx` of another workflow's handler (one with the same state
    /// type), it is [`Error::WrongWorkflow`] and ends nothing.
    fn complete(ctx: &Ctx<Self::State>, output: Self::Output) -> Result<std::convert::Infallible> {
        if ctx.name() != Self::NAME {
            return Err(Error::WrongWorkflow {
                id: ctx.id().clone(),
                expected: Self::NAME.to_owned(),
                actual: ctx.name().to_owned(),
            });
        }
        ctx.complete(output)
    }

    /// Starts an instance; a running worker picks it up.
    ///
    /// # Errors
    ///
    /// - [`Error::UnknownWorkflow`](crate::Error::UnknownWorkflow): no
    ///   engine on this store registers `Self` (neither this one nor one
    ///   that recorded it in the store), as no worker would ever run it;
    /// - [`Error::Json`](crate::Error::Json) or
    ///   [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge): the
    ///   input does not serialize to JSON that reads back as itself, or
    ///   is over `max_payload_bytes`;
    /// - [`Error::Store`](crate::Error::Store): the store failed; the
    ///   instance may or may not exist, so retry with a key
    ///   ([`get_or_create`](Self::get_or_create)).
    fn start(
        engine: &Engine,
        input: Self::Input,
    ) -> impl Future<Output = Result<Instance<Self>>> + Send {
        engine.start::<Self>(input, StartOptions::default())
    }

    /// Starts many instances in one write (one transaction on SQL stores),
    /// all with the same options (like [`Workflow::start_with`], the key is
    /// not checked against other instances).
    fn start_many(
        engine: &Engine,
        inputs: Vec<Self::Input>,
        options: StartOptions,
    ) -> impl Future<Output = Result<Vec<Instance<Self>>>> + Send {
        engine.start_many::<Self>(inputs, options)
    }

    /// Starts an instance with a key, tags or its own timeout.
    fn start_with(
        engine: &Engine,
        input: Self::Input,
        options: StartOptions,
    ) -> impl Future<Output = Result<Instance<Self>>> + Send {
        engine.start::<Self>(input, options)
    }

    /// Returns the instance of this workflow with this dedup key that is still active
    /// (`Pending`, `InProgress`, `Listening` or `Paused`; change with
    /// `.statuses(..)`), or starts a new one. Atomic: concurrent callers with
    /// one key get one instance.
    ///
    /// An existing instance is returned as it is: `input` is used only
    /// when one is created (`.with_created()` tells which happened). Once
    /// the instance has ended, the default statuses no longer match it and
    /// the next call starts another: include `Status::Completed` (or
    /// [`Status::ALL`](crate::Status::ALL)) to make the key answer for
    /// good, until the instance is purged.
    fn get_or_create<'a>(
        engine: &'a Engine,
        key: impl Into<String>,
        input: Self::Input,
    ) -> GetOrCreate<'a, Self> {
        GetOrCreate::new(engine, key.into(), input)
    }

    /// The instance of this workflow started with dedup key `key`: the
    /// newest still active, else the newest that ended, else `None`; see
    /// [`Engine::find`]. For a caller that knows only its own id for the
    /// work:
    ///
    /// ```no_run
    /// # use workflow_core::*;
    /// # struct ApproveExpense;
    /// # impl Workflow for ApproveExpense {
    /// #     type Input = (); type Output = (); type State = ();
    /// #     const NAME: &'static str = "approveExpense";
    /// #     async fn run(&self, _: Ctx, _: ()) -> Result<(), BoxError> { Ok(()) }
    /// # }
    /// # async fn doc(engine: Engine) -> Result<()> {
    /// // A webhook that names the expense, not the instance:
    /// if let Some(instance) = ApproveExpense::find(&engine, "expense-42").await? {
    ///     instance.send_event("approval", serde_json::json!({"approved": true})).await?;
    /// }
    /// # Ok(()) }
    /// ```
    fn find(
        engine: &Engine,
        key: impl Into<String>,
    ) -> impl Future<Output = Result<Option<Instance<Self>>>> + Send {
        let key = key.into();
        async move {
            // Found by this workflow's name: a handle that need not read
            // the row again to check it.
            let found = engine.find(Self::NAME, &key).await?;
            Ok(found.map(|info| Instance::new(engine.clone(), info.id)))
        }
    }

    /// A typed handle on an existing instance. Nothing is read until it is
    /// used: its first use (a read, a cancel, an event...) fails with
    /// [`Error::WrongWorkflow`](crate::Error::WrongWorkflow) and changes
    /// nothing when the id is an instance of another workflow.
    fn handle(engine: &Engine, id: impl Into<crate::InstanceId>) -> Instance<Self> {
        Instance::unchecked(engine.clone(), id.into())
    }

    /// This workflow as a tool an AI model can call: its name, description
    /// (the doc comment) and the JSON Schema of its input. Calling it starts
    /// an instance and returns `{"workflowId", "status"}`; see
    /// [`Tool::wait`](crate::Tool::wait) and [`Tool::with_description`](crate::Tool::with_description).
    fn as_tool() -> crate::Tool {
        crate::Tool::workflow(Self::NAME, Self::DESCRIPTION, schema_for::<Self::Input>())
    }

    /// Everything about this workflow as data: names, schemas, schedule.
    fn definition() -> Definition {
        Definition {
            name: Self::NAME.to_owned(),
            description: Self::DESCRIPTION.to_owned(),
            schedule: Self::SCHEDULE.map(str::to_owned),
            timezone: Self::TIMEZONE.to_owned(),
            timeout_ms: u64::try_from(Self::TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            catch_up: Self::CATCH_UP,
            steps: Self::STEPS.iter().map(|s| (*s).to_owned()).collect(),
            input_schema: schema_for::<Self::Input>(),
            output_schema: schema_for::<Self::Output>(),
            state_schema: schema_for::<Self::State>(),
        }
    }
}

/// A workflow described as data; what consoles and tools read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Definition {
    /// Registered name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Cron schedule: the one in force in the engine whose worker started
    /// last (an engine that starts no worker, such as an API server that
    /// only starts instances, keeps the recorded schedule).
    pub schedule: Option<String>,
    /// Schedule time zone.
    pub timezone: String,
    /// Default timeout in milliseconds.
    pub timeout_ms: u64,
    /// What the schedule does about missed ticks.
    pub catch_up: crate::CatchUp,
    /// Literal step names in source order ([`Workflow::STEPS`]).
    pub steps: Vec<String>,
    /// JSON Schema of the input.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output.
    pub output_schema: serde_json::Value,
    /// JSON Schema of the state.
    pub state_schema: serde_json::Value,
}

impl Definition {
    /// The default timeout ([`timeout_ms`](Self::timeout_ms)) as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }
}

/// Deserializes JSON into `T`, naming the failing field: `items[2].qty: invalid type ...`.
pub(crate) fn decode_named<T: DeserializeOwned>(json: &str) -> std::result::Result<T, String> {
    decode_at::<T>(json).map_err(|(path, message)| match path {
        Some(path) => format!("{path}: {message}"),
        None => message,
    })
}

/// Deserializes JSON into `T`; on failure, the path to the failing spot
/// (`None` at the root) and serde's message.
pub(crate) fn decode_at<T: DeserializeOwned>(
    json: &str,
) -> std::result::Result<T, (Option<String>, String)> {
    read_at::<T>(json).map_err(|(path, message)| {
        let path = path.to_string();
        ((path != ".").then_some(path), message)
    })
}

/// Deserializes JSON into `T`; on failure, the path to the failing spot
/// and serde's message.
pub(crate) fn read_at<T: DeserializeOwned>(
    json: &str,
) -> std::result::Result<T, (serde_path_to_error::Path, String)> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().clone();
        let inner = err.into_inner();
        let message = inner.to_string();
        // A value of the wrong shape: the path names the spot, and a
        // position would point into JSON the engine wrote. Broken JSON (a
        // row damaged outside the engine) keeps its position.
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        let message = match inner.classify() {
            serde_json::error::Category::Data => {
                message.strip_suffix(&position).unwrap_or(&message)
            }
            _ => &message,
        };
        (path, message.to_owned())
    })
}

/// The error a handler returned, as its instance records it: the chain,
/// less the name of the instance's own workflow in a step's failure, which
/// everything that shows the record names already (`workflow `w` instance
/// .. failed: step `charge` failed after 3 attempt(s): ..`).
fn recorded_error(workflow: &str, err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<Error>() {
        Some(Error::Step {
            workflow: own,
            step,
            attempts,
            message,
        }) if own == workflow => {
            format!("step `{step}` failed after {attempts} attempt(s): {message}")
        }
        _ => error_chain(err),
    }
}

/// `engine`'s step options with `W`'s defaults on top: each of
/// `RETRIES`, `BACKOFF` and `JITTER` that is set replaces its part, the rest
/// stays the engine's.
fn step_defaults<W: Workflow>(engine: StepOptions) -> StepOptions {
    let mut opts = engine;
    if let Some(attempts) = W::RETRIES {
        opts.max_attempts = attempts.max(1);
    }
    if let Some(backoff) = W::BACKOFF {
        opts = opts.with_backoff(backoff);
    }
    if let Some(jitter) = W::JITTER {
        opts = opts.jitter(jitter);
    }
    opts
}

/// How a handler run ended, before the engine applies interrupts and deadlines.
pub(crate) struct HandlerEnd {
    /// Output JSON, or the error chain.
    pub result: std::result::Result<String, String>,
    /// The state, if changed since the last step.
    pub state: Option<String>,
    /// Why the state could not be read for the record (`handler
    /// panicked: ..`, logged): its `Serialize` panicked. The instance
    /// fails with it, whatever the outcome.
    pub state_panicked: Option<String>,
}

/// A `Workflow` with its types erased, as the engine keeps it.
pub(crate) trait ErasedWorkflow: Send + Sync {
    fn name(&self) -> &'static str;
    fn timeout(&self) -> Duration;
    /// What `ctx.step` uses in this workflow: the engine's options with the
    /// workflow's own defaults (`retries`, `backoff`, `jitter`) on top.
    fn step_options(&self, engine: StepOptions) -> StepOptions;
    fn definition(&self) -> Definition;
    /// Checks JSON against the input type; returns the canonical JSON.
    fn check_input(&self, input: &serde_json::Value) -> Result<String>;
    /// Checks that an early output (`ctx.complete`) fits the output type.
    fn check_output(&self, output: &str) -> std::result::Result<(), String>;
    fn run(&self, shared: Arc<RunShared>, input: String) -> BoxFuture<'static, HandlerEnd>;
}

pub(crate) struct Registered<W> {
    workflow: Arc<W>,
    /// Compiled on first use: engines that never take JSON input never pay for it.
    input_check: std::sync::OnceLock<SchemaCheck>,
}

impl<W: Workflow> Registered<W> {
    pub(crate) fn new(workflow: W) -> Self {
        Registered {
            workflow: Arc::new(workflow),
            input_check: std::sync::OnceLock::new(),
        }
    }
}

impl<W: Workflow> ErasedWorkflow for Registered<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn timeout(&self) -> Duration {
        W::TIMEOUT
    }

    fn step_options(&self, engine: StepOptions) -> StepOptions {
        step_defaults::<W>(engine)
    }

    fn definition(&self) -> Definition {
        W::definition()
    }

    fn check_input(&self, input: &serde_json::Value) -> Result<String> {
        let check = self
            .input_check
            .get_or_init(|| SchemaCheck::new(&schema_for::<W::Input>()));
        let invalid = |violations| Error::InvalidInput {
            workflow: W::NAME.to_owned(),
            violations,
        };
        let typed: W::Input = check.check(input).map_err(invalid)?;
        let json = serde_json::to_string(&typed).map_err(|error| Error::Json {
            context: format!("input of workflow `{}`", W::NAME),
            error,
        })?;
        // The typed start reads its JSON back too (`json_round_trip`).
        crate::validate::reads_back::<W::Input>(&json).map_err(invalid)?;
        Ok(json)
    }

    fn check_output(&self, output: &str) -> std::result::Result<(), String> {
        decode_named::<W::Output>(output).map(drop).map_err(|message| {
            format!("output given to ctx.complete does not match the output type of `{}`: {message}", W::NAME)
        })
    }

    fn run(&self, shared: Arc<RunShared>, input: String) -> BoxFuture<'static, HandlerEnd> {
        let workflow = Arc::clone(&self.workflow);
        Box::pin(async move {
            let ctx = Ctx::new(shared, W::State::default());
            let input: W::Input = match decode_named(&input) {
                Ok(input) => input,
                Err(message) => {
                    // Checked when it was started: the input type changed
                    // since, under a queued or running instance; or it was
                    // started where this type is not registered, against
                    // the recorded schema, and the type's deserializer
                    // refuses more than that schema says.
                    let what = format!("the input does not fit the input type: {message}");
                    let err = ctx.pause_for_code(what).await;
                    return HandlerEnd {
                        result: Err(err.to_string()),
                        state: None,
                        state_panicked: None,
                    };
                }
            };
            let returned = workflow.run(ctx.clone(), input).await;
            let result = match returned {
                // Stored only if it reads back as itself, so `result()`
                // and a waiting parent read what the handler returned.
                Ok(output) => {
                    crate::error::json_round_trip(&output, ctx.run().max_payload(), || {
                        format!("output of workflow `{}`", W::NAME)
                    })
                    .map(|(json, _)| json)
                    .map_err(|err| err.to_string())
                }
                Err(err) => {
                    ctx.run().note_returned(&*err);
                    Err(recorded_error(W::NAME, &*err))
                }
            };
            // Caught here, not with the handler: a panic of its own after
            // `ctx.complete` leaves the outcome as given, one of the state
            // it leaves cannot (the state would not be saved).
            let (state, state_panicked) = match crate::worker::guarded(|| ctx.state_at_end()) {
                Ok(state) => (state, None),
                Err(panicked) => (None, Some(panicked)),
            };
            HandlerEnd {
                result,
                state,
                state_panicked,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Shape {
        #[allow(dead_code)]
        approved: bool,
    }

    /// A wrong shape is named by its path alone; broken JSON (damaged
    /// outside the engine) keeps serde_json's position.
    #[test]
    fn decode_errors_name_the_path_and_keep_positions_of_broken_json() {
        let wrong = decode_named::<Shape>(r#"{"approved": "yes"}"#).unwrap_err();
        assert_eq!(
            wrong,
            r#"approved: invalid type: string "yes", expected a boolean"#
        );
        let broken = decode_named::<Shape>(r#"{"approved": tr"#).unwrap_err();
        assert!(broken.contains("at line 1 column"), "{broken}");
    }

    struct Plain;
    impl Workflow for Plain {
        type Input = ();
        type Output = ();
        type State = ();
        const NAME: &'static str = "plain";
        async fn run(&self, _ctx: Ctx<()>, _input: ()) -> std::result::Result<(), BoxError> {
            Ok(())
        }
    }

    struct Tuned;
    impl Workflow for Tuned {
        type Input = ();
        type Output = ();
        type State = ();
        const NAME: &'static str = "tuned";
        const RETRIES: Option<u32> = Some(3);
        const BACKOFF: Option<Backoff> = Some(Backoff {
            initial: Duration::from_millis(200),
            factor: 2.0,
            max: Duration::from_secs(30),
        });
        const JITTER: Option<f64> = Some(0.2);
        async fn run(&self, _ctx: Ctx<()>, _input: ()) -> std::result::Result<(), BoxError> {
            Ok(())
        }
    }

    fn engine_options() -> StepOptions {
        StepOptions::retries(7)
            .backoff(Duration::from_millis(1), 1.5, Duration::from_millis(50))
            .jitter(0.5)
    }

    #[test]
    fn step_defaults_keep_the_engine_options_when_unset() {
        assert_eq!(step_defaults::<Plain>(engine_options()), engine_options());
    }

    #[test]
    fn step_defaults_replace_each_part_that_is_set() {
        let opts = step_defaults::<Tuned>(engine_options());
        assert_eq!(opts.max_attempts, 3);
        assert_eq!(opts.initial_backoff, Duration::from_millis(200));
        assert_eq!(opts.factor, 2.0);
        assert_eq!(opts.max_backoff, Duration::from_secs(30));
        assert_eq!(opts.jitter, 0.2);
        assert_eq!(opts.delay_after(1), Duration::from_millis(200));
        assert_eq!(opts.delay_after(2), Duration::from_millis(400));
    }

    #[test]
    fn step_defaults_apply_through_the_erased_workflow() {
        let erased: &dyn ErasedWorkflow = &Registered::new(Tuned);
        assert_eq!(
            erased.step_options(engine_options()),
            step_defaults::<Tuned>(engine_options())
        );
    }
}
