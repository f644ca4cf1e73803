//! `animelens index rebuild --reembed --model CKPT [--source-root DIR]`: switches a catalogue to a
//! new model by re-embedding every live item from its stored source file (relative sources are
//! resolved against `--source-root`), or from its stored thumbnail when the source is gone (e.g.
//! uploads). The new vectors are written beside the old ones and the catalogue flips to them (and
//! to the new model tag) in one transaction, so an interrupted run leaves the catalogue usable with
//! the old model.

use super::embedding::{embed_for_catalogue, load_model, model_tag, BATCH};
use animelens_index::{Catalog, OpenOptions, ReembedItem};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes to embed for `item`: its source file, else its thumbnail (counted in `from_thumbnail`).
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
        let files: Vec<Result<Vec<u8>, String>> = items
            .par_iter()
            .map(|i| image_bytes(i, source_root, &from_thumbnail))
            .collect();
        let bytes: Vec<&[u8]> = files
            .iter()
            .filter_map(|f| f.as_ref().ok().map(Vec::as_slice))
            .collect();
        let mut embedded = embed_for_catalogue(&model, &bytes).into_iter();
        bar.inc(items.len() as u64);
        files
            .into_iter()
            .map(|f| f.and_then(|_| embedded.next().expect("one result per readable file")))
            .collect()
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
