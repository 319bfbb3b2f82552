//! The bfloat16 GEMMs of convs ([`super::Precision::Bf16`]): both operands rounded
//! to bf16 (round to nearest even), products summed in f32.
//!
//! On CPUs with AMX (Intel Sapphire Rapids and later) the tiles multiply bf16 pairs
//! at ~5× the f32 FMA peak of the same core (1.0 TFLOP/s against ~0.2 measured on
//! one 2-core Xeon); elsewhere the same rounding is emulated — the operands rounded,
//! then the f32 GEMM — so an index embedded on one machine and queries embedded on
//! another agree to the f32 summation order. AMX needs the kernel's permission
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once per process; refused, the
//! emulation runs.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{Mat, matmul};

/// `x` rounded to the nearest bf16 (ties to even), as its upper 16 bits. NaN stays
/// NaN (its quiet bit is kept); infinities and overflow give infinities.
#[must_use]
pub fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    // A select, not a branch, so that loops over slices vectorise.
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

/// `x` rounded to the nearest bf16, back in an f32 (exact).
#[must_use]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(to_bf16_bits(x)) << 16)
}

/// Whether this process multiplies bf16 on AMX tiles (CPU support and the kernel's
/// permission; asked once).
pub fn amx_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(amx::enable)
}

/// The right-hand operand of a bf16 GEMM, packed once per conv for every row block.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    data: PackedData,
}

enum PackedData {
    /// VNNI pairs for AMX: 16-column panels, each `kp/2` rows of 16 `(even, odd)` k
    /// pairs; `k` padded to 32, `n` to 16 with zeros.
    Tiles { bits: Vec<u16>, kp: usize },
    /// The operand rounded, row-major `k×n` (the emulation).
    Rounded(Vec<f32>),
}

impl Packed {
    /// `rhs (k×n)` packed for [`matmul_bf16`]: for AMX tiles where they run.
    pub(crate) fn new(k: usize, n: usize, rhs: &Mat) -> Self {
        Self::with(k, n, rhs, amx_available())
    }

    /// `rhs` packed for AMX tiles (`tiles`, only where [`amx_available`]) or for the
    /// emulation.
    fn with(k: usize, n: usize, rhs: &Mat, tiles: bool) -> Self {
        let at = |p: usize, j: usize| rhs.get(p, j);
        let data = if tiles {
            let (kp, np) = (k.div_ceil(32) * 32, n.div_ceil(16) * 16);
            let mut bits = vec![0u16; kp * np];
            let dense = rhs.dense_rows(k, n);
            bits.par_chunks_exact_mut(kp * 16)
                .enumerate()
                .for_each(|(panel, out)| {
                    if let Some(src) = dense {
                        // Row-major (a kernel as the input gradient's right operand):
                        // two rows at a time into their pairs, 16 columns per store.
                        let c0 = panel * 16;
                        paired(src, n, (c0, 16.min(n - c0)), kp, out);
                        return;
                    }
                    // Column by column: a kernel stored (K, C·KH·KW) reads each column
                    // in order.
                    for col in 0..16.min(n - panel * 16) {
                        let j = panel * 16 + col;
                        match rhs.column(j, k) {
                            // Converted 32 at a time; each (even, odd) pair of bits then
                            // goes to its row of the panel.
                            Some(column) => with_bits(kp, |bf| {
                                let (head, tail) = bf.split_at_mut(k);
                                amx::convert_slice(column, head);
                                tail.fill(0);
                                for (pair, v) in bf.chunks_exact(2).enumerate() {
                                    let o = pair * 32 + col * 2;
                                    out[o..o + 2].copy_from_slice(v);
                                }
                            }),
                            None => {
                                for p in 0..k {
                                    out[(p / 2) * 32 + col * 2 + p % 2] = to_bf16_bits(at(p, j));
                                }
                            }
                        }
                    }
                });
            PackedData::Tiles { bits, kp }
        } else {
            let mut rounded = Vec::with_capacity(k * n);
            for p in 0..k {
                rounded.extend((0..n).map(|j| round_bf16(at(p, j))));
            }
            PackedData::Rounded(rounded)
        };
        Self { k, n, data }
    }
}

