//! BatchNorm (+ ReLU) as one fused op on the CPU, on channels-last data.
//!
//! Candle's `BatchNorm` builds train-mode normalisation out of a transpose, a
//! `contiguous` copy, means, broadcasts and a transpose back — each a full pass over
//! the activation, each with its own backward — and the ReLU after it is one more.
//! [`batch_norm`] computes the per-channel statistics in one pass, updates the running
//! statistics exactly like `candle_nn::BatchNorm` (momentum on the mean, unbiased
//! variance into `running_var`), and applies `y = max(0, x·scale + shift)` (ReLU
//! optional) in a second, both vectorised across the channels of each pixel; its
//! backward is the closed form `dx = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))` with `g` the
//! output gradient masked where the ReLU (recomputed from `x`) was zero,
//! `dγ = Σ g·x̂`, `dβ = Σ g`. In eval mode the running statistics are used and the
//! backward is the plain per-channel scale.
//!
//! Other devices, dtypes or a `BatchNorm` without affine parameters fall back to
//! Candle's `BatchNorm` (+ `relu`).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use super::cpu_tensor::{contiguous_f32, with_f32_data};
use super::simd::vectorized;

/// `bn(x)` (train or eval mode, like `bn.forward_t(x, train)`), followed by a ReLU when
/// `relu`; `x` is `(N, C, H, W)`. Train mode updates `bn`'s running statistics. On the
/// fused path the op runs channels-last, around two permutes.
pub fn batch_norm(x: &Tensor, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    if fused_weights(x, bn).is_some() {
        batch_norm_nhwc(&x.permute((0, 2, 3, 1))?, bn, train, relu)?.permute((0, 3, 1, 2))
    } else {
        let ys = bn.forward_t(x, train)?;
        if relu { ys.relu() } else { Ok(ys) }
    }
}

/// The affine parameters when the fused op applies to `x` (CPU, f32, rank 4).
fn fused_weights<'a>(x: &Tensor, bn: &'a BatchNorm) -> Option<(&'a Tensor, &'a Tensor)> {
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() == 4
        && !super::conv::candle_reference_forced();
    bn.weight_and_bias().filter(|_| fused)
}

/// Like [`batch_norm`] for channels-last `x (N, H, W, C)`.
pub fn batch_norm_nhwc(x: &Tensor, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    let Some((gamma, beta)) = fused_weights(x, bn) else {
        let ys = bn.forward_t(&x.permute((0, 3, 1, 2))?, train)?;
        let ys = if relu { ys.relu()? } else { ys };
        return ys.permute((0, 2, 3, 1));
    };
    let x = x.contiguous()?;
    let c = x.dim(3)?;
    if gamma.dims1()? != c {
        candle_core::bail!("batch-norm: {c} channels in, {} features", gamma.dims1()?)
    }
    let stats = if train {
        let s = with_f32_data(&x, |xs| batch_stats(xs, c, bn.eps()))?;
        update_running_stats(bn, &s)?;
        s
    } else {
        running_stats(bn)?
    };
    let op = BnOp {
        stats,
        batch_stats: train,
        relu,
    };
    x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// The per-channel statistics a BatchNorm normalises with.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    pub invstd: Vec<f64>,
    /// The batch's biased variance (train mode), for the running statistics.
    pub var: Vec<f64>,
    /// Values per channel the statistics came from.
    pub count: usize,
}

impl Stats {
    /// `(scale, shift)` with `y = x·scale + shift`.
    pub fn affine(&self, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&self.invstd)
            .map(|(&g, &s)| g * s as f32)
            .collect();
        let shift = beta
            .iter()
            .zip(&self.mean)
            .zip(&scale)
            .map(|((&b, &m), &a)| b - m * a)
            .collect();
        (scale, shift)
    }
}

/// Statistics of a channels-last batch (train mode).
pub(crate) fn batch_stats(xs: &[f32], c: usize, eps: f64) -> Result<Stats> {
    let count = xs.len() / c.max(1);
    if count < 2 {
        candle_core::bail!("batch-norm in train mode needs more than one value per channel")
    }
    let (mean, var) = channel_stats(xs, c);
    Ok(Stats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        invstd: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        var,
        count,
    })
}

