//! im2col / col2im for channels-last data, and the kernel reorders that match
//! im2col's column order.

use rayon::prelude::*;

use super::Geom;
use crate::buffer::par_vec;
use crate::elementwise::transpose_blocks;
use crate::simd::vectorized;

impl Geom {
    /// A 1×1, stride-1, unpadded conv: the input already is the GEMM's left operand.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The kernel columns `kj` whose input column `ow·stride + kj − pad` lies inside the
    /// image: a half-open range (consecutive `kj` read consecutive input pixels).
    fn taps_inside(&self, ow: usize) -> (usize, usize) {
        let start = ow * self.stride;
        let lo = self.pad.saturating_sub(start).min(self.kw);
        let hi = (self.w + self.pad)
            .saturating_sub(start)
            .min(self.kw)
            .max(lo);
        (lo, hi)
    }

    /// The input row read by output row `oh` through kernel row `ki`, if inside.
    fn input_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.stride + ki)
            .checked_sub(self.pad)
            .filter(|&ih| ih < self.h)
    }
}

/// im2col for channels-last data: `x (N, H, W, C)` → `cols (M, KH·KW·C)` row-major,
/// column `(ki·KW + kj)·C + c`; zeros where a tap falls in the padding. Consecutive
/// taps of one kernel row copy one contiguous run of the input.
pub(super) fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    cols.par_chunks_mut(g.ow * g.ckk())
        .enumerate()
        .for_each(|(row, out)| im2col_rows(x, g, row, out, g.ckk()));
}

/// [`im2col`] of whole output rows from row `first` on (row = image · OH + oh), as many
/// as `cols` holds, on this thread, each pixel's `KH·KW·C` values `stride` apart
/// (`≥ KH·KW·C`; zeros in between); of f32 data, or of bf16 bits for the bf16 GEMM.
pub(super) fn im2col_rows<T: Copy + Default>(
    x: &[T],
    g: &Geom,
    first: usize,
    cols: &mut [T],
    stride: usize,
) {
    let c = g.c;
    let ckk = g.ckk();
    let row_len = g.kw * c;
    vectorized(
        #[inline(always)]
        || {
            for (i, out) in cols.chunks_exact_mut(g.ow * stride).enumerate() {
                let row = first + i;
                let (ni, oh) = (row / g.oh, row % g.oh);
                for (ow, px) in out.chunks_exact_mut(stride).enumerate() {
                    let (px, gap) = px.split_at_mut(ckk);
                    gap.fill(T::default());
                    let (lo, hi) = g.taps_inside(ow);
                    for (ki, dst) in px.chunks_exact_mut(row_len).enumerate() {
                        let Some(ih) = g.input_row(oh, ki).filter(|_| lo < hi) else {
                            dst.fill(T::default());
                            continue;
                        };
                        let iw0 = ow * g.stride + lo - g.pad;
                        let src = &x[((ni * g.h + ih) * g.w + iw0) * c..][..(hi - lo) * c];
                        dst[..lo * c].fill(T::default());
                        dst[lo * c..hi * c].copy_from_slice(src);
                        dst[hi * c..].fill(T::default());
                    }
                }
            }
        },
    );
}

/// col2im for channels-last data: `dx (N, H, W, C)` as the sum of `dcols (M, KH·KW·C)`
/// over the taps, one input row per task, so no two tasks write the same element.
pub(super) fn col2im(dcols: &[f32], g: &Geom) -> Vec<f32> {
    let (c, ckk) = (g.c, g.ckk());
    par_vec(g.n * g.h * g.w * c, g.w * c, |row, dst_row| {
        vectorized(
            #[inline(always)]
            || {
                let (ni, ih) = (row / g.h, row % g.h);
                for ki in 0..g.kh {
                    // Output rows `oh` with `oh·stride + ki − pad = ih`.
                    let Some(t) = (ih + g.pad).checked_sub(ki) else {
                        continue;
                    };
                    if t % g.stride != 0 || t / g.stride >= g.oh {
                        continue;
                    }
                    let oh = t / g.stride;
                    for ow in 0..g.ow {
                        let (lo, hi) = g.taps_inside(ow);
                        if lo >= hi {
                            continue;
                        }
                        let iw0 = ow * g.stride + lo - g.pad;
                        let src = &dcols
                            [((ni * g.oh + oh) * g.ow + ow) * ckk + (ki * g.kw + lo) * c..]
                            [..(hi - lo) * c];
                        let dst = &mut dst_row[iw0 * c..][..(hi - lo) * c];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
            },
        );
    })
}

/// `(K, C, KH, KW)` (torch's kernel layout) → `(K, KH, KW, C)` (im2col's column order).
pub(super) fn kernel_to_taps(wt: &[f32], g: &Geom) -> Vec<f32> {
    transpose_blocks(wt, g.c, g.kh * g.kw)
}

/// `(K, KH, KW, C)` → `(K, C, KH, KW)`: the inverse of [`kernel_to_taps`].
pub(super) fn taps_to_kernel(taps: &[f32], g: &Geom) -> Vec<f32> {
    transpose_blocks(taps, g.kh * g.kw, g.c)
}
