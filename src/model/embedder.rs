//! The image embedder: ResNet backbone → global pool (average, or generalised mean
//! with `gem_p`) → dropout (training only) → `Linear(feature_dim, embedding_dim)`
//! named `head.*` → optional BatchNorm `neck.*` (BNNeck) → L2 normalisation.
//!
//! BNNeck (Luo et al. 2019, "Bag of Tricks … for Person Re-identification") centres
//! and scales every embedding dimension over the batch before the normalisation, so
//! the unit vectors spread over the sphere instead of crowding around one mean
//! direction — the start of a collapse.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ops::backbone::DeferredGrads;
pub use super::resnet::{Backbone, Precision};
use super::resnet::{ResNet, ResNetConfig, is_trainable};
use crate::data::loader::{IMAGENET_MEAN, IMAGENET_STD};
use crate::fsutil::fnv1a64;
use crate::rng::Rng;

/// Smallest squared norm divided by in the L2 normalisation (norm floor 1e-12, as
/// torch's `F.normalize`).
const NORM_SQ_FLOOR: f64 = 1e-24;

/// Largest generalised-mean exponent: beyond it the pool is a max-pool in all but
/// name, and `x^p` of large features leaves f32's range.
pub const MAX_GEM_P: f32 = 16.0;

/// What the embedder is made of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    pub backbone: Backbone,
    /// Length of the output unit vectors.
    pub embedding_dim: usize,
    /// Dropout probability before the head, in `[0, 1)`; applied only when training.
    pub dropout: f32,
    /// First trainable stage: 0/1 everything, 2 stem frozen, …, 5 only `layer4` and the
    /// head, 6 only the head (see `model::resnet`).
    pub train_from_stage: usize,
    /// BatchNorm before the L2 normalisation. Left out of the serialised form when
    /// off, so runs made before it existed keep their configuration hash.
    #[serde(skip_serializing_if = "is_false")]
    pub bnneck: bool,
    /// At inference, the embedding of the image and of its mirror image, averaged.
    /// Changes no weight, so it is left out of the configuration hash (see
    /// [`EmbedderConfig::weights_shape`]).
    #[serde(skip_serializing_if = "is_false")]
    pub flip_average: bool,
    /// At inference, the embedding of the image and of its colour negative
    /// (`1 − pixel`), averaged; inference-only like `flip_average`.
    #[serde(skip_serializing_if = "is_false")]
    pub invert_average: bool,
    /// Exponent of the generalised-mean pool over the backbone's last feature map;
    /// 1 is the global average pool, and is left out of the serialised form (runs made
    /// before it existed keep their configuration hash).
    #[serde(skip_serializing_if = "is_one")]
    pub gem_p: f32,
    /// The numbers the backbone's forward convs multiply, embedding and training
    /// (gradients are f32). Shapes no weight, so it stays out of the configuration
    /// hash like `flip_average`: a run may resume with the other precision.
    #[serde(skip_serializing_if = "is_fp32")]
    pub precision: Precision,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_fp32(p: &Precision) -> bool {
    *p == Precision::Fp32
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_one(p: &f32) -> bool {
    *p == 1.0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for EmbedderConfig {
    /// The original notebook's head (512-d, dropout 0.5, only the last stage trains)
    /// on the CPU-sized backbone.
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            embedding_dim: 512,
            dropout: 0.5,
            train_from_stage: 5,
            bnneck: false,
            flip_average: false,
            invert_average: false,
            gem_p: 1.0,
            precision: Precision::Fp32,
        }
    }
}

impl EmbedderConfig {
    /// The settings that shape or train the weights, without the inference-only ones:
    /// what a checkpoint must match to be resumed.
    #[must_use]
    pub fn weights_shape(&self) -> Self {
        Self {
            flip_average: false,
            invert_average: false,
            precision: Precision::Fp32,
            ..*self
        }
    }

    fn resnet(&self) -> ResNetConfig {
        ResNetConfig {
            backbone: self.backbone,
            train_from_stage: self.train_from_stage,
            gem_p: self.gem_p,
            precision: self.precision,
        }
    }
}

