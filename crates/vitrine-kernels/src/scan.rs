//! Streaming passes over many rows: a query's dot products with consecutive rows
//! (the exact search's scan) and a read-only sum (how fast this machine reads
//! memory, the floor such a scan is measured against).
//!
//! Both are bound by memory bandwidth, not arithmetic: a 512-d row is 2 KiB read for
//! 512 fused multiply-adds. What they need is enough independent loads in flight,
//! so each pass keeps several accumulator chains and reads rows front to back (the
//! hardware prefetcher follows sequential streams; software prefetch measured no
//! gain here).

use crate::dot::reduce16 as reduce;
use crate::simd::{self, Level};

/// Rows scored per pass over the query: its loads are shared by four rows, four
/// independent accumulator chains (eight on AVX2's 8-lane halves).
const ROWS: usize = 4;

/// Lanes per accumulator: the same 16 as [`crate::dot::dot`], so that the products
/// and the summation order (and so the result, bit for bit) are the same.
const LANES: usize = 16;

/// `q · r` for [`ROWS`] rows of `q.len()` values each (`rows` holds them back to
/// back), every lane computed as [`crate::dot::dot`] computes it.
#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
fn dot_group<const FMA: bool>(q: &[f32], rows: &[f32]) -> [f32; ROWS] {
    let dim = q.len();
    let (r0, rest) = rows.split_at(dim);
    let (r1, rest) = rest.split_at(dim);
    let (r2, r3) = rest.split_at(dim);
    let r3 = &r3[..dim];
    let mut acc = [[0f32; LANES]; ROWS];
    let chunks = q
        .chunks_exact(LANES)
        .zip(r0.chunks_exact(LANES))
        .zip(r1.chunks_exact(LANES))
        .zip(r2.chunks_exact(LANES))
        .zip(r3.chunks_exact(LANES));
    for ((((x, a), b), c), d) in chunks {
        for (acc, y) in acc.iter_mut().zip([a, b, c, d]) {
            for i in 0..LANES {
                acc[i] = if FMA {
                    x[i].mul_add(y[i], acc[i])
                } else {
                    acc[i] + x[i] * y[i]
                };
            }
        }
    }
    let full = dim - dim % LANES;
    let mut out = [0f32; ROWS];
    for ((o, acc), r) in out.iter_mut().zip(&acc).zip([r0, r1, r2, r3]) {
        let mut tail = 0f32;
        for (x, y) in q[full..].iter().zip(&r[full..]) {
            tail += x * y;
        }
        *o = reduce(acc, tail);
    }
    out
}

