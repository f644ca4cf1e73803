//! The seeded edit generator of `bench copies` and of the copy threshold's calibration: the edits a
//! copyright review meets in uploads (re-compression, mirroring, rotation, captions, downscaling,
//! crops, letterboxing, colour shifts, greyscale, pasting into another picture), each at a stated
//! strength. Random choices (crop position, caption marks, paste position) come from the caller's
//! seeded generator, so a benchmark run is reproducible.

use crate::augment::rotate;
use crate::instance_views::{jitter_colour, recompress};
use image::{imageops, imageops::FilterType, Rgb, RgbImage};
use rand::Rng;
use serde::Serialize;

/// One edit at one strength.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "edit", rename_all = "snake_case")]
pub enum Edit {
    /// JPEG re-compression at this quality.
    Jpeg {
        /// 1..=100.
        quality: u8,
    },
    /// Left-right mirror.
    Mirror,
    /// Rotation about the centre, same canvas, edge fill.
    Rotate {
        /// Degrees, counter-clockwise.
        degrees: f32,
    },
    /// A dark caption bar with light text marks over the top or bottom of the picture.
    Caption {
        /// Bar height as a fraction of the picture's height.
        height: f32,
    },
    /// Downscaled so that the longer side has this many pixels.
    Downscale {
        /// Longer side in pixels.
        side: u32,
    },
    /// A random crop keeping this fraction of the area (same aspect ratio).
    Crop {
        /// Kept area fraction.
        area: f32,
    },
    /// Black bars above and below, each this fraction of the picture's height.
    Letterbox {
        /// Bar height as a fraction of the picture's height.
        bar: f32,
    },
    /// Hue rotation and a saturation boost.
    ColourShift {
        /// Hue rotation in turns.
        hue: f32,
    },
    /// Luma only.
    Greyscale,
    /// Scaled to this fraction of another picture's sides and pasted onto it at a random place.
    Paste {
        /// Side fraction of the background picture.
        scale: f32,
    },
}

impl Edit {
    /// A short name with the strength, e.g. `crop 50%`.
    pub fn name(&self) -> String {
        match self {
            Edit::Jpeg { quality } => format!("jpeg q{quality}"),
            Edit::Mirror => "mirror".into(),
            Edit::Rotate { degrees } => format!("rotate {degrees}°"),
            Edit::Caption { height } => format!("caption {:.0}%", height * 100.0),
            Edit::Downscale { side } => format!("downscale {side}px"),
            Edit::Crop { area } => format!("crop {:.0}%", area * 100.0),
            Edit::Letterbox { bar } => format!("letterbox {:.0}%", bar * 100.0),
            Edit::ColourShift { hue } => format!("colour shift {hue}"),
            Edit::Greyscale => "greyscale".into(),
            Edit::Paste { scale } => format!("paste {:.0}%", scale * 100.0),
        }
    }

    /// Whether the copy target covers this edit (pasting into another picture is reported only).
    pub fn is_targeted(&self) -> bool {
        !matches!(self, Edit::Paste { .. })
    }

    /// Applies the edit; `background` is the picture a paste goes onto (the edit is skipped,
    /// leaving the picture as it is, when there is none).
    pub fn apply<R: Rng>(
        &self,
        img: &RgbImage,
        background: Option<&RgbImage>,
        rng: &mut R,
    ) -> RgbImage {
        let (w, h) = img.dimensions();
        match *self {
            Edit::Jpeg { quality } => recompress(img, quality),
            Edit::Mirror => imageops::flip_horizontal(img),
            Edit::Rotate { degrees } => rotate(img, degrees),
            Edit::Caption { height } => caption(img, height, rng),
            Edit::Downscale { side } => {
                let scale = side as f32 / w.max(h) as f32;
                let (nw, nh) = (
                    ((w as f32 * scale).round() as u32).max(1),
                    ((h as f32 * scale).round() as u32).max(1),
                );
                imageops::resize(img, nw, nh, FilterType::Triangle)
            }
            Edit::Crop { area } => {
                let side = area.clamp(0.01, 1.0).sqrt();
                let (cw, ch) = (
                    ((w as f32 * side).round() as u32).clamp(1, w),
                    ((h as f32 * side).round() as u32).clamp(1, h),
                );
                let x = rng.random_range(0..=w - cw);
                let y = rng.random_range(0..=h - ch);
                imageops::crop_imm(img, x, y, cw, ch).to_image()
            }
            Edit::Letterbox { bar } => {
                let pad = (h as f32 * bar).round() as u32;
                let mut out = RgbImage::from_pixel(w, h + 2 * pad, Rgb([0, 0, 0]));
                imageops::replace(&mut out, img, 0, pad as i64);
                out
            }
            Edit::ColourShift { hue } => {
                let mut out = img.clone();
                jitter_colour(&mut out, 1.0, 1.0, 1.3, hue);
                out
            }
            Edit::Greyscale => {
                let mut out = img.clone();
                jitter_colour(&mut out, 1.0, 1.0, 0.0, 0.0);
                out
            }
            Edit::Paste { scale } => match background {
                Some(bg) => paste(img, bg, scale, rng),
                None => img.clone(),
            },
        }
    }
}

