//! Reads the dataset once: split summary, the Triplets tab's rows, the Search tab's
//! queries.

use std::path::{Path, PathBuf};

use super::{Outbox, spawn};
use crate::data::deepfashion::{Dataset, GalleryProtocol, LoadOptions, Split};
use crate::data::triplets::TripletSampler;
use crate::tui::app::WorkerEvent;
use crate::tui::tabs::dataset::{DatasetInfo, ImageInfo, TripletRow};

/// Triplets the Triplets tab lists (the sampler's first epoch, from the start).
pub const MAX_TRIPLETS: usize = 1024;

/// Dataset-side facts the dashboard shows.
pub fn read_dataset(
    root: &Path,
    protocol: GalleryProtocol,
    seed: u64,
) -> Result<DatasetInfo, String> {
    let ds = Dataset::open(
        root,
        LoadOptions {
            strict: false,
            skip_file_check: false,
        },
    )
    .map_err(|e| e.to_string())?;
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    let summary = ds.summary(protocol);
    let info = |img: usize| {
        let item = &ds.items[ds.images[img].item];
        let cat = &ds.categories[item.category];
        ImageInfo {
            path: ds.image_path(img),
            item_id: item.id.clone(),
            category: cat.small.clone(),
            big: cat.big.clone(),
            bbox: ds.images[img].bbox,
        }
    };
    let triplets = match TripletSampler::new(&ds, Split::Train, seed) {
        Ok(sampler) => sampler
            .epoch(0)
            .triplets
            .into_iter()
            .take(MAX_TRIPLETS)
            .map(|t| TripletRow {
                anchor: info(t.anchor),
                positive: info(t.positive),
                negative: info(t.negative),
            })
            .collect(),
        Err(e) => {
            tracing::warn!("no training triplets: {e}");
            Vec::new()
        }
    };
    let queries = ds.queries(Split::Test).into_iter().map(info).collect();
    Ok(DatasetInfo {
        root: root.to_path_buf(),
        summary,
        triplets,
        queries,
    })
}

pub fn spawn_dataset(root: PathBuf, protocol: GalleryProtocol, seed: u64, out: Outbox) {
    let failed = |m| WorkerEvent::Dataset(Box::new(Err(m)));
    spawn("dataset", &out.clone(), failed, move || {
        out.send(WorkerEvent::Dataset(Box::new(read_dataset(
            &root, protocol, seed,
        ))));
    });
}