/// `dst (m×n, row-major, exactly m·n long) = lhs (m×k) · rhs` in bf16 with f32 sums,
/// `lhs` row-major (column stride 1); `threads` > 1 splits the rows.
pub(crate) fn matmul_bf16(
    m: usize,
    dst: &mut [MaybeUninit<f32>],
    lhs: &Mat,
    rhs: &Packed,
    threads: usize,
) {
    let (n, k) = (rhs.n, rhs.k);
    assert_eq!(dst.len(), m * n, "matmul_bf16: dst is not m×n");
    assert!(
        lhs.unit_columns(m, k),
        "matmul_bf16: lhs is not row-major m×k"
    );
    if m == 0 || n == 0 {
        return;
    }
    if threads > 1 && m >= 2 * BLOCK_ROWS {
        let share = m.div_ceil(threads).div_ceil(32) * 32;
        dst.par_chunks_mut(share * n)
            .enumerate()
            .for_each(|(i, d)| {
                let part = lhs.rows_from(i * share);
                matmul_bf16(d.len() / n, d, &part, rhs, 1);
            });
        return;
    }
    match &rhs.data {
        PackedData::Tiles { bits, kp } => amx::matmul(m, n, k, dst, lhs, bits, *kp),
        PackedData::Rounded(b) => {
            let mut rounded = Vec::with_capacity(m * k);
            for i in 0..m {
                rounded.extend(lhs.row(i, k).unwrap_or(&[]).iter().map(|&v| round_bf16(v)));
            }
            matmul(
                (m, n, k),
                dst,
                (n, 1),
                &Mat::rows(&rounded, k),
                &Mat::rows(b, n),
                1,
            );
        }
    }
}

/// Columns `c0..c0 + cw` of `src (len × w, row-major, len ≤ depth)` as VNNI panels of
/// 16 columns, each `depth / 2` rows of 16 `(even, odd)` pairs of consecutive rows;
/// zeros past `len` and `cw`.
pub(crate) fn paired(
    src: &[f32],
    w: usize,
    (c0, cw): (usize, usize),
    depth: usize,
    dst: &mut [u16],
) {
    let len = src.len() / w.max(1);
    assert!(len <= depth && depth.is_multiple_of(32) && c0 + cw <= w);
    assert_eq!(dst.len(), cw.div_ceil(16) * 16 * depth);
    assert!(amx_available(), "bf16 packing without AVX512-BF16");
    // SAFETY: `amx_available()` checked AVX-512F/BW and AVX512-BF16 on this CPU.
    #[allow(unsafe_code)]
    unsafe {
        amx::paired(src, w, (c0, cw), len, dst);
    }
}

/// A mask of the first `n` of 16 lanes (all for `n ≥ 16`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// `x` in bf16 bits when AMX runs here ([`amx_available`]); `None` otherwise.
pub(crate) fn to_bf16(x: &[f32]) -> Option<Vec<u16>> {
    if !amx_available() {
        return None;
    }
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(d, s)| amx::convert_into(s, d));
    // SAFETY: the chunks cover all `x.len()` elements, each written by
    // `convert_into`, within the capacity reserved.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(x.len());
    }
    Some(out)
}

/// `dst (m×n, row-major, exactly m·n long) = a · rhs` on this thread, `a` being bf16
/// bits with rows `kp` apart (the packing's depth: `rhs` packed for AMX tiles), at
/// least `m` rounded up to 32 rows of them.
pub(crate) fn matmul_bf16_bits(m: usize, dst: &mut [MaybeUninit<f32>], a: &[u16], rhs: &Packed) {
    matmul_bf16_bits_to(m, Sink::F32(dst), a, rhs);
}

/// [`matmul_bf16_bits`] into `dst`: f32 sums, or bf16 after an epilogue.
pub(crate) fn matmul_bf16_bits_to(m: usize, mut dst: Sink, a: &[u16], rhs: &Packed) {
    let PackedData::Tiles { bits, kp } = &rhs.data else {
        panic!("matmul_bf16_bits: the right operand is not packed for AMX tiles")
    };
    assert_eq!(dst.len(), m * rhs.n, "matmul_bf16_bits: dst is not m×n");
    if let Sink::Bits { e, .. } = &dst {
        e.check(m, rhs.n);
    }
    assert!(
        a.len() >= m.div_ceil(32) * 32 * kp,
        "matmul_bf16_bits: a is short"
    );
    amx::matmul_bits(m, rhs.n, &mut dst, a, bits, *kp);
}

