//! The training losses, chosen by `[loss] kind`:
//!
//! - `norm_softmax`: classification over the training items with L2-normalised class
//!   weights and a temperature (Zhai & Wu 2019, "Classification is a Strong Baseline for
//!   Deep Metric Learning");
//! - `proxy_anchor`: one learnable proxy per training item, each proxy pulling its
//!   item's images and pushing the others (Kim et al. 2020);
//! - `multi_similarity`: pair weighting with multi-similarity mining inside a labelled
//!   batch (Wang et al. 2019);
//! - `triplet`: the triplet margin loss, offline (the original's triplets) or mined in
//!   the batch (batch-hard, semi-hard), with an optional soft margin.
//!
//! All take unit embeddings `(N, D)` and one label per row (the item); the proxy losses
//! also need each row's class (its item's index among the training items). A
//! [`Criterion`] owns the learnable class weights, which live beside the model, not in
//! it: they are trained and saved for `--resume`, never used for search.

mod pairs;
mod proxy;
mod triplet;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use pairs::{MsParams, multi_similarity_loss};
pub use proxy::{norm_softmax_loss, norm_softmax_margin_loss, proxy_anchor_loss};
pub use triplet::{
    Mining, Triplet, TripletLoss, mine_batch_hard, mine_semi_hard, offline_triplet_loss,
    online_triplet_loss, pairwise_distances,
};

use crate::rng::Rng;

/// Which loss trains the embedder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    #[default]
    NormSoftmax,
    ProxyAnchor,
    MultiSimilarity,
    Triplet,
}

impl LossKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NormSoftmax => "norm_softmax",
            Self::ProxyAnchor => "proxy_anchor",
            Self::MultiSimilarity => "multi_similarity",
            Self::Triplet => "triplet",
        }
    }

    /// Whether the loss learns one weight vector per training item.
    pub fn has_proxies(self) -> bool {
        matches!(self, Self::NormSoftmax | Self::ProxyAnchor)
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LossKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "norm_softmax" => Ok(Self::NormSoftmax),
            "proxy_anchor" => Ok(Self::ProxyAnchor),
            "multi_similarity" => Ok(Self::MultiSimilarity),
            "triplet" => Ok(Self::Triplet),
            _ => Err(format!(
                "unknown loss `{s}`: expected norm_softmax, proxy_anchor, multi_similarity or triplet"
            )),
        }
    }
}

/// `[loss]`: the loss and its hyper-parameters (each used only by its loss).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub kind: LossKind,
    /// `norm_softmax`: logits are cosines divided by this.
    pub temperature: f32,
    /// `norm_softmax`: additive margin on each image's own-class cosine (CosFace).
    pub softmax_margin: f32,
    /// `proxy_anchor`: scale α and margin δ.
    pub proxy_alpha: f32,
    pub proxy_margin: f32,
    /// Learning-rate multiplier of the class weights / proxies.
    pub proxy_lr_scale: f64,
    /// `multi_similarity`: α (positives), β (negatives), base λ, mining ε.
    pub ms_alpha: f32,
    pub ms_beta: f32,
    pub ms_base: f32,
    pub ms_epsilon: f32,
    /// `triplet`: margin on Euclidean distances of unit vectors, miner, soft margin.
    pub margin: f32,
    pub mining: Mining,
    pub soft_margin: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::NormSoftmax,
            temperature: 0.05,
            softmax_margin: 0.0,
            proxy_alpha: 32.0,
            proxy_margin: 0.1,
            proxy_lr_scale: 100.0,
            ms_alpha: 2.0,
            ms_beta: 50.0,
            ms_base: 0.5,
            ms_epsilon: 0.1,
            margin: 0.5,
            mining: Mining::Offline,
            soft_margin: false,
        }
    }
}

impl LossConfig {
    /// The triplet loss these settings describe.
    pub fn triplet(&self) -> TripletLoss {
        TripletLoss {
            margin: self.margin,
            mining: self.mining,
            soft_margin: self.soft_margin,
        }
    }

