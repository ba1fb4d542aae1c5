//! The console's static assets, embedded in the binary: one stylesheet, one script and an icon (plain
//! CSS and JavaScript, no build step), served with their content type and `no-cache` (the
//! browser revalidates; they change only with the binary).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Where the stylesheet is served.
pub const CSS_PATH: &str = "/console/console.css";
/// Where the script is served.
pub const JS_PATH: &str = "/console/console.js";

/// Where the icon is served.
pub const ICON_PATH: &str = "/console/favicon.svg";

const ICON: &str = include_str!("assets/favicon.svg");
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `GET /console/console.css`.
pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /console/console.js`.
pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// `GET /console/favicon.svg`.
pub async fn icon() -> Response {
    asset(ICON, "image/svg+xml")
}
