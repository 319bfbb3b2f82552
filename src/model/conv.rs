//! 2-D convolution (groups = 1, no dilation) on channels-last data as one custom op
//! whose forward *and* both gradients are GEMMs, for the CPU.
//!
//! Candle's CPU forward conv is already im2col + GEMM, but its backward is not: the input
//! gradient is a direct-loop transposed convolution and the kernel gradient a
//! large-kernel convolution, together ≈ 75% of a ResNet training step. [`Conv2dGemm`]
//! works on `(N, H, W, C)` activations, where every matrix the GEMMs need is already
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
//! is needed between layers.
//!
//! [`conv2d_nhwc`] is the entry point for channels-last tensors, [`conv2d`] for
//! `(N, C, H, W)` ones (it permutes around the op). Both use the op for f32 tensors on
//! the CPU and Candle's `Tensor::conv2d` on every other device or dtype (a CPU custom
//! op has no GPU path).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batchnorm::{self, Affine};
use super::cpu_tensor::{contiguous_f32, with_f32_data};
use super::simd::vectorized;
use super::winograd;

/// `x (N, C, H, W) ⋆ w (K, C, KH, KW)` with the given stride and zero padding (the
/// same on both axes), groups 1 and dilation 1. On the CPU in f32 the fast op of this
/// module (around two permutes), elsewhere `Tensor::conv2d`.
pub fn conv2d(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if uses_gemm_op(xs, w) {
        conv2d_nhwc(&xs.permute((0, 2, 3, 1))?, w, stride, padding)?.permute((0, 3, 1, 2))
    } else {
        xs.conv2d(w, padding, stride, 1, 1)
    }
}

/// Like [`conv2d`] for channels-last `x (N, H, W, C)`, giving `(N, OH, OW, K)`; the
/// kernel keeps torch's `(K, C, KH, KW)` layout.
pub fn conv2d_nhwc(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if uses_gemm_op(xs, w) {
        keep_freed_memory();
        let xs = xs.contiguous()?;
        let w = w.contiguous()?;
        xs.apply_op2(&w, Conv2dGemm { stride, padding })
    } else {
        xs.permute((0, 3, 1, 2))?
            .conv2d(w, padding, stride, 1, 1)?
            .permute((0, 2, 3, 1))
    }
}

/// Whether [`conv2d`] / [`conv2d_nhwc`] run the GEMM op (CPU, f32) for these operands.
fn uses_gemm_op(xs: &Tensor, w: &Tensor) -> bool {
    xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !candle_reference_forced()
}

/// Asks glibc's allocator (once per process) to keep freed memory for reuse: blocks up
/// to 32 MiB come from the heap instead of fresh `mmap`s, and the heap is not trimmed
/// back after every large free. Candle allocates a fresh buffer for every op's output
/// and gradient, so otherwise every activation costs page faults and zeroing on first
/// touch and TLB shoot-downs on free (≈25% of a ResNet50 step in `perf`); with it a
/// step ran 1.3× (train) to 1.7× (embed) faster. Purely a speed setting (no effect on
/// results); skipped when any `MALLOC_*` tunable is set in the environment, and a no-op
/// off glibc.
pub(crate) fn keep_freed_memory() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_")) {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // glibc's `mallopt` parameters (malloc.h).
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_TOP_PAD: i32 = -2;
            const M_MMAP_THRESHOLD: i32 = -3;
            #[allow(unsafe_code)]
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: `mallopt` only changes allocator tunables; glibc documents it as
            // callable at any time, and these values are within its accepted ranges
            // (mmap threshold ≤ 32 MiB on 64-bit).
            #[allow(unsafe_code)]
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
                mallopt(M_TOP_PAD, 256 << 20);
            }
        }
    });
}

/// Whether `VITRINE_CANDLE_CONV=1` asks for Candle's own conv everywhere (read once):
/// a switch for before/after profiles, not a setting.
pub(crate) fn candle_reference_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("VITRINE_CANDLE_CONV").is_ok_and(|v| v == "1"))
}

