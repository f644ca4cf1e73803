//! A trained checkpoint as an [`Embedder`]: decode, preprocess, batch through the network in
//! eval mode, softmax per head, top-k labels, L2-normalised embedding.

use crate::checkpoint::{self, CheckpointError, ModelCard};
use crate::embedder::{EmbedError, Embedder, HeadPrediction, LabelScore, Prediction};
use crate::folded::FoldedGoogLeNet;
use crate::generalisation::ScoreCalibration;
use crate::googlenet::EMBEDDING_DIM;
use crate::metrics::top_k;
use crate::preprocess::{batch_tensor, decode, ImageError, DEFAULT_MAX_PIXELS};
use candle_core::{Device, Result, D};
use image::RgbImage;
use std::path::Path;

/// A loaded model ready for inference (BatchNorm folded, see [`FoldedGoogLeNet`]). Cheap to
/// share behind an `Arc`.
pub struct Classifier {
    net: FoldedGoogLeNet,
    card: ModelCard,
    max_pixels: u64,
}

impl Classifier {
    /// Loads a checkpoint (`NAME.safetensors` + `NAME.json`).
    pub fn load(path: &Path) -> std::result::Result<Self, CheckpointError> {
        let model = checkpoint::load(path)?;
        Ok(Self {
            net: FoldedGoogLeNet::new(&model.net)?,
            card: model.card,
            max_pixels: DEFAULT_MAX_PIXELS,
        })
    }

    /// Sets the decoding pixel limit (decompression-bomb guard).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The model card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Predicts decoded images (any size; resized to the model's input).
    pub fn predict_images(&self, images: &[RgbImage], k: usize) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = batch_tensor(images, &self.card.preprocessing, &Device::Cpu)?;
        let out = self.net.forward(&x)?;
        let embeddings = out.embedding.to_vec2::<f32>()?;
        let mut heads_per_image: Vec<Vec<HeadPrediction>> = vec![Vec::new(); images.len()];
        for (head, logits) in self.card.heads.iter().zip(&out.logits) {
            let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
            for (i, p) in probs.iter().enumerate() {
                let top = top_k(p, k)
                    .into_iter()
                    .map(|c| LabelScore {
                        label: head.labels[c].clone(),
                        probability: p[c],
                    })
                    .collect();
                heads_per_image[i].push(HeadPrediction {
                    head: head.level.clone(),
                    top,
                });
            }
        }
        Ok(heads_per_image
            .into_iter()
            .zip(embeddings)
            .map(|(heads, embedding)| Prediction { heads, embedding })
            .collect())
    }
}

impl Embedder for Classifier {
    fn dim(&self) -> usize {
        EMBEDDING_DIM
    }

    fn fingerprint(&self) -> String {
        self.card.fingerprint.clone()
    }

    fn heads(&self) -> Vec<String> {
        self.card.heads.iter().map(|h| h.level.clone()).collect()
    }

    fn similarity(&self) -> Option<ScoreCalibration> {
        self.card.similarity
    }

    fn predict_batch(
        &self,
        images: &[&[u8]],
        top_k: usize,
    ) -> Vec<std::result::Result<Prediction, EmbedError>> {
        let decoded: Vec<std::result::Result<RgbImage, EmbedError>> = images
            .iter()
            .map(|bytes| {
                decode(bytes, self.max_pixels).map_err(|e| match e {
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
                })
            })
            .collect();
        let ok: Vec<RgbImage> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        let mut predictions = match self.predict_images(&ok, top_k) {
            Ok(p) => p.into_iter(),
            Err(e) => {
                return images
                    .iter()
                    .map(|_| Err(EmbedError::Inference(e.to_string())))
                    .collect()
            }
        };
        decoded
            .into_iter()
            .map(|d| {
                d.map(|_| {
                    predictions
                        .next()
                        .expect("one prediction per decoded image")
                })
            })
            .collect()
    }
}
