//! Dev console and command-line tool for the `workflow` crate: see and steer
//! every workflow without writing code.
//!
//! - A web console: `engine.serve_console("127.0.0.1:8080").await` (with
//!   [`ConsoleExt`]), or `workflow console --db URL` from the CLI. One
//!   embedded page (no Node, no CDN: it works offline) over a JSON API:
//!   instances with status counts, filters and paging that update live;
//!   one instance's input, output, error, state, step timeline and history,
//!   with cancel, pause, resume, a new deadline, send-event and re-run;
//!   schedules; and the
//!   recorded workflows with their schemas and a form to start one.
//! - The `workflow` CLI (binary of this crate): `workflows`, `run`, `list`,
//!   `show`, `history`, `cancel`, `pause`, `resume`, `set-timeout`,
//!   `send-event`, `rerun`, `purge`, `schedules`, `console`, working on a
//!   database URL without the
//!   workflow code (engines record their definitions in the store).
//!
//! The JSON API, under `/api` (errors are `{"error", "violations": [{"path", "rule", "message"}]}`:
//! a 422 lists the input's violations, a 400 for a body that does not fit
//! the request names its field, as `/tags/team` with rule `type`,
//! `required`, `additionalProperties`, `enum` or `deserialize`, and so
//! does a value the route refuses: a 400 for `/in` or `/timeout` with
//! `format` (a duration that does not parse) or `minimum`, `/at` with
//! `exclusiveMinimum` (a past deadline), `/key` with `dependentRequired`
//! (`once` without a key); a 422 for a key or tag no store can hold
//! (`/key`, `/tags/team` with `minLength`, `maxLength` or `pattern`) and
//! an event name no wait can have (`/name`);
//! on the routes that take query parameters, one the route does not take is
//! a 400, not ignored):
//!
//! | route | what |
//! |---|---|
//! | `GET overview?workflow=` | `{counts, total, workflows}`: instances per status, reused for a few seconds ([`Console::overview_cache`]) |
//! | `GET instances?workflow=&status=failed,paused&tag=k=v&q=&limit=&after=` | `{items, unreadable, next}`, newest first; `q` is an id or a key, `limit` 50 by default, from 1 to 1,000 (others are a 400), `next` the `after` of the next page (an `after` that is not an instance id is a 400); a parameter left empty is one not given; `unreadable` names rows that cannot be read (`{id, error}`), the rest still listed |
//! | `GET instances/{id}?tail=` | `{instance, steps, history, steps_total, history_total}`; with `tail`, only the last that many steps and history events; without, the last 10,000. An input, output or state over 1 MiB, and step outputs past 16 MiB in all (the oldest first), are `null` with `<field>_cut`: their size in bytes |
//! | `POST instances/{id}/cancel`, `pause`, `resume` | body `{}` or none (a field is a 400): `{id, "done": "cancel", "already"}` (`pause`, `resume`: no `already`); a cancel of one already cancelled is `"already": true`, of one that ended otherwise a 409 |
//! | `POST instances/{id}/rerun` | body `{}`: 201 `{id, rerun_of, "created": true}`, a new instance with the same input, key and tags; 200 `{.., "created": false}` with the one already active when a re-run of that instance (or, with a key, an instance with that key) is, so a repeated click starts nothing more |
//! | `POST instances/{id}/events` | body `{"name": "approval", "payload": {..}, "key"?}`: `{id, "done": "send_event", already_sent, note}`; with a `key`, sent at most once per instance and key; `note` says when the instance listened for another event as it was sent |
//! | `POST instances/{id}/timeout` | body `{"in": "2h"}` (from now) or `{"at": "2026-12-24T09:00:00Z"}`: `{id, "done": "set_timeout", deadline_at}`, a new deadline for an unfinished instance (409 once it ended) |
//! | `GET workflows` | every recorded definition, with its schemas and counts |
//! | `POST workflows/{name}/start` | body `{"input": {..}, "key"?, "tags"?, "timeout"?: "10m", "delay"?: "1h", "once"?: true}`: 201 `{id, "created": true}`, 422 with the input's violations; with `once` (and a `key`), 200 `{id, "created": false}` when an active instance has that key ([`Engine::get_or_start_json`](workflow_core::Engine::get_or_start_json)), so a retried request starts nothing more while the first one's instance is active |
//! | `GET schedules` | next fire, last fire and its instance |
//!
//! A POST needs `Content-Type: application/json`; with a token, every call
//! needs `Authorization: Bearer <token>`.
//!
//! Safety: bind a loopback address (the default of the CLI); set a token
//! ([`Console::token`], `--token`, `WORKFLOW_CONSOLE_TOKEN`) and every API
//! call must carry it. An address other machines can reach is refused
//! without a token unless [`Console::allow_no_token`] says so. Without a
//! token, or on loopback, only requests for a loopback host name or one of
//! [`Console::allowed_hosts`] are served (no DNS rebinding). Changes are
//! POST requests with a JSON body and are refused when the browser says
//! they come from another site. A bound console serves at most 256
//! connections at once and closes one silent for 60 s: clients holding
//! connections open cannot take the file descriptors the engine in the
//! same process needs.
//!
//! ```no_run
//! # async fn run(engine: workflow_core::Engine) -> Result<(), workflow_console::ConsoleError> {
//! use workflow_console::ConsoleExt;
//! let server = engine.console().token("s3cret").bind("127.0.0.1:8080").await?;
//! println!("console at {}", server.url());
//! server.wait().await
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// On docs.rs: each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use workflow_core::{CancellationToken, Engine};

