//! A trainable ResNet backbone (ResNet18/34 with basic blocks, ResNet50 with
//! bottlenecks) whose parameter names are torchvision's `state_dict` keys.
//!
//! Unlike `candle_transformers::models::resnet`, BatchNorm follows the `train` flag of
//! [`ModuleT::forward_t`]: batch statistics and running-statistics updates (momentum
//! 0.1, eps 1e-5, like torchvision) when training, running statistics otherwise.
//!
//! The network is cut into six *stages*, numbered like torchvision's / Keras' `conv1` …
//! `conv5` blocks so that "train from stage 5" means "train `conv5` (= `layer4`) and
//! the head", the original notebook's choice:
//!
//! | stage | parts            | names                 |
//! |-------|------------------|-----------------------|
//! | 1     | stem             | `conv1.*`, `bn1.*`    |
//! | 2..=5 | `layer1`..`layer4` | `layer{stage-1}.*`  |
//! | 6     | embedding head   | `head.*` (see `embedder`) |
//!
//! With `train_from_stage = k`, every stage `< k` is frozen: it runs with eval-mode
//! BatchNorm even when training, and its output is detached, so it receives no
//! gradient and costs no backward time. `0` and `1` both train everything.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use super::ops::batch_norm::{batch_norm, batch_norm_nhwc};
use super::ops::candle_reference_forced;
use super::ops::conv::{conv2d, conv2d_nhwc};

/// Stage number of the stem (`conv1`, `bn1`).
pub const STEM_STAGE: usize = 1;
/// Stage number of the embedding head, one past `layer4`.
pub const HEAD_STAGE: usize = 6;

/// Which ResNet: the layer counts and block kind of torchvision's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// BasicBlock, `[2, 2, 2, 2]`, 512 output channels.
    #[default]
    Resnet18,
    /// BasicBlock, `[3, 4, 6, 3]`, 512 output channels.
    Resnet34,
    /// Bottleneck (stride on the 3×3 conv, "v1.5"), `[3, 4, 6, 3]`, 2048 channels.
    Resnet50,
}

/// `model.precision`: the numbers the backbone's convs multiply (embedding, and
/// training's forward and gradient GEMMs; weights, sums and the optimizer are f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    Fp32,
    /// Conv operands rounded to bfloat16, sums in f32 (CPU only): on AMX tiles where
    /// the CPU has them, emulated (slower than f32) elsewhere.
    Bf16,
}

impl Precision {
    /// The kernels' setting.
    pub fn kernel(self) -> vitrine_kernels::conv::Precision {
        match self {
            Self::Fp32 => vitrine_kernels::conv::Precision::F32,
            Self::Bf16 => vitrine_kernels::conv::Precision::Bf16,
        }
    }
}

