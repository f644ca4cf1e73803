//! Quick speed probe: `cargo run --release -p animelens-models --example speed -- 96 32 3`.
fn main() -> candle_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let row = animelens_models::bench::measure(args[0], args[1], args[2])?;
    println!("{}", animelens_models::bench::markdown_table(&[row]));
    Ok(())
}
