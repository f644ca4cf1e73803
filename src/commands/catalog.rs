//! `animelens index <subcommand> --db DIR|milvus://…`: the catalogue's life cycle. This module parses the
//! subcommands and runs those that need neither the network nor HTTP (stats, update, remove, compact,
//! rebuild, import of precomputed vectors); `add`, `calibrate` and `rebuild --reembed` embed images
//! and live in [`super::ingest`], [`super::characters`] and [`super::reembed`].
//!
//! `tests/catalog_crash.rs` runs `animelens index --db DIR import-vectors FILE --fingerprint FP`.

use super::location::{close, CatalogPlace, Location};
use animelens_index::{Catalog, ItemUpdate, NewItem, OpenOptions};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Catalogue subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Embed a labelled folder or CSV manifest with a model and add its images.
    Add(super::ingest::AddArgs),
    /// Calibrate the open-set ("unknown") threshold of `identify` on validation data.
    Calibrate(super::characters::CalibrateArgs),
    /// Calibrate the copy verdict's threshold (`audit`) for a precision, on edited copies of the
    /// catalogue's own pictures.
    CalibrateCopies(super::audit::CalibrateCopiesArgs),
    /// Print item counts, dimension, model fingerprint, size on disk and generation.
    Stats,
    /// Copy the catalogue into another storage (`--to milvus://HOST:PORT/COLLECTION`), or a
    /// Milvus-backed one back into a folder (`--from milvus://… --to DIR`); resumable.
    Export(super::export::ExportArgs),
    /// Change an item's labels and/or tags (each flag given replaces that part of the record).
    Update {
        /// The item's id.
        id: u64,
        /// New labels as `level=value`, replacing all the item's labels (repeatable).
        #[arg(long = "label", value_name = "LEVEL=VALUE")]
        labels: Vec<String>,
        /// New tags, replacing all the item's tags (repeatable).
        #[arg(long = "tag", conflicts_with = "clear_tags")]
        tags: Vec<String>,
        /// Remove all the item's tags.
        #[arg(long)]
        clear_tags: bool,
    },
    /// Remove an item (tombstone; `compact` deletes its records).
    Remove {
        /// The item's id.
        id: u64,
    },
    /// Delete removed items' records and rebuild the search index without them.
    Compact,
    /// Rebuild the search index from the store; with --reembed, re-embed every item with a new model.
    Rebuild {
        /// Re-embed every item from its source file with --model, then switch the catalogue to it.
        #[arg(long, requires = "model")]
        reembed: bool,
        /// Checkpoint to re-embed with.
        #[arg(long, requires = "reembed")]
        model: Option<PathBuf>,
        /// Folder that relative item sources are resolved against (e.g. the gallery folder of
        /// `animelens serve`); items whose source is missing are re-embedded from their thumbnail.
        #[arg(long, requires = "reembed", default_value = ".")]
        source_root: PathBuf,
    },
    /// Add precomputed embeddings from a JSON-lines file; prints `added <id>` for each durable add.
    ImportVectors {
        /// JSONL file: one {"source":..., "labels":{...}, "tags":[...], "vector":[...]} per line
        /// (optional "content_hash", "width", "height").
        file: PathBuf,
        /// Model fingerprint of the vectors; required when the catalogue does not exist yet.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Lines written per transaction.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
}

/// One line of an import file.
#[derive(Debug, Deserialize)]
struct ImportLine {
    source: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
    vector: Vec<f32>,
    #[serde(default)]
    content_hash: String,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

impl From<ImportLine> for NewItem {
    fn from(l: ImportLine) -> Self {
        NewItem {
            source: l.source,
            labels: l.labels,
            tags: l.tags,
            width: l.width,
            height: l.height,
            content_hash: l.content_hash,
            thumbnail: Vec::new(),
            vector: l.vector,
            copies: Vec::new(),
            frame: None,
        }
    }
}

/// The change `index update` asks for; at least one part must be given.
fn item_update(
    labels: &[String],
    tags: Vec<String>,
    clear_tags: bool,
) -> anyhow::Result<ItemUpdate> {
    let labels = labels
        .iter()
        .map(|pair| {
            let (level, value) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "label {pair:?} is not LEVEL=VALUE; write e.g. --label character=gura"
                )
            })?;
            Ok((level.trim().to_string(), value.trim().to_string()))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    if labels.is_empty() && tags.is_empty() && !clear_tags {
        bail!("nothing to change: pass --label LEVEL=VALUE, --tag TAG or --clear-tags");
    }
    Ok(ItemUpdate {
        labels: (!labels.is_empty()).then_some(labels),
        tags: (!tags.is_empty() || clear_tags).then_some(tags),
    })
}

/// Opens the existing embedded catalogue in the folder of `db` whatever its model, for `what`,
/// which only the embedded catalogue can do.
fn open_folder(db: &Location, what: &str) -> anyhow::Result<Catalog> {
    let mut options = OpenOptions::existing();
    options.show_progress = true;
    Ok(Catalog::open(db.folder(what)?, options)?)
}