/// The running statistics of `bn` (eval mode).
pub(crate) fn running_stats(bn: &BatchNorm) -> Result<Stats> {
    let mean = bn.running_mean().to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let var = bn.running_var().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(Stats {
        mean,
        invstd: var.iter().map(|v| 1.0 / (v + bn.eps()).sqrt()).collect(),
        var,
        count: 0,
    })
}

/// Folds a batch's statistics into `bn`'s running ones exactly like
/// `candle_nn::BatchNorm` (momentum on the mean, unbiased variance).
pub(crate) fn update_running_stats(bn: &BatchNorm, s: &Stats) -> Result<()> {
    let mom = bn.momentum();
    let unbias = s.count as f64 / (s.count as f64 - 1.0);
    let rm = Var::from_tensor(bn.running_mean())?;
    let rv = Var::from_tensor(bn.running_var())?;
    let c = s.mean.len();
    let device = bn.running_mean().device();
    let mean_t = Tensor::from_slice(&s.mean, c, device)?.to_dtype(rm.dtype())?;
    let var_t = Tensor::from_slice(&s.var, c, device)?.to_dtype(rv.dtype())?;
    rm.set(&((rm.as_tensor() * (1.0 - mom))? + (mean_t * mom)?)?)?;
    rv.set(&((rv.as_tensor() * (1.0 - mom))? + (var_t * (mom * unbias))?)?)?;
    Ok(())
}

/// Rows of channels summed per block in f32 before the block total joins the f64 sum:
/// short enough to keep f32 rounding small, long enough to vectorise across channels.
const BLOCK_ROWS: usize = 64;

/// Independent row ranges summed in parallel; a fixed count (not the thread count) so
/// that the result is the same on every machine and run.
const SUM_GROUPS: usize = 32;

/// Per-channel sums over the rows of a channels-last tensor: `add_row(row, acc)` adds
/// row `row`'s contributions to `acc`, `sums` groups of `c` accumulators. Returns the
/// `sums·c` totals in f64 (blocks of [`BLOCK_ROWS`] rows in f32), deterministic.
fn channel_sums(
    rows: usize,
    c: usize,
    sums: usize,
    add_row: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f64> {
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let per_group = blocks.div_ceil(SUM_GROUPS).max(1);
    let groups: Vec<Vec<f64>> = (0..blocks.div_ceil(per_group))
        .into_par_iter()
        .map(|grp| {
            let mut total = vec![0f64; sums * c];
            let mut acc = vec![0f32; sums * c];
            vectorized(
                #[inline(always)]
                || {
                    for b in grp * per_group..((grp + 1) * per_group).min(blocks) {
                        acc.fill(0.0);
                        for row in b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(rows) {
                            add_row(row, &mut acc);
                        }
                        for (t, &a) in total.iter_mut().zip(&acc) {
                            *t += f64::from(a);
                        }
                    }
                },
            );
            total
        })
        .collect();
    let mut total = vec![0f64; sums * c];
    for g in groups {
        for (t, v) in total.iter_mut().zip(&g) {
            *t += v;
        }
    }
    total
}

/// Per-channel mean and biased variance (f64) of channels-last rows.
fn channel_stats(xs: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = xs.len() / c;
    let count = rows as f64;
    // One pass of Σ(x − p) and Σ(x − p)², shifted by a pivot p per channel (the first
    // row): x − p is of the order of the spread, so E[(x−p)²] − E[x−p]² does not
    // cancel the way E[x²] − E[x]² would.
    let pivot = &xs[..c];
    let sums = channel_sums(rows, c, 2, |r, acc| {
        let (lin, sq) = acc.split_at_mut(c);
        for (((l, s), &v), &p) in lin.iter_mut().zip(sq).zip(&xs[r * c..][..c]).zip(pivot) {
            let d = v - p;
            *l += d;
            *s += d * d;
        }
    });
    (0..c)
        .map(|ci| {
            let shift = sums[ci] / count;
            let mean = f64::from(pivot[ci]) + shift;
            (mean, (sums[c + ci] / count - shift * shift).max(0.0))
        })
        .unzip()
}

/// A per-channel `y = x·scale + shift`, then `max(0, ·)` when `relu`: a BatchNorm
/// with fixed statistics, applied by a conv as it writes its output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

/// Rows handled per parallel task in the elementwise passes.
const TASK_ROWS: usize = 256;

/// `out = x·scale + shift` per channel (then `max(0, ·)` when `relu`), channels-last.
pub(crate) fn apply(xs: &[f32], scale: &[f32], shift: &[f32], relu: bool, out: &mut [f32]) {
    let c = scale.len();
    out.par_chunks_mut(c * TASK_ROWS)
        .zip(xs.par_chunks(c * TASK_ROWS))
        .for_each(|(yc, xc)| {
            vectorized(
                #[inline(always)]
                || {
                    for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                        let it = yr.iter_mut().zip(xr).zip(scale).zip(shift);
                        if relu {
                            for (((o, &v), &a), &b) in it {
                                *o = (v * a + b).max(0.0);
                            }
                        } else {
                            for (((o, &v), &a), &b) in it {
                                *o = v * a + b;
                            }
                        }
                    }
                },
            );
        });
}

