//! Max pooling with PyTorch's semantics: implicit -inf padding and ceil mode.
//!
//! GoogLeNet needs 3×3 stride-2 ceil-mode pools and a 3×3 stride-1 padded pool; candle's
//! `max_pool2d` has neither padding nor ceil mode, and its backward is only right when the
//! kernel size equals the stride.

use super::{contiguous_f32, prefix, window_output_len, Tap};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

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
    /// Output height and width for an `h`×`w` input.
    pub(crate) fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            window_output_len(h, self.kernel, self.stride, self.pad, self.ceil),
            window_output_len(w, self.kernel, self.stride, self.pad, self.ceil),
        )
    }

    /// The input range `[start, end)` covered by output position `o` along an axis of `len`.
    #[inline]
    fn window(&self, o: usize, len: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let end = ((start + self.kernel as isize).max(0) as usize).min(len);
        (start.max(0) as usize, end)
    }

    /// The two passes of a separable pool over an `h`×`w` plane: the taps of a window along a
    /// row, and the input rows `[start, end)` of each output row's windows.
    fn separable_windows(&self, h: usize, w: usize) -> (Vec<Tap>, Vec<(usize, usize)>) {
        let (oh, ow) = self.output_hw(h, w);
        let taps = (0..self.kernel)
            .map(|t| Tap::new(self.stride, self.pad, t, w, ow))
            .collect();
        let rows = (0..oh).map(|oy| self.window(oy, h)).collect();
        (taps, rows)
    }

    /// Pools the `h`×`w` planes laid end to end in `planes` without recording positions
    /// (inference), separably: for each output row, the maximum of its window's input rows
    /// (contiguous, into `column_max`), then the window maxima along that row. Same values as
    /// [`Self::pool_planes`].
    fn max_planes(
        &self,
        planes: &[f32],
        (h, w): (usize, usize),
        out: &mut [f32],
        column_max: &mut Vec<f32>,
    ) {
        let (oh, ow) = self.output_hw(h, w);
        let column_max = prefix(column_max, w);
        let (taps, rows) = self.separable_windows(h, w);
        for (plane, out) in planes.chunks(h * w).zip(out.chunks_mut(oh * ow)) {
            max_rows(&taps, &rows, plane, column_max, out);
        }
    }

    /// Whether this pool halves an even `h`×`w` plane with unpadded 2×2 or 3×3 windows
    /// (GoogLeNet's stride-2 ceil-mode pools on even planes): window `o` then starts at input
    /// `2·o`, and only the last one along an axis can be clipped (a 3×3 window).
    fn halves(&self, h: usize, w: usize) -> bool {
        let even = h.is_multiple_of(2) && w.is_multiple_of(2);
        let windows = matches!(self.kernel, 2 | 3) && self.stride == 2 && self.pad == 0;
        even && windows && self.output_hw(h, w) == (h / 2, w / 2)
    }

    /// Whether this is the 3×3, stride 1, padding 1 pool that keeps the size ("same").
    fn is_same3(&self) -> bool {
        self.kernel == 3 && self.stride == 1 && self.pad == 1
    }

    /// Pools the `h`×`w` planes laid end to end in `planes`: writes the maxima to `out` and
    /// their positions in their plane to `argmax`. Separable like [`Self::max_planes`]: each
    /// output row first takes the maximum, and its position, down every column of its window's
    /// rows, then the best of those columns for each window. Ties go to the topmost row, then
    /// to the leftmost column (any maximum is a valid route for the gradient). Positions are
    /// carried as f32 (exact below 2²⁴), so that every select runs in the same vector lanes as
    /// the values.
    fn pool_planes(
        &self,
        planes: &[f32],
        (h, w): (usize, usize),
        out: &mut [f32],
        argmax: &mut [u32],
        scratch: &mut Vec<f32>,
    ) {
        let (oh, ow) = self.output_hw(h, w);
        let scratch = prefix(scratch, 3 * w + ow);
        let (column_max, rest) = scratch.split_at_mut(w);
        let (column_at, rest) = rest.split_at_mut(w);
        let (x_of, position) = rest.split_at_mut(w);
        for (x, v) in x_of.iter_mut().enumerate() {
            *v = x as f32;
        }
        let (taps, rows) = self.separable_windows(h, w);
        let mut work = ArgmaxRows {
            taps,
            rows,
            w,
            x_of,
            column_max,
            column_at,
            position,
        };
        let outputs = out.chunks_mut(oh * ow).zip(argmax.chunks_mut(oh * ow));
        for (plane, (out, argmax)) in planes.chunks(h * w).zip(outputs) {
            argmax_plane(&mut work, plane, out, argmax);
        }
    }
}