/// Says once per process, in the log, that bf16 is emulated on this CPU.
fn warn_if_emulated() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !vitrine_kernels::conv::amx_available() {
        ONCE.call_once(|| {
            tracing::warn!(
                "model.precision = \"bf16\": this CPU has no AMX tiles (or the kernel refused them), so bf16 is emulated: the same embeddings, slower than \"fp32\""
            );
        });
    }
}

/// The variables an optimizer should receive, split for weight decay.
#[derive(Debug, Clone, Default)]
pub struct ParamGroups {
    /// Conv and linear weights.
    pub decay: Vec<Var>,
    /// BatchNorm weights and biases and all biases (every rank-≤1 parameter).
    pub no_decay: Vec<Var>,
}

/// Images `(N, 3, H, W)` (f32, normalised) → unit embeddings `(N, embedding_dim)`.
#[derive(Debug, Clone)]
pub struct Embedder {
    cfg: EmbedderConfig,
    backbone: ResNet,
    head: Linear,
    neck: Option<BatchNorm>,
    /// `(seed, position)` of the dropout mask stream: masks come from
    /// [`crate::rng::Rng`] (Candle's CPU generator cannot be seeded), so a seeded run —
    /// and a resumed one, which sets the position to its step — is reproducible.
    dropout_stream: Arc<(AtomicU64, AtomicU64)>,
}

impl Embedder {
    /// Builds the network; backbone names are torchvision's, the head is `head.*`.
    pub fn new(cfg: EmbedderConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.embedding_dim == 0 {
            candle_core::bail!("embedding_dim must be at least 1")
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("dropout must be in [0, 1), got {}", cfg.dropout)
        }
        if !(1.0..=MAX_GEM_P).contains(&cfg.gem_p) {
            candle_core::bail!("gem_p must be in [1, {MAX_GEM_P}], got {}", cfg.gem_p)
        }
        if cfg.precision == Precision::Bf16 {
            if !vb.device().is_cpu() {
                candle_core::bail!(
                    "model.precision = \"bf16\" embeds on the CPU only, not on {:?}: set it to \"fp32\" (or use --device cpu)",
                    vb.device()
                )
            }
            warn_if_emulated();
        }
        let backbone = ResNet::new(cfg.resnet(), vb.clone())?;
        let head = candle_nn::linear(backbone.feature_dim(), cfg.embedding_dim, vb.pp("head"))?;
        let neck = if cfg.bnneck {
            Some(candle_nn::batch_norm(
                cfg.embedding_dim,
                BatchNormConfig::default(),
                vb.pp("neck"),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            backbone,
            head,
            neck,
            dropout_stream: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
        })
    }

    /// Builds an embedder on a fresh f32 [`VarMap`] on `device`, initialised
    /// deterministically from `seed` on every device (Candle's CPU generator cannot be
    /// seeded, so the values come from [`crate::rng::Rng`], one stream per variable
    /// name). Initialisation follows torchvision: convs Kaiming-normal (fan-out, ReLU),
    /// BatchNorm weight 1 / bias 0 / running mean 0 / running var 1, the head
    /// `U(±1/√fan_in)` for weight and bias.
    pub fn seeded(cfg: EmbedderConfig, device: &Device, seed: u64) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Self::new(cfg, vb)?;
        init_seeded(&varmap, seed)?;
        Ok((model, varmap))
    }

    pub fn config(&self) -> EmbedderConfig {
        self.cfg
    }

    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    /// Whether the optimizer should receive the variable `name`: a parameter (no
    /// running statistic) of a stage not frozen by `train_from_stage`.
    pub fn is_trainable(&self, name: &str) -> bool {
        is_trainable(name, self.cfg.train_from_stage)
    }

    /// The names of the trainable variables in `varmap`, sorted.
    pub fn trainable_names(&self, varmap: &VarMap) -> Vec<String> {
        sorted_vars(varmap)
            .into_iter()
            .filter(|(name, _)| self.is_trainable(name))
            .map(|(name, _)| name)
            .collect()
    }

