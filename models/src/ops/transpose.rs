//! Strided matrix transposition in 8×8 blocks, with AVX shuffles where the CPU has them.
//!
//! The Winograd convolution turns input rows from channel-major to pixel-major and its output
//! back: a scalar copy there costs a load and a store per value, one of them 8 or more values
//! away from the last; AVX transposes each 8×8 block in registers (8 loads, 24 shuffles, 8
//! stores), the blocks at the edges with masked loads and stores.

/// Copies the `rows × cols` matrix at `src` (rows `src_stride` values apart) transposed to
/// `dst` (rows `dst_stride` values apart): `dst[j·dst_stride + i] = src[i·src_stride + j]`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes at every such index, the two regions
/// must not overlap, and no other thread may write `dst`'s values meanwhile.
pub(crate) unsafe fn transpose(
    src: *const f32,
    src_stride: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX; the regions are the caller's promise.
        return unsafe { avx::transpose(src, src_stride, (rows, cols), dst, dst_stride) };
    }
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: inside both regions (the caller's promise).
            unsafe { *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// Lane masks for `_mm256_maskload_ps`/`_mm256_maskstore_ps`: row `n` enables lanes `< n`.
    static MASKS: [[i32; 8]; 9] = {
        let mut masks = [[0; 8]; 9];
        let mut n = 0;
        while n <= 8 {
            let mut lane = 0;
            while lane < n {
                masks[n][lane] = -1;
                lane += 1;
            }
            n += 1;
        }
        masks
    };

    /// [`super::transpose`] with AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose(
        src: *const f32,
        src_stride: usize,
        (rows, cols): (usize, usize),
        dst: *mut f32,
        dst_stride: usize,
    ) {
        for i in (0..rows).step_by(8) {
            for j in (0..cols).step_by(8) {
                let (r, c) = ((rows - i).min(8), (cols - j).min(8));
                // SAFETY: the block's r×c values lie inside both regions.
                unsafe {
                    let from = src.add(i * src_stride + j);
                    let to = dst.add(j * dst_stride + i);
                    block(from, src_stride, (r, c), to, dst_stride);
                }
            }
        }
    }

    /// Transposes one block of `r × c` values (both at most 8).
    #[target_feature(enable = "avx")]
    unsafe fn block(src: *const f32, ss: usize, (r, c): (usize, usize), dst: *mut f32, ds: usize) {
        // SAFETY (all loads and stores): rows < r of src and rows < c of dst, each masked to
        // its first c (resp. r) lanes, lie inside the regions (the caller's promise).
        unsafe {
            let load_mask = _mm256_loadu_si256(MASKS[c].as_ptr().cast());
            let load = |k: usize| {
                if k >= r {
                    _mm256_setzero_ps()
                } else if c == 8 {
                    _mm256_loadu_ps(src.add(k * ss))
                } else {
                    _mm256_maskload_ps(src.add(k * ss), load_mask)
                }
            };
            let (r0, r1, r2, r3) = (load(0), load(1), load(2), load(3));
            let (r4, r5, r6, r7) = (load(4), load(5), load(6), load(7));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let columns = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            let store_mask = _mm256_loadu_si256(MASKS[r].as_ptr().cast());
            for (k, column) in columns.into_iter().take(c).enumerate() {
                if r == 8 {
                    _mm256_storeu_ps(dst.add(k * ds), column);
                } else {
                    _mm256_maskstore_ps(dst.add(k * ds), store_mask, column);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape from 1×1 to 19×17, inside larger strided buffers whose other values must
    /// stay untouched.
    #[test]
    fn transposes_strided_blocks_and_edges() {
        for rows in 1..20 {
            for cols in 1..18 {
                let (ss, ds) = (cols + 3, rows + 5);
                let src: Vec<f32> = (0..rows * ss).map(|v| v as f32).collect();
                let mut dst = vec![-1f32; cols * ds];
                // SAFETY: src holds rows rows of ss ≥ cols values, dst cols rows of ds ≥ rows.
                unsafe { transpose(src.as_ptr(), ss, (rows, cols), dst.as_mut_ptr(), ds) };
                for j in 0..cols {
                    for i in 0..ds {
                        let expected = if i < rows { src[i * ss + j] } else { -1.0 };
                        assert_eq!(dst[j * ds + i], expected, "{rows}×{cols} at ({j}, {i})");
                    }
                }
            }
        }
    }
}
