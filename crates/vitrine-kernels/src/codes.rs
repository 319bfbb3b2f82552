//! Dot products of 8-bit codes for the index's graph walk: an `i8` query against
//! rows stored as `u8` (`code + 128`), exact on every level.
//!
//! Rows are stored offset to unsigned because that is the unsigned operand of
//! AVX-512 VNNI's `vpdpbusd` (64 `u8 × i8` products summed into 16 `i32` lanes per
//! instruction); the offset comes back out as one constant per query,
//! `q · (r − 128) = q · r − 128 · Σq`. Levels:
//!
//! - **AVX-512 VNNI** (Intel since Cascade Lake, AMD Zen 4): `vpdpbusd`, the row's
//!   tail through a masked load, so any length runs without a scalar loop.
//! - **AVX2**: the query widened once to `i16` ([`CodeQuery`]), rows zero-extended
//!   16 bytes at a time (`vpmovzxbw`) into `vpmaddwd` (AMD Zen 2/3 and older Intel).
//! - **Scalar** elsewhere.
//!
//! [`dot_code_rows`] scores several rows for one query, four at a time sharing the
//! query's loads, with the next rows' cache lines prefetched while these are summed:
//! a graph walk's rows are scattered, so their loads from memory dominate.

use crate::dot::prefetch;
use crate::simd::{self, Level};

/// What is added to an `i8` code to store it as `u8`.
pub const CODE_OFFSET: u8 = 128;

/// The stored form of code `c`.
#[inline]
pub fn stored(c: i8) -> u8 {
    (c as u8) ^ CODE_OFFSET
}

/// An `i8` query prepared for every level: the codes, their `i16` widening (AVX2) and
/// the offset's constant `128 · Σq`.
#[derive(Debug, Clone, Default)]
pub struct CodeQuery {
    /// The codes' bytes (two's complement), as VNNI loads them.
    bytes: Vec<u8>,
    q16: Vec<i16>,
    bias: i32,
}

impl CodeQuery {
    pub fn new(q: &[i8]) -> Self {
        let sum: i32 = q.iter().map(|&x| i32::from(x)).sum();
        Self {
            bytes: q.iter().map(|&x| x as u8).collect(),
            q16: q.iter().map(|&x| i16::from(x)).collect(),
            bias: i32::from(CODE_OFFSET) * sum,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The vector level the code kernels run at (detected once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeLevel {
    Scalar,
    Avx2,
    Vnni,
}

fn code_level() -> CodeLevel {
    if simd::vnni() {
        CodeLevel::Vnni
    } else if simd::level() != Level::Baseline {
        CodeLevel::Avx2
    } else {
        CodeLevel::Scalar
    }
}

/// `Σ q[i] · (row[i] − 128)`, plain Rust (the reference the others must equal).
fn dot_scalar(q: &CodeQuery, row: &[u8]) -> i32 {
    let row = &row[..q.len()];
    q.q16
        .iter()
        .zip(row)
        .map(|(&x, &y)| i32::from(x) * (i32::from(y) - i32::from(CODE_OFFSET)))
        .sum()
}

/// `q · (r − 128)` for `R` rows (each at least `q.len()` long) with VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_vnni<const R: usize>(q: &CodeQuery, rows: [&[u8]; R]) -> [i32; R] {
    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_maskz_loadu_epi8,
        _mm512_reduce_add_epi32, _mm512_setzero_si512,
    };
    let n = q.len();
    assert!(
        rows.iter().all(|r| r.len() >= n),
        "a row is shorter than the query"
    );
    let full = |s: &[u8], at: usize| -> __m512i {
        debug_assert!(at + 64 <= s.len());
        // SAFETY: callers pass `at + 64 <= n <= s.len()`; unaligned loads are allowed.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_si512(s.as_ptr().add(at).cast())
        }
    };
    let part = |s: *const u8, at: usize| -> __m512i {
        let mask = u64::MAX >> (64 - (n - at));
        // SAFETY: `n - at` is in 1..64 and `s` points at a slice at least `n` long;
        // a masked load reads (and may fault on) only the bytes its mask selects,
        // `at..n` here.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_maskz_loadu_epi8(mask, s.add(at).cast())
        }
    };
    let mut acc = [_mm512_setzero_si512(); R];
    let mut at = 0;
    while at + 64 <= n {
        let x = full(&q.bytes, at);
        for (a, r) in acc.iter_mut().zip(&rows) {
            *a = _mm512_dpbusd_epi32(*a, full(r, at), x);
        }
        at += 64;
    }
    if at < n {
        let x = part(q.bytes.as_ptr(), at);
        for (a, r) in acc.iter_mut().zip(&rows) {
            *a = _mm512_dpbusd_epi32(*a, part(r.as_ptr(), at), x);
        }
    }
    acc.map(|a| _mm512_reduce_add_epi32(a) - q.bias)
}

