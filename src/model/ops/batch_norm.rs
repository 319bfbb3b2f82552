//! BatchNorm (+ ReLU) as one fused op on the CPU, on channels-last data.
//!
//! Candle's `BatchNorm` builds train-mode normalisation out of a transpose, a
//! `contiguous` copy, means, broadcasts and a transpose back — each a full pass over
//! the activation, each with its own backward — and the ReLU after it is one more.
//! [`batch_norm`] computes the per-channel statistics in one pass
//! (`vitrine_kernels::norm`), updates the running statistics exactly like
//! `candle_nn::BatchNorm` (momentum on the mean, unbiased variance into
//! `running_var`), and applies `y = max(0, x·scale + shift)` (ReLU optional) in a
//! second; its backward is the kernels' closed form. In eval mode the running
//! statistics are used and the backward is the plain per-channel scale.
//!
//! Other devices, dtypes or a `BatchNorm` without affine parameters fall back to
//! Candle's `BatchNorm` (+ `relu`).

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use vitrine_kernels::elementwise::{self, Affine};
use vitrine_kernels::norm::{self, BackwardFlags, Stats};

use super::tensor::{contiguous_f32, with_f32_data};
use super::{candle_reference_forced, kernel_error};

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
        && !candle_reference_forced();
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
        let s = with_f32_data(&x, |xs| {
            norm::batch_stats(xs, c, bn.eps()).map_err(kernel_error)
        })?;
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

/// The running statistics of `bn` (eval mode, frozen layers).
pub(crate) fn running_stats(bn: &BatchNorm) -> Result<Stats> {
    let mean = bn.running_mean().to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let var = bn.running_var().to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(Stats::from_running(mean, var, bn.eps()))
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
        let f = Affine {
            scale: &scale,
            shift: &shift,
            relu: self.relu,
        };
        let y = elementwise::apply(x, &f);
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
        let flags = BackwardFlags {
            relu: self.relu,
            batch_stats: self.batch_stats,
            need_dx: x.track_op(),
        };
        let g = with_f32_data(x, |xs| {
            with_f32_data(&grad, |gs| {
                Ok(norm::backward(
                    xs,
                    Cow::Borrowed(gs),
                    &self.stats,
                    (&gamma_v, &beta_v),
                    flags,
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
