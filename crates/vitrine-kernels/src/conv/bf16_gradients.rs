//! The kernel gradient of a conv in bf16 (training with
//! [`Precision::Bf16`](super::Precision::Bf16)): `dW' (K×CKK) = dYᵀ · cols`, both
//! operands rounded to bf16, sums in f32.
//!
//! The reduction runs over the batch's pixels (`M`), the row index of both stored
//! operands, so on AMX tiles one of them is transposed into rows of `M` (the narrower
//! one: fewer values to move) and the other packed into the VNNI pairs of two
//! consecutive rows, chunk by chunk of [`CHUNK`] rows while both stay in cache; each
//! thread sums a share of the rows into its own f32 blocks, added at the end.
//! Without AMX the same rounded products go through the f32 GEMM.

use std::borrow::Cow;

use rayon::prelude::*;

use super::bf16::{accumulate_bf16, amx_available, paired, round_bf16, with_bits};
use super::gemm::{Mat, filled, matmul};
use super::im2col::{im2col, im2col_rows};
use super::{Geom, with_scratch};
use crate::buffer::par_vec;
use crate::simd::vectorized;

/// Rows of `M` packed at a time (a multiple of 32): the transposed operand
/// (`width × CHUNK` bf16) and the paired one stay in L2 between the tile passes.
const CHUNK: usize = 512;

/// A row-major `m × w` operand of the kernel gradient, read chunk by chunk of rows.
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    /// Stored: `dy`, or a 1×1 conv's input.
    Rows(&'a [f32]),
    /// The im2col of a conv's input, made chunk by chunk of whole output rows as the
    /// reduction reaches them (in this thread's scratch, in cache) instead of written
    /// whole to memory and read back: for the stem at 128 px, 115 MB of f32.
    Im2col(&'a [f32], &'a Geom),
}

impl Operand<'_> {
    /// Rows that chunks and thread shares must be multiples of.
    fn row_step(&self) -> usize {
        match self {
            Self::Rows(_) => 1,
            Self::Im2col(_, g) => g.ow.max(1),
        }
    }

    /// `f` on rows `p0..p0 + len` (`w` values each).
    fn rows<R>(&self, w: usize, (p0, len): (usize, usize), f: impl FnOnce(&[f32]) -> R) -> R {
        match *self {
            Self::Rows(data) => f(&data[p0 * w..(p0 + len) * w]),
            Self::Im2col(x, g) => with_scratch([len * w, 0], |cols, _| {
                im2col_rows(x, g, p0 / g.ow, cols, w);
                f(cols)
            }),
        }
    }

    /// All `m` rows at once (the emulation's GEMM).
    fn whole(&self, m: usize, w: usize) -> Cow<'_, [f32]> {
        match *self {
            Self::Rows(data) => Cow::Borrowed(data),
            Self::Im2col(x, g) => {
                let mut cols = vec![0f32; m * w];
                im2col(x, g, &mut cols);
                Cow::Owned(cols)
            }
        }
    }
}

/// `dW' (k × ckk, row-major) = dyᵀ · cols` for `cols (m × ckk)` and `dy (m × k)`,
/// both row-major f32, the products of their bf16 roundings summed in f32.
pub(super) fn kernel_grad_bf16(
    cols: Operand,
    dy: &[f32],
    (m, ckk, k): (usize, usize, usize),
    threads: usize,
) -> Vec<f32> {
    if let Operand::Rows(cols) = cols {
        assert_eq!(cols.len(), m * ckk, "kernel_grad_bf16: cols is not m×ckk");
    }
    assert_eq!(dy.len(), m * k, "kernel_grad_bf16: dy is not m×k");
    if !amx_available() {
        return emulated(&cols.whole(m, ckk), dy, (m, ckk, k), threads);
    }
    // Chunks of whole output rows where the im2col is made by chunks.
    let chunk = (CHUNK / cols.row_step()).max(1) * cols.row_step();
    let dy = Operand::Rows(dy);
    if ckk <= k {
        // colsᵀ · dy = dW'ᵀ (ckk × k), transposed back.
        let t = reduce((cols, ckk), (dy, k), m, chunk, threads);
        transpose(&t, ckk, k)
    } else {
        reduce((dy, k), (cols, ckk), m, chunk, threads)
    }
}

