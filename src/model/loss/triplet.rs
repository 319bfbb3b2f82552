//! Triplet margin loss on Euclidean distances, with offline triplets or online mining
//! (batch-hard, semi-hard) inside a labelled batch.
//!
//! Every variant is `mean(relu(d(a,p) − d(a,n) + margin))` over its triplets (all
//! triplets count in the mean, the inactive ones too), or with a soft margin
//! `mean(softplus(d(a,p) − d(a,n)))` (Hermans, Beyer & Leibe 2017), which keeps
//! pulling once the margin is met instead of stopping. Distances use a safe square
//! root, `sqrt(max(d², 1e-12))`, so the gradient stays finite at zero distance.
//! Mining is a selection of indices made on detached distances; the loss is then
//! gathered from the differentiable distance matrix.

use candle_core::{D, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::LossStats;

/// Squared distances are clamped to at least this before the square root.
const DIST_SQ_FLOOR: f64 = 1e-12;

/// How the triplets of a batch are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mining {
    /// The batch is `[anchors; positives; negatives]` stacked (3B rows): B triplets.
    #[default]
    Offline,
    /// Per anchor: its farthest positive and its closest negative.
    BatchHard,
    /// Per (anchor, positive): the closest negative farther than the positive; when
    /// none is farther, the closest negative.
    SemiHard,
}

/// A triplet loss: margin and miner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TripletLoss {
    pub margin: f32,
    pub mining: Mining,
    /// `softplus(d(a,p) − d(a,n))` instead of the hinge; `margin` is then unused.
    pub soft_margin: bool,
}

impl Default for TripletLoss {
    fn default() -> Self {
        Self {
            margin: 0.5,
            mining: Mining::Offline,
            soft_margin: false,
        }
    }
}

/// One mined triplet: row indices of anchor, positive and negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

impl TripletLoss {
    /// The loss of `embeddings` (N, D). `labels` (item ids, one per row) are needed
    /// for online mining and ignored for [`Mining::Offline`].
    pub fn compute(&self, embeddings: &Tensor, labels: &[u64]) -> Result<LossStats> {
        let hinge = self.hinge();
        match self.mining {
            Mining::Offline => offline_loss(embeddings, hinge),
            Mining::BatchHard | Mining::SemiHard => {
                online_loss(embeddings, labels, self.mining, hinge)
            }
        }
    }

    /// The loss of one triplet from its two distances (the Triplets tab's column).
    pub fn of_distances(&self, d_ap: f32, d_an: f32) -> f32 {
        let gap = d_ap - d_an;
        match self.hinge() {
            Hinge::Margin(m) => (gap + m).max(0.0),
            Hinge::Soft => gap.exp().ln_1p(),
        }
    }

    fn hinge(self) -> Hinge {
        if self.soft_margin {
            Hinge::Soft
        } else {
            Hinge::Margin(self.margin)
        }
    }
}

/// How `d(a,p) − d(a,n)` becomes a loss.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hinge {
    /// `relu(x + margin)`.
    Margin(f32),
    /// `softplus(x) = ln(1 + eˣ)`: never exactly zero, so "active" counts triplets
    /// still on the wrong side (`x > 0`).
    Soft,
}

/// Euclidean distances of paired rows of two (B, D) tensors, with the safe root.
fn row_distances(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?
        .sqr()?
        .sum(D::Minus1)?
        .maximum(DIST_SQ_FLOOR)?
        .sqrt()
}

/// Pairwise Euclidean distances (N, N) of the rows of `embeddings` (N, D), through
/// `|x|² + |y|² − 2x·y` with the safe root.
pub fn pairwise_distances(embeddings: &Tensor) -> Result<Tensor> {
    let sq = embeddings.sqr()?.sum_keepdim(1)?;
    let gram = embeddings.matmul(&embeddings.t()?)?;
    let d2 = sq.broadcast_add(&sq.t()?)?.sub(&(gram * 2.0)?)?;
    d2.maximum(DIST_SQ_FLOOR)?.sqrt()
}

/// The hinge and statistics over aligned d(a,p) and d(a,n) vectors.
fn hinge_stats(d_ap: &Tensor, d_an: &Tensor, hinge: Hinge) -> Result<LossStats> {
    let triplets = d_ap.dim(0)?;
    if triplets == 0 {
        return Ok(LossStats {
            loss: Tensor::zeros((), d_ap.dtype(), d_ap.device())?,
            active: 0.0,
            mean_ap: 0.0,
            mean_an: 0.0,
            triplets,
        });
    }
    let gap = (d_ap - d_an)?;
    let losses = match hinge {
        Hinge::Margin(m) => (&gap + f64::from(m))?.relu()?,
        // d ∈ [0, 2] for unit vectors, so eˣ cannot overflow here.
        Hinge::Soft => (gap.exp()? + 1.0)?.log()?,
    };
    let loss = losses.mean_all()?;
    let host = |t: &Tensor| t.detach().to_dtype(DType::F32)?.to_vec1::<f32>();
    let (ap, an, per) = (host(d_ap)?, host(d_an)?, host(&losses)?);
    let n = triplets as f32;
    let active = match hinge {
        Hinge::Margin(_) => per.iter().filter(|&&l| l > 0.0).count(),
        Hinge::Soft => ap.iter().zip(&an).filter(|(p, n)| p >= n).count(),
    };
    Ok(LossStats {
        loss,
        active: active as f32 / n,
        mean_ap: ap.iter().sum::<f32>() / n,
        mean_an: an.iter().sum::<f32>() / n,
        triplets,
    })
}