/// Runs one catalogue subcommand on the catalogue at `place`.
pub fn run(place: &CatalogPlace, cmd: CatalogCommand) -> anyhow::Result<()> {
    let db = place.location()?;
    match cmd {
        CatalogCommand::Add(args) => super::ingest::run_add(&db, args)?,
        CatalogCommand::Calibrate(args) => super::characters::run_calibrate(&db, args)?,
        CatalogCommand::CalibrateCopies(args) => super::audit::run_calibrate_copies(&db, args)?,
        CatalogCommand::Rebuild {
            model: Some(model),
            source_root,
            ..
        } => match &db {
            Location::Folder(dir) => super::reembed::run_reembed(dir, &model, &source_root)?,
            Location::Milvus { .. } => bail!(
                "`index rebuild --reembed` re-embeds a catalogue folder in place; a catalogue on \
                 Milvus changes model by a re-embedding copy into a new collection: `animelens \
                 index --db {} export --to milvus://HOST:PORT/NEW_COLLECTION --to-records NEW_DIR \
                 --reembed-with {}`, then point the service at it",
                db.arguments(),
                model.display()
            ),
        },
        CatalogCommand::Export(args) => super::export::run(place, args)?,
        CatalogCommand::Stats => println!("{}", db.open(None)?.stats()?),
        CatalogCommand::Update {
            id,
            labels,
            tags,
            clear_tags,
        } => {
            let change = item_update(&labels, tags, clear_tags)?;
            let catalog = db.open(None)?;
            let item = catalog.update(id, &change)?;
            close(catalog)?;
            let labels: Vec<String> = item
                .labels
                .iter()
                .map(|(l, v)| format!("{l}={v}"))
                .collect();
            println!(
                "updated {id}: labels {} tags {}",
                labels.join(","),
                item.tags.join(",")
            );
        }
        CatalogCommand::Remove { id } => {
            let catalog = db.open(None)?;
            catalog.remove(id)?;
            close(catalog)?;
            println!("removed {id}");
        }
        CatalogCommand::Compact => {
            let catalog = db.open(None)?;
            let report = catalog.compact()?;
            close(catalog)?;
            println!(
                "purged {} removed items; {} live items indexed",
                report.purged, report.live
            );
        }
        CatalogCommand::Rebuild { model: None, .. } => {
            let live = open_folder(&db, "`index rebuild`")?.rebuild()?;
            println!("rebuilt the index over {live} live items");
        }
        CatalogCommand::ImportVectors {
            file,
            fingerprint,
            batch,
        } => import(&db, &file, fingerprint, batch.max(1))?,
    }
    Ok(())
}

/// Reads `file` and adds its items in batches, reporting each durable add on stdout.
fn import(
    db: &Location,
    file: &Path,
    fingerprint: Option<String>,
    batch: usize,
) -> anyhow::Result<()> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file)
            .with_context(|| format!("cannot open import file {}", file.display()))?,
    );
    let mut lines = reader
        .lines()
        .enumerate()
        .filter_map(|(n, line)| match line {
            Ok(l) if l.trim().is_empty() => None,
            other => Some((n + 1, other)),
        });
    let parse = |(n, line): (usize, std::io::Result<String>)| -> anyhow::Result<NewItem> {
        let line = line.with_context(|| format!("cannot read line {n} of {}", file.display()))?;
        let parsed: ImportLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "line {n} of {} is not a valid record; each line must be \
                 {{\"source\":\"...\",\"labels\":{{...}},\"tags\":[...],\"vector\":[...]}}",
                file.display()
            )
        })?;
        Ok(parsed.into())
    };
    let Some(first) = lines.next().map(parse).transpose()? else {
        bail!("{} holds no records; nothing imported", file.display());
    };
    let model = fingerprint.map(|fingerprint| animelens_index::ModelTag {
        fingerprint,
        dim: first.vector.len(),
    });
    let cat = db.open(model).map_err(|e| {
        match e.downcast_ref::<animelens_index::CatalogError>() {
            Some(animelens_index::CatalogError::NotInitialised { .. }) => anyhow::anyhow!(
                "{e}\n(import-vectors creates the catalogue when given --fingerprint FP, the fingerprint of the model that produced the vectors)"
            ),
            _ => e,
        }
    })?;
    let (mut added, mut duplicates) = (0usize, 0usize);
    let mut pending = vec![first];
    let stdout = std::io::stdout();
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some(line) = next {
            pending.push(parse(line)?);
        }
        if pending.len() >= batch || (done && !pending.is_empty()) {
            let outcomes = cat.add_batch(std::mem::take(&mut pending))?;
            let mut out = stdout.lock();
            for o in outcomes {
                if o.duplicate {
                    duplicates += 1;
                    writeln!(out, "duplicate {}", o.id)?;
                } else {
                    added += 1;
                    writeln!(out, "added {}", o.id)?;
                }
            }
            out.flush()?;
        }
        if done {
            break;
        }
    }
    close(cat)?;
    eprintln!("imported {added} new items ({duplicates} duplicates) into {db}");
    Ok(())
}
