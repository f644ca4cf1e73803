//! Winograd convolution F(m×m, 3×3) for inference (Lavin & Gray, 2016), m = 2, 3 or 4.
//!
//! A 3×3 stride-1 "same" convolution computes each m×m block of outputs (a tile) from the
//! (m+2)×(m+2) input patch around it. In the Winograd domain F(4×4) takes 36 element-wise
//! products instead of 144 multiply-adds: transform the patch (`V = Bᵀ·d·B`) and the kernel
//! (`U = G·g·Gᵀ`, once per layer, the first time an input needs that variant), multiply point
//! by point and sum over the input channels, then transform back (`Y = Aᵀ·M·A`). Summed over
//! the channels, the points are independent matrix products `M[e] = U[e] · V[e]` of `O×C` by
//! `C×tiles`: up to 4× fewer multiply-adds than im2col + one matrix multiply, and no 9× column
//! matrix. The transforms' coefficients (up to 8) cost some rounding; results stay within 1e-4
//! of the direct convolution (tested).
//!
//! Each plane takes the variant whose padded tiles need the fewest products
//! ([`winograd_variant`]): F(4×4) where 4 divides the plane or nearly, F(3×3) on the 6×6 and
//! 3×3 planes of a 96 px input (F(4×4)'s tiles would be almost half padding there; +6% at 96 px),
//! F(2×2) on 2×2 planes. F(6×6, 3×3) was tried too: its 8×8 transforms cost what it saves
//! (BENCHMARKS.md).
//!
//! The tiles are processed in blocks of whole tile rows: transform the block's patches, run
//! its products, transform back with the bias and ReLU fused in, all while the block is in the
//! core's cache. Inside a block the data are pixel-major (each pixel's or tile point's channels
//! side by side): the input rows under a tile row are transposed into that layout once, so that
//! both transforms are sums of whole channel vectors and each point's product runs its vectors
//! along the output channels; the output rows are transposed back into the channel-major
//! activation. Tile-major transforms with per-tile gathers and scatters were 10% slower at 64 px.

use super::gemm::{gemm_into, with_scratch, Mat};
use super::prefix;
use super::transpose::transpose;
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// Tiles per block that is transformed and multiplied at once (about: blocks are whole tile
/// rows). Measured best of 32–1024 (BENCHMARKS.md): smaller blocks make the products too
/// thin, larger ones spill the block out of the core's cache.
const BLOCK_TILES: usize = 128;

/// Fewest tiles in a batch for which the Winograd path beats im2col: below it (the late layers
/// at batch 1) the products are too thin to pay for the extra weights.
const MIN_TILES: usize = 16;

/// One Winograd algorithm F(m×m, 3×3): 4×4 tiles from 6×6 patches, 3×3 from 5×5 or 2×2 from
/// 4×4. Its matrices come from the Toom–Cook construction with interpolation points 0, ±1, 2,
/// −2 (as many as it needs) and ∞.
#[derive(Debug)]
pub(crate) struct Variant {
    /// Output tile side `m`.
    m: usize,
    /// Input patch side `a = m + 2`.
    a: usize,
    /// `G` (`a`×3), row-major.
    g: &'static [f32],
}

impl Variant {
    const fn new(m: usize, g: &'static [f32]) -> Self {
        let a = m + 2;
        assert!(g.len() == a * 3, "G is a×3");
        Self { m, a, g }
    }

    /// Winograd points per tile: `a²` element-wise products instead of `9·m²` multiply-adds.
    fn points(&self) -> usize {
        self.a * self.a
    }

    /// Tiles of an `h`×`w` plane, padded up to whole tiles.
    fn tiles(&self, h: usize, w: usize) -> usize {
        h.div_ceil(self.m) * w.div_ceil(self.m)
    }

    /// Which of [`VARIANTS`] this is.
    fn index(&self) -> usize {
        self.m - 2
    }
}

/// F(2×2, 3×3), F(3×3, 3×3) and F(4×4, 3×3), in that order (see [`Variant::index`]).
static VARIANTS: [Variant; 3] = [
    Variant::new(2, &G2),
    Variant::new(3, &G3),
    Variant::new(4, &G4),
];