    /// Range checks; the dotted key at fault and why. The scales and the temperature
    /// are bounded where the losses stay finite and meaningful in f32 (the papers use
    /// α = 2, β = 50, proxy α = 32, temperature 0.05).
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let positive = |key: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err((
                    format!("loss.{key}"),
                    "must be a positive number".to_string(),
                ))
            }
        };
        let between = |key: &str, v: f32, (lo, hi): (f32, f32)| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((
                    format!("loss.{key}"),
                    format!("must be between {lo} and {hi}"),
                ))
            }
        };
        between("temperature", self.temperature, TEMPERATURE_RANGE)?;
        between("proxy_alpha", self.proxy_alpha, SCALE_RANGE)?;
        positive("proxy_lr_scale", self.proxy_lr_scale)?;
        between("ms_alpha", self.ms_alpha, SCALE_RANGE)?;
        between("ms_beta", self.ms_beta, SCALE_RANGE)?;
        positive("margin", f64::from(self.margin))?;
        for (key, v) in [
            ("proxy_margin", self.proxy_margin),
            ("softmax_margin", self.softmax_margin),
            ("ms_base", self.ms_base),
            ("ms_epsilon", self.ms_epsilon),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((format!("loss.{key}"), "must be between 0 and 1".into()));
            }
        }
        Ok(())
    }
}

/// `loss.temperature`: logits of at most `2 / 0.001 = 2000`.
pub const TEMPERATURE_RANGE: (f32, f32) = (0.001, 10.0);
/// `loss.ms_alpha`, `loss.ms_beta`, `loss.proxy_alpha`: exponents of at most
/// `1000 · 2`, which the log-sum-exp in the losses keeps finite.
pub const SCALE_RANGE: (f32, f32) = (0.01, 1000.0);

/// The loss of one batch and what it was made of.
#[derive(Debug, Clone)]
pub struct LossStats {
    /// Scalar, differentiable.
    pub loss: Tensor,
    /// Share of the loss's terms that still push: triplets with a positive loss (soft
    /// margin: on the wrong side), anchors with a mined pair (multi-similarity), rows
    /// not yet nearest their own class (proxy losses). 0 when there are none.
    pub active: f32,
    /// Mean anchor–positive distance over the terms (triplets; else same-item pairs).
    pub mean_ap: f32,
    /// Mean anchor–negative distance over the terms (triplets; else other-item pairs).
    pub mean_an: f32,
    /// Number of terms in the mean (0 gives a zero loss).
    pub triplets: usize,
}

/// Mean distances of same-label and other-label pairs of a batch, from its detached
/// unit embeddings (row-major `n × d`): the geometry every loss reports.
pub(crate) fn pair_distances(emb: &[f32], d: usize, labels: &[u64]) -> (f32, f32) {
    let n = labels.len();
    let (mut ap, mut an, mut n_ap, mut n_an) = (0f64, 0f64, 0usize, 0usize);
    for i in 0..n {
        for j in i + 1..n {
            let cos: f32 = emb[i * d..(i + 1) * d]
                .iter()
                .zip(&emb[j * d..(j + 1) * d])
                .map(|(a, b)| a * b)
                .sum();
            let dist = f64::from((2.0 - 2.0 * cos).max(0.0).sqrt());
            if labels[i] == labels[j] {
                ap += dist;
                n_ap += 1;
            } else {
                an += dist;
                n_an += 1;
            }
        }
    }
    let mean = |s: f64, c: usize| if c == 0 { 0.0 } else { (s / c as f64) as f32 };
    (mean(ap, n_ap), mean(an, n_an))
}

/// Mean cosine between distinct rows of unit embeddings (row-major `n × d`), from
/// `|Σx|² = n + Σ_{i≠j} xᵢ·xⱼ`: near 1 when every image maps to the same point
/// (collapse), near 0 for a healthy spread.
pub fn mean_pairwise_cosine(emb: &[f32], d: usize) -> f32 {
    let n = emb.len().checked_div(d).unwrap_or(0);
    if n < 2 {
        return f32::NAN;
    }
    let mut sum = vec![0f64; d];
    let mut norms = 0f64;
    for row in emb.chunks_exact(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
        norms += row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
    }
    let total: f64 = sum.iter().map(|s| s * s).sum();
    ((total - norms) / (n * (n - 1)) as f64) as f32
}

/// A configured loss with its learnable class weights (for the proxy losses).
#[derive(Debug, Clone)]
pub struct Criterion {
    cfg: LossConfig,
    /// `(classes, dim)`, one row per training item; `None` for pair losses.
    proxies: Option<Var>,
}

/// Name of the class weights in the optimiser state file.
pub const PROXIES_NAME: &str = "loss.proxies";

impl Criterion {
    /// `classes` training items, `dim`-d embeddings; proxies drawn from `seed`
    /// (standard normal rows, unit length once normalised).
    pub fn new(
        cfg: LossConfig,
        classes: usize,
        dim: usize,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let proxies = if cfg.kind.has_proxies() {
            if classes < 2 {
                candle_core::bail!("{} needs at least two training items", cfg.kind)
            }
            let mut rng = Rng::derive(seed, &[0x9e0c5]);
            let values: Vec<f32> = (0..classes * dim).map(|_| rng.normal()).collect();
            Some(Var::from_tensor(&Tensor::from_vec(
                values,
                (classes, dim),
                device,
            )?)?)
        } else {
            None
        };
        Ok(Self { cfg, proxies })
    }

