//! The character vector: the network's embedding fused with descriptors that generalise better
//! to characters the network never saw.
//!
//! The embedding is the last layer a classifier trained on a few dozen characters shaped, and it
//! is the most specialised: it learns what tells *those* characters apart. Two other views of
//! the same picture need less of that training and transfer better (BENCHMARKS,
//! "Generalisation" and "Which layer generalises"):
//! - the palette ([`crate::palette`]), which needs no training at all;
//! - a mid-level block's globally average-pooled activation (`inception4b`'s 512 channels by
//!   default), taken in the same forward pass as the embedding: parts and textures rather than
//!   the trained characters' identities.
//!
//! The character vector is `[√w_e·embedding, √w_b·block, √w_p·palette]` with each part of unit
//! length and `w_e = 1 − w_b − w_p`, L2-normalised; its cosine is
//! `w_e·cos(embedding) + w_b·cos(block) + w_p·cos(palette)`. The weights live in the model card
//! (`eval --palette-weight --block-weight --calibrate` records them), and the fingerprint is
//! tagged with them so that a catalogue built with other weights asks to be re-indexed.

use crate::architecture::Architecture;
use crate::palette::{palette, PaletteFusion, PALETTE_DIM};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The block fused by default: the best-transferring one in the layer probe.
pub const DEFAULT_BLOCK: &str = "inception4b";

/// How a model's character vector includes a mid-level block (recorded in the model card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockFusion {
    /// Name of the Inception block whose pooled output is fused (`inception4b`).
    pub block: String,
    /// Share of the fused cosine the block contributes, in `[0, 1]`.
    pub weight: f32,
}

/// Fusion weights that cannot make a character vector.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FusionError {
    /// A weight outside `[0, 1]`, or weights summing above 1.
    #[error("the palette and block weights must each be between 0 and 1 and sum to at most 1, got palette {palette} and block {block}")]
    Weights {
        /// Palette weight.
        palette: f32,
        /// Block weight.
        block: f32,
    },
    /// The card names a block the architecture does not have.
    #[error("the architecture has no Inception block named {block:?}; use one of {known}")]
    UnknownBlock {
        /// Name given.
        block: String,
        /// Names the architecture has.
        known: String,
    },
}

/// The whole fusion of a model: which parts join the embedding, their weights, and where the
/// block is tapped in the architecture it was checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fusion {
    /// The palette part.
    pub palette: Option<PaletteFusion>,
    /// The mid-level block part.
    pub block: Option<BlockFusion>,
    tap: Option<BlockTap>,
}

/// Where a fused block sits in the network: what the forward pass taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockTap {
    /// How many Inception blocks have run when it is taken (1 = the first block).
    pub blocks: usize,
    /// Its channels: the length of its pooled vector.
    pub channels: usize,
}

impl Fusion {
    /// A fusion of these parts for `architecture`, or why their weights or block cannot make
    /// one. A zero-weight part is dropped, so that "weight 0" and "no part" are the same vector
    /// and fingerprint.
    pub fn new(
        palette: Option<PaletteFusion>,
        block: Option<BlockFusion>,
        architecture: &Architecture,
    ) -> Result<Self, FusionError> {
        let (wp, wb) = (
            palette.map_or(0.0, |p| p.weight),
            block.as_ref().map_or(0.0, |b| b.weight),
        );
        let unit = 0.0..=1.0;
        if !unit.contains(&wp) || !unit.contains(&wb) || wp + wb > 1.0 + 1e-6 {
            return Err(FusionError::Weights {
                palette: wp,
                block: wb,
            });
        }
        let block = block.filter(|b| b.weight > 0.0);
        let tap = match &block {
            None => None,
            Some(b) => match architecture.inception_block(&b.block) {
                Some((blocks, channels)) => Some(BlockTap { blocks, channels }),
                None => {
                    return Err(FusionError::UnknownBlock {
                        block: b.block.clone(),
                        known: architecture.inception_blocks().join(", "),
                    })
                }
            },
        };
        Ok(Self {
            palette: palette.filter(|p| p.weight > 0.0),
            block,
            tap,
        })
    }

    /// Where the block is tapped; `None` without a block part.
    pub fn tap(&self) -> Option<BlockTap> {
        self.tap
    }

    /// Share of the fused cosine left to the embedding.
    pub fn embedding_weight(&self) -> f32 {
        let wp = self.palette.map_or(0.0, |p| p.weight);
        let wb = self.block.as_ref().map_or(0.0, |b| b.weight);
        (1.0 - wp - wb).max(0.0)
    }

    /// Length of the character vector for `architecture` (the one the fusion was made for).
    pub fn dim(&self, architecture: &Architecture) -> usize {
        let block = self.tap.map_or(0, |t| t.channels);
        let palette = self.palette.map_or(0, |_| PALETTE_DIM);
        architecture.embedding_dim + block + palette
    }

    /// A tag that changes whenever the fused vectors would: appended to the weights'
    /// fingerprint. Without a block it is the palette's tag alone, as cards before block fusion
    /// wrote it, so their catalogues stay valid.
    pub fn fingerprint_tag(&self) -> String {
        let block = self
            .block
            .as_ref()
            .map(|b| format!("+{}w{:.3}", b.block, b.weight));
        let palette = self
            .palette
            .map(|p| format!("+palette{PALETTE_DIM}w{:.3}", p.weight));
        format!(
            "{}{}",
            block.unwrap_or_default(),
            palette.unwrap_or_default()
        )
    }

