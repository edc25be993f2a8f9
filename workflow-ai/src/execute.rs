//! `ctx.execute(..)`: a model loop whose every model call and tool call is
//! a durable step.

use std::future::Future;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use workflow_core::{
    is_valid_tool_name, permanent, schema_for, strict_schema, BoxError, Conversation, Ctx, Error,
    Result, RetryAfter, StepOptions, Tool, ToolReply, Toolbox, RESERVED_STEP_CHARS,
};

use crate::message::{Message, ToolCall};
use crate::model::{Model, ModelError, ModelRequest, ModelResponse, OutputFormat};
use crate::openai::OpenAiCompatible;

/// A model loop to run with [`ExecuteExt::execute`]: instructions, the
/// conversation so far, tools, a model and a bound on turns.
///
/// ```no_run
/// # use workflow_ai::{Execute, ExecuteExt, OpenAiCompatible};
/// # use workflow_core::{Ctx, Toolbox};
/// # async fn handler(ctx: Ctx, ticket: String, tools: Toolbox) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
/// let model = OpenAiCompatible::builder()
///     .base_url("http://127.0.0.1:8080/v1")
///     .build()?;
/// let run = ctx
///     .execute(
///         Execute::new("Classify the ticket as bug, billing or question.")
///             .input(ticket)
///             .tools(tools)
///             .model(model)
///             .max_turns(6),
///     )
///     .await?;
/// Ok(run.text)
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Execute {
    name: String,
    instructions: String,
    messages: Vec<Message>,
    tools: Toolbox,
    model: Option<Arc<dyn Model>>,
    max_turns: u32,
    model_step: Option<StepOptions>,
    tool_step: Option<StepOptions>,
    strict_tools: bool,
    strict_output: bool,
    max_tool_reply: usize,
    max_tool_calls: usize,
}

impl std::fmt::Debug for Execute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execute")
            .field("name", &self.name)
            .field("instructions", &self.instructions)
            .field("messages", &self.messages)
            .field("tools", &self.tools)
            .field("max_turns", &self.max_turns)
            .field("max_tool_calls", &self.max_tool_calls)
            .finish_non_exhaustive()
    }
}

impl Execute {
    /// The default bound on model calls.
    pub const DEFAULT_MAX_TURNS: u32 = 10;

    /// The default bound on one tool reply sent to the model, in bytes.
    pub const DEFAULT_MAX_TOOL_REPLY: usize = 32 * 1024;

    /// The default bound on the tool calls run for one model turn.
    pub const DEFAULT_MAX_TOOL_CALLS: usize = 32;

    /// A loop with these instructions (the system message), no tools, and
    /// the model from the environment unless [`Execute::model`] is given.
    pub fn new(instructions: impl Into<String>) -> Self {
        Execute {
            name: "execute".to_owned(),
            instructions: instructions.into(),
            messages: Vec::new(),
            tools: Toolbox::new(),
            model: None,
            max_turns: Self::DEFAULT_MAX_TURNS,
            model_step: None,
            tool_step: None,
            strict_tools: false,
            strict_output: true,
            max_tool_reply: Self::DEFAULT_MAX_TOOL_REPLY,
            max_tool_calls: Self::DEFAULT_MAX_TOOL_CALLS,
        }
    }

    /// The most tool calls of one model turn that run, side by side (default
    /// [`Execute::DEFAULT_MAX_TOOL_CALLS`]); the model is told the others
    /// did not, and may ask for them in its next turn. One reply asking
    /// for hundreds of calls would otherwise start hundreds of workflows,
    /// and a waiting tool's turn would outlast the deadline.
    pub fn max_tool_calls(mut self, calls: usize) -> Self {
        self.max_tool_calls = calls.max(1);
        self
    }

