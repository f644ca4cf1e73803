//! The f32 inference convolution with BatchNorm folded in: one matrix product with bias + ReLU
//! fused into its epilogue, the non-pointwise ones unfolded block by block while in cache, the
//! narrowest (a batch-1 pass's last blocks) as dot products on the unpacked weights. (The
//! 3×3 "same" convolutions run as Winograd, `winograd.rs`; the int8 convolution is `int8.rs`.)

use super::gemm::{column_block, gemm_into, matmul_then, with_scratch, Mat};
use super::im2col::{columns, unfold_rows, Conv2dGeometry, Dims};
use super::narrow::narrow_bias_relu;
use super::prefix;
use super::transpose::transpose;
use candle_core::Result;
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;

/// Products with at most this many columns run as dot products (`narrow.rs`): inception5 at
/// 2×2 px (a 64 px upload) took 0.6–0.9 ms there against 1.0–1.1 ms through gemm; at 9 or 16
/// columns gemm was as fast or faster (`animelens bench --stages --batch 1`, BENCHMARKS.md).
const NARROW_COLUMNS: usize = 4;

/// Unfolded values per block of [`unfolded_blocks_bias_relu`] (1 MiB: half a core's L2).
const BLOCK_COLUMNS: usize = 1 << 18;

/// `v = max(v + b, 0)` over a row.
#[multiversion(targets = "simd")]
fn bias_relu(row: &mut [f32], b: f32) {
    for v in row {
        *v = (*v + b).max(0.0);
    }
}

/// Inference convolution with BatchNorm folded in: `out = ReLU(weight · cols(x) + bias)`.
///
/// Works on raw channel-major buffers: `x` is `(C, N, H, W)` as given by `x_dims`, `weight`
/// `(O, C·k·k)`, `bias` `(O)`; `out` receives `(O, N, OH, OW)` and must hold exactly that many
/// values. Returns `(OH, OW)`.
pub(crate) fn conv_bias_relu(
    g: Conv2dGeometry,
    x: &[f32],
    x_dims: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) -> Result<(usize, usize)> {
    let d = Dims::new(g, &x_dims, bias.len())?;
    let (k, l) = (d.k(g), d.l());
    if weight.len() != d.o * k || out.len() != d.o * l || x.len() != d.c * d.n * d.h * d.w {
        candle_core::bail!(
            "conv_bias_relu: buffers do not fit input {x_dims:?} with {} outputs and kernel {}",
            d.o,
            g.kernel
        );
    }
    if l <= NARROW_COLUMNS {
        with_scratch(|buffer| {
            with_scratch(|transposed| {
                let cols = columns(g, d, x, buffer);
                let xt = prefix(transposed, l * k);
                // SAFETY: `cols` holds k×l values and `xt` l×k; they are distinct buffers.
                unsafe { transpose(cols.as_ptr(), l, (k, l), xt.as_mut_ptr(), k) };
                narrow_bias_relu(weight, xt, bias, (d.o, l, k), out);
            })
        });
    } else if g.is_pointwise() || column_block(d.o, l, rayon::current_num_threads()).is_none() {
        // Pointwise (the input is the column matrix), or too few columns to share out by
        // blocks (batch-1 late layers): one product, threaded by gemm across the outputs.
        with_scratch(|buffer| {
            let cols = columns(g, d, x, buffer);
            matmul_then(
                out,
                (d.o, l, k),
                Mat::rows(weight, k),
                Mat::rows(cols, l),
                |row, values| bias_relu(values, bias[row]),
            )
        });
    } else {
        unfolded_blocks_bias_relu(g, d, x, weight, bias, out);
    }
    Ok((d.oh, d.ow))
}

/// The non-pointwise inference convolution in blocks of whole output rows, one block per
/// task: unfold the block's columns into a per-thread buffer, multiply, add bias + ReLU, all
/// while the block is in the core's cache (the whole column matrix of conv1 at 96 px, batch
/// 32, would be 43 MB through memory).
fn unfolded_blocks_bias_relu(
    g: Conv2dGeometry,
    d: Dims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let (k, l) = (d.k(g), d.l());
    let rows = d.n * d.oh;
    let threads = rayon::current_num_threads();
    let rows_per_block = (BLOCK_COLUMNS / k / d.ow).clamp(1, rows.div_ceil(2 * threads).max(1));
    let out_addr = out.as_mut_ptr() as usize;
    (0..rows.div_ceil(rows_per_block))
        .into_par_iter()
        .for_each(|b| {
            let block = b * rows_per_block..((b + 1) * rows_per_block).min(rows);
            let (j0, width) = (block.start * d.ow, block.len() * d.ow);
            with_scratch(|buffer| {
                let cols = prefix(buffer, k * width);
                unfold_rows(g, d, x, block, cols);
                // SAFETY: each task writes columns [j0, j0 + width) of `out` (O×l), disjoint
                // from the other tasks' and in bounds; the views hold O×k and k×width values.
                unsafe {
                    let dst = (out_addr as *mut f32).add(j0);
                    let (lhs, rhs) = (Mat::rows(weight, k), Mat::rows(cols, width));
                    gemm_into(dst, l, (d.o, width, k), lhs, rhs, Parallelism::None);
                    for (o, &b) in bias.iter().enumerate() {
                        bias_relu(std::slice::from_raw_parts_mut(dst.add(o * l), width), b);
                    }
                }
            })
        });
}
