//! The palette descriptor, and its fusion with the network's embedding.
//!
//! An anime character is drawn by many artists in many styles, but their hair, eye and outfit
//! colours belong to the design and stay. A network trained on a few dozen characters learns
//! what tells *those* apart and transfers poorly to characters it never saw, while a coarse
//! colour histogram needs no training at all: on the four holoen characters held out of
//! training it names them 5-shot better than any embedding we trained on the other fourteen
//! (BENCHMARKS, "Generalisation"). The two fail differently (the histogram cannot tell two
//! blondes apart, the network cannot place a stranger), so the product's character vector
//! fuses both (see [`crate::fusion`]).
//!
//! The histogram: the picture resized to 64×64, hue–saturation–value in 8×3×3 bins, for its top
//! and bottom halves separately (hair above, face and clothes below): 144 bins, each half's
//! counts normalised to sum 1, square-rooted (the Hellinger kernel, so that one large flat
//! background does not drown the rest) and the whole L2-normalised.

use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Side of the square the picture is resized to before counting.
const SIDE: u32 = 64;
/// Hue, saturation and value bins.
const BINS: [usize; 3] = [8, 3, 3];
/// Horizontal bands counted separately (top, bottom).
const BANDS: usize = 2;
/// Length of a palette descriptor.
pub const PALETTE_DIM: usize = BINS[0] * BINS[1] * BINS[2] * BANDS;

/// How a model's character vector includes the palette (recorded in the model card).
/// A card whose weight is out of range fails to load rather than yield NaN vectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FusionFields")]
pub struct PaletteFusion {
    /// Share `w` of the fused cosine that the palette contributes, in `[0, 1]` (1: the palette
    /// alone, a baseline).
    pub weight: f32,
    /// Whether the palette is whitened before it is fused (the whitening lives beside the
    /// checkpoint; `animelens learn-whitening` writes it, see [`crate::whitening`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub whitened: bool,
}

/// A palette weight outside `[0, 1]`.
#[derive(Debug, thiserror::Error)]
#[error("the palette weight must be between 0 and 1, got {0}")]
pub struct PaletteWeightError(pub f32);

#[derive(Deserialize)]
struct FusionFields {
    weight: f32,
    #[serde(default)]
    whitened: bool,
}

impl TryFrom<FusionFields> for PaletteFusion {
    type Error = PaletteWeightError;

    fn try_from(fields: FusionFields) -> Result<Self, Self::Error> {
        Ok(Self {
            whitened: fields.whitened,
            ..Self::new(fields.weight)?
        })
    }
}

impl PaletteFusion {
    /// A fusion of weight `weight`, or why it cannot be one.
    pub fn new(weight: f32) -> Result<Self, PaletteWeightError> {
        if (0.0..=1.0).contains(&weight) {
            Ok(Self {
                weight,
                whitened: false,
            })
        } else {
            Err(PaletteWeightError(weight))
        }
    }
}

/// The palette descriptor of a picture (length [`PALETTE_DIM`], unit L2 norm).
pub fn palette(picture: &RgbImage) -> Vec<f32> {
    let small = imageops::resize(picture, SIDE, SIDE, FilterType::Triangle);
    let band_rows = SIDE as usize / BANDS;
    let per_band = BINS[0] * BINS[1] * BINS[2];
    let mut hist = vec![0f32; PALETTE_DIM];
    for (_, y, p) in small.enumerate_pixels() {
        let band = (y as usize / band_rows).min(BANDS - 1);
        let [h, s, v] = hsv(p.0);
        let bin = |value: f32, n: usize| ((value * n as f32) as usize).min(n - 1);
        let index = (bin(h, BINS[0]) * BINS[1] + bin(s, BINS[1])) * BINS[2] + bin(v, BINS[2]);
        hist[band * per_band + index] += 1.0;
    }
    for band in hist.chunks_mut(per_band) {
        let total: f32 = band.iter().sum();
        band.iter_mut()
            .for_each(|c| *c = (*c / total.max(1.0)).sqrt());
    }
    crate::unit_vector::normalised(hist)
}

/// Hue (turns), saturation and value, each in `[0, 1]`; hue 0 for greys.
fn hsv([r, g, b]: [u8; 3]) -> [f32; 3] {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    let s = if max > 0.0 { chroma / max } else { 0.0 };
    let h = if chroma == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / chroma).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / chroma + 2.0) / 6.0
    } else {
        ((r - g) / chroma + 4.0) / 6.0
    };
    [h, s, max]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn two_tone(top: [u8; 3], bottom: [u8; 3]) -> RgbImage {
        // 64 rows, as the descriptor counts them, so that no resized row blends the two.
        RgbImage::from_fn(30, 64, |_, y| Rgb(if y < 32 { top } else { bottom }))
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn hsv_matches_hand_values() {
        assert_eq!(hsv([255, 0, 0]), [0.0, 1.0, 1.0]);
        assert_eq!(hsv([0, 255, 0]), [1.0 / 3.0, 1.0, 1.0]);
        assert_eq!(hsv([0, 0, 255]), [2.0 / 3.0, 1.0, 1.0]);
        let [h, s, v] = hsv([255, 0, 255]);
        assert!((h - 5.0 / 6.0).abs() < 1e-6 && s == 1.0 && v == 1.0);
        assert_eq!(hsv([128, 128, 128])[..2], [0.0, 0.0]);
    }

    #[test]
    fn a_two_tone_picture_fills_one_bin_per_band() {
        // Pure red above, pure blue below: one bin in each band, each at 1/√2 after the
        // square root and the normalisation.
        let p = palette(&two_tone([255, 0, 0], [0, 0, 255]));
        assert_eq!(p.len(), PALETTE_DIM);
        let lit: Vec<(usize, f32)> = p
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, x)| *x > 1e-6)
            .collect();
        let red = 2 * 3 + 2; // hue bin 0, saturation bin 2, value bin 2
        let blue = 72 + (5 * 3 + 2) * 3 + 2; // bottom band, hue 2/3 → bin 5
        assert_eq!(lit.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [red, blue]);
        assert!(lit.iter().all(|(_, x)| (x - 0.5f32.sqrt()).abs() < 1e-5));
    }

    #[test]
    fn the_palette_tells_colours_and_their_place_apart_but_not_size() {
        let pink_blue = palette(&two_tone([240, 120, 170], [40, 60, 200]));
        let larger = palette(&imageops::resize(
            &two_tone([240, 120, 170], [40, 60, 200]),
            90,
            120,
            FilterType::Nearest,
        ));
        let swapped = palette(&two_tone([40, 60, 200], [240, 120, 170]));
        let green = palette(&two_tone([40, 200, 60], [40, 200, 60]));
        assert!(cosine(&pink_blue, &larger) > 0.99);
        assert!(cosine(&pink_blue, &swapped) < 0.01);
        assert!(cosine(&pink_blue, &green) < 0.01);
    }

    #[test]
    fn a_weight_outside_the_unit_range_is_refused() {
        assert!(PaletteFusion::new(1.01).is_err() && PaletteFusion::new(-0.1).is_err());
        let card_value: Result<PaletteFusion, _> = serde_json::from_str(r#"{"weight": 5.0}"#);
        assert!(card_value
            .unwrap_err()
            .to_string()
            .contains("between 0 and 1"));
    }
}
