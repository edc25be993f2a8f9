//! Errors returned by the engine, by handles and inside handlers.

use std::time::Duration;

use crate::id::InstanceId;
use crate::status::Status;

/// A boxed error, what a handler or a step closure may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when driving or running a workflow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No workflow of that name is registered with this engine, nor
    /// recorded by any engine using its store (which is what lets a console
    /// or a CLI without the code start instances).
    #[error("no workflow `{0}`: it is not registered with this engine, nor recorded by any engine using its store")]
    UnknownWorkflow(String),

    /// No instance has that id.
    #[error("workflow instance {0} not found")]
    NotFound(InstanceId),

    /// An input does not fit the workflow's input schema or type.
    #[error("invalid input for workflow `{workflow}`: {}", crate::validate::describe(.violations))]
    InvalidInput {
        /// The workflow's name.
        workflow: String,
        /// Every problem found, each with its JSON path.
        violations: Vec<crate::validate::Violation>,
    },

    /// A tool call's arguments do not fit the tool's parameter schema.
    /// `ToolReply::from_error` turns it into a message a model can correct
    /// its call from.
    #[error("invalid arguments for tool `{tool}`: {}", crate::validate::describe(.violations))]
    InvalidArguments {
        /// The tool's name.
        tool: String,
        /// Every problem found, each with its JSON path in the arguments as sent.
        violations: Vec<crate::validate::Violation>,
    },

    /// A function tool returned an error.
    #[error("tool `{tool}`: {message}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// What went wrong.
        message: String,
    },

    /// A model or a caller asked for a tool the toolbox does not have.
    #[error("tool `{tool}`: no such tool; the tools are: {}", .available.join(", "))]
    UnknownTool {
        /// The name asked for.
        tool: String,
        /// The names there are, in the toolbox's order.
        available: Vec<String>,
    },

    /// A model loop (`ctx.execute` in `workflow-ai`) used all its turns
    /// without a final answer.
    #[error("model loop `{name}` used all {turns} turn(s) without a final answer")]
    MaxTurns {
        /// The loop's step name.
        name: String,
        /// The turn bound it hit.
        turns: u32,
        /// The conversation so far, instructions first
        /// (`workflow_ai::conversation` reads it back): to go on in
        /// another loop, or to ask for a summary.
        messages: Conversation,
    },

    /// A model loop's model stopped without an answer it can use: it
    /// refused, its reply was cut off at the token limit, the provider's
    /// content filter withheld it, or the conversation grew too long for
    /// the model's context window.
    #[error("model loop `{name}` got no answer: {reason}")]
    NoAnswer {
        /// The loop's step name.
        name: String,
        /// Why, with the model's refusal text if it gave one.
        reason: String,
        /// The conversation, the reply that was no answer last, as in
        /// [`Error::MaxTurns`].
        messages: Conversation,
    },

    /// A step failed for good: its attempts are used up, or its error was not retryable.
    #[error(
        "step `{step}` of workflow `{workflow}` failed after {attempts} attempt(s): {message}"
    )]
    Step {
        /// The workflow's name.
        workflow: String,
        /// The step's key (`name`, or `name#n` for the n-th repeat).
        step: String,
        /// How many attempts ran.
        attempts: u32,
        /// The last attempt's error chain, or the panic message.
        message: String,
    },

    /// A step name is empty or contains a character the engine reserves for
    /// the keys it derives from names (see
    /// [`RESERVED_STEP_CHARS`](crate::RESERVED_STEP_CHARS)). Returned by
    /// every `ctx` method that takes a step name, before anything runs or is
    /// recorded; propagated with `?`, it fails the instance with this message.
    #[error("{}", describe_step_name(.workflow, .name, *.reserved))]
    InvalidStepName {
        /// The workflow's name.
        workflow: String,
        /// The name as given.
        name: String,
        /// The first reserved character in it (`'\0'` for a NUL, which not
        /// every store can record), or `None` if it is empty.
        reserved: Option<char>,
    },

    /// A `ctx` call that takes a name (`step`, `sleep`, `map`...) was made
    /// from inside the closure of another step. A step is recorded as one
    /// unit: once it is, its closure never runs again, so the calls made in
    /// it would vanish from replays and shift the keys of the steps after
    /// them; and each retry of the outer step would run them anew. Returned
    /// before anything runs or is recorded; the outer step fails at once,
    /// without retries. Make such calls in the handler's body; a step's
    /// closure may still use what takes no name (`ctx.state_mut()`,
    /// `ctx.tags()`, `ctx.data()`).
    #[error("step `{name}` of workflow `{workflow}` is called inside step `{outer}`; `ctx` calls belong in the handler's body, not inside a step's closure")]
    NestedStep {
        /// The workflow's name.
        workflow: String,
        /// The step whose closure made the call.
        outer: String,
        /// The name of the call.
        name: String,
    },

    /// The instance ended `Failed`; `message` is the recorded error.
    #[error("workflow `{workflow}` instance {id} failed: {message}")]
    Failed {
        /// The instance.
        id: InstanceId,
        /// Its workflow.
        workflow: String,
        /// The recorded error.
        message: String,
    },

    /// The instance ended in a terminal status other than `Completed` or `Failed`.
    #[error("workflow `{workflow}` instance {id} ended {status}")]
    Ended {
        /// The instance.
        id: InstanceId,
        /// Its workflow.
        workflow: String,
        /// `Cancelled` or `TimedOut`.
        status: Status,
    },

    /// A typed handle (`W::handle(&engine, id)`) names an instance of
    /// another workflow: its output and state are not `W`'s.
    #[error("workflow instance {id} is an instance of `{actual}`, not of `{expected}`")]
    WrongWorkflow {
        /// The instance.
        id: InstanceId,
        /// The handle's workflow.
        expected: String,
        /// The instance's workflow.
        actual: String,
    },

    /// An instance's stored output or state does not read as the typed
    /// handle's `Output` or `State`: it was written by a version of the
    /// workflow whose type differs (a field renamed or made required since).
    /// Asking again fails the same way; read it untyped
    /// ([`Engine::instance`](crate::Engine::instance)) or with the type it
    /// was written with.
    #[error("workflow instance {id}: the stored {what} does not match the {what} type of `{workflow}`: {message}")]
    WrongType {
        /// The instance.
        id: InstanceId,
        /// The workflow, as the handle names it.
        workflow: String,
        /// `"output"` or `"state"`.
        what: &'static str,
        /// Where it does not fit, and why (the field and the rule).
        message: String,
    },

    /// The instance had already ended, so the operation changed nothing.
    #[error("workflow instance {id} already ended ({status}); nothing changed")]
    AlreadyFinished {
        /// The instance.
        id: InstanceId,
        /// Its terminal status.
        status: Status,
    },

    /// An event key ([`Instance::send_event_once`](crate::Instance::send_event_once))
    /// is empty, longer than [`MAX_EVENT_KEY_BYTES`](crate::MAX_EVENT_KEY_BYTES),
    /// or contains a NUL character, which not every store can record.
    #[error(
        "event key {key:?} is not usable: a key must be non-empty, at most {} bytes long and contain no NUL character",
        crate::MAX_EVENT_KEY_BYTES
    )]
    InvalidEventKey {
        /// The key as given.
        key: String,
    },

    /// An event sent ([`Engine::send_event`](crate::Engine::send_event) and
    /// the like) has a name no `ctx.wait_for_event` can wait for: empty, or
    /// with a character reserved for the keys derived from step names (see
    /// [`RESERVED_STEP_CHARS`](crate::RESERVED_STEP_CHARS)) or a NUL. It is
    /// refused instead of kept for ever unread.
    #[error("{}", describe_event_name(name, *reserved))]
    InvalidEventName {
        /// The name as given.
        name: String,
        /// The character refused; `None` when the name is empty.
        reserved: Option<char>,
    },

    /// A step name or event name longer than
    /// [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES): not every store can index
    /// it. Returned before anything runs or is recorded.
    #[error(
        "{what} {:?} is {bytes} bytes long; at most {} are allowed, as every store indexes it",
        preview(name),
        crate::MAX_KEY_BYTES
    )]
    NameTooLong {
        /// What the name names: `"step name"` or `"event name"`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Its length in bytes.
        bytes: usize,
    },

    /// A dedup key or tag given to a start
    /// ([`StartOptions`](crate::StartOptions)) that not every store can
    /// index: longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), or with
    /// a NUL character, which PostgreSQL's text cannot hold. Nothing is
    /// created.
    #[error("{what} is not usable: {why}")]
    InvalidStartOption {
        /// Which option: `dedup key "..."`, `tag name "..."`,
        /// `value of tag "..."` or `timeout ...`.
        what: String,
        /// The rule it breaks.
        why: String,
    },

    /// `ctx.wait_for_event` gave up: no event came within its timeout.
    /// Match on it to take the timeout branch.
    #[error("no event `{event}` arrived within the timeout")]
    EventTimeout {
        /// The event name.
        event: String,
    },

    /// An event's payload does not fit the type the handler asked for.
    #[error("event `{event}` has a payload that does not fit: {message}")]
    EventPayload {
        /// The event name.
        event: String,
        /// The failing field and why.
        message: String,
    },

    /// A child awaited with `run_child` did not complete with an output:
    /// it failed, was cancelled or timed out. (An output the parent reads
    /// as another type than the child's own pauses the parent instead;
    /// one an earlier build noted as unread replays as this error, with
    /// `status` `Completed`.)
    #[error("child workflow `{workflow}` ({id}) {message}")]
    Child {
        /// The child's workflow name.
        workflow: String,
        /// The child instance.
        id: InstanceId,
        /// How it ended: `Failed`, `Cancelled`, `TimedOut`, or `Completed`
        /// with an output that does not fit.
        status: Status,
        /// How it ended, in words: `failed: ...`, `ended cancelled`,
        /// `ended timed_out`, `gave an output that does not fit: ...`.
        message: String,
    },

    /// Waiting for a result took longer than the caller allowed.
    #[error(
        "gave up waiting for workflow `{workflow}` instance {id} after {waited:?}: it is {status}{}",
        still_hint(*status)
    )]
    WaitTimeout {
        /// The instance.
        id: InstanceId,
        /// Its workflow.
        workflow: String,
        /// How long the caller waited.
        waited: Duration,
        /// Its status when the caller gave up: `Paused` ends only once
        /// resumed, and a `Pending` one may have no worker to take it.
        status: Status,
    },

    /// A value could not be turned into or read from JSON.
    // The serde error is in the message, so not also `source()`: error
    // reporters print the chain, and would print it twice.
    #[error("{context}: {error}")]
    Json {
        /// What was being (de)serialized, e.g. "output of step `charge` of workflow `processOrder`".
        context: String,
        /// The serde error, which names the field.
        error: serde_json::Error,
    },

    /// A step's output, a state snapshot, a workflow's output or input (a
    /// child's too) or an event's payload is larger than the engine
    /// records ([`EngineBuilder::max_payload_bytes`](crate::EngineBuilder::max_payload_bytes)).
    /// Not retried: the same value would be refused again. Inside a run
    /// (a step's output, the state, `ctx.complete`'s output) the instance
    /// has failed with it by the time the handler sees it.
    #[error(
        "{what} is {bytes} bytes of JSON, more than the {max} bytes a record may hold \
         (EngineBuilder::max_payload_bytes): keep large data outside the workflow (files, \
         object storage) and pass references"
    )]
    PayloadTooLarge {
        /// Which value, e.g. "output of step `export` of workflow `report`".
        what: String,
        /// Its size as JSON.
        bytes: usize,
        /// The engine's limit.
        max: usize,
    },

    /// The engine was configured wrongly.
    #[error("engine configuration: {0}")]
    Config(String),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The running handler must stop: returned from `ctx` methods when the
    /// instance was cancelled, suspended, lost its lease, the engine is
    /// shutting down, or it was ended from inside with
    /// `ctx.complete`/`ctx.fail` (see [`Interrupt`]). A timed-out handler
    /// never sees it: it is dropped at its next await. Propagate it with `?`; the engine
    /// records the outcome even when user code swallows it.
    #[error("workflow run interrupted: {0}")]
    Interrupted(Interrupt),
}

