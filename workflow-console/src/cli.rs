//! The `workflow` command-line tool: reads and steers workflows on a
//! database without the workflows' code, from the definitions engines
//! recorded there.
//!
//! Output goes to the writer given to [`run`] (the binary passes stdout):
//! aligned tables for people, or JSON with `--json` for scripts.

use std::io::{self, IsTerminal, Write};

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use workflow_core::{
    Definition, Engine, Error, EventSent, InstanceId, Query, StartOptions, Status, Timeout,
};

use crate::api::{build_query, ListParams, RerunError};

/// See and steer durable workflows on a database, without their code.
#[derive(Debug, Parser)]
#[command(
    name = "workflow",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 done; 1 failed (the store, `run --wait`'s instance did not \
                  complete, or `resume --all` could not resume some); 2 bad arguments or \
                  input; 3 `run --wait-timeout` gave up (the instance runs on); 4 no such \
                  instance; 5 the instance's state refuses it (cancel of one that completed \
                  or failed, rerun of one that did not end)."
)]
pub struct Cli {
    /// Database URL, the one your engines use (`sqlite://workflows.db`, `postgres://...`).
    // Its value is not shown in --help: a URL may carry a password.
    #[arg(long, global = true, env = "WORKFLOW_DATABASE_URL", hide_env_values = true, default_value = crate::DEFAULT_DATABASE_URL)]
    pub db: String,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The workflows engines recorded: schedules, timeouts, and with NAME their schemas.
    Workflows {
        /// Show this workflow in full, with its input, output and state schemas.
        name: Option<String>,
    },
    /// Start a workflow from JSON input, checked against its recorded input
    /// schema; any engine running the workflow picks it up.
    Run {
        /// The workflow's name.
        name: String,
        /// The input as JSON (`-` reads standard input); `null` when left
        /// out, the input of a workflow that takes `()`.
        #[arg(default_value = "null")]
        input: String,
        /// Wait until the instance ends and print its output (exit 1 unless it completed).
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (`30s`, `10m`; exit 3, the
        /// instance runs on).
        #[arg(long, value_name = "DURATION", requires = "wait", value_parser = duration_arg)]
        wait_timeout: Option<std::time::Duration>,
        /// A key, shown in lists and searchable.
        #[arg(long)]
        key: Option<String>,
        /// At most one active instance per --key: when one is pending,
        /// running, listening or paused, it is the answer instead of a new
        /// start (safe to retry).
        #[arg(long, requires = "key")]
        once: bool,
        /// A tag `name=value` (repeat for more).
        #[arg(long = "tag", value_name = "NAME=VALUE", value_parser = tag_arg)]
        tags: Vec<(String, String)>,
        /// A deadline instead of the workflow's own (`30s`, `10m`, `2h`),
        /// counted from the start.
        #[arg(long, value_parser = crate::api::parse_timeout)]
        timeout: Option<std::time::Duration>,
        /// Start this much later (`30s`, `1h`); pending until then.
        #[arg(long, value_parser = crate::api::parse_delay)]
        delay: Option<std::time::Duration>,
    },
    /// How many instances are in each status, of every workflow or one:
    /// for a check that alerts on paused or failed ones.
    Counts {
        /// Only this workflow.
        #[arg(long, short)]
        workflow: Option<String>,
    },
    /// Instances, newest first.
    List {
        /// Only this workflow.
        #[arg(long, short)]
        workflow: Option<String>,
        /// Only these statuses (comma-separated or repeated): pending,
        /// in_progress, listening, paused, completed, failed, cancelled, timed_out.
        #[arg(long, short)]
        status: Vec<String>,
        /// Only instances with this tag `name=value`.
        #[arg(long)]
        tag: Option<String>,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// How many (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The page after this instance id (printed under a full page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One instance: status, input, output, error, state and steps.
    Show {
        /// Instance id.
        id: String,
        /// Only the last N steps (the store reads only their results).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// The history of one instance, oldest first.
    History {
        /// Instance id.
        id: String,
        /// Only the last N events.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Cancel an instance.
    Cancel {
        /// Instance id.
        id: String,
    },
    /// Pause an instance.
    Pause {
        /// Instance id.
        id: String,
    },
    /// Resume a paused instance, or with --all every paused one (once the
    /// fix for what paused them is deployed).
    Resume {
        /// Instance id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every paused instance, those paused by hand too (of --workflow,
        /// if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this workflow's.
        #[arg(long, short, requires = "all")]
        workflow: Option<String>,
    },
    /// Move an unfinished instance's deadline: after a deploy that raised
    /// the workflow's `timeout`, the instances already running keep theirs.
    #[command(group = clap::ArgGroup::new("deadline").required(true))]
    SetTimeout {
        /// Instance id.
        id: String,
        /// The new deadline, this long from now (`30m`, `2h`, `7d`; at least 1ms).
        #[arg(long = "in", value_name = "DURATION", group = "deadline", value_parser = crate::api::parse_timeout)]
        after: Option<std::time::Duration>,
        /// The new deadline, at this time (RFC 3339: `2026-12-24T09:00:00Z`),
        /// ahead of now.
        #[arg(long, value_name = "TIME", group = "deadline", value_parser = deadline_arg)]
        at: Option<DateTime<Utc>>,
    },
    /// Send an event to an instance (`ctx.wait_for_event(NAME, ..)` receives it).
    SendEvent {
        /// Instance id.
        id: String,
        /// Event name.
        name: String,
        /// Payload as JSON (`-` reads standard input).
        #[arg(default_value = "null")]
        payload: String,
        /// Send it at most once per key: a second send with the same key
        /// changes nothing (a redelivered webhook, a retried script).
        #[arg(long)]
        key: Option<String>,
    },
    /// Start an ended instance again with the same input, key and tags
    /// (tagged `rerun_of`); while a re-run of it (or, with a key, an
    /// instance with that key) is active, that one is named instead.
    Rerun {
        /// Instance id.
        id: String,
    },
    /// Delete instances that ended longer ago than `--older-than`, with
    /// their steps and history (a running parent's children are kept).
    Purge {
        /// How long ago they must have ended (`30d`, `12h`, `1month`: `m`
        /// is minutes); nothing that ended in the last minute goes.
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        older_than: std::time::Duration,
        /// Only this workflow.
        #[arg(long, short)]
        workflow: Option<String>,
    },
    /// Scheduled workflows with their next fire time.
    Schedules,
    /// Serve the web console.
    Console {
        /// Address to listen on. Loopback by default; anything else should have a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Require this token on every API call. Without one, a console on
        /// a loopback address makes a fresh token and prints it in its URL.
        #[arg(long, env = crate::TOKEN_ENV, hide_env_values = true)]
        token: Option<String>,
        /// Serve without a token: anyone who can reach the port (on
        /// loopback, any local user or process) can then steer workflows.
        /// Needed for a non-loopback address with no token, refused there
        /// otherwise.
        #[arg(long)]
        no_token: bool,
        /// Also answer requests for this host name (repeatable), besides
        /// `localhost` and `127.0.0.1`: without a token, or on loopback,
        /// requests for other names are refused (DNS rebinding).
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
    },
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The engine or store refused.
    #[error(transparent)]
    Workflow(#[from] Error),
    /// The arguments do not make sense.
    #[error("{0}")]
    Usage(String),
    /// The instance's state refuses the command (a re-run of one that has
    /// not ended).
    #[error("{0}")]
    Conflict(String),
    /// No engine using this database has recorded a workflow of that name.
    /// Reported instead of [`Error::UnknownWorkflow`], which speaks of "this
    /// engine": the CLI registers no workflows, it only reads the
    /// definitions engines recorded.
    #[error(
        "no engine using this database has recorded a workflow named `{name}`{}",
        recorded_names(.recorded)
    )]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The names that are recorded, sorted.
        recorded: Vec<String>,
    },
    /// Writing the output or serving the console failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The console failed.
    #[error(transparent)]
    Console(#[from] crate::ConsoleError),
}

impl CliError {
    /// The process exit code for this error: 2 for bad arguments or input
    /// (among them a workflow name no engine recorded), 3 when `run
    /// --wait-timeout` gave up (the instance runs on), 4 for an id no
    /// instance has, 5 when the instance's state refuses the command (a
    /// cancel of one that ended, a re-run of one that did not), 1
    /// otherwise (the store failed, `run --wait`'s instance did not
    /// complete).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Workflow(Error::WaitTimeout { .. }) => 3,
            CliError::Workflow(Error::NotFound(_)) => 4,
            CliError::Conflict(_) | CliError::Workflow(Error::AlreadyFinished { .. }) => 5,
            CliError::Usage(_)
            | CliError::UnknownWorkflow { .. }
            | CliError::Workflow(Error::InvalidInput { .. })
            | CliError::Workflow(Error::InvalidEventKey { .. })
            | CliError::Workflow(Error::InvalidEventName { .. })
            | CliError::Workflow(Error::NameTooLong { .. })
            | CliError::Workflow(Error::InvalidStartOption { .. })
            | CliError::Workflow(Error::PayloadTooLarge { .. })
            // A database URL that does not parse or names no file.
            | CliError::Workflow(Error::Config(_)) => 2,
            _ => 1,
        }
    }

    /// The message as the `workflow` binary prints it on standard error:
    /// with terminal control characters written out (`\u{1b}`), as in all
    /// its output, since it may quote a damaged row or a failure's text.
    pub fn to_terminal(&self) -> String {
        let text = self.to_string();
        match escape_controls(text.as_bytes()) {
            Some(shown) => String::from_utf8_lossy(&shown).into_owned(),
            None => text,
        }
    }
}

/// The error for a name that none of `defs` has, offering the names they do have.
fn unknown_workflow(name: String, defs: Vec<Definition>) -> CliError {
    let mut recorded: Vec<String> = defs.into_iter().map(|d| d.name).collect();
    recorded.sort();
    CliError::UnknownWorkflow { name, recorded }
}

/// How many recorded names an unknown-workflow message lists before it
/// points to `workflow workflows`: enough for most databases, one line long.
const NAMES_LISTED: usize = 10;

fn recorded_names(recorded: &[String]) -> String {
    match recorded.len() {
        0 => ", nor any other yet: engines record their workflows when they start".to_owned(),
        n if n <= NAMES_LISTED => format!("; recorded: {}", recorded.join(", ")),
        n => format!(
            "; recorded: {} and {} more (`workflow workflows` lists them)",
            recorded[..NAMES_LISTED].join(", "),
            n - NAMES_LISTED
        ),
    }
}

/// Drops the output, without an error, once its reader went away
/// (`workflow list | head`): the output was only for that reader, while
/// the exit code still says how the command went, e.g. 1 for `run --wait`
/// of an instance that failed.
struct UntilClosed<'a> {
    out: &'a mut (dyn Write + Send),
    closed: bool,
}

