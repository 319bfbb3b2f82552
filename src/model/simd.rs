//! Runtime selection of wide vector instructions for the CPU kernels' loops.
//!
//! The crate is built for baseline x86-64 (SSE2), so plain loops vectorise 4 lanes
//! wide; the elementwise passes of BatchNorm, ReLU and residual sums ran ≈ 8 GB/s
//! that way, far below memory bandwidth. [`vectorized`] runs a loop body compiled
//! for AVX-512 or AVX2 + FMA when the CPU has them (checked once, at run time), so
//! one binary stays portable. Rust never contracts `a·b + c` into an FMA on its own,
//! so results are bit-identical on every path.

/// Runs `f`, with its body compiled for the widest vector extension this CPU has.
/// `f` is inlined into a `#[target_feature]` function, so keep the loop itself
/// inside `f` (not behind a call that might stay out of line) and mark the closure
/// `#[inline(always)]`.
#[allow(clippy::inline_always)] // must inline so callers' closures reach the dispatch
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            Level::Avx512 => {
                // SAFETY: `level` found AVX-512F/VL, AVX2 and FMA on this CPU.
                #[allow(unsafe_code)]
                return unsafe { avx512(f) };
            }
            Level::Avx2 => {
                // SAFETY: `level` found AVX2 and FMA on this CPU.
                #[allow(unsafe_code)]
                return unsafe { avx2(f) };
            }
            Level::Baseline => {}
        }
    }
    f()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Baseline,
    Avx2,
    Avx512,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
            Level::Avx512
        } else if avx2 {
            Level::Avx2
        } else {
            Level::Baseline
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_runs_the_closure_once_and_returns_its_value() {
        let mut calls = 0;
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let total = vectorized(
            #[inline(always)]
            || {
                calls += 1;
                v.iter().map(|x| x * 2.0).sum::<f32>()
            },
        );
        assert_eq!(calls, 1);
        assert_eq!(total, 999_000.0);
    }
}
