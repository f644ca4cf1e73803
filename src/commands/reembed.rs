//! `animelens index rebuild --reembed --model CKPT`: switches a catalogue to a new model by
//! re-embedding every live item from its stored source file. The new vectors are written beside
//! the old ones and the catalogue flips to them (and to the new model tag) in one transaction, so
//! an interrupted run leaves the catalogue usable with the old model.

use super::embedding::{embed, load_model, model_tag, read_files, BATCH};
use animelens_index::{Catalog, OpenOptions};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Re-embeds the catalogue in `db` with the checkpoint `model_path`, then rebuilds its index.
pub fn run_reembed(db: &Path, model_path: &Path) -> Result<()> {
    let model = load_model(model_path)?;
    let tag = model_tag(&model);
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("re-embedding {spinner} {pos} items [{elapsed}, {per_sec}]")
            .expect("static template"),
    );
    let report = Catalog::reembed(db, &tag, BATCH, |items| {
        let paths: Vec<PathBuf> = items.iter().map(|i| PathBuf::from(&i.source)).collect();
        let files = read_files(&paths);
        let bytes: Vec<&[u8]> = files
            .iter()
            .filter_map(|f| f.as_ref().ok().map(|f| f.bytes.as_slice()))
            .collect();
        let mut embedded = embed(&model, &bytes).into_iter();
        bar.inc(items.len() as u64);
        files
            .into_iter()
            .map(|f| f.and_then(|_| embedded.next().expect("one result per readable file")))
            .collect()
    })?;
    bar.finish_and_clear();
    for (item, reason) in &report.removed {
        eprintln!(
            "removed item {} ({}): cannot re-embed its source: {reason}",
            item.id, item.source
        );
    }
    let mut options = OpenOptions::new(tag.clone());
    options.show_progress = true;
    let cat = Catalog::open(db, options)?;
    let live = cat.stats()?.live;
    cat.close()?;
    println!(
        "re-embedded {} items with model {} (was {}); removed {} items whose source could not be read; \
         dropped {} vector-only enrolments; {live} live items indexed. Run `animelens index calibrate` \
         again: the open-set threshold belonged to the old model",
        report.reembedded,
        tag.fingerprint,
        report.previous.fingerprint,
        report.removed.len(),
        report.enrolments_dropped,
    );
    Ok(())
}
