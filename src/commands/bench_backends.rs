//! `animelens bench backends`: the storage backends side by side on the same vectors — the
//! embedded catalogue (sled + hnsw_rs) and, in a build with `--features milvus`, the Milvus
//! backend (a server at `--milvus-uri`, or a `milvus-lite server` this command starts) — through
//! [`animelens_index::bench::run_storage`]: ingest rate, recall@10 against exact answers and
//! queries/s at each thread count, without and with a label filter.

use animelens_index::bench::{run_storage, StorageBenchReport};
use animelens_index::{Catalog, ModelTag, OpenOptions, Storage};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `animelens bench backends` options.
#[derive(Debug, clap::Args)]
pub struct BackendBenchArgs {
    /// Items to index: an (n, d) float32 `.npy` (e.g. `bench index --real-like` output).
    #[arg(long)]
    vectors: PathBuf,
    /// Queries: an (m, d) float32 `.npy`.
    #[arg(long)]
    queries: PathBuf,
    /// Search `ef` values to measure.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    efs: Vec<usize>,
    /// Use only the first N queries (0: all).
    #[arg(long, default_value_t = 0)]
    max_queries: usize,
    /// Query thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    query_threads: Vec<usize>,
    /// A Milvus server to measure (default: start a `milvus-lite server` on a free port).
    #[arg(long)]
    milvus_uri: Option<String>,
}

/// Runs the benchmark on every backend this build has and prints one markdown table.
pub fn run(args: BackendBenchArgs) -> Result<()> {
    let items = super::bench_index::read_vectors(&args.vectors)?;
    let mut queries = super::bench_index::read_vectors(&args.queries)?;
    if args.max_queries > 0 {
        queries.truncate(args.max_queries);
    }
    let dim = items.first().map_or(0, Vec::len);
    if items.is_empty() || queries.iter().any(|q| q.len() != dim) {
        bail!("--vectors must hold at least one row, and every query must have its {dim} columns");
    }
    let model = ModelTag {
        fingerprint: "bench".into(),
        dim,
    };
    let scratch = tempfile::tempdir().context("cannot make a scratch folder")?;
    let mut reports = Vec::new();
    let embedded = Catalog::open(
        scratch.path().join("embedded"),
        OpenOptions::new(model.clone()),
    )?;
    reports.push(measure(&embedded, &items, &queries, &args)?);
    drop(embedded);
    if let Some(report) = milvus(&args, &model, scratch.path(), &items, &queries)? {
        reports.push(report);
    }
    let threads: Vec<String> = args
        .query_threads
        .iter()
        .map(|t| format!("QPS ({t} thread{})", if *t == 1 { "" } else { "s" }))
        .collect();
    println!(
        "{} items × {dim}-d from {}, {} queries from {}\n",
        items.len(),
        args.vectors.display(),
        queries.len(),
        args.queries.display()
    );
    for r in &reports {
        println!("ingest, {}: {:.0} items/s", r.backend, r.ingest_per_sec);
    }
    println!(
        "\n| backend | ef | filter | recall@10 | {} |\n|---|---:|---|---:|{}",
        threads.join(" | "),
        "---:|".repeat(threads.len())
    );
    reports
        .iter()
        .for_each(|r| print!("{}", r.to_markdown_rows()));
    Ok(())
}

fn measure(
    storage: &dyn Storage,
    items: &[Vec<f32>],
    queries: &[Vec<f32>],
    args: &BackendBenchArgs,
) -> Result<StorageBenchReport> {
    eprintln!("measuring the {} backend", storage.backend_name());
    Ok(run_storage(
        storage,
        items,
        queries,
        &args.efs,
        &args.query_threads,
    )?)
}

#[cfg(feature = "milvus")]
fn milvus(
    args: &BackendBenchArgs,
    model: &ModelTag,
    scratch: &Path,
    items: &[Vec<f32>],
    queries: &[Vec<f32>],
) -> Result<Option<StorageBenchReport>> {
    let (uri, _server) = match &args.milvus_uri {
        Some(uri) => (uri.clone(), None),
        None => {
            let exe = animelens_index::MilvusLite::find().context(
                "milvus-lite not found: pass --milvus-uri, or install it \
                 (python3 -m venv ~/.cache/animelens-milvus-venv && \
                 ~/.cache/animelens-milvus-venv/bin/pip install milvus-lite==3.2.2 pymilvus)",
            )?;
            let server = animelens_index::MilvusLite::start(&exe, &scratch.join("milvus-data"))?;
            (server.uri(), Some(server))
        }
    };
    let config = animelens_index::MilvusConfig {
        uri,
        collection: format!("bench_{}", std::process::id()),
        token: None,
    };
    let storage = animelens_index::MilvusStorage::open(
        scratch.join("milvus-records"),
        &config,
        Some(model.clone()),
        &Default::default(),
    )?;
    Ok(Some(measure(&storage, items, queries, args)?))
}

#[cfg(not(feature = "milvus"))]
fn milvus(
    _: &BackendBenchArgs,
    _: &ModelTag,
    _: &Path,
    _: &[Vec<f32>],
    _: &[Vec<f32>],
) -> Result<Option<StorageBenchReport>> {
    eprintln!("this build has no Milvus client (`--features milvus`): only the embedded backend");
    Ok(None)
}