mod api;
// The `workflow` command's arguments and runner: the binary's, not a
// stable library API (every new flag would be a breaking change).
#[doc(hidden)]
#[cfg(feature = "cli")]
pub mod cli;
mod connect;
mod listener;
mod page;
mod schedules;

pub use crate::connect::{connect, ConsoleConnector, DEFAULT_DATABASE_URL};
pub use crate::schedules::all_schedules;
/// The axum whose [`Router`](axum::Router) [`Console::router`] returns, to
/// nest it without an axum dependency of a matching version.
pub use axum;

/// Environment variable the CLI reads the console token from.
pub const TOKEN_ENV: &str = "WORKFLOW_CONSOLE_TOKEN";

/// Why the console could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The address could not be bound or the server failed. The I/O
    /// error is in the message, so not also `source()`.
    #[error("console server: {0}")]
    Io(std::io::Error),
    /// The engine or its store failed.
    #[error(transparent)]
    Workflow(#[from] workflow_core::Error),
    /// The token holds a character other than visible ASCII (a space, a
    /// letter with an accent): no browser can send it in a header.
    #[error("the console token holds {0:?}, which no browser sends in a header: use visible ASCII characters only")]
    BadToken(char),
    /// [`Console::bind`] was given an address other machines can reach,
    /// without a token and without [`Console::allow_no_token`].
    #[error(
        "console on {addr} would be reachable from other machines with no token: anyone reaching it \
         could steer every workflow; set a token (Console::token), or call Console::allow_no_token \
         to serve it open"
    )]
    NoToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// [`Console::bind`] was given an address other machines can reach and
    /// a token shorter than [`MIN_OPEN_TOKEN`] characters: tried at the
    /// speed of the network, it would not hold long.
    #[error(
        "console on {addr} would be reachable from other machines with a {len}-character token: \
         use at least {MIN_OPEN_TOKEN} random characters (e.g. `openssl rand -hex 16`)"
    )]
    ShortToken {
        /// The address asked for.
        addr: SocketAddr,
        /// The token's length.
        len: usize,
    },
}

/// The fewest characters of a token guarding a console other machines can
/// reach.
pub const MIN_OPEN_TOKEN: usize = 16;

/// A failure to bind or serve.
impl From<std::io::Error> for ConsoleError {
    fn from(err: std::io::Error) -> Self {
        ConsoleError::Io(err)
    }
}