/// The work buffers and window geometry of [`PoolGeometry::pool_planes`] for one plane size.
struct ArgmaxRows<'a> {
    taps: Vec<Tap>,
    /// Input rows `[start, end)` of each output row's windows.
    rows: Vec<(usize, usize)>,
    w: usize,
    /// `0, 1, …, w − 1` as f32.
    x_of: &'a [f32],
    column_max: &'a mut [f32],
    column_at: &'a mut [f32],
    position: &'a mut [f32],
}

impl ArgmaxRows<'_> {
    /// Pools one plane into `out` and `argmax`. Inlined into [`argmax_plane`].
    #[inline(always)]
    fn pool(&mut self, plane: &[f32], out: &mut [f32], argmax: &mut [u32]) {
        let w = self.w;
        let ow = out.len() / self.rows.len().max(1);
        let windows = self
            .rows
            .iter()
            .zip(out.chunks_mut(ow).zip(argmax.chunks_mut(ow)));
        for (&(hs, he), (dst, at)) in windows {
            // Down the columns: column_at[x] = y·w + x of the column's maximum.
            self.column_max
                .copy_from_slice(&plane[hs * w..(hs + 1) * w]);
            let base = (hs * w) as f32;
            for (a, &x) in self.column_at.iter_mut().zip(self.x_of) {
                *a = base + x;
            }
            for y in hs + 1..he {
                let row = &plane[y * w..(y + 1) * w];
                let base = (y * w) as f32;
                let columns = self.column_max.iter_mut().zip(self.column_at.iter_mut());
                for (((m, a), &v), &x) in columns.zip(row).zip(self.x_of) {
                    let better = v > *m;
                    let (new_m, new_a) = if better { (v, base + x) } else { (*m, *a) };
                    *m = new_m;
                    *a = new_a;
                }
            }
            // Along the row, one kernel column (tap) at a time, leftmost first.
            dst.fill(f32::NEG_INFINITY);
            self.position.fill(0.0);
            for tap in &self.taps {
                tap.apply_at(self.column_max, self.column_at, dst, self.position);
            }
            for (a, &p) in at.iter_mut().zip(self.position.iter()) {
                *a = p as u32;
            }
        }
    }
}

/// Pools one plane with argmax (see [`PoolGeometry::pool_planes`]).
#[multiversion(targets = "simd")]
fn argmax_plane(work: &mut ArgmaxRows<'_>, plane: &[f32], out: &mut [f32], argmax: &mut [u32]) {
    work.pool(plane, out, argmax)
}

/// Pools one `(h, w = column_max.len())` plane without positions: for each output row (its
/// input rows in `rows`), the maximum down the window's rows, then the row windows (`taps`).
#[multiversion(targets = "simd")]
fn max_rows(
    taps: &[Tap],
    rows: &[(usize, usize)],
    plane: &[f32],
    column_max: &mut [f32],
    out: &mut [f32],
) {
    let (w, ow) = (column_max.len(), out.len() / rows.len().max(1));
    for (&(hs, he), dst) in rows.iter().zip(out.chunks_mut(ow)) {
        column_max.copy_from_slice(&plane[hs * w..(hs + 1) * w]);
        for y in hs + 1..he {
            max_into(column_max, &plane[y * w..(y + 1) * w]);
        }
        dst.fill(f32::NEG_INFINITY);
        for tap in taps {
            tap.apply(column_max, dst, f32::max);
        }
    }
}

/// Max-pools every `H×W` plane of a 4-D f32 tensor (`(N, C, H, W)` or `(C, N, H, W)`);
/// differentiable.
pub fn max_pool2d(x: &Tensor, geometry: PoolGeometry) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool {
        geometry,
        argmax: Mutex::new(None),
    })
}

/// `dst[i] = max(dst[i], src[i])`.
#[inline(always)]
fn max_into(dst: &mut [f32], src: &[f32]) {
    for (v, &x) in dst.iter_mut().zip(src) {
        *v = v.max(x);
    }
}

/// `dst[i] = max(src[i − s], src[i], src[i + s])` over the neighbours inside the buffer.
fn max3_shifted(src: &[f32], s: usize, dst: &mut [f32]) {
    dst.copy_from_slice(src);
    let n = src.len();
    if s < n {
        max_into(&mut dst[s..], &src[..n - s]);
        max_into(&mut dst[..n - s], &src[s..]);
    }
}

