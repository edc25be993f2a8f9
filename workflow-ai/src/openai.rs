//! [`OpenAiCompatible`]: a chat-completions client for OpenAI and every
//! server that speaks its protocol (llama.cpp, vLLM, Ollama, gateways).

use std::time::Duration;

use serde_json::{json, Value};

use crate::message::ToolCall;
use crate::model::{Model, ModelError, ModelRequest, ModelResponse};

/// OpenAI's API, the default base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The model used when none is configured.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// A [`Model`] that POSTs to `{base_url}/chat/completions`.
///
/// ```no_run
/// use workflow_ai::OpenAiCompatible;
/// // A local llama.cpp / vLLM / Ollama server:
/// let local = OpenAiCompatible::builder()
///     .base_url("http://127.0.0.1:8080/v1")
///     .model("qwen2.5-7b-instruct")
///     .build()?;
/// // Or from OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL:
/// let from_env = OpenAiCompatible::from_env()?;
/// # Ok::<_, workflow_ai::ModelError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiCompatible {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    model: String,
    temperature: Option<f32>,
    token_limit: Option<TokenLimit>,
}

/// A cap on the tokens of each reply, under the field name the server
/// reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TokenLimit {
    /// `max_tokens`: most OpenAI-compatible servers.
    MaxTokens(u32),
    /// `max_completion_tokens`: OpenAI's current field, the only one its
    /// reasoning models take.
    MaxCompletionTokens(u32),
}

// By hand: the API key must not reach logs through `{:?}`.
impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("api_key", &redacted(&self.api_key))
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("token_limit", &self.token_limit)
            .finish_non_exhaustive()
    }
}

/// What `Debug` shows of an API key.
fn redacted(key: &Option<String>) -> Option<&'static str> {
    key.as_ref().map(|_| "<redacted>")
}

/// What `Debug` and errors show of a URL: without the credentials a proxy
/// URL may carry (`https://user:key@proxy/v1`, `?api-key=..`, a fragment).
/// One that does not parse is shown only if it holds none of those marks.
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let hidden = !parsed.username().is_empty()
                || parsed.password().is_some()
                || parsed.query().is_some()
                || parsed.fragment().is_some();
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            if hidden {
                format!("{parsed} (credentials, query and fragment hidden)")
            } else {
                parsed.to_string()
            }
        }
        Err(_) if url.contains(['@', '?', '#']) => "<a URL that does not parse>".to_owned(),
        Err(_) => url.to_owned(),
    }
}

/// Configures an [`OpenAiCompatible`] client.
#[derive(Clone, Default)]
#[must_use]
pub struct OpenAiBuilder {
    base_url: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    timeout: Option<Duration>,
    temperature: Option<f32>,
    token_limit: Option<TokenLimit>,
    headers: Vec<(String, String)>,
}

impl std::fmt::Debug for OpenAiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBuilder")
            .field("base_url", &self.base_url.as_deref().map(redacted_url))
            .field("api_key", &redacted(&self.api_key))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("temperature", &self.temperature)
            .field("token_limit", &self.token_limit)
            .field("headers", &header_names(&self.headers))
            .finish()
    }
}

/// What `Debug` shows of extra headers: their names (values may be keys).
fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(name, _)| name.as_str()).collect()
}

