//! What every handler shares: the catalogue, the inference pool, the settings and the metrics,
//! plus the two small steps every handler repeats (run a catalogue call off the executor, check
//! the API key of a write).

use crate::config::Settings;
use crate::error::ApiError;
use crate::inference::InferencePool;
use crate::inference::PoolImage;
use crate::ingest::Picture;
use crate::metrics::Metrics;
use crate::upload::UploadLimits;
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use animelens_index::Storage;
use animelens_models::generalisation::ScoreCalibration;
use animelens_models::preprocess::content_hash;
use animelens_models::{CopyViews, Prediction};
use std::sync::Arc;

/// Header carrying the API key of write requests.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Shared application state.
pub struct AppState {
    /// The catalogue's storage (embedded or Milvus); its logic comes with `CatalogLogic`.
    pub catalog: Arc<dyn Storage>,
    /// The network behind its bounded queue.
    pub pool: InferencePool,
    /// The service settings.
    pub settings: Settings,
    /// Request metrics.
    pub metrics: Metrics,
    /// The model's cosine → confidence map (`None`: the model was not calibrated).
    pub similarity: Option<ScoreCalibration>,
}

impl AppState {
    /// Runs a (blocking) catalogue call on the blocking thread pool.
    pub async fn catalog<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&dyn Storage) -> Result<T, animelens_index::CatalogError> + Send + 'static,
        T: Send + 'static,
    {
        let catalog = self.catalog.clone();
        actix_web::web::block(move || f(&*catalog))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)
    }

    /// Runs any blocking closure (image work) on the blocking thread pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        actix_web::web::block(f)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// Predicts every image or fails with the first image's error.
    pub async fn predict_all(
        &self,
        images: Vec<Bytes>,
        top_k: usize,
    ) -> Result<Vec<Prediction>, ApiError> {
        self.predict(images, top_k, None).await
    }

    /// Decodes uploads once, off the executor, into pictures (size and content hash); fails with
    /// the first undecodable image's error.
    pub async fn decode_pictures(&self, images: Vec<Bytes>) -> Result<Vec<Picture>, ApiError> {
        let pool = self.pool.clone();
        self.blocking(move || {
            let count = images.len();
            images
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    Picture::decode(b, content_hash(b), &pool)
                        .map_err(|e| ApiError::from_embed(e, i, count))
                })
                .collect()
        })
        .await
    }

    /// Predicts encoded uploads or decoded images through the inference pool, with the copy
    /// descriptors of `copies` views in each prediction; fails with the first image's error.
    pub async fn predict<I: Into<PoolImage>>(
        &self,
        images: Vec<I>,
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> Result<Vec<Prediction>, ApiError> {
        let count = images.len();
        let results = self
            .pool
            .predict(images.into_iter().map(Into::into).collect(), top_k, copies)
            .await
            .map_err(|_| ApiError::Busy)?;
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| ApiError::from_embed(e, i, count)))
            .collect()
    }

    /// Limits for reading uploads.
    pub fn upload_limits(&self) -> UploadLimits {
        UploadLimits {
            max_bytes: self.settings.max_upload_bytes,
            max_images: self.settings.max_images_per_request,
        }
    }

    /// Checks `k` against the configured maximum.
    pub fn check_k(&self, k: usize) -> Result<usize, ApiError> {
        if k == 0 || k > self.settings.max_k {
            return Err(ApiError::BadRequest(format!(
                "k = {k} is out of range; ask for 1 to {} results",
                self.settings.max_k
            )));
        }
        Ok(k)
    }

    /// Refuses a write request without the configured API key.
    pub fn authorize_write(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(expected) = self.settings.api_key.as_deref() else {
            return Err(ApiError::Unauthorized(
                "writes are disabled: this server has no API key configured; start it with \
                 api_key set (or ANIMELENS_API_KEY) and send that key in the X-Api-Key header"
                    .into(),
            ));
        };
        let given = req
            .headers()
            .get(API_KEY_HEADER)
            .and_then(|v| v.to_str().ok());
        match given {
            None => Err(ApiError::Unauthorized(
                "this endpoint changes the catalogue and needs the API key in the X-Api-Key header"
                    .into(),
            )),
            Some(key) if !same(key.as_bytes(), expected.as_bytes()) => Err(ApiError::Unauthorized(
                "the X-Api-Key header does not hold the right key".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Compares two keys in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
