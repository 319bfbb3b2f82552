//! The data side of a training run, built once before the first step: the dataset,
//! the batch sampler, the training classes (proxy losses), the val split's queries
//! and gallery, and the loader's settings; and each loaded batch as the tensors a
//! step takes.

use candle_core::{Device, Tensor};

use super::error::TrainError;
use super::job::TrainJob;
use crate::data::deepfashion::{Dataset, LoadOptions, Source, Split};
use crate::data::loader::{Batch, LoaderConfig};
use crate::data::sampler::{self, BatchSampler, PkConfig, PkSampler, SamplerKind};
use crate::data::triplets::TripletSampler;

/// Everything the loop needs about the data, built once.
pub(super) struct Data {
    pub(super) ds: Dataset,
    pub(super) sampler: BatchSampler,
    /// Training class of each dataset item (proxy losses); `u32::MAX` outside train.
    pub(super) class_of: Vec<u32>,
    pub(super) classes: usize,
    pub(super) val_queries: Vec<usize>,
    pub(super) val_gallery: Vec<usize>,
    pub(super) loader: LoaderConfig,
}

pub(super) fn prepare_data(job: &TrainJob) -> Result<Data, TrainError> {
    let cfg = &job.config;
    let ds = Dataset::open(
        &job.data,
        LoadOptions {
            strict: cfg.data.strict,
            skip_file_check: false,
        },
    )?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    let sampler = match cfg.sampler() {
        SamplerKind::Triplets => BatchSampler::Triplets {
            sampler: TripletSampler::new(&ds, Split::Train, cfg.train.seed)?,
            batch: cfg.train.batch,
        },
        _ => BatchSampler::Pk(PkSampler::new(
            &ds,
            Split::Train,
            cfg.train.seed,
            PkConfig {
                items: cfg.train.pk_items,
                images: cfg.train.pk_images,
                per_category: cfg.train.pk_per_category,
            },
        )?),
    };
    let train_items = sampler::classes(&ds, Split::Train);
    let mut class_of = vec![u32::MAX; ds.items.len()];
    for (c, &item) in train_items.iter().enumerate() {
        class_of[item] = c as u32;
    }
    let mut val_queries = ds.queries(Split::Val);
    if cfg.train.val_queries > 0 && val_queries.len() > cfg.train.val_queries {
        // A deterministic, evenly spread subset keeps validation cheap on big sets.
        let stride = val_queries.len() as f64 / cfg.train.val_queries as f64;
        val_queries = (0..cfg.train.val_queries)
            .map(|i| val_queries[(i as f64 * stride) as usize])
            .collect();
    }
    let val_gallery = ds.unique_images(&[Split::Val], Source::Shop);
    let loader = LoaderConfig {
        size: cfg.model.image_size,
        crop: cfg.data.crop,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        max_pixels: cfg.data.max_image_pixels,
    };
    Ok(Data {
        ds,
        sampler,
        class_of,
        classes: train_items.len(),
        val_queries,
        val_gallery,
        loader,
    })
}

/// A loaded batch as a step takes it: the images, member-major as the loader lays
/// the batch out, with each image's item (its label) and training class.
pub(super) struct BatchTensors {
    pub(super) x: Tensor,
    pub(super) labels: Vec<u64>,
    pub(super) classes: Vec<u32>,
}

impl Data {
    /// The images of `batch` (loaded from `groups`, of which it kept some) on
    /// `device`, with their labels and classes.
    pub(super) fn batch_tensors(
        &self,
        batch: Batch,
        groups: &[Vec<usize>],
        device: &Device,
    ) -> Result<BatchTensors, TrainError> {
        let members = groups.first().map_or(0, Vec::len);
        // Member-major, as the loader lays the batch out.
        let images: Vec<usize> = (0..members)
            .flat_map(|m| batch.kept.iter().map(move |&k| groups[k][m]))
            .collect();
        let labels: Vec<u64> = images
            .iter()
            .map(|&i| self.ds.images[i].item as u64)
            .collect();
        let classes: Vec<u32> = images
            .iter()
            .map(|&i| self.class_of[self.ds.images[i].item])
            .collect();
        let side = batch.size as usize;
        let x = Tensor::from_vec(batch.data, batch.n * 3 * side * side, device)?
            .reshape((batch.n, 3, side, side))?;
        Ok(BatchTensors { x, labels, classes })
    }
}