    /// The trainable variables in `varmap`, sorted by name: frozen stages and
    /// BatchNorm running statistics are left out.
    pub fn trainable_vars(&self, varmap: &VarMap) -> Vec<Var> {
        sorted_vars(varmap)
            .into_iter()
            .filter(|(name, _)| self.is_trainable(name))
            .map(|(_, var)| var)
            .collect()
    }

    /// [`Self::trainable_vars`] split into weight-decay and no-decay groups.
    pub fn param_groups(&self, varmap: &VarMap) -> ParamGroups {
        let mut groups = ParamGroups::default();
        for (name, var) in sorted_vars(varmap) {
            if !self.is_trainable(&name) {
                continue;
            }
            if var.rank() <= 1 {
                groups.no_decay.push(var);
            } else {
                groups.decay.push(var);
            }
        }
        groups
    }

    /// Eval-mode embedding (running BatchNorm statistics, no dropout); with
    /// `flip_average` and/or `invert_average` the mean of the embeddings of the image
    /// and of its mirror image and/or colour negative (all combinations), made unit
    /// again.
    pub fn embed(&self, xs: &Tensor) -> Result<Tensor> {
        let mut views = vec![xs.clone()];
        if self.cfg.flip_average {
            let width = xs.dim(3)?;
            let reversed: Vec<u32> = (0..width as u32).rev().collect();
            let reversed = Tensor::from_vec(reversed, width, xs.device())?;
            views.push(xs.index_select(&reversed, 3)?);
        }
        if self.cfg.invert_average {
            let negatives = views.iter().map(negative).collect::<Result<Vec<_>>>()?;
            views.extend(negatives);
        }
        let mut sum = self.forward_t(&views[0], false)?;
        if views.len() == 1 {
            return Ok(sum);
        }
        for v in &views[1..] {
            sum = (sum + self.forward_t(v, false)?)?;
        }
        l2_normalize(&sum)
    }
}

impl Embedder {
    /// Positions the dropout stream: the next training forward draws its mask from
    /// `(seed, position)`, the one after from `position + 1`, and so on.
    pub fn set_dropout_stream(&self, seed: u64, position: u64) {
        self.dropout_stream.0.store(seed, Ordering::SeqCst);
        self.dropout_stream.1.store(position, Ordering::SeqCst);
    }