/// So that `engine.serve_console(addr).await?` works in a function that
/// returns `workflow::Result`: a server failure (a port in use) becomes
/// [`Error::Config`](workflow_core::Error::Config) with the same message.
impl From<ConsoleError> for workflow_core::Error {
    fn from(err: ConsoleError) -> Self {
        match err {
            ConsoleError::Workflow(err) => err,
            other => workflow_core::Error::Config(other.to_string()),
        }
    }
}

/// A console over one engine, to configure and then [`bind`](Console::bind)
/// or turn into a [`Router`](axum::Router) to mount in an application.
#[derive(Clone)]
#[must_use]
pub struct Console {
    engine: Engine,
    token: Option<String>,
    overview_cache: Duration,
    hosts: Vec<String>,
    no_token: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("engine", &self.engine)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("overview_cache", &self.overview_cache)
            .field("hosts", &self.hosts)
            .field("no_token", &self.no_token)
            .finish()
    }
}

impl Console {
    /// A console over `engine`, with no token.
    pub fn new(engine: Engine) -> Self {
        Console {
            engine,
            token: None,
            overview_cache: Duration::from_secs(5),
            hosts: Vec::new(),
            no_token: false,
        }
    }

    /// Requires this token (`Authorization: Bearer <token>`) on every API
    /// call. The page asks for it, or takes it once from `#token=` in its
    /// address (as in [`ConsoleServer::url`]). An empty token means none.
    /// [`Console::bind`] refuses a token a browser cannot send in a header
    /// (anything but visible ASCII: [`ConsoleError::BadToken`]).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// How long the list page's status counts and workflow names are
    /// reused before being read again (5 s by default). Every open list
    /// page polls every 2 s, and counting reads the whole instance table;
    /// a change made through the console is shown at once all the same.
    /// Zero reads them on every poll.
    pub fn overview_cache(mut self, max_age: Duration) -> Self {
        self.overview_cache = max_age;
        self
    }

    /// Also answers requests addressed to these host names (`ops.example.com`;
    /// a port, if given, is ignored), besides the loopback ones. Where the
    /// console checks the `Host` header (see [`Console::bind`] and
    /// [`Console::router`]), a request for any other name is refused: a web
    /// page on another site could otherwise point its own name at this
    /// server (DNS rebinding) and drive the console from a visitor's
    /// browser. Naming hosts turns the check on in every case.
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.hosts = hosts
            .into_iter()
            .map(|h| api::host_name(h.as_ref()).to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        self
    }

    /// Lets [`Console::bind`] serve an address other machines can reach
    /// without a token, which it refuses otherwise, and a
    /// [`Console::router`] with no token serve requests from other
    /// machines: anyone reaching the port can then read and steer every
    /// workflow. For a private network
    /// or a container whose port only you reach. The `Host` check still
    /// applies, so name the hosts it is reached by with
    /// [`Console::allowed_hosts`].
    pub fn allow_no_token(mut self) -> Self {
        self.no_token = true;
        self
    }