/// Offline triplets: `embeddings` is `[anchors; positives; negatives]`, 3B rows.
pub fn offline_triplet_loss(embeddings: &Tensor, margin: f32) -> Result<LossStats> {
    offline_loss(embeddings, Hinge::Margin(margin))
}

fn offline_loss(embeddings: &Tensor, hinge: Hinge) -> Result<LossStats> {
    let (rows, _) = embeddings.dims2()?;
    if rows % 3 != 0 {
        candle_core::bail!(
            "offline triplet batch needs 3·B rows (anchors; positives; negatives), got {rows}"
        )
    }
    let b = rows / 3;
    let a = embeddings.narrow(0, 0, b)?;
    let p = embeddings.narrow(0, b, b)?;
    let n = embeddings.narrow(0, 2 * b, b)?;
    hinge_stats(&row_distances(&a, &p)?, &row_distances(&a, &n)?, hinge)
}

/// Online mining (`BatchHard` or `SemiHard`) over a labelled batch.
pub fn online_triplet_loss(
    embeddings: &Tensor,
    labels: &[u64],
    mining: Mining,
    margin: f32,
) -> Result<LossStats> {
    online_loss(embeddings, labels, mining, Hinge::Margin(margin))
}

fn online_loss(
    embeddings: &Tensor,
    labels: &[u64],
    mining: Mining,
    hinge: Hinge,
) -> Result<LossStats> {
    let (rows, _) = embeddings.dims2()?;
    if labels.len() != rows {
        candle_core::bail!("{} labels for {rows} embeddings", labels.len())
    }
    let dist = pairwise_distances(embeddings)?;
    let host = dist
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let triplets = match mining {
        Mining::BatchHard => mine_batch_hard(&host, labels),
        Mining::SemiHard => mine_semi_hard(&host, labels),
        Mining::Offline => {
            candle_core::bail!("offline triplets are not mined: use offline_triplet_loss")
        }
    };
    let index = |f: fn(&Triplet) -> usize| -> Result<Tensor> {
        let idx: Vec<u32> = triplets
            .iter()
            .map(|t| (t.anchor * rows + f(t)) as u32)
            .collect();
        Tensor::from_vec(idx, triplets.len(), embeddings.device())
    };
    let flat = dist.flatten_all()?;
    let d_ap = flat.index_select(&index(|t| t.positive)?, 0)?;
    let d_an = flat.index_select(&index(|t| t.negative)?, 0)?;
    hinge_stats(&d_ap, &d_an, hinge)
}

/// For each anchor with at least one positive and one negative: its farthest
/// positive and closest negative. `dist` is the row-major (N, N) distance matrix.
pub fn mine_batch_hard(dist: &[f32], labels: &[u64]) -> Vec<Triplet> {
    let n = labels.len();
    let mut out = Vec::new();
    for a in 0..n {
        let row = &dist[a * n..(a + 1) * n];
        let positive = (0..n)
            .filter(|&j| j != a && labels[j] == labels[a])
            .max_by(|&i, &j| row[i].total_cmp(&row[j]));
        let negative = (0..n)
            .filter(|&j| labels[j] != labels[a])
            .min_by(|&i, &j| row[i].total_cmp(&row[j]));
        if let (Some(positive), Some(negative)) = (positive, negative) {
            out.push(Triplet {
                anchor: a,
                positive,
                negative,
            });
        }
    }
    out
}

/// For each (anchor, positive) pair with at least one negative: the closest negative
/// strictly farther than the positive, else the closest negative.
pub fn mine_semi_hard(dist: &[f32], labels: &[u64]) -> Vec<Triplet> {
    let n = labels.len();
    let mut out = Vec::new();
    for a in 0..n {
        let row = &dist[a * n..(a + 1) * n];
        let negatives: Vec<usize> = (0..n).filter(|&j| labels[j] != labels[a]).collect();
        let closest =
            |it: &mut dyn Iterator<Item = usize>| it.min_by(|&i, &j| row[i].total_cmp(&row[j]));
        let Some(hardest) = closest(&mut negatives.iter().copied()) else {
            continue;
        };
        for positive in (0..n).filter(|&j| j != a && labels[j] == labels[a]) {
            let d_ap = row[positive];
            let negative = closest(&mut negatives.iter().copied().filter(|&j| row[j] > d_ap))
                .unwrap_or(hardest);
            out.push(Triplet {
                anchor: a,
                positive,
                negative,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mining_serde_names() {
        for (m, s) in [
            (Mining::Offline, "\"offline\""),
            (Mining::BatchHard, "\"batch_hard\""),
            (Mining::SemiHard, "\"semi_hard\""),
        ] {
            assert_eq!(serde_json::to_string(&m).expect("json"), s);
            assert_eq!(serde_json::from_str::<Mining>(s).expect("parse"), m);
        }
    }

    #[test]
    fn miners_skip_anchors_without_positive_or_negative() {
        // 0 and 1 share a label, 2 is alone; 3x3 distances.
        let dist = [0.0, 1.0, 2.0, 1.0, 0.0, 3.0, 2.0, 3.0, 0.0];
        let hard = mine_batch_hard(&dist, &[7, 7, 9]);
        assert_eq!(hard.len(), 2);
        assert_eq!(
            hard[0],
            Triplet {
                anchor: 0,
                positive: 1,
                negative: 2
            }
        );
        assert!(mine_batch_hard(&dist, &[1, 1, 1]).is_empty());
        assert!(mine_semi_hard(&dist, &[1, 2, 3]).is_empty());
    }
}
