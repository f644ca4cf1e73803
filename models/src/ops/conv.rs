//! 2-D convolution whose forward and backward passes are all matrix multiplies.
//!
//! Activations are channel-major, `(C, N, H, W)`, so that the whole batch is one matrix of
//! `C` rows and `N·H·W` columns. Unfold the input into columns (`im2col`), then
//! * forward: `out = W · cols`, which is already `(O, N, OH, OW)`;
//! * kernel gradient: `dW = grad · colsᵀ`;
//! * input gradient: `dcols = Wᵀ · grad`, folded back onto the input (`col2im`).
//!
//! Each is a single large `gemm` call on all threads. candle's own conv backward runs the input
//! gradient as a per-pixel transposed convolution; and per-sample products would be tiny in the
//! late layers (3×3 pixels at 96 px input). A 1×1 stride-1 convolution (most of GoogLeNet) uses
//! the input itself as its columns.

use super::{contiguous_f32, prefix, vectorized, window_output_len, Tap};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Kernel size, stride and zero padding of a convolution (same along both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl Conv2dGeometry {
    /// Output height and width for an `h`×`w` input.
    pub(crate) fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            window_output_len(h, self.kernel, self.stride, self.pad, false),
            window_output_len(w, self.kernel, self.stride, self.pad, false),
        )
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Convolves `x`, laid out channel-major `(C, N, H, W)`, with `weight` `(O, C, k, k)`, no bias;
/// returns `(O, N, OH, OW)`. Differentiable in both.
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: Conv2dGeometry) -> Result<Tensor> {
    let (c, _, _, _) = x.dims4()?;
    let (_, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != geometry.kernel || kw != geometry.kernel {
        candle_core::bail!(
            "conv2d: weight {:?} does not fit input {:?} with kernel {}",
            weight.dims(),
            x.dims(),
            geometry.kernel
        );
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv(geometry))
}

/// Shapes of one convolution call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
    o: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(g: Conv2dGeometry, x: &[usize], o: usize) -> Result<Self> {
        let [c, n, h, w] = *x else {
            candle_core::bail!("conv2d: expected a (C, N, H, W) input, got {x:?}")
        };
        let (oh, ow) = g.output_hw(h, w);
        Ok(Self {
            c,
            n,
            h,
            w,
            o,
            oh,
            ow,
        })
    }
    /// Rows of the column matrix (C·k·k).
    fn k(&self, g: Conv2dGeometry) -> usize {
        self.c * g.kernel * g.kernel
    }
    /// Columns of the column matrix (N·OH·OW).
    fn l(&self) -> usize {
        self.n * self.oh * self.ow
    }
}

/// Unfolds `(C, N, H, W)` into `cols` `(C·k·k, N·OH·OW)`, one channel per task.
fn im2col(g: Conv2dGeometry, d: Dims, x: &[f32], cols: &mut [f32]) {
    let (k, l, plane) = (g.kernel, d.l(), d.h * d.w);
    cols.par_chunks_mut(k * k * l)
        .zip(x.par_chunks(d.n * plane))
        .for_each(|(block, xc)| {
            for ki in 0..k {
                for kj in 0..k {
                    let tap = Tap::new(g.stride, g.pad, kj, d.w, d.ow);
                    let row = &mut block[(ki * k + kj) * l..][..l];
                    for (n, xn) in xc.chunks(plane).enumerate() {
                        let out = &mut row[n * d.oh * d.ow..][..d.oh * d.ow];
                        for oy in 0..d.oh {
                            let dst = &mut out[oy * d.ow..(oy + 1) * d.ow];
                            let y = (oy * g.stride + ki) as isize - g.pad as isize;
                            if y < 0 || y >= d.h as isize {
                                dst.fill(0.0);
                                continue;
                            }
                            let src = &xn[y as usize * d.w..(y as usize + 1) * d.w];
                            copy_row(tap, src, dst);
                        }
                    }
                }
            }
        });
}

