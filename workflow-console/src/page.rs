//! The embedded page: HTML, script and style compiled into the binary, so
//! the console runs offline with no build step and no CDN.
//!
//! The page puts every value from the database in the DOM as text (see the
//! rule at the top of `assets/console.js`); the Content-Security-Policy
//! below is the second line of defence: no inline script runs, no other
//! origin is contacted.

use axum::http::header;
use axum::response::IntoResponse;

const HTML: &str = include_str!("../assets/console.html");
const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page keeps no handle to a window that opened it, nor gives one: a
/// page elsewhere cannot open the console and steer its clicks (pause
/// and resume are one click) through the handle.
const OPENER_POLICY: header::HeaderName =
    header::HeaderName::from_static("cross-origin-opener-policy");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (OPENER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub(crate) async fn html() -> impl IntoResponse {
    asset("text/html; charset=utf-8", HTML)
}

pub(crate) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}
