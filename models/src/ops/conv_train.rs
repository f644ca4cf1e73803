//! The training convolution: a differentiable 2-D convolution whose forward and backward passes
//! are all matrix multiplies.
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

use super::gemm::{matmul, matmul_long_k, transpose, with_scratch, Mat};
use super::im2col::{col2im, columns, Conv2dGeometry, Dims};
use super::{contiguous_f32, prefix};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

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
        let mut out = vec![0f32; d.o * l];
        with_scratch(|buffer| {
            let cols = columns(g, d, x, buffer);
            matmul(&mut out, d.o, l, k, Mat::rows(w, k), Mat::rows(cols, l));
        });
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
            with_scratch(|buffer| {
                let dcols = prefix(buffer, k * l);
                matmul(dcols, k, l, o, Mat::transposed(w, k), Mat::rows(grad, l));
                col2im(g, d, dcols, &mut dx);
            });
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
        // Both operands run along the pixels, so gemm would have to pack one of them through a
        // strided gather; with the (smaller) gradient transposed first it packs contiguous
        // rows. The product is then dWᵀ, transposed back at the end (small).
        let mut dw_t = vec![0f32; k * o];
        with_scratch(|cols_buffer| {
            with_scratch(|grad_t| {
                let cols = columns(g, d, x, cols_buffer);
                let grad_t = prefix(grad_t, l * o);
                transpose(grad, o, l, grad_t);
                matmul_long_k(&mut dw_t, k, o, l, Mat::rows(cols, l), Mat::rows(grad_t, o));
            })
        });
        let mut dw = vec![0f32; o * k];
        transpose(&dw_t, k, o, &mut dw);
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
            // Size-keeping stride-1 kernels on planes as small as the late layers' (and
            // smaller than the kernel), and a stride-1 kernel that shrinks the plane.
            for size in [1, 2, 3] {
                check(batch, 3, 1, 1, size)?;
            }
            check(batch, 5, 1, 2, 6)?;
            check(batch, 3, 1, 0, 6)?;
        }
        // Wide enough for column-blocked products and a split kernel-gradient reduction.
        check(2, 3, 1, 1, 40)?;
        Ok(())
    }
}
