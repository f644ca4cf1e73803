//! Convolution geometry and unfolding: `im2col` turns a channel-major `(C, N, H, W)` input into
//! the column matrix `(C·k·k, N·OH·OW)` that one matrix product convolves, `col2im` folds
//! column gradients back. Size-keeping stride-1 kernels unfold each tap as one shifted copy.

use super::gemm::add_into;
use super::{prefix, window_output_len, Tap};
use candle_core::Result;
use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;

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

    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether this is the 3×3, stride 1, padding 1 convolution that keeps the plane size.
    pub(crate) fn is_same3x3(&self) -> bool {
        self.kernel == 3 && self.stride == 1 && self.pad == 1
    }
}

/// Shapes of one convolution call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) c: usize,
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Dims {
    pub(crate) fn new(g: Conv2dGeometry, x: &[usize], o: usize) -> Result<Self> {
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
    pub(crate) fn k(&self, g: Conv2dGeometry) -> usize {
        self.c * g.kernel * g.kernel
    }
    /// Columns of the column matrix (N·OH·OW).
    pub(crate) fn l(&self) -> usize {
        self.n * self.oh * self.ow
    }
    /// Whether the convolution has stride 1 and keeps the plane size (padding `(k − 1) / 2`),
    /// so that each kernel tap reads the input shifted by a fixed offset.
    pub(crate) fn keeps_size(&self, g: Conv2dGeometry) -> bool {
        g.stride == 1 && self.oh == self.h && self.ow == self.w
    }
}

/// Unfolds `(C, N, H, W)` into `cols` `(C·k·k, N·OH·OW)`, one channel per task.
pub(crate) fn im2col(g: Conv2dGeometry, d: Dims, x: &[f32], cols: &mut [f32]) {
    cols.par_chunks_mut(g.kernel * g.kernel * d.l())
        .zip(x.par_chunks(d.n * d.h * d.w))
        .for_each(|(taps, xc)| unfold_channel(g, d, xc, 0..d.n * d.oh, taps));
}

/// The columns of the output rows `rows` (counted over the batch, `image·OH + oy`): every
/// channel's `k·k` rows, `rows.len()·OW` columns each, into `cols` (what a block of a
/// convolution multiplies while it is in cache).
pub(crate) fn unfold_rows(
    g: Conv2dGeometry,
    d: Dims,
    x: &[f32],
    rows: Range<usize>,
    cols: &mut [f32],
) {
    let width = rows.len() * d.ow;
    let channels = x.chunks_exact(d.n * d.h * d.w);
    for (taps, xc) in cols
        .chunks_exact_mut(g.kernel * g.kernel * width)
        .zip(channels)
    {
        unfold_channel(g, d, xc, rows.clone(), taps);
    }
}

/// The `k·k` im2col rows of one channel's planes `xc` for the output rows `rows` (counted over
/// the batch, `image·OH + oy`), laid end to end in `taps`, `rows.len()·OW` columns each. A
/// size-keeping convolution unfolding every row takes each tap as one shifted copy.
pub(crate) fn unfold_channel(
    g: Conv2dGeometry,
    d: Dims,
    xc: &[f32],
    rows: Range<usize>,
    taps: &mut [f32],
) {
    let whole = rows.len() == d.n * d.oh && d.keeps_size(g);
    let width = rows.len() * d.ow;
    for (tap, row) in taps.chunks_exact_mut(width).enumerate() {
        let (ki, kj) = (tap / g.kernel, tap % g.kernel);
        if whole {
            shifted_copy(xc, row, (d.h, d.w), shift(g, ki, kj));
        } else {
            im2col_row(g, d, (ki, kj), xc, rows.clone(), row);
        }
    }
}

/// The im2col row of kernel tap `(ki, kj)` for one channel's planes `xc`, any geometry,
/// restricted to the output rows `rows` (counted over the batch, `image·OH + oy`): `row` holds
/// their `rows.len()·OW` columns.
#[multiversion(targets = "simd")]
fn im2col_row(
    g: Conv2dGeometry,
    d: Dims,
    (ki, kj): (usize, usize),
    xc: &[f32],
    rows: Range<usize>,
    row: &mut [f32],
) {
    let tap = Tap::new(g.stride, g.pad, kj, d.w, d.ow);
    for (r, dst) in rows.zip(row.chunks_exact_mut(d.ow)) {
        let (n, oy) = (r / d.oh, r % d.oh);
        let y = (oy * g.stride + ki) as isize - g.pad as isize;
        if y < 0 || y >= d.h as isize {
            dst.fill(0.0);
            continue;
        }
        let src = &xc[(n * d.h + y as usize) * d.w..][..d.w];
        copy_row(tap, src, dst);
    }
}

/// Fills one im2col row segment: `dst[ox] = src[ox·stride + kj − pad]`, zero outside the row.
#[inline(always)]
fn copy_row(tap: Tap, src: &[f32], dst: &mut [f32]) {
    dst[..tap.lo].fill(0.0);
    dst[tap.hi..].fill(0.0);
    tap.apply(src, dst, |_, x| x);
}

/// The offset `(dy, dx)` from an output pixel to the input pixel that kernel tap `(ki, kj)`
/// reads, for a stride-1 convolution.
fn shift(g: Conv2dGeometry, ki: usize, kj: usize) -> (isize, isize) {
    (ki as isize - g.pad as isize, kj as isize - g.pad as isize)
}

/// For a buffer of `len` values (a channel's `(h, w)` planes) and the pixel offset `(dy, dx)`:
/// the range of flat positions `p` for which `p + dy·w + dx` is inside the buffer too, and
/// where that partner range starts; `None` when no position has its partner inside.
fn shifted_span(
    len: usize,
    w: usize,
    (dy, dx): (isize, isize),
) -> Option<(std::ops::Range<usize>, usize)> {
    let offset = dy * w as isize + dx;
    let lo = (-offset).clamp(0, len as isize) as usize;
    let hi = (len as isize - offset).clamp(lo as isize, len as isize) as usize;
    (lo < hi).then(|| (lo..hi, (lo as isize + offset) as usize))
}

/// For the `(h, w)` planes laid end to end in `buf`: zeroes every pixel `(y, x)` whose
/// neighbour `(y + dy, x + dx)` is outside its plane.
fn zero_outside(buf: &mut [f32], (h, w): (usize, usize), (dy, dx): (isize, isize)) {
    let rows_out = dy.unsigned_abs().min(h);
    let cols_out = dx.unsigned_abs().min(w);
    for plane in buf.chunks_mut(h * w) {
        let inside = if dy >= 0 {
            plane[(h - rows_out) * w..].fill(0.0);
            &mut plane[..(h - rows_out) * w]
        } else {
            plane[..rows_out * w].fill(0.0);
            &mut plane[rows_out * w..]
        };
        if cols_out > 0 {
            for row in inside.chunks_mut(w) {
                if dx > 0 {
                    row[w - cols_out..].fill(0.0);
                } else {
                    row[..cols_out].fill(0.0);
                }
            }
        }
    }
}

/// The im2col row of one tap of a size-keeping stride-1 convolution, for one channel's `(h, w)`
/// planes: `dst[p] = src[p + dy·w + dx]` where that neighbour is in `p`'s plane, else 0. One
/// shifted copy of the whole channel, then the plane borders are zeroed.
fn shifted_copy(src: &[f32], dst: &mut [f32], (h, w): (usize, usize), (dy, dx): (isize, isize)) {
    let Some((valid, from)) = shifted_span(dst.len(), w, (dy, dx)) else {
        dst.fill(0.0);
        return;
    };
    dst[..valid.start].fill(0.0);
    dst[valid.end..].fill(0.0);
    dst[valid.clone()].copy_from_slice(&src[from..from + valid.len()]);
    zero_outside(dst, (h, w), (dy, dx));
}

/// Adds `cols` `(C·k·k, N·OH·OW)` folded back onto `(C, N, H, W)` into `x` (zeroed by the
/// caller), summing overlaps, one channel per task. `cols` is used as scratch (its out-of-plane
/// entries are zeroed).
pub(crate) fn col2im(g: Conv2dGeometry, d: Dims, cols: &mut [f32], x: &mut [f32]) {
    let (k, l, plane) = (g.kernel, d.l(), d.h * d.w);
    let same = d.keeps_size(g);
    x.par_chunks_mut(d.n * plane)
        .zip(cols.par_chunks_mut(k * k * l))
        .for_each(|(xc, block)| {
            for ki in 0..k {
                for kj in 0..k {
                    let row = &mut block[(ki * k + kj) * l..][..l];
                    if same {
                        // The transpose of `shifted_copy`: x[p + offset] += row[p] where valid.
                        let (dy, dx) = shift(g, ki, kj);
                        zero_outside(row, (d.h, d.w), (dy, dx));
                        if let Some((valid, to)) = shifted_span(l, d.w, (dy, dx)) {
                            add_into(&mut xc[to..to + valid.len()], &row[valid]);
                        }
                        continue;
                    }
                    let tap = Tap::new(g.stride, g.pad, kj, d.w, d.ow);
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

/// The column matrix of `x`: `x` itself for a pointwise convolution, else `im2col(x)`.
pub(crate) fn columns<'a>(
    g: Conv2dGeometry,
    d: Dims,
    x: &'a [f32],
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    if g.is_pointwise() {
        return x;
    }
    let cols = prefix(buffer, d.k(g) * d.l());
    im2col(g, d, x, cols);
    cols
}
