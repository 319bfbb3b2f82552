//! The one runtime selection of wide vector instructions, for every kernel of the
//! crate (conv, BatchNorm, pooling, elementwise passes and the index's dot products).
//!
//! The crates are built for baseline x86-64 (SSE2), so plain loops vectorise 4 lanes
//! wide; the elementwise passes of BatchNorm, ReLU and residual sums ran ≈ 8 GB/s
//! that way, far below memory bandwidth. [`vectorized`] runs a loop body compiled
//! for AVX-512 or AVX2 + FMA when the CPU has them (checked once, at run time), so
//! one binary stays portable; [`dispatch`] does the same and tells the body which
//! [`Level`] it runs at, for kernels that differ by level (the dot products use FMA
//! where the CPU has it). Rust never contracts `a·b + c` into an FMA on its own, so
//! loops without an explicit `mul_add` give bit-identical results on every level.

/// The vector instruction sets a kernel body may be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The build's own target (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F/VL, AVX2 and FMA.
    Avx512,
}

impl Level {
    /// Whether fused multiply-adds are instructions at this level (`f32::mul_add` is
    /// a slow library call otherwise).
    pub fn fma(self) -> bool {
        self != Self::Baseline
    }
}

/// The widest level this CPU runs (detected once).
pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
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
    #[cfg(not(target_arch = "x86_64"))]
    Level::Baseline
}

/// Whether this CPU has AVX-512 VNNI (with AVX-512F/BW/VL): the 8-bit dot products
/// of [`crate::codes`] (detected once; not a [`Level`], since only they use it).
pub fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            level() == Level::Avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `f`, with its body compiled for the widest vector extension this CPU has.
/// `f` is inlined into a `#[target_feature]` function, so keep the loop itself
/// inside `f` (not behind a call that might stay out of line) and mark the closure
/// `#[inline(always)]`.
#[allow(clippy::inline_always)] // must inline so callers' closures reach the dispatch
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
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

/// Like [`vectorized`], passing `f` the level its body is compiled for (a constant
/// once inlined, so branches on it vanish).
#[allow(clippy::inline_always)] // must inline so callers' closures reach the dispatch
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce(Level) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            Level::Avx512 => {
                // SAFETY: `level` found AVX-512F/VL, AVX2 and FMA on this CPU.
                #[allow(unsafe_code)]
                return unsafe {
                    avx512(
                        #[inline(always)]
                        || f(Level::Avx512),
                    )
                };
            }
            Level::Avx2 => {
                // SAFETY: `level` found AVX2 and FMA on this CPU.
                #[allow(unsafe_code)]
                return unsafe {
                    avx2(
                        #[inline(always)]
                        || f(Level::Avx2),
                    )
                };
            }
            Level::Baseline => {}
        }
    }
    f(Level::Baseline)
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

    #[test]
    fn dispatch_reports_the_detected_level() {
        assert_eq!(dispatch(|l| l), level());
        assert!(!Level::Baseline.fma());
        assert!(Level::Avx2.fma() && Level::Avx512.fma());
    }
}
