//! Workflows (and plain async functions) as tools an AI model can call:
//! [`Tool`] with its provider renderings, [`Toolbox`] for one dispatch,
//! [`Engine::call_tool`], and [`Ctx::call_tool`] for durable calls from
//! inside a workflow.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::engine::Engine;
use crate::error::{causes, error_chain, BoxError, Error, Result};
use crate::id::InstanceId;
use crate::instance::StartOptions;
use crate::schema::schema_for;
use crate::status::Status;
use crate::step::{NonRetryable, StepOptions};
use crate::store::NewInstance;
use crate::tool_schema::{object_schema, strict_schema, strip_optional_nulls, Shape};
use crate::validate::{SchemaCheck, Violation};
use crate::workflow::Definition;

/// Reads the checked input of tool `tool` as `T`; a value `T` refuses is
/// [`Error::InvalidArguments`] at its path in the arguments as sent (the
/// input was taken out of `{"input": ..}` for a wrapped one, and the
/// model corrects what it sent).
fn decode_at<T: DeserializeOwned>(tool: &str, shape: Shape, input: Value) -> Result<T> {
    serde_path_to_error::deserialize(input).map_err(|err| Error::InvalidArguments {
        tool: tool.to_owned(),
        violations: vec![Violation::new(
            shape.args_path(&crate::validate::pointer(err.path())),
            crate::validate::DESERIALIZE,
            err.into_inner().to_string(),
        )],
    })
}

/// Whether `name` is a valid tool name for OpenAI and Anthropic:
/// `^[a-zA-Z0-9_-]{1,64}$`. `#[workflow]` checks workflow names at compile time.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

type ToolFn =
    Arc<dyn Fn(Value) -> BoxFuture<'static, std::result::Result<Value, BoxError>> + Send + Sync>;

#[derive(Clone)]
enum Target {
    /// Starts `workflow`; waits for its output up to the bound.
    Workflow {
        workflow: String,
        wait: Option<Duration>,
    },
    /// Calls the function with the decoded input.
    Function(ToolFn),
}

/// A tool an AI model can call: a workflow ([`Workflow::as_tool`](crate::Workflow::as_tool))
/// or an async function ([`Tool::function`]), with the JSON Schema of its
/// arguments.
///
/// Render it for a provider with [`Tool::to_openai`],
/// [`Tool::to_openai_strict`] or [`Tool::to_anthropic`]; call it with
/// [`Tool::call`], a [`Toolbox`], or durably inside a workflow with
/// [`Ctx::call_tool`]. The arguments are always an object: a tool whose
/// input is not one takes `{"input": ...}`, and one whose input is `()`
/// takes `{}`. A struct with a `#[serde(flatten)]` enum field is wrapped
/// in `{"input": ...}` too: its schema has the enum's `oneOf` beside its
/// properties, which providers refuse at the root (and strict mode cannot
/// express, so [`Tool::to_openai_strict`] sends it with `strict: false`).
#[derive(Clone)]
pub struct Tool {
    name: String,
    description: String,
    // Private, as `shape` and `check` follow from it.
    parameters: Value,
    shape: Shape,
    target: Target,
    check: Arc<OnceLock<SchemaCheck>>,
    /// The strict form of `parameters`, once asked for; `None` if it has
    /// none (said once, not at every model turn).
    strict: Arc<OnceLock<Option<Value>>>,
    /// `description` cut to OpenAI's limit, once asked for; `None` if it
    /// fits (a cut said once, not at every model turn).
    openai_description: Arc<OnceLock<Option<String>>>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.target {
            Target::Workflow { workflow, wait } => format!("workflow {workflow} (wait {wait:?})"),
            Target::Function(_) => "function".to_owned(),
        };
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl Tool {
    fn new(
        name: String,
        description: String,
        (parameters, shape): (Value, Shape),
        target: Target,
    ) -> Self {
        Tool {
            name,
            description,
            parameters,
            shape,
            target,
            check: Arc::new(OnceLock::new()),
            strict: Arc::new(OnceLock::new()),
            openai_description: Arc::new(OnceLock::new()),
        }
    }

    /// A tool that starts the workflow `definition` describes (registered
    /// here or recorded by another engine on the store).
    pub fn from_definition(definition: &Definition) -> Self {
        Self::workflow(
            &definition.name,
            &definition.description,
            definition.input_schema.clone(),
        )
    }

    /// A workflow tool from its parts; what [`Workflow::as_tool`](crate::Workflow::as_tool) calls.
    pub fn workflow(name: &str, description: &str, input_schema: Value) -> Self {
        if !is_valid_tool_name(name) {
            tracing::warn!(
                workflow = name,
                "workflow name is not a valid tool name (^[a-zA-Z0-9_-]{{1,64}}$); providers will reject it: give the tool another with Tool::rename"
            );
        }
        Self::new(
            name.to_owned(),
            description.to_owned(),
            object_schema(input_schema),
            Target::Workflow {
                workflow: name.to_owned(),
                wait: None,
            },
        )
    }

    /// A tool that runs `f` on the arguments decoded as `I`, whose
    /// schemars schema (doc comments included) is the tool's parameters.
    ///
    /// An error `f` returns is retried per the step policy when called
    /// through [`Ctx::call_tool`], unless marked [`permanent`](crate::permanent);
    /// after the last attempt the model is told the tool failed.
    ///
    /// Arguments the schema lets through but `I` refuses (a number too
    /// large for a `u32`) are [`Error::InvalidArguments`] at their path in
    /// the arguments as sent (`/input` for `{"input": 4294967296}`), as
    /// for a workflow tool; `f` is not called.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid tool name (`^[a-zA-Z0-9_-]{1,64}$`): tool
    /// names are fixed in code, and providers reject every request that
    /// carries a bad one.
    pub fn function<I, O, E, F, Fut>(name: &str, description: &str, f: F) -> Self
    where
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + Send + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    {
        assert!(
            is_valid_tool_name(name),
            "tool name `{name}` must match ^[a-zA-Z0-9_-]{{1,64}}$"
        );
        let (parameters, shape) = object_schema(schema_for::<I>());
        let f = Arc::new(f);
        let tool = name.to_owned();
        let call: ToolFn = Arc::new(move |value: Value| {
            let f = Arc::clone(&f);
            let tool = tool.clone();
            Box::pin(async move {
                let input: I = decode_at(&tool, shape, value)?;
                let output = f(input).await.map_err(Into::into)?;
                Ok(serde_json::to_value(output)?)
            })
        });
        Self::new(
            name.to_owned(),
            description.to_owned(),
            (parameters, shape),
            Target::Function(call),
        )
    }

    /// Overrides the description the model reads.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self.openai_description = Arc::new(OnceLock::new());
        self
    }

