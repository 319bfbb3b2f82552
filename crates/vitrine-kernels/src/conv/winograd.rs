//! 3×3, stride-1, padding-1 convolutions on channels-last data by Winograd's minimal
//! filtering `F(m×m, 3×3)`, in two sizes:
//!
//! * `F(2×2, 3×3)` (4×4 input tiles): 2.25× fewer multiplications than the direct
//!   GEMM; the transforms only add, subtract and halve, so rounding stays at the level
//!   of the direct method.
//! * `F(4×4, 3×3)` (6×6 input tiles): 4× fewer multiplications and 1.8× less
//!   transformed data than `F(2×2)`, at the cost of larger transform coefficients
//!   (relative error 0.2–4e-6 instead of 0.5–2e-7 per layer, checked against an
//!   f64 reference by `conv`'s tests: far below a gradient step's noise). Used
//!   wherever it needs fewer multiplications and has enough tiles
//!   ([`Tiling::choose`]), in training too (ResNet50 at 128 px trained 4.7% faster
//!   than with `F(2×2)` only).
//!
//! These convs are about 45% of ResNet50's multiply-adds, and the forward pass is
//! otherwise bound by its GEMMs. Each `m×m` output tile is computed from an `α×α`
//! (`α = m + 2`) input tile `d` and the 3×3 kernel `g` as
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`; summed over input channels, the elementwise
//! product becomes `α²` independent GEMMs `M_ξ (T×K) = V_ξ (T×C) · U_ξ (C×K)` over the
//! `T` tiles — no im2col matrix (9× the input), two small transforms instead.
//! The input gradient of such a conv is again one ([`super::backward`]); the kernel
//! gradient stays a GEMM.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::buffer::par_vec;
use crate::elementwise::Affine;
use crate::simd::vectorized;

/// The output tile size of the minimal filtering algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tiling {
    /// `F(2×2, 3×3)`.
    F2,
    /// `F(4×4, 3×3)`.
    F4,
}

impl Tiling {
    /// Side of an output tile.
    pub fn out(self) -> usize {
        match self {
            Self::F2 => 2,
            Self::F4 => 4,
        }
    }

    /// Transform positions per tile (`α²`): also the number of GEMMs.
    pub fn taps(self) -> usize {
        (self.out() + 2).pow(2)
    }

    /// The tiling for `n` maps of `h×w`: `F(4×4)` when it needs fewer multiplications
    /// (tiles × taps) than `F(2×2)` — not on 2×2 maps, mostly padding in its tile —
    /// and when there are at least [`MIN_F4_TILES`] tiles.
    pub fn choose(n: usize, h: usize, w: usize) -> Self {
        let tiles = |t: Self| n * h.div_ceil(t.out()) * w.div_ceil(t.out());
        let fewer = tiles(Self::F4) * Self::F4.taps() < tiles(Self::F2) * Self::F2.taps();
        if fewer && tiles(Self::F4) >= MIN_F4_TILES {
            Self::F4
        } else {
            Self::F2
        }
    }
}

/// Below this many tiles, `F(4×4)`'s 36 GEMMs are too short to pay for packing
/// their kernel planes. ResNet50 at batch 64, per forward: its two 512-channel 4×4
/// layers (64 tiles) took 19.7 ms with `F(2×2)` and 24.4 ms with `F(4×4)`; its five
/// 256-channel 8×8 layers (256 tiles) 42.6 and 31.8 ms.
const MIN_F4_TILES: usize = 256;

/// Sizes of one Winograd convolution (`x (N, H, W, C)` → `y (N, H, W, K)`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub tiling: Tiling,
}

impl Shape {
    fn tiles_h(&self) -> usize {
        self.h.div_ceil(self.tiling.out())
    }

    fn tiles_w(&self) -> usize {
        self.w.div_ceil(self.tiling.out())
    }

    /// Number of output tiles.
    pub fn tiles(&self) -> usize {
        self.n * self.tiles_h() * self.tiles_w()
    }

    /// Floats of scratch needed for the transformed input `(α², T, C)` and the GEMM
    /// products `(α², T, K)`.
    pub fn scratch(&self) -> (usize, usize) {
        let taps = self.tiling.taps();
        (taps * self.tiles() * self.c, taps * self.tiles() * self.k)
    }
}

/// Channels handled together by the transforms: one AVX-512 vector.
const LANES: usize = 16;

/// One value of a block of up to `LANES` channels.
type Lanes = [f32; LANES];

/// The 1-D transforms of one `F(m, 3)`; the 2-D ones apply them along columns, then
/// rows. Each reads its inputs at `src[i·step]` and writes `out[i·out_step]`: inlined
/// with constant steps, everything stays in registers.
trait Variant {
    /// Output tile side `m`; input tiles are `(m + 2)²`.
    const OUT: usize;
    /// `G g`: 3 → `m + 2`.
    fn kernel_1d(src: &[Lanes], step: usize, out: &mut [Lanes], out_step: usize);
    /// `Bᵀ d`: `m + 2` → `m + 2`.
    fn input_1d(src: &[Lanes], step: usize, out: &mut [Lanes], out_step: usize);
    /// `Aᵀ m`: `m + 2` → `m`.
    fn output_1d(src: &[Lanes], step: usize, out: &mut [Lanes], out_step: usize);
    /// `A dy` (the output transform's transpose): `m` → `m + 2`; the kernel
    /// gradient's transform of an output-gradient tile.
    fn grad_1d(src: &[Lanes], step: usize, out: &mut [Lanes], out_step: usize);
    /// `Gᵀ M` (the kernel transform's transpose): `m + 2` → 3; the kernel gradient's
    /// way out.
    fn kernel_grad_1d(src: &[Lanes], step: usize, out: &mut [Lanes], out_step: usize);
}

/// `F(2×2, 3×3)`.
struct Small;

impl Variant for Small {
    const OUT: usize = 2;

    #[inline(always)]
    #[allow(clippy::inline_always)] // inlined into `vectorized`'s target-feature function
    fn kernel_1d(g: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Rows of G: (1, 0, 0), (½, ½, ½), (½, −½, ½), (0, 0, 1).
        for l in 0..LANES {
            let (a, b, d) = (g[0][l], g[s][l], g[2 * s][l]);
            out[0][l] = a;
            out[o][l] = 0.5 * (a + b + d);
            out[2 * o][l] = 0.5 * (a - b + d);
            out[3 * o][l] = d;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn input_1d(d: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Bᵀ rows: (1, 0, −1, 0), (0, 1, 1, 0), (0, −1, 1, 0), (0, 1, 0, −1).
        for l in 0..LANES {
            let (d0, d1, d2, d3) = (d[0][l], d[s][l], d[2 * s][l], d[3 * s][l]);
            out[0][l] = d0 - d2;
            out[o][l] = d1 + d2;
            out[2 * o][l] = d2 - d1;
            out[3 * o][l] = d1 - d3;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn output_1d(m: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Aᵀ rows: (1, 1, 1, 0), (0, 1, −1, −1).
        for l in 0..LANES {
            let (m0, m1, m2, m3) = (m[0][l], m[s][l], m[2 * s][l], m[3 * s][l]);
            out[0][l] = m0 + m1 + m2;
            out[o][l] = m1 - m2 - m3;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn grad_1d(d: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // A rows: (1, 0), (1, 1), (1, −1), (0, −1).
        for l in 0..LANES {
            let (d0, d1) = (d[0][l], d[s][l]);
            out[0][l] = d0;
            out[o][l] = d0 + d1;
            out[2 * o][l] = d0 - d1;
            out[3 * o][l] = -d1;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn kernel_grad_1d(m: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Gᵀ rows: (1, ½, ½, 0), (0, ½, −½, 0), (0, ½, ½, 1).
        for l in 0..LANES {
            let (m0, m1, m2, m3) = (m[0][l], m[s][l], m[2 * s][l], m[3 * s][l]);
            let (sum, diff) = (0.5 * (m1 + m2), 0.5 * (m1 - m2));
            out[0][l] = m0 + sum;
            out[o][l] = diff;
            out[2 * o][l] = sum + m3;
        }
    }
}

/// `F(4×4, 3×3)`, with Lavin and Gray's interpolation points 0, ±1, ±2, ∞.
struct Large;

impl Variant for Large {
    const OUT: usize = 4;

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn kernel_1d(g: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Rows of G: (¼, 0, 0), −⅙(1, 1, 1), −⅙(1, −1, 1), (1/24, 1/12, ⅙),
        // (1/24, −1/12, ⅙), (0, 0, 1).
        for l in 0..LANES {
            let (a, b, d) = (g[0][l], g[s][l], g[2 * s][l]);
            out[0][l] = a / 4.0;
            out[o][l] = -(a + b + d) / 6.0;
            out[2 * o][l] = -(a - b + d) / 6.0;
            out[3 * o][l] = a / 24.0 + b / 12.0 + d / 6.0;
            out[4 * o][l] = a / 24.0 - b / 12.0 + d / 6.0;
            out[5 * o][l] = d;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn input_1d(d: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Bᵀ rows: (4, 0, −5, 0, 1, 0), (0, −4, −4, 1, 1, 0), (0, 4, −4, −1, 1, 0),
        // (0, −2, −1, 2, 1, 0), (0, 2, −1, −2, 1, 0), (0, 4, 0, −5, 0, 1).
        for l in 0..LANES {
            let (d0, d1, d2) = (d[0][l], d[s][l], d[2 * s][l]);
            let (d3, d4, d5) = (d[3 * s][l], d[4 * s][l], d[5 * s][l]);
            let (p, q) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
            let (r, t) = (d4 - d2, 2.0 * (d3 - d1));
            out[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            out[o][l] = p + q;
            out[2 * o][l] = p - q;
            out[3 * o][l] = r + t;
            out[4 * o][l] = r - t;
            out[5 * o][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn output_1d(m: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Aᵀ rows: (1, 1, 1, 1, 1, 0), (0, 1, −1, 2, −2, 0), (0, 1, 1, 4, 4, 0),
        // (0, 1, −1, 8, −8, 1).
        for l in 0..LANES {
            let (a, b) = (m[s][l] + m[2 * s][l], m[s][l] - m[2 * s][l]);
            let (c, d) = (m[3 * s][l] + m[4 * s][l], m[3 * s][l] - m[4 * s][l]);
            out[0][l] = m[0][l] + a + c;
            out[o][l] = b + 2.0 * d;
            out[2 * o][l] = a + 4.0 * c;
            out[3 * o][l] = b + 8.0 * d + m[5 * s][l];
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn grad_1d(d: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // A rows: (1, 0, 0, 0), (1, 1, 1, 1), (1, −1, 1, −1), (1, 2, 4, 8),
        // (1, −2, 4, −8), (0, 0, 0, 1).
        for l in 0..LANES {
            let (d0, d1, d2, d3) = (d[0][l], d[s][l], d[2 * s][l], d[3 * s][l]);
            let (even, odd) = (d0 + d2, d1 + d3);
            let (even2, odd2) = (d0 + 4.0 * d2, 2.0 * d1 + 8.0 * d3);
            out[0][l] = d0;
            out[o][l] = even + odd;
            out[2 * o][l] = even - odd;
            out[3 * o][l] = even2 + odd2;
            out[4 * o][l] = even2 - odd2;
            out[5 * o][l] = d3;
        }
    }

    #[inline(always)]
    #[allow(clippy::inline_always)]
    fn kernel_grad_1d(m: &[Lanes], s: usize, out: &mut [Lanes], o: usize) {
        // Gᵀ rows: (¼, −⅙, −⅙, 1/24, 1/24, 0), (0, −⅙, ⅙, 1/12, −1/12, 0),
        // (0, −⅙, −⅙, ⅙, ⅙, 1).
        for l in 0..LANES {
            let (s12, d12) = (m[s][l] + m[2 * s][l], m[s][l] - m[2 * s][l]);
            let (s34, d34) = (m[3 * s][l] + m[4 * s][l], m[3 * s][l] - m[4 * s][l]);
            out[0][l] = m[0][l] / 4.0 - s12 / 6.0 + s34 / 24.0;
            out[o][l] = -d12 / 6.0 + d34 / 12.0;
            out[2 * o][l] = (s34 - s12) / 6.0 + m[5 * s][l];
        }
    }
}

/// The 2-D transform `F x Fᵀ` of a 1-D `f` (`n_in` → `n_out` values) on the
/// `n_in×n_in` block `x` (row-major): `f` down the columns, then along the rows;
/// `n_out×n_out` values, row-major (`T ≥ n_in·n_out` is the scratch's size). `f` is
/// one of the [`Variant`] methods, passed as its own type so that it is inlined.
#[inline(always)]
#[allow(clippy::inline_always)]
fn separable<const T: usize, const OUT: usize>(
    x: &[Lanes],
    (n_in, n_out): (usize, usize),
    f: impl Fn(&[Lanes], usize, &mut [Lanes], usize),
) -> [Lanes; OUT] {
    // F x: n_out×n_in.
    let mut t = [[0f32; LANES]; T];
    for j in 0..n_in {
        f(&x[j..], n_in, &mut t[j..], n_in);
    }
    let mut y = [[0f32; LANES]; OUT];
    for i in 0..n_out {
        f(&t[i * n_in..], 1, &mut y[i * n_out..], 1);
    }
    y
}

/// `Bᵀ d B` of one tile block `d` (`α×α` positions, row-major; `T = α²`).
#[inline(always)]
#[allow(clippy::inline_always)]
fn input_tile<V: Variant, const T: usize>(d: &[Lanes; T]) -> [Lanes; T] {
    let a = V::OUT + 2;
    separable::<T, T>(d, (a, a), V::input_1d)
}

/// `Aᵀ m A` of one tile block `m` (`α×α`, `T = α²`): `m×m` outputs (`O = m²`),
/// row-major.
#[inline(always)]
#[allow(clippy::inline_always)]
fn output_tile<V: Variant, const T: usize, const O: usize>(m: &[Lanes; T]) -> [Lanes; O] {
    separable::<T, O>(m, (V::OUT + 2, V::OUT), V::output_1d)
}

/// `G g Gᵀ` of one block of kernels `g` (3×3 taps, row-major): `α×α` (`T = α²`).
#[inline(always)]
#[allow(clippy::inline_always)]
fn kernel_tile<V: Variant, const T: usize>(g: &[Lanes; 9]) -> [Lanes; T] {
    separable::<T, T>(g, (3, V::OUT + 2), V::kernel_1d)
}

/// `A g Aᵀ` of one `m×m` output-gradient tile block `g` (row-major in its first `m²`
/// entries): `α×α` (`T = α²`).
#[inline(always)]
#[allow(clippy::inline_always)]
fn grad_tile<V: Variant, const T: usize>(g: &[Lanes; 16]) -> [Lanes; T] {
    separable::<T, T>(g, (V::OUT, V::OUT + 2), V::grad_1d)
}

/// `Gᵀ M G` of one `α×α` block `m` (`T = α²`): the 3×3 taps, row-major.
#[inline(always)]
#[allow(clippy::inline_always)]
fn kernel_grad_tile<V: Variant, const T: usize>(m: &[Lanes; T]) -> [Lanes; 9] {
    separable::<T, 9>(m, (V::OUT + 2, 3), V::kernel_grad_1d)
}

/// Splits `count` equal planes of `buf` (each `plane` long) into tasks of
/// `rows_per_task` rows of `row` elements: each task gets its rows of every plane.
fn plane_tasks<E>(
    buf: &mut [E],
    count: usize,
    plane: usize,
    row: usize,
    rows_per_task: usize,
) -> Vec<Vec<&mut [E]>> {
    let rows = plane / row.max(1);
    let mut planes: Vec<_> = buf[..count * plane]
        .chunks_mut(plane.max(1))
        .map(|p| p.chunks_mut(rows_per_task * row.max(1)))
        .collect();
    (0..rows.div_ceil(rows_per_task))
        .map(|_| planes.iter_mut().filter_map(Iterator::next).collect())
        .collect()
}

/// Kernel transform `U_ξ = (G g Gᵀ)_ξ` of `w (K, C, 3, 3)` into `u (α², K, C)`
/// (every element written).
pub(crate) fn kernel_transform(
    w: &[f32],
    k: usize,
    c: usize,
    tiling: Tiling,
    u: &mut [MaybeUninit<f32>],
) {
    match tiling {
        Tiling::F2 => kernel_with::<Small, 16>(w, k, c, u),
        Tiling::F4 => kernel_with::<Large, 36>(w, k, c, u),
    }
}

/// Kernels per parallel task of the kernel transform.
const TASK_KERNELS: usize = 1024;

fn kernel_with<V: Variant, const T: usize>(
    w: &[f32],
    k: usize,
    c: usize,
    u: &mut [MaybeUninit<f32>],
) {
    let tasks = plane_tasks(u, T, k * c, 1, TASK_KERNELS);
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, mut planes)| {
            vectorized(
                #[inline(always)]
                || {
                    let first = task * TASK_KERNELS;
                    let count = planes[0].len();
                    for local in (0..count).step_by(LANES) {
                        let width = LANES.min(count - local);
                        // Lane `l` holds kernel `first + local + l`: one array per tap.
                        let mut g = [[0f32; LANES]; 9];
                        let src = &w[(first + local) * 9..][..width * 9];
                        for (l, kernel) in src.chunks_exact(9).enumerate() {
                            for (tap, &v) in g.iter_mut().zip(kernel) {
                                tap[l] = v;
                            }
                        }
                        let out = kernel_tile::<V, T>(&g);
                        for (plane, o) in planes.iter_mut().zip(&out) {
                            plane[local..local + width].write_copy_of_slice(&o[..width]);
                        }
                    }
                },
            );
        });
}

/// Tiles per parallel task of the input transform.
const TASK_TILES: usize = 64;

/// Copies `src` into the first lanes of `dst` (a whole vector when `src` has `LANES`
/// elements: a fixed-size copy the compiler keeps in registers).
#[inline(always)]
#[allow(clippy::inline_always)]
fn load(dst: &mut Lanes, src: &[f32]) {
    if let Ok(full) = <&Lanes>::try_from(src) {
        *dst = *full;
    } else {
        dst[..src.len()].copy_from_slice(src);
    }
}

/// `dst` (`width ≤ LANES` values) from the first lanes of `src`; a whole block is one
/// fixed-size copy (a slice copy of run-time length is a `memmove` call).
#[inline(always)]
#[allow(clippy::inline_always)]
fn store(dst: &mut [f32], src: &Lanes) {
    if let Ok(full) = <&mut Lanes>::try_from(&mut *dst) {
        *full = *src;
    } else {
        dst.copy_from_slice(&src[..dst.len()]);
    }
}

/// Runs `f` on every task, on all threads when `parallel`.
fn each<T: Send>(tasks: Vec<T>, parallel: bool, f: impl Fn((usize, T)) + Sync + Send) {
    if parallel {
        tasks.into_par_iter().enumerate().for_each(f);
    } else {
        tasks.into_iter().enumerate().for_each(f);
    }
}

/// Input transform: `V (α², T, C)`: `α²` row-major `T×C` matrices, from
/// `x (N, H, W, C)` with zero padding of 1; on all threads when `parallel`.
pub(crate) fn input_transform(x: &[f32], s: &Shape, v: &mut [f32], parallel: bool) {
    match s.tiling {
        Tiling::F2 => input_with::<Small, 16>(x, s, v, parallel),
        Tiling::F4 => input_with::<Large, 36>(x, s, v, parallel),
    }
}

fn input_with<V: Variant, const T: usize>(x: &[f32], s: &Shape, v: &mut [f32], parallel: bool) {
    let (a, o) = (V::OUT + 2, V::OUT);
    let (c, tw, th, tiles) = (s.c, s.tiles_w(), s.tiles_h(), s.tiles());
    // Each task owns the rows of one range of tiles in all α² matrices.
    let tasks = plane_tasks(v, T, tiles * c, c, TASK_TILES);
    each(tasks, parallel, |(task, mut rows)| {
        vectorized(
            #[inline(always)]
            || {
                let first = task * TASK_TILES;
                let count = rows[0].len() / c;
                // One scratch for all tiles: every position is loaded or zeroed below
                // (a fresh zeroed array per tile was a memset call per tile).
                let mut d = [[0f32; LANES]; T];
                for local in 0..count {
                    let t = first + local;
                    let (ni, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
                    for c0 in (0..c).step_by(LANES) {
                        let width = LANES.min(c - c0);
                        for (i, di) in d.iter_mut().enumerate() {
                            let ih = (o * ty + i / a).wrapping_sub(1);
                            let iw = (o * tx + i % a).wrapping_sub(1);
                            if ih < s.h && iw < s.w {
                                let at = ((ni * s.h + ih) * s.w + iw) * c + c0;
                                load(di, &x[at..at + width]);
                            } else {
                                *di = [0.0; LANES];
                            }
                        }
                        let out = input_tile::<V, T>(&d);
                        for (plane, o) in rows.iter_mut().zip(&out) {
                            store(&mut plane[local * c + c0..][..width], o);
                        }
                    }
                }
            },
        );
    });
}

/// Output transform: `y (N, H, W, K)` (every element written) from the GEMM products
/// `M (α², T, K)`, with the per-channel `then` (a BatchNorm at inference, + ReLU)
/// applied on the way out; on all threads when `parallel`.
pub(crate) fn output_transform(
    m: &[f32],
    s: &Shape,
    then: Option<&Affine>,
    y: &mut [MaybeUninit<f32>],
    parallel: bool,
) {
    match s.tiling {
        Tiling::F2 => output_with::<Small, 16, 4>(m, s, then, y, parallel),
        Tiling::F4 => output_with::<Large, 36, 16>(m, s, then, y, parallel),
    }
}

fn output_with<V: Variant, const T: usize, const O: usize>(
    m: &[f32],
    s: &Shape,
    then: Option<&Affine>,
    y: &mut [MaybeUninit<f32>],
    parallel: bool,
) {
    let o = V::OUT;
    let (k, tw, th) = (s.k, s.tiles_w(), s.tiles_h());
    let plane = s.tiles() * k;
    // One task per row of tiles (`m` output rows) of one image.
    let tasks: Vec<_> = y[..s.n * s.h * s.w * k]
        .chunks_mut(s.h * s.w * k)
        .flat_map(|img| img.chunks_mut(o * s.w * k).enumerate())
        .collect();
    each(tasks, parallel, |(row_of_tiles, (ty, rows))| {
        let ni = row_of_tiles / th;
        vectorized(
            #[inline(always)]
            || {
                let rows_here = rows.len() / (s.w * k);
                for tx in 0..tw {
                    let t = (ni * th + ty) * tw + tx;
                    for k0 in (0..k).step_by(LANES) {
                        let width = LANES.min(k - k0);
                        let mut mb = [[0f32; LANES]; T];
                        for (xi, mx) in mb.iter_mut().enumerate() {
                            let at = xi * plane + t * k + k0;
                            load(mx, &m[at..at + width]);
                        }
                        let mut out = output_tile::<V, T, O>(&mb);
                        if let Some(f) = then {
                            affine(&mut out, f, k0, width);
                        }
                        for (p, px) in out.iter().enumerate() {
                            let (r, q) = (p / o, o * tx + p % o);
                            if r >= rows_here || q >= s.w {
                                continue;
                            }
                            rows[(r * s.w + q) * k + k0..][..width]
                                .write_copy_of_slice(&px[..width]);
                        }
                    }
                }
            },
        );
    });
}

/// Transform of the output gradient for the kernel gradient: `D (α², T, K)`, `α²`
/// row-major `T×K` matrices `(A dy Aᵀ)_ξ` of the `m×m` tiles of `dy (N, H, W, K)`
/// (zero beyond the map); on all threads when `parallel`.
pub(crate) fn grad_transform(dy: &[f32], s: &Shape, d: &mut [f32], parallel: bool) {
    match s.tiling {
        Tiling::F2 => grad_with::<Small, 16>(dy, s, d, parallel),
        Tiling::F4 => grad_with::<Large, 36>(dy, s, d, parallel),
    }
}

fn grad_with<V: Variant, const T: usize>(dy: &[f32], s: &Shape, d: &mut [f32], parallel: bool) {
    let o = V::OUT;
    let (k, tw, th, tiles) = (s.k, s.tiles_w(), s.tiles_h(), s.tiles());
    let tasks = plane_tasks(d, T, tiles * k, k, TASK_TILES);
    each(tasks, parallel, |(task, mut rows)| {
        vectorized(
            #[inline(always)]
            || {
                let first = task * TASK_TILES;
                let count = rows[0].len() / k;
                // One scratch for all tiles, as in `input_with`.
                let mut g = [[0f32; LANES]; 16];
                for local in 0..count {
                    let t = first + local;
                    let (ni, ty, tx) = (t / (th * tw), t / tw % th, t % tw);
                    for k0 in (0..k).step_by(LANES) {
                        let width = LANES.min(k - k0);
                        for (i, gi) in g[..o * o].iter_mut().enumerate() {
                            let (oh, ow) = (o * ty + i / o, o * tx + i % o);
                            if oh < s.h && ow < s.w {
                                let at = ((ni * s.h + oh) * s.w + ow) * k + k0;
                                load(gi, &dy[at..at + width]);
                            } else {
                                *gi = [0.0; LANES];
                            }
                        }
                        let out = grad_tile::<V, T>(&g);
                        for (plane, o) in rows.iter_mut().zip(&out) {
                            store(&mut plane[local * k + k0..][..width], o);
                        }
                    }
                }
            },
        );
    });
}

/// The kernel gradient `(K, C, 3, 3)` from the GEMM products `M (α², C, K)`.
pub(crate) fn kernel_grad_output(m: &[f32], s: &Shape) -> Vec<f32> {
    match s.tiling {
        Tiling::F2 => kernel_grad_with::<Small, 16>(m, s),
        Tiling::F4 => kernel_grad_with::<Large, 36>(m, s),
    }
}

fn kernel_grad_with<V: Variant, const T: usize>(m: &[f32], s: &Shape) -> Vec<f32> {
    let (c, k) = (s.c, s.k);
    let plane = c * k;
    // One task per block of `LANES` output channels: its kernels are contiguous.
    par_vec(k * c * 9, LANES * c * 9, |block, out| {
        let k0 = block * LANES;
        let width = LANES.min(k - k0);
        vectorized(
            #[inline(always)]
            || {
                for ci in 0..c {
                    let mut mb = [[0f32; LANES]; T];
                    for (xi, mx) in mb.iter_mut().enumerate() {
                        let at = xi * plane + ci * k + k0;
                        load(mx, &m[at..at + width]);
                    }
                    let w = kernel_grad_tile::<V, T>(&mb);
                    for l in 0..width {
                        let dst = &mut out[(l * c + ci) * 9..][..9];
                        for (d, tap) in dst.iter_mut().zip(&w) {
                            *d = tap[l];
                        }
                    }
                }
            },
        );
    })
}

/// `then` on channels `k0..k0 + width` of each output pixel.
#[inline(always)]
#[allow(clippy::inline_always)]
fn affine<const O: usize>(out: &mut [Lanes; O], then: &Affine, k0: usize, width: usize) {
    let (mut scale, mut shift) = ([0f32; LANES], [0f32; LANES]);
    load(&mut scale, &then.scale[k0..k0 + width]);
    load(&mut shift, &then.shift[k0..k0 + width]);
    for px in out {
        for ((v, a), b) in px.iter_mut().zip(&scale).zip(&shift) {
            let z = *v * a + b;
            *v = if then.relu { z.max(0.0) } else { z };
        }
    }
}
