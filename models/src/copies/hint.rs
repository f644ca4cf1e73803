//! "The edit it looks like": what a copy's best match says about how the upload was made from
//! the original. The match's views tell mirroring (the upload's mirrored view matched), cropping
//! (a region of the original matched) and downscaling (the low-resolution view matched); the
//! upload itself tells borders (trimmed before describing) and greyscale (equal channels where
//! the original has colour).

use super::borders::content_box;
use super::views::CATALOGUE_VIEWS;
use image::RgbImage;

/// A channel spread at most this large counts as grey.
const GREY_SPREAD: u8 = 6;

/// What an upload shows besides its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadTraits {
    /// It has flat borders (letterbox bars, a frame).
    pub bordered: bool,
    /// It is greyscale.
    pub greyscale: bool,
}

impl UploadTraits {
    /// Looks at a decoded upload.
    pub fn of(img: &RgbImage) -> Self {
        let (_, _, w, h) = content_box(img);
        Self {
            bordered: (w, h) != img.dimensions(),
            greyscale: is_greyscale(img),
        }
    }
}

/// Whether every pixel of `img` has (nearly) equal channels.
pub fn is_greyscale(img: &RgbImage) -> bool {
    img.pixels().all(|p| {
        let (lo, hi) = (p.0.iter().min(), p.0.iter().max());
        matches!((lo, hi), (Some(lo), Some(hi)) if hi - lo <= GREY_SPREAD)
    })
}

/// The edits a match suggests, as short words (`mirrored`, `cropped`, `downscaled`,
/// `bordered`, `greyscale`); empty when it looks like the original as it is (perhaps
/// re-compressed or recoloured, which the views cannot tell).
pub fn edit_hint(
    query_view: usize,
    catalogue_view: usize,
    upload: UploadTraits,
) -> Vec<&'static str> {
    let mut hint = Vec::new();
    if query_view == 1 {
        hint.push("mirrored");
    }
    match catalogue_view {
        1..=5 => hint.push("cropped"),
        v if v + 1 == CATALOGUE_VIEWS => hint.push("downscaled"),
        _ => {}
    }
    if upload.bordered {
        hint.push("bordered");
    }
    if upload.greyscale {
        hint.push("greyscale");
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn the_views_and_the_upload_name_the_edits() {
        let plain = UploadTraits::default();
        assert!(edit_hint(0, 0, plain).is_empty());
        assert_eq!(edit_hint(1, 3, plain), ["mirrored", "cropped"]);
        assert_eq!(edit_hint(0, 6, plain), ["downscaled"]);
        let grey = RgbImage::from_fn(20, 20, |x, y| Rgb([(x * 9 + y) as u8; 3]));
        let mut boxed = RgbImage::from_pixel(20, 30, Rgb([0, 0, 0]));
        image::imageops::replace(&mut boxed, &grey, 0, 5);
        let traits = UploadTraits::of(&boxed);
        assert!(traits.bordered && traits.greyscale);
        let colour = RgbImage::from_fn(20, 20, |x, y| Rgb([x as u8 * 10, y as u8 * 12, 200]));
        assert_eq!(UploadTraits::of(&colour), UploadTraits::default());
    }
}
