//! Winograd convolution F(4×4, 3×3) for inference (Lavin & Gray, 2016).
//!
//! A 3×3 stride-1 "same" convolution computes each 4×4 block of outputs (a tile) from the 6×6
//! input patch around it. In the Winograd domain that takes 36 element-wise products instead
//! of 144 multiply-adds: transform the patch (`V = Bᵀ·d·B`) and the kernel (`U = G·g·Gᵀ`,
//! once, when the network is folded), multiply point by point and sum over the input
//! channels, then transform back (`Y = Aᵀ·M·A`). Summed over the channels, the 36 points are
//! independent matrix products `M[e] = U[e] · V[e]` of `O×C` by `C×tiles`: 4× fewer
//! multiply-adds than im2col + one matrix multiply, and no 9× column matrix. The transforms'
//! coefficients (up to 8) cost some rounding; results stay within 1e-4 of the direct
//! convolution (tested). F(2×2, 3×3) (2.25× fewer) was measured first and lost to F(4×4) by
//! 14–18% at 96–224 px, with no gain on the small planes, where im2col takes over. F(6×6, 3×3)
//! where it needs fewer products was tried too: its 8×8 transforms cost what it saves
//! (BENCHMARKS.md).
//!
//! The tiles are processed in blocks of whole tile rows: transform the block's patches, run
//! its products, transform back with the bias and ReLU fused in, all while the block is in the
//! core's cache.

use super::conv::{gemm_into, with_scratch, Mat};
use super::prefix;
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::LazyLock;

/// Tiles per block that is transformed and multiplied at once (about: blocks are whole tile
/// rows). Measured best of 32–1024 (BENCHMARKS.md): smaller blocks make the products too
/// thin, larger ones spill the block out of the core's cache.
const BLOCK_TILES: usize = 128;

/// Fewest tiles in a batch for which the Winograd path beats im2col: below it (the late layers
/// at batch 1) the products are too thin to pay for the extra weights.
const MIN_TILES: usize = 16;

/// Output tile side.
const M: usize = 4;
/// Input patch side.
const A: usize = M + 2;
/// Winograd points per tile.
const POINTS: usize = A * A;

/// `Bᵀ` (6×6), `G` (6×3) and `Aᵀ` (4×6) of F(4×4, 3×3) with interpolation points 0, ±1, ±2,
/// ∞, row-major.
const BT: [f32; A * A] = [
    4., 0., -5., 0., 1., 0., //
    0., -4., -4., 1., 1., 0., //
    0., 4., -4., -1., 1., 0., //
    0., -2., -1., 2., 1., 0., //
    0., 2., -1., -2., 1., 0., //
    0., 4., 0., -5., 0., 1.,
];
const G: [f32; A * 3] = [
    1. / 4.,
    0.,
    0., //
    -1. / 6.,
    -1. / 6.,
    -1. / 6., //
    -1. / 6.,
    1. / 6.,
    -1. / 6., //
    1. / 24.,
    1. / 12.,
    1. / 6., //
    1. / 24.,
    -1. / 12.,
    1. / 6., //
    0.,
    0.,
    1.,
];
const AT: [f32; M * A] = [
    1., 1., 1., 1., 1., 0., //
    0., 1., -1., 2., -2., 0., //
    0., 1., 1., 4., 4., 0., //
    0., 1., -1., 8., -8., 1.,
];

/// Whether a 3×3 "same" convolution of input `(C, N, H, W)` should take the Winograd path:
/// when its padded tiles need fewer products than im2col's 9 per pixel (not so for planes of
/// 2×2 pixels and less), and the batch has enough tiles.
pub(crate) fn winograd_pays([_, n, h, w]: [usize; 4]) -> bool {
    let tiles = h.div_ceil(M) * w.div_ceil(M);
    tiles * POINTS < 9 * h * w && n * tiles >= MIN_TILES
}

/// The rows of a transform as terms: `(column, value)` for each nonzero entry.
type Terms = Vec<Vec<(usize, f32)>>;

/// The rows of `Bᵀ` and of `Aᵀ` as terms, derived once.
static INPUT_TERMS: LazyLock<Terms> = LazyLock::new(|| terms(&BT, A));
static OUTPUT_TERMS: LazyLock<Terms> = LazyLock::new(|| terms(&AT, A));

