//! Runtime of the `workflow` crate: the [`Workflow`] trait, the [`Engine`]
//! and its workers, [`Ctx`] with durable steps, the [`Store`] contract and an
//! in-memory store. Most users depend on the `workflow` facade instead.
#![warn(missing_docs)]
// On docs.rs: each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod ctx;
mod data;
mod engine;
mod error;
mod event;
mod health;
mod history;
mod id;
mod instance;
mod memory;
mod patch;
mod retention;
mod schedule;
mod scheduler;
mod schema;
mod signal;
mod status;
mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod tool;
mod tool_schema;
mod validate;
mod wait;
mod worker;
mod workflow;

pub use crate::ctx::{Ctx, HeldName, StateMut, StateRef, RESERVED_STEP_CHARS};
pub use crate::engine::{
    Connector, Durability, Engine, EngineBuilder, DEFAULT_MAX_PAYLOAD, MAX_ERROR_BYTES,
    MAX_EVENT_KEY_BYTES, MAX_KEY_BYTES, MAX_PAYLOAD_LIMIT, PURGE_MARGIN,
};
pub use crate::error::{BoxError, Conversation, Error, ErrorKind, Interrupt, Result, StoreError};
pub use crate::event::Event;
pub use crate::health::{Failing, Health};
pub use crate::history::{HistoryEvent, HistoryKind};
pub use crate::id::InstanceId;
pub use crate::instance::{
    ChildOptions, EventSent, GetOrCreate, Instance, InstanceInfo, Page, Query, StartOptions,
    StepInfo, Tail, Timeout, Unreadable, WaitingFor,
};
pub use crate::memory::MemoryStore;
pub use crate::schedule::{
    CatchUp, Clock, ManualClock, Schedule, ScheduleInfo, SystemClock, SCHEDULE_KEY_PREFIX,
    SCHEDULE_TAG,
};
pub use crate::schema::schema_for;
pub use crate::signal::shutdown_signal;
pub use crate::status::{ParseStatusError, Status};
pub use crate::step::{permanent, Backoff, NonRetryable, RetryAfter, StepOptions};
pub use crate::store::Store;
pub use crate::tool::{is_valid_tool_name, Tool, ToolReply, Toolbox};
pub use crate::tool_schema::strict_schema;
pub use crate::validate::Violation;
pub use crate::worker::{Stopped, Worker};
pub use crate::workflow::{Definition, Workflow};
// For the sibling crates (the facade's and the console's URL openers, the
// AI client, tests); not part of the API users build on.
#[doc(hidden)]
pub use crate::{
    engine::redact_password, engine::unsupported_url, engine::PURGE_BATCH, error::error_chain,
    error::unusable_key,
};
pub use tokio_util::sync::CancellationToken;

// Handles users move across tasks and threads, and errors they send on:
// a field that made one of them lose `Send` or `Sync` would break user
// code, so it breaks this crate's build first.
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Engine>();
    send_sync::<EngineBuilder>();
    send_sync::<Worker>();
    send_sync::<Ctx<()>>();
    send_sync::<Error>();
    send_sync::<StoreError>();
    send_sync::<InstanceInfo>();
    send_sync::<Tool>();
    send_sync::<Toolbox>();
    send_sync::<MemoryStore>();
    send_sync::<std::sync::Arc<dyn Store>>();
};
