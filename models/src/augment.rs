//! The guide's training augmentation: random rotation (±20°), width/height shift (20%),
//! shear (0.2), zoom (0.2) and horizontal flip, applied as one affine warp with bilinear
//! sampling and nearest-edge fill (Keras `ImageDataGenerator` semantics). Seeded by the caller.

use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Ranges of the random transforms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Maximum rotation in degrees (uniform in ±).
    pub rotation_deg: f32,
    /// Maximum shift as a fraction of the side (uniform in ±).
    pub shift: f32,
    /// Maximum shear factor (uniform in ±).
    pub shear: f32,
    /// Zoom range: each axis scaled by a factor in [1 - zoom, 1 + zoom].
    pub zoom: f32,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            rotation_deg: 20.0,
            shift: 0.2,
            shear: 0.2,
            zoom: 0.2,
            hflip: true,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            rotation_deg: 0.0,
            shift: 0.0,
            shear: 0.0,
            zoom: 0.0,
            hflip: false,
        }
    }
}

fn symmetric<R: Rng>(rng: &mut R, max: f32) -> f32 {
    if max > 0.0 {
        rng.random_range(-max..=max)
    } else {
        0.0
    }
}

/// Returns a randomly transformed copy of `img`, same size.
pub fn augment<R: Rng>(img: &RgbImage, cfg: &AugmentConfig, rng: &mut R) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let theta = symmetric(rng, cfg.rotation_deg).to_radians();
    let (tx, ty) = (symmetric(rng, cfg.shift) * w, symmetric(rng, cfg.shift) * h);
    let shear = symmetric(rng, cfg.shear);
    let (zx, zy) = (
        1.0 + symmetric(rng, cfg.zoom),
        1.0 + symmetric(rng, cfg.zoom),
    );
    let flip = cfg.hflip && rng.random_bool(0.5);
    warp(img, theta, (tx, ty), shear, (zx, zy), flip)
}

/// `img` rotated by `degrees` about its centre, same size, nearest-edge fill (the copy
/// benchmark's rotation edit).
pub fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    warp(
        img,
        degrees.to_radians(),
        (0.0, 0.0),
        0.0,
        (1.0, 1.0),
        false,
    )
}

/// One affine warp: rotation `theta`, shift, shear, per-axis zoom and an optional mirror.
fn warp(
    img: &RgbImage,
    theta: f32,
    (tx, ty): (f32, f32),
    shear: f32,
    (zx, zy): (f32, f32),
    flip: bool,
) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    // Inverse map: output pixel (relative to the centre) -> source pixel. Zoom > 1 samples a
    // larger source area (zooms out), as Keras does.
    let (cos, sin) = (theta.cos(), theta.sin());
    let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let mut u = x as f32 - cx;
        let v = y as f32 - cy;
        if flip {
            u = -u;
        }
        let (ru, rv) = (cos * u - sin * v, sin * u + cos * v);
        let su = ru + shear * rv;
        let (sx, sy) = (su * zx + cx + tx, rv * zy + cy + ty);
        sample_bilinear(img, sx, sy)
    })
}

/// Bilinear sample with coordinates clamped to the image (nearest-edge fill).
fn sample_bilinear(img: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx: i64, yy: i64| img.get_pixel(xx as u32, yy as u32).0;
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    let mut out = [0u8; 3];
    for i in 0..3 {
        let top = a[i] as f32 * (1.0 - fx) + b[i] as f32 * fx;
        let bottom = c[i] as f32 * (1.0 - fx) + d[i] as f32 * fx;
        out[i] = (top * (1.0 - fy) + bottom * fy).round() as u8;
    }
    Rgb(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn gradient_image() -> RgbImage {
        RgbImage::from_fn(32, 24, |x, y| Rgb([(x * 8) as u8, (y * 10) as u8, 128]))
    }

    #[test]
    fn deterministic_under_a_seed_and_keeps_size() {
        let img = gradient_image();
        let cfg = AugmentConfig::default();
        let a = augment(&img, &cfg, &mut StdRng::seed_from_u64(7));
        let b = augment(&img, &cfg, &mut StdRng::seed_from_u64(7));
        let c = augment(&img, &cfg, &mut StdRng::seed_from_u64(8));
        assert_eq!(a.dimensions(), img.dimensions());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn no_augmentation_is_the_identity() {
        let img = gradient_image();
        let out = augment(&img, &AugmentConfig::none(), &mut StdRng::seed_from_u64(1));
        assert_eq!(out, img);
    }
}
