//! 2-D convolution (groups = 1, no dilation) as one custom op whose forward *and* both
//! gradients are GEMMs, for the CPU.
//!
//! Candle's CPU forward conv is already im2col + GEMM, but its backward is not: the input
//! gradient is a direct-loop transposed convolution and the kernel gradient a
//! large-kernel convolution, together ≈ 75% of a ResNet training step. [`Conv2dGemm`]
//! keeps the im2col matrix inside the op (out of the autograd graph, in a reused
//! per-thread scratch buffer) and computes, with `M = N·OH·OW` (batch × output pixels
//! on the GEMM rows), `CKK = C·KH·KW`:
//!
//! * forward: `Y (M×K) = cols (M×CKK) · Wᵀ (CKK×K)`;
//! * kernel gradient: `dWᵀ (CKK×K) = colsᵀ (CKK×M) · dY (M×K)` (cols rebuilt from `x`);
//! * input gradient: `dcols (M×CKK) = dY (M×K) · W (K×CKK)`, then `dX = col2im(dcols)`.
//!
//! Every matrix is stored "channel-major" — cols as `(CKK, N, P)`, `Y`/`dY` as
//! `(K, N, P)` — so the GEMM destinations are column-major (what the `gemm` crate's
//! micro-kernels prefer) and the reorders to and from NCHW copy whole output planes.
//!
//! [`conv2d`] is the entry point: it uses the op for f32 tensors on the CPU and
//! Candle's `Tensor::conv2d` on every other device or dtype (a CPU custom op has no
//! GPU path).

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_tensor::{contiguous_f32, with_f32_data};

/// `x (N, C, H, W) ⋆ w (K, C, KH, KW)` with the given stride and zero padding (the
/// same on both axes), groups 1 and dilation 1. On the CPU in f32 the fast op of this
/// module, elsewhere `Tensor::conv2d`.
pub fn conv2d(xs: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && w.dtype() == DType::F32
        && !candle_reference_forced()
    {
        keep_freed_memory();
        let xs = xs.contiguous()?;
        let w = w.contiguous()?;
        xs.apply_op2(&w, Conv2dGemm { stride, padding })
    } else {
        xs.conv2d(w, padding, stride, 1, 1)
    }
}

/// Asks glibc's allocator (once per process) to keep freed memory for reuse: blocks up
/// to 32 MiB come from the heap instead of fresh `mmap`s, and the heap is not trimmed
/// back after every large free. Candle allocates a fresh buffer for every op's output
/// and gradient, so otherwise every activation costs page faults and zeroing on first
/// touch and TLB shoot-downs on free (≈25% of a ResNet50 step in `perf`); with it a
/// step ran 1.3× (train) to 1.7× (embed) faster. Purely a speed setting (no effect on
/// results); skipped when any `MALLOC_*` tunable is set in the environment, and a no-op
/// off glibc.
fn keep_freed_memory() {
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

/// The custom op behind [`conv2d`] (CPU, f32, contiguous operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGemm {
    pub stride: usize,
    pub padding: usize,
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
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
    fn new(x: &[usize], wt: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, w], &[k, c2, kh, kw]) = (x, wt) else {
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

    /// The output positions `o` along an axis whose input position `o·stride + tap − pad`
    /// lies inside `0..len`: a half-open range.
    fn valid(&self, tap: usize, len: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad.saturating_sub(tap).div_ceil(s);
        let hi = (len + self.pad).saturating_sub(tap).div_ceil(s).min(out);
        (lo.min(hi), hi)
    }
}

thread_local! {
    /// Scratch buffers reused across calls on this thread (cols, Y/dY, dcols): fresh
    /// 100 MB allocations per layer cost more in page faults than the copies.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three scratch slices of the given lengths (contents unspecified).
fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        // A re-entrant call (not expected) gets fresh buffers instead of panicking.
        let Ok(mut bufs) = cell.try_borrow_mut() else {
            let mut a = vec![0f32; lens[0]];
            let mut b = vec![0f32; lens[1]];
            let mut c = vec![0f32; lens[2]];
            return f(&mut a, &mut b, &mut c);
        };
        for (buf, &len) in bufs.iter_mut().zip(&lens) {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        let [a, b, c] = &mut *bufs;
        f(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
    })
}