// `Bᵀ`, `G` and `Aᵀ` of each variant. The transforms pick `Bᵀ` and `Aᵀ` by tile side, as
// constants, so that [`tile`]'s loops unroll around them; `G` is only read when weights are
// transformed.
#[rustfmt::skip]
const BT2: [[f32; 4]; 4] = [
    [-1., 0., 1., 0.],
    [0., 1., 1., 0.],
    [0., -1., 1., 0.],
    [0., -1., 0., 1.],
];
#[rustfmt::skip]
const G2: [f32; 12] = [
    -1., 0., 0.,
    0.5, 0.5, 0.5,
    0.5, -0.5, 0.5,
    0., 0., 1.,
];
#[rustfmt::skip]
const AT2: [[f32; 4]; 2] = [
    [1., 1., 1., 0.],
    [0., 1., -1., 1.],
];
#[rustfmt::skip]
const BT3: [[f32; 5]; 5] = [
    [2., -1., -2., 1., 0.],
    [0., -2., -1., 1., 0.],
    [0., 2., -3., 1., 0.],
    [0., -1., 0., 1., 0.],
    [0., 2., -1., -2., 1.],
];
#[rustfmt::skip]
const G3: [f32; 15] = [
    1. / 2., 0., 0.,
    -1. / 2., -1. / 2., -1. / 2.,
    -1. / 6., 1. / 6., -1. / 6.,
    1. / 6., 1. / 3., 2. / 3.,
    0., 0., 1.,
];
#[rustfmt::skip]
const AT3: [[f32; 5]; 3] = [
    [1., 1., 1., 1., 0.],
    [0., 1., -1., 2., 0.],
    [0., 1., 1., 4., 1.],
];
#[rustfmt::skip]
const BT4: [[f32; 6]; 6] = [
    [4., 0., -5., 0., 1., 0.],
    [0., -4., -4., 1., 1., 0.],
    [0., 4., -4., -1., 1., 0.],
    [0., -2., -1., 2., 1., 0.],
    [0., 2., -1., -2., 1., 0.],
    [0., 4., 0., -5., 0., 1.],
];
#[rustfmt::skip]
const G4: [f32; 18] = [
    1. / 4., 0., 0.,
    -1. / 6., -1. / 6., -1. / 6.,
    -1. / 6., 1. / 6., -1. / 6.,
    1. / 24., 1. / 12., 1. / 6.,
    1. / 24., -1. / 12., 1. / 6.,
    0., 0., 1.,
];
#[rustfmt::skip]
const AT4: [[f32; 6]; 4] = [
    [1., 1., 1., 1., 1., 0.],
    [0., 1., -1., 2., -2., 0.],
    [0., 1., 1., 4., 4., 0.],
    [0., 1., -1., 8., -8., 1.],
];

/// The variant a 3×3 "same" convolution of input `(C, N, H, W)` should run as: the one whose
/// padded tiles need the fewest products (the larger tile on a tie), if that is fewer than
/// im2col's 9 per pixel and the batch has enough tiles; `None` for im2col. At 96 px, say, the
/// 24×24 and 12×12 planes take F(4×4) and the 6×6 and 3×3 ones F(3×3), whose tiles fit them
/// exactly where F(4×4)'s would be almost half padding.
pub(crate) fn winograd_variant([_, n, h, w]: [usize; 4]) -> Option<&'static Variant> {
    let products = |v: &Variant| v.tiles(h, w) * v.points();
    let best = VARIANTS.iter().rev().reduce(|best, v| {
        if products(v) < products(best) {
            v
        } else {
            best
        }
    })?;
    (products(best) < 9 * h * w && n * best.tiles(h, w) >= MIN_TILES).then_some(best)
}

/// The weights of one 3×3 "same" convolution in the Winograd domain of each variant, each
/// transformed the first time an input needs it: a network run at one input size transforms
/// only the variants its planes use.
#[derive(Debug, Clone, Default)]
pub(crate) struct WinogradWeights {
    kernels: [OnceLock<WinogradKernel>; 3],
}

impl WinogradWeights {
    /// The kernel of `variant` for `weight` `(O, C, 3, 3)` row-major, transformed on first use
    /// (the same `weight` must be passed on every call).
    pub(crate) fn kernel(
        &self,
        variant: &'static Variant,
        weight: &[f32],
        o: usize,
        c: usize,
    ) -> &WinogradKernel {
        self.kernels[variant.index()].get_or_init(|| WinogradKernel::new(variant, weight, o, c))
    }
}

