//! `animelens-web`: the AnimeLens service. An actix-web app answering the three uses — lookalike
//! characters, reverse image search, recommendation feeds — as a JSON API under `/api/v1`
//! (documented at `/api/v1/openapi.json`), with `/healthz`, `/metrics` and a static web UI at `/`.
//!
//! It holds no search or model logic: handlers parse requests, hand images to a bounded
//! inference pool ([`InferencePool`], never the async executor), call the catalogue
//! (`animelens-index`) on the blocking thread pool, and map errors to JSON answers.

mod api;
pub mod config;
mod error;
pub mod inference;
pub mod ingest;
mod metrics;
mod server;
mod state;
mod storage;
mod ui;
mod upload;
pub mod video;

pub use api::ApiDoc;
pub use config::{Backend, ConfigError, Settings};
pub use error::ApiError;
pub use inference::InferencePool;
pub use server::{ServeError, Service};
