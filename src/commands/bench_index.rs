//! `animelens bench index`: the catalogue benchmark. Recall@10 against exact search, QPS, build
//! and reload times and bytes per item for several `ef`, on synthetic clustered vectors and on
//! real embeddings of the shared datasets; and same-character retrieval quality of the catalogue
//! (leave-one-out recall@1, mAP@10 through its own search) with the network's embeddings next to
//! the 8×8 colour-layout baseline, over all splits and over the validation split alone (queries
//! and candidates both from it). Embeddings are cached on disk per model fingerprint.
//!
//! For side-by-side runs against other ANN libraries the vectors can come from `.npy` files
//! (`--vectors`, `--query-vectors`), and `--real-like N` writes such files: the network's
//! embeddings of all three datasets grown to N items with jittered copies. `--csv` appends one row
//! per (graph precision, ef, query threads) in the format `index/benches/reference/ann_peers.py`
//! writes for hnswlib and faiss.

use super::colour_layout::ColourLayout;
use super::embedding::{load_model, progress_bar};
use super::embedding_cache::EmbeddingCache;
use super::model::DataArgs;
use animelens_index::bench::{self, catalog_retrieval_quality, BenchConfig};
use animelens_index::{
    Catalog, Filter, GraphPrecision, HnswParams, ModelTag, NewItem, OpenOptions, MAX_CONNECTIONS,
};
use animelens_models::data::Dataset;
use animelens_models::plots::{line_chart, Series};
use animelens_models::{npy, Embedder};
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
    /// Index these vectors instead of the real and synthetic sets: an (n, d) float32 `.npy`
    /// (rows normalised on load).
    #[arg(long)]
    vectors: Option<PathBuf>,
    /// Queries for --vectors, an (m, d) float32 `.npy` (default: every n/--queries-th row of
    /// --vectors is held out as a query).
    #[arg(long, requires = "vectors")]
    query_vectors: Option<PathBuf>,
    /// Write a real-like set to --vectors-out and stop: N items (the --model's embeddings of
    /// pokemon, holoen and malportraits, then jittered copies of them) and --queries queries
    /// (further jittered copies), as `items.npy` and `queries.npy`.
    #[arg(long, requires = "model")]
    real_like: Option<usize>,
    /// Noise norm of the jittered copies (cosine ≈ 1/√(1 + s²) to the embedding they copy).
    #[arg(long, default_value_t = 0.35)]
    jitter: f32,
    /// Folder --real-like writes to.
    #[arg(long, default_value = "runs/ann-vectors")]
    vectors_out: PathBuf,
    /// malportraits images folder (used by --real-like).
    #[arg(long, default_value = "../shared/data/malportraits/images")]
    malportraits: PathBuf,
    /// Graph precisions to measure (f32, int8), each in its own catalogue.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    graph_precision: Vec<GraphPrecision>,
    /// Query thread counts to measure QPS with.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    query_threads: Vec<usize>,
    /// HNSW links per node and layer (M).
    #[arg(long, default_value_t = HnswParams::default().max_nb_connection)]
    m: usize,
    /// HNSW candidate list size while building.
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    ef_construction: usize,
    /// Append the recall/QPS rows of every measured graph to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// After the runs, plot QPS against recall@10 for every series in the --csv file (this run's
    /// and any peers' rows written there before) to this PNG.
    #[arg(long, requires = "csv")]
    plot: Option<PathBuf>,
}

impl IndexBenchArgs {
    /// The graph parameters asked for, at `precision`.
    fn hnsw(&self, precision: GraphPrecision) -> Result<HnswParams> {
        if self.m == 0 || self.m > MAX_CONNECTIONS {
            bail!("--m must be between 1 and {MAX_CONNECTIONS}");
        }
        Ok(HnswParams {
            max_nb_connection: self.m,
            ef_construction: self.ef_construction,
            precision: Some(precision),
            ..HnswParams::default()
        })
    }

