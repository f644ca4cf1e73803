//! `animelens`: the command line of AnimeLens. It only wires the library crates together:
//! models (network, training, evaluation), index (the catalogue) and web (the service).

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use commands::{audit, bench, catalog, characters, model, search, serve, video};

/// Anime character recognition and lookalike search.
#[derive(Parser, Debug)]
#[command(name = "animelens", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a classifier/embedder on labelled images.
    Train(model::TrainArgs),
    /// Evaluate a checkpoint: top-1/top-5 per head, per-class precision/recall, retrieval.
    Eval(model::EvalArgs),
    /// Classify images with a checkpoint.
    Classify(model::ClassifyArgs),
    /// Write the embeddings of images to .npy or .jsonl.
    Embed(model::EmbedArgs),
    /// Rewrite a checkpoint at another weight precision (f16 halves its size), or as ONNX.
    Export(model::ExportArgs),
    /// Magnitude pruning: zero a checkpoint's small weights (fine-tune with `train --init`).
    Prune(model::PruneCommandArgs),
    /// Learn the copy descriptor's whitening for a checkpoint from background pictures.
    LearnCopyWhitening(commands::copy_whitening::LearnWhiteningArgs),
    /// Learn the whitenings of the character vector's fused block and palette from pictures of
    /// the catalogue's domain (no labels needed); marks them in the model card.
    LearnWhitening(commands::part_whitening::LearnPartWhiteningArgs),
    /// Benchmark the network (default: training and inference speed) or the catalogue (`bench index`).
    Bench(bench::BenchArgs),
    /// Manage the image catalogue.
    Index {
        #[command(flatten)]
        place: commands::location::CatalogPlace,
        #[command(subcommand)]
        cmd: catalog::CatalogCommand,
    },
    /// Search the catalogue for the items most similar to an image or to an item.
    Search(search::SearchArgs),
    /// Rank the characters whose centroids are closest to a character's (lookalikes).
    SimilarCharacters(search::SimilarArgs),
    /// Few-shot enrolment: add a character from a handful of images.
    Enroll(characters::EnrollArgs),
    /// Name the character of images by nearest centroid, or "unknown" (open set).
    Identify(characters::IdentifyArgs),
    /// Copyright review: is each image an edited copy of a catalogued picture, and of which?
    Audit(audit::AuditArgs),
    /// Videos: add their scenes, find where a screenshot comes from, recognise characters.
    #[command(subcommand)]
    Video(video::VideoCommand),
    /// Run the web service: JSON API under /api/v1 and the web UI.
    Serve(serve::ServeArgs),
}

/// Sets thread and allocator-related defaults before candle or rayon start.
fn configure_runtime() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // candle re-reads /proc/cpuinfo per matmul without it; its barrier pool spins otherwise.
    for (key, value) in [
        ("RAYON_NUM_THREADS", cores.to_string()),
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000".into()),
    ] {
        if std::env::var_os(key).is_none() {
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe { std::env::set_var(key, value) };
        }
    }
    keep_freed_memory();
}

/// Makes glibc serve the network's large, short-lived buffers (im2col columns, activations,
/// gradients: tens of MB each, freed and re-allocated every step) from its heap instead of
/// fresh `mmap`s, and keep freed memory instead of returning it at once. Each fresh mapping
/// costs page faults, page zeroing and, on unmap, TLB shootdowns across threads: the training
/// step at 96 px ran ~24% faster with these settings (BENCHMARKS.md). The process keeps its
/// peak memory instead of shrinking between steps.
///
/// One arena for all threads: the training step runs on a rayon worker (`ops::on_pool`), and a
/// worker thread's own arena grows in heaps of at most 64 MB, so larger buffers (224 px
/// activations) would bypass it for fresh mappings every step (training at 224 px: ~10 → ~13
/// img/s with one arena).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const MMAP_THRESHOLD: libc::c_int = 256 << 20;
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other platforms keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Whether log lines may carry ANSI colour: only on a terminal, and never when `NO_COLOR` is set
/// to anything (<https://no-color.org>); logs sent to a file or a pipe stay plain text.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> Result<()> {
    configure_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hnsw_rs=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
    match Cli::parse().command {
        Command::Train(a) => model::run_train(a),
        Command::Eval(a) => model::run_eval(a),
        Command::Classify(a) => model::run_classify(a),
        Command::Embed(a) => model::run_embed(a),
        Command::Export(a) => model::run_export(a),
        Command::Prune(a) => model::run_prune(a),
        Command::LearnCopyWhitening(a) => commands::copy_whitening::run(a),
        Command::LearnWhitening(a) => commands::part_whitening::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Index { place, cmd } => catalog::run(&place, cmd),
        Command::Search(a) => search::run_search(a),
        Command::SimilarCharacters(a) => search::run_similar(a),
        Command::Enroll(a) => characters::run_enroll(a),
        Command::Identify(a) => characters::run_identify(a),
        Command::Audit(a) => audit::run_audit(a),
        Command::Video(c) => video::run(c),
        Command::Serve(a) => serve::run(a),
    }
}