    pub fn config(&self) -> &LossConfig {
        &self.cfg
    }

    /// The learnable class weights, if the loss has any.
    pub fn proxies(&self) -> Option<&Var> {
        self.proxies.as_ref()
    }

    /// The loss of unit `embeddings` `(N, D)`: `labels` the item of each row,
    /// `classes` its training-class index (proxy losses only; may be empty otherwise).
    pub fn compute(
        &self,
        embeddings: &Tensor,
        labels: &[u64],
        classes: &[u32],
    ) -> Result<LossStats> {
        let c = &self.cfg;
        let stats = match (c.kind, &self.proxies) {
            (LossKind::Triplet, _) => return c.triplet().compute(embeddings, labels),
            (LossKind::MultiSimilarity, _) => multi_similarity_loss(
                embeddings,
                labels,
                pairs::MsParams {
                    alpha: c.ms_alpha,
                    beta: c.ms_beta,
                    base: c.ms_base,
                    epsilon: c.ms_epsilon,
                },
            )?,
            (LossKind::NormSoftmax, Some(p)) => norm_softmax_margin_loss(
                embeddings,
                p.as_tensor(),
                classes,
                c.temperature,
                c.softmax_margin,
            )?,
            (LossKind::ProxyAnchor, Some(p)) => proxy_anchor_loss(
                embeddings,
                p.as_tensor(),
                classes,
                c.proxy_alpha,
                c.proxy_margin,
            )?,
            (kind, None) => candle_core::bail!("the {kind} loss was built without its proxies"),
        };
        // Pair geometry for the step log, whatever the loss.
        let (d, host) = host_rows(embeddings)?;
        let (mean_ap, mean_an) = pair_distances(&host, d, labels);
        Ok(LossStats {
            mean_ap,
            mean_an,
            ..stats
        })
    }
}

/// `ln(1 + Σ_j mask_j·e^{z_j})` along `dim` (the sum removed), without overflow for
/// any finite `z`: masked-out entries are pushed far below zero before `exp` (a
/// masked `e^{z} = ∞` would give `0·∞ = NaN`), and the largest term, the `1` as
/// `e^0` among them, is taken out first (log-sum-exp). The shift is detached: the
/// value does not depend on it, so neither does the gradient.
pub(crate) fn log1p_masked_sum_exp(z: &Tensor, mask: &Tensor, dim: usize) -> Result<Tensor> {
    // 0 where kept, −1e30 where masked (finite in f32, and e^{−1e30} = 0).
    let off = (mask.affine(1.0, -1.0)? * 1e30)?;
    let z = ((z * mask)? + off)?;
    let top = z.max_keepdim(dim)?.maximum(0.0)?.detach();
    let terms = z.broadcast_sub(&top)?.exp()?.sum_keepdim(dim)?;
    ((terms + top.neg()?.exp()?)?.log()? + top)?.squeeze(dim)
}

/// Detached f32 copy of `(N, D)` rows and `D`.
pub(crate) fn host_rows(t: &Tensor) -> Result<(usize, Vec<f32>)> {
    let (_, d) = t.dims2()?;
    let v = t
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((d, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pairwise_cosine_of_known_sets() {
        // Identical rows: 1. Orthogonal rows: 0. Opposite pair: −1.
        let same = [0.6f32, 0.8, 0.6, 0.8, 0.6, 0.8];
        assert!((mean_pairwise_cosine(&same, 2) - 1.0).abs() < 1e-6);
        let ortho = [1f32, 0.0, 0.0, 1.0];
        assert!(mean_pairwise_cosine(&ortho, 2).abs() < 1e-6);
        let opposite = [1f32, 0.0, -1.0, 0.0];
        assert!((mean_pairwise_cosine(&opposite, 2) + 1.0).abs() < 1e-6);
        assert!(mean_pairwise_cosine(&[1.0, 0.0], 2).is_nan());
    }

    #[test]
    fn loss_kind_names_round_trip() {
        for k in [
            LossKind::NormSoftmax,
            LossKind::ProxyAnchor,
            LossKind::MultiSimilarity,
            LossKind::Triplet,
        ] {
            assert_eq!(k.as_str().parse::<LossKind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).expect("json"),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!("softmax".parse::<LossKind>().is_err());
    }
}
