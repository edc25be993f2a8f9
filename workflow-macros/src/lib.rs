//! The `#[workflow]` attribute of the [`workflow`](https://docs.rs/workflow)
//! crate. Use it through the facade (`use workflow::prelude::*;`): the code
//! it generates refers to `::workflow::__private`, so this crate is not
//! useful on its own.
//!
//! The work happens on `proc_macro2` types so it can be unit-tested:
//! `args` parses the attribute, `ast` builds the checked model of the
//! function, `validate` holds the value checks, `expand` writes the code.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod args;
mod ast;
mod ctxt;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Turns an `async fn` into a durable workflow.
///
/// ```no_run
/// use workflow::prelude::*;
/// use serde::{Deserialize, Serialize};
/// use schemars::JsonSchema;
///
/// #[derive(Serialize, Deserialize, JsonSchema)]
/// struct OrderInput { order_id: String }
///
/// #[derive(Serialize, Deserialize, JsonSchema)]
/// struct OrderOutput { total: f64 }
/// # async fn fetch(_: &str) -> Result<f64, BoxError> { Ok(1.0) }
/// # async fn charge(_: f64) -> Result<String, BoxError> { Ok(String::new()) }
///
/// /// Process a new customer order
/// #[workflow(name = "processOrder", timeout = "10m")]
/// async fn process_order(ctx: Ctx, input: OrderInput) -> workflow::Result<OrderOutput> {
///     let total: f64 = ctx.step("fetch-order", || async { fetch(&input.order_id).await }).await?;
///     ctx.step("charge-payment", || async move { charge(total).await }).await?;
///     Ok(OrderOutput { total })
/// }
///
/// # async fn main_() -> workflow::Result<()> {
/// // The function stays as written; next to it the macro declares
/// // `struct ProcessOrder;` implementing `workflow::Workflow`:
/// assert_eq!(ProcessOrder::NAME, "processOrder");
/// assert_eq!(ProcessOrder::DESCRIPTION, "Process a new customer order");
/// assert_eq!(ProcessOrder::STEPS, ["fetch-order", "charge-payment"]);
/// let engine = Engine::builder().register(ProcessOrder).build().await?;
/// let order = ProcessOrder::start(&engine, OrderInput { order_id: "12345".into() }).await?;
/// # Ok(()) }
/// ```
///
/// # The function
///
/// `async fn name(ctx: Ctx<State>, input: Input) -> Result<Output, Error>`:
///
/// - `ctx` is the workflow context, written `Ctx` (state `()`), `Ctx<State>`,
///   or any path ending in `Ctx` (`workflow::Ctx<State>`). An alias, or an
///   import renamed, whose name ends in `Ctx`
///   (`type OrderCtx = Ctx<OrderState>`, `use workflow::Ctx as WfCtx`)
///   works too: its state is the aliased `Ctx`'s. Any pattern (`_ctx`,
///   `mut ctx`) is fine. `State` is persisted with each step and starts
///   from `Default`.
/// - `input` is the type the workflow is started with. Use `()` for none.
/// - The return type is any `Result` with one or two type arguments:
///   `workflow::Result<Output>`, `anyhow::Result<Output>`,
///   `Result<Output, MyError>` with `MyError: Into<BoxError>`; or an
///   alias of one whose name ends in `Result`
///   (`type AppResult<T> = Result<T, AppError>`). The macro reads names,
///   not types: an alias under another name is refused.
/// - It must be `async`, a free function (no `self`), and not generic.
///
/// `Input`, `Output` and `State` must implement `Serialize`, `Deserialize`
/// and `JsonSchema` (`State` also `Default`); a missing impl is reported at
/// the type, naming it. They own their data (no borrow, no `impl Trait`,
/// anywhere inside them), and are at least as visible as the function: a
/// `pub` workflow's struct names them in a public trait impl.
///
/// Every mistake is reported in one build: the attribute's, the
/// signature's, and the types' missing traits together.
///
/// # What it generates
///
/// The function is left as written. Only the engine makes a `Ctx`, so it
/// runs through the engine (test it on an engine with a `MemoryStore`);
/// called from another handler with that handler's `ctx`, its steps are
/// recorded as the caller's, and a name both use becomes `name#1`: for
/// a workflow inside a workflow, use `ctx.run_child`. Next to it comes a
/// unit struct, named by PascalCasing the function (`process_order` ->
/// `ProcessOrder`) with the function's visibility, deriving `Debug`,
/// `Clone`, `Copy` and `Default`, and implementing `workflow::Workflow`:
///
/// | item          | value |
/// |---------------|-------|
/// | `Input`       | the input parameter's type |
/// | `Output`      | the first type argument of the `Result` (an alias's output) |
/// | `State`       | `S` of `Ctx<S>`, `()` for `Ctx` (an alias's state) |
/// | `NAME`        | `name`, or the function's name |
/// | `DESCRIPTION` | `description`, or the doc comment up to its first heading or code block (lines trimmed; a `/** */` comment's leading `*`s dropped, as rustdoc does; an `include_str!` doc whole), or `""` |
/// | `SCHEDULE`    | `schedule`, or `None` |
/// | `TIMEZONE`    | `timezone`, or `"UTC"` |
/// | `TIMEOUT`     | `timeout`, or 5 minutes |
/// | `STEPS`       | the string literals passed as the name to `ctx.step(..)` / `ctx.step_with(..)` in the body, in source order, each once (calls on the context parameter, or on a local bound to it such as `let c = ctx.clone()`; a method of that name on another value is not a step) |
/// | `CATCH_UP`    | `catch_up`, or `CatchUp::Latest` |
/// | `RETRIES`     | `Some(retries)`, or `None` (the engine's) |
/// | `BACKOFF`     | `Some(Backoff { .. })` from `backoff(..)`, or `None` (the engine's) |
/// | `JITTER`      | `Some(jitter)`, or `None` (the engine's) |
/// | `run`         | calls the function, converting its error into `BoxError` |
///
/// # Attribute keys
///
/// All optional; each may appear once.
///
/// - `name = "processOrder"`: the registered name, unique per engine. It is
///   also the AI tool name, so it must match `^[a-zA-Z0-9_-]{1,64}$`.
///   Default: the function's name. Set it on a workflow whose instances
///   may be in flight when the code changes: renaming the function then
///   renames the workflow, and instances stored under the old name wait
///   for an engine that registers it (dedup keys and cron ticks go by
///   name too).
/// - `description = "..."`: for people and AI models. Default: the doc
///   comment, up to its first heading (`# Examples`) or code block. A doc
///   the macro cannot read, `#[doc = include_str!("refund.md")]`, is part
///   of it whole, where it stands (through `concat!`).
/// - `schedule = "0 9 * * MON-FRI"`: run on a cron schedule. Five fields
///   (`minute hour day-of-month month day-of-week`), or six with seconds
///   first; names like `MON` and `JAN`; `L`, `W` and `#` as croner accepts
///   them; or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. With
///   both day fields restricted, a day matching either fires, as in
///   standard cron (`0 9 * * MON#1` is the first Monday). Each
///   tick starts the workflow with `Input::default()`, so the input must be
///   `()` or implement `Default`. Checked at compile time.
/// - `timezone = "Europe/Berlin"`: the IANA time zone the schedule is read
///   in. Default `"UTC"`. Only the shape is checked at compile time
///   (`Area/Location`, `UTC` or `GMT`); the name itself is checked against
///   the IANA database when the engine is built. Needs a `schedule`.
/// - `timeout = "10m"`: default deadline of an instance, counted from its
///   start, as a [humantime](https://docs.rs/humantime) duration (`"30s"`,
///   `"1h 30m"`, `"2days"`; a capital `M`, months in humantime, is refused
///   as a likely typo for minutes: write `months`). At least 1ms. Default
///   `"5m"`.
/// - `catch_up = "latest"`: what the schedule does about ticks that passed
///   while no engine ran: `"latest"` (default) runs the most recent one
///   once, `"all"` runs each, `"none"` skips them. Needs a `schedule`.
/// - `retries = 3`: attempts each `ctx.step` of this workflow gets (at least
///   1), instead of the engine's default (5). `ctx.step_with` still sets its
///   own.
/// - `backoff(initial = "200ms", factor = 2.0, max = "30s")`: how long each
///   `ctx.step` of this workflow waits between attempts, instead of the
///   engine's: after failed attempt `n` it waits `min(initial ×
///   factor^(n-1), max)`, so `initial` after the first (here 200 ms, 400 ms,
///   800 ms, ... up to 30 s), exactly as `StepOptions::backoff` with the
///   same arguments. Each setting is optional; like
///   `StepOptions::backoff`, `backoff(..)` sets the whole curve, so one left
///   out takes the value of `StepOptions::default()` (`initial = "272ms"`,
///   `factor` = e ≈ 2.718, `max = "5s"`), not the engine's. `initial` and
///   `max` are [humantime](https://docs.rs/humantime) durations (`"0s"`
///   retries at once); `factor` is a number of at least 1 (`1.0` waits the
///   same each time); `initial` may not exceed `max`. Backoffs longer than
///   the engine's `suspend_after` suspend the instance rather than hold a
///   worker. `ctx.step_with` still sets its own.
/// - `jitter = 0.2`: spreads each of those waits by a random factor in
///   `[1 - jitter, 1 + jitter]`, so instances that fail together do not
///   retry in lockstep; from `0.0` (none) to `1.0`. Default: the engine's
///   (none unless set with `Engine::builder().step_options(..)`).
///
///   `backoff` and `jitter` need more than one attempt: with `retries = 1`
///   they are an error. Like `retries`, they also apply to the steps `ctx`
///   runs with the default options: `ctx.map`/`for_each`/`batch` items and
///   `ctx.call_tool`.
/// - `crate = ::workflow`: the path to the `workflow` crate, for when it is
///   renamed or re-exported (`crate = "::workflow"` also works).
///
/// # Compile-time checks
///
/// Each of these is a compile error pointing at the offending token; all of
/// them are reported in one build:
///
/// - an unknown or repeated attribute key, or a value of the wrong kind;
/// - an invalid cron expression (the message names the bad field), duration,
///   time zone, name, or `retries` below 1;
/// - in `backoff(..)`: an unknown or repeated setting, an empty list, a
///   `factor` that is not a finite number of at least 1.0, or an `initial`
///   above `max` (or above the default `max` of 5 s when `max` is left out);
///   a `jitter` outside `0.0..=1.0`; `backoff` or `jitter` with `retries = 1`;
/// - a function that is not `async`, takes `self`, is generic, does not take
///   exactly `(ctx: Ctx<..>, input: ..)`, or does not return a `Result`;
/// - input, output, state or error types missing a required trait, or a
///   scheduled workflow whose input is not `Default`;
/// - the same literal name given to two named `ctx` calls (`step`,
///   `sleep`, `wait_for_event`, `run_child`...) that may both run, inside
///   loops too. One call inside a `for`/`while`/`loop` or a closure may run
///   many times and repeat its name: the runtime numbers the runs `name`,
///   `name#1`, `name#2`, ... across every call of that name, so a second
///   call would get another record whenever the loop ran once less after a
///   code change. Calls in different arms of one `if` or `match` may share
///   a name, as may a call in an `if`, `else if` or `else` block or `match`
///   arm that always leaves (`return`, `break`, `continue`, `panic!`,
///   `bail!`) or in the `else` of a `let .. else`, and one after it (a call
///   in an `else if` condition runs whenever the branches before did not,
///   so it shares its name with nothing after it); and so may two
///   `wait_for_event` calls (the name is the event's, which senders use).
///   Names that are not literals (`ctx.step(&name, ..)`, a typed
///   `ctx.wait_for(EVENT, ..)`) are not checked here;
/// - a named `ctx` call inside the closure of a step, or of an item of
///   `map`, `for_each` or `batch`, which the runtime refuses every time;
/// - a function whose generated struct would hide a name of the std
///   prelude (`fn send` -> `Send`) or of `workflow::prelude` (`fn status`
///   -> `Status`, `fn execute` -> `Execute`): `name = "status"` keeps the
///   workflow's name under another function name; or a function that
///   takes its input by reference, or a borrowing type (`Cow<str>`);
/// - a literal step name that is empty, longer than 512 bytes, or
///   contains a NUL, `#`, `@`, `[` or `]`,
///   which the runtime reserves for the keys it derives from names: the
///   name of a step and that of every other `ctx` call that takes one
///   (`now`, `sleep`, `sleep_until`, `set_timeout`, `wait_for_event`,
///   `send_event_to`, `start_child`, `start_child_with`, `run_child`,
///   `run_child_with`, `map`, `map_with`, `for_each`, `for_each_with`,
///   `batch`, `batch_with`, `call_tool`, `call_tool_with`). The runtime refuses names
///   given at run time the same way.
///
/// Only names written as literals are checked, and listed in `STEPS`: a
/// `const` (`ctx.step(FETCH, ..)`), a name computed at run time and a
/// call in a helper function that takes `&Ctx` are not (the runtime still
/// numbers repeats `name#1`, ...).
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::workflow(attr.into(), item.into()).into()
}
