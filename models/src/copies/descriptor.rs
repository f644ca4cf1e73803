//! The copy descriptor: generalised-mean (GeM) pooling of a mid-level feature map of the same
//! network that embeds characters, L2-normalised, optionally centred on a background mean.
//!
//! The character embedding comes from the last block, trained to map every drawing of a character
//! to one point; the blocks before it still describe *this* drawing (strokes, layout, shading), so
//! pooling them tells two pictures of one character apart while surviving re-compression, resizing
//! and colour changes. GeM (p = 3) sits between average and max pooling and is the usual choice
//! for instance retrieval (Radenović et al., 2018). Greyscale input makes it blind to colour edits.
//! A learned whitening (`crate::whitening`), when the model has one, then spreads unrelated pictures
//! apart and shortens the descriptor.

use crate::architecture::Architecture;
use crate::folded::{FeatureMap, FoldedNetwork};
use crate::preprocess::{batch_tensor, Preprocessing};
use crate::whitening::Whitening;
use candle_core::{Device, Result};
use image::{buffer::ConvertBuffer, GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// Views per forward pass.
const BATCH: usize = 32;

/// How the copy descriptor is computed; catalogues record it with their model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyDescriptorSpec {
    /// Square input side the views are resized to.
    pub input_size: usize,
    /// The Inception block whose output is pooled (one of `Architecture::inception_blocks`).
    pub layer: String,
    /// GeM exponent (1 = average pooling, large = max pooling).
    pub gem_p: f32,
    /// Describe the luma only, so colour edits and greyscale copies look like the original.
    pub greyscale: bool,
}

impl Default for CopyDescriptorSpec {
    fn default() -> Self {
        Self {
            input_size: 128,
            layer: "inception4e".into(),
            gem_p: 3.0,
            greyscale: true,
        }
    }
}

/// Computes copy descriptors with a folded network.
#[derive(Debug, Clone)]
pub struct CopyDescriber {
    spec: CopyDescriptorSpec,
    /// Inception blocks run before pooling.
    blocks: usize,
    /// Applied after pooling, when the model has one.
    whitening: Option<Whitening>,
}

impl CopyDescriber {
    /// A describer for `spec` on networks of `architecture`; fails when the layer is not one of
    /// its Inception blocks.
    pub fn new(
        spec: CopyDescriptorSpec,
        architecture: &Architecture,
    ) -> std::result::Result<Self, String> {
        let blocks = architecture
            .inception_blocks()
            .iter()
            .position(|n| *n == spec.layer)
            .map(|i| i + 1)
            .ok_or_else(|| {
                format!(
                    "{:?} is not an Inception block of {}",
                    spec.layer, architecture.name
                )
            })?;
        Ok(Self {
            spec,
            blocks,
            whitening: None,
        })
    }

    /// Whitens the pooled descriptors with `whitening` (learned for this model and spec).
    pub fn with_whitening(mut self, whitening: Whitening) -> Self {
        self.whitening = Some(whitening);
        self
    }

    /// Without whitening (the raw pooled descriptor).
    pub fn without_whitening(mut self) -> Self {
        self.whitening = None;
        self
    }

    /// Whether it whitens.
    pub fn is_whitened(&self) -> bool {
        self.whitening.is_some()
    }

    /// Length of the descriptors it returns for a network whose pooled block has `channels`.
    pub fn output_dim(&self, channels: usize) -> usize {
        self.whitening.as_ref().map_or(channels, |w| w.dim)
    }

    /// The spec.
    pub fn spec(&self) -> &CopyDescriptorSpec {
        &self.spec
    }

    /// One L2-normalised descriptor per view, in order.
    pub fn describe(&self, net: &FoldedNetwork, views: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let pre = Preprocessing::new(self.spec.input_size);
        let mut out = Vec::with_capacity(views.len());
        for chunk in views.chunks(BATCH) {
            let grey;
            let chunk = if self.spec.greyscale {
                grey = chunk.iter().map(luma_rgb).collect::<Vec<_>>();
                &grey[..]
            } else {
                chunk
            };
            let x = batch_tensor(chunk, &pre, &Device::Cpu)?;
            let map = net.feature_map(&x, self.blocks)?;
            out.extend(
                gem(&map, self.spec.gem_p)
                    .into_iter()
                    .map(|d| self.finish(d)),
            );
        }
        Ok(out)
    }

    /// Normalises, then whitens when there is a whitening of the right input length.
    fn finish(&self, mut d: Vec<f32>) -> Vec<f32> {
        normalise(&mut d);
        match self.whitening.as_ref().filter(|w| w.input_dim() == d.len()) {
            Some(w) => w.apply(&d),
            None => d,
        }
    }
}

/// The luma of `img` in all three channels.
fn luma_rgb(img: &RgbImage) -> RgbImage {
    let grey: GrayImage = img.convert();
    grey.convert()
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// GeM pooling of a channel-major `(C, N, H, W)` map: `(mean over H·W of x^p)^(1/p)` per channel
/// and image (activations are post-ReLU, so non-negative).
pub fn gem(map: &FeatureMap, p: f32) -> Vec<Vec<f32>> {
    let area = map.height * map.width;
    (0..map.batch)
        .map(|n| {
            (0..map.channels)
                .map(|c| {
                    let start = (c * map.batch + n) * area;
                    let plane = &map.values[start..start + area];
                    let mean = plane.iter().map(|v| v.max(1e-6).powf(p)).sum::<f32>() / area as f32;
                    mean.powf(1.0 / p)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::GOOGLENET;

    #[test]
    fn gem_is_the_mean_at_p_one_and_approaches_the_max_for_large_p() {
        // Two channels, two images, 2x2 planes.
        let map = FeatureMap {
            values: vec![
                1., 2., 3., 4., /* c0 n0 */ 0., 0., 0., 8., /* c0 n1 */
                5., 5., 5., 5., /* c1 n0 */ 1., 1., 1., 1., /* c1 n1 */
            ],
            channels: 2,
            batch: 2,
            height: 2,
            width: 2,
        };
        let avg = gem(&map, 1.0);
        assert!((avg[0][0] - 2.5).abs() < 1e-4 && (avg[1][0] - 2.0).abs() < 1e-4);
        assert!((avg[0][1] - 5.0).abs() < 1e-4 && (avg[1][1] - 1.0).abs() < 1e-4);
        let sharp = gem(&map, 40.0);
        assert!((sharp[1][0] - 8.0).abs() < 0.4, "{}", sharp[1][0]);
    }

    #[test]
    fn unknown_layers_are_refused_and_descriptors_are_normalised() {
        let bad = CopyDescriptorSpec {
            layer: "fc".into(),
            ..CopyDescriptorSpec::default()
        };
        assert!(CopyDescriber::new(bad, &GOOGLENET).is_err());
        let describer = CopyDescriber::new(CopyDescriptorSpec::default(), &GOOGLENET).unwrap();
        let d = describer.finish(vec![3.0, 4.0]);
        assert!(
            (d[0] - 0.6).abs() < 1e-6 && (d[1] - 0.8).abs() < 1e-6,
            "{d:?}"
        );
        assert_eq!(describer.output_dim(832), 832);
    }
}