/// [`apply`] in place.
pub(crate) fn apply_in_place(xs: &mut [f32], scale: &[f32], shift: &[f32], relu: bool) {
    let c = scale.len();
    xs.par_chunks_mut(c * TASK_ROWS).for_each(|xc| {
        vectorized(
            #[inline(always)]
            || {
                for xr in xc.chunks_exact_mut(c) {
                    for ((v, &a), &b) in xr.iter_mut().zip(scale).zip(shift) {
                        let y = *v * a + b;
                        *v = if relu { y.max(0.0) } else { y };
                    }
                }
            },
        );
    });
}

/// The gradients of a BatchNorm (+ ReLU) from the output gradient `gs`.
pub(crate) struct Grads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Backward of `y = [max(0,] x·scale + shift [)]` with `stats`: `gs` is masked where
/// the ReLU (recomputed from `xs`, bit for bit the forward's value) was zero; with
/// `batch_stats`, `dx` includes the statistics' dependence on `x`. `dx` is computed
/// only when `need_dx`.
pub(crate) fn backward(
    xs: &[f32],
    gs: &[f32],
    stats: &Stats,
    (gamma, beta): (&[f32], &[f32]),
    relu: bool,
    batch_stats: bool,
    need_dx: bool,
) -> Grads {
    let c = gamma.len();
    let rows = xs.len() / c.max(1);
    let count = rows as f64;
    let (scale, shift) = stats.affine(gamma, beta);
    let ch = Channel {
        mean: &stats.mean[..c],
        scale: &scale[..c],
        shift: &shift[..c],
    };
    // Per-channel Σg and Σg·(x − μ), g being dy masked by the ReLU.
    let sums = channel_sums(rows, c, 2, |r, acc| {
        let (xr, gr) = (&xs[r * c..][..c], &gs[r * c..][..c]);
        let (sg, sgx) = acc.split_at_mut(c);
        if relu {
            grad_sums_row::<true>(xr, gr, &ch, sg, sgx);
        } else {
            grad_sums_row::<false>(xr, gr, &ch, sg, sgx);
        }
    });
    let dgamma: Vec<f32> = (0..c)
        .map(|ci| (stats.invstd[ci] * sums[c + ci]) as f32)
        .collect();
    let dbeta: Vec<f32> = sums[..c].iter().map(|&s| s as f32).collect();
    if !need_dx {
        return Grads {
            dx: Vec::new(),
            dgamma,
            dbeta,
        };
    }
    // dx = k·(g − mean(g) − x̂·mean(g·x̂)) = k·g + c1·(x − μ) + c2 per channel.
    let mut k = Vec::with_capacity(c);
    let mut c1 = Vec::with_capacity(c);
    let mut c2 = Vec::with_capacity(c);
    for ci in 0..c {
        let invstd = stats.invstd[ci];
        let kc = f64::from(gamma[ci]) * invstd;
        let (mg, mgx) = if batch_stats {
            (sums[ci] / count, invstd * sums[c + ci] / count)
        } else {
            (0.0, 0.0)
        };
        k.push(kc as f32);
        c1.push((-kc * invstd * mgx) as f32);
        c2.push((-kc * mg) as f32);
    }
    let coef = DxCoef {
        k: &k,
        c1: &c1,
        c2: &c2,
    };
    let mut dx = vec![0f32; xs.len()];
    dx.par_chunks_mut(c * TASK_ROWS)
        .zip(
            xs.par_chunks(c * TASK_ROWS)
                .zip(gs.par_chunks(c * TASK_ROWS)),
        )
        .for_each(|(dc, (xc, gc))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((dr, xr), gr) in dc
                        .chunks_exact_mut(c)
                        .zip(xc.chunks_exact(c))
                        .zip(gc.chunks_exact(c))
                    {
                        if relu {
                            dx_row::<true>(dr, xr, gr, &ch, &coef);
                        } else {
                            dx_row::<false>(dr, xr, gr, &ch, &coef);
                        }
                    }
                },
            );
        });
    Grads { dx, dgamma, dbeta }
}

