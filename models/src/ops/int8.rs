//! The int8 inference convolution: u8 activations × int8 per-output-channel weights, int32
//! accumulation, dequantised with bias + ReLU fused, written as f32.
//!
//! Why f32 between layers: quantising an input while its columns are packed costs one read of
//! the column matrix, which the product reads `O / 4` times over. A post-ReLU input needs one
//! scale and no zero point (`u8 = round(x / scale)`); the first convolution's signed input takes
//! the zero point 128, subtracted from the sums as `128 · Σ codes` of each weight row.
//! Keeping f32 between layers leaves the pools, the Inception concatenation and the taps as
//! they are, and each branch needs no common output scale.
//!
//! The kernel is AVX2's `vpmaddubsw` (u8 × i8 pairs summed into i16) + `vpmaddwd` (pairs of
//! i16 summed into i32), 4 output rows × 16 columns per step, chosen at run time, with a
//! scalar version of the same arithmetic elsewhere (they agree exactly: integer sums).
//! `vpmaddubsw` saturates at ±32,767, so the weights keep 7 bits (±[`WEIGHT_LEVELS`]):
//! 2 · 255 · 63 = 32,130 cannot overflow, as ONNX Runtime's `reduce_range` does on CPUs
//! without VNNI. (AVX512-VNNI's `vpdpbusd` needs neither the i16 step nor the 7-bit limit; it
//! is not built: the AVX2-only machine this was written on could not run its tests.)
//! The price of f32 between layers is the packing: 18–38% of an int8 convolution's time on that
//! machine (BENCHMARKS.md), the first thing to remove for more speed.
//!
//! Layout: the weights are `(O rounded up to 4) × (K rounded up to 4)` row-major with zero
//! padding; the column matrix is packed into panels of 16 columns, each panel holding, for
//! every group of 4 consecutive `k`, 16 columns × 4 bytes: one 32-byte load gives 8 columns'
//! 4 values each, which `vpmaddubsw` + `vpmaddwd` against 4 broadcast weight bytes turn into 8
//! dot products of 4. Panels are packed first, all threads at once; then tasks of panels ×
//! row groups multiply them, so that a batch-1 layer of one panel still shares its rows out.

use super::im2col::{unfold_rows, Conv2dGeometry, Dims};
use super::prefix;
use crate::activation_codes::InputCodes;
use candle_core::Result;
use rayon::prelude::*;
use std::cell::RefCell;

/// Largest weight magnitude: 7 bits, so that `vpmaddubsw`'s i16 pair sums cannot saturate.
pub(crate) const WEIGHT_LEVELS: f32 = 63.0;

/// Output rows per kernel step.
const ROWS: usize = 4;
/// Columns per panel (two 8-lane vectors).
const PANEL: usize = 16;
/// Bytes of one `k` group of a panel.
const GROUP_BYTES: usize = PANEL * 4;

/// A convolution's folded weights as int8 codes, one scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Int8Weights {
    /// `padded_rows × padded_k` codes, row-major, zero-padded.
    codes: Vec<i8>,
    /// One per output channel: weight = code · scale.
    scales: Vec<f32>,
    /// One per output channel: the sum of its codes (for an input's zero point).
    row_sums: Vec<i32>,
    k: usize,
    padded_k: usize,
}

impl Int8Weights {
    /// Quantises `(O, K)` row-major weights symmetrically per row to ±[`WEIGHT_LEVELS`].
    pub(crate) fn quantise(weight: &[f32], rows: usize) -> Self {
        let k = weight.len() / rows.max(1);
        let padded_k = k.div_ceil(4) * 4;
        let padded_rows = rows.div_ceil(ROWS) * ROWS;
        let mut codes = vec![0i8; padded_rows * padded_k];
        let mut scales = Vec::with_capacity(rows);
        let mut row_sums = Vec::with_capacity(rows);
        for (row, dst) in weight.chunks_exact(k).zip(codes.chunks_exact_mut(padded_k)) {
            let scale = weight_scale(row);
            for (c, &w) in dst.iter_mut().zip(row) {
                *c = weight_code(w, scale);
            }
            scales.push(scale);
            row_sums.push(dst.iter().map(|&c| i32::from(c)).sum());
        }
        Self {
            codes,
            scales,
            row_sums,
            k,
            padded_k,
        }
    }