/// The custom op behind [`conv2d_nhwc`] (CPU, f32, contiguous operands): input
/// `(N, H, W, C)`, kernel `(K, C, KH, KW)`, output `(N, OH, OW, K)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGemm {
    pub stride: usize,
    pub padding: usize,
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geom {
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
    /// From the input's `(N, H, W, C)` and the kernel's `(K, C, KH, KW)` dims.
    pub(crate) fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, h, w, c], &[k, c2, kh, kw]) = (x, wt) else {
            candle_core::bail!("conv2d: expected rank-4 input and kernel, got {x:?} and {wt:?}")
        };
        if c != c2 {
            candle_core::bail!("conv2d: input has {c} channels, kernel expects {c2}")
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be at least 1")
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!("conv2d: kernel {kh}×{kw} larger than padded input {h}×{w}")
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
    pub(crate) fn out_dims(&self) -> (usize, usize, usize) {
        (self.oh, self.ow, self.k)
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
    fn winograd(&self, tiling: winograd::Tiling) -> winograd::Shape {
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

impl Geom {
    /// A 1×1, stride-1, unpadded conv: the input already is the GEMM's left operand.
    fn pointwise(&self) -> bool {
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
fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    let (c, ckk) = (g.c, g.ckk());
    let row_len = g.kw * c;
    cols.par_chunks_mut(g.ow * ckk)
        .enumerate()
        .for_each(|(row, out)| {
            vectorized(
                #[inline(always)]
                || {
                    let (ni, oh) = (row / g.oh, row % g.oh);
                    for (ow, px) in out.chunks_exact_mut(ckk).enumerate() {
                        let (lo, hi) = g.taps_inside(ow);
                        for (ki, dst) in px.chunks_exact_mut(row_len).enumerate() {
                            let Some(ih) = g.input_row(oh, ki).filter(|_| lo < hi) else {
                                dst.fill(0.0);
                                continue;
                            };
                            let iw0 = ow * g.stride + lo - g.pad;
                            let src = &x[((ni * g.h + ih) * g.w + iw0) * c..][..(hi - lo) * c];
                            dst[..lo * c].fill(0.0);
                            dst[lo * c..hi * c].copy_from_slice(src);
                            dst[hi * c..].fill(0.0);
                        }
                    }
                },
            );
        });
}

/// col2im for channels-last data: accumulates `dcols (M, KH·KW·C)` into
/// `dx (N, H, W, C)` (which must be zero), one input row per task, so no two tasks
/// write the same element.
fn col2im(dcols: &[f32], g: &Geom, dx: &mut [f32]) {
    let (c, ckk) = (g.c, g.ckk());
    dx.par_chunks_mut(g.w * c)
        .enumerate()
        .for_each(|(row, dst_row)| {
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
        });
}

/// `(K, C, KH, KW)` (torch's kernel layout) → `(K, KH, KW, C)` (im2col's column order).
fn kernel_to_taps(wt: &[f32], g: &Geom) -> Vec<f32> {
    transpose_blocks(wt, g.c, g.kh * g.kw)
}

/// `(K, KH, KW, C)` → `(K, C, KH, KW)`: the inverse of [`kernel_to_taps`].
fn taps_to_kernel(taps: &[f32], g: &Geom) -> Vec<f32> {
    transpose_blocks(taps, g.kh * g.kw, g.c)
}

/// Transposes each consecutive `rows × cols` block of `src` (row-major) to
/// `cols × rows`.
pub(crate) fn transpose_blocks(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let block = (rows * cols).max(1);
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(block)
        .zip(src.par_chunks(block))
        .for_each(|(dst, src)| {
            for r in 0..rows {
                for c in 0..cols {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        });
    out
}

/// A dense matrix operand: data with row and column strides (in elements).
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with `cols` columns.
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// Largest index `(rows-1)·rs + (cols-1)·cs` must fall inside a slice of length `len`.
fn fits(rows: usize, cols: usize, rs: usize, cs: usize, len: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, writing every element of `dst` (stored with
/// strides `(dst_rs, dst_cs)`) and reading none, so it may start uninitialised;
/// `threads` > 1 parallelises.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    (dst_rs, dst_cs): (usize, usize),
    lhs: &Mat,
    rhs: &Mat,
    threads: usize,
) {
    assert!(
        fits(m, n, dst_rs, dst_cs, dst.len()),
        "matmul: dst out of bounds"
    );
    assert!(
        fits(m, k, lhs.rs, lhs.cs, lhs.data.len()),
        "matmul: lhs out of bounds"
    );
    assert!(
        fits(k, n, rhs.rs, rhs.cs, rhs.data.len()),
        "matmul: rhs out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_rs + j * dst_cs].write(0.0);
            }
        }
        return;
    }
    if threads > 1 && dst_cs == 1 && dst_rs == n && m >= SPLIT_ROWS_MIN {
        // Row blocks on separate threads, each GEMM single-threaded: 2–8% faster than
        // the `gemm` crate's own parallelism on every ResNet50 layer measured.
        let share = m.div_ceil(threads);
        dst[..m * n]
            .par_chunks_mut(share * n)
            .enumerate()
            .for_each(|(i, d)| {
                let part = Mat {
                    data: &lhs.data[i * share * lhs.rs..],
                    rs: lhs.rs,
                    cs: lhs.cs,
                };
                matmul((d.len() / n, n, k), d, (n, 1), &part, rhs, 1);
            });
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element `gemm` reads (`lhs`, `rhs`) or writes
    // (`dst`) inside its slice; `dst` is borrowed mutably, so it aliases neither operand;
    // strides are small positive element counts (slices never exceed `isize::MAX`
    // bytes); `read_dst = false`, so `dst`'s old (possibly uninitialised) contents are
    // never read, and `gemm` then writes all m×n elements (`dst = lhs·rhs`).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A vector of `len` floats filled by `fill`, which must write every element (as
/// [`matmul`] does): no zeroing pass first.
fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (the contract above; every caller
    // passes the whole slice as a GEMM destination of exactly `len` elements).
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(len);
    }
    v
}

/// `s` as a destination for [`matmul`].
fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the slice is only written with
    // initialised floats (by `matmul`), so `s` stays initialised.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(std::ptr::from_mut::<[f32]>(s) as *mut [MaybeUninit<f32>])
    }
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Fewest GEMM rows split across threads by [`matmul`].
const SPLIT_ROWS_MIN: usize = 512;

/// What a forward conv's output is for; the algorithms differ in rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// A backward pass follows: at most Winograd `F(2×2, 3×3)`, whose rounding is
    /// that of the direct method.
    Training,
    /// Forward only: Winograd `F(4×4, 3×3)` where it needs fewer multiplications.
    Inference,
}

/// Forward on slices: `y (N, OH, OW, K)`.
pub(crate) fn forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    forward_then(x, wt, g, Pass::Training, None)
}

/// [`forward`] for `pass`, with `then` applied to the output (fused into the
/// Winograd output transform; a separate pass otherwise).
pub(crate) fn forward_then(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    pass: Pass,
    then: Option<&Affine>,
) -> Vec<f32> {
    let (m, ckk) = (g.m(), g.ckk());
    if g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.c * g.k * g.m() > 0 {
        let tiling = winograd::Tiling::choose(g.n, g.h, g.w, pass == Pass::Inference);
        return forward_winograd(x, wt, g, tiling, then);
    }
    let taps;
    let w_taps = if g.kh * g.kw == 1 {
        wt
    } else {
        taps = kernel_to_taps(wt, g);
        &taps
    };
    // Y (M×K, row-major) = cols (M×CKK) · W'ᵀ (W' is (K, CKK) row-major).
    let rhs = Mat::rows_t(w_taps, ckk);
    let mut y = filled(m * g.k, |y| {
        if g.pointwise() {
            let lhs = Mat::rows(x, ckk);
            matmul((m, g.k, ckk), y, (g.k, 1), &lhs, &rhs, threads());
        } else {
            with_scratch([m * ckk, 0], |cols, _| {
                im2col(x, g, cols);
                let lhs = Mat::rows(cols, ckk);
                matmul((m, g.k, ckk), y, (g.k, 1), &lhs, &rhs, threads());
            });
        }
    });
    if let Some(f) = then {
        batchnorm::apply_in_place(&mut y, f.scale, f.shift, f.relu);
    }
    y
}

/// [`forward`] of a 3×3, stride-1, padding-1 conv by Winograd's `F(m×m, 3×3)`.
fn forward_winograd(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    tiling: winograd::Tiling,
    then: Option<&Affine>,
) -> Vec<f32> {
    let s = g.winograd(tiling);
    // Transform, multiply and transform back one chunk of images at a time on each
    // thread, so the transformed data stays in cache; with few tiles, the whole batch
    // at once with the GEMMs spread over threads instead.
    let chunk = CHUNK_TILES.div_ceil(s.tiles() / g.n.max(1)).max(1);
    let chunk = (chunk * threads() <= g.n).then_some(chunk);
    winograd_in_chunks(x, wt, g, tiling, then, chunk)
}

/// [`forward_winograd`] by chunks of `chunk` images, or the whole batch at once.
fn winograd_in_chunks(
    x: &[f32],
    wt: &[f32],
    g: &Geom,
    tiling: winograd::Tiling,
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
fn kernel_grad(cols: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (m, ckk, k) = (g.m(), g.ckk(), g.k);
    let t = threads();
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

/// Backward on slices: `(dx, dw)`, each only when asked for; `dy` is `(N, OH, OW, K)`.
pub(crate) fn backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (m, ckk) = (g.m(), g.ckk());
    let pointwise = g.pointwise();
    let cols_len = if need_dw && !pointwise { m * ckk } else { 0 };
    let dcols_len = if need_dx && !pointwise { m * ckk } else { 0 };
    let taps_layout = g.kh * g.kw > 1;
    with_scratch([cols_len, dcols_len], |cols, dcols| {
        let dw = need_dw.then(|| {
            let cols: &[f32] = if pointwise {
                x
            } else {
                im2col(x, g, cols);
                cols
            };
            let dw = kernel_grad(cols, dy, g);
            if taps_layout {
                taps_to_kernel(&dw, g)
            } else {
                dw
            }
        });
        let dx = need_dx.then(|| {
            let taps;
            let w_taps = if taps_layout {
                taps = kernel_to_taps(wt, g);
                &taps
            } else {
                wt
            };
            // dcols (M×CKK, row-major) = dY (M×K) · W' (K×CKK).
            let (lhs, rhs) = (Mat::rows(dy, g.k), Mat::rows(w_taps, ckk));
            if pointwise {
                filled(m * ckk, |dx| {
                    matmul((m, ckk, g.k), dx, (ckk, 1), &lhs, &rhs, threads());
                })
            } else {
                matmul(
                    (m, ckk, g.k),
                    as_uninit(dcols),
                    (ckk, 1),
                    &lhs,
                    &rhs,
                    threads(),
                );
                let mut dx = vec![0f32; g.n * g.h * g.w * g.c];
                col2im(dcols, g, &mut dx);
                dx
            }
        });
        (dx, dw)
    })
}

impl CustomOp2 for Conv2dGemm {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let x = contiguous_f32(s1, l1)?;
        let wt = contiguous_f32(s2, l2)?;
        let y = forward(x, wt, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.oh, g.ow, g.k))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), wt.dims(), self.stride, self.padding)?;
        let need_dx = x.track_op();
        let need_dw = wt.track_op();
        let dy = dy.contiguous()?;
        let (dx, dw) = with_f32_data(x, |xd| {
            with_f32_data(wt, |wd| {
                with_f32_data(&dy, |dyd| Ok(backward(xd, wd, dyd, &g, need_dx, need_dw)))
            })
        })?;
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), x.device()))
            .transpose()?;
        let dw = dw
            .map(|v| Tensor::from_vec(v, wt.shape(), wt.device()))
            .transpose()?;
        Ok((dx, dw))
    }
}

