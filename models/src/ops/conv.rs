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

use super::{contiguous_f32, vectorized, window_output_len, Tap};
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
    fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
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

/// A row-major matrix view for `gemm`: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

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
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, dst row-major, on all rayon threads.
fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) {
    assert!(dst.len() >= m * n);
    // SAFETY: the views were built from slices holding at least m×k and k×n elements with the
    // given strides, and `dst` holds m×n elements (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
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
            Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// The column matrix of `x`: `x` itself for a pointwise convolution, else `im2col(x)`.
fn columns<'a>(g: Conv2dGeometry, d: Dims, x: &'a [f32], buffer: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    let len = d.k(g) * d.l();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let cols = &mut buffer[..len];
    im2col(g, d, x, cols);
    cols
}

/// Width of the column blocks an inference convolution splits its output into, so that each
/// block's bias + ReLU pass runs while the block is still in cache; `None` when there are too
/// few columns to give every thread at least two blocks.
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

/// `dst (m×n, row stride ld) = weight (m×k, row-major) · rhs (k×n, row stride ld)` on the calling
/// thread.
///
/// # Safety
/// `dst` and `rhs` must be valid for the given shapes and strides, and no other thread may
/// touch the `dst` region meanwhile.
unsafe fn gemm_block(
    dst: *mut f32,
    ld: usize,
    m: usize,
    n: usize,
    k: usize,
    weight: &[f32],
    rhs: *const f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        false,
        weight.as_ptr(),
        1,
        k as isize,
        rhs,
        1,
        ld as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    )
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
    let threads = rayon::current_num_threads();
    match column_block(d.o, l, threads) {
        Some(block) => {
            let (out_addr, cols_addr) = (out.as_mut_ptr() as usize, cols.as_ptr() as usize);
            (0..l.div_ceil(block)).into_par_iter().for_each(|b| {
                let (j0, width) = (b * block, block.min(l - b * block));
                // SAFETY: each task reads columns [j0, j0+width) of `cols` (k×l) and writes the
                // same columns of `out` (o×l): the tasks' regions are disjoint and in bounds.
                unsafe {
                    let dst = (out_addr as *mut f32).add(j0);
                    gemm_block(
                        dst,
                        l,
                        d.o,
                        width,
                        k,
                        weight,
                        (cols_addr as *const f32).add(j0),
                    );
                    vectorized(|| {
                        for (r, &b) in bias.iter().enumerate() {
                            bias_relu(std::slice::from_raw_parts_mut(dst.add(r * l), width), b);
                        }
                    });
                }
            });
        }
        None => {
            matmul(out, d.o, l, k, Mat::rows(weight, k), Mat::rows(cols, l));
            out.par_chunks_mut(l)
                .zip(bias)
                .for_each(|(row, &b)| vectorized(|| bias_relu(row, b)));
        }
    }
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
        matmul(
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
        Ok(())
    }
}
