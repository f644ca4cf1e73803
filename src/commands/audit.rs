//! `animelens audit IMAGE|DIR...` (copyright review: is each upload an edited copy of a catalogued
//! picture, and of which) and `animelens index calibrate-copies` (the verdict's threshold for a
//! target precision, measured on edited copies of the catalogue's own pictures).

use super::embedding::{progress_bar, ImageFile, BATCH};
use super::location::{CatalogPlace, Location};
use super::model_choice::{open_with_model, Missing};
use animelens_index::copy_verdict::DEFAULT_PRECISION;
use animelens_index::{CatalogLogic, CopyFinding, Storage};
use animelens_models::copies::hint::{edit_hint, UploadTraits};
use animelens_models::data::unlabelled_images;
use animelens_models::preprocess::{decode, DEFAULT_MAX_PIXELS};
use animelens_models::{CopyViews, Embedder};
use animelens_web::ingest::calibrate_copies;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rayon::prelude::*;
use std::path::PathBuf;

/// How `audit` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    /// One line per upload.
    Table,
    /// One JSON object per upload.
    Json,
    /// CSV with a header row.
    Csv,
}

/// `animelens audit` options.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Images or folders of images (searched recursively) to review.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The catalogue (a folder or a milvus:// collection).
    #[command(flatten)]
    place: CatalogPlace,
    /// Checkpoint (default: the catalogue's own model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Matches listed per upload.
    #[arg(long, default_value_t = 3)]
    show: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    format: AuditFormat,
}

/// Runs `animelens audit`.
pub fn run_audit(args: AuditArgs) -> Result<()> {
    let db = args.place.location()?;
    let (storage, model) = open_with_model(&db, args.model.as_deref(), Missing::Fail)?;
    let catalog = &*storage;
    if catalog.copy_dim()?.is_none() {
        bail!(
            "the catalogue {db} has no copy descriptors (it was built before copy detection, or \
             copied from another storage); run `animelens index rebuild --reembed` on a folder \
             catalogue, or add its pictures again, to describe them"
        );
    }
    let paths = list_inputs(&args.inputs)?;
    let bar = progress_bar(paths.len(), "reviewing");
    let mut findings = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        findings.extend(review_files(catalog, &model, chunk, args.show)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let copies = findings.iter().filter(|f| f.verdict == "copy").count();
    print_findings(&findings, args.format)?;
    eprintln!("{copies} of {} uploads look like copies", findings.len());
    if findings.first().is_some_and(|f| !f.calibrated) {
        eprintln!(
            "warning: the copy threshold is not calibrated on this catalogue; run \
             `animelens index calibrate-copies` for a verdict at a chosen precision"
        );
    }
    Ok(())
}

/// The image files named by `inputs` (folders searched recursively), in order.
fn list_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let listed = unlabelled_images(input)
                .with_context(|| format!("no images to review in {}", input.display()))?;
            let mut found: Vec<PathBuf> = listed.train.into_iter().chain(listed.held_out).collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(input.clone());
        }
    }
    Ok(paths)
}

/// A readable upload with its views' descriptors, or why it cannot be reviewed.
type Described = std::result::Result<(ImageFile, Vec<Vec<f32>>), String>;

/// Reviews one batch of files.
fn review_files(
    catalog: &dyn Storage,
    model: &dyn Embedder,
    paths: &[PathBuf],
    show: usize,
) -> Result<Vec<CopyFinding>> {
    let files: Vec<std::result::Result<ImageFile, String>> =
        paths.par_iter().map(|p| ImageFile::read(p)).collect();
    let bytes: Vec<&[u8]> = files
        .iter()
        .filter_map(|f| f.as_ref().ok().map(|f| f.bytes.as_slice()))
        .collect();
    let mut described = model
        .predict_batch(&bytes, 1, Some(CopyViews::Query))
        .into_iter()
        .map(|p| p.map(|p| p.copies));
    let uploads: Vec<(String, Described)> = paths
        .iter()
        .zip(files)
        .map(|(path, file)| {
            let described = file.and_then(|f| {
                let views = described.next().expect("one result per readable file");
                views.map(|v| (f, v)).map_err(|e| e.to_string())
            });
            (path.display().to_string(), described)
        })
        .collect();
    // Each review searches the copy graph: they run side by side.
    uploads
        .into_par_iter()
        .map(|(name, described)| {
            let (file, views) = match described {
                Ok(d) => d,
                Err(e) => return Ok(CopyFinding::failed(name, e)),
            };
            let traits = decode(&file.bytes, DEFAULT_MAX_PIXELS)
                .map(|img| UploadTraits::of(&img))
                .unwrap_or_default();
            Ok(
                catalog.audit_upload(name, &file.content_hash, &views, show, |m| {
                    edit_hint(m.query_view, m.view, traits)
                        .into_iter()
                        .map(String::from)
                        .collect()
                })?,
            )
        })
        .collect()
}

