//! `animelens bench [model|index]`: speed of the network (training and inference img/s per input
//! size; the default) or of the catalogue (`bench index`, see [`super::bench_index`]).

use animelens_models::bench::{markdown_table, measure, stage_profile, Precision};
use anyhow::Result;
use clap::{Args, Subcommand};

/// `animelens bench` options: a target, or the model benchmark's options directly.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: Option<BenchTarget>,
    #[command(flatten)]
    model: ModelBenchArgs,
}

/// What to benchmark.
#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Speed of the network (what `animelens bench` alone runs).
    Model(ModelBenchArgs),
    /// Recall, speed and retrieval quality of the catalogue.
    Index(super::bench_index::IndexBenchArgs),
    /// The storage backends (embedded, Milvus) side by side on the same vectors.
    Backends(super::bench_backends::BackendBenchArgs),
    /// Copy detection: edited copies of catalogued pictures against non-copies.
    Copies(super::bench_copies::CopyBenchArgs),
    /// Video: indexing and recognition rates, scene search on screenshots of one episode.
    Scenes(super::bench_scenes::SceneBenchArgs),
}

/// Runs the chosen benchmark.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.target {
        None => run_model(args.model),
        Some(BenchTarget::Model(a)) => run_model(a),
        Some(BenchTarget::Index(a)) => super::bench_index::run(a),
        Some(BenchTarget::Backends(a)) => super::bench_backends::run(a),
        Some(BenchTarget::Copies(a)) => super::bench_copies::run(a),
        Some(BenchTarget::Scenes(a)) => super::bench_scenes::run(a),
    }
}

/// `animelens bench` options.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Input sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "64,96,128,224")]
    sizes: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Measure inference only (skip the training step).
    #[arg(long)]
    inference_only: bool,
    /// Print one JSON object per size (for models/benches/reference/compare.sh) instead of a table.
    #[arg(long)]
    json: bool,
    /// Time each stage of the folded network instead (conv1 … inception5b, at `--batch`; 1 is
    /// the single-upload case), for a side-by-side with models/benches/reference/ort_stages.py.
    #[arg(long)]
    stages: bool,
    /// Inference arithmetic: f32, or int8 convolutions calibrated on random pictures.
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

/// Runs the model benchmark and prints a markdown table.
pub fn run_model(args: ModelBenchArgs) -> Result<()> {
    if args.stages {
        return run_stages(&args);
    }
    let mut rows = Vec::new();
    for size in args.sizes {
        let row = measure(
            size,
            args.batch,
            args.repeats,
            !args.inference_only,
            args.precision,
        )?;
        eprintln!("{size} px: {row:?}");
        if args.json {
            let mut value = serde_json::to_value(&row)?;
            value["engine"] = "animelens".into();
            println!("{value}");
        }
        rows.push(row);
    }
    if !args.json {
        println!("threads: {}\n\n{}", rayon_threads(), markdown_table(&rows));
    }
    Ok(())
}

/// `bench --stages`: per size, the time of every stage, as a table or one JSON object per size.
fn run_stages(args: &ModelBenchArgs) -> Result<()> {
    for &size in &args.sizes {
        let stages = stage_profile(size, args.batch, args.repeats, args.precision)?;
        let total: f64 = stages.iter().map(|s| s.ms).sum();
        if args.json {
            let value = serde_json::json!({
                "engine": "animelens", "size": size, "batch": args.batch, "stages": stages,
            });
            println!("{value}");
            continue;
        }
        println!(
            "{size} px, batch {}, threads {}:\n\n| stage | ms | share |\n|---|---|---|",
            args.batch,
            rayon_threads()
        );
        for s in &stages {
            println!(
                "| {} | {:.3} | {:.1}% |",
                s.stage,
                s.ms,
                100.0 * s.ms / total
            );
        }
        println!("| all stages | {total:.3} | |\n");
    }
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