    /// The console's routes (`/` the page, `/api/..` the API), to serve
    /// yourself or nest in an application's router (`.nest("/console/", ..)`).
    ///
    /// Without a token it answers only requests addressed to a loopback
    /// host name (`localhost`, `127.0.0.1`) or one named with
    /// [`Console::allowed_hosts`], so that no other site's page can reach
    /// it through a visitor's browser; with a token, every host name unless
    /// some are named.
    ///
    /// Without a token (and without [`Console::allow_no_token`]) it also
    /// serves only requests from this machine, as axum's
    /// `ConnectInfo<SocketAddr>` tells: serve the application with
    /// `into_make_service_with_connect_info::<SocketAddr>()`, or every
    /// request is refused (403, saying so). A `Host` header is whatever
    /// the sender writes, so the host check alone does not keep out a
    /// program on another machine. Behind a reverse proxy on this machine,
    /// every request comes from it: give the console a token.
    ///
    /// Mounted, it shares the application's origin: the browser treats any
    /// page the application serves as the console's own, so a script
    /// injected anywhere in the application could make changes. Bind it on
    /// a port of its own ([`Console::bind`]) unless the application is as
    /// trusted.
    ///
    /// ```no_run
    /// # async fn f(engine: workflow_core::Engine) -> std::io::Result<()> {
    /// use std::net::SocketAddr;
    /// use workflow_console::Console;
    ///
    /// let app = axum::Router::new().nest("/console/", Console::new(engine).router());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    /// # }
    /// ```
    pub fn router(&self) -> axum::Router {
        if let Some(token) = self.token.as_deref() {
            if token.chars().any(|c| !c.is_ascii_graphic()) {
                tracing::warn!("the console's token has a character a browser cannot send in a header (a space, a control character, or beyond ASCII): the page cannot use it");
            } else if token.len() < MIN_OPEN_TOKEN {
                tracing::warn!(
                    len = token.len(),
                    "the console's token is short: a mounted console may be reachable from other machines; use {MIN_OPEN_TOKEN} characters or more"
                );
            }
        }
        api::router(self.state(false, self.token.is_none() && !self.no_token))
    }

    /// `loopback`: the server listens on a loopback address only.
    /// `local_only`: serve only requests from this machine.
    fn state(&self, loopback: bool, local_only: bool) -> api::AppState {
        let check_hosts = loopback || self.token.is_none() || !self.hosts.is_empty();
        api::AppState {
            engine: self.engine.clone(),
            token: self.token.as_deref().map(Arc::from),
            hosts: check_hosts.then(|| Arc::from(self.hosts.clone())),
            local_only,
            overview_cache: Arc::new(api::OverviewCache::new(self.overview_cache)),
        }
    }

    /// Listens on `addr` (port 0 picks a free port) and serves the console
    /// in the background until the returned server is shut down or dropped.
    ///
    /// On a loopback address, or without a token, the console answers only
    /// requests addressed to a loopback host name (`127.0.0.1`,
    /// `localhost`) or one named with [`Console::allowed_hosts`], which
    /// keeps web pages of other sites from reaching it by pointing their
    /// own host name at it. An address other machines can reach needs a
    /// token, or [`Console::allow_no_token`]: anyone who can reach the port
    /// could otherwise steer every workflow ([`ConsoleError::NoToken`]).
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<ConsoleServer, ConsoleError> {
        if let Some(bad) = self
            .token
            .as_deref()
            .and_then(|t| t.chars().find(|c| !c.is_ascii_graphic()))
        {
            return Err(ConsoleError::BadToken(bad));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            match self.token.as_deref() {
                None if !self.no_token => return Err(ConsoleError::NoToken { addr: *open }),
                Some(token) if token.len() < MIN_OPEN_TOKEN => {
                    return Err(ConsoleError::ShortToken {
                        addr: *open,
                        len: token.len(),
                    })
                }
                _ => {}
            }
        }
        let listener = TcpListener::bind(&addrs[..]).await.map_err(|err| {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            std::io::Error::new(
                err.kind(),
                format!("cannot listen on {}: {err}", addrs.join(", ")),
            )
        })?;
        let local = listener.local_addr()?;
        let loopback = local.ip().is_loopback();
        if !loopback && self.token.is_none() {
            tracing::warn!(%local, "console listens beyond this machine without a token (allow_no_token): anyone who reaches the port can steer workflows");
        }
        // `bind` refused an open address without a token or consent.
        let app = api::router(self.state(loopback, false));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener::Capped::new(listener), app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        let server = ConsoleServer {
            addr: local,
            token: self.token,
            stop,
            task: Some(task),
        };
        // The address only: the URL would put the token in the logs.
        tracing::info!(addr = %local, token = server.token.is_some(), "workflow console listening");
        Ok(server)
    }
}

