//! Winograd F(2×2, 3×3) convolution for inference (Lavin & Gray, 2016).
//!
//! A 3×3 stride-1 "same" convolution computes each 2×2 block of outputs from the 4×4 input
//! patch around it. In the Winograd domain that is 16 element-wise products instead of 36
//! multiply-adds: transform the patch (`V = Bᵀ·d·B`) and the kernel (`U = G·g·Gᵀ`, once, when
//! the network is folded), multiply point by point and sum over input channels, then transform
//! back (`Y = Aᵀ·M·A`). Summed over the channels, the 16 points are 16 independent matrix
//! products `M[e] = U[e] · V[e]` of `O×C` by `C×tiles`: 2.25× fewer multiply-adds than im2col
//! + one matrix multiply, and no 9× column matrix.
//!
//! The tiles are processed in blocks of whole tile rows, one block per task: transform the
//! block's patches, run its 16 products, transform back with the bias and ReLU fused in, all
//! while the block is in the core's cache.

use super::conv::{gemm_into, with_scratch, Mat};
use super::prefix;
use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;
use std::ops::Range;

/// Winograd points per tile: the 4×4 input patch.
const POINTS: usize = 16;

/// Tiles per block that is transformed and multiplied at once (about: blocks are whole tile
/// rows). Measured best of 32–1024 (BENCHMARKS.md): smaller blocks make the 16 products too
/// thin, larger ones spill the block out of the core's cache.
const BLOCK_TILES: usize = 128;

/// Fewest tiles in a batch for which the Winograd path beats im2col: below it (the late layers
/// at batch 1) the 16 products are too thin to pay for 16/9 as many weights.
const MIN_TILES: usize = 16;

/// Whether a 3×3 "same" convolution of input `(C, N, H, W)` should take the Winograd path.
pub(crate) fn winograd_pays([_, n, h, w]: [usize; 4]) -> bool {
    h >= 2 && w >= 2 && n * h.div_ceil(2) * w.div_ceil(2) >= MIN_TILES
}

/// A 3×3 kernel in the Winograd domain: `U[e] = G·g·Gᵀ` for each point `e`, laid out
/// `(16, O, C)` so that each point is a row-major `O×C` matrix.
#[derive(Debug, Clone)]
pub(crate) struct WinogradKernel {
    u: Vec<f32>,
    o: usize,
    c: usize,
}

/// The 1-D kernel transform `G·g` for the three taps of one column or row: `[g0, (g0+g1+g2)/2,
/// (g0−g1+g2)/2, g2]`.
fn kernel_transform([a, b, c]: [f32; 3]) -> [f32; 4] {
    [a, (a + b + c) / 2.0, (a - b + c) / 2.0, c]
}

