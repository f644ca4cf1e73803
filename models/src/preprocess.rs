//! From encoded image bytes to the network's input: decode (with limits on pixels, aspect ratio
//! and allocation against decompression bombs), composite transparency onto white, shrink to a
//! working size with an integer box filter, resize, optional histogram equalisation and YCrCb
//! conversion, and normalisation to [-1, 1] in CHW order.

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// Default pixel limit for decoding: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Most times an image's longer side may exceed its shorter one. A 39,000,000 × 1 strip is under
/// the pixel limit but no picture, and resampling it would need a float buffer of its full width.
pub const MAX_ASPECT_RATIO: u64 = 32;

/// Longest side a decoded image keeps: larger images are shrunk right after decoding (an
/// integer area average, no float intermediate), so only one full-size image exists at a time
/// and everything downstream (network input ≤ 224 px, thumbnails) works on at most this size.
pub const WORKING_SIDE: u32 = 1024;

/// Bytes the decoder may allocate per pixel of the pixel limit: one 8-bit RGBA image.
const DECODE_BYTES_PER_PIXEL: u64 = 4;

/// Colour space the network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorSpace {
    /// Plain RGB.
    #[default]
    Rgb,
    /// Luma + chroma (ITU-R BT.601 full range), the guide's optional input.
    Ycrcb,
}

/// How images become tensors; stored in the model card so inference matches training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Square input side in pixels (64..=224).
    pub input_size: usize,
    /// Colour space.
    pub color: ColorSpace,
    /// Equalise the luma histogram before normalising.
    pub equalize: bool,
}

impl Preprocessing {
    /// RGB, no equalisation, at `input_size` px.
    pub fn new(input_size: usize) -> Self {
        Self {
            input_size,
            color: ColorSpace::Rgb,
            equalize: false,
        }
    }
}

/// Formats AnimeLens decodes.
pub const SUPPORTED_FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
];

/// Why an image could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ImageError {
    /// Not a decodable image.
    #[error("not a readable image ({0}); use a JPEG, PNG, WebP, GIF or BMP file")]
    Decode(String),
    /// A recognised image format that AnimeLens does not decode.
    #[error("images in {0} format are not supported; send JPEG, PNG, WebP, GIF or BMP")]
    Unsupported(String),
    /// Header claims more pixels than allowed.
    #[error(
        "image is {width}x{height} pixels, over the limit of {limit} pixels; send a smaller image"
    )]
    TooLarge {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// Pixel limit.
        limit: u64,
    },
}

/// The width and height an image's header claims, after checking that AnimeLens decodes its
/// format (and that a JPEG is complete).
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    match reader.format() {
        None => return Err(ImageError::Decode("unknown image format".into())),
        Some(f) if !SUPPORTED_FORMATS.contains(&f) => {
            return Err(ImageError::Unsupported(format!("{f:?}")))
        }
        // The JPEG decoder pads a cut-off file with grey instead of failing.
        Some(ImageFormat::Jpeg) if !has_jpeg_end(bytes) => {
            return Err(ImageError::Decode(
                "the JPEG data is truncated (no end-of-image marker); send the complete file"
                    .into(),
            ))
        }
        Some(_) => {}
    }
    reader
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))
}

/// Decodes `bytes` and returns RGB with any transparency composited onto white, shrunk to at
/// most [`WORKING_SIDE`] px on its longer side. Refuses, from the header and before decoding,
/// images over `max_pixels` or with sides more than [`MAX_ASPECT_RATIO`] times apart; the
/// decoder may allocate at most one 8-bit RGBA image of `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let (width, height) = dimensions(bytes)?;
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    let (long, short) = (width.max(height) as u64, width.min(height) as u64);
    if long > short.max(1) * MAX_ASPECT_RATIO {
        return Err(ImageError::Decode(format!(
            "the image is {width}x{height} pixels: its longer side is more than \
             {MAX_ASPECT_RATIO} times its shorter one; crop it to the picture"
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(max_pixels.saturating_mul(DECODE_BYTES_PER_PIXEL));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(shrink_to_working_side(flatten_onto_white(img)))
}

/// Shrinks `img` so that its longer side is at most [`WORKING_SIDE`] (aspect ratio kept).
fn shrink_to_working_side(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) <= WORKING_SIDE {
        return img;
    }
    let scale = WORKING_SIDE as f64 / w.max(h) as f64;
    let fit = |side: u32| ((side as f64 * scale).round() as u32).clamp(1, WORKING_SIDE);
    image::imageops::thumbnail(&img, fit(w), fit(h))
}

/// Whether a JPEG's last KiB holds the end-of-image marker 0xFFD9 (some writers append padding).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    bytes[bytes.len().saturating_sub(1024)..]
        .windows(2)
        .any(|w| w == [0xFF, 0xD9])
}

/// Composites transparent pixels onto a white background, reusing the decoded buffer where it
/// can (8-bit RGB is returned as is, 8-bit RGBA is blended in place).
pub fn flatten_onto_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba: RgbaImage = img.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut data = rgba.into_raw();
    let pixels = data.len() / 4;
    // Pixel i moves from 4i to 3i: forward order never overwrites a pixel not yet read.
    for i in 0..pixels {
        let a = data[4 * i + 3] as f32 / 255.0;
        for c in 0..3 {
            let v = data[4 * i + c] as f32;
            data[3 * i + c] = (v * a + 255.0 * (1.0 - a)).round() as u8;
        }
    }
    data.truncate(3 * pixels);
    RgbImage::from_raw(width, height, data).expect("3 bytes per pixel")
}

