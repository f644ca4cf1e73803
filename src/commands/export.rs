//! `animelens index export --to DEST [--from SRC]`: copies a catalogue between storages with
//! [`animelens_index::copy_catalogue`] — the embedded catalogue of `--db` into a Milvus collection
//! (`--to milvus://HOST:PORT/COLLECTION`), or a Milvus-backed catalogue back into a local folder
//! (`--from milvus://… --to DIR`). Ids, records, vectors, thumbnails, enrolments, users' events and
//! the open-set threshold travel; running it again resumes a copy that was cut short.

use super::location::{CatalogPlace, Location};
use animelens_index::copy_catalogue;
use anyhow::{bail, Context};

/// Arguments of `animelens index export` (a Milvus end's records folder is `--records`).
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to copy to: `milvus://HOST:PORT/COLLECTION`, or a folder for a new embedded catalogue.
    #[arg(long)]
    to: String,
    /// Where to copy from instead of `--db`: `milvus://HOST:PORT/COLLECTION` (with `--records`).
    #[arg(long)]
    from: Option<String>,
}

/// Runs the copy from `--from` (or the catalogue at `place`) into `--to`; `--records` is the
/// records folder of whichever end is in Milvus.
pub fn run(place: &CatalogPlace, args: ExportArgs) -> anyhow::Result<()> {
    let records = place.records.as_deref();
    let from = match &args.from {
        Some(text) => Location::parse(text, records)?,
        None => place.location()?,
    };
    let to = Location::parse(&args.to, records)?;
    match (&from, &to) {
        (Location::Milvus { .. }, Location::Milvus { .. }) => {
            bail!("both ends are Milvus collections; copy to a folder first, then from it")
        }
        (Location::Folder(a), Location::Folder(b)) if a == b => {
            bail!("the source and the destination are the same folder")
        }
        _ => {}
    }
    let source = from
        .open(None)
        .with_context(|| format!("cannot open the source catalogue {from}"))?;
    let destination = to
        .open(Some(source.model().clone()))
        .with_context(|| format!("cannot open the destination {to}"))?;
    let report = copy_catalogue(&*source, &*destination, true)?;
    super::location::close(destination)?;
    println!("{report} into {to}");
    Ok(())
}
