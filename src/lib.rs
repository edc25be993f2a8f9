//! # workflow: durable workflows for Rust
//!
//! Annotate an `async fn` with [`#[workflow]`](macro@workflow), register it
//! with an [`Engine`], start it: every `ctx.step(..)` is checkpointed in a
//! store, so the workflow survives crashes and restarts without repeating
//! completed steps.
//!
//! ```no_run
//! use workflow::prelude::*;
//! use serde::{Deserialize, Serialize};
//! use schemars::JsonSchema;
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct OrderInput { order_id: String }
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct OrderOutput { status: String }
//!
//! /// Process a new customer order
//! #[workflow(name = "processOrder", timeout = "10m")]
//! async fn process_order(ctx: Ctx, input: OrderInput) -> workflow::Result<OrderOutput> {
//!     let total: f64 = ctx.step("fetch-order", || async { workflow::Ok(42.0) }).await?;
//!     ctx.step("charge-payment", || async move { workflow::Ok(total) }).await?;
//!     Ok(OrderOutput { status: format!("charged {total} for {}", input.order_id) })
//! }
//!
//! // Next to the function, the macro declares `struct ProcessOrder;`:
//! assert_eq!(ProcessOrder::NAME, "processOrder");
//! assert_eq!(ProcessOrder::DESCRIPTION, "Process a new customer order");
//! assert_eq!(ProcessOrder::STEPS, ["fetch-order", "charge-payment"]);
//!
//! # async fn run() -> workflow::Result<()> {
//! let engine = Engine::builder()
//!     .database_url("sqlite://workflows.db")
//!     .register(ProcessOrder)
//!     .build()
//!     .await?;
//! let worker = engine.start_worker();
//! let order = ProcessOrder::start(&engine, OrderInput { order_id: "12345".into() }).await?;
//! println!("{}", order.result().await?.status);
//! worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Testing workflows
//!
//! An engine on a [`MemoryStore`] runs real workflows with nothing on disk
//! and nothing shared between tests; give the steps fakes through
//! [`EngineBuilder::data`] and check outputs, recorded steps and history:
//!
//! ```
//! use std::time::Duration;
//! use workflow::prelude::*;
//!
//! /// Stands in for a payment API in tests.
//! #[derive(Default)]
//! struct FakePayments { charged: std::sync::Mutex<Vec<u64>> }
//!
//! #[workflow(name = "charge")]
//! async fn charge(ctx: Ctx, cents: u64) -> workflow::Result<String> {
//!     let payments: &FakePayments = ctx.data()?;
//!     ctx.step("charge", || async {
//!         payments.charged.lock().unwrap().push(cents);
//!         workflow::Ok(format!("paid {cents}"))
//!     })
//!     .await
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // In a #[tokio::test]:
//! let engine = Engine::builder()
//!     .store(workflow::MemoryStore::new())
//!     .data(FakePayments::default())
//!     .register(Charge)
//!     .build()
//!     .await?;
//! let worker = engine.start_worker();
//! let run = Charge::start(&engine, 1999).await?;
//! assert_eq!(run.result_timeout(Duration::from_secs(5)).await?, "paid 1999");
//! let steps: Vec<String> = run.steps().await?.into_iter().map(|s| s.key).collect();
//! assert_eq!(steps, ["charge"]);
//! let payments = engine.data::<FakePayments>().expect("given to the builder");
//! assert_eq!(*payments.charged.lock().unwrap(), [1999]);
//! worker.shutdown().await;
//! # Ok::<_, workflow::Error>(()) }).unwrap();
//! ```
//!
//! ## Features
//!
//! - `macros` (default): the `#[workflow]` attribute.
//! - `ai`: `workflow::ai`, model loops whose every turn is a durable step
//!   (`ctx.execute`) and an OpenAI-compatible chat-completions client.
//! - `sqlite` (default): [`SqliteStore`](sqlite::SqliteStore), and
//!   `sqlite://` URLs; with no URL (nor `WORKFLOW_DATABASE_URL`) the engine
//!   opens `workflows.db` in the current directory.
//! - `postgres`: `postgres::PgStore`, and `postgres://` /
//!   `postgresql://` URLs: many worker processes on many machines, one
//!   database.
//! - `tls` (default): TLS to PostgreSQL through rustls, with the Mozilla
//!   roots (`sslmode` in the URL chooses how strict); without it,
//!   `sslmode=require` fails. Nothing without `postgres`.
//! - `console`: `workflow::console`, the dev console
//!   (`engine.serve_console(addr)`, with `console::ConsoleExt` in the
//!   prelude) and its JSON API.
//!   The `workflow` command-line tool is the binary of the `workflow-console`
//!   crate.
//! - `testing`: `workflow::testing`, the conformance suite every store
//!   passes, to run against a [`Store`] of your own.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// On docs.rs: each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use workflow_core::*;

#[cfg(feature = "macros")]
pub use workflow_macros::workflow;

