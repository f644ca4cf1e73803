//! Fast inference: the eval-mode network with BatchNorm folded into its convolutions.
//!
//! In eval mode BatchNorm is a per-channel affine map, so conv → BN → ReLU equals one
//! convolution with scaled weights and a bias, then ReLU: `BN(W·x) = (s·W)·x + (β − s·μ)` with
//! `s = γ/√(σ²+ε)`. [`FoldedNetwork`] computes those weights once for every convolution of the
//! architecture table the trained [`Network`] was built from, then runs each
//! convolution as one matrix multiply with a fused bias + ReLU pass, except the 3×3 "same"
//! convolutions (two thirds of the network's multiply-adds), which run as Winograd F(m×m, 3×3)
//! with weights transformed once per variant (`ops::winograd`). Activations are
//! channel-major `(C, N, H, W)`, so each Inception branch is a contiguous block of rows of the
//! block's output: the branches write straight into it and no concatenation copy is made. The
//! work buffers are kept between calls, so a warm forward pass allocates almost nothing.
//!
//! Results equal [`Network::forward_t`] in eval mode up to float rounding (tested).

use crate::activation_codes::{ActivationHistogram, InputCodes};
use crate::architecture::{Architecture, Op};
use crate::head::Head;
use crate::layers::{l2_normalise, BasicConv2d, InceptionBranch};
use crate::network::{Layer, Network, Output};
use crate::ops::{
    conv3x3_bias_relu, conv_bias_relu, conv_int8_bias_relu, max_pool_planes, on_pool, prefix,
    winograd_variant, Conv2dGeometry, Int8Weights, PoolGeometry, WinogradWeights,
};
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shape `(C, N, H, W)` of a channel-major activation held at the front of a buffer.
#[derive(Debug, Clone, Copy)]
struct Activation {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
}

impl Activation {
    fn len(&self) -> usize {
        self.c * self.n * self.h * self.w
    }

    fn dims(&self) -> [usize; 4] {
        [self.c, self.n, self.h, self.w]
    }
}

/// A channel-major activation `(C, N, H, W)` taken from inside the network.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    /// `channels · batch · height · width` values, channel-major.
    pub values: Vec<f32>,
    /// Channels.
    pub channels: usize,
    /// Images.
    pub batch: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// `(N, C, H, W)` images as a channel-major `(C, N, H, W)` vector.