/// Per-channel values of a BatchNorm's forward (all of the same length).
struct Channel<'a> {
    mean: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
}

/// Per-channel coefficients of the input gradient.
struct DxCoef<'a> {
    k: &'a [f32],
    c1: &'a [f32],
    c2: &'a [f32],
}

/// `g`, or 0 where the ReLU after `x·a + b` (recomputed bit for bit) was zero.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn masked<const RELU: bool>(g: f32, x: f32, a: f32, b: f32) -> f32 {
    if RELU && x * a + b <= 0.0 { 0.0 } else { g }
}

/// One row's contributions to Σg and Σg·(x − μ); written as zips so it vectorises.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn grad_sums_row<const RELU: bool>(
    x: &[f32],
    g: &[f32],
    ch: &Channel,
    sg: &mut [f32],
    sgx: &mut [f32],
) {
    let consts = ch.mean.iter().zip(ch.scale.iter().zip(ch.shift));
    for (((s1, s2), (&x, &g)), (&m, (&a, &b))) in
        sg.iter_mut().zip(sgx).zip(x.iter().zip(g)).zip(consts)
    {
        let g = masked::<RELU>(g, x, a, b);
        *s1 += g;
        *s2 += g * (x - m);
    }
}

/// One row of the input gradient.
// Inlined into `vectorized`'s target-feature function, so compiled for its ISA.
#[allow(clippy::inline_always)]
#[inline(always)]
fn dx_row<const RELU: bool>(d: &mut [f32], x: &[f32], g: &[f32], ch: &Channel, k: &DxCoef) {
    let consts = ch.mean.iter().zip(ch.scale.iter().zip(ch.shift));
    let coef = k.k.iter().zip(k.c1.iter().zip(k.c2));
    for ((o, (&x, &g)), ((&m, (&a, &b)), (&kk, (&c1, &c2)))) in
        d.iter_mut().zip(x.iter().zip(g)).zip(consts.zip(coef))
    {
        *o = masked::<RELU>(g, x, a, b) * kk + (x - m) * c1 + c2;
    }
}

/// The fused op: `(x, γ, β)` → `y`, channels-last; statistics carried by the op.
struct BnOp {
    stats: Stats,
    /// Whether the statistics came from this batch (train mode): then the input
    /// gradient includes their dependence on `x`.
    batch_stats: bool,
    relu: bool,
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let (scale, shift) = self.stats.affine(gamma, beta);
        let mut y = vec![0f32; x.len()];
        apply(x, &scale, &shift, self.relu, &mut y);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.dims1()?;
        let grad = grad.contiguous()?;
        let gamma_v = gamma.to_vec1::<f32>()?;
        let beta_v = beta.to_vec1::<f32>()?;
        let g = with_f32_data(x, |xs| {
            with_f32_data(&grad, |gs| {
                Ok(backward(
                    xs,
                    gs,
                    &self.stats,
                    (&gamma_v, &beta_v),
                    self.relu,
                    self.batch_stats,
                    x.track_op(),
                ))
            })
        })?;
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(g.dx, x.shape(), x.device()))
            .transpose()?;
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(g.dgamma, c, gamma.device()))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(g.dbeta, c, beta.device()))
            .transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}
