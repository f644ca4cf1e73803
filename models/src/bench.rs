//! Speed of the network on this machine: training steps and inference, images per second, and
//! where an inference pass spends its time, stage by stage.

use crate::activation_codes::RangeRule;
use crate::architecture::GOOGLENET;
use crate::folded::FoldedNetwork;
use crate::head::HeadKind;
use crate::loss::{smoothed_targets, soft_cross_entropy};
use crate::network::{HeadSpec, Network};
use crate::ops::on_pool;
use crate::optimiser::adamw;
use crate::quantise::{calibrate, serving_network};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use serde::Serialize;
use std::time::Instant;

/// The arithmetic an inference measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32, as trained.
    F32,
    /// int8 convolutions (`crate::quantise`), calibrated on the benchmark's random pictures.
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            _ => Err(format!("precision {s:?}: give f32 or int8")),
        }
    }
}

/// The random network folded for serving at `precision` (int8: calibrated by the largest
/// activations of 8 random pictures of `size` px).
fn serving(net: &Network, precision: Precision, size: usize) -> Result<FoldedNetwork> {
    match precision {
        Precision::F32 => FoldedNetwork::new(net),
        Precision::Int8 => {
            let pictures = Tensor::randn(0f32, 1., (8, 3, size, size), &Device::Cpu)?;
            let card = calibrate(net, [pictures], RangeRule::Max)?;
            serving_network(net, Some(&card))
        }
    }
}

/// Measured throughput at one input size.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    /// Input side in pixels.
    pub size: usize,
    /// The inference arithmetic.
    pub precision: Precision,
    /// Batch size used for the throughput figures.
    pub batch: usize,
    /// Training images/s (forward + backward + AdamW step); `None` when not measured.
    pub train_img_s: Option<f64>,
    /// Inference images/s (eval-mode forward, BatchNorm folded).
    pub infer_img_s: f64,
    /// Eval-mode forward latency of a single image, in milliseconds.
    pub latency_ms: f64,
}

fn timed<F: FnMut() -> Result<()>>(repeats: usize, mut f: F) -> Result<f64> {
    f()?; // warm-up
    let start = Instant::now();
    for _ in 0..repeats {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / repeats as f64)
}

/// Measures a randomly initialised 1000-class GoogLeNet at `size` px with `repeats` timed runs,
/// inference at `precision`; `training` adds the training-step measurement.
pub fn measure(
    size: usize,
    batch: usize,
    repeats: usize,
    training: bool,
    precision: Precision,
) -> Result<SpeedRow> {
    let dev = Device::Cpu;
    let (varmap, net) = random_network()?;
    let mut opt = adamw(&varmap, &[], 1e-3, 1e-4)?;
    let x = Tensor::randn(0f32, 1., (batch, 3, size, size), &dev)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i * 7 % 1000).collect();
    let targets = smoothed_targets(&labels, 1000, 0.1, &dev)?;
    let train = if training {
        Some(timed(repeats, || {
            on_pool(|| {
                let out = net.forward_t(&x, true)?;
                let loss = soft_cross_entropy(&out.logits[0], &targets)?;
                opt.backward_step(&loss)
            })
        })?)
    } else {
        None
    };
    // Inference runs the way the product serves: BatchNorm folded, buffers reused.
    let folded = serving(&net, precision, size)?;
    let infer = timed(repeats, || folded.forward(&x).map(drop))?;
    let one = x.narrow(0, 0, 1)?;
    let latency = timed(repeats * 4, || folded.forward(&one).map(drop))?;
    Ok(SpeedRow {
        size,
        precision,
        batch,
        train_img_s: train.map(|t| batch as f64 / t),
        infer_img_s: batch as f64 / infer,
        latency_ms: latency * 1e3,
    })
}

/// A randomly initialised 1000-class GoogLeNet and its variables.
fn random_network() -> Result<(VarMap, Network)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let heads = [HeadSpec {
        level: "character".into(),
        classes: 1000,
    }];
    let net = Network::new(&GOOGLENET, &heads, HeadKind::Linear, 0.5, vb)?;
    Ok((varmap, net))
}

/// Milliseconds one stage of the folded network takes.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    /// torchvision's module name (`conv1`, `inception4e`).
    pub stage: &'static str,
    /// Mean wall time per pass, in milliseconds.
    pub ms: f64,
}

/// The folded random GoogLeNet's time per stage for a batch of `batch` images of `size` px at
/// `precision`, the mean of `repeats` passes after one warm-up (see
/// [`FoldedNetwork::stage_times`]).
pub fn stage_profile(
    size: usize,
    batch: usize,
    repeats: usize,
    precision: Precision,
) -> Result<Vec<StageTime>> {
    let (_varmap, net) = random_network()?;
    let folded = serving(&net, precision, size)?;
    let x = Tensor::randn(0f32, 1., (batch, 3, size, size), &Device::Cpu)?;
    Ok(folded
        .stage_times(&x, repeats)?
        .into_iter()
        .map(|(stage, spent)| StageTime {
            stage,
            ms: spent.as_secs_f64() * 1e3,
        })
        .collect())
}

/// Renders rows as a markdown table.
pub fn markdown_table(rows: &[SpeedRow]) -> String {
    let mut s = String::from(
        "| input | precision | batch | training img/s | inference img/s | batch-1 latency ms |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let train = r.train_img_s.map_or("–".into(), |v| format!("{v:.1}"));
        s += &format!(
            "| {} px | {:?} | {} | {train} | {:.1} | {:.1} |\n",
            r.size, r.precision, r.batch, r.infer_img_s, r.latency_ms
        );
    }
    s
}