/// A 3×3 kernel in the Winograd domain of one variant: `U[e] = G·g·Gᵀ` for each point `e`,
/// laid out `(points, C, O)`: each point's `U[e]ᵀ` is a row-major `C×O` matrix, which the
/// products read as it is (the matrix-multiply kernels' vectors run along `O`).
#[derive(Debug, Clone)]
pub(crate) struct WinogradKernel {
    variant: &'static Variant,
    u: Vec<f32>,
    o: usize,
    c: usize,
}

impl WinogradKernel {
    /// Transforms `weight`, `(O, C, 3, 3)` row-major.
    pub(crate) fn new(variant: &'static Variant, weight: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(weight.len(), o * c * 9, "3×3 weights expected");
        let (a, g) = (variant.a, variant.g);
        let mut u = vec![0f32; variant.points() * o * c];
        for (pair, kernel) in weight.chunks_exact(9).enumerate() {
            let (out, ch) = (pair / c, pair % c);
            // G·g (a×3), in f64 so that the sixths and twenty-fourths round once.
            let gg: Vec<f64> = (0..a * 3)
                .map(|k| {
                    let (r, j) = (k / 3, k % 3);
                    (0..3)
                        .map(|i| g[r * 3 + i] as f64 * kernel[i * 3 + j] as f64)
                        .sum()
                })
                .collect();
            // (G·g)·Gᵀ (a×a).
            for r in 0..a {
                for s in 0..a {
                    let v: f64 = (0..3).map(|j| gg[r * 3 + j] * g[s * 3 + j] as f64).sum();
                    u[((r * a + s) * c + ch) * o + out] = v as f32;
                }
            }
        }
        Self { variant, u, o, c }
    }

    /// The `C×O` matrix `U[e]ᵀ` of point `e`.
    fn point(&self, e: usize) -> &[f32] {
        &self.u[e * self.o * self.c..][..self.o * self.c]
    }
}

/// Shapes of one call: input `(C, N, H, W)`, output `(O, N, H, W)`, `th × tw` tiles of the
/// variant's per image.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    variant: &'static Variant,
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

    /// Values of one tile in the Winograd domain with `channels` channels.
    fn tile_len(&self, channels: usize) -> usize {
        self.variant.points() * channels
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
    let variant = kernel.variant;
    let t = Tiling {
        variant,
        c,
        o,
        n,
        h,
        w,
        th: h.div_ceil(variant.m),
        tw: w.div_ceil(variant.m),
    };
    let rows = t.tile_rows();
    let rows_per_block = (BLOCK_TILES / t.tw).max(1);
    let blocks: Vec<Range<usize>> = (0..rows)
        .step_by(rows_per_block)
        .map(|r0| r0..(r0 + rows_per_block).min(rows))
        .collect();
    let job = Job {
        t,
        kernel,
        x,
        bias,
        out: out.as_mut_ptr() as usize,
    };
    if blocks.len() >= 2 * rayon::current_num_threads() {
        job.by_block(&blocks);
    } else {
        job.by_phase(&blocks);
    }
    Ok(())
}

/// One call's operands: shapes, transformed kernel, input, bias and the output's address.
struct Job<'a> {
    t: Tiling,
    kernel: &'a WinogradKernel,
    x: &'a [f32],
    bias: &'a [f32],
    /// `out` of [`conv3x3_bias_relu`], written by the tile rows' tasks, each its own pixels.
    out: usize,
}

