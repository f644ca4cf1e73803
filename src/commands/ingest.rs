//! `animelens index add DIR|MANIFEST [--model CKPT]`: embeds a labelled image collection in
//! batches and adds it to the catalogue (creating it with the model's fingerprint and dimension;
//! the model defaults as in [`super::model_choice`]). Exact duplicates (same SHA-256 as a live
//! item) are skipped before embedding; unreadable files are reported with the reason and the
//! ingest continues. Each batch is durable when counted.
//!
//! Every image is added, whatever its split. When the collection has `val` images, they are
//! embedded last and first calibrate the open-set "unknown" threshold against the centroids of the
//! other images (so that they do not judge centroids they belong to), the same order as the
//! service's gallery ingest; without them the catalogue says loudly that it is uncalibrated.

use super::characters::uncalibrated;
use super::embedding::{embed_for_catalogue, progress_bar, read_files, ImageFile, BATCH};
use super::model::DataArgs;
use super::model_choice::{open_with_model, Missing};
use animelens_index::{Catalog, NewItem};
use animelens_models::data::{Dataset, Sample, Split};
use animelens_models::Classifier;
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// What an ingest did.
#[derive(Debug, Default)]
struct Summary {
    added: usize,
    duplicates: usize,
    unreadable: Vec<(PathBuf, String)>,
}

/// Labels of `sample` per level, by name.
fn labels_of(dataset: &Dataset, sample: &Sample) -> BTreeMap<String, String> {
    dataset
        .levels
        .iter()
        .zip(&dataset.classes)
        .zip(&sample.labels)
        .map(|((level, names), &i)| (level.clone(), names[i as usize].clone()))
        .collect()
}

/// One ingest: the dataset, the model, the catalogue and the tags every item gets.
struct Ingest<'a> {
    dataset: &'a Dataset,
    model: &'a Classifier,
    catalog: &'a Catalog,
    tags: &'a [String],
    with_splits: bool,
}

impl Ingest<'_> {
    /// Reads and embeds `chunk`, skipping exact duplicates and recording unreadable files.
    fn embed_chunk(&self, chunk: &[Sample], summary: &mut Summary) -> Result<Vec<NewItem>> {
        let paths: Vec<PathBuf> = chunk.iter().map(|s| s.path.clone()).collect();
        let mut pending: Vec<(&Sample, ImageFile)> = Vec::new();
        for (sample, file) in chunk.iter().zip(read_files(&paths)) {
            match file {
                Err(reason) => summary.unreadable.push((sample.path.clone(), reason)),
                Ok(f) if self.catalog.find_by_hash(&f.content_hash)?.is_some() => {
                    summary.duplicates += 1
                }
                Ok(f) => pending.push((sample, f)),
            }
        }
        let bytes: Vec<&[u8]> = pending.iter().map(|(_, f)| f.bytes.as_slice()).collect();
        let embeddings = embed_for_catalogue(self.model, &bytes);
        let described: Vec<Result<NewItem, String>> = pending
            .par_iter()
            .zip(embeddings)
            .map(|((sample, file), embedding)| {
                let mut tags = self.tags.to_vec();
                if self.with_splits {
                    tags.push(format!("split:{}", sample.split.name()));
                }
                file.to_item(labels_of(self.dataset, sample), &tags, embedding?)
            })
            .collect();
        let mut items = Vec::with_capacity(described.len());
        for ((sample, _), item) in pending.iter().zip(described) {
            match item {
                Ok(item) => items.push(item),
                Err(reason) => summary.unreadable.push((sample.path.clone(), reason)),
            }
        }
        Ok(items)
    }

    /// Adds `items`, counting new ones and duplicates.
    fn add(&self, items: Vec<NewItem>, summary: &mut Summary) -> Result<()> {
        for outcome in self.catalog.add_batch(items)? {
            if outcome.duplicate {
                summary.duplicates += 1;
            } else {
                summary.added += 1;
            }
        }
        Ok(())
    }

    /// Embeds and adds `samples` batch by batch.
    fn add_all(&self, samples: &[Sample], bar: &ProgressBar, summary: &mut Summary) -> Result<()> {
        for chunk in samples.chunks(BATCH) {
            let items = self.embed_chunk(chunk, summary)?;
            self.add(items, summary)?;
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    }

    /// Embeds the validation samples, calibrates the open-set threshold on them against the
    /// catalogue as it stands, then adds them. Returns the calibration, or why there is none.
    fn calibrate_then_add(
        &self,
        samples: &[Sample],
        bar: &ProgressBar,
        summary: &mut Summary,
    ) -> Result<std::result::Result<animelens_index::Calibration, String>> {
        let mut items = Vec::new();
        for chunk in samples.chunks(BATCH) {
            items.extend(self.embed_chunk(chunk, summary)?);
            bar.inc(chunk.len() as u64);
        }
        let pairs: Vec<(Vec<f32>, String)> = items
            .iter()
            .filter_map(|i| Some((i.vector.clone(), i.labels.get("character")?.clone())))
            .collect();
        let calibration = self
            .catalog
            .calibrate_open_set(&pairs)
            .map_err(|e| e.to_string());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            self.add(items.by_ref().take(BATCH).collect(), summary)?;
        }
        Ok(calibration)
    }
}

