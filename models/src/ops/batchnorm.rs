//! Fused BatchNorm + ReLU over channel-major `(C, N, H, W)` activations, forward and backward.
//!
//! candle composes BatchNorm from about ten generic tensor ops, each a full pass over the
//! activations with its own allocation; here the forward is one pass and the backward two.
//! The per-channel parameters travel as one `(4, C)` tensor: weight, bias, mean, 1/std. Train
//! mode passes the batch statistics ([`channel_stats`]), eval mode the running ones; the
//! gradient formula accounts for the batch statistics' dependence on the input.

use super::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

/// Channels and values per channel of a `(C, N, H, W)` tensor.
fn per_channel(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    match *layout.dims() {
        [c, n, h, w] => Ok((c, n * h * w)),
        ref d => candle_core::bail!("{op}: expected a (C, N, H, W) tensor, got shape {d:?}"),
    }
}

/// Per-channel mean and biased variance of `(C, N, H, W)`, as a `(2, C)` tensor (no gradient).
pub fn channel_stats(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ChannelStats)
}

/// `relu(x * scale + shift)` per channel, with `params` = `(4, C)` rows weight, bias, mean,
/// 1/std (scale = weight/std, shift = bias - mean·scale). Differentiable in `x` and `params`
/// (rows weight and bias; the statistics are treated as functions of `x`, i.e. train mode).
pub fn batch_norm_relu(x: &Tensor, params: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&params.contiguous()?, BnRelu)
}

struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (c, m) = per_channel(layout, self.name())?;
        let x = contiguous_f32(self.name(), storage, layout)?;
        let stats: Vec<(f32, f32)> = x.par_chunks(m).map(mean_var).collect();
        debug_assert_eq!(stats.len(), c);
        let mut out: Vec<f32> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// Mean and biased variance of one channel's values.
#[multiversion(targets = "simd")]
fn mean_var(xc: &[f32]) -> (f32, f32) {
    let m = xc.len().max(1) as f64;
    let mean = (sum_pairs(xc, xc, |v, _| v) / m) as f32;
    let var = sum_pairs(xc, xc, |v, _| (v - mean) * (v - mean)) / m;
    (mean, var as f32)
}

/// `Σ f(a[i], b[i])` over two equally long slices: 16 f32 lanes within blocks of 4,096 values
/// (so that it vectorises), the blocks' sums added in f64 (so that long channels stay accurate).
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0f64;
    for (a, b) in a.chunks(4096).zip(b.chunks(4096)) {
        let mut lanes = [0f32; LANES];
        let whole = a.len() / LANES * LANES;
        for (a, b) in a[..whole]
            .chunks_exact(LANES)
            .zip(b[..whole].chunks_exact(LANES))
        {
            for i in 0..LANES {
                lanes[i] += f(a[i], b[i]);
            }
        }
        let rest: f32 = a[whole..]
            .iter()
            .zip(&b[whole..])
            .map(|(&x, &y)| f(x, y))
            .sum();
        total += lanes.iter().map(|&v| v as f64).sum::<f64>() + rest as f64;
    }
    total
}

struct BnRelu;

impl CustomOp2 for BnRelu {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, m) = per_channel(l1, self.name())?;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let params = contiguous_f32(self.name(), s2, l2)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(m)
            .zip(x.par_chunks(m))
            .enumerate()
            .for_each(|(ch, (o, xc))| scale_shift_relu(o, xc, ChannelAffine::of(params, c, ch)));
        Ok((CpuStorage::F32(out), Shape::from(l1.dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dw_db = x.apply_op3_no_bwd(&grad, params, &ParamGrad)?;
        let all = Tensor::cat(&[params, &dw_db], 0)?;
        let dx = x.apply_op3_no_bwd(&grad, &all, &InputGrad)?;
        let dparams = Tensor::cat(&[&dw_db, &dw_db.zeros_like()?], 0)?;
        Ok((Some(dx), Some(dparams)))
    }
}

/// Weight and bias gradients, `(2, C)`: Σ dy'·x̂ and Σ dy', where dy' is the gradient masked
/// by the ReLU.
struct ParamGrad;

impl CustomOp3 for ParamGrad {
    fn name(&self) -> &'static str {
        "batch-norm-relu-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, m) = per_channel(l1, self.name())?;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let g = contiguous_f32(self.name(), s2, l2)?;
        let params = contiguous_f32(self.name(), s3, l3)?;
        let sums: Vec<(f32, f32)> = x
            .par_chunks(m)
            .zip(g.par_chunks(m))
            .enumerate()
            .map(|(ch, (xc, gc))| param_grad_sums(xc, gc, ChannelAffine::of(params, c, ch)))
            .collect();
        let mut out: Vec<f32> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// Input gradient of train-mode BatchNorm + ReLU:
/// dx = w/σ · (dy' − mean(dy') − x̂ · mean(dy'·x̂)). Parameter rows: weight, bias, mean, 1/std,
/// Σ dy'·x̂, Σ dy'.
struct InputGrad;

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "batch-norm-relu-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, m) = per_channel(l1, self.name())?;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let g = contiguous_f32(self.name(), s2, l2)?;
        let p = contiguous_f32(self.name(), s3, l3)?;
        let count = m as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(m)
            .zip(x.par_chunks(m).zip(g.par_chunks(m)))
            .enumerate()
            .for_each(|(ch, (o, (xc, gc)))| {
                let affine = ChannelAffine::of(p, c, ch);
                let means = (p[4 * c + ch] / count, p[5 * c + ch] / count);
                input_grad_channel(o, xc, gc, affine, means)
            });
        Ok((CpuStorage::F32(out), Shape::from(l1.dims().to_vec())))
    }
}

