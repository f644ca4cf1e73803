//! CPU kernels that candle lacks or runs slowly, each with a forward and a backward pass.
//!
//! * [`max_pool2d`]: PyTorch-semantics max pooling (padding, ceil mode, any kernel/stride).
//! * [`batch_norm_relu`]: BatchNorm + ReLU fused into one pass forward and two backward.
//! * [`conv2d`]: convolution as im2col + matrix multiply, so that both the forward and the
//!   backward pass are matrix multiplies (candle's own conv backward runs a per-pixel loop).

mod batchnorm;
mod conv;
mod maxpool;

pub use batchnorm::{batch_norm_relu, channel_stats};
pub use conv::{conv2d, Conv2dGeometry};
pub use maxpool::{max_pool2d, PoolGeometry};

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

/// Largest absolute element-wise difference of two tensors (test helper).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
