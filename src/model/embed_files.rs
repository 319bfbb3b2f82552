//! Batched embedding of image files with the loader's parallel decode.

use candle_core::{Device, Tensor};

use crate::data::loader::{ImageSpec, LoadError, LoaderConfig, Prefetcher};
use crate::model::Embedder;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("embedding failed: {0}")]
    Model(#[from] candle_core::Error),
}

/// Embeddings of the readable images among `specs`.
#[derive(Debug)]
pub struct Embedded {
    /// `(kept.len(), dim)` unit rows, on the model's device.
    pub vectors: Tensor,
    /// Index into `specs` of each row.
    pub kept: Vec<usize>,
    /// Images that could not be read.
    pub failed: Vec<LoadError>,
}

/// Embeds `specs` in eval mode, `batch` images at a time; `progress(done, total)`.
pub fn embed_images(
    model: &Embedder,
    specs: &[ImageSpec],
    loader: LoaderConfig,
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Embedded, EmbedError> {
    let batch = batch.max(1);
    let batches: Vec<Vec<Vec<ImageSpec>>> = specs
        .chunks(batch)
        .map(|c| c.iter().map(|s| vec![s.clone()]).collect())
        .collect();
    let mut rows = Vec::new();
    let mut kept = Vec::new();
    let mut failed = Vec::new();
    let mut done = 0;
    let mut prefetcher = Prefetcher::spawn(batches, loader)?;
    for (b, loaded) in prefetcher.by_ref().enumerate() {
        let offset = b * batch;
        done += loaded.kept.len() + loaded.failed.len();
        kept.extend(loaded.kept.iter().map(|k| offset + k));
        let dims = loaded.dims();
        failed.extend(loaded.failed);
        if loaded.n > 0 {
            let x = Tensor::from_vec(loaded.data, dims, device)?;
            rows.push(model.embed(&x)?);
        }
        progress(done, specs.len());
    }
    prefetcher.finish()?;
    let vectors = if rows.is_empty() {
        Tensor::zeros(
            (0, model.config().embedding_dim),
            candle_core::DType::F32,
            device,
        )?
    } else {
        Tensor::cat(&rows, 0)?
    };
    Ok(Embedded {
        vectors,
        kept,
        failed,
    })
}
