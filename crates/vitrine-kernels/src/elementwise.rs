//! Elementwise passes over channels-last activations (`(rows, C)` row-major, `C` the
//! fastest axis): a per-channel affine map (a BatchNorm with fixed statistics, ReLU
//! optional), the residual sum + ReLU of a ResNet block, ReLU masks, sums, and the
//! block transpose that turns `(N, C, H·W)` images into `(N, H·W, C)`. Parallel over
//! row blocks on the rayon pool, each block vectorised by [`vectorized`].

use rayon::prelude::*;

use crate::buffer::{par_vec, par_vec_from};
use crate::simd::vectorized;

/// A per-channel `y = x·scale + shift`, then `max(0, ·)` when `relu`: a BatchNorm
/// with fixed statistics, also applied by a conv as it writes its output.
#[derive(Debug, Clone, Copy)]
pub struct Affine<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

/// Rows handled per parallel task in the elementwise passes.
pub(crate) const TASK_ROWS: usize = 256;

/// `x·scale + shift` per channel (then `max(0, ·)` when `relu`), channels-last, as a
/// new vector; `C = scale.len()`.
pub fn apply(xs: &[f32], f: &Affine) -> Vec<f32> {
    par_vec_from(xs, f.scale.len() * TASK_ROWS, |_, yc| apply_rows(yc, f))
}

/// [`apply`] in place.
pub fn apply_in_place(xs: &mut [f32], f: &Affine) {
    xs.par_chunks_mut((f.scale.len() * TASK_ROWS).max(1))
        .for_each(|xc| apply_rows(xc, f));
}

/// [`apply_in_place`] on this thread (for a block already in cache).
pub(crate) fn apply_rows(xs: &mut [f32], f: &Affine) {
    let Affine { scale, shift, relu } = *f;
    let c = scale.len();
    vectorized(
        #[inline(always)]
        || {
            for xr in xs.chunks_exact_mut(c) {
                for ((v, &a), &b) in xr.iter_mut().zip(scale).zip(shift) {
                    let y = *v * a + b;
                    *v = if relu { y.max(0.0) } else { y };
                }
            }
        },
    );
}

/// The shortcut of a residual sum.
#[derive(Debug, Clone, Copy)]
pub enum Shortcut<'a> {
    /// The block's input, added as is.
    Identity(&'a [f32]),
    /// A projection's conv output with its BatchNorm's `(scale, shift)`.
    Normalised(&'a [f32], &'a [f32], &'a [f32]),
}

/// `a ← max(0, a·scale + shift + shortcut)` per channel: the last BatchNorm of a
/// residual block, its shortcut (normalised too when it is a projection) and the
/// ReLU of their sum, in one pass.
pub fn residual_relu(a: &mut [f32], scale: &[f32], shift: &[f32], s: &Shortcut) {
    let rows = (TASK_ROWS * scale.len()).max(1);
    a.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(t, ac)| residual_relu_rows(t * rows, ac, scale, shift, s));
}

/// [`residual_relu`] into a new vector, `a` left as it is.
pub fn residual_relu_to(a: &[f32], scale: &[f32], shift: &[f32], s: &Shortcut) -> Vec<f32> {
    let rows = TASK_ROWS * scale.len();
    par_vec_from(a, rows, |t, out| {
        residual_relu_rows(t * rows, out, scale, shift, s);
    })
}

/// [`residual_relu`] on the rows `ac` of `a`, which start at element `off`, on this
/// thread (for a block already in cache).
pub(crate) fn residual_relu_rows(
    off: usize,
    ac: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    s: &Shortcut,
) {
    let c = scale.len();
    vectorized(
        #[inline(always)]
        || {
            for (r, arow) in ac.chunks_exact_mut(c).enumerate() {
                let at = off + r * c;
                match s {
                    Shortcut::Identity(x) => {
                        let x = &x[at..at + c];
                        for (((v, &sc), &sh), &xv) in arow.iter_mut().zip(scale).zip(shift).zip(x) {
                            *v = (*v * sc + sh + xv).max(0.0);
                        }
                    }
                    Shortcut::Normalised(d, dsc, dsh) => {
                        let d = &d[at..at + c];
                        let main = arow.iter_mut().zip(scale).zip(shift);
                        let side = d.iter().zip(*dsc).zip(*dsh);
                        for (((v, &sc), &sh), ((&dv, &a2), &b2)) in main.zip(side) {
                            *v = (*v * sc + sh + (dv * a2 + b2)).max(0.0);
                        }
                    }
                }
            }
        },
    );
}

