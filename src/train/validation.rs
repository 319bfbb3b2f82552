//! Validation during training: val top-k from an exact ranking (the metric code of
//! `vitrine eval`) and a val triplet loss, on the val split's queries and gallery.

use candle_core::{Device, Tensor};

use crate::data::deepfashion::Dataset;
use crate::data::loader::LoaderConfig;
use crate::eval::{self, Retrieval};
use crate::model::Embedder;
use crate::model::embed_files::{EmbedError, embed_images};

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("validation: {0}")]
    Model(#[from] candle_core::Error),
}

/// Embeds val queries and gallery once; top-k from an exact ranking and a triplet
/// loss over the val pairs (the positive from the pair, the negative the hardest
/// gallery image of another item in the same small category).
pub fn validate(
    model: &Embedder,
    ds: &Dataset,
    queries: &[usize],
    gallery: &[usize],
    loader: LoaderConfig,
    device: &Device,
    margin: f32,
) -> Result<Option<(Retrieval, f32)>, ValidationError> {
    if queries.is_empty() || gallery.is_empty() {
        return Ok(None);
    }
    let specs = |imgs: &[usize]| imgs.iter().map(|&i| ds.spec(i)).collect::<Vec<_>>();
    let q = embed_images(model, &specs(queries), loader, 64, device, &mut |_, _| {})?;
    let g = embed_images(model, &specs(gallery), loader, 64, device, &mut |_, _| {})?;
    let q_items: Vec<usize> = q.kept.iter().map(|&k| ds.images[queries[k]].item).collect();
    let g_items: Vec<usize> = g.kept.iter().map(|&k| ds.images[gallery[k]].item).collect();
    let retrieval = eval::evaluate(
        &q.vectors,
        &g.vectors,
        &q_items,
        &g_items,
        &eval::REPORTED_K,
    )?;
    let val_loss = val_triplet_loss(
        ds, &q.vectors, &g.vectors, &q_items, &g_items, &g.kept, gallery, margin,
    )?;
    Ok(Some((retrieval, val_loss)))
}

/// Queries per block of the validation loss's similarity matrix.
const VAL_BLOCK: usize = 1024;

/// Mean triplet loss of each query with its item's farthest shop image as positive
/// and the closest shop image of another item of the same small category as negative.
#[allow(clippy::too_many_arguments)]
fn val_triplet_loss(
    ds: &Dataset,
    q: &Tensor,
    g: &Tensor,
    q_items: &[usize],
    g_items: &[usize],
    g_kept: &[usize],
    gallery: &[usize],
    margin: f32,
) -> Result<f32, ValidationError> {
    let g_cat: Vec<usize> = g_kept
        .iter()
        .map(|&k| ds.items[ds.images[gallery[k]].item].category)
        .collect();
    let mut sum = 0f64;
    let mut n = 0usize;
    // Blocks of queries, so the query × gallery matrix never exists whole (DeepFashion's
    // val split would need gigabytes).
    let rows = q.dim(0)?;
    let gt = g.t()?;
    for start in (0..rows).step_by(VAL_BLOCK) {
        let len = VAL_BLOCK.min(rows - start);
        // Unit vectors: d² = 2 − 2·cos.
        let cos = q
            .narrow(0, start, len)?
            .matmul(&gt)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        for (row, &item) in cos.iter().zip(&q_items[start..start + len]) {
            let cat = ds.items[item].category;
            let dist = |c: f32| (2.0 - 2.0 * c).max(0.0).sqrt();
            let pos = row
                .iter()
                .zip(g_items)
                .filter(|(_, gi)| **gi == item)
                .map(|(c, _)| dist(*c))
                .fold(f32::NAN, f32::max);
            let neg = row
                .iter()
                .zip(g_items.iter().zip(&g_cat))
                .filter(|(_, (gi, gc))| **gi != item && **gc == cat)
                .map(|(c, _)| dist(*c))
                .fold(f32::NAN, f32::min);
            if pos.is_finite() && neg.is_finite() {
                sum += f64::from((pos - neg + margin).max(0.0));
                n += 1;
            }
        }
    }
    Ok(if n == 0 {
        f32::NAN
    } else {
        (sum / n as f64) as f32
    })
}