/// One channel's BatchNorm + ReLU constants: `relu(x·scale + shift)`, with the statistics.
#[derive(Debug, Clone, Copy)]
struct ChannelAffine {
    scale: f32,
    shift: f32,
    mean: f32,
    inv_std: f32,
}

impl ChannelAffine {
    /// Channel `ch` of `c`, from the parameter rows (weight, bias, mean, 1/std, …):
    /// scale = weight/std, shift = bias − mean·scale.
    fn of(params: &[f32], c: usize, ch: usize) -> Self {
        let (w, b, mean, inv_std) = (
            params[ch],
            params[c + ch],
            params[2 * c + ch],
            params[3 * c + ch],
        );
        let scale = w * inv_std;
        Self {
            scale,
            shift: b - mean * scale,
            mean,
            inv_std,
        }
    }

    /// The output gradient `g` passed back through the ReLU at input `v`.
    #[inline(always)]
    fn through_relu(&self, v: f32, g: f32) -> f32 {
        if v * self.scale + self.shift > 0.0 {
            g
        } else {
            0.0
        }
    }
}

/// `out = relu(x·scale + shift)` over one channel.
#[multiversion(targets = "simd")]
fn scale_shift_relu(out: &mut [f32], x: &[f32], a: ChannelAffine) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * a.scale + a.shift).max(0.0);
    }
}

/// One channel's `(Σ dy'·x̂, Σ dy')`, dy' being the output gradient through the ReLU.
#[multiversion(targets = "simd")]
fn param_grad_sums(xc: &[f32], gc: &[f32], a: ChannelAffine) -> (f32, f32) {
    let dw = sum_pairs(xc, gc, |v, g| {
        a.through_relu(v, g) * (v - a.mean) * a.inv_std
    });
    let db = sum_pairs(xc, gc, |v, g| a.through_relu(v, g));
    (dw as f32, db as f32)
}

/// One channel's input gradient, given `(mean(dy'·x̂), mean(dy'))`.
#[multiversion(targets = "simd")]
fn input_grad_channel(
    out: &mut [f32],
    xc: &[f32],
    gc: &[f32],
    a: ChannelAffine,
    (mean_dyx, mean_dy): (f32, f32),
) {
    for ((o, &v), &g) in out.iter_mut().zip(xc).zip(gc) {
        let xhat = (v - a.mean) * a.inv_std;
        *o = a.scale * (a.through_relu(v, g) - (mean_dyx * xhat + mean_dy));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var};

    /// Reference train-mode BatchNorm + ReLU from plain candle ops, on `(C, N, H, W)`.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let x = &x.permute((1, 0, 2, 3))?;
        let c = x.dim(1)?;
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let y = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
        y.broadcast_mul(&w.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?
            .relu()?
            .permute((1, 0, 2, 3))
    }

    #[test]
    fn forward_and_gradients_match_plain_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let eps = 1e-3;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2., (5, 4, 3, 3), &dev)? + 0.7)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 5, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev)?)?;
        let stats = channel_stats(x.as_tensor())?;
        let inv_std = (stats.get(1)? + eps)?.sqrt()?.recip()?;
        let params = Tensor::stack(&[w.as_tensor(), b.as_tensor(), &stats.get(0)?, &inv_std], 0)?;
        let ours = batch_norm_relu(x.as_tensor(), &params)?;
        let expected = reference(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps)?;
        assert!(max_abs_diff(&ours, &expected) < 1e-5);
        let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&expected * &probe)?.sum_all()?.backward()?;
        for var in [&x, &w, &b] {
            let d = max_abs_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn stats_are_mean_and_biased_variance() -> Result<()> {
        // Channel-major: 2 channels of 3 images each.
        let x = Tensor::randn(0f32, 1., (2, 3, 4, 4), &Device::Cpu)?;
        let stats = channel_stats(&x)?;
        let mean = x.mean_keepdim((1, 2, 3))?.flatten_all()?;
        let var = x
            .broadcast_sub(&x.mean_keepdim((1, 2, 3))?)?
            .sqr()?
            .mean_keepdim((1, 2, 3))?;
        assert!(max_abs_diff(&stats.get(0)?, &mean) < 1e-5);
        assert!(max_abs_diff(&stats.get(1)?, &var.flatten_all()?) < 1e-5);
        Ok(())
    }
}