impl UntilClosed<'_> {
    fn check<T>(&mut self, result: io::Result<T>, closed: T) -> io::Result<T> {
        match result {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(closed)
            }
            other => other,
        }
    }
}

impl Write for UntilClosed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        if let Some(shown) = escape_controls(buf) {
            let result = self.out.write_all(&shown);
            return self.check(result.map(|()| buf.len()), buf.len());
        }
        let result = self.out.write(buf);
        self.check(result, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.out.flush();
        self.check(result, ())
    }
}

/// `buf` with its terminal control characters written out (`\u{1b}`), or
/// `None` when it has none. Keys, tags and errors come from outside (a
/// webhook's id, a failure's message): an escape sequence in them must not
/// reach the operator's terminal, where it could rewrite the screen or the
/// clipboard. Newlines and tabs stay; JSON output escapes them all itself.
fn escape_controls(buf: &[u8]) -> Option<Vec<u8>> {
    // ASCII controls, DEL, and the C1 controls (U+0080..U+009F, `C2 xx` in
    // UTF-8), which some terminals obey too.
    let control = |i: usize| match buf[i] {
        b'\n' | b'\t' => false,
        0..=0x1f | 0x7f => true,
        0xc2 => buf
            .get(i + 1)
            .is_some_and(|next| (0x80..=0x9f).contains(next)),
        _ => false,
    };
    if !(0..buf.len()).any(control) {
        return None;
    }
    let mut shown = Vec::with_capacity(buf.len() + 16);
    let mut i = 0;
    while i < buf.len() {
        if control(i) {
            let code = if buf[i] == 0xc2 {
                i += 1;
                buf[i]
            } else {
                buf[i]
            };
            shown.extend_from_slice(format!("\\u{{{code:x}}}").as_bytes());
        } else {
            shown.push(buf[i]);
        }
        i += 1;
    }
    Some(shown)
}

