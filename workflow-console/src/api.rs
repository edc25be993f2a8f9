//! The console's HTTP side: the JSON API, the page, and the checks in front
//! of both (allowed hosts, token, same-origin for changes).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query as QueryString, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use workflow_core::{
    Definition, Engine, Error, ErrorKind, EventSent, InstanceId, InstanceInfo, Query, StartOptions,
    Status, StoreError, Timeout, Violation, WaitingFor,
};

use crate::page;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub token: Option<Arc<str>>,
    /// When set, only `Host` headers naming a loopback host or one of these
    /// (lowercase, without port) are served: a web page on another site
    /// that points its own host name at this server (DNS rebinding) is
    /// refused. Set on loopback and whenever there is no token.
    pub hosts: Option<Arc<[String]>>,
    /// Set for a console mounted with no token (and no `allow_no_token`):
    /// only requests from this machine are served, as axum's
    /// `ConnectInfo<SocketAddr>` tells; without it, none. Anyone can send
    /// a loopback `Host` header, so the host check alone only stops
    /// browsers.
    pub local_only: bool,
    pub overview_cache: Arc<OverviewCache>,
}

/// The overview's answers, reused for a while: every open list page polls
/// it every 2 s, and counting by status reads the whole instance table.
pub(crate) struct OverviewCache {
    ttl: Duration,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Bumped by every change made through the console, so an answer read
    /// before the change, and stored after it, is dropped.
    generation: u64,
    /// After a change, counts are read afresh for one `ttl` (at most
    /// [`AFTER_CHANGE`]): a pause or a cancel lands when the worker gets to
    /// it, and the user who clicked should see it then, not a count cached
    /// just before.
    uncached_until: Option<Instant>,
    counts: HashMap<Option<String>, (Instant, BTreeMap<Status, u64>)>,
    names: Option<(Instant, Vec<String>)>,
}

/// More keys than that (one per workflow filter asked for) and the old
/// ones are dropped: the filter comes from the query string.
const CACHED_COUNTS_MAX: usize = 256;
/// The longest workflow filter whose counts are cached (names are short).
const CACHED_NAME_MAX: usize = 256;

/// The longest an overview is reused.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How long after a change counts are read afresh, at most: long enough
/// for a worker to act on a pause or a cancel.
const AFTER_CHANGE: Duration = Duration::from_secs(10);

impl OverviewCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        OverviewCache {
            // A huge one ("always cache") must not overflow `Instant`.
            ttl: ttl.min(MAX_TTL),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // The data is plain values: a panic elsewhere leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn counts(&self, workflow: &Option<String>) -> Option<BTreeMap<Status, u64>> {
        let inner = self.lock();
        let (at, counts) = inner.counts.get(workflow)?;
        (at.elapsed() < self.ttl).then(|| counts.clone())
    }

    fn names(&self) -> Option<Vec<String>> {
        let inner = self.lock();
        let (at, names) = inner.names.as_ref()?;
        (at.elapsed() < self.ttl).then(|| names.clone())
    }

    /// The inner state if an answer read at `generation` may be kept.
    fn storable(&self, generation: u64) -> Option<std::sync::MutexGuard<'_, CacheInner>> {
        let mut inner = self.lock();
        if self.ttl.is_zero() || inner.generation != generation {
            return None;
        }
        match inner.uncached_until {
            Some(until) if Instant::now() < until => return None,
            Some(_) => inner.uncached_until = None,
            None => {}
        }
        Some(inner)
    }

    fn put_counts(
        &self,
        generation: u64,
        workflow: Option<String>,
        counts: &BTreeMap<Status, u64>,
    ) {
        // A filter no workflow name is that long is not kept: the cache
        // holds at most CACHED_COUNTS_MAX small keys, not what a request
        // may send. Nor one that matched nothing (a made-up name, cheap to
        // count): requests cycling through such names would push out the
        // counts worth keeping.
        if workflow
            .as_ref()
            .is_some_and(|w| w.len() > CACHED_NAME_MAX || counts.values().all(|n| *n == 0))
        {
            return;
        }
        let ttl = self.ttl;
        if let Some(mut inner) = self.storable(generation) {
            if inner.counts.len() >= CACHED_COUNTS_MAX {
                inner.counts.retain(|_, (at, _)| at.elapsed() < ttl);
                if inner.counts.len() >= CACHED_COUNTS_MAX {
                    inner.counts.clear();
                }
            }
            inner
                .counts
                .insert(workflow, (Instant::now(), counts.clone()));
        }
    }

    fn put_names(&self, generation: u64, names: &[String]) {
        if let Some(mut inner) = self.storable(generation) {
            inner.names = Some((Instant::now(), names.to_vec()));
        }
    }

    /// A change was made through the console: its user sees it at once.
    fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.counts.clear();
        inner.names = None;
        inner.uncached_until = Some(Instant::now() + self.ttl.min(AFTER_CHANGE));
    }
}

/// The console's routes: the page at `/`, the API under `/api`.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/instances", get(list))
        .route("/instances/{id}", get(instance))
        .route("/instances/{id}/cancel", post(cancel))
        .route("/instances/{id}/pause", post(pause))
        .route("/instances/{id}/resume", post(resume))
        .route("/instances/{id}/rerun", post(rerun))
        .route("/instances/{id}/events", post(send_event))
        .route("/instances/{id}/timeout", post(set_timeout))
        .route("/workflows", get(workflows))
        .route("/workflows/{name}/start", post(start))
        .route("/schedules", get(schedules))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        // After the routes: it applies to those already added. axum still
        // sets the `Allow` header.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here: reads are GET, changes are POST"),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), api_guard));
    Router::new()
        .route("/", get(page::html))
        .route("/assets/console.js", get(page::script))
        .route("/assets/console.css", get(page::style))
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(state.clone(), host_guard))
        .with_state(state)
}

