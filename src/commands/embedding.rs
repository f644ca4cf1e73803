//! The CLI's side of embedding: loading the model, reading files (bytes and content hash) and
//! embedding encoded files in batches through the [`Embedder`] seam, for `identify`,
//! `search --image`, `audit`, re-embedding, the embedding cache and the benchmarks. Turning
//! pictures into catalogue items is the one ingest pipeline's job (`animelens_web::ingest`).

use animelens_index::ModelTag;
use animelens_models::preprocess::content_hash;
use animelens_models::{Classifier, Embedder};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Images per `predict_batch` call.
pub const BATCH: usize = 32;

/// Loads a checkpoint (`NAME` or `NAME.safetensors`) as an embedder.
pub fn load_model(path: &Path) -> Result<Classifier> {
    Classifier::load(path).with_context(|| {
        format!(
            "cannot load model {}: pass a checkpoint written by `animelens train` \
             (NAME.safetensors with NAME.json beside it)",
            path.display()
        )
    })
}

/// The catalogue tag of an embedder's vectors.
pub fn model_tag(embedder: &dyn Embedder) -> ModelTag {
    ModelTag {
        fingerprint: embedder.fingerprint(),
        dim: embedder.dim(),
    }
}

/// A progress bar over `len` images, labelled `what`.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} images [{{elapsed}}<{{eta}}, {{per_sec}}]"
        ))
        .expect("static template"),
    );
    bar
}

/// An image file read from disk and described for the catalogue.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of the bytes.
    pub content_hash: String,
}

impl ImageFile {
    /// Reads `path`; the error says why it cannot be used.
    pub fn read(path: &Path) -> std::result::Result<ImageFile, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
        let content_hash = content_hash(&bytes);
        Ok(ImageFile {
            bytes,
            content_hash,
        })
    }
}

/// Reads `paths` in parallel.
pub fn read_files(paths: &[PathBuf]) -> Vec<std::result::Result<ImageFile, String>> {
    paths.par_iter().map(|p| ImageFile::read(p)).collect()
}

/// Embeds encoded images in one `predict_batch` call; one result per input, the error saying why.
pub fn embed(
    embedder: &dyn Embedder,
    images: &[&[u8]],
) -> Vec<std::result::Result<Vec<f32>, String>> {
    if images.is_empty() {
        return Vec::new();
    }
    embedder
        .predict_batch(images, 1, None)
        .into_iter()
        .map(|r| r.map(|p| p.embedding).map_err(|e| e.to_string()))
        .collect()
}

/// Reads and embeds one batch of image files; one result per path, in order, the error saying
/// why a file could not be read or embedded.
pub fn embed_batch(
    embedder: &dyn Embedder,
    paths: &[PathBuf],
) -> Vec<std::result::Result<Vec<f32>, String>> {
    let files = read_files(paths);
    let bytes: Vec<&[u8]> = files
        .iter()
        .filter_map(|f| f.as_ref().ok().map(|f| f.bytes.as_slice()))
        .collect();
    let mut embedded = embed(embedder, &bytes).into_iter();
    files
        .into_iter()
        .map(|f| f.and_then(|_| embedded.next().expect("one result per readable file")))
        .collect()
}

/// Reads and embeds image files in batches of [`BATCH`], advancing `bar`.
pub fn embed_files(
    embedder: &dyn Embedder,
    paths: &[PathBuf],
    bar: &ProgressBar,
) -> Vec<std::result::Result<Vec<f32>, String>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        out.extend(embed_batch(embedder, chunk));
        bar.inc(chunk.len() as u64);
    }
    out
}