impl OpenAiBuilder {
    /// The API's base URL, up to and including `/v1` (default: OpenAI's).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key, sent as a bearer token (none for most local servers).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// A header sent with every request, beside the bearer token of
    /// [`api_key`](Self::api_key): an Azure OpenAI deployment's `api-key`,
    /// a gateway's own key or routing header, OpenRouter's `HTTP-Referer`.
    /// A name given twice keeps the last value. A name or value no HTTP
    /// header can carry fails [`build`](Self::build); `Debug` shows names
    /// only.
    ///
    /// ```
    /// # use workflow_ai::OpenAiCompatible;
    /// let azure = OpenAiCompatible::builder()
    ///     .base_url("https://my-resource.openai.azure.com/openai/v1")
    ///     .header("api-key", "azure-key")
    ///     .model("my-deployment")
    ///     .build()?;
    /// # Ok::<_, workflow_ai::ModelError>(())
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.headers
            .retain(|(seen, _)| !seen.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// The model name (default [`DEFAULT_MODEL`]).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// How long one request may take (default 600 s, as OpenAI's own
    /// clients: a reasoning model's long answer takes minutes, and one cut
    /// off is still billed); a timeout is retried by the step policy.
    /// Connecting may take 10 s of it at most.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sampling temperature (server default if unset).
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// At most `tokens` tokens per reply, sent as `max_tokens`, which most
    /// OpenAI-compatible servers read (llama.cpp, vLLM, Ollama); server
    /// default if unset. A final reply cut off at the limit
    /// (`finish_reason` `length`) is recorded and ends the loop with
    /// `Error::NoAnswer`, not an answer. Replaces
    /// [`max_completion_tokens`](Self::max_completion_tokens).
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.token_limit = Some(TokenLimit::MaxTokens(tokens));
        self
    }

    /// [`max_tokens`](Self::max_tokens) under OpenAI's current name,
    /// `max_completion_tokens`, the only one its reasoning models take
    /// (their limit counts the reasoning tokens too).
    pub fn max_completion_tokens(mut self, tokens: u32) -> Self {
        self.token_limit = Some(TokenLimit::MaxCompletionTokens(tokens));
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<OpenAiCompatible, ModelError> {
        let base = self.base_url.unwrap_or_else(|| OPENAI_BASE_URL.to_owned());
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ModelError::Config(format!(
                "base URL `{}` must start with http:// or https://",
                redacted_url(base)
            )));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ModelError::Config(
                "timeout must be longer than zero: every request would time out".to_owned(),
            ));
        }
        if let Some(t) = self.temperature.filter(|t| !t.is_finite() || *t < 0.0) {
            return Err(ModelError::Config(format!(
                "temperature {t} is not a temperature: use a number from 0 (as 0.2)"
            )));
        }
        if let Some(TokenLimit::MaxTokens(0) | TokenLimit::MaxCompletionTokens(0)) =
            self.token_limit
        {
            return Err(ModelError::Config(
                "a token limit of 0 leaves no room for any reply".to_owned(),
            ));
        }
        // The path goes before the query a gateway may need
        // (`..?api-version=..`), not after it.
        let mut endpoint = reqwest::Url::parse(base).map_err(|err| {
            ModelError::Config(format!("base URL `{}`: {err}", redacted_url(base)))
        })?;
        if let Ok(mut path) = endpoint.path_segments_mut() {
            path.pop_if_empty().push("chat").push("completions");
        }
        // Pasted or mounted from a file, a key often ends in a newline,
        // which no header may hold.
        let api_key = self
            .api_key
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        if api_key
            .as_deref()
            .is_some_and(|k| k.chars().any(char::is_control))
        {
            return Err(ModelError::Config(
                "the API key holds a control character (a line break inside it?); \
                 no header can carry it"
                    .to_owned(),
            ));
        }
        if api_key.is_some() && (!endpoint.username().is_empty() || endpoint.password().is_some()) {
            return Err(ModelError::Config(format!(
                "base URL `{}` carries credentials and an API key is set too: \
                 the request would carry two Authorization headers; give one",
                redacted_url(base)
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ModelError::Config(format!("`{name}` is not an HTTP header name")))?;
            // A value read from a file often ends in a newline.
            let mut value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| {
                ModelError::Config(format!(
                    "the value of header `{name}` holds a character no header can carry \
                     (a line break inside it?)"
                ))
            })?;
            value.set_sensitive(true);
            if name == reqwest::header::AUTHORIZATION && api_key.is_some() {
                return Err(ModelError::Config(
                    "an Authorization header and an API key are both set: the request would \
                     carry two; give one"
                        .to_owned(),
                ));
            }
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(self.timeout.unwrap_or(Duration::from_secs(600)))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| ModelError::Config(err.to_string()))?;
        Ok(OpenAiCompatible {
            client,
            endpoint: endpoint.to_string(),
            api_key,
            model: self.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            temperature: self.temperature,
            token_limit: self.token_limit,
        })
    }
}