/// Fills one im2col row segment: `dst[ox] = src[ox·stride + kj − pad]`, zero outside the row.
fn copy_row(tap: Tap, src: &[f32], dst: &mut [f32]) {
    dst[..tap.lo].fill(0.0);
    dst[tap.hi..].fill(0.0);
    tap.apply(src, dst, |_, x| x);
}

/// Folds `cols` `(C·k·k, N·OH·OW)` onto `(C, N, H, W)`, summing overlaps, one channel per task.
fn col2im(g: Conv2dGeometry, d: Dims, cols: &[f32], x: &mut [f32]) {
    let (k, l, plane) = (g.kernel, d.l(), d.h * d.w);
    x.par_chunks_mut(d.n * plane)
        .zip(cols.par_chunks(k * k * l))
        .for_each(|(xc, block)| {
            xc.fill(0.0);
            for ki in 0..k {
                for kj in 0..k {
                    let tap = Tap::new(g.stride, g.pad, kj, d.w, d.ow);
                    let row = &block[(ki * k + kj) * l..][..l];
                    for (n, xn) in xc.chunks_mut(plane).enumerate() {
                        let src = &row[n * d.oh * d.ow..][..d.oh * d.ow];
                        for oy in 0..d.oh {
                            let y = (oy * g.stride + ki) as isize - g.pad as isize;
                            if y < 0 || y >= d.h as isize {
                                continue;
                            }
                            let dst = &mut xn[y as usize * d.w..(y as usize + 1) * d.w];
                            let values = &src[oy * d.ow..(oy + 1) * d.ow];
                            tap.scatter_add(values, dst);
                        }
                    }
                }
            }
        });
}

/// A matrix view for `gemm`: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` is a read-only view into a slice that the caller keeps alive and unchanged
// for as long as the view is used, from whichever thread.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    fn transposed(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
    /// The view starting `rows` rows and `cols` columns further.
    fn offset(self, rows: usize, cols: usize) -> Self {
        Self {
            // SAFETY (of the later reads): callers stay inside the viewed matrix.
            ptr: self
                .ptr
                .wrapping_offset(rows as isize * self.rs + cols as isize * self.cs),
            ..self
        }
    }
}

