//! A trained checkpoint as an [`Embedder`]: decode, preprocess, batch through the network in
//! eval mode, softmax per head, top-k labels, L2-normalised embedding.

use crate::checkpoint::{self, CheckpointError, ModelCard};
use crate::copies::views::{catalogue_views, query_views};
use crate::copies::whitening::Whitening;
use crate::copies::{CopyDescriber, CopyDescriptorSpec};
use crate::embedder::{CopyViews, EmbedError, Embedder, HeadPrediction, LabelScore, Prediction};
use crate::folded::FoldedGoogLeNet;
use crate::generalisation::ScoreCalibration;
use crate::googlenet::EMBEDDING_DIM;
use crate::metrics::top_k;
use crate::preprocess::{batch_tensor, decode, ImageError, DEFAULT_MAX_PIXELS};
use candle_core::{Device, Result, D};
use image::RgbImage;
use rayon::prelude::*;
use std::path::Path;

/// A loaded model ready for inference (BatchNorm folded, see [`FoldedGoogLeNet`]). Cheap to
/// share behind an `Arc`.
pub struct Classifier {
    net: FoldedGoogLeNet,
    card: ModelCard,
    max_pixels: u64,
    copy: CopyDescriber,
}

impl Classifier {
    /// Loads a checkpoint (`NAME.safetensors` + `NAME.json`).
    pub fn load(path: &Path) -> std::result::Result<Self, CheckpointError> {
        let model = checkpoint::load(path)?;
        let mut copy = CopyDescriber::new(CopyDescriptorSpec::default())
            .expect("the default copy descriptor pools an Inception block");
        let whitening = Whitening::path_for(path);
        if whitening.exists() {
            copy = copy.with_whitening(Whitening::load(&whitening)?);
        }
        Ok(Self {
            net: FoldedGoogLeNet::new(&model.net)?,
            card: model.card,
            max_pixels: DEFAULT_MAX_PIXELS,
            copy,
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

    /// The copy describer (with the model's whitening when it has one).
    pub fn copy_describer(&self) -> &CopyDescriber {
        &self.copy
    }

    /// Copy descriptors of decoded views (see [`crate::copies`]), one per view, in order.
    pub fn describe_copies(
        &self,
        describer: &CopyDescriber,
        views: &[RgbImage],
    ) -> Result<Vec<Vec<f32>>> {
        describer.describe(&self.net, views)
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
            .map(|(heads, embedding)| Prediction {
                heads,
                embedding,
                copies: Vec::new(),
            })
            .collect())
    }
}

impl Classifier {
    /// Decodes encoded images, mapping decoding failures to [`EmbedError`]s.
    fn decode_all(&self, images: &[&[u8]]) -> Vec<std::result::Result<RgbImage, EmbedError>> {
        images
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
            .collect()
    }
}

/// One inference error per image, for a batch the network failed on.
fn inference_failed<T>(
    count: usize,
    error: &candle_core::Error,
) -> Vec<std::result::Result<T, EmbedError>> {
    (0..count)
        .map(|_| Err(EmbedError::Inference(error.to_string())))
        .collect()
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

    fn copy_descriptors(
        &self,
        images: &[&[u8]],
        views: CopyViews,
    ) -> Vec<std::result::Result<Vec<Vec<f32>>, EmbedError>> {
        let decoded = self.decode_all(images);
        let per_image: Vec<Vec<RgbImage>> = decoded
            .par_iter()
            .map(|d| match (d, views) {
                (Ok(img), CopyViews::Catalogue) => catalogue_views(img),
                (Ok(img), CopyViews::Query) => query_views(img).to_vec(),
                (Err(_), _) => Vec::new(),
            })
            .collect();
        let counts: Vec<usize> = per_image.iter().map(Vec::len).collect();
        let all: Vec<RgbImage> = per_image.into_iter().flatten().collect();
        let mut described = match self.describe_copies(&self.copy, &all) {
            Ok(d) => d.into_iter(),
            Err(e) => return inference_failed(images.len(), &e),
        };
        decoded
            .into_iter()
            .zip(counts)
            .map(|(d, n)| d.map(|_| described.by_ref().take(n).collect()))
            .collect()
    }

    fn predict_batch(
        &self,
        images: &[&[u8]],
        top_k: usize,
    ) -> Vec<std::result::Result<Prediction, EmbedError>> {
        let decoded = self.decode_all(images);
        let ok: Vec<RgbImage> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        let mut predictions = match self.predict_images(&ok, top_k) {
            Ok(p) => p.into_iter(),
            Err(e) => return inference_failed(images.len(), &e),
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