/// What kind of failure an [`Error`] is, for code that reacts to a kind
/// (an HTTP status, a retry, a log level) without naming every variant:
/// new variants will fall into one of these. As
/// [`std::io::ErrorKind`], it may gain kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The instance, workflow or tool asked for does not exist (or the
    /// instance was purged).
    NotFound,
    /// What was given is wrong, by a caller or by handler code: an input
    /// or arguments that do not fit their schema, a name or key the engine
    /// cannot take, a value too large or that does not read back from
    /// JSON, a handle of the wrong workflow, a step inside a step. Asking
    /// again the same way fails the same way.
    InvalidInput,
    /// The instance is in no state for it: it ended already.
    Conflict,
    /// A caller's wait gave up ([`Error::WaitTimeout`]); the instance
    /// runs on.
    Timeout,
    /// The workflow's own outcome: a step that failed for good, an
    /// instance that failed or ended without an output, an event that
    /// timed out or did not fit, a child that did not complete, a tool or
    /// model loop that gave no usable answer.
    Workflow,
    /// The running handler must stop ([`Error::Interrupted`]): propagate it.
    Interrupted,
    /// The store failed: a connection or the disk
    /// ([`StoreError::Backend`]), which often passes, a damaged row
    /// ([`StoreError::Corrupt`]), which does not, or the store itself
    /// until the process restarts ([`StoreError::Unusable`]).
    Store,
    /// The engine was configured wrongly, or a handler asked for data it
    /// was not given.
    Config,
}