    /// What it does, for the model: the workflow's doc comment (or its
    /// `description = ".."`) or the function's description, unless
    /// [overridden](Tool::with_description).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The name the model calls it by: the workflow's or the function's,
    /// unless [renamed](Tool::rename).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives it another name for the model: a workflow tool still starts
    /// its workflow. For a workflow whose name is no valid tool name
    /// (`orders.create`), or two toolboxes that name one workflow
    /// differently.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid tool name (`^[a-zA-Z0-9_-]{1,64}$`), as
    /// [`Tool::function`].
    pub fn rename(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            is_valid_tool_name(&name),
            "tool name `{name}` must match ^[a-zA-Z0-9_-]{{1,64}}$"
        );
        self.name = name;
        self
    }

    /// JSON Schema (draft 2020-12) of the arguments, an object schema;
    /// doc comments on input fields are `description`s.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// For a workflow tool: wait up to `bound` for the workflow's output and
    /// return it; when the bound passes first, return
    /// `{"workflowId", "status"}` as without a wait. No effect on function tools.
    pub fn wait(mut self, bound: Duration) -> Self {
        if let Target::Workflow { wait, .. } = &mut self.target {
            *wait = Some(bound);
        }
        self
    }

    /// True if calling this tool starts a workflow.
    pub fn is_workflow(&self) -> bool {
        matches!(self.target, Target::Workflow { .. })
    }

    /// The parameters as sent to providers: without the `$schema` keyword,
    /// which they do not want.
    pub fn provider_parameters(&self) -> Value {
        let mut parameters = self.parameters.clone();
        if let Some(map) = parameters.as_object_mut() {
            map.remove("$schema");
        }
        parameters
    }

    /// The description as OpenAI takes it: at most
    /// [`OPENAI_MAX_DESCRIPTION`] characters.
    fn description_for_openai(&self) -> &str {
        let cut = self.openai_description.get_or_init(|| {
            let cut = shortened_description(&self.description, OPENAI_MAX_DESCRIPTION)?;
            tracing::warn!(
                tool = %self.name,
                chars = self.description.chars().count(),
                max = OPENAI_MAX_DESCRIPTION,
                "tool description too long for OpenAI; sending it cut"
            );
            Some(cut)
        });
        cut.as_deref().unwrap_or(&self.description)
    }

    /// OpenAI's function tool form:
    /// `{"type": "function", "function": {name, description, parameters, strict: false}}`.
    ///
    /// The description is cut to 1,024 characters, OpenAI's limit, at the
    /// end of a sentence or word where one is near, ending in `…` (with a
    /// warning, once per tool): a longer one fails every request that
    /// carries the tool (HTTP 400 `string_above_max_length`).
    /// [`Tool::description`] and [`Tool::to_anthropic`] keep it whole.
    pub fn to_openai(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description_for_openai(),
                "parameters": self.provider_parameters(),
                "strict": false,
            }
        })
    }

    /// OpenAI's function tool form with `strict: true` and the parameters
    /// in the strict subset (see [`strict_schema`](crate::strict_schema)):
    /// the model's arguments then always fit the schema. A schema strict
    /// mode cannot express (maps, `serde_json::Value` fields, a
    /// `#[serde(flatten)]` enum) falls back to
    /// [`Tool::to_openai`] with a warning (once per tool and its clones);
    /// the arguments are checked on
    /// every call either way. The description is cut as for
    /// [`Tool::to_openai`].
    pub fn to_openai_strict(&self) -> Value {
        let strict = self.strict.get_or_init(|| {
            strict_schema(&self.provider_parameters())
                .inspect_err(|problems| {
                    tracing::warn!(tool = %self.name, problems = %problems.join("; "), "no strict form; sending the tool with strict: false");
                })
                .ok()
        });
        match strict {
            Some(parameters) => json!({
                "type": "function",
                "function": {
                    "name": self.name,
                    "description": self.description_for_openai(),
                    "parameters": parameters,
                    "strict": true,
                }
            }),
            None => self.to_openai(),
        }
    }

    /// Anthropic's tool form: `{name, description, input_schema}`.
    pub fn to_anthropic(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "input_schema": self.provider_parameters(),
        })
    }

    /// Checks model-sent arguments and returns the input behind them:
    /// `null`s of optional fields dropped (strict mode sends them for
    /// "absent"), so such a field gets its serde default as when it is
    /// missing (`None`, or what `#[serde(default = ..)]` gives: a `null`
    /// cannot mean "clear" here), every schema violation reported with its
    /// path in the arguments as sent.
    pub fn check_arguments(&self, mut args: Value) -> Result<Value> {
        strip_optional_nulls(&self.parameters, &mut args);
        let check = self
            .check
            .get_or_init(|| SchemaCheck::new(&self.parameters));
        let _: Value = check
            .check(&args)
            .map_err(|violations| Error::InvalidArguments {
                tool: self.name.clone(),
                violations,
            })?;
        Ok(self.shape.unwrap(args))
    }

    /// [`check_arguments`](Self::check_arguments), then reads the input as
    /// `T`: a value the schema lets through but `T` refuses (a date that
    /// does not parse, a number too large for a `u32`) is
    /// [`Error::InvalidArguments`] too, at its path in the arguments as
    /// sent with the rule `deserialize`, for a model to correct.
    pub fn decode_arguments<T: DeserializeOwned>(&self, args: Value) -> Result<T> {
        let input = self.check_arguments(args)?;
        decode_at(&self.name, self.shape, input)
    }

    /// Calls the tool from outside any workflow. A workflow tool starts an
    /// instance and returns `{"workflowId", "status"}` at once, or, with
    /// [`Tool::wait`], its output (or the id and status when the bound
    /// passes; [`Error::Failed`]/[`Error::Ended`] if it ends otherwise).
    /// Bad arguments give [`Error::InvalidArguments`].
    pub async fn call(&self, engine: &Engine, args: Value) -> Result<Value> {
        self.call_keyed(engine, args, None).await
    }

    /// [`Tool::call`] at most once per `key` for a workflow tool: the model
    /// provider's tool-call id, say. A call repeated with the same key (a
    /// request handler retried, an agent loop of your own replayed) finds
    /// the instance the first one started, whatever its status (running,
    /// or already completed: the output is answered again), instead of
    /// starting another; only once that instance is purged does the key
    /// start a new one. Unlike [`Engine::get_or_start_json`], which
    /// matches active instances only, a tool-call id names one call for
    /// good: a key found with other arguments is an [`Error::Tool`], not
    /// the first call's answer (a tool-call id is unique within one
    /// conversation at best, so prefix the conversation's id). The
    /// arguments are compared as sent and as the input type writes them:
    /// an input type whose serialization varies from one reading to the
    /// next (a `HashSet`, a default drawn at random) can see a retry
    /// refused. A function tool runs each time.
    pub async fn call_once(
        &self,
        engine: &Engine,
        args: Value,
        key: impl Into<String>,
    ) -> Result<Value> {
        self.call_keyed(engine, args, Some(key.into())).await
    }

    async fn call_keyed(&self, engine: &Engine, args: Value, key: Option<String>) -> Result<Value> {
        let input = self.check_arguments(args)?;
        match &self.target {
            Target::Function(f) => f(input).await.map_err(|err| self.function_error(err)),
            Target::Workflow { workflow, wait } => {
                let sent = key.is_some().then(|| input.clone());
                let started = match &key {
                    // Whatever its status: a call retried after the first
                    // one's instance completed answers from that instance,
                    // not from a second order.
                    Some(key) => {
                        engine
                            .create_json(
                                workflow,
                                input,
                                StartOptions::default().key(key.clone()),
                                Some(Status::ALL.to_vec()),
                            )
                            .await
                    }
                    None => engine
                        .start_json(workflow, input, StartOptions::default())
                        .await
                        .map(|id| (id, true)),
                };
                let (id, created) = started.map_err(|err| self.start_error(err))?;
                // Found, not started: it may have run, or ended, already.
                let status = if created {
                    Status::Pending
                } else {
                    let found = engine.instance(&id).await?;
                    // A retry sends what the first call sent. Other
                    // arguments under the key are another call (ids a
                    // provider repeats across conversations, `call_0`):
                    // answered from the first, it would never happen.
                    if let (Some(sent), Some(key)) = (sent, &key) {
                        // Stored as sent (an engine that only knows the
                        // definition) or through the input's type (one
                        // that registers it): either is this call's.
                        let typed = engine
                            .checked_input(workflow, &sent)
                            .await
                            .ok()
                            .and_then(|(json, _)| serde_json::from_str::<Value>(&json).ok());
                        let same = without_nulls(&found.input) == without_nulls(&sent)
                            || typed.as_ref() == Some(&found.input);
                        if !same {
                            return Err(Error::Tool {
                                tool: self.name.clone(),
                                message: format!(
                                    "call key `{key}` was used by an earlier call with other \
                                     arguments (instance {id}); a key names one call: make it \
                                     unique across conversations (prefix the conversation's or \
                                     the run's id)"
                                ),
                            });
                        }
                    }
                    found.status
                };
                workflow_outcome(engine, &id, status, *wait).await
            }
        }
    }

    /// An input this workflow tool's schema let through but its type
    /// refused (a number too large for a `u32`): bad arguments all the
    /// same, reported at their path in the arguments as sent.
    fn start_error(&self, err: Error) -> Error {
        match err {
            Error::InvalidInput {
                workflow,
                violations,
            } if matches!(&self.target, Target::Workflow { workflow: w, .. } if *w == workflow) => {
                Error::InvalidArguments {
                    tool: self.name.clone(),
                    violations: violations
                        .into_iter()
                        .map(|v| Violation {
                            path: self.shape.args_path(&v.path),
                            ..v
                        })
                        .collect(),
                }
            }
            other => other,
        }
    }

    fn function_error(&self, err: BoxError) -> Error {
        match err.downcast::<Error>() {
            Ok(err) => *err,
            Err(err) => Error::Tool {
                tool: self.name.clone(),
                message: error_chain(&*err),
            },
        }
    }
}

