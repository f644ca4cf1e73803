//! Runs the catalogue benchmark and prints its markdown report:
//! `cargo run --release -p animelens-index --example index_bench -- [N] [DIM] [SCRATCH_DIR]`.

use animelens_index::bench::{run, BenchConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = BenchConfig::default();
    if let Some(n) = args.first() {
        config.n = n.parse()?;
    }
    if let Some(dim) = args.get(1) {
        config.dim = dim.parse()?;
    }
    let dir = match args.get(2) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("animelens-index-bench-{}", std::process::id())),
    };
    let report = run(&dir, &config)?;
    println!("{}", report.to_markdown());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