impl Job<'_> {
    /// Many blocks: each task transforms, multiplies and transforms back one block on its own, so
    /// the block's data stays in that core's cache.
    fn by_block(&self, blocks: &[Range<usize>]) {
        let t = self.t;
        let (row_in, row_out) = (t.tw * t.tile_len(t.c), t.tw * t.tile_len(t.o));
        blocks.par_iter().for_each(|rows| {
            let tiles = rows.len() * t.tw;
            with_scratch(|v| {
                with_scratch(|m| {
                    let v = prefix(v, tiles * t.tile_len(t.c));
                    let m = prefix(m, tiles * t.tile_len(t.o));
                    let mut scratch = InputScratch::new(t);
                    for (row, v) in rows.clone().zip(v.chunks_exact_mut(row_in)) {
                        transform_input(t, self.x, row, v, &mut scratch);
                    }
                    for e in 0..t.variant.points() {
                        // SAFETY: `m` holds the block's tiles, and only this task uses it.
                        unsafe { multiply_point(self.kernel, e, v, m.as_mut_ptr(), tiles) };
                    }
                    let mut scratch = OutputScratch::new(t);
                    for (row, m) in rows.clone().zip(m.chunks_exact(row_out)) {
                        self.output_row(row, m, &mut scratch);
                    }
                })
            })
        });
    }

    /// Few blocks: one after another, each phase (input transform by tile row, products by
    /// point, output transform by tile row) shared among the threads.
    fn by_phase(&self, blocks: &[Range<usize>]) {
        let t = self.t;
        let (row_in, row_out) = (t.tw * t.tile_len(t.c), t.tw * t.tile_len(t.o));
        with_scratch(|v| {
            with_scratch(|m| {
                for rows in blocks {
                    let tiles = rows.len() * t.tw;
                    let v = prefix(v, tiles * t.tile_len(t.c));
                    let m = prefix(m, tiles * t.tile_len(t.o));
                    v.par_chunks_mut(row_in).zip(rows.clone()).for_each_init(
                        || InputScratch::new(t),
                        |scratch, (v, row)| transform_input(t, self.x, row, v, scratch),
                    );
                    let m_addr = m.as_mut_ptr() as usize;
                    (0..t.variant.points()).into_par_iter().for_each(|e| {
                        // SAFETY: point `e`'s task writes only point `e`'s values of each tile
                        // (see `multiply_point`): the tasks' writes are disjoint, inside `m`.
                        unsafe { multiply_point(self.kernel, e, v, m_addr as *mut f32, tiles) };
                    });
                    m.par_chunks(row_out).zip(rows.clone()).for_each_init(
                        || OutputScratch::new(t),
                        |scratch, (m, row)| self.output_row(row, m, scratch),
                    );
                }
            })
        });
    }

    /// [`transform_output`] of tile row `row`, written to its pixels of the output: `m` rows
    /// (fewer at the bottom of a plane whose side `m` does not divide) of one image, all
    /// channels.
    fn output_row(&self, row: usize, m: &[f32], s: &mut OutputScratch) {
        let t = self.t;
        transform_output(t, m, self.bias, s);
        let (side, (image, ty)) = (t.variant.m, (row / t.th, row % t.th));
        let plane = t.n * t.h * t.w;
        for p in 0..side.min(t.h - side * ty) {
            let first = (image * t.h + side * ty + p) * t.w;
            let line = &s.pixels[p * side * t.tw * t.o..][..t.w * t.o];
            // SAFETY: row `first / w` of every channel's planes lies inside `out` (O×N×H×W
            // values, alive for the whole call), and only this tile row's task writes it; `line`
            // holds w pixels of O values.
            unsafe {
                let out = (self.out as *mut f32).add(first);
                transpose(line.as_ptr(), t.o, (t.w, t.o), out, plane);
            }
        }
    }
}

/// `M[e] = V[e] · U[e]ᵀ` for point `e`, one thread: `v` is `(tiles, points, C)`, `m` points to
/// `(tiles, points, O)`; only the values of point `e` in `m` are written.
///
/// # Safety
/// `m` must be valid for `tiles·points·O` values, and no other thread may touch point `e`'s
/// values meanwhile.
unsafe fn multiply_point(kernel: &WinogradKernel, e: usize, v: &[f32], m: *mut f32, tiles: usize) {
    let points = kernel.variant.points();
    let (c, o) = (kernel.c, kernel.o);
    assert!(v.len() >= tiles * points * c);
    // SAFETY: V[e] is tiles×C with rows `points·C` apart from e·C, U[e]ᵀ is C×O, M[e] tiles×O
    // with rows `points·O` apart from e·O: all inside the buffers (checked above, and by the
    // caller for `m`).
    unsafe {
        gemm_into(
            m.add(e * o),
            points * o,
            (tiles, o, c),
            Mat::rows(&v[e * c..], points * c),
            Mat::rows(kernel.point(e), o),
            Parallelism::None,
        )
    };
}

