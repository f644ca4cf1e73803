//! Post-training static int8 quantisation: a calibration pass through the folded network,
//! and the card entry that makes a checkpoint run in int8.
//!
//! A calibration runs the f32 folded network over a few hundred pictures while every
//! convolution records a histogram of its inputs; each input's codes then follow from its
//! range (`activation_codes`: the largest value or a percentile over 255; a signed input, the
//! first convolution's, around the zero point 128). The codes go into the card ([`Int8Card`]);
//! the weights go into the checkpoint as 7-bit codes with one scale per output channel
//! (`checkpoint::save_int8`), so the file shrinks about 4× and the loaded network runs the
//! same codes.

use crate::activation_codes::{InputCodes, RangeRule};
use crate::folded::FoldedNetwork;
use crate::network::Network;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// The card's record of an int8 checkpoint: how it was calibrated, and the input codes of
/// every convolution in the network's order (`None`: that convolution runs in f32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Card {
    /// The range rule, e.g. `max` or `percentile 99.99`.
    pub calibration: String,
    /// Calibration pictures.
    pub pictures: usize,
    /// One per convolution, in [`FoldedNetwork`]'s order.
    pub inputs: Vec<Option<InputCodes>>,
}

/// Calibrates `net` on `batches` of normalised `(N, 3, S, S)` pictures with `rule`.
pub fn calibrate(
    net: &Network,
    batches: impl IntoIterator<Item = Tensor>,
    rule: RangeRule,
) -> Result<Int8Card> {
    let mut folded = FoldedNetwork::new(net)?;
    folded.observe_inputs();
    let mut pictures = 0;
    for batch in batches {
        pictures += batch.dim(0)?;
        folded.forward(&batch)?;
    }
    if pictures == 0 {
        candle_core::bail!("calibration needs at least one picture");
    }
    let inputs = folded
        .take_histograms()
        .iter()
        .map(|h| Some(InputCodes::for_histogram(h, rule)))
        .collect();
    Ok(Int8Card {
        calibration: rule.describe(),
        pictures,
        inputs,
    })
}

