//! Operations endpoints: `GET /healthz` (liveness with catalogue and queue figures) and
//! `GET /metrics` (Prometheus text: per-route requests and latency, queue depth, catalogue size).

use crate::api::types::ErrorBody;
use crate::error::ApiError;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the service answers.
    pub status: String,
    /// Live items in the catalogue.
    pub items: usize,
    /// Fingerprint of the model in use.
    pub model: String,
    /// Inference jobs waiting.
    pub queue_depth: usize,
}

/// Liveness and basic figures.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 500, body = ErrorBody)))]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state.catalog(|cat| cat.stats()).await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".into(),
        items: stats.live,
        model: stats.fingerprint,
        queue_depth: state.pool.stats().queued.load(Ordering::Relaxed),
    }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state.catalog(|cat| cat.stats()).await?;
    let pool = state.pool.stats();
    let text = state.metrics.render(&[
        (
            "animelens_inference_queue_depth",
            "Inference jobs waiting for a worker.",
            pool.queued.load(Ordering::Relaxed) as f64,
        ),
        (
            "animelens_inference_batches",
            "Network calls made since start.",
            pool.batches.load(Ordering::Relaxed) as f64,
        ),
        (
            "animelens_inference_images",
            "Images run through the network since start.",
            pool.images.load(Ordering::Relaxed) as f64,
        ),
        (
            "animelens_inference_rejected",
            "Inference requests refused with 503 because the queue was full.",
            pool.rejected.load(Ordering::Relaxed) as f64,
        ),
        (
            "animelens_catalog_items",
            "Live items in the catalogue.",
            stats.live as f64,
        ),
        (
            "animelens_catalog_tombstoned",
            "Removed items awaiting compaction.",
            stats.tombstoned as f64,
        ),
    ]);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}
