//! Operations endpoints: `GET`/`HEAD /healthz` (liveness with catalogue and queue figures),
//! `GET /readyz` (readiness: whether the storage can serve, i.e. the Milvus server answers and has
//! the collection) and `GET /metrics` (Prometheus text: per-route requests and latency, queue
//! depth, catalogue size). Liveness and metrics read the catalogue's in-memory counts only
//! ([`animelens_index::Catalog::counts`]), never sled or a remote server, so they answer at once
//! even while the store is stuck on a full disk or Milvus is down; readiness asks the backend, so
//! an orchestrator stops routing traffic to a replica whose Milvus is unreachable without
//! restarting it.

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
    /// Largest `k` a request may ask for (the UI asks for no more).
    pub max_k: usize,
}

/// Liveness and basic figures.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 500, body = ErrorBody)))]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(Health {
        status: "ok".into(),
        items: state.catalog.counts().live,
        model: state.catalog.model().fingerprint.clone(),
        queue_depth: state.pool.stats().queued.load(Ordering::Relaxed),
        max_k: state.settings.max_k,
    }))
}

/// Answer of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready` in a 200 answer.
    pub status: String,
    /// The storage backend (`embedded`, `milvus`).
    pub backend: String,
}

/// Readiness: 200 when the storage can serve requests, 503 with `Retry-After` when its server
/// does not answer or lost the collection.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.catalog(|c| c.check_ready()).await?;
    Ok(HttpResponse::Ok().json(Ready {
        status: "ready".into(),
        backend: state.catalog.backend_name().into(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = state.catalog.counts();
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
            counts.live as f64,
        ),
        (
            "animelens_catalog_tombstoned",
            "Removed items awaiting compaction.",
            counts.tombstoned as f64,
        ),
    ]);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}
