//! A scripted chat-completions server on loopback: a tiny HTTP/1.1
//! responder (one request per connection, `Connection: close`) that
//! records every request and answers from a script.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request line's target: path and query.
    pub target: String,
    pub body: Value,
    pub authorization: Option<String>,
    /// Every header line, as sent (`name: value`).
    pub headers: Vec<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

type Script = dyn Fn(usize, &Value) -> (u16, Value) + Send + Sync;

pub struct Server {
    /// Base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Answers request `n` (0-based) with `script(n, body)`: status and JSON.
    pub async fn start(
        script: impl Fn(usize, &Value) -> (u16, Value) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
                    tokio::spawn(async move {
                        let _ = serve(stream, seen, script).await;
                    });
                }
            }
        });
        Server { url, seen, task }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        assert!(buf.len() < 1 << 20, "headers too large");
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value =
        serde_json::from_slice(&buf[header_end..header_end + length]).unwrap_or(Value::Null);
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            target: head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
            body: body.clone(),
            authorization: header("authorization"),
            headers: head
                .lines()
                .skip(1)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
            at: std::time::Instant::now(),
        });
        seen.len() - 1
    };
    let (status, reply) = script(n, &body);
    let reply = reply.to_string();
    // A rate limit says when to come back, as OpenAI's does.
    let retry_after = if status == 429 {
        format!("retry-after-ms: {RETRY_AFTER_MS}\r\n")
    } else {
        String::new()
    };
    let response = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\n{retry_after}Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A chat completion with text only.
pub fn text(content: &str) -> (u16, Value) {
    (
        200,
        json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }),
    )
}

/// A chat completion asking for one tool call.
pub fn tool_call(id: &str, name: &str, args: Value) -> (u16, Value) {
    tool_call_raw(id, name, &args.to_string())
}

/// A chat completion asking for one tool call, its arguments as sent.
pub fn tool_call_raw(id: &str, name: &str, arguments: &str) -> (u16, Value) {
    (
        200,
        json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function",
                     "function": {"name": name, "arguments": arguments}}]}}]
        }),
    )
}

/// A chat completion asking for calls of tool `name`, one per arguments
/// object, with ids `c0`, `c1`...
pub fn tool_calls(name: &str, args: impl IntoIterator<Item = Value>) -> (u16, Value) {
    let calls: Vec<Value> = args
        .into_iter()
        .enumerate()
        .map(|(i, args)| {
            json!({"id": format!("c{i}"), "type": "function",
                "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    (
        200,
        json!({"choices": [{"finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": calls}}]}),
    )
}

/// The wait a scripted 429 asks for (`retry-after-ms`).
pub const RETRY_AFTER_MS: u64 = 300;

/// An HTTP error with an OpenAI-style body.
pub fn error(status: u16) -> (u16, Value) {
    (
        status,
        json!({"error": {"message": format!("scripted {status}"), "type": "test"}}),
    )
}

/// The last message of a request.
pub fn last_message(body: &Value) -> &Value {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .expect("messages")
}

/// Whether the environment gives a model (`OPENAI_BASE_URL` or
/// `OPENAI_API_KEY`), which a test of a worker without one cannot run
/// under: it says it is skipped.
pub fn model_settings_set(test: &str) -> bool {
    let set = ["OPENAI_BASE_URL", "OPENAI_API_KEY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if set {
        eprintln!("{test}: skipped: OPENAI_* is set");
    }
    set
}
