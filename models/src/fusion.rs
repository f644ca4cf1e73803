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
//!
//! The two generic parts can be *whitened* before they are fused ([`crate::whitening`]): their
//! raw cosines are high between any two pictures, because a few directions every picture shares
//! dominate them. A PCA whitening learned from pictures of the catalogue's domain
//! (`animelens learn-whitening`, no labels needed) rescales every direction to the same spread,
//! and names unseen characters far better (BENCHMARKS, "Whitening the generic parts"). The
//! embedding is left as trained: it carries the seen characters and the open-set score. A card
//! marks a whitened part (`whitened: true`); its whitening lives beside the checkpoint, and its
//! digest joins the fingerprint tag.

use crate::architecture::Architecture;
use crate::palette::{palette, PaletteFusion, PALETTE_DIM};
use crate::unit_vector::normalised;
use crate::whitening::{Whitening, WhiteningError};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The block fused by default: the best-transferring one in the layer probe.
pub const DEFAULT_BLOCK: &str = "inception4b";

/// How a model's character vector includes a mid-level block (recorded in the model card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockFusion {
    /// Name of the Inception block whose pooled output is fused (`inception4b`).
    pub block: String,
    /// Share of the fused cosine the block contributes, in `[0, 1]`.
    pub weight: f32,
    /// Whether the pooled block is whitened before it is fused (see the module notes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whitened: bool,
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

/// The whole fusion of a model: which parts join the embedding, their weights, where the
/// block is tapped in the architecture it was checked against, and the parts' whitenings once
/// loaded ([`Fusion::with_whitenings`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fusion {
    /// The palette part.
    pub palette: Option<PaletteFusion>,
    /// The mid-level block part.
    pub block: Option<BlockFusion>,
    tap: Option<BlockTap>,
    whitenings: PartWhitenings,
}

/// The learned whitenings of the parts a card marks `whitened`.
#[derive(Debug, Clone, Default, PartialEq)]
struct PartWhitenings {
    /// Of the pooled block (input: its channels).
    block: Option<Arc<Whitening>>,
    /// Of the palette (input: [`PALETTE_DIM`]).
    palette: Option<Arc<Whitening>>,
}

