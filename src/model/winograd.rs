//! 3×3, stride-1, padding-1 convolutions on channels-last data by Winograd's minimal
//! filtering `F(2×2, 3×3)`: 2.25× fewer multiplications than the direct GEMM.
//!
//! These convs are about 37% of ResNet50's multiply-adds, and the forward pass is
//! otherwise bound by its GEMMs (≈ 410 GFLOP/s on two AVX-512 cores). Each 2×2 output
//! tile is computed from a 4×4 input tile `d` and the 3×3 kernel `g` as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`; summed over input channels, the elementwise
//! product becomes 16 independent GEMMs `M_ξ (T×K) = V_ξ (T×C) · U_ξ (C×K)` over the
//! `T` tiles — no im2col matrix (9× the input), two small transforms instead. The
//! transforms only add, subtract and halve, so rounding stays at the level of the
//! direct method (checked against an f64 reference in `tests/conv.rs`). Only the
//! forward pass uses it; gradients stay exact-GEMM (`conv::backward`).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd::vectorized;

/// Tile positions of the transforms.
pub(crate) const TAPS: usize = 16;

/// Sizes of one Winograd convolution (`x (N, H, W, C)` → `y (N, H, W, K)`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
}

impl Shape {
    fn tiles_h(&self) -> usize {
        self.h.div_ceil(2)
    }

    fn tiles_w(&self) -> usize {
        self.w.div_ceil(2)
    }

    /// Number of 2×2 output tiles.
    pub fn tiles(&self) -> usize {
        self.n * self.tiles_h() * self.tiles_w()
    }

    /// Floats of scratch needed for the transformed input `(16, T, C)` and the GEMM
    /// products `(16, T, K)`.
    pub fn scratch(&self) -> (usize, usize) {
        (TAPS * self.tiles() * self.c, TAPS * self.tiles() * self.k)
    }
}

/// Splits 16 equal planes of `buf` (each `plane` long) into tasks of `rows_per_task`
/// rows of `row` elements: each task gets its rows of all 16 planes.
fn plane_tasks(
    buf: &mut [f32],
    plane: usize,
    row: usize,
    rows_per_task: usize,
) -> Vec<Vec<&mut [f32]>> {
    let rows = plane / row.max(1);
    let mut planes: Vec<_> = buf[..TAPS * plane]
        .chunks_mut(plane.max(1))
        .map(|p| p.chunks_mut(rows_per_task * row.max(1)))
        .collect();
    (0..rows.div_ceil(rows_per_task))
        .map(|_| planes.iter_mut().filter_map(Iterator::next).collect())
        .collect()
}

/// Kernel transform `U_ξ = (G g Gᵀ)_ξ` of `w (K, C, 3, 3)`, stored `(16, K, C)`.
pub(crate) fn kernel_transform(w: &[f32], k: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; TAPS * k * c];
    // Rows of G: (1, 0, 0), (½, ½, ½), (½, −½, ½), (0, 0, 1).
    let apply_g = |a: f32, b: f32, d: f32| [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
    let tasks = plane_tasks(&mut u, k * c, c, 8);
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, mut planes)| {
            let first = task * 8 * c;
            for local in 0..planes[0].len() {
                let kc = first + local;
                let g = &w[kc * 9..kc * 9 + 9];
                // G g: 4×3, one column of g at a time.
                let mut gg = [[0f32; 3]; 4];
                for col in 0..3 {
                    let r = apply_g(g[col], g[3 + col], g[6 + col]);
                    for (row, v) in r.iter().enumerate() {
                        gg[row][col] = *v;
                    }
                }
                // (G g) Gᵀ: 4×4.
                for (row, ggr) in gg.iter().enumerate() {
                    let r = apply_g(ggr[0], ggr[1], ggr[2]);
                    for (col, v) in r.iter().enumerate() {
                        planes[row * 4 + col][local] = *v;
                    }
                }
            }
        });
    u
}

/// Channels handled together by the transforms: one AVX-512 vector.
const LANES: usize = 16;

/// One tile's 16 positions × a block of up to `LANES` channels.
type TileBlock = [[f32; LANES]; TAPS];

/// `[d0 − d2, d1 + d2, d2 − d1, d1 − d3]`: one dimension of `Bᵀ d B`.
#[inline(always)]
#[allow(clippy::inline_always)] // inlined into `vectorized`'s target-feature function
fn input_1d(d: [&[f32; LANES]; 4]) -> [[f32; LANES]; 4] {
    let mut out = [[0f32; LANES]; 4];
    for l in 0..LANES {
        out[0][l] = d[0][l] - d[2][l];
        out[1][l] = d[1][l] + d[2][l];
        out[2][l] = d[2][l] - d[1][l];
        out[3][l] = d[1][l] - d[3][l];
    }
    out
}

/// `Bᵀ d B` of one tile block (positions row-major).
#[inline(always)]
#[allow(clippy::inline_always)]
fn input_tile(d: &TileBlock) -> TileBlock {
    let mut t = [[0f32; LANES]; TAPS];
    for col in 0..4 {
        let r = input_1d([&d[col], &d[4 + col], &d[8 + col], &d[12 + col]]);
        for (row, v) in r.into_iter().enumerate() {
            t[row * 4 + col] = v;
        }
    }
    let mut v = [[0f32; LANES]; TAPS];
    for row in 0..4 {
        let r = input_1d([
            &t[row * 4],
            &t[row * 4 + 1],
            &t[row * 4 + 2],
            &t[row * 4 + 3],
        ]);
        for (col, x) in r.into_iter().enumerate() {
            v[row * 4 + col] = x;
        }
    }
    v
}