/// Resizes to `size`×`size` (anime face crops and sprites are near-square: stretch, no crop).
pub fn resize_square(img: &RgbImage, size: usize) -> RgbImage {
    if img.width() as usize == size && img.height() as usize == size {
        return img.clone();
    }
    image::imageops::resize(
        img,
        size as u32,
        size as u32,
        image::imageops::FilterType::Triangle,
    )
}

/// A JPEG copy of `img` whose longer side is at most `max_side` (aspect ratio kept; smaller
/// images keep their size), for catalogue thumbnails.
pub fn jpeg_thumbnail(img: &RgbImage, max_side: u32, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (w, h) = (img.width().max(1), img.height().max(1));
    let scale = max_side as f32 / w.max(h) as f32;
    let fit = |side: u32| ((side as f32 * scale).round() as u32).max(1);
    let resized;
    let thumb = if scale >= 1.0 {
        img
    } else {
        resized = image::imageops::thumbnail(img, fit(w), fit(h));
        &resized
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(thumb)
        .map_err(|e| ImageError::Decode(format!("cannot encode the thumbnail: {e}")))?;
    Ok(jpeg)
}

/// Hex SHA-256 of an image file's bytes (exact duplicates share it).
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// BT.601 full-range RGB → (Y, Cr, Cb), each in 0..=255.
fn rgb_to_ycrcb(p: [u8; 3]) -> [f32; 3] {
    let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [y, (r - y) * 0.713 + 128.0, (b - y) * 0.564 + 128.0]
}

/// (Y, Cr, Cb) → RGB, clamped.
fn ycrcb_to_rgb(p: [f32; 3]) -> [f32; 3] {
    let (y, cr, cb) = (p[0], p[1] - 128.0, p[2] - 128.0);
    let r = y + 1.403 * cr;
    let b = y + 1.773 * cb;
    let g = (y - 0.299 * r - 0.114 * b) / 0.587;
    [r.clamp(0., 255.), g.clamp(0., 255.), b.clamp(0., 255.)]
}

/// Lookup table that equalises a 256-bin histogram.
fn equalisation_table(values: impl Iterator<Item = u8>) -> [f32; 256] {
    let mut hist = [0u32; 256];
    let mut total = 0u32;
    for v in values {
        hist[v as usize] += 1;
        total += 1;
    }
    let mut table = [0f32; 256];
    let first = hist
        .iter()
        .position(|&h| h > 0)
        .map(|i| hist[i])
        .unwrap_or(0);
    let mut cdf = 0u32;
    for (i, h) in hist.iter().enumerate() {
        cdf += h;
        let denom = (total - first).max(1) as f32;
        table[i] = ((cdf.saturating_sub(first)) as f32 / denom * 255.0).clamp(0.0, 255.0);
    }
    table
}

/// Writes `img` (already `size`×`size`) into `out` as normalised CHW floats in [-1, 1].
pub fn write_chw(img: &RgbImage, pre: &Preprocessing, out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    let table = pre
        .equalize
        .then(|| equalisation_table(img.pixels().map(|p| rgb_to_ycrcb(p.0)[0].round() as u8)));
    for (i, p) in img.pixels().enumerate() {
        let mut ycc = rgb_to_ycrcb(p.0);
        if let Some(t) = &table {
            ycc[0] = t[ycc[0].round().clamp(0., 255.) as usize];
        }
        let v = match (pre.color, table.is_some()) {
            (ColorSpace::Ycrcb, _) => ycc,
            (ColorSpace::Rgb, true) => ycrcb_to_rgb(ycc),
            (ColorSpace::Rgb, false) => [p.0[0] as f32, p.0[1] as f32, p.0[2] as f32],
        };
        for (c, value) in v.iter().enumerate() {
            out[c * plane + i] = value / 127.5 - 1.0;
        }
    }
}

/// Stacks square images of side `pre.input_size` into an `(N, 3, S, S)` tensor.
pub fn batch_tensor(
    images: &[RgbImage],
    pre: &Preprocessing,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let s = pre.input_size;
    let mut data = vec![0f32; images.len() * 3 * s * s];
    for (img, out) in images.iter().zip(data.chunks_mut(3 * s * s)) {
        let resized;
        let img = if img.width() as usize == s && img.height() as usize == s {
            img
        } else {
            resized = resize_square(img, s);
            &resized
        };
        write_chw(img, pre, out);
    }
    Tensor::from_vec(data, (images.len(), 3, s, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(img: DynamicImage) -> Vec<u8> {
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn thumbnails_fit_the_limit_and_keep_the_aspect_ratio() {
        let jpeg = jpeg_thumbnail(&RgbImage::new(200, 100), 50, 80).unwrap();
        let thumb = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (50, 25));
        let small = jpeg_thumbnail(&RgbImage::new(20, 10), 50, 80).unwrap();
        assert_eq!(image::load_from_memory(&small).unwrap().width(), 20);
        assert_eq!(content_hash(b"abc").len(), 64);
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
        let rgb = decode(
            &png_bytes(DynamicImage::ImageRgba8(img)),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    }

    #[test]
    fn refuses_garbage_and_oversized_images() {
        assert!(matches!(
            decode(b"not an image", 100),
            Err(ImageError::Decode(_))
        ));
        let big = png_bytes(DynamicImage::ImageRgb8(RgbImage::new(20, 20)));
        assert!(matches!(
            decode(&big, 100),
            Err(ImageError::TooLarge { width: 20, .. })
        ));
        let truncated = &big[..big.len() / 2];
        assert!(decode(truncated, DEFAULT_MAX_PIXELS).is_err());
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(64, 64))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert!(decode(&jpeg, DEFAULT_MAX_PIXELS).is_ok());
        let cut = decode(&jpeg[..jpeg.len() - 40], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
        let tiff = b"II*\x00\x08\x00\x00\x00rest";
        assert!(matches!(
            decode(tiff, DEFAULT_MAX_PIXELS),
            Err(ImageError::Unsupported(_))
        ));
    }

    #[test]
    fn refuses_strips_and_shrinks_large_images_to_the_working_side() {
        let strip = png_bytes(DynamicImage::ImageRgb8(RgbImage::new(3300, 100)));
        let err = decode(&strip, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(err.to_string().contains("32 times"), "{err}");
        let wide = png_bytes(DynamicImage::ImageRgb8(RgbImage::new(3000, 100)));
        let img = decode(&wide, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(img.dimensions(), (WORKING_SIDE, 34));
        assert_eq!(dimensions(&wide).unwrap(), (3000, 100));
        let small = png_bytes(DynamicImage::ImageRgb8(RgbImage::new(300, 200)));
        assert_eq!(
            decode(&small, DEFAULT_MAX_PIXELS).unwrap().dimensions(),
            (300, 200)
        );
    }

    #[test]
    fn half_transparent_pixels_blend_with_white() {
        let img = RgbaImage::from_fn(3, 2, |x, _| {
            image::Rgba([0, 100, 200, [255, 0, 128][x as usize]])
        });
        let rgb = flatten_onto_white(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.get_pixel(0, 1).0, [0, 100, 200]);
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 177, 227]);
    }

    #[test]
    fn normalises_to_minus_one_one() {
        let img = RgbImage::from_fn(2, 2, |x, _| {
            if x == 0 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let t = batch_tensor(&[img], &Preprocessing::new(2), &Device::Cpu).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], 1.0);
    }

    #[test]
    fn ycrcb_round_trips_and_equalisation_spreads_values() {
        for p in [[0u8, 0, 0], [255, 255, 255], [200, 30, 90]] {
            let back = ycrcb_to_rgb(rgb_to_ycrcb(p));
            for c in 0..3 {
                assert!((back[c] - p[c] as f32).abs() < 1.5, "{p:?} -> {back:?}");
            }
        }
        let t = equalisation_table([100u8, 100, 101, 102].into_iter());
        assert_eq!(t[100], 0.0);
        assert_eq!(t[102], 255.0);
    }
}