/// The edits of the copy benchmark, each at the strength the issue lists and some at a second,
/// milder or harder one.
pub fn standard_edits() -> Vec<Edit> {
    vec![
        Edit::Jpeg { quality: 15 },
        Edit::Mirror,
        Edit::Rotate { degrees: 15.0 },
        Edit::Caption { height: 0.18 },
        Edit::Downscale { side: 40 },
        Edit::Crop { area: 0.7 },
        Edit::Crop { area: 0.5 },
        Edit::Letterbox { bar: 0.2 },
        Edit::ColourShift { hue: 0.25 },
        Edit::Greyscale,
        Edit::Paste { scale: 0.5 },
    ]
}

/// The uploads a copy calibration reviews for one catalogued picture, PNG-encoded as uploads
/// arrive: one copy per targeted edit of [`standard_edits`], then the picture itself (reviewed
/// with itself left out, as a non-copy).
pub fn calibration_uploads<R: Rng>(img: &RgbImage, rng: &mut R) -> Vec<Vec<u8>> {
    let mut uploads: Vec<RgbImage> = standard_edits()
        .iter()
        .filter(|e| e.is_targeted())
        .map(|e| e.apply(img, None, rng))
        .collect();
    uploads.push(img.clone());
    uploads
        .iter()
        .map(|u| {
            let mut out = Vec::new();
            u.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
                .expect("PNG encoding into memory succeeds");
            out
        })
        .collect()
}

/// A dark bar over the top or bottom `height` of the picture with light, text-like marks.
fn caption<R: Rng>(img: &RgbImage, height: f32, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    let bar = ((h as f32 * height).round() as u32).clamp(1, h);
    let top = if rng.random_bool(0.5) { 0 } else { h - bar };
    let mut out = img.clone();
    for y in top..top + bar {
        for x in 0..w {
            out.put_pixel(x, y, Rgb([20, 20, 24]));
        }
    }
    // Glyphs: short light strokes on one text line in the middle of the bar.
    let line_top = top + bar / 4;
    let line_h = (bar / 2).max(1);
    let mut x = (w / 16).max(1);
    while x + 2 < w - w / 16 {
        let glyph_w = rng.random_range(2..=(w / 20).max(3));
        if rng.random_bool(0.8) {
            for gy in line_top..(line_top + line_h).min(h) {
                for gx in x..(x + glyph_w).min(w) {
                    if rng.random_bool(0.6) {
                        out.put_pixel(gx, gy, Rgb([240, 240, 240]));
                    }
                }
            }
        }
        x += glyph_w + rng.random_range(1..=3);
    }
    out
}

/// `img` scaled to `scale` of the background's sides (aspect kept) and pasted onto it.
fn paste<R: Rng>(img: &RgbImage, bg: &RgbImage, scale: f32, rng: &mut R) -> RgbImage {
    let (bw, bh) = bg.dimensions();
    let fit = (bw as f32 * scale / img.width() as f32).min(bh as f32 * scale / img.height() as f32);
    let (pw, ph) = (
        ((img.width() as f32 * fit).round() as u32).clamp(1, bw),
        ((img.height() as f32 * fit).round() as u32).clamp(1, bh),
    );
    let small = imageops::resize(img, pw, ph, FilterType::Triangle);
    let mut out = bg.clone();
    let x = rng.random_range(0..=bw - pw);
    let y = rng.random_range(0..=bh - ph);
    imageops::replace(&mut out, &small, x as i64, y as i64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn picture() -> RgbImage {
        RgbImage::from_fn(100, 80, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, 90]))
    }

    #[test]
    fn the_generator_is_deterministic_under_a_seed() {
        let img = picture();
        for edit in standard_edits() {
            let a = edit.apply(&img, Some(&img), &mut StdRng::seed_from_u64(3));
            let b = edit.apply(&img, Some(&img), &mut StdRng::seed_from_u64(3));
            assert_eq!(a, b, "{}", edit.name());
        }
    }

    #[test]
    fn each_edit_produces_what_it_says() {
        let img = picture();
        let mut rng = StdRng::seed_from_u64(1);
        let mirrored = Edit::Mirror.apply(&img, None, &mut rng);
        assert_eq!(mirrored.get_pixel(0, 5), img.get_pixel(99, 5));
        let small = Edit::Downscale { side: 40 }.apply(&img, None, &mut rng);
        assert_eq!(small.dimensions(), (40, 32));
        let crop = Edit::Crop { area: 0.5 }.apply(&img, None, &mut rng);
        assert_eq!(crop.dimensions(), (71, 57));
        let boxed = Edit::Letterbox { bar: 0.2 }.apply(&img, None, &mut rng);
        assert_eq!(boxed.dimensions(), (100, 112));
        assert_eq!(boxed.get_pixel(50, 0), &Rgb([0, 0, 0]));
        assert_eq!(boxed.get_pixel(50, 16), img.get_pixel(50, 0));
        let grey = Edit::Greyscale.apply(&img, None, &mut rng);
        assert!(grey.pixels().all(|p| p[0].abs_diff(p[2]) <= 1));
        let captioned = Edit::Caption { height: 0.2 }.apply(&img, None, &mut rng);
        let dark_rows = (0..80)
            .filter(|&y| captioned.get_pixel(0, y) == &Rgb([20, 20, 24]))
            .count();
        assert_eq!(dark_rows, 16);
        let bg = RgbImage::from_pixel(200, 200, Rgb([255, 0, 0]));
        let pasted = Edit::Paste { scale: 0.5 }.apply(&img, Some(&bg), &mut rng);
        assert_eq!(pasted.dimensions(), (200, 200));
        let red = pasted.pixels().filter(|p| **p == Rgb([255, 0, 0])).count();
        assert_eq!(red, 200 * 200 - 100 * 80);
    }
}
