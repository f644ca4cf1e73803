//! Fast inference: the eval-mode network with BatchNorm folded into its convolutions.
//!
//! In eval mode BatchNorm is a per-channel affine map, so conv → BN → ReLU equals one
//! convolution with scaled weights and a bias, then ReLU: `BN(W·x) = (s·W)·x + (β − s·μ)` with
//! `s = γ/√(σ²+ε)`. [`FoldedGoogLeNet`] computes those weights once, then runs each
//! convolution as one matrix multiply with a fused bias + ReLU pass, except the 3×3 "same"
//! convolutions (two thirds of the network's multiply-adds), which run as Winograd F(m×m, 3×3)
//! with weights transformed once per variant (`ops::winograd`). Activations are
//! channel-major `(C, N, H, W)`, so each Inception branch is a contiguous block of rows of the
//! block's output: the branches write straight into it and no concatenation copy is made. The
//! work buffers are kept between calls, so a warm forward pass allocates almost nothing.
//!
//! Results equal [`GoogLeNet::forward_t`] in eval mode up to float rounding (tested).

use crate::googlenet::{pool_after, GoogLeNet, Output, EMBEDDING_DIM, STEM_POOL};
use crate::head::Head;
use crate::layers::{l2_normalise, BasicConv2d, BRANCH_POOL};
use crate::ops::{
    conv3x3_bias_relu, conv_bias_relu, max_pool_planes, on_pool, prefix, winograd_variant,
    Conv2dGeometry, PoolGeometry, WinogradWeights,
};
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

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
struct FoldedConv {
    /// `(O, C·k·k)`, row-major.
    weight: Vec<f32>,
    /// `(O)`.
    bias: Vec<f32>,
    geometry: Conv2dGeometry,
    /// The same weights in the Winograd domain, for a 3×3 stride-1 "same" convolution.
    winograd: Option<WinogradWeights>,
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
        })
    }

    fn out_channels(&self) -> usize {
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
        if let (Some(weights), Some(variant)) = (&self.winograd, winograd_variant(x.dims())) {
            let kernel = weights.kernel(variant, &self.weight, self.out_channels(), x.c);
            return conv3x3_bias_relu(kernel, input, x.dims(), &self.bias, out);
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

/// An Inception block's six folded convolutions.
#[derive(Debug, Clone)]
struct FoldedInception {
    /// `branch1`, `branch2.0`, `branch2.1`, `branch3.0`, `branch3.1`, `branch4.1`.
    convs: [FoldedConv; 6],
}

/// Buffers an Inception block needs besides its input and output.
#[derive(Debug, Default)]
struct BlockScratch {
    reduced: Vec<f32>,
    pooled: Vec<f32>,
}

impl FoldedInception {
    fn out_channels(&self) -> usize {
        let [b1, _, b2, _, b3, b4] = &self.convs;
        b1.out_channels() + b2.out_channels() + b3.out_channels() + b4.out_channels()
    }

    /// Runs the four branches, each writing its own block of rows of `out`.
    fn run(
        &self,
        input: &[f32],
        x: Activation,
        scratch: &mut BlockScratch,
        out: &mut Vec<f32>,
    ) -> Result<Activation> {
        let [b1, b2red, b2, b3red, b3, b4] = &self.convs;
        let y = Activation {
            c: self.out_channels(),
            ..x
        };
        let plane = x.n * x.h * x.w;
        let out = prefix(out, y.len());
        let (o1, rest) = out.split_at_mut(b1.out_channels() * plane);
        let (o2, rest) = rest.split_at_mut(b2.out_channels() * plane);
        let (o3, o4) = rest.split_at_mut(b3.out_channels() * plane);
        b1.run(input, x, o1)?;
        for (reduce, conv, o) in [(b2red, b2, o2), (b3red, b3, o3)] {
            let r = reduce.output(x);
            let reduced = prefix(&mut scratch.reduced, r.len());
            reduce.run(input, x, reduced)?;
            conv.run(reduced, r, o)?;
        }
        let p = max_pool(BRANCH_POOL, input, x, &mut scratch.pooled)?;
        b4.run(&scratch.pooled, p, o4)?;
        Ok(y)
    }
}

/// All buffers of one forward pass; reused by later calls.
#[derive(Debug, Default)]
struct Workspace {
    current: Vec<f32>,
    next: Vec<f32>,
    block: BlockScratch,
}

impl Workspace {
    /// Makes the freshly written `next` the current activation.
    fn advance(&mut self) {
        std::mem::swap(&mut self.current, &mut self.next);
    }
}

/// GoogLeNet for inference only, with folded BatchNorm and reused buffers.
///
/// Build it from a trained [`GoogLeNet`] (a snapshot: later changes to that network's weights
/// are not seen). Safe to share between threads; concurrent calls each take their own buffers.
#[derive(Debug)]
pub struct FoldedGoogLeNet {
    stem: [FoldedConv; 3],
    /// Blocks with a max pool after them where GoogLeNet has one.
    blocks: Vec<(FoldedInception, Option<PoolGeometry>)>,
    heads: Vec<Head>,
    workspaces: Mutex<Vec<Workspace>>,
}

impl FoldedGoogLeNet {
    /// Folds the eval-mode BatchNorm of `net` into its convolutions.
    pub fn new(net: &GoogLeNet) -> Result<Self> {
        let [c1, c2, c3] = net.stem();
        let blocks = net
            .blocks()
            .iter()
            .map(|(name, block)| {
                let convs = block.convs().map(FoldedConv::new);
                let [a, b, c, d, e, f] = convs;
                Ok((
                    FoldedInception {
                        convs: [a?, b?, c?, d?, e?, f?],
                    },
                    pool_after(name),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem: [
                FoldedConv::new(c1)?,
                FoldedConv::new(c2)?,
                FoldedConv::new(c3)?,
            ],
            blocks,
            heads: net.heads().to_vec(),
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// Runs `(N, 3, S, S)` normalised images; same output as `GoogLeNet::forward_t(x, false)`.
    pub fn forward(&self, x: &Tensor) -> Result<Output> {
        let (n, c, h, w) = x.dims4()?;
        let input = channel_major(x)?;
        let pooled =
            self.with_workspace(|ws| self.pooled_features(&input, Activation { c, n, h, w }, ws));
        let pooled = Tensor::from_vec(pooled?, (n, EMBEDDING_DIM), &Device::Cpu)?;
        let logits = self
            .heads
            .iter()
            .map(|head| head.forward(&pooled))
            .collect::<Result<Vec<_>>>()?;
        Ok(Output {
            logits,
            embedding: l2_normalise(&pooled)?,
        })
    }

    /// Runs the network on `input` up to and including Inception block `blocks - 1` (all blocks
    /// when `blocks` is past the end), leaving the activation in `ws.current`; a block's max pool
    /// runs only when a later block follows it.
    fn run_blocks(
        &self,
        input: &[f32],
        x: Activation,
        blocks: usize,
        ws: &mut Workspace,
    ) -> Result<Activation> {
        let [c1, c2, c3] = &self.stem;
        let mut a = c1.output(x);
        c1.run(input, x, prefix(&mut ws.next, a.len()))?;
        ws.advance();
        a = max_pool(STEM_POOL, &ws.current, a, &mut ws.next)?;
        ws.advance();
        for conv in [c2, c3] {
            let y = conv.output(a);
            conv.run(&ws.current, a, prefix(&mut ws.next, y.len()))?;
            ws.advance();
            a = y;
        }
        a = max_pool(STEM_POOL, &ws.current, a, &mut ws.next)?;
        ws.advance();
        let blocks = blocks.min(self.blocks.len());
        for (i, (block, pool)) in self.blocks[..blocks].iter().enumerate() {
            a = block.run(&ws.current, a, &mut ws.block, &mut ws.next)?;
            ws.advance();
            if let Some(pool) = pool.filter(|_| i + 1 < blocks || blocks == self.blocks.len()) {
                a = max_pool(pool, &ws.current, a, &mut ws.next)?;
                ws.advance();
            }
        }
        Ok(a)
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

    /// The activation after the first `blocks` Inception blocks (`LAYER_NAMES[2 + blocks - 1]`)
    /// for `(N, 3, S, S)` normalised images: what the copy descriptor pools (`copy_descriptor`).
    pub fn feature_map(&self, x: &Tensor, blocks: usize) -> Result<FeatureMap> {
        let (n, c, h, w) = x.dims4()?;
        let input = channel_major(x)?;
        self.with_workspace(|ws| {
            let a = self.run_blocks(&input, Activation { c, n, h, w }, blocks.max(1), ws)?;
            Ok(FeatureMap {
                values: ws.current[..a.len()].to_vec(),
                channels: a.c,
                batch: a.n,
                height: a.h,
                width: a.w,
            })
        })
    }

    /// The pooled 1024-d features, `(N, 1024)` row-major.
    fn pooled_features(
        &self,
        input: &[f32],
        x: Activation,
        ws: &mut Workspace,
    ) -> Result<Vec<f32>> {
        let a = self.run_blocks(input, x, usize::MAX, ws)?;
        if a.c != EMBEDDING_DIM {
            candle_core::bail!(
                "folded network ends with {} channels, expected {EMBEDDING_DIM}",
                a.c
            );
        }
        // Global average pool: channel-major (C, N, h·w) → (N, C).
        let area = a.h * a.w;
        let mut pooled = vec![0f32; a.n * a.c];
        pooled
            .par_chunks_mut(a.c)
            .enumerate()
            .for_each(|(sample, row)| {
                for (channel, v) in row.iter_mut().enumerate() {
                    let start = (channel * a.n + sample) * area;
                    *v = ws.current[start..start + area].iter().sum::<f32>() / area as f32;
                }
            });
        Ok(pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::googlenet::HeadSpec;
    use crate::head::HeadKind;
    use crate::ops::max_abs_diff;
    use candle_nn::{VarBuilder, VarMap};

    /// A random network whose BatchNorm running statistics are not the initial ones.
    fn trained_looking_net(kind: HeadKind) -> Result<GoogLeNet> {
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
        let net = GoogLeNet::new(&heads, kind, 0.5, vb)?;
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
        for ((batch, size), kind) in [(3, 64), (1, 75), (2, 97)]
            .into_iter()
            .zip(kinds.iter().cycle())
        {
            let net = trained_looking_net(*kind)?;
            let folded = FoldedGoogLeNet::new(&net)?;
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

    /// The feature map after every block, averaged, is the pooled embedding before
    /// normalisation; after fewer blocks it has that block's channels and size.
    #[test]
    fn feature_maps_match_the_pooled_features() -> Result<()> {
        let net = trained_looking_net(HeadKind::Linear)?;
        let folded = FoldedGoogLeNet::new(&net)?;
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
}