fn channel_major(x: &Tensor) -> Result<Vec<f32>> {
    x.to_dtype(DType::F32)?
        .permute((1, 0, 2, 3))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// One conv → BN → ReLU with the BatchNorm folded into the weights and a bias.
#[derive(Debug, Clone)]
pub(crate) struct FoldedConv {
    /// `(O, C·k·k)`, row-major.
    pub(crate) weight: Vec<f32>,
    /// `(O)`.
    pub(crate) bias: Vec<f32>,
    pub(crate) geometry: Conv2dGeometry,
    /// The same weights in the Winograd domain, for a 3×3 stride-1 "same" convolution.
    winograd: Option<WinogradWeights>,
    /// When quantised: the int8 weights and the input's codes; the convolution then runs in
    /// int8 (`ops::int8`), except as Winograd on large planes.
    int8: Option<Int8Conv>,
    /// While calibrating: the histogram of every input this convolution sees.
    observer: Option<Arc<Mutex<ActivationHistogram>>>,
}

/// From this many pixels over the batch on, a quantised 3×3 "same" convolution still runs as
/// f32 Winograd: its 2.25–4× fewer multiplies beat int8's cheaper ones on AVX2. Measured per
/// stage (`bench --stages --precision int8`, 96 px, medians of interleaved rounds): at batch 32
/// inception4 (1,152 pixels) took 9.0–11.4 ms with Winograd against 9.1–13.0 in int8, inception5
/// (288) 5.5 ms in int8 against 5.9; at batch 1 every size up to conv3's 576 pixels ran faster
/// in int8 (BENCHMARKS.md).
const WINOGRAD_OVER_INT8_PLANE: usize = 1024;

/// A convolution's int8 form.
#[derive(Debug, Clone)]
struct Int8Conv {
    weights: Int8Weights,
    input: InputCodes,
}

impl FoldedConv {
    fn new(conv: &BasicConv2d) -> Result<Self> {
        let (weight, geometry, bn) = conv.parts();
        let (scale, shift) = bn.eval_affine()?;
        let out_channels = weight.dim(0)?;
        let mut folded = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let row = folded.len() / out_channels;
        for (w, s) in folded.chunks_mut(row).zip(&scale) {
            w.iter_mut().for_each(|v| *v *= s);
        }
        let winograd = geometry.is_same3x3().then(WinogradWeights::default);
        Ok(Self {
            weight: folded,
            bias: shift,
            geometry,
            winograd,
            int8: None,
            observer: None,
        })
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.bias.len()
    }

    /// The output shape for input `x`.
    fn output(&self, x: Activation) -> Activation {
        let (h, w) = self.geometry.output_hw(x.h, x.w);
        Activation {
            c: self.out_channels(),
            n: x.n,
            h,
            w,
        }
    }

    /// Runs on `input` (shape `x`), writing exactly `self.output(x).len()` values to `out`.
    fn run(&self, input: &[f32], x: Activation, out: &mut [f32]) -> Result<()> {
        let input = &input[..x.len()];
        if let Some(observer) = &self.observer {
            if let Ok(mut histogram) = observer.lock() {
                histogram.record(input);
            }
        }
        // Winograd where it applies (for a quantised convolution only on large planes), else
        // int8 if quantised, else im2col in f32.
        let winograd = self.winograd.as_ref().zip(winograd_variant(x.dims()));
        let large = x.n * x.h * x.w >= WINOGRAD_OVER_INT8_PLANE;
        match (winograd, &self.int8) {
            (Some((weights, variant)), q) if q.is_none() || large => {
                let kernel = weights.kernel(variant, &self.weight, self.out_channels(), x.c);
                return conv3x3_bias_relu(kernel, input, x.dims(), &self.bias, out);
            }
            (_, Some(q)) => {
                let (weights, codes) = (&q.weights, q.input);
                return conv_int8_bias_relu(
                    self.geometry,
                    input,
                    x.dims(),
                    weights,
                    codes,
                    &self.bias,
                    out,
                )
                .map(drop);
            }
            _ => {}
        }
        conv_bias_relu(
            self.geometry,
            input,
            x.dims(),
            &self.weight,
            &self.bias,
            out,
        )
        .map(drop)
    }
}

/// Runs a max pool on activation `x` held in `input`, into `out`; returns the pooled shape.
fn max_pool(
    geometry: PoolGeometry,
    input: &[f32],
    x: Activation,
    out: &mut Vec<f32>,
) -> Result<Activation> {
    let (h, w) = geometry.output_hw(x.h, x.w);
    let y = Activation { h, w, ..x };
    max_pool_planes(geometry, &input[..x.len()], x.h, x.w, prefix(out, y.len()))?;
    Ok(y)
}

/// One Inception branch with its convolutions folded.
#[derive(Debug, Clone)]
pub(crate) struct FoldedBranch {
    /// Max pool run on the block's input first, if any.
    pub(crate) pool: Option<PoolGeometry>,
    /// Convolutions in order.
    pub(crate) convs: Vec<FoldedConv>,
}

impl FoldedBranch {
    fn new(branch: &InceptionBranch) -> Result<Self> {
        Ok(Self {
            pool: branch.pool,
            convs: branch
                .convs
                .iter()
                .map(FoldedConv::new)
                .collect::<Result<_>>()?,
        })
    }

    fn out_channels(&self) -> usize {
        self.convs.last().map_or(0, FoldedConv::out_channels)
    }

    /// Runs the branch on `input` (shape `x`), the last convolution writing into `out`; the
    /// pool's and the inner convolutions' outputs go to `scratch`, one buffer each.
    fn run(
        &self,
        input: &[f32],
        x: Activation,
        scratch: &mut Vec<Vec<f32>>,
        out: &mut [f32],
    ) -> Result<()> {
        let Some((last, inner)) = self.convs.split_last() else {
            candle_core::bail!("an Inception branch without convolutions");
        };
        let steps = usize::from(self.pool.is_some()) + inner.len();
        if scratch.len() < steps {
            scratch.resize_with(steps, Vec::new);
        }
        let mut done = 0;
        let mut a = x;
        if let Some(pool) = self.pool {
            a = max_pool(pool, input, x, &mut scratch[0])?;
            done = 1;
        }
        for conv in inner {
            let y = conv.output(a);
            let (before, after) = scratch.split_at_mut(done);
            let source = before.last().map_or(input, |b| &b[..]);
            conv.run(source, a, prefix(&mut after[0], y.len()))?;
            a = y;
            done += 1;
        }
        let source = scratch[..done].last().map_or(input, |b| &b[..]);
        last.run(source, a, out)
    }
}

/// An Inception block's branches, folded.
#[derive(Debug, Clone)]
pub(crate) struct FoldedInception {
    /// In concatenation order.
    pub(crate) branches: Vec<FoldedBranch>,
}

impl FoldedInception {
    fn out_channels(&self) -> usize {
        self.branches.iter().map(FoldedBranch::out_channels).sum()
    }

    /// Runs the branches, each writing its own block of rows of `out`: one after the other,
    /// each convolution shared among the threads, or on small activations (a batch-1 pass's
    /// later blocks) side by side, each with its own scratch buffers, so that the threads meet
    /// once per block rather than once per convolution.
    fn run(
        &self,
        input: &[f32],
        x: Activation,
        scratch: &mut Vec<Vec<Vec<f32>>>,
        out: &mut Vec<f32>,
    ) -> Result<Activation> {
        let y = Activation {
            c: self.out_channels(),
            ..x
        };
        let plane = x.n * x.h * x.w;
        let mut rows = Vec::with_capacity(self.branches.len());
        let mut rest = prefix(out, y.len());
        for branch in &self.branches {
            let (mine, tail) = rest.split_at_mut(branch.out_channels() * plane);
            rows.push(mine);
            rest = tail;
        }
        if plane <= SIDE_BY_SIDE_PLANE {
            if scratch.len() < self.branches.len() {
                scratch.resize_with(self.branches.len(), Vec::new);
            }
            self.branches
                .par_iter()
                .zip(rows)
                .zip(scratch.par_iter_mut())
                .try_for_each(|((branch, rows), scratch)| branch.run(input, x, scratch, rows))?;
        } else {
            if scratch.is_empty() {
                scratch.push(Vec::new());
            }
            for (branch, rows) in self.branches.iter().zip(rows) {
                branch.run(input, x, &mut scratch[0], rows)?;
            }
        }
        Ok(y)
    }
}

/// Inception blocks whose activation has at most this many pixels over the batch (12×12: a
/// 96 px upload's inception3) run their branches side by side. Measured at batch 1, 8 interleaved
/// rounds: the stages' sum 5.18 → 4.46 ms (median) at 64 px and 9.37 → 8.27 at 96 px; at batch 32
/// and 64 px (inception5, 128 pixels) 7.99 → 7.70 ms (BENCHMARKS.md).
const SIDE_BY_SIDE_PLANE: usize = 144;

/// One stage of the architecture table, ready to serve.
#[derive(Debug, Clone)]
pub(crate) enum FoldedStage {
    /// Conv with BatchNorm folded in, then ReLU.
    Conv(Box<FoldedConv>),
    /// Max pool.
    MaxPool(PoolGeometry),
    /// Inception block.
    Inception(FoldedInception),
    /// Mean over the plane.
    GlobalAveragePool,
}

/// All buffers of one forward pass; reused by later calls.
#[derive(Debug, Default)]
struct Workspace {
    current: Vec<f32>,
    next: Vec<f32>,
    /// Inside an Inception branch: the pool's and inner convolutions' outputs (one set per
    /// branch when the branches run side by side, else one set they share).
    branch: Vec<Vec<Vec<f32>>>,
}

impl Workspace {
    /// Makes the freshly written `next` the current activation.
    fn advance(&mut self) {
        std::mem::swap(&mut self.current, &mut self.next);
    }
}

/// A tapped block's pooled activation, one row per image.
pub type TappedRows = Vec<Vec<f32>>;

/// The network for inference only, with folded BatchNorm and reused buffers.
///
/// Build it from a trained [`Network`] (a snapshot: later changes to that network's weights
/// are not seen). Safe to share between threads; concurrent calls each take their own buffers.
#[derive(Debug)]
pub struct FoldedNetwork {
    architecture: &'static Architecture,
    /// One per stage of the architecture table, in its order.
    stages: Vec<FoldedStage>,
    heads: Vec<Head>,
    workspaces: Mutex<Vec<Workspace>>,
}

impl FoldedNetwork {
    /// Folds the eval-mode BatchNorm of `net` into its convolutions.
    pub fn new(net: &Network) -> Result<Self> {
        let stages = net
            .layers()
            .iter()
            .map(|layer| {
                Ok(match layer {
                    Layer::Conv(conv) => FoldedStage::Conv(Box::new(FoldedConv::new(conv)?)),
                    Layer::MaxPool(pool) => FoldedStage::MaxPool(*pool),
                    Layer::Inception(block) => FoldedStage::Inception(FoldedInception {
                        branches: block
                            .branches()
                            .iter()
                            .map(FoldedBranch::new)
                            .collect::<Result<_>>()?,
                    }),
                    Layer::GlobalAveragePool => FoldedStage::GlobalAveragePool,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            architecture: net.architecture(),
            stages,
            heads: net.heads().to_vec(),
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// Every convolution, in the order of the architecture table (an Inception block's
    /// branches in concatenation order, each branch's convolutions in order): the order of
    /// [`crate::quantise::Int8Card::inputs`].
    fn convs_mut(&mut self) -> Vec<&mut FoldedConv> {
        let mut convs = Vec::new();
        for stage in &mut self.stages {
            match stage {
                FoldedStage::Conv(conv) => convs.push(&mut **conv),
                FoldedStage::Inception(block) => convs.extend(
                    block
                        .branches
                        .iter_mut()
                        .flat_map(|branch| branch.convs.iter_mut()),
                ),
                FoldedStage::MaxPool(_) | FoldedStage::GlobalAveragePool => {}
            }
        }
        convs
    }

    /// Starts recording a histogram of every convolution's inputs (calibration); later passes
    /// add to it until [`FoldedNetwork::take_histograms`].
    pub fn observe_inputs(&mut self) {
        for conv in self.convs_mut() {
            conv.observer = Some(Arc::default());
        }
    }

    /// The histograms recorded since [`FoldedNetwork::observe_inputs`], one per convolution in
    /// [`FoldedNetwork::convs_mut`]'s order; recording stops.
    pub fn take_histograms(&mut self) -> Vec<ActivationHistogram> {
        self.convs_mut()
            .into_iter()
            .map(|conv| {
                conv.observer
                    .take()
                    .and_then(|o| Arc::try_unwrap(o).ok())
                    .and_then(|m| m.into_inner().ok())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Runs every convolution given input codes in int8 (per-channel 7-bit weights, its input
    /// coded as given); `None` keeps a convolution in f32.
    pub fn quantise(&mut self, inputs: &[Option<InputCodes>]) -> Result<()> {
        let mut convs = self.convs_mut();
        if convs.len() != inputs.len() {
            candle_core::bail!(
                "{} int8 input codes for a network of {} convolutions",
                inputs.len(),
                convs.len()
            );
        }
        for (conv, codes) in convs.iter_mut().zip(inputs) {
            conv.int8 = match codes {
                Some(c) if c.scale.is_finite() && c.scale > 0.0 => Some(Int8Conv {
                    weights: Int8Weights::quantise(&conv.weight, conv.out_channels()),
                    input: *c,
                }),
                Some(c) => {
                    candle_core::bail!("int8 input scale {} is not a positive number", c.scale)
                }
                None => None,
            };
        }
        Ok(())
    }

    /// The table this network was built from.
    pub fn architecture(&self) -> &'static Architecture {
        self.architecture
    }

    /// The stages, one per entry of the architecture table.
    pub(crate) fn stages(&self) -> &[FoldedStage] {
        &self.stages
    }

    /// The heads, in head order.
    pub(crate) fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// Runs `(N, 3, S, S)` normalised images; same output as `Network::forward_t(x, false)`.
    pub fn forward(&self, x: &Tensor) -> Result<Output> {
        Ok(self.forward_tapped(x, None)?.0)
    }

    /// [`FoldedNetwork::forward`], also returning, when `tap` is `Some(b)`, the globally
    /// average-pooled activation after the first `b` Inception blocks (one row per image) from
    /// the same pass: what a block fusion ([`crate::fusion`]) joins to the embedding.
    pub fn forward_tapped(
        &self,
        x: &Tensor,
        tap: Option<usize>,
    ) -> Result<(Output, Option<TappedRows>)> {
        let (n, c, h, w) = x.dims4()?;
        let input = channel_major(x)?;
        let (pooled, tapped) = self.with_workspace(|ws| {
            self.pooled_features(&input, Activation { c, n, h, w }, tap, ws)
        })?;
        let dim = self.architecture.embedding_dim;
        let pooled = Tensor::from_vec(pooled, (n, dim), &Device::Cpu)?;
        let logits = self
            .heads
            .iter()
            .map(|head| head.forward(&pooled))
            .collect::<Result<Vec<_>>>()?;
        let output = Output {
            logits,
            embedding: l2_normalise(&pooled)?,
        };
        Ok((output, tapped))
    }

    /// Runs the stages on `input` until the global average pool (not run) or until `blocks`
    /// Inception blocks have run, whichever comes first, leaving the activation in
    /// `ws.current`. With `tap = Some(b)`, also returns the average-pooled activation after the
    /// `b`-th block, `(N, C)` row-major.
    fn run_stages(
        &self,
        input: &[f32],
        x: Activation,
        blocks: usize,
        tap: Option<usize>,
        ws: &mut Workspace,
        mut timings: Option<&mut [Duration]>,
    ) -> Result<(Activation, Option<Vec<f32>>)> {
        let mut a = x;
        let mut blocks_run = 0;
        let mut tapped = None;
        for (i, stage) in self.stages.iter().enumerate() {
            let started = timings.is_some().then(Instant::now);
            let source = if i == 0 { input } else { &ws.current[..] };
            let mut block_ended = false;
            a = match stage {
                FoldedStage::Conv(conv) => {
                    let y = conv.output(a);
                    conv.run(source, a, prefix(&mut ws.next, y.len()))?;
                    y
                }
                FoldedStage::MaxPool(pool) => max_pool(*pool, source, a, &mut ws.next)?,
                FoldedStage::Inception(block) => {
                    blocks_run += 1;
                    block_ended = true;
                    block.run(source, a, &mut ws.branch, &mut ws.next)?
                }
                FoldedStage::GlobalAveragePool => break,
            };
            if let (Some(spent), Some(started)) =
                (timings.as_deref_mut().and_then(|t| t.get_mut(i)), started)
            {
                *spent += started.elapsed();
            }
            ws.advance();
            if block_ended && tap == Some(blocks_run) {
                tapped = Some(average_pool(a, &ws.current));
            }
            if blocks_run == blocks {
                break;
            }
        }
        Ok((a, tapped))
    }

    /// Borrows a workspace from the pool, runs `f` on the rayon pool, returns the workspace.
    fn with_workspace<T>(&self, f: impl FnOnce(&mut Workspace) -> Result<T> + Send) -> Result<T>
    where
        T: Send,
    {
        let mut ws = self
            .workspaces
            .lock()
            .map(|mut pool| pool.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let out = on_pool(|| f(&mut ws));
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
        out
    }

    /// The activation after the first `blocks` Inception blocks
    /// ([`Architecture::inception_blocks`]`[blocks - 1]`) for `(N, 3, S, S)` normalised images:
    /// what the copy descriptor pools (`copies::descriptor`).
    pub fn feature_map(&self, x: &Tensor, blocks: usize) -> Result<FeatureMap> {
        let (n, c, h, w) = x.dims4()?;
        let input = channel_major(x)?;
        self.with_workspace(|ws| {
            let (a, _) = self.run_stages(
                &input,
                Activation { c, n, h, w },
                blocks.max(1),
                None,
                ws,
                None,
            )?;
            Ok(FeatureMap {
                values: ws.current[..a.len()].to_vec(),
                channels: a.c,
                batch: a.n,
                height: a.h,
                width: a.w,
            })
        })
    }

    /// Where a forward pass of `(N, 3, S, S)` images spends its time: the mean wall time of
    /// each stage of the architecture table up to the global average pool (the heads and the
    /// input's reordering are left out), over `repeats` passes after one warm-up.
    pub fn stage_times(&self, x: &Tensor, repeats: usize) -> Result<Vec<(&'static str, Duration)>> {
        let (n, c, h, w) = x.dims4()?;
        let input = channel_major(x)?;
        let shape = Activation { c, n, h, w };
        let mut spent = vec![Duration::ZERO; self.stages.len()];
        self.with_workspace(|ws| {
            self.run_stages(&input, shape, usize::MAX, None, ws, None)?;
            for _ in 0..repeats {
                self.run_stages(&input, shape, usize::MAX, None, ws, Some(&mut spent))?;
            }
            Ok(())
        })?;
        Ok(self
            .architecture
            .stages
            .iter()
            .zip(spent)
            .filter(|(stage, _)| stage.op != Op::GlobalAveragePool)
            .map(|(stage, total)| (stage.name, total / repeats.max(1) as u32))
            .collect())
    }

    /// The pooled features, `(N, embedding_dim)` row-major, and the tapped block's (see
    /// [`FoldedNetwork::forward_tapped`]) as rows.
    fn pooled_features(
        &self,
        input: &[f32],
        x: Activation,
        tap: Option<usize>,
        ws: &mut Workspace,
    ) -> Result<(Vec<f32>, Option<TappedRows>)> {
        let (a, tapped) = self.run_stages(input, x, usize::MAX, tap, ws, None)?;
        let dim = self.architecture.embedding_dim;
        if a.c != dim {
            candle_core::bail!("folded network ends with {} channels, expected {dim}", a.c);
        }
        if tap.is_some() && tapped.is_none() {
            candle_core::bail!("the network has no Inception block {tap:?} to tap");
        }
        let rows = tapped.map(|t| {
            let channels = t.len() / a.n.max(1);
            t.chunks(channels.max(1)).map(<[f32]>::to_vec).collect()
        });
        Ok((average_pool(a, &ws.current), rows))
    }
}

/// Global average pool of activation `a` held channel-major in `values`: `(C, N, h·w)` →
/// `(N, C)` row-major.
fn average_pool(a: Activation, values: &[f32]) -> Vec<f32> {
    let area = a.h * a.w;
    let mut pooled = vec![0f32; a.n * a.c];
    pooled
        .par_chunks_mut(a.c)
        .enumerate()
        .for_each(|(sample, row)| {
            for (channel, v) in row.iter_mut().enumerate() {
                let start = (channel * a.n + sample) * area;
                *v = values[start..start + area].iter().sum::<f32>() / area as f32;
            }
        });
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::GOOGLENET;
    use crate::head::HeadKind;
    use crate::network::HeadSpec;
    use crate::ops::max_abs_diff;
    use candle_nn::{VarBuilder, VarMap};

    /// A random network whose BatchNorm running statistics are not the initial ones.
    fn trained_looking_net(kind: HeadKind) -> Result<Network> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let heads = [
            HeadSpec {
                level: "character".into(),
                classes: 7,
            },
            HeadSpec {
                level: "work".into(),
                classes: 3,
            },
        ];
        let net = Network::new(&GOOGLENET, &heads, kind, 0.5, vb)?;
        for _ in 0..3 {
            let x = (Tensor::randn(0f32, 1., (4, 3, 64, 64), &Device::Cpu)? + 0.3)?;
            net.forward_t(&x, true)?;
        }
        Ok(net)
    }

    /// Logits and embeddings agree with the plain eval-mode network within 1e-4 (relative to
    /// the logits' scale), at the smallest size, an odd size (ceil-mode pools) and batch 1.
    #[test]
    fn matches_the_plain_network_in_eval_mode() -> Result<()> {
        let kinds = [HeadKind::Linear, HeadKind::Cosine { scale: 30.0 }];
        // (1, 64): inception5 at 2×2 px runs the 4-column products of `ops/narrow.rs`.
        for ((batch, size), kind) in [(3, 64), (1, 75), (2, 97), (1, 64)]
            .into_iter()
            .zip(kinds.iter().cycle())
        {
            let net = trained_looking_net(*kind)?;
            let folded = FoldedNetwork::new(&net)?;
            let x = Tensor::randn(0f32, 1., (batch, 3, size, size), &Device::Cpu)?;
            let plain = net.forward_t(&x, false)?;
            // Twice: the second call reuses the first call's buffers.
            for _ in 0..2 {
                let fast = folded.forward(&x)?;
                for (a, b) in fast.logits.iter().zip(&plain.logits) {
                    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                    let d = max_abs_diff(a, b);
                    assert!(d < 1e-4 * scale, "logits differ by {d} at {size} px");
                }
                let d = max_abs_diff(&fast.embedding, &plain.embedding);
                assert!(d < 1e-4, "embeddings differ by {d} at {size} px");
            }
        }
        Ok(())
    }

    #[test]
    fn stage_times_cover_every_stage_before_the_average_pool() -> Result<()> {
        let folded = FoldedNetwork::new(&trained_looking_net(HeadKind::Linear)?)?;
        let x = Tensor::randn(0f32, 1., (1, 3, 64, 64), &Device::Cpu)?;
        let times = folded.stage_times(&x, 2)?;
        let names: Vec<&str> = GOOGLENET
            .stages
            .iter()
            .filter(|s| s.op != Op::GlobalAveragePool)
            .map(|s| s.name)
            .collect();
        assert_eq!(times.iter().map(|t| t.0).collect::<Vec<_>>(), names);
        assert!(times.iter().all(|(_, spent)| *spent > Duration::ZERO));
        Ok(())
    }

    /// The feature map after every block, averaged, is the pooled embedding before
    /// normalisation; after fewer blocks it has that block's channels and size.
    #[test]
    fn feature_maps_match_the_pooled_features() -> Result<()> {
        let net = trained_looking_net(HeadKind::Linear)?;
        let folded = FoldedNetwork::new(&net)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 64, 64), &Device::Cpu)?;
        let map = folded.feature_map(&x, usize::MAX)?;
        let area = (map.height * map.width) as f32;
        let embedding = folded.forward(&x)?.embedding.to_vec2::<f32>()?;
        for (n, e) in embedding.iter().enumerate() {
            let pooled: Vec<f32> = (0..map.channels)
                .map(|c| {
                    let start = (c * map.batch + n) * map.height * map.width;
                    map.values[start..start + map.height * map.width]
                        .iter()
                        .sum::<f32>()
                        / area
                })
                .collect();
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (a, b) in pooled.iter().zip(e) {
                assert!((a / norm - b).abs() < 1e-4);
            }
        }
        // After inception4e (7 blocks) at 64 px: 832 channels, 4x4 (its pool not applied).
        let map = folded.feature_map(&x, 7)?;
        assert_eq!(
            (map.channels, map.batch, map.height, map.width),
            (832, 2, 4, 4)
        );
        Ok(())
    }

    /// A tapped pass gives the same output as a plain one, plus the tapped block's average
    /// pool, which equals pooling that block's own feature map.
    #[test]
    fn a_tapped_pass_pools_the_block_it_names() -> Result<()> {
        let net = trained_looking_net(HeadKind::Linear)?;
        let folded = FoldedNetwork::new(&net)?;
        let x = Tensor::randn(0f32, 1., (3, 3, 64, 64), &Device::Cpu)?;
        let (blocks, channels) = GOOGLENET.inception_block("inception4b").unwrap();
        let (out, tapped) = folded.forward_tapped(&x, Some(blocks))?;
        let tapped = tapped.expect("tapped rows");
        let plain = folded.forward(&x)?;
        assert!(max_abs_diff(&out.embedding, &plain.embedding) < 1e-6);
        let expected = crate::copies::descriptor::gem(&folded.feature_map(&x, blocks)?, 1.0);
        assert_eq!((tapped.len(), tapped[0].len()), (3, channels));
        for (row, want) in tapped.iter().zip(&expected) {
            for (a, b) in row.iter().zip(want) {
                assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
        assert!(folded.forward_tapped(&x, None)?.1.is_none());
        assert!(folded.forward_tapped(&x, Some(99)).is_err());
        Ok(())
    }
}