/// `dst (m×n, row stride ld) = lhs (m×k) · rhs (k×n)` with the given threading.
///
/// # Safety
/// The views must be valid for the given shapes, and no other thread may touch the `dst`
/// region meanwhile.
unsafe fn gemm_into(
    dst: *mut f32,
    ld: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        false,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, dst row-major, on all rayon threads, then
/// `per_row(i, segment)` on every row segment while it is still in cache.
///
/// Wide products are split into column blocks, each one single-threaded gemm followed by its
/// rows' `per_row` calls (measured faster than gemm's own threading here, and the epilogue runs
/// on cache-hot data); narrow ones run as one multi-threaded gemm, then `per_row` on whole rows.
fn matmul_then(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    per_row: impl Fn(usize, &mut [f32]) + Sync,
) {
    assert!(dst.len() >= m * n);
    let threads = rayon::current_num_threads();
    let Some(block) = column_block(m, n, threads) else {
        // SAFETY: the views hold m×k and k×n elements, `dst` m×n (checked above).
        unsafe {
            gemm_into(
                dst.as_mut_ptr(),
                n,
                (m, n, k),
                lhs,
                rhs,
                Parallelism::Rayon(threads),
            )
        };
        dst[..m * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| per_row(i, row));
        return;
    };
    let dst_addr = dst.as_mut_ptr() as usize;
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let (j0, width) = (b * block, block.min(n - b * block));
        // SAFETY: each task writes columns [j0, j0+width) of `dst` (m×n) and only reads the
        // views: the tasks' regions are disjoint and in bounds.
        unsafe {
            let out = (dst_addr as *mut f32).add(j0);
            let shape = (m, width, k);
            gemm_into(out, n, shape, lhs, rhs.offset(0, j0), Parallelism::None);
            for i in 0..m {
                per_row(i, std::slice::from_raw_parts_mut(out.add(i * n), width));
            }
        }
    });
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)` on all rayon threads.
fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) {
    matmul_then(dst, (m, n, k), lhs, rhs, |_, _| {});
}

/// Like [`matmul`] for a small product over a long inner dimension (the kernel gradient: `k` is
/// every pixel of the batch): each thread reduces its own share of `k` into a partial product,
/// and the partials are summed.
fn matmul_long_k(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) {
    let threads = rayon::current_num_threads();
    if threads < 2 || k < threads * 1024 {
        return matmul(dst, m, n, k, lhs, rhs);
    }
    let share = k.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (k0, len) = (t * share, share.min(k - t * share));
            let mut part = vec![0f32; m * n];
            // SAFETY: `part` holds m×n values; the views are offset inside their k extent.
            unsafe {
                gemm_into(
                    part.as_mut_ptr(),
                    n,
                    (m, n, len),
                    lhs.offset(0, k0),
                    rhs.offset(k0, 0),
                    Parallelism::None,
                )
            };
            part
        })
        .collect();
    dst[..m * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, row)| {
            row.copy_from_slice(&partials[0][i * n..(i + 1) * n]);
            for p in &partials[1..] {
                for (v, x) in row.iter_mut().zip(&p[i * n..(i + 1) * n]) {
                    *v += x;
                }
            }
        });
}

/// The column matrix of `x`: `x` itself for a pointwise convolution, else `im2col(x)`.
fn columns<'a>(g: Conv2dGeometry, d: Dims, x: &'a [f32], buffer: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    let cols = prefix(buffer, d.k(g) * d.l());
    im2col(g, d, x, cols);
    cols
}

/// Width of the column blocks a product with `rows`×`columns` output is split into (about
/// 512 KiB of output each, so a block's epilogue runs while it is in cache, and at least two
/// blocks per thread); `None` when there are too few columns for that.
fn column_block(rows: usize, columns: usize, threads: usize) -> Option<usize> {
    const BLOCK_FLOATS: usize = 1 << 17; // 512 KiB of output per block
    let by_cache = (BLOCK_FLOATS / rows.max(1)).max(64) / 16 * 16;
    let by_balance = columns.div_ceil(2 * threads).div_ceil(16) * 16;
    let block = by_cache.min(by_balance);
    (columns >= 2 * threads * 32).then_some(block)
}

/// `v = max(v + b, 0)` over a row.
#[inline(always)]
fn bias_relu(row: &mut [f32], b: f32) {
    for v in row {
        *v = (*v + b).max(0.0);
    }
}

/// Inference convolution with BatchNorm folded in: `out = ReLU(weight · cols(x) + bias)`.
///
/// Works on raw channel-major buffers: `x` is `(C, N, H, W)` as given by `x_dims`, `weight`
/// `(O, C·k·k)`, `bias` `(O)`; `out` receives `(O, N, OH, OW)` and must hold exactly that many
/// values. `cols` is scratch that keeps its allocation between calls. Returns `(OH, OW)`.
pub(crate) fn conv_bias_relu(
    g: Conv2dGeometry,
    x: &[f32],
    x_dims: [usize; 4],
    weight: &[f32],
    bias: &[f32],
    cols: &mut Vec<f32>,
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
    let cols = columns(g, d, x, cols);
    matmul_then(
        out,
        (d.o, l, k),
        Mat::rows(weight, k),
        Mat::rows(cols, l),
        |row, values| vectorized(|| bias_relu(values, bias[row])),
    );
    Ok((d.oh, d.ow))
}

struct Conv(Conv2dGeometry);

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let w = contiguous_f32(self.name(), s2, l2)?;
        let d = Dims::new(g, l1.dims(), l2.dims()[0])?;
        let (k, l) = (d.k(g), d.l());
        let mut buffer = Vec::new();
        let cols = columns(g, d, x, &mut buffer);
        let mut out = vec![0f32; d.o * l];
        matmul(&mut out, d.o, l, k, Mat::rows(w, k), Mat::rows(cols, l));
        Ok((CpuStorage::F32(out), Shape::from((d.o, d.n, d.oh, d.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, n, h, wd) = x.dims4()?;
        let dx = w.apply_op2_no_bwd(
            &grad,
            &ConvInputGrad {
                geometry: self.0,
                n,
                h,
                w: wd,
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &grad,
            &ConvWeightGrad {
                geometry: self.0,
                o: w.dim(0)?,
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx = col2im(Wᵀ · grad)`.
struct ConvInputGrad {
    geometry: Conv2dGeometry,
    n: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let w = contiguous_f32(self.name(), s1, l1)?;
        let grad = contiguous_f32(self.name(), s2, l2)?;
        let [o, c, _, _] = *l1.dims() else {
            candle_core::bail!("conv2d: bad weight shape")
        };
        let d = Dims::new(g, &[c, self.n, self.h, self.w], o)?;
        let (k, l) = (d.k(g), d.l());
        let mut dx = vec![0f32; c * d.n * d.h * d.w];
        if g.is_pointwise() {
            matmul(&mut dx, k, l, o, Mat::transposed(w, k), Mat::rows(grad, l));
        } else {
            let mut dcols = vec![0f32; k * l];
            matmul(
                &mut dcols,
                k,
                l,
                o,
                Mat::transposed(w, k),
                Mat::rows(grad, l),
            );
            col2im(g, d, &dcols, &mut dx);
        }
        Ok((CpuStorage::F32(dx), Shape::from((c, d.n, d.h, d.w))))
    }
}

