//! BatchNorm (+ ReLU) as one fused op on the CPU.
//!
//! Candle's `BatchNorm` builds train-mode normalisation out of a transpose, a
//! `contiguous` copy, means, broadcasts and a transpose back — each a full pass over
//! the activation, each with its own backward — and the ReLU after it is one more.
//! [`batch_norm`] computes the per-channel statistics in one pass, updates the running
//! statistics exactly like `candle_nn::BatchNorm` (momentum on the mean, unbiased
//! variance into `running_var`), and applies `y = max(0, x·scale + shift)` (ReLU
//! optional) in a second; its backward is the closed form
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
/// `relu`; `x` is `(N, C, H, W)`. Train mode updates `bn`'s running statistics.
pub fn batch_norm(x: &Tensor, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() == 4
        && !super::conv::candle_reference_forced();
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| fused) else {
        let ys = bn.forward_t(x, train)?;
        return if relu { ys.relu() } else { Ok(ys) };
    };
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    if gamma.dims1()? != c {
        candle_core::bail!("batch-norm: {c} channels in, {} features", gamma.dims1()?)
    }
    let eps = bn.eps();
    let (mean, invstd) = if train {
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!("batch-norm in train mode needs more than one value per channel")
        }
        let (mean, var) = channel_stats(&x)?;
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

/// Per-channel mean and biased variance (f64) of a contiguous `(N, C, H, W)` f32 tensor.
fn channel_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, c, h, w) = x.dims4()?;
    let hw = h * w;
    let count = (n * hw) as f64;
    with_f32_data(x, |xs| {
        Ok((0..c)
            .into_par_iter()
            .map(|ci| {
                let planes = || (0..n).map(move |ni| &xs[(ni * c + ci) * hw..][..hw]);
                let sum: f64 = planes().map(|p| lane_sum(p, p, p, |v, _, _| v)).sum();
                let mean = sum / count;
                let m = mean as f32;
                let ss: f64 = planes()
                    .map(|p| lane_sum(p, p, p, |v, _, _| (v - m) * (v - m)))
                    .sum();
                // The f32 mean's own error, removed from the centred sum of squares.
                let shift = planes()
                    .map(|p| lane_sum(p, p, p, |v, _, _| v - m))
                    .sum::<f64>()
                    / count;
                (mean, (ss / count - shift * shift).max(0.0))
            })
            .unzip())
    })
}

/// Independent accumulators in [`lane_sum`]: enough for the loop to vectorise.
const LANES: usize = 16;

/// `Σ f(a[i], b[i], c[i])` over `a`'s length (`b`, `c` at least as long), in `LANES`
/// independent f32 accumulators (so it vectorises), totalled in f64.
#[inline]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f64 {
    let len = a.len();
    let (b, c) = (&b[..len], &c[..len]);
    let whole = len / LANES * LANES;
    let mut acc = [0f32; LANES];
    for ((ca, cb), cc) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
        .zip(c[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l], cc[l]);
        }
    }
    let tail: f32 = (whole..len).map(|i| f(a[i], b[i], c[i])).sum();
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// The fused op: `(x, γ, β)` → `y`; statistics carried by the op.
struct BnOp {
    mean: Vec<f32>,
    invstd: Vec<f64>,
    /// Whether `mean`/`invstd` came from this batch (train mode): then the input
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
        let dims = l1.dims();
        let (c, hw) = (dims[1], dims[2] * dims[3]);
        let scale: Vec<f32> = (0..c)
            .map(|ci| gamma[ci] * self.invstd[ci] as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ci| beta[ci] - self.mean[ci] * scale[ci])
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let (a, b) = (scale[plane % c], shift[plane % c]);
                if self.relu {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = (v * a + b).max(0.0);
                    }
                } else {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = v * a + b;
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
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let count = (n * hw) as f64;
        let grad = grad.contiguous()?;
        let gamma_v = gamma.to_vec1::<f32>()?;
        let relu = self.relu;
        let (dx, dgamma, dbeta) = with_f32_data(x, |xs| {
            with_f32_data(res, |ys| {
                with_f32_data(&grad, |gs| {
                    // g = dy masked by the ReLU (y > 0), so y = 0 passes no gradient.
                    let mask = move |g: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { g };
                    let plane = |t: &'_ [f32], idx: usize| -> std::ops::Range<usize> {
                        debug_assert!(t.len() >= (idx + 1) * hw);
                        idx * hw..(idx + 1) * hw
                    };
                    // Per-channel Σg and Σg·x̂ = σ⁻¹·Σ g·(x − μ).
                    let sums: Vec<(f64, f64)> = (0..c)
                        .into_par_iter()
                        .map(|ci| {
                            let (mean, invstd) = (self.mean[ci], self.invstd[ci]);
                            let (mut sg, mut sgx) = (0f64, 0f64);
                            for ni in 0..n {
                                let r = plane(xs, ni * c + ci);
                                let (xp, yp, gp) = (&xs[r.clone()], &ys[r.clone()], &gs[r]);
                                sg += lane_sum(gp, yp, xp, |g, y, _| mask(g, y));
                                sgx += lane_sum(gp, yp, xp, |g, y, x| mask(g, y) * (x - mean));
                            }
                            (sg, invstd * sgx)
                        })
                        .collect();
                    let mut dx = vec![0f32; xs.len()];
                    dx.par_chunks_mut(hw).enumerate().for_each(|(idx, dp)| {
                        let ci = idx % c;
                        let r = plane(xs, idx);
                        let (xp, yp, gp) = (&xs[r.clone()], &ys[r.clone()], &gs[r]);
                        let (mean, invstd) = (self.mean[ci], self.invstd[ci] as f32);
                        let k = gamma_v[ci] * invstd;
                        let (mg, mgx) = if self.batch_stats {
                            ((sums[ci].0 / count) as f32, (sums[ci].1 / count) as f32)
                        } else {
                            (0.0, 0.0)
                        };
                        for (((d, &x), &y), &g) in dp.iter_mut().zip(xp).zip(yp).zip(gp) {
                            let xhat = (x - mean) * invstd;
                            *d = k * (mask(g, y) - mg - xhat * mgx);
                        }
                    });
                    let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
                    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
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
