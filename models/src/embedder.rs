//! The seam between the network and the rest of AnimeLens.
//!
//! `index` and `web` only see [`Embedder`] and [`Prediction`], so they can be tested with a fake
//! embedder and without a trained network.

use crate::generalisation::ScoreCalibration;
use serde::{Deserialize, Serialize};

/// One candidate label of one head, with its softmax probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    /// The label (e.g. a character name).
    pub label: String,
    /// Softmax probability in [0, 1].
    pub probability: f32,
}

/// The top-k labels of one head (one label level such as `character`, `work` or `style`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadPrediction {
    /// Name of the label level this head predicts.
    pub head: String,
    /// Best labels first.
    pub top: Vec<LabelScore>,
}

/// What the network says about one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Top-k per head, in the model card's head order (the primary level first).
    pub heads: Vec<HeadPrediction>,
    /// The L2-normalised embedding (1024-d for GoogLeNet).
    pub embedding: Vec<f32>,
    /// Copy descriptors of the image's views, when they were asked for (see
    /// [`Embedder::copy_descriptors`]); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<Vec<f32>>,
}

/// Errors an embedder reports for one image.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The bytes are not a decodable image.
    #[error("cannot decode image: {0}. Send a JPEG, PNG, WebP, GIF or BMP file")]
    Decode(String),
    /// A known image format that AnimeLens does not decode.
    #[error("images in {0} format are not supported; send JPEG, PNG, WebP, GIF or BMP")]
    Unsupported(String),
    /// The image is larger than the configured pixel limit.
    #[error(
        "image is {width}x{height} pixels, over the limit of {limit} pixels. Send a smaller image"
    )]
    TooLarge {
        /// Width the header claims.
        width: u32,
        /// Height the header claims.
        height: u32,
        /// Maximum pixel count accepted.
        limit: u64,
    },
    /// The network failed (a bug or out of memory).
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Which views of a picture its copy descriptors describe (see [`crate::copies::views`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyViews {
    /// A catalogued picture: whole, five regions, whole at low resolution.
    Catalogue,
    /// An upload under review: as it came and mirrored.
    Query,
}

/// Turns encoded images into predictions. Implementations must be usable from several threads.
pub trait Embedder: Send + Sync {
    /// Dimension of the embeddings this embedder returns.
    fn dim(&self) -> usize;
    /// Fingerprint of the weights (catalogues remember it and refuse a different model).
    fn fingerprint(&self) -> String;
    /// Names of the heads, primary level first.
    fn heads(&self) -> Vec<String>;
    /// The model's map from embedding cosine to P(same character), when it was calibrated
    /// (`animelens eval --unseen --calibrate`).
    fn similarity(&self) -> Option<ScoreCalibration> {
        None
    }
    /// Predicts a batch of encoded images; one result per input, in order.
    fn predict_batch(&self, images: &[&[u8]], top_k: usize) -> Vec<Result<Prediction, EmbedError>>;
    /// Copy descriptors of each image's `views` (L2-normalised, one per view); one result per
    /// input, in order. An embedder without a copy descriptor returns empty lists.
    fn copy_descriptors(
        &self,
        images: &[&[u8]],
        views: CopyViews,
    ) -> Vec<Result<Vec<Vec<f32>>, EmbedError>> {
        let _ = views;
        images.iter().map(|_| Ok(Vec::new())).collect()
    }
}
