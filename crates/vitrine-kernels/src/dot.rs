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
}
