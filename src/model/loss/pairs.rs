//! Multi-similarity loss with its miner (Wang et al., CVPR 2019), on cosine
//! similarities of unit embeddings inside a labelled batch.
//!
//! For anchor `i` with similarities `S`: a positive `p` is kept when
//! `S_ip < max_n S_in + ε` (it is not already closer than every negative), a negative
//! `n` when `S_in > min_p S_ip − ε` (it is not already farther than every positive).
//! The anchor's loss is `1/α·ln(1 + Σ_p e^{−α(S_ip − λ)}) + 1/β·ln(1 + Σ_n e^{β(S_in − λ)})`
//! over the kept pairs, and the batch's the mean over all anchors. Mining runs on
//! detached similarities; the loss is then taken from the differentiable matrix
//! through 0/1 masks.

use candle_core::{Result, Tensor};

use super::{LossStats, host_rows, log1p_masked_sum_exp};

/// α, β, λ and ε of the loss and its miner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsParams {
    pub alpha: f32,
    pub beta: f32,
    pub base: f32,
    pub epsilon: f32,
}

/// The multi-similarity loss of unit `embeddings` `(N, D)` labelled by item.
pub fn multi_similarity_loss(
    embeddings: &Tensor,
    labels: &[u64],
    p: MsParams,
) -> Result<LossStats> {
    let (n, _) = embeddings.dims2()?;
    if labels.len() != n {
        candle_core::bail!("{} labels for {n} embeddings", labels.len())
    }
    let sim = embeddings.matmul(&embeddings.t()?)?;
    let (_, host) = host_rows(&sim)?;
    let (pos, neg, active) = mine(&host, labels, p.epsilon);
    let device = embeddings.device();
    let mask = |m: Vec<f32>| Tensor::from_vec(m, (n, n), device)?.to_dtype(sim.dtype());
    let (pos, neg) = (mask(pos)?, mask(neg)?);
    let shifted = (&sim - f64::from(p.base))?;
    // β·(S − λ) reaches 2β: e^{2β} overflows f32 from β ≈ 45 (λ = 0), hence the
    // masked log-sum-exp.
    let side = |scale: f64, m: &Tensor, inv: f64| -> Result<Tensor> {
        log1p_masked_sum_exp(&(&shifted * scale)?, m, 1)?.affine(inv, 0.0)
    };
    let alpha = f64::from(p.alpha);
    let beta = f64::from(p.beta);
    let per_anchor = (side(-alpha, &pos, 1.0 / alpha)? + side(beta, &neg, 1.0 / beta)?)?;
    Ok(LossStats {
        loss: per_anchor.mean_all()?,
        active: if n == 0 {
            0.0
        } else {
            active as f32 / n as f32
        },
        mean_ap: 0.0,
        mean_an: 0.0,
        triplets: n,
    })
}

/// Row-major 0/1 masks of the kept positive and negative pairs, and how many anchors
/// kept at least one pair. Anchors without a positive or a negative keep nothing.
pub fn mine(sim: &[f32], labels: &[u64], epsilon: f32) -> (Vec<f32>, Vec<f32>, usize) {
    let n = labels.len();
    let mut pos = vec![0f32; n * n];
    let mut neg = vec![0f32; n * n];
    let mut active = 0;
    for i in 0..n {
        let row = &sim[i * n..(i + 1) * n];
        let same = |j: usize| j != i && labels[j] == labels[i];
        let min_pos = (0..n).filter(|&j| same(j)).map(|j| row[j]).reduce(f32::min);
        let max_neg = (0..n)
            .filter(|&j| labels[j] != labels[i])
            .map(|j| row[j])
            .reduce(f32::max);
        let (Some(min_pos), Some(max_neg)) = (min_pos, max_neg) else {
            continue;
        };
        let mut kept = false;
        for j in 0..n {
            if same(j) && row[j] < max_neg + epsilon {
                pos[i * n + j] = 1.0;
                kept = true;
            } else if labels[j] != labels[i] && row[j] > min_pos - epsilon {
                neg[i * n + j] = 1.0;
                kept = true;
            }
        }
        active += usize::from(kept);
    }
    (pos, neg, active)
}