/// `acc (mp×ld, row-major) += a · b` on AMX tiles: `a` is `mp` rows (a multiple of 32)
/// of `kp` bf16 (a multiple of 32), `b` the `n` columns of a `kp`-deep operand packed
/// as VNNI panels like [`Packed`]'s (`n.div_ceil(16)` panels of `kp/2` pair rows of
/// 32), `ld` ≥ `n` rounded up to 32.
///
/// # Panics
/// Where AMX does not run here, or on sizes that do not fit.
pub(crate) fn accumulate_bf16(
    acc: &mut [f32],
    ld: usize,
    a: &[u16],
    b: &[u16],
    n: usize,
    kp: usize,
) {
    assert!(amx_available(), "accumulate_bf16 without AMX tiles");
    let np = n.div_ceil(16) * 16;
    assert!(kp.is_multiple_of(32) && a.len().is_multiple_of(32 * kp.max(1)));
    let mp = a.len() / kp.max(1);
    assert!(ld >= n.div_ceil(32) * 32 && acc.len() >= mp * ld && b.len() >= np * kp);
    amx::matmul_bits(mp, n, &mut Sink::Acc { acc, ld }, a, b, kp);
}

/// Where the tile kernel puts an `m×n` product.
pub(crate) enum Sink<'a, 'e> {
    /// The f32 sums as they are (row-major, exactly `m·n` long).
    F32(&'a mut [MaybeUninit<f32>]),
    /// `e` applied to the sums, rounded to bf16 (row-major, exactly `m·n` long).
    Bits {
        dst: &'a mut [MaybeUninit<u16>],
        e: &'a Epilogue<'e>,
    },
    /// Added to f32 sums already there: whole 32×32 blocks, rows `ld` apart (the
    /// product's rows rounded up to 32, columns to 32 ≤ `ld`).
    Acc { acc: &'a mut [f32], ld: usize },
}

impl Sink<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Sink::F32(d) => d.len(),
            Sink::Bits { dst, .. } => dst.len(),
            Sink::Acc { acc, .. } => acc.len(),
        }
    }
}

/// What a conv with bf16 activations does to its f32 sums `y` before rounding them:
/// `y·scale + shift` per output channel, `+ shortcut` (a bf16 activation of the
/// output's shape, read in the same rows), then `max(0, ·)` when `relu`.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub shortcut: Option<&'a [u16]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Panics unless this fits an `m×n` output.
    pub(crate) fn check(&self, m: usize, n: usize) {
        assert!(
            self.scale.len() == n && self.shift.len() == n,
            "bf16 epilogue: {} scales and {} shifts for {n} channels",
            self.scale.len(),
            self.shift.len()
        );
        if let Some(s) = self.shortcut {
            assert_eq!(s.len(), m * n, "bf16 epilogue: shortcut is not m×n");
        }
    }

    /// This epilogue for `rows` rows of `n` channels from row `first` on.
    pub(crate) fn rows(&self, first: usize, rows: usize, n: usize) -> Self {
        Self {
            shortcut: self.shortcut.map(|s| &s[first * n..(first + rows) * n]),
            ..*self
        }
    }

    /// Element `at` (channel `j`) of the output from its sum `y`, as f32.
    #[inline]
    fn value(&self, y: f32, at: usize, j: usize) -> f32 {
        let mut v = y * self.scale[j] + self.shift[j];
        if let Some(s) = self.shortcut {
            v += from_bf16_bits(s[at]);
        }
        if self.relu { v.max(0.0) } else { v }
    }
}