/// Runs one command on `cli.db`, writing its output to `out` (standard
/// output) and what is not output to `notes` (standard error: progress,
/// the cursor of the next page, rows that do not read), so that `out`
/// can be piped as data. Returns the exit code (`run --wait` of an
/// instance that did not complete is 1).
///
/// Once `out` reports a broken pipe (its reader closed early, as `head`
/// does), the rest of the output is dropped and the command finishes as if
/// it had been written: that is not an error.
pub async fn run(
    cli: Cli,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let out = &mut UntilClosed { out, closed: false };
    // Notes quote rows too (an unreadable one's error).
    let notes = &mut UntilClosed {
        out: notes,
        closed: false,
    };
    // Arguments clap leaves as text are read before connecting: a mistake
    // in them is bad input (exit 2) whatever state the store is in.
    let mut read = read_args(&cli.command)?;
    let engine = crate::connect(&cli.db).await?;
    let json = cli.json;
    match cli.command {
        Command::Workflows { name } => workflows(&engine, name, json, out, notes).await,
        Command::Counts { workflow } => {
            // A misspelt name would count nothing, and an alert on it
            // never fire.
            if let Some(name) = &workflow {
                let defs = engine.definitions().await?;
                if !defs.iter().any(|d| &d.name == name) {
                    return Err(unknown_workflow(name.clone(), defs));
                }
            }
            let counts = engine.counts(workflow.as_deref()).await?;
            let count = |status: &Status| counts.get(status).copied().unwrap_or(0);
            if json {
                let counts: serde_json::Map<String, Value> = Status::ALL
                    .iter()
                    .map(|status| (status.to_string(), json!(count(status))))
                    .collect();
                print_json(out, &Value::Object(counts))?;
                return Ok(0);
            }
            let rows = Status::ALL
                .iter()
                .map(|status| vec![status.to_string(), count(status).to_string()])
                .collect();
            table(out, &["STATUS", "COUNT"], rows)?;
            Ok(0)
        }
        Command::Run {
            name,
            input: _,
            wait,
            wait_timeout,
            key,
            once,
            tags,
            timeout,
            delay,
        } => {
            let input = read.document.take().unwrap_or(Value::Null);
            let key = crate::api::given(&key).map(str::to_owned);
            let mut options = StartOptions::new();
            if let Some(key) = &key {
                options = options.key(key.clone());
            }
            for (k, v) in tags {
                options = options.tag(k, v);
            }
            if let Some(timeout) = timeout {
                options = options.timeout(timeout);
            }
            if let Some(delay) = delay {
                options = options.delay(delay);
            }
            let started = match (once, key) {
                (true, Some(key)) => engine.get_or_start_json(&name, key, input, options).await,
                _ => engine
                    .start_json(&name, input, options)
                    .await
                    .map(|id| (id, true)),
            };
            let (id, created) = match started {
                Err(Error::UnknownWorkflow(name)) => {
                    return Err(unknown_workflow(name, engine.definitions().await?))
                }
                started => started?,
            };
            let what = if created {
                "started"
            } else {
                "already running"
            };
            if !wait {
                if json {
                    print_json(out, &json!({ "id": id, "created": created }))?;
                } else {
                    writeln!(out, "{what} {name} {id}")?;
                }
                return Ok(0);
            }
            // Said on stderr with `--json` too, and the id printed when the
            // wait fails: a script must not start the work a second time
            // because the store failed or the wait gave up.
            writeln!(notes, "{what} {name} {id}; waiting for it to end")?;
            let info = match wait_for_end(&engine, &id, &name, wait_timeout, notes).await {
                Ok(info) => info,
                Err(err) => {
                    if json {
                        print_json(
                            out,
                            &json!({ "id": id, "created": created, "error": err.to_string() }),
                        )?;
                    }
                    return Err(err.into());
                }
            };
            if json {
                print_json(out, &serde_json::to_value(&info).unwrap_or(Value::Null))?;
            } else {
                writeln!(out, "{}: {}", info.id, info.status)?;
                if let Some(output) = &info.output {
                    writeln!(out, "{}", pretty(output))?;
                }
                if let Some(error) = &info.error {
                    writeln!(out, "error: {error}")?;
                }
            }
            Ok(if info.status == Status::Completed {
                0
            } else {
                1
            })
        }
        Command::List { .. } => {
            let query = read.query.take().unwrap_or_else(Query::new);
            // The table shows no JSON documents; `--json` prints them all.
            let query = if json { query } else { query.summaries() };
            let page = engine.list(query).await?;
            if json {
                print_json(out, &serde_json::to_value(&page).unwrap_or(Value::Null))?;
                return Ok(0);
            }
            let rows = page
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.id.to_string(),
                        i.workflow.clone(),
                        i.status.to_string(),
                        i.key.clone().unwrap_or_default(),
                        time(Some(i.created_at)),
                        duration(i.started_at.unwrap_or(i.created_at), i.finished_at),
                    ]
                })
                .collect();
            table(
                out,
                &["ID", "WORKFLOW", "STATUS", "KEY", "CREATED", "DURATION"],
                rows,
            )?;
            for bad in &page.unreadable {
                writeln!(notes, "unreadable: {} ({})", bad.id, bad.error)?;
            }
            if let Some(next) = page.next {
                writeln!(notes, "more: --after {next}")?;
            }
            Ok(0)
        }
        Command::Show { id, tail } => {
            show(&engine, &InstanceId::from(id), tail, json, out, notes).await
        }
        Command::History { id, tail } => {
            let id = InstanceId::from(id);
            let history = engine.history_tail(&id, tail.unwrap_or(usize::MAX)).await?;
            if history.total == 0 {
                // Unknown ids have no history: say which it is.
                engine.instance(&id).await?;
            }
            let earlier = history.total.saturating_sub(history.items.len() as u64);
            let history = history.items;
            if json {
                print_json(out, &serde_json::to_value(&history).unwrap_or(Value::Null))?;
                return Ok(0);
            }
            let rows = history
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        time(Some(e.at)),
                        e.kind.to_string(),
                        e.step.clone().unwrap_or_default(),
                        e.attempt.map(|a| a.to_string()).unwrap_or_default(),
                        e.duration_ms.map(millis).unwrap_or_default(),
                        one_line(e.message.as_deref().unwrap_or("")),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "SEQ", "TIME", "EVENT", "STEP", "ATTEMPT", "DURATION", "DETAIL",
                ],
                rows,
            )?;
            not_shown(notes, earlier, "events")?;
            Ok(0)
        }
        Command::Cancel { id } => {
            let id = InstanceId::from(id);
            let already = crate::api::cancel_instance(&engine, &id).await?;
            if json {
                print_json(
                    out,
                    &json!({ "id": id, "done": "cancel", "already": already }),
                )?;
            } else if already {
                writeln!(out, "{id} was already cancelled; nothing changed")?;
            } else {
                writeln!(out, "cancelled {id}")?;
            }
            Ok(0)
        }
        Command::Pause { id } => {
            let id = InstanceId::from(id);
            engine.pause(&id).await?;
            // A running one pauses at its next step: "paused" would be
            // untrue until then. (Its answer is not worth an error.)
            let pending = !json
                && engine
                    .instance(&id)
                    .await
                    .is_ok_and(|info| info.pause_requested);
            if pending {
                writeln!(out, "pause asked of {id}: it pauses at its next step")?;
                return Ok(0);
            }
            done(out, json, ("pause", "paused"), &id)
        }
        Command::Resume {
            id: Some(id),
            all: false,
            ..
        } => {
            let id = InstanceId::from(id);
            engine.resume(&id).await?;
            done(out, json, ("resume", "resumed"), &id)
        }
        Command::Resume { workflow, .. } => {
            resume_all(&engine, workflow.as_deref(), json, out, notes).await
        }
        Command::SetTimeout { id, after, at } => {
            let id = InstanceId::from(id);
            let timeout = match (after, at) {
                (Some(after), _) => Timeout::In(after),
                (None, Some(at)) => Timeout::At(at),
                (None, None) => {
                    return Err(CliError::Usage("give --in DURATION or --at TIME".into()))
                }
            };
            engine.set_timeout(&id, timeout).await?;
            let deadline = engine.instance(&id).await?.deadline_at;
            if json {
                print_json(
                    out,
                    &json!({ "id": id, "done": "set_timeout", "deadline_at": deadline }),
                )?;
            } else {
                writeln!(out, "deadline of {id} now {}", time(deadline))?;
            }
            Ok(0)
        }
        Command::SendEvent {
            id,
            name,
            payload: _,
            key,
        } => {
            let id = InstanceId::from(id);
            let payload = read.document.take().unwrap_or(Value::Null);
            let (sent, note) =
                crate::api::deliver_event(&engine, &id, &name, key.as_deref(), payload).await?;
            let already_sent = sent == EventSent::AlreadySent;
            if json {
                print_json(
                    out,
                    &json!({ "id": id, "done": "send_event", "event": name, "already_sent": already_sent, "note": note }),
                )?;
            } else if already_sent {
                writeln!(
                    out,
                    "event `{name}` with key `{}` was already sent to {id}; nothing changed",
                    key.unwrap_or_default()
                )?;
            } else {
                writeln!(out, "sent event `{name}` to {id}")?;
                if let Some(note) = note {
                    writeln!(notes, "note: {note}")?;
                }
            }
            Ok(0)
        }
        Command::Rerun { id } => {
            let id = InstanceId::from(id);
            let (new, created) = match crate::api::rerun_instance(&engine, &id).await {
                Ok(found) => found,
                Err(RerunError::Workflow(Error::UnknownWorkflow(name))) => {
                    return Err(unknown_workflow(name, engine.definitions().await?))
                }
                Err(RerunError::Workflow(err)) => return Err(err.into()),
                Err(err @ RerunError::NotEnded(..)) => {
                    return Err(CliError::Conflict(err.to_string()))
                }
            };
            if json {
                print_json(
                    out,
                    &json!({ "id": new, "rerun_of": id, "created": created }),
                )?;
            } else if created {
                writeln!(out, "started {new} (re-run of {id})")?;
            } else {
                writeln!(
                    out,
                    "{new} is already active (a re-run of {id}, or an instance with its key); nothing started"
                )?;
            }
            Ok(0)
        }
        Command::Purge {
            older_than,
            workflow,
        } => {
            let before = chrono::Duration::from_std(older_than)
                .ok()
                .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--older-than {} is too long",
                        humantime::format_duration(older_than)
                    ))
                })?;
            let deleted = engine.purge(before, workflow.as_deref()).await?;
            // What the engine used: it keeps what ended in the last minute
            // whatever the cutoff (`--older-than 0s`).
            let before = chrono::Duration::from_std(workflow_core::PURGE_MARGIN)
                .ok()
                .and_then(|margin| Utc::now().checked_sub_signed(margin))
                .map_or(before, |latest| before.min(latest));
            if json {
                print_json(
                    out,
                    &json!({ "deleted": deleted, "ended_before": before.to_rfc3339() }),
                )?;
            } else {
                writeln!(
                    out,
                    "deleted {deleted} instance(s) that ended before {}",
                    before.format("%Y-%m-%d %H:%M:%S UTC")
                )?;
            }
            Ok(0)
        }
        Command::Schedules => {
            let schedules = crate::all_schedules(&engine).await?;
            if json {
                print_json(
                    out,
                    &serde_json::to_value(&schedules).unwrap_or(Value::Null),
                )?;
                return Ok(0);
            }
            let rows = schedules
                .iter()
                .map(|s| {
                    vec![
                        s.workflow.clone(),
                        s.expression.clone(),
                        s.timezone.clone(),
                        time(s.next_fire),
                        s.last_fired
                            .map_or_else(|| "never".to_owned(), |t| time(Some(t))),
                        s.last_instance
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "WORKFLOW",
                    "SCHEDULE",
                    "TIMEZONE",
                    "NEXT FIRE",
                    "LAST FIRED",
                    "LAST INSTANCE",
                ],
                rows,
            )?;
            Ok(0)
        }
        Command::Console {
            addr,
            token,
            no_token,
            allow_hosts,
        } => {
            // Checked here rather than by clap, which counts a token from
            // the environment as given on the command line and names a
            // flag the user did not type.
            if no_token && token.is_some() {
                return Err(CliError::Usage(format!(
                    "--no-token serves the console open, and a token is set (--token, or {} in \
                     the environment): leave out one or the other",
                    crate::TOKEN_ENV
                )));
            }
            // `host:port`; a bare port is the likely slip.
            if !addr.contains(':') {
                return Err(CliError::Usage(format!(
                    "--addr `{addr}` is not an address: write host:port, e.g. 127.0.0.1:{addr}"
                )));
            }
            // Where the token came from, to name it in place of its value.
            let token_from = token.as_ref().map(|token| {
                if std::env::var(crate::TOKEN_ENV).ok().as_deref() == Some(token.as_str()) {
                    crate::TOKEN_ENV
                } else {
                    "--token"
                }
            });
            let mut console = crate::Console::new(engine).allowed_hosts(allow_hosts);
            if no_token {
                console = console.allow_no_token();
            }
            // On this machine, open by default would let any local user or
            // process steer every workflow, past the database's own file
            // permissions or credentials: a fresh token guards it, printed
            // in the URL (as Jupyter does). Elsewhere a token is asked for.
            let token = match token {
                None if !no_token && is_loopback(&addr).await => Some(fresh_token()),
                given => given,
            };
            if let Some(token) = token {
                // An empty one (a secret that failed to substitute) would
                // serve the console open: refused rather than ignored.
                if token.trim().is_empty() {
                    return Err(CliError::Usage(format!(
                        "the console token (--token or {}) is empty; give a token, or leave it unset for none",
                        crate::TOKEN_ENV
                    )));
                }
                console = console.token(token);
            }
            let server = match console.bind(addr.as_str()).await {
                Err(crate::ConsoleError::NoToken { .. }) => {
                    return Err(CliError::Usage(format!(
                        "{addr} is reachable from other machines and no token is set: anyone reaching it \
                         could steer workflows; give --token (or {}), or pass --no-token to serve it open",
                        crate::TOKEN_ENV
                    )))
                }
                Err(err @ (crate::ConsoleError::BadToken(_) | crate::ConsoleError::ShortToken { .. })) => {
                    return Err(CliError::Usage(err.to_string()))
                }
                Err(crate::ConsoleError::Io(err)) if err.kind() == std::io::ErrorKind::InvalidInput => {
                    return Err(CliError::Usage(format!("--addr `{addr}`: {err}")))
                }
                bound => bound?,
            };
            // The token stays out of output that is not a terminal (a
            // service's log, a pipe): whoever set it knows it.
            let hidden = token_from.filter(|_| !std::io::stdout().is_terminal());
            if json {
                let answer = match hidden {
                    Some(from) => json!({ "url": server.page_url(), "token_from": from }),
                    None => json!({ "url": server.url() }),
                };
                print_json(out, &answer)?;
            } else if let Some(from) = hidden {
                writeln!(
                    out,
                    "workflow console on {} (add #token=<{from}>; Ctrl-C to stop)",
                    server.page_url(),
                )?;
            } else {
                writeln!(out, "workflow console on {} (Ctrl-C to stop)", server.url())?;
            }
            out.flush()?;
            let stop = server.stopper();
            tokio::select! {
                result = server.wait() => result?,
                _ = tokio::signal::ctrl_c() => stop.cancel(),
            }
            Ok(0)
        }
    }
}

