//! The copy verdict's calibration rule, the same for every catalogue: edited copies of a sample of
//! the catalogue's own pictures (read back from their source files, or their thumbnails when the
//! files are gone) are reviewed against it, and one threshold is chosen for the precision asked
//! (`CatalogLogic::calibrate_copies`).

use super::embed::EmbedImages;
use animelens_index::{CatalogLogic, CopyVerdict, Item, Result, Storage};
use animelens_models::copies::edits::calibration_uploads;
use animelens_models::CopyViews;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;

/// Pictures whose edited copies calibrate the copy threshold by default.
pub const COPY_CALIBRATION_SAMPLE: usize = 48;

/// Calibrates the copy threshold of `catalog` for `precision` on edited copies of `sample`
/// pictures drawn with `seed`; `progress` is told after each picture.
pub fn calibrate_copies(
    catalog: &dyn Storage,
    embedder: &dyn EmbedImages,
    precision: f32,
    sample: usize,
    seed: u64,
    progress: &dyn Fn(),
) -> Result<CopyVerdict> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = catalog.live_ids()?;
    let items: Vec<Item> = ids
        .choose_multiple(&mut rng, sample)
        .filter_map(|id| catalog.get(*id).transpose())
        .collect::<Result<_>>()?;
    catalog.calibrate_copies(&items, precision, |item| {
        progress();
        let original = picture_of(catalog, embedder, item)?;
        let uploads: Vec<RgbImage> = calibration_uploads(&original, &mut rng)
            .iter()
            .map(|bytes| embedder.decode(bytes).ok())
            .collect::<Option<_>>()?;
        embedder
            .embed(uploads, Some(CopyViews::Query))
            .into_iter()
            .map(|p| p.map(|p| p.copies).ok())
            .collect()
    })
}

/// A catalogued picture: its source file when it is still there (a video frame's source is its
/// video, so it has its thumbnail), else its thumbnail.
fn picture_of(catalog: &dyn Storage, embedder: &dyn EmbedImages, item: &Item) -> Option<RgbImage> {
    let from_file = match item.frame {
        None => std::fs::read(&item.source).ok(),
        Some(_) => None,
    };
    let bytes = match from_file {
        Some(b) => b,
        None => catalog.thumbnail(item.id).ok().flatten()?,
    };
    embedder.decode(&bytes).ok()
}
