//! BatchNorm (+ ReLU) as one fused op on the CPU, on channels-last data.
//!
//! Candle's `BatchNorm` builds train-mode normalisation out of a transpose, a
//! `contiguous` copy, means, broadcasts and a transpose back — each a full pass over
//! the activation, each with its own backward — and the ReLU after it is one more.
//! [`batch_norm`] computes the per-channel statistics in one pass, updates the running
//! statistics exactly like `candle_nn::BatchNorm` (momentum on the mean, unbiased
//! variance into `running_var`), and applies `y = max(0, x·scale + shift)` (ReLU
//! optional) in a second, both vectorised across the channels of each pixel; its backward is the closed form
//! `dx = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))` with `g` the masked output gradient,
//! `dγ = Σ g·x̂`, `dβ = Σ g`. In eval mode the running statistics are used and the
//! backward is the plain per-channel scale.
//!
//! Other devices, dtypes or a `BatchNorm` without affine parameters fall back to
//! Candle's `BatchNorm` (+ `relu`).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use super::cpu_tensor::{contiguous_f32, with_f32_data};

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
    let eps = bn.eps();
    let (mean, invstd) = if train {
        let count = x.elem_count() / c.max(1);
        if count < 2 {
            candle_core::bail!("batch-norm in train mode needs more than one value per channel")
        }
        let (mean, var) = channel_stats(&x, c)?;
        let mom = bn.momentum();
        let unbias = count as f64 / (count as f64 - 1.0);
        let rm = Var::from_tensor(bn.running_mean())?;
        let rv = Var::from_tensor(bn.running_var())?;
        let mean_t = Tensor::from_slice(&mean, c, x.device())?.to_dtype(rm.dtype())?;
        let var_t = Tensor::from_slice(&var, c, x.device())?.to_dtype(rv.dtype())?;
        rm.set(&((rm.as_tensor() * (1.0 - mom))? + (mean_t * mom)?)?)?;
        rv.set(&((rv.as_tensor() * (1.0 - mom))? + (var_t * (mom * unbias))?)?)?;
        let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        (mean.iter().map(|&m| m as f32).collect(), invstd)
    } else {
        let mean = bn.running_mean().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let var = bn.running_var().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        (mean, var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect())
    };
    let op = BnOp {
        mean,
        invstd,
        batch_stats: train,
        relu,
    };
    x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Rows of channels summed per block in f32 before the block total joins the f64 sum:
/// short enough to keep f32 rounding small, long enough to vectorise across channels.
const BLOCK_ROWS: usize = 64;