/// The f32 value of bf16 bits (exact).
#[must_use]
pub fn from_bf16_bits(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

impl Packed {
    /// Depth of a row of the left operand the AMX tiles read (`k` rounded up to 32);
    /// `None` for the emulation.
    pub(crate) fn tile_depth(&self) -> Option<usize> {
        match self.data {
            PackedData::Tiles { kp, .. } => Some(kp),
            PackedData::Rounded(_) => None,
        }
    }
}

thread_local! {
    /// Scratch bf16 bits of [`with_bits`].
    static BITS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` scratch bf16 bits of this thread (contents unspecified).
pub(crate) fn with_bits<R>(len: usize, f: impl FnOnce(&mut [u16]) -> R) -> R {
    BITS.with(|cell| {
        let Ok(mut bits) = cell.try_borrow_mut() else {
            return f(&mut vec![0; len]);
        };
        if bits.len() < len {
            bits.resize(len, 0);
        }
        f(&mut bits[..len])
    })
}

/// Fewest rows a thread gets when [`matmul_bf16`] splits them.
const BLOCK_ROWS: usize = 256;

#[cfg(target_arch = "x86_64")]
mod amx {
    //! The AMX tile kernel: 32×32 blocks of the product as 2×2 tiles of 16×16 f32
    //! sums, each step multiplying 16×32 bf16 rows of the left operand by 32×16 of the
    //! right (`tdpbf16ps`).

    use std::arch::asm;
    use std::mem::MaybeUninit;

    use super::{Epilogue, Sink, to_bf16_bits};
    use crate::conv::gemm::Mat;

    /// `arch_prctl` and its request for the AMX tile data state (Linux, x86-64).
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;

    /// CPUID says AMX-TILE, AMX-BF16 and AVX512-BF16, and Linux grants the tile
    /// state.
    pub(super) fn enable() -> bool {
        if !cfg!(target_os = "linux")
            || !is_x86_feature_detected!("avx512bf16")
            || !is_x86_feature_detected!("avx512bw")
        {
            return false;
        }
        // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
            return false;
        }
        let ret: i64;
        // SAFETY: the `arch_prctl` syscall with ARCH_REQ_XCOMP_PERM only asks the
        // kernel to allow the tile state for this process; it reads and writes no
        // memory of ours. The syscall instruction clobbers rcx and r11, declared.
        #[allow(unsafe_code)]
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// `dst = bf16(src)`, 32 at a time (`vcvtne2ps2bf16`: ties to even as
    /// [`to_bf16_bits`], denormals to zero as the tiles take them anyway).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn convert(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        use std::arch::x86_64::{
            __m512bh, __m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_storeu_si512,
        };
        let mut s = src.chunks_exact(32);
        let mut d = dst.chunks_exact_mut(32);
        for (s, d) in (&mut s).zip(&mut d) {
            // SAFETY: `s` holds 32 floats and `d` 32 u16 (64 bytes); unaligned
            // loads and stores.
            #[allow(unsafe_code)]
            unsafe {
                let lo = _mm512_loadu_ps(s.as_ptr());
                let hi = _mm512_loadu_ps(s.as_ptr().add(16));
                let v = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    d.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(v),
                );
            }
        }
        for (x, y) in s.remainder().iter().zip(d.into_remainder()) {
            y.write(to_bf16_bits(*x));
        }
    }

    /// [`super::paired`]: two rows' 16 columns rounded at once, then interleaved.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) fn paired(
        src: &[f32],
        w: usize,
        (c0, cw): (usize, usize),
        len: usize,
        dst: &mut [u16],
    ) {
        use std::arch::x86_64::{
            __m512, __m512bh, __m512i, _mm512_cvtne2ps_pbh, _mm512_loadu_si512,
            _mm512_maskz_loadu_ps, _mm512_permutexvar_epi16, _mm512_setzero_ps,
            _mm512_storeu_si512,
        };
        // `cvtne2ps` gives (row 2q: lanes 0–15, row 2q+1: lanes 16–31); the pairs want
        // lane 2c ← c and lane 2c+1 ← 16 + c.
        let order: [u16; 32] = std::array::from_fn(|l| (l / 2 + 16 * (l % 2)) as u16);
        // SAFETY: a 64-byte load from a 64-byte array.
        #[allow(unsafe_code)]
        let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
        let depth = dst.len() / (cw.div_ceil(16) * 16).max(1);
        for panel in 0..cw.div_ceil(16) {
            let mask = super::first_lanes(cw - panel * 16);
            let c0 = c0 + panel * 16;
            let row = |p: usize| -> __m512 {
                if p >= len {
                    return _mm512_setzero_ps();
                }
                // SAFETY: the kept lanes read src[p·w + c0 + c] for c0 + c < w (the
                // mask keeps c < cw − panel·16, and the caller asserted c0 + cw ≤ w)
                // and p < len: inside `src`.
                #[allow(unsafe_code)]
                unsafe {
                    _mm512_maskz_loadu_ps(mask, src.as_ptr().add(p * w + c0))
                }
            };
            let out = &mut dst[panel * 16 * depth..(panel + 1) * 16 * depth];
            for (q, pair) in out.chunks_exact_mut(32).enumerate() {
                let v = _mm512_cvtne2ps_pbh(row(2 * q + 1), row(2 * q));
                // SAFETY: a bit-cast between two 64-byte vector types; then 32 u16 to
                // `pair`, which holds 32.
                #[allow(unsafe_code)]
                unsafe {
                    let v = std::mem::transmute::<__m512bh, __m512i>(v);
                    _mm512_storeu_si512(
                        pair.as_mut_ptr().cast(),
                        _mm512_permutexvar_epi16(order, v),
                    );
                }
            }
        }
    }

    /// Rows of the left operand converted at a time by [`matmul`].
    const ROWS_PER_CONVERSION: usize = 512;

    /// The tile palette: tiles 0–7 each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        TileConfig(c)
    };

    pub(super) fn matmul(
        m: usize,
        n: usize,
        k: usize,
        dst: &mut [MaybeUninit<f32>],
        lhs: &Mat,
        rhs: &[u16],
        kp: usize,
    ) {
        let mp = m.div_ceil(32) * 32;
        let np = n.div_ceil(16) * 16;
        assert!(rhs.len() >= kp * np && kp >= k && kp.is_multiple_of(32));
        // By blocks of rows, so that each block's bf16 copy stays in cache while every
        // column panel passes over it.
        let block = ROWS_PER_CONVERSION.min(mp);
        super::with_bits(block * kp, |a| {
            for (b, dst) in dst.chunks_mut(block * n).enumerate() {
                let (first, rows) = (b * block, dst.len() / n);
                let a = &mut a[..rows.div_ceil(32) * 32 * kp];
                for (i, row) in a.chunks_exact_mut(kp).enumerate() {
                    let (row, pad) = row.split_at_mut(k);
                    pad.fill(0);
                    match (i < rows).then(|| lhs.row(first + i, k)).flatten() {
                        Some(src) => convert_slice(src, row),
                        None => row.fill(0),
                    }
                }
                // SAFETY: AMX was enabled for this process (`Packed::new` chose tiles
                // only when `amx_available()`); `a` holds `rows` rounded up to 32 rows
                // of kp, `rhs` np/16 panels of kp/2 pair rows (asserted above), and
                // `dst` is rows×n.
                #[allow(unsafe_code)]
                unsafe {
                    run(rows, n, a, rhs, kp, np, &mut Sink::F32(dst));
                }
            }
        });
    }

    /// [`matmul`] of a left operand already in bf16 (rows `kp` apart, at least `m`
    /// rounded up to 32 of them).
    pub(super) fn matmul_bits(
        m: usize,
        n: usize,
        dst: &mut Sink,
        a: &[u16],
        rhs: &[u16],
        kp: usize,
    ) {
        let (mp, np) = (m.div_ceil(32) * 32, n.div_ceil(16) * 16);
        assert!(rhs.len() >= kp * np && kp.is_multiple_of(32) && a.len() >= mp * kp);
        // SAFETY: as in `matmul` (tiles packed only where AMX is enabled; sizes
        // asserted here and by the caller).
        #[allow(unsafe_code)]
        unsafe {
            run(m, n, &a[..mp * kp], rhs, kp, np, dst);
        }
    }

    /// `dst = bf16(src)` (equal lengths; AVX512-BF16, present wherever AMX is).
    pub(super) fn convert_slice(src: &[f32], dst: &mut [u16]) {
        // SAFETY: `MaybeUninit<u16>` has `u16`'s layout, and `convert_into` writes
        // only initialised values, so `dst` stays initialised.
        #[allow(unsafe_code)]
        let dst = unsafe { &mut *(std::ptr::from_mut::<[u16]>(dst) as *mut [MaybeUninit<u16>]) };
        convert_into(src, dst);
    }

    /// [`convert_slice`] into a possibly uninitialised `dst`, every element written.
    pub(super) fn convert_into(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
        assert_eq!(src.len(), dst.len());
        assert!(
            super::amx_available(),
            "bf16 conversion without AVX512-BF16"
        );
        // SAFETY: `amx_available()` checked AVX512-BF16 on this CPU.
        #[allow(unsafe_code)]
        unsafe {
            convert(src, dst);
        }
    }

    /// Tiles 0–3, the 2×2 tiles of a 32×32 f32 block, to `c` with rows `ld` floats
    /// apart.
    ///
    /// # Safety
    /// Tiles configured by `run`; `c` valid for 32 rows of 32 floats `ld` apart.
    #[allow(unsafe_code)]
    unsafe fn store_block(c: *mut f32, ld: usize) {
        // SAFETY: the caller's contract; each store writes 16 rows of 64 bytes.
        unsafe {
            asm!(
                "tilestored [{c0} + {sc}*1], tmm0",
                "tilestored [{c1} + {sc}*1], tmm1",
                "tilestored [{c2} + {sc}*1], tmm2",
                "tilestored [{c3} + {sc}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * ld),
                c3 = in(reg) c.add(16 * ld + 16),
                sc = in(reg) ld * 4,
                options(nostack),
            );
        }
    }

    /// Asks for the 64 bytes from `at` of each of `rows` rows `n` apart of `s`.
    fn prefetch_rows(s: &[u16], at: usize, n: usize, rows: usize) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for r in 0..rows {
            if let Some(v) = s.get(at + r * n) {
                // SAFETY: a prefetch reads nothing architecturally; the address is an
                // element of `s`.
                #[allow(unsafe_code)]
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast());
                }
            }
        }
    }

    /// Rows `i0..i0+rows`, columns `j0..j0+cols` of the `·×n` bf16 output from the
    /// 32×32 block of sums `block` (row stride 32), through the epilogue `e`.
    fn finish_bits(
        block: &[f32; 1024],
        (i0, j0): (usize, usize),
        (rows, cols): (usize, usize),
        n: usize,
        dst: &mut [MaybeUninit<u16>],
        e: &Epilogue,
    ) {
        if cols == 32 {
            // SAFETY: AVX-512F/BW and AVX512-BF16 are there (AMX tiles run only
            // where `amx_available()` checked them).
            #[allow(unsafe_code)]
            unsafe {
                finish_bits_avx512(block, (i0, j0), rows, n, dst, e);
            }
            return;
        }
        for r in 0..rows {
            let at = (i0 + r) * n + j0;
            for c in 0..cols {
                let v = e.value(block[r * 32 + c], at + c, j0 + c);
                dst[at + c].write(to_bf16_bits(v));
            }
        }
    }

    /// [`finish_bits`] of 32 whole columns, 32 values a row at a time: the same
    /// arithmetic as [`Epilogue::value`] (multiply, then add, no FMA) and the same
    /// rounding as [`to_bf16_bits`] (bar denormals, flushed to zero).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn finish_bits_avx512(
        block: &[f32; 1024],
        (i0, j0): (usize, usize),
        rows: usize,
        n: usize,
        dst: &mut [MaybeUninit<u16>],
        e: &Epilogue,
    ) {
        use std::arch::x86_64::{
            __m512bh, __m512i, _mm256_loadu_si256, _mm512_add_ps, _mm512_castsi512_ps,
            _mm512_cvtepu16_epi32, _mm512_cvtne2ps_pbh, _mm512_loadu_ps, _mm512_max_ps,
            _mm512_mul_ps, _mm512_setzero_ps, _mm512_slli_epi32, _mm512_storeu_si512,
        };
        let (scale, shift) = (&e.scale[j0..j0 + 32], &e.shift[j0..j0 + 32]);
        assert!(dst.len() >= (i0 + rows - 1) * n + j0 + 32 && rows <= 32);
        if let Some(s) = e.shortcut {
            assert!(s.len() >= (i0 + rows - 1) * n + j0 + 32);
        }
        // SAFETY: every load reads 16 floats or 16 u16 inside `block`, `scale`,
        // `shift` or the shortcut row, and every store writes 32 u16 inside `dst`
        // (lengths asserted above); unaligned loads and stores.
        #[allow(unsafe_code)]
        unsafe {
            let sc = [
                _mm512_loadu_ps(scale.as_ptr()),
                _mm512_loadu_ps(scale.as_ptr().add(16)),
            ];
            let sh = [
                _mm512_loadu_ps(shift.as_ptr()),
                _mm512_loadu_ps(shift.as_ptr().add(16)),
            ];
            let zero = _mm512_setzero_ps();
            for r in 0..rows {
                let at = (i0 + r) * n + j0;
                let mut v = [0, 1].map(|h| {
                    let y = _mm512_loadu_ps(block.as_ptr().add(r * 32 + h * 16));
                    _mm512_add_ps(_mm512_mul_ps(y, sc[h]), sh[h])
                });
                if let Some(s) = e.shortcut {
                    for (h, v) in v.iter_mut().enumerate() {
                        let raw = _mm256_loadu_si256(s.as_ptr().add(at + h * 16).cast());
                        let wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16);
                        *v = _mm512_add_ps(*v, _mm512_castsi512_ps(wide));
                    }
                }
                if e.relu {
                    v = v.map(|v| _mm512_max_ps(v, zero));
                }
                let out = _mm512_cvtne2ps_pbh(v[1], v[0]);
                _mm512_storeu_si512(
                    dst.as_mut_ptr().add(at).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(out),
                );
            }
        }
    }

    /// Tiles 0–3 from a 32×32 f32 block at `c`, rows `ld` floats apart.
    ///
    /// # Safety
    /// Tiles configured by `run`; `c` valid for 32 rows of 32 floats `ld` apart.
    #[allow(unsafe_code)]
    unsafe fn load_block(c: *const f32, ld: usize) {
        // SAFETY: the caller's contract; each load reads 16 rows of 64 bytes.
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {sc}*1]",
                "tileloadd tmm1, [{c1} + {sc}*1]",
                "tileloadd tmm2, [{c2} + {sc}*1]",
                "tileloadd tmm3, [{c3} + {sc}*1]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * ld),
                c3 = in(reg) c.add(16 * ld + 16),
                sc = in(reg) ld * 4,
                options(nostack, readonly),
            );
        }
    }

    /// # Safety
    /// AMX is enabled for this process; `a` is `mp×kp` bf16 (`mp` a multiple of 32,
    /// at least `m`), `b` packed as [`super::PackedData::Tiles`] for `kp` and `np`,
    /// `dst` is `m×n`.
    #[allow(unsafe_code)]
    unsafe fn run(m: usize, n: usize, a: &[u16], b: &[u16], kp: usize, np: usize, dst: &mut Sink) {
        let mut block = [0f32; 32 * 32];
        let a_stride = kp * 2;
        let b_stride = 64usize;
        let mp = a.len() / kp;
        // SAFETY: the caller's contract (AMX enabled; `a` is mp×kp and `b` holds
        // np/16 panels of kp/2 pair rows, so every tile load stays inside them; a
        // whole-block store writes rows i0..i0+32, columns j0..j0+32 of the m×n
        // `dst`, others the local `block`; an accumulating sink's blocks, loaded and
        // stored whole, lie inside its mp×ld buffer, as `accumulate_bf16` asserts);
        // the tiles are this thread's, configured here and released at the end.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
            let mut j0 = 0;
            while j0 < np {
                let pair = j0 + 16 < np;
                let b0 = b.as_ptr().add(j0 * kp);
                let b1 = if pair { b0.add(16 * kp) } else { b0 };
                let mut i0 = 0;
                while i0 < mp {
                    let a0 = a.as_ptr().add(i0 * kp);
                    let a1 = a0.add(16 * kp);
                    if let Sink::Bits {
                        e:
                            Epilogue {
                                shortcut: Some(s), ..
                            },
                        ..
                    } = dst
                    {
                        // The shortcut comes from memory (the block's input, layers
                        // ago): asked for now, it is in cache once the sums are.
                        prefetch_rows(s, i0 * n + j0, n, m.saturating_sub(i0).min(32));
                    }
                    if let Sink::Acc { acc, ld } = dst {
                        load_block(acc.as_ptr().add(i0 * *ld + j0), *ld);
                    } else {
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            options(nostack, nomem)
                        );
                    }
                    let mut kk = 0;
                    while kk < kp {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kk),
                            a1 = in(reg) a1.add(kk),
                            b0 = in(reg) b0.add(kk * 16),
                            b1 = in(reg) b1.add(kk * 16),
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly),
                        );
                        kk += 32;
                    }
                    let rows = m.saturating_sub(i0).min(32);
                    let cols = n.saturating_sub(j0).min(32);
                    match dst {
                        Sink::F32(dst) if rows == 32 && cols == 32 => {
                            // A whole block: straight into `dst`.
                            store_block(dst.as_mut_ptr().add(i0 * n + j0).cast::<f32>(), n);
                        }
                        Sink::F32(dst) => {
                            store_block(block.as_mut_ptr(), 32);
                            for r in 0..rows {
                                let out = &mut dst[(i0 + r) * n + j0..][..cols];
                                for (o, v) in out.iter_mut().zip(&block[r * 32..r * 32 + cols]) {
                                    o.write(*v);
                                }
                            }
                        }
                        Sink::Acc { acc, ld } => {
                            store_block(acc.as_mut_ptr().add(i0 * *ld + j0), *ld);
                        }
                        Sink::Bits { dst, e } => {
                            // Through the block in L1: the epilogue, then bf16 stores
                            // (half the bytes of f32 ones).
                            store_block(block.as_mut_ptr(), 32);
                            finish_bits(&block, (i0, j0), (rows, cols), n, dst, e);
                        }
                    }
                    i0 += 32;
                }
                j0 += 32;
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    use std::mem::MaybeUninit;

    use crate::conv::gemm::Mat;

    pub(super) fn enable() -> bool {
        false
    }

    pub(super) fn convert_slice(_: &[f32], _: &mut [u16]) {
        unreachable!("bf16 bits are made only where AMX is available")
    }

    pub(super) unsafe fn paired(_: &[f32], _: usize, _: (usize, usize), _: usize, _: &mut [u16]) {
        unreachable!("bf16 bits are made only where AMX is available")
    }

    pub(super) fn convert_into(_: &[f32], _: &mut [MaybeUninit<u16>]) {
        unreachable!("bf16 bits are made only where AMX is available")
    }

    pub(super) fn matmul_bits(
        _: usize,
        _: usize,
        _: &mut super::Sink,
        _: &[u16],
        _: &[u16],
        _: usize,
    ) {
        unreachable!("AMX tiles are packed only where AMX is available")
    }

    pub(super) fn matmul(
        _: usize,
        _: usize,
        _: usize,
        _: &mut [MaybeUninit<f32>],
        _: &Mat,
        _: &[u16],
        _: usize,
    ) {
        unreachable!("AMX tiles are packed only where AMX is available")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::gemm::filled;
    use crate::testing::{rel_err, values};

    #[test]
    fn rounding_is_to_the_nearest_bf16_with_ties_to_even() {
        assert_eq!(to_bf16_bits(1.0), 0x3f80);
        // Halfway between 1 and the next bf16 (1 + 2⁻⁷): down to the even 1.
        assert_eq!(to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        // Halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up to the even one.
        assert_eq!(to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(to_bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
        assert_eq!(to_bf16_bits(-2.5), 0xc020);
        assert_eq!(to_bf16_bits(f32::MAX), 0x7f80, "overflow gives infinity");
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
    }

    /// `lhs (m×k) · rhs (k×n)` of the bf16-rounded operands in f64.
    fn reference(lhs: &[f32], rhs: &Mat, (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        f64::from(round_bf16(lhs[i * k + p])) * f64::from(round_bf16(rhs.get(p, j)))
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn tiles_and_emulation_multiply_the_rounded_operands() {
        // Edges of every kind: rows and columns off the 32×32 blocks and 16-wide
        // panels, odd reductions off the 32-deep tile steps, one row, a split over
        // threads; the right operand stored both ways (a kernel is stored transposed;
        // row-major, as the input gradient takes it, packs by pairs of rows).
        let shapes = [
            (1, 16, 3),
            (33, 48, 37),
            (70, 16, 64),
            (64, 96, 288),
            (600, 32, 19),
            (5, 21, 45),
        ];
        for (case, &(m, n, k)) in shapes.iter().enumerate() {
            let lhs = values(m * k, 3 + case as u64);
            let stored = values(k * n, 30 + case as u64);
            for transposed in [false, true] {
                let rhs = if transposed {
                    Mat::rows_t(&stored, k)
                } else {
                    Mat::rows(&stored, n)
                };
                let want = reference(&lhs, &rhs, (m, n, k));
                let mut ways = vec![false];
                if amx_available() {
                    ways.push(true);
                }
                for tiles in ways {
                    let packed = Packed::with(k, n, &rhs, tiles);
                    for threads in [1, 2] {
                        let got = filled(m * n, |d| {
                            matmul_bf16(m, d, &Mat::rows(&lhs, k), &packed, threads);
                        });
                        let err = rel_err(&got, &want);
                        let what = format!(
                            "{m}×{k}·{k}×{n} t{transposed} tiles {tiles} threads {threads}"
                        );
                        assert!(err < 1e-5, "{what}: {err}");
                    }
                }
                // And the rounding matters: the f32 product is another one.
                let exact: Vec<f64> = (0..m * n)
                    .map(|e| {
                        let (i, j) = (e / n, e % n);
                        (0..k)
                            .map(|p| f64::from(lhs[i * k + p]) * f64::from(rhs.get(p, j)))
                            .sum()
                    })
                    .collect();
                let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                assert!(
                    rel_err(&want32, &exact) > 1e-4,
                    "case {case}: bf16 rounding not visible"
                );
            }
        }
    }
}
