//! `animelens index add DIR|MANIFEST [--model CKPT]`: adds a labelled image collection to the
//! catalogue (creating it with the model's fingerprint and dimension; the model defaults as in
//! [`super::model_choice`]) through the one ingest pipeline (`animelens_web::ingest`), the same
//! one the service's gallery and uploads go through, with a progress bar, and reports what was
//! added, skipped and calibrated. Without `val` images the catalogue says loudly that its
//! open-set threshold is uncalibrated.

use super::characters::uncalibrated;
use super::embedding::progress_bar;
use super::location::{close, Location};
use super::model::DataArgs;
use super::model_choice::{open_with_model, Missing};
use animelens_index::CatalogLogic;
use animelens_models::data::Split;
use animelens_web::ingest::{ingest_collection, Collection};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// `animelens index add` options.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// A folder (`<character>/*.jpg`, optionally under `train/`, `val/`, `test/`) or a CSV manifest.
    source: PathBuf,
    /// Checkpoint (`NAME.safetensors` or `NAME`) whose embeddings the catalogue holds (default:
    /// the catalogue's own model, else the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Manifest column holding the image path (relative to the manifest's folder).
    #[arg(long, default_value = "path")]
    path_column: String,
    /// Manifest label columns as `level=column`, primary level first
    /// (e.g. `character=name,work=generation,style=game`).
    #[arg(long, value_delimiter = ',', default_value = "character=label")]
    labels: Vec<String>,
    /// Manifest column with train/val/test (recorded as a `split:NAME` tag).
    #[arg(long)]
    split_column: Option<String>,
    /// Tag given to every added item (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

/// Runs `animelens index add` on the catalogue at `db` (either storage).
pub fn run_add(db: &Location, args: AddArgs) -> Result<()> {
    let data = DataArgs {
        data: args.source.clone(),
        path_column: args.path_column.clone(),
        labels: args.labels.clone(),
        split_column: args.split_column.clone(),
    };
    let dataset = data.load()?;
    let (catalog, model) = open_with_model(db, args.model.as_deref(), Missing::Create)?;
    let mut collection = Collection::new(&dataset, &args.source, args.split_column.is_some());
    collection.tags = args.tags.clone();
    let validation = dataset
        .samples
        .iter()
        .filter(|s| s.split == Split::Val)
        .count();
    tracing::info!(
        "adding all {} images ({validation} of them validation images, embedded last to calibrate the \"unknown\" threshold first)",
        dataset.samples.len(),
    );
    let bar = progress_bar(dataset.samples.len(), "embedding");
    let summary = ingest_collection(&*catalog, &model, &collection, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let live = catalog.stats()?.live;
    let calibrated = catalog.open_set_calibrated()?;
    close(catalog)?;
    for (path, reason) in &summary.unreadable {
        eprintln!("unreadable: {}: {reason}", path.display());
    }
    println!(
        "added {} items, skipped {} exact duplicates, {} unreadable files; {} live items in {db}",
        summary.added,
        summary.duplicates,
        summary.unreadable.len(),
        live,
    );
    match &summary.open_set {
        Ok(c) => println!(
            "open-set threshold {:.4} calibrated on the {validation} validation images before they were added \
             (accuracy {:.4} on {} known and {} unseen-character queries)",
            c.threshold, c.accuracy, c.known, c.unknown
        ),
        Err(why) if !calibrated => eprintln!("warning: {why}, so {}", uncalibrated(db)),
        Err(why) => eprintln!(
            "note: the open-set threshold was not recalibrated ({why}); the catalogue keeps its earlier calibration"
        ),
    }
    match &summary.copies {
        Ok(v) => println!(
            "copy threshold {:.4} for precision {} (recall {:.3} on edited copies of catalogued pictures)",
            v.threshold, v.precision, v.recall
        ),
        Err(why) if summary.added > 0 => eprintln!("warning: the copy threshold was not calibrated: {why}"),
        Err(_) => {}
    }
    if summary.added + summary.duplicates == 0 && !summary.unreadable.is_empty() {
        bail!(
            "none of the {} images of {} could be read; check that they are JPEG, PNG, WebP, GIF or BMP files",
            summary.unreadable.len(),
            args.source.display()
        );
    }
    Ok(())
}