/// The "same" 3×3 pool of whole `h`×`w` planes laid end to end in `x`, on the flat buffer:
/// each direction is the maximum of three shifted copies of the whole group, after which the
/// plane borders, where a shift crossed into the neighbouring row or plane, are recomputed.
#[multiversion(targets = "simd")]
fn max_pool_same3(x: &[f32], h: usize, w: usize, out: &mut [f32], rows: &mut Vec<f32>) {
    let along_rows = prefix(rows, x.len());
    max3_shifted(x, 1, along_rows);
    // Each row's first and last values, where the shifts crossed into the neighbouring rows.
    let inner = w.min(2) - 1;
    for (t, src) in along_rows.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
        t[0] = src[0].max(src[inner]);
        t[w - 1] = src[w - 1].max(src[w - 1 - inner]);
    }
    max3_shifted(along_rows, w, out);
    // Each plane's first and last rows, in one loop (on small planes, copy and max calls per
    // row cost more than the values they move).
    let last = (h - 1) * w;
    let below = if h > 1 { w } else { 0 };
    for (o, t) in out.chunks_mut(h * w).zip(along_rows.chunks(h * w)) {
        for j in 0..w {
            o[j] = t[j].max(t[below + j]);
            o[last + j] = t[last + j].max(t[last - below + j]);
        }
    }
}

/// A [`PoolGeometry::halves`] pool of whole `h`×`w` planes laid end to end in `x`, with
/// `kernel` 2 or 3: first along the rows, over the whole group as one flat buffer (output `j`
/// reads inputs `2j ..= 2j + kernel − 1`; the last window of each row, which would run into the
/// next row, is redone clipped), then down the columns, one output row per loop.
#[multiversion(targets = "simd")]
fn max_pool_halving(
    kernel: usize,
    x: &[f32],
    (h, w): (usize, usize),
    out: &mut [f32],
    along_rows: &mut Vec<f32>,
) {
    let (oh, ow) = (h / 2, w / 2);
    let rows = prefix(along_rows, x.len() / 2);
    let pairs = x.chunks_exact(2);
    if kernel == 2 {
        for (r, p) in rows.iter_mut().zip(pairs) {
            *r = p[0].max(p[1]);
        }
    } else {
        for ((r, p), q) in rows.iter_mut().zip(pairs).zip(x[2..].chunks_exact(2)) {
            *r = p[0].max(p[1]).max(q[0]);
        }
        for (r, src) in rows.chunks_exact_mut(ow).zip(x.chunks_exact(w)) {
            r[ow - 1] = src[w - 2].max(src[w - 1]);
        }
    }
    for (plane, o) in rows.chunks_exact(h * ow).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, dst) in o.chunks_exact_mut(ow).enumerate() {
            let row = |y: usize| &plane[y * ow..][..ow];
            let (first, second) = (row(2 * oy), row(2 * oy + 1));
            if kernel == 3 && 2 * oy + 2 < h {
                let third = row(2 * oy + 2);
                for (((d, a), b), c) in dst.iter_mut().zip(first).zip(second).zip(third) {
                    *d = a.max(*b).max(*c);
                }
            } else {
                for ((d, a), b) in dst.iter_mut().zip(first).zip(second) {
                    *d = a.max(*b);
                }
            }
        }
    }
}

/// How many planes of `plane` values one parallel task pools: about 16k input values, at least
/// one plane.
fn planes_per_task(plane: usize) -> usize {
    (1 << 14) / plane + 1
}

/// Forward-only max pooling on a raw buffer of `h`×`w` planes (inference); `out` must hold
/// exactly one pooled plane per input plane. Returns `(OH, OW)`.
pub fn max_pool_planes(
    geometry: PoolGeometry,
    x: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
) -> Result<(usize, usize)> {
    let (oh, ow) = geometry.output_hw(h, w);
    if !x.len().is_multiple_of(h * w) || out.len() != x.len() / (h * w) * oh * ow {
        candle_core::bail!("max_pool_planes: buffers do not hold whole {h}x{w} planes");
    }
    // Groups of whole planes, about 16k input values each.
    let planes = planes_per_task(h * w);
    out.par_chunks_mut(planes * oh * ow)
        .zip(x.par_chunks(planes * h * w))
        .for_each_init(Vec::new, |scratch, (o, group)| {
            if geometry.is_same3() {
                max_pool_same3(group, h, w, o, scratch)
            } else if geometry.halves(h, w) {
                max_pool_halving(geometry.kernel, group, (h, w), o, scratch)
            } else {
                geometry.max_planes(group, (h, w), o, scratch)
            }
        });
    Ok((oh, ow))
}

/// The forward op keeps the position of each window's maximum for its backward pass.
struct MaxPool {
    geometry: PoolGeometry,
    argmax: Mutex<Option<Arc<Vec<u32>>>>,
}