/// `q · r` for one row, as [`crate::dot::dot`] computes it.
#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
fn dot_one<const FMA: bool>(q: &[f32], r: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (x, y) in q.chunks_exact(LANES).zip(r.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = if FMA {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let full = q.len() - q.len() % LANES;
    let mut tail = 0f32;
    for (x, y) in q[full..].iter().zip(&r[full..]) {
        tail += x * y;
    }
    reduce(&acc, tail)
}

#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
fn dot_consecutive_impl<const FMA: bool>(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = q.len();
    let mut groups = rows.chunks_exact(ROWS * dim);
    let mut outs = out.chunks_exact_mut(ROWS);
    for (g, o) in (&mut groups).zip(&mut outs) {
        o.copy_from_slice(&dot_group::<FMA>(q, g));
    }
    for (r, o) in groups
        .remainder()
        .chunks_exact(dim)
        .zip(outs.into_remainder())
    {
        *o = dot_one::<FMA>(q, r);
    }
}

/// The scalar tail of one row (the values past the last full 16), summed in
/// [`crate::dot::dot`]'s order.
#[inline]
fn tail(q: &[f32], r: &[f32], full: usize) -> f32 {
    let mut t = 0f32;
    for (x, y) in q[full..].iter().zip(&r[full..q.len()]) {
        t += x * y;
    }
    t
}

/// [`dot_consecutive_impl`]`::<true>` with AVX-512 intrinsics: lane `i` of row `r`'s
/// one 16-lane accumulator is `acc[i]` of [`crate::dot::dot`] (the compiler's own
/// vectorisation of that loop is narrower), so the result is the same bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn dot_consecutive_avx512(q: &[f32], rows: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let dim = q.len();
    let full = dim - dim % LANES;
    assert!(rows.len() >= out.len() * dim, "fewer rows than outputs");
    let load = |s: &[f32], at: usize| -> __m512 {
        assert!(at + LANES <= s.len());
        // SAFETY: the assert just above keeps the 16 values inside `s`.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_ps(s.as_ptr().add(at))
        }
    };
    let finish = |acc: __m512, r: &[f32]| -> f32 {
        let mut lanes = [0f32; LANES];
        // SAFETY: `lanes` holds exactly 16 values.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        }
        reduce(&lanes, tail(q, r, full))
    };
    let mut groups = rows.chunks_exact(ROWS * dim);
    let mut outs = out.chunks_exact_mut(ROWS);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let r: [&[f32]; ROWS] = std::array::from_fn(|i| &g[i * dim..(i + 1) * dim]);
        let mut acc = [_mm512_setzero_ps(); ROWS];
        let mut at = 0;
        while at < full {
            let x = load(q, at);
            for (a, r) in acc.iter_mut().zip(&r) {
                *a = _mm512_fmadd_ps(x, load(r, at), *a);
            }
            at += LANES;
        }
        for ((o, &a), r) in o.iter_mut().zip(&acc).zip(r) {
            *o = finish(a, r);
        }
    }
    for (r, o) in groups
        .remainder()
        .chunks_exact(dim)
        .zip(outs.into_remainder())
    {
        let mut acc = _mm512_setzero_ps();
        let mut at = 0;
        while at < full {
            acc = _mm512_fmadd_ps(load(q, at), load(r, at), acc);
            at += LANES;
        }
        *o = finish(acc, r);
    }
}

/// [`dot_consecutive_impl`]`::<true>` with AVX2 intrinsics: [`crate::dot::dot`]'s 16
/// lanes as two 8-lane halves per row (eight accumulator chains for four rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_consecutive_avx2(q: &[f32], rows: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let dim = q.len();
    let full = dim - dim % LANES;
    assert!(rows.len() >= out.len() * dim, "fewer rows than outputs");
    let load = |s: &[f32], at: usize| -> __m256 {
        assert!(at + 8 <= s.len());
        // SAFETY: the assert just above keeps the 8 values inside `s`.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_ps(s.as_ptr().add(at))
        }
    };
    let finish = |acc: [__m256; 2], r: &[f32]| -> f32 {
        let mut lanes = [0f32; LANES];
        let (lo, hi) = lanes.split_at_mut(8);
        // SAFETY: each half of `lanes` holds exactly 8 values.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(lo.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(hi.as_mut_ptr(), acc[1]);
        }
        reduce(&lanes, tail(q, r, full))
    };
    let mut groups = rows.chunks_exact(ROWS * dim);
    let mut outs = out.chunks_exact_mut(ROWS);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let r: [&[f32]; ROWS] = std::array::from_fn(|i| &g[i * dim..(i + 1) * dim]);
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        let mut at = 0;
        while at < full {
            let (x0, x1) = (load(q, at), load(q, at + 8));
            for (a, r) in acc.iter_mut().zip(&r) {
                a[0] = _mm256_fmadd_ps(x0, load(r, at), a[0]);
                a[1] = _mm256_fmadd_ps(x1, load(r, at + 8), a[1]);
            }
            at += LANES;
        }
        for ((o, &a), r) in o.iter_mut().zip(&acc).zip(r) {
            *o = finish(a, r);
        }
    }
    for (r, o) in groups
        .remainder()
        .chunks_exact(dim)
        .zip(outs.into_remainder())
    {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut at = 0;
        while at < full {
            acc[0] = _mm256_fmadd_ps(load(q, at), load(r, at), acc[0]);
            acc[1] = _mm256_fmadd_ps(load(q, at + 8), load(r, at + 8), acc[1]);
            at += LANES;
        }
        *o = finish(acc, r);
    }
}

