//! `animelens bench`: speed of the network (training and inference img/s per input size).

use animelens_models::bench::{markdown_table, measure};
use anyhow::Result;
use clap::Args;

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
}

/// Runs the model benchmark and prints a markdown table.
pub fn run_model(args: ModelBenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    for size in args.sizes {
        let row = measure(size, args.batch, args.repeats)?;
        eprintln!(
            "{size} px: train {:.1} img/s, infer {:.1} img/s",
            row.train_img_s, row.infer_img_s
        );
        rows.push(row);
    }
    println!("threads: {}\n\n{}", rayon_threads(), markdown_table(&rows));
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