/// `Ok(value)` with the error type fixed to [`BoxError`], for the closures
/// of steps, whose error type Rust cannot infer from a bare `Ok`:
/// `ctx.step("total", || async { workflow::Ok(a + b) })` instead of
/// `Ok::<_, BoxError>(a + b)`. As `anyhow::Ok`; call it by its path (it is
/// not in the prelude, where it would hide the standard `Ok`). Import
/// `workflow::prelude::*`, not `workflow::*`: the crate root also holds
/// this `Ok` and [`Result`], which would hide the standard ones.
///
/// ```
/// # use workflow::prelude::*;
/// # async fn handler(ctx: Ctx, (a, b): (u32, u32)) -> workflow::Result<u32> {
/// let total = ctx.step("total", || async { workflow::Ok(a + b) }).await?;
/// # Ok(total) }
/// ```
#[allow(non_snake_case)]
pub fn Ok<T>(value: T) -> std::result::Result<T, BoxError> {
    std::result::Result::Ok(value)
}

// Each store, the console and the AI loop are crates of their own, shown
// here with their own crate docs, as sqlx shows its drivers.
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use workflow_sqlite as sqlite;

#[cfg(feature = "postgres")]
#[doc(inline)]
pub use workflow_postgres as postgres;

#[cfg(feature = "console")]
#[doc(inline)]
pub use workflow_console as console;

#[cfg(feature = "ai")]
#[doc(inline)]
pub use workflow_ai as ai;

/// The default database when none is configured: a SQLite file in the
/// current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://workflows.db";

/// The environment variable naming the database when the builder is given
/// none, as it does for the `workflow` CLI: `WORKFLOW_DATABASE_URL`.
pub const DATABASE_URL_VAR: &str = "WORKFLOW_DATABASE_URL";

/// `Engine::builder()`: an [`EngineBuilder`] that opens stores from URLs
/// (`sqlite://..`, `postgres://..`). Given no `.database_url(..)` or
/// `.store(..)`, it opens the URL in [`DATABASE_URL_VAR`]
/// (`WORKFLOW_DATABASE_URL`) if that is set, so a service and the CLI
/// beside it read one setting, and else the embedded SQLite file
/// [`DEFAULT_DATABASE_URL`] (with the `sqlite` feature; without it, a URL
/// is required). In the [`prelude`].
///
/// Sealed: only [`Engine`] implements it, so methods can be added to it.
pub trait EngineExt: sealed::Sealed {
    /// A builder that knows this crate's stores.
    fn builder() -> EngineBuilder;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Engine {}
}

impl EngineExt for Engine {
    fn builder() -> EngineBuilder {
        EngineBuilder::new().connector(UrlConnector)
    }
}

/// Opens the stores compiled into this crate by URL scheme.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlConnector;

#[async_trait::async_trait]
impl Connector for UrlConnector {
    async fn connect(
        &self,
        url: Option<&str>,
        durability: Durability,
    ) -> Result<std::sync::Arc<dyn Store>> {
        if url.is_some() {
            return open_url(url, durability).await;
        }
        let from_env = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|url| !url.trim().is_empty());
        match from_env {
            Some(url) => {
                // Said, since a variable exported for the CLI also steers
                // every test and example that names no store.
                tracing::info!(
                    url = %workflow_core::redact_password(&url),
                    "no database URL given: opening {DATABASE_URL_VAR}"
                );
                open_url(Some(&url), durability)
                    .await
                    .map_err(|err| match err {
                        Error::Config(message) => {
                            Error::Config(format!("{DATABASE_URL_VAR}: {message}"))
                        }
                        other => other,
                    })
            }
            None => open_url(None, durability).await,
        }
    }
}

/// Opens `url`, or the default database given none.
async fn open_url(url: Option<&str>, durability: Durability) -> Result<std::sync::Arc<dyn Store>> {
    #[cfg(not(feature = "sqlite"))]
    if url.is_none() {
        // The default URL names a SQLite file, which this build cannot open.
        return Err(Error::Config(format!(
            "no database URL given, and this build has no SQLite store for the default \
             (`{DEFAULT_DATABASE_URL}`): call `.database_url(\"postgres://..\")`, set \
             {DATABASE_URL_VAR}, or enable the `sqlite` feature of the `workflow` crate"
        )));
    }
    let url = url.unwrap_or(DEFAULT_DATABASE_URL);
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let store = workflow_sqlite::SqliteStore::connect_with(
                url,
                workflow_sqlite::SqliteOptions::new().durability(durability),
            )
            .await?;
            std::result::Result::Ok(std::sync::Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let store = workflow_postgres::PgStore::connect_with(
                url,
                workflow_postgres::PgOptions::new().durability(durability),
            )
            .await?;
            std::result::Result::Ok(std::sync::Arc::new(store))
        }
        "memory" => {
            let _ = durability;
            std::result::Result::Ok(std::sync::Arc::new(MemoryStore::new()))
        }
        _ => Err(workflow_core::unsupported_url(
            url,
            KNOWN_SCHEMES,
            |feature| format!("the `{feature}` feature of the `workflow` crate"),
        )),
    }
}

const KNOWN_SCHEMES: &[&str] = &[
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    "memory",
];