// ------------------------------------------------------------------ checks

/// Refuses requests addressed to a host name the console does not answer
/// to (see [`AppState::hosts`]).
async fn host_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.local_only {
        // As axum's `ConnectInfo` extractor reads it, a test's mock too.
        let extensions = req.extensions();
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|m| m.0));
        if let Err(err) = local_peer(peer) {
            return err.into_response();
        }
    }
    if let Some(allowed) = &state.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !host_allowed(allowed, host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "host `{host}` is not allowed: the console answers loopback host names \
                     (http://127.0.0.1:PORT, http://localhost:PORT){}; name it with \
                     Console::allowed_hosts (CLI: --allow-host), or set a token",
                    if allowed.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", allowed.join(", "))
                    }
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Whether a console with no token serves a request from `peer` (`None`:
/// the server does not say).
fn local_peer(peer: Option<SocketAddr>) -> Result<(), ApiError> {
    match peer {
        Some(peer) if peer.ip().to_canonical().is_loopback() => Ok(()),
        Some(peer) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this console has no token and serves only requests from this machine \
                 (this one came from {}): give it a token (Console::token), or call \
                 Console::allow_no_token",
                peer.ip()
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this console has no token, and its server does not say where a request comes \
             from: serve the application with \
             `into_make_service_with_connect_info::<SocketAddr>()` (requests from this \
             machine are then served), give the console a token (Console::token), or call \
             Console::allow_no_token",
        )),
    }
}

/// Whether `host` (a `Host` header, or an origin's host) is a loopback name
/// or one of `allowed`.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    is_loopback_host(host)
        || allowed
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host_name(host)))
}

/// Token, method, content type and origin checks for the API, and the
/// headers of every answer, refusals included.
async fn api_guard(state: State<AppState>, req: Request, next: Next) -> Response {
    let mut response = api_checks(state, req, next).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // JSON that carries the data of instances is never a document.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

async fn api_checks(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        if !has_token(req.headers(), token) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send `Authorization: Bearer <token>`",
            )
            .into_response();
        }
    }
    // Reads too: a page of another site can send a GET (an <img>) that it
    // cannot read the answer of, but that still costs the store its work.
    if let Some(Err(err)) = fetch_site(req.headers()) {
        return err.into_response();
    }
    let change = req.method() != Method::GET && req.method() != Method::HEAD;
    if change {
        let allowed = state.hosts.as_deref().unwrap_or(&[]);
        if let Err(err) = same_origin_change(req.method(), req.headers(), allowed) {
            return err.into_response();
        }
    }
    let response = next.run(req).await;
    // Every change goes through here: the overview counts it affected are
    // read afresh (see `OverviewCache`).
    if change && response.status().is_success() {
        state.overview_cache.invalidate();
    }
    response
}

/// What the browser's `Sec-Fetch-Site` says, if it sent one: only the
/// console's own page (`same-origin`) and a typed URL (`none`) pass.
fn fetch_site(headers: &HeaderMap) -> Option<Result<(), ApiError>> {
    let site = headers.get("sec-fetch-site")?.to_str().unwrap_or("");
    Some(if site == "same-origin" || site == "none" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused (Sec-Fetch-Site: {site})"),
        ))
    })
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Compares without returning early at the first difference, so response
/// times do not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// A change must be a POST with a JSON body (which a cross-site HTML form
/// cannot send, and a cross-site script cannot send without a CORS
/// preflight this server never grants), and must not come from another site
/// according to `Sec-Fetch-Site`, which the browser sets and no page can.
/// Only a browser that does not send it has `Origin` checked, against the
/// `Host` header or the `allowed` host names: behind a reverse proxy that
/// rewrites `Host`, the two differ for the console's own page.
fn same_origin_change(
    method: &Method,
    headers: &HeaderMap,
    allowed: &[String],
) -> Result<(), ApiError> {
    if method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "changes are POST requests",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes need `Content-Type: application/json`",
        ));
    }
    if let Some(checked) = fetch_site(headers) {
        return checked;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = origin_host == Some(host) && !host.is_empty();
        // Only names the console was given: any loopback host would let in
        // a page of another server on this machine (another port).
        let named = origin_host.is_some_and(|o| {
            allowed
                .iter()
                .any(|name| name.eq_ignore_ascii_case(host_name(o)))
        });
        if !same && !named {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request refused (Origin: {origin})"),
            ));
        }
    }
    Ok(())
}

/// The name of `host` without its port: `example.com:80` → `example.com`,
/// `[::1]:80` → `::1`; a bare IPv6 address (`--allow-host fe80::1`) is
/// whole, not a name and a port.
pub(crate) fn host_name(host: &str) -> &str {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        host
    } else if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    }
}

/// `localhost`, `127.0.0.1`, `[::1]` and the like, with or without a port.
/// Not `app.localhost`: browsers resolve those to this machine
/// themselves, but a system resolver may ask DNS, whose answer a
/// rebinding page chooses.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// ------------------------------------------------------------------ errors

/// An API error: a status code and `{"error": "...", "violations": [...]}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    violations: Vec<Violation>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            violations: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// This error as the violation of `rule` at `path`, if given.
    fn at_field(mut self, field: Option<(String, &str)>) -> Self {
        if let Some((path, rule)) = field {
            self.violations = vec![Violation::new(path, rule, self.message.clone())];
        }
        self
    }

    /// A 400 for one field of the body: `message`, and the same as the
    /// violation of `rule` at `path`, as an input's are reported.
    fn at(path: &str, rule: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            violations: vec![Violation::new(path, rule, message.clone())],
            message,
        }
    }
}