/// `q · (r − 128)` for `R` rows (each at least `q.len()` long) with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2<const R: usize>(q: &CodeQuery, rows: [&[u8]; R]) -> [i32; R] {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32, _mm_loadu_si128,
        _mm256_add_epi32, _mm256_castsi256_si128, _mm256_cvtepu8_epi16, _mm256_extracti128_si256,
        _mm256_loadu_si256, _mm256_madd_epi16, _mm256_setzero_si256,
    };
    let n = q.len();
    assert!(
        rows.iter().all(|r| r.len() >= n),
        "a row is shorter than the query"
    );
    let bytes = |s: &[u8], at: usize| -> __m128i {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: callers pass `at + 16 <= n <= s.len()`.
        #[allow(unsafe_code)]
        unsafe {
            _mm_loadu_si128(s.as_ptr().add(at).cast())
        }
    };
    let words = |s: &[i16], at: usize| -> __m256i {
        debug_assert!(at + 16 <= s.len());
        // SAFETY: callers pass `at + 16 <= n = s.len()`.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_si256(s.as_ptr().add(at).cast())
        }
    };
    let mut acc = [_mm256_setzero_si256(); R];
    let mut at = 0;
    while at + 16 <= n {
        let x = words(&q.q16, at);
        for (a, r) in acc.iter_mut().zip(&rows) {
            let y = _mm256_cvtepu8_epi16(bytes(r, at));
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(x, y));
        }
        at += 16;
    }
    let mut out = [0i32; R];
    for ((o, a), r) in out.iter_mut().zip(&acc).zip(&rows) {
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(*a),
            _mm256_extracti128_si256::<1>(*a),
        );
        let s = _mm_hadd_epi32(s, s);
        let s = _mm_hadd_epi32(s, s);
        let tail: i32 = q.q16[at..]
            .iter()
            .zip(&r[at..n])
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        *o = _mm_cvtsi128_si32(s) + tail - q.bias;
    }
    out
}

/// Scores `R` rows at the detected level.
#[inline]
fn dot_many<const R: usize>(level: CodeLevel, q: &CodeQuery, rows: [&[u8]; R]) -> [i32; R] {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `code_level` found AVX-512F/BW and VNNI on this CPU.
        #[allow(unsafe_code)]
        CodeLevel::Vnni => unsafe { dot_vnni(q, rows) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `code_level` found AVX2 on this CPU.
        #[allow(unsafe_code)]
        CodeLevel::Avx2 => unsafe { dot_avx2(q, rows) },
        _ => rows.map(|r| dot_scalar(q, r)),
    }
}

/// `Σ q[i] · (row[i] − 128)` over the query's length: the dot product of the query's
/// codes with the codes stored in `row` (at least `q.len()` long).
///
/// # Panics
/// When `row` is shorter than the query.
pub fn dot_code(q: &CodeQuery, row: &[u8]) -> i32 {
    let [s] = dot_many(code_level(), q, [row]);
    s
}

