//! `animelens export --dtype int8 --calibrate DIR`: calibrates a checkpoint's activations on
//! pictures of the domain and writes it as an int8 checkpoint (see
//! `animelens_models::quantise`), which every command loads like any other.

use super::checkpoint_files::copy_whitenings;
use super::embedding::progress_bar;
use animelens_models::activation_codes::RangeRule;
use animelens_models::checkpoint::{self, LoadedModel, ModelCard};
use animelens_models::data::unlabelled_images;
use animelens_models::preprocess::{batch_tensor, decode, DEFAULT_MAX_PIXELS};
use animelens_models::quantise::calibrate;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Pictures per calibration batch.
const BATCH: usize = 32;

/// How to calibrate: where the pictures are, how many, and the range rule.
pub struct Calibration<'a> {
    /// Folders (searched recursively) or CSV manifests of pictures.
    pub sources: &'a [PathBuf],
    /// Pictures used (a seeded sample of all found).
    pub pictures: usize,
    /// `max` or a percentile.
    pub rule: &'a str,
}

/// Calibrates `model` (read from `source`) and writes the int8 checkpoint `out`, with the
/// source's whitenings beside it.
pub fn export_int8(
    model: &LoadedModel,
    source: &Path,
    calibration: &Calibration,
    out: &Path,
) -> Result<()> {
    let rule = RangeRule::parse(calibration.rule).map_err(anyhow::Error::msg)?;
    let pictures = sample(calibration.sources, calibration.pictures)?;
    let pre = &model.card.preprocessing;
    let bar = progress_bar(pictures.len(), "calibrating int8 activations");
    let batches = pictures.chunks(BATCH).map(|chunk| {
        let batch = batch_tensor(chunk, pre, &Device::Cpu);
        bar.inc(chunk.len() as u64);
        batch
    });
    let batches: Vec<_> = batches.collect::<candle_core::Result<_>>()?;
    let int8 = calibrate(&model.net, batches, rule)?;
    bar.finish_and_clear();
    let quantised = int8.inputs.iter().filter(|s| s.is_some()).count();
    let total = int8.inputs.len();
    let card = ModelCard {
        int8: Some(int8),
        ..model.card.clone()
    };
    let card = checkpoint::save_int8(&model.varmap, out, &card)?;
    copy_whitenings(source, out)?;
    let (weights, _) = checkpoint::checkpoint_paths(out);
    let size = std::fs::metadata(&weights)?.len();
    println!(
        "wrote {} ({:.1} MB, int8: {quantised} of {total} convolutions, calibrated on {} pictures, {}), fingerprint {}",
        weights.display(),
        size as f64 / 1e6,
        pictures.len(),
        calibration.rule,
        card.fingerprint
    );
    Ok(())
}

/// A seeded sample of `count` readable pictures from `sources`.
fn sample(sources: &[PathBuf], count: usize) -> Result<Vec<RgbImage>> {
    let mut paths = Vec::new();
    for source in sources {
        let listed = unlabelled_images(source)
            .with_context(|| format!("no calibration pictures in {}", source.display()))?;
        paths.extend(listed.train);
        paths.extend(listed.held_out);
    }
    paths.sort();
    paths.shuffle(&mut StdRng::seed_from_u64(7));
    paths.truncate(count);
    let pictures: Vec<RgbImage> = paths
        .par_iter()
        .filter_map(|p| decode(&std::fs::read(p).ok()?, DEFAULT_MAX_PIXELS).ok())
        .collect();
    if pictures.is_empty() {
        bail!(
            "none of the calibration pictures could be read: give --calibrate a folder of images"
        );
    }
    Ok(pictures)
}