/// The nonzero entries `(column, value)` of each row of a row-major matrix `cols` wide: a
/// transform as the list of terms that make up each output.
fn terms(matrix: &[f32], cols: usize) -> Terms {
    matrix
        .chunks_exact(cols)
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v != 0.0)
                .map(|(j, v)| (j, *v))
                .collect()
        })
        .collect()
}

/// A 3×3 kernel in the Winograd domain: `U[e] = G·g·Gᵀ` for each point `e`, laid out
/// `(points, O, C)` so that each point is a row-major `O×C` matrix.
#[derive(Debug, Clone)]
pub(crate) struct WinogradKernel {
    u: Vec<f32>,
    o: usize,
    c: usize,
}

impl WinogradKernel {
    /// Transforms `weight`, `(O, C, 3, 3)` row-major.
    pub(crate) fn new(weight: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(weight.len(), o * c * 9, "3×3 weights expected");
        let mut u = vec![0f32; POINTS * o * c];
        for (oc, kernel) in weight.chunks_exact(9).enumerate() {
            // G·g (6×3), in f64 so that the sixths and twenty-fourths round once.
            let gg: Vec<f64> = (0..A * 3)
                .map(|k| {
                    let (r, j) = (k / 3, k % 3);
                    (0..3)
                        .map(|i| G[r * 3 + i] as f64 * kernel[i * 3 + j] as f64)
                        .sum()
                })
                .collect();
            // (G·g)·Gᵀ (6×6).
            for r in 0..A {
                for s in 0..A {
                    let v: f64 = (0..3).map(|j| gg[r * 3 + j] * G[s * 3 + j] as f64).sum();
                    u[(r * A + s) * o * c + oc] = v as f32;
                }
            }
        }
        Self { u, o, c }
    }

    /// The `O×C` matrix of point `e`.
    fn point(&self, e: usize) -> &[f32] {
        &self.u[e * self.o * self.c..][..self.o * self.c]
    }
}

/// Shapes of one call: input `(C, N, H, W)`, output `(O, N, H, W)`, `th × tw` tiles per
/// image.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    c: usize,
    o: usize,
    n: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Tiling {
    /// Tile rows of the whole batch; tile row `r` is row `r % th` of image `r / th`.
    fn tile_rows(&self) -> usize {
        self.n * self.th
    }

    /// The output rows, counted over the whole batch (`image·H + y`), that tile rows `rows`
    /// cover: 4 per tile row, fewer for the last one of a plane whose side 4 does not divide.
    fn output_rows(&self, rows: &Range<usize>) -> Range<usize> {
        let start = |r: usize| (r / self.th) * self.h + M * (r % self.th);
        let last = rows.end - 1;
        let end = last / self.th * self.h + (M * (last % self.th) + M).min(self.h);
        start(rows.start)..end
    }
}

/// `out = ReLU(conv3x3(x) + bias)` for a stride-1, padding-1 convolution, channel-major like
/// [`super::conv_bias_relu`]: `x` is `(C, N, H, W)` as given by `x_dims`, `out` receives
/// `(O, N, H, W)` and must hold exactly that many values.
pub(crate) fn conv3x3_bias_relu(
    kernel: &WinogradKernel,
    x: &[f32],
    x_dims: [usize; 4],
    bias: &[f32],
    out: &mut [f32],
) -> candle_core::Result<()> {
    let [c, n, h, w] = x_dims;
    let o = kernel.o;
    if c != kernel.c || bias.len() != o || x.len() != c * n * h * w || out.len() != o * n * h * w {
        candle_core::bail!(
            "winograd conv: buffers do not fit input {x_dims:?} with a ({o}, {}, 3, 3) kernel",
            kernel.c
        );
    }
    let t = Tiling {
        c,
        o,
        n,
        h,
        w,
        th: h.div_ceil(M),
        tw: w.div_ceil(M),
    };
    let rows = t.tile_rows();
    let rows_per_block = (BLOCK_TILES / t.tw).max(1);
    let blocks: Vec<Range<usize>> = (0..rows)
        .step_by(rows_per_block)
        .map(|r0| r0..(r0 + rows_per_block).min(rows))
        .collect();
    let job = Job { t, kernel, x, bias };
    if blocks.len() >= 2 * rayon::current_num_threads() {
        job.by_block(&blocks, out);
    } else {
        job.by_phase(&blocks, out);
    }
    Ok(())
}

/// One call's operands: shapes, transformed kernel, input and bias.
struct Job<'a> {
    t: Tiling,
    kernel: &'a WinogradKernel,
    x: &'a [f32],
    bias: &'a [f32],
}