    /// The most bytes of one tool reply the model is sent (default
    /// [`Execute::DEFAULT_MAX_TOOL_REPLY`]); a longer one is cut, saying
    /// how much was left out. Every later turn sends every reply again: one
    /// large reply (a report, a list of thousands of violations) would
    /// otherwise overflow the model's context, a refusal that is not
    /// retried. The whole reply is still recorded with its step.
    pub fn max_tool_reply_bytes(mut self, bytes: usize) -> Self {
        self.max_tool_reply = bytes.max(256);
        self
    }

    /// Adds a user message.
    pub fn input(mut self, text: impl Into<String>) -> Self {
        self.messages.push(Message::user(text));
        self
    }

    /// Adds messages (an earlier conversation, say).
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Self {
        self.messages.extend(messages);
        self
    }

    /// The tools the model may call: a [`Toolbox`] (workflows and plain
    /// async fns), or an array or `Vec` of workflow tools
    /// (`[ProcessOrder::as_tool(), Refund::as_tool()]`).
    pub fn tools(mut self, tools: impl Into<Toolbox>) -> Self {
        self.tools = tools.into();
        self
    }

    /// The model (default: [`OpenAiCompatible::from_env`]).
    pub fn model(mut self, model: impl Model) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// A shared model.
    pub fn shared_model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// At most this many model calls (default [`Execute::DEFAULT_MAX_TURNS`]);
    /// past it, the loop ends with [`Error::MaxTurns`]. Tool calls asked for
    /// in the last turn are not run: no turn is left to read their results.
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = turns.max(1);
        self
    }

    /// The prefix of this loop's step keys (default `execute`): turn `n`
    /// is `{name}:turn-{n}`, a tool call in it `{name}:turn-{n}:{tool}`.
    /// A second loop with the same name in one run, after the first one
    /// ended, gets `#1` keys; two at once (`join!`) fail the second with
    /// [`Error::Config`]: give each its own name. The name
    /// follows the step-name rule of [`Ctx::step`]: one containing a
    /// character of [`RESERVED_STEP_CHARS`] fails the loop with
    /// [`Error::InvalidStepName`] before the first model call.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The retry policy of model calls unless
    /// [`Execute::model_step_options`] gives one: 8 attempts, waits from
    /// 1 s doubling up to 60 s, each spread by ±25%: about two minutes of
    /// waits in all (123 s before the spread), so that a provider's
    /// per-minute rate limit (HTTP 429) can reset, and loops throttled
    /// together do not all retry at once. (The
    /// workflow's own step policy, 5 attempts within seconds by default,
    /// suits quick calls.)
    pub fn default_model_step() -> StepOptions {
        StepOptions::retries(8)
            .backoff(
                std::time::Duration::from_secs(1),
                2.0,
                std::time::Duration::from_secs(60),
            )
            .jitter(0.25)
    }

    /// Retry policy of each model call (default
    /// [`Execute::default_model_step`]). What
    /// [`ModelError::is_retryable`](crate::ModelError::is_retryable) calls
    /// retryable (HTTP 408, 409, 429, 5xx, timeouts, connection failures)
    /// is retried. What [`ModelError::needs_setup`](crate::ModelError::needs_setup)
    /// names (HTTP 401, 403 but for moderation, an unknown model, a quota
    /// used up) pauses the instance, to be resumed once mended; a
    /// conversation too long for
    /// the model's context window ends the loop with [`Error::NoAnswer`];
    /// other 4xx fail the loop at once.
    pub fn model_step_options(mut self, options: StepOptions) -> Self {
        self.model_step = Some(options);
        self
    }

    /// Retry policy of each function tool call (default: the workflow's).
    pub fn tool_step_options(mut self, options: StepOptions) -> Self {
        self.tool_step = Some(options);
        self
    }

    /// Send tools in OpenAI's strict form, so arguments always fit their
    /// schema, with `parallel_tool_calls: false` (parallel calls may not
    /// fit strict schemas). Default off: not every compatible server
    /// accepts either. Arguments are checked on every call regardless.
    pub fn strict_tools(mut self, strict: bool) -> Self {
        self.strict_tools = strict;
        self
    }

    /// For [`execute_typed`](ExecuteExt::execute_typed): ask for the
    /// output in OpenAI's strict form (`response_format` `json_schema`
    /// with `strict: true`) when its type allows it. Default on; turn it
    /// off for a compatible server that refuses strict schemas (some do,
    /// over integer bounds or keywords), which then gets the plain schema.
    /// The answer is checked against the schema either way, and a wrong
    /// one corrected by another turn.
    pub fn strict_output(mut self, strict: bool) -> Self {
        self.strict_output = strict;
        self
    }
}

