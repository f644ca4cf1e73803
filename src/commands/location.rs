//! Where a command's catalogue lives, so that every command that reads or writes items works on
//! either storage: `--db DIR` is the embedded catalogue in a folder; `--db
//! milvus://HOST[:PORT]/COLLECTION --records DIR` is a catalogue whose vectors are in a Milvus
//! collection and whose records are in `DIR` (the service's `data_dir/catalog` when it runs with
//! `backend = "milvus"`). Commands that only the embedded catalogue can do (rebuilding its graph,
//! re-embedding in place) ask for [`Location::folder`] and say so when given a Milvus one.

use animelens_index::{Catalog, CatalogError, ModelTag, OpenOptions, Storage};
use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Catalogue folder used when `--db` is not given.
pub const DEFAULT_DB: &str = "animelens-data/catalog";

const NEEDS_RECORDS: &str = "a milvus:// catalogue needs --records DIR: the folder of the records \
     kept beside the collection (the service's data_dir/catalog with backend = \"milvus\")";

/// The `--db` / `--records` pair every catalogue command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogPlace {
    /// Catalogue: a folder (the embedded catalogue), or milvus://HOST[:PORT]/COLLECTION for one
    /// whose vectors are in Milvus (with --records; the token, if the server needs one, comes from
    /// ANIMELENS_MILVUS_TOKEN).
    #[arg(long, global = true, default_value = DEFAULT_DB)]
    pub db: String,
    /// With a milvus:// catalogue: the folder of the records kept beside the collection (the
    /// service's data_dir/catalog with backend = "milvus").
    #[arg(long, global = true, value_name = "DIR")]
    pub records: Option<PathBuf>,
}

impl CatalogPlace {
    /// The parsed `--db`.
    pub fn location(&self) -> Result<Location> {
        Location::parse(&self.db, self.records.as_deref())
    }
}

/// One catalogue's place.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// An embedded catalogue folder.
    Folder(PathBuf),
    /// A Milvus collection, with the folder of its records when given.
    Milvus {
        uri: String,
        collection: String,
        records: Option<PathBuf>,
    },
}

impl Location {
    /// Parses `milvus://HOST[:PORT]/COLLECTION` (port 19530 by default) or a folder path.
    pub fn parse(text: &str, records: Option<&Path>) -> Result<Location> {
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
                "{text:?} is not milvus://HOST:PORT/COLLECTION (a collection name is letters, \
                 digits and underscores, not starting with a digit)"
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
            records: records.map(Path::to_path_buf),
        })
    }

    /// Whether a catalogue has been created here (for Milvus: whether its records folder holds
    /// one; the collection is checked when it is opened).
    pub fn exists(&self) -> bool {
        match self {
            Location::Folder(dir) => Catalog::exists(dir),
            Location::Milvus { records, .. } => records.as_deref().is_some_and(Catalog::exists),
        }
    }

    /// The error for a command that reads a catalogue where none was created.
    pub fn missing(&self) -> anyhow::Error {
        match self {
            Location::Folder(dir) => CatalogError::NotInitialised { dir: dir.clone() }.into(),
            Location::Milvus { records: None, .. } => anyhow!(NEEDS_RECORDS),
            Location::Milvus {
                records: Some(records),
                ..
            } => anyhow!(
                "{} holds no catalogue records; create the catalogue with `animelens index --db {} \
                 add FOLDER`, or point --records at the folder the records are in",
                records.display(),
                self.arguments()
            ),
        }
    }

    /// The folder of an embedded catalogue, or an error saying that `what` needs one.
    pub fn folder(&self, what: &str) -> Result<&Path> {
        match self {
            Location::Folder(dir) => Ok(dir),
            Location::Milvus { .. } => bail!(
                "{what} works on an embedded catalogue folder, not on {self}; copy the catalogue \
                 into a folder with `animelens index --db {} export --to DIR` and run it there",
                self.arguments()
            ),
        }
    }

    /// The command-line arguments that name this catalogue (`DIR`, or `milvus://… --records DIR`).
    pub fn arguments(&self) -> String {
        match self {
            Location::Folder(dir) => dir.display().to_string(),
            Location::Milvus {
                uri,
                collection,
                records,
            } => {
                let host = uri.trim_start_matches("http://");
                let records = records
                    .as_deref()
                    .map_or("DIR".to_string(), |r| r.display().to_string());
                format!("milvus://{host}/{collection} --records {records}")
            }
        }
    }

    /// Opens the catalogue here; creates it with `model` when given and there is none yet (an
    /// existing one must hold `model`'s embeddings).
    pub fn open(&self, model: Option<ModelTag>) -> Result<Box<dyn Storage>> {
        match self {
            Location::Folder(dir) => {
                let mut options = match model {
                    Some(model) => OpenOptions::new(model),
                    None => OpenOptions::existing(),
                };
                options.show_progress = true;
                Ok(Box::new(Catalog::open(dir, options)?))
            }
            Location::Milvus {
                uri,
                collection,
                records,
            } => {
                let records = records.as_deref().context(NEEDS_RECORDS)?;
                open_milvus(uri, collection, records, model)
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Folder(dir) => write!(f, "{}", dir.display()),
            Location::Milvus {
                uri, collection, ..
            } => write!(f, "collection {collection} at {uri}"),
        }
    }
}

