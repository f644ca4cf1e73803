//! What the ingest pipeline embeds with: anything that decodes images the way the model accepts
//! them and predicts decoded images in batches — the network called directly, or the service's
//! inference pool.

use crate::inference::{InferencePool, PoolImage};
use animelens_models::embedder::predict_decoded;
use animelens_models::{CopyViews, EmbedError, Embedder, Prediction};
use image::RgbImage;

/// Decodes and embeds pictures for the pipeline.
pub trait EmbedImages: Sync {
    /// Decodes one encoded image with the model's limits.
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError>;
    /// Predicts `images` (top-1 labels), with the copy descriptors of `copies` views; one result
    /// per image, in order.
    fn embed(
        &self,
        images: Vec<RgbImage>,
        copies: Option<CopyViews>,
    ) -> Vec<Result<Prediction, EmbedError>>;
}

impl<E: Embedder + ?Sized> EmbedImages for E {
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError> {
        Embedder::decode(self, bytes)
    }

    fn embed(
        &self,
        images: Vec<RgbImage>,
        copies: Option<CopyViews>,
    ) -> Vec<Result<Prediction, EmbedError>> {
        predict_decoded(self, images.into_iter().map(Ok).collect(), 1, copies)
    }
}

impl EmbedImages for InferencePool {
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError> {
        self.embedder().decode(bytes)
    }

    fn embed(
        &self,
        images: Vec<RgbImage>,
        copies: Option<CopyViews>,
    ) -> Vec<Result<Prediction, EmbedError>> {
        self.predict_blocking(images.into_iter().map(PoolImage::from).collect(), 1, copies)
    }
}