/// `dW = grad · colsᵀ`.
struct ConvWeightGrad {
    geometry: Conv2dGeometry,
    o: usize,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let grad = contiguous_f32(self.name(), s2, l2)?;
        let d = Dims::new(g, l1.dims(), self.o)?;
        let (k, l, o) = (d.k(g), d.l(), d.o);
        let mut buffer = Vec::new();
        let cols = columns(g, d, x, &mut buffer);
        let mut dw = vec![0f32; o * k];
        matmul_long_k(
            &mut dw,
            o,
            k,
            l,
            Mat::rows(grad, l),
            Mat::transposed(cols, l),
        );
        Ok((
            CpuStorage::F32(dw),
            Shape::from((o, d.c, g.kernel, g.kernel)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Var};

    /// Forward and both gradients agree with candle's own conv2d (1e-4 forward, 1e-3 gradients).
    fn check(batch: usize, kernel: usize, stride: usize, pad: usize, size: usize) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (batch, 3, size, size), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, kernel, kernel), &dev)?)?;
        let g = Conv2dGeometry {
            kernel,
            stride,
            pad,
        };
        // Ours is channel-major (C, N, H, W); candle's is (N, C, H, W).
        let x_cnhw = x.as_tensor().permute((1, 0, 2, 3))?;
        let ours = conv2d(&x_cnhw, w.as_tensor(), g)?.permute((1, 0, 2, 3))?;
        let reference = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1)?;
        assert_eq!(ours.dims(), reference.dims());
        assert!(max_abs_diff(&ours, &reference) < 1e-4);
        let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&reference * &probe)?.sum_all()?.backward()?;
        for var in [&x, &w] {
            let d = max_abs_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(
                d < 1e-3,
                "gradient differs by {d} (k{kernel} s{stride} p{pad})"
            );
        }
        Ok(())
    }

    #[test]
    fn matches_candle_conv_for_googlenet_shapes() -> Result<()> {
        for batch in [1, 5] {
            check(batch, 1, 1, 0, 6)?; // pointwise
            check(batch, 3, 1, 1, 7)?; // inception 3x3
            check(batch, 7, 2, 3, 15)?; // stem
            check(batch, 3, 2, 0, 9)?;
        }
        // Wide enough for column-blocked products and a split kernel-gradient reduction.
        check(2, 3, 1, 1, 40)?;
        Ok(())
    }
}
