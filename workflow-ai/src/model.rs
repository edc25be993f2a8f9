//! The [`Model`] trait: one chat-completion call, provider-neutral.

use serde::{Deserialize, Serialize};
use workflow_core::Tool;

use crate::message::{Message, ToolCall};

/// A chat model. [`OpenAiCompatible`](crate::OpenAiCompatible) is the
/// built-in one; implement this for other providers (or for tests).
#[async_trait::async_trait]
pub trait Model: Send + Sync + 'static {
    /// One completion: the reply to `request.messages`. Called inside a
    /// durable step, so it runs once per turn (plus retries) over the whole
    /// life of a workflow, crashes included.
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError>;
}

/// What the model is asked.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// The conversation so far, instructions first.
    pub messages: Vec<Message>,
    /// The tools it may call.
    pub tools: Vec<Tool>,
    /// Send tools in OpenAI's strict form (see [`Tool::to_openai_strict`]).
    pub strict_tools: bool,
    /// A JSON Schema the final reply must follow, if a structured output is wanted.
    pub output: Option<OutputFormat>,
}

/// A JSON-schema-constrained reply (`response_format` in OpenAI's API).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFormat {
    /// A name for the schema.
    pub name: String,
    /// The schema, an object schema.
    pub schema: serde_json::Value,
    /// True if `schema` is in the strict subset and should be enforced.
    pub strict: bool,
}

/// The model's reply: what each turn's durable step records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// The text, if any.
    pub content: Option<String>,
    /// The tool calls it asks for; none means this is its final answer.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped (`stop`, `tool_calls`, `length`, `content_filter`...),
    /// as the server said; `refusal` when the model refused, its refusal
    /// then being the `content`. A final answer stopped by `length`,
    /// `content_filter` or `refusal` ends a model loop with
    /// `Error::NoAnswer`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Token usage, as the server reported it.
    #[serde(default)]
    pub usage: Option<serde_json::Value>,
}

/// Why a model call failed. `Clone`, so a scripted model in tests can
/// answer with one again and again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The server answered with an error status.
    #[error("model endpoint answered HTTP {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The response body (truncated).
        body: String,
        /// How long the server asked to wait before trying again
        /// (`retry-after-ms` or `retry-after`, in seconds), if it said.
        retry_after: Option<std::time::Duration>,
    },
    /// No answer in time.
    #[error("model request timed out: {0}")]
    Timeout(String),
    /// Connecting or sending failed.
    #[error("model request failed: {0}")]
    Transport(String),
    /// The answer was no JSON object (a gateway's HTML page or a body cut
    /// short, sent as a success): retried, as such answers pass.
    #[error("model response could not be read: {0}")]
    Decode(String),
    /// The answer was a JSON object but no chat completion (no choices, a
    /// tool call without a function): a server that answers so answers so
    /// again, and each try is paid for, so it is not retried.
    #[error("model response is not a chat completion: {0}")]
    Unexpected(String),
    /// The answer was larger than the client reads (bytes): a server
    /// streaming by mistake, which trying again does not mend.
    #[error("model response could not be read: the response is larger than {} MiB", .0 >> 20)]
    TooLarge(usize),
    /// The client is not configured (no endpoint, bad URL).
    #[error("model configuration: {0}")]
    Config(String),
}

