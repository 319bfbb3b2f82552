//! Convs whose activations stay bf16 between layers: inference in
//! [`Precision::Bf16`](super::Precision::Bf16) with fixed BatchNorms.
//!
//! A bf16 conv rounds its input to bf16 anyway, so storing each layer's output as
//! the next one reads it loses nothing there and halves the bytes written and read;
//! the BatchNorm, the shortcut and the ReLU run on each 32×32 block of f32 sums while
//! it is in L1, before the rounding ([`Epilogue`]). What changes against f32
//! activations: a residual block adds its shortcut rounded to bf16, and the last
//! feature map is rounded too. Written for a network that feeds layer to layer:
//! input, shortcut and output are all `(N, H, W, C)` bf16 bits.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::bf16::{
    Epilogue, Packed, Sink, amx_available, from_bf16_bits, matmul_bf16_bits_to, to_bf16,
    to_bf16_bits,
};
use super::gemm::Mat;
use super::im2col::kernel_to_taps;
use super::{Forward, Geom, Precision, forward, forward_block, with_im2col_bits};
use crate::elementwise::{Affine, Shortcut};

/// `x` rounded to bf16 bits (ties to even), in parallel.
#[must_use]
pub fn bf16_from_f32(x: &[f32]) -> Vec<u16> {
    to_bf16(x).unwrap_or_else(|| x.par_iter().map(|&v| to_bf16_bits(v)).collect())
}

/// The f32 values of bf16 bits (exact), in parallel.
#[must_use]
pub fn f32_from_bf16(bits: &[u16]) -> Vec<f32> {
    bits.par_iter().map(|&b| from_bf16_bits(b)).collect()
}

/// `e(x ⋆ wt)` rounded to bf16: `x (N, H, W, C)` and the result `(N, OH, OW, K)` as
/// bf16 bits, `wt (K, C, KH, KW)` in f32 (rounded here), the sums f32. On AMX tiles
/// where they run; elsewhere the same products by the emulated bf16 GEMM of
/// [`forward`] (the same values up to the order of the f32 sums).
///
/// # Panics
/// When `x`, `e`'s scale and shift, or its shortcut do not fit `g`.
#[must_use]
pub fn forward_bf16(x: &[u16], wt: &[f32], g: &Geom, e: &Epilogue, threads: usize) -> Vec<u16> {
    let (m, k, ckk) = (g.m(), g.k, g.ckk());
    assert_eq!(
        x.len(),
        g.n * g.h * g.w * g.c,
        "forward_bf16: input is not N·H·W·C"
    );
    assert_eq!(wt.len(), k * ckk, "forward_bf16: kernel is not K·C·KH·KW");
    e.check(m, k);
    if !amx_available() {
        return emulated(x, wt, g, e, threads);
    }
    let taps;
    let w_taps = if g.kh * g.kw == 1 {
        wt
    } else {
        taps = kernel_to_taps(wt, g);
        &taps
    };
    let packed = Packed::new(ckk, k, &Mat::rows_t(w_taps, ckk));
    let kp = packed.tile_depth().unwrap_or(ckk);
    // Whole output rows a block, as the f32 path; few rows: one share per thread.
    let block = forward_block(g, threads, true)
        .unwrap_or_else(|| m.div_ceil(threads.max(1)).div_ceil(g.ow.max(1)) * g.ow)
        .max(1);
    let run = |b: usize, yb: &mut [MaybeUninit<u16>]| {
        let (first, rows) = (b * block, yb.len() / k);
        let eb = e.rows(first, rows, k);
        let sink = Sink::Bits { dst: yb, e: &eb };
        let padded = rows.div_ceil(32) * 32;
        // A 1×1 stride-1 conv on channels the tiles' depth reads its input in place
        // (the rows past the block's end that the last tiles load are never stored).
        if g.pointwise() && kp == g.c && (first + padded) * kp <= x.len() {
            matmul_bf16_bits_to(rows, sink, &x[first * kp..], &packed);
            return;
        }
        with_im2col_bits(x, g, (first, rows), kp, |a| {
            matmul_bf16_bits_to(rows, sink, a, &packed);
        });
    };
    let mut y = Vec::with_capacity(m * k);
    let out = &mut y.spare_capacity_mut()[..m * k];
    let chunk = (block * k).max(1);
    if threads > 1 {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(b, yb)| run(b, yb));
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(b, yb)| run(b, yb));
    }
    // SAFETY: the chunks cover all `m·k` elements and the tile kernel wrote every
    // element of each (`Sink::Bits` writes all rows × columns of its product).
    #[allow(unsafe_code)]
    unsafe {
        y.set_len(m * k);
    }
    y
}

