//! The matrix products every convolution runs, shared by the training ops and the inference
//! kernels: `gemm` views, column-blocked products with a per-row epilogue, the long-inner-dimension
//! product of kernel gradients, a parallel transpose, and per-thread scratch buffers.

use gemm::Parallelism;
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;

/// `dst[i] += src[i]`.
#[multiversion(targets = "simd")]
pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
    for (v, x) in dst.iter_mut().zip(src) {
        *v += x;
    }
}

/// A matrix view for `gemm`: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
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
    pub(crate) fn rows(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }
    pub(crate) fn transposed(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
    /// The view starting `rows` rows and `cols` columns further.
    pub(crate) fn offset(self, rows: usize, cols: usize) -> Self {
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
pub(crate) unsafe fn gemm_into(
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
pub(crate) fn matmul_then(
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
pub(crate) fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) {
    matmul_then(dst, (m, n, k), lhs, rhs, |_, _| {});
}

/// Like [`matmul`] for a small product over a long inner dimension (the kernel gradient: `k` is
/// every pixel of the batch): each thread reduces its own share of `k` into a partial product,
/// and the partials are summed.
pub(crate) fn matmul_long_k(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) {
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
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
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
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    thread_local! {
        static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }
    let mut buffer = BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default();
    let result = f(&mut buffer);
    BUFFERS.with(|b| b.borrow_mut().push(buffer));
    result
}

/// Width of the column blocks a product with `rows`×`columns` output is split into (about
/// 512 KiB of output each, so a block's epilogue runs while it is in cache, and at least two
/// blocks per thread); `None` when there are too few columns for that.
pub(crate) fn column_block(rows: usize, columns: usize, threads: usize) -> Option<usize> {
    const BLOCK_FLOATS: usize = 1 << 17; // 512 KiB of output per block
    let by_cache = (BLOCK_FLOATS / rows.max(1)).max(64) / 16 * 16;
    let by_balance = columns.div_ceil(2 * threads).div_ceil(16) * 16;
    let block = by_cache.min(by_balance);
    (columns >= 2 * threads * 32).then_some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
