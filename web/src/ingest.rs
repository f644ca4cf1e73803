//! Turning an image and its prediction into a catalogue item (thumbnail, content hash, size), and
//! ingesting an image gallery folder (`<split>/<character>/*.jpg`) at first start, with progress
//! in the log; the gallery's `val` images then calibrate the open-set threshold, and edited copies
//! of a sample of its pictures the copy verdict's threshold.

use crate::inference::InferencePool;
use actix_web::web::Bytes;
use animelens_index::copy_verdict::DEFAULT_PRECISION;
use animelens_index::{Catalog, CatalogError, NewItem, PRIMARY_LEVEL};
use animelens_models::copies::edits::calibration_uploads;
use animelens_models::preprocess::{content_hash, decode, dimensions, jpeg_thumbnail};
use animelens_models::{CopyViews, Prediction};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest side of stored thumbnails, in pixels.
pub const THUMBNAIL_SIZE: u32 = 192;

/// Images embedded per network call while ingesting a gallery.
const GALLERY_BATCH: usize = 16;

/// Gallery pictures whose edited copies calibrate the copy threshold.
const COPY_CALIBRATION_SAMPLE: usize = 48;

/// Why a gallery could not be ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The gallery folder could not be listed.
    #[error("cannot read gallery folder {}: {source}; check the `gallery` setting", path.display())]
    Read {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The catalogue refused the items.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Metadata given with an uploaded image.
#[derive(Debug, Clone, Default)]
pub struct ItemMeta {
    /// Where the image came from (file name or URL).
    pub source: String,
    /// Label per level.
    pub labels: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
}

/// Builds the catalogue item for `bytes` (already predicted): a JPEG thumbnail, the SHA-256 of
/// the bytes, and the pixel size. Blocking (decodes the image).
pub fn new_item(
    bytes: &[u8],
    prediction: Prediction,
    meta: ItemMeta,
    max_pixels: u64,
) -> Result<NewItem, String> {
    let image = decode(bytes, max_pixels).map_err(|e| e.to_string())?;
    // The decoded image is shrunk to the working size; the item records the picture's own size.
    let (width, height) = dimensions(bytes).map_err(|e| e.to_string())?;
    let jpeg = jpeg_thumbnail(&image, THUMBNAIL_SIZE, 85).map_err(|e| e.to_string())?;
    Ok(NewItem {
        source: meta.source,
        labels: meta.labels,
        tags: meta.tags,
        width,
        height,
        content_hash: content_hash(bytes),
        thumbnail: jpeg,
        vector: prediction.embedding,
        copies: prediction.copies,
    })
}

/// Image files under `root`, sorted, with the metadata their place gives them: the parent folder
/// is the character, a folder above it (such as `train` or `val`) becomes a `split:NAME` tag.
fn gallery_files(root: &Path) -> Result<Vec<(PathBuf, ItemMeta)>, IngestError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| IngestError::Read {
            path: dir.clone(),
            source: e,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !["jpg", "jpeg", "png", "webp", "gif", "bmp"].contains(&ext.as_str()) {
                continue;
            }
            let parent = path.parent().filter(|p| *p != root);
            let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
            let mut meta = ItemMeta {
                source: path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
                ..ItemMeta::default()
            };
            if let Some(character) = parent.and_then(name) {
                meta.labels.insert(PRIMARY_LEVEL.to_string(), character);
            }
            if let Some(split) = parent
                .and_then(Path::parent)
                .filter(|p| *p != root)
                .and_then(name)
            {
                meta.tags.push(format!("split:{split}"));
            }
            out.push((path, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Embeds one chunk of gallery files: the catalogue items, and (embedding, character) for each
/// image of the `val` split.
fn embed_chunk(
    pool: &InferencePool,
    chunk: &[(PathBuf, ItemMeta)],
    max_pixels: u64,
) -> (Vec<NewItem>, Vec<(Vec<f32>, String)>) {
    let mut loaded = Vec::new();
    for (path, meta) in chunk {
        match std::fs::read(path) {
            Ok(bytes) => loaded.push((Bytes::from(bytes), meta.clone())),
            Err(e) => tracing::warn!(path = %path.display(), "skipped: {e}"),
        }
    }
    let predictions = pool.predict_blocking(
        loaded.iter().map(|(b, _)| b.clone()).collect(),
        1,
        Some(CopyViews::Catalogue),
    );
    let (mut items, mut validation) = (Vec::new(), Vec::new());
    for ((bytes, meta), prediction) in loaded.into_iter().zip(predictions) {
        let source = meta.source.clone();
        if let (Ok(p), Some(character), true) = (
            &prediction,
            meta.labels.get(PRIMARY_LEVEL),
            is_validation(&meta),
        ) {
            validation.push((p.embedding.clone(), character.clone()));
        }
        match prediction
            .map_err(|e| e.to_string())
            .and_then(|p| new_item(&bytes, p, meta, max_pixels))
        {
            Ok(item) => items.push(item),
            Err(e) => tracing::warn!(%source, "skipped: {e}"),
        }
    }
    (items, validation)
}

/// Whether a gallery image belongs to the `val` split.
fn is_validation(meta: &ItemMeta) -> bool {
    meta.tags.iter().any(|t| t == "split:val")
}

/// Ingests every image under `root` (`<split>/<character>/*` or `<character>/*`) in batches,
/// logging progress. The `val` images calibrate the open-set "unknown" threshold against the
/// centroids of the other images before they are added themselves (so that they do not judge
/// centroids they belong to). Returns the number of items added.
pub fn ingest_gallery(
    catalog: &Catalog,
    pool: &InferencePool,
    root: &Path,
    max_pixels: u64,
) -> Result<usize, IngestError> {
    let files = gallery_files(root)?;
    let total = files.len();
    tracing::info!(gallery = %root.display(), images = total, "ingesting the sample gallery into the empty catalogue");
    let (val_files, other_files): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|(_, meta)| is_validation(meta));
    let (mut done, mut added) = (0usize, 0usize);
    let mut held_back = Vec::new();
    let mut validation = Vec::new();
    for (is_val, chunk) in other_files
        .chunks(GALLERY_BATCH)
        .map(|c| (false, c))
        .chain(val_files.chunks(GALLERY_BATCH).map(|c| (true, c)))
    {
        let (items, samples) = embed_chunk(pool, chunk, max_pixels);
        if is_val {
            held_back.extend(items);
            validation.extend(samples);
        } else {
            added += catalog
                .add_batch(items)?
                .iter()
                .filter(|o| !o.duplicate)
                .count();
        }
        done += chunk.len();
        tracing::info!("embedded {done}/{total} gallery images");
    }
    if !validation.is_empty() {
        match catalog.calibrate_open_set(&validation) {
            Ok(c) => tracing::info!(
                threshold = c.threshold,
                accuracy = c.accuracy,
                samples = validation.len(),
                "open-set threshold calibrated on the gallery's validation images"
            ),
            Err(e) => tracing::warn!("open-set threshold left at its default: {e}"),
        }
    }
    added += catalog
        .add_batch(held_back)?
        .iter()
        .filter(|o| !o.duplicate)
        .count();
    tracing::info!("ingested {done}/{total} gallery images");
    calibrate_copies(catalog, pool, root, max_pixels);
    Ok(added)
}

/// Calibrates the copy verdict on edited copies of an evenly spread sample of the gallery's
/// pictures (`Catalog::calibrate_copies`); a failure leaves the uncalibrated threshold, logged.
fn calibrate_copies(catalog: &Catalog, pool: &InferencePool, root: &Path, max_pixels: u64) {
    let ids = catalog.live_ids();
    let step = (ids.len() / COPY_CALIBRATION_SAMPLE).max(1);
    let sample: Vec<_> = ids
        .iter()
        .step_by(step)
        .filter_map(|id| catalog.get(*id).ok().flatten())
        .collect();
    let mut rng = StdRng::seed_from_u64(7);
    let calibrated = catalog.calibrate_copies(&sample, DEFAULT_PRECISION, |item| {
        let bytes = std::fs::read(root.join(&item.source)).ok()?;
        let original = decode(&bytes, max_pixels).ok()?;
        let uploads: Vec<Bytes> = calibration_uploads(&original, &mut rng)
            .into_iter()
            .map(Bytes::from)
            .collect();
        pool.predict_blocking(uploads, 1, Some(CopyViews::Query))
            .into_iter()
            .map(|p| p.map(|p| p.copies).ok())
            .collect()
    });
    match calibrated {
        Ok(v) => tracing::info!(
            threshold = v.threshold,
            recall = v.recall,
            pictures = sample.len(),
            "copy threshold calibrated on edited copies of gallery pictures"
        ),
        Err(e) => tracing::warn!("copy threshold left uncalibrated: {e}"),
    }
}