/// [`forward_bf16`] without AMX: the f32 forward of the exact values with
/// [`Precision::Bf16`]'s rounding of what it multiplies, the epilogue in its output
/// pass, then rounded.
fn emulated(x: &[u16], wt: &[f32], g: &Geom, e: &Epilogue, threads: usize) -> Vec<u16> {
    let xf = f32_from_bf16(x);
    let then = Affine {
        scale: e.scale,
        shift: e.shift,
        relu: e.relu,
    };
    let side = e.shortcut.map(f32_from_bf16);
    let shortcut = side.as_deref().map(Shortcut::Identity);
    assert!(
        shortcut.is_none() || e.relu,
        "forward_bf16: a shortcut without its ReLU"
    );
    let how = Forward {
        then: Some(&then),
        shortcut: shortcut.as_ref(),
        threads,
        precision: Precision::Bf16,
    };
    bf16_from_f32(&forward(&xf, wt, g, how))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::round_bf16;
    use crate::testing::values;

    /// The conv of the rounded operands in f64, its epilogue, as f32.
    fn reference(x: &[f32], wt: &[f32], g: &Geom, e: &Epilogue) -> Vec<f32> {
        let (oh, ow, k) = g.out_dims();
        let mut out = vec![0f32; g.n * oh * ow * k];
        for (at, o) in out.iter_mut().enumerate() {
            let (ch, px) = (at % k, at / k);
            let (ni, r, q) = (px / (oh * ow), (px / ow) % oh, px % ow);
            let mut sum = 0f64;
            for c in 0..g.c {
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let (ih, iw) = (
                            (r * g.stride + ki).wrapping_sub(g.pad),
                            (q * g.stride + kj).wrapping_sub(g.pad),
                        );
                        if ih >= g.h || iw >= g.w {
                            continue;
                        }
                        let xv = round_bf16(x[((ni * g.h + ih) * g.w + iw) * g.c + c]);
                        let wv = round_bf16(wt[((ch * g.c + c) * g.kh + ki) * g.kw + kj]);
                        sum += f64::from(xv) * f64::from(wv);
                    }
                }
            }
            let mut v = f64::from(e.scale[ch]) * sum + f64::from(e.shift[ch]);
            if let Some(s) = e.shortcut {
                v += f64::from(from_bf16_bits(s[at]));
            }
            *o = if e.relu { v.max(0.0) as f32 } else { v as f32 };
        }
        out
    }

    #[test]
    fn bf16_activations_are_the_rounded_conv_of_the_rounded_operands() {
        // (n, h, w, c, k, kernel, stride, pad, shortcut): a 1×1 read in place and one
        // with channels off the tiles' depth, a strided 1×1 (a projection), 3×3s, the
        // 7×7 stem on 3 channels; columns off the 32-wide blocks; maps with many and
        // with few rows per thread.
        let cases = [
            (2, 9, 9, 64, 32, 1, 1, 0, true),
            (1, 5, 7, 40, 48, 1, 1, 0, false),
            (2, 8, 8, 32, 64, 1, 2, 0, false),
            (2, 12, 12, 32, 32, 3, 1, 1, true),
            (1, 6, 6, 16, 40, 3, 2, 1, false),
            (1, 13, 13, 3, 64, 7, 2, 3, false),
            (3, 40, 40, 32, 32, 1, 1, 0, true),
        ];
        for (case, &(n, h, w, c, k, kk, stride, pad, with_shortcut)) in cases.iter().enumerate() {
            let seed = 10 * case as u64;
            let x = values(n * h * w * c, seed + 1);
            let wt = values(k * c * kk * kk, seed + 2);
            let g = Geom::new(&[n, h, w, c], &[k, c, kk, kk], stride, pad).expect("geom");
            let (oh, ow, _) = g.out_dims();
            let scale: Vec<f32> = values(k, seed + 3).iter().map(|v| 1.0 + v).collect();
            let shift = values(k, seed + 4);
            let side = bf16_from_f32(&values(n * oh * ow * k, seed + 5));
            let xb = bf16_from_f32(&x);
            for relu in [true, false] {
                if with_shortcut && !relu {
                    continue;
                }
                let e = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    shortcut: with_shortcut.then_some(side.as_slice()),
                    relu,
                };
                let want = reference(&x, &wt, &g, &e);
                for threads in [1, 2] {
                    let got = f32_from_bf16(&forward_bf16(&xb, &wt, &g, &e, threads));
                    assert_eq!(got.len(), want.len());
                    // Within one bf16 step of the f64 result (2⁻⁸ relative, plus a
                    // floor where sums cancel).
                    let scale_of = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for (i, (g1, w1)) in got.iter().zip(&want).enumerate() {
                        let tol = w1.abs() / 128.0 + scale_of * 1e-5;
                        assert!(
                            (g1 - w1).abs() <= tol,
                            "case {case} relu {relu} threads {threads} at {i}: {g1} vs {w1}"
                        );
                    }
                    if relu {
                        assert!(got.iter().all(|&v| v >= 0.0), "case {case}: ReLU");
                    }
                    // And the outputs are bf16 values, not f32 ones.
                    assert!(got.iter().all(|&v| round_bf16(v) == v));
                }
                if amx_available() {
                    // The tiles and the emulation: the same products summed in
                    // another order, so at most one bf16 step apart.
                    let tiles = forward_bf16(&xb, &wt, &g, &e, 2);
                    let emulation = emulated(&xb, &wt, &g, &e, 2);
                    let apart = tiles
                        .iter()
                        .zip(&emulation)
                        .filter(|(a, b)| a.abs_diff(**b) > 1);
                    assert_eq!(apart.count(), 0, "case {case}: tiles against emulation");
                }
            }
        }
    }
}
