//! Shared by the console's tests: workflows in every interesting state on a
//! temporary SQLite file, and a plain HTTP client.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workflow::prelude::*;
use workflow::Worker;

/// Values that would run script if a page put them in as HTML.
pub const XSS_ORDER: &str =
    "bad<script>window.__xss=1</script>\"><img src=x onerror=\"window.__xss=2\">";
pub const XSS_KEY: &str = "\"><img src=x onerror=window.__xss=3>";
pub const XSS_TAG: &str = "<b onmouseover=window.__xss=4>bold</b>";

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderInput {
    /// The order to process; ids starting with `bad` are declined.
    pub order_id: String,
    pub amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderOutput {
    pub receipt: String,
    pub total_cents: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct OrderState {
    pub reserved: bool,
}

static RESERVE_CALLS: AtomicU32 = AtomicU32::new(0);

/// Reserve stock and charge the card for an order.
#[workflow(name = "processOrder", timeout = "10m")]
pub async fn process_order(
    ctx: Ctx<OrderState>,
    input: OrderInput,
) -> workflow::Result<OrderOutput> {
    // The warehouse fails the very first call of this process: a retried step.
    ctx.step("reserve-stock", || async {
        if RESERVE_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err::<(), BoxError>("warehouse busy".into());
        }
        Ok(())
    })
    .await?;
    ctx.state_mut().reserved = true;
    let receipt: String = ctx
        .step("charge-payment", || async {
            if input.order_id.starts_with("bad") {
                return Err::<String, BoxError>(workflow::permanent(format!(
                    "card declined for order {}",
                    input.order_id
                )));
            }
            Ok(format!("rcpt-{}", input.order_id))
        })
        .await?;
    Ok(OrderOutput {
        receipt,
        total_cents: input.amount_cents,
    })
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ReportInput {
    pub days: u32,
}

/// Crunch numbers for a long time.
#[workflow(name = "slowReport", timeout = "1d")]
pub async fn slow_report(ctx: Ctx, input: ReportInput) -> workflow::Result<u32> {
    ctx.step("crunch", || async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(input.days)
    })
    .await
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    pub approved: bool,
}

/// Wait for a manager's approval.
#[workflow(name = "approveExpense", timeout = "7d")]
pub async fn approve_expense(ctx: Ctx, cents: u64) -> workflow::Result<String> {
    let answer: Approval = ctx.wait_for_event("approval", None).await?;
    Ok(format!("{cents} cents approved: {}", answer.approved))
}

/// One step per number, from `from` down to 1.
#[workflow(name = "countdown")]
pub async fn countdown(ctx: Ctx, from: u32) -> workflow::Result<u32> {
    for i in (1..=from).rev() {
        ctx.step("tick", || async move { Ok::<_, BoxError>(i) })
            .await?;
    }
    Ok(from)
}

/// Clean up old data every night.
#[workflow(
    name = "nightlyCleanup",
    schedule = "0 3 * * *",
    timezone = "Europe/Paris"
)]
pub async fn nightly_cleanup(_ctx: Ctx, _input: ()) -> workflow::Result<u32> {
    Ok(0)
}

/// Instances in known states on a fresh SQLite file, with a worker running them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub engine: Engine,
    pub worker: Worker,
    pub completed: InstanceId,
    pub failed: InstanceId,
    pub xss: InstanceId,
    pub running: InstanceId,
    pub listening: InstanceId,
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("console.db").display());
    let engine = Engine::builder()
        .database_url(&url)
        .register(ProcessOrder)
        .register(SlowReport)
        .register(ApproveExpense)
        .register(NightlyCleanup)
        .register(Countdown)
        .build()
        .await
        .unwrap();
    let worker = engine.start_worker();
    let completed = ProcessOrder::start_with(
        &engine,
        OrderInput {
            order_id: "A-1001".into(),
            amount_cents: 4200,
        },
        StartOptions::new()
            .key("order-A-1001")
            .tag("customer", "ada"),
    )
    .await
    .unwrap();
    assert!(completed.result().await.is_ok());
    let failed = ProcessOrder::start_with(
        &engine,
        OrderInput {
            order_id: "bad-2002".into(),
            amount_cents: 999,
        },
        StartOptions::new().tag("customer", "bob"),
    )
    .await
    .unwrap();
    assert!(failed.result().await.is_err());
    let xss = ProcessOrder::start_with(
        &engine,
        OrderInput {
            order_id: XSS_ORDER.into(),
            amount_cents: 1,
        },
        StartOptions::new().key(XSS_KEY).tag("note", XSS_TAG),
    )
    .await
    .unwrap();
    assert!(xss.result().await.is_err());
    let listening = ApproveExpense::start(&engine, 15_000).await.unwrap();
    let running = SlowReport::start_with(
        &engine,
        ReportInput { days: 30 },
        StartOptions::new().key("long-running"),
    )
    .await
    .unwrap();
    wait_status(&engine, listening.id(), Status::Listening).await;
    wait_status(&engine, running.id(), Status::InProgress).await;
    Fixture {
        dir,
        url,
        engine,
        worker,
        completed: completed.id().clone(),
        failed: failed.id().clone(),
        xss: xss.id().clone(),
        running: running.id().clone(),
        listening: listening.id().clone(),
    }
}

/// Waits (up to 20 s, then fails the test) for an instance to reach `status`.
pub async fn wait_status(engine: &Engine, id: &InstanceId, status: Status) {
    for _ in 0..400 {
        if engine.instance(id).await.unwrap().status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{id} never reached {status}: {:?}",
        engine.instance(id).await.unwrap().status
    );
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// One HTTP/1.1 request with hyper's client.
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = axum::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