/// Whether `addr` (`host:port`) names this machine only, as the bind will
/// resolve it (a host name too: `$(hostname)` is 127.0.1.1 on Debian).
/// One it cannot resolve is not: the bind then fails on its own.
async fn is_loopback(addr: &str) -> bool {
    match tokio::net::lookup_host(addr).await {
        Ok(addrs) => {
            let addrs: Vec<std::net::SocketAddr> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// A token nobody could guess: 244 random bits, as hex.
fn fresh_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn workflows(
    engine: &Engine,
    name: Option<String>,
    json: bool,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let defs = engine.definitions().await?;
    if let Some(name) = name {
        let Some(def) = defs.iter().find(|d| d.name == name) else {
            return Err(unknown_workflow(name, defs));
        };
        if json {
            print_json(out, &serde_json::to_value(def).unwrap_or(Value::Null))?;
            return Ok(0);
        }
        writeln!(out, "{}", def.name)?;
        if !def.description.is_empty() {
            writeln!(out, "  {}", def.description)?;
        }
        match &def.schedule {
            Some(s) => writeln!(
                out,
                "schedule: {s} ({}, catch-up {})",
                def.timezone,
                serde_json::to_value(def.catch_up)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )?,
            None => writeln!(out, "schedule: none")?,
        }
        writeln!(out, "timeout:  {}", timeout(def.timeout_ms))?;
        if !def.steps.is_empty() {
            writeln!(out, "steps:    {}", def.steps.join(" -> "))?;
        }
        writeln!(out, "input schema:\n{}", indent(&pretty(&def.input_schema)))?;
        writeln!(
            out,
            "output schema:\n{}",
            indent(&pretty(&def.output_schema))
        )?;
        writeln!(out, "state schema:\n{}", indent(&pretty(&def.state_schema)))?;
        return Ok(0);
    }
    if json {
        print_json(out, &serde_json::to_value(&defs).unwrap_or(Value::Null))?;
        return Ok(0);
    }
    if defs.is_empty() {
        writeln!(
            out,
            "no workflow definitions recorded in this database: engines record theirs when they start"
        )?;
        return Ok(0);
    }
    let rows = defs
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.schedule
                    .as_ref()
                    .map(|s| format!("{s} ({})", d.timezone))
                    .unwrap_or_default(),
                timeout(d.timeout_ms),
                d.steps.len().to_string(),
                shorten(d.description.lines().next().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(
        out,
        &["NAME", "SCHEDULE", "TIMEOUT", "STEPS", "DESCRIPTION"],
        rows,
    )?;
    writeln!(notes, "(`workflow workflows NAME` shows the schemas)")?;
    Ok(0)
}

/// Says how many earlier rows a `--tail` left out, if any.
fn not_shown(out: &mut (dyn Write + Send), earlier: u64, what: &str) -> std::io::Result<()> {
    if earlier > 0 {
        writeln!(out, "({earlier} earlier {what} not shown)")?;
    }
    Ok(())
}

async fn show(
    engine: &Engine,
    id: &InstanceId,
    tail: Option<usize>,
    json: bool,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let info = engine.instance(id).await?;
    let steps = engine.steps_tail(id, tail.unwrap_or(usize::MAX)).await?;
    let earlier = steps.total.saturating_sub(steps.items.len() as u64);
    let (steps, total) = (steps.items, steps.total);
    if json {
        print_json(
            out,
            &json!({ "instance": info, "steps": steps, "steps_total": total }),
        )?;
        return Ok(0);
    }
    writeln!(out, "{} {}", info.workflow, info.id)?;
    if info.pause_requested {
        writeln!(out, "status:   {} (pausing at its next step)", info.status)?;
    } else {
        writeln!(out, "status:   {}", info.status)?;
    }
    if let Some(key) = &info.key {
        writeln!(out, "key:      {key}")?;
    }
    if !info.tags.is_empty() {
        let tags: Vec<String> = info.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "tags:     {}", tags.join(", "))?;
    }
    writeln!(out, "created:  {}", time(Some(info.created_at)))?;
    writeln!(out, "started:  {}", time(info.started_at))?;
    writeln!(out, "finished: {}", time(info.finished_at))?;
    writeln!(out, "deadline: {}", time(info.deadline_at))?;
    writeln!(out, "runs:     {}", info.runs)?;
    if let Some(due) = info.due_at {
        let left = (due - Utc::now()).num_milliseconds();
        let when = match (left > 0, info.status) {
            (true, _) => format!("in {}", millis(left)),
            (false, Status::Pending) => "queued".to_owned(),
            (false, _) => "now".to_owned(),
        };
        writeln!(out, "due:      {} ({when})", time(Some(due)))?;
    }
    if let Some(waiting) = &info.waiting_for {
        writeln!(out, "waiting:  {waiting}")?;
    }
    if let Some(parent) = &info.parent {
        writeln!(out, "parent:   {parent}")?;
    }
    writeln!(out, "input:\n{}", indent(&pretty(&info.input)))?;
    if let Some(output) = &info.output {
        writeln!(out, "output:\n{}", indent(&pretty(output)))?;
    }
    if let Some(error) = &info.error {
        writeln!(out, "error:\n{}", indent(error))?;
    }
    if let Some(state) = &info.state {
        writeln!(out, "state:\n{}", indent(&pretty(state)))?;
    }
    if !steps.is_empty() {
        writeln!(out, "steps:")?;
        let rows = steps
            .iter()
            .map(|s| {
                vec![
                    s.key.clone(),
                    s.attempts.to_string(),
                    duration(s.started_at, Some(s.finished_at)),
                    match (&s.error, &s.output, &s.unreadable) {
                        (Some(e), _, _) => format!("error: {}", one_line(e)),
                        (None, Some(o), _) => shorten(&o.to_string(), 60),
                        (None, None, Some(why)) => format!("unreadable: {}", one_line(why)),
                        (None, None, None) => String::new(),
                    },
                ]
            })
            .collect();
        table(out, &["STEP", "ATTEMPTS", "DURATION", "RESULT"], rows)?;
    }
    not_shown(notes, earlier, "steps")?;
    Ok(0)
}

/// Says that `action` was done to `id`: as the API does with `--json`
/// (`{"id", "done": "cancel"}`), else in words (`cancelled ID`).
fn done(
    out: &mut (dyn Write + Send),
    json: bool,
    (action, past): (&str, &str),
    id: &InstanceId,
) -> Result<u8, CliError> {
    if json {
        print_json(out, &json!({ "id": id, "done": action }))?;
    } else {
        writeln!(out, "{past} {id}")?;
    }
    Ok(0)
}

/// `resume --all`: every paused instance (of `workflow`), read first and
/// resumed one by one. Those that fail (ended meanwhile, say) are named
/// on stderr and the exit code is 1; the rest are resumed all the same.
async fn resume_all(
    engine: &Engine,
    workflow: Option<&str>,
    json: bool,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let query = || {
        let query = Query::new().summaries().status(Status::Paused).limit(1000);
        match workflow {
            Some(workflow) => query.workflow(workflow),
            None => query,
        }
    };
    let mut paused = Vec::new();
    let mut page = engine.list(query()).await?;
    loop {
        paused.extend(page.items.into_iter().map(|i| i.id));
        match page.next {
            Some(next) => page = engine.list(query().after(next)).await?,
            None => break,
        }
    }
    let mut resumed = Vec::new();
    let mut failed = Vec::new();
    for id in paused {
        match engine.resume(&id).await {
            Ok(()) => resumed.push(id),
            Err(err) => {
                writeln!(notes, "{id}: {err}")?;
                failed.push(json!({ "id": id, "error": err.to_string() }));
            }
        }
    }
    if json {
        print_json(
            out,
            &json!({ "done": "resume", "resumed": resumed, "failed": failed }),
        )?;
    } else {
        writeln!(out, "resumed {} instance(s)", resumed.len())?;
        if !failed.is_empty() {
            writeln!(out, "{} could not be resumed (see above)", failed.len())?;
        }
    }
    Ok(u8::from(!failed.is_empty()))
}

/// What a command's text arguments hold, read before connecting.
#[derive(Default)]
struct ReadArgs {
    /// `run`'s input or `send-event`'s payload, from its argument or
    /// standard input.
    document: Option<Value>,
    /// `list`'s filters, as the API reads them.
    query: Option<Query>,
}

fn read_args(command: &Command) -> Result<ReadArgs, CliError> {
    let mut read = ReadArgs::default();
    match command {
        Command::Run {
            input, key, once, ..
        } => {
            // As the API reads it: a blank key (`--key "$UNSET"`) is none,
            // so `--once` cannot fold unrelated runs onto the key "".
            if *once && crate::api::given(key).is_none() {
                return Err(CliError::Usage(
                    "--once needs a --key that is not blank: the start is made once per key"
                        .to_owned(),
                ));
            }
            read.document = Some(parse_json("input", input)?);
        }
        Command::SendEvent { payload, .. } => {
            read.document = Some(parse_json("payload", payload)?);
        }
        Command::List {
            workflow,
            status,
            tag,
            key,
            limit,
            after,
        } => {
            let params = ListParams {
                workflow: workflow.clone(),
                status: Some(status.join(",")),
                tag: tag.clone(),
                q: None,
                limit: Some(*limit),
                after: after.clone(),
            };
            let (mut query, _) = build_query(&params).map_err(CliError::Usage)?;
            if let Some(key) = key {
                query = query.key(key.clone());
            }
            read.query = Some(query);
        }
        _ => {}
    }
    Ok(read)
}

fn parse_json(what: &str, text: &str) -> Result<Value, CliError> {
    let text = if text == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        text.to_owned()
    };
    serde_json::from_str(&text).map_err(|err| {
        CliError::Usage(format!(
            "{what} is not valid JSON: {err} (quote it for the shell: '{{\"order_id\": \"1\"}}')"
        ))
    })
}

fn tag_arg(tag: &str) -> Result<(String, String), String> {
    tag.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("tag `{tag}` is not name=value"))
}

/// After this long still waiting for a worker, `run --wait` says so.
const UNCLAIMED_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// `run --wait`: the instance once it ended, or `Error::WaitTimeout` after
/// `limit`. This CLI runs no workflow: if no engine running `name` uses the
/// database, nothing ever will, so a start still untouched after
/// [`UNCLAIMED_HINT_AFTER`] gets a hint on stderr instead of silence.
async fn wait_for_end(
    engine: &Engine,
    id: &InstanceId,
    name: &str,
    limit: Option<std::time::Duration>,
    notes: &mut (dyn Write + Send),
) -> Result<workflow_core::InstanceInfo, Error> {
    let waiting = async {
        match limit {
            Some(limit) => engine.wait_timeout(id, limit).await,
            None => engine.wait(id).await,
        }
    };
    tokio::pin!(waiting);
    tokio::select! {
        info = &mut waiting => return info,
        () = tokio::time::sleep(UNCLAIMED_HINT_AFTER) => {}
    }
    if let Ok(info) = engine.instance(id).await {
        let due = info.due_at.is_none_or(|at| at <= chrono::Utc::now());
        if info.status == Status::Pending && info.started_at.is_none() && due {
            // A note that cannot be written is no reason to stop waiting.
            let _ = writeln!(
                notes,
                "{id} is still pending after {}s: no worker has picked it up. Is an engine that \
                 runs `{name}` using this database? (--wait-timeout gives up waiting)",
                UNCLAIMED_HINT_AFTER.as_secs()
            );
        }
    }
    waiting.await
}

fn print_json(out: &mut (dyn Write + Send), value: &Value) -> std::io::Result<()> {
    writeln!(out, "{}", pretty(value))
}

/// `value` as indented JSON, with DEL and the C1 controls written as
/// `\u007f`..`\u009f`: serde_json leaves them raw (JSON allows them), and
/// the terminal guard on the output would otherwise rewrite them into
/// escapes no JSON parser reads. Outside strings JSON holds only ASCII, so
/// every one replaced is inside a string.
fn pretty(value: &Value) -> String {
    let json = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    if !json.contains(|c| ('\u{7f}'..='\u{9f}').contains(&c)) {
        return json;
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// A duration argument (`30s`, `12h`, `30d`), read before anything
/// connects: a typo is a usage error at once, not after a database
/// answered.
fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    workflow_rules::duration::parse(text)
        .map_err(|err| format!("not a duration (`30s`, `12h`, `30d`): {err}"))
}

/// `set-timeout --at`: a time ahead of now.
fn deadline_arg(text: &str) -> Result<DateTime<Utc>, String> {
    crate::api::future_deadline(time_arg(text)?)
}

fn time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| format!("not an RFC 3339 time (`2026-12-24T09:00:00Z`): {err}"))
}

