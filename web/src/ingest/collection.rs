//! Ingesting a collection of image files — a folder (`<character>/*`, optionally under
//! `train/`, `val/`, `test/`) or a CSV manifest, read by `models::data` — in batches: files are
//! read and hashed in parallel, exact duplicates of live items skipped before embedding, the rest
//! decoded once, embedded with their catalogue copy views and added batch by batch, each batch
//! durable when counted. Unreadable files are reported with the reason; the ingest goes on.
//!
//! Every image is added, whatever its split. The `val` images are embedded last and first
//! calibrate the open-set "unknown" threshold against the centroids of the others (so that they
//! do not judge centroids they belong to); then the copy verdict is calibrated on the catalogue.

use super::calibration::{calibrate_copies, COPY_CALIBRATION_SAMPLE};
use super::embed::EmbedImages;
use super::picture::{embed_items, ItemMeta, Picture};
use animelens_index::copy_verdict::DEFAULT_PRECISION;
use animelens_index::{
    Calibration, CatalogLogic, CopyVerdict, NewItem, Result, Storage, PRIMARY_LEVEL,
};
use animelens_models::data::{Dataset, Sample, Split};
use animelens_models::preprocess::content_hash;
use animelens_models::CopyViews;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Images embedded per network call.
pub const BATCH: usize = 32;

/// Seed of the copy calibration's sample and edits.
const COPY_CALIBRATION_SEED: u64 = 7;

/// A collection to ingest and what every item of it gets.
pub struct Collection<'a> {
    /// The images and their labels.
    pub dataset: &'a Dataset,
    /// Tags given to every item.
    pub tags: Vec<String>,
    /// Whether each item is tagged `split:NAME` with its split.
    pub with_splits: bool,
}

impl<'a> Collection<'a> {
    /// A collection read from `source` (a folder or manifest): split tags when the dataset names
    /// splits (a manifest's split column, or split folders).
    pub fn new(dataset: &'a Dataset, source: &Path, has_split_column: bool) -> Self {
        Collection {
            dataset,
            tags: Vec::new(),
            with_splits: has_split_column || has_split_folders(source),
        }
    }
}

/// What an ingest did.
#[derive(Debug)]
pub struct IngestSummary {
    /// Items added.
    pub added: usize,
    /// Images skipped as exact duplicates of live items.
    pub duplicates: usize,
    /// Files that could not be used, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
    /// The open-set calibration on the `val` images, or why there is none.
    pub open_set: std::result::Result<Calibration, String>,
    /// The copy verdict's calibration, or why there is none.
    pub copies: std::result::Result<CopyVerdict, String>,
}

/// Ingests `collection` into `catalog`, embedding with `embedder`; `progress` is told how many
/// more images were handled after each batch.
pub fn ingest_collection(
    catalog: &dyn Storage,
    embedder: &dyn EmbedImages,
    collection: &Collection,
    progress: &dyn Fn(usize),
) -> Result<IngestSummary> {
    let (validation, others): (Vec<&Sample>, Vec<&Sample>) = collection
        .dataset
        .samples
        .iter()
        .partition(|s| s.split == Split::Val);
    let mut summary = IngestSummary {
        added: 0,
        duplicates: 0,
        unreadable: Vec::new(),
        open_set: Err("the collection has no validation images".into()),
        copies: Err("nothing was added".into()),
    };
    let run = Run {
        catalog,
        embedder,
        collection,
    };
    for chunk in others.chunks(BATCH) {
        let items = run.embed_chunk(chunk, &mut summary)?;
        run.add(items, &mut summary)?;
        progress(chunk.len());
    }
    catalog.settle()?;
    if !validation.is_empty() {
        let mut items = Vec::new();
        for chunk in validation.chunks(BATCH) {
            items.extend(run.embed_chunk(chunk, &mut summary)?);
            progress(chunk.len());
        }
        let pairs: Vec<(Vec<f32>, String)> = items
            .iter()
            .filter_map(|i| Some((i.vector.clone(), i.labels.get(PRIMARY_LEVEL)?.clone())))
            .collect();
        summary.open_set = catalog
            .calibrate_open_set(&pairs)
            .map_err(|e| e.to_string());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            run.add(items.by_ref().take(BATCH).collect(), &mut summary)?;
        }
    }
    if summary.added > 0 {
        summary.copies = calibrate_copies(
            catalog,
            embedder,
            DEFAULT_PRECISION,
            COPY_CALIBRATION_SAMPLE,
            COPY_CALIBRATION_SEED,
            &|| {},
        )
        .map_err(|e| e.to_string());
    }
    Ok(summary)
}