/// `err`, with the field of the body it refuses (`/key`, `/tags/<name>`)
/// as its violation, when it is about a start's key or tags: a form can
/// mark that field, as for an input's violations.
fn start_refused(err: Error, key: Option<&str>, tags: &BTreeMap<String, String>) -> ApiError {
    let field = match &err {
        Error::InvalidStartOption { what, .. } if what.starts_with("dedup key") => {
            key.map(|key| ("/key".to_owned(), key_rule(key)))
        }
        Error::InvalidStartOption { what, .. }
            if what.starts_with("tag name") || what.starts_with("value of tag") =>
        {
            // The engine checks them in this order, and names the first.
            tags.iter().find_map(|(name, value)| {
                let bad = [name, value]
                    .into_iter()
                    .find(|text| workflow_core::unusable_key(text).is_some())?;
                Some((format!("/tags/{}", pointer_token(name)), key_rule(bad)))
            })
        }
        _ => None,
    };
    ApiError::from(err).at_field(field)
}

/// `err`, with the field of an event's body it refuses (`/name`, `/key`)
/// as its violation.
fn event_refused(err: Error) -> ApiError {
    let field = match &err {
        Error::InvalidEventName { reserved: None, .. } => Some(("/name".to_owned(), "minLength")),
        Error::InvalidEventName { .. } => Some(("/name".to_owned(), "pattern")),
        Error::NameTooLong { .. } => Some(("/name".to_owned(), "maxLength")),
        Error::InvalidEventKey { key } => Some(("/key".to_owned(), key_rule(key))),
        _ => None,
    };
    ApiError::from(err).at_field(field)
}

/// The rule a key or tag the engine refused breaks.
fn key_rule(text: &str) -> &'static str {
    if text.is_empty() {
        "minLength"
    } else if text.len() > workflow_core::MAX_KEY_BYTES {
        "maxLength"
    } else {
        "pattern"
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match (&err, err.kind()) {
            (Error::PayloadTooLarge { .. }, _) => StatusCode::PAYLOAD_TOO_LARGE,
            (_, ErrorKind::NotFound) => StatusCode::NOT_FOUND,
            (_, ErrorKind::Conflict) => StatusCode::CONFLICT,
            // A request's cron or time zone is read as configuration.
            (_, ErrorKind::InvalidInput | ErrorKind::Config) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %err, "console request failed");
        }
        let violations = match &err {
            Error::InvalidInput { violations, .. } => violations.clone(),
            _ => Vec::new(),
        };
        ApiError {
            status,
            message: err.to_string(),
            violations,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "violations": self.violations });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Query-string parameters. A malformed query (`?limit=abc`) is a JSON
/// error like every other, not axum's plain-text rejection. A parameter
/// left empty (`?limit=&after=`, as a form sends its blank fields) is one
/// not given.
struct Params<T>(T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let given: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| {
                pair.split_once('=')
                    .is_some_and(|(_, value)| !value.is_empty())
            })
            .collect();
        let uri = axum::http::Uri::builder()
            .path_and_query(format!("/?{}", given.join("&")))
            .build()
            .map_err(|err| ApiError::bad_request(format!("query string: {err}")))?;
        match QueryString::<T>::try_from_uri(&uri) {
            Ok(QueryString(params)) => Ok(Params(params)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The path's one parameter (an instance id, a workflow name). One that
/// is not UTF-8 once decoded (`/api/instances/%FF`) is an API error in
/// JSON too, not axum's plain text.
struct Segment(String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Segment(segment)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// The request's JSON body. A body axum refused to read (over its 2 MiB
/// limit) is an API error in JSON too, not axum's plain text.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            format!("request body: {}", rejection.body_text()),
        )
    })?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    // The path names the field at fault (`tags.team`), which serde's own
    // message (a line and column) does not; the violation says it as the
    // input's do (`/tags/team`, rule `type`), for code to act on.
    let mut json = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|err| {
        let path = err.path().to_string();
        let pointer = json_pointer(err.path());
        let err = err.into_inner();
        // Without serde's line and column: the path says where.
        let text = err.to_string();
        let message = match (err.is_data(), text.rsplit_once(" at line ")) {
            (true, Some((message, _))) => message.to_owned(),
            _ => text,
        };
        let mut error = if path == "." {
            ApiError::bad_request(format!("request body is not the JSON expected: {message}"))
        } else {
            ApiError::bad_request(format!("request body field `{path}`: {message}"))
        };
        if err.is_data() {
            let rule = body_rule(&message);
            error
                .violations
                .push(Violation::new(pointer, rule, message));
        }
        error
    })?;
    json.end().map_err(|err| {
        ApiError::bad_request(format!("request body is not the JSON expected: {err}"))
    })?;
    Ok(value)
}

/// `key` as one token of a JSON pointer (RFC 6901: `~` and `/` escaped).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `path` as a JSON pointer (`/tags/team`; empty for the root).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|segment| match segment {
            Segment::Seq { index } => format!("/{index}"),
            Segment::Map { key } => format!("/{}", pointer_token(key)),
            Segment::Enum { variant } => format!("/{variant}"),
            Segment::Unknown => "/?".to_owned(),
        })
        .collect()
}

/// The JSON Schema keyword a serde error of a request body stands for,
/// read from the start serde gives each kind of message; `deserialize`
/// for the rest.
fn body_rule(message: &str) -> &'static str {
    if message.starts_with("invalid type") {
        "type"
    } else if message.starts_with("missing field") {
        "required"
    } else if message.starts_with("unknown field") {
        "additionalProperties"
    } else if message.starts_with("unknown variant") || message.starts_with("invalid value") {
        "enum"
    } else {
        "deserialize"
    }
}