impl WinogradKernel {
    /// Transforms `weight`, `(O, C, 3, 3)` row-major.
    pub(crate) fn new(weight: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(weight.len(), o * c * 9, "3×3 weights expected");
        let mut u = vec![0f32; POINTS * o * c];
        for (oc, g) in weight.chunks_exact(9).enumerate() {
            // G·g: transform each of the 3 columns, giving 4 rows of 3.
            let columns: [[f32; 4]; 3] =
                std::array::from_fn(|j| kernel_transform([g[j], g[3 + j], g[6 + j]]));
            for i in 0..4 {
                // (G·g)·Gᵀ: transform each of those 4 rows.
                let row = kernel_transform([columns[0][i], columns[1][i], columns[2][i]]);
                for (j, v) in row.into_iter().enumerate() {
                    u[(i * 4 + j) * o * c + oc] = v;
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

/// Shapes of one call: input `(C, N, H, W)`, output `(O, N, H, W)`, `th × tw` tiles per image.
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
    /// cover: two per tile row, one for an odd plane's last.
    fn output_rows(&self, rows: &Range<usize>) -> Range<usize> {
        let first = |r: usize| (r / self.th) * self.h + 2 * (r % self.th);
        let end =
            (rows.end - 1) / self.th * self.h + (2 * ((rows.end - 1) % self.th) + 2).min(self.h);
        first(rows.start)..end
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
        th: h.div_ceil(2),
        tw: w.div_ceil(2),
    };
    let rows = t.tile_rows();
    let rows_per_block = (BLOCK_TILES / t.tw).max(1);
    let blocks: Vec<Range<usize>> = (0..rows)
        .step_by(rows_per_block)
        .map(|r0| r0..(r0 + rows_per_block).min(rows))
        .collect();
    if blocks.len() >= 2 * rayon::current_num_threads() {
        by_block(t, kernel, x, bias, &blocks, out);
    } else {
        by_phase(t, kernel, x, bias, &blocks, out);
    }
    Ok(())
}

/// Many blocks: each task transforms, multiplies and transforms back one block on its own, so
/// the block's data stays in that core's cache.
fn by_block(
    t: Tiling,
    kernel: &WinogradKernel,
    x: &[f32],
    bias: &[f32],
    blocks: &[Range<usize>],
    out: &mut [f32],
) {
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
fn by_phase(
    t: Tiling,
    kernel: &WinogradKernel,
    x: &[f32],
    bias: &[f32],
    blocks: &[Range<usize>],
    out: &mut [f32],
) {
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
                    // SAFETY: point `e` writes only its own row of each channel's 16 (see
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

/// `M[e] = U[e] · V[e]` for point `e`, one thread: `v` is `(C, 16, tiles)`, `m` `(O, 16,
/// tiles)`; only the values of point `e` in `m` are written.
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

/// How `Bᵀ` combines the four patch rows (or columns) into point row `a`: `first + sign·second`.
const INPUT_COMBINATIONS: [(usize, usize, f32); 4] =
    [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)];

/// Work rows for [`transform_input`].
struct PatchScratch {
    /// One input row with a zero column on the left and zeros past its end: the patch of
    /// tile `tx` spans `line[2·tx .. 2·tx + 4]`.
    line: Vec<f32>,
    /// `patch[(a·4 + j)·tiles + tile]`: row a, column j of each tile's input patch.
    patch: Vec<f32>,
}

impl PatchScratch {
    fn new(t: Tiling, tiles: usize) -> Self {
        Self {
            line: vec![0.0; 2 * t.tw + 2],
            patch: vec![0.0; POINTS * tiles],
        }
    }
}

/// The four columns of patch row `a` for the `len` tiles from `at` on.
fn patch_columns(
    patch: &mut [f32],
    tiles: usize,
    a: usize,
    at: usize,
    len: usize,
) -> [&mut [f32]; 4] {
    let mut columns = patch[a * 4 * tiles..][..4 * tiles]
        .chunks_exact_mut(tiles)
        .map(|column| &mut column[at..at + len]);
    std::array::from_fn(|_| columns.next().expect("four columns"))
}

/// Fills `v` `(16, tiles)` with `Bᵀ·d·B` of every input patch `d` of tile rows `rows` of one
/// channel's planes `x` `(N, H, W)`.
///
/// The patches' 16 values are first gathered into 16 rows over the tiles; each Winograd point
/// is then a signed sum of four of those rows, a loop over the tiles.
#[multiversion(targets = "simd")]
fn transform_input(t: Tiling, x: &[f32], rows: Range<usize>, v: &mut [f32], s: &mut PatchScratch) {
    let tiles = rows.len() * t.tw;
    for (r, row) in rows.enumerate() {
        let (image, ty) = (row / t.th, row % t.th);
        let plane = &x[image * t.h * t.w..][..t.h * t.w];
        let at = r * t.tw;
        for a in 0..4 {
            let y = (2 * ty + a).wrapping_sub(1);
            if y < t.h {
                s.line[1..=t.w].copy_from_slice(&plane[y * t.w..][..t.w]);
                s.line[t.w + 1..].fill(0.0);
            } else {
                s.line.fill(0.0);
            }
            // One loop filling the patch's four columns (a copy loop per column would become a
            // `memcpy` call each, too short to pay for itself).
            let [p0, p1, p2, p3] = patch_columns(&mut s.patch, tiles, a, at, t.tw);
            for (tx, window) in s.line.windows(4).step_by(2).enumerate() {
                (p0[tx], p1[tx], p2[tx], p3[tx]) = (window[0], window[1], window[2], window[3]);
            }
        }
    }
    let patch_row = |a: usize, j: usize| &s.patch[(a * 4 + j) * tiles..][..tiles];
    for (e, dst) in v.chunks_exact_mut(tiles).enumerate() {
        let (ra, rb, rs) = INPUT_COMBINATIONS[e / 4];
        let (ca, cb, cs) = INPUT_COMBINATIONS[e % 4];
        let terms = (patch_row(ra, ca), patch_row(rb, ca), patch_row(ra, cb));
        let last = patch_row(rb, cb);
        for (i, d) in dst.iter_mut().enumerate() {
            *d = terms.0[i] + rs * terms.1[i] + cs * (terms.2[i] + rs * last[i]);
        }
    }
}

/// Work rows for [`transform_output`].
struct OutputScratch {
    /// `half[(i·4 + b)·tiles + tile]`: row i of Aᵀ·M.
    half: Vec<f32>,
    /// `y[(i·2 + j)·tiles + tile]`: output pixel (i, j) of each tile.
    y: Vec<f32>,
}

impl OutputScratch {
    fn new(tiles: usize) -> Self {
        Self {
            half: vec![0.0; 8 * tiles],
            y: vec![0.0; 4 * tiles],
        }
    }
}

/// Writes `ReLU(Aᵀ·M·A + bias)` of every tile of tile rows `rows` of one output channel, from
/// `m` `(16, tiles)`, into `out`: that channel's output rows [`Tiling::output_rows`]`(rows)`.
#[multiversion(targets = "simd")]
fn transform_output(
    t: Tiling,
    m: &[f32],
    bias: f32,
    rows: Range<usize>,
    out: &mut [f32],
    s: &mut OutputScratch,
) {
    let tiles = rows.len() * t.tw;
    let point = |e: usize| &m[e * tiles..][..tiles];
    for (k, dst) in s.half.chunks_exact_mut(tiles).enumerate() {
        let (i, col) = (k / 4, k % 4);
        let (p, q, r) = (point(col), point(4 + col), point(8 + col));
        if i == 0 {
            for (d, ((p, q), r)) in dst.iter_mut().zip(p.iter().zip(q).zip(r)) {
                *d = p + q + r;
            }
        } else {
            let u = point(12 + col);
            for (d, ((q, r), u)) in dst.iter_mut().zip(q.iter().zip(r).zip(u)) {
                *d = q - r - u;
            }
        }
    }
    for (k, dst) in s.y.chunks_exact_mut(tiles).enumerate() {
        let (i, j) = (k / 2, k % 2);
        let row = |col: usize| &s.half[(i * 4 + col) * tiles..][..tiles];
        if j == 0 {
            let (p, q, r) = (row(0), row(1), row(2));
            for (d, ((p, q), r)) in dst.iter_mut().zip(p.iter().zip(q).zip(r)) {
                *d = (p + q + r + bias).max(0.0);
            }
        } else {
            let (q, r, u) = (row(1), row(2), row(3));
            for (d, ((q, r), u)) in dst.iter_mut().zip(q.iter().zip(r).zip(u)) {
                *d = (q - r - u + bias).max(0.0);
            }
        }
    }
    let first = t.output_rows(&rows).start;
    for (r, row) in rows.enumerate() {
        let (image, ty) = (row / t.th, row % t.th);
        let at = r * t.tw;
        for i in 0..2.min(t.h - 2 * ty) {
            let left = &s.y[(i * 2) * tiles + at..][..t.tw];
            let right = &s.y[(i * 2 + 1) * tiles + at..][..t.tw];
            let dst = &mut out[(image * t.h + 2 * ty + i - first) * t.w..][..t.w];
            let mut pairs = dst.chunks_exact_mut(2);
            for ((pair, &l), &r) in (&mut pairs).zip(left).zip(right) {
                pair[0] = l;
                pair[1] = r;
            }
            if let [last] = pairs.into_remainder() {
                *last = left[t.tw - 1];
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
        ] {
            let x = random(c * n * size * size, 1);
            let weight = random(o * c * 9, 2);
            let bias: Vec<f32> = random(o, 3).iter().map(|b| b * 0.5).collect();
            let dims = [c, n, size, size];
            let mut expected = vec![0f32; o * n * size * size];
            conv_bias_relu(g, &x, dims, &weight, &bias, &mut Vec::new(), &mut expected)?;
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
    fn rejects_buffers_that_do_not_fit() {
        let kernel = WinogradKernel::new(&[0.0; 2 * 3 * 9], 2, 3);
        let mut out = vec![0f32; 2 * 4 * 4];
        let err = conv3x3_bias_relu(&kernel, &[0.0; 4 * 16], [4, 1, 4, 4], &[0.0; 2], &mut out);
        assert!(err.is_err());
    }
}