/// Frees this thread's scratch buffers (they otherwise stay at their largest size).
pub fn release_scratch() {
    SCRATCH.with(|cell| {
        if let Ok(mut bufs) = cell.try_borrow_mut() {
            *bufs = [Vec::new(), Vec::new(), Vec::new()];
        }
    });
}

/// im2col: `x (N, C, H, W)` → `cols (CKK, N, P)`, zeros where a tap falls in the padding.
fn im2col(x: &[f32], g: &Geom, cols: &mut [f32]) {
    let (m, p, hw) = (g.m(), g.p(), g.h * g.w);
    let one_by_one = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    cols.par_chunks_mut(m).enumerate().for_each(|(r, row)| {
        let ci = r / (g.kh * g.kw);
        let ki = (r / g.kw) % g.kh;
        let kj = r % g.kw;
        if one_by_one {
            for ni in 0..g.n {
                let src = &x[(ni * g.c + ci) * hw..][..hw];
                row[ni * p..][..p].copy_from_slice(src);
            }
            return;
        }
        let (oh_lo, oh_hi) = g.valid(ki, g.h, g.oh);
        let (ow_lo, ow_hi) = g.valid(kj, g.w, g.ow);
        for ni in 0..g.n {
            let plane = &x[(ni * g.c + ci) * hw..][..hw];
            let out = &mut row[ni * p..][..p];
            for oh in 0..g.oh {
                let dst = &mut out[oh * g.ow..][..g.ow];
                if oh < oh_lo || oh >= oh_hi {
                    dst.fill(0.0);
                    continue;
                }
                let ih = oh * g.stride + ki - g.pad;
                let src = &plane[ih * g.w..][..g.w];
                dst[..ow_lo].fill(0.0);
                dst[ow_hi..].fill(0.0);
                if g.stride == 1 {
                    let iw0 = ow_lo + kj - g.pad;
                    dst[ow_lo..ow_hi].copy_from_slice(&src[iw0..iw0 + (ow_hi - ow_lo)]);
                } else {
                    for (ow, d) in dst.iter_mut().enumerate().take(ow_hi).skip(ow_lo) {
                        *d = src[ow * g.stride + kj - g.pad];
                    }
                }
            }
        }
    });
}

/// col2im: accumulates `dcols (CKK, N, P)` into `dx (N, C, H, W)` (which must be zero),
/// one input plane per task, so no two tasks write the same element.
fn col2im(dcols: &[f32], g: &Geom, dx: &mut [f32]) {
    let (m, p, hw) = (g.m(), g.p(), g.h * g.w);
    dx.par_chunks_mut(hw)
        .enumerate()
        .for_each(|(plane_idx, plane)| {
            let ni = plane_idx / g.c;
            let ci = plane_idx % g.c;
            for ki in 0..g.kh {
                let (oh_lo, oh_hi) = g.valid(ki, g.h, g.oh);
                for kj in 0..g.kw {
                    let (ow_lo, ow_hi) = g.valid(kj, g.w, g.ow);
                    let r = (ci * g.kh + ki) * g.kw + kj;
                    let src = &dcols[r * m + ni * p..][..p];
                    for oh in oh_lo..oh_hi {
                        let ih = oh * g.stride + ki - g.pad;
                        let dst = &mut plane[ih * g.w..][..g.w];
                        let s = &src[oh * g.ow..][..g.ow];
                        if g.stride == 1 {
                            let iw0 = ow_lo + kj - g.pad;
                            let n = ow_hi - ow_lo;
                            for (d, v) in dst[iw0..iw0 + n].iter_mut().zip(&s[ow_lo..ow_hi]) {
                                *d += v;
                            }
                        } else {
                            for (ow, v) in s.iter().enumerate().take(ow_hi).skip(ow_lo) {
                                dst[ow * g.stride + kj - g.pad] += v;
                            }
                        }
                    }
                }
            }
        });
}