// ------------------------------------------------------------------ reads

/// Unknown parameters are refused: a misspelt filter (`?stauts=failed`)
/// would otherwise answer unfiltered, as if it had matched.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverviewParams {
    workflow: Option<String>,
}

/// Status counts (for one workflow or all) and the workflow names known,
/// both reused for a few seconds (see [`OverviewCache`]).
async fn overview(
    State(state): State<AppState>,
    Params(params): Params<OverviewParams>,
) -> ApiResult<Value> {
    let cache = &state.overview_cache;
    let generation = cache.generation();
    let workflow = params.workflow.filter(|w| !w.is_empty());
    let counts = counts(&state, workflow).await?;
    let total: u64 = counts.values().sum();
    let workflows = match cache.names() {
        Some(names) => names,
        None => {
            let names = workflow_names(&state.engine).await?;
            cache.put_names(generation, &names);
            names
        }
    };
    Ok(Json(
        json!({ "counts": counts, "total": total, "workflows": workflows }),
    ))
}

/// The status counts of `workflow` (or all), reused for a few seconds
/// (see [`OverviewCache`]): counting reads every matching row.
async fn counts(
    state: &AppState,
    workflow: Option<String>,
) -> Result<BTreeMap<Status, u64>, Error> {
    let cache = &state.overview_cache;
    let generation = cache.generation();
    if let Some(counts) = cache.counts(&workflow) {
        return Ok(counts);
    }
    let counts = state.engine.counts(workflow.as_deref()).await?;
    cache.put_counts(generation, workflow, &counts);
    Ok(counts)
}

