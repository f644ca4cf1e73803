//! A non-learned image descriptor, the baseline the trained embedding is compared with: the image
//! (transparency composited onto white) shrunk to 8×8 pixels, RGB scaled to [-1, 1], as a 192-d
//! L2-normalised vector. It implements [`Embedder`] so that it goes through exactly the same
//! catalogue code path as the network's embeddings.

use animelens_models::preprocess::resize_square;
use animelens_models::{CopyViews, EmbedError, Embedder, Prediction};
use image::RgbImage;

/// Side of the colour layout grid.
const GRID: usize = 8;

/// The 8×8 colour-layout descriptor.
pub struct ColourLayout;

impl Embedder for ColourLayout {
    fn dim(&self) -> usize {
        GRID * GRID * 3
    }

    fn fingerprint(&self) -> String {
        "colour-layout-8x8-v1".into()
    }

    fn heads(&self) -> Vec<String> {
        Vec::new()
    }

    fn predict_images(
        &self,
        images: &[RgbImage],
        _top_k: usize,
        _copies: Option<CopyViews>,
    ) -> Result<Vec<Prediction>, EmbedError> {
        images
            .iter()
            .map(|image| {
                let small = resize_square(image, GRID);
                let v: Vec<f32> = small
                    .as_raw()
                    .iter()
                    .map(|&c| c as f32 / 127.5 - 1.0)
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm < 1e-6 {
                    return Err(EmbedError::Inference(
                        "an image is uniformly mid-grey: its colour layout has no direction".into(),
                    ));
                }
                Ok(Prediction {
                    copies: Vec::new(),
                    heads: Vec::new(),
                    embedding: v.iter().map(|x| x / norm).collect(),
                })
            })
            .collect()
    }
}