impl Backbone {
    /// The lowercase name used in configs and file metadata (`"resnet18"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resnet18 => "resnet18",
            Self::Resnet34 => "resnet34",
            Self::Resnet50 => "resnet50",
        }
    }

    /// Number of blocks in `layer1`..`layer4`.
    pub fn layers(self) -> [usize; 4] {
        match self {
            Self::Resnet18 => [2, 2, 2, 2],
            Self::Resnet34 | Self::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Whether the blocks are bottlenecks (expansion 4) rather than basic blocks.
    pub fn bottleneck(self) -> bool {
        matches!(self, Self::Resnet50)
    }

    /// Channels of the feature map after `layer4`.
    pub fn feature_dim(self) -> usize {
        if self.bottleneck() { 2048 } else { 512 }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Configuration of a [`ResNet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    pub backbone: Backbone,
    /// First trainable stage (module docs); `0..=6`, larger values are an error.
    pub train_from_stage: usize,
    /// Exponent of the generalised-mean pool over the last feature map
    /// ([`generalized_mean`]): 1 is the global average pool.
    pub gem_p: f32,
    /// The numbers the forward convs multiply (gradients are f32): bf16 runs on the
    /// CPU only.
    pub precision: Precision,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::default(),
            train_from_stage: 0,
            gem_p: 1.0,
            precision: Precision::Fp32,
        }
    }
}

/// The generalised-mean pool (GeM) of `(N, C, H, W)` features over their pixels, by
/// Candle's ops: `(mean(max(x, ε)^p))^(1/p)`, `(N, C)`; `p = 1` is the plain mean.
/// The CPU's backbone op computes the same with `vitrine_kernels::pool`.
pub fn generalized_mean(xs: &Tensor, p: f32) -> Result<Tensor> {
    if p == 1.0 {
        return xs.mean(3)?.mean(2);
    }
    let floor = f64::from(vitrine_kernels::pool::GEM_FLOOR);
    xs.maximum(floor)?
        .powf(f64::from(p))?
        .mean(3)?
        .mean(2)?
        .powf(1.0 / f64::from(p))
}

/// The stage (module docs) a parameter name belongs to: `conv1.*`/`bn1.*` → 1,
/// `layerK.*` → K + 1, `head.*` and `neck.*` (the embedder's) → 6; `None` for any
/// other name.
pub fn stage_of(name: &str) -> Option<usize> {
    let first = name.split('.').next().unwrap_or_default();
    match first {
        "conv1" | "bn1" => Some(STEM_STAGE),
        "head" | "neck" => Some(HEAD_STAGE),
        _ => {
            let k: usize = first.strip_prefix("layer")?.parse().ok()?;
            (1..=4).contains(&k).then_some(k + 1)
        }
    }
}

/// Whether a variable name is a BatchNorm running statistic (updated by forward
/// passes, never by an optimizer).
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// Whether the optimizer should receive the variable `name` when training from
/// `train_from_stage`: a parameter (not a running statistic) of a stage
/// `>= train_from_stage`. Unknown names are not trainable, nor is the BNNeck's shift
/// `neck.bias`: as in Luo et al., it stays zero, so the neck cannot move every
/// embedding towards one shared direction.
pub fn is_trainable(name: &str, train_from_stage: usize) -> bool {
    !is_running_stat(name)
        && name != "neck.bias"
        && stage_of(name).is_some_and(|s| s >= train_from_stage)
}

/// The stem's 3×3, stride-2, padding-1 max-pool for **non-negative** input (it follows
/// a ReLU), built from ops Candle can differentiate on every device.
///
/// Candle's `max_pool2d` has no backward pass when kernel ≠ stride. Because the input
/// is ≥ 0, zero padding gives the same maxima as torch's −∞ padding. Along each axis
/// of padded length `2·(out+1)`, the rows are viewed as pairs `(2i, 2i+1)`; the window
/// `{2i, 2i+1, 2i+2}` is then `max(pair_i, first row of pair_{i+1})`. H first, then W.
/// At ties the gradient is shared between the tied inputs (torch gives it to one);
/// ties between positive activations are practically absent, and ties at zero get
/// no gradient through the ReLU anyway.
pub fn max_pool_3x3_s2(xs: &Tensor) -> Result<Tensor> {
    max_pool_3x3_s2_in(xs, Channels::First)
}

/// [`max_pool_3x3_s2`] for either layout.
fn max_pool_3x3_s2_in(xs: &Tensor, layout: Channels) -> Result<Tensor> {
    let (h, w) = layout.spatial_dims();
    let xs = pool_axis(xs, h)?;
    pool_axis(&xs, w)
}

/// Where the channel axis of the activations sits.
///
/// The weights and the network's input and output are `(N, C, H, W)` everywhere; on
/// the CPU the activations in between are channels-last, which the GEMM conv and
/// fused BatchNorm run fastest on (see `ops::conv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// `(N, C, H, W)`: Candle's conv layout, used on GPUs.
    First,
    /// `(N, H, W, C)`: the CPU's fast path.
    Last,
}

impl Channels {
    /// The fastest layout for activations like `xs`: channels-last on the CPU in f32.
    pub fn fastest_for(xs: &Tensor) -> Self {
        if xs.device().is_cpu()
            && xs.dtype() == candle_core::DType::F32
            && !candle_reference_forced()
        {
            Self::Last
        } else {
            Self::First
        }
    }

    /// The (height, width) axes.
    fn spatial_dims(self) -> (usize, usize) {
        match self {
            Self::First => (2, 3),
            Self::Last => (1, 2),
        }
    }
}

/// One axis of [`max_pool_3x3_s2`] on a rank-4 tensor.
fn pool_axis(xs: &Tensor, dim: usize) -> Result<Tensor> {
    let len = xs.dim(dim)?;
    if len == 0 {
        candle_core::bail!("max-pool over an empty axis {dim} of {:?}", xs.shape())
    }
    let out = (len - 1) / 2 + 1;
    // 1 zero in front (the padding), enough behind for `out + 1` whole pairs.
    let padded = xs.pad_with_zeros(dim, 1, 2 * (out + 1) - 1 - len)?;
    let mut pair_shape = padded.dims().to_vec();
    pair_shape[dim] = out + 1;
    pair_shape.insert(dim + 1, 2);
    let pairs = padded.reshape(pair_shape)?;
    let pair_max = pairs.max_keepdim(dim + 1)?.narrow(dim, 0, out)?;
    let next_first = pairs.narrow(dim + 1, 0, 1)?.narrow(dim, 1, out)?;
    pair_max.maximum(&next_first)?.squeeze(dim + 1)
}

fn conv(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Conv2dConfig::default()
    };
    candle_nn::conv2d_no_bias(c_in, c_out, k, cfg, vb)
}

/// Runs `conv` through [`conv2d`] / [`conv2d_nhwc`]: both gradients as GEMMs on the
/// CPU, Candle's `conv2d` on other devices. Same weights, stride and padding as `conv`.
fn conv_forward(conv: &Conv2d, xs: &Tensor, layout: Channels) -> Result<Tensor> {
    let cfg = conv.config();
    match layout {
        Channels::First => conv2d(xs, conv.weight(), cfg.stride, cfg.padding),
        Channels::Last => conv2d_nhwc(xs, conv.weight(), cfg.stride, cfg.padding),
    }
}

/// [`batch_norm`] / [`batch_norm_nhwc`] by layout.
fn bn_forward(
    xs: &Tensor,
    bn: &BatchNorm,
    train: bool,
    relu: bool,
    layout: Channels,
) -> Result<Tensor> {
    match layout {
        Channels::First => batch_norm(xs, bn, train, relu),
        Channels::Last => batch_norm_nhwc(xs, bn, train, relu),
    }
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    // torchvision's defaults; momentum is the weight of the new batch statistic.
    let cfg = BatchNormConfig {
        eps: 1e-5,
        remove_mean: true,
        affine: true,
        momentum: 0.1,
    };
    candle_nn::batch_norm(c, cfg, vb)
}

/// `downsample.0` (1×1 conv) + `downsample.1` (BatchNorm).
#[derive(Debug, Clone)]
pub(super) struct Downsample {
    pub(super) conv: Conv2d,
    pub(super) bn: BatchNorm,
}

impl Downsample {
    fn new(c_in: usize, c_out: usize, stride: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(c_in, c_out, 1, stride, 0, vb.pp("0"))?,
            bn: bn(c_out, vb.pp("1"))?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool, layout: Channels) -> Result<Tensor> {
        let ys = conv_forward(&self.conv, xs, layout)?;
        bn_forward(&ys, &self.bn, train, false, layout)
    }
}

/// A residual block: basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1); each conv
/// is followed by its BatchNorm, and a ReLU except the last (it follows the sum with
/// the shortcut).
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) convs: Vec<Conv2d>,
    pub(super) bns: Vec<BatchNorm>,
    /// The projection shortcut, where the block changes size or channels.
    pub(super) downsample: Option<Downsample>,
}