/// `aᵀ · b` (`wa × wb`, row-major) for `a (m × wa)` and `b (m × wb)` on AMX tiles,
/// `chunk` rows at a time (a multiple of both operands' row steps).
fn reduce(
    (a, wa): (Operand, usize),
    (b, wb): (Operand, usize),
    m: usize,
    chunk: usize,
    threads: usize,
) -> Vec<f32> {
    let t = threads.max(1);
    let mut out = vec![0f32; wa * wb];
    if t > 1 && m.div_ceil(chunk) < 2 * t && wb >= 32 * t {
        // A short reduction (a small map): split by rows, each thread would pad its
        // last chunk and the partial outputs would be added; each thread takes a share
        // of the output's columns over all rows instead.
        let share = wb.div_ceil(32 * t) * 32;
        let parts: Vec<(usize, Vec<f32>)> = (0..t)
            .into_par_iter()
            .filter(|i| i * share < wb)
            .map(|i| {
                let c0 = i * share;
                let cols = (c0, share.min(wb - c0));
                (c0, block((a, wa), (b, wb), cols, 0..m, chunk))
            })
            .collect();
        for (c0, part) in parts {
            let cw = share.min(wb - c0);
            let ld = cw.div_ceil(32) * 32;
            for (r, row) in out.chunks_exact_mut(wb).enumerate() {
                row[c0..c0 + cw].copy_from_slice(&part[r * ld..r * ld + cw]);
            }
        }
        return out;
    }
    // Otherwise each thread sums a share of the rows (whole chunks); the partial sums
    // are added.
    let share = m.div_ceil(t).div_ceil(chunk) * chunk;
    let parts: Vec<Vec<f32>> = (0..t)
        .into_par_iter()
        .filter(|i| i * share < m || *i == 0)
        .map(|i| {
            let rows = i * share..((i + 1) * share).min(m);
            block((a, wa), (b, wb), (0, wb), rows, chunk)
        })
        .collect();
    let ld = wb.div_ceil(32) * 32;
    for part in &parts {
        out.par_chunks_exact_mut(wb.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (o, v) in row.iter_mut().zip(&part[r * ld..]) {
                    *o += v;
                }
            });
    }
    out
}

/// `a[rows]ᵀ · b[rows, c0..c0 + cw]` on this thread, `chunk` rows at a time: `wa`
/// rounded up to 32 rows of `cw` rounded up to 32 sums.
fn block(
    (a, wa): (Operand, usize),
    (b, wb): (Operand, usize),
    (c0, cw): (usize, usize),
    rows: std::ops::Range<usize>,
    chunk: usize,
) -> Vec<f32> {
    let (ra, ld, panels) = (wa.div_ceil(32) * 32, cw.div_ceil(32) * 32, cw.div_ceil(16));
    let most = chunk.div_ceil(32) * 32;
    let mut acc = vec![0f32; ra * ld];
    with_bits((ra + panels * 16) * most, |bits| {
        let (at, bt) = bits.split_at_mut(ra * most);
        for p0 in rows.clone().step_by(chunk) {
            let len = chunk.min(rows.end - p0);
            // The tiles' depth: the chunk's rows rounded up to 32, not the whole chunk.
            let depth = len.div_ceil(32) * 32;
            let (at, bt) = (&mut at[..ra * depth], &mut bt[..panels * 16 * depth]);
            a.rows(wa, (p0, len), |a| transposed(a, wa, depth, at));
            b.rows(wb, (p0, len), |b| paired(b, wb, (c0, cw), depth, bt));
            accumulate_bf16(&mut acc, ld, at, bt, cw, depth);
        }
    });
    acc
}