/// How a model loop ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Execution {
    /// The model's final text.
    pub text: String,
    /// The whole conversation, instructions first, final answer last.
    pub messages: Vec<Message>,
    /// Model calls made (recorded ones included).
    pub turns: u32,
}

/// A model loop's typed result: see [`ExecuteExt::execute_typed`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Structured<T> {
    /// The final answer, parsed.
    pub output: T,
    /// The loop itself.
    pub execution: Execution,
}

/// `ctx.execute(..)` on a workflow's [`Ctx`]. Sealed: only `Ctx`
/// implements it, so methods can be added to it.
pub trait ExecuteExt: sealed::Sealed {
    /// Runs the model loop: calls the model; runs the tools it asks for and
    /// hands their results back; repeats until it answers without tool
    /// calls, or [`Error::MaxTurns`]. A final reply that is no answer (a
    /// refusal, a reply cut off at the token limit or withheld by a content
    /// filter) ends it with [`Error::NoAnswer`], and so does a conversation
    /// grown too long for the model's context window; a reply with nothing
    /// in it (no text, no tool calls) is asked for again, within the model
    /// step's attempts. A request refused for the account or the settings
    /// (see [`ModelError::needs_setup`](crate::ModelError::needs_setup))
    /// pauses the instance, as a worker without model settings does.
    ///
    /// Each model call is a durable step (`{name}:turn-{n}`) and so is each
    /// tool call ([`Ctx::call_tool`]): after a crash, replay returns the
    /// recorded turns without calling the model again and the conversation
    /// resumes where it stopped. Bad tool arguments, unknown tools and
    /// failed tools are reported to the model, which can correct itself.
    ///
    /// The workflow's `timeout` (five minutes unless it sets one) bounds
    /// the whole loop, model calls and their retries included: past it the
    /// instance ends `TimedOut`, even in the middle of a request. A loop of
    /// several turns on a slow model, or one that waits out rate limits,
    /// wants `#[workflow(timeout = "30m")]` or more.
    fn execute(&self, execute: Execute) -> impl Future<Output = Result<Execution>> + Send;

    /// Like [`ExecuteExt::execute`], asking for a final answer that is JSON
    /// of type `T` (a JSON-schema-constrained `response_format`, strict
    /// when the schema allows). An answer that does not fit is sent back
    /// with what is wrong, within the turn bound.
    fn execute_typed<T>(
        &self,
        execute: Execute,
    ) -> impl Future<Output = Result<Structured<T>>> + Send
    where
        T: DeserializeOwned + JsonSchema + Send + 'static;
}

mod sealed {
    pub trait Sealed {}
    impl<S> Sealed for workflow_core::Ctx<S> {}
}