/// File kinds of the parts' whitenings beside a checkpoint ([`Whitening::path_for`]).
pub const BLOCK_WHITENING: &str = "block-whitening";
/// See [`BLOCK_WHITENING`].
pub const PALETTE_WHITENING: &str = "palette-whitening";

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
            whitenings: PartWhitenings::default(),
        })
    }

    /// The fusion with the whitenings of the parts marked `whitened`, read from beside
    /// `checkpoint`, or why one is missing or does not fit its part.
    pub fn with_whitenings(self, checkpoint: &Path) -> Result<Self, WhiteningError> {
        let read = |kind: &str, input: usize| -> Result<Arc<Whitening>, WhiteningError> {
            let path = Whitening::path_for(checkpoint, kind);
            if !path.exists() {
                return Err(WhiteningError::File {
                    path,
                    message: "the model card marks this part whitened but the file is missing; \
                              write it with `animelens learn-whitening`"
                        .into(),
                });
            }
            let whitening = Whitening::load(&path)?;
            if whitening.input_dim() != input {
                return Err(WhiteningError::File {
                    path,
                    message: format!(
                        "it whitens {}-d vectors but the part has {input}; learn it again \
                         with `animelens learn-whitening`",
                        whitening.input_dim()
                    ),
                });
            }
            Ok(Arc::new(whitening))
        };
        let block = match (&self.block, self.tap) {
            (Some(b), Some(tap)) if b.whitened => Some(read(BLOCK_WHITENING, tap.channels)?),
            _ => None,
        };
        let palette = match self.palette {
            Some(p) if p.whitened => Some(read(PALETTE_WHITENING, PALETTE_DIM)?),
            _ => None,
        };
        Ok(Self {
            whitenings: PartWhitenings { block, palette },
            ..self
        })
    }

    /// A block's pooled activation as it enters the fusion before whitening (unit length): what
    /// `learn-whitening` learns the block's whitening from. The palette part is
    /// [`palette`] itself.
    pub fn block_part(pooled: Vec<f32>) -> Vec<f32> {
        normalised(pooled)
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
        let whitened = |w: &Option<Arc<Whitening>>, raw: usize| w.as_ref().map_or(raw, |w| w.dim);
        let block = whitened(&self.whitenings.block, self.tap.map_or(0, |t| t.channels));
        let palette = whitened(
            &self.whitenings.palette,
            self.palette.map_or(0, |_| PALETTE_DIM),
        );
        architecture.embedding_dim + block + palette
    }

    /// A tag that changes whenever the fused vectors would: appended to the weights'
    /// fingerprint. Without a block it is the palette's tag alone, as cards before block fusion
    /// wrote it, so their catalogues stay valid; a whitened part adds `wh` and its whitening's
    /// digest.
    pub fn fingerprint_tag(&self) -> String {
        let whitened = |w: &Option<Arc<Whitening>>| {
            w.as_ref()
                .map(|w| format!("wh{}", w.digest()))
                .unwrap_or_default()
        };
        let block = self.block.as_ref().map(|b| {
            format!(
                "+{}w{:.3}{}",
                b.block,
                b.weight,
                whitened(&self.whitenings.block)
            )
        });
        let palette = self.palette.map(|p| {
            format!(
                "+palette{PALETTE_DIM}w{:.3}{}",
                p.weight,
                whitened(&self.whitenings.palette)
            )
        });
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
                let whiten = |v: Vec<f32>, w: &Option<Arc<Whitening>>| match w {
                    Some(w) => w.apply(&v),
                    None => v,
                };
                let mut parts = vec![(e, we)];
                if self.block.is_some() {
                    let block = Self::block_part(block.unwrap_or_default());
                    parts.push((whiten(block, &self.whitenings.block), wb));
                }
                if let Some(p) = self.palette {
                    parts.push((whiten(palette(picture), &self.whitenings.palette), p.weight));
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
            whitened: false,
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
                whitened: false,
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

    #[test]
    fn whitened_parts_are_read_from_beside_the_checkpoint_and_change_vector_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("best");
        let whitened_block = Some(BlockFusion {
            whitened: true,
            ..block(0.3).unwrap()
        });
        let whitened_palette = Some(PaletteFusion {
            whitened: true,
            ..PaletteFusion::new(0.3).unwrap()
        });
        let fusion = Fusion::new(whitened_palette, whitened_block, &GOOGLENET).unwrap();
        let missing = fusion.clone().with_whitenings(&checkpoint).unwrap_err();
        assert!(missing.to_string().contains("learn-whitening"), "{missing}");

        // Whitenings learned from varied rows; the palette's from a wrong length first.
        let rows = |d: usize| -> Vec<Vec<f32>> {
            (0..40)
                .map(|i| {
                    (0..d)
                        .map(|j| ((i * 7 + j * 3) % 11) as f32 + 1.0)
                        .collect()
                })
                .collect()
        };
        let learn = |d| Whitening::learn_principal(&rows(d), 1.0).unwrap();
        learn(512)
            .save(&Whitening::path_for(&checkpoint, BLOCK_WHITENING))
            .unwrap();
        learn(10)
            .save(&Whitening::path_for(&checkpoint, PALETTE_WHITENING))
            .unwrap();
        let wrong = fusion.clone().with_whitenings(&checkpoint).unwrap_err();
        assert!(wrong.to_string().contains("10-d"), "{wrong}");
        learn(PALETTE_DIM)
            .save(&Whitening::path_for(&checkpoint, PALETTE_WHITENING))
            .unwrap();
        let loaded = fusion.clone().with_whitenings(&checkpoint).unwrap();
        assert_eq!(loaded.dim(&GOOGLENET), 1024 + 512 + PALETTE_DIM);
        let tag = loaded.fingerprint_tag();
        assert!(tag.starts_with("+inception4bw0.300wh") && tag.contains("+palette144w0.300wh"));
        assert_ne!(tag, fusion.fingerprint_tag());

        let pictures = vec![RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40]))];
        let embeddings = vec![vec![1.0; 1024]];
        let blocks = vec![(0..512).map(|j| (j % 5) as f32).collect::<Vec<f32>>()];
        let raw = fusion.vectors(embeddings.clone(), blocks.clone(), &pictures);
        let white = loaded.vectors(embeddings, blocks, &pictures);
        assert_eq!(raw[0].len(), white[0].len());
        assert!((cosine(&white[0], &white[0]) - 1.0).abs() < 1e-5);
        // The embedding's share is untouched; the parts after it are not.
        assert!((raw[0][0] - white[0][0]).abs() < 1e-6);
        let moved = raw[0][1024..]
            .iter()
            .zip(&white[0][1024..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-3, "the whitened parts differ from the raw ones");
        // A card that marks nothing whitened never looks for the files.
        let plain = Fusion::new(PaletteFusion::new(0.3).ok(), block(0.3), &GOOGLENET).unwrap();
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            plain
                .clone()
                .with_whitenings(&empty.path().join("x"))
                .unwrap(),
            plain
        );
    }
}
