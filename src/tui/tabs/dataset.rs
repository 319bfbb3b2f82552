//! The Dataset tab's state: what the dataset worker reads once (the split summary,
//! and the rows and queries the Triplets and Search tabs start from).

use std::path::PathBuf;

use crate::data::deepfashion::{BBox, SplitSummary};

/// One dataset image as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub item_id: String,
    /// Small category (`Sub_category`).
    pub category: String,
    /// Big category (`CATEGORY`).
    pub big: String,
    /// Crop box from the annotations (the model sees the crop).
    pub bbox: Option<BBox>,
}

/// One training triplet of the sampler, as the Triplets tab lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripletRow {
    pub anchor: ImageInfo,
    pub positive: ImageInfo,
    pub negative: ImageInfo,
}

/// What the dataset worker reads once.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub root: PathBuf,
    pub summary: SplitSummary,
    /// Training triplets (the sampler's first epoch, capped).
    pub triplets: Vec<TripletRow>,
    /// Test consumer images: the standard protocol's queries.
    pub queries: Vec<ImageInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Loadable<T> {
    Loading,
    Ready(T),
    Failed(String),
}