async fn workflow_names(engine: &Engine) -> Result<Vec<String>, Error> {
    let mut names: Vec<String> = engine
        .definitions()
        .await?
        .into_iter()
        .map(|d| d.name)
        .chain(engine.workflows().into_iter().map(|d| d.name))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    pub workflow: Option<String>,
    /// Comma-separated statuses.
    pub status: Option<String>,
    /// `key=value`.
    pub tag: Option<String>,
    /// An instance id or a dedup key.
    pub q: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

/// A row of the instance list: what the table shows, without the JSON values.
#[derive(Debug, Serialize)]
struct Summary {
    id: InstanceId,
    workflow: String,
    status: Status,
    key: Option<String>,
    tags: BTreeMap<String, String>,
    error: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    runs: i64,
    due_at: Option<chrono::DateTime<chrono::Utc>>,
    waiting_for: Option<WaitingFor>,
    pause_requested: bool,
}

impl From<InstanceInfo> for Summary {
    fn from(i: InstanceInfo) -> Self {
        Summary {
            id: i.id,
            workflow: i.workflow,
            status: i.status,
            key: i.key,
            tags: i.tags,
            error: i.error.map(|e| shorten(&e, 300)),
            created_at: i.created_at,
            updated_at: i.updated_at,
            started_at: i.started_at,
            finished_at: i.finished_at,
            runs: i.runs,
            due_at: i.due_at,
            waiting_for: i.waiting_for,
            pause_requested: i.pause_requested,
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The list filters, for checking an instance found by id against them
/// (the store applies them to every other page).
#[derive(Debug, Default)]
pub(crate) struct Filters {
    workflow: Option<String>,
    statuses: Vec<Status>,
    tag: Option<(String, String)>,
}

impl Filters {
    fn matches(&self, found: &InstanceInfo) -> bool {
        self.workflow.as_ref().is_none_or(|w| *w == found.workflow)
            && (self.statuses.is_empty() || self.statuses.contains(&found.status))
            && self
                .tag
                .as_ref()
                .is_none_or(|(k, v)| found.tags.get(k) == Some(v))
    }
}

/// The filters of the list page (and `workflow list`), as a [`Query`], and
/// as [`Filters`] for checking an instance found by id.
pub(crate) fn build_query(params: &ListParams) -> Result<(Query, Filters), String> {
    match params.limit {
        Some(0) => {
            return Err("limit 0 lists nothing: give at least 1 (at most 1000)".to_owned());
        }
        // Said rather than cut to a page: a caller asking for 5,000 would
        // take 1,000 for all there is.
        Some(limit) if limit > 1000 => {
            return Err(format!(
                "limit {limit} is more than a page holds: at most 1000, and `after` for the next page"
            ));
        }
        _ => {}
    }
    let mut query = Query::new().limit(params.limit.unwrap_or(50));
    let mut filters = Filters::default();
    if let Some(workflow) = params.workflow.as_deref().filter(|w| !w.is_empty()) {
        query = query.workflow(workflow);
        filters.workflow = Some(workflow.to_owned());
    }
    for status in params
        .status
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let status: Status = status.parse().map_err(|e| format!("{e}"))?;
        filters.statuses.push(status);
        query = query.status(status);
    }
    if let Some(tag) = params.tag.as_deref().filter(|t| !t.is_empty()) {
        let (name, value) = tag
            .split_once('=')
            .ok_or_else(|| format!("tag filter `{tag}` is not key=value"))?;
        query = query.tag(name.trim(), value.trim());
        filters.tag = Some((name.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some(after) = params.after.as_deref().filter(|a| !a.is_empty()) {
        // A cursor is an instance id: anything else would page from a
        // place no listing gave (everything, for a word sorting past them).
        if uuid::Uuid::parse_str(after).is_err() {
            return Err(format!(
                "after `{after}` is not an instance id: give the `next` of the page before"
            ));
        }
        query = query.after(InstanceId::from(after));
    }
    Ok((query, filters))
}

/// A page of instances, newest first. `q` finds an instance by id, or else
/// the instances with that dedup key.
async fn list(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
) -> ApiResult<Value> {
    let (mut query, filters) = build_query(&params).map_err(ApiError::bad_request)?;
    if let Some(q) = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        match state.engine.instance(&InstanceId::from(q)).await {
            Ok(found) => {
                let items: Vec<Summary> = if filters.matches(&found) {
                    vec![found.into()]
                } else {
                    vec![]
                };
                return Ok(Json(
                    json!({ "items": items, "unreadable": [], "next": null }),
                ));
            }
            Err(Error::NotFound(_)) => query = query.key(q),
            // Named, as a listing names a row it cannot read, rather than
            // a failed search.
            Err(Error::Store(StoreError::Corrupt { id, message })) => {
                let unreadable = json!([{ "id": id, "error": message }]);
                return Ok(Json(
                    json!({ "items": [], "unreadable": unreadable, "next": null }),
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    // Summaries show no JSON documents: the store need not read them.
    let page = state.engine.list(query.summaries()).await?;
    let items: Vec<Summary> = page.items.into_iter().map(Summary::from).collect();
    Ok(Json(
        json!({ "items": items, "unreadable": page.unreadable, "next": page.next }),
    ))
}

/// The most steps (and history events) one answer carries: an instance
/// with a hundred thousand large step outputs would otherwise be read, and
/// held twice (as values, then as text), whole.
const MAX_TAIL: usize = 10_000;

/// How many of the latest steps and events to answer with for `tail`.
fn tail_of(tail: Option<usize>) -> usize {
    tail.unwrap_or(MAX_TAIL).min(MAX_TAIL)
}

/// Everything about one instance: its row, recorded steps and history.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceParams {
    /// Only the last this many steps and history events: the page of a
    /// running instance with thousands of steps polls every two seconds,
    /// and the store then reads only those.
    tail: Option<usize>,
}

/// One instance with its steps and history (the last `tail`, all of them
/// up to [`MAX_TAIL`]), and how many of each it has.
async fn instance(
    State(state): State<AppState>,
    Segment(id): Segment,
    Params(params): Params<InstanceParams>,
) -> ApiResult<Value> {
    let id = InstanceId::from(id);
    let info = state.engine.instance(&id).await?;
    let last = tail_of(params.tail);
    let steps = state.engine.steps_tail(&id, last).await?;
    let history = state.engine.history_tail(&id, last).await?;
    let mut instance = json!(info);
    for field in ["input", "output", "state"] {
        let mut alone = MAX_SHOWN;
        shown(&mut instance, field, &mut alone);
    }
    // The newest steps' outputs first, within the answer's budget.
    let mut budget = MAX_OUTPUTS_SHOWN;
    let mut items: Vec<Value> = steps
        .items
        .into_iter()
        .rev()
        .map(|step| {
            let mut step = json!(step);
            shown(&mut step, "output", &mut budget);
            step
        })
        .collect();
    items.reverse();
    Ok(Json(json!({
        "instance": instance,
        "steps": items,
        "history": history.items,
        "steps_total": steps.total,
        "history_total": history.total,
    })))
}

/// The largest JSON document (an input, output or state) the instance
/// page carries; a larger one is left out, its size said instead.
const MAX_SHOWN: usize = 1 << 20;

/// The most step output one instance answer carries: "Show all" of an
/// instance with thousands of large outputs would otherwise make an
/// answer of gigabytes, built in the engine's own process.
const MAX_OUTPUTS_SHOWN: usize = 16 << 20;

/// Leaves `object[field]` out of an answer (`null`, and `<field>_cut`
/// with its size in bytes) when it is over [`MAX_SHOWN`] or over what is
/// left of `budget`, which it takes its size from otherwise. (`json!` of
/// a value holding a JSON document cannot fail: its keys are strings.)
fn shown(object: &mut Value, field: &str, budget: &mut usize) {
    let Some(value) = object.get(field).filter(|v| !v.is_null()) else {
        return;
    };
    let bytes = json_size(value);
    if bytes <= MAX_SHOWN && bytes <= *budget {
        *budget -= bytes;
        return;
    }
    object[field] = Value::Null;
    object[format!("{field}_cut")] = json!(bytes);
}

/// How many bytes `value` takes as JSON, counted as it is written out
/// (not built as a string).
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A definition with how many of its instances are in each status.
#[derive(Debug, Serialize)]
struct WorkflowEntry {
    definition: Definition,
    counts: BTreeMap<Status, u64>,
    /// Registered with the engine serving the console (its workers run it).
    registered_here: bool,
}

/// The recorded definitions (and those registered here, if not recorded).
async fn workflows(State(state): State<AppState>) -> ApiResult<Value> {
    let mut defs: BTreeMap<String, (Definition, bool)> = state
        .engine
        .definitions()
        .await?
        .into_iter()
        .map(|d| (d.name.clone(), (d, false)))
        .collect();
    for def in state.engine.workflows() {
        defs.insert(def.name.clone(), (def, true));
    }
    let mut out = Vec::with_capacity(defs.len());
    for (name, (definition, registered_here)) in defs {
        let counts = counts(&state, Some(name)).await?;
        out.push(WorkflowEntry {
            definition,
            counts,
            registered_here,
        });
    }
    Ok(Json(json!({ "workflows": out })))
}

/// Every schedule with its next and last fire.
async fn schedules(State(state): State<AppState>) -> ApiResult<Value> {
    let schedules = crate::schedules::all_schedules(&state.engine).await?;
    Ok(Json(json!({ "schedules": schedules })))
}

// ------------------------------------------------------------------ changes

/// Reads the body of a change that takes no fields: `{}` or nothing.
/// Another is a 400, as for every route with a body: a field sent here is
/// a client's mistake (`{"reason": ..}`, meant for another API), and an
/// instance cancelled regardless would hide it. (Read as a map, not as a
/// struct with no fields: serde reads a struct from an array too, and
/// would take `[]`.)
fn no_fields(body: Result<Bytes, BytesRejection>) -> Result<(), ApiError> {
    let fields: serde_json::Map<String, Value> = parse_body(body)?;
    match fields.keys().next() {
        None => Ok(()),
        Some(key) => {
            let message = format!("unknown field `{key}`: this change takes no fields");
            let mut error = ApiError::bad_request(format!("request body: {message}"));
            let pointer = format!("/{}", pointer_token(key));
            error
                .violations
                .push(Violation::new(pointer, "additionalProperties", message));
            Err(error)
        }
    }
}

async fn cancel(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    no_fields(body)?;
    let id = InstanceId::from(id);
    let already = cancel_instance(&state.engine, &id).await?;
    Ok(Json(
        json!({ "id": id, "done": "cancel", "already": already }),
    ))
}

/// Cancels `id`; `true` when it was cancelled already. A cancel repeated
/// after its answer was lost (a retried script, a dialog sent twice) has
/// what it asked for: it is no conflict, as a cancel of an instance that
/// completed, failed or timed out is.
pub(crate) async fn cancel_instance(engine: &Engine, id: &InstanceId) -> Result<bool, Error> {
    match engine.cancel(id).await {
        Ok(()) => Ok(false),
        Err(Error::AlreadyFinished {
            status: Status::Cancelled,
            ..
        }) => Ok(true),
        Err(err) => Err(err),
    }
}

async fn pause(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    no_fields(body)?;
    let id = InstanceId::from(id);
    state.engine.pause(&id).await?;
    Ok(Json(json!({ "id": id, "done": "pause" })))
}

async fn resume(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    no_fields(body)?;
    let id = InstanceId::from(id);
    state.engine.resume(&id).await?;
    Ok(Json(json!({ "id": id, "done": "resume" })))
}

/// A new deadline: `{"in": "2h"}` from now, or `{"at": "2026-12-24T09:00:00Z"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutBody {
    #[serde(rename = "in")]
    after: Option<String>,
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Moves an unfinished instance's deadline (`Engine::set_timeout`), as
/// after a deploy that raised the workflow's `timeout`.
async fn set_timeout(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    let body: TimeoutBody = parse_body(body)?;
    let timeout = match (given(&body.after), body.at) {
        (Some(after), None) => Timeout::In(
            timeout_named("in", after).map_err(|(rule, why)| ApiError::at("/in", rule, why))?,
        ),
        (None, Some(at)) => Timeout::At(
            future_deadline(at).map_err(|why| ApiError::at("/at", "exclusiveMinimum", why))?,
        ),
        _ => {
            return Err(ApiError::at(
                "",
                "oneOf",
                "give the new deadline as one of `in` (`2h`, from now) or `at` (RFC 3339)",
            ))
        }
    };
    let id = InstanceId::from(id);
    state.engine.set_timeout(&id, timeout).await?;
    let deadline_at = state.engine.instance(&id).await?.deadline_at;
    Ok(Json(
        json!({ "id": id, "done": "set_timeout", "deadline_at": deadline_at }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    name: String,
    #[serde(default)]
    payload: Value,
    /// Sends the event at most once per key (`Instance::send_event_once`).
    #[serde(default)]
    key: Option<String>,
}

async fn send_event(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    let body: EventBody = parse_body(body)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::at(
            "/name",
            "minLength",
            "an event name is required",
        ));
    }
    let id = InstanceId::from(id);
    let key = body.key.as_deref();
    let name = body.name.trim();
    let (sent, note) = deliver_event(&state.engine, &id, name, key, body.payload)
        .await
        .map_err(event_refused)?;
    let already_sent = sent == EventSent::AlreadySent;
    Ok(Json(
        json!({ "id": id, "done": "send_event", "event": name, "already_sent": already_sent, "note": note }),
    ))
}

/// A word on an event for an instance that listens for another one (a
/// misspelled name?): the event is kept all the same, for a later wait.
async fn event_note(engine: &Engine, id: &InstanceId, name: &str) -> Option<String> {
    let info = engine.instance(id).await.ok()?;
    match info.waiting_for {
        Some(WaitingFor::Event { name: waits })
            if info.status == Status::Listening && waits != name =>
        {
            Some(format!(
                "it waits for event `{waits}`, not `{name}`; `{name}` is kept until a wait for it"
            ))
        }
        _ => None,
    }
}

/// Shared by the API and the CLI: sends an event, at most once per `key`
/// if one is given; with a note (see [`event_note`]) when the instance
/// listened for another event as it was sent. Looked at before sending:
/// afterwards the instance may have taken the event and moved on to its
/// next wait, which the note would wrongly name.
pub(crate) async fn deliver_event(
    engine: &Engine,
    id: &InstanceId,
    name: &str,
    key: Option<&str>,
    payload: Value,
) -> Result<(EventSent, Option<String>), Error> {
    let note = event_note(engine, id, name).await;
    let sent = match key {
        Some(key) => engine.send_event_once(id, name, key, payload).await?,
        None => engine
            .send_event(id, name, payload)
            .await
            .map(|()| EventSent::Sent)?,
    };
    Ok((sent, note.filter(|_| sent == EventSent::Sent)))
}

/// Starts a new instance of the same workflow with the same input, tags and
/// key, tagged `rerun_of=<id>`. Only for instances that ended. At most one
/// at a time: while a re-run of `id` (or, when it had a key, any instance
/// with that key) is active, a repeated request answers with that one,
/// `created: false`, instead of starting another.
async fn rerun(
    State(state): State<AppState>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    no_fields(body)?;
    let id = InstanceId::from(id);
    let (new, created) = rerun_instance(&state.engine, &id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "id": new, "rerun_of": id, "created": created })),
    ))
}

/// Why a re-run was refused.
#[derive(Debug)]
pub(crate) enum RerunError {
    /// The instance has not ended: a re-run is for instances that did.
    NotEnded(InstanceId, Status),
    /// The engine refused: no such instance, an unknown workflow, the store.
    Workflow(workflow_core::Error),
}

impl std::fmt::Display for RerunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RerunError::NotEnded(id, status) => write!(
                f,
                "instance {id} is still {status}; re-run is for instances that ended"
            ),
            RerunError::Workflow(err) => err.fmt(f),
        }
    }
}

impl From<RerunError> for ApiError {
    fn from(err: RerunError) -> Self {
        match err {
            RerunError::NotEnded(..) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            RerunError::Workflow(err) => err.into(),
        }
    }
}

/// Shared by the API and the CLI: see [`rerun`]. The new instance's id,
/// and whether this call started it (`false`: an active one was found).
pub(crate) async fn rerun_instance(
    engine: &Engine,
    id: &InstanceId,
) -> Result<(InstanceId, bool), RerunError> {
    let old = engine.instance(id).await.map_err(RerunError::Workflow)?;
    if !old.status.is_terminal() {
        return Err(RerunError::NotEnded(id.clone(), old.status));
    }
    let mut options = StartOptions::new();
    for (name, value) in &old.tags {
        if name != "rerun_of" {
            options = options.tag(name.clone(), value.clone());
        }
    }
    options = options.tag("rerun_of", id.to_string());
    // A cron tick's key (`schedule:<tick>`) stands for the tick, and a
    // start may not take it: its re-run goes without, as one with no key
    // does (its `schedule` tag still names the tick).
    let key = old
        .key
        .filter(|key| !key.starts_with(workflow_core::SCHEDULE_KEY_PREFIX));
    // A click repeated after a lost answer, or a retried request, must not
    // run the work twice. With a key that is the key's own guarantee (it
    // also finds an instance a caller started again meanwhile); without
    // one, an active re-run of this instance is looked for first. That
    // look and the start are not atomic, so two re-runs sent at the same
    // moment may both start: a key is the way to rule that out.
    if let Some(key) = key {
        return engine
            .get_or_start_json(&old.workflow, key, old.input, options)
            .await
            .map_err(RerunError::Workflow);
    }
    let mut active = Query::new()
        .summaries()
        .workflow(old.workflow.clone())
        .tag("rerun_of", id.to_string())
        .limit(1);
    for status in Status::ACTIVE {
        active = active.status(status);
    }
    let page = engine.list(active).await.map_err(RerunError::Workflow)?;
    if let Some(running) = page.items.into_iter().next() {
        return Ok((running.id, false));
    }
    engine
        .start_json(&old.workflow, old.input, options)
        .await
        .map(|new| (new, true))
        .map_err(RerunError::Workflow)
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Unknown fields are refused, so an input posted bare (not under
/// `input`) is named as such rather than read as a missing (`null`) input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    input: Value,
    key: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// A deadline like `10m` or `2h`, instead of the workflow's own.
    timeout: Option<String>,
    /// Start this much later, like `30s` or `1h`.
    delay: Option<String>,
    /// At most one active instance per `key`: a retried request finds the
    /// instance the first one started (`Engine::get_or_start_json`).
    #[serde(default)]
    once: bool,
}

/// Starts a workflow from JSON input, checked against its recorded input
/// schema; 422 with every violation when it does not fit.
async fn start(
    State(state): State<AppState>,
    Segment(name): Segment,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: StartBody = parse_body(body)?;
    let mut options = StartOptions::new();
    if let Some(key) = given(&body.key) {
        options = options.key(key);
    }
    for (k, v) in &body.tags {
        options = options.tag(k.clone(), v.clone());
    }
    if let Some(timeout) = given(&body.timeout) {
        options = options.timeout(
            timeout_named("timeout", timeout)
                .map_err(|(rule, why)| ApiError::at("/timeout", rule, why))?,
        );
    }
    if let Some(delay) = given(&body.delay) {
        options =
            options.delay(parse_delay(delay).map_err(|why| ApiError::at("/delay", "format", why))?);
    }
    let (id, created) = if body.once {
        let key = given(&body.key).ok_or_else(|| {
            ApiError::at(
                "/key",
                "dependentRequired",
                "`once` needs a `key`: the start is made once per key",
            )
        })?;
        state
            .engine
            .get_or_start_json(&name, key, body.input, options)
            .await
    } else {
        state
            .engine
            .start_json(&name, body.input, options)
            .await
            .map(|id| (id, true))
    }
    .map_err(|err| start_refused(err, given(&body.key), &body.tags))?;
    // 201 when this request started it; 200 when `once` found it started.
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "id": id, "created": created }))))
}