impl std::fmt::Display for ErrorKind {
    /// In words, as a log field or a metric label: `not found`,
    /// `invalid input`, `conflict`, `timeout`, `workflow`, `interrupted`,
    /// `store`, `config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Workflow => "workflow",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Store => "store",
            ErrorKind::Config => "config",
        })
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) | Error::UnknownWorkflow(_) | Error::UnknownTool { .. } => {
                ErrorKind::NotFound
            }
            Error::InvalidInput { .. }
            | Error::InvalidArguments { .. }
            | Error::InvalidStepName { .. }
            | Error::NestedStep { .. }
            | Error::WrongWorkflow { .. }
            | Error::WrongType { .. }
            | Error::InvalidEventKey { .. }
            | Error::InvalidEventName { .. }
            | Error::NameTooLong { .. }
            | Error::InvalidStartOption { .. }
            | Error::Json { .. }
            | Error::PayloadTooLarge { .. } => ErrorKind::InvalidInput,
            Error::AlreadyFinished { .. } => ErrorKind::Conflict,
            Error::WaitTimeout { .. } => ErrorKind::Timeout,
            Error::Tool { .. }
            | Error::MaxTurns { .. }
            | Error::NoAnswer { .. }
            | Error::Step { .. }
            | Error::Failed { .. }
            | Error::Ended { .. }
            | Error::EventTimeout { .. }
            | Error::EventPayload { .. }
            | Error::Child { .. } => ErrorKind::Workflow,
            Error::Interrupted(_) => ErrorKind::Interrupted,
            Error::Store(_) => ErrorKind::Store,
            Error::Config(_) => ErrorKind::Config,
        }
    }
}

