//! `animelens index add DIR|MANIFEST --model CKPT`: embeds a labelled image collection in batches
//! and adds it to the catalogue (creating it with the model's fingerprint and dimension). Exact
//! duplicates (same SHA-256 as a live item) are skipped before embedding; unreadable files are
//! reported with the reason and the ingest continues. Each batch is durable when counted.

use super::embedding::{embed, load_model, model_tag, progress_bar, read_files, BATCH};
use super::model::DataArgs;
use animelens_index::{Catalog, NewItem, OpenOptions};
use animelens_models::data::{Dataset, Sample};
use anyhow::{bail, Result};
use clap::Args;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `animelens index add` options.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// A folder (`<character>/*.jpg`, optionally under `train/`, `val/`, `test/`) or a CSV manifest.
    source: PathBuf,
    /// Checkpoint (`NAME.safetensors` or `NAME`) whose embeddings the catalogue holds.
    #[arg(long)]
    model: PathBuf,
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

/// Runs `animelens index add` on the catalogue in `db`.
pub fn run_add(db: &Path, args: AddArgs) -> Result<()> {
    let data = DataArgs {
        data: args.source.clone(),
        path_column: args.path_column.clone(),
        labels: args.labels.clone(),
        split_column: args.split_column.clone(),
    };
    let dataset = data.load()?;
    let model = load_model(&args.model)?;
    let mut options = OpenOptions::new(model_tag(&model));
    options.show_progress = true;
    let cat = Catalog::open(db, options)?;
    let with_splits = args.split_column.is_some() || has_split_folders(&args.source);
    let bar = progress_bar(dataset.samples.len(), "embedding");
    let mut summary = Summary::default();
    for chunk in dataset.samples.chunks(BATCH) {
        let paths: Vec<PathBuf> = chunk.iter().map(|s| s.path.clone()).collect();
        let mut pending: Vec<(&Sample, super::embedding::ImageFile)> = Vec::new();
        for (sample, file) in chunk.iter().zip(read_files(&paths)) {
            match file {
                Err(reason) => summary.unreadable.push((sample.path.clone(), reason)),
                Ok(f) if cat.find_by_hash(&f.content_hash)?.is_some() => summary.duplicates += 1,
                Ok(f) => pending.push((sample, f)),
            }
        }
        let bytes: Vec<&[u8]> = pending.iter().map(|(_, f)| f.bytes.as_slice()).collect();
        let embeddings = embed(&model, &bytes);
        let described: Vec<Result<NewItem, String>> = pending
            .par_iter()
            .zip(embeddings)
            .map(|((sample, file), embedding)| {
                let mut tags = args.tags.clone();
                if with_splits {
                    tags.push(format!("split:{}", split_name(sample)));
                }
                file.to_item(labels_of(&dataset, sample), &tags, embedding?)
            })
            .collect();
        let mut items = Vec::with_capacity(described.len());
        for ((sample, _), item) in pending.iter().zip(described) {
            match item {
                Ok(item) => items.push(item),
                Err(reason) => summary.unreadable.push((sample.path.clone(), reason)),
            }
        }
        for outcome in cat.add_batch(items)? {
            if outcome.duplicate {
                summary.duplicates += 1;
            } else {
                summary.added += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let live = cat.stats()?.live;
    cat.close()?;
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
    source.join("train").is_dir()
}

fn split_name(sample: &Sample) -> &'static str {
    match sample.split {
        animelens_models::data::Split::Train => "train",
        animelens_models::data::Split::Val => "val",
        animelens_models::data::Split::Test => "test",
    }
}
