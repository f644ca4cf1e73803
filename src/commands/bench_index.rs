//! `animelens bench index`: the catalogue benchmark. Recall@10 against exact search, QPS, build
//! and reload times and bytes per item for several `ef`, on synthetic clustered vectors and on
//! real embeddings of the shared datasets; and same-character retrieval quality of the catalogue
//! (leave-one-out recall@1, mAP@10 through its own search) with the network's embeddings next to
//! the 8×8 colour-layout baseline, over all splits and over the validation split alone (queries
//! and candidates both from it). Embeddings are cached on disk per model fingerprint.

use super::colour_layout::ColourLayout;
use super::embedding::{load_model, progress_bar};
use super::embedding_cache::EmbeddingCache;
use super::model::DataArgs;
use animelens_index::bench::{self, catalog_retrieval_quality, BenchConfig};
use animelens_index::{Catalog, Filter, HnswParams, ModelTag, NewItem, OpenOptions};
use animelens_models::data::Dataset;
use animelens_models::Embedder;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `animelens bench index` options.
#[derive(Args, Debug)]
pub struct IndexBenchArgs {
    /// Checkpoint whose embeddings of the real data are benchmarked (needed unless --skip-real).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Pokémon manifest (levels character=name, work=generation, style=game; all splits).
    #[arg(long, default_value = "../shared/data/pokemon/manifest.csv")]
    pokemon: PathBuf,
    /// holoen folder (`train/` and `val/` of character folders; all splits).
    #[arg(long, default_value = "../shared/data/holoen")]
    holoen: PathBuf,
    /// Synthetic clustered 1024-d vectors to index (0 skips the synthetic part).
    #[arg(long, default_value_t = 100_000)]
    synthetic: usize,
    /// Skip the real-data part.
    #[arg(long)]
    skip_real: bool,
    /// Search `ef` values to measure.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    efs: Vec<usize>,
    /// Real items held out of the catalogue as queries for the recall/QPS table.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Folder of the embedding cache.
    #[arg(long, default_value = "runs/embedding-cache")]
    cache: PathBuf,
    /// Scratch folder for the benchmark catalogues (default: a temporary folder, deleted after).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

/// One real image with its labels, the dataset it comes from and its split.
struct Entry {
    path: PathBuf,
    labels: BTreeMap<String, String>,
    dataset: &'static str,
    split: &'static str,
}

fn entries(name: &'static str, dataset: &Dataset) -> Vec<Entry> {
    dataset
        .samples
        .iter()
        .map(|s| Entry {
            path: s.path.clone(),
            labels: dataset
                .levels
                .iter()
                .zip(&dataset.classes)
                .zip(&s.labels)
                .map(|((l, names), &i)| (l.clone(), names[i as usize].clone()))
                .collect(),
            dataset: name,
            split: s.split.name(),
        })
        .collect()
}

/// Reads both shared datasets, all splits.
fn load_real(args: &IndexBenchArgs) -> Result<Vec<Entry>> {
    let pokemon = DataArgs {
        data: args.pokemon.clone(),
        path_column: "path".into(),
        labels: vec![
            "character=name".into(),
            "work=generation".into(),
            "style=game".into(),
        ],
        split_column: Some("split".into()),
    }
    .load()?;
    let holoen = DataArgs {
        data: args.holoen.clone(),
        path_column: "path".into(),
        labels: vec!["character=label".into()],
        split_column: None,
    }
    .load()?;
    let mut out = entries("pokemon", &pokemon);
    out.extend(entries("holoen", &holoen));
    Ok(out)
}

/// Embeds every entry (cached), keeping those that could be read.
fn embed_entries<'a>(
    embedder: &dyn Embedder,
    entries: &'a [Entry],
    cache_dir: &Path,
) -> Result<Vec<(&'a Entry, Vec<f32>)>> {
    let fingerprint = embedder.fingerprint();
    let mut cache = EmbeddingCache::open(cache_dir, &fingerprint)?;
    let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
    let bar = progress_bar(paths.len(), &format!("embedding ({fingerprint})"));
    let results = cache.embed_all(embedder, &paths, &bar)?;
    bar.finish_and_clear();
    let mut out = Vec::with_capacity(entries.len());
    let mut failed = 0usize;
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(v) => out.push((e, v)),
            Err(reason) => {
                failed += 1;
                tracing::warn!("unreadable {}: {reason}", e.path.display());
            }
        }
    }
    tracing::info!(
        embedded = out.len(),
        failed,
        fingerprint,
        "real data embedded"
    );
    Ok(out)
}

