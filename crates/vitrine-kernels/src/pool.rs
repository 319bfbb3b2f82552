//! Pooling on channels-last activations `(N, H, W, C)`: the ResNet stem's 3×3,
//! stride-2, padding-1 max-pool (with torch's tie rule), the global average pool and
//! its generalisation, the generalised-mean pool, forward and backward.

use rayon::prelude::*;

use crate::buffer::par_vec;
use crate::simd::vectorized;

/// The forward result of [`max_pool_3x3_s2`].
#[derive(Debug, Clone)]
pub struct MaxPool {
    /// The pooled activations, `dims`.
    pub out: Vec<f32>,
    /// For each output, the window tap (0..9, row-major) its maximum came from.
    pub arg: Vec<u8>,
    /// `(N, OH, OW, C)`.
    pub dims: [usize; 4],
}

/// [`max_pool_3x3_s2`] of bf16 activations (bits), forward only: `(out, dims)`. The
/// maximum of bf16 values is one of them, so this is the f32 pool of the same values.
pub fn max_pool_3x3_s2_bf16(x: &[u16], [n, h, w, c]: [usize; 4]) -> (Vec<u16>, [usize; 4]) {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0u16; n * oh * ow * c];
    out.par_chunks_mut((ow * c).max(1))
        .enumerate()
        .for_each_init(Vec::new, |best: &mut Vec<f32>, (row, orow)| {
            best.resize(c, 0.0);
            let (ni, r) = (row / oh, row % oh);
            for (q, o) in orow.chunks_exact_mut(c).enumerate() {
                best.fill(f32::NEG_INFINITY);
                for t in 0..9 {
                    let (ih, iw) = (
                        (2 * r + t / 3).wrapping_sub(1),
                        (2 * q + t % 3).wrapping_sub(1),
                    );
                    if ih >= h || iw >= w {
                        continue;
                    }
                    let src = &x[((ni * h + ih) * w + iw) * c..][..c];
                    for (b, &v) in best.iter_mut().zip(src) {
                        *b = b.max(f32::from_bits(u32::from(v) << 16));
                    }
                }
                for (o, b) in o.iter_mut().zip(best.iter()) {
                    *o = (b.to_bits() >> 16) as u16;
                }
            }
        });
    (out, [n, oh, ow, c])
}

/// 3×3, stride-2, padding-1 max-pool of `x (N, H, W, C)`; the first maximum in window
/// order wins (torch's rule), and padding never does.
pub fn max_pool_3x3_s2(x: &[f32], [n, h, w, c]: [usize; 4]) -> MaxPool {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0f32; n * oh * ow * c];
    let mut arg = vec![0u8; out.len()];
    out.par_chunks_mut(ow * c)
        .zip(arg.par_chunks_mut(ow * c))
        .enumerate()
        .for_each(|(row, (orow, arow))| {
            vectorized(
                #[inline(always)]
                || {
                    let (ni, r) = (row / oh, row % oh);
                    for q in 0..ow {
                        let (o, a) = (&mut orow[q * c..][..c], &mut arow[q * c..][..c]);
                        o.fill(f32::NEG_INFINITY);
                        for t in 0..9u8 {
                            let (ih, iw) = (
                                (2 * r + usize::from(t / 3)).wrapping_sub(1),
                                (2 * q + usize::from(t % 3)).wrapping_sub(1),
                            );
                            if ih >= h || iw >= w {
                                continue;
                            }
                            let src = &x[((ni * h + ih) * w + iw) * c..][..c];
                            for ((ov, av), &v) in o.iter_mut().zip(a.iter_mut()).zip(src) {
                                // Selects, not a branch: the loop vectorises.
                                let gt = v > *ov;
                                *ov = if gt { v } else { *ov };
                                *av = if gt { t } else { *av };
                            }
                        }
                    }
                },
            );
        });
    MaxPool {
        out,
        arg,
        dims: [n, oh, ow, c],
    }
}

/// Backward of [`max_pool_3x3_s2`]: each output's gradient `g` (`pool.dims`) goes to
/// its maximum's input; `(h, w)` are the input's spatial dims. Returns
/// `(N, H, W, C)`.
pub fn max_pool_3x3_s2_backward(g: &[f32], pool: &MaxPool, (h, w): (usize, usize)) -> Vec<f32> {
    let [n, oh, ow, c] = pool.dims;
    let arg = &pool.arg;
    // One image per task: windows overlap between neighbouring outputs.
    par_vec(n * h * w * c, h * w * c, |ni, img| {
        vectorized(
            #[inline(always)]
            || {
                for r in 0..oh {
                    for q in 0..ow {
                        let base = ((ni * oh + r) * ow + q) * c;
                        for ci in 0..c {
                            let t = arg[base + ci];
                            let ih = 2 * r + usize::from(t / 3) - 1;
                            let iw = 2 * q + usize::from(t % 3) - 1;
                            img[(ih * w + iw) * c + ci] += g[base + ci];
                        }
                    }
                }
            },
        );
    })
}