/// A new deadline at a set time, refused when it is past: the instance
/// would end `TimedOut` at once, for good, which a mistyped year should
/// not do (a cancel ends an instance on purpose).
pub(crate) fn future_deadline(
    at: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if at <= chrono::Utc::now() {
        return Err(format!(
            "deadline {} is past: the instance would time out at once; cancel it to end it now",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }
    Ok(at)
}

/// A start's timeout, as `#[workflow(timeout = ..)]` takes it: a humantime
/// duration of at least 1 ms (a zero one would time the instance out
/// before it ran). The CLI's flags; the API names the field it reads.
#[cfg(feature = "cli")]
pub(crate) fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    timeout_named("timeout", text).map_err(|(_, why)| why)
}

/// [`parse_timeout`] of the field `field`, saying the rule it breaks:
/// `format`, or `minimum` for one under 1 ms.
fn timeout_named(field: &str, text: &str) -> Result<std::time::Duration, (&'static str, String)> {
    match workflow_rules::duration::parse(text) {
        Ok(timeout) if timeout >= std::time::Duration::from_millis(1) => Ok(timeout),
        Ok(_) => Err(("minimum", format!("{field} `{text}`: must be at least 1ms"))),
        Err(err) => Err((
            "format",
            format!("{field} `{text}`: {err}; {DURATION_HINT}"),
        )),
    }
}

/// What to write instead of a duration that does not parse: humantime's
/// own error ("expected number at 0") says where, not what.
const DURATION_HINT: &str = "write a duration such as 90s, 30m, 2h or 7d";

/// A start's delay: a humantime duration (`0s` is no delay).
pub(crate) fn parse_delay(text: &str) -> Result<std::time::Duration, String> {
    workflow_rules::duration::parse(text)
        .map_err(|err| format!("delay `{text}`: {err}; {DURATION_HINT}"))
}

/// A text field of a body, unless left blank.
pub(crate) fn given(text: &Option<String>) -> Option<&str> {
    text.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_at_most_max_tail_steps() {
        assert_eq!(tail_of(None), MAX_TAIL);
        assert_eq!(tail_of(Some(200)), 200);
        assert_eq!(tail_of(Some(usize::MAX)), MAX_TAIL);
        assert_eq!(tail_of(Some(0)), 0);
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:3000",
            "localhost",
            "[::1]:80",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "",
            "10.0.0.1:80",
            "localhost.evil.com",
            "app.localhost:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    /// Made-up workflow names, which match nothing, are not kept: a client
    /// cycling through them cannot push out the counts worth keeping
    /// (past CACHED_COUNTS_MAX entries the cache starts over).
    #[test]
    fn counts_of_made_up_names_are_not_cached() {
        let cache = OverviewCache::new(Duration::from_secs(60));
        let some = BTreeMap::from([(Status::Completed, 3)]);
        cache.put_counts(cache.generation(), Some("real".into()), &some);
        for n in 0..2 * CACHED_COUNTS_MAX {
            let none = BTreeMap::from([(Status::Completed, 0)]);
            cache.put_counts(cache.generation(), Some(format!("made-up-{n}")), &none);
        }
        assert_eq!(cache.counts(&Some("real".into())), Some(some));
        assert_eq!(cache.counts(&Some("made-up-1".into())), None);
        // An empty database's overview is kept all the same.
        let empty = BTreeMap::new();
        cache.put_counts(cache.generation(), None, &empty);
        assert_eq!(cache.counts(&None), Some(empty));
    }

    #[test]
    fn an_overview_cached_for_ever_survives_a_change() {
        let cache = OverviewCache::new(Duration::MAX);
        cache.invalidate();
        assert!(
            cache.storable(cache.generation()).is_none(),
            "read afresh after a change"
        );
    }

    #[test]
    fn bearer_is_matched_whatever_its_case() {
        let mut headers = HeaderMap::new();
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("bearer s3cret", true),
            ("BEARER  s3cret", true),
            ("Basic s3cret", false),
            ("Bearer s3cre", false),
            ("s3cret", false),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(has_token(&headers, "s3cret"), ok, "{value}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn origin_checks() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_ok());
        assert!(same_origin_change(&Method::DELETE, &headers, &[]).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9000"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_err());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_ok());
        // Behind a reverse proxy that rewrites `Host`, the page's own
        // changes carry an `Origin` naming the public host: the browser's
        // `Sec-Fetch-Site` decides.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://ops.example.com"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_ok());
        // A browser without `Sec-Fetch-Site`: `Origin` must be the `Host`
        // or a host name the console was given.
        headers.remove("sec-fetch-site");
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_err());
        let allowed = ["ops.example.com".to_owned()];
        assert!(same_origin_change(&Method::POST, &headers, &allowed).is_ok());
        // Another server on this machine is another origin.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:3000"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3000"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &[]).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://ops.example.com"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(same_origin_change(&Method::POST, &headers, &allowed).is_err());
    }

    #[test]
    fn allowed_hosts_are_matched_by_name() {
        let allowed = ["ops.example.com".to_owned()];
        for ok in ["ops.example.com", "OPS.example.com:443", "localhost:1"] {
            assert!(host_allowed(&allowed, ok), "{ok}");
        }
        for bad in ["example.com", "ops.example.com.evil", ""] {
            assert!(!host_allowed(&allowed, bad), "{bad}");
        }
        assert!(!host_allowed(&[], "ops.example.com"));
        // `Console::allowed_hosts` keeps names through host_name: a bare
        // IPv6 address is one, not a name and a port.
        let allowed = [host_name("fe80::1").to_owned()];
        assert!(host_allowed(&allowed, "[fe80::1]:8080"));
        assert!(!host_allowed(&allowed, "[fe80::2]:8080"));
        assert_eq!(host_name("[fe80::1]:8080"), "fe80::1");
        assert_eq!(host_name("example.com:80"), "example.com");
    }
}