impl Job<'_> {
    /// Many blocks: each task transforms, multiplies and transforms back one block on its own, so
    /// the block's data stays in that core's cache.
    fn by_block(&self, blocks: &[Range<usize>], out: &mut [f32]) {
        let Self { t, kernel, x, bias } = *self;
        let out_addr = out.as_mut_ptr() as usize;
        let plane = t.n * t.h * t.w;
        blocks.par_iter().for_each(|rows| {
            let tiles = rows.len() * t.tw;
            with_scratch(|v| {
                with_scratch(|m| {
                    let v = prefix(v, POINTS * t.c * tiles);
                    let m = prefix(m, POINTS * t.o * tiles);
                    let mut scratch = PatchScratch::new(t, tiles);
                    for (ch, dst) in v.chunks_exact_mut(POINTS * tiles).enumerate() {
                        let input = &x[ch * plane..][..plane];
                        transform_input(t, input, rows.clone(), dst, &mut scratch);
                    }
                    for e in 0..POINTS {
                        multiply_point(kernel, e, v, m, tiles);
                    }
                    let pixels = t.output_rows(rows);
                    let mut scratch = OutputScratch::new(tiles);
                    for (oc, &b) in bias.iter().enumerate() {
                        // SAFETY: these output rows of channel `oc` are covered by this block's tile
                        // rows alone (blocks do not overlap), and `out` outlives the loop.
                        let region = unsafe {
                            std::slice::from_raw_parts_mut(
                                (out_addr as *mut f32).add(oc * plane + pixels.start * t.w),
                                pixels.len() * t.w,
                            )
                        };
                        let m = &m[oc * POINTS * tiles..][..POINTS * tiles];
                        transform_output(t, m, b, rows.clone(), region, &mut scratch);
                    }
                })
            })
        });
    }

    /// Few blocks: one after another, each phase (input transform by channel, products by point,
    /// output transform by channel) shared among the threads.
    fn by_phase(&self, blocks: &[Range<usize>], out: &mut [f32]) {
        let Self { t, kernel, x, bias } = *self;
        let plane = t.n * t.h * t.w;
        with_scratch(|v| {
            with_scratch(|m| {
                for rows in blocks {
                    let tiles = rows.len() * t.tw;
                    let v = prefix(v, POINTS * t.c * tiles);
                    let m = prefix(m, POINTS * t.o * tiles);
                    v.par_chunks_mut(POINTS * tiles)
                        .zip(x.par_chunks(plane))
                        .for_each_init(
                            || PatchScratch::new(t, tiles),
                            |scratch, (dst, input)| {
                                transform_input(t, input, rows.clone(), dst, scratch)
                            },
                        );
                    let m_addr = m.as_mut_ptr() as usize;
                    (0..POINTS).into_par_iter().for_each(|e| {
                        // SAFETY: point `e` writes only its own row of each channel's points (see
                        // `multiply_point`), so the tasks' writes are disjoint; `m` outlives them.
                        let m = unsafe {
                            std::slice::from_raw_parts_mut(m_addr as *mut f32, POINTS * t.o * tiles)
                        };
                        multiply_point(kernel, e, v, m, tiles);
                    });
                    let pixels = t.output_rows(rows);
                    out.par_chunks_mut(plane)
                        .zip(m.par_chunks(POINTS * tiles))
                        .zip(bias)
                        .for_each_init(
                            || OutputScratch::new(tiles),
                            |scratch, ((out, m), &b)| {
                                let region = &mut out[pixels.start * t.w..pixels.end * t.w];
                                transform_output(t, m, b, rows.clone(), region, scratch)
                            },
                        );
                }
            })
        });
    }
}

/// `M[e] = U[e] · V[e]` for point `e`, one thread: `v` is `(C, points, tiles)`, `m` `(O,
/// points, tiles)`; only the values of point `e` in `m` are written.
fn multiply_point(kernel: &WinogradKernel, e: usize, v: &[f32], m: &mut [f32], tiles: usize) {
    let stride = POINTS * tiles;
    assert!(v.len() >= kernel.c * stride && m.len() >= kernel.o * stride);
    // SAFETY: U[e] is O×C; V[e] has C rows of `tiles` values `stride` apart starting at
    // e·tiles, M[e] O such rows: all inside the buffers (checked above).
    unsafe {
        gemm_into(
            m[e * tiles..].as_mut_ptr(),
            stride,
            (kernel.o, tiles, kernel.c),
            Mat::rows(kernel.point(e), kernel.c),
            Mat::rows(&v[e * tiles..], stride),
            Parallelism::None,
        )
    };
}