/// `net` folded and, if `card` says so, quantised: what serving runs.
pub fn serving_network(net: &Network, card: Option<&Int8Card>) -> Result<FoldedNetwork> {
    let mut folded = FoldedNetwork::new(net)?;
    if let Some(card) = card {
        folded.quantise(&card.inputs)?;
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, HeadCard, ModelCard};
    use crate::preprocess::Preprocessing;
    use candle_core::{Device, D};

    /// A random model whose BatchNorm statistics are not the initial ones.
    fn model() -> checkpoint::LoadedModel {
        let heads = vec![HeadCard {
            level: "character".into(),
            labels: (0..6).map(|i| format!("c{i}")).collect(),
        }];
        let card = ModelCard {
            dropout: 0.5,
            ..ModelCard::untrained(Preprocessing::new(64), heads)
        };
        let model = checkpoint::build(&card).unwrap();
        for _ in 0..3 {
            let x = (Tensor::randn(0f32, 1., (4, 3, 64, 64), &Device::Cpu).unwrap() + 0.3).unwrap();
            model.net.forward_t(&x, true).unwrap();
        }
        model
    }

    fn pictures(n: usize) -> Tensor {
        Tensor::randn(0f32, 0.6, (n, 3, 64, 64), &Device::Cpu).unwrap()
    }

    /// Row-wise cosine of two `(N, D)` tensors.
    fn cosines(a: &Tensor, b: &Tensor) -> Vec<f32> {
        let dot = (a * b).unwrap().sum(D::Minus1).unwrap();
        let norm = |t: &Tensor| t.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
        (dot / (norm(a) * norm(b)).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Calibrated on a few batches, the int8 network's embeddings stay within a small angle of
    /// the f32 network's; the first convolution (a signed input) takes the zero point 128.
    #[test]
    fn the_int8_network_follows_the_f32_one() -> Result<()> {
        let model = model();
        let card = calibrate(&model.net, (0..3).map(|_| pictures(4)), RangeRule::Max)?;
        assert_eq!(card.pictures, 12);
        let codes: Vec<InputCodes> = card.inputs.iter().map(|c| c.unwrap()).collect();
        assert_eq!(codes[0].zero_point, 128, "conv1 sees negative inputs");
        assert!(codes[1..]
            .iter()
            .all(|c| c.zero_point == 0 && c.scale > 0.0));
        let int8 = serving_network(&model.net, Some(&card))?;
        let f32 = FoldedNetwork::new(&model.net)?;
        let x = pictures(3);
        let (a, b) = (int8.forward(&x)?, f32.forward(&x)?);
        for c in cosines(&a.embedding, &b.embedding) {
            assert!(c > 0.99, "int8 embedding at cosine {c} of the f32 one");
        }
        assert_eq!(card.inputs.len(), 57, "one entry per convolution");
        let wrong = FoldedNetwork::new(&model.net)?.quantise(&card.inputs[1..]);
        assert!(wrong.is_err());
        Ok(())
    }

    /// An int8 checkpoint is about a quarter of the f32 one, and loading it rebuilds the
    /// network the in-memory quantisation runs, output for output.
    #[test]
    fn an_int8_checkpoint_reloads_to_the_same_network() -> Result<()> {
        let model = model();
        let card = calibrate(&model.net, [pictures(4)], RangeRule::Percentile(99.99))?;
        assert_eq!(card.calibration, "percentile 99.99");
        let dir = tempfile::tempdir().unwrap();
        let (f32_path, int8_path) = (dir.path().join("f32"), dir.path().join("int8"));
        checkpoint::save(
            &model.varmap,
            &f32_path,
            &model.card,
            candle_core::DType::F32,
        )
        .unwrap();
        let no_card = checkpoint::save_int8(&model.varmap, &int8_path, &model.card);
        assert!(no_card.is_err(), "an int8 checkpoint without calibration");
        let with_card = ModelCard {
            int8: Some(card.clone()),
            ..model.card.clone()
        };
        checkpoint::save_int8(&model.varmap, &int8_path, &with_card).unwrap();
        let size = |p: &std::path::Path| {
            std::fs::metadata(checkpoint::checkpoint_paths(p).0)
                .unwrap()
                .len() as f64
        };
        let ratio = size(&int8_path) / size(&f32_path);
        assert!(ratio < 0.3, "int8 file is {ratio} of the f32 one");
        let other = ModelCard {
            int8: Some(Int8Card {
                inputs: card
                    .inputs
                    .iter()
                    .map(|c| {
                        c.map(|c| InputCodes {
                            scale: c.scale * 2.0,
                            ..c
                        })
                    })
                    .collect(),
                ..card.clone()
            }),
            ..model.card.clone()
        };
        let first = checkpoint::read_card(&int8_path).unwrap().fingerprint;
        let other_path = dir.path().join("other");
        let second = checkpoint::save_int8(&model.varmap, &other_path, &other).unwrap();
        assert_ne!(
            first, second.fingerprint,
            "another calibration, another fingerprint"
        );
        let loaded = checkpoint::load(&int8_path).unwrap();
        assert_eq!(loaded.card.int8.as_ref(), Some(&card));
        let reloaded = serving_network(&loaded.net, loaded.card.int8.as_ref())?;
        let in_memory = serving_network(&model.net, Some(&card))?;
        let x = pictures(2);
        let (a, b) = (reloaded.forward(&x)?, in_memory.forward(&x)?);
        let d = crate::ops::max_abs_diff(&a.embedding, &b.embedding);
        // BatchNorm and heads are f16 in the file.
        for c in cosines(&a.embedding, &b.embedding) {
            assert!(c > 0.999, "reloaded at cosine {c} (max difference {d})");
        }
        Ok(())
    }
}