impl<S> ExecuteExt for Ctx<S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    async fn execute(&self, execute: Execute) -> Result<Execution> {
        run_loop(self, execute, None).await
    }

    async fn execute_typed<T>(&self, execute: Execute) -> Result<Structured<T>>
    where
        T: DeserializeOwned + JsonSchema + Send + 'static,
    {
        // The checking side of a tool: drops strict-mode nulls, unwraps
        // non-object outputs, reports violations with their paths.
        let checker = Tool::workflow("output", "", schema_for::<T>());
        let schema = checker.provider_parameters();
        let strict = execute
            .strict_output
            .then(|| strict_schema(&schema).ok())
            .flatten();
        let (schema, strict) = match strict {
            Some(strict) => (strict, true),
            None => (schema, false),
        };
        let format = OutputFormat {
            name: "output".to_owned(),
            schema,
            strict,
        };
        let mut output = None;
        let execution = run_loop(
            self,
            execute,
            Some((format, &mut |text: &str| {
                let parsed = parse_output::<T>(&checker, text)?;
                output = Some(parsed);
                Ok(())
            })),
        )
        .await?;
        match output {
            Some(output) => Ok(Structured { output, execution }),
            // run_loop only returns Ok after the check accepted an answer.
            None => Err(Error::Config(
                "structured output missing after a successful loop".to_owned(),
            )),
        }
    }
}

/// Parses a final answer as `T`, or says what is wrong with it.
fn parse_output<T: DeserializeOwned>(checker: &Tool, text: &str) -> std::result::Result<T, String> {
    let value: Value = serde_json::from_str(unfenced(text))
        .map_err(|err| format!("Your reply is not valid JSON ({err})."))?;
    checker.decode_arguments(value).map_err(|err| match err {
        Error::InvalidArguments { violations, .. } => {
            // The schema let a `deserialize` one through: the type refused it.
            let mut text = if violations.iter().all(|v| v.rule == "deserialize") {
                "Your reply fits the JSON schema, but a value in it cannot be read:\n".to_owned()
            } else {
                "Your reply does not match the required JSON schema:\n".to_owned()
            };
            for v in violations {
                text.push_str(&format!("- {v}\n"));
            }
            text
        }
        other => other.to_string(),
    })
}

/// `text` without one Markdown code fence around it (```` ```json ````
/// .. ```` ``` ````): servers that ignore `response_format` (llama.cpp,
/// Ollama) often fence the JSON they were asked for, and a correction turn
/// for it costs a model call. The same text always reads the same, so a
/// replay decides as the first run did.
fn unfenced(text: &str) -> &str {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return text;
    };
    // The info string (`json`) runs to the end of the opening line.
    match body.split_once('\n') {
        Some((info, inner)) if !info.contains('`') => inner.trim(),
        _ => text,
    }
}

/// What [`Ctx::call_tool`] tells the model for a tool that is not in `tools`.
fn no_such_tool(tools: &Toolbox, tool: &str) -> ToolReply {
    ToolReply::from_error(&Error::UnknownTool {
        tool: tool.to_owned(),
        available: tools.tools().iter().map(|t| t.name().to_owned()).collect(),
    })
}

/// How a turn refused for a conversation too long for the model's
/// context window starts its step's error message.
const CONTEXT_OVERFLOW: &str = "the conversation does not fit the model's context window";

/// A turn refused for a conversation too long for the model's context
/// window: its message, recorded with the failed step, ends the loop with
/// [`Error::NoAnswer`], whose conversation can be handed on (see
/// [`conversation`]).
#[derive(Debug, thiserror::Error)]
#[error("{CONTEXT_OVERFLOW}: {0}")]
struct ContextOverflow(ModelError);

type OutputCheck<'a> = (
    OutputFormat,
    &'a mut (dyn FnMut(&str) -> std::result::Result<(), String> + Send),
);

