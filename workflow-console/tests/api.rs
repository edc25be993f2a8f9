//! The console's JSON API over real HTTP: reads, filters and paging,
//! changes, and the safety checks (token, host, same-origin, POST + JSON).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;

use common::{fixture, http, wait_status, Response};
use serde_json::{json, Value};
use workflow::prelude::*;
use workflow_console::{Console, ConsoleExt, ConsoleServer};

const TOKEN: &str = "t0k-3n";

fn auth() -> Vec<(&'static str, &'static str)> {
    vec![("authorization", "Bearer t0k-3n")]
}

async fn get(base: &str, path: &str) -> Response {
    http("GET", &format!("{base}{path}"), &auth(), None).await
}

async fn post(base: &str, path: &str, body: Value) -> Response {
    let mut headers = auth();
    headers.push(("content-type", "application/json"));
    http(
        "POST",
        &format!("{base}{path}"),
        &headers,
        Some(&body.to_string()),
    )
    .await
}

/// The console of `engine` on a free port, guarded by `TOKEN`, and its address.
async fn serve(engine: &Engine) -> (ConsoleServer, String) {
    let server = engine
        .console()
        .token(TOKEN)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

/// The path and rule of an error answer's first violation.
fn refused(res: &Response) -> (String, String) {
    let violation = &res.json()["violations"][0];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&violation["path"]), text(&violation["rule"]))
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_filters_and_pages() {
    let f = fixture().await;
    let (server, base) = serve(&f.engine).await;
    assert!(server.url().ends_with("/#token=t0k-3n"), "{}", server.url());

    // The token guards every API call; the page itself holds no data.
    let res = http("GET", &format!("{base}/api/overview"), &[], None).await;
    assert_eq!(res.status, 401, "{}", res.body);
    let res = http(
        "GET",
        &format!("{base}/api/overview"),
        &[("authorization", "Bearer wrong")],
        None,
    )
    .await;
    assert_eq!(res.status, 401);
    let page = http("GET", &format!("{base}/"), &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("workflow console"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers["cross-origin-opener-policy"], "same-origin");
    let js = http("GET", &format!("{base}/assets/console.js"), &[], None).await;
    assert_eq!(js.status, 200);
    assert!(
        !js.body.contains("innerHTML"),
        "the page must not put data in as HTML"
    );

    // Counts by status.
    let overview = get(&base, "/api/overview").await.json();
    assert_eq!(overview["counts"]["completed"], 1);
    assert_eq!(overview["counts"]["failed"], 2);
    assert_eq!(overview["counts"]["listening"], 1);
    assert_eq!(overview["counts"]["in_progress"], 1);
    assert_eq!(overview["total"], 5);
    assert_eq!(
        overview["workflows"],
        json!([
            "approveExpense",
            "countdown",
            "nightlyCleanup",
            "processOrder",
            "slowReport"
        ])
    );
    let one = get(&base, "/api/overview?workflow=slowReport").await.json();
    assert_eq!(one["total"], 1);

    // Filters.
    let failed = get(&base, "/api/instances?status=failed").await.json();
    let mut got = ids(&failed);
    got.sort();
    let mut want = vec![f.failed.to_string(), f.xss.to_string()];
    want.sort();
    assert_eq!(got, want);
    assert!(failed["items"][0]["error"]
        .as_str()
        .unwrap()
        .contains("card declined"));
    let active = get(&base, "/api/instances?status=listening,in_progress")
        .await
        .json();
    assert_eq!(ids(&active).len(), 2);
    let listening = active["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "listening")
        .unwrap();
    assert_eq!(
        listening["waiting_for"],
        json!({ "kind": "event", "name": "approval" })
    );
    assert!(listening["due_at"].is_string(), "{listening}");
    let slow = get(&base, "/api/instances?workflow=slowReport")
        .await
        .json();
    assert_eq!(ids(&slow), vec![f.running.to_string()]);
    let tagged = get(&base, "/api/instances?tag=customer=ada").await.json();
    assert_eq!(ids(&tagged), vec![f.completed.to_string()]);
    let by_id = get(&base, &format!("/api/instances?q={}", f.failed))
        .await
        .json();
    assert_eq!(ids(&by_id), vec![f.failed.to_string()]);
    let by_id_wrong_status = get(
        &base,
        &format!("/api/instances?q={}&status=completed", f.failed),
    )
    .await
    .json();
    assert!(ids(&by_id_wrong_status).is_empty());
    // Found by id, the tag filter still applies (ada's order, not bob's).
    for (tag, found) in [("customer=ada", true), ("customer=bob", false)] {
        let page = get(
            &base,
            &format!("/api/instances?q={}&tag={tag}", f.completed),
        )
        .await
        .json();
        assert_eq!(!ids(&page).is_empty(), found, "{tag}");
    }
    let by_key = get(&base, "/api/instances?q=order-A-1001").await.json();
    assert_eq!(ids(&by_key), vec![f.completed.to_string()]);
    let none = get(&base, "/api/instances?q=no-such-thing").await.json();
    assert!(ids(&none).is_empty());
    let bad = get(&base, "/api/instances?status=done").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown status `done`"));
    // A malformed query is a JSON error too, naming the parameter.
    let bad = get(&base, "/api/instances?limit=ten").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.headers["content-type"], "application/json",
        "{}",
        bad.body
    );
    assert!(bad.json()["error"].as_str().unwrap().contains("limit"));
    // A cursor no page gave, or a page of nothing, is a mistake said.
    for (query, said) in [
        ("after=garbage", "not an instance id"),
        ("limit=0", "limit 0"),
        ("limit=5000", "at most 1000"),
    ] {
        let bad = get(&base, &format!("/api/instances?{query}")).await;
        assert_eq!(bad.status, 400, "{query}: {}", bad.body);
        assert!(
            bad.json()["error"].as_str().unwrap().contains(said),
            "{}",
            bad.body
        );
    }
    // Parameters left empty, as a form sends them, are not given.
    let blank = get(
        &base,
        "/api/instances?workflow=&status=&tag=&q=&limit=&after=",
    )
    .await;
    assert_eq!(blank.status, 200, "{}", blank.body);
    assert_eq!(ids(&blank.json()).len(), 5, "{}", blank.body);

    // Paging: newest first, by cursor, every instance exactly once.
    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = get(&base, &format!("/api/instances?limit=2&after={after}"))
            .await
            .json();
        pages += 1;
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(pages >= 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");

    // One instance, with steps and history.
    let detail = get(&base, &format!("/api/instances/{}", f.completed))
        .await
        .json();
    assert_eq!(detail["instance"]["status"], "completed");
    assert_eq!(detail["instance"]["input"]["order_id"], "A-1001");
    assert_eq!(detail["instance"]["output"]["total_cents"], 4200);
    assert_eq!(detail["instance"]["state"]["reserved"], true);
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["reserve-stock", "charge-payment"]);
    let kinds: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds.last(), Some(&"completed"));
    assert_eq!(detail["steps_total"], 2);
    assert_eq!(detail["history_total"], kinds.len());
    // The last `tail` of each, with the totals: a polling page's answer.
    let tail = get(&base, &format!("/api/instances/{}?tail=1", f.completed))
        .await
        .json();
    assert_eq!(tail["steps"].as_array().unwrap().len(), 1);
    assert_eq!(tail["steps"][0]["key"], "charge-payment");
    assert_eq!(tail["history"].as_array().unwrap().len(), 1);
    assert_eq!(tail["history"][0]["kind"], "completed");
    assert_eq!(tail["steps_total"], 2);
    assert_eq!(tail["history_total"], kinds.len());
    let bad = get(&base, &format!("/api/instances/{}?tail=-1", f.completed)).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("tail"));
    let missing = get(&base, "/api/instances/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("not found"));

    // Definitions with schemas, and schedules.
    let workflows = get(&base, "/api/workflows").await.json();
    let entries = workflows["workflows"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let order = entries
        .iter()
        .find(|w| w["definition"]["name"] == "processOrder")
        .unwrap();
    assert_eq!(order["counts"]["failed"], 2);
    assert_eq!(order["registered_here"], true);
    assert!(order["definition"]["input_schema"]["properties"]["order_id"].is_object());
    let schedules = get(&base, "/api/schedules").await.json();
    assert_eq!(schedules["schedules"][0]["workflow"], "nightlyCleanup");
    assert_eq!(schedules["schedules"][0]["timezone"], "Europe/Paris");
    assert!(schedules["schedules"][0]["next_fire"].is_string());

    // A misspelt filter is named, not ignored (which would answer
    // unfiltered); a path that does not decode is a JSON error too.
    for path in [
        "/api/instances?stauts=failed",
        "/api/overview?status=failed",
        "/api/instances/x?tial=5",
    ] {
        let res = get(&base, path).await;
        assert_eq!(res.status, 400, "{path}: {}", res.body);
        let error = res.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains("unknown field"), "{path}: {error}");
    }
    let res = get(&base, "/api/instances/%FF").await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.json()["error"].is_string(), "{}", res.body);

    // DNS rebinding: a request for another host name is refused.
    let mut headers = auth();
    headers.push(("host", "evil.example:80"));
    let res = http("GET", &format!("{base}/api/overview"), &headers, None).await;
    assert_eq!(res.status, 403, "{}", res.body);
    let res = http(
        "GET",
        &format!("{base}/"),
        &[("host", "evil.example")],
        None,
    )
    .await;
    assert_eq!(res.status, 403);
    server.shutdown();
}