/// The most characters of a tool description OpenAI takes.
const OPENAI_MAX_DESCRIPTION: usize = 1024;

/// `text` cut to at most `max` characters, `…` included, or `None` if it
/// fits. Cut after the last sentence, or else the last word, that keeps
/// at least half of what fits, so the model reads no word cut in two;
/// failing both (one long word), at a character boundary.
fn shortened_description(text: &str, max: usize) -> Option<String> {
    if text.chars().count() <= max {
        return None;
    }
    // Room for the `…`.
    let end = text
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(text.len(), |(at, _)| at);
    let head = &text[..end];
    let half = head.len() / 2;
    let mut chars = head.char_indices().peekable();
    let mut sentence = None;
    while let Some((at, c)) = chars.next() {
        let ends = matches!(c, '.' | '!' | '?')
            && chars.peek().is_some_and(|(_, next)| next.is_whitespace());
        if ends && at >= half {
            sentence = Some(at + c.len_utf8());
        }
    }
    let word = head
        .char_indices()
        .rfind(|(at, c)| c.is_whitespace() && *at >= half)
        .map(|(at, _)| at);
    let kept = match sentence.or(word) {
        Some(at) => head[..at].trim_end(),
        None => head,
    };
    Some(format!("{kept}…"))
}

/// `value` without the object fields that are `null`: a field left out
/// and one sent as `null` read alike (an `Option`), and an engine that
/// registers the workflow stores its input with them written out.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// `{"workflowId", "status"}`: what a workflow tool returns when it does not wait.
fn started(id: &InstanceId, status: Status) -> Value {
    json!({"workflowId": id, "status": status})
}

