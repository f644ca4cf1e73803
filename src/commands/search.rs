//! `animelens search` (items most similar to an image or to an item, with label and tag filters)
//! and `animelens similar-characters` (characters ranked by centroid cosine).

use super::embedding::{embed, ImageFile};
use super::location::CatalogPlace;
use super::model_choice::{open_with_model, Missing};
use animelens_index::{CatalogLogic, Filter, Hit};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// `animelens search` options.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Query image.
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    image: Option<PathBuf>,
    /// Query by the id of a catalogue item (the item itself is not returned).
    #[arg(long)]
    id: Option<u64>,
    /// Number of results.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Keep only items with this label, as `level=value` (repeatable, all must hold).
    #[arg(long = "filter", value_name = "LEVEL=VALUE")]
    filters: Vec<String>,
    /// Keep only items with this tag (repeatable, all must hold).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Checkpoint that embeds the query image (default: the catalogue's own model, else the
    /// shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    place: CatalogPlace,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses `level=value` filters and tags into a [`Filter`].
fn parse_filter(filters: &[String], tags: &[String]) -> Result<Filter> {
    let mut filter = Filter::any();
    for f in filters {
        let (level, value) = f.split_once('=').ok_or_else(|| {
            anyhow!("filter {f:?} is not LEVEL=VALUE; write e.g. --filter character=gura")
        })?;
        filter = filter.label(level.trim(), value.trim());
    }
    for t in tags {
        filter = filter.tag(t.as_str());
    }
    Ok(filter)
}

/// Embeds one image file with `model`, with an error naming the file.
pub fn embed_image(model: &dyn animelens_models::Embedder, path: &Path) -> Result<Vec<f32>> {
    let file = ImageFile::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    embed(model, &[&file.bytes])
        .remove(0)
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Runs `animelens search`.
pub fn run_search(args: SearchArgs) -> Result<()> {
    let filter = parse_filter(&args.filters, &args.tags)?;
    let db = args.place.location()?;
    let hits = match (&args.image, args.id) {
        (Some(image), _) => {
            let (cat, model) = open_with_model(&db, args.model.as_deref(), Missing::Fail)?;
            let query = embed_image(&model, image)?;
            cat.search(&query, args.k, &filter)?
        }
        (None, Some(id)) => {
            let cat = match &args.model {
                Some(m) => open_with_model(&db, Some(m), Missing::Fail)?.0,
                None => db.open(None)?,
            };
            cat.search_by_id(id, args.k, &filter)?
        }
        (None, None) => bail!("pass --image FILE or --id ID"),
    };
    print_hits(&hits, args.json).context("cannot write the results")
}

fn print_hits(hits: &[Hit], json: bool) -> Result<()> {
    if hits.is_empty() {
        eprintln!("no item matches (is the catalogue empty, or the filter too strict?)");
    }
    for (rank, h) in hits.iter().enumerate() {
        if json {
            let line = serde_json::json!({
                "rank": rank + 1,
                "id": h.id,
                "score": h.score,
                "labels": h.item.labels,
                "tags": h.item.tags,
                "source": h.item.source,
            });
            println!("{line}");
        } else {
            let labels: Vec<String> = h
                .item
                .labels
                .iter()
                .map(|(l, v)| format!("{l}={v}"))
                .collect();
            println!(
                "{:>3}  id {:<6}  {:.4}  {}  {}",
                rank + 1,
                h.id,
                h.score,
                labels.join(","),
                h.item.source
            );
        }
    }
    Ok(())
}

/// `animelens similar-characters` options.
#[derive(Args, Debug)]
pub struct SimilarArgs {
    /// The character (a label at the `character` level, or an enrolled name).
    name: String,
    /// Number of characters to list.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    #[command(flatten)]
    place: CatalogPlace,
    /// Print one JSON object per character instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `animelens similar-characters`.
pub fn run_similar(args: SimilarArgs) -> Result<()> {
    let cat = args.place.location()?.open(None)?;
    for (rank, c) in cat
        .similar_characters(&args.name, args.k)?
        .iter()
        .enumerate()
    {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "rank": rank + 1, "name": c.name, "score": c.score })
            );
        } else {
            println!("{:>3}  {:.4}  {}", rank + 1, c.score, c.name);
        }
    }
    Ok(())
}