/// What a status an awaited instance is still in says to its caller.
fn still_hint(status: Status) -> &'static str {
    match status {
        Status::Paused => " (it ends only once resumed; its history says why it paused)",
        Status::Pending => " (is a worker running with its workflow registered?)",
        _ => "",
    }
}

/// `value` as JSON, and that JSON read back as what a replay will see.
/// A value JSON cannot hold (a NaN or infinite float is written as `null`)
/// is an error here, at once, not a failure found after a restart; so is
/// JSON longer than `max` bytes. `context` names the value in the error.
pub(crate) fn json_round_trip<T>(
    value: &T,
    max: usize,
    context: impl Fn() -> String,
) -> Result<(String, T)>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_string(value).map_err(|error| Error::Json {
        context: context(),
        error,
    })?;
    within(&json, max, &context)?;
    let back = serde_json::from_str(&json).map_err(|error| {
        // Read again for the spot, as the value failed already; a value of
        // the wrong shape loses serde's line and column, which point into
        // JSON the caller never saw (a custom error carries none).
        let (path, message) = match crate::workflow::decode_at::<T>(&json) {
            Err(failure) => failure,
            Ok(_) => (None, error.to_string()),
        };
        let at = path.map(|path| format!(" at {path}")).unwrap_or_default();
        let error = match error.classify() {
            serde_json::error::Category::Data => {
                let hint = null_hint(&message);
                <serde_json::Error as serde::de::Error>::custom(format!("{message}{hint}"))
            }
            _ => error,
        };
        Error::Json {
            // Its start only: the value may be megabytes, and this message
            // is recorded as the instance's error.
            context: format!(
                "{} does not read back from JSON as {}{at}",
                context(),
                excerpt(&json, 200)
            ),
            error,
        }
    })?;
    Ok((json, back))
}

