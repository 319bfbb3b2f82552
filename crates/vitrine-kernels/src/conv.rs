//! 2-D convolution (groups = 1, no dilation) on channels-last data whose forward
//! *and* both gradients are GEMMs.
//!
//! Candle's CPU forward conv is already im2col + GEMM, but its backward is not: the
//! input gradient is a direct-loop transposed convolution and the kernel gradient a
//! large-kernel convolution, together ≈ 75% of a ResNet training step. These kernels
//! work on `(N, H, W, C)` activations, where every matrix the GEMMs need is already
//! row-major with batch × pixels on the rows: with `M = N·OH·OW`, `CKK = KH·KW·C`,
//!
//! * forward: `Y (M×K) = cols (M×CKK) · W'ᵀ`, `Y` being the `(N, OH, OW, K)` output;
//! * kernel gradient: `dW'ᵀ (CKK×K) = colsᵀ · dY` (cols rebuilt from `x`);
//! * input gradient: `dcols (M×CKK) = dY · W'`, then `dX = col2im(dcols)`;
//!
//! where `W'` is the kernel reordered to `(K, KH, KW, C)`. A 1×1 stride-1 conv needs
//! no im2col at all (`cols` is `x`). The `gemm` crate runs these row-major products
//! 2–4× faster than the channel-major ones a `(N, C, H, W)` layout gives for the kernel
//! gradients and the large 3×3 layers, about as fast elsewhere and a little slower only
//! on 4×4 maps (measured per ResNet50 layer at batch 48); and no reorder of activations
//! is needed between layers. 3×3, stride-1, padding-1 forwards run by Winograd
//! ([`winograd`]), and so do both their gradients where there are enough tiles.
//!
//! Inputs are `x (N, H, W, C)` and torch's kernel layout `w (K, C, KH, KW)`, outputs
//! `(N, OH, OW, K)`; gradients come back in the layouts of `x` and `w`.

mod bf16;
mod bf16_activations;
mod bf16_gradients;
mod gemm;
mod im2col;
mod winograd;

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

pub use self::bf16::{Epilogue, amx_available, from_bf16_bits, round_bf16, to_bf16_bits};
use self::bf16::{Packed, matmul_bf16, matmul_bf16_bits, to_bf16, with_bits};
pub use self::bf16_activations::{bf16_from_f32, f32_from_bf16, forward_bf16};
use self::bf16_gradients::{Operand, kernel_grad_bf16};
use self::gemm::{Mat, as_uninit, filled, matmul, written};
use self::im2col::{col2im, im2col, im2col_rows, kernel_to_taps, taps_to_kernel};
use self::winograd::Tiling;
use crate::Error;
use crate::buffer::par_vec;
use crate::elementwise::{
    Affine, Shortcut, apply_in_place, apply_rows, residual_relu, residual_relu_rows,
};

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pad: usize,
}

impl Geom {
    /// From the input's `(N, H, W, C)` and the kernel's `(K, C, KH, KW)` dims, with
    /// the same stride and zero padding on both axes.
    pub fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self, Error> {
        let (&[n, h, w, c], &[k, c2, kh, kw]) = (x, wt) else {
            return Err(Error::new(format!(
                "conv2d: expected rank-4 input and kernel, got {x:?} and {wt:?}"
            )));
        };
        if c != c2 {
            return Err(Error::new(format!(
                "conv2d: input has {c} channels, kernel expects {c2}"
            )));
        }
        if stride == 0 {
            return Err(Error::new("conv2d: stride must be at least 1"));
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            return Err(Error::new(format!(
                "conv2d: kernel {kh}×{kw} larger than padded input {h}×{w}"
            )));
        }
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (w + 2 * pad - kw) / stride + 1;
        Ok(Self {
            n,
            c,
            h,
            w,
            k,
            kh,
            kw,
            oh,
            ow,
            stride,
            pad,
        })
    }

    /// Output `(OH, OW, K)`.
    pub fn out_dims(&self) -> (usize, usize, usize) {
        (self.oh, self.ow, self.k)
    }

    /// A 3×3, stride-1, padding-1 conv with work to do: Winograd's case.
    fn is_winograd(&self) -> bool {
        self.kh == 3
            && self.kw == 3
            && self.stride == 1
            && self.pad == 1
            && self.c * self.k * self.m() > 0
    }

    /// Whether the gradients of this conv run by Winograd too: a 3×3/s1/p1 conv with
    /// at least [`MIN_BACKWARD_TILES`] tiles. With fewer, the kernel gradient's `α²`
    /// GEMMs reduce over too few tiles to pay for writing their `α²·C·K` products:
    /// per step at batch 48 (2 threads), 512 channels on 2×2 maps took 9.9 ms for
    /// the kernel gradient against 5.2 by im2col GEMM, on 4×4 maps (192 tiles) 14.9
    /// against 15.7, on 8×8 maps (256 channels, 768 tiles) 12.4 against 18.6.
    fn is_winograd_backward(&self) -> bool {
        self.is_winograd()
            && self
                .winograd(Tiling::choose(self.n, self.h, self.w))
                .tiles()
                >= MIN_BACKWARD_TILES
    }

