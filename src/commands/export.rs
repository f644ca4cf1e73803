//! `animelens index export --to DEST [--from SRC]`: copies a catalogue between storages with
//! [`animelens_index::copy_catalogue`] — the embedded catalogue of `--db` into a Milvus collection
//! (`--to milvus://HOST:PORT/COLLECTION`), or a Milvus-backed catalogue back into a local folder
//! (`--from milvus://… --to DIR`). Ids, records, vectors, thumbnails, enrolments, users' events and
//! the open-set threshold travel; running it again resumes a copy that was cut short. With
//! `--reembed-with CKPT` every item is embedded again with that model on the way, which is how a
//! catalogue on Milvus changes model: into a new collection, then the service is pointed at it.

use super::embedding::{load_model, model_tag};
use super::location::{CatalogPlace, Location};
use super::model_choice::absolute;
use super::reembed::embed_batch;
use animelens_index::{copy_catalogue, reembed_catalogue, ReembedItem};
use animelens_models::Embedder;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Arguments of `animelens index export` (a Milvus end's records folder is `--records`).
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to copy to: `milvus://HOST:PORT/COLLECTION`, or a folder for a new embedded catalogue.
    #[arg(long)]
    to: String,
    /// Where to copy from instead of `--db`: `milvus://HOST:PORT/COLLECTION` (with `--records`).
    #[arg(long)]
    from: Option<String>,
    /// The destination's records folder when it is a Milvus collection and `--records` names the
    /// source's (both ends on Milvus, e.g. re-embedding into a new collection).
    #[arg(long, value_name = "DIR")]
    to_records: Option<PathBuf>,
    /// Re-embed every item with this checkpoint on the way (the destination is a new catalogue of
    /// that model; the source is left as it is): how a Milvus-backed catalogue changes model.
    #[arg(long, value_name = "CKPT")]
    reembed_with: Option<PathBuf>,
    /// With --reembed-with: the folder relative item sources are resolved against; items whose
    /// source is missing are re-embedded from their thumbnail.
    #[arg(long, requires = "reembed_with", default_value = ".")]
    source_root: PathBuf,
}

/// Runs the copy from `--from` (or the catalogue at `place`) into `--to`; `--records` is the
/// records folder of whichever end is in Milvus.
pub fn run(place: &CatalogPlace, args: ExportArgs) -> anyhow::Result<()> {
    let records = place.records.as_deref();
    let from = match &args.from {
        Some(text) => Location::parse(text, records)?,
        None => place.location()?,
    };
    let to = Location::parse(&args.to, args.to_records.as_deref().or(records))?;
    match (&from, &to) {
        (a, b) if a == b => bail!("the source and the destination are the same catalogue"),
        (Location::Milvus { records: a, .. }, Location::Milvus { records: b, .. }) if a == b => {
            bail!(
                "both ends are Milvus collections with the same records folder; give the \
                 destination its own with --to-records DIR"
            )
        }
        _ => {}
    }
    let source = from
        .open(None)
        .with_context(|| format!("cannot open the source catalogue {from}"))?;
    let Some(checkpoint) = &args.reembed_with else {
        let destination = to
            .open(Some(source.model().clone()))
            .with_context(|| format!("cannot open the destination {to}"))?;
        let report = copy_catalogue(&*source, &*destination, true)?;
        super::location::close(destination)?;
        println!("{report} into {to}");
        return Ok(());
    };
    let model = load_model(checkpoint)?;
    let destination = to
        .open(Some(model_tag(&model)))
        .with_context(|| format!("cannot open the destination {to}"))?;
    let from_thumbnail = AtomicUsize::new(0);
    let mut embed =
        |items: &[ReembedItem]| embed_batch(&model, items, &args.source_root, &from_thumbnail);
    let report = reembed_catalogue(&*source, &*destination, true, &mut embed)?;
    destination.set_model_source(&absolute(checkpoint))?;
    super::location::close(destination)?;
    for (id, reason) in &report.not_reembedded {
        eprintln!("left out item {id}: cannot re-embed it: {reason}");
    }
    println!(
        "{report} into {to}, re-embedded with model {} ({} from their thumbnail); point the \
         service at it and run `animelens index calibrate` there: the open-set and copy \
         thresholds belonged to the old model",
        model.fingerprint(),
        from_thumbnail.load(Ordering::Relaxed)
    );
    Ok(())
}