async fn run_loop<S>(
    ctx: &Ctx<S>,
    execute: Execute,
    mut output: Option<OutputCheck<'_>>,
) -> Result<Execution>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let Execute {
        name,
        instructions,
        messages: input,
        tools,
        model,
        max_turns,
        model_step,
        tool_step,
        strict_tools,
        strict_output: _,
        max_tool_reply,
        max_tool_calls,
    } = execute;
    // Turns are numbered per name as they finish: two loops of one name at
    // once could swap recorded answers on a replay.
    let _held = ctx.hold_name(&format!("{name}:turn")).ok_or_else(|| {
        Error::Config(format!(
            "two model loops named `{name}` run at once in this workflow: their turns would be \
             recorded in whichever order they end, and a replay could give one loop the \
             other's answers; give each its own name (Execute::name)"
        ))
    })?;
    // Read from the environment by the first turn not yet recorded, once:
    // a replay of recorded turns on a worker without the settings (after a
    // sleep, on another machine) goes on without them, and builds no client.
    let from_env = std::sync::OnceLock::<Result<Arc<dyn Model>, String>>::new();
    let mut messages = Vec::with_capacity(input.len() + 1);
    if !instructions.is_empty() {
        messages.push(Message::system(instructions));
    }
    messages.extend(input);
    let tool_list: Vec<Tool> = tools.tools().to_vec();
    // Providers refuse the whole request for one bad name, a 400 that is
    // not retried: named here, before anything is paid for.
    if let Some(bad) = tool_list.iter().find(|t| !is_valid_tool_name(t.name())) {
        return Err(Error::Config(format!(
            "tool `{}` cannot be sent to a model: tool names are letters, digits, `_` and `-`, \
             1 to 64 of them",
            bad.name()
        )));
    }
    for turn in 0..max_turns {
        let request = ModelRequest {
            messages: messages.clone(),
            tools: tool_list.clone(),
            strict_tools,
            output: output.as_ref().map(|(format, _)| format.clone()),
        };
        let step = format!("{name}:turn-{turn}");
        let (model, from_env, request) = (&model, &from_env, &request);
        let call = || async move {
            let model = match model {
                Some(model) => model,
                None => from_env
                    .get_or_init(|| {
                        OpenAiCompatible::from_env()
                            .map(|model| Arc::new(model) as Arc<dyn Model>)
                            .map_err(|e| e.to_string())
                    })
                    .as_ref()
                    // A worker deployed without the settings pauses the
                    // instance: failed, it could not go on once given them.
                    .map_err(|why| {
                        ctx.pause_for_setup(format!(
                            "paused: {why}. Give this worker a model (or the OPENAI_* \
                             variables) and resume the instance, or cancel it"
                        ))
                    })?,
            };
            let response = model.complete(request).await.map_err(|err| {
                // A key expired, a permission revoked, a model withdrawn, a
                // quota used up: failed, the instance could not go on once
                // they are mended; paused, it resumes from this turn, the
                // turns before it read from the record.
                if err.needs_setup() {
                    return BoxError::from(ctx.pause_for_setup(format!(
                        "paused: {err}. Mend the model's account or settings (API key, \
                         permissions, model name, quota) and resume the instance, or cancel it"
                    )));
                }
                if err.is_context_overflow() {
                    return permanent(ContextOverflow(err));
                }
                match (err.is_retryable(), err.retry_after()) {
                    (true, Some(wait)) => BoxError::from(RetryAfter::new(err, wait)),
                    (true, None) => BoxError::from(err),
                    (false, _) => permanent(err),
                }
            })?;
            // A generation that failed on the server's side (OpenRouter's
            // `finish_reason: "error"`) is tried again, not recorded as
            // the answer.
            if response.finish_reason.as_deref() == Some("error") && response.tool_calls.is_empty()
            {
                return Err(BoxError::from(ModelError::Transport(
                    "the server reported an error while generating (finish_reason `error`)"
                        .to_owned(),
                )));
            }
            // A reply with neither text nor tool calls, ended as a normal
            // one (`stop`, none, or a server's own word for it), is no
            // answer a model means to give (servers send one now and then
            // under load): tried again, not recorded as the loop's answer.
            let blank = response
                .content
                .as_deref()
                .is_none_or(|c| c.trim().is_empty());
            if blank && response.tool_calls.is_empty() && no_answer(&response).is_none() {
                return Err(BoxError::from(ModelError::Transport(
                    "the model replied with nothing: no text and no tool calls".to_owned(),
                )));
            }
            Ok(response)
        };
        let opts = model_step.unwrap_or_else(Execute::default_model_step);
        let response: ModelResponse = match ctx.step_with(&step, opts, call).await {
            Ok(response) => response,
            // Read from the step's recorded message, so a replay (of a
            // handler that went on to sum the conversation up) ends the
            // loop the same way.
            Err(Error::Step { message, .. }) if message.starts_with(CONTEXT_OVERFLOW) => {
                return Err(Error::NoAnswer {
                    name,
                    reason: message,
                    messages: as_json(&messages),
                });
            }
            Err(err) => return Err(err),
        };
        tracing::debug!(step, tool_calls = response.tool_calls.len(), "model turn");
        messages.push(Message::Assistant {
            // Providers refuse an assistant message with neither text nor
            // tool calls, which a later turn would send back.
            content: match (&response.content, response.tool_calls.is_empty()) {
                (None, true) => Some(String::new()),
                (content, _) => content.clone(),
            },
            tool_calls: response.tool_calls.iter().map(echoed).collect(),
        });
        if response.tool_calls.is_empty() {
            if let Some(reason) = no_answer(&response) {
                return Err(Error::NoAnswer {
                    name,
                    reason,
                    messages: as_json(&messages),
                });
            }
            let text = response.content.unwrap_or_default();
            if let Some((_, check)) = output.as_mut() {
                if let Err(problem) = check(&text) {
                    // Deterministic from the recorded reply: replay takes the same path.
                    messages.push(Message::user(format!(
                        "{problem}Reply again with only JSON that matches the schema."
                    )));
                    continue;
                }
            }
            return Ok(Execution {
                text,
                messages,
                turns: turn + 1,
            });
        }
        if turn + 1 == max_turns {
            // No turn is left to show the model their results: running the
            // tools (and starting their workflows) would be effects no one
            // reads. Each call still gets its reply: a conversation handed
            // on (see `conversation`) with calls left unanswered is one a
            // server refuses.
            for call in &response.tool_calls {
                messages.push(Message::Tool {
                    tool_call_id: call.id.clone(),
                    content: "Not run: the loop ran out of turns.".to_owned(),
                });
            }
            break;
        }
        // The calls of one turn run side by side, each a step of its own.
        // Their steps are named by tool and numbered in the order of the
        // calls (`..:lookup`, `..:lookup#1`): each call numbers its step on
        // its first poll, and the first pass below polls them in that
        // order, so a replay numbers them the same whichever ended first.
        let turn_step = format!("{name}:turn-{turn}");
        let mut calls: Vec<_> = response
            .tool_calls
            .iter()
            .enumerate()
            .map(|(n, call)| {
                Box::pin(answer_tool_call(
                    ctx,
                    &tools,
                    tool_step,
                    &turn_step,
                    call,
                    (n, max_tool_calls, max_tool_reply),
                ))
            })
            .collect();
        let mut answers: Vec<Option<Result<String>>> = calls.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (call, answer) in calls.iter_mut().zip(answers.iter_mut()) {
                if answer.is_none() {
                    if let std::task::Poll::Ready(done) = call.as_mut().poll(cx) {
                        *answer = Some(done);
                    }
                }
            }
            if answers.iter().all(Option::is_some) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        drop(calls);
        // Every call has ended (recorded, or stopped with the run) before
        // the first error is handed on: none is dropped halfway.
        for (call, answer) in response.tool_calls.iter().zip(answers) {
            let Some(answer) = answer else { continue };
            messages.push(Message::Tool {
                tool_call_id: call.id.clone(),
                content: answer?,
            });
        }
    }
    Err(Error::MaxTurns {
        name,
        turns: max_turns,
        messages: as_json(&messages),
    })
}