    /// Output channels.
    pub(crate) fn rows(&self) -> usize {
        self.scales.len()
    }

    /// The weights these codes stand for, `(O, K)` row-major.
    #[cfg(test)]
    pub(crate) fn dequantised(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows() * self.k);
        for (row, scale) in self.codes.chunks_exact(self.padded_k).zip(&self.scales) {
            out.extend(row[..self.k].iter().map(|&c| f32::from(c) * scale));
        }
        out
    }
}

/// The per-row scale that maps the row's largest magnitude to [`WEIGHT_LEVELS`] (1 for an
/// all-zero row).
pub(crate) fn weight_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0f32, |m, w| m.max(w.abs()));
    if max > 0.0 {
        max / WEIGHT_LEVELS
    } else {
        1.0
    }
}

/// The 7-bit code of weight `w` in a row of scale `scale`.
pub(crate) fn weight_code(w: f32, scale: f32) -> i8 {
    (w / scale).round().clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) as i8
}

/// The u8 code of an activation: `round(v / scale) + zero_point`, saturated to 0..=255.
#[inline(always)]
fn activation_code(v: f32, inverse_scale: f32, zero_point: u8) -> u8 {
    // Ties to even, as the AVX2 packing rounds; `as u8` saturates (NaN becomes 0).
    ((v * inverse_scale).round_ties_even() + f32::from(zero_point)) as u8
}

/// The u8 activation codes of a convolution's column matrix, packed in panels.
struct Packed<'a> {
    bytes: &'a [u8],
    padded_k: usize,
    panels: usize,
}

impl Packed<'_> {
    fn panel(&self, p: usize) -> &[u8] {
        let size = self.padded_k * PANEL;
        &self.bytes[p * size..(p + 1) * size]
    }
}

/// Packs `rows` (`K` rows of f32 values over `width` columns, `stride` apart) as the columns
/// `j0..j0 + width` of the panels at `dst`.
///
/// # Safety
/// `dst` must hold every panel those columns fall in; no other thread may write these columns.
unsafe fn pack_columns(
    rows: &[f32],
    stride: usize,
    (k, padded_k): (usize, usize),
    (j0, width): (usize, usize),
    (inverse_scale, zero_point): (f32, u8),
    dst: *mut u8,
) {
    let panel_bytes = padded_k * PANEL;
    let avx2 = has_avx2();
    for group in 0..padded_k / 4 {
        let row = |t: usize| {
            let kk = group * 4 + t;
            (kk < k).then(|| &rows[kk * stride..kk * stride + width])
        };
        let quads = [row(0), row(1), row(2), row(3)];
        let at = |j: usize| (j / PANEL) * panel_bytes + group * GROUP_BYTES + (j % PANEL) * 4;
        let scalar = |c: usize| {
            let code =
                |t: usize| quads[t].map_or(0, |r| activation_code(r[c], inverse_scale, zero_point));
            let word = u32::from_le_bytes([code(0), code(1), code(2), code(3)]);
            // SAFETY: `at(j) + 4` lies inside column j's slot of its panel (caller's contract).
            unsafe { dst.add(at(j0 + c)).cast::<u32>().write_unaligned(word) };
        };
        // Scalar up to an 8-aligned column, then runs of 8 in SIMD, then the scalar tail.
        let head = if avx2 {
            ((8 - j0 % 8) % 8).min(width)
        } else {
            width
        };
        let body = head + (width - head) / 8 * 8;
        (0..head).for_each(scalar);
        if body > head {
            // SAFETY: AVX2 is present; columns head..body start 8-aligned, so each run of 8
            // shares one 32-byte stretch of its panel's group, inside `dst` (caller's
            // contract); the rows hold those columns.
            unsafe {
                let codes = (inverse_scale, zero_point);
                avx2::pack_runs(quads, head..body, codes, dst, |c| at(j0 + c));
            }
        }
        (body..width).for_each(scalar);
    }
}