/// `P·X·Pᵀ` of one tile for every channel (`P` being `Bᵀ` or `Aᵀ`), 16 channels at a time
/// (then 8, then 1): `x(i, j)` gives `X[i][j]`'s channel vector, `out(r, c, at, y)` receives
/// channels `at..at + y.len()` of `Y[r][c]`. Inlined into the transforms with the matrix a
/// constant, so that its loops unroll, its zero entries drop out and each step is a few vector
/// multiply-adds.
#[inline(always)]
fn tile<'a, const R: usize, const N: usize>(
    p: &[[f32; N]; R],
    channels: usize,
    x: impl Fn(usize, usize) -> &'a [f32],
    mut out: impl FnMut(usize, usize, usize, &[f32]),
) {
    let at = lanes_from::<R, N, 16>(p, 0, channels, &x, &mut out);
    let at = lanes_from::<R, N, 8>(p, at, channels, &x, &mut out);
    lanes_from::<R, N, 1>(p, at, channels, &x, &mut out);
}

/// [`tile`] for channels `at..`, `L` at a time while `L` remain; returns where it stopped.
#[inline(always)]
fn lanes_from<'a, const R: usize, const N: usize, const L: usize>(
    p: &[[f32; N]; R],
    mut at: usize,
    channels: usize,
    x: &impl Fn(usize, usize) -> &'a [f32],
    out: &mut impl FnMut(usize, usize, usize, &[f32]),
) -> usize {
    while at + L <= channels {
        lanes::<R, N, L>(p, |i, j| &x(i, j)[at..], |r, c, y| out(r, c, at, &y));
        at += L;
    }
    at
}

/// [`tile`] for `L` channels: `x(i, j)` starts with them.
#[inline(always)]
fn lanes<'a, const R: usize, const N: usize, const L: usize>(
    p: &[[f32; N]; R],
    x: impl Fn(usize, usize) -> &'a [f32],
    mut out: impl FnMut(usize, usize, [f32; L]),
) {
    // Z = P·X, one column of X at a time.
    let mut z = [[[0f32; L]; N]; R];
    for j in 0..N {
        let column: [[f32; L]; N] =
            std::array::from_fn(|i| x(i, j)[..L].try_into().expect("L values"));
        for (z, row) in z.iter_mut().zip(p) {
            z[j] = weighted_sum(row, &column);
        }
    }
    // Y = Z·Pᵀ.
    for (r, z) in z.iter().enumerate() {
        for (c, row) in p.iter().enumerate() {
            out(r, c, weighted_sum(row, z));
        }
    }
}

/// `Σ k[i]·x[i]`, lane by lane, skipping the zero weights.
#[inline(always)]
fn weighted_sum<const N: usize, const L: usize>(k: &[f32; N], x: &[[f32; L]; N]) -> [f32; L] {
    let mut sum = [0f32; L];
    for (&k, x) in k.iter().zip(x) {
        if k != 0.0 {
            for (s, &v) in sum.iter_mut().zip(x) {
                *s = k.mul_add(v, *s);
            }
        }
    }
    sum
}

/// Work buffers for [`transform_input`], pixel-major: each pixel's channels side by side.
struct InputScratch {
    /// The `a` input rows under a tile row, `(a, m·tw + 2, C)`, with a zero pixel on the left
    /// and zeros past the row's end (and whole zero rows above and below the plane): tile `tx`'s
    /// patch is pixels `m·tx .. m·tx + a` of each.
    lines: Vec<f32>,
}

impl InputScratch {
    fn new(t: Tiling) -> Self {
        let (m, a) = (t.variant.m, t.variant.a);
        Self {
            lines: vec![0.0; a * (m * t.tw + 2) * t.c],
        }
    }
}

/// Fills `v` `(tw, points, C)` with `Bᵀ·d·B` of the input patches `d` of the tiles of tile row
/// `row`, from the whole input `x` `(C, N, H, W)`.
///
/// The patches' rows are first turned pixel-major (each pixel's channels side by side); both
/// halves of the transform are then sums of whole channel vectors.
#[multiversion(targets = "simd")]
fn transform_input(t: Tiling, x: &[f32], row: usize, v: &mut [f32], s: &mut InputScratch) {
    let (m, a, c) = (t.variant.m, t.variant.a, t.c);
    let (image, ty) = (row / t.th, row % t.th);
    let (plane, width) = (t.n * t.h * t.w, m * t.tw + 2);
    let lines = &mut s.lines;
    for (i, line) in lines.chunks_exact_mut(width * c).enumerate() {
        let y = (m * ty + i).wrapping_sub(1);
        if y >= t.h {
            line.fill(0.0);
            continue;
        }
        let pixels = &mut line[c..(t.w + 1) * c];
        let first = (image * t.h + y) * t.w;
        assert!(x.len() >= (c - 1) * plane + first + t.w);
        // SAFETY: row y of every channel's plane lies inside `x` (checked above); `pixels` holds
        // w pixels of c values.
        unsafe { transpose(x[first..].as_ptr(), plane, (c, t.w), pixels.as_mut_ptr(), c) };
    }
    let lines = &*lines;
    for (tx, v) in v.chunks_exact_mut(t.tile_len(c)).enumerate() {
        let patch = |i: usize, j: usize| &lines[(i * width + m * tx + j) * c..][..c];
        let put = |r: usize, col: usize, at: usize, y: &[f32]| {
            v[(r * a + col) * c + at..][..y.len()].copy_from_slice(y)
        };
        match m {
            2 => tile(&BT2, c, patch, put),
            3 => tile(&BT3, c, patch, put),
            _ => tile(&BT4, c, patch, put),
        }
    }
}

