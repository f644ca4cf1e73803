//! `animelens index rebuild --reembed --model CKPT [--source-root DIR]`: switches a catalogue to a
//! new model by re-embedding every live item from its stored source file (relative sources are
//! resolved against `--source-root`), or from its stored thumbnail when the source is gone (e.g.
//! uploads). A video frame is re-embedded from its video at its time (or its thumbnail), with the
//! frame's copy view. The new vectors are written beside the old ones and the catalogue flips to
//! them (and to the new model tag) in one transaction, so an interrupted run leaves the catalogue
//! usable with the old model.

use super::embedding::{load_model, model_tag, BATCH};
use animelens_index::{Catalog, ItemVectors, OpenOptions, ReembedItem};
use animelens_models::embedder::predict_decoded;
use animelens_models::{CopyViews, EmbedError, Embedder};
use animelens_web::video::{ffmpeg::frame_at, FRAME_SIDE};
use anyhow::Result;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The encoded picture to embed for `item`: its source file, else its thumbnail (counted in
/// `from_thumbnail`).
fn image_bytes(
    item: &ReembedItem,
    root: &Path,
    from_thumbnail: &AtomicUsize,
) -> Result<Vec<u8>, String> {
    let path = root.join(&item.item.source);
    match (std::fs::read(&path), &item.thumbnail) {
        (Ok(bytes), _) => Ok(bytes),
        (Err(_), Some(thumb)) => {
            from_thumbnail.fetch_add(1, Ordering::Relaxed);
            Ok(thumb.clone())
        }
        (Err(e), None) => Err(format!(
            "cannot read {} ({e}) and no thumbnail is stored",
            path.display()
        )),
    }
}

/// The decoded picture to embed for `item` and the copy views it is described by: a video frame
/// from its video at its time (its thumbnail when the video is gone), a picture as
/// [`image_bytes`] finds it.
fn picture(
    model: &dyn Embedder,
    item: &ReembedItem,
    root: &Path,
    from_thumbnail: &AtomicUsize,
) -> Result<(RgbImage, CopyViews), String> {
    let Some(frame) = &item.item.frame else {
        let bytes = image_bytes(item, root, from_thumbnail)?;
        let image = model.decode(&bytes).map_err(|e| e.to_string())?;
        return Ok((image, CopyViews::Catalogue));
    };
    let video = root.join(&item.item.source);
    if let Ok(image) = frame_at(&video, frame.at, FRAME_SIDE) {
        return Ok((image, CopyViews::Frame));
    }
    let thumb = item.thumbnail.as_ref().ok_or_else(|| {
        format!(
            "cannot read the frame of {} and no thumbnail is stored",
            frame.filename
        )
    })?;
    from_thumbnail.fetch_add(1, Ordering::Relaxed);
    let image = model.decode(thumb).map_err(|e| e.to_string())?;
    Ok((image, CopyViews::Frame))
}

/// The new vectors of a batch of items, from their sources under `root` (else their thumbnails,
/// counted in `from_thumbnail`): one result per item, in order. Also what `index export
/// --reembed` computes.
pub fn embed_batch(
    model: &dyn Embedder,
    items: &[ReembedItem],
    root: &Path,
    from_thumbnail: &AtomicUsize,
) -> Vec<Result<ItemVectors, String>> {
    let pictures: Vec<Result<(RgbImage, CopyViews), String>> = items
        .par_iter()
        .map(|i| picture(model, i, root, from_thumbnail))
        .collect();
    embed_items(model, pictures)
}

/// Embeds one batch of items: pictures and frames each with their copy views; one result per
/// item, in order.
fn embed_items(
    model: &dyn Embedder,
    pictures: Vec<Result<(RgbImage, CopyViews), String>>,
) -> Vec<Result<ItemVectors, String>> {
    let mut out: Vec<Option<Result<ItemVectors, String>>> = pictures
        .iter()
        .map(|p| p.as_ref().err().map(|e| Err(e.clone())))
        .collect();
    for views in [CopyViews::Catalogue, CopyViews::Frame] {
        let (places, images): (Vec<usize>, Vec<Result<RgbImage, EmbedError>>) = pictures
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Ok((image, v)) if *v == views => Some((i, Ok(image.clone()))),
                _ => None,
            })
            .unzip();
        for (i, p) in places
            .into_iter()
            .zip(predict_decoded(model, images, 1, Some(views)))
        {
            out[i] = Some(
                p.map(|p| ItemVectors {
                    vector: p.embedding,
                    copies: p.copies,
                })
                .map_err(|e| e.to_string()),
            );
        }
    }
    out.into_iter()
        .map(|r| r.expect("every item is embedded or has its error"))
        .collect()
}

/// Re-embeds the catalogue in `db` with the checkpoint `model_path`, then rebuilds its index.
pub fn run_reembed(db: &Path, model_path: &Path, source_root: &Path) -> Result<()> {
    let model = load_model(model_path)?;
    let tag = model_tag(&model);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("re-embedding {spinner} {pos} items [{elapsed}, {per_sec}]")
            .expect("static template"),
    );
    let from_thumbnail = AtomicUsize::new(0);
    let report = Catalog::reembed(db, &tag, BATCH, |items| {
        bar.inc(items.len() as u64);
        embed_batch(&model, items, source_root, &from_thumbnail)
    })?;
    bar.finish_and_clear();
    for (item, reason) in &report.removed {
        eprintln!(
            "removed item {} ({}): cannot re-embed it: {reason}",
            item.id, item.source
        );
    }
    let mut options = OpenOptions::new(tag.clone());
    options.show_progress = true;
    let cat = Catalog::open(db, options)?;
    let live = cat.stats()?.live;
    cat.close()?;
    println!(
        "re-embedded {} items with model {} (was {}), {} of them from their thumbnail because the \
         source file was missing; removed {} items that could not be re-embedded; dropped {} \
         vector-only enrolments; {live} live items indexed. Run `animelens index calibrate` again: \
         the open-set threshold belonged to the old model",
        report.reembedded,
        tag.fingerprint,
        report.previous.fingerprint,
        from_thumbnail.load(Ordering::Relaxed),
        report.removed.len(),
        report.enrolments_dropped,
    );
    Ok(())
}