/// Runs `animelens index add` on the catalogue in `db`.
pub fn run_add(db: &Path, args: AddArgs) -> Result<()> {
    let data = DataArgs {
        data: args.source.clone(),
        path_column: args.path_column.clone(),
        labels: args.labels.clone(),
        split_column: args.split_column.clone(),
    };
    let dataset = data.load()?;
    let (catalog, model) = open_with_model(db, args.model.as_deref(), Missing::Create)?;
    let ingest = Ingest {
        dataset: &dataset,
        model: &model,
        catalog: &catalog,
        tags: &args.tags,
        with_splits: args.split_column.is_some() || has_split_folders(&args.source),
    };
    let (validation, others): (Vec<Sample>, Vec<Sample>) = dataset
        .samples
        .iter()
        .cloned()
        .partition(|s| s.split == Split::Val);
    tracing::info!(
        "adding all {} images ({} of them validation images, embedded last to calibrate the \"unknown\" threshold first)",
        dataset.samples.len(),
        validation.len()
    );
    let bar = progress_bar(dataset.samples.len(), "embedding");
    let mut summary = Summary::default();
    ingest.add_all(&others, &bar, &mut summary)?;
    let calibration = if validation.is_empty() {
        Err("the collection has no validation images".to_string())
    } else {
        ingest.calibrate_then_add(&validation, &bar, &mut summary)?
    };
    bar.finish_and_clear();
    let live = catalog.stats()?.live;
    let calibrated = catalog.open_set_calibrated()?;
    catalog.close()?;
    for (path, reason) in &summary.unreadable {
        eprintln!("unreadable: {}: {reason}", path.display());
    }
    println!(
        "added {} items, skipped {} exact duplicates, {} unreadable files; {} live items in {}",
        summary.added,
        summary.duplicates,
        summary.unreadable.len(),
        live,
        db.display()
    );
    match calibration {
        Ok(c) => println!(
            "open-set threshold {:.4} calibrated on the {} validation images before they were added \
             (accuracy {:.4} on {} known and {} unseen-character queries)",
            c.threshold,
            validation.len(),
            c.accuracy,
            c.known,
            c.unknown
        ),
        Err(why) if !calibrated => eprintln!("warning: {why}, so {}", uncalibrated(db)),
        Err(why) => eprintln!(
            "note: the open-set threshold was not recalibrated ({why}); the catalogue keeps its earlier calibration"
        ),
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

/// Whether a folder dataset is laid out as `train/`, `val/`, `test/` sub-folders.
fn has_split_folders(source: &Path) -> bool {
    ["train", "val", "test"]
        .iter()
        .any(|split| source.join(split).is_dir())
}