/// Inference convolution in int8: `out = ReLU(dequantise(codes(weight) · codes(cols(x))) +
/// bias)`, with `x` `(C, N, H, W)` channel-major, quantised as `input` says; `out` receives
/// `(O, N, OH, OW)` f32. Returns `(OH, OW)`.
pub(crate) fn conv_int8_bias_relu(
    g: Conv2dGeometry,
    x: &[f32],
    x_dims: [usize; 4],
    weights: &Int8Weights,
    input: InputCodes,
    bias: &[f32],
    out: &mut [f32],
) -> Result<(usize, usize)> {
    let d = Dims::new(g, &x_dims, weights.rows())?;
    let (k, l) = (d.k(g), d.l());
    if weights.k != k
        || bias.len() != d.o
        || out.len() != d.o * l
        || x.len() != d.c * d.n * d.h * d.w
    {
        candle_core::bail!(
            "conv_int8_bias_relu: buffers do not fit input {x_dims:?} with {} outputs and kernel {}",
            d.o,
            g.kernel
        );
    }
    let panels = l.div_ceil(PANEL);
    let codes = (1.0 / input.scale, input.zero_point);
    with_bytes(|buffer| {
        let size = panels * weights.padded_k * PANEL;
        if buffer.len() < size {
            buffer.resize(size, 0);
        }
        let bytes = &mut buffer[..size];
        // Columns past `l` in the last panel must read as zero.
        let tail = (panels - 1) * weights.padded_k * PANEL;
        bytes[tail..].fill(0);
        pack(g, d, x, weights, codes, bytes);
        let packed = Packed {
            bytes,
            padded_k: weights.padded_k,
            panels,
        };
        multiply(&packed, weights, input, bias, l, out);
    });
    Ok((d.oh, d.ow))
}

/// Below this many multiply-adds a product runs as one task (a hand-off costs more than it
/// saves), as `narrow.rs` finds for f32.
const PARALLEL_MACS: usize = 1 << 17;

/// Unfolded f32 values per packing task of a non-pointwise convolution (256 KiB).
const PACK_BLOCK_VALUES: usize = 1 << 16;

/// Packs the column matrix of `x` into `bytes`: a pointwise convolution's straight from `x`,
/// any other's unfolded block of output rows by block.
fn pack(
    g: Conv2dGeometry,
    d: Dims,
    x: &[f32],
    w: &Int8Weights,
    codes: (f32, u8),
    bytes: &mut [u8],
) {
    let (k, l) = (d.k(g), d.l());
    let dst = bytes.as_mut_ptr() as usize;
    let threads = rayon::current_num_threads();
    if g.is_pointwise() {
        let span = l.div_ceil(2 * threads).div_ceil(PANEL).max(1) * PANEL;
        (0..l.div_ceil(span)).into_par_iter().for_each(|b| {
            let (j0, width) = (b * span, span.min(l - b * span));
            // SAFETY: each task packs its own columns; `bytes` holds every panel.
            unsafe {
                pack_columns(
                    &x[j0..],
                    l,
                    (k, w.padded_k),
                    (j0, width),
                    codes,
                    dst as *mut u8,
                )
            };
        });
        return;
    }
    let rows = d.n * d.oh;
    let rows_per_block = (PACK_BLOCK_VALUES / k / d.ow).clamp(1, rows.div_ceil(2 * threads).max(1));
    (0..rows.div_ceil(rows_per_block))
        .into_par_iter()
        .for_each(|b| {
            let block = b * rows_per_block..((b + 1) * rows_per_block).min(rows);
            let (j0, width) = (block.start * d.ow, block.len() * d.ow);
            super::gemm::with_scratch(|buffer| {
                let cols = prefix(buffer, k * width);
                unfold_rows(g, d, x, block, cols);
                // SAFETY: each task packs its own columns; `bytes` holds every panel.
                unsafe {
                    pack_columns(
                        cols,
                        width,
                        (k, w.padded_k),
                        (j0, width),
                        codes,
                        dst as *mut u8,
                    )
                };
            })
        });
}

