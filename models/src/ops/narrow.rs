//! Inference products with very few columns: a batch-1 pass through the last Inception blocks
//! of a small upload (inception5 at 2×2 px for 64 px) multiplies hundreds of weight rows by four
//! columns. A general gemm packs the weight matrix into panels on every call, which for so few
//! columns costs about as much as the multiply-adds, and its 6-column micro-kernel idles a third
//! of its lanes. Here each output is a dot product of a weight row (row-major, as folded, so
//! nothing is packed) with a column of the transposed input: blocks of 4 rows × 3 columns keep
//! 12 AVX accumulators in registers, the 4 rows stay in L1 while every column passes, and bias +
//! ReLU are applied as each value is summed. Row blocks are shared among the threads. From 9
//! columns on, gemm was measured as fast or faster (`conv_infer.rs` picks).

use rayon::prelude::*;

/// Rows of weights per block of the kernel.
const ROWS: usize = 4;
/// Columns per block of the kernel.
const COLUMNS: usize = 3;
/// Below this many multiply-adds a product runs on the calling thread (a task hand-off costs
/// more than it saves).
const PARALLEL_MACS: usize = 1 << 17;

/// `out (m×n, row-major) = max(weight (m×k, row-major) · xtᵀ + bias, 0)`, with `xt` the
/// `(n×k)` transposed input, on the rayon threads when the product is large enough.
pub(crate) fn narrow_bias_relu(
    weight: &[f32],
    xt: &[f32],
    bias: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) {
    assert!(weight.len() >= m * k && xt.len() >= n * k && bias.len() >= m && out.len() >= m * n);
    let threads = rayon::current_num_threads();
    if threads < 2 || m * n * k < PARALLEL_MACS {
        return rows_bias_relu(weight, xt, bias, (m, n, k), &mut out[..m * n]);
    }
    let per_task = m.div_ceil(2 * threads).div_ceil(ROWS) * ROWS;
    out[..m * n]
        .par_chunks_mut(per_task * n)
        .enumerate()
        .for_each(|(t, rows)| {
            let r0 = t * per_task;
            let count = rows.len() / n;
            rows_bias_relu(
                &weight[r0 * k..(r0 + count) * k],
                xt,
                &bias[r0..r0 + count],
                (count, n, k),
                rows,
            );
        });
}

/// [`narrow_bias_relu`] on the calling thread.
fn rows_bias_relu(
    weight: &[f32],
    xt: &[f32],
    bias: &[f32],
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the slices hold the shapes (asserted by the caller).
        return unsafe { avx2::rows_bias_relu(weight, xt, bias, (m, n, k), out) };
    }
    for i in 0..m {
        let w = &weight[i * k..(i + 1) * k];
        for j in 0..n {
            let x = &xt[j * k..(j + 1) * k];
            let dot: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum();
            out[i * n + j] = (dot + bias[i]).max(0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{COLUMNS, ROWS};
    use std::arch::x86_64::*;

    /// The sum of a register's 8 lanes.
    #[inline(always)]
    unsafe fn lane_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }

    /// One block of `R` rows × `C` columns starting at row `i` and column `j`.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(
        weight: &[f32],
        xt: &[f32],
        bias: &[f32],
        (n, k): (usize, usize),
        (i, j): (usize, usize),
        out: &mut [f32],
    ) {
        let w = weight.as_ptr().add(i * k);
        let x = xt.as_ptr().add(j * k);
        // Column by column: `acc[c][r]` sums row `i + r` against column `j + c`.
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let full = k / 8 * 8;
        let mut p = 0;
        while p < full {
            let mut rows = [_mm256_setzero_ps(); R];
            for (r, row) in rows.iter_mut().enumerate() {
                *row = _mm256_loadu_ps(w.add(r * k + p));
            }
            for (c, sums) in acc.iter_mut().enumerate() {
                let column = _mm256_loadu_ps(x.add(c * k + p));
                for (sum, row) in sums.iter_mut().zip(&rows) {
                    *sum = _mm256_fmadd_ps(*row, column, *sum);
                }
            }
            p += 8;
        }
        for (c, sums) in acc.iter().enumerate() {
            for (r, sum) in sums.iter().enumerate() {
                let mut dot = lane_sum(*sum);
                for q in full..k {
                    dot += *w.add(r * k + q) * *x.add(c * k + q);
                }
                out[(i + r) * n + j + c] = (dot + bias[i + r]).max(0.0);
            }
        }
    }

    /// The columns `j..` of row block `i` (`R` rows), `COLUMNS` at a time.
    #[inline(always)]
    unsafe fn row_block<const R: usize>(
        weight: &[f32],
        xt: &[f32],
        bias: &[f32],
        (n, k): (usize, usize),
        i: usize,
        out: &mut [f32],
    ) {
        let mut j = 0;
        while j + COLUMNS <= n {
            block::<R, COLUMNS>(weight, xt, bias, (n, k), (i, j), out);
            j += COLUMNS;
        }
        match n - j {
            2 => block::<R, 2>(weight, xt, bias, (n, k), (i, j), out),
            1 => block::<R, 1>(weight, xt, bias, (n, k), (i, j), out),
            _ => {}
        }
    }

    /// [`super::rows_bias_relu`] with AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_bias_relu(
        weight: &[f32],
        xt: &[f32],
        bias: &[f32],
        (m, n, k): (usize, usize, usize),
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i + ROWS <= m {
            row_block::<ROWS>(weight, xt, bias, (n, k), i, out);
            i += ROWS;
        }
        while i < m {
            row_block::<1>(weight, xt, bias, (n, k), i, out);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::narrow_bias_relu;
    use candle_core::{Device, Tensor};

    /// The same product through plain candle: `relu(w · xtᵀ + b)`.
    fn reference(w: &[f32], xt: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let dev = Device::Cpu;
        let w = Tensor::from_slice(w, (m, k), &dev).unwrap();
        let xt = Tensor::from_slice(xt, (n, k), &dev).unwrap();
        let b = Tensor::from_slice(b, (m, 1), &dev).unwrap();
        w.matmul(&xt.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .relu()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn equals_candle_for_every_block_tail() {
        // Rows and columns not multiples of the block, inner dimensions with and without a
        // remainder of 8, and one product large enough to be shared among threads.
        for (m, n, k) in [
            (1, 1, 1),
            (5, 4, 13),
            (7, 2, 16),
            (9, 5, 147),
            (384, 16, 832),
        ] {
            let value = |i: usize, scale: f32| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * scale;
            let w: Vec<f32> = (0..m * k).map(|i| value(i, 0.2)).collect();
            let xt: Vec<f32> = (0..n * k).map(|i| value(i + 17, 1.0)).collect();
            let b: Vec<f32> = (0..m).map(|i| value(i + 3, 0.1)).collect();
            let mut out = vec![f32::NAN; m * n];
            narrow_bias_relu(&w, &xt, &b, (m, n, k), &mut out);
            let want = reference(&w, &xt, &b, (m, n, k));
            for (got, want) in out.iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{m}x{n}x{k}: {got} vs {want}"
                );
            }
        }
    }
}
