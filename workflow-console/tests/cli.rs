//! The `workflow` binary against a database that an engine in this test
//! process (which has the workflow code) is running: the CLI has no
//! workflow code, only the URL.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{fixture, http, wait_status};
use serde_json::Value;
use workflow::prelude::*;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `workflow --db URL ARGS..`, with none of the environment's settings.
fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_workflow"));
    command
        .env_remove("WORKFLOW_DATABASE_URL")
        .env_remove("WORKFLOW_CONSOLE_TOKEN")
        .arg("--db")
        .arg(url)
        .args(args);
    command
}

/// Runs `workflow --db URL ARGS..` on a blocking thread (the engine's
/// worker keeps running on the runtime meanwhile).
async fn cli(url: &str, args: &[&str]) -> Output {
    let mut command = command(url, args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `workflow --db URL ARGS..` into a pipe whose reader takes `keep`
/// bytes and closes it, as `| head -c KEEP` does. Output longer than the
/// pipe's buffer (64 KiB on Linux) cannot all fit before the close, so the
/// CLI's writes hit the broken pipe whatever the timing.
async fn cli_into_closed_pipe(url: &str, args: &[&str], keep: usize) -> Output {
    let mut command = command(url, args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut head = vec![0; keep];
        stdout.read_exact(&mut head).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&head).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// The first line a running `workflow` process prints.
async fn first_line(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap()
}

fn json(out: &Output) -> Value {
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_the_workflow_code() {
    let f = fixture().await;
    let url = f.url.as_str();

    let out = cli(url, &["workflows"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for name in [
        "approveExpense",
        "countdown",
        "nightlyCleanup",
        "processOrder",
        "slowReport",
    ] {
        assert!(out.stdout.contains(name), "{}", out.stdout);
    }
    assert!(
        out.stdout.contains("0 3 * * * (Europe/Paris)"),
        "{}",
        out.stdout
    );
    // The hint is a note: standard output holds the table alone.
    assert!(out.stderr.contains("shows the schemas"), "{}", out.stderr);
    assert!(!out.stdout.contains("shows the schemas"), "{}", out.stdout);
    let out = cli(url, &["workflows", "processOrder"]).await;
    assert!(out.stdout.contains("input schema:"), "{}", out.stdout);
    assert!(out.stdout.contains("\"amount_cents\""), "{}", out.stdout);
    assert!(out.stdout.contains("timeout:  10m"), "{}", out.stdout);
    let defs = json(&cli(url, &["workflows", "--json"]).await);
    assert_eq!(defs.as_array().unwrap().len(), 5);
    // Counts per status, every status named, as the engine counts them.
    let counts = json(&cli(url, &["counts", "--json"]).await);
    let engine_counts = f.engine.counts(None).await.unwrap();
    assert_eq!(counts.as_object().unwrap().len(), Status::ALL.len());
    for status in Status::ALL {
        let expected = engine_counts.get(&status).copied().unwrap_or(0);
        assert_eq!(counts[status.as_str()], expected, "{status}: {counts}");
    }
    assert!(counts["completed"].as_u64().unwrap() >= 1, "{counts}");
    let out = cli(url, &["counts", "--workflow", "processOrder"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("STATUS"), "{}", out.stdout);
    assert!(out.stdout.contains("timed_out"), "{}", out.stdout);
    let out = cli(url, &["counts", "--workflow", "procesOrder"]).await;
    assert_eq!(
        out.code, 2,
        "a misspelt workflow counts nothing: {}",
        out.stdout
    );
    let out = cli(url, &["workflows", "nope"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: no engine using this database has recorded a workflow named `nope`; \
         recorded: approveExpense, countdown, nightlyCleanup, processOrder, slowReport"
    );
    // A key no store can index is bad input too.
    let long_key = "k".repeat(513);
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "L", "amount_cents": 1}"#,
            "--key",
            &long_key,
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("dedup key"), "{}", out.stderr);

    // List: a table by default, JSON with --json, filters.
    let out = cli(url, &["list"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID "), "{}", out.stdout);
    assert_eq!(lines.len(), 6, "header and five rows: {}", out.stdout);
    let failed = json(&cli(url, &["list", "--status", "failed", "--json"]).await);
    let items = failed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["status"] == "failed"));
    let some = json(
        &cli(
            url,
            &[
                "list",
                "-s",
                "listening",
                "-s",
                "in_progress,completed",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(some["items"].as_array().unwrap().len(), 3);
    let keyed = json(&cli(url, &["list", "--key", "long-running", "--json"]).await);
    assert_eq!(keyed["items"][0]["id"], f.running.to_string());
    let tagged = json(&cli(url, &["list", "--tag", "customer=bob", "--json"]).await);
    assert_eq!(tagged["items"][0]["id"], f.failed.to_string());
    // More than a page is said, not cut to one.
    let over = cli(url, &["list", "--limit", "5000"]).await;
    assert_eq!(over.code, 2, "{}", over.stderr);
    assert!(over.stderr.contains("at most 1000"), "{}", over.stderr);
    // The next page's cursor is a note, not a row: stdout stays data.
    let paged = cli(url, &["list", "--limit", "2"]).await;
    assert!(paged.stderr.contains("more: --after "), "{}", paged.stderr);
    assert!(!paged.stdout.contains("more:"), "{}", paged.stdout);
    assert_eq!(
        paged.stdout.lines().count(),
        3,
        "a header and two rows: {}",
        paged.stdout
    );
    let out = cli(url, &["list", "--status", "done"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown status `done`"),
        "{}",
        out.stderr
    );

    // One instance and its history.
    let out = cli(url, &["show", f.failed.as_str()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("status:   failed"), "{}", out.stdout);
    assert!(
        out.stdout.contains("card declined for order bad-2002"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("charge-payment"), "{}", out.stdout);
    // What a waiting instance waits for, and until when.
    let out = cli(url, &["show", f.listening.as_str()]).await;
    assert!(
        out.stdout.contains("waiting:  event `approval`"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("due:      "), "{}", out.stdout);
    let shown = json(&cli(url, &["show", f.listening.as_str(), "--json"]).await);
    assert_eq!(shown["instance"]["waiting_for"]["kind"], "event");
    assert_eq!(shown["instance"]["waiting_for"]["name"], "approval");
    let shown = json(&cli(url, &["show", f.completed.as_str(), "--json"]).await);
    assert_eq!(shown["instance"]["due_at"], Value::Null);
    assert_eq!(shown["instance"]["output"]["receipt"], "rcpt-A-1001");
    let history = json(&cli(url, &["history", f.completed.as_str(), "--json"]).await);
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds.last(), Some(&"completed"));
    let out = cli(url, &["history", f.completed.as_str()]).await;
    assert!(out.stdout.starts_with("SEQ "), "{}", out.stdout);
    assert!(!out.stderr.contains("not shown"), "{}", out.stderr);
    // The last of them only, saying how many are left out.
    let out = cli(url, &["history", f.completed.as_str(), "--tail", "1"]).await;
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("completed"), "{}", out.stdout);
    let left_out = format!("({} earlier events not shown)", kinds.len() - 1);
    assert!(out.stderr.contains(&left_out), "{}", out.stderr);
    let tail = json(
        &cli(
            url,
            &["history", f.completed.as_str(), "--tail", "2", "--json"],
        )
        .await,
    );
    assert_eq!(tail.as_array().unwrap().len(), 2);
    assert_eq!(tail[1]["kind"], "completed");
    let out = cli(url, &["show", f.completed.as_str(), "--tail", "1"]).await;
    assert!(
        out.stderr.contains("(1 earlier steps not shown)"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("reserve-stock"), "{}", out.stdout);
    let tail = json(
        &cli(
            url,
            &["show", f.completed.as_str(), "--tail", "1", "--json"],
        )
        .await,
    );
    assert_eq!(tail["steps"].as_array().unwrap().len(), 1);
    assert_eq!(tail["steps_total"], 2);
    // An id no instance has: exit code 4, for scripts to tell it from a
    // store that failed (1).
    let out = cli(url, &["history", "no-such-id", "--tail", "5"]).await;
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let out = cli(url, &["show", "no-such-id"]).await;
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);

    // Schedules of workflows the CLI has no code for, from the definitions.
    let out = cli(url, &["schedules"]).await;
    assert!(out.stdout.contains("nightlyCleanup"), "{}", out.stdout);
    assert!(out.stdout.contains("Europe/Paris"), "{}", out.stdout);
    let schedules = json(&cli(url, &["schedules", "--json"]).await);
    assert!(schedules[0]["next_fire"].is_string());

    // A database that is not there is an error, not a new empty file.
    let missing = format!("sqlite://{}", f.dir.path().join("typo.db").display());
    let out = cli(&missing, &["list"]).await;
    assert_eq!(out.code, 2, "a --db that names nothing is bad input");
    assert!(out.stderr.contains("no database at"), "{}", out.stderr);
    assert!(!f.dir.path().join("typo.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_steers_for_a_running_engine() {
    let f = fixture().await;
    let url = f.url.as_str();

    // run --wait: checked against the recorded schema, run by the engine.
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "C-7", "amount_cents": 700}"#,
            "--wait",
            "--json",
            "--key",
            "cli-order",
            "--tag",
            "via=cli",
        ],
    )
    .await;
    let info = json(&out);
    assert_eq!(info["status"], "completed");
    assert_eq!(info["output"]["receipt"], "rcpt-C-7");
    assert_eq!(info["key"], "cli-order");
    assert_eq!(info["tags"]["via"], "cli");
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "bad-9", "amount_cents": 1}"#,
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "the instance failed: {}", out.stdout);
    assert!(out.stdout.contains("failed"), "{}", out.stdout);
    // --once: a retried start finds the first one's instance.
    let once = [
        "run",
        "processOrder",
        r#"{"order_id": "C-8", "amount_cents": 800}"#,
        "--key",
        "cli-once",
        "--once",
        "--delay",
        "1h",
        "--json",
    ];
    let first = json(&cli(url, &once).await);
    assert_eq!(first["created"], true);
    let again = json(&cli(url, &once).await);
    assert_eq!(again["created"], false);
    assert_eq!(again["id"], first["id"]);
    let out = cli(url, &["run", "processOrder", "{}", "--once"]).await;
    assert_eq!(out.code, 2, "--once needs --key: {}", out.stderr);
    // A blank key (`--key "$UNSET"`) is no key, as in the API.
    let out = cli(url, &["run", "processOrder", "{}", "--once", "--key", " "]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not blank"), "{}", out.stderr);
    let out = cli(url, &["run", "processOrder", r#"{"order_id": 7}"#]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/order_id"), "{}", out.stderr);
    assert!(out.stderr.contains("amount_cents"), "{}", out.stderr);
    let out = cli(url, &["run", "processOrder", "{not json"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    // A delayed start is pending until due.
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "C-8", "amount_cents": 800}"#,
            "--delay",
            "1h",
            "--json",
        ],
    )
    .await;
    let id = json(&out)["id"].as_str().unwrap().to_owned();
    let info = json(&cli(url, &["show", &id, "--json"]).await);
    assert_eq!(info["instance"]["status"], "pending", "{info}");
    // Waiting for it gives up when told to; the instance stays.
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "C-9", "amount_cents": 900}"#,
            "--delay",
            "1h",
            "--wait",
            "--wait-timeout",
            "300ms",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "gave up waiting: {}", out.stderr);
    assert!(out.stderr.contains("300ms"), "{}", out.stderr);
    // With `--json` too, and the script is told which instance runs on: it
    // must not start the work again to find out.
    let out = cli(
        url,
        &[
            "run",
            "processOrder",
            r#"{"order_id": "C-10", "amount_cents": 1000}"#,
            "--delay",
            "1h",
            "--wait",
            "--wait-timeout",
            "300ms",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "gave up waiting: {}", out.stderr);
    let gave_up: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {:?}, stderr {}", out.stdout, out.stderr));
    let id = InstanceId::from(gave_up["id"].as_str().unwrap());
    assert_eq!(gave_up["created"], true);
    assert!(
        gave_up["error"].as_str().unwrap().contains("300ms"),
        "{gave_up}"
    );
    assert_eq!(
        f.engine.instance(&id).await.unwrap().status,
        Status::Pending
    );
    assert!(out.stderr.contains(id.as_str()), "{}", out.stderr);
    let out = cli(url, &["run", "processOrder", "{}", "--wait-timeout", "1s"]).await;
    assert_eq!(out.code, 2, "--wait-timeout needs --wait: {}", out.stderr);
    let out = cli(url, &["run", "processOrder", "{}", "--delay", "soon"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--delay")
            && out.stderr.contains("delay `soon`")
            && out.stderr.contains("such as 90s, 30m"),
        "{}",
        out.stderr
    );
    // Typos are read before anything connects, as for `purge`.
    for (flag, value, said) in [
        ("--timeout", "soon", "timeout `soon`"),
        ("--delay", "10M", "`m` for minutes"),
        ("--tag", "env", "tag `env` is not name=value"),
    ] {
        let out = cli(
            "sqlite:///no/such/dir/x.db",
            &["run", "processOrder", "{}", flag, value],
        )
        .await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(said),
            "{}",
            out.stderr
        );
    }
    // So are the JSON documents, `--once`'s key and `list`'s filters.
    for (args, said) in [
        (
            &["run", "processOrder", "{bad"][..],
            "input is not valid JSON",
        ),
        (
            &["run", "processOrder", "{}", "--key", " ", "--once"],
            "--once needs a --key",
        ),
        (
            &["send-event", "some-id", "go", "[1,"],
            "payload is not valid JSON",
        ),
        (&["list", "--status", "faild"], "faild"),
        (&["list", "--tag", "env"], "tag filter `env`"),
    ] {
        let out = cli("sqlite:///no/such/dir/x.db", args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(said), "{args:?}: {}", out.stderr);
    }
    // A workflow whose input is `()` needs none on the command line.
    let info = json(&cli(url, &["run", "nightlyCleanup", "--wait", "--json"]).await);
    assert_eq!(info["status"], "completed");
    // The CLI runs no engine: the name is checked against what engines recorded.
    let out = cli(url, &["run", "nope", "{}", "--wait"]).await;
    assert_eq!(
        out.code, 2,
        "bad input, not a failed instance: {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim(),
        "error: no engine using this database has recorded a workflow named `nope`; \
         recorded: approveExpense, countdown, nightlyCleanup, processOrder, slowReport"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let started = json(&cli(url, &["run", "slowReport", r#"{"days": 1}"#, "--json"]).await);
    let slow = InstanceId::from(started["id"].as_str().unwrap());
    wait_status(&f.engine, &slow, Status::InProgress).await;

    // Pause, resume and an event for the waiting instance.
    let id = f.listening.as_str();
    let out = cli(url, &["pause", id]).await;
    assert_eq!(out.stdout.trim(), format!("paused {id}"), "{}", out.stderr);
    wait_status(&f.engine, &f.listening, Status::Paused).await;
    let out = cli(url, &["resume", id]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(url, &["send-event", id, "approval", "{}", "--key", ""]).await;
    assert_eq!(out.code, 2, "an unusable key is bad input: {}", out.stderr);
    assert!(out.stderr.contains("non-empty"), "{}", out.stderr);
    // A name it does not wait for: sent and kept, with a word about it.
    wait_status(&f.engine, &f.listening, Status::Listening).await;
    let out = cli(url, &["send-event", id, "aproval", "{}"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("note: it waits for event `approval`, not `aproval`"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("note:"), "{}", out.stdout);
    let send = [
        "send-event",
        id,
        "approval",
        r#"{"approved": false}"#,
        "--key",
        "d-1",
    ];
    let out = cli(url, &send).await;
    assert_eq!(
        out.stdout.trim(),
        format!("sent event `approval` to {id}"),
        "{}",
        out.stderr
    );
    // Redelivered under the same key: nothing changes, and it says so.
    let out = cli(url, &send).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("event `approval` with key `d-1` was already sent to {id}; nothing changed")
    );
    wait_status(&f.engine, &f.listening, Status::Completed).await;
    assert_eq!(
        f.engine.instance(&f.listening).await.unwrap().output,
        Some(serde_json::json!("15000 cents approved: false"))
    );

    // Move a deadline: from now, at a time, or refused without one.
    let before = chrono::Utc::now();
    let moved = json(&cli(url, &["set-timeout", slow.as_str(), "--in", "2h", "--json"]).await);
    assert_eq!(moved["done"], "set_timeout");
    let deadline = f.engine.instance(&slow).await.unwrap().deadline_at.unwrap();
    let ahead = (deadline - before).num_minutes();
    assert!(
        (119..=121).contains(&ahead),
        "{deadline} is {ahead} min ahead"
    );
    assert_eq!(moved["deadline_at"], serde_json::json!(deadline));
    let at = "2099-12-24T09:00:00Z";
    let out = cli(url, &["set-timeout", slow.as_str(), "--at", at]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let deadline = f.engine.instance(&slow).await.unwrap().deadline_at.unwrap();
    assert_eq!(deadline.to_rfc3339(), "2099-12-24T09:00:00+00:00");
    assert_eq!(
        out.stdout.trim(),
        format!("deadline of {slow} now 2099-12-24 09:00:00Z")
    );
    let out = cli(url, &["set-timeout", slow.as_str(), "--in", "0s"]).await;
    assert_eq!(out.code, 2, "a deadline of now: {}", out.stderr);
    let out = cli(url, &["set-timeout", slow.as_str()]).await;
    assert_eq!(out.code, 2, "a usage error: {}", out.stderr);
    let out = cli(url, &["set-timeout", slow.as_str(), "--at", "tomorrow"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("RFC 3339"), "{}", out.stderr);
    // A past time (a mistyped year) would time it out for good: refused.
    let out = cli(
        url,
        &["set-timeout", slow.as_str(), "--at", "2025-12-24T09:00:00Z"],
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("is past"), "{}", out.stderr);
    assert_eq!(
        f.engine.instance(&slow).await.unwrap().deadline_at,
        Some(deadline),
        "unchanged"
    );
    // Humantime's `M` is months: refused as a likely typo for minutes.
    let out = cli(url, &["set-timeout", slow.as_str(), "--in", "10M"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`m` for minutes"), "{}", out.stderr);

    // Cancel, twice.
    let out = cli(url, &["cancel", slow.as_str()]).await;
    assert_eq!(
        out.stdout.trim(),
        format!("cancelled {slow}"),
        "{}",
        out.stderr
    );
    wait_status(&f.engine, &slow, Status::Cancelled).await;
    // `--json` answers as the API does.
    let paused = json(&cli(url, &["pause", f.running.as_str(), "--json"]).await);
    assert_eq!(paused["done"], "pause");
    assert_eq!(paused["id"], f.running.as_str());
    // Its step still runs: the pause waits for the next one, and says so.
    let out = cli(url, &["resume", f.running.as_str()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(url, &["pause", f.running.as_str()]).await;
    assert_eq!(
        out.stdout.trim(),
        format!("pause asked of {}: it pauses at its next step", f.running),
        "{}",
        out.stderr
    );
    let out = cli(url, &["show", f.running.as_str()]).await;
    assert!(
        out.stdout
            .contains("status:   in_progress (pausing at its next step)"),
        "{}",
        out.stdout
    );
    let resumed = json(&cli(url, &["resume", f.running.as_str(), "--json"]).await);
    assert_eq!(resumed["done"], "resume");
    // A cancel repeated (its answer lost) has what it asked for; one of an
    // instance that ended otherwise is refused.
    let out = cli(url, &["cancel", slow.as_str()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("{slow} was already cancelled; nothing changed")
    );
    let again = json(&cli(url, &["cancel", slow.as_str(), "--json"]).await);
    assert_eq!(again["done"], "cancel");
    assert_eq!(again["already"], true);
    let out = cli(url, &["cancel", f.failed.as_str()]).await;
    assert_eq!(out.code, 5, "the instance's state refuses it");
    assert!(
        out.stderr.contains("already ended (failed)"),
        "{}",
        out.stderr
    );

    // Re-run a failed instance.
    let rerun = json(&cli(url, &["rerun", f.failed.as_str(), "--json"]).await);
    let new = InstanceId::from(rerun["id"].as_str().unwrap());
    wait_status(&f.engine, &new, Status::Failed).await;
    assert_eq!(
        f.engine.instance(&new).await.unwrap().tags["rerun_of"],
        f.failed.to_string()
    );
    // An id no instance has is not bad input (exit 4, like `cancel`); an
    // instance that has not ended refuses it (exit 5, as a cancel of one
    // that ended does).
    let out = cli(url, &["rerun", "no-such-id"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let running = f.engine.instance(&f.running).await.unwrap();
    assert!(!running.status.is_terminal(), "{}", running.status);
    let out = cli(url, &["rerun", f.running.as_str()]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("re-run is for instances that ended"),
        "{}",
        out.stderr
    );
    // Re-run again while the first re-run is active: it is named, and
    // nothing more starts.
    let first = json(&cli(url, &["rerun", slow.as_str(), "--json"]).await);
    assert_eq!(first["created"], true, "{first}");
    let first = first["id"].as_str().unwrap().to_owned();
    let out = cli(url, &["rerun", slow.as_str()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&first) && out.stdout.contains("already active"),
        "{}",
        out.stdout
    );
    f.engine.cancel(&InstanceId::from(first)).await.unwrap();

    // Purge: nothing ended an hour ago; of slowReport, what ended over a
    // minute ago goes (one cancelled by an engine whose clock is five
    // minutes behind), not the one cancelled just now; a bad age is bad
    // input.
    let out = cli(url, &["purge", "--older-than", "1h", "--json"]).await;
    assert_eq!(json(&out)["deleted"], 0);
    let behind = Engine::builder()
        .database_url(url)
        .register(common::SlowReport)
        .clock(ManualClock::new(
            chrono::Utc::now() - chrono::Duration::minutes(5),
        ))
        .build()
        .await
        .unwrap();
    let old = common::SlowReport::start(&behind, common::ReportInput { days: 2 })
        .await
        .unwrap();
    old.cancel().await.unwrap();
    let out = cli(url, &["purge", "--older-than", "0s", "-w", "slowReport"]).await;
    assert!(
        out.stdout
            .starts_with("deleted 1 instance(s) that ended before "),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(matches!(
        old.info().await,
        Err(workflow::Error::NotFound(_))
    ));
    assert_eq!(
        f.engine.instance(&slow).await.unwrap().status,
        Status::Cancelled,
        "ended in the last minute: kept"
    );
    assert!(f.engine.instance(&f.running).await.is_ok(), "running: kept");
    let out = cli(url, &["purge", "--older-than", "soon"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not a duration"), "{}", out.stderr);
    // Read before anything connects: a database that is not there is not
    // what a typo is reported as.
    let out = cli(
        "sqlite:///no/such/dir/x.db",
        &["purge", "--older-than", "soon"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--older-than") && out.stderr.contains("not a duration"),
        "{}",
        out.stderr
    );
    let out = cli(url, &["purge", "--older-than", "1h", "--json"]).await;
    let before = json(&out)["ended_before"].as_str().unwrap().to_owned();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&before).is_ok(),
        "{before}"
    );
    // The cutoff said is the one the engine used: never within the last
    // minute, which it keeps whatever `--older-than` says.
    let out = cli(url, &["purge", "--older-than", "0s", "--json"]).await;
    let answered = chrono::Utc::now();
    let before = json(&out)["ended_before"].as_str().unwrap().to_owned();
    let before = chrono::DateTime::parse_from_rfc3339(&before).unwrap();
    assert!(
        before <= answered - chrono::Duration::seconds(59),
        "{before} is within a minute of {answered}"
    );
}

/// `resume --all` resumes every paused instance, or a workflow's, once the
/// fix for what paused them is out: one command, not one per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_all_resumes_every_paused_instance() {
    let f = fixture().await;
    let url = f.url.as_str();
    let later = f
        .engine
        .start_json(
            "processOrder",
            serde_json::json!({"order_id": "P-1", "amount_cents": 100}),
            StartOptions::new().delay(std::time::Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    for id in [&f.listening, &later] {
        f.engine.pause(id).await.unwrap();
        wait_status(&f.engine, id, Status::Paused).await;
    }

    let out = cli(
        url,
        &["resume", "--all", "--workflow", "approveExpense", "--json"],
    )
    .await;
    let answer = json(&out);
    assert_eq!(answer["resumed"], serde_json::json!([f.listening.as_str()]));
    assert_eq!(answer["failed"], serde_json::json!([]));
    wait_status(&f.engine, &f.listening, Status::Listening).await;
    assert_eq!(
        f.engine.instance(&later).await.unwrap().status,
        Status::Paused
    );

    let out = cli(url, &["resume", "--all"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "resumed 1 instance(s)");
    assert_eq!(
        f.engine.instance(&later).await.unwrap().status,
        Status::Pending
    );

    // One id, or --all: not both, not neither.
    for args in [&["resume"][..], &["resume", later.as_str(), "--all"]] {
        let out = cli(url, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

/// `--help` shows no database URL from the environment: it may carry a
/// password.
#[test]
fn help_hides_the_database_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_workflow"))
        .env("WORKFLOW_DATABASE_URL", "postgres://app:s3cret@db/app")
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("WORKFLOW_DATABASE_URL"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_early_is_not_an_error() {
    let f = fixture().await;
    // Far more output than a pipe buffers: 1 MiB of input, echoed in the output.
    let input = serde_json::json!({ "order_id": "B".repeat(1 << 20), "amount_cents": 1 });
    let big = f
        .engine
        .start_json("processOrder", input, StartOptions::new())
        .await
        .unwrap();
    wait_status(&f.engine, &big, Status::Completed).await;
    let id = big.as_str();
    for args in [
        &["show", id][..],
        &["show", id, "--json"],
        &["list", "--json"],
    ] {
        let out = cli_into_closed_pipe(&f.url, args, 8).await;
        assert!(
            !out.stderr.contains("Broken pipe"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", out.stderr);
        assert_eq!(out.code, 0, "{args:?}, after {:?}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_command_serves_the_page() {
    let f = fixture().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_workflow"))
        .args([
            "--db",
            &f.url,
            "console",
            "--addr",
            "127.0.0.1:0",
            "--token",
            "cli-secret",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut child).await;
    // Printed to a pipe: the token stays out, named by where it came from.
    assert!(!line.contains("cli-secret"), "{line}");
    assert!(line.contains("#token=<--token>"), "{line}");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let base = url.trim_end_matches('/');
    let page = http("GET", &format!("{base}/"), &[], None).await;
    assert_eq!(page.status, 200);
    let denied = http("GET", &format!("{base}/api/overview"), &[], None).await;
    assert_eq!(denied.status, 401);
    let overview = http(
        "GET",
        &format!("{base}/api/overview"),
        &[("authorization", "Bearer cli-secret")],
        None,
    )
    .await;
    assert_eq!(overview.json()["total"], 5);
    child.kill().unwrap();
    child.wait().unwrap();

    // An empty token (a secret that failed to substitute) is refused, not
    // taken for none.
    let out = cli(
        &f.url,
        &["console", "--addr", "127.0.0.1:0", "--token", " "],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("token"), "{}", out.stderr);
    // Nor is a console reachable from other machines served open, unless
    // asked for in so many words.
    let out = cli(&f.url, &["console", "--addr", "0.0.0.0:0"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--no-token"), "{}", out.stderr);
    // Nor with a token a network could guess.
    let out = cli(
        &f.url,
        &["console", "--addr", "0.0.0.0:0", "--token", "short"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("5-character token") && out.stderr.contains("at least 16"),
        "{}",
        out.stderr
    );
    // A bare port is a slip, named with the fix.
    let out = cli(&f.url, &["console", "--addr", "8080"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("e.g. 127.0.0.1:8080"), "{}", out.stderr);
    // --no-token beside a token from the environment names the variable.
    let mut both = command(&f.url, &["console", "--addr", "127.0.0.1:0", "--no-token"]);
    both.env("WORKFLOW_CONSOLE_TOKEN", "from-env");
    let both = tokio::task::spawn_blocking(move || both.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("WORKFLOW_CONSOLE_TOKEN"), "{stderr}");

    // A token from the environment stays out of output that is not a
    // terminal (a service's log); the address is one a browser can open.
    let mut child = command(&f.url, &["console", "--addr", "0.0.0.0:0"])
        .env("WORKFLOW_CONSOLE_TOKEN", "env-secret-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = first_line(&mut child).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!line.contains("env-secret"), "{line}");
    assert!(line.contains("http://127.0.0.1:"), "{line}");
    assert!(line.contains("#token=<WORKFLOW_CONSOLE_TOKEN>"), "{line}");

    // Given no token on loopback, it makes a fresh one and prints it (to a
    // pipe too: nobody else knows it); `--no-token` serves it open.
    for open in [false, true] {
        let mut args = vec!["console", "--addr", "127.0.0.1:0"];
        if open {
            args.push("--no-token");
        }
        let mut child = command(&f.url, &args)
            .env_remove("WORKFLOW_CONSOLE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = first_line(&mut child).await;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        let (base, token) = match url.split_once("/#token=") {
            Some((base, token)) => (base.to_owned(), Some(token.to_owned())),
            None => (url.trim_end_matches('/').to_owned(), None),
        };
        let bare = http("GET", &format!("{base}/api/overview"), &[], None).await;
        child.kill().unwrap();
        child.wait().unwrap();
        if open {
            assert_eq!(token, None, "{line}");
            assert_eq!(bare.status, 200, "{line}");
        } else {
            let token = token.unwrap_or_else(|| panic!("no token in {line:?}"));
            assert!(
                token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
                "{token}"
            );
            assert_eq!(bare.status, 401, "{line}");
        }
    }
}

/// A `--db` that names some other SQLite file is refused and left as it
/// was: the CLI never creates or migrates a schema.
#[tokio::test]
async fn a_database_that_is_not_a_workflow_store_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let tables = |path: &std::path::Path| -> (Vec<String>, String) {
        let c = rusqlite::Connection::open(path).unwrap();
        let names = c
            .prepare("SELECT name FROM sqlite_master ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mode = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        (names, mode)
    };
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE users (id INTEGER)")
        .unwrap();
    let before = tables(&path);
    let url = format!("sqlite://{}", path.display());
    for args in [&["list"][..], &["workflows", "--json"]] {
        let out = cli(&url, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("not a workflow database"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(tables(&path), before);
}