/// Per-channel sums over the rows of a channels-last tensor: `add_row(row, acc)` adds
/// row `row`'s contributions to `acc`, `sums` groups of `c` accumulators. Returns the
/// `sums·c` totals in f64 (blocks of [`BLOCK_ROWS`] rows in f32, in parallel).
fn channel_sums(
    rows: usize,
    c: usize,
    sums: usize,
    add_row: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f64> {
    let blocks = rows.div_ceil(BLOCK_ROWS);
    (0..blocks)
        .into_par_iter()
        .fold(
            || (vec![0f64; sums * c], vec![0f32; sums * c]),
            |(mut total, mut acc), b| {
                acc.fill(0.0);
                for row in b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(rows) {
                    add_row(row, &mut acc);
                }
                for (t, &a) in total.iter_mut().zip(&acc) {
                    *t += f64::from(a);
                }
                (total, acc)
            },
        )
        .map(|(total, _)| total)
        .reduce(
            || vec![0f64; sums * c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

/// Per-channel mean and biased variance (f64) of a contiguous channels-last f32 tensor.
fn channel_stats(x: &Tensor, c: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    with_f32_data(x, |xs| {
        let rows = xs.len() / c;
        let count = rows as f64;
        let row = |r: usize| &xs[r * c..][..c];
        let mean: Vec<f64> = channel_sums(rows, c, 1, |r, acc| {
            for (a, v) in acc.iter_mut().zip(row(r)) {
                *a += v;
            }
        })
        .into_iter()
        .map(|s| s / count)
        .collect();
        let m: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        // Σ(x − m)² and Σ(x − m): the second removes the f32 mean's own error.
        let sums = channel_sums(rows, c, 2, |r, acc| {
            let (sq, lin) = acc.split_at_mut(c);
            for (((s, l), v), mv) in sq.iter_mut().zip(lin).zip(row(r)).zip(&m) {
                let d = v - mv;
                *s += d * d;
                *l += d;
            }
        });
        let var = (0..c)
            .map(|ci| {
                let shift = sums[c + ci] / count;
                (sums[ci] / count - shift * shift).max(0.0)
            })
            .collect();
        Ok((mean, var))
    })
}

/// The fused op: `(x, γ, β)` → `y`, channels-last; statistics carried by the op.
struct BnOp {
    mean: Vec<f32>,
    invstd: Vec<f64>,
    /// Whether `mean`/`invstd` came from this batch (train mode): then the input
    /// gradient includes their dependence on `x`.
    batch_stats: bool,
    relu: bool,
}

/// Rows handled per parallel task in the elementwise passes.
const TASK_ROWS: usize = 256;

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
        let c = gamma.len();
        let scale: Vec<f32> = (0..c)
            .map(|ci| gamma[ci] * self.invstd[ci] as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ci| beta[ci] - self.mean[ci] * scale[ci])
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c * TASK_ROWS)
            .zip(x.par_chunks(c * TASK_ROWS))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
                    let it = yr.iter_mut().zip(xr).zip(&scale).zip(&shift);
                    if self.relu {
                        for (((o, &v), &a), &b) in it {
                            *o = (v * a + b).max(0.0);
                        }
                    } else {
                        for (((o, &v), &a), &b) in it {
                            *o = v * a + b;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.dims1()?;
        let grad = grad.contiguous()?;
        let gamma_v = gamma.to_vec1::<f32>()?;
        let relu = self.relu;
        let mean = &self.mean;
        let (dx, dgamma, dbeta) = with_f32_data(x, |xs| {
            with_f32_data(res, |ys| {
                with_f32_data(&grad, |gs| {
                    let rows = xs.len() / c.max(1);
                    let count = rows as f64;
                    // g = dy masked by the ReLU (y > 0), so y = 0 passes no gradient.
                    let mask = move |g: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { g };
                    // Per-channel Σg and Σg·(x − μ).
                    let sums = channel_sums(rows, c, 2, |r, acc| {
                        let span = r * c..(r + 1) * c;
                        let (xr, yr, gr) = (&xs[span.clone()], &ys[span.clone()], &gs[span]);
                        let (sg, sgx) = acc.split_at_mut(c);
                        for (((((a, b), &x), &y), &g), &m) in
                            sg.iter_mut().zip(sgx).zip(xr).zip(yr).zip(gr).zip(mean)
                        {
                            let g = mask(g, y);
                            *a += g;
                            *b += g * (x - m);
                        }
                    });
                    let invstd: Vec<f32> = self.invstd.iter().map(|&v| v as f32).collect();
                    let k: Vec<f32> = (0..c).map(|ci| gamma_v[ci] * invstd[ci]).collect();
                    let (mg, mgx): (Vec<f32>, Vec<f32>) = (0..c)
                        .map(|ci| {
                            if self.batch_stats {
                                let sgx = self.invstd[ci] * sums[c + ci];
                                ((sums[ci] / count) as f32, (sgx / count) as f32)
                            } else {
                                (0.0, 0.0)
                            }
                        })
                        .unzip();
                    let mut dx = vec![0f32; xs.len()];
                    dx.par_chunks_mut(c * TASK_ROWS)
                        .enumerate()
                        .for_each(|(t, dc)| {
                            for (i, dr) in dc.chunks_exact_mut(c).enumerate() {
                                let r = t * TASK_ROWS + i;
                                let span = r * c..(r + 1) * c;
                                let (xr, yr, gr) =
                                    (&xs[span.clone()], &ys[span.clone()], &gs[span]);
                                for ci in 0..c {
                                    let xhat = (xr[ci] - mean[ci]) * invstd[ci];
                                    dr[ci] =
                                        k[ci] * (mask(gr[ci], yr[ci]) - mg[ci] - xhat * mgx[ci]);
                                }
                            }
                        });
                    let dgamma: Vec<f32> = (0..c)
                        .map(|ci| (self.invstd[ci] * sums[c + ci]) as f32)
                        .collect();
                    let dbeta: Vec<f32> = sums[..c].iter().map(|&s| s as f32).collect();
                    Ok((dx, dgamma, dbeta))
                })
            })
        })?;
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, x.shape(), x.device()))
            .transpose()?;
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(dgamma, c, gamma.device()))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(dbeta, c, beta.device()))
            .transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}