/// [`dot_code`] of `q` with rows `ids` of `codes` (row `i` at `i · stride`, at least
/// `q.len()` long) into `out`, four rows at a time, the next four prefetched.
///
/// # Panics
/// When a row lies outside `codes` or `out` is shorter than `ids`.
pub fn dot_code_rows(q: &CodeQuery, codes: &[u8], stride: usize, ids: &[u32], out: &mut [i32]) {
    let out = &mut out[..ids.len()];
    let n = q.len();
    let row = |id: u32| &codes[id as usize * stride..id as usize * stride + n];
    let level = code_level();
    for &id in ids.iter().take(4) {
        prefetch(row(id));
    }
    for (g, (chunk, o)) in ids.chunks(4).zip(out.chunks_mut(4)).enumerate() {
        for &id in ids.iter().skip(4 * g + 4).take(4) {
            prefetch(row(id));
        }
        if let &[a, b, c, d] = chunk {
            o.copy_from_slice(&dot_many(level, q, [row(a), row(b), row(c), row(d)]));
        } else {
            for (o, &id) in o.iter_mut().zip(chunk) {
                let [s] = dot_many(level, q, [row(id)]);
                *o = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(len: usize, seed: u32) -> Vec<i8> {
        // Scattered over -127..=127, the extremes included.
        (0..len)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
                (i64::from(h % 255) - 127) as i8
            })
            .collect()
    }

    fn reference(q: &[i8], c: &[i8]) -> i32 {
        q.iter()
            .zip(c)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum()
    }

    #[test]
    fn every_level_equals_the_plain_sum_on_every_length() {
        let mut levels = vec![CodeLevel::Scalar];
        if simd::level() != Level::Baseline {
            levels.push(CodeLevel::Avx2);
        }
        if simd::vnni() {
            levels.push(CodeLevel::Vnni);
        }
        for len in [
            0, 1, 15, 16, 17, 31, 63, 64, 65, 100, 127, 128, 129, 500, 512, 513,
        ] {
            let q = codes(len, 1);
            let prepared = CodeQuery::new(&q);
            let rows: Vec<Vec<i8>> = (0..4).map(|s| codes(len + 7, s + 2)).collect();
            let stored_rows: Vec<Vec<u8>> = rows
                .iter()
                .map(|r| r.iter().map(|&c| stored(c)).collect())
                .collect();
            let want: Vec<i32> = rows.iter().map(|r| reference(&q, r)).collect();
            // Extremes: -127 · -127 and 127 · -127 on every lane.
            let hi = CodeQuery::new(&vec![-127; len]);
            let lo_row = vec![stored(-127); len];
            for &level in &levels {
                let got = dot_many(level, &prepared, [0, 1, 2, 3].map(|i| &stored_rows[i][..]));
                assert_eq!(got.to_vec(), want, "{level:?} {len}");
                let [one] = dot_many(level, &prepared, [&stored_rows[2][..]]);
                assert_eq!(one, want[2], "{level:?} {len}");
                let [ext] = dot_many(level, &hi, [&lo_row[..]]);
                assert_eq!(ext, 127 * 127 * len as i32, "{level:?} {len}");
            }
            assert_eq!(dot_code(&prepared, &stored_rows[1]), want[1]);
        }
    }

    #[test]
    fn rows_match_one_at_a_time() {
        for dim in [1, 17, 64, 100, 512] {
            let stride = dim + 5;
            let data: Vec<u8> = codes(stride * 11, 9).into_iter().map(stored).collect();
            let q = CodeQuery::new(&codes(dim, 4));
            for len in 0..=11u32 {
                let ids: Vec<u32> = (0..len).map(|i| (i * 7 + 3) % 11).collect();
                let mut out = vec![i32::MIN; ids.len()];
                dot_code_rows(&q, &data, stride, &ids, &mut out);
                for (&id, &got) in ids.iter().zip(&out) {
                    let s = id as usize * stride;
                    assert_eq!(got, dot_code(&q, &data[s..s + dim]), "{dim} {id}");
                }
            }
        }
    }
}