/// `call` as a later turn sends it back to the model: arguments that are
/// no JSON object (cut off, blank, missing) become `{}`. Local servers
/// (llama.cpp, vLLM) parse the arguments of every call in the history and
/// refuse the whole request (HTTP 400 or 500) when they do not read, so
/// every later turn, and every replay, would fail. The model learns what
/// was wrong from the tool's reply; the recorded turn keeps the text as it
/// came, and this follows from it, so a replay sends the same.
fn echoed(call: &ToolCall) -> ToolCall {
    let arguments = &call.function.arguments;
    let is_object = serde_json::from_str::<Value>(arguments).is_ok_and(|v| v.is_object());
    if is_object {
        return call.clone();
    }
    let mut call = call.clone();
    call.function.arguments = "{}".to_owned();
    call
}

/// `text` cut to at most about `max` bytes (at a character boundary), with
/// a note of what was left out. Deterministic: a replay sends the model the
/// same conversation.
fn shortened(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let kept = &text[..text.floor_char_boundary(max)];
    format!(
        "{kept}\n[reply cut: {} more bytes left out]",
        text.len() - kept.len()
    )
}

/// The reply to tool call `n` of a turn, as the model is sent it: the
/// tool run as a step named after it under `turn_step`, or, without a
/// step, a reply the recorded turn determines (a call past
/// `max_tool_calls`, arguments that are no JSON, a name no tool has).
async fn answer_tool_call<S>(
    ctx: &Ctx<S>,
    tools: &Toolbox,
    tool_step: Option<StepOptions>,
    turn_step: &str,
    call: &ToolCall,
    (n, max_tool_calls, max_tool_reply): (usize, usize, usize),
) -> Result<String>
where
    S: Serialize + DeserializeOwned + Send + 'static,
{
    let tool = &call.function.name;
    // Deterministic from the recorded turn: a replay cuts the same.
    if n >= max_tool_calls {
        return Ok(format!(
            "Not run: at most {max_tool_calls} tool calls run per turn. \
             Ask for this one again in your next reply if you still need it."
        ));
    }
    // Some servers send no arguments at all for a tool without parameters.
    let arguments = match call.function.arguments.trim() {
        "" => "{}",
        sent => sent,
    };
    let reply = match serde_json::from_str::<Value>(arguments) {
        Err(err) => ToolReply::error(format!(
            "The arguments for tool `{tool}` are not valid JSON ({err}). Call it again with a JSON object."
        )),
        // The name comes from the model: one no step name may contain must
        // not fail the loop, nor one long enough to break the store's key
        // index. Neither is a valid tool name (providers refuse tools named
        // so), so unless the toolbox has it, it is answered as an unknown
        // tool without a step: the reply follows from the recorded turn,
        // and replay gives it again.
        Ok(_)
            if tool.contains(RESERVED_STEP_CHARS)
                || tool.contains('\0')
                || !is_valid_tool_name(tool) && tools.get(tool).is_none() =>
        {
            no_such_tool(tools, tool)
        }
        Ok(args) => {
            let step = format!("{turn_step}:{tool}");
            match tool_step {
                Some(opts) => ctx.call_tool_with(&step, opts, tools, tool, args).await?,
                None => ctx.call_tool(&step, tools, tool, args).await?,
            }
        }
    };
    Ok(shortened(reply.text(), max_tool_reply))
}

