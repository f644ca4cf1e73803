//! CPU kernels that candle lacks or runs slowly, each with a forward and a backward pass, and
//! [`on_pool`] to run a whole pass on the thread pool.
//!
//! The crate is built for baseline x86-64. Every hot element-wise loop lives in a named
//! function marked `#[multiversion(targets = "simd")]`, compiled once per instruction set
//! (AVX-512, AVX2 + FMA, …) and chosen at run time, with its helpers `#[inline(always)]` so
//! that they are compiled into each version. (A closure handed to a run-time dispatcher such as
//! pulp's is only compiled for the wide instruction set if it gets inlined, which large ones do
//! not: they silently ran as SSE2 code.)
//!
//! * [`max_pool2d`]: PyTorch-semantics max pooling (padding, ceil mode, any kernel/stride).
//! * [`batch_norm_relu`]: BatchNorm + ReLU fused into one pass forward and two backward.
//! * [`conv2d`]: convolution as im2col + matrix multiply, so that both the forward and the
//!   backward pass are matrix multiplies (candle's own conv backward runs a per-pixel loop).
//!
//! Convolution lives in four files, one job each: `im2col.rs` (geometry, unfolding),
//! `gemm.rs` (the matrix products and scratch buffers both paths share), `conv_train.rs` (the
//! differentiable op) and `conv_infer.rs` (the folded inference kernel), with `winograd.rs` for
//! the 3×3 "same" convolutions at inference, `narrow.rs` for products of a few columns and
//! `int8.rs` for the int8 inference convolution; depthwise kernels would get a file of their own.

mod batchnorm;
mod conv_infer;
mod conv_train;
mod gemm;
mod im2col;
mod int8;
mod maxpool;
mod narrow;
mod transpose;
mod winograd;

pub use batchnorm::{batch_norm_relu, channel_stats};
pub(crate) use conv_infer::conv_bias_relu;
pub use conv_train::conv2d;
pub use im2col::Conv2dGeometry;
pub(crate) use int8::{conv_int8_bias_relu, weight_code, weight_scale, Int8Weights};
pub use maxpool::max_pool_planes;
pub use maxpool::{max_pool2d, PoolGeometry};
pub(crate) use winograd::{conv3x3_bias_relu, winograd_variant, WinogradWeights};

use candle_core::{CpuStorage, Layout, Result};

/// Borrows the contiguous f32 data behind a storage/layout pair, or fails with a clear message.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data,
        _ => candle_core::bail!("{op}: only f32 tensors are supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous (call .contiguous() first)"),
    }
}

/// Output length of a sliding window along one axis, with PyTorch's rules for ceil mode.
pub(crate) fn window_output_len(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil: bool,
) -> usize {
    let span = input + 2 * pad - kernel;
    let mut out = if ceil {
        span.div_ceil(stride)
    } else {
        span / stride
    } + 1;
    // PyTorch: the last window must start inside the input or the left padding.
    if ceil && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    out
}

/// The first `len` values of `buffer`, growing it (never shrinking) when it is too short, so
/// that scratch buffers keep their allocation between calls.
pub(crate) fn prefix(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Runs `f` on a thread of rayon's pool while the calling thread waits. The many short
/// parallel loops inside a forward pass or a training step then start from a pool thread,
/// instead of each one waking the pool from outside and sleeping until it finishes.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Where one tap (kernel offset) of a sliding window lands along an axis: the outputs
/// `[lo, hi)` whose input position `o·stride + tap − pad` lies inside the input, the first of
/// those positions being `start`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    start: usize,
    stride: usize,
}

impl Tap {
    /// Tap `tap` of a window with `stride` and `pad` over `len` inputs and `outputs` outputs.
    pub(crate) fn new(stride: usize, pad: usize, tap: usize, len: usize, outputs: usize) -> Self {
        // Smallest o with o·stride + tap ≥ bound.
        let first_at = |bound: usize| bound.saturating_sub(tap).div_ceil(stride).min(outputs);
        let lo = first_at(pad);
        let hi = first_at(pad + len).max(lo);
        Self {
            lo,
            hi,
            start: (lo * stride + tap).saturating_sub(pad),
            stride,
        }
    }

    /// `dst[o] = f(dst[o], src[o·stride + tap − pad])` for the outputs in `[lo, hi)`.
    ///
    /// Inlined into its caller, which should be a `#[multiversion]` kernel (see the module docs).
    #[inline(always)]
    pub(crate) fn apply(&self, src: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        if self.lo == self.hi {
            return;
        }
        let dst = &mut dst[self.lo..self.hi];
        if self.stride == 1 {
            for (v, &x) in dst.iter_mut().zip(&src[self.start..]) {
                *v = f(*v, x);
            }
        } else {
            for (v, &x) in dst
                .iter_mut()
                .zip(src[self.start..].iter().step_by(self.stride))
            {
                *v = f(*v, x);
            }
        }
    }

    /// Max with position: where `values[i]` (at position `positions[i]`) beats `best[o]` for
    /// `i = o·stride + tap − pad`, takes it and its position; ties keep the earlier one.
    ///
    /// Inlined into its caller, which should be a `#[multiversion]` kernel (see the module docs).
    #[inline(always)]
    pub(crate) fn apply_at(
        &self,
        values: &[f32],
        positions: &[f32],
        best: &mut [f32],
        best_at: &mut [f32],
    ) {
        if self.lo == self.hi {
            return;
        }
        let outputs = best[self.lo..self.hi]
            .iter_mut()
            .zip(&mut best_at[self.lo..self.hi]);
        let inputs = values[self.start..]
            .iter()
            .zip(&positions[self.start..])
            .step_by(self.stride);
        for ((b, a), (&v, &p)) in outputs.zip(inputs) {
            let better = v > *b;
            let (new_b, new_a) = if better { (v, p) } else { (*b, *a) };
            *b = new_b;
            *a = new_a;
        }
    }

    /// The transpose of [`Self::apply`] with `+`: `dst[o·stride + tap − pad] += values[o]` for
    /// the outputs in `[lo, hi)`.
    #[inline]
    pub(crate) fn scatter_add(&self, values: &[f32], dst: &mut [f32]) {
        if self.lo == self.hi {
            return;
        }
        let values = &values[self.lo..self.hi];
        for (x, v) in dst[self.start..]
            .iter_mut()
            .step_by(self.stride)
            .zip(values)
        {
            *x += *v;
        }
    }
}

/// Largest absolute element-wise difference of two tensors (test helper).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