/// Multiplies the packed columns by the weights and writes the dequantised, biased, ReLU'd
/// products into `out` (`O × l`): tasks of a run of panels × a run of row groups.
fn multiply(
    packed: &Packed,
    w: &Int8Weights,
    input: InputCodes,
    bias: &[f32],
    l: usize,
    out: &mut [f32],
) {
    let groups = w.rows().div_ceil(ROWS);
    let threads = rayon::current_num_threads();
    let macs = w.rows() * w.padded_k * l;
    let tasks_wanted = if macs < PARALLEL_MACS { 1 } else { 2 * threads };
    let panel_runs = packed.panels.min(tasks_wanted);
    let row_runs = tasks_wanted.div_ceil(panel_runs).min(groups).max(1);
    let panels_per_run = packed.panels.div_ceil(panel_runs);
    let groups_per_run = groups.div_ceil(row_runs);
    let out_addr = out.as_mut_ptr() as usize;
    let scales: Vec<f32> = w.scales.iter().map(|s| s * input.scale).collect();
    let offsets: Vec<i32> = w
        .row_sums
        .iter()
        .map(|s| s * i32::from(input.zero_point))
        .collect();
    let avx2 = has_avx2();
    (0..panel_runs * row_runs).into_par_iter().for_each(|task| {
        let (pr, rr) = (task / row_runs, task % row_runs);
        let panels = pr * panels_per_run..((pr + 1) * panels_per_run).min(packed.panels);
        let row_groups = rr * groups_per_run..((rr + 1) * groups_per_run).min(groups);
        for p in panels {
            let panel = packed.panel(p);
            let columns = PANEL.min(l - p * PANEL);
            for group in row_groups.clone() {
                let r0 = group * ROWS;
                let codes = &w.codes[r0 * w.padded_k..(r0 + ROWS) * w.padded_k];
                let mut acc = [[0i32; PANEL]; ROWS];
                if avx2 {
                    // SAFETY: AVX2 is present; the slices hold 4 rows and a whole panel.
                    unsafe { avx2::dot_4x16(codes, w.padded_k, panel, &mut acc) };
                } else {
                    scalar_dot_4x16(codes, w.padded_k, panel, &mut acc);
                }
                for (r, row) in acc.iter().enumerate().take(w.rows() - r0) {
                    let o = r0 + r;
                    // SAFETY: row `o`, columns [p·16, p·16 + columns) of `out` belong to this
                    // task alone and lie inside `out` (O × l).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            (out_addr as *mut f32).add(o * l + p * PANEL),
                            columns,
                        )
                    };
                    if avx2 && columns == PANEL {
                        // SAFETY: AVX2 is present; `dst` holds a whole panel's 16 columns.
                        unsafe { avx2::dequantise_16(row, offsets[o], scales[o], bias[o], dst) };
                    } else {
                        for (v, &a) in dst.iter_mut().zip(row) {
                            *v = ((a - offsets[o]) as f32 * scales[o] + bias[o]).max(0.0);
                        }
                    }
                }
            }
        }
    });
}

/// The 4 × 16 dot products of a row group's codes with a panel, without SIMD.
fn scalar_dot_4x16(codes: &[i8], padded_k: usize, panel: &[u8], acc: &mut [[i32; PANEL]; ROWS]) {
    for (r, row) in acc.iter_mut().enumerate() {
        let weights = &codes[r * padded_k..(r + 1) * padded_k];
        for (group, quad) in weights.chunks_exact(4).enumerate() {
            let bytes = &panel[group * GROUP_BYTES..(group + 1) * GROUP_BYTES];
            for (c, a) in row.iter_mut().enumerate() {
                *a += (0..4)
                    .map(|t| i32::from(bytes[c * 4 + t]) * i32::from(quad[t]))
                    .sum::<i32>();
            }
        }
    }
}

