//! `animelens index export --to DEST [--from SRC]`: copies a catalogue between storages with
//! [`animelens_index::copy_catalogue`] — the embedded catalogue of `--db` into a Milvus collection
//! (`--to milvus://HOST:PORT/COLLECTION`), or a Milvus-backed catalogue back into a local folder
//! (`--from milvus://… --to DIR`). Ids, records, vectors, thumbnails, enrolments, users' events and
//! the open-set threshold travel; running it again resumes a copy that was cut short.

use animelens_index::{copy_catalogue, Catalog, ModelTag, OpenOptions, Storage};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Arguments of `animelens index export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to copy to: `milvus://HOST:PORT/COLLECTION`, or a folder for a new embedded catalogue.
    #[arg(long)]
    to: String,
    /// Where to copy from instead of `--db`: `milvus://HOST:PORT/COLLECTION` (with `--records`).
    #[arg(long)]
    from: Option<String>,
    /// The folder of the records kept beside the Milvus collection: the service's
    /// `data_dir/catalog` when it runs with `backend = "milvus"`. The token, if the server needs
    /// one, comes from ANIMELENS_MILVUS_TOKEN.
    #[arg(long)]
    records: Option<PathBuf>,
}

/// One end of a copy.
#[derive(Debug, PartialEq)]
enum Location {
    /// An embedded catalogue folder.
    Folder(PathBuf),
    /// A Milvus collection.
    Milvus { uri: String, collection: String },
}

/// Parses `milvus://HOST[:PORT]/COLLECTION` (port 19530 by default) or a folder path.
fn parse_location(text: &str) -> anyhow::Result<Location> {
    let Some(rest) = text.strip_prefix("milvus://") else {
        return Ok(Location::Folder(PathBuf::from(text)));
    };
    let Some((host, collection)) = rest.split_once('/') else {
        bail!("{text:?} names no collection; write milvus://HOST:PORT/COLLECTION");
    };
    let valid = |c: &str| {
        c.chars()
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    if host.is_empty() || !valid(collection) {
        bail!(
            "{text:?} is not milvus://HOST:PORT/COLLECTION (a collection name is letters, digits \
             and underscores, not starting with a digit)"
        );
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:19530")
    };
    Ok(Location::Milvus {
        uri: format!("http://{host}"),
        collection: collection.to_string(),
    })
}

/// Runs the copy from `--from` (or the catalogue in `db`) into `--to`.
pub fn run(db: &Path, args: ExportArgs) -> anyhow::Result<()> {
    let from = match &args.from {
        Some(text) => parse_location(text)?,
        None => Location::Folder(db.to_path_buf()),
    };
    let to = parse_location(&args.to)?;
    match (&from, &to) {
        (Location::Milvus { .. }, Location::Milvus { .. }) => {
            bail!("both ends are Milvus collections; copy to a folder first, then from it")
        }
        (Location::Folder(a), Location::Folder(b)) if a == b => {
            bail!("the source and the destination are the same folder")
        }
        _ => {}
    }
    let source = open(&from, None, args.records.as_deref())
        .with_context(|| format!("cannot open the source catalogue {}", describe(&from)))?;
    let destination = open(&to, Some(source.model().clone()), args.records.as_deref())
        .with_context(|| format!("cannot open the destination {}", describe(&to)))?;
    let report = copy_catalogue(&*source, &*destination, true)?;
    if let Some(catalog) = destination.embedded() {
        catalog.save_index()?;
    }
    println!("{report} into {}", describe(&to));
    Ok(())
}

fn describe(location: &Location) -> String {
    match location {
        Location::Folder(dir) => dir.display().to_string(),
        Location::Milvus { uri, collection } => format!("collection {collection} at {uri}"),
    }
}

/// Opens one end; `model` is given for the destination (created with the source's model).
fn open(
    location: &Location,
    model: Option<ModelTag>,
    records: Option<&Path>,
) -> anyhow::Result<Box<dyn Storage>> {
    match location {
        Location::Folder(dir) => {
            let mut options = match model {
                Some(model) => OpenOptions::new(model),
                None => OpenOptions::existing(),
            };
            options.show_progress = true;
            Ok(Box::new(Catalog::open(dir, options)?))
        }
        Location::Milvus { uri, collection } => {
            let records = records.context(
                "a milvus:// end needs --records DIR: the folder of the records kept beside the \
                 collection (the service's data_dir/catalog with backend = \"milvus\")",
            )?;
            open_milvus(uri, collection, records, model)
        }
    }
}

#[cfg(feature = "milvus")]
fn open_milvus(
    uri: &str,
    collection: &str,
    records: &Path,
    model: Option<ModelTag>,
) -> anyhow::Result<Box<dyn Storage>> {
    let config = animelens_index::MilvusConfig {
        uri: uri.to_string(),
        collection: collection.to_string(),
        token: std::env::var("ANIMELENS_MILVUS_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    Ok(Box::new(animelens_index::MilvusStorage::open(
        records,
        &config,
        model,
        &animelens_index::HnswParams::default(),
    )?))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(
    _: &str,
    _: &str,
    _: &Path,
    _: Option<ModelTag>,
) -> anyhow::Result<Box<dyn Storage>> {
    bail!("this animelens was built without the Milvus client; build it with `--features milvus`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_a_default_port_and_checked_names() {
        assert_eq!(
            parse_location("milvus://db.example:19531/anime_1").unwrap(),
            Location::Milvus {
                uri: "http://db.example:19531".into(),
                collection: "anime_1".into()
            }
        );
        assert_eq!(
            parse_location("milvus://db/c").unwrap(),
            Location::Milvus {
                uri: "http://db:19530".into(),
                collection: "c".into()
            }
        );
        assert_eq!(
            parse_location("some/dir").unwrap(),
            Location::Folder("some/dir".into())
        );
        for bad in [
            "milvus://db",
            "milvus:///c",
            "milvus://db/1c",
            "milvus://db/a-b",
        ] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
    }
}
