//! Post-training static int8 quantisation: what a calibration pass records, how it becomes
//! each convolution's input scale, and the card entry that makes a checkpoint run in int8.
//!
//! A calibration runs the f32 folded network over a few hundred pictures while every
//! convolution records a histogram of its inputs ([`ActivationHistogram`]); each input's range
//! is then its largest value ([`RangeRule::Max`]) or a percentile of its values
//! ([`RangeRule::Percentile`], which ignores a few outliers and keeps finer steps for the rest),
//! and its u8 scale that range over 255. An input that can be negative (the first convolution's,
//! which sees the normalised picture) takes the zero point 128 and the scale of its largest
//! magnitude over 127. The codes go into the card ([`Int8Card`]); the weights go into the checkpoint as 7-bit codes with one scale per output
//! channel (`checkpoint::save_int8`), so the file shrinks about 4× and the network the loader
//! rebuilds is exactly the one the int8 kernels run.

use crate::folded::FoldedNetwork;
use crate::network::Network;
use crate::ops::ACTIVATION_LEVELS;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Histogram bins: the top 16 bits of a positive f32 (sign, exponent, 7 mantissa bits), so
/// bins are 1/128 of an octave wide whatever the range.
const BINS: usize = 1 << 15;

/// What a convolution's inputs looked like over a calibration.
#[derive(Debug, Clone, Default)]
pub struct ActivationHistogram {
    /// Positive values by bin (empty until the first one).
    bins: Vec<u64>,
    zeros: u64,
    negatives: u64,
    max: f32,
    /// The most negative value seen (0 if none).
    min: f32,
}

impl ActivationHistogram {
    /// Adds `values`.
    pub fn record(&mut self, values: &[f32]) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS];
        }
        for &v in values {
            if v > 0.0 && v.is_finite() {
                self.bins[(v.to_bits() >> 16) as usize] += 1;
                self.max = self.max.max(v);
            } else if v < 0.0 {
                self.negatives += 1;
                self.min = self.min.min(v);
            } else {
                self.zeros += 1;
            }
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.zeros + self.negatives + self.bins.iter().sum::<u64>()
    }

    /// Whether any value was negative (the input is not post-ReLU).
    pub fn has_negatives(&self) -> bool {
        self.negatives > 0
    }

    /// The range `rule` picks: the largest value, or the upper edge of the bin holding the
    /// percentile (never above the largest value).
    pub fn range(&self, rule: RangeRule) -> f32 {
        match rule {
            RangeRule::Max => self.max,
            RangeRule::Percentile(p) => {
                let wanted = (self.count() as f64 * p / 100.0).ceil() as u64;
                let mut seen = self.zeros + self.negatives;
                if seen >= wanted {
                    return 0.0;
                }
                for (bin, &n) in self.bins.iter().enumerate() {
                    seen += n;
                    if seen >= wanted {
                        return f32::from_bits(((bin as u32) + 1) << 16).min(self.max);
                    }
                }
                self.max
            }
        }
    }
}

/// How a convolution's input becomes u8 codes: `code = round(x / scale) + zero_point`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputCodes {
    /// The value of one code step.
    pub scale: f32,
    /// The code of 0: 0 for a post-ReLU input, 128 for a signed one.
    pub zero_point: u8,
}

impl InputCodes {
    /// The codes for what `histogram` saw under `rule`: unsigned inputs over 0..=255, signed
    /// ones (any negative seen) around 128 over their largest magnitude.
    pub fn for_histogram(histogram: &ActivationHistogram, rule: RangeRule) -> Self {
        let (range, levels, zero_point) = if histogram.has_negatives() {
            (
                histogram.max.max(-histogram.min),
                SIGNED_LEVELS,
                SIGNED_ZERO_POINT,
            )
        } else {
            (histogram.range(rule), ACTIVATION_LEVELS, 0)
        };
        let scale = if range > 0.0 { range / levels } else { 1.0 };
        Self { scale, zero_point }
    }
}

/// Code steps either side of a signed input's zero point.
const SIGNED_LEVELS: f32 = 127.0;
/// The code of 0 for a signed input.
const SIGNED_ZERO_POINT: u8 = 128;

/// How a calibration turns a histogram into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeRule {
    /// The largest value seen (ONNX Runtime's MinMax).
    Max,
    /// This percentile (0–100] of all values seen, zeros included.
    Percentile(f64),
}

impl RangeRule {
    /// Parses `max` or a percentile such as `99.99`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        match text.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::Percentile(p)),
            _ => Err(format!(
                "calibration rule {text:?}: give `max` or a percentile in (0, 100], e.g. 99.99"
            )),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Max => "max".into(),
            Self::Percentile(p) => format!("percentile {p}"),
        }
    }
}

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

    #[test]
    fn the_range_is_the_max_or_the_bin_edge_of_the_percentile() {
        let mut h = ActivationHistogram::default();
        // 90 zeros, 9 values of 1.0, one outlier of 100.
        h.record(&[0.0; 90]);
        h.record(&[1.0; 9]);
        h.record(&[100.0]);
        assert_eq!(h.count(), 100);
        assert_eq!(h.range(RangeRule::Max), 100.0);
        // The 99th value is 1.0: its bin's upper edge, 1 + 1/128.
        let r = h.range(RangeRule::Percentile(99.0));
        assert!((r - (1.0 + 1.0 / 128.0)).abs() < 1e-6, "{r}");
        assert_eq!(h.range(RangeRule::Percentile(100.0)), 100.0);
        assert_eq!(h.range(RangeRule::Percentile(50.0)), 0.0);
        assert!(!h.has_negatives());
        h.record(&[-0.5]);
        assert!(h.has_negatives());
        // Signed: around 128, over the largest magnitude (here the max, 100).
        let codes = InputCodes::for_histogram(&h, RangeRule::Percentile(99.0));
        assert_eq!((codes.zero_point, codes.scale), (128, 100.0 / 127.0));
        let mut small = ActivationHistogram::default();
        small.record(&[-3.0, 1.0]);
        assert_eq!(
            InputCodes::for_histogram(&small, RangeRule::Max).scale,
            3.0 / 127.0
        );
    }

    #[test]
    fn rules_parse_with_a_clear_error() {
        assert_eq!(RangeRule::parse("max"), Ok(RangeRule::Max));
        assert_eq!(RangeRule::parse("99.99"), Ok(RangeRule::Percentile(99.99)));
        assert!(RangeRule::parse("101").unwrap_err().contains("percentile"));
        assert!(RangeRule::parse("often").is_err());
    }
}