    /// Appends `report`'s rows to the --csv file, if asked.
    fn record(&self, report: &bench::BenchReport) -> Result<()> {
        let Some(path) = &self.csv else {
            return Ok(());
        };
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        file.write_all(report.to_csv("animelens").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Runs the recall/QPS benchmark on `items` and `queries` once per graph precision, in
    /// `scratch/<name>-<precision>`, recording each report; returns their markdown.
    fn speed_tables(
        &self,
        scratch: &Path,
        name: &str,
        data: &str,
        items: &[Vec<f32>],
        queries: &[Vec<f32>],
    ) -> Result<String> {
        let mut out = String::new();
        for &precision in &self.graph_precision {
            let report = bench::run_on(
                &scratch.join(format!("{name}-{precision}")),
                data,
                items,
                queries,
                self.hnsw(precision)?,
                &self.efs,
                &self.query_threads,
            )?;
            self.record(&report)?;
            out.push_str(&report.to_markdown());
            out.push('\n');
        }
        Ok(out)
    }
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
    let (items, queries, every) =
        hold_out_queries(net.iter().map(|(_, v)| v.clone()).collect(), args.queries);
    let data = format!(
        "real embeddings of pokemon + holoen (all splits) by {} ({fingerprint}); every {every}th image held out as a query",
        model_path.display()
    );
    let speed = args.speed_tables(scratch, "real", &data, &items, &queries)?;
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
        "### Real embeddings\n\n{speed}\n### Same-character retrieval through the catalogue (leave-one-out, k = 10)\n\n{quality}"
    ))
}

/// Runs `animelens bench index` and prints markdown.
pub fn run(args: IndexBenchArgs) -> Result<()> {
    if let Some(n) = args.real_like {
        return write_real_like(&args, n);
    }
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
    if let Some(path) = &args.vectors {
        out.push_str(&vectors_part(&args, path, &scratch)?);
        println!("{out}");
    } else if !args.skip_real {
        let Some(model) = &args.model else {
            bail!("the real-data part needs --model CKPT (or pass --skip-real)");
        };
        out.push_str(&real_part(&args, model, &scratch)?);
        println!("{out}");
        out.clear();
    }
    if args.synthetic > 0 && args.vectors.is_none() {
        let config = BenchConfig {
            n: args.synthetic,
            ..BenchConfig::default()
        };
        let (items, queries, data) = bench::synthetic_set(&config);
        let tables = args.speed_tables(&scratch, "synthetic", &data, &items, &queries)?;
        out.push_str(&format!("### Synthetic vectors\n\n{tables}"));
        println!("{out}");
    }
    if let (Some(csv), Some(png)) = (&args.csv, &args.plot) {
        plot_csv(csv, png)?;
    }
    if args.scratch.is_none() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot delete the scratch folder {}", scratch.display()))?;
    }
    Ok(())
}

/// Splits `vectors` into catalogue items and at most `queries` held-out queries, every `every`th
/// one (spread evenly); returns `(items, queries, every)`.
fn hold_out_queries(
    vectors: Vec<Vec<f32>>,
    queries: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, usize) {
    let every = (vectors.len() / queries.max(1)).max(2);
    let (mut items, mut held) = (Vec::with_capacity(vectors.len()), Vec::new());
    for (i, v) in vectors.into_iter().enumerate() {
        if i % every == every / 2 && held.len() < queries {
            held.push(v);
        } else {
            items.push(v);
        }
    }
    (items, held, every)
}

/// Reads an `.npy` matrix of vectors, normalising every row.
pub fn read_vectors(path: &Path) -> Result<Vec<Vec<f32>>> {
    let rows = npy::read_matrix(path).with_context(|| format!("cannot read {}", path.display()))?;
    rows.iter()
        .enumerate()
        .map(|(i, v)| {
            animelens_index::normalise(v)
                .with_context(|| format!("row {i} of {} is zero or not finite", path.display()))
        })
        .collect()
}

