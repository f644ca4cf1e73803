//! Max pooling with PyTorch's semantics: implicit -inf padding and ceil mode.
//!
//! GoogLeNet needs 3×3 stride-2 ceil-mode pools and a 3×3 stride-1 padded pool; candle's
//! `max_pool2d` has neither padding nor ceil mode, and its backward is only right when the
//! kernel size equals the stride.

use super::{contiguous_f32, window_output_len};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Kernel, stride, padding and rounding of a square pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit -inf padding on each side.
    pub pad: usize,
    /// Round the output size up (PyTorch `ceil_mode=True`).
    pub ceil: bool,
}

impl PoolGeometry {
    fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            window_output_len(h, self.kernel, self.stride, self.pad, self.ceil),
            window_output_len(w, self.kernel, self.stride, self.pad, self.ceil),
        )
    }

    /// Index (within the plane) of the maximum of window (oh, ow).
    #[inline]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> usize {
        let h0 = (oh * self.stride) as isize - self.pad as isize;
        let w0 = (ow * self.stride) as isize - self.pad as isize;
        let (hs, he) = (
            h0.max(0) as usize,
            ((h0 + self.kernel as isize) as usize).min(h),
        );
        let (ws, we) = (
            w0.max(0) as usize,
            ((w0 + self.kernel as isize) as usize).min(w),
        );
        let mut best = hs * w + ws;
        let mut best_v = f32::NEG_INFINITY;
        for y in hs..he {
            for x in ws..we {
                let v = plane[y * w + x];
                if v > best_v || v.is_nan() {
                    best_v = v;
                    best = y * w + x;
                }
            }
        }
        best
    }
}

/// Max-pools an `(N, C, H, W)` f32 tensor; differentiable.
pub fn max_pool2d(x: &Tensor, geometry: PoolGeometry) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool(geometry))
}

struct MaxPool(PoolGeometry);

fn nchw(layout: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match *layout.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        ref d => candle_core::bail!("{op}: expected an (N, C, H, W) tensor, got shape {d:?}"),
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (n, c, h, w) = nchw(layout, self.name())?;
        let x = contiguous_f32(self.name(), storage, layout)?;
        let (oh, ow) = g.output_hw(h, w);
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for y in 0..oh {
                    for xx in 0..ow {
                        o[y * ow + xx] = plane[g.argmax(plane, h, w, y, xx)];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolBackward(self.0))?;
        Ok(Some(grad))
    }
}

/// Routes each output gradient to the input position that won its window.
struct MaxPoolBackward(PoolGeometry);

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (n, c, h, w) = nchw(l1, self.name())?;
        let x = contiguous_f32(self.name(), s1, l1)?;
        let grad = contiguous_f32(self.name(), s2, l2)?;
        let (oh, ow) = g.output_hw(h, w);
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(oh * ow))
            .for_each(|((gin, plane), gout)| {
                for y in 0..oh {
                    for xx in 0..ow {
                        gin[g.argmax(plane, h, w, y, xx)] += gout[y * ow + xx];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn geometry(kernel: usize, stride: usize, pad: usize, ceil: bool) -> PoolGeometry {
        PoolGeometry {
            kernel,
            stride,
            pad,
            ceil,
        }
    }

    #[test]
    fn output_sizes_follow_pytorch() {
        // torchvision GoogLeNet at 224 px: 112 -> 56 -> 28 -> 14 -> 7 with ceil-mode pools.
        assert_eq!(geometry(3, 2, 0, true).output_hw(112, 112), (56, 56));
        assert_eq!(geometry(3, 2, 0, true).output_hw(56, 56), (28, 28));
        assert_eq!(geometry(2, 2, 0, true).output_hw(14, 14), (7, 7));
        assert_eq!(geometry(3, 2, 0, false).output_hw(112, 112), (55, 55));
        assert_eq!(geometry(3, 1, 1, true).output_hw(7, 7), (7, 7));
        // 96 px: 48 -> 24 -> 12 -> 6 -> 3.
        assert_eq!(geometry(3, 2, 0, true).output_hw(48, 48), (24, 24));
        assert_eq!(geometry(2, 2, 0, true).output_hw(7, 7), (4, 4));
    }

    #[test]
    fn forward_matches_a_hand_computed_ceil_mode_pool() -> Result<()> {
        // 1x1x3x3 input, 2x2 windows stride 2 ceil: windows {0,1,3,4}, {2,5}, {6,7}, {8}.
        let x = Tensor::from_vec(
            (1..=9).map(|v| v as f32).collect(),
            (1, 1, 3, 3),
            &Device::Cpu,
        )?;
        let y = max_pool2d(&x, geometry(2, 2, 0, true))?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![5., 6., 8., 9.]);
        // Padded 3x3 stride 1: each output is the max of its clipped neighbourhood.
        let y = max_pool2d(&x, geometry(3, 1, 1, true))?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            vec![5., 6., 6., 8., 9., 9., 8., 9., 9.]
        );
        Ok(())
    }

    #[test]
    fn non_overlapping_pool_matches_candle_forward_and_a_mask_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?)?;
        let ours = max_pool2d(x.as_tensor(), geometry(2, 2, 0, false))?;
        let reference = x.as_tensor().max_pool2d(2)?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff == 0.0);
        // The gradient is the upstream gradient at each window's maximum, zero elsewhere.
        // (candle's own max_pool2d backward divides it by k*k, so it is no reference.)
        let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let grads = (&ours * &probe)?.sum_all()?.backward()?;
        let mask = x
            .as_tensor()
            .eq(&reference.upsample_nearest2d(8, 8)?)?
            .to_dtype(DType::F32)?;
        let expected = (probe.upsample_nearest2d(8, 8)? * mask)?;
        let d = (grads.get(&x).unwrap() - expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "gradient differs by {d}");
        Ok(())
    }

    #[test]
    fn overlapping_windows_accumulate_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(
            vec![0f32, 0., 0., 0., 9., 0., 0., 0., 0.],
            (1, 1, 3, 3),
            &dev,
        )?)?;
        let y = max_pool2d(x.as_tensor(), geometry(3, 1, 1, true))?;
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        // The centre wins all nine windows.
        assert_eq!(g, vec![0., 0., 0., 0., 9., 0., 0., 0., 0.]);
        Ok(())
    }
}