/// What to add to serde's message when a value read back from the JSON it
/// was written as met a `null` it did not write: serde_json writes a NaN or
/// infinite float (an `f32` past its range is one) as `null`, silently.
fn null_hint(message: &str) -> &'static str {
    if message.starts_with("invalid type: null") {
        " (JSON has no NaN or infinity: serde_json writes a float that is one as null)"
    } else {
        ""
    }
}

/// `json` if it takes at most `max` bytes, else [`Error::PayloadTooLarge`]
/// naming it by `context`.
pub(crate) fn within(json: &str, max: usize, context: impl Fn() -> String) -> Result<()> {
    if json.len() > max {
        return Err(Error::PayloadTooLarge {
            what: context(),
            bytes: json.len(),
            max,
        });
    }
    Ok(())
}

/// The start of a long name, for a message.
pub(crate) fn preview(name: &str) -> String {
    excerpt(name, 40)
}

/// An error's text as a log event carries it: its first 1,000 characters
/// (an error chain may hold a whole response body; the history and the
/// instance keep up to [`MAX_ERROR_BYTES`](crate::MAX_ERROR_BYTES) of it).
pub(crate) fn logged(text: &str) -> String {
    excerpt(text, 1_000)
}

/// An error's text as the store records it: at most
/// [`MAX_ERROR_BYTES`](crate::MAX_ERROR_BYTES), the rest counted.
pub(crate) fn stored(mut text: String) -> String {
    if text.len() <= crate::MAX_ERROR_BYTES {
        return text;
    }
    // Text cut once already (a step's error, in the instance's error that
    // quotes it): its note is taken off and its count carried over.
    let mut earlier = 0;
    if let Some(open) = text.strip_suffix(CUT_END).and_then(|t| t.rfind(CUT_START)) {
        let count = &text[open + CUT_START.len()..text.len() - CUT_END.len()];
        if let Ok(count) = count.parse::<usize>() {
            earlier = count;
            text.truncate(open);
        }
    }
    // Room for the note, so the whole stays within the limit.
    let kept = text.floor_char_boundary(crate::MAX_ERROR_BYTES - 64);
    let cut = text.len() - kept + earlier;
    text.truncate(kept);
    text.push_str(&format!("{CUT_START}{cut}{CUT_END}"));
    text
}

/// How [`stored`] says how much it cut: `… [N bytes cut]`.
const CUT_START: &str = "… [";
const CUT_END: &str = " bytes cut]";