/// One ingest in progress.
struct Run<'a> {
    catalog: &'a dyn Storage,
    embedder: &'a dyn EmbedImages,
    collection: &'a Collection<'a>,
}

impl Run<'_> {
    /// Reads, decodes and embeds `chunk`, skipping exact duplicates and recording unusable files.
    fn embed_chunk(&self, chunk: &[&Sample], summary: &mut IngestSummary) -> Result<Vec<NewItem>> {
        let read: Vec<std::result::Result<(Vec<u8>, String), String>> = chunk
            .par_iter()
            .map(|s| {
                let bytes =
                    std::fs::read(&s.path).map_err(|e| format!("cannot read the file: {e}"))?;
                let hash = content_hash(&bytes);
                Ok((bytes, hash))
            })
            .collect();
        let mut pending = Vec::new();
        for (sample, file) in chunk.iter().zip(read) {
            match file {
                Err(reason) => summary.unreadable.push((sample.path.clone(), reason)),
                Ok((_, hash)) if self.catalog.find_by_hash(&hash)?.is_some() => {
                    summary.duplicates += 1
                }
                Ok((bytes, hash)) => pending.push((*sample, bytes, hash)),
            }
        }
        let decoded: Vec<_> = pending
            .par_iter()
            .map(|(_, bytes, hash)| Picture::decode(bytes, hash.clone(), self.embedder))
            .collect();
        let mut pictures = Vec::new();
        let mut paths = Vec::new();
        for ((sample, _, _), picture) in pending.iter().zip(decoded) {
            match picture {
                Ok(p) => {
                    pictures.push((p, self.meta_of(sample)));
                    paths.push(sample.path.clone());
                }
                Err(e) => summary
                    .unreadable
                    .push((sample.path.clone(), e.to_string())),
            }
        }
        let mut items = Vec::with_capacity(pictures.len());
        for (path, item) in
            paths
                .into_iter()
                .zip(embed_items(self.embedder, pictures, CopyViews::Catalogue))
        {
            match item {
                Ok(item) => items.push(item),
                Err(reason) => summary.unreadable.push((path, reason)),
            }
        }
        Ok(items)
    }

    /// The metadata of `sample`: its labels by level, the collection's tags and its split tag;
    /// the source is the canonical path, so that the item can be re-embedded from anywhere.
    fn meta_of(&self, sample: &Sample) -> ItemMeta {
        let mut tags = self.collection.tags.clone();
        if self.collection.with_splits {
            tags.push(format!("split:{}", sample.split.name()));
        }
        let source = std::fs::canonicalize(&sample.path).unwrap_or_else(|_| sample.path.clone());
        ItemMeta {
            source: source.display().to_string(),
            labels: labels_of(self.collection.dataset, sample),
            tags,
            frame: None,
        }
    }

    /// Adds `items`, counting new ones and duplicates.
    fn add(&self, items: Vec<NewItem>, summary: &mut IngestSummary) -> Result<()> {
        for outcome in self.catalog.add_batch(items)? {
            if outcome.duplicate {
                summary.duplicates += 1;
            } else {
                summary.added += 1;
            }
        }
        Ok(())
    }
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

/// Whether a folder dataset is laid out as `train/`, `val/`, `test/` sub-folders.
fn has_split_folders(source: &Path) -> bool {
    ["train", "val", "test"]
        .iter()
        .any(|split| source.join(split).is_dir())
}