    /// Whether this conv's gradients run by Winograd in `precision`: in f32 only. In
    /// bf16 the tiles beat both tilings' fewer multiplications (ResNet50 at 128 px,
    /// batch 48: the 8×8 layers' `F(2×2)` gradients, a step 2% faster over four
    /// alternating rounds, 17.02 against 16.65 triplets/s; the 32×32 and 16×16
    /// layers' `F(4×4)` ones, 48 and 37 ms a step against 28 and 22 on the tiles once
    /// the kernel gradient's im2col is made chunk by chunk).
    fn is_winograd_backward_in(&self, precision: Precision) -> bool {
        precision == Precision::F32 && self.is_winograd_backward()
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// GEMM rows: batch × output pixels.
    fn m(&self) -> usize {
        self.n * self.p()
    }

    /// Reduction length of the forward GEMM.
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The sizes of this conv (3×3, stride 1, padding 1) by Winograd.
    fn winograd(&self, tiling: Tiling) -> winograd::Shape {
        winograd::Shape {
            n: self.n,
            h: self.h,
            w: self.w,
            c: self.c,
            k: self.k,
            tiling,
        }
    }
}

thread_local! {
    /// Scratch buffers reused across calls on this thread (cols, dcols): fresh 100 MB
    /// allocations per layer cost more in page faults than the copies.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch slices of the given lengths (contents unspecified).
fn with_scratch<R>(lens: [usize; 2], f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        // A re-entrant call (not expected) gets fresh buffers instead of panicking.
        let Ok(mut bufs) = cell.try_borrow_mut() else {
            let mut a = vec![0f32; lens[0]];
            let mut b = vec![0f32; lens[1]];
            return f(&mut a, &mut b);
        };
        for (buf, &len) in bufs.iter_mut().zip(&lens) {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        let [a, b] = &mut *bufs;
        f(&mut a[..lens[0]], &mut b[..lens[1]])
    })
}

/// How a forward conv runs.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    /// Applied to the output (fused into the Winograd output transform; a separate
    /// pass otherwise): a BatchNorm with fixed statistics, ReLU optional.
    pub then: Option<&'a Affine<'a>>,
    /// The end of a residual block, with `then` (required with it; its ReLU then
    /// always applies): `max(0, y·scale + shift + shortcut)` per element, on the GEMM
    /// path in the same pass as `then` while the block is in cache.
    pub shortcut: Option<&'a Shortcut<'a>>,
    /// Threads the GEMMs are split over (1: single-threaded GEMMs); also picks how
    /// Winograd chunks the batch. The work runs on the caller's rayon pool.
    pub threads: usize,
    /// The GEMMs' operands: f32, or rounded to bf16.
    pub precision: Precision,
}

impl Forward<'_> {
    /// A plain f32 forward, nothing applied to the output.
    pub fn plain(threads: usize) -> Self {
        Self {
            then: None,
            shortcut: None,
            threads,
            precision: Precision::F32,
        }
    }
}

/// The numbers a conv's GEMMs multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// Operands rounded to bfloat16 (8 bits of mantissa), sums in f32: on AMX tiles
    /// where the CPU has them ([`amx_available`]), emulated elsewhere with the same
    /// rounding. The forward rounds input and kernel, [`backward_in`] `dy` with the
    /// kernel or the input (no Winograd in bf16: the tiles multiply the convs
    /// directly).
    Bf16,
}

/// `y (N, OH, OW, K)` of `x (N, H, W, C)` ⋆ `wt (K, C, KH, KW)`.
pub fn forward(x: &[f32], wt: &[f32], g: &Geom, how: Forward<'_>) -> Vec<f32> {
    let Forward {
        then,
        shortcut,
        threads,
        precision,
    } = how;
    assert!(
        shortcut.is_none() || then.is_some(),
        "conv::forward: a shortcut without its BatchNorm"
    );
    let (m, ckk) = (g.m(), g.ckk());
    // bf16 rounds what its GEMMs multiply; Winograd's transformed operands lose ~6%
    // of the output's scale that way (F(4×4)), so bf16 convs take the GEMM path.
    if g.is_winograd() && precision == Precision::F32 {
        let tiling = Tiling::choose(g.n, g.h, g.w);
        if let (Some(f), Some(s)) = (then, shortcut) {
            let mut y = forward_winograd(x, wt, g, tiling, None, threads);
            residual_relu(&mut y, f.scale, f.shift, s);
            return y;
        }
        return forward_winograd(x, wt, g, tiling, then, threads);
    }
    // `then`, with the shortcut if any, on the rows of `yb` starting at element `off`.
    let epilogue = |off: usize, yb: &mut [f32]| match (then, shortcut) {
        (Some(f), Some(s)) => residual_relu_rows(off, yb, f.scale, f.shift, s),
        (Some(f), None) => apply_rows(yb, f),
        (None, _) => {}
    };
    let taps;
    let w_taps = if g.kh * g.kw == 1 {
        wt
    } else {
        taps = kernel_to_taps(wt, g);
        &taps
    };
    // Y (M×K, row-major) = cols (M×CKK) · W'ᵀ (W' is (K, CKK) row-major).
    let rhs = Mat::rows_t(w_taps, ckk);
    let k = g.k;
    // Packed once for all row blocks.
    let packed = (precision == Precision::Bf16).then(|| Packed::new(ckk, k, &rhs));
    let gemm = |px: usize, y: &mut [MaybeUninit<f32>], lhs: &Mat, threads: usize| match &packed {
        Some(p) => matmul_bf16(px, y, lhs, p, threads),
        None => matmul((px, k, ckk), y, (k, 1), lhs, &rhs, threads),
    };
    // On AMX tiles: the input in bf16 once, and im2col of those bits straight into
    // the tiles' rows (no f32 cols, converted once instead of once per tap). A 1×1
    // converts its rows block by block instead, in cache.
    let depth = packed.as_ref().and_then(Packed::tile_depth);
    let bits = depth.filter(|_| !g.pointwise()).and_then(|_| to_bf16(x));
    // The GEMM into `y`, whole output rows from row `first` on, from those bits.
    let gemm_bits = |(xb, p): (&[u16], &Packed), first: usize, y: &mut [MaybeUninit<f32>]| {
        let rows = y.len() / k;
        let kp = depth.unwrap_or(ckk);
        with_im2col_bits(xb, g, (first, rows), kp, |a| {
            matmul_bf16_bits(rows, y, a, p);
        });
    };
    let tiles = bits.as_deref().zip(packed.as_ref());
    let Some(block) = forward_block(g, threads, packed.is_some()) else {
        // Too few rows to give each thread blocks worth repacking the kernel for: one
        // GEMM (split inside `matmul`), then `then` as a pass of its own.
        let mut y = filled(m * k, |y| {
            if let Some(tiles) = tiles {
                let share = m.div_ceil(threads.max(1)).div_ceil(g.ow) * g.ow;
                y.par_chunks_mut(share * k)
                    .enumerate()
                    .for_each(|(i, y)| gemm_bits(tiles, i * share, y));
            } else if g.pointwise() {
                gemm(m, y, &Mat::rows(x, ckk), threads);
            } else {
                with_scratch([m * ckk, 0], |cols, _| {
                    im2col(x, g, cols);
                    gemm(m, y, &Mat::rows(cols, ckk), threads);
                });
            }
        });
        match (then, shortcut) {
            (Some(f), Some(s)) => residual_relu(&mut y, f.scale, f.shift, s),
            (Some(f), None) => apply_in_place(&mut y, f),
            (None, _) => {}
        }
        return y;
    };
    // By blocks of whole output rows: each block's im2col, GEMM and `then` run back
    // to back on one thread while the block is in cache, instead of three passes over
    // memory.
    let run = |b: usize, yb: &mut [MaybeUninit<f32>]| {
        let (first, px) = (b * block, yb.len() / k);
        let yb = if let Some(tiles) = tiles {
            written(yb, |yb| gemm_bits(tiles, first, yb))
        } else if g.pointwise() {
            let lhs = Mat::rows(&x[first * ckk..], ckk);
            written(yb, |yb| gemm(px, yb, &lhs, 1))
        } else {
            with_scratch([px * ckk, 0], |cols, _| {
                im2col_rows(x, g, first / g.ow, cols, ckk);
                written(yb, |yb| gemm(px, yb, &Mat::rows(cols, ckk), 1))
            })
        };
        epilogue(first * k, yb);
    };
    filled(m * k, |y| {
        let chunks = (block * k).max(1);
        if threads > 1 {
            y.par_chunks_mut(chunks)
                .enumerate()
                .for_each(|(b, yb)| run(b, yb));
        } else {
            y.chunks_mut(chunks)
                .enumerate()
                .for_each(|(b, yb)| run(b, yb));
        }
    })
}