/// `(A, B, P)` → `(B, A, P)`: swaps the two outer axes of a tensor of `P`-long runs.
fn swap_outer(src: &[f32], a: usize, b: usize, p: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(p).enumerate().for_each(|(idx, run)| {
        let (bi, ai) = (idx / a, idx % a);
        run.copy_from_slice(&src[(ai * b + bi) * p..][..p]);
    });
}

/// A dense matrix operand: data with row and column strides (in elements).
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Largest index `(rows-1)·rs + (cols-1)·cs` must fall inside a slice of length `len`.
fn fits(rows: usize, cols: usize, rs: usize, cs: usize, len: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, overwriting `dst`, which is column-major
/// (row stride 1, column stride `m`: what `gemm`'s micro-kernels write best).
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: &Mat, rhs: &Mat) {
    let (dst_rs, dst_cs) = (1, m);
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
                dst[i * dst_rs + j * dst_cs] = 0.0;
            }
        }
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element `gemm` reads (`lhs`, `rhs`) or writes
    // (`dst`) inside its slice; `dst` is borrowed mutably, so it aliases neither operand;
    // strides are small positive element counts (slices never exceed `isize::MAX`
    // bytes); `read_dst = false`, so `dst`'s old contents are never read.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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

/// Forward on slices: `y (N, K, OH, OW)`.
fn forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let (m, p, ckk) = (g.m(), g.p(), g.ckk());
    let mut y = vec![0f32; m * g.k];
    with_scratch([m * ckk, m * g.k, 0], |cols, ym, _| {
        im2col(x, g, cols);
        // Y (M×K), column-major = (K, N, P); cols (M×CKK) stored (CKK, M); W (K, CKK) as Wᵀ.
        let lhs = Mat {
            data: cols,
            rs: 1,
            cs: m,
        };
        let rhs = Mat {
            data: wt,
            rs: 1,
            cs: ckk,
        };
        matmul(m, g.k, ckk, ym, &lhs, &rhs);
        swap_outer(ym, g.k, g.n, p, &mut y);
    });
    y
}

/// Backward on slices: `(dx, dw)`, each only when asked for.
fn backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    g: &Geom,
    need_dx: bool,
    need_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (m, p, ckk) = (g.m(), g.p(), g.ckk());
    let cols_len = if need_dw { m * ckk } else { 0 };
    let dcols_len = if need_dx { m * ckk } else { 0 };
    with_scratch([cols_len, m * g.k, dcols_len], |cols, dym, dcols| {
        // dY (N, K, P) → (K, N, P): the M×K matrix, column-major.
        swap_outer(dy, g.n, g.k, p, dym);
        let dy_mat = Mat {
            data: dym,
            rs: 1,
            cs: m,
        };
        let dw = need_dw.then(|| {
            im2col(x, g, cols);
            let mut dw = vec![0f32; g.k * ckk];
            // dWᵀ (CKK×K), column-major = W's (K, CKK) layout; colsᵀ (CKK×M) row-major.
            let lhs = Mat {
                data: cols,
                rs: m,
                cs: 1,
            };
            matmul(ckk, g.k, m, &mut dw, &lhs, &dy_mat);
            dw
        });
        let dx = need_dx.then(|| {
            // dcols (M×CKK), column-major = (CKK, N, P); W (K×CKK) row-major.
            let rhs = Mat {
                data: wt,
                rs: ckk,
                cs: 1,
            };
            matmul(m, ckk, g.k, dcols, &dy_mat, &rhs);
            let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
            col2im(dcols, g, &mut dx);
            dx
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
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.k, g.oh, g.ow))))
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