/// A row damaged outside the engine is named in the list, not a failed page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_named_and_the_rest_listed() {
    let f = fixture().await;
    let (server, base) = serve(&f.engine).await;
    let db = rusqlite::Connection::open(f.dir.path().join("console.db")).unwrap();
    db.execute(
        "UPDATE instances SET status = 'lost' WHERE id = ?1",
        [f.failed.as_str()],
    )
    .unwrap();
    let page = get(&base, "/api/instances").await.json();
    let listed = ids(&page);
    assert!(listed.contains(&f.completed.to_string()), "{page}");
    assert!(!listed.contains(&f.failed.to_string()), "{page}");
    let unreadable = page["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{page}");
    assert_eq!(unreadable[0]["id"], f.failed.as_str());
    assert!(
        unreadable[0]["error"].as_str().unwrap().contains("lost"),
        "{page}"
    );
    // Searched for by id: named the same way, not a failed search.
    let found = get(&base, &format!("/api/instances?q={}", f.failed)).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let found = found.json();
    assert_eq!(found["items"], serde_json::json!([]), "{found}");
    assert_eq!(found["unreadable"][0]["id"], f.failed.as_str(), "{found}");
    // The instance itself: an error naming it, not a crash of the console.
    let one = get(&base, &format!("/api/instances/{}", f.failed)).await;
    assert_eq!(one.status, 500, "{}", one.body);
    assert!(one.body.contains(f.failed.as_str()), "{}", one.body);
    // A damaged step's output is named in its place; the instance and its
    // other steps still show.
    db.execute(
        "UPDATE steps SET output = '{not json' WHERE instance_id = ?1 AND key = 'charge-payment'",
        [f.completed.as_str()],
    )
    .unwrap();
    let one = get(&base, &format!("/api/instances/{}", f.completed)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let steps = one.json()["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let charge = steps.iter().find(|s| s["key"] == "charge-payment").unwrap();
    assert!(charge.get("output").is_none_or(Value::is_null), "{charge}");
    assert!(
        charge["unreadable"]
            .as_str()
            .unwrap()
            .contains("step output is not valid JSON"),
        "{charge}"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_checked_and_applied() {
    let f = fixture().await;
    let (server, base) = serve(&f.engine).await;
    let cancel_url = format!("{base}/api/instances/{}/cancel", f.running);

    // What a cross-site page could send is refused, and nothing changes.
    let res = http("POST", &cancel_url, &auth(), Some("{}")).await;
    assert_eq!(res.status, 415, "no JSON content type: {}", res.body);
    let mut form = auth();
    form.push(("content-type", "application/x-www-form-urlencoded"));
    assert_eq!(
        http("POST", &cancel_url, &form, Some("a=b")).await.status,
        415
    );
    let mut cross = auth();
    cross.push(("content-type", "application/json"));
    cross.push(("origin", "http://evil.example"));
    let res = http("POST", &cancel_url, &cross, Some("{}")).await;
    assert_eq!(res.status, 403, "{}", res.body);
    let mut cross = auth();
    cross.push(("content-type", "application/json"));
    cross.push(("sec-fetch-site", "cross-site"));
    assert_eq!(
        http("POST", &cancel_url, &cross, Some("{}")).await.status,
        403
    );
    // Reads from another site too: it could not read the answer, but the
    // store would do the work.
    let mut cross_read = auth();
    cross_read.push(("sec-fetch-site", "cross-site"));
    let res = http("GET", &format!("{base}/api/workflows"), &cross_read, None).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert_eq!(
        res.headers["x-content-type-options"], "nosniff",
        "refusals too"
    );
    let res = http("GET", &format!("{base}/api/workflows"), &auth(), None).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        res.headers["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    let res = http("GET", &cancel_url, &auth(), None).await;
    assert_eq!(res.status, 405, "changes are POST only");
    assert_eq!(
        res.json()["error"],
        "GET is not allowed here: reads are GET, changes are POST",
        "{}",
        res.body
    );
    assert_eq!(res.headers["allow"], "POST");
    let mut no_token = vec![("content-type", "application/json")];
    no_token.push(("origin", "http://127.0.0.1"));
    assert_eq!(
        http("POST", &cancel_url, &no_token, Some("{}"))
            .await
            .status,
        401
    );
    // A body with fields is a mistake said, not ignored: nothing changes.
    for (body, rule) in [
        (json!({"reason": "dup"}), "additionalProperties"),
        (json!([]), "type"),
    ] {
        let res = post(&base, &format!("/api/instances/{}/cancel", f.running), body).await;
        assert_eq!(res.status, 400, "{}", res.body);
        assert_eq!(res.json()["violations"][0]["rule"], rule, "{}", res.body);
    }
    for change in ["pause", "resume"] {
        let path = format!("/api/instances/{}/{change}", f.running);
        let res = post(&base, &path, json!({"x": 1})).await;
        assert_eq!(res.status, 400, "{change}: {}", res.body);
    }
    let path = format!("/api/instances/{}/rerun", f.failed);
    let res = post(&base, &path, json!({"input": {}})).await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert_eq!(
        res.json()["violations"][0]["path"],
        "/input",
        "{}",
        res.body
    );
    assert_eq!(
        f.engine.instance(&f.running).await.unwrap().status,
        Status::InProgress
    );

    // A same-origin request from the page (Origin matches Host) goes through.
    let mut same = auth();
    same.push(("content-type", "application/json"));
    let origin = format!("http://{}", server.local_addr());
    same.push(("origin", &origin));
    same.push(("sec-fetch-site", "same-origin"));
    let res = http("POST", &cancel_url, &same, Some("{}")).await;
    assert_eq!(res.status, 200, "{}", res.body);
    wait_status(&f.engine, &f.running, Status::Cancelled).await;
    let again = post(
        &base,
        &format!("/api/instances/{}/cancel", f.running),
        json!({}),
    )
    .await;
    // Repeated (its answer lost), a cancel has what it asked for; one of
    // an instance that ended otherwise is a conflict.
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["already"], true);
    let failed = post(
        &base,
        &format!("/api/instances/{}/cancel", f.failed),
        json!({}),
    )
    .await;
    assert_eq!(failed.status, 409);
    assert!(failed.json()["error"]
        .as_str()
        .unwrap()
        .contains("already ended (failed)"));

    // Move a deadline: from now or at a time; one of them, and only
    // while the instance has not ended.
    let timeout_path = format!("/api/instances/{}/timeout", f.listening);
    let deadline_of = |id: &InstanceId| {
        let engine = f.engine.clone();
        let id = id.clone();
        async move { engine.instance(&id).await.unwrap().deadline_at.unwrap() }
    };
    let before = chrono::Utc::now();
    let res = post(&base, &timeout_path, json!({"in": "3h"})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let deadline = deadline_of(&f.listening).await;
    let ahead = (deadline - before).num_minutes();
    assert!(
        (179..=181).contains(&ahead),
        "{deadline} is {ahead} min ahead"
    );
    assert_eq!(res.json()["deadline_at"], json!(deadline));
    let res = post(&base, &timeout_path, json!({"at": "2099-01-01T00:00:00Z"})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let deadline = deadline_of(&f.listening).await;
    assert_eq!(deadline.to_rfc3339(), "2099-01-01T00:00:00+00:00");
    // Each refusal names the field it is about, as an input's do.
    for (bad, path, rule) in [
        (json!({}), "", "oneOf"),
        (
            json!({"in": "3h", "at": "2099-01-01T00:00:00Z"}),
            "",
            "oneOf",
        ),
        (json!({"in": "soon"}), "/in", "format"),
        (json!({"in": "10M"}), "/in", "format"),
        // Past: it would time the instance out for good.
        (
            json!({"at": "2025-01-01T00:00:00Z"}),
            "/at",
            "exclusiveMinimum",
        ),
    ] {
        let res = post(&base, &timeout_path, bad.clone()).await;
        assert_eq!(res.status, 400, "{bad}: {}", res.body);
        let violation = &res.json()["violations"][0];
        assert_eq!(violation["path"], path, "{bad}: {}", res.body);
        assert_eq!(violation["rule"], rule, "{bad}: {}", res.body);
    }
    assert_eq!(deadline_of(&f.listening).await, deadline, "unchanged");
    let ended = post(
        &base,
        &format!("/api/instances/{}/timeout", f.running),
        json!({"in": "1h"}),
    )
    .await;
    assert_eq!(ended.status, 409, "{}", ended.body);

    // Pause, resume, send an event: the waiting instance completes.
    let listening = f.listening.to_string();
    let rerun_active = post(
        &base,
        &format!("/api/instances/{listening}/rerun"),
        json!({}),
    )
    .await;
    assert_eq!(rerun_active.status, 409, "{}", rerun_active.body);
    let res = post(
        &base,
        &format!("/api/instances/{listening}/pause"),
        json!({}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    wait_status(&f.engine, &f.listening, Status::Paused).await;
    let res = post(
        &base,
        &format!("/api/instances/{listening}/resume"),
        json!({}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "name": "" }),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["violations"][0]["path"], "/name", "{}", res.body);
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "name": "approval", "payload": { "approved": true }, "key": "" }),
    )
    .await;
    assert_eq!(res.status, 422, "an empty key: {}", res.body);
    assert!(res.json()["error"].as_str().unwrap().contains("non-empty"));
    assert_eq!(refused(&res), ("/key".into(), "minLength".into()));
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "name": "appro#val" }),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.body);
    assert_eq!(refused(&res), ("/name".into(), "pattern".into()));
    // A body over axum's limit is refused in JSON, like every API error.
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "name": "approval", "payload": "x".repeat(3 << 20) }),
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(
        res.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("request body:"),
        "{}",
        res.body
    );
    // A name it does not wait for: sent, with a note saying so.
    wait_status(&f.engine, &f.listening, Status::Listening).await;
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "name": "approve", "payload": {} }),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
    let note = res.json()["note"].as_str().unwrap_or_default().to_owned();
    assert!(note.contains("waits for event `approval`"), "{}", res.body);
    // The event with a key, sent twice: the second changes nothing.
    for already_sent in [false, true] {
        let res = post(
            &base,
            &format!("/api/instances/{listening}/events"),
            json!({ "name": "approval", "payload": { "approved": true }, "key": "delivery-1" }),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(
            res.json()["already_sent"],
            json!(already_sent),
            "{}",
            res.body
        );
        assert_eq!(res.json()["event"], "approval", "as the CLI's --json");
    }
    wait_status(&f.engine, &f.listening, Status::Completed).await;
    let info = f.engine.instance(&f.listening).await.unwrap();
    assert_eq!(info.output, Some(json!("15000 cents approved: true")));

    // Re-run a failed instance: same input and tags, new id.
    let res = post(
        &base,
        &format!("/api/instances/{}/rerun", f.failed),
        json!({}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    assert_eq!(res.json()["created"], json!(true), "{}", res.body);
    let new = InstanceId::from(res.json()["id"].as_str().unwrap());
    assert_ne!(new, f.failed);
    wait_status(&f.engine, &new, Status::Failed).await;
    let old = f.engine.instance(&f.failed).await.unwrap();
    let rerun = f.engine.instance(&new).await.unwrap();
    assert_eq!(rerun.input, old.input);
    assert_eq!(rerun.tags["customer"], "bob");
    assert_eq!(rerun.tags["rerun_of"], f.failed.to_string());

    // Start from JSON: violations come back as a list with paths.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": 5 } }),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.body);
    let body = res.json();
    let violations = body["violations"].as_array().unwrap();
    assert!(
        violations.iter().any(|v| v["path"] == "/order_id"),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v["message"].as_str().unwrap().contains("amount_cents")),
        "{violations:?}"
    );
    // A body that does not fit the request's own shape names the field,
    // and the violation says where and which rule, as the input's do.
    for (body, field, path, rule) in [
        (
            json!({ "input": {}, "tags": { "team": 1 } }),
            "`tags.team`",
            "/tags/team",
            "type",
        ),
        (
            json!({ "input": {}, "key": ["a"] }),
            "`key`",
            "/key",
            "type",
        ),
        (
            json!({ "input": {}, "tagz": {} }),
            "`tagz`",
            "/tagz",
            "additionalProperties",
        ),
    ] {
        let res = post(&base, "/api/workflows/processOrder/start", body).await;
        assert_eq!(res.status, 400, "{}", res.body);
        let answer = res.json();
        let error = answer["error"].as_str().unwrap().to_owned();
        assert!(error.contains(field), "{field}: {error}");
        assert_eq!(answer["violations"][0]["path"], path, "{answer}");
        assert_eq!(answer["violations"][0]["rule"], rule, "{answer}");
        assert!(!res.body.contains(" line "), "no serde position: {answer}");
    }
    let res = post(
        &base,
        &format!("/api/instances/{}/timeout", f.listening),
        json!({ "at": "tomorrow" }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.body.contains("`at`"), "{}", res.body);
    // A key no store can index is the caller's mistake, not the server's.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-9", "amount_cents": 77 }, "key": "k".repeat(513) }),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.body);
    assert!(res.json()["error"].as_str().unwrap().contains("513 bytes"));
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-9", "amount_cents": 77 }, "key": "from-console", "tags": { "via": "api" }, "timeout": "1h" }),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    let started = InstanceId::from(res.json()["id"].as_str().unwrap());
    wait_status(&f.engine, &started, Status::Completed).await;
    let info = f.engine.instance(&started).await.unwrap();
    assert_eq!(info.key.as_deref(), Some("from-console"));
    assert_eq!(info.tags["via"], "api");
    let res = post(&base, "/api/workflows/nope/start", json!({ "input": {} })).await;
    assert_eq!(res.status, 404);
    let res = post(&base, "/api/workflows/processOrder/start", json!([1])).await;
    assert_eq!(res.status, 400);
    // `once` with a key: a retried start finds the first one's instance.
    let once = json!({ "input": { "order_id": "R-1", "amount_cents": 3 }, "key": "retry-me", "delay": "1h", "once": true });
    let first = post(&base, "/api/workflows/processOrder/start", once.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.json()["created"], true);
    let again = post(&base, "/api/workflows/processOrder/start", once).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["created"], false);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "R-2", "amount_cents": 3 }, "once": true }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.json()["error"]
        .as_str()
        .unwrap()
        .contains("needs a `key`"));
    assert_eq!(res.json()["violations"][0]["path"], "/key", "{}", res.body);
    // A delayed start waits, pending.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-7", "amount_cents": 5 }, "delay": "1h" }),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    let delayed = InstanceId::from(res.json()["id"].as_str().unwrap());
    let info = f.engine.instance(&delayed).await.unwrap();
    assert_eq!((info.status, info.started_at), (Status::Pending, None));
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-7", "amount_cents": 5 }, "delay": "soon" }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(
        res.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("delay `soon`: "),
        "{}",
        res.body
    );
    assert_eq!(
        res.json()["violations"][0]["path"],
        "/delay",
        "{}",
        res.body
    );
    // A zero timeout would time the instance out before it ran.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-8", "amount_cents": 1 }, "timeout": "0s" }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert_eq!(
        res.json()["error"],
        "timeout `0s`: must be at least 1ms",
        "{}",
        res.body
    );
    assert_eq!(refused(&res), ("/timeout".into(), "minimum".into()));
    // A key and a tag no store can hold, named at their own paths.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-8", "amount_cents": 1 }, "key": "k".repeat(600) }),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.body);
    assert_eq!(refused(&res), ("/key".into(), "maxLength".into()));
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "input": { "order_id": "Z-8", "amount_cents": 1 }, "tags": { "a": "ok", "t/m": "x\0y" } }),
    )
    .await;
    assert_eq!(res.status, 422, "{}", res.body);
    assert_eq!(refused(&res), ("/tags/t~1m".into(), "pattern".into()));
    // The input posted bare, not under `input`: the stray field is named.
    let res = post(
        &base,
        "/api/workflows/processOrder/start",
        json!({ "order_id": "Z-9" }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    let error = res.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("unknown field `order_id`") && error.contains("`input`"),
        "{error}"
    );
    let res = post(
        &base,
        &format!("/api/instances/{listening}/events"),
        json!({ "event": "approval", "payload": {} }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.body.contains("unknown field `event`"), "{}", res.body);
    server.shutdown();
}

/// Re-run twice (a click repeated after a lost answer): the second finds
/// the first's instance, or the key's active one, instead of starting more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_rerun_finds_the_active_one() {
    let f = fixture().await;
    // No worker: each re-run stays pending, as one still running would.
    f.worker.shutdown().await;
    let (_server, base) = serve(&f.engine).await;
    let rerun = |id: &InstanceId| format!("/api/instances/{id}/rerun");

    // Without a key: the second click answers with the first re-run.
    let first = post(&base, &rerun(&f.failed), json!({})).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post(&base, &rerun(&f.failed), json!({})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["created"], json!(false), "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["rerun_of"], json!(f.failed.to_string()));

    // With a key: an instance with that key started meanwhile (a webhook's
    // retry) is the one found, so the order is not processed twice.
    let keyed = f.engine.instance(&f.completed).await.unwrap();
    let key = keyed
        .key
        .clone()
        .expect("the fixture's completed order has a key");
    let (restarted, created) = f
        .engine
        .get_or_start_json(
            &keyed.workflow,
            &key,
            keyed.input.clone(),
            StartOptions::new(),
        )
        .await
        .unwrap();
    assert!(created, "the completed one is not active");
    let res = post(&base, &rerun(&f.completed), json!({})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        res.json()["id"],
        json!(restarted.to_string()),
        "{}",
        res.body
    );
    assert_eq!(res.json()["created"], json!(false));
    let active = f
        .engine
        .list(Query::new().key(key).status(Status::Pending))
        .await
        .unwrap();
    assert_eq!(active.items.len(), 1, "{:?}", active.items);

    // Once the re-run ended, re-running again starts a new one.
    let first = InstanceId::from(first.json()["id"].as_str().unwrap());
    f.engine.cancel(&first).await.unwrap();
    let later = post(&base, &rerun(&f.failed), json!({})).await;
    assert_eq!(later.status, 201, "{}", later.body);
    assert_ne!(later.json()["id"], json!(first.to_string()));
}

/// A cron tick's instance re-runs: its key stands for the tick and no
/// start may take it, so the re-run goes without (it was refused, 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_instance_reruns() {
    let store: std::sync::Arc<dyn workflow::Store> = std::sync::Arc::new(MemoryStore::new());
    // 02:59:59 in Paris: `nightlyCleanup` fires at 03:00 there.
    let start: chrono::DateTime<chrono::Utc> = "2026-11-25T01:59:59Z".parse().unwrap();
    let clock = ManualClock::new(start);
    let engine = Engine::builder()
        .shared_store(store.clone())
        .register(common::NightlyCleanup)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let _worker = engine.start_worker();
    let mut looked = false;
    for _ in 0..500 {
        looked = store
            .schedule_mark("nightlyCleanup")
            .await
            .unwrap()
            .is_some();
        if looked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(looked, "the scheduler never looked");
    clock.advance(Duration::from_secs(2));
    let mut ticks = Vec::new();
    for _ in 0..500 {
        let done = Query::new()
            .workflow("nightlyCleanup")
            .status(Status::Completed);
        ticks = engine.list(done).await.unwrap().items;
        if !ticks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tick = ticks.pop().expect("the 03:00 tick fired and completed");
    let key = tick.key.clone().unwrap();
    assert!(key.starts_with(workflow::SCHEDULE_KEY_PREFIX), "{key}");

    let (_server, base) = serve(&engine).await;
    let res = post(
        &base,
        &format!("/api/instances/{}/rerun", tick.id),
        json!({}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    let new = InstanceId::from(res.json()["id"].as_str().unwrap());
    wait_status(&engine, &new, Status::Completed).await;
    let rerun = engine.instance(&new).await.unwrap();
    assert_eq!(rerun.key, None);
    assert_eq!(rerun.tags["rerun_of"], tick.id.to_string());
    assert_eq!(rerun.tags["schedule"], tick.tags["schedule"]);
}

/// A console mounted in an engine that only starts instances shows the
/// schedule the workers run, not the one it registered (it showed its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_the_ones_workers_run() {
    let f = fixture().await;
    let starter = Engine::builder()
        .database_url(&f.url)
        .register_scheduled(common::NightlyCleanup, "30 4 * * *", "UTC", CatchUp::All)
        .build()
        .await
        .unwrap();
    let (_server, base) = serve(&starter).await;
    let schedules = get(&base, "/api/schedules").await.json();
    assert_eq!(schedules["schedules"].as_array().unwrap().len(), 1);
    let nightly = &schedules["schedules"][0];
    assert_eq!(nightly["expression"], "0 3 * * *", "{schedules}");
    assert_eq!(nightly["timezone"], "Europe/Paris");
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(nightly["next_fire"].clone()).unwrap();
    // 03:00 in Paris is 01:00 or 02:00 UTC; the starter's would be 04:30.
    assert!(
        ["01:00:00", "02:00:00"].contains(&next.format("%H:%M:%S").to_string().as_str()),
        "{next}"
    );
}

/// A console over a pure client (no workflow code, as `workflow console`
/// runs it) reads the recorded definitions and schedules, and what it
/// starts runs on the engine that has the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pure_client_console_steers_another_engine() {
    let f = fixture().await;
    let client = workflow_console::connect(&f.url).await.unwrap();
    assert!(client.workflows().is_empty());
    let server = Console::new(client).bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let no_token = |path: &str| {
        let url = format!("{base}{path}");
        async move { http("GET", &url, &[], None).await }
    };
    let workflows = no_token("/api/workflows").await.json();
    let names: Vec<&str> = workflows["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["definition"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "approveExpense",
            "countdown",
            "nightlyCleanup",
            "processOrder",
            "slowReport"
        ]
    );
    assert_eq!(workflows["workflows"][0]["registered_here"], false);
    let schedules = no_token("/api/schedules").await.json();
    assert_eq!(schedules["schedules"][0]["workflow"], "nightlyCleanup");
    assert_eq!(schedules["schedules"][0]["expression"], "0 3 * * *");
    assert!(schedules["schedules"][0]["next_fire"].is_string());

    let res = http(
        "POST",
        &format!("{base}/api/workflows/processOrder/start"),
        &[("content-type", "application/json")],
        Some(r#"{"input": {"order_id": "P-1", "amount_cents": 3}}"#),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.body);
    let id = InstanceId::from(res.json()["id"].as_str().unwrap());
    wait_status(&f.engine, &id, Status::Completed).await;
    let res = http(
        "POST",
        &format!("{base}/api/workflows/processOrder/start"),
        &[("content-type", "application/json")],
        Some(r#"{"input": {"order_id": "P-2"}}"#),
    )
    .await;
    assert_eq!(res.status, 422, "checked against the recorded schema");
}

/// Every open list page polls the overview, and counting reads the whole
/// table: the counts are reused for a while, except right after a change
/// made through the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_counts_are_reused_until_a_change_or_the_window_ends() {
    const WINDOW: Duration = Duration::from_secs(3);
    let f = fixture().await;
    let server = f
        .engine
        .console()
        .token(TOKEN)
        .overview_cache(WINDOW)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let total =
        |base: String| async move { get(&base, "/api/overview").await.json()["total"].clone() };
    let behind_the_back = || {
        f.engine
            .start_json("approveExpense", json!(1), StartOptions::new())
    };

    assert_eq!(total(base.clone()).await, 5);
    let first = behind_the_back().await.unwrap();
    assert_eq!(total(base.clone()).await, 5, "within the window: reused");
    let one = get(&base, "/api/overview?workflow=approveExpense")
        .await
        .json();
    assert_eq!(one["total"], 2, "another filter is counted on its own");

    // The console's own change shows at once, and the one behind its back too.
    let res = post(&base, &format!("/api/instances/{first}/cancel"), json!({})).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let overview = get(&base, "/api/overview").await.json();
    assert_eq!(overview["total"], 6);
    assert_eq!(overview["counts"]["cancelled"], 1);

    // Once the window after the change has passed, counts are reused again,
    // for one window.
    tokio::time::sleep(WINDOW).await;
    assert_eq!(total(base.clone()).await, 6);
    behind_the_back().await.unwrap();
    assert_eq!(total(base.clone()).await, 6, "within the window: reused");
    tokio::time::sleep(WINDOW).await;
    assert_eq!(total(base.clone()).await, 7, "after the window: read again");
    server.shutdown();
}

/// Serves `app` (a console nested at `/console/`) on a free loopback port
/// and gives its overview's URL; `with_peer`: through
/// `into_make_service_with_connect_info`, which tells each request's peer.
async fn serve_mounted(app: axum::Router, with_peer: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "http://{}/console/api/overview",
        listener.local_addr().unwrap()
    );
    if with_peer {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    base
}

/// A console mounted in an application's router, with no token: a page of
/// another site that points its own name at the server (DNS rebinding) is
/// refused; loopback names and the hosts named are served. With a token,
/// which such a page cannot have, every host name is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_console_without_a_token_answers_only_its_hosts() {
    let f = fixture().await;
    let mount = |console: Console| {
        serve_mounted(
            axum::Router::new().nest("/console/", console.router()),
            true,
        )
    };
    let status = |url: String, host: &'static str| async move {
        http("GET", &url, &[("host", host)], None).await.status
    };
    let open = mount(Console::new(f.engine.clone())).await;
    assert_eq!(status(open.clone(), "rebind.evil.example:3000").await, 403);
    assert_eq!(status(open.clone(), "localhost:3000").await, 200);
    let named = mount(Console::new(f.engine.clone()).allowed_hosts(["Ops.Example.com:443"])).await;
    assert_eq!(status(named.clone(), "ops.example.com").await, 200);
    assert_eq!(status(named, "rebind.evil.example").await, 403);
    let with_token = mount(Console::new(f.engine.clone()).token(TOKEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    let res = http(
        "GET",
        &with_token,
        &[("host", "ops.example.com"), ("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.body);
}

/// A `Host` header is whatever the sender writes: a console mounted with
/// no token serves only requests from this machine, as the server's
/// `ConnectInfo` tells, and none when the server does not tell; with
/// `allow_no_token`, anyone (through the host names it answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_console_without_a_token_serves_only_this_machine() {
    let f = fixture().await;
    let serve = |app: axum::Router| serve_mounted(app, false);
    let from_afar = || MockConnectInfo(SocketAddr::from(([203, 0, 113, 7], 40_000)));
    let get = |url: String| async move { http("GET", &url, &[("host", "localhost")], None).await };

    let mounted = || axum::Router::new().nest("/console/", Console::new(f.engine.clone()).router());
    let res = get(serve(mounted().layer(from_afar())).await).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert!(res.body.contains("came from 203.0.113.7"), "{}", res.body);
    assert!(res.body.contains("allow_no_token"), "{}", res.body);
    let res = get(serve(mounted()).await).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert!(
        res.body.contains("into_make_service_with_connect_info"),
        "{}",
        res.body
    );
    let local = MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let res = get(serve(mounted().layer(local)).await).await;
    assert_eq!(res.status, 200, "{}", res.body);

    let open = axum::Router::new()
        .nest(
            "/console/",
            Console::new(f.engine.clone()).allow_no_token().router(),
        )
        .layer(from_afar());
    let res = get(serve(open).await).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let with_token = axum::Router::new()
        .nest(
            "/console/",
            Console::new(f.engine.clone()).token(TOKEN).router(),
        )
        .layer(from_afar());
    let bearer = format!("Bearer {TOKEN}");
    let url = serve(with_token).await;
    let res = http("GET", &url, &[("authorization", &bearer)], None).await;
    assert_eq!(res.status, 200, "{}", res.body);
}

/// An address other machines reach needs a token, or an explicit
/// `allow_no_token`; served open, it still answers only the hosts named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_address_needs_a_token_or_consent() {
    let f = fixture().await;
    let err = Console::new(f.engine.clone())
        .bind("0.0.0.0:0")
        .await
        .unwrap_err();
    assert!(
        matches!(err, workflow_console::ConsoleError::NoToken { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("allow_no_token"), "{err}");
    let server = Console::new(f.engine.clone())
        .allow_no_token()
        .allowed_hosts(["build-box"])
        .bind("0.0.0.0:0")
        .await
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/api/overview",
        server.local_addr().port()
    );
    let get = |host: &'static str| {
        let url = url.clone();
        async move { http("GET", &url, &[("host", host)], None).await.status }
    };
    assert_eq!(get("build-box:8080").await, 200);
    assert_eq!(get("127.0.0.1").await, 200);
    assert_eq!(get("rebind.evil.example").await, 403);
    server.shutdown();
}

/// A token no browser can send in a header is refused when binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_no_browser_can_send_is_refused() {
    let f = fixture().await;
    for token in ["pässwort", "two words"] {
        let err = Console::new(f.engine.clone())
            .token(token)
            .bind("127.0.0.1:0")
            .await
            .unwrap_err();
        assert!(
            matches!(err, workflow_console::ConsoleError::BadToken(_)),
            "{token}: {err}"
        );
    }
}

/// Steps with outputs of `sizes` bytes each (strings of that many `x`,
/// quotes aside).
#[workflow(name = "bigOutputs")]
async fn big_outputs(ctx: Ctx, sizes: Vec<usize>) -> workflow::Result<usize> {
    for (n, size) in sizes.iter().enumerate() {
        ctx.step(&format!("out-{n}"), || async {
            workflow::Ok("x".repeat(*size))
        })
        .await?;
    }
    Ok(sizes.len())
}

/// An instance answer leaves out a document over 1 MiB, and step outputs
/// past 16 MiB in all (the oldest first), saying their sizes: "Show all"
/// of an instance with thousands of large outputs built an answer of
/// gigabytes in the engine's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_are_left_out_of_an_instance_answer() {
    let engine = Engine::builder()
        .store(workflow::MemoryStore::new())
        .register(BigOutputs)
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    // One output over the cap, then 20 of 900 KiB: 16 MiB hold the
    // newest 18 of those.
    let mut sizes = vec![(1 << 20) + 10];
    sizes.extend([900 << 10; 20]);
    let inst = BigOutputs::start(&engine, sizes).await.unwrap();
    inst.result_timeout(Duration::from_secs(30)).await.unwrap();
    let (_server, base) = serve(&engine).await;
    let res = get(&base, &format!("/api/instances/{}", inst.id())).await;
    assert_eq!(res.status, 200);
    let answer = res.json();
    let steps = answer["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 21);
    assert!(steps[0]["output"].is_null());
    assert_eq!(steps[0]["output_cut"], json!((1 << 20) + 12));
    let cut: Vec<bool> = steps[1..].iter().map(|s| s["output"].is_null()).collect();
    assert_eq!(cut[..2], [true, true], "the oldest past the budget");
    assert!(cut[2..].iter().all(|c| !c), "{cut:?}");
    assert_eq!(steps[1]["output_cut"], json!((900 << 10) + 2));
    assert_eq!(steps[20]["output"].as_str().unwrap().len(), 900 << 10);
    // Small documents stay: the input, the output.
    assert_eq!(answer["instance"]["output"], json!(21));
    assert!(answer["instance"].get("output_cut").is_none());
    assert!(res.body.len() < 17 << 20, "{}", res.body.len());
    worker.shutdown().await;
}