/// The first `chars` characters of `text`, marked `…` when cut.
fn excerpt(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// [`Error::NameTooLong`] for a name over [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES).
pub(crate) fn check_length(what: &'static str, name: &str) -> Result<()> {
    if name.len() > crate::MAX_KEY_BYTES {
        return Err(Error::NameTooLong {
            what,
            name: name.to_owned(),
            bytes: name.len(),
        });
    }
    Ok(())
}

/// Why a dedup key, tag name or tag value cannot be stored, if it cannot.
pub fn unusable_key(text: &str) -> Option<String> {
    if text.len() > crate::MAX_KEY_BYTES {
        Some(format!(
            "it is {} bytes long; at most {} are allowed, as every store indexes it",
            text.len(),
            crate::MAX_KEY_BYTES
        ))
    } else if text.contains('\0') {
        Some("it contains a NUL character, which not every store can hold".to_owned())
    } else {
        None
    }
}

fn describe_event_name(name: &str, reserved: Option<char>) -> String {
    match reserved {
        None => "event name is empty: no wait can name it".to_owned(),
        Some('\0') => format!("event name {name:?} contains a NUL character: no wait can name it"),
        Some(c) => format!(
            "event name {name:?} contains `{c}`, which wait names may not contain ({}): no wait can name it",
            workflow_rules::step_name::reserved_list()
        ),
    }
}

fn describe_step_name(workflow: &str, name: &str, reserved: Option<char>) -> String {
    match reserved {
        None => format!("invalid step name in workflow `{workflow}`: it is empty"),
        Some('\0') => format!(
            "invalid step name {name:?} in workflow `{workflow}`: it contains a NUL character, \
             which not every store can record"
        ),
        Some(c) => format!(
            "invalid step name `{name}` in workflow `{workflow}`: it contains `{c}`, which \
             the engine reserves for the keys it derives from step names (`name#1` for a \
             repeated name, `name@timeout`, `name[0]`); a step name may not contain {}",
            workflow_rules::step_name::reserved_list()
        ),
    }
}

/// Why a running handler has to stop. See [`Error::Interrupted`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interrupt {
    /// Another worker owns the instance now (this worker's lease expired).
    LeaseLost,
    /// The engine is shutting down; the instance will resume elsewhere.
    Shutdown,
    /// The instance was cancelled.
    Cancelled,
    /// The instance waits (sleep, event, child, long retry backoff, pause)
    /// and gives its worker back; it resumes by replay when due.
    Suspended,
    /// `ctx.complete(..)` was called.
    Completed,
    /// `ctx.fail(reason)` was called.
    Failed(String),
    /// The store failed under the handler; the instance resumes later.
    Store(String),
    /// The run is over: its handler returned, or its deadline passed. What
    /// a task it spawned asks of `ctx` after that is refused, before any
    /// step runs.
    Ended,
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupt::LeaseLost => f.write_str("lease lost to another worker"),
            Interrupt::Shutdown => f.write_str("engine shutting down"),
            Interrupt::Cancelled => f.write_str("cancelled"),
            Interrupt::Suspended => f.write_str("suspended until due"),
            Interrupt::Completed => f.write_str("completed early by ctx.complete"),
            Interrupt::Failed(reason) => write!(f, "failed by ctx.fail: {reason}"),
            Interrupt::Store(message) => write!(f, "store unavailable: {message}"),
            Interrupt::Ended => f.write_str("the run already ended"),
        }
    }
}