fn print_findings(findings: &[CopyFinding], format: AuditFormat) -> Result<()> {
    match format {
        AuditFormat::Json => {
            for f in findings {
                println!("{}", serde_json::to_string(f)?);
            }
        }
        AuditFormat::Csv => {
            println!("upload,verdict,score,threshold,edit,match_id,match_source,match_character,similarity,error");
            for f in findings {
                let best = f.matches.first();
                let row = [
                    f.upload.clone(),
                    f.verdict.to_string(),
                    format!("{:.4}", f.score),
                    format!("{:.4}", f.threshold),
                    f.edit.join(" "),
                    best.map_or(String::new(), |m| m.id.to_string()),
                    best.map_or(String::new(), |m| m.source.clone()),
                    best.and_then(|m| m.character.clone()).unwrap_or_default(),
                    best.map_or(String::new(), |m| format!("{:.4}", m.similarity)),
                    f.error.clone().unwrap_or_default(),
                ];
                println!("{}", row.map(|c| csv_field(&c)).join(","));
            }
        }
        AuditFormat::Table => {
            for f in findings {
                let best = f.matches.first();
                match (&f.error, best) {
                    (Some(e), _) => println!("{}\terror: {e}", f.upload),
                    (None, Some(m)) if f.verdict == "copy" => println!(
                        "{}\tcopy of item {} ({}){}\tscore {:.3}{}",
                        f.upload,
                        m.id,
                        m.source,
                        m.character
                            .as_ref()
                            .map_or(String::new(), |c| format!(", {c}")),
                        f.score,
                        if f.edit.is_empty() {
                            String::new()
                        } else {
                            format!("\t{}", f.edit.join(", "))
                        }
                    ),
                    _ => println!("{}\tnot a copy\tscore {:.3}", f.upload, f.score),
                }
            }
        }
    }
    Ok(())
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `animelens index calibrate-copies` options.
#[derive(Args, Debug)]
pub struct CalibrateCopiesArgs {
    /// Checkpoint (default: the catalogue's own model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Precision the threshold is chosen for.
    #[arg(long, default_value_t = DEFAULT_PRECISION)]
    precision: f32,
    /// Catalogued pictures edited for the calibration (each by every edit).
    #[arg(long, default_value_t = 100)]
    sample: usize,
    /// Seed of the sample and the edits.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Runs `animelens index calibrate-copies`: edits a seeded sample of catalogued pictures (their
/// source files, else their thumbnails) with every targeted edit and stores the threshold that
/// reaches the precision (see `Catalog::calibrate_copies`).
pub fn run_calibrate_copies(db: &Location, args: CalibrateCopiesArgs) -> Result<()> {
    let (storage, model) = open_with_model(db, args.model.as_deref(), Missing::Fail)?;
    let catalog = &*storage;
    let bar = progress_bar(
        args.sample.min(catalog.counts().live),
        "calibrating the copy threshold",
    );
    let verdict = calibrate_copies(
        catalog,
        &model,
        args.precision,
        args.sample,
        args.seed,
        &|| bar.inc(1),
    )?;
    bar.finish_and_clear();
    println!(
        "copy threshold {:.4} for precision {} (recall {:.3} on edited copies of {} pictures)",
        verdict.threshold,
        verdict.precision,
        verdict.recall,
        args.sample.min(catalog.counts().live)
    );
    Ok(())
}