impl OpenAiCompatible {
    /// A builder; nothing is read from the environment.
    pub fn builder() -> OpenAiBuilder {
        OpenAiBuilder::default()
    }

    /// A client configured from `OPENAI_BASE_URL` (default OpenAI's),
    /// `OPENAI_API_KEY` and `OPENAI_MODEL` (default [`DEFAULT_MODEL`]).
    /// Fails with [`ModelError::Config`] when neither the base URL nor the
    /// key is set: nothing would answer.
    pub fn from_env() -> Result<Self, ModelError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let base_url = var("OPENAI_BASE_URL");
        let api_key = var("OPENAI_API_KEY");
        if base_url.is_none() && api_key.is_none() {
            return Err(ModelError::Config(
                "no model endpoint configured: set OPENAI_API_KEY (for OpenAI), or OPENAI_BASE_URL \
                 (e.g. http://127.0.0.1:8080/v1 for a local llama.cpp, vLLM or Ollama server), \
                 and optionally OPENAI_MODEL"
                    .to_owned(),
            ));
        }
        let mut builder = Self::builder();
        if let Some(url) = base_url {
            builder = builder.base_url(url);
        }
        if let Some(key) = api_key {
            builder = builder.api_key(key);
        }
        if let Some(model) = var("OPENAI_MODEL") {
            builder = builder.model(model);
        }
        builder.build()
    }

    /// The model name sent with each request.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The JSON body of a chat-completions request.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": request.messages,
        });
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    if request.strict_tools {
                        t.to_openai_strict()
                    } else {
                        t.to_openai()
                    }
                })
                .collect();
            body["tools"] = Value::Array(tools);
            if request.strict_tools {
                // Parallel calls may not match strict schemas (OpenAI's
                // function-calling guide): one call per reply keeps the
                // guarantee strict mode is asked for.
                body["parallel_tool_calls"] = json!(false);
            }
        }
        if let Some(output) = &request.output {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {
                    "name": output.name,
                    "schema": output.schema,
                    "strict": output.strict,
                }
            });
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        match self.token_limit {
            Some(TokenLimit::MaxTokens(n)) => body["max_tokens"] = json!(n),
            Some(TokenLimit::MaxCompletionTokens(n)) => body["max_completion_tokens"] = json!(n),
            None => {}
        }
        body
    }
}

#[async_trait::async_trait]
impl Model for OpenAiCompatible {
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut http = self
            .client
            .post(&self.endpoint)
            .json(&self.request_body(request));
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        let response = http.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        // An error's body is only shown, cut: a gateway's huge error page
        // must not turn a retryable status into an unreadable answer.
        let text = if status.is_success() {
            let (text, cut) = read_body(response, MAX_RESPONSE_BYTES).await?;
            if cut {
                return Err(ModelError::TooLarge(MAX_RESPONSE_BYTES));
            }
            text
        } else {
            read_body(response, BODY_SHOWN)
                .await
                .map(|(text, _)| text)
                .unwrap_or_default()
        };
        if !status.is_success() {
            return Err(ModelError::Status {
                status: status.as_u16(),
                body: shown(&text).to_owned(),
                retry_after,
            });
        }
        parse_completion(&text)
    }
}

/// The most a model's answer may take: a chat completion is kilobytes; a
/// server streaming by mistake, or a gateway's endless page, is not read
/// into memory whole.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The response body as text, at most `max` bytes of it, and whether it
/// was longer (the rest is not read).
async fn read_body(
    mut response: reqwest::Response,
    max: usize,
) -> Result<(String, bool), ModelError> {
    let mut body = Vec::new();
    let mut cut = false;
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&body).into_owned(), cut))
}

/// The wait a response asks for: `retry-after-ms` (OpenAI's), else
/// `retry-after` in seconds (an HTTP date there is not read). At most an
/// hour: a longer one is more likely a mistake than a plan.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    // Capped before the conversion, which panics past `Duration::MAX`.
    let secs = match number("retry-after-ms") {
        Some(ms) => ms / 1000.0,
        None => number("retry-after")?,
    };
    Some(Duration::from_secs_f64(secs.min(3600.0)))
}