impl Block {
    fn basic(c_in: usize, planes: usize, stride: usize, vb: &VarBuilder) -> Result<Self> {
        let convs = vec![
            conv(c_in, planes, 3, stride, 1, vb.pp("conv1"))?,
            conv(planes, planes, 3, 1, 1, vb.pp("conv2"))?,
        ];
        let bns = vec![bn(planes, vb.pp("bn1"))?, bn(planes, vb.pp("bn2"))?];
        let downsample = (stride != 1 || c_in != planes)
            .then(|| Downsample::new(c_in, planes, stride, &vb.pp("downsample")))
            .transpose()?;
        Ok(Self {
            convs,
            bns,
            downsample,
        })
    }

    fn bottleneck(c_in: usize, planes: usize, stride: usize, vb: &VarBuilder) -> Result<Self> {
        let c_out = planes * 4;
        let convs = vec![
            conv(c_in, planes, 1, 1, 0, vb.pp("conv1"))?,
            conv(planes, planes, 3, stride, 1, vb.pp("conv2"))?,
            conv(planes, c_out, 1, 1, 0, vb.pp("conv3"))?,
        ];
        let bns = vec![
            bn(planes, vb.pp("bn1"))?,
            bn(planes, vb.pp("bn2"))?,
            bn(c_out, vb.pp("bn3"))?,
        ];
        let downsample = (stride != 1 || c_in != c_out)
            .then(|| Downsample::new(c_in, c_out, stride, &vb.pp("downsample")))
            .transpose()?;
        Ok(Self {
            convs,
            bns,
            downsample,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool, layout: Channels) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut ys = xs.clone();
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            // BatchNorm + ReLU (not after the last conv: the ReLU follows the sum).
            let conv_out = conv_forward(conv, &ys, layout)?;
            ys = bn_forward(&conv_out, bn, train, i != last, layout)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(xs, train, layout)?,
            None => xs.clone(),
        };
        (ys + shortcut)?.relu()
    }
}