/// The output of a completed instance, or its id and status if it is still
/// running when the wait is over, or when it could not be read.
async fn workflow_outcome(
    engine: &Engine,
    id: &InstanceId,
    status: Status,
    wait: Option<Duration>,
) -> Result<Value> {
    let Some(bound) = wait else {
        return Ok(started(id, status));
    };
    match waited_outcome(engine, id, bound).await {
        // The instance exists: an error here would read as "the call
        // failed", and the caller (a model) would start a second one.
        Err(err) if !is_for_the_model(&err) => {
            tracing::warn!(%id, error = %err, "could not wait for a tool's workflow; answering with its id");
            Ok(started(id, status))
        }
        outcome => outcome,
    }
}

async fn waited_outcome(engine: &Engine, id: &InstanceId, bound: Duration) -> Result<Value> {
    let info = match engine.wait_terminal(id, Some(bound)).await {
        Ok(_) => engine.instance(id).await?,
        Err(Error::WaitTimeout { .. }) => {
            let info = engine.instance(id).await?;
            return Ok(started(id, info.status));
        }
        Err(err) => return Err(err),
    };
    match info.status {
        Status::Completed => Ok(info.output.unwrap_or(Value::Null)),
        Status::Failed => Err(Error::Failed {
            id: id.clone(),
            workflow: info.workflow,
            message: info.error.unwrap_or_default(),
        }),
        status => Err(Error::Ended {
            id: id.clone(),
            workflow: info.workflow,
            status,
        }),
    }
}

