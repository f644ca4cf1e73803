//! The character level on the command line: few-shot enrolment (`animelens enroll`), open-set
//! identification by nearest centroid (`animelens identify`) and calibration of its "unknown"
//! threshold on validation data (`animelens index calibrate`).
//!
//! Calibration rule (see `Catalog::calibrate_open_set`): every validation image is scored twice,
//! as a known query (right when its nearest character centroid is its own character with cosine
//! ≥ t) and, leaving its own character out, as an unseen-character query (right when the best
//! remaining cosine is < t); images of characters absent from the catalogue count as unseen only.
//! The stored t maximises the accuracy over all those queries (half-way between the two scores
//! around the best cut).

use super::embedding::{embed_files, progress_bar, read_files};
use super::location::{close, CatalogPlace, Location};
use super::model::DataArgs;
use super::model_choice::{open_with_model, Missing};
use animelens_index::CatalogLogic;
use animelens_models::data::Split;
use animelens_models::CopyViews;
use animelens_web::ingest::{embed_items, ItemMeta, Picture};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// `animelens enroll` options.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The character's name (its label at the `character` level).
    name: String,
    /// A handful of images of the character.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Checkpoint the catalogue is built with (default: the catalogue's own model, else the
    /// shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The catalogue (created if it does not exist).
    #[command(flatten)]
    place: CatalogPlace,
    /// Tag given to the enrolled items (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

/// Runs `animelens enroll`: adds the images as items labelled with the character, which also
/// makes them part of its centroid (and lets them survive re-embedding).
pub fn run_enroll(args: EnrollArgs) -> Result<()> {
    let (cat, model) = open_with_model(
        &args.place.location()?,
        args.model.as_deref(),
        Missing::Create,
    )?;
    let files = read_files(&args.images);
    let mut pictures = Vec::new();
    let mut paths = Vec::new();
    let mut failed = 0usize;
    for (path, file) in args.images.iter().zip(files) {
        let picture = file.and_then(|f| {
            Picture::decode(&f.bytes, f.content_hash, &model).map_err(|e| e.to_string())
        });
        match picture {
            Ok(picture) => {
                let source = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                let meta = ItemMeta {
                    source: source.display().to_string(),
                    tags: args.tags.clone(),
                    ..ItemMeta::default()
                };
                pictures.push((picture, meta));
                paths.push(path);
            }
            Err(reason) => {
                failed += 1;
                eprintln!("unreadable: {}: {reason}", path.display());
            }
        }
    }
    let mut items = Vec::new();
    let mut sources = Vec::new();
    for (path, item) in paths
        .into_iter()
        .zip(embed_items(&model, pictures, CopyViews::Catalogue))
    {
        match item {
            Ok(item) => {
                items.push(item);
                sources.push(path);
            }
            Err(reason) => {
                failed += 1;
                eprintln!("unreadable: {}: {reason}", path.display());
            }
        }
    }
    if items.is_empty() {
        bail!(
            "none of the {} images could be read, so {:?} was not enrolled; pass JPEG, PNG, WebP, GIF or BMP files",
            args.images.len(),
            args.name
        );
    }
    let outcomes = cat.enroll_items(&args.name, items)?;
    let mut added = 0usize;
    for (path, o) in sources.iter().zip(&outcomes) {
        if o.duplicate {
            println!(
                "duplicate {} {} (already in the catalogue; its labels are unchanged)",
                o.id,
                path.display()
            );
        } else {
            added += 1;
            println!("added {} {}", o.id, path.display());
        }
    }
    close(cat)?;
    println!(
        "enrolled {:?}: {added} new images, {} duplicates, {failed} unreadable",
        args.name,
        outcomes.len() - added
    );
    Ok(())
}