/// Pixels per block of [`forward`]'s GEMM path, whole output rows: at least
/// [`BLOCK_PIXELS`], more where the kernel is large and each block repacks it (f32:
/// keep that under ~1/64 of the block's multiply-adds; bf16 packs once per conv);
/// `None` where the output has fewer than two such blocks per thread (small maps under
/// large kernels), which then run as one GEMM split inside [`matmul`].
fn forward_block(g: &Geom, threads: usize, packed_once: bool) -> Option<usize> {
    let repack = if packed_once { 0 } else { g.ckk() * g.k / 64 };
    let pixels = BLOCK_PIXELS.max(repack);
    let rows = pixels.div_ceil(g.ow.max(1));
    (g.m() >= 2 * threads.max(1) * pixels).then_some(rows * g.ow)
}

/// `f` on the im2col of the bf16 bits `x` for output pixels `first..first + rows`
/// (whole output rows), each pixel's values `kp` apart, in this thread's scratch
/// (padded to whole 32-row tiles, the padding unspecified).
fn with_im2col_bits<R>(
    x: &[u16],
    g: &Geom,
    (first, rows): (usize, usize),
    kp: usize,
    f: impl FnOnce(&[u16]) -> R,
) -> R {
    with_bits(rows.div_ceil(32) * 32 * kp, |a| {
        im2col_rows(x, g, first / g.ow, &mut a[..rows * kp], kp);
        f(a)
    })
}

/// Fewest tiles for the gradients by Winograd ([`Geom::is_winograd_backward`]).
const MIN_BACKWARD_TILES: usize = 256;

/// Fewest pixels per block of [`forward`]'s GEMM path.
const BLOCK_PIXELS: usize = 512;

/// [`forward`] of a 3×3, stride-1, padding-1 conv by Winograd's `F(m×m, 3×3)`.
fn forward_winograd(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    tiling: Tiling,
    then: Option<&Affine>,
    threads: usize,
) -> Vec<f32> {
    let s = g.winograd(tiling);
    // Transform, multiply and transform back one chunk of images at a time on each
    // thread, so the transformed data stays in cache; with few tiles, the whole batch
    // at once with the GEMMs spread over threads instead.
    let chunk = CHUNK_TILES.div_ceil(s.tiles() / g.n.max(1)).max(1);
    let chunk = (chunk * threads <= g.n).then_some(chunk);
    winograd_in_chunks(x, wt, g, tiling, then, chunk)
}

/// [`forward_winograd`] by chunks of `chunk` images, or the whole batch at once.
fn winograd_in_chunks(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    tiling: Tiling,
    then: Option<&Affine>,
    chunk: Option<usize>,
) -> Vec<f32> {
    let s = g.winograd(tiling);
    let (c, k) = (g.c, g.k);
    let u = filled(tiling.taps() * k * c, |u| {
        winograd::kernel_transform(wt, k, c, tiling, u);
    });
    let (x_image, y_image) = (g.h * g.w * c, g.h * g.w * k);
    let run = |x: &[f32], y: &mut [MaybeUninit<f32>], parallel: bool| {
        let s = winograd::Shape {
            n: y.len() / y_image,
            ..s
        };
        let tiles = s.tiles();
        let (v_len, m_len) = s.scratch();
        with_scratch([v_len, m_len], |v, prods| {
            winograd::input_transform(x, &s, v, parallel);
            // M_ξ (T×K) = V_ξ (T×C) · U_ξᵀ (U_ξ is (K, C)), stored (α², T, K).
            let v = &*v;
            let gemm = |(xi, m_xi): (usize, &mut [f32])| {
                let lhs = Mat::rows(&v[xi * tiles * c..(xi + 1) * tiles * c], c);
                let rhs = Mat::rows_t(&u[xi * k * c..(xi + 1) * k * c], c);
                matmul((tiles, k, c), as_uninit(m_xi), (k, 1), &lhs, &rhs, 1);
            };
            if parallel {
                // Independent GEMMs: one thread each beats splitting each one.
                prods
                    .par_chunks_exact_mut(tiles * k)
                    .enumerate()
                    .for_each(gemm);
            } else {
                prods.chunks_exact_mut(tiles * k).enumerate().for_each(gemm);
            }
            winograd::output_transform(prods, &s, then, y, parallel);
        });
    };
    filled(g.m() * k, |y| match chunk {
        Some(chunk) => y
            .par_chunks_mut(chunk * y_image)
            .zip(x.par_chunks(chunk * x_image))
            .for_each(|(y, x)| run(x, y, false)),
        None => run(x, y, true),
    })
}