fn planes(layout: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match *layout.dims() {
        [a, b, h, w] => Ok((a, b, h, w)),
        ref d => candle_core::bail!("{op}: expected a 4-D tensor of H×W planes, got shape {d:?}"),
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let (a, b, h, w) = planes(layout, self.name())?;
        let x = contiguous_f32(self.name(), storage, layout)?;
        let (oh, ow) = g.output_hw(h, w);
        let mut out = vec![0f32; a * b * oh * ow];
        let mut argmax = vec![0u32; a * b * oh * ow];
        let planes = planes_per_task(h * w);
        out.par_chunks_mut(planes * oh * ow)
            .zip(argmax.par_chunks_mut(planes * oh * ow))
            .zip(x.par_chunks(planes * h * w))
            .for_each_init(Vec::new, |scratch, ((o, am), group)| {
                g.pool_planes(group, (h, w), o, am, scratch)
            });
        *self.argmax.lock().expect("argmax lock") = Some(Arc::new(argmax));
        Ok((CpuStorage::F32(out), Shape::from((a, b, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = self.argmax.lock().expect("argmax lock").clone();
        let Some(argmax) = argmax else {
            candle_core::bail!("max-pool2d: backward called before forward")
        };
        let (_, _, h, w) = arg.dims4()?;
        let scatter = MaxPoolBackward {
            argmax,
            plane: h * w,
            input_shape: arg.shape().clone(),
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&scatter)?))
    }
}

/// Routes each output gradient to the input position that won its window.
struct MaxPoolBackward {
    argmax: Arc<Vec<u32>>,
    plane: usize,
    input_shape: Shape,
}

impl CustomOp1 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(self.name(), storage, layout)?;
        let out_plane = grad.len() / (self.input_shape.elem_count() / self.plane).max(1);
        let mut gin = vec![0f32; self.input_shape.elem_count()];
        gin.par_chunks_mut(self.plane)
            .zip(
                grad.par_chunks(out_plane)
                    .zip(self.argmax.par_chunks(out_plane)),
            )
            .for_each(|(gi, (go, am))| {
                for (&g, &i) in go.iter().zip(am) {
                    gi[i as usize] += g;
                }
            });
        Ok((CpuStorage::F32(gin), self.input_shape.clone()))
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
    fn separable_inference_pool_equals_the_training_pool() -> Result<()> {
        for (g, size) in [
            (geometry(3, 2, 0, true), 12),
            (geometry(3, 2, 0, true), 13),
            (geometry(2, 2, 0, true), 7),
            (geometry(2, 2, 0, true), 6),
            (geometry(3, 2, 0, true), 4),
            (geometry(3, 1, 1, true), 5),
            (geometry(3, 1, 1, true), 4),
            (geometry(3, 1, 1, true), 1),
            (geometry(3, 1, 1, true), 2),
            (geometry(3, 1, 1, true), 40), // several groups of planes
            (geometry(3, 2, 0, true), 40),
        ] {
            let x = Tensor::randn(0f32, 1., (3, 5, size, size), &Device::Cpu)?;
            let expected = max_pool2d(&x, g)?;
            let (_, _, oh, ow) = expected.dims4()?;
            let mut out = vec![0f32; 15 * oh * ow];
            let input = x.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(max_pool_planes(g, &input, size, size, &mut out)?, (oh, ow));
            assert_eq!(
                out,
                expected.flatten_all()?.to_vec1::<f32>()?,
                "{g:?} at {size}"
            );
        }
        Ok(())
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

    /// Values and gradient of the GoogLeNet pools against a direct scan of every window, on
    /// random input (no ties), including ceil-mode windows cut by the border.
    #[test]
    fn overlapping_pools_match_a_direct_window_scan() -> Result<()> {
        let dev = Device::Cpu;
        for (g, size) in [
            (geometry(3, 2, 0, true), 13),
            (geometry(3, 2, 0, true), 40),
            (geometry(3, 1, 1, true), 6),
            (geometry(2, 2, 0, true), 7),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, size, size), &dev)?)?;
            let y = max_pool2d(x.as_tensor(), g)?;
            let (_, _, oh, ow) = y.dims4()?;
            let probe = Tensor::randn(0f32, 1., y.shape(), &dev)?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let xs = x.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let ps = probe.flatten_all()?.to_vec1::<f32>()?;
            let mut expected_y = Vec::new();
            let mut expected_grad = vec![0f32; xs.len()];
            for plane in 0..6 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (hs, he) = g.window(oy, size);
                        let (ws, we) = g.window(ox, size);
                        let at = (hs..he)
                            .flat_map(|y| (ws..we).map(move |x| plane * size * size + y * size + x))
                            .max_by(|&a, &b| xs[a].total_cmp(&xs[b]))
                            .unwrap();
                        expected_y.push(xs[at]);
                        expected_grad[at] += ps[(plane * oh + oy) * ow + ox];
                    }
                }
            }
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, expected_y);
            let grad = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
            let d = grad
                .iter()
                .zip(&expected_grad)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "gradient differs by {d} for {g:?} at {size} px");
        }
        Ok(())
    }
}
