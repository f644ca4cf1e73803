//! 2-D convolution as im2col + matrix multiply.
//!
//! Forward: unfold the input into columns (`im2col`) and multiply by the kernel matrix.
//! Backward: the kernel gradient and the column gradient are matrix multiplies (candle's matmul
//! backward), and the column gradient folds back onto the input (`col2im`). A 1×1 stride-1
//! convolution, most of GoogLeNet, is a plain matrix multiply with no unfolding at all.

use super::{contiguous_f32, window_output_len};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
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

/// Convolves `x` `(N, C, H, W)` with `weight` `(O, C, k, k)`, no bias; differentiable.
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: Conv2dGeometry) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != geometry.kernel || kw != geometry.kernel {
        candle_core::bail!(
            "conv2d: weight {:?} does not fit input {:?} with kernel {}",
            weight.dims(),
            x.dims(),
            geometry.kernel
        );
    }
    let (oh, ow) = geometry.output_hw(h, w);
    let cols = if geometry.is_pointwise() {
        x.reshape((n, c, h * w))?
    } else {
        x.contiguous()?.apply_op1(Im2Col(geometry))?
    };
    let kernel = weight.reshape((o, c * kh * kw))?;
    kernel.broadcast_matmul(&cols)?.reshape((n, o, oh, ow))
}

/// Unfolds `(N, C, H, W)` into `(N, C·k·k, OH·OW)` columns.
struct Im2Col(Conv2dGeometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (n, c, h, w) = match *layout.dims() {
            [n, c, h, w] => (n, c, h, w),
            ref d => candle_core::bail!("im2col: expected (N, C, H, W), got {d:?}"),
        };
        let x = contiguous_f32(self.name(), storage, layout)?;
        let (oh, ow) = g.output_hw(h, w);
        let (k, l) = (g.kernel, oh * ow);
        let mut cols = vec![0f32; n * c * k * k * l];
        cols.par_chunks_mut(k * k * l)
            .zip(x.par_chunks(h * w))
            .for_each(|(block, plane)| {
                for ki in 0..k {
                    for kj in 0..k {
                        let row = &mut block[(ki * k + kj) * l..(ki * k + kj + 1) * l];
                        for oy in 0..oh {
                            let y = (oy * g.stride + ki) as isize - g.pad as isize;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let src = &plane[y as usize * w..(y as usize + 1) * w];
                            let dst = &mut row[oy * ow..(oy + 1) * ow];
                            for (ox, d) in dst.iter_mut().enumerate() {
                                let xx = (ox * g.stride + kj) as isize - g.pad as isize;
                                if xx >= 0 && xx < w as isize {
                                    *d = src[xx as usize];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((n, c * k * k, l))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let fold = Col2Im { geometry: self.0, h, w };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&fold)?))
    }
}

/// Folds `(N, C·k·k, OH·OW)` columns back onto `(N, C, H, W)`, summing overlaps.
struct Col2Im {
    geometry: Conv2dGeometry,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, h, w) = (self.geometry, self.h, self.w);
        let (n, ckk, l) = match *layout.dims() {
            [n, ckk, l] => (n, ckk, l),
            ref d => candle_core::bail!("col2im: expected (N, C*k*k, L), got {d:?}"),
        };
        let cols = contiguous_f32(self.name(), storage, layout)?;
        let k = g.kernel;
        let c = ckk / (k * k);
        let (oh, ow) = g.output_hw(h, w);
        debug_assert_eq!(oh * ow, l);
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(cols.par_chunks(k * k * l))
            .for_each(|(plane, block)| {
                for ki in 0..k {
                    for kj in 0..k {
                        let row = &block[(ki * k + kj) * l..(ki * k + kj + 1) * l];
                        for oy in 0..oh {
                            let y = (oy * g.stride + ki) as isize - g.pad as isize;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let dst = &mut plane[y as usize * w..(y as usize + 1) * w];
                            for (ox, s) in row[oy * ow..(oy + 1) * ow].iter().enumerate() {
                                let xx = (ox * g.stride + kj) as isize - g.pad as isize;
                                if xx >= 0 && xx < w as isize {
                                    dst[xx as usize] += *s;
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Forward and both gradients agree with candle's own conv2d within 1e-4.
    fn check(kernel: usize, stride: usize, pad: usize, size: usize) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, size, size), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, kernel, kernel), &dev)?)?;
        let g = Conv2dGeometry { kernel, stride, pad };
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g)?;
        let reference = x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1)?;
        assert_eq!(ours.dims(), reference.dims());
        assert!(max_abs_diff(&ours, &reference) < 1e-4);
        let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&reference * &probe)?.sum_all()?.backward()?;
        for var in [&x, &w] {
            let d = max_abs_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(d < 1e-3, "gradient differs by {d} (k{kernel} s{stride} p{pad})");
        }
        Ok(())
    }

    #[test]
    fn matches_candle_conv_for_googlenet_shapes() -> Result<()> {
        check(1, 1, 0, 6)?; // pointwise
        check(3, 1, 1, 7)?; // inception 3x3
        check(7, 2, 3, 15)?; // stem
        check(3, 2, 0, 9)
    }
}