/// Tiles per chunk of a chunked Winograd conv: a chunk's transformed input and
/// products (`α² × tiles × (C + K)` floats, 4.7 MB at 64 channels with `F(4×4)`) stay
/// in the L3 cache between the transforms and the GEMMs, and the GEMMs are still long
/// enough to pay for packing their kernel planes (ResNet50 at batch 64: its three
/// 64-channel 32×32 layers took 31.9 ms per forward instead of 41.3 unchunked;
/// chunks of 128 tiles were slower).
const CHUNK_TILES: usize = 256;

/// Below this many GEMM rows the kernel gradient runs as one parallel GEMM; above, as
/// one single-threaded GEMM per thread over a share of the rows, summed (the `gemm`
/// crate parallelises a long reduction poorly: 1.2–1.5× faster split).
const SPLIT_REDUCTION_ROWS: usize = 8192;

/// `dW' (K, CKK) = dYᵀ · cols`, computed as `dW'ᵀ (CKK×K, column-major) = colsᵀ · dY`.
fn kernel_grad(cols: &[f32], dy: &[f32], g: &Geom, threads: usize) -> Vec<f32> {
    let (m, ckk, k) = (g.m(), g.ckk(), g.k);
    let t = threads;
    if t <= 1 || m < SPLIT_REDUCTION_ROWS {
        let lhs = Mat::rows_t(cols, ckk);
        return filled(k * ckk, |dw| {
            matmul((ckk, k, m), dw, (1, ckk), &lhs, &Mat::rows(dy, k), t);
        });
    }
    let share = m.div_ceil(t);
    let partials: Vec<Vec<f32>> = (0..t)
        .into_par_iter()
        .map(|i| {
            let lo = (i * share).min(m);
            let len = share.min(m - lo);
            let lhs = Mat::rows_t(&cols[lo * ckk..(lo + len) * ckk], ckk);
            let rhs = Mat::rows(&dy[lo * k..(lo + len) * k], k);
            filled(k * ckk, |dw| {
                matmul((ckk, k, len), dw, (1, ckk), &lhs, &rhs, 1);
            })
        })
        .collect();
    let mut iter = partials.into_iter();
    let mut total = iter.next().unwrap_or_else(|| vec![0f32; k * ckk]);
    for p in iter {
        total.par_iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Which gradients a conv's backward computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The input gradient `dx`.
    pub dx: bool,
    /// The kernel gradient `dw`.
    pub dw: bool,
}

/// The gradients of a conv, each present when it was [`Wanted`].
#[derive(Debug, Clone, Default)]
pub struct Grads {
    /// `(N, H, W, C)`, like `x`.
    pub dx: Option<Vec<f32>>,
    /// `(K, C, KH, KW)`, like the kernel.
    pub dw: Option<Vec<f32>>,
}

/// The gradients of the conv of `x` by `wt` from the output gradient
/// `dy (N, OH, OW, K)`; GEMMs split over `threads` as in [`Forward::threads`].
pub fn backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    wanted: Wanted,
    threads: usize,
) -> Grads {
    backward_in(x, wt, dy, g, wanted, threads, Precision::F32)
}

/// [`backward`] with the GEMMs' operands in `precision`. In bf16 the GEMMs round
/// what they multiply (`dy` and the kernel, or `dy` and the input) and sum in f32,
/// on AMX tiles where they run; the 3×3 convs whose gradients run by Winograd stay
/// f32 there (rounding Winograd's transformed operands costs too much accuracy).
pub fn backward_in(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    wanted: Wanted,
    threads: usize,
    precision: Precision,
) -> Grads {
    // Each gradient takes the thread's scratch buffers in turn.
    let dw = wanted
        .dw
        .then(|| kernel_gradient(x, dy, g, threads, precision));
    let dx = wanted
        .dx
        .then(|| input_gradient(wt, dy, g, threads, precision));
    Grads { dx, dw }
}

