//! vitrine's CPU kernels: plain math on `&[f32]` slices, no tensor library.
//!
//! The Candle model in the `vitrine` crate wraps these in custom ops
//! (`vitrine::model::ops`); the index uses [`dot`]'s products and [`scan`]'s. Everything runs on the
//! caller's rayon pool, and every loop body that should use wide vector instructions
//! goes through the one runtime dispatch of [`simd`]. Layouts are channels-last
//! (`(N, H, W, C)`) activations and torch's `(K, C, KH, KW)` kernels; see the README
//! for the whole contract.
//!
//! Module order (each uses only those before it): [`buffer`], [`simd`] → [`dot`] →
//! [`codes`], [`scan`], [`elementwise`] → [`pool`], [`norm`], [`conv`]; [`alloc`]
//! stands apart.
//!
//! All of the project's `unsafe` code lives in this crate: the target-feature
//! trampolines of [`simd`], the intrinsics of [`dot`], [`codes`] and [`scan`], the `gemm` call,
//! the AMX tiles' inline assembly and uninitialised output buffers of [`conv`] and
//! [`buffer`], and the global allocator and `mallopt` tuning of [`alloc`].

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod buffer;
pub mod codes;
pub mod conv;
pub mod dot;
pub mod elementwise;
pub mod norm;
pub mod pool;
pub mod scan;
pub mod simd;

/// A kernel refused its operands (shapes that do not fit together, too little data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
pub(crate) mod testing {
    //! Deterministic test data shared by the modules' tests.

    /// Deterministic values in [-1, 1): xoshiro256** seeded by SplitMix64 (the
    /// `vitrine` crate's generator, so these tests see the data they always saw).
    pub fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut sm = seed;
        let mut splitmix = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut s = [splitmix(), splitmix(), splitmix(), splitmix()];
        (0..len)
            .map(|_| {
                let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
                let t = s[1] << 17;
                s[2] ^= s[0];
                s[3] ^= s[1];
                s[1] ^= s[2];
                s[0] ^= s[3];
                s[2] ^= t;
                s[3] = s[3].rotate_left(45);
                let unit = (result >> 40) as f32 / (1u64 << 24) as f32;
                -1.0 + 2.0 * unit
            })
            .collect()
    }

    /// Largest absolute difference relative to the reference's largest magnitude.
    pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
        worst / scale
    }
}