/// `dst = Σ value·src(index)` over `terms`, in one pass over `dst` for the term counts of
/// F(4×4)'s transforms (3–5).
#[inline(always)]
fn combine<'a>(dst: &mut [f32], terms: &[(usize, f32)], src: impl Fn(usize) -> &'a [f32]) {
    match terms {
        [a, b, c] => combine_n(dst, [a, b, c].map(|t| (src(t.0), t.1))),
        [a, b, c, d] => combine_n(dst, [a, b, c, d].map(|t| (src(t.0), t.1))),
        [a, b, c, d, e] => combine_n(dst, [a, b, c, d, e].map(|t| (src(t.0), t.1))),
        _ => unreachable!("every row of F(4×4)'s transforms has 3 to 5 terms"),
    }
}

/// `dst = Σ scale·src` over the `N` `(src, scale)` terms.
#[inline(always)]
fn combine_n<const N: usize>(dst: &mut [f32], terms: [(&[f32], f32); N]) {
    let len = dst.len();
    let terms = terms.map(|(src, scale)| (&src[..len], scale));
    for (i, d) in dst.iter_mut().enumerate() {
        *d = terms
            .iter()
            .fold(0.0, |acc, (src, scale)| scale.mul_add(src[i], acc));
    }
}

/// Work rows for [`transform_input`], `points × tiles` each.
struct PatchScratch {
    /// One input row with a zero column on the left and zeros past its end: the patch of
    /// tile `tx` spans `line[4·tx .. 4·tx + 6]`.
    line: Vec<f32>,
    /// `patch[(i·a + j)·tiles + tile]`: row i, column j of each tile's input patch.
    patch: Vec<f32>,
    /// `rows[(r·a + j)·tiles + tile]`: row r of `Bᵀ·d`.
    rows: Vec<f32>,
}

impl PatchScratch {
    fn new(t: Tiling, tiles: usize) -> Self {
        Self {
            line: vec![0.0; M * t.tw + 2],
            patch: vec![0.0; POINTS * tiles],
            rows: vec![0.0; POINTS * tiles],
        }
    }
}

/// Fills `v` `(points, tiles)` with `Bᵀ·d·B` of every input patch `d` of tile rows `rows` of
/// one channel's planes `x` `(N, H, W)`.
///
/// The patches' values are first gathered into one row over the tiles per patch position;
/// both halves of the transform are then sums of such rows, loops over the tiles.
#[multiversion(targets = "simd")]
fn transform_input(t: Tiling, x: &[f32], rows: Range<usize>, v: &mut [f32], s: &mut PatchScratch) {
    let (a, tiles, bt) = (A, rows.len() * t.tw, &*INPUT_TERMS);
    for (r, row) in rows.enumerate() {
        let (image, ty) = (row / t.th, row % t.th);
        let plane = &x[image * t.h * t.w..][..t.h * t.w];
        let at = r * t.tw;
        for i in 0..a {
            let y = (M * ty + i).wrapping_sub(1);
            if y < t.h {
                s.line[1..=t.w].copy_from_slice(&plane[y * t.w..][..t.w]);
                s.line[t.w + 1..].fill(0.0);
            } else {
                s.line.fill(0.0);
            }
            // One pass over the tiles filling the patch row's columns (a copy loop per column
            // would become a `memcpy` call each, too short to pay for itself).
            let base = i * a * tiles + at;
            for (tx, window) in s.line.windows(a).step_by(M).enumerate() {
                for (j, &value) in window.iter().enumerate() {
                    s.patch[base + j * tiles + tx] = value;
                }
            }
        }
    }
    // Bᵀ·d: row r combines the patch rows, column by column.
    for (k, dst) in s.rows.chunks_exact_mut(tiles).enumerate() {
        let (r, j) = (k / a, k % a);
        combine(dst, &bt[r], |i| &s.patch[(i * a + j) * tiles..][..tiles]);
    }
    // (Bᵀ·d)·B: point (r, c) combines the columns of row r.
    for (k, dst) in v.chunks_exact_mut(tiles).enumerate() {
        let (r, c) = (k / a, k % a);
        combine(dst, &bt[c], |j| &s.rows[(r * a + j) * tiles..][..tiles]);
    }
}