/// Makes a command's writes durable and fast to reopen before the process exits: the embedded
/// catalogue saves its graph (reporting a failure, which `Drop` can only log), Milvus flushes
/// the rows written.
pub fn close(storage: Box<dyn Storage>) -> Result<()> {
    if let Some(catalog) = storage.embedded() {
        catalog.save_index()?;
    }
    storage.settle()?;
    Ok(())
}

#[cfg(feature = "milvus")]
fn open_milvus(
    uri: &str,
    collection: &str,
    records: &Path,
    model: Option<ModelTag>,
) -> Result<Box<dyn Storage>> {
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
fn open_milvus(_: &str, _: &str, _: &Path, _: Option<ModelTag>) -> Result<Box<dyn Storage>> {
    bail!("this animelens was built without the Milvus client; build it with `--features milvus`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_a_default_port_and_checked_names() {
        assert_eq!(
            Location::parse("milvus://db.example:19531/anime_1", Some(Path::new("r"))).unwrap(),
            Location::Milvus {
                uri: "http://db.example:19531".into(),
                collection: "anime_1".into(),
                records: Some("r".into()),
            }
        );
        assert_eq!(
            Location::parse("milvus://db/c", None).unwrap(),
            Location::Milvus {
                uri: "http://db:19530".into(),
                collection: "c".into(),
                records: None,
            }
        );
        assert_eq!(
            Location::parse("some/dir", None).unwrap(),
            Location::Folder("some/dir".into())
        );
        for bad in [
            "milvus://db",
            "milvus:///c",
            "milvus://db/1c",
            "milvus://db/a-b",
        ] {
            assert!(Location::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_milvus_catalogue_is_refused_where_a_folder_is_needed_and_named_as_typed() {
        let milvus = Location::parse("milvus://h:1/c", Some(Path::new("recs"))).unwrap();
        assert_eq!(milvus.arguments(), "milvus://h:1/c --records recs");
        let refusal = milvus.folder("`index rebuild`").unwrap_err().to_string();
        assert!(
            refusal.contains("`index rebuild` works on an embedded"),
            "{refusal}"
        );
        assert!(refusal.contains("--db milvus://h:1/c --records recs export --to DIR"));
        let no_records = Location::parse("milvus://h:1/c", None).unwrap();
        let missing = no_records.open(None).err().unwrap().to_string();
        assert!(missing.contains("needs --records DIR"), "{missing}");
        assert!(no_records
            .missing()
            .to_string()
            .contains("needs --records DIR"));
        let hint = milvus.missing().to_string();
        assert!(hint.contains("recs holds no catalogue records"), "{hint}");
        assert!(
            hint.contains("--db milvus://h:1/c --records recs add FOLDER"),
            "{hint}"
        );
        assert!(!no_records.exists());
        let folder = Location::parse("x/y", None).unwrap();
        assert_eq!(folder.folder("rebuild").unwrap(), Path::new("x/y"));
    }
}
