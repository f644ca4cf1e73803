//! Border trimming (trace.moe's `cutBorders`): letterbox bars and flat frames added around a
//! picture carry no content and shift everything a descriptor sees, so both the catalogue and the
//! queries are described without them.

use image::{imageops, RgbImage};

/// A row or column belongs to a border when every pixel is within this distance (per channel) of
/// the border's colour.
const TOLERANCE: u8 = 24;
/// Keep at least this fraction of each side, so a flat picture is never trimmed to nothing.
const MIN_KEPT: f32 = 0.3;

/// The picture without flat borders of one colour on any of its four sides. A picture without such
/// borders comes back unchanged.
pub fn trim_borders(img: &RgbImage) -> RgbImage {
    let (left, top, width, height) = content_box(img);
    if (width, height) == img.dimensions() {
        return img.clone();
    }
    imageops::crop_imm(img, left, top, width, height).to_image()
}

/// `(left, top, width, height)` of the part inside the flat borders.
pub fn content_box(img: &RgbImage) -> (u32, u32, u32, u32) {
    let (w, h) = img.dimensions();
    if w < 4 || h < 4 {
        return (0, 0, w, h);
    }
    let min_w = ((w as f32 * MIN_KEPT).ceil() as u32).max(1);
    let min_h = ((h as f32 * MIN_KEPT).ceil() as u32).max(1);
    let close = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| {
        a.0.iter().zip(b.0).all(|(x, y)| x.abs_diff(y) <= TOLERANCE)
    };
    let flat_row = |y: u32, reference: &image::Rgb<u8>, x0: u32, x1: u32| {
        (x0..x1).all(|x| close(img.get_pixel(x, y), reference))
    };
    let flat_col = |x: u32, reference: &image::Rgb<u8>, y0: u32, y1: u32| {
        (y0..y1).all(|y| close(img.get_pixel(x, y), reference))
    };
    let (mut top, mut bottom) = (0, h);
    let top_colour = *img.get_pixel(w / 2, 0);
    while bottom - top > min_h && flat_row(top, &top_colour, 0, w) {
        top += 1;
    }
    let bottom_colour = *img.get_pixel(w / 2, h - 1);
    while bottom - top > min_h && flat_row(bottom - 1, &bottom_colour, 0, w) {
        bottom -= 1;
    }
    let (mut left, mut right) = (0, w);
    let left_colour = *img.get_pixel(0, h / 2);
    while right - left > min_w && flat_col(left, &left_colour, top, bottom) {
        left += 1;
    }
    let right_colour = *img.get_pixel(w - 1, h / 2);
    while right - left > min_w && flat_col(right - 1, &right_colour, top, bottom) {
        right -= 1;
    }
    (left, top, right - left, bottom - top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 % 251) as u8,
                (y * 13 % 241) as u8,
                ((x * y) % 239) as u8,
            ])
        })
    }

    #[test]
    fn letterbox_bars_and_frames_are_removed() {
        let inner = picture(40, 30);
        let mut boxed = RgbImage::from_pixel(40, 50, Rgb([0, 0, 0]));
        imageops::replace(&mut boxed, &inner, 0, 10);
        assert_eq!(content_box(&boxed), (0, 10, 40, 30));
        assert_eq!(trim_borders(&boxed), inner);

        let mut framed = RgbImage::from_pixel(60, 50, Rgb([250, 250, 250]));
        imageops::replace(&mut framed, &inner, 12, 9);
        assert_eq!(content_box(&framed), (12, 9, 40, 30));
    }

    #[test]
    fn a_picture_without_borders_and_a_flat_one_keep_their_content() {
        let plain = picture(40, 30);
        assert_eq!(trim_borders(&plain), plain);
        let flat = RgbImage::from_pixel(50, 50, Rgb([9, 9, 9]));
        let (_, _, w, h) = content_box(&flat);
        assert!(w >= 15 && h >= 15, "{w}x{h}");
    }
}
