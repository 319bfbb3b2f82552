//! Dot products for the index (HNSW distances, exact re-rank, int8 shortlists),
//! through the crate's one SIMD dispatch ([`crate::simd::dispatch`]).

use crate::simd::{self, Level};

/// 16 independent accumulators (vectorised by the compiler), fused multiply-adds
/// when `FMA` (only where the CPU has them: `mul_add` is a slow library call
/// otherwise); the tail is summed separately. The summation order is fixed, so the
/// result is the same on every level that has FMA.
#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
fn dot_impl<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] = if FMA {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    reduce16(&acc, tail)
}

/// The final sum of [`dot`]'s 16 lanes and its scalar tail, in its fixed order
/// (shared with [`crate::scan`], whose scores must equal [`dot`]'s bit for bit).
#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
pub(crate) fn reduce16(acc: &[f32; 16], tail: f32) -> f32 {
    let mut s8 = [0f32; 8];
    for i in 0..8 {
        s8[i] = acc[i] + acc[i + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

/// Integer dot product of `i8` codes, 32 `i32` accumulators (exact on every level).
#[allow(clippy::inline_always)] // inlined into the dispatch's target-feature function
#[inline(always)]
fn dot_i8_impl(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 32];
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..32 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let mut tail = 0i32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += i32::from(*x) * i32::from(*y);
    }
    acc.iter().sum::<i32>() + tail
}

/// Dot product of two equally long slices (the longer one is cut), with the widest
/// vector instructions this CPU has.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd::dispatch(
        #[inline(always)]
        |level: Level| {
            if level.fma() {
                dot_impl::<true>(a, b)
            } else {
                dot_impl::<false>(a, b)
            }
        },
    )
}

/// Asks the CPU to start loading every cache line of `s` (a hint: results never
/// depend on it).
#[inline]
pub fn prefetch<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(s);
        let p = s.as_ptr().cast::<i8>();
        let mut at = 0;
        while at < bytes {
            // SAFETY: `at < bytes`, so the address lies inside `s`; a prefetch never
            // faults and changes no data (SSE, baseline on x86-64).
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p.add(at));
            }
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

/// `q · r` for four rows `r` (each at least `q.len()` long) with AVX-512: two
/// accumulators per row (eight independent chains of fused multiply-adds), the loads
/// of `q` shared.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot4_avx512(q: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps,
        _mm512_setzero_ps,
    };
    let n = q.len();
    assert!(
        rows.iter().all(|r| r.len() >= n),
        "a row is shorter than the query"
    );
    let load = |s: &[f32], at: usize| -> __m512 {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: every caller below passes `at + 16 <= n <= s.len()`.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_ps(s.as_ptr().add(at))
        }
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
    let mut at = 0;
    while at + 32 <= n {
        let (x0, x1) = (load(q, at), load(q, at + 16));
        for (a, r) in acc.iter_mut().zip(&rows) {
            a[0] = _mm512_fmadd_ps(x0, load(r, at), a[0]);
            a[1] = _mm512_fmadd_ps(x1, load(r, at + 16), a[1]);
        }
        at += 32;
    }
    if at + 16 <= n {
        let x0 = load(q, at);
        for (a, r) in acc.iter_mut().zip(&rows) {
            a[0] = _mm512_fmadd_ps(x0, load(r, at), a[0]);
        }
        at += 16;
    }
    let mut out = [0f32; 4];
    for ((o, a), r) in out.iter_mut().zip(&acc).zip(&rows) {
        let tail: f32 = q[at..].iter().zip(&r[at..n]).map(|(x, y)| x * y).sum();
        *o = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1])) + tail;
    }
    out
}

/// `q · r` (`r` at least `q.len()` long) with AVX-512: four accumulator chains.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot1_avx512(q: &[f32], r: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps,
        _mm512_setzero_ps,
    };
    let n = q.len();
    assert!(r.len() >= n, "the row is shorter than the query");
    let load = |s: &[f32], at: usize| -> __m512 {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: every caller below passes `at + 16 <= n <= s.len()`.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_ps(s.as_ptr().add(at))
        }
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut at = 0;
    while at + 64 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(load(q, at + 16 * k), load(r, at + 16 * k), *a);
        }
        at += 64;
    }
    while at + 16 <= n {
        acc[0] = _mm512_fmadd_ps(load(q, at), load(r, at), acc[0]);
        at += 16;
    }
    let tail: f32 = q[at..].iter().zip(&r[at..n]).map(|(x, y)| x * y).sum();
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + tail
}

