//! The int8 form of the search graph's points: each normalised vector as its per-vector scale
//! (`max|x| / 127`, four bytes) followed by one signed byte per component, and the distance
//! hnsw_rs walks the graph with, `1 − sa·sb·Σ codes_a·codes_b`. A point takes a quarter of the
//! f32 bytes (1,028 instead of 4,096 at 1024-d); the catalogue rescores the graph's candidates
//! with the exact f32 vectors from the store, so the approximation only decides which items are
//! candidates, never the scores callers see.
//!
//! The scale travels inside the point because hnsw_rs's `Distance` sees nothing but the two
//! slices, and a per-vector scale keeps the error of every vector at half a code step whatever
//! its spread. The code dot product is the hot loop of every graph walk: an AVX2 kernel
//! (full-width `vpmaddwd`; LLVM's own vectorisation of the plain loop used half-width registers)
//! chosen at run time, the plain loop elsewhere, so one binary serves every x86-64 CPU.

use crate::vector::QuantizedVector;
use hnsw_rs::prelude::Distance;

/// Bytes of the scale at the start of every point.
const SCALE_BYTES: usize = 4;

/// The graph point of normalised vector `v`: scale bytes, then the codes.
pub(crate) fn encode(v: &[f32]) -> Vec<i8> {
    let q = QuantizedVector::quantize(v);
    let mut point = Vec::with_capacity(SCALE_BYTES + q.codes.len());
    point.extend(q.scale.to_le_bytes().map(|b| b as i8));
    point.extend(q.codes);
    point
}

/// The scale and codes of a point made by [`encode`].
fn split(point: &[i8]) -> (f32, &[i8]) {
    let (head, codes) = point.split_at(SCALE_BYTES.min(point.len()));
    let mut bytes = [0u8; SCALE_BYTES];
    bytes.iter_mut().zip(head).for_each(|(b, &h)| *b = h as u8);
    (f32::from_le_bytes(bytes), codes)
}

/// `1 − approximate cosine` between two points made by [`encode`], never negative.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScaledInt8Dot;

impl Distance<i8> for ScaledInt8Dot {
    fn eval(&self, va: &[i8], vb: &[i8]) -> f32 {
        let (sa, ca) = split(va);
        let (sb, cb) = split(vb);
        (1.0 - sa * sb * code_dot(ca, cb) as f32).max(0.0)
    }
}

/// Σ a·b over the shorter length, exact in i32 (127² · 2¹⁷ components fit).
fn code_dot(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { code_dot_avx2(a, b) };
    }
    code_dot_plain(a, b)
}

#[inline(always)]
fn code_dot_plain(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// AVX2: 16 codes of each side widened to i16 per step (`vpmovsxbw`), multiplied and summed
/// in pairs into eight i32 lanes (`vpmaddwd`), two steps per iteration; the tail goes the plain way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn code_dot_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 ≤ n, so both 32-byte reads are inside the slices.
        let (a0, b0, a1, b1) = unsafe {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i).cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i + 16).cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16).cast())),
            )
        };
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
        i += 32;
    }
    let acc = _mm256_add_epi32(acc0, acc1);
    let half = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256(acc, 1),
    );
    let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
    let lane = _mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0b01));
    _mm_cvtsi128_si32(lane) + code_dot_plain(&a[i..n], &b[i..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::clustered_vectors;
    use crate::vector::dot;

    #[test]
    fn distance_tracks_the_exact_cosine_within_the_quantisation_bound() {
        let (vectors, _) = clustered_vectors(40, 1024, 4, 1.0, 7);
        let points: Vec<Vec<i8>> = vectors.iter().map(|v| encode(v)).collect();
        for (i, a) in vectors.iter().enumerate() {
            for (j, b) in vectors.iter().enumerate() {
                let exact = 1.0 - dot(a, b);
                let approx = ScaledInt8Dot.eval(&points[i], &points[j]);
                // Each component is off by at most half a step (scale / 2); for unit vectors the
                // dot product moves by at most ≈ (sa·‖b‖₁ + sb·‖a‖₁) / 2.
                let l1 = |v: &[f32]| v.iter().map(|x| x.abs()).sum::<f32>();
                let (sa, _) = split(&points[i]);
                let (sb, _) = split(&points[j]);
                let bound = 0.5 * (sa * l1(b) + sb * l1(a)) + sa * sb * 256.0;
                assert!(
                    (approx - exact.max(0.0)).abs() <= bound,
                    "{i},{j}: {approx} vs {exact} (bound {bound})"
                );
            }
            assert!(ScaledInt8Dot.eval(&points[i], &points[i]) < 0.01);
        }
    }

    #[test]
    fn point_keeps_scale_and_codes() {
        let v = [0.6f32, -0.8, 0.0];
        let point = encode(&v);
        assert_eq!(point.len(), 4 + 3);
        let (scale, codes) = split(&point);
        assert!((scale - 0.8 / 127.0).abs() < 1e-9);
        assert_eq!(codes, &[95, -127, 0]);
    }

    #[test]
    fn vectorised_and_plain_dot_agree() {
        let a: Vec<i8> = (0..1027).map(|i| ((i * 37) % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..1027).map(|i| ((i * 91) % 255 - 127) as i8).collect();
        assert_eq!(code_dot(&a, &b), code_dot_plain(&a, &b));
        assert_eq!(
            code_dot(&a, &a),
            a.iter().map(|&x| i32::from(x).pow(2)).sum::<i32>()
        );
    }
}
