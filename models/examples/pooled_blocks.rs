//! Research probe behind BENCHMARKS' "Which layer generalises": for a list of images, writes the
//! model's embedding and the global-average-pooled output of chosen Inception blocks as `.npy`
//! matrices (one row per image, in list order), for `benches/reference/fusion_probe.py` to score
//! on the unseen-character protocols, for any weights and blocks at once. The product's character
//! vector is the card's fusion (`animelens_models::fusion`), which this probe chose.
//!
//! `cargo run --release -p animelens-models --example pooled_blocks -- MODEL LIST OUT_PREFIX inception4b,inception4e`

use animelens_models::checkpoint;
use animelens_models::copies::descriptor::gem;
use animelens_models::data::{decode_all, Sample, Split};
use animelens_models::folded::FoldedNetwork;
use animelens_models::npy::write_matrix;
use animelens_models::preprocess::batch_tensor;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, list, out, blocks] = args.as_slice() else {
        bail!("usage: pooled_blocks MODEL LIST OUT_PREFIX BLOCK[,BLOCK...]");
    };
    let model = checkpoint::load(Path::new(model)).context("loading the model")?;
    let names = model.net.architecture().inception_blocks();
    let blocks: Vec<(String, usize)> = blocks
        .split(',')
        .map(|b| match names.iter().position(|n| n == &b) {
            Some(i) => Ok((b.to_string(), i + 1)),
            None => bail!("{b} is not one of the Inception blocks {names:?}"),
        })
        .collect::<Result<_>>()?;
    let samples: Vec<Sample> = std::fs::read_to_string(list)
        .with_context(|| format!("reading {list}"))?
        .lines()
        .map(|l| Sample {
            path: PathBuf::from(l),
            labels: vec![0],
            split: Split::Train,
        })
        .collect();
    let pre = &model.card.preprocessing;
    let (set, failures) = decode_all(&samples, pre.input_size, true);
    if let Some((path, why)) = failures.first() {
        bail!(
            "{} could not be read ({why}): rows would not line up with the list",
            path.display()
        );
    }
    let net = FoldedNetwork::new(&model.net)?;
    let mut embeddings = Vec::new();
    let mut pooled: Vec<Vec<Vec<f32>>> = vec![Vec::new(); blocks.len()];
    for chunk in set.images.chunks(64) {
        let x = batch_tensor(chunk, pre, &Device::Cpu)?;
        embeddings.extend(net.forward(&x)?.embedding.to_vec2::<f32>()?);
        for ((_, b), rows) in blocks.iter().zip(&mut pooled) {
            rows.extend(gem(&net.feature_map(&x, *b)?, 1.0));
        }
    }
    write_matrix(Path::new(&format!("{out}-emb.npy")), &embeddings)?;
    for ((name, _), rows) in blocks.iter().zip(&pooled) {
        write_matrix(Path::new(&format!("{out}-{name}.npy")), rows)?;
    }
    Ok(())
}