/// `messages` as the JSON an error carries them in. A message that does
/// not serialize (none does not) is a `null`, which `conversation` refuses
/// whole rather than hand on a call without its reply.
fn as_json(messages: &[Message]) -> Conversation {
    Conversation(
        messages
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default())
            .collect(),
    )
}

/// The conversation of a model loop that ended without an answer
/// ([`Error::MaxTurns`], [`Error::NoAnswer`], the latter also for a
/// conversation grown too long for the model's context window, which a
/// summarising loop can be handed with its oldest turns left out),
/// instructions first: to hand
/// to another loop ([`Execute::messages`]) that goes on, or asks for a
/// summary of what was found. `None` for any other error. A tool call the
/// loop had no turn left to run is answered so in it ("Not run"): a
/// server refuses a conversation with a call unanswered.
///
/// ```no_run
/// # use workflow_core::{Ctx, Error};
/// # use workflow_ai::{conversation, Execute, ExecuteExt, Message};
/// # async fn f(ctx: Ctx) -> workflow_core::Result<String> {
/// let run = ctx.execute(Execute::new("Research the ticket.").max_turns(8)).await;
/// let text = match run {
///     Ok(run) => run.text,
///     Err(err @ Error::MaxTurns { .. }) => {
///         // Its own instructions in place of the first loop's.
///         let so_far = conversation(&err)
///             .unwrap_or_default()
///             .into_iter()
///             .filter(|m| !matches!(m, Message::System { .. }));
///         ctx.execute(
///             Execute::new("Summarize what was found so far.")
///                 .name("summary")
///                 .messages(so_far),
///         )
///         .await?
///         .text
///     }
///     Err(other) => return Err(other),
/// };
/// # Ok(text) }
/// ```
pub fn conversation(err: &Error) -> Option<Vec<Message>> {
    match err {
        Error::MaxTurns { messages, .. } | Error::NoAnswer { messages, .. } => messages
            .messages()
            .iter()
            .map(|m| serde_json::from_value(m.clone()).ok())
            .collect(),
        _ => None,
    }
}