    /// Inverted dropout with a mask from the seeded stream.
    fn dropout(&self, xs: &Tensor) -> Result<Tensor> {
        let p = self.cfg.dropout;
        let seed = self.dropout_stream.0.load(Ordering::SeqCst);
        let position = self.dropout_stream.1.fetch_add(1, Ordering::SeqCst);
        let mut rng = Rng::derive(seed, &[position, 0xd7_0b]);
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| if rng.f32() < p { 0.0 } else { keep })
            .collect();
        let mask = Tensor::from_vec(mask, xs.dims(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

impl Embedder {
    /// The training forward of one step: the embeddings of [`ModuleT::forward_t`] in
    /// train mode, and the backbone's parameter gradients, which `loss.backward()`
    /// leaves outside its store: add them with [`DeferredGrads::add_to`] before
    /// using the store (see [`ResNet::forward_pooled_deferred`]).
    pub fn forward_step(&self, xs: &Tensor) -> Result<(Tensor, DeferredGrads)> {
        let (pooled, deferred) = self.backbone.forward_pooled_deferred(xs)?;
        Ok((self.head_forward(pooled, true)?, deferred))
    }

    /// Dropout, the embedding layer, the BNNeck and the L2 normalisation.
    fn head_forward(&self, pooled: Tensor, train: bool) -> Result<Tensor> {
        let pooled = if train && self.cfg.dropout > 0.0 {
            self.dropout(&pooled)?
        } else {
            pooled
        };
        let ys = self.head.forward(&pooled)?;
        let ys = match &self.neck {
            // Batch statistics need two rows; a single image uses the running ones.
            Some(bn) => bn.forward_t(&ys, train && ys.dim(0)? > 1)?,
            None => ys,
        };
        l2_normalize(&ys)
    }
}

impl ModuleT for Embedder {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self.backbone.forward_pooled(xs, train)?;
        self.head_forward(pooled, train)
    }
}

/// The colour negative of normalised images `(N, 3, H, W)`: the pixels `p` behind
/// `x = (p − mean) / std` become `1 − p`, so `x' = (1 − 2·mean) / std − x` per channel
/// (what `augment.invert` does to a training image before normalisation).
fn negative(xs: &Tensor) -> Result<Tensor> {
    let offset: Vec<f32> = IMAGENET_MEAN
        .iter()
        .zip(IMAGENET_STD)
        .map(|(m, s)| (1.0 - 2.0 * m) / s)
        .collect();
    let offset = Tensor::from_vec(offset, (1, 3, 1, 1), xs.device())?.to_dtype(xs.dtype())?;
    xs.neg()?.broadcast_add(&offset)
}

/// Rows divided by their L2 norm, the norm floored at 1e-12 so zero rows stay finite.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(1)?.maximum(NORM_SQ_FLOOR)?.sqrt()?;
    xs.broadcast_div(&norm)
}

/// The variables of `varmap`, sorted by name.
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = match varmap.data().lock() {
        Ok(data) => data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(poisoned) => poisoned
            .into_inner()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Overwrites every variable of `varmap` with torchvision-style initial values drawn
/// from `seed` (see [`Embedder::seeded`]). Streams are per name, so the result does not
/// depend on the map's order or on the device.
pub fn init_seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = sorted_vars(varmap);
    let shapes: HashMap<&str, Vec<usize>> = vars
        .iter()
        .map(|(name, var)| (name.as_str(), var.dims().to_vec()))
        .collect();
    let values: Vec<Vec<f32>> = vars
        .par_iter()
        .map(|(name, var)| {
            let dims = var.dims();
            let n = var.elem_count();
            let mut rng = Rng::derive(seed, &[fnv1a64(name.as_bytes())]);
            if dims.len() == 4 {
                // Kaiming normal, fan-out, ReLU gain.
                let std = (2.0 / (dims[0] * dims[2] * dims[3]) as f32).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            } else if dims.len() == 2 || name.ends_with("head.bias") {
                // torch's Linear: U(±1/√fan_in) for weight and bias.
                let weight = format!("{}weight", name.trim_end_matches("bias"));
                let fan_in = if dims.len() == 2 {
                    dims[1]
                } else {
                    shapes.get(weight.as_str()).map_or(1, |s| s[1])
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.range_f32(-bound, bound)).collect()
            } else if name.ends_with(".weight") || name.ends_with(".running_var") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            }
        })
        .collect();
    for ((_, var), v) in vars.iter().zip(values) {
        let t = Tensor::from_vec(v, var.dims(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_serde_defaults_and_unknown_keys() {
        let cfg: EmbedderConfig =
            serde_json::from_str(r#"{"backbone":"resnet50","embedding_dim":128}"#).expect("cfg");
        assert_eq!(cfg.backbone, Backbone::Resnet50);
        assert_eq!(cfg.embedding_dim, 128);
        assert_eq!(
            cfg.train_from_stage,
            EmbedderConfig::default().train_from_stage
        );
        assert!(serde_json::from_str::<EmbedderConfig>(r#"{"embed_dim":3}"#).is_err());
    }

    #[test]
    fn l2_normalize_is_finite_on_zero_rows() {
        let xs = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).expect("t");
        let ys = l2_normalize(&xs)
            .expect("norm")
            .to_vec2::<f32>()
            .expect("v");
        assert!((ys[0][0] - 0.6).abs() < 1e-6 && (ys[0][1] - 0.8).abs() < 1e-6);
        assert_eq!(ys[1], vec![0.0, 0.0]);
    }
}