/// [`dot`] of `q` with rows `ids` of `data` (`dim` values per row) into `out`: on
/// AVX-512, four rows at a time with eight accumulator chains, the next rows
/// prefetched while these are summed (equal to [`dot`] up to rounding); elsewhere
/// [`dot`] per row.
///
/// # Panics
/// When a row lies outside `data`, `q` is shorter than `dim`, or `out` is shorter
/// than `ids`.
pub fn dot_rows(q: &[f32], data: &[f32], dim: usize, ids: &[u32], out: &mut [f32]) {
    let out = &mut out[..ids.len()];
    let q = &q[..dim];
    let row = |id: u32| &data[id as usize * dim..(id as usize + 1) * dim];
    #[cfg(target_arch = "x86_64")]
    if simd::level() == Level::Avx512 {
        for &id in ids.iter().take(4) {
            prefetch(row(id));
        }
        for (g, (chunk, o)) in ids.chunks(4).zip(out.chunks_mut(4)).enumerate() {
            for &id in ids.iter().skip(4 * g + 4).take(4) {
                prefetch(row(id));
            }
            if let &[a, b, c, d] = chunk {
                // SAFETY: `level` found AVX-512F on this CPU.
                #[allow(unsafe_code)]
                let r = unsafe { dot4_avx512(q, [row(a), row(b), row(c), row(d)]) };
                o.copy_from_slice(&r);
            } else {
                for (o, &id) in o.iter_mut().zip(chunk) {
                    // SAFETY: `level` found AVX-512F on this CPU.
                    #[allow(unsafe_code)]
                    let r = unsafe { dot1_avx512(q, row(id)) };
                    *o = r;
                }
            }
        }
        return;
    }
    for (o, &id) in out.iter_mut().zip(ids) {
        *o = dot(q, row(id));
    }
}

/// Dot product of two `i8` code vectors (the longer one is cut).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    simd::vectorized(
        #[inline(always)]
        || dot_i8_impl(a, b),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn dot_matches_an_f64_sum_on_every_length() {
        for len in [0, 1, 15, 16, 17, 100, 512, 1000] {
            let a = values(len, 1);
            let b = values(len + 3, 2);
            let exact: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            let got = dot(&a, &b);
            assert!(
                (f64::from(got) - exact).abs() < 1e-4,
                "{len}: {got} vs {exact}"
            );
            // The same summation order on every level with FMA, and without.
            let plain = dot_impl::<false>(&a, &b);
            assert!((got - plain).abs() < 1e-4, "{len}");
        }
    }

    #[test]
    fn dot_i8_is_exact() {
        for len in [0, 1, 31, 32, 33, 300] {
            let a: Vec<i8> = (0..len).map(|i| (i * 37 % 255) as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| (i * 91 % 253) as i8).collect();
            let exact: i32 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
            assert_eq!(dot_i8(&a, &b), exact, "{len}");
            assert_eq!(dot_i8(&a, &b[..len / 2]), dot_i8(&a[..len / 2], &b));
        }
    }

    #[test]
    fn dot_rows_matches_dot() {
        for dim in [1, 15, 16, 17, 64, 100, 512] {
            let data = values(dim * 11, 5);
            let q = values(dim, 6);
            for len in 0..=11u32 {
                let ids: Vec<u32> = (0..len).map(|i| (i * 7 + 3) % 11).collect();
                let mut out = vec![f32::NAN; ids.len()];
                dot_rows(&q, &data, dim, &ids, &mut out);
                for (&id, &got) in ids.iter().zip(&out) {
                    let s = id as usize * dim;
                    let want = dot(&q, &data[s..s + dim]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{got} vs {want}"
                    );
                }
            }
        }
        prefetch(&[0f32; 0]);
        prefetch(&values(100, 1));
    }
}