/// Why a final reply is no answer: the model refused, or the reply was cut
/// off or withheld. Deterministic from the recorded reply, as replay needs.
fn no_answer(response: &ModelResponse) -> Option<String> {
    match response.finish_reason.as_deref()? {
        "refusal" => Some(format!(
            "the model refused: {}",
            response.content.as_deref().unwrap_or_default()
        )),
        "length" => {
            Some("the reply was cut off at the token limit (finish_reason `length`)".to_owned())
        }
        "content_filter" => Some("the provider's content filter withheld the reply".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_output, shortened, unfenced};

    /// A reply the schema lets through but the type refuses is sent back
    /// naming the field (it said "input contains invalid characters").
    #[test]
    fn a_reply_the_type_refuses_names_its_field() {
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct Out {
            host: std::net::IpAddr,
        }
        let checker =
            workflow_core::Tool::workflow("output", "", workflow_core::schema_for::<Out>());
        let err = parse_output::<Out>(&checker, r#"{"host": "not an address"}"#)
            .err()
            .unwrap();
        assert!(err.contains("at /host:"), "{err}");
        assert!(err.contains("cannot be read"), "{err}");
        let ok = parse_output::<Out>(&checker, r#"{"host": "127.0.0.1"}"#).unwrap();
        assert!(ok.host.is_loopback());
    }

    #[test]
    fn one_code_fence_around_an_answer_is_taken_off() {
        assert_eq!(unfenced("  {\"a\": 1} "), "{\"a\": 1}");
        assert_eq!(unfenced("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(unfenced("```\n[1]\n```\n"), "[1]");
        // Not a whole fence: left as it is, for the model to be told.
        assert_eq!(unfenced("```json {\"a\": 1}```"), "```json {\"a\": 1}```");
        assert_eq!(unfenced("```json\n{}"), "```json\n{}");
        assert_eq!(unfenced("{} ```"), "{} ```");
    }

    #[test]
    fn long_tool_replies_are_cut_at_a_character_boundary() {
        assert_eq!(shortened("short".into(), 256), "short");
        let cut = shortened("é".repeat(200), 257);
        assert!(cut.starts_with(&"é".repeat(128)), "{cut}");
        assert!(!cut.starts_with(&"é".repeat(129)), "{cut}");
        assert!(
            cut.ends_with("[reply cut: 144 more bytes left out]"),
            "{cut}"
        );
    }
}
