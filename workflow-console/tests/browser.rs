//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver speaks JSON over HTTP). Opens the list, filters to failed,
//! opens an instance whose values are HTML/script (they must show as text),
//! goes back, opens the running one, cancels it and sees it cancelled.
//! Pages through the list with Back, Forward and reload in between, and
//! checks that times show in UTC (and a schedule's in its own zone too).
//! Screenshots go to `target/console-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them the test says it is skipped and passes, unless
//! `WORKFLOW_TEST_REQUIRE_BROWSER` is set (as `.ci/run` does once it
//! installed them), when it fails.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{fixture, http, Countdown, XSS_KEY, XSS_ORDER, XSS_TAG};
use serde_json::{json, Value};
use workflow::prelude::*;
use workflow_console::ConsoleExt;

const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A chromedriver process and one browser session.
struct Browser {
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromedriver: &Path) -> Browser {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            if listening
                && http("GET", &format!("{base}/status"), &[], None)
                    .await
                    .json()["value"]["ready"]
                    == true
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1360,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let res = http(
            "POST",
            &format!("{base}/session"),
            &[("content-type", "application/json")],
            Some(&caps.to_string()),
        )
        .await;
        assert_eq!(res.status, 200, "new session: {}", res.body);
        let session = res.json()["value"]["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Browser {
            base,
            session,
            driver,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let body = body.map(|b| b.to_string());
        let res = http(
            method,
            &url,
            &[("content-type", "application/json")],
            body.as_deref(),
        )
        .await;
        let value = res.json()["value"].clone();
        assert_eq!(res.status, 200, "{method} {path}: {value}");
        value
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
        .collect()
    }

    /// Waits for an element matching `css` and clicks it. Found and
    /// clicked in one script: the page redraws at its polls, and an
    /// element found in one WebDriver call may be gone by the next.
    async fn click(&self, css: &str) {
        wait_for(&format!("element `{css}`"), || async {
            self.js(
                "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;",
                json!([css]),
            )
            .await
            .as_bool()
            .filter(|clicked| *clicked)
        })
        .await;
    }

    /// Saves a PNG of the whole page (the window grows to fit, up to 2400 px).
    async fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .js(
                "return Math.min(2400, Math.max(900, document.documentElement.scrollHeight + 100));",
                json!([]),
            )
            .await;
        self.resize(height.as_u64().unwrap_or(900)).await;
        let png = self.cmd("GET", "/screenshot", None).await;
        self.resize(900).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    async fn resize(&self, height: u64) {
        self.set_size(1360, height).await;
    }

    async fn set_size(&self, width: u64, height: u64) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// How much wider than the window the page is, in CSS pixels.
    async fn overflow_x(&self) -> i64 {
        self.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await
        .as_i64()
        .unwrap()
    }

    /// The text of the open dialog, if one is open.
    async fn dialog_text(&self) -> Option<String> {
        self.js(
            "const d = document.getElementById('dialog'); return d.open ? d.textContent : null;",
            json!([]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Fails the test if anything from the database became markup or ran.
    async fn assert_no_injection(&self) {
        let found = self
            .js(
                "return { xss: window.__xss === undefined ? null : window.__xss,
                          injected: document.querySelectorAll('img, [onerror], [onmouseover], script:not([src])').length };",
                json!([]),
            )
            .await;
        assert_eq!(
            found,
            json!({ "xss": null, "injected": 0 }),
            "injected markup"
        );
    }

    async fn text_shown(&self, text: &str) -> bool {
        self.js(
            "return document.body.textContent.includes(arguments[0]);",
            json!([text]),
        )
        .await
            == true
    }

    async fn close(mut self) {
        let _ = http(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            &[],
            None,
        )
        .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The text of the page's error box, once shown (`what` names it if not).
async fn page_error(b: &Browser, what: &str) -> String {
    wait_for(what, || async {
        b.js(
            "const e = document.querySelector('[data-testid=page-error]'); return e ? e.textContent : null;",
            json!([]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    })
    .await
}

/// Polls `check` until it returns `Some`, failing the test after 15 s.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The statuses of the rows on screen.
async fn row_statuses(b: &Browser) -> Vec<String> {
    let value = b
        .js(
            "return [...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.status);",
            json!([]),
        )
        .await;
    serde_json::from_value(value).unwrap()
}

/// `2026-12-03 17:45:12Z`.
fn is_utc_time(text: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%SZ").is_ok()
}

/// The pager's text and the ids of the rows on screen.
async fn page_shown(b: &Browser) -> (String, Vec<String>) {
    let value = b
        .js(
            "return [document.querySelector('[data-testid=pager]').textContent,
                     [...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.id)];",
            json!([]),
        )
        .await;
    serde_json::from_value(value).unwrap()
}

/// Waits for the pager to say `label` (and rows to show), returning the rows.
async fn wait_page(b: &Browser, label: &str) -> Vec<String> {
    wait_for(&format!("the pager to say `{label}`"), || async {
        let (text, rows) = page_shown(b).await;
        (text == label && !rows.is_empty()).then_some(rows)
    })
    .await
}

/// Two pages older, then Back: the label and "Newer" follow the address,
/// not what was clicked before (5 instances, 2 a page).
async fn paging_survives_back_and_forward(b: &Browser) {
    b.js("location.hash = '#/?limit=2';", json!([])).await;
    let first = wait_page(b, "Showing 2+").await;
    b.click("[data-testid=older]").await;
    let second = wait_page(b, "Showing 2+ (page 2)").await;
    b.click("[data-testid=older]").await;
    let third = wait_page(b, "Showing 1 (page 3)").await;
    assert_eq!(first.len() + second.len() + third.len(), 5);

    b.js("history.back();", json!([])).await;
    assert_eq!(wait_page(b, "Showing 2+ (page 2)").await, second);
    b.js("history.forward();", json!([])).await;
    assert_eq!(wait_page(b, "Showing 1 (page 3)").await, third);
    b.js("location.reload();", json!([])).await;
    assert_eq!(wait_page(b, "Showing 1 (page 3)").await, third);
    b.js("history.back();", json!([])).await;
    assert_eq!(wait_page(b, "Showing 2+ (page 2)").await, second);

    b.click("[data-testid=newer]").await;
    assert_eq!(wait_page(b, "Showing 2+").await, first);
    let newer_disabled = b
        .js(
            "return document.querySelector('[data-testid=newer]').disabled;",
            json!([]),
        )
        .await;
    assert_eq!(newer_disabled, true, "no page newer than the first");
    b.click("[data-testid=older]").await;
    assert_eq!(wait_page(b, "Showing 2+ (page 2)").await, second);
}

/// chromedriver's path, or `None` (the test `name` said skipped) when
/// Chromium or its driver is missing.
fn chromedriver(name: &str) -> Option<PathBuf> {
    let chromedriver = find_program("chromedriver");
    let (true, Some(chromedriver)) = (Path::new(CHROMIUM).exists(), chromedriver) else {
        // CI installs chromium and sets this: there a missing browser is a
        // broken setup, not a reason to pass without the test.
        assert!(
            std::env::var_os("WORKFLOW_TEST_REQUIRE_BROWSER").is_none(),
            "WORKFLOW_TEST_REQUIRE_BROWSER is set, but chromium or chromedriver is missing"
        );
        // Straight to stderr: the test harness swallows `println!` of a
        // passing test, and a skip must show.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{name}: skipped: chromium not found (install Debian's `chromium` and `chromium-driver`)"
        );
        return None;
    };
    Some(chromedriver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let Some(chromedriver) = chromedriver("console_in_a_real_browser") else {
        return;
    };
    let f = fixture().await;
    let server = f
        .engine
        .console()
        .token("browser-token")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let b = Browser::start(&chromedriver).await;

    // The list: every instance, with counts.
    b.goto(&server.url()).await;
    wait_for("five rows", || async {
        (row_statuses(&b).await.len() == 5).then_some(())
    })
    .await;
    let url = b.js("return location.href;", json!([])).await;
    assert!(
        !url.as_str().unwrap().contains("token="),
        "the token leaves the address bar: {url}"
    );
    // A link with the token pasted into the open tab changes only the
    // fragment: the page takes it all the same.
    b.js(
        "sessionStorage.clear(); location.hash = '#token=browser-token'; return true;",
        json!([]),
    )
    .await;
    wait_for("the token taken from a changed fragment", || async {
        let taken = b
            .js(
                "return [location.href, sessionStorage.getItem('workflow-console-token')];",
                json!([]),
            )
            .await;
        (taken[1] == "browser-token" && !taken[0].as_str()?.contains("token=")).then_some(())
    })
    .await;
    // The list is drawn again from two API answers after the change.
    wait_for("five rows again, the key among them", || async {
        (row_statuses(&b).await.len() == 5 && b.text_shown(XSS_KEY).await).then_some(())
    })
    .await;
    b.assert_no_injection().await;
    assert!(b.text_shown(XSS_KEY).await, "the key shows as text");
    let created = b
        .js(
            "return [...document.querySelectorAll('tr[data-id] td.nowrap .sub')].map(s => s.textContent);",
            json!([]),
        )
        .await;
    let created: Vec<String> = serde_json::from_value(created).unwrap();
    assert_eq!(created.len(), 5);
    for time in &created {
        assert!(
            is_utc_time(time),
            "times are UTC, as the CLI prints them: {time}"
        );
    }

    paging_survives_back_and_forward(&b).await;
    b.js("location.hash = '#/';", json!([])).await;
    wait_for("five rows again", || async {
        (row_statuses(&b).await.len() == 5).then_some(())
    })
    .await;

    // Filter to failed.
    b.click("button[data-status=failed]").await;
    wait_for("only failed rows", || async {
        let statuses = row_statuses(&b).await;
        (statuses.len() == 2 && statuses.iter().all(|s| s == "failed")).then_some(())
    })
    .await;
    b.screenshot("list-failed").await;

    // Open the failed instance whose input, key, tags and error are HTML.
    b.click(&format!("tr[data-id='{}']", f.xss)).await;
    wait_for("the instance page", || async {
        b.text_shown("card declined").await.then_some(())
    })
    .await;
    b.assert_no_injection().await;
    for text in [XSS_KEY, XSS_TAG] {
        assert!(b.text_shown(text).await, "shown as text: {text}");
    }
    let key = b
        .js(
            "return document.querySelector('[data-testid=key]').textContent;",
            json!([]),
        )
        .await;
    assert_eq!(key, json!(XSS_KEY));
    let input = b
        .js(
            "return document.querySelector('[data-testid=input] pre').textContent;",
            json!([]),
        )
        .await;
    let input: Value = serde_json::from_str(input.as_str().unwrap()).unwrap();
    assert_eq!(input["order_id"], XSS_ORDER, "the input JSON, verbatim");
    let steps = b
        .js(
            "return [...document.querySelectorAll('[data-step]')].map(s => s.dataset.step);",
            json!([]),
        )
        .await;
    assert_eq!(steps, json!(["reserve-stock", "charge-payment"]));
    b.screenshot("instance-failed").await;

    // Back to the filtered list, then to everything.
    b.js("history.back();", json!([])).await;
    wait_for("the failed list again", || async {
        let statuses = row_statuses(&b).await;
        (statuses.len() == 2).then_some(())
    })
    .await;
    b.click("button[data-status=all]").await;
    wait_for("all rows", || async {
        (row_statuses(&b).await.len() == 5).then_some(())
    })
    .await;
    b.screenshot("list").await;

    // Open the running one: a pause asked shows as pending, with Resume
    // to take it back; then cancel it.
    b.click(&format!("tr[data-id='{}']", f.running)).await;
    b.click(".title [data-status-badge=in_progress]").await;
    b.click("button[data-action=pause]").await;
    let pausing = wait_for("the pause pending", || async {
        b.js(
            "const w = document.querySelector('.meta [data-testid=waiting]');\
             return w && document.querySelector('button[data-action=resume]') ? w.textContent : null;",
            json!([]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    })
    .await;
    assert!(pausing.contains("pausing"), "{pausing}");
    assert!(b.find_all("button[data-action=pause]").await.is_empty());
    assert!(f.engine.instance(&f.running).await.unwrap().pause_requested);
    b.click("button[data-action=resume]").await;
    wait_for("the pause taken back", || async {
        (!b.find_all("button[data-action=pause]").await.is_empty()).then_some(())
    })
    .await;
    assert!(!f.engine.instance(&f.running).await.unwrap().pause_requested);
    b.click("button[data-action=cancel]").await;
    b.click("[data-testid=dialog-confirm]").await;
    wait_for("the cancelled badge", || async {
        let found = b.find_all(".title [data-status-badge=cancelled]").await;
        (!found.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        f.engine.instance(&f.running).await.unwrap().status,
        Status::Cancelled
    );
    assert!(
        b.find_all("button[data-action=cancel]").await.is_empty(),
        "no cancel button on an ended instance"
    );
    b.screenshot("instance-cancelled").await;

    // Send the waiting one its event from the dialog (with the dialog's
    // own key: the API must take it).
    b.goto(&format!(
        "http://{}/#/instances/{}",
        server.local_addr(),
        f.listening
    ))
    .await;
    let says = || async {
        b.js(
            "const w = document.querySelector('.meta [data-testid=waiting]');\
             return w ? w.textContent : null;",
            json!([]),
        )
        .await
    };
    let waiting = wait_for("what it waits for", || async {
        says().await.as_str().map(str::to_owned)
    })
    .await;
    assert!(waiting.starts_with("event approval"), "{waiting}");
    b.screenshot("instance-listening").await;
    // Nothing about it changes, but the time it has run for moves on
    // (before, the page kept the first answer's "Running for 1.20 s").
    let meta = || async {
        b.js(
            "return document.querySelector('.meta').textContent;",
            json!([]),
        )
        .await
        .as_str()
        .map(str::to_owned)
    };
    let first = meta().await.expect("the meta panel");
    wait_for("the running time to move on", || async {
        meta().await.filter(|now| *now != first)
    })
    .await;
    // Its deadline moved from the page.
    let before = chrono::Utc::now();
    b.click("button[data-action=set-timeout]").await;
    b.js(
        "document.querySelector('[data-testid=deadline-in]').value = arguments[0];",
        json!(["6h"]),
    )
    .await;
    b.click("[data-testid=dialog-confirm]").await;
    // Six hours from now: its workflow's own deadline (7 days) is further
    // off, so a deadline not yet moved must not pass for a moved one.
    wait_for("the moved deadline", || async {
        let deadline = f.engine.instance(&f.listening).await.ok()?.deadline_at?;
        (359..=361)
            .contains(&(deadline - before).num_minutes())
            .then_some(deadline)
    })
    .await;
    // The store can hold the new deadline before the page has read the
    // answer, so the toast is waited for, not looked for once.
    wait_for("the toast that says so", || async {
        b.text_shown("Deadline moved").await.then_some(())
    })
    .await;
    b.click("button[data-action=send-event]").await;
    // The name it listens for is filled in.
    let name = b
        .js(
            "return document.querySelector('[data-testid=event-name]').value;",
            json!([]),
        )
        .await;
    assert_eq!(name, "approval");
    b.js(
        "document.querySelector('[data-testid=event-payload]').value = arguments[0];",
        json!([r#"{"approved": true}"#]),
    )
    .await;
    b.click("[data-testid=dialog-confirm]").await;
    wait_for("the completed badge", || async {
        let found = b.find_all(".title [data-status-badge=completed]").await;
        (!found.is_empty()).then_some(())
    })
    .await;
    wait_for("the toast that says so", || async {
        b.text_shown("Event sent").await.then_some(())
    })
    .await;
    assert_eq!(
        f.engine.instance(&f.listening).await.unwrap().output,
        Some(json!("15000 cents approved: true"))
    );
    // Ended, it is not fetched again at every poll.
    let fetches = || async {
        b.js(
            "return performance.getEntriesByType('resource')\
               .filter(e => e.name.includes('/api/instances/' + arguments[0] + '?')).length;",
            json!([f.listening.as_str()]),
        )
        .await
        .as_u64()
        .unwrap()
    };
    // Once the fetch the action itself made has come back: the count holds
    // still over a poll.
    let mut before = fetches().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let now = fetches().await;
        if now == before {
            break;
        }
        before = now;
    }
    assert!(before > 0, "the page fetched it");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(fetches().await, before, "no polls of an ended instance");

    // A long instance shows its latest steps and history, then all of them.
    let long = Countdown::start(&f.engine, 230).await.unwrap();
    long.result().await.unwrap();
    b.goto(&format!(
        "http://{}/#/instances/{}",
        server.local_addr(),
        long.id()
    ))
    .await;
    let shown = || async {
        let found = b
            .js(
                "const more = document.querySelector('[data-testid=more-steps]');                 return [document.querySelectorAll('[data-step]').length,                         document.querySelectorAll('[data-testid=history] tbody tr').length,                         more && more.textContent];",
                json!([]),
            )
            .await;
        serde_json::from_value::<(u64, u64, Option<String>)>(found).unwrap()
    };
    let (steps, events, more) = wait_for("the latest steps", || async {
        let found = shown().await;
        (found.0 > 0).then_some(found)
    })
    .await;
    assert_eq!((steps, events), (200, 200), "the latest 200 of each");
    assert_eq!(more.as_deref(), Some("latest 200 of 230 steps · Show all"));
    b.screenshot("instance-long").await;
    b.click("[data-testid=more-steps] button[data-action=show-all]")
        .await;
    let (steps, events, more) = wait_for("every step", || async {
        let found = shown().await;
        (found.0 == 230).then_some(found)
    })
    .await;
    assert_eq!(steps, 230);
    assert!(events > 230, "every history event: {events}");
    assert_eq!(more, None, "nothing left to show");
    // Each step's output opens under it: the first tick counted 230, the
    // last 1.
    // Only opened ones are rendered.
    let closed = b
        .js(
            "const d = [...document.querySelectorAll('[data-output]')];\
             const rendered = document.querySelectorAll('[data-output] pre').length;\
             d[0].querySelector('summary').click();\
             d[d.length - 1].querySelector('summary').click();\
             return [d.length, rendered];",
            json!([]),
        )
        .await;
    assert_eq!(closed, json!([230, 0]));
    let outputs = wait_for("the opened outputs", || async {
        let found = b
            .js(
                "const d = [...document.querySelectorAll('[data-output]')];\
                 const pre = (el) => el.querySelector('pre');\
                 return pre(d[0]) && pre(d[d.length - 1])\
                   ? [document.querySelectorAll('[data-output] pre').length,\
                      pre(d[0]).textContent, pre(d[d.length - 1]).textContent]\
                   : null;",
                json!([]),
            )
            .await;
        (!found.is_null()).then_some(found)
    })
    .await;
    assert_eq!(outputs, json!([2, "230", "1"]));

    // The other pages render.
    b.goto(&format!("http://{}/#/workflows", server.local_addr()))
        .await;
    wait_for("workflow cards", || async {
        (b.find_all("section[data-workflow]").await.len() == 5).then_some(())
    })
    .await;
    b.screenshot("workflows").await;

    // Starting from the form: violations show inline, a good input starts one.
    let form = "section[data-workflow=processOrder]";
    b.js(
        "document.querySelector(arguments[0] + ' [data-testid=start-input]').value = arguments[1];",
        json!([form, r#"{"order_id": 5}"#]),
    )
    .await;
    b.click(&format!("{form} [data-testid=start]")).await;
    let shown = wait_for("inline violations", || async {
        let text = b
            .js(
                "const v = document.querySelector(arguments[0] + ' [data-testid=violations]'); return v && v.textContent;",
                json!([form]),
            )
            .await;
        text.as_str().map(str::to_owned)
    })
    .await;
    assert!(shown.contains("/order_id"), "{shown}");
    assert!(shown.contains("amount_cents"), "{shown}");
    b.js(
        "document.querySelector(arguments[0] + ' [data-testid=start-input]').value = arguments[1];",
        // Past 2^53: a plain JSON.parse in the page would round it to ...992.
        json!([
            form,
            r#"{"order_id": "W-1", "amount_cents": 9007199254740993}"#
        ]),
    )
    .await;
    b.click(&format!("{form} [data-testid=start]")).await;
    b.click(&format!("{form} .ok a")).await;
    wait_for("the started instance, completed", || async {
        let found = b.find_all(".title [data-status-badge=completed]").await;
        (!found.is_empty()).then_some(())
    })
    .await;
    assert!(b.text_shown("rcpt-W-1").await);
    let started = f
        .engine
        .list(Query::new().workflow("processOrder").limit(1000))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|i| i.input["order_id"] == "W-1")
        .expect("started from the form");
    assert_eq!(
        started.input["amount_cents"].as_u64(),
        Some(9_007_199_254_740_993),
        "the integer as typed"
    );
    assert!(
        b.text_shown("\"total_cents\": 9007199254740993").await,
        "shown as stored"
    );
    b.goto(&format!("http://{}/#/schedules", server.local_addr()))
        .await;
    wait_for("the schedule row", || async {
        (!b.find_all("tr[data-workflow=nightlyCleanup]")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    // UTC like the CLI, then the schedule's own wall clock: 03:00 in Paris.
    let next = b
        .js(
            "const td = document.querySelector('tr[data-workflow=nightlyCleanup] [data-testid=next-fire]');
             return [td.firstChild.textContent, td.querySelector('[data-testid=zoned]').textContent];",
            json!([]),
        )
        .await;
    let (utc, zoned): (String, String) = serde_json::from_value(next).unwrap();
    assert!(is_utc_time(&utc), "{utc}");
    assert!(zoned.ends_with(" 03:00:00 Europe/Paris"), "{zoned}");
    b.screenshot("schedules").await;

    // An instance that is not there (purged since a link to it was made)
    // is said so in the page, and the server still counts as live.
    b.goto(&format!(
        "http://{}/#/instances/no-such-instance",
        server.local_addr()
    ))
    .await;
    let said = page_error(&b, "the missing instance's message").await;
    assert!(said.starts_with("No such instance"), "{said}");
    assert!(
        b.text_shown("live ·").await,
        "not taken for the server being away"
    );

    // A row damaged outside the engine: the server's error is shown in the
    // page (before, "Loading…" stayed and the badge said "offline").
    let db = rusqlite::Connection::open(f.dir.path().join("console.db")).unwrap();
    db.execute(
        "UPDATE instances SET status = 'lost' WHERE id = ?1",
        [f.completed.as_str()],
    )
    .unwrap();
    b.goto(&format!(
        "http://{}/#/instances/{}",
        server.local_addr(),
        f.completed
    ))
    .await;
    let said = page_error(&b, "the unreadable instance's message").await;
    assert!(
        said.starts_with("Cannot show this instance") && said.contains("lost"),
        "{said}"
    );
    assert!(b.text_shown("live ·").await, "the server answered");

    // A running instance's page that failed to load once shows it again
    // when the next answer comes, though it is the same as before.
    let waiting = common::ApproveExpense::start(&f.engine, 7).await.unwrap();
    common::wait_status(&f.engine, waiting.id(), Status::Listening).await;
    b.goto(&format!(
        "http://{}/#/instances/{}",
        server.local_addr(),
        waiting.id()
    ))
    .await;
    let badge = ".title [data-status-badge=listening]";
    wait_for("the listening badge", || async {
        (!b.find_all(badge).await.is_empty()).then_some(())
    })
    .await;
    let set_status = |status: &'static str| {
        db.execute(
            "UPDATE instances SET status = ?1 WHERE id = ?2",
            [status, waiting.id().as_str()],
        )
        .unwrap()
    };
    set_status("lost");
    page_error(&b, "the damaged instance's message").await;
    set_status("listening");
    wait_for("the instance shown again", || async {
        (!b.find_all(badge).await.is_empty()).then_some(())
    })
    .await;

    // An input too large for the page is said, with its size.
    let large = common::ProcessOrder::start(
        &f.engine,
        common::OrderInput {
            order_id: "L".repeat(3 << 20),
            amount_cents: 1,
        },
    )
    .await
    .unwrap();
    b.goto(&format!(
        "http://{}/#/instances/{}",
        server.local_addr(),
        large.id()
    ))
    .await;
    let said = wait_for("the input left out", || async {
        let said = b
            .js(
                "const e = document.querySelector('[data-testid=input] [data-testid=left-out]');\
                 return e && e.textContent;",
                json!([]),
            )
            .await;
        said.as_str().map(str::to_owned)
    })
    .await;
    assert!(said.starts_with("Left out of the page: 3.0 MiB"), "{said}");
    assert!(said.contains(large.id().as_str()), "{said}");
    b.close().await;
    server.shutdown();
}

/// The token dialog says when a token was refused, and closes when a link
/// with the right one is pasted into the tab; a button whose action fails
/// leaves no uncaught error; on a phone's width nothing scrolls sideways.
/// Before: the same empty dialog came back, the dialog stayed open over a
/// page that had loaded, Pause and Resume threw uncaught errors, and the
/// page was 614 px wide at 375.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_dialog_failed_buttons_and_a_phone() {
    let Some(chromedriver) = chromedriver("token_dialog_failed_buttons_and_a_phone") else {
        return;
    };
    let f = fixture().await;
    let server = f
        .engine
        .console()
        .token("phone-token")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let base = format!("http://{}/", server.local_addr());
    let b = Browser::start(&chromedriver).await;

    b.goto(&base).await;
    let asked = wait_for("the token dialog", || b.dialog_text()).await;
    assert!(asked.contains("Token required"), "{asked}");
    assert!(!asked.contains("refused"), "{asked}");
    b.js(
        "document.querySelector('#dialog input').value = 'wrong-token'; return true;",
        json!([]),
    )
    .await;
    b.click("[data-testid=dialog-confirm]").await;
    let again = wait_for("the dialog saying the token was refused", || async {
        b.dialog_text().await.filter(|t| t.contains("refused"))
    })
    .await;
    assert!(again.contains("Token required"), "{again}");

    // A link with the right token, pasted into the tab with the dialog up.
    b.js(
        "location.hash = '#token=phone-token'; return true;",
        json!([]),
    )
    .await;
    wait_for("rows, with the dialog closed", || async {
        let rows = row_statuses(&b).await.len();
        (rows == 5 && b.dialog_text().await.is_none()).then_some(())
    })
    .await;

    // Pause refused (the token no longer fits): a toast, nothing uncaught.
    b.goto(&format!("{base}#/instances/{}", f.listening)).await;
    wait_for("the pause button", || async {
        (!b.find_all("[data-action=pause]").await.is_empty()).then_some(())
    })
    .await;
    b.js(
        "window.__uncaught = [];
         window.addEventListener('error', (e) => window.__uncaught.push(String(e.message)));
         window.addEventListener('unhandledrejection', (e) => window.__uncaught.push(String(e.reason)));
         sessionStorage.setItem('workflow-console-token', 'stale-token');
         document.querySelector('[data-action=pause]').click();
         return true;",
        json!([]),
    )
    .await;
    wait_for("the error toast", || async {
        (!b.find_all(".toast.err").await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uncaught = b.js("return window.__uncaught;", json!([])).await;
    assert_eq!(uncaught, json!([]), "uncaught errors");

    // A phone: the list and an instance fit the width.
    b.js(
        "sessionStorage.setItem('workflow-console-token', 'phone-token'); return true;",
        json!([]),
    )
    .await;
    b.set_size(375, 800).await;
    b.goto(&base).await;
    wait_for("rows on a phone", || async {
        (row_statuses(&b).await.len() == 5).then_some(())
    })
    .await;
    assert!(
        b.overflow_x().await <= 0,
        "the list scrolls sideways: {} px",
        b.overflow_x().await
    );
    b.goto(&format!("{base}#/instances/{}", f.completed)).await;
    wait_for("the completed badge", || async {
        (!b.find_all(".title [data-status-badge=completed]")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(
        b.overflow_x().await <= 0,
        "the instance scrolls sideways: {} px",
        b.overflow_x().await
    );
    b.close().await;
    server.shutdown();
}