fn transport(err: reqwest::Error) -> ModelError {
    // reqwest's message ends in the URL, query included: a key a gateway
    // takes as `?api-key=..` would go into the step's error, its history
    // and the logs.
    let err = err.without_url();
    if err.is_timeout() {
        ModelError::Timeout(workflow_core::error_chain(&err))
    } else if err.is_builder() {
        // A request that cannot be built (a malformed URL) fails every time.
        ModelError::Config(workflow_core::error_chain(&err))
    } else {
        ModelError::Transport(workflow_core::error_chain(&err))
    }
}

/// At most this much of a response body goes into an error (and from
/// there into the instance's history and the console).
const BODY_SHOWN: usize = 2000;

/// `body`, cut to [`BODY_SHOWN`] bytes at a character boundary.
fn shown(body: &str) -> &str {
    &body[..body.floor_char_boundary(BODY_SHOWN)]
}

/// Reads `choices[0]` of a chat-completions response.
fn parse_completion(text: &str) -> Result<ModelResponse, ModelError> {
    let body: Value = serde_json::from_str(text)
        .map_err(|err| ModelError::Decode(format!("{err}: {}", shown(text))))?;
    if !body.is_object() {
        return Err(ModelError::Decode(format!(
            "not a JSON object: {}",
            shown(text)
        )));
    }
    // A gateway's error sent with HTTP 200 (OpenRouter's `{"error": {"code":
    // 502, ..}}`): judged as that status would be, so an upstream outage is
    // retried rather than taken for a reply that cannot be read. One with
    // no HTTP status for a code (`"invalid_api_key"`) is a bad request.
    // `"choices": null` or `[]` beside it is no answer either.
    let no_choices = body
        .get("choices")
        .is_none_or(|c| c.is_null() || c.as_array().is_some_and(Vec::is_empty));
    if let Some(error) = body.get("error").filter(|_| no_choices) {
        let code = error.get("code");
        let status = code
            .and_then(Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..600).contains(code))
            // OpenAI's named codes for passing faults, and for faults of
            // the account or settings, which pause a model loop as their
            // statuses do.
            .or_else(|| match code.and_then(Value::as_str) {
                Some("server_error" | "service_unavailable") => Some(500),
                Some("rate_limit_exceeded" | "insufficient_quota") => Some(429),
                Some("timeout") => Some(408),
                Some("invalid_api_key") => Some(401),
                Some("model_not_found") => Some(404),
                _ => None,
            })
            .unwrap_or(400);
        return Err(ModelError::Status {
            status,
            body: shown(text).to_owned(),
            retry_after: None,
        });
    }
    let choice = body
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| ModelError::Unexpected(format!("no choices in {}", shown(text))))?;
    let message = choice
        .get("message")
        .ok_or_else(|| ModelError::Unexpected(format!("no message in {}", shown(text))))?;
    let content = match message.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        // Some servers send content parts: keep their text.
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    };
    let tool_calls: Vec<ToolCall> = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(n, call)| tool_call(n, call))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    // OpenAI's structured refusal: no content, the reason beside it. An
    // empty one is none (some servers send `""`), and so is one beside
    // tool calls: the calls are the answer.
    if let Some(refusal) = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && tool_calls.is_empty())
    {
        return Ok(ModelResponse {
            content: Some(refusal.to_owned()),
            tool_calls: Vec::new(),
            finish_reason: Some("refusal".to_owned()),
            usage: body.get("usage").cloned(),
        });
    }
    Ok(ModelResponse {
        content,
        tool_calls,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage: body.get("usage").cloned(),
    })
}