    /// The character vectors of `pictures` from their unit embeddings and, with a block part,
    /// the block's pooled activations (one row per picture; ignored without a block part).
    pub fn vectors(
        &self,
        embeddings: Vec<Vec<f32>>,
        blocks: Vec<Vec<f32>>,
        pictures: &[RgbImage],
    ) -> Vec<Vec<f32>> {
        if self.palette.is_none() && self.block.is_none() {
            return embeddings;
        }
        let we = self.embedding_weight();
        let wb = self.block.as_ref().map_or(0.0, |b| b.weight);
        let mut blocks = blocks.into_iter();
        embeddings
            .into_iter()
            .zip(pictures)
            .map(|(e, picture)| (e, blocks.next(), picture))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(e, block, picture)| {
                let mut parts = vec![(e, we)];
                if self.block.is_some() {
                    parts.push((normalised(block.unwrap_or_default()), wb));
                }
                if let Some(p) = self.palette {
                    parts.push((palette(picture), p.weight));
                }
                fuse(&parts)
            })
            .collect()
    }
}

/// `[√w₁·v₁, √w₂·v₂, …]`, L2-normalised: for unit parts, its cosine with another such vector is
/// the weighted sum of the parts' cosines.
pub fn fuse(parts: &[(Vec<f32>, f32)]) -> Vec<f32> {
    normalised(
        parts
            .iter()
            .flat_map(|(v, w)| {
                let scale = w.sqrt();
                v.iter().map(move |x| x * scale)
            })
            .collect(),
    )
}

/// `v / |v|` (a zero vector stays zero).
pub(crate) fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::GOOGLENET;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn block(weight: f32) -> Option<BlockFusion> {
        Some(BlockFusion {
            block: DEFAULT_BLOCK.into(),
            weight,
        })
    }

    #[test]
    fn fusion_weights_the_parts_cosines() {
        // Unit parts at cosines 0.6, 0.0 and 1.0: the fused cosine is their weighted sum.
        let a = fuse(&[
            (vec![1.0, 0.0], 0.3),
            (vec![1.0, 0.0], 0.2),
            (vec![0.0, 1.0], 0.5),
        ]);
        let b = fuse(&[
            (vec![0.6, 0.8], 0.3),
            (vec![0.0, 1.0], 0.2),
            (vec![0.0, 1.0], 0.5),
        ]);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-6);
        assert!((cosine(&a, &b) - (0.3 * 0.6 + 0.5)).abs() < 1e-6);
    }

    #[test]
    fn weights_must_be_shares_of_one() {
        let palette = |w| Some(PaletteFusion::new(w).unwrap());
        assert!(Fusion::new(palette(0.5), block(0.2), &GOOGLENET).is_ok());
        assert_eq!(
            Fusion::new(palette(0.7), block(0.4), &GOOGLENET),
            Err(FusionError::Weights {
                palette: 0.7,
                block: 0.4
            })
        );
        assert!(Fusion::new(None, block(-0.1), &GOOGLENET).is_err());
        assert!(Fusion::new(None, block(1.5), &GOOGLENET).is_err());
        let fusion = Fusion::new(palette(0.5), block(0.2), &GOOGLENET).unwrap();
        assert!((fusion.embedding_weight() - 0.3).abs() < 1e-6);
    }

    #[test]
    fn the_block_is_found_in_the_architecture_and_sizes_the_vector() {
        let fusion = Fusion::new(None, block(0.2), &GOOGLENET).unwrap();
        let tap = fusion.tap().unwrap();
        let blocks = GOOGLENET.inception_blocks();
        assert_eq!(blocks[tap.blocks - 1], DEFAULT_BLOCK);
        assert_eq!(tap.channels, 512);
        assert_eq!(fusion.dim(&GOOGLENET), 1024 + 512);
        let wrong = Fusion::new(
            None,
            Some(BlockFusion {
                block: "inception9z".into(),
                weight: 0.2,
            }),
            &GOOGLENET,
        );
        let error = wrong.unwrap_err().to_string();
        assert!(error.contains("inception9z") && error.contains("inception4b"));
    }

    #[test]
    fn the_fingerprint_tag_names_every_part_and_keeps_the_palette_only_form() {
        let palette = Some(PaletteFusion::new(0.5).unwrap());
        assert_eq!(
            Fusion::new(palette, None, &GOOGLENET)
                .unwrap()
                .fingerprint_tag(),
            format!("+palette{PALETTE_DIM}w0.500")
        );
        assert_eq!(
            Fusion::new(palette, block(0.2), &GOOGLENET)
                .unwrap()
                .fingerprint_tag(),
            format!("+inception4bw0.200+palette{PALETTE_DIM}w0.500")
        );
        assert_eq!(Fusion::default().fingerprint_tag(), "");
        assert_eq!(
            Fusion::new(None, block(0.0), &GOOGLENET).unwrap(),
            Fusion::default()
        );
    }

    #[test]
    fn vectors_join_the_parts_in_order() {
        let pictures = vec![RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40])); 2];
        let embeddings = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let blocks = vec![vec![3.0, 4.0, 0.0], vec![3.0, 4.0, 0.0]];
        let palette = Some(PaletteFusion::new(0.5).unwrap());
        let fusion = Fusion::new(palette, block(0.2), &GOOGLENET).unwrap();
        let v = fusion.vectors(embeddings.clone(), blocks, &pictures);
        assert_eq!(v[0].len(), 2 + 3 + PALETTE_DIM);
        // Embeddings orthogonal, blocks and palettes identical: cosine 0.2 + 0.5.
        assert!((cosine(&v[0], &v[1]) - 0.7).abs() < 1e-5);
        assert!(
            (v[0][2] - 0.6 * 0.2f32.sqrt()).abs() < 1e-5,
            "block part unit length"
        );
        assert_eq!(
            Fusion::default().vectors(embeddings.clone(), Vec::new(), &pictures),
            embeddings
        );
    }
}
