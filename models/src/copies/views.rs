//! Which views of a picture get a copy descriptor. A catalogued picture is described whole, by
//! five regions of 70% of its sides (four corners and the centre, each about half its area), so an
//! upload that keeps only part of it still meets a region it covers, and whole at thumbnail
//! resolution, so a tiny upload (blurry once enlarged) meets a view as blurry as itself; an upload is described as it
//! came and mirrored, so a mirrored copy meets its original. Both sides trim flat borders first.

use super::borders::trim_borders;
use image::{imageops, RgbImage};

/// Side of the regions as a fraction of the picture's sides.
pub const REGION_SIDE: f32 = 0.7;
/// Longer side of the low-resolution view, in pixels.
pub const LOW_RESOLUTION_SIDE: u32 = 40;
/// Views per catalogued picture: the whole, five regions and the whole at low resolution.
pub const CATALOGUE_VIEWS: usize = 7;

/// The views a catalogued picture is described by: the whole picture, then the top-left,
/// top-right, bottom-left, bottom-right and centre regions, then the whole at low resolution.
pub fn catalogue_views(img: &RgbImage) -> Vec<RgbImage> {
    let img = trim_borders(img);
    let (w, h) = img.dimensions();
    let (rw, rh) = (
        ((w as f32 * REGION_SIDE).round() as u32).clamp(1, w),
        ((h as f32 * REGION_SIDE).round() as u32).clamp(1, h),
    );
    let (right, bottom) = (w - rw, h - rh);
    let corners = [
        (0, 0),
        (right, 0),
        (0, bottom),
        (right, bottom),
        (right / 2, bottom / 2),
    ];
    let mut views = Vec::with_capacity(CATALOGUE_VIEWS);
    views.extend(
        corners
            .iter()
            .map(|&(x, y)| imageops::crop_imm(&img, x, y, rw, rh).to_image()),
    );
    let scale = LOW_RESOLUTION_SIDE as f32 / w.max(h) as f32;
    if scale < 1.0 {
        let (lw, lh) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        views.push(imageops::resize(
            &img,
            lw,
            lh,
            imageops::FilterType::Triangle,
        ));
    } else {
        views.push(img.clone());
    }
    views.insert(0, img);
    views
}

/// The one view a video frame is described by: the whole frame, borders trimmed (screenshots are
/// rarely crops of a frame; mirrored screenshots are matched by the query's mirrored view).
pub fn frame_view(img: &RgbImage) -> RgbImage {
    trim_borders(img)
}

/// The views an upload is described by: as it came (borders trimmed) and mirrored.
pub fn query_views(img: &RgbImage) -> [RgbImage; 2] {
    let img = trim_borders(img);
    let mirrored = imageops::flip_horizontal(&img);
    [img, mirrored]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn six_catalogue_views_and_a_mirrored_query_view() {
        let img = RgbImage::from_fn(100, 80, |x, y| Rgb([x as u8, y as u8, 7]));
        let views = catalogue_views(&img);
        assert_eq!(views.len(), CATALOGUE_VIEWS);
        assert_eq!(views[0], img);
        assert!(views[1..6].iter().all(|v| v.dimensions() == (70, 56)));
        assert_eq!(views[6].dimensions(), (40, 32));
        assert_eq!(views[1].get_pixel(0, 0), &Rgb([0, 0, 7]));
        assert_eq!(views[4].get_pixel(69, 55), &Rgb([99, 79, 7]));
        assert_eq!(views[5].get_pixel(0, 0), &Rgb([15, 12, 7]));
        let [plain, mirrored] = query_views(&img);
        assert_eq!(plain, img);
        assert_eq!(mirrored.get_pixel(0, 0), &Rgb([99, 0, 7]));
    }
}