/// Errors from a [`Store`](crate::store::Store) backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database driver failed (connection, I/O, SQL). The driver's
    /// error, with its own causes, is in the message, so not also
    /// `source()` (reporters that print the chain would print it twice).
    /// It is the field, or, where the store says what it was doing
    /// ([`StoreError::context`]: opening a database), in the field's
    /// `source()` chain: downcast it from there (`sqlx::Error`,
    /// `std::io::Error`...).
    #[error("store: {}", error_chain(&**.0))]
    Backend(BoxError),
    /// A row could not be decoded; only that instance is affected.
    #[error("store: corrupt row for instance {id}: {message}")]
    Corrupt {
        /// The instance whose row is corrupt.
        id: InstanceId,
        /// What was wrong with it.
        message: String,
    },
    /// The caller's lease on the instance is gone: another worker owns it, or it ended.
    #[error("store: lease lost on instance {0}")]
    LeaseLost(InstanceId),
    /// The store can no longer keep what it is given, and refuses every
    /// write until it is opened again: SQLite after a failed fsync (a
    /// writeback error Linux reports once; a retried fsync may lie; the
    /// fresh open recovers from the WAL), or after a newer build migrated
    /// the file under it (the process must run that build). A worker that
    /// meets it stops, and [`Engine::run`](crate::Engine::run) returns it,
    /// so that the process exits and is restarted.
    #[error("store: unusable (restart the process): {0}")]
    Unusable(String),
    /// A `TimedOut` finish came after the instance's deadline was moved past
    /// its time (`set_timeout` raced the timeout): nothing changed, and the
    /// lease is still held, so the run can be released to go on.
    #[error("store: the deadline of instance {0} moved past the timeout")]
    DeadlineMoved(InstanceId),
}

/// A model loop's messages, as `workflow_ai` writes them in JSON, carried
/// by [`Error::MaxTurns`] and [`Error::NoAnswer`]. Its `Debug` shows how
/// many there are, not what they say: an error logged with `{:?}` would
/// otherwise print every tool reply.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Conversation(pub Vec<serde_json::Value>);

impl Conversation {
    /// The messages, oldest first.
    pub fn messages(&self) -> &[serde_json::Value] {
        &self.0
    }
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conversation({} messages)", self.0.len())
    }
}

impl StoreError {
    /// Wraps a driver error.
    pub fn backend(err: impl Into<BoxError>) -> Self {
        StoreError::Backend(err.into())
    }

    /// Wraps a driver error under what the store was doing: the message
    /// reads `store: {what}: {err}`, and `err` stays the field's
    /// `source()`, for callers to downcast.
    pub fn context(what: impl Into<String>, err: impl Into<BoxError>) -> Self {
        StoreError::Backend(Box::new(Context {
            what: what.into(),
            source: err.into(),
        }))
    }
}

/// What a store was doing when its driver failed ([`StoreError::context`]).
#[derive(Debug)]
struct Context {
    what: String,
    source: BoxError,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The errors of type `E` in `err`'s `source()` chain, `err` first.
pub(crate) fn causes<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a E> {
    std::iter::successors(Some(err), |e| e.source()).filter_map(|e| e.downcast_ref::<E>())
}

/// Renders an error and its `source()` chain as `outer: inner: root`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Other crates' errors often print their cause and return it from
        // `source()` too (thiserror's `{0}` beside `#[source]`).
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text cut twice (a step's error, then the instance's that quotes
    /// it) says how much was cut in all, and stays within the limit.
    #[test]
    fn text_cut_twice_counts_every_byte_cut() {
        let long = "é".repeat(100_000); // 200,000 bytes
        let once = stored(long.clone());
        assert!(once.len() <= crate::MAX_ERROR_BYTES);
        let removed_once = long.len() - once.rfind(CUT_START).unwrap();
        assert!(
            once.ends_with(&format!("[{removed_once} bytes cut]")),
            "{}",
            &once[once.len() - 40..]
        );
        // A prefix longer than the room the first cut left.
        let prefix = format!("step `{}` failed after 1 attempt(s): ", "s".repeat(100));
        let quoted = format!("{prefix}{once}");
        assert!(quoted.len() > crate::MAX_ERROR_BYTES);
        let twice = stored(quoted.clone());
        assert!(twice.len() <= crate::MAX_ERROR_BYTES);
        let original = prefix.len() + long.len();
        let removed = original - twice.rfind(CUT_START).unwrap();
        assert!(
            twice.ends_with(&format!("[{removed} bytes cut]")),
            "{}",
            &twice[twice.len() - 40..]
        );
        assert_eq!(stored(twice.clone()), twice, "within the limit: left alone");
    }

    /// A driver's error shows with its causes: a connection refused under
    /// a failed pool checkout is not lost.
    #[test]
    fn a_backend_error_shows_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("pool timed out")]
        struct Outer(#[source] std::io::Error);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = StoreError::backend(Outer(refused));
        assert_eq!(err.to_string(), "store: pool timed out: refused");
    }