/// Whether the AVX2 (+ FMA, for the epilogue) kernels can run.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP_BYTES, PANEL, ROWS};
    use std::arch::x86_64::*;

    /// [`super::scalar_dot_4x16`] with `vpmaddubsw` + `vpmaddwd`.
    ///
    /// # Safety
    /// The CPU must have AVX2; `codes` must hold 4 rows of `padded_k` and `panel` a whole panel.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_4x16(
        codes: &[i8],
        padded_k: usize,
        panel: &[u8],
        acc: &mut [[i32; PANEL]; ROWS],
    ) {
        debug_assert!(codes.len() >= ROWS * padded_k && panel.len() >= padded_k * PANEL);
        let ones = _mm256_set1_epi16(1);
        let mut c = [_mm256_setzero_si256(); 2 * ROWS];
        let x = panel.as_ptr();
        let w = codes.as_ptr();
        for group in 0..padded_k / 4 {
            // SAFETY (all loads): inside `panel` / `codes` by the function's contract.
            let x0 = unsafe { _mm256_loadu_si256(x.add(group * GROUP_BYTES).cast()) };
            let x1 = unsafe { _mm256_loadu_si256(x.add(group * GROUP_BYTES + 32).cast()) };
            for r in 0..ROWS {
                let quad = unsafe {
                    w.add(r * padded_k + group * 4)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let wr = _mm256_set1_epi32(quad);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(x0, wr), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(x1, wr), ones);
                c[2 * r] = _mm256_add_epi32(c[2 * r], p0);
                c[2 * r + 1] = _mm256_add_epi32(c[2 * r + 1], p1);
            }
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: each row holds 16 i32, two vectors.
            unsafe {
                _mm256_storeu_si256(row.as_mut_ptr().cast(), c[2 * r]);
                _mm256_storeu_si256(row.as_mut_ptr().add(8).cast(), c[2 * r + 1]);
            }
        }
    }

    /// Packs the runs of 8 columns in `columns` of four rows (`None`: a padding row of zeros),
    /// each as 8 words of 4 codes, row `t` in byte `t` (the lanes stay where they are, no
    /// shuffle needed), at `dst + offset(first column of the run)`.
    ///
    /// # Safety
    /// The CPU must have AVX2; every row must hold `columns`, whose length is a multiple of 8;
    /// `dst + offset(c)` must be valid for 32 bytes for each run's first column `c`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_runs(
        rows: [Option<&[f32]>; 4],
        columns: std::ops::Range<usize>,
        (inverse_scale, zero_point): (f32, u8),
        dst: *mut u8,
        offset: impl Fn(usize) -> usize,
    ) {
        let scale = _mm256_set1_ps(inverse_scale);
        let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        let zero_code = _mm256_set1_epi32(i32::from(zero_point));
        let rows = rows.map(|r| r.map(|r| &r[columns.clone()]));
        for run in 0..columns.len() / 8 {
            let mut word = zero;
            for (t, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                // SAFETY: the row holds this run's 8 floats.
                let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(8 * run)) };
                // Round to nearest, add the zero point, clamp to 0..=255 (NaN converts to
                // i32::MIN, clamped to 0).
                let q = _mm256_cvtps_epi32(_mm256_mul_ps(v, scale));
                let q = _mm256_add_epi32(q, zero_code);
                let q = _mm256_min_epi32(_mm256_max_epi32(q, zero), top);
                word = _mm256_or_si256(word, _mm256_sllv_epi32(q, _mm256_set1_epi32(8 * t as i32)));
            }
            // SAFETY: valid for 32 bytes (caller's contract).
            unsafe { _mm256_storeu_si256(dst.add(offset(columns.start + 8 * run)).cast(), word) };
        }
    }

    /// `dst[i] = max((acc[i] − offset) · scale + bias, 0)` for a panel's 16 columns.
    ///
    /// # Safety
    /// The CPU must have AVX2; `dst` must hold 16 values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequantise_16(
        acc: &[i32; PANEL],
        offset: i32,
        scale: f32,
        bias: f32,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= PANEL);
        let (s, b, zero) = (
            _mm256_set1_ps(scale),
            _mm256_set1_ps(bias),
            _mm256_setzero_ps(),
        );
        let offset = _mm256_set1_epi32(offset);
        for half in 0..2 {
            // SAFETY: both arrays hold 16 values.
            unsafe {
                let a = _mm256_loadu_si256(acc.as_ptr().add(8 * half).cast());
                let a = _mm256_sub_epi32(a, offset);
                let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), s, b);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8 * half), _mm256_max_ps(v, zero));
            }
        }
    }
}