/// A console being served; stops when shut down or dropped.
#[must_use = "the console stops serving when this is dropped"]
pub struct ConsoleServer {
    addr: SocketAddr,
    token: Option<String>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for ConsoleServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleServer")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ConsoleServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, with the token (if any) for the browser to take,
    /// as a fragment (`/#token=..`): a browser never sends it to the server,
    /// so no access log or tracing layer in front of the console sees it.
    pub fn url(&self) -> String {
        match &self.token {
            Some(token) => format!("{}#token={}", self.page_url(), query_escape(token)),
            None => self.page_url(),
        }
    }

    /// The page's address without the token. Bound to every interface
    /// (`0.0.0.0`, `[::]`), it names the loopback one: a browser cannot
    /// open the unspecified address (and the console would not answer
    /// that host name).
    pub fn page_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/")
    }

    /// Stops serving; requests in flight finish first.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// A token that stops the server when cancelled, for code that gave the
    /// server itself to [`ConsoleServer::wait`].
    pub fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until stopped (see [`ConsoleServer::stopper`]) or the server fails.
    pub async fn wait(mut self) -> Result<(), ConsoleError> {
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => Ok(result?),
                Err(join) => Err(ConsoleError::Io(std::io::Error::other(join))),
            },
            None => Ok(()),
        }
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the console of `engine` on `addr` until the server fails. See
/// [`Console::bind`] for what is checked; use [`Console`] for a token.
pub async fn serve_console(engine: Engine, addr: impl ToSocketAddrs) -> Result<(), ConsoleError> {
    Console::new(engine).bind(addr).await?.wait().await
}

/// `engine.serve_console(addr)` and `engine.console()`. In the facade's
/// prelude with feature `console`. Sealed: only [`Engine`] implements it,
/// so methods can be added to it.
pub trait ConsoleExt: sealed::Sealed {
    /// Serves the console on `addr` (e.g. `"127.0.0.1:8080"`) until the
    /// server fails; see [`serve_console`].
    fn serve_console<A: ToSocketAddrs + Send>(
        &self,
        addr: A,
    ) -> impl Future<Output = Result<(), ConsoleError>> + Send;

    /// A [`Console`] to configure (token) and bind, or mount as a router.
    fn console(&self) -> Console;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for workflow_core::Engine {}
}

impl ConsoleExt for Engine {
    fn serve_console<A: ToSocketAddrs + Send>(
        &self,
        addr: A,
    ) -> impl Future<Output = Result<(), ConsoleError>> + Send {
        serve_console(self.clone(), addr)
    }

    fn console(&self) -> Console {
        Console::new(self.clone())
    }
}

// Served from a task of its own: see workflow-core's check of the same kind.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Console>();
    send_sync::<ConsoleServer>();
    send_sync::<ConsoleError>();
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The I/O error is in the message, and not returned again as its source.
    #[test]
    fn a_server_failure_prints_its_cause_once() {
        let err = ConsoleError::Io(std::io::Error::other("address in use"));
        assert_eq!(err.to_string(), "console server: address in use");
        assert!(std::error::Error::source(&err).is_none());
    }

    /// A port in use is an error that names the address.
    #[tokio::test]
    async fn a_port_in_use_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let engine = workflow_core::EngineBuilder::new()
            .store(workflow_core::MemoryStore::new())
            .build()
            .await
            .unwrap();
        let err = Console::new(engine.clone()).bind(addr).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("console server: cannot listen on {addr}: ")),
            "{err}"
        );
        // `?` in a function returning the engine's own `Result`.
        async fn serve(engine: Engine, addr: SocketAddr) -> workflow_core::Result<()> {
            engine.serve_console(addr).await?;
            Ok(())
        }
        let err = serve(engine, addr).await.unwrap_err();
        assert!(
            matches!(&err, workflow_core::Error::Config(m) if m.starts_with("console server: cannot listen")),
            "{err:?}"
        );
    }

    #[test]
    fn tokens_are_escaped_in_the_url() {
        assert_eq!(super::query_escape("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(super::query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