/// The `--vectors` part: the recall/QPS tables on vectors from files.
fn vectors_part(args: &IndexBenchArgs, path: &Path, scratch: &Path) -> Result<String> {
    let (items, queries) = match &args.query_vectors {
        Some(q) => (read_vectors(path)?, read_vectors(q)?),
        None => {
            let (items, queries, _) = hold_out_queries(read_vectors(path)?, args.queries);
            (items, queries)
        }
    };
    let dim = items.first().map_or(0, Vec::len);
    if items.is_empty() || queries.iter().any(|q| q.len() != dim) {
        bail!("--vectors must hold at least one row, and every query must have its {dim} columns");
    }
    let data = format!("vectors of {}", path.display());
    Ok(format!(
        "### Vectors from a file\n\n{}",
        args.speed_tables(scratch, "vectors", &data, &items, &queries)?
    ))
}

/// `--real-like N`: writes `items.npy` and `queries.npy` to `--vectors-out`.
fn write_real_like(args: &IndexBenchArgs, n: usize) -> Result<()> {
    let model_path = args.model.as_deref().expect("clap requires --model");
    let mut entries = load_real(args)?;
    let mut portraits: Vec<PathBuf> = std::fs::read_dir(&args.malportraits)
        .with_context(|| format!("cannot list {}", args.malportraits.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    portraits.sort();
    entries.extend(portraits.into_iter().map(|path| Entry {
        path,
        labels: BTreeMap::new(),
        dataset: "malportraits",
        split: "all",
    }));
    let model = load_model(model_path)?;
    let fingerprint = model.fingerprint();
    let reals: Vec<Vec<f32>> = embed_entries(&model, &entries, &args.cache)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    if reals.is_empty() {
        bail!("no image of the datasets could be embedded");
    }
    let mut items: Vec<Vec<f32>> = reals.iter().take(n).cloned().collect();
    items.extend(bench::jittered_copies(
        &reals,
        n.saturating_sub(items.len()),
        args.jitter,
        1,
    ));
    let queries = bench::jittered_copies(&reals, args.queries, args.jitter, 2);
    std::fs::create_dir_all(&args.vectors_out)
        .with_context(|| format!("cannot create {}", args.vectors_out.display()))?;
    for (name, rows) in [("items.npy", &items), ("queries.npy", &queries)] {
        let path = args.vectors_out.join(name);
        npy::write_matrix(&path, rows)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "wrote {} items ({} embeddings of {} images by {fingerprint}, the rest jittered copies, noise {}) and {} queries to {}",
        items.len(),
        reals.len().min(n),
        entries.len(),
        args.jitter,
        queries.len(),
        args.vectors_out.display()
    );
    Ok(())
}

/// Plots QPS against recall@10, one line per (engine, graph precision, query threads) of the
/// `engine,precision,m,ef_construction,ef,threads,recall_at_10,qps` rows in `csv`.
fn plot_csv(csv: &Path, png: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut graphs = std::collections::BTreeSet::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        let [engine, precision, m, efc, _ef, threads, recall, qps] = fields[..] else {
            bail!("line {} of {} does not have 8 fields", n + 1, csv.display());
        };
        let number = |v: &str| -> Result<f64> {
            v.trim().parse().with_context(|| {
                format!("line {} of {}: {v:?} is not a number", n + 1, csv.display())
            })
        };
        graphs.insert(format!("M {m}, ef_construction {efc}"));
        let threads = if threads == "1" {
            "1 thread".into()
        } else {
            format!("{threads} threads")
        };
        series
            .entry(format!("{engine} {precision}, {threads}"))
            .or_default()
            .push((number(recall)?, number(qps)?));
    }
    // Points stay in file order (increasing ef), so that each line runs from the fastest search
    // to the most thorough even where recall does not rise with ef.
    let lines: Vec<Series> = series
        .iter()
        .map(|(name, points)| Series {
            name,
            points: points.clone(),
        })
        .collect();
    let title = format!(
        "QPS (y) against recall@10 (x), {}",
        graphs.into_iter().collect::<Vec<_>>().join("; ")
    );
    line_chart(png, &title, "recall@10", &lines)?;
    println!("plotted {} series to {}", lines.len(), png.display());
    Ok(())
}

/// A fresh folder under the system's temporary folder.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("animelens-bench-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the scratch folder {}", dir.display()))?;
    Ok(dir)
}