/// What most programs need: `use workflow::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "macros")]
    pub use crate::workflow;
    pub use crate::{
        permanent, Backoff, BoxError, CatchUp, ChildOptions, Ctx, Durability, Engine, EngineExt,
        EventSent, Instance, InstanceId, ManualClock, MemoryStore, NonRetryable, Query, RetryAfter,
        StartOptions, Status, StepOptions, Timeout, WaitingFor, Workflow,
    };
    pub use crate::{Tool, Toolbox};
    #[cfg(feature = "ai")]
    pub use workflow_ai::{Execute, ExecuteExt, Model, OpenAiCompatible};
    #[cfg(feature = "console")]
    pub use workflow_console::ConsoleExt;
}

/// Items the `#[workflow]` macro expands to. Not public API.
#[doc(hidden)]
pub mod __private {
    // Private: public, they would be the paths rustc names in the
    // diagnostics of a type that lacks them (`workflow::__private::..`).
    use schemars::JsonSchema;
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    pub use std::future::Future;
    pub use std::result::Result;
    pub use std::time::Duration;
    pub use workflow_core::{Backoff, BoxError, CatchUp, Ctx, Workflow};

    /// Converts a handler's error into the engine's boxed error.
    pub fn into_box_error<E: Into<BoxError>>(err: E) -> BoxError {
        err.into()
    }

    /// Asserted on a workflow's input type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a workflow input",
        label = "must implement `Serialize`, `Deserialize`, `JsonSchema` and `Send`",
        note = "derive them: `#[derive(Serialize, Deserialize, JsonSchema)]`"
    )]
    pub trait WorkflowInput: Serialize + DeserializeOwned + JsonSchema + Send + 'static {}
    impl<T: Serialize + DeserializeOwned + JsonSchema + Send + 'static> WorkflowInput for T {}

    /// Asserted on a workflow's output type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a workflow output",
        label = "must implement `Serialize`, `Deserialize`, `JsonSchema` and `Send`",
        note = "derive them: `#[derive(Serialize, Deserialize, JsonSchema)]`"
    )]
    pub trait WorkflowOutput: Serialize + DeserializeOwned + JsonSchema + Send + 'static {}
    impl<T: Serialize + DeserializeOwned + JsonSchema + Send + 'static> WorkflowOutput for T {}

    /// Asserted on a workflow's state type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a workflow state",
        label = "must implement `Serialize`, `Deserialize`, `JsonSchema`, `Default` and `Send`",
        note = "derive them: `#[derive(Default, Serialize, Deserialize, JsonSchema)]`"
    )]
    pub trait WorkflowState:
        Serialize + DeserializeOwned + JsonSchema + Default + Send + 'static
    {
    }
    impl<T: Serialize + DeserializeOwned + JsonSchema + Default + Send + 'static> WorkflowState for T {}

    /// Asserted on the input of a scheduled workflow: each tick starts it with `Default`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is the input of a scheduled workflow but does not implement `Default`",
        label = "each cron tick starts the workflow with `Default::default()` as input",
        note = "use `()` as the input, or derive `Default`"
    )]
    pub trait ScheduledInput: Default {}
    impl<T: Default> ScheduledInput for T {}

    /// Asserted on a handler's error type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a workflow handler's error type",
        label = "must convert into `Box<dyn Error + Send + Sync>`",
        note = "use `workflow::Result<T>`, `anyhow::Result<T>`, or an error type implementing `std::error::Error + Send + Sync`"
    )]
    pub trait HandlerError: Into<BoxError> {}
    impl<E: Into<BoxError>> HandlerError for E {}

    /// The output of a handler's return type, for an alias of `Result`
    /// (`AppResult<Out>`).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a `Result`",
        label = "a workflow handler must return a `Result`",
        note = "return `workflow::Result<Output>`, `Result<Output, MyError>` or an alias of one"
    )]
    pub trait HandlerReturn {
        /// The workflow's output type.
        type Output;
    }
    impl<T, E> HandlerReturn for Result<T, E> {
        type Output = T;
    }

    /// The state of a handler's context type, for a context written bare
    /// (`Ctx`): the prelude's, or an alias of a `Ctx<State>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a workflow context",
        label = "the first parameter must be `Ctx` or `Ctx<State>`"
    )]
    pub trait HandlerCtx {
        /// The workflow's state type.
        type State;
    }
    impl<S> HandlerCtx for Ctx<S> {
        type State = S;
    }
}

#[cfg(test)]
mod tests {
    /// Without the `sqlite` feature the default URL cannot be opened: the
    /// error asks for a URL, rather than for a feature the user never
    /// chose to need. (CI runs it in its PostgreSQL-only build.)
    #[cfg(not(feature = "sqlite"))]
    #[tokio::test]
    async fn without_sqlite_no_url_asks_for_one() {
        use super::{Connector, Durability, Error, UrlConnector};
        let err = UrlConnector
            .connect(None, Durability::Durable)
            .await
            .err()
            .expect("no store without a URL");
        assert!(
            matches!(&err, Error::Config(m) if m.contains("no database URL given")
                && m.contains(".database_url(")),
            "{err}"
        );
    }
}