impl ModelError {
    /// True if trying again may help: HTTP 408, 409, 429 and 5xx, timeouts,
    /// connection failures, a success whose body is no JSON object
    /// ([`ModelError::Decode`]). Other 4xx (a bad request, a bad key),
    /// configuration errors, an answer that is JSON but no chat completion
    /// or too large, and a 429 that says the account's quota is used up
    /// (`insufficient_quota`, which waiting does not mend) are not retried
    /// (a model loop pauses for those [`ModelError::needs_setup`] names).
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Status {
                status: 429, body, ..
            } => !body.contains("insufficient_quota"),
            ModelError::Status { status, .. } => {
                matches!(status, 408 | 409) || (500..600).contains(status)
            }
            ModelError::Timeout(_) | ModelError::Transport(_) | ModelError::Decode(_) => true,
            ModelError::TooLarge(_) | ModelError::Unexpected(_) | ModelError::Config(_) => false,
        }
    }

    /// True if the account or the settings are at fault, not the request:
    /// HTTP 401 (a bad or expired key), 403 (a permission revoked, a
    /// region refused; not one that names moderation or a content policy,
    /// which gateways such as OpenRouter send for this request's content
    /// alone), 404 with `model_not_found`, or whose message says a model
    /// was not found or does not exist (Ollama, vLLM): a model name the
    /// provider does not have, or no longer gives this key; and 429 with
    /// `insufficient_quota`. Every request fails so until someone mends
    /// the account or the settings, after which the same request goes
    /// through: a model loop pauses its instance for these, to be resumed
    /// then, rather than fail it for good.
    pub fn needs_setup(&self) -> bool {
        match self {
            ModelError::Status { status, body, .. } => match status {
                401 => true,
                403 => !names_moderation(body),
                404 => has_error_code(body, "model_not_found") || names_unknown_model(body),
                429 => has_error_code(body, "insufficient_quota"),
                _ => false,
            },
            _ => false,
        }
    }

    /// True if the request was refused because the conversation no longer
    /// fits the model's context window: HTTP 400 with OpenAI's
    /// `context_length_exceeded`, llama.cpp's `exceed_context_size_error`,
    /// or vLLM's "maximum context length" message. Sending it again fails
    /// the same way; only a shorter conversation goes through.
    pub fn is_context_overflow(&self) -> bool {
        match self {
            ModelError::Status {
                status: 400, body, ..
            } => is_context_overflow_body(body),
            _ => false,
        }
    }

    /// How long the server asked to wait before the next try, if it did
    /// (a rate limit's `Retry-After`): a model loop's retry waits at least
    /// that long.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ModelError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Whether an error body says this request's content was refused
/// (moderation, a content policy), in the error's code, type or message
/// (OpenRouter: "requires moderation ... your input was flagged"; OpenAI:
/// `content_policy_violation`; Azure: `content_filter`), or in the text
/// of a body that is no JSON. Not any mention of the words: "account
/// flagged for abuse" is the account's fault, and pauses.
fn names_moderation(body: &str) -> bool {
    const SAID: [&str; 5] = [
        "input was flagged",
        "requires moderation",
        "content_policy",
        "content policy",
        "content_filter",
    ];
    let said = |text: &str| {
        let text = text.to_ascii_lowercase();
        SAID.iter().any(|words| text.contains(words))
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => {
            let error = &value["error"];
            [&error["code"], &error["type"], &error["message"]]
                .iter()
                .filter_map(|v| v.as_str())
                .any(said)
        }
        Err(_) => said(body),
    }
}

/// Whether a 404's error message says the model asked for is unknown, in
/// the words of servers that send no `model_not_found` code: Ollama
/// ("model \"x\" not found, try pulling it first"), vLLM ("The model `x`
/// does not exist."). A 404 for a path (a wrong base URL) names no model.
fn names_unknown_model(body: &str) -> bool {
    let said = |text: &str| {
        let text = text.to_ascii_lowercase();
        text.contains("model") && (text.contains("not found") || text.contains("does not exist"))
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => [
            &value["error"]["message"],
            &value["message"],
            &value["error"],
        ]
        .iter()
        .filter_map(|v| v.as_str())
        .any(said),
        Err(_) => false,
    }
}

/// Whether an error body names `code`, as OpenAI's `error.code` or
/// `error.type` or, in a body cut short or shaped otherwise (a gateway's),
/// anywhere in its text.
fn has_error_code(body: &str, code: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => {
            let error = &value["error"];
            [&error["code"], &error["type"]]
                .iter()
                .any(|v| v.as_str() == Some(code))
        }
        Err(_) => body.contains(code),
    }
}

/// Whether an HTTP 400 body says the request does not fit the model's
/// context window, in the words of OpenAI, llama.cpp or vLLM.
fn is_context_overflow_body(body: &str) -> bool {
    ["context_length_exceeded", "exceed_context_size_error"]
        .iter()
        .any(|code| has_error_code(body, code))
        || body.contains("maximum context length")
}
