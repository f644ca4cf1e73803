//! The static web UI (`web/static/`), compiled into the binary so that the service runs from any
//! working directory: `/` is the page, `/ui/*` its script and style sheet, `/ui/timeline.html`
//! the video timeline page, `/favicon.ico` the icon (an SVG, which browsers accept under that
//! name).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");
const FAVICON_SVG: &str = include_str!("../static/favicon.svg");
const TIMELINE_HTML: &str = include_str!("../static/timeline.html");
const TIMELINE_JS: &str = include_str!("../static/timeline.js");

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Registers the page and its assets.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/",
        web::get().to(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
    )
    .route(
        "/ui/app.js",
        web::get().to(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
    )
    .route(
        "/ui/style.css",
        web::get().to(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
    )
    .route(
        "/ui/timeline.html",
        web::get().to(|| async { asset("text/html; charset=utf-8", TIMELINE_HTML) }),
    )
    .route(
        "/ui/timeline.js",
        web::get().to(|| async { asset("text/javascript; charset=utf-8", TIMELINE_JS) }),
    )
    .route(
        "/favicon.ico",
        web::get().to(|| async { asset("image/svg+xml", FAVICON_SVG) }),
    );
}
