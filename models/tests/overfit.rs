//! A GoogLeNet at 64 px learns a handful of real sample images by heart: the loss falls and
//! eval-mode accuracy on those images reaches 100%.

use animelens_models::checkpoint::{build, HeadCard, ModelCard};
use animelens_models::data::{decode_all, Dataset, Split};
use animelens_models::loss::{smoothed_targets, soft_cross_entropy};
use animelens_models::metrics::top_k_accuracy;
use animelens_models::optimiser::adamw;
use animelens_models::preprocess::{batch_tensor, Preprocessing};
use candle_core::Device;
use candle_nn::Optimizer;
use std::path::Path;

#[test]
fn overfits_a_few_real_images() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample/holoen");
    let dataset = Dataset::from_folders(&root)?;
    // Two images of each of the first four characters.
    let mut samples = dataset.split(Split::Train);
    samples.retain(|s| s.labels[0] < 4);
    samples.sort_by_key(|s| s.labels[0]);
    let samples: Vec<_> = samples
        .chunk_by(|a, b| a.labels[0] == b.labels[0])
        .flat_map(|c| c[..2].to_vec())
        .collect();
    let (set, failures) = decode_all(&samples, 64, false);
    assert!(failures.is_empty());
    let pre = Preprocessing::new(64);
    let x = batch_tensor(&set.images, &pre, &Device::Cpu)?;
    let labels: Vec<u32> = set.labels.iter().map(|l| l[0]).collect();
    let card = ModelCard::untrained(
        pre,
        vec![HeadCard {
            level: "character".into(),
            labels: dataset.classes[0][..4].to_vec(),
        }],
    );
    let model = build(&card)?;
    let mut opt = adamw(&model.varmap, &[], 1e-3, 0.0)?;
    let targets = smoothed_targets(&labels, 4, 0.0, &Device::Cpu)?;
    let mut losses = Vec::new();
    for _ in 0..40 {
        let out = model.net.forward_t(&x, true)?;
        let loss = soft_cross_entropy(&out.logits[0], &targets)?;
        opt.backward_step(&loss)?;
        losses.push(loss.to_scalar::<f32>()?);
    }
    assert!(losses[39] < losses[0] * 0.2, "loss should fall: {losses:?}");
    let logits = model.net.forward_t(&x, false)?.logits[0].to_vec2::<f32>()?;
    assert_eq!(
        top_k_accuracy(&logits, &labels, 1),
        1.0,
        "eval-mode accuracy on the training images"
    );
    Ok(())
}
