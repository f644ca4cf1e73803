//! A trained checkpoint as an [`Embedder`]: decode, preprocess, batch through the network in
//! eval mode, softmax per head, top-k labels (never an exemplar class, see
//! [`crate::data::Dataset::exemplars`]), L2-normalised embedding (fused with the picture's
//! palette and a mid-level block, from the same pass, when the card says so: see
//! [`crate::fusion`]).

use crate::architecture::Architecture;
use crate::checkpoint::{self, CheckpointError, ModelCard};
use crate::copies::views::{catalogue_views, frame_view, query_views};
use crate::copies::{CopyDescriber, CopyDescriptorSpec};
use crate::data::EXEMPLAR_PREFIX;
use crate::embedder::{CopyViews, EmbedError, Embedder, HeadPrediction, LabelScore, Prediction};
use crate::folded::FoldedNetwork;
use crate::fusion::Fusion;
use crate::generalisation::ScoreCalibration;
use crate::metrics::top_k;
use crate::preprocess::{batch_tensor, decode, DEFAULT_MAX_PIXELS};
use crate::whitening::Whitening;
use candle_core::{Device, Result, D};
use image::RgbImage;
use rayon::prelude::*;
use std::path::Path;

/// A loaded model ready for inference (BatchNorm folded, see [`FoldedNetwork`]). Cheap to
/// share behind an `Arc`.
pub struct Classifier {
    net: FoldedNetwork,
    card: ModelCard,
    max_pixels: u64,
    copy: CopyDescriber,
    /// The card's fusion (checked when the card was read).
    fusion: Fusion,
}

impl Classifier {
    /// Loads a checkpoint (`NAME.safetensors` + `NAME.json`).
    pub fn load(path: &Path) -> std::result::Result<Self, CheckpointError> {
        let model = checkpoint::load(path)?;
        let mut copy = CopyDescriber::new(CopyDescriptorSpec::default(), model.net.architecture())
            .expect("the default copy descriptor pools an Inception block");
        let whitening = Whitening::path_for(path, crate::copies::COPY_WHITENING);
        if whitening.exists() {
            copy = copy.with_whitening(Whitening::load(&whitening)?);
        }
        let fusion = model
            .card
            .fusion(model.net.architecture())
            .map_err(|e| CheckpointError::Card {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .with_whitenings(path)
            .map_err(CheckpointError::PartWhitening)?;
        Ok(Self {
            net: model.serving()?,
            card: model.card,
            max_pixels: DEFAULT_MAX_PIXELS,
            copy,
            fusion,
        })
    }

    /// Sets the decoding pixel limit (decompression-bomb guard).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The architecture the checkpoint's card names.
    pub fn architecture(&self) -> &'static Architecture {
        self.net.architecture()
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

    /// Runs decoded images (any size; resized to the model's input) through the network: top-k
    /// labels per head and the embedding.
    fn forward_images(&self, images: &[RgbImage], k: usize) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = batch_tensor(images, &self.card.preprocessing, &Device::Cpu)?;
        let (out, blocks) = self
            .net
            .forward_tapped(&x, self.fusion.tap().map(|t| t.blocks))?;
        let embeddings = out.embedding.to_vec2::<f32>()?;
        let embeddings = self
            .fusion
            .vectors(embeddings, blocks.unwrap_or_default(), images);
        let mut heads_per_image: Vec<Vec<HeadPrediction>> = vec![Vec::new(); images.len()];
        for (head, logits) in self.card.heads.iter().zip(&out.logits) {
            let probs = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
            for (i, p) in probs.iter().enumerate() {
                // Exemplar classes (`train --exemplars`) are training proxies, not characters.
                let top = top_k(p, p.len())
                    .into_iter()
                    .filter(|&c| !head.labels[c].starts_with(EXEMPLAR_PREFIX))
                    .take(k)
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
    /// Copy descriptors of each image's `views`, one list per image, in order.
    fn describe_views(&self, images: &[RgbImage], views: CopyViews) -> Result<Vec<Vec<Vec<f32>>>> {
        let per_image: Vec<Vec<RgbImage>> = images
            .par_iter()
            .map(|img| match views {
                CopyViews::Catalogue => catalogue_views(img),
                CopyViews::Query => query_views(img).to_vec(),
                CopyViews::Frame => vec![frame_view(img)],
            })
            .collect();
        let counts: Vec<usize> = per_image.iter().map(Vec::len).collect();
        let all: Vec<RgbImage> = per_image.into_iter().flatten().collect();
        let mut described = self.describe_copies(&self.copy, &all)?.into_iter();
        Ok(counts
            .into_iter()
            .map(|n| described.by_ref().take(n).collect())
            .collect())
    }
}

/// An inference error for a batch the network failed on.
fn inference_failed(error: candle_core::Error) -> EmbedError {
    EmbedError::Inference(error.to_string())
}

impl Embedder for Classifier {
    fn dim(&self) -> usize {
        self.fusion.dim(self.net.architecture())
    }

    fn fingerprint(&self) -> String {
        format!("{}{}", self.card.fingerprint, self.fusion.fingerprint_tag())
    }

    fn heads(&self) -> Vec<String> {
        self.card.heads.iter().map(|h| h.level.clone()).collect()
    }

    fn similarity(&self) -> Option<ScoreCalibration> {
        self.card.similarity
    }

    fn predict_images(
        &self,
        images: &[RgbImage],
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> std::result::Result<Vec<Prediction>, EmbedError> {
        let mut predictions = self
            .forward_images(images, top_k)
            .map_err(inference_failed)?;
        if let Some(views) = copies {
            let described = self
                .describe_views(images, views)
                .map_err(inference_failed)?;
            for (p, d) in predictions.iter_mut().zip(described) {
                p.copies = d;
            }
        }
        Ok(predictions)
    }

    fn decode(&self, bytes: &[u8]) -> std::result::Result<RgbImage, EmbedError> {
        decode(bytes, self.max_pixels).map_err(EmbedError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::HeadCard;
    use crate::preprocess::Preprocessing;
    use image::Rgb;

    #[test]
    fn exemplar_classes_are_never_named_as_characters() {
        let labels = ["ame", "exemplar:a.jpg", "exemplar:b.jpg", "gura"];
        let card = ModelCard::untrained(
            Preprocessing::new(64),
            vec![HeadCard {
                level: "character".into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
            }],
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let model = checkpoint::build(&card).unwrap();
        checkpoint::save(&model.varmap, &path, &card, candle_core::DType::F32).unwrap();
        let classifier = Classifier::load(&path).unwrap();
        let images: Vec<RgbImage> = (0..3u8)
            .map(|i| RgbImage::from_pixel(64, 64, Rgb([80 * i, 200 - 50 * i, 30])))
            .collect();
        for p in classifier.predict_images(&images, 4, None).unwrap() {
            let names: Vec<&str> = p.heads[0].top.iter().map(|l| l.label.as_str()).collect();
            assert_eq!(names.len(), 2, "{names:?}");
            assert!(names.iter().all(|n| !n.starts_with(EXEMPLAR_PREFIX)));
        }
    }
}