/// Work rows for [`transform_output`].
struct OutputScratch {
    /// `half[(p·a + c)·tiles + tile]`: row p of Aᵀ·M.
    half: Vec<f32>,
    /// `y[(p·m + q)·tiles + tile]`: output pixel (p, q) of each tile.
    y: Vec<f32>,
}

impl OutputScratch {
    fn new(tiles: usize) -> Self {
        Self {
            half: vec![0.0; M * A * tiles],
            y: vec![0.0; M * M * tiles],
        }
    }
}

/// Writes `ReLU(Aᵀ·M·A + bias)` of every tile of tile rows `rows` of one output channel, from
/// `m` `(points, tiles)`, into `out`: that channel's output rows
/// [`Tiling::output_rows`]`(rows)`.
#[multiversion(targets = "simd")]
fn transform_output(
    t: Tiling,
    m: &[f32],
    bias: f32,
    rows: Range<usize>,
    out: &mut [f32],
    s: &mut OutputScratch,
) {
    let (a, side, tiles, at) = (A, M, rows.len() * t.tw, &*OUTPUT_TERMS);
    for (k, dst) in s.half.chunks_exact_mut(tiles).enumerate() {
        let (p, c) = (k / a, k % a);
        combine(dst, &at[p], |r| &m[(r * a + c) * tiles..][..tiles]);
    }
    for (k, dst) in s.y.chunks_exact_mut(tiles).enumerate() {
        let (p, q) = (k / side, k % side);
        combine(dst, &at[q], |c| &s.half[(p * a + c) * tiles..][..tiles]);
        for v in dst.iter_mut() {
            *v = (*v + bias).max(0.0);
        }
    }
    let first = t.output_rows(&rows).start;
    for (r, row) in rows.enumerate() {
        let (image, ty) = (row / t.th, row % t.th);
        let at = r * t.tw;
        for p in 0..side.min(t.h - side * ty) {
            let dst = &mut out[(image * t.h + side * ty + p - first) * t.w..][..t.w];
            for (tx, pixels) in dst.chunks_mut(side).enumerate() {
                for (q, pixel) in pixels.iter_mut().enumerate() {
                    *pixel = s.y[(p * side + q) * tiles + at + tx];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{conv_bias_relu, Conv2dGeometry};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        // A small deterministic generator: values in [-1, 1).
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Agrees with the im2col convolution within 1e-4 relative to the output's scale, on even,
    /// odd and tiny planes, one and several images, and a bias that makes ReLU cut.
    #[test]
    fn matches_the_im2col_convolution() -> candle_core::Result<()> {
        let g = Conv2dGeometry {
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        for (c, o, n, size) in [
            (3, 5, 1, 1),
            (3, 5, 2, 2),
            (4, 7, 3, 3),
            (8, 16, 2, 6),
            (5, 3, 1, 7),
            (16, 24, 4, 12),
            (6, 9, 3, 31),
            (2, 4, 8, 33),
            (160, 32, 2, 14),
        ] {
            let x = random(c * n * size * size, 1);
            let weight = random(o * c * 9, 2);
            let bias: Vec<f32> = random(o, 3).iter().map(|b| b * 0.5).collect();
            let dims = [c, n, size, size];
            let mut expected = vec![0f32; o * n * size * size];
            conv_bias_relu(g, &x, dims, &weight, &bias, &mut expected)?;
            let kernel = WinogradKernel::new(&weight, o, c);
            let mut got = vec![f32::NAN; expected.len()];
            conv3x3_bias_relu(&kernel, &x, dims, &bias, &mut got)?;
            let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff < 1e-4 * scale,
                "differs by {diff} (C {c}, O {o}, N {n}, {size} px)"
            );
        }
        Ok(())
    }

    #[test]
    fn takes_the_winograd_path_where_it_saves_products() {
        assert!(winograd_pays([64, 32, 24, 24]));
        assert!(winograd_pays([64, 16, 3, 3])); // one padded tile: 36 products for 81
        assert!(!winograd_pays([64, 32, 2, 2])); // 36 for 36
        assert!(!winograd_pays([64, 1, 6, 6])); // too few tiles in the batch
    }

    #[test]
    fn rejects_buffers_that_do_not_fit() {
        let kernel = WinogradKernel::new(&[0.0; 2 * 3 * 9], 2, 3);
        let mut out = vec![0f32; 2 * 4 * 4];
        let err = conv3x3_bias_relu(&kernel, &[0.0; 4 * 16], [4, 1, 4, 4], &[0.0; 2], &mut out);
        assert!(err.is_err());
    }
}