/// `src (len × w, row-major, len ≤ depth)` transposed into `dst`: `w` rows (then zero
/// rows up to a multiple of 32) of `depth` bf16, zeros past `len`.
fn transposed(src: &[f32], w: usize, depth: usize, dst: &mut [u16]) {
    let len = src.len() / w.max(1);
    assert!(len <= depth && depth.is_multiple_of(32));
    assert_eq!(dst.len(), w.div_ceil(32) * 32 * depth);
    assert!(amx_available(), "bf16 packing without AVX512-BF16");
    dst[w * depth..].fill(0);
    // SAFETY: `amx_available()` checked AVX-512F/BW and AVX512-BF16 on this CPU.
    #[allow(unsafe_code)]
    unsafe {
        x86::transposed(src, w, len, depth, dst);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m512, __m512bh, __m512i, _mm512_cvtne2ps_pbh, _mm512_i32gather_ps,
        _mm512_mask_i32gather_ps, _mm512_mullo_epi32, _mm512_set1_epi32, _mm512_setr_epi32,
        _mm512_setzero_ps, _mm512_storeu_si512,
    };

    use crate::conv::bf16::first_lanes;

    /// [`super::transposed`] after its padding rows: each channel's 32 pixels at a
    /// time, gathered from 32 rows of `src` (16 per gather, none past `len`) and
    /// rounded to bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn transposed(src: &[f32], w: usize, len: usize, depth: usize, dst: &mut [u16]) {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let stride = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(w as i32));
        let half = |first: usize, c: usize| -> __m512 {
            let mask = first_lanes(len.saturating_sub(first));
            if mask == 0 {
                return _mm512_setzero_ps();
            }
            // SAFETY: lane r reads src[(first + r)·w + c] only where the mask keeps
            // it (first + r < len, c < w): inside `src`.
            #[allow(unsafe_code)]
            unsafe {
                let base = src.as_ptr().add(first * w + c).cast();
                if mask == u16::MAX {
                    _mm512_i32gather_ps::<4>(stride, base)
                } else {
                    _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, stride, base)
                }
            }
        };
        for p0 in (0..depth).step_by(32) {
            for c in 0..w {
                let v = _mm512_cvtne2ps_pbh(half(p0 + 16, c), half(p0, c));
                // SAFETY: 32 u16 of row c, columns p0..p0+32 of `dst`, which holds w
                // rows of `depth` (asserted by the caller).
                #[allow(unsafe_code)]
                unsafe {
                    _mm512_storeu_si512(
                        dst.as_mut_ptr().add(c * depth + p0).cast(),
                        std::mem::transmute::<__m512bh, __m512i>(v),
                    );
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn transposed(_: &[f32], _: usize, _: usize, _: usize, _: &mut [u16]) {
        unreachable!("bf16 kernel gradients run on AMX tiles only where AMX is available")
    }
}

/// `t (r × c)` transposed, row-major, by 32×32 blocks (both sides in cache), rows of
/// the output in parallel.
fn transpose(t: &[f32], r: usize, c: usize) -> Vec<f32> {
    assert_eq!(t.len(), r * c, "transpose: not r×c");
    par_vec(r * c, (32 * r).max(1), |b, out| {
        let j0 = b * 32;
        vectorized(
            #[inline(always)]
            || {
                for i0 in (0..r).step_by(32) {
                    let i1 = (i0 + 32).min(r);
                    for (jj, row) in out.chunks_exact_mut(r.max(1)).enumerate() {
                        let j = j0 + jj;
                        for (i, o) in (i0..i1).zip(&mut row[i0..i1]) {
                            *o = t[i * c + j];
                        }
                    }
                }
            },
        );
    })
}

/// [`kernel_grad_bf16`] without AMX: the rounded operands through the f32 GEMM.
fn emulated(
    cols: &[f32],
    dy: &[f32],
    (m, ckk, k): (usize, usize, usize),
    threads: usize,
) -> Vec<f32> {
    let rc: Vec<f32> = cols.par_iter().map(|&v| round_bf16(v)).collect();
    let rd: Vec<f32> = dy.par_iter().map(|&v| round_bf16(v)).collect();
    filled(k * ckk, |dw| {
        matmul(
            (ckk, k, m),
            dw,
            (1, ckk),
            &Mat::rows_t(&rc, ckk),
            &Mat::rows(&rd, k),
            threads,
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rel_err, values};

    #[test]
    fn the_bf16_kernel_gradient_sums_the_rounded_products() {
        // Narrow and wide sides either way, widths off the 16/32 blocks, rows off the
        // chunks and the 32-row steps, one row, several shares.
        let shapes = [
            (1, 3, 5),
            (37, 19, 64),
            (700, 64, 16),
            (1100, 147, 64),
            (2000, 96, 33),
            (513, 40, 40),
        ];
        for (case, &(m, ckk, k)) in shapes.iter().enumerate() {
            let cols = values(m * ckk, 5 + case as u64);
            let dy = values(m * k, 50 + case as u64);
            let want: Vec<f64> = (0..k * ckk)
                .map(|e| {
                    let (j, i) = (e / ckk, e % ckk);
                    (0..m)
                        .map(|p| {
                            f64::from(round_bf16(dy[p * k + j]))
                                * f64::from(round_bf16(cols[p * ckk + i]))
                        })
                        .sum()
                })
                .collect();
            for threads in [1, 2, 3] {
                let got = kernel_grad_bf16(Operand::Rows(&cols), &dy, (m, ckk, k), threads);
                let err = rel_err(&got, &want);
                assert!(err < 1e-5, "case {case} threads {threads}: {err}");
                if amx_available() {
                    let e = emulated(&cols, &dy, (m, ckk, k), threads);
                    assert!(rel_err(&e, &want) < 1e-5, "case {case}: emulation");
                }
            }
            // The rounding shows: the f32 product is another one.
            let exact: Vec<f64> = (0..k * ckk)
                .map(|e| {
                    let (j, i) = (e / ckk, e % ckk);
                    (0..m)
                        .map(|p| f64::from(dy[p * k + j]) * f64::from(cols[p * ckk + i]))
                        .sum()
                })
                .collect();
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert!(rel_err(&want32, &exact) > 1e-4, "case {case}: rounding");
        }
    }

    #[test]
    fn the_im2col_operand_is_made_by_whole_output_rows() {
        // 7 output columns (no power of two: chunks of 511 rows), stride 2, padding;
        // the stem's 7×7 on a small image.
        for (dims, kernel, stride, pad) in [
            ([3, 14, 14, 5], [6, 5, 3, 3], 2, 1),
            ([2, 30, 30, 3], [8, 3, 7, 7], 2, 3),
        ] {
            let g = Geom::new(&dims, &kernel, stride, pad).expect("geometry");
            let (m, ckk, k) = (g.m(), g.ckk(), g.k);
            let x = values(dims.iter().product(), 7);
            let dy = values(m * k, 8);
            let mut full = vec![0f32; m * ckk];
            im2col(&x, &g, &mut full);
            let op = Operand::Im2col(&x, &g);
            let step = op.row_step();
            for p0 in (0..m).step_by(step * 3) {
                let len = (2 * step).min(m - p0);
                op.rows(ckk, (p0, len), |r| {
                    assert_eq!(r, &full[p0 * ckk..(p0 + len) * ckk]);
                });
            }
            for threads in [1, 2] {
                let by_chunks = kernel_grad_bf16(op, &dy, (m, ckk, k), threads);
                let stored = kernel_grad_bf16(Operand::Rows(&full), &dy, (m, ckk, k), threads);
                let want: Vec<f64> = stored.iter().map(|&v| f64::from(v)).collect();
                assert!(
                    rel_err(&by_chunks, &want) < 1e-6,
                    "{dims:?} threads {threads}"
                );
                // The emulation (CPUs without AMX) takes the whole im2col at once.
                let whole = emulated(&op.whole(m, ckk), &dy, (m, ckk, k), threads);
                assert!(rel_err(&whole, &want) < 1e-5, "{dims:?}: emulation");
            }
        }
    }
}
