//! AI for the `workflow` crate: model loops as durable steps, and an
//! OpenAI-compatible client. Used through the facade's `ai` feature
//! (`workflow::ai`).
//!
//! - [`ExecuteExt::execute`]: `ctx.execute(Execute::new(..))` inside a
//!   workflow runs a model loop in which every model call and every tool
//!   call is a durable step: a recorded answer is never asked for again,
//!   and replay resumes the conversation where it stopped (only a call in
//!   flight when the process died is made again).
//!   [`ExecuteExt::execute_typed`] asks for a typed, schema-constrained answer.
//! - Tools are a [`Toolbox`](workflow_core::Toolbox) of workflows
//!   (`W::as_tool()`) and async functions. Inside a loop, a workflow tool
//!   starts the workflow as a child of the running instance, exactly once.
//! - [`Model`]: one chat completion. [`OpenAiCompatible`] speaks the
//!   chat-completions protocol of OpenAI, llama.cpp, vLLM, Ollama and
//!   gateways (reqwest, rustls); configure it with its builder or
//!   `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OPENAI_MODEL`. HTTP 408, 409,
//!   429 (not `insufficient_quota`) and 5xx, timeouts and connection
//!   failures are retried by the step policy; other 4xx are not (see
//!   [`ModelError::is_retryable`]). A refused key or permission, an
//!   unknown model or a quota used up pause the instance until mended
//!   (see [`ModelError::needs_setup`]).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod execute;
mod message;
mod model;
mod openai;

pub use crate::execute::{conversation, Execute, ExecuteExt, Execution, Structured};
pub use crate::message::{FunctionCall, Message, ToolCall};
pub use crate::model::{Model, ModelError, ModelRequest, ModelResponse, OutputFormat};
pub use crate::openai::{OpenAiBuilder, OpenAiCompatible, DEFAULT_MODEL, OPENAI_BASE_URL};

// Built in one task and run in another, or shared: see workflow-core's
// check of the same kind.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Execute>();
    send_sync::<OpenAiCompatible>();
    send_sync::<ModelError>();
    send_sync::<std::sync::Arc<dyn Model>>();
};
