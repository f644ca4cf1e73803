//! 2-D convolution whose forward and backward passes are all matrix multiplies.
//!
//! Per sample: unfold the input into columns (`im2col`), then
//! * forward: `out = W · cols`;
//! * kernel gradient: `dW += grad · colsᵀ`;
//! * input gradient: `dcols = Wᵀ · grad`, folded back onto the input (`col2im`).
//!
//! candle's own conv backward runs the input gradient as a per-pixel transposed convolution
//! and the kernel gradient as a convolution over the batch; here each is one `gemm` call per
//! sample, samples spread over the rayon threads. A 1×1 stride-1 convolution (most of
//! GoogLeNet) uses the input itself as its columns.

use super::{contiguous_f32, window_output_len};
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

/// Convolves `x` `(N, C, H, W)` with `weight` `(O, C, k, k)`, no bias; differentiable in both.
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: Conv2dGeometry) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
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
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(g: Conv2dGeometry, x: &[usize], o: usize) -> Result<Self> {
        let [n, c, h, w] = *x else {
            candle_core::bail!("conv2d: expected an (N, C, H, W) input, got {x:?}")
        };
        let (oh, ow) = g.output_hw(h, w);
        Ok(Self {
            n,
            c,
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
    /// Columns of the column matrix (OH·OW).
    fn l(&self) -> usize {
        self.oh * self.ow
    }
}

/// Unfolds one sample `(C, H, W)` into `cols` `(C·k·k, OH·OW)`.
fn im2col(g: Conv2dGeometry, d: Dims, x: &[f32], cols: &mut [f32]) {
    let (k, l) = (g.kernel, d.l());
    for (ch, plane) in x.chunks(d.h * d.w).enumerate() {
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut cols[((ch * k + ki) * k + kj) * l..][..l];
                for oy in 0..d.oh {
                    let dst = &mut row[oy * d.ow..(oy + 1) * d.ow];
                    let y = (oy * g.stride + ki) as isize - g.pad as isize;
                    if y < 0 || y >= d.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[y as usize * d.w..(y as usize + 1) * d.w];
                    for (ox, v) in dst.iter_mut().enumerate() {
                        let xx = (ox * g.stride + kj) as isize - g.pad as isize;
                        *v = if xx >= 0 && xx < d.w as isize {
                            src[xx as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Folds `cols` `(C·k·k, OH·OW)` onto one sample `(C, H, W)`, summing overlaps.
fn col2im(g: Conv2dGeometry, d: Dims, cols: &[f32], x: &mut [f32]) {
    let (k, l) = (g.kernel, d.l());
    x.fill(0.0);
    for (ch, plane) in x.chunks_mut(d.h * d.w).enumerate() {
        for ki in 0..k {
            for kj in 0..k {
                let row = &cols[((ch * k + ki) * k + kj) * l..][..l];
                for oy in 0..d.oh {
                    let y = (oy * g.stride + ki) as isize - g.pad as isize;
                    if y < 0 || y >= d.h as isize {
                        continue;
                    }
                    let dst = &mut plane[y as usize * d.w..(y as usize + 1) * d.w];
                    for (ox, v) in row[oy * d.ow..(oy + 1) * d.ow].iter().enumerate() {
                        let xx = (ox * g.stride + kj) as isize - g.pad as isize;
                        if xx >= 0 && xx < d.w as isize {
                            dst[xx as usize] += *v;
                        }
                    }
                }
            }
        }
    }
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

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)`, dst row-major.
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: Parallelism,
) {
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
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Runs `f(sample, scratch)` for every sample: across threads when the batch is large enough,
/// otherwise one after the other with a multi-threaded gemm (batch-1 latency).
fn for_each_sample<F>(n: usize, scratch_len: usize, out: &mut [f32], out_len: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], Parallelism) + Sync,
{
    let threads = rayon::current_num_threads();
    if n >= threads {
        out.par_chunks_mut(out_len).enumerate().for_each_init(
            || vec![0f32; scratch_len],
            |scratch, (i, o)| f(i, o, scratch, Parallelism::None),
        );
    } else {
        let mut scratch = vec![0f32; scratch_len];
        for (i, o) in out.chunks_mut(out_len).enumerate() {
            f(i, o, &mut scratch, Parallelism::Rayon(threads));
        }
    }
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
        let plane = d.c * d.h * d.w;
        let mut out = vec![0f32; d.n * d.o * l];
        let scratch = if g.is_pointwise() { 0 } else { k * l };
        for_each_sample(d.n, scratch, &mut out, d.o * l, |i, o, cols, par| {
            let xi = &x[i * plane..(i + 1) * plane];
            let cols: &[f32] = if g.is_pointwise() {
                xi
            } else {
                im2col(g, d, xi, cols);
                cols
            };
            matmul(
                o,
                d.o,
                l,
                k,
                Mat::rows(w, k),
                Mat::rows(cols, l),
                false,
                par,
            );
        });
        Ok((CpuStorage::F32(out), Shape::from((d.n, d.o, d.oh, d.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let dx = w.apply_op2_no_bwd(
            &grad,
            &ConvInputGrad {
                geometry: self.0,
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

/// `dx = col2im(Wᵀ · grad)` per sample.
struct ConvInputGrad {
    geometry: Conv2dGeometry,
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
        let n = l2.dims()[0];
        let d = Dims::new(g, &[n, c, self.h, self.w], o)?;
        let (k, l) = (d.k(g), d.l());
        let plane = c * d.h * d.w;
        let mut dx = vec![0f32; n * plane];
        let scratch = if g.is_pointwise() { 0 } else { k * l };
        for_each_sample(n, scratch, &mut dx, plane, |i, dxi, dcols, par| {
            let gi = &grad[i * o * l..(i + 1) * o * l];
            if g.is_pointwise() {
                matmul(
                    dxi,
                    k,
                    l,
                    o,
                    Mat::transposed(w, k),
                    Mat::rows(gi, l),
                    false,
                    par,
                );
            } else {
                matmul(
                    dcols,
                    k,
                    l,
                    o,
                    Mat::transposed(w, k),
                    Mat::rows(gi, l),
                    false,
                    par,
                );
                col2im(g, d, dcols, dxi);
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, d.h, d.w))))
    }
}

/// `dW = Σ_samples grad · colsᵀ`, each thread summing its share of the batch.
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
        let plane = d.c * d.h * d.w;
        let threads = rayon::current_num_threads().min(d.n).max(1);
        let per_thread = d.n.div_ceil(threads);
        let partial: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut dw = vec![0f32; o * k];
                let mut cols = vec![0f32; if g.is_pointwise() { 0 } else { k * l }];
                let par = if threads == 1 {
                    Parallelism::Rayon(rayon::current_num_threads())
                } else {
                    Parallelism::None
                };
                for i in t * per_thread..((t + 1) * per_thread).min(d.n) {
                    let xi = &x[i * plane..(i + 1) * plane];
                    let ci: &[f32] = if g.is_pointwise() {
                        xi
                    } else {
                        im2col(g, d, xi, &mut cols);
                        &cols
                    };
                    let gi = &grad[i * o * l..(i + 1) * o * l];
                    matmul(
                        &mut dw,
                        o,
                        k,
                        l,
                        Mat::rows(gi, l),
                        Mat::transposed(ci, l),
                        true,
                        par,
                    );
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; o * k];
        for p in &partial {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((
            CpuStorage::F32(dw),
            Shape::from((o, d.c, g.kernel, g.kernel)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

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
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g)?;
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