/// `Aᵀ m A` of one tile block: the 2×2 outputs, row-major.
#[inline(always)]
#[allow(clippy::inline_always)]
fn output_tile(m: &TileBlock) -> [[f32; LANES]; 4] {
    // Aᵀ rows: (1, 1, 1, 0), (0, 1, −1, −1).
    let mut t = [[0f32; LANES]; 8];
    for col in 0..4 {
        for l in 0..LANES {
            let (a, b, c, d) = (m[col][l], m[4 + col][l], m[8 + col][l], m[12 + col][l]);
            t[col][l] = a + b + c;
            t[4 + col][l] = b - c - d;
        }
    }
    let mut y = [[0f32; LANES]; 4];
    for row in 0..2 {
        for l in 0..LANES {
            let (a, b, c, d) = (
                t[row * 4][l],
                t[row * 4 + 1][l],
                t[row * 4 + 2][l],
                t[row * 4 + 3][l],
            );
            y[row * 2][l] = a + b + c;
            y[row * 2 + 1][l] = b - c - d;
        }
    }
    y
}

/// Tiles per parallel task of the transforms.
const TASK_TILES: usize = 64;

/// Copies `src` into the first lanes of `dst` (a whole vector when `src` has `LANES`
/// elements: a fixed-size copy the compiler keeps in registers).
#[inline(always)]
#[allow(clippy::inline_always)]
fn load(dst: &mut [f32; LANES], src: &[f32]) {
    if let Ok(full) = <&[f32; LANES]>::try_from(src) {
        *dst = *full;
    } else {
        dst[..src.len()].copy_from_slice(src);
    }
}

/// Input transform: `V (16, T, C)`: 16 row-major `T×C` matrices, from
/// `x (N, H, W, C)` with zero padding of 1.
pub(crate) fn input_transform(x: &[f32], s: &Shape, v: &mut [f32]) {
    let (c, tw, th, tiles) = (s.c, s.tiles_w(), s.tiles_h(), s.tiles());
    // Each task owns the rows of one range of tiles in all 16 matrices.
    let mut planes: Vec<_> = v[..TAPS * tiles * c]
        .chunks_mut(tiles * c)
        .map(|p| p.chunks_mut(TASK_TILES * c))
        .collect();
    let tasks: Vec<Vec<&mut [f32]>> = (0..tiles.div_ceil(TASK_TILES))
        .map(|_| planes.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, mut rows)| {
            vectorized(
                #[inline(always)]
                || {
                    let first = task * TASK_TILES;
                    let count = rows[0].len() / c;
                    for local in 0..count {
                        let t = first + local;
                        let (ni, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
                        for c0 in (0..c).step_by(LANES) {
                            let width = LANES.min(c - c0);
                            let mut d = [[0f32; LANES]; TAPS];
                            for (i, di) in d.iter_mut().enumerate() {
                                let ih = (2 * ty + i / 4).wrapping_sub(1);
                                let iw = (2 * tx + i % 4).wrapping_sub(1);
                                if ih < s.h && iw < s.w {
                                    let at = ((ni * s.h + ih) * s.w + iw) * c + c0;
                                    load(di, &x[at..at + width]);
                                }
                            }
                            let out = input_tile(&d);
                            for (plane, o) in rows.iter_mut().zip(&out) {
                                plane[local * c + c0..][..width].copy_from_slice(&o[..width]);
                            }
                        }
                    }
                },
            );
        });
}

/// Output transform: `y (N, H, W, K)` (every element written) from the GEMM products
/// `M (16, T, K)`.
pub(crate) fn output_transform(m: &[f32], s: &Shape, y: &mut [MaybeUninit<f32>]) {
    let (k, tw, th) = (s.k, s.tiles_w(), s.tiles_h());
    let plane = s.tiles() * k;
    // One task per pair of output rows (one row of tiles) of one image.
    y[..s.n * s.h * s.w * k]
        .par_chunks_mut(s.h * s.w * k)
        .enumerate()
        .for_each(|(ni, img)| {
            img.par_chunks_mut(2 * s.w * k)
                .enumerate()
                .for_each(|(ty, rows)| {
                    vectorized(
                        #[inline(always)]
                        || {
                            let rows_here = rows.len() / (s.w * k);
                            for tx in 0..tw {
                                let t = (ni * th + ty) * tw + tx;
                                for k0 in (0..k).step_by(LANES) {
                                    let width = LANES.min(k - k0);
                                    let mut mb = [[0f32; LANES]; TAPS];
                                    for (xi, mx) in mb.iter_mut().enumerate() {
                                        let at = xi * plane + t * k + k0;
                                        load(mx, &m[at..at + width]);
                                    }
                                    let out = output_tile(&mb);
                                    for (p, o) in out.iter().enumerate() {
                                        let (r, q) = (p / 2, 2 * tx + p % 2);
                                        if r >= rows_here || q >= s.w {
                                            continue;
                                        }
                                        rows[(r * s.w + q) * k + k0..][..width]
                                            .write_copy_of_slice(&o[..width]);
                                    }
                                }
                            }
                        },
                    );
                });
        });
}
