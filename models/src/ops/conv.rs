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

use super::{contiguous_f32, prefix, window_output_len, Tap};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;
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

    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether this is the 3×3, stride 1, padding 1 convolution that keeps the plane size.
    pub(crate) fn is_same3x3(&self) -> bool {
        self.kernel == 3 && self.stride == 1 && self.pad == 1
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
    /// Whether the convolution has stride 1 and keeps the plane size (padding `(k − 1) / 2`),
    /// so that each kernel tap reads the input shifted by a fixed offset.
    fn keeps_size(&self, g: Conv2dGeometry) -> bool {
        g.stride == 1 && self.oh == self.h && self.ow == self.w
    }
}

/// Unfolds `(C, N, H, W)` into `cols` `(C·k·k, N·OH·OW)`, one channel per task.
fn im2col(g: Conv2dGeometry, d: Dims, x: &[f32], cols: &mut [f32]) {
    cols.par_chunks_mut(g.kernel * g.kernel * d.l())
        .zip(x.par_chunks(d.n * d.h * d.w))
        .for_each(|(taps, xc)| unfold_channel(g, d, xc, 0..d.n * d.oh, taps));
}

/// The `k·k` im2col rows of one channel's planes `xc` for the output rows `rows` (counted over
/// the batch, `image·OH + oy`), laid end to end in `taps`, `rows.len()·OW` columns each. A
/// size-keeping convolution unfolding every row takes each tap as one shifted copy.
fn unfold_channel(g: Conv2dGeometry, d: Dims, xc: &[f32], rows: Range<usize>, taps: &mut [f32]) {
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
fn col2im(g: Conv2dGeometry, d: Dims, cols: &mut [f32], x: &mut [f32]) {
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

/// `dst[i] += src[i]`.
#[multiversion(targets = "simd")]
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (v, x) in dst.iter_mut().zip(src) {
        *v += x;
    }
}

/// A matrix view for `gemm`: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` is a read-only view into a slice that the caller keeps alive and unchanged
// for as long as the view is used, from whichever thread.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major matrix whose rows start `cols` values apart.
    pub(super) fn rows(data: &[f32], cols: usize) -> Self {
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
pub(super) unsafe fn gemm_into(
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
                add_into(row, &p[i * n..(i + 1) * n]);
            }
        });
}

/// `dst (cols×rows) = srcᵀ` for a row-major `src (rows×cols)`: blocks of 16 columns of `src`
/// shared among the threads, each transposed by [`super::transpose::transpose`].
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    dst[..rows * cols]
        .par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * TILE;
            let width = TILE.min(cols - c0);
            // SAFETY: columns [c0, c0 + width) of `src` (rows × cols, checked above) go to the
            // `width` rows of `rows` values that `out` holds; the regions do not overlap.
            unsafe {
                let from = src.as_ptr().add(c0);
                super::transpose::transpose(from, cols, (rows, width), out.as_mut_ptr(), rows);
            }
        });
}

/// Runs `f` with a scratch buffer owned by this thread, which keeps its allocation between
/// calls (the training step's im2col columns and gradient copies are large and alike from one
/// step to the next). Nested calls get distinct buffers.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    thread_local! {
        static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }
    let mut buffer = BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    let result = f(&mut buffer);
    BUFFERS.with(|b| b.borrow_mut().push(buffer));
    result
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
    if g.is_pointwise() || column_block(d.o, l, rayon::current_num_threads()).is_none() {
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
                let channels = x.chunks_exact(d.n * d.h * d.w);
                for (taps, xc) in cols
                    .chunks_exact_mut(g.kernel * g.kernel * width)
                    .zip(channels)
                {
                    unfold_channel(g, d, xc, block.clone(), taps);
                }
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
    fn transpose_swaps_rows_and_columns() {
        for (rows, cols) in [(1, 1), (3, 40), (17, 33), (40, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = vec![0f32; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c]);
                }
            }
        }
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
