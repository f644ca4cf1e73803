//! The running service: opens the catalogue for the model in use, ingests the sample gallery into
//! an empty catalogue, starts the inference pool, serves HTTP until SIGINT/SIGTERM, and then saves
//! the catalogue's search index (every write was already flushed to sled when acknowledged).

use crate::api;
use crate::config::Settings;
use crate::error::ApiError;
use crate::inference::InferencePool;
use crate::ingest::{ingest_collection, Collection};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::storage::open_storage;
use crate::ui;
use crate::upload::BodyDeadline;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, DefaultHeaders, Next};
use actix_web::{web, App, HttpServer};
use animelens_index::{CatalogError, ModelTag, Storage};
use animelens_models::data::{DataError, Dataset};
use animelens_models::generalisation::ScoreCalibration;
use animelens_models::Embedder;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds in-flight requests get to finish after a stop signal.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The catalogue could not be opened or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The gallery folder could not be read.
    #[error("cannot read the gallery: {0}; check the `gallery` setting")]
    Gallery(#[from] DataError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another address with --bind or ANIMELENS_BIND (port 0 picks a free port)")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Server(std::io::Error),
}

/// A service ready to run: catalogue open (and filled), inference workers started.
pub struct Service {
    settings: Settings,
    catalog: Arc<dyn Storage>,
    pool: InferencePool,
    similarity: Option<ScoreCalibration>,
}

/// Ingests the gallery folder into the empty catalogue through the one ingest pipeline, with
/// progress and both calibrations in the log.
fn ingest_gallery(
    catalog: &dyn Storage,
    pool: &InferencePool,
    gallery: &std::path::Path,
) -> Result<(), ServeError> {
    let dataset = Dataset::from_folders(gallery)?;
    let total = dataset.samples.len();
    tracing::info!(gallery = %gallery.display(), images = total, "ingesting the sample gallery into the empty catalogue");
    let done = std::sync::atomic::AtomicUsize::new(0);
    let progress = |n: usize| {
        let done = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        tracing::info!("embedded {done}/{total} gallery images");
    };
    let summary = ingest_collection(
        catalog,
        pool,
        &Collection::new(&dataset, gallery, false),
        &progress,
    )?;
    for (path, reason) in &summary.unreadable {
        tracing::warn!(path = %path.display(), "skipped: {reason}");
    }
    match &summary.open_set {
        Ok(c) => tracing::info!(
            threshold = c.threshold,
            accuracy = c.accuracy,
            "open-set threshold calibrated on the gallery's validation images"
        ),
        Err(e) => tracing::warn!("open-set threshold left at its default: {e}"),
    }
    match &summary.copies {
        Ok(v) => tracing::info!(
            threshold = v.threshold,
            recall = v.recall,
            "copy threshold calibrated on edited copies of gallery pictures"
        ),
        Err(e) => tracing::warn!("copy threshold left uncalibrated: {e}"),
    }
    tracing::info!(
        added = summary.added,
        "ingested {total}/{total} gallery images; sample gallery ingested"
    );
    Ok(())
}

impl Service {
    /// Opens the catalogue for `embedder`'s model (creating it if needed), starts the inference
    /// workers, and ingests the configured gallery when the catalogue is empty. Blocking.
    pub fn open(settings: Settings, embedder: Arc<dyn Embedder>) -> Result<Service, ServeError> {
        let tag = ModelTag {
            fingerprint: embedder.fingerprint(),
            dim: embedder.dim(),
        };
        let similarity = embedder.similarity();
        let pool = InferencePool::start(
            embedder,
            settings.inference_workers,
            settings.queue_capacity,
            settings.max_batch,
        );
        let catalog = open_storage(&settings, tag)?;
        let stats = catalog.stats()?;
        tracing::info!(
            catalog = %settings.catalog_dir().display(),
            backend = catalog.backend_name(),
            items = stats.live,
            "catalogue open"
        );
        match &settings.gallery {
            Some(gallery) if stats.items == 0 && gallery.is_dir() => {
                ingest_gallery(&*catalog, &pool, gallery)?;
            }
            Some(gallery) if stats.items == 0 => tracing::warn!(
                gallery = %gallery.display(),
                "the gallery folder does not exist; starting with an empty catalogue"
            ),
            _ => {}
        }
        Ok(Service {
            settings,
            catalog,
            pool,
            similarity,
        })
    }

    /// Serves HTTP on the configured address until SIGINT or SIGTERM, then saves the index.
    pub fn run(self) -> Result<(), ServeError> {
        actix_web::rt::System::new().block_on(self.serve())
    }

    async fn serve(self) -> Result<(), ServeError> {
        let catalog = self.catalog.clone();
        let bind = self.settings.bind.clone();
        let http_workers = self.settings.http_workers;
        let timeout = Duration::from_secs(self.settings.request_timeout_secs);
        let deadline = BodyDeadline {
            secs: self.settings.request_timeout_secs,
        };
        let max_connections = self.settings.max_connections;
        let state = web::Data::new(AppState {
            catalog: self.catalog,
            pool: self.pool,
            settings: self.settings,
            metrics: Metrics::default(),
            similarity: self.similarity,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(deadline)
                .wrap(from_fn(observe))
                .wrap(security_headers())
                .configure(api::configure)
                .configure(ui::configure)
                .default_service(web::to(not_found))
        })
        .workers(http_workers)
        .client_request_timeout(timeout)
        .max_connections(max_connections)
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .bind(&bind)
        .map_err(|source| ServeError::Bind {
            addr: bind.clone(),
            source,
        })?;
        for addr in server.addrs() {
            tracing::info!("listening on http://{addr}");
        }
        server.run().await.map_err(ServeError::Server)?;
        if let Some(catalog) = catalog.embedded() {
            tracing::info!("stopping: saving the catalogue's search index");
            catalog.save_index()?;
        }
        tracing::info!("catalogue saved; bye");
        Ok(())
    }
}

/// Headers on every answer: no MIME sniffing, no framing (clickjacking), and a content security
/// policy that lets the UI load only its own script, style sheet, API answers and thumbnails.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add((
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .add(("Referrer-Policy", "no-referrer"))
}

/// Any path outside the API and the UI.
async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(
        "nothing here; the UI is at / and the API under /api/v1 (see /api/v1/openapi.json)".into(),
    ))
}

/// Middleware recording every request's route, status and latency.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16();
    if let Some(state) = state {
        state
            .metrics
            .observe(&route, &method, status, started.elapsed());
    }
    tracing::debug!(%method, %route, status, ms = started.elapsed().as_secs_f64() * 1e3, "request");
    Ok(res)
}