/// What a tool call gives back to a model: the result, or an error it can
/// read and act on (correct its arguments, try something else). What
/// [`Ctx::call_tool`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToolReply {
    /// True if the call failed; `content` then says why.
    pub is_error: bool,
    /// The tool's result, or the error message.
    pub content: Value,
}

impl ToolReply {
    /// A successful result.
    pub fn ok(content: Value) -> Self {
        ToolReply {
            is_error: false,
            content,
        }
    }

    /// An error message for the model.
    pub fn error(message: impl Into<String>) -> Self {
        ToolReply {
            is_error: true,
            content: Value::String(message.into()),
        }
    }

    /// The error in words a model can correct its call from: for bad
    /// arguments, one line per violation with its JSON path.
    pub fn from_error(err: &Error) -> Self {
        match err {
            Error::InvalidArguments { tool, violations } => {
                let mut text = format!("Invalid arguments for tool `{tool}`:\n");
                for violation in violations {
                    text.push_str(&format!("- {violation}\n"));
                }
                text.push_str(
                    "Call the tool again with arguments that fix every problem listed above.",
                );
                Self::error(text)
            }
            other => Self::error(format!("Error: {}", error_chain(other))),
        }
    }

    /// The content as text for a chat message: strings as they are, other
    /// values as JSON.
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// Workflow tools and function tools under one dispatch: build it once,
/// render [`Toolbox::tools`] for the model, and route its calls with
/// [`Toolbox::call`] (or durably, [`Ctx::call_tool`]).
///
/// ```no_run
/// # use workflow_core::{Toolbox, Tool, Engine, BoxError};
/// # use schemars::JsonSchema; use serde::Deserialize;
/// #[derive(Deserialize, JsonSchema)]
/// struct Lookup {
///     /// The customer's e-mail address.
///     email: String,
/// }
/// # async fn run(engine: Engine, tool: Tool) -> workflow_core::Result<()> {
/// let toolbox = Toolbox::new()
///     .tool(tool) // e.g. `ProcessOrder::as_tool().wait(Duration::from_secs(30))`
///     .function("lookup_customer", "Find a customer by e-mail", |q: Lookup| async move {
///         Ok::<_, BoxError>(format!("customer {}", q.email))
///     });
/// let reply = toolbox
///     .call(&engine, "lookup_customer", serde_json::json!({"email": "a@b.c"}))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Toolbox {
    tools: Vec<Tool>,
}

/// A toolbox of these tools; of two with one name, the later one stays.
impl FromIterator<Tool> for Toolbox {
    fn from_iter<I: IntoIterator<Item = Tool>>(tools: I) -> Self {
        let mut toolbox = Toolbox::new();
        toolbox.extend(tools);
        toolbox
    }
}

/// `Execute::new(..).tools([ProcessOrder::as_tool(), Refund::as_tool()])`.
impl<const N: usize> From<[Tool; N]> for Toolbox {
    fn from(tools: [Tool; N]) -> Self {
        tools.into_iter().collect()
    }
}

/// A toolbox of these tools; of two with one name, the later one stays.
impl From<Vec<Tool>> for Toolbox {
    fn from(tools: Vec<Tool>) -> Self {
        tools.into_iter().collect()
    }
}