/// `out[i] = q · rows[i]` for the `out.len()` rows of `q.len()` values stored back to
/// back in `rows`, each bit for bit equal to [`crate::dot::dot`]`(q, rows[i])`, four
/// rows per pass over `q` with the widest vector instructions this CPU has.
///
/// # Panics
/// When `rows` holds fewer than `out.len()` rows, or `q` is empty while `out` is not.
pub fn dot_consecutive(q: &[f32], rows: &[f32], out: &mut [f32]) {
    let dim = q.len();
    if out.is_empty() {
        return;
    }
    assert!(dim > 0, "an empty query has no rows to score");
    let rows = &rows[..out.len() * dim];
    #[cfg(target_arch = "x86_64")]
    match simd::level() {
        // SAFETY: `level` found AVX-512F/VL, AVX2 and FMA on this CPU.
        #[allow(unsafe_code)]
        Level::Avx512 => return unsafe { dot_consecutive_avx512(q, rows, out) },
        // SAFETY: `level` found AVX2 and FMA on this CPU.
        #[allow(unsafe_code)]
        Level::Avx2 => return unsafe { dot_consecutive_avx2(q, rows, out) },
        Level::Baseline => {}
    }
    dot_consecutive_impl::<false>(q, rows, out);
}

/// The sum of `data` with 64 independent accumulators: a pass that only reads
/// memory, to measure the bandwidth a scan can at best reach (its value is what
/// keeps the compiler from dropping the reads).
pub fn read_sum(data: &[f32]) -> f32 {
    simd::vectorized(
        #[inline(always)]
        || {
            let mut acc = [0f32; 64];
            let mut chunks = data.chunks_exact(64);
            for c in &mut chunks {
                for i in 0..64 {
                    acc[i] += c[i];
                }
            }
            acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::dot;
    use crate::testing::values;

    #[test]
    fn dot_consecutive_is_bit_for_bit_dot_of_each_row() {
        for dim in [1, 3, 15, 16, 17, 31, 64, 100, 512, 515] {
            let q = values(dim, 11);
            for n in [0, 1, 3, 4, 5, 8, 11] {
                let rows = values(dim * n + 7, 12);
                let mut out = vec![f32::NAN; n];
                dot_consecutive(&q, &rows, &mut out);
                for (i, &got) in out.iter().enumerate() {
                    let want = dot(&q, &rows[i * dim..(i + 1) * dim]);
                    assert_eq!(got.to_bits(), want.to_bits(), "dim {dim}, row {i} of {n}");
                }
            }
        }
    }

    #[test]
    fn every_level_is_bit_for_bit_dot() {
        for dim in [1, 15, 16, 17, 100, 512] {
            let q = values(dim, 3);
            let rows = values(dim * 9, 4);
            let want: Vec<u32> = rows
                .chunks_exact(dim)
                .map(|r| dot(&q, r).to_bits())
                .collect();
            let bits = |out: &[f32]| out.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let mut out = vec![0f32; 9];
            if simd::level().fma() {
                // The portable loop is dot's loop: with FMA it is dot on this CPU.
                dot_consecutive_impl::<true>(&q, &rows, &mut out);
                assert_eq!(bits(&out), want, "portable, dim {dim}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.fill(0.0);
                // SAFETY: AVX2 and FMA were just detected.
                #[allow(unsafe_code)]
                unsafe {
                    dot_consecutive_avx2(&q, &rows, &mut out);
                }
                assert_eq!(bits(&out), want, "AVX2, dim {dim}");
            }
            // Without FMA: close to an f64 sum.
            dot_consecutive_impl::<false>(&q, &rows, &mut out);
            for (r, &got) in rows.chunks_exact(dim).zip(&out) {
                let exact: f64 = q
                    .iter()
                    .zip(r)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                assert!((f64::from(got) - exact).abs() < 1e-4, "plain, dim {dim}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "range end index")]
    fn too_few_rows_panic() {
        dot_consecutive(&[1.0, 2.0], &[1.0, 2.0, 3.0], &mut [0.0, 0.0]);
    }

    #[test]
    fn read_sum_adds_every_value() {
        for len in [0, 1, 63, 64, 65, 1000] {
            let v: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
            let want: f32 = v.iter().sum();
            assert_eq!(read_sum(&v), want, "{len}");
        }
    }
}