/// Same-character retrieval quality rows (one per dataset) of `vectors` through a catalogue.
fn quality_rows(name: &str, dir: &Path, vectors: &[(&Entry, Vec<f32>)]) -> Result<String> {
    let dim = vectors.first().map_or(0, |(_, v)| v.len());
    let mut options = OpenOptions::new(ModelTag {
        fingerprint: name.into(),
        dim,
    });
    options.save_index_on_close = false;
    let cat = Catalog::open(dir, options)?;
    for chunk in vectors.chunks(1000) {
        let items = chunk
            .iter()
            .map(|(e, v)| NewItem {
                source: e.path.display().to_string(),
                labels: e.labels.clone(),
                tags: vec![e.dataset.to_string(), format!("split:{}", e.split)],
                vector: v.clone(),
                ..NewItem::default()
            })
            .collect();
        cat.add_batch(items)?;
    }
    let mut rows = String::new();
    for dataset in ["pokemon", "holoen"] {
        for (subset, filter) in [
            ("all splits", Filter::any().tag(dataset)),
            (
                "val split only",
                Filter::any().tag(dataset).tag("split:val"),
            ),
        ] {
            let q = catalog_retrieval_quality(&cat, "character", &filter)?;
            rows.push_str(&format!(
                "| {name} | {dataset}, {subset} | {} | {:.4} | {:.4} |\n",
                q.queries, q.recall_at_1, q.map_at_10
            ));
        }
    }
    Ok(rows)
}

/// The real-data part: recall/QPS table on the network's embeddings and the quality table.
fn real_part(args: &IndexBenchArgs, model_path: &Path, scratch: &Path) -> Result<String> {
    let entries = load_real(args)?;
    let model = load_model(model_path)?;
    let fingerprint = model.fingerprint();
    let net = embed_entries(&model, &entries, &args.cache)?;
    let baseline = embed_entries(&ColourLayout, &entries, &args.cache)?;
    let every = (net.len() / args.queries.max(1)).max(2);
    let (mut items, mut queries) = (Vec::new(), Vec::new());
    for (i, (_, v)) in net.iter().enumerate() {
        if i % every == every / 2 && queries.len() < args.queries {
            queries.push(v.clone());
        } else {
            items.push(v.clone());
        }
    }
    let data = format!(
        "real embeddings of pokemon + holoen (all splits) by {} ({fingerprint}); every {every}th image held out as a query",
        model_path.display()
    );
    let speed = bench::run_on(
        &scratch.join("real"),
        &data,
        &items,
        &queries,
        HnswParams::default(),
        &args.efs,
        &[1],
    )?;
    let mut quality = String::from(
        "| descriptor | data | queries | recall@1 | mAP@10 |\n|---|---|---:|---:|---:|\n",
    );
    quality.push_str(&quality_rows(
        &format!("network {fingerprint}"),
        &scratch.join("quality-net"),
        &net,
    )?);
    quality.push_str(&quality_rows(
        "colour layout 8x8",
        &scratch.join("quality-baseline"),
        &baseline,
    )?);
    Ok(format!(
        "### Real embeddings\n\n{}\n### Same-character retrieval through the catalogue (leave-one-out, k = 10)\n\n{quality}",
        speed.to_markdown()
    ))
}

/// Runs `animelens bench index` and prints markdown.
pub fn run(args: IndexBenchArgs) -> Result<()> {
    let scratch = args.scratch.clone().map_or_else(tempfile_dir, Ok)?;
    let mut out = format!(
        "machine: {} cores, load average at start {}\n\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !args.skip_real {
        let Some(model) = &args.model else {
            bail!("the real-data part needs --model CKPT (or pass --skip-real)");
        };
        out.push_str(&real_part(&args, model, &scratch)?);
        println!("{out}");
        out.clear();
    }
    if args.synthetic > 0 {
        let config = BenchConfig {
            n: args.synthetic,
            efs: args.efs.clone(),
            ..BenchConfig::default()
        };
        let report = bench::run(&scratch.join("synthetic"), &config)?;
        out.push_str(&format!(
            "### Synthetic vectors\n\n{}",
            report.to_markdown()
        ));
        println!("{out}");
    }
    if args.scratch.is_none() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot delete the scratch folder {}", scratch.display()))?;
    }
    Ok(())
}

/// A fresh folder under the system's temporary folder.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("animelens-bench-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the scratch folder {}", dir.display()))?;
    Ok(dir)
}