/// Adds each tool as [`Toolbox::tool`] does.
impl Extend<Tool> for Toolbox {
    fn extend<I: IntoIterator<Item = Tool>>(&mut self, tools: I) {
        for tool in tools {
            match self.tools.iter_mut().find(|t| t.name == tool.name) {
                Some(same) => *same = tool,
                None => self.tools.push(tool),
            }
        }
    }
}

impl Toolbox {
    /// An empty toolbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; one with the same name is replaced, in its place.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.extend([tool]);
        self
    }

    /// Adds workflow `W` as a tool that starts it and returns at once.
    pub fn workflow<W: crate::Workflow>(self) -> Self {
        self.tool(W::as_tool())
    }

    /// Adds a function tool; see [`Tool::function`].
    ///
    /// # Panics
    ///
    /// If `name` is not a valid tool name.
    pub fn function<I, O, E, F, Fut>(self, name: &str, description: &str, f: F) -> Self
    where
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + Send + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    {
        self.tool(Tool::function(name, description, f))
    }

    /// The tools, in the order added.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// True if it holds no tool.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Calls the tool named `name` from outside a workflow; see [`Tool::call`].
    /// An unknown name is [`Error::UnknownTool`], listing the tools there are.
    pub async fn call(&self, engine: &Engine, name: &str, args: Value) -> Result<Value> {
        self.lookup(name)?.call(engine, args).await
    }

    /// [`Toolbox::call`] at most once per `key`; see [`Tool::call_once`].
    pub async fn call_once(
        &self,
        engine: &Engine,
        name: &str,
        args: Value,
        key: impl Into<String>,
    ) -> Result<Value> {
        self.lookup(name)?.call_once(engine, args, key).await
    }

    fn lookup(&self, name: &str) -> Result<&Tool> {
        self.get(name).ok_or_else(|| Error::UnknownTool {
            tool: name.to_owned(),
            available: self.tools.iter().map(|t| t.name.clone()).collect(),
        })
    }
}

impl Engine {
    /// A tool for the workflow `name`, registered here or recorded in the
    /// store by another engine.
    pub async fn tool(&self, name: &str) -> Result<Tool> {
        if let Some(def) = self.inner.workflows.get(name) {
            return Ok(Tool::from_definition(&def.definition()));
        }
        let recorded = self.inner.store.definitions().await?;
        recorded
            .iter()
            .find(|d| d.name == name)
            .map(Tool::from_definition)
            .ok_or_else(|| Error::UnknownWorkflow(name.to_owned()))
    }

    /// Tools for every workflow known here: registered with this engine or
    /// recorded in the store by others, by name.
    pub async fn tools(&self) -> Result<Vec<Tool>> {
        let mut definitions = self.workflows();
        for recorded in self.inner.store.definitions().await? {
            if !definitions.iter().any(|d| d.name == recorded.name) {
                definitions.push(recorded);
            }
        }
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(definitions.iter().map(Tool::from_definition).collect())
    }

    /// Calls the workflow `name` as a tool: checks `args` against its input
    /// schema (every violation, with its JSON path, in
    /// [`Error::InvalidArguments`]; [`ToolReply::from_error`] words it for
    /// a model), starts it, and returns `{"workflowId", "status"}` at once.
    /// For a variant that waits for the output, call
    /// `W::as_tool().wait(bound)` through [`Tool::call`] or a [`Toolbox`].
    ///
    /// Any workflow the store knows can be started this way, not only the
    /// ones offered to a model: when the model chooses `name`, call through
    /// the [`Toolbox`] of the tools it was given, which refuses the others.
    pub async fn call_tool(&self, name: &str, args: Value) -> Result<Value> {
        self.tool(name).await?.call(self, args).await
    }

    /// Starts workflow `name` as a child of `parent`, once per `key` whatever
    /// the statuses: a retried or replayed step finds the child it started.
    async fn start_child_json(
        &self,
        name: &str,
        input: &Value,
        parent: &InstanceId,
        key: &str,
    ) -> Result<(InstanceId, Status)> {
        let (input, timeout) = self.checked_input(name, input).await?;
        let now = self.inner.now();
        let new = NewInstance {
            id: InstanceId::at(now),
            workflow: name.to_owned(),
            input,
            tags: Default::default(),
            key: Some(key.to_owned()),
            created_at: now,
            run_at: now,
            deadline_at: Some(crate::store::millis_after(now, timeout)),
            parent: Some(parent.clone()),
        };
        let row = self
            .inner
            .store
            .create(new, Some(&Status::ALL))
            .await?
            .into_row();
        self.inner.wake.notify_one();
        Ok((row.id, row.status))
    }
}