/// Zeroes `g` where the ReLU's output `out` was 0: the ReLU's backward.
pub fn relu_mask(g: &mut [f32], out: &[f32]) {
    // A select, not a branch: it vectorises.
    zip_apply(g, out, |gv, o| *gv = if o > 0.0 { *gv } else { 0.0 });
}

/// `a += b`, elementwise.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    zip_apply(a, b, |x, y| *x += y);
}

/// `f(a[i], b[i])` for every element (equal lengths), in parallel and vectorised:
/// also the optimizer's and the weight average's in-place updates.
pub fn zip_apply(a: &mut [f32], b: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    assert_eq!(a.len(), b.len(), "zip_apply: lengths differ");
    a.par_chunks_mut(1 << 14)
        .zip(b.par_chunks(1 << 14))
        .for_each(|(ac, bc)| {
            vectorized(
                #[inline(always)]
                || {
                    for (x, &y) in ac.iter_mut().zip(bc) {
                        f(x, y);
                    }
                },
            );
        });
}

/// Transposes each consecutive `rows × cols` block of `src` (row-major) to
/// `cols × rows`: `(N, C, H·W)` → `(N, H·W, C)` with `rows = C`, `cols = H·W`.
pub fn transpose_blocks(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let block = (rows * cols).max(1);
    par_vec(src.len(), block, |b, dst| {
        let src = &src[b * block..][..dst.len()];
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn affine_in_place_and_out_of_place_agree_with_a_plain_loop() {
        let (c, rows) = (7, 600);
        let x = values(c * rows, 1);
        let (scale, shift) = (values(c, 2), values(c, 3));
        for relu in [false, true] {
            let f = Affine {
                scale: &scale,
                shift: &shift,
                relu,
            };
            let expected: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let y = v * scale[i % c] + shift[i % c];
                    if relu { y.max(0.0) } else { y }
                })
                .collect();
            assert_eq!(apply(&x, &f), expected);
            let mut inplace = x.clone();
            apply_in_place(&mut inplace, &f);
            assert_eq!(inplace, expected);
        }
    }

    #[test]
    fn residual_relu_adds_either_shortcut() {
        let (c, rows) = (5, 300);
        let a = values(c * rows, 4);
        let x = values(c * rows, 5);
        let (sc, sh, sc2, sh2) = (values(c, 6), values(c, 7), values(c, 8), values(c, 9));
        let mut id = a.clone();
        residual_relu(&mut id, &sc, &sh, &Shortcut::Identity(&x));
        let mut proj = a.clone();
        residual_relu(&mut proj, &sc, &sh, &Shortcut::Normalised(&x, &sc2, &sh2));
        let kept = a.clone();
        assert_eq!(residual_relu_to(&a, &sc, &sh, &Shortcut::Identity(&x)), id);
        let side = Shortcut::Normalised(&x, &sc2, &sh2);
        assert_eq!(residual_relu_to(&a, &sc, &sh, &side), proj);
        assert_eq!(a, kept);
        for i in 0..a.len() {
            let main = a[i] * sc[i % c] + sh[i % c];
            assert_eq!(id[i], (main + x[i]).max(0.0));
            assert_eq!(proj[i], (main + (x[i] * sc2[i % c] + sh2[i % c])).max(0.0));
        }
    }

    #[test]
    fn masks_sums_and_transposes() {
        let mut g = vec![1.0, 2.0, 3.0, 4.0];
        relu_mask(&mut g, &[0.0, 0.5, -1.0, 2.0]);
        assert_eq!(g, [0.0, 2.0, 0.0, 4.0]);
        add_assign(&mut g, &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(g, [1.0, 3.0, 1.0, 5.0]);
        // Two 2×3 blocks.
        let src = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
        ];
        assert_eq!(
            transpose_blocks(&src, 2, 3),
            [
                1.0, 4.0, 2.0, 5.0, 3.0, 6.0, 7.0, 10.0, 8.0, 11.0, 9.0, 12.0
            ]
        );
    }
}