/// Mean over the pixels of `x (N, H, W, C)` (summed in f64): `(N, C)`.
pub fn global_average(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let p = h * w;
    let mut out = vec![0f32; n * c];
    out.par_chunks_mut(c).enumerate().for_each(|(ni, o)| {
        vectorized(
            #[inline(always)]
            || {
                let mut acc = vec![0f64; c];
                for px in x[ni * p * c..(ni + 1) * p * c].chunks_exact(c) {
                    for (a, &v) in acc.iter_mut().zip(px) {
                        *a += f64::from(v);
                    }
                }
                for (ov, a) in o.iter_mut().zip(acc) {
                    *ov = (a / p as f64) as f32;
                }
            },
        );
    });
    out
}

/// Backward of [`global_average`]: `g (N, C)` spread evenly over the pixels of
/// `(N, H, W, C)`.
pub fn global_average_backward(g: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let p = h * w;
    par_vec(n * p * c, p * c, |ni, img| {
        vectorized(
            #[inline(always)]
            || {
                let gi = &g[ni * c..(ni + 1) * c];
                for px in img.chunks_exact_mut(c) {
                    for (o, &v) in px.iter_mut().zip(gi) {
                        *o = v / p as f32;
                    }
                }
            },
        );
    })
}

/// Values below this are raised to it before the power of [`generalized_mean`]
/// (the GeM paper's ε): after a ReLU most features are exactly 0, and `0^(p-1)`
/// would make the backward's `y^(1-p)` infinite where a whole channel is 0.
pub const GEM_FLOOR: f32 = 1e-6;

/// Generalised-mean pool (GeM, Radenović et al. 2018) of `x (N, H, W, C)`:
/// `(mean over pixels of max(x, ε)^p)^(1/p)` per image and channel, `(N, C)`. `p = 1`
/// is [`global_average`] exactly (no floor); a larger `p` leans towards the maximum,
/// so a feature strong in one place of the image counts more than one spread thinly.
pub fn generalized_mean(x: &[f32], dims @ [n, h, w, c]: [usize; 4], p: f32) -> Vec<f32> {
    if p == 1.0 {
        return global_average(x, dims);
    }
    let px = h * w;
    let mut out = vec![0f32; n * c];
    out.par_chunks_mut(c).enumerate().for_each(|(ni, o)| {
        let mut acc = vec![0f64; c];
        for row in x[ni * px * c..(ni + 1) * px * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(power(v.max(GEM_FLOOR), p));
            }
        }
        for (ov, a) in o.iter_mut().zip(acc) {
            *ov = (a / px as f64).powf(1.0 / f64::from(p)) as f32;
        }
    });
    out
}

/// Backward of [`generalized_mean`] from its output `y` and gradient `g` (both
/// `(N, C)`): `g · y^(1-p) · x^(p-1) / (H·W)` where `x` is above the floor, 0 below
/// it. Returns `(N, H, W, C)`.
pub fn generalized_mean_backward(
    g: &[f32],
    x: &[f32],
    y: &[f32],
    dims @ [n, h, w, c]: [usize; 4],
    p: f32,
) -> Vec<f32> {
    if p == 1.0 {
        return global_average_backward(g, dims);
    }
    let px = h * w;
    par_vec(n * px * c, px * c, |ni, img| {
        let coef: Vec<f32> = (0..c)
            .map(|ci| {
                let yv = f64::from(y[ni * c + ci]);
                (f64::from(g[ni * c + ci]) * yv.powf(f64::from(1.0 - p)) / px as f64) as f32
            })
            .collect();
        let src = &x[ni * px * c..(ni + 1) * px * c];
        for (orow, xrow) in img.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
            for ((o, &xv), &k) in orow.iter_mut().zip(xrow).zip(&coef) {
                *o = if xv > GEM_FLOOR {
                    k * power(xv, p - 1.0)
                } else {
                    0.0
                };
            }
        }
    })
}