    /// Each kind of error has its kind.
    #[test]
    fn errors_tell_their_kind() {
        let id = InstanceId::from("i");
        assert_eq!(Error::NotFound(id.clone()).kind(), ErrorKind::NotFound);
        assert_eq!(
            Error::UnknownWorkflow("w".into()).kind(),
            ErrorKind::NotFound
        );
        let finished = Error::AlreadyFinished {
            id: id.clone(),
            status: Status::Completed,
        };
        assert_eq!(finished.kind(), ErrorKind::Conflict);
        let waited = Error::WaitTimeout {
            id: id.clone(),
            workflow: "w".into(),
            waited: Duration::from_secs(1),
            status: Status::Paused,
        };
        assert_eq!(waited.kind(), ErrorKind::Timeout);
        assert!(
            waited
                .to_string()
                .ends_with("after 1s: it is paused (it ends only once resumed; its history says why it paused)"),
            "{waited}"
        );
        let failed = Error::Failed {
            id: id.clone(),
            workflow: "processOrder".into(),
            message: "no".into(),
        };
        assert_eq!(failed.kind(), ErrorKind::Workflow);
        assert_eq!(
            failed.to_string(),
            format!("workflow `processOrder` instance {id} failed: no")
        );
        let store = Error::Store(StoreError::backend("down"));
        assert_eq!(store.kind(), ErrorKind::Store);
        assert_eq!(Error::Config("x".into()).kind(), ErrorKind::Config);
        let big = Error::PayloadTooLarge {
            what: "input".into(),
            bytes: 2,
            max: 1,
        };
        assert_eq!(big.kind(), ErrorKind::InvalidInput);
        assert_eq!(big.kind().to_string(), "invalid input");
        assert_eq!(ErrorKind::NotFound.to_string(), "not found");
    }

    /// An error whose message holds its cause does not also return it
    /// from `source()`: anyhow's `{:#}`, eyre and tracing print the chain.
    #[test]
    fn no_error_prints_its_cause_twice() {
        let errors = [
            Error::Store(StoreError::backend(std::io::Error::other("disk on fire"))),
            Error::Json {
                context: "input of workflow `w`".into(),
                error: serde_json::from_str::<u8>("\"x\"").unwrap_err(),
            },
        ];
        for err in &errors {
            let mut level: &(dyn std::error::Error + 'static) = err;
            while let Some(cause) = level.source() {
                let (outer, inner) = (level.to_string(), cause.to_string());
                assert!(
                    !outer.contains(&inner),
                    "`{outer}` and its source `{inner}`"
                );
                level = cause;
            }
        }
        assert_eq!(errors[0].to_string(), "store: disk on fire");
        assert!(
            errors[1].to_string().contains("invalid type: string"),
            "{}",
            errors[1]
        );
    }

    /// A value that does not read back is named with the start of its
    /// JSON, not all of it: the message becomes the instance's error.
    #[test]
    fn a_large_value_that_does_not_read_back_is_quoted_in_part() {
        let mut value = vec![1.5_f64; 100_000];
        value.push(f64::NAN);
        let err = json_round_trip(&value, usize::MAX, || "output of step `big`".into())
            .expect_err("NaN is written as null and does not read back");
        let text = err.to_string();
        assert!(
            text.starts_with("output of step `big` does not read back from JSON as [1.5,1.5"),
            "{text}"
        );
        assert!(text.contains('…'), "{text}");
        assert!(
            text.ends_with(
                "… at [100000]: invalid type: null, expected f64 (JSON has no NaN or \
                 infinity: serde_json writes a float that is one as null)"
            ),
            "{text}"
        );
        assert!(text.len() < 1_000, "{} bytes: {}", text.len(), &text[..100]);
    }
}
