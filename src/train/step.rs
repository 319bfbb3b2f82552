//! One optimisation step — forward, loss, backward, gradient clipping, the optimisers —
//! shared by the trainer and `vitrine bench train`, so the benchmark measures the step
//! that trains.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::optim::{AdamW, clip_grad_norm};
use crate::model::embedder::sorted_vars;
use crate::model::loss::{LossStats, PROXIES_NAME};
use crate::model::{Criterion, Embedder};

/// The optimisers of one model and loss.
pub struct Optimisers {
    /// AdamW over the trainable variables: decay on weights of rank > 1 (kernels and
    /// matrices), none on biases and normalisation parameters.
    pub model: AdamW,
    /// The variables `model` updates (clipping measures their gradients).
    pub trainable: Vec<Var>,
    /// A proxy loss's class weights, with their own learning-rate scale.
    pub proxies: Option<AdamW>,
}

impl Optimisers {
    pub fn new(
        embedder: &Embedder,
        varmap: &VarMap,
        criterion: &Criterion,
        weight_decay: f64,
    ) -> candle_core::Result<Self> {
        let named: Vec<(String, Var, bool)> = sorted_vars(varmap)
            .into_iter()
            .filter(|(name, _)| embedder.is_trainable(name))
            .map(|(name, var)| {
                let decay = var.rank() > 1;
                (name, var, decay)
            })
            .collect();
        let trainable = named.iter().map(|(_, v, _)| v.clone()).collect();
        let proxies = criterion
            .proxies()
            .map(|p| AdamW::new(vec![(PROXIES_NAME.into(), p.clone(), false)], 0.0))
            .transpose()?;
        Ok(Self {
            model: AdamW::new(named, weight_decay)?,
            trainable,
            proxies,
        })
    }
}

/// Settings of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub lr: f64,
    /// The proxies' learning rate is `lr × proxy_lr_scale`.
    pub proxy_lr_scale: f64,
    /// Global gradient-norm limit (0 = none).
    pub grad_clip: f64,
}

/// Seconds spent in each phase of a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// What a step did.
pub struct StepReport {
    pub stats: LossStats,
    pub loss: f32,
    pub grad_norm: f32,
    /// The batch's embeddings (for monitoring).
    pub embeddings: Tensor,
    pub phases: Phases,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the {what} is not finite ({value})")]
    NonFinite { what: &'static str, value: f32 },
    #[error(transparent)]
    Model(#[from] candle_core::Error),
}

/// Trains `embedder` on `images` `(N, 3, S, S)` for one step. `sync` is the device to
/// wait for between phases (for honest phase times on a GPU); `None` skips waiting.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    embedder: &Embedder,
    criterion: &Criterion,
    optimisers: &mut Optimisers,
    images: &Tensor,
    labels: &[u64],
    classes: &[u32],
    settings: StepSettings,
    sync: Option<&Device>,
) -> Result<StepReport, StepError> {
    let wait = |d: Option<&Device>| d.map_or(Ok(()), Device::synchronize);
    let t0 = Instant::now();
    let (embeddings, backbone_grads) = embedder.forward_step(images)?;
    let stats = criterion.compute(&embeddings, labels, classes)?;
    let loss = stats.loss.to_scalar::<f32>()?;
    if !loss.is_finite() {
        return Err(StepError::NonFinite {
            what: "loss",
            value: loss,
        });
    }
    wait(sync)?;
    let t1 = Instant::now();
    crate::fsutil::crash_point("train-step");
    let mut grads = stats.loss.backward()?;
    backbone_grads.add_to(&mut grads)?;
    let grad_norm = clip_grad_norm(&mut grads, &optimisers.trainable, settings.grad_clip)?;
    if !grad_norm.is_finite() {
        return Err(StepError::NonFinite {
            what: "gradient norm",
            value: grad_norm,
        });
    }
    wait(sync)?;
    let t2 = Instant::now();
    optimisers.model.step(&grads, settings.lr)?;
    if let Some(opt) = &mut optimisers.proxies {
        opt.step(&grads, settings.lr * settings.proxy_lr_scale)?;
    }
    wait(sync)?;
    Ok(StepReport {
        stats,
        loss,
        grad_norm,
        embeddings,
        phases: Phases {
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: t2.elapsed().as_secs_f64(),
        },
    })
}