/// `v^p` for `v > 0`, by multiplications for small whole powers (the common p = 3).
#[inline]
fn power(v: f32, p: f32) -> f32 {
    match p {
        1.0 => v,
        2.0 => v * v,
        3.0 => v * v * v,
        4.0 => (v * v) * (v * v),
        _ => v.powf(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn bf16_max_pool_is_the_f32_pool_of_the_same_values() {
        use crate::conv::{bf16_from_f32, f32_from_bf16};
        for dims @ [n, h, w, c] in [[2, 7, 6, 3], [1, 1, 1, 2], [3, 8, 5, 17]] {
            let bits = bf16_from_f32(&values(n * h * w * c, 4));
            let want = max_pool_3x3_s2(&f32_from_bf16(&bits), dims);
            let (got, got_dims) = max_pool_3x3_s2_bf16(&bits, dims);
            assert_eq!(got_dims, want.dims);
            assert_eq!(f32_from_bf16(&got), want.out, "{dims:?}");
        }
    }

    #[test]
    fn max_pool_matches_a_direct_loop_and_routes_gradients_to_the_first_maximum() {
        for dims @ [n, h, w, c] in [[2, 7, 6, 3], [1, 1, 1, 2], [3, 4, 5, 17]] {
            let mut x = values(n * h * w * c, 1);
            // Ties: a repeated value, so the tie rule matters.
            x[0] = 0.5;
            if x.len() > c {
                x[c] = 0.5;
            }
            let pool = max_pool_3x3_s2(&x, dims);
            let [_, oh, ow, _] = pool.dims;
            assert_eq!(pool.dims, [n, h.div_ceil(2), w.div_ceil(2), c]);
            let g = values(pool.out.len(), 2);
            let mut dx = vec![0f32; x.len()];
            for ni in 0..n {
                for r in 0..oh {
                    for q in 0..ow {
                        for ci in 0..c {
                            let mut best = (f32::NEG_INFINITY, usize::MAX);
                            for t in 0..9 {
                                let (ih, iw) = (
                                    (2 * r + t / 3).wrapping_sub(1),
                                    (2 * q + t % 3).wrapping_sub(1),
                                );
                                if ih < h && iw < w {
                                    let at = ((ni * h + ih) * w + iw) * c + ci;
                                    if x[at] > best.0 {
                                        best = (x[at], at);
                                    }
                                }
                            }
                            let o = ((ni * oh + r) * ow + q) * c + ci;
                            assert_eq!(pool.out[o], best.0);
                            dx[best.1] += g[o];
                        }
                    }
                }
            }
            assert_eq!(max_pool_3x3_s2_backward(&g, &pool, (h, w)), dx);
        }
    }

    #[test]
    fn global_average_and_its_backward() {
        let dims @ [n, h, w, c] = [2, 3, 5, 4];
        let x = values(n * h * w * c, 3);
        let avg = global_average(&x, dims);
        for ni in 0..n {
            for ci in 0..c {
                let s: f64 = (0..h * w)
                    .map(|p| f64::from(x[(ni * h * w + p) * c + ci]))
                    .sum();
                assert!((f64::from(avg[ni * c + ci]) - s / 15.0).abs() < 1e-6);
            }
        }
        let g = values(n * c, 4);
        let dx = global_average_backward(&g, dims);
        assert_eq!(dx.len(), x.len());
        assert!(dx.iter().enumerate().all(|(i, &v)| {
            let (ni, ci) = (i / (h * w * c), i % c);
            v == g[ni * c + ci] / 15.0
        }));
    }
    #[test]
    fn generalized_mean_is_the_average_at_p_1_and_its_gradient_matches_differences() {
        let dims @ [n, h, w, c] = [2, 3, 2, 5];
        let mut x: Vec<f32> = values(n * h * w * c, 5).iter().map(|v| v.abs()).collect();
        // A channel of zeros (after a ReLU): finite output and gradient 0.
        for px in 0..n * h * w {
            x[px * c + 1] = 0.0;
        }
        assert_eq!(generalized_mean(&x, dims, 1.0), global_average(&x, dims));
        let g = values(n * c, 6);
        assert_eq!(
            generalized_mean_backward(&g, &x, &[], dims, 1.0),
            global_average_backward(&g, dims)
        );
        for p in [3.0f32, 2.5] {
            let y = generalized_mean(&x, dims, p);
            for ni in 0..n {
                for ci in 0..c {
                    let m: f64 = (0..h * w)
                        .map(|q| {
                            f64::from(x[(ni * h * w + q) * c + ci].max(GEM_FLOOR))
                                .powf(f64::from(p))
                        })
                        .sum::<f64>()
                        / 6.0;
                    let want = m.powf(1.0 / f64::from(p));
                    assert!((f64::from(y[ni * c + ci]) - want).abs() < 1e-6 * want.max(1e-3));
                }
            }
            // Between the mean and the maximum, at or above the mean.
            let avg = global_average(&x, dims);
            assert!(y.iter().zip(&avg).all(|(a, b)| *a >= *b - 1e-6));
            let dx = generalized_mean_backward(&g, &x, &y, dims, p);
            let loss = |x: &[f32]| -> f64 {
                generalized_mean(x, dims, p)
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            };
            for i in (0..x.len()).step_by(3) {
                if x[i] == 0.0 {
                    assert_eq!(dx[i], 0.0, "p {p}: floored input {i}");
                    continue;
                }
                let e = 1e-3f32;
                let (mut up, mut down) = (x.clone(), x.clone());
                up[i] += e;
                down[i] -= e;
                let fd = (loss(&up) - loss(&down)) / (2.0 * f64::from(e));
                assert!(
                    (fd - f64::from(dx[i])).abs() < 2e-3 * fd.abs().max(0.05),
                    "p {p}: input {i}: difference {fd}, gradient {}",
                    dx[i]
                );
            }
        }
    }
}
