//! The GEMM wrapper of the conv kernels: `dst = lhs · rhs` over strided f32 slices
//! through the `gemm` crate, writing into possibly uninitialised buffers.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A dense matrix operand: data with row and column strides (in elements).
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with `cols` columns.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    /// Element `(i, j)`.
    pub(crate) fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Row `i` as a slice of `cols` elements, when the columns are adjacent.
    pub(crate) fn row(&self, i: usize, cols: usize) -> Option<&'a [f32]> {
        (self.cs == 1).then(|| &self.data[i * self.rs..i * self.rs + cols])
    }

    /// Column `j` as a slice of `rows` elements, when the rows are adjacent.
    pub(crate) fn column(&self, j: usize, rows: usize) -> Option<&'a [f32]> {
        (self.rs == 1).then(|| &self.data[j * self.cs..j * self.cs + rows])
    }

    /// The data, when this is exactly a dense row-major `rows×cols` matrix.
    pub(crate) fn dense_rows(&self, rows: usize, cols: usize) -> Option<&'a [f32]> {
        (self.cs == 1 && self.rs == cols && self.data.len() == rows * cols).then_some(self.data)
    }

    /// Whether this is `rows×cols` with adjacent columns, inside its slice.
    pub(crate) fn unit_columns(&self, rows: usize, cols: usize) -> bool {
        self.cs == 1 && fits(rows, cols, self.rs, self.cs, self.data.len())
    }

    /// The rows from `first` on.
    pub(crate) fn rows_from(&self, first: usize) -> Mat<'a> {
        Mat {
            data: &self.data[first * self.rs..],
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Largest index `(rows-1)·rs + (cols-1)·cs` must fall inside a slice of length `len`.
fn fits(rows: usize, cols: usize, rs: usize, cs: usize, len: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, writing every element of `dst` (stored with
/// strides `(dst_rs, dst_cs)`) and reading none, so it may start uninitialised;
/// `threads` > 1 parallelises.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    (dst_rs, dst_cs): (usize, usize),
    lhs: &Mat,
    rhs: &Mat,
    threads: usize,
) {
    assert!(
        fits(m, n, dst_rs, dst_cs, dst.len()),
        "matmul: dst out of bounds"
    );
    assert!(
        fits(m, k, lhs.rs, lhs.cs, lhs.data.len()),
        "matmul: lhs out of bounds"
    );
    assert!(
        fits(k, n, rhs.rs, rhs.cs, rhs.data.len()),
        "matmul: rhs out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_rs + j * dst_cs].write(0.0);
            }
        }
        return;
    }
    if threads > 1 && dst_cs == 1 && dst_rs == n && m >= SPLIT_ROWS_MIN {
        // Row blocks on separate threads, each GEMM single-threaded: 2–8% faster than
        // the `gemm` crate's own parallelism on every ResNet50 layer measured.
        let share = m.div_ceil(threads);
        dst[..m * n]
            .par_chunks_mut(share * n)
            .enumerate()
            .for_each(|(i, d)| {
                let part = Mat {
                    data: &lhs.data[i * share * lhs.rs..],
                    rs: lhs.rs,
                    cs: lhs.cs,
                };
                matmul((d.len() / n, n, k), d, (n, 1), &part, rhs, 1);
            });
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element `gemm` reads (`lhs`, `rhs`) or writes
    // (`dst`) inside its slice; `dst` is borrowed mutably, so it aliases neither operand;
    // strides are small positive element counts (slices never exceed `isize::MAX`
    // bytes); `read_dst = false`, so `dst`'s old (possibly uninitialised) contents are
    // never read, and `gemm` then writes all m×n elements (`dst = lhs·rhs`).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst` filled by `fill`, which must write every element (as [`matmul`] does for an
/// m×n row-major `dst` exactly m·n long, and `bf16::matmul_bf16` likewise), then as
/// the floats written.
pub(crate) fn written(
    dst: &mut [MaybeUninit<f32>],
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> &mut [f32] {
    fill(dst);
    // SAFETY: `fill` initialised every element (the contract above: each caller passes
    // the whole slice as a GEMM destination of exactly its length); `MaybeUninit<f32>`
    // has `f32`'s layout.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(dst) as *mut [f32])
    }
}

/// A vector of `len` floats filled by `fill`, which must write every element (as
/// [`matmul`] does): no zeroing pass first.
pub(crate) fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (the contract above; every caller
    // passes the whole slice as a GEMM destination of exactly `len` elements).
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(len);
    }
    v
}

/// `s` as a destination for [`matmul`].
pub(crate) fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the slice is only written with
    // initialised floats (by `matmul`), so `s` stays initialised.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(std::ptr::from_mut::<[f32]>(s) as *mut [MaybeUninit<f32>])
    }
}

/// Fewest GEMM rows split across threads by [`matmul`].
const SPLIT_ROWS_MIN: usize = 512;