/// `(K, C, KH, KW)` → `(C, K, KH, KW)` turned 180° in space: the kernel whose
/// stride-1 conv of `dy` is the input gradient.
fn flipped_kernel(wt: &[f32], g: &Geom) -> Vec<f32> {
    let (kh, kw) = (g.kh, g.kw);
    let mut out = vec![0f32; wt.len()];
    for k in 0..g.k {
        for c in 0..g.c {
            let src = &wt[(k * g.c + c) * kh * kw..][..kh * kw];
            let dst = &mut out[(c * g.k + k) * kh * kw..][..kh * kw];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    out
}

/// The kernel gradient `(K, C, KH, KW)` of the conv of `x` from `dy`.
fn kernel_gradient(
    x: &[f32],
    dy: &[f32],
    g: &Geom,
    threads: usize,
    precision: Precision,
) -> Vec<f32> {
    if g.is_winograd_backward_in(precision) {
        let tiling = Tiling::choose(g.n, g.h, g.w);
        return kernel_grad_winograd(x, dy, g, tiling, threads);
    }
    let sizes = (g.m(), g.ckk(), g.k);
    if precision == Precision::Bf16 {
        // A 1×1's input is its own im2col; otherwise it is made chunk by chunk as the
        // tiles reach it.
        return if g.pointwise() {
            kernel_grad_bf16(Operand::Rows(x), dy, sizes, threads)
        } else {
            taps_to_kernel(
                &kernel_grad_bf16(Operand::Im2col(x, g), dy, sizes, threads),
                g,
            )
        };
    }
    if g.pointwise() {
        return kernel_grad(x, dy, g, threads);
    }
    let dw = with_scratch([g.m() * g.ckk(), 0], |cols, _| {
        im2col(x, g, cols);
        kernel_grad(cols, dy, g, threads)
    });
    taps_to_kernel(&dw, g)
}

/// The input gradient `(N, H, W, C)` of the conv by `wt` from `dy`.
fn input_gradient(
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    threads: usize,
    precision: Precision,
) -> Vec<f32> {
    let (m, ckk) = (g.m(), g.ckk());
    if g.is_winograd_backward_in(precision) {
        return input_grad_winograd(wt, dy, g, threads);
    }
    let square = g.kh == g.kw && g.pad < g.kh;
    if precision == Precision::Bf16 && g.stride == 1 && !g.pointwise() && square {
        // A stride-1 conv's input gradient is the conv of `dy` by the kernel flipped
        // and transposed, padded by `KH − 1 − pad` (its output is `H×W` again): the
        // tiles read `dy` by im2col of its bf16 bits, where the GEMM + col2im path
        // would write and re-read KH·KW values per input pixel.
        let dims = [g.n, g.oh, g.ow, g.k];
        let gt = Geom::new(&dims, &[g.c, g.k, g.kh, g.kw], 1, g.kh - 1 - g.pad);
        if let Ok(gt) = gt {
            let how = Forward {
                precision,
                ..Forward::plain(threads)
            };
            return forward(dy, &flipped_kernel(wt, g), &gt, how);
        }
    }
    // dcols (M×CKK, row-major) = dY (M×K) · W' (K×CKK).
    let taps;
    let w_taps = if g.pointwise() {
        wt
    } else {
        taps = kernel_to_taps(wt, g);
        &taps
    };
    let (lhs, rhs) = (Mat::rows(dy, g.k), Mat::rows(w_taps, ckk));
    let packed = (precision == Precision::Bf16).then(|| Packed::new(g.k, ckk, &rhs));
    let gemm = |dcols: &mut [MaybeUninit<f32>]| match &packed {
        Some(p) => matmul_bf16(m, dcols, &lhs, p, threads),
        None => matmul((m, ckk, g.k), dcols, (ckk, 1), &lhs, &rhs, threads),
    };
    if g.pointwise() {
        return filled(m * ckk, gemm);
    }
    with_scratch([0, m * ckk], |_, dcols| {
        gemm(as_uninit(dcols));
        col2im(dcols, g)
    })
}

/// The kernel gradient of a 3×3, stride-1, padding-1 conv by Winograd: `dW` is a
/// correlation of `x` with `dy`, i.e. `F(3×3, m×m)` on the forward's tiles. With the
/// forward's `Bᵀ` on the input tiles, `A` (the output transform's transpose) on the
/// `m×m` tiles of `dy` and `Gᵀ` (the kernel transform's transpose) on the way out,
/// `α²` GEMMs `M_ξ (C×K) = V_ξᵀ · D_ξ` reduce over the tiles: 2.25× (`F(2×2)`) or 4×
/// (`F(4×4)`) fewer multiplications than the im2col GEMM, and no im2col.
fn kernel_grad_winograd(
    x: &[f32],
    dy: &[f32],
    g: &Geom,
    tiling: Tiling,
    threads: usize,
) -> Vec<f32> {
    let s = g.winograd(tiling);
    let (c, k, tiles, taps) = (g.c, g.k, s.tiles(), s.tiling.taps());
    let (v_len, d_len) = s.scratch();
    let parallel = threads > 1;
    let m = with_scratch([v_len, d_len], |v, d| {
        winograd::input_transform(x, &s, v, parallel);
        winograd::grad_transform(dy, &s, d, parallel);
        let (v, d) = (&*v, &*d);
        filled(taps * c * k, |m| {
            let gemm = |(xi, m_xi): (usize, &mut [MaybeUninit<f32>])| {
                let lhs = Mat::rows_t(&v[xi * tiles * c..(xi + 1) * tiles * c], c);
                let rhs = Mat::rows(&d[xi * tiles * k..(xi + 1) * tiles * k], k);
                matmul((c, k, tiles), m_xi, (k, 1), &lhs, &rhs, 1);
            };
            if parallel {
                // Independent GEMMs, one thread each, as in the forward.
                m.par_chunks_exact_mut(c * k).enumerate().for_each(gemm);
            } else {
                m.chunks_exact_mut(c * k).enumerate().for_each(gemm);
            }
        })
    });
    winograd::kernel_grad_output(&m, &s)
}

/// `dx` of a 3×3, stride-1, padding-1 conv is itself such a conv: of `dy` by the
/// kernel with `K` and `C` swapped and each 3×3 rotated by 180°. Run by Winograd
/// like the forward, it needs neither the 9×-larger `dcols` nor col2im's scatter.
fn input_grad_winograd(wt: &[f32], dy: &[f32], g: &Geom, threads: usize) -> Vec<f32> {
    let (k, c) = (g.k, g.c);
    let flipped = par_vec(wt.len(), k * 9, |ci, out| {
        for (ki, dst) in out.chunks_exact_mut(9).enumerate() {
            let src = &wt[(ki * c + ci) * 9..][..9];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    });
    let back = Geom { c: k, k: c, ..*g };
    forward_winograd(
        dy,
        &flipped,
        &back,
        Tiling::choose(g.n, g.h, g.w),
        None,
        threads,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rel_err, values};

    /// 3×3, stride-1, padding-1 conv of `x (N, H, W, C)` by `w (K, C, 3, 3)` in f64.
    fn direct(x: &[f32], w: &[f32], [n, h, wd, c]: [usize; 4], k: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * h * wd * k];
        for ni in 0..n {
            for oh in 0..h {
                for ow in 0..wd {
                    for ki in 0..k {
                        let mut acc = 0f64;
                        for (dh, dw) in (0..9).map(|t| (t / 3, t % 3)) {
                            let (ih, iw) = ((oh + dh).wrapping_sub(1), (ow + dw).wrapping_sub(1));
                            if ih >= h || iw >= wd {
                                continue;
                            }
                            for ci in 0..c {
                                let xv = x[((ni * h + ih) * wd + iw) * c + ci];
                                let wv = w[((ki * c + ci) * 3 + dh) * 3 + dw];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                        y[((ni * h + oh) * wd + ow) * k + ki] = acc;
                    }
                }
            }
        }
        y
    }

    /// Odd maps with partial edge tiles, channels off the 16-lane blocks, a 1×1 map.
    const SHAPES: [([usize; 4], usize); 4] = [
        ([8, 31, 29, 19], 21),
        ([3, 4, 4, 16], 16),
        ([2, 1, 1, 5], 7),
        ([5, 9, 6, 33], 40),
    ];

    #[test]
    fn winograd_tilings_and_chunkings_match_the_direct_conv() {
        for (i, &(dims @ [n, h, w, c], k)) in SHAPES.iter().enumerate() {
            let x = values(n * h * w * c, 1 + i as u64);
            let wt = values(k * c * 9, 100 + i as u64);
            let g = Geom::new(&dims, &[k, c, 3, 3], 1, 1).expect("geom");
            let reference = direct(&x, &wt, dims, k);
            // Measured: F(2×2) 0.5–2e-7, F(4×4) 0.2–4e-6 — its transform coefficients
            // (up to 8 and 1/24) round more; both far below what an embedding notices.
            for (tiling, tolerance) in [(Tiling::F2, 1e-6), (Tiling::F4, 2e-5)] {
                for chunk in [None, Some(1), Some(3)] {
                    let y = winograd_in_chunks(&x, &wt, &g, tiling, None, chunk);
                    let err = rel_err(&y, &reference);
                    assert!(
                        err < tolerance,
                        "{dims:?}→{k} {tiling:?} chunk {chunk:?}: error {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn winograd_kernel_gradients_match_direct_loops_in_both_tilings() {
        for (i, &(dims @ [n, h, w, c], k)) in SHAPES.iter().enumerate() {
            let x = values(n * h * w * c, 200 + i as u64);
            let wt = values(k * c * 9, 300 + i as u64);
            let r = values(n * h * w * k, 400 + i as u64);
            let g = Geom::new(&dims, &[k, c, 3, 3], 1, 1).expect("geom");
            let (_, _, dw0) = direct_general(&x, &wt, &r, dims, [k, 3, 3], (1, 1));
            for (tiling, tolerance) in [(Tiling::F2, 1e-6), (Tiling::F4, 2e-5)] {
                for threads in [1, 3] {
                    let dw = kernel_grad_winograd(&x, &r, &g, tiling, threads);
                    let err = rel_err(&dw, &dw0);
                    assert!(
                        err < tolerance,
                        "{dims:?}→{k} {tiling:?} threads {threads}: error {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn batchnorm_relu_on_the_way_out_equals_a_separate_pass() {
        let (dims @ [n, h, w, c], k) = SHAPES[0];
        let x = values(n * h * w * c, 7);
        let wt = values(k * c * 9, 8);
        let scale = values(k, 9);
        let shift = values(k, 10);
        let g = Geom::new(&dims, &[k, c, 3, 3], 1, 1).expect("geom");
        for relu in [false, true] {
            let then = Affine {
                scale: &scale,
                shift: &shift,
                relu,
            };
            let how = Forward::plain(2);
            let mut separate = forward(&x, &wt, &g, how);
            apply_in_place(&mut separate, &then);
            let then = Some(&then);
            let fused = forward(&x, &wt, &g, Forward { then, ..how });
            assert_eq!(fused, separate, "relu {relu}");
            assert_eq!(relu, fused.iter().all(|&v| v >= 0.0));
        }
        // The GEMM path (here a 1×1 conv) applies it as a separate pass.
        let g = Geom::new(&dims, &[k, c, 1, 1], 1, 0).expect("geom");
        let wt = values(k * c, 11);
        let then = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let mut separate = forward(&x, &wt, &g, Forward::plain(2));
        apply_in_place(&mut separate, &then);
        let how = Forward {
            then: Some(&then),
            ..Forward::plain(2)
        };
        assert_eq!(forward(&x, &wt, &g, how), separate);
    }

    #[test]
    fn a_residual_end_fused_into_the_conv_equals_the_separate_pass() {
        let ([n, h, w, c], k) = SHAPES[0];
        let x = values(n * h * w * c, 21);
        let (scale, shift) = (values(k, 22), values(k, 23));
        let identity = values(n * h * w * k, 24);
        let (proj, psc, psh) = (values(n * h * w * k, 25), values(k, 26), values(k, 27));
        let shortcuts = [
            Shortcut::Identity(&identity),
            Shortcut::Normalised(&proj, &psc, &psh),
        ];
        let then = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        // 1×1 (GEMM by row blocks, and one split GEMM on a single image) and 3×3
        // (Winograd).
        for (kernel, pad, batch) in [(1, 0, n), (1, 0, 1), (3, 1, n)] {
            let dims = [batch, h, w, c];
            let x = &x[..batch * h * w * c];
            let wt = values(k * c * kernel * kernel, 28);
            let g = Geom::new(&dims, &[k, c, kernel, kernel], 1, pad).expect("geom");
            for s in &shortcuts {
                let mut separate = forward(x, &wt, &g, Forward::plain(2));
                residual_relu(&mut separate, &scale, &shift, s);
                let how = Forward {
                    then: Some(&then),
                    shortcut: Some(s),
                    ..Forward::plain(2)
                };
                assert_eq!(
                    forward(x, &wt, &g, how),
                    separate,
                    "{kernel}×{kernel}, {batch}"
                );
            }
        }
    }

    #[test]
    fn large_tiles_are_chosen_on_enough_tiles() {
        // ResNet50 at 128 px, batch 64: maps of 32, 16 and 8 use F(4×4), 4×4 does not
        // (64 tiles).
        for side in [32, 16, 8] {
            assert_eq!(Tiling::choose(64, side, side), Tiling::F4, "{side}");
        }
        assert_eq!(Tiling::choose(64, 4, 4), Tiling::F2);
        // A 2×2 map is mostly padding in a 4×4 tile (36 products against 16); a 3×3
        // one is not (36 against 4 × 16).
        assert_eq!(Tiling::choose(4096, 2, 2), Tiling::F2);
        assert_eq!(Tiling::choose(4096, 3, 3), Tiling::F4);
    }

    /// `(y, dx, dw)` of `Σ r·conv(x, w)` by direct loops in f64, channels-last `x`,
    /// torch-layout `w`.
    #[allow(clippy::type_complexity)]
    fn direct_general(
        x: &[f32],
        w: &[f32],
        r: &[f32],
        [n, h, wd, c]: [usize; 4],
        [k, kh, kw]: [usize; 3],
        (stride, pad): (usize, usize),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let oh = (h + 2 * pad - kh) / stride + 1;
        let ow = (wd + 2 * pad - kw) / stride + 1;
        let mut y = vec![0f64; n * oh * ow * k];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        for ni in 0..n {
            for o in 0..oh {
                for q in 0..ow {
                    for ki in 0..k {
                        let yi = ((ni * oh + o) * ow + q) * k + ki;
                        for a in 0..kh {
                            for b in 0..kw {
                                let ih = (o * stride + a).wrapping_sub(pad);
                                let iw = (q * stride + b).wrapping_sub(pad);
                                if ih >= h || iw >= wd {
                                    continue;
                                }
                                for ci in 0..c {
                                    let xi = ((ni * h + ih) * wd + iw) * c + ci;
                                    let wi = ((ki * c + ci) * kh + a) * kw + b;
                                    y[yi] += f64::from(x[xi]) * f64::from(w[wi]);
                                    dx[xi] += f64::from(r[yi]) * f64::from(w[wi]);
                                    dw[wi] += f64::from(r[yi]) * f64::from(x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    /// A conv to test: input dims, `[k, kh, kw]`, `(stride, pad)`.
    type ConvCase = ([usize; 4], [usize; 3], (usize, usize));

    /// A test case's input, kernel and geometry (`seed` and `seed + 1` for the data).
    fn operands(
        dims @ [n, h, w, c]: [usize; 4],
        [k, kh, kw]: [usize; 3],
        (stride, pad): (usize, usize),
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>, Geom) {
        let x = values(n * h * w * c, seed);
        let wt = values(k * c * kh * kw, seed + 1);
        let g = Geom::new(&dims, &[k, c, kh, kw], stride, pad).expect("geom");
        (x, wt, g)
    }

    #[test]
    fn bf16_forwards_multiply_the_rounded_operands() {
        // im2col (strided), 1×1 by row blocks and as one split GEMM, the 7×7 stem, and
        // 3×3s that f32 runs by Winograd; with 32 channels (im2col rows of whole
        // 32-deep tile steps), strided, by row blocks and as one split GEMM. Each the
        // f64 conv of the rounded operands to the f32 summation order (on AMX every
        // one but the 1×1s im2cols bf16 bits).
        type Case = ([usize; 4], [usize; 3], (usize, usize), bool);
        let cases: [Case; 8] = [
            ([2, 9, 9, 16], [5, 3, 3], (2, 1), false),
            ([4, 30, 30, 5], [3, 1, 1], (1, 0), false),
            ([1, 6, 7, 40], [33, 1, 1], (1, 0), false),
            ([1, 13, 13, 3], [8, 7, 7], (2, 3), false),
            ([4, 33, 31, 19], [21, 3, 3], (1, 1), true),
            ([2, 10, 10, 32], [40, 3, 3], (1, 1), true),
            ([2, 9, 9, 32], [16, 3, 3], (2, 1), false),
            ([4, 24, 24, 32], [40, 3, 3], (1, 1), true),
        ];
        let round = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<_>>();
        for (i, &(dims @ [n, ..], kdims @ [k, ..], sp, winograd)) in cases.iter().enumerate() {
            let (x, wt, g) = operands(dims, kdims, sp, 80 + 2 * i as u64);
            assert_eq!(g.is_winograd(), winograd, "case {i}");
            let none = vec![0f32; n * g.oh * g.ow * k];
            let (exact, _, _) = direct_general(&x, &wt, &none, dims, kdims, sp);
            let (rounded, _, _) = direct_general(&round(&x), &round(&wt), &none, dims, kdims, sp);
            for threads in [1, 2] {
                let how = Forward {
                    precision: Precision::Bf16,
                    ..Forward::plain(threads)
                };
                let y = forward(&x, &wt, &g, how);
                let (to_exact, to_rounded) = (rel_err(&y, &exact), rel_err(&y, &rounded));
                let case = format!("case {i} threads {threads}: {to_exact} {to_rounded}");
                assert!(to_rounded < 1e-5 && to_exact > 1e-4, "{case}");
            }
        }
    }

    #[test]
    fn bf16_gradients_multiply_the_rounded_operands() {
        // 1×1 (stride 1 and 2: a projection), a strided 3×3, the 7×7 stem, a 3×3 on
        // too few tiles for Winograd's gradients, one whose f32 gradients run by
        // `F(2×2)`, and one by `F(4×4)` (both on the tiles in bf16).
        // Each gradient: the f64 one of the rounded `dy` and kernel (`dx`) or `dy` and
        // input (`dw`), to the f32 summation order.
        let cases: [ConvCase; 7] = [
            ([4, 12, 12, 40], [33, 1, 1], (1, 0)),
            ([2, 9, 9, 24], [48, 1, 1], (2, 0)),
            ([2, 9, 9, 16], [5, 3, 3], (2, 1)),
            ([1, 13, 13, 3], [8, 7, 7], (2, 3)),
            ([2, 4, 4, 32], [24, 3, 3], (1, 1)),
            ([16, 8, 8, 8], [8, 3, 3], (1, 1)),
            ([2, 64, 64, 3], [4, 3, 3], (1, 1)),
        ];
        let round = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<_>>();
        let wanted = Wanted { dx: true, dw: true };
        for (i, &(dims @ [n, ..], kdims @ [k, ..], sp)) in cases.iter().enumerate() {
            let (x, wt, g) = operands(dims, kdims, sp, 120 + 2 * i as u64);
            // Winograd gradients (cases 5 and 6) in f32 only.
            assert_eq!(g.is_winograd_backward(), i >= 5, "case {i}");
            assert!(!g.is_winograd_backward_in(Precision::Bf16), "case {i}");
            let r = values(n * g.oh * g.ow * k, 140 + i as u64);
            let (_, dx_exact, dw_exact) = direct_general(&x, &wt, &r, dims, kdims, sp);
            let (_, dx0, dw0) =
                direct_general(&round(&x), &round(&wt), &round(&r), dims, kdims, sp);
            for threads in [1, 2] {
                let got = backward_in(&x, &wt, &r, &g, wanted, threads, Precision::Bf16);
                let (dx, dw) = (got.dx.expect("dx"), got.dw.expect("dw"));
                let case = format!("case {i} threads {threads}");
                for (what, got, want, exact) in
                    [("dx", &dx, &dx0, &dx_exact), ("dw", &dw, &dw0, &dw_exact)]
                {
                    let (to_rounded, to_exact) = (rel_err(got, want), rel_err(got, exact));
                    assert!(
                        to_rounded < 1e-5 && to_exact > 1e-4,
                        "{case}: {what} {to_rounded} {to_exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn forward_and_both_gradients_match_direct_loops_on_any_thread_count() {
        // (x dims, [k, kh, kw], (stride, pad)): im2col with strides and padding, 1×1
        // (no im2col), Winograd (forward; gradients too from 256 tiles on; channels
        // on and off the 16-lane blocks), a kernel larger than the map, the forward's
        // blocks (4,500 and 3,600 pixels: several blocks, the last one short); the
        // last has enough GEMM rows (2·64·64) for the split reduction of the kernel
        // gradient.
        let cases: [ConvCase; 11] = [
            ([3, 6, 5, 19], [32, 3, 3], (1, 1)),
            // im2col's kernel rows as whole 16-float blocks (3 taps × 16 channels).
            ([2, 9, 9, 16], [5, 3, 3], (2, 1)),
            ([4, 33, 31, 19], [21, 3, 3], (1, 1)),
            ([5, 60, 59, 3], [6, 3, 3], (2, 1)),
            ([4, 30, 30, 5], [3, 1, 1], (1, 0)),
            ([2, 7, 9, 3], [5, 3, 3], (1, 1)),
            ([3, 11, 8, 4], [6, 3, 3], (2, 1)),
            ([1, 13, 13, 3], [8, 7, 7], (2, 3)),
            ([2, 9, 10, 5], [7, 1, 1], (1, 0)),
            ([1, 4, 4, 1], [2, 6, 6], (1, 1)),
            ([2, 64, 64, 3], [4, 3, 3], (1, 1)),
        ];
        for (i, &(dims @ [n, ..], kdims @ [k, ..], sp)) in cases.iter().enumerate() {
            let (x, wt, g) = operands(dims, kdims, sp, 20 + 2 * i as u64);
            let (oh, ow, _) = g.out_dims();
            let r = values(n * oh * ow * k, 60 + i as u64);
            let (y0, dx0, dw0) = direct_general(&x, &wt, &r, dims, kdims, sp);
            for threads in [1, 2, 3] {
                let y = forward(&x, &wt, &g, Forward::plain(threads));
                let wanted = Wanted { dx: true, dw: true };
                let grads = backward(&x, &wt, &r, &g, wanted, threads);
                let case = format!("case {i} threads {threads}");
                assert!(rel_err(&y, &y0) < 1e-5, "{case}: y {}", rel_err(&y, &y0));
                let dx = grads.dx.expect("dx");
                let dw = grads.dw.expect("dw");
                assert!(
                    rel_err(&dx, &dx0) < 1e-5,
                    "{case}: dx {}",
                    rel_err(&dx, &dx0)
                );
                assert!(
                    rel_err(&dw, &dw0) < 1e-5,
                    "{case}: dw {}",
                    rel_err(&dw, &dw0)
                );
                // Only what is asked for.
                let only_dw = backward(
                    &x,
                    &wt,
                    &r,
                    &g,
                    Wanted {
                        dx: false,
                        dw: true,
                    },
                    threads,
                );
                assert!(only_dw.dx.is_none());
                assert_eq!(only_dw.dw.as_deref(), Some(&dw[..]));
            }
        }
    }

    #[test]
    fn bad_geometries_are_refused() {
        assert!(Geom::new(&[1, 5, 5, 3], &[2, 4, 3, 3], 1, 1).is_err());
        assert!(Geom::new(&[1, 5, 5, 3], &[2, 3, 3, 3], 0, 1).is_err());
        assert!(Geom::new(&[1, 2, 2, 3], &[2, 3, 7, 7], 1, 0).is_err());
        assert!(Geom::new(&[5, 5, 3], &[2, 3, 3, 3], 1, 0).is_err());
        let g = Geom::new(&[1, 5, 5, 3], &[2, 3, 3, 3], 2, 1).expect("geom");
        assert_eq!(g.out_dims(), (3, 3, 2));
    }
}