#[cfg(test)]
mod tests {
    use super::winograd::Tiling;
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len).map(|_| rng.range_f32(-1.0, 1.0)).collect()
    }

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

    /// Largest absolute difference relative to the reference's largest magnitude.
    fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
        worst / scale
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
            for pass in [Pass::Training, Pass::Inference] {
                let mut separate = forward_then(&x, &wt, &g, pass, None);
                batchnorm::apply_in_place(&mut separate, &scale, &shift, relu);
                let fused = forward_then(&x, &wt, &g, pass, Some(&then));
                assert_eq!(fused, separate, "{pass:?}, relu {relu}");
                assert_eq!(relu, fused.iter().all(|&v| v >= 0.0));
            }
        }
        // The GEMM path (here a 1×1 conv) applies it as a separate pass.
        let g = Geom::new(&dims, &[k, c, 1, 1], 1, 0).expect("geom");
        let wt = values(k * c, 11);
        let then = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let mut separate = forward(&x, &wt, &g);
        batchnorm::apply_in_place(&mut separate, &scale, &shift, true);
        assert_eq!(
            forward_then(&x, &wt, &g, Pass::Inference, Some(&then)),
            separate
        );
    }

    #[test]
    fn large_tiles_are_chosen_only_for_inference_on_enough_tiles() {
        // ResNet50 at 128 px, batch 64: maps of 32, 16 and 8 use F(4×4), 4×4 does not
        // (64 tiles).
        for side in [32, 16, 8] {
            assert_eq!(Tiling::choose(64, side, side, true), Tiling::F4, "{side}");
            assert_eq!(Tiling::choose(64, side, side, false), Tiling::F2, "{side}");
        }
        assert_eq!(Tiling::choose(64, 4, 4, true), Tiling::F2);
        // A 2×2 map is mostly padding in a 4×4 tile (36 products against 16); a 3×3
        // one is not (36 against 4 × 16).
        assert_eq!(Tiling::choose(4096, 2, 2, true), Tiling::F2);
        assert_eq!(Tiling::choose(4096, 3, 3, true), Tiling::F4);
    }
}