/// Errors a tool call answers the model with instead of retrying.
fn is_for_the_model(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidArguments { .. }
            | Error::InvalidInput { .. }
            | Error::UnknownWorkflow(_)
            | Error::Tool { .. }
            | Error::UnknownTool { .. }
            | Error::Failed { .. }
            | Error::Ended { .. }
    )
}

impl<S> Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    /// Calls `tool` of `toolbox` with a model's `args` as one durable step
    /// named `name` (the workflow's default retry policy), and returns what
    /// to tell the model. See [`Ctx::call_tool_with`].
    /// `name` follows the step-name rule of [`Ctx::step`].
    pub async fn call_tool(
        &self,
        name: &str,
        toolbox: &Toolbox,
        tool: &str,
        args: Value,
    ) -> Result<ToolReply> {
        let opts = self.run().default_step;
        self.call_tool_with(name, opts, toolbox, tool, args).await
    }

    /// Calls `tool` of `toolbox` with a model's `args` as one durable step
    /// named `name`: on replay the recorded reply comes back without
    /// calling anything.
    ///
    /// A workflow tool starts the workflow by name as a child of this
    /// instance, exactly once across retries, replays and crashes (keyed
    /// by this step), so cancelling this instance cancels it; with
    /// [`Tool::wait`] the step also waits (in memory, holding this worker
    /// slot) up to the bound for its output. A function tool runs inside
    /// the step: its errors are retried per `opts` unless
    /// [`permanent`](crate::permanent).
    ///
    /// Bad arguments, an unknown tool, a failed child or a tool that fails
    /// for good are not errors here: they come back as a [`ToolReply`]
    /// with `is_error` set, worded for the model to correct itself from.
    /// `Err` is left for what must stop the handler (interrupts), and for
    /// a `name` that breaks the step-name rule of [`Ctx::step`]
    /// ([`Error::InvalidStepName`]). A workflow tool whose workflow no
    /// engine runs yet pauses the instance, as [`Ctx::start_child`] does:
    /// deploy an engine that registers it, then resume.
    pub async fn call_tool_with(
        &self,
        name: &str,
        opts: StepOptions,
        toolbox: &Toolbox,
        tool: &str,
        args: Value,
    ) -> Result<ToolReply> {
        let run = self.run();
        run.check()?;
        let (key, _) = run.next_key(name)?;
        let engine = run.engine.clone();
        let child_key = format!("{}/{key}", run.id);
        let parent = run.id.clone();
        let (engine, child_key, parent, args) = (&engine, &child_key, &parent, &args);
        let outcome = self
            .step_keyed(key, opts, || async move {
                let answer = match toolbox.lookup(tool) {
                    Err(err) => Err(err),
                    Ok(t) => match t.check_arguments(args.clone()) {
                        Err(err) => Err(err),
                        Ok(input) => match &t.target {
                            Target::Function(f) => match f(input).await {
                                Ok(value) => Ok(value),
                                Err(err) if causes::<NonRetryable>(&*err).next().is_some() => {
                                    Err(Error::Tool {
                                        tool: t.name.clone(),
                                        message: error_chain(&*err),
                                    })
                                }
                                Err(err) => match err.downcast::<Error>() {
                                    Ok(err) => Err(*err),
                                    // Retried per the step policy.
                                    Err(err) => return Err(err),
                                },
                            },
                            Target::Workflow { workflow, wait } => {
                                let child = match engine
                                    .start_child_json(workflow, &input, parent, child_key)
                                    .await
                                {
                                    Ok((id, status)) => {
                                        workflow_outcome(engine, &id, status, *wait).await
                                    }
                                    Err(err) => Err(t.start_error(err)),
                                };
                                // Not the tool's failure (a store outage
                                // while starting or reading the child):
                                // stop the run, as `start_child` does,
                                // rather than spend the step's attempts and
                                // tell the model the tool failed.
                                match child {
                                    Err(Error::Store(err)) => {
                                        return Err(BoxError::from(self.store_error(err)))
                                    }
                                    // A tool of the toolbox whose workflow no
                                    // engine runs yet: a deploy order, as for
                                    // `start_child`, not the model's mistake.
                                    Err(unknown @ Error::UnknownWorkflow(_)) => {
                                        return Err(BoxError::from(self.pause_for_setup(format!(
                                            "paused: {unknown}. Deploy an engine that registers \
                                             it and resume the instance, or cancel it"
                                        ))))
                                    }
                                    other => other,
                                }
                            }
                        },
                    },
                };
                match answer {
                    Ok(value) => Ok(ToolReply::ok(value)),
                    Err(err) if is_for_the_model(&err) => Ok(ToolReply::from_error(&err)),
                    Err(err) => Err(BoxError::from(err)),
                }
            })
            .await;
        match outcome {
            Ok(reply) => Ok(reply),
            Err(Error::Step {
                attempts, message, ..
            }) => Ok(ToolReply::error(format!(
                "Error: tool `{tool}` failed after {attempts} attempt(s): {message}"
            ))),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> Tool {
        Tool::function("add", "Add one", |n: u32| async move {
            Ok::<_, std::convert::Infallible>(n + 1)
        })
    }

    /// OpenAI refuses every request carrying a tool whose description is
    /// over 1,024 characters (HTTP 400 `string_above_max_length`): sent
    /// cut, after a whole sentence, saying so with `…`. Before, it went
    /// whole, and every turn of a loop with the tool failed.
    #[test]
    fn a_long_description_is_cut_for_openai() {
        let sentence = "Adds one to the number it is given, saturating at the top. ";
        let long: String = sentence.repeat(1500 / sentence.len() + 1)[..1500].to_owned();
        assert_eq!(long.chars().count(), 1500);
        let tool = add().with_description(long.clone());
        for sent in [tool.to_openai(), tool.to_openai_strict()] {
            let sent = sent["function"]["description"].as_str().unwrap().to_owned();
            assert!(
                sent.chars().count() <= OPENAI_MAX_DESCRIPTION,
                "{}",
                sent.len()
            );
            let kept = sent.strip_suffix('…').expect("says it was cut");
            assert!(long.starts_with(kept));
            assert!(kept.ends_with("top."), "at a sentence's end: {kept:?}");
            assert!(kept.chars().count() > OPENAI_MAX_DESCRIPTION / 2);
        }
        // Whole everywhere else.
        assert_eq!(tool.description(), long);
        assert_eq!(tool.to_anthropic()["description"], long.as_str());
        // A new description is cut anew, or not at all.
        let short = tool.with_description("Add one");
        assert_eq!(short.to_openai()["function"]["description"], "Add one");
    }

    #[test]
    fn descriptions_are_cut_at_words_or_characters() {
        let exact = "x".repeat(OPENAI_MAX_DESCRIPTION);
        assert_eq!(shortened_description(&exact, OPENAI_MAX_DESCRIPTION), None);
        // No sentence ends: after the last whole word.
        let words = "word ".repeat(300);
        let cut = shortened_description(&words, OPENAI_MAX_DESCRIPTION).unwrap();
        assert!(cut.chars().count() <= OPENAI_MAX_DESCRIPTION);
        assert!(cut.ends_with("word…"), "{cut}");
        // One long word of two-byte characters: at a character boundary.
        let wide = "é".repeat(1500);
        let cut = shortened_description(&wide, OPENAI_MAX_DESCRIPTION).unwrap();
        assert_eq!(cut.chars().count(), OPENAI_MAX_DESCRIPTION);
        assert!(cut.ends_with("é…"), "{cut}");
    }

    #[derive(Debug, PartialEq, Deserialize, JsonSchema)]
    enum Tree {
        Leaf(u32),
        Node(Vec<Tree>),
    }

    /// A recursive input, wrapped: its schema moved into `$defs`, so that
    /// strict mode takes it; arguments are still checked through the
    /// wrapping property, violations named at their path as sent, and
    /// unwrapped into the input.
    #[test]
    fn a_recursive_wrapped_input_is_checked_and_unwrapped() {
        let tool = Tool::function("leaves", "Count the leaves", |t: Tree| async move {
            Ok::<_, std::convert::Infallible>(format!("{t:?}"))
        });
        let params = tool.provider_parameters();
        assert_eq!(
            params["properties"]["input"],
            json!({"$ref": "#/$defs/Tree"})
        );
        let strict = tool.to_openai_strict();
        assert_eq!(strict["function"]["strict"], true, "{strict}");
        let args = json!({"input": {"Node": [{"Leaf": 1}, {"Node": [{"Leaf": 2}]}]}});
        let input = tool.check_arguments(args).unwrap();
        assert_eq!(
            serde_json::from_value::<Tree>(input).unwrap(),
            Tree::Node(vec![Tree::Leaf(1), Tree::Node(vec![Tree::Leaf(2)])])
        );
        let bad = json!({"input": {"Node": [{"Leaf": 1}, {"Node": [{"Leaf": "two"}]}]}});
        let Err(Error::InvalidArguments { violations, .. }) = tool.check_arguments(bad) else {
            panic!("a leaf that is no number passed");
        };
        assert!(
            violations
                .iter()
                .any(|v| v.path.starts_with("/input/Node/1/Node/0")),
            "{violations:?}"
        );
    }
}