/// Tool call `n` of a reply, read leniently: servers that call themselves
/// OpenAI-compatible send its arguments as a JSON object rather than text,
/// or leave out its id. Failing the reply would fail the loop after the
/// call was paid for.
fn tool_call(n: usize, call: &Value) -> Result<ToolCall, ModelError> {
    let function = call
        .get("function")
        .ok_or_else(|| ModelError::Unexpected(format!("tool call {n} has no `function`")))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ModelError::Unexpected(format!("tool call {n} has no function name")))?;
    let arguments = match function.get("arguments") {
        Some(Value::String(text)) => text.clone(),
        None | Some(Value::Null) => String::new(),
        Some(value) => value.to_string(),
    };
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        // Unique, not `call_{n}`: a key for `Tool::call_once` must not
        // repeat from one reply to the next. (The reply is recorded with
        // it, so a replay sees the same id.) Within the 40 characters
        // OpenAI takes for an id sent back: a v7 UUID's last 24 hex digits,
        // its random part.
        _ => {
            let uuid = workflow_core::InstanceId::new().as_str().replace('-', "");
            format!("call_{n}_{}", &uuid[uuid.len() - 24..])
        }
    };
    Ok(ToolCall {
        id,
        kind: "function".to_owned(),
        function: crate::message::FunctionCall {
            name: name.to_owned(),
            arguments,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_timeout_or_a_nan_temperature_is_refused() {
        let builder = || OpenAiCompatible::builder().base_url("http://127.0.0.1:1/v1");
        let err = builder().timeout(Duration::ZERO).build().unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = builder().temperature(f32::NAN).build().unwrap_err();
        assert!(err.to_string().contains("temperature NaN"), "{err}");
        assert!(builder().temperature(0.2).build().is_ok());
    }

    /// The token limit goes under the name chosen, the last one set; none
    /// is sent unless set, and a limit of 0 is refused.
    #[test]
    fn the_token_limit_is_sent_under_the_name_chosen() {
        let builder = || OpenAiCompatible::builder().base_url("http://127.0.0.1:1/v1");
        let request = ModelRequest {
            messages: Vec::new(),
            tools: Vec::new(),
            strict_tools: false,
            output: None,
        };
        let body = builder().build().unwrap().request_body(&request);
        assert!(body.get("max_tokens").is_none() && body.get("max_completion_tokens").is_none());
        let body = builder()
            .max_tokens(512)
            .build()
            .unwrap()
            .request_body(&request);
        assert_eq!(body["max_tokens"], 512);
        assert!(body.get("max_completion_tokens").is_none(), "{body}");
        let body = builder()
            .max_tokens(512)
            .max_completion_tokens(2048)
            .build()
            .unwrap()
            .request_body(&request);
        assert_eq!(body["max_completion_tokens"], 2048);
        assert!(body.get("max_tokens").is_none(), "{body}");
        let err = builder().max_tokens(0).build().unwrap_err();
        assert!(err.to_string().contains("token limit of 0"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_api_key() {
        let builder = OpenAiCompatible::builder()
            .base_url("http://127.0.0.1:1/v1")
            .api_key("sk-secret-123");
        assert!(!format!("{builder:?}").contains("sk-secret"));
        let client = builder.build().unwrap();
        let shown = format!("{client:?}");
        assert!(
            !shown.contains("sk-secret") && shown.contains("<redacted>"),
            "{shown}"
        );
        // A key in the URL (a proxy's basic auth, a query parameter).
        // (A `/` in the password makes a URL that does not parse: refused
        // at build, without showing it.)
        for (url, host_shown) in [
            ("https://u:sk-secret-9@proxy.example/v1", true),
            ("https://u:sk/secret-9@proxy.example/v1", false),
            ("https://proxy.example/v1?api-key=sk-secret-9", true),
            ("https://proxy.example/v1#sk-secret-9", true),
        ] {
            let builder = OpenAiCompatible::builder().base_url(url);
            assert!(!format!("{builder:?}").contains("secret"), "{builder:?}");
            let shown = match builder.build() {
                Ok(client) => format!("{client:?}"),
                Err(err) => err.to_string(),
            };
            assert!(!shown.contains("secret"), "{shown}");
            assert_eq!(shown.contains("proxy.example"), host_shown, "{shown}");
        }
        let err = OpenAiCompatible::builder()
            .base_url("sk-secret-9@proxy.example/v1")
            .build()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-secret"), "{err}");
    }

    #[test]
    fn strict_tools_turn_parallel_calls_off() {
        let client = OpenAiCompatible::builder()
            .base_url("http://127.0.0.1:1/v1")
            .model("m")
            .build()
            .unwrap();
        let tool = workflow_core::Tool::function("add", "Add", |n: u32| async move {
            Ok::<_, std::convert::Infallible>(n + 1)
        });
        let mut request = ModelRequest {
            messages: Vec::new(),
            tools: vec![tool],
            strict_tools: false,
            output: None,
        };
        let body = client.request_body(&request);
        assert!(body.get("parallel_tool_calls").is_none(), "{body}");
        assert_eq!(body["tools"][0]["function"]["strict"], false);
        request.strict_tools = true;
        let body = client.request_body(&request);
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["tools"][0]["function"]["strict"], true);
    }

    #[test]
    fn a_refusal_is_read_as_such() {
        let text = r#"{"choices":[{"message":{"role":"assistant","content":null,
            "refusal":"I can't help with that."},"finish_reason":"stop"}]}"#;
        let r = parse_completion(text).unwrap();
        assert_eq!(r.finish_reason.as_deref(), Some("refusal"));
        assert_eq!(r.content.as_deref(), Some("I can't help with that."));
        assert!(r.tool_calls.is_empty());
    }

    #[test]
    fn a_body_that_is_no_completion_is_cut_short_in_the_error() {
        let page = format!("<html>{}</html>", "x".repeat(10_000));
        let err = parse_completion(&page).unwrap_err().to_string();
        assert!(err.len() < 2_200, "{} bytes", err.len());
        let err = parse_completion(&format!(r#"{{"error":"{}"}}"#, "y".repeat(10_000)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("model endpoint answered HTTP 400"), "{err}");
        assert!(err.len() < 2_200, "{} bytes", err.len());
        let err = parse_completion(r#"{"choices":[]}"#).unwrap_err();
        assert!(!err.is_retryable(), "answered so, answered so again: {err}");
        let err = err.to_string();
        assert!(err.starts_with("model response is not a chat completion: no choices in"));
        // A page, or a body cut short, passes: retried.
        assert!(parse_completion(&page).unwrap_err().is_retryable());
        assert!(parse_completion(r#"{"choices":[{"mess"#)
            .unwrap_err()
            .is_retryable());
    }

    /// A gateway's error in a 200 answer is judged by its code: an upstream
    /// outage is retried, a bad request is not.
    #[test]
    fn an_error_sent_with_http_200_counts_as_its_status() {
        let outage = r#"{"error":{"code":502,"message":"upstream down"}}"#;
        let err = parse_completion(outage).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let beside = r#"{"error":{"code":502},"choices":null}"#;
        assert!(parse_completion(beside).unwrap_err().is_retryable());
        assert!(err.to_string().contains("upstream down"), "{err}");
        let bad = r#"{"error":{"code":400,"message":"bad model"}}"#;
        assert!(!parse_completion(bad).unwrap_err().is_retryable());
        let named = r#"{"error":{"code":"invalid_api_key","message":"no"}}"#;
        let err = parse_completion(named).unwrap_err();
        assert!(!err.is_retryable() && err.needs_setup(), "{err}");
        let quota = r#"{"error":{"code":"insufficient_quota","message":"no"}}"#;
        let err = parse_completion(quota).unwrap_err();
        assert!(!err.is_retryable() && err.needs_setup(), "{err}");
        let unknown = r#"{"error":{"code":"model_not_found","message":"no"}}"#;
        assert!(parse_completion(unknown).unwrap_err().needs_setup());
    }

    #[test]
    fn parses_tool_calls_and_text() {
        let text = r#"{"choices":[{"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"t","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"total_tokens":3}}"#;
        let r = parse_completion(text).unwrap();
        assert_eq!(r.content, None);
        assert_eq!(r.tool_calls[0].function.name, "t");
        assert_eq!(r.tool_calls[0].function.arguments, r#"{"a":1}"#);
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert!(parse_completion("{}").is_err());
    }

    /// Servers that send arguments as an object, or no call id, or an empty
    /// refusal beside tool calls, are read rather than failing a paid call.
    #[test]
    fn reads_loosely_compatible_tool_calls() {
        let text = r#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"",
            "tool_calls":[{"function":{"name":"t","arguments":{"a":1}}},
                          {"id":"","function":{"name":"u"}}]},
            "finish_reason":"tool_calls"}]}"#;
        let r = parse_completion(text).unwrap();
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.tool_calls.len(), 2);
        assert!(
            r.tool_calls[0].id.starts_with("call_0_"),
            "{}",
            r.tool_calls[0].id
        );
        assert_eq!(r.tool_calls[0].function.arguments, r#"{"a":1}"#);
        assert!(r.tool_calls[1].id.starts_with("call_1_"));
        assert!(
            r.tool_calls[0].id.len() <= 40,
            "OpenAI's limit for an id sent back"
        );
        // Made up anew for each reply: a key for `call_once` never repeats.
        let again = parse_completion(text).unwrap();
        assert_ne!(again.tool_calls[0].id, r.tool_calls[0].id);
        assert_eq!(r.tool_calls[1].function.arguments, "");
        let refused = r#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#;
        let r = parse_completion(refused).unwrap();
        assert_eq!(r.finish_reason.as_deref(), Some("refusal"));
        assert_eq!(r.content.as_deref(), Some("no"));
    }

    #[test]
    fn reads_the_wait_a_response_asks_for() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(retry_after(&headers(&[])), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "20")])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after-ms", "1500"),
                ("retry-after", "20")
            ])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2026 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "999999")])),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1e30")])),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn retry_classification() {
        let status = |s| ModelError::Status {
            status: s,
            body: String::new(),
            retry_after: None,
        };
        assert!(status(429).is_retryable());
        let quota = ModelError::Status {
            status: 429,
            body: r#"{"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}"#
                .into(),
            retry_after: None,
        };
        assert!(!quota.is_retryable(), "waiting does not refill a quota");
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(ModelError::Timeout("t".into()).is_retryable());
    }

    /// The account's or the settings' faults pause a model loop; the
    /// request's own (a bad request, a 404 for a path) do not.
    #[test]
    fn setup_and_context_classification() {
        let status = |s, body: &str| ModelError::Status {
            status: s,
            body: body.to_owned(),
            retry_after: None,
        };
        let coded = |code: &str| format!(r#"{{"error": {{"code": "{code}", "message": "m"}}}}"#);
        assert!(status(401, "").needs_setup());
        assert!(status(403, "").needs_setup());
        let flagged = r#"{"error":{"code":403,"message":"Your chosen model requires moderation and your input was flagged","metadata":{"reasons":["harassment"]}}}"#;
        assert!(
            !status(403, flagged).needs_setup(),
            "this request's content"
        );
        let account = r#"{"error":{"code":"account_deactivated","message":"Your account was flagged for abuse"}}"#;
        assert!(status(403, account).needs_setup(), "the account's fault");
        assert!(status(404, &coded("model_not_found")).needs_setup());
        assert!(!status(404, "Not Found").needs_setup());
        // Ollama and vLLM say so in words, with no code.
        let ollama = r#"{"error":{"message":"model \"llama9\" not found, try pulling it first","type":"api_error","param":null,"code":null}}"#;
        assert!(status(404, ollama).needs_setup());
        let vllm = r#"{"object":"error","message":"The model `llama9` does not exist.","type":"NotFoundError","param":null,"code":404}"#;
        assert!(status(404, vllm).needs_setup());
        // A wrong path names no model, even in JSON.
        let path = r#"{"error":{"message":"Not found: /v2/chat/completions"}}"#;
        assert!(!status(404, path).needs_setup());
        assert!(!status(404, "404 page not found").needs_setup());
        assert!(status(429, &coded("insufficient_quota")).needs_setup());
        assert!(!status(429, &coded("rate_limit_exceeded")).needs_setup());
        assert!(!status(400, &coded("invalid_request_error")).needs_setup());
        assert!(!status(500, "").needs_setup());

        assert!(status(400, &coded("context_length_exceeded")).is_context_overflow());
        let llama = r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#;
        assert!(status(400, llama).is_context_overflow());
        let vllm = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","code":400}"#;
        assert!(status(400, vllm).is_context_overflow());
        assert!(!status(400, &coded("invalid_value")).is_context_overflow());
        assert!(!status(500, &coded("context_length_exceeded")).is_context_overflow());
    }
}