fn duration(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> String {
    let to = to.unwrap_or_else(Utc::now);
    millis((to - from).num_milliseconds())
}

/// A workflow's default timeout: `none` for `Duration::MAX` (no deadline)
/// and anything past what a date can hold.
fn timeout(ms: u64) -> String {
    match i64::try_from(ms) {
        Ok(ms) if ms < 100 * 365 * 86_400_000 => millis(ms),
        _ => "none".to_owned(),
    }
}

fn millis(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    // Under 59.95 s, tenths; from there whole seconds, rounded once (so
    // 59,950 ms reads `1m`, not `60.0s`).
    if ms < 59_950 {
        return format!("{:.1}s", ms as f64 / 1_000.0);
    }
    let secs = ms.saturating_add(500) / 1_000;
    let (h, m, s) = (secs / 3_600, (secs / 60) % 60, secs % 60);
    // The smaller unit only when it says something: `5m`, `5m30s`.
    let two = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small:02}{small_unit}")
        }
    };
    if h == 0 {
        two(m, "m", s, "s")
    } else if h < 48 {
        two(h, "h", m, "m")
    } else {
        two(h / 24, "d", h % 24, "h")
    }
}

fn one_line(text: &str) -> String {
    shorten(&text.replace(['\n', '\r'], " "), 100)
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(
    out: &mut (dyn Write + Send),
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "(none)");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            s.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_written_out() {
        assert_eq!(escape_controls(b"plain\ttext\n"), None);
        assert_eq!(escape_controls("caf\u{e9} \u{2713}".as_bytes()), None);
        let shown = escape_controls(b"x\x1b]0;pwned\x07\x1b[2J\n").unwrap();
        assert_eq!(
            String::from_utf8(shown).unwrap(),
            "x\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\n"
        );
        let c1 = escape_controls("a\u{9b}2J".as_bytes()).unwrap();
        assert_eq!(String::from_utf8(c1).unwrap(), "a\\u{9b}2J");
    }

    /// `--json` stays JSON whatever a string holds, and shows no control
    /// character raw.
    #[test]
    fn json_output_escapes_every_control_character() {
        let value = json!({ "key": "a\u{7f}b\u{93}c\u{1b}d\u{e9}" });
        let mut out = Vec::new();
        let mut guarded = UntilClosed {
            out: &mut out,
            closed: false,
        };
        print_json(&mut guarded, &value).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            value,
            "{text}"
        );
        assert!(!text.contains(['\u{7f}', '\u{93}', '\u{1b}']), "{text}");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["A", "LONGER"],
            vec![
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A    LONGER\nxyz  1\nq    22\n"
        );
    }

    #[test]
    fn errors_reach_the_terminal_escaped() {
        let err = CliError::Usage("status \u{1b}]52;c;evil\u{7} of x".into());
        assert_eq!(err.to_terminal(), "status \\u{1b}]52;c;evil\\u{7} of x");
        let plain = CliError::Usage("no such instance".into());
        assert_eq!(plain.to_terminal(), "no such instance");
    }

    /// A reader that takes `room` bytes, then closes its end of the pipe.
    struct Pipe {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken.len() >= self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room - self.taken.len());
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_drops_the_rest() {
        let mut pipe = Pipe {
            taken: Vec::new(),
            room: 4,
        };
        let mut out = UntilClosed {
            out: &mut pipe,
            closed: false,
        };
        writeln!(out, "first line").unwrap();
        writeln!(out, "second line").unwrap();
        out.flush().unwrap();
        assert!(out.closed);
        assert_eq!(pipe.taken, b"firs");

        // Anything else is still an error.
        let mut full = UntilClosed {
            out: &mut io::Cursor::new([0u8; 2]),
            closed: false,
        };
        assert_eq!(
            writeln!(full, "abc").unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }

    #[test]
    fn unknown_names_offer_the_recorded_ones() {
        let names = |n: usize| (0..n).map(|i| format!("w{i:02}")).collect::<Vec<_>>();
        let message = |recorded| {
            CliError::UnknownWorkflow {
                name: "nope".into(),
                recorded,
            }
            .to_string()
        };
        assert_eq!(
            message(names(0)),
            "no engine using this database has recorded a workflow named `nope`, \
             nor any other yet: engines record their workflows when they start"
        );
        assert!(message(names(2)).ends_with("`nope`; recorded: w00, w01"));
        assert!(message(names(12)).ends_with(
            "recorded: w00, w01, w02, w03, w04, w05, w06, w07, w08, w09 and 2 more \
             (`workflow workflows` lists them)"
        ));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(millis(12), "12ms");
        assert_eq!(millis(1_500), "1.5s");
        assert_eq!(millis(61_000), "1m01s");
        assert_eq!(millis(3_600_000 * 3 + 60_000), "3h01m");
        assert_eq!(millis(3_600_000 * 50), "2d02h");
        assert_eq!(
            millis(i64::MAX),
            format!("{}d{:02}h", i64::MAX / 86_400_000, 7)
        );
        // `Duration::MAX`, no deadline: not `0ms`.
        assert_eq!(timeout(u64::MAX), "none");
        assert_eq!(timeout(300_000), "5m");
        assert_eq!(millis(300_000), "5m");
        assert_eq!(millis(7 * 24 * 3_600_000), "7d");
        assert_eq!(millis(59_949), "59.9s");
        assert_eq!(millis(59_950), "1m");
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::try_parse_from([
            "workflow",
            "--db",
            "sqlite://x.db",
            "list",
            "--status",
            "failed",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::List { ref status, .. } if status == &["failed"]));
        let cli = Cli::try_parse_from(["workflow", "run", "greet", "{}", "--wait", "--tag", "a=b"])
            .unwrap();
        assert!(
            matches!(cli.command, Command::Run { wait: true, ref tags, .. } if tags == &[("a".to_owned(), "b".to_owned())])
        );
        assert!(Cli::try_parse_from(["workflow", "frobnicate"]).is_err());
    }
}