/// Work buffers for [`transform_output`], pixel-major like [`InputScratch`].
struct OutputScratch {
    /// `(m, m·tw, O)`: the tile row's output pixels.
    pixels: Vec<f32>,
}

impl OutputScratch {
    fn new(t: Tiling) -> Self {
        let m = t.variant.m;
        Self {
            pixels: vec![0.0; m * m * t.tw * t.o],
        }
    }
}

/// Fills `s.pixels` with `ReLU(Aᵀ·M·A + bias)` of the tiles of a tile row, from `m` `(tw,
/// points, O)`.
#[multiversion(targets = "simd")]
fn transform_output(t: Tiling, m: &[f32], bias: &[f32], s: &mut OutputScratch) {
    let (side, a, o) = (t.variant.m, t.variant.a, t.o);
    let width = side * t.tw;
    let pixels = &mut s.pixels;
    for (tx, m) in m.chunks_exact(t.tile_len(o)).enumerate() {
        let point = |i: usize, j: usize| &m[(i * a + j) * o..][..o];
        let put = |p: usize, q: usize, at: usize, y: &[f32]| {
            let dst = &mut pixels[(p * width + side * tx + q) * o + at..][..y.len()];
            for ((d, v), b) in dst.iter_mut().zip(y).zip(&bias[at..]) {
                *d = (v + b).max(0.0);
            }
        };
        match side {
            2 => tile(&AT2, o, point, put),
            3 => tile(&AT3, o, point, put),
            _ => tile(&AT4, o, point, put),
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
            let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
            for variant in VARIANTS.iter() {
                let kernel = WinogradKernel::new(variant, &weight, o, c);
                let mut got = vec![f32::NAN; expected.len()];
                conv3x3_bias_relu(&kernel, &x, dims, &bias, &mut got)?;
                let diff = got
                    .iter()
                    .zip(&expected)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                let m = variant.m;
                assert!(
                    diff < 1e-4 * scale,
                    "F({m}×{m}) differs by {diff} (C {c}, O {o}, N {n}, {size} px)"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn picks_the_variant_with_the_fewest_products() {
        let tile = |dims| winograd_variant(dims).map(|v| v.m);
        assert_eq!(tile([64, 32, 24, 24]), Some(4)); // 36 tiles × 36 for F(4×4), 64 × 25 for F(3×3)
        assert_eq!(tile([64, 32, 14, 14]), Some(4)); // 16 × 36 against 25 × 25
        assert_eq!(tile([64, 32, 6, 6]), Some(3)); // 4 × 25 against 4 × 36
        assert_eq!(tile([64, 16, 3, 3]), Some(3)); // one tile: 25 products for im2col's 81
        assert_eq!(tile([64, 32, 2, 2]), Some(2)); // 16 for 36
        assert_eq!(tile([64, 32, 1, 1]), None); // 16 for 9
        assert_eq!(tile([64, 1, 6, 6]), None); // too few tiles in the batch
    }

    #[test]
    fn rejects_buffers_that_do_not_fit() {
        let kernel = WinogradKernel::new(&VARIANTS[2], &[0.0; 2 * 3 * 9], 2, 3);
        let mut out = vec![0f32; 2 * 4 * 4];
        let err = conv3x3_bias_relu(&kernel, &[0.0; 4 * 16], [4, 1, 4, 4], &[0.0; 2], &mut out);
        assert!(err.is_err());
    }
}
