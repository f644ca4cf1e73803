//! The seam between the network and the rest of AnimeLens.
//!
//! `index` and `web` only see [`Embedder`] and [`Prediction`], so they can be tested with a fake
//! embedder and without a trained network. The seam takes decoded images
//! ([`Embedder::predict_images`]) so that a video frame or an image the caller already decoded is
//! never encoded only to be decoded again; [`Embedder::predict_batch`] is the same for encoded
//! images, decoding each with the embedder's own limits.

use crate::generalisation::ScoreCalibration;
use crate::preprocess::{decode, ImageError, DEFAULT_MAX_PIXELS};
use image::RgbImage;
use rayon::prelude::*;
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
#[derive(Debug, Clone, thiserror::Error)]
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

impl From<ImageError> for EmbedError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Decode(m) => EmbedError::Decode(m),
            ImageError::Unsupported(f) => EmbedError::Unsupported(f),
            ImageError::TooLarge {
                width,
                height,
                limit,
            } => EmbedError::TooLarge {
                width,
                height,
                limit,
            },
        }
    }
}

/// Which views of a picture its copy descriptors describe (see [`crate::copies::views`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyViews {
    /// A catalogued picture: whole, five regions, whole at low resolution.
    Catalogue,
    /// An upload under review: as it came and mirrored.
    Query,
    /// A video frame: the whole frame only (a screenshot is rarely a crop of one; mirrors are
    /// handled on the query side).
    Frame,
}

/// Turns images into predictions. Implementations must be usable from several threads.
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
    /// Predicts decoded images as one batch, one prediction per input, in order; with
    /// `copies`, each prediction also carries the copy descriptors of those views of its image
    /// (L2-normalised, one per view; empty for an embedder without a copy descriptor).
    fn predict_images(
        &self,
        images: &[RgbImage],
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> Result<Vec<Prediction>, EmbedError>;
    /// Decodes one encoded image the way this embedder accepts images (format check, pixel
    /// limit, transparency onto white).
    fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError> {
        decode(bytes, DEFAULT_MAX_PIXELS).map_err(EmbedError::from)
    }
    /// Predicts encoded images: decodes each (in parallel), then predicts the decodable ones as
    /// one batch; one result per input, in order.
    fn predict_batch(
        &self,
        images: &[&[u8]],
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> Vec<Result<Prediction, EmbedError>> {
        let decoded: Vec<Result<RgbImage, EmbedError>> =
            images.par_iter().map(|b| self.decode(b)).collect();
        predict_decoded(self, decoded, top_k, copies)
    }
}

/// Predicts the images that decoded as one batch and puts each prediction back in its input's
/// place; a failed batch gives every decodable image the batch's error.
pub fn predict_decoded<E: Embedder + ?Sized>(
    embedder: &E,
    decoded: Vec<Result<RgbImage, EmbedError>>,
    top_k: usize,
    copies: Option<CopyViews>,
) -> Vec<Result<Prediction, EmbedError>> {
    let mut slots = Vec::with_capacity(decoded.len());
    let mut ok = Vec::new();
    for d in decoded {
        match d {
            Ok(image) => {
                ok.push(image);
                slots.push(None);
            }
            Err(e) => slots.push(Some(e)),
        }
    }
    let predicted = embedder.predict_images(&ok, top_k, copies);
    let mut predictions = match predicted {
        Ok(p) => p.into_iter(),
        Err(e) => {
            return slots
                .into_iter()
                .map(|s| Err(s.unwrap_or_else(|| e.clone())))
                .collect();
        }
    };
    slots
        .into_iter()
        .map(|s| match s {
            Some(e) => Err(e),
            None => Ok(predictions
                .next()
                .expect("one prediction per decoded image")),
        })
        .collect()
}
