//! Losses with one learnable vector per training item ("proxy"): normalised softmax
//! (Zhai & Wu 2019) and proxy-anchor (Kim et al. 2020). Proxies are L2-normalised
//! before use, so only their direction is learnt; both losses compare every image with
//! every class, not only with the few items of its batch, which is why they converge
//! fast and cannot collapse without the loss rising.

use candle_core::{D, Result, Tensor};

use super::{LossStats, host_rows, log1p_masked_sum_exp};
use crate::model::embedder::l2_normalize;

/// Cosines `(N, C)` between unit embeddings and the normalised proxies.
fn cosines(embeddings: &Tensor, proxies: &Tensor, classes: &[u32]) -> Result<Tensor> {
    let (n, d) = embeddings.dims2()?;
    let (c, pd) = proxies.dims2()?;
    if pd != d {
        candle_core::bail!("proxies are {pd}-d, embeddings {d}-d")
    }
    if classes.len() != n {
        candle_core::bail!("{} classes for {n} embeddings", classes.len())
    }
    if let Some(bad) = classes.iter().find(|&&k| k as usize >= c) {
        candle_core::bail!("class {bad} out of range: {c} proxies")
    }
    embeddings.matmul(&l2_normalize(proxies)?.t()?)
}

/// Share of rows whose largest cosine is not their own class's.
fn misranked(cos: &Tensor, classes: &[u32]) -> Result<f32> {
    let (c, host) = host_rows(cos)?;
    if classes.is_empty() {
        return Ok(0.0);
    }
    let wrong = host
        .chunks_exact(c)
        .zip(classes)
        .filter(|(row, k)| row.iter().any(|&v| v > row[**k as usize]))
        .count();
    Ok(wrong as f32 / classes.len() as f32)
}

/// Cross-entropy of `cos / temperature` against each row's class.
pub fn norm_softmax_loss(
    embeddings: &Tensor,
    proxies: &Tensor,
    classes: &[u32],
    temperature: f32,
) -> Result<LossStats> {
    norm_softmax_margin_loss(embeddings, proxies, classes, temperature, 0.0)
}

/// [`norm_softmax_loss`] with an additive cosine margin (CosFace: Wang et al. 2018):
/// each row's own-class cosine counts `margin` less, so an image must be nearer its
/// item than every other item by at least that much before its loss stops pushing.
pub fn norm_softmax_margin_loss(
    embeddings: &Tensor,
    proxies: &Tensor,
    classes: &[u32],
    temperature: f32,
    margin: f32,
) -> Result<LossStats> {
    let cos = cosines(embeddings, proxies, classes)?;
    let shifted = if margin > 0.0 {
        let (n, c) = cos.dims2()?;
        let mut own = vec![0f32; n * c];
        for (i, &k) in classes.iter().enumerate() {
            own[i * c + k as usize] = margin;
        }
        (&cos - Tensor::from_vec(own, (n, c), cos.device())?.to_dtype(cos.dtype())?)?
    } else {
        cos.clone()
    };
    let logits = (&shifted / f64::from(temperature))?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let target = Tensor::from_vec(classes.to_vec(), classes.len(), embeddings.device())?;
    let loss = candle_nn::loss::nll(&log_p, &target)?;
    Ok(LossStats {
        loss,
        active: misranked(&cos, classes)?,
        mean_ap: 0.0,
        mean_an: 0.0,
        triplets: classes.len(),
    })
}

/// Proxy-anchor: `1/|P⁺|·Σ_{p∈P⁺} ln(1 + Σ_{x∈X_p⁺} e^{−α(s(x,p) − δ)})`
/// `+ 1/|P|·Σ_{p∈P} ln(1 + Σ_{x∈X_p⁻} e^{α(s(x,p) + δ)})`, where `P⁺` are the proxies
/// with an image in the batch.
pub fn proxy_anchor_loss(
    embeddings: &Tensor,
    proxies: &Tensor,
    classes: &[u32],
    alpha: f32,
    margin: f32,
) -> Result<LossStats> {
    let cos = cosines(embeddings, proxies, classes)?;
    let (n, c) = cos.dims2()?;
    let mut one_hot = vec![0f32; n * c];
    let mut present = vec![false; c];
    for (i, &k) in classes.iter().enumerate() {
        one_hot[i * c + k as usize] = 1.0;
        present[k as usize] = true;
    }
    let with_positives = present.iter().filter(|&&p| p).count().max(1);
    let pos = Tensor::from_vec(one_hot, (n, c), cos.device())?.to_dtype(cos.dtype())?;
    let neg = (1.0 - &pos)?;
    let (alpha, margin) = (f64::from(alpha), f64::from(margin));
    // α(s + δ) reaches 2α: e^{2α} overflows f32 from α ≈ 45, hence the masked
    // log-sum-exp (over the batch's images, per proxy).
    let side = |scale: f64, shift: f64, mask: &Tensor| -> Result<Tensor> {
        log1p_masked_sum_exp(&((&cos + shift)? * scale)?, mask, 0)?.sum_all()
    };
    let pos_term = (side(-alpha, -margin, &pos)? / with_positives as f64)?;
    let neg_term = (side(alpha, margin, &neg)? / c as f64)?;
    Ok(LossStats {
        loss: (pos_term + neg_term)?,
        active: misranked(&cos, classes)?,
        mean_ap: 0.0,
        mean_an: 0.0,
        triplets: n,
    })
}