/// Stage 1: `conv1` 7×7/2 → `bn1` → ReLU → 3×3/2 max-pool.
#[derive(Debug, Clone)]
pub(super) struct Stem {
    pub(super) conv1: Conv2d,
    pub(super) bn1: BatchNorm,
}

impl Stem {
    fn forward_t(&self, xs: &Tensor, train: bool, layout: Channels) -> Result<Tensor> {
        let ys = conv_forward(&self.conv1, xs, layout)?;
        let ys = bn_forward(&ys, &self.bn1, train, true, layout)?;
        max_pool_3x3_s2_in(&ys, layout)
    }
}

/// A ResNet up to `layer4` (no pooling, no `fc`): `(N, 3, H, W)` images in,
/// `(N, feature_dim, H/32, W/32)` feature maps out.
///
/// The one description of the network: the per-op path ([`ModuleT::forward_t`],
/// [`ResNet::forward_in`]) and the CPU's whole-backbone op
/// ([`ResNet::forward_pooled`], in `ops::backbone`) both walk these layers.
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    stem: Stem,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    /// Builds the network; `vb` is the root of torchvision's names (`conv1.weight`, …).
    pub fn new(cfg: ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.train_from_stage > HEAD_STAGE {
            candle_core::bail!(
                "train_from_stage must be 0..={HEAD_STAGE} (6 = only the head trains), got {}",
                cfg.train_from_stage
            )
        }
        let stem = Stem {
            conv1: conv(3, 64, 7, 2, 3, vb.pp("conv1"))?,
            bn1: bn(64, vb.pp("bn1"))?,
        };
        let expansion = if cfg.backbone.bottleneck() { 4 } else { 1 };
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (i, &blocks) in cfg.backbone.layers().iter().enumerate() {
            let planes = 64 << i;
            let vb_layer = vb.pp(format!("layer{}", i + 1));
            let mut layer = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                let vb_block = vb_layer.pp(b.to_string());
                let block = if cfg.backbone.bottleneck() {
                    Block::bottleneck(c_in, planes, stride, &vb_block)?
                } else {
                    Block::basic(c_in, planes, stride, &vb_block)?
                };
                layer.push(block);
                c_in = planes * expansion;
            }
            layers.push(layer);
        }
        Ok(Self { cfg, stem, layers })
    }

    /// The stem (stage 1).
    pub(super) fn stem(&self) -> &Stem {
        &self.stem
    }

    /// `layer1`..`layer4` (stages 2..=5), each a list of blocks.
    pub(super) fn layers(&self) -> &[Vec<Block>] {
        &self.layers
    }

    pub fn config(&self) -> ResNetConfig {
        self.cfg
    }

    /// Channels of the output feature map.
    pub fn feature_dim(&self) -> usize {
        self.cfg.backbone.feature_dim()
    }

    /// Whether stage `stage` (1 = stem … 5 = `layer4`) is frozen.
    pub fn is_frozen(&self, stage: usize) -> bool {
        stage < self.cfg.train_from_stage
    }

    /// Whether the optimizer should receive the variable `name` (see [`is_trainable`]).
    pub fn is_trainable(&self, name: &str) -> bool {
        is_trainable(name, self.cfg.train_from_stage)
    }

    /// [`ModuleT::forward_t`] with the activations in a chosen layout (input and output
    /// stay `(N, C, H, W)`); `forward_t` uses [`Channels::fastest_for`]. Both layouts
    /// compute the same function.
    pub fn forward_in(&self, xs: &Tensor, train: bool, layout: Channels) -> Result<Tensor> {
        let mut ys = match layout {
            Channels::First => xs.clone(),
            Channels::Last => xs.permute((0, 2, 3, 1))?,
        };
        let frozen = self.is_frozen(STEM_STAGE);
        ys = self.stem.forward_t(&ys, train && !frozen, layout)?;
        if frozen {
            ys = ys.detach();
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let frozen = self.is_frozen(STEM_STAGE + 1 + i);
            for block in layer {
                ys = block.forward_t(&ys, train && !frozen, layout)?;
            }
            if frozen {
                ys = ys.detach();
            }
        }
        match layout {
            Channels::First => Ok(ys),
            Channels::Last => ys.permute((0, 3, 1, 2)),
        }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_in(xs, train, Channels::fastest_for(xs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_of_names() {
        assert_eq!(stage_of("conv1.weight"), Some(1));
        assert_eq!(stage_of("bn1.running_var"), Some(1));
        assert_eq!(stage_of("layer1.0.conv1.weight"), Some(2));
        assert_eq!(stage_of("layer4.1.downsample.1.bias"), Some(5));
        assert_eq!(stage_of("head.bias"), Some(6));
        assert_eq!(stage_of("layer5.0.conv1.weight"), None);
        assert_eq!(stage_of("fc.weight"), None);
        assert!(is_trainable("layer4.0.bn1.weight", 5));
        assert!(!is_trainable("layer4.0.bn1.running_mean", 5));
        assert!(!is_trainable("layer3.0.bn1.weight", 5));
        assert!(is_trainable("conv1.weight", 0));
        assert!(is_trainable("conv1.weight", 1));
        assert!(!is_trainable("conv1.weight", 2));
    }

    #[test]
    fn backbone_serde_is_lowercase() {
        let b: Backbone = serde_json::from_str("\"resnet50\"").expect("parse");
        assert_eq!(b, Backbone::Resnet50);
        assert_eq!(
            serde_json::to_string(&Backbone::Resnet34).expect("json"),
            "\"resnet34\""
        );
        assert!(serde_json::from_str::<Backbone>("\"ResNet50\"").is_err());
    }
}