/// `animelens identify` options.
#[derive(Args, Debug)]
pub struct IdentifyArgs {
    /// Images to identify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Checkpoint the catalogue is built with (default: the catalogue's own model, else the
    /// shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    place: CatalogPlace,
    /// Candidate characters to show per image.
    #[arg(short, long, default_value_t = 3)]
    k: usize,
    /// Print one JSON object per image instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `animelens identify`: nearest character centroid, or "unknown" below the threshold.
pub fn run_identify(args: IdentifyArgs) -> Result<()> {
    let db = args.place.location()?;
    let (cat, model) = open_with_model(&db, args.model.as_deref(), Missing::Fail)?;
    let calibrated = cat.open_set_calibrated()?;
    if !calibrated {
        eprintln!("warning: {}", uncalibrated(&db));
    }
    let bar = indicatif::ProgressBar::hidden();
    let mut failed = 0usize;
    for (path, v) in args
        .images
        .iter()
        .zip(embed_files(&model, &args.images, &bar))
    {
        let v = match v {
            Ok(v) => v,
            Err(reason) => {
                failed += 1;
                eprintln!("unreadable: {}: {reason}", path.display());
                continue;
            }
        };
        let c = cat.classify_by_centroid(&v, args.k)?;
        let best = c.candidates.first().map_or(0.0, |b| b.score);
        let answer = c.label.as_deref().unwrap_or("unknown");
        if args.json {
            let candidates: Vec<_> = c
                .candidates
                .iter()
                .map(|s| serde_json::json!({ "name": s.name, "score": s.score }))
                .collect();
            let line = serde_json::json!({
                "image": path,
                "character": c.label,
                "score": best,
                "threshold": c.threshold,
                "threshold_calibrated": calibrated,
                "candidates": candidates,
            });
            println!("{line}");
        } else {
            let candidates: Vec<String> = c
                .candidates
                .iter()
                .map(|s| format!("{} {:.3}", s.name, s.score))
                .collect();
            println!(
                "{}\t{answer}\t{best:.4}\t(threshold {:.4}; nearest: {})",
                path.display(),
                c.threshold,
                candidates.join(", ")
            );
        }
    }
    if failed == args.images.len() {
        bail!("none of the {failed} images could be read");
    }
    Ok(())
}

/// What `identify` and `index add` say about a catalogue whose open-set threshold was never
/// calibrated, with the command that calibrates it.
pub fn uncalibrated(db: &Location) -> String {
    format!(
        "the catalogue's \"unknown\" threshold is not calibrated: `identify` uses the default {:.2}, which \
         means little for a given model; run `animelens index calibrate --data DIR --db {}` with validation \
         images of catalogued characters",
        animelens_index::DEFAULT_OPEN_SET_THRESHOLD,
        db.arguments()
    )
}

/// `animelens index calibrate` options.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Checkpoint the catalogue is built with (default: the catalogue's own model, else the
    /// shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Split of the data to calibrate on (train, val or test); its images should not be in the
    /// catalogue.
    #[arg(long, default_value = "val")]
    split: String,
}

/// Runs `animelens index calibrate` on the catalogue in `db`.
pub fn run_calibrate(db: &Location, args: CalibrateArgs) -> Result<()> {
    let split = Split::parse(&args.split)
        .ok_or_else(|| anyhow!("unknown split {:?}: use train, val or test", args.split))?;
    let dataset = args.data.load()?;
    let samples = dataset.split(split);
    if samples.is_empty() {
        bail!(
            "{} has no {} images to calibrate on; pass --split with a split it has",
            args.data.data.display(),
            args.split
        );
    }
    let (cat, model) = open_with_model(db, args.model.as_deref(), Missing::Fail)?;
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let bar = progress_bar(paths.len(), "embedding");
    let embedded = embed_files(&model, &paths, &bar);
    bar.finish_and_clear();
    let mut pairs = Vec::with_capacity(samples.len());
    for (sample, v) in samples.iter().zip(embedded) {
        match v {
            Ok(v) => pairs.push((v, dataset.classes[0][sample.labels[0] as usize].clone())),
            Err(reason) => eprintln!("unreadable: {}: {reason}", sample.path.display()),
        }
    }
    let cal = cat
        .calibrate_open_set(&pairs)
        .context("calibration failed")?;
    close(cat)?;
    println!(
        "open-set threshold {:.4} stored in {db} (accuracy {:.4} on {} known and {} unseen-character queries from {} images)",
        cal.threshold,
        cal.accuracy,
        cal.known,
        cal.unknown,
        pairs.len()
    );
    Ok(())
}