/// Runs `f` with this thread's packing buffer, which keeps its allocation between calls.
fn with_bytes<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let mut buffer = BYTES.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let out = f(&mut buffer);
    BYTES.with(|b| *b.borrow_mut() = buffer);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_bias_relu;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32) / (1u64 << 24) as f32
    }

    /// Codes whose products are exact in f32, so the int8 convolution must equal the f32
    /// convolution of the dequantised weights and inputs up to the f32 sum's rounding.
    fn case(g: Conv2dGeometry, dims: [usize; 4], o: usize, seed: u64, zero_point: u8) {
        let mut s = seed;
        let [c, n, h, w] = dims;
        let kk = c * g.kernel * g.kernel;
        let weight: Vec<f32> = (0..o * kk).map(|_| lcg(&mut s) * 2.0 - 1.0).collect();
        let bias: Vec<f32> = (0..o).map(|_| lcg(&mut s) - 0.5).collect();
        // Inputs on the code grid of scale 0.02 (some at the lowest code, some at the top one).
        let scale = 0.02;
        let zp = f32::from(zero_point);
        let x: Vec<f32> = (0..c * n * h * w)
            .map(|_| ((lcg(&mut s) * 300.0 - 20.0).clamp(0.0, 255.0).round() - zp) * scale)
            .collect();
        let q = Int8Weights::quantise(&weight, o);
        let (oh, ow) = g.output_hw(h, w);
        let mut got = vec![0f32; o * n * oh * ow];
        let input = InputCodes { scale, zero_point };
        conv_int8_bias_relu(g, &x, dims, &q, input, &bias, &mut got).unwrap();
        let mut want = vec![0f32; got.len()];
        conv_bias_relu(g, &x, dims, &q.dequantised(), &bias, &mut want).unwrap();
        let top = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * top,
                "{i}: {a} vs {b} ({g:?}, {dims:?}, {o})"
            );
        }
    }

    #[test]
    fn int8_convolution_equals_the_f32_one_on_quantised_values() {
        let conv = |kernel, stride, pad| Conv2dGeometry {
            kernel,
            stride,
            pad,
        };
        // Pointwise with ragged rows / k / columns, a 3×3 "same", a strided 7×7 with a signed
        // input (conv1: zero point 128, its padding at the zero point), a 5×5, and products of
        // one column (batch 1 at 1×1) and of a signed pointwise input.
        case(conv(1, 1, 0), [13, 2, 5, 7], 9, 1, 0);
        case(conv(3, 1, 1), [6, 1, 9, 9], 8, 2, 0);
        case(conv(7, 2, 3), [3, 2, 17, 15], 5, 3, 128);
        case(conv(5, 1, 2), [4, 1, 6, 6], 17, 4, 0);
        case(conv(1, 1, 0), [32, 1, 1, 1], 7, 5, 0);
        case(conv(1, 1, 0), [5, 1, 7, 9], 6, 6, 128);
    }

    #[test]
    fn the_simd_and_scalar_products_agree_exactly() {
        if !has_avx2() {
            return;
        }
        let mut s = 7u64;
        let padded_k = 36;
        let codes: Vec<i8> = (0..ROWS * padded_k)
            .map(|_| (lcg(&mut s) * 127.0 - 63.0) as i8)
            .collect();
        let panel: Vec<u8> = (0..padded_k * PANEL)
            .map(|_| (lcg(&mut s) * 255.9) as u8)
            .collect();
        let (mut a, mut b) = ([[0; PANEL]; ROWS], [[0; PANEL]; ROWS]);
        scalar_dot_4x16(&codes, padded_k, &panel, &mut a);
        // SAFETY: AVX2 was detected; the buffers have the sizes the kernel reads.
        unsafe { avx2::dot_4x16(&codes, padded_k, &panel, &mut b) };
        assert_eq!(a, b);
    }

    #[test]
    fn weights_keep_seven_bits_per_row() {
        let weight = [0.75, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, -2.0];
        let q = Int8Weights::quantise(&weight, 2);
        assert_eq!(q.scales, vec![1.0 / 63.0, 2.0 / 63.0]);
        assert_eq!(&q.codes[..4], &[47, -63, 16, 0]);
        assert_eq!(&q.codes[4..8], &[0, 0, 63, -63]);
        // The row of zeros keeps scale 1.
        assert_eq!(Int8Weights::quantise(&[0.0; 3], 1).scales, vec![1.0]);
    }
}
