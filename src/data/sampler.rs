//! Training batches. Two kinds:
//!
//! - **P×K** ([`PkSampler`]): P items × K images of each (consumer and shop mixed), the
//!   batch every in-batch loss needs — each image has K − 1 positives and (P − 1)·K
//!   negatives. Items are dealt `per_category` at a time from one small category, so a
//!   batch still holds the original's hard negatives (same category, other item) next
//!   to easy ones (Hermans et al. 2017; Wang et al. 2019).
//! - **Triplets** ([`TripletSampler`]): the original's anchor / positive / negative.
//!
//! Either is a pure function of `(seed, epoch)`, so a resumed run replays the same
//! batches and skips to its position.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::deepfashion::{Dataset, Source, Split};
use super::triplets::{TripletError, TripletSampler};
use crate::rng::Rng;

/// `train.sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Triplets for offline triplet loss, P×K for every other loss.
    #[default]
    Auto,
    Pk,
    Triplets,
}

impl SamplerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Pk => "pk",
            Self::Triplets => "triplets",
        }
    }
}

/// P×K settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkConfig {
    /// Items per batch (P).
    pub items: usize,
    /// Images per item (K): half consumer, half shop where the item has both.
    pub images: usize,
    /// Items taken together from one small category (1 = items drawn uniformly).
    pub per_category: usize,
}

#[derive(Debug, Clone)]
struct PkItem {
    category: usize,
    consumer: Vec<usize>,
    shop: Vec<usize>,
}

/// P×K batches over one split's items.
#[derive(Debug, Clone)]
pub struct PkSampler {
    seed: u64,
    cfg: PkConfig,
    items: Vec<PkItem>,
    /// Pairs of the split (an epoch covers each pair's two images once on average).
    pairs: usize,
}

impl PkSampler {
    /// Every item of `split` with at least one image in its pairs.
    pub fn new(ds: &Dataset, split: Split, seed: u64, cfg: PkConfig) -> Result<Self, TripletError> {
        let mut by_item: BTreeMap<usize, PkItem> = BTreeMap::new();
        for (source, images) in [
            (
                Source::Consumer,
                ds.unique_images(&[split], Source::Consumer),
            ),
            (Source::Shop, ds.unique_images(&[split], Source::Shop)),
        ] {
            for img in images {
                let item = ds.images[img].item;
                let entry = by_item.entry(item).or_insert_with(|| PkItem {
                    category: ds.items[item].category,
                    consumer: Vec::new(),
                    shop: Vec::new(),
                });
                match source {
                    Source::Consumer => entry.consumer.push(img),
                    Source::Shop => entry.shop.push(img),
                }
            }
        }
        let items: Vec<PkItem> = by_item.into_values().collect();
        if items.is_empty() {
            return Err(TripletError::NoPairs { split });
        }
        if items.len() < 2 {
            return Err(TripletError::SingleItem { split });
        }
        let pairs = ds.pairs.iter().filter(|p| p.split == split).count();
        Ok(Self {
            seed,
            cfg,
            items,
            pairs,
        })
    }

    /// Items in the split (the unit of `epoch_position`).
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Batches per epoch: as many as show the two images of every pair of the split
    /// once on average — the images a pass of the original's triplets covers, so
    /// `train.epochs` means the same amount of training with either sampler — and
    /// every item at least once (full batches of P; one smaller batch when the split
    /// has fewer than P items).
    pub fn batches_per_epoch(&self) -> usize {
        let by_items = self.items.len() / self.cfg.items;
        let by_pairs = 2 * self.pairs / (self.cfg.items * self.cfg.images);
        by_items.max(by_pairs).max(1)
    }

    /// The image indices of every batch of `epoch`, P·K each (fewer only when the split
    /// has fewer than P items); images of one item are adjacent, and no item appears
    /// twice in a batch.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = Rng::derive(self.seed, &[epoch, 0x9c5]);
        let p = self.cfg.items.min(self.items.len());
        let wanted = self.batches_per_epoch();
        let mut batches = Vec::with_capacity(wanted);
        // Rounds over all items until the epoch is full; a round's tail that cannot
        // fill a batch is dropped (the next round reshuffles).
        while batches.len() < wanted {
            let order = self.round(&mut rng);
            for batch in order.chunks_exact(p) {
                if batches.len() == wanted {
                    break;
                }
                batches.push(
                    batch
                        .iter()
                        .flat_map(|&i| self.draw(&self.items[i], &mut rng))
                        .collect(),
                );
            }
        }
        batches
    }

    /// Every item once: small categories shuffled inside, dealt in chunks of
    /// `per_category`, the chunks shuffled.
    fn round(&self, rng: &mut Rng) -> Vec<usize> {
        let mut by_cat: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, it) in self.items.iter().enumerate() {
            by_cat.entry(it.category).or_default().push(i);
        }
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        for mut members in by_cat.into_values() {
            rng.shuffle(&mut members);
            chunks.extend(members.chunks(self.cfg.per_category).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut chunks);
        chunks.into_iter().flatten().collect()
    }

    /// K images of one item: ⌈K/2⌉ consumer and the rest shop where it has both,
    /// without replacement until a side runs out (then repeating, augmentation makes
    /// the copies differ).
    fn draw(&self, it: &PkItem, rng: &mut Rng) -> Vec<usize> {
        let k = self.cfg.images;
        let (n_consumer, n_shop) = match (it.consumer.is_empty(), it.shop.is_empty()) {
            (false, false) => (k.div_ceil(2), k / 2),
            (false, true) => (k, 0),
            _ => (0, k),
        };
        let mut out = Vec::with_capacity(k);
        for (pool, n) in [(&it.consumer, n_consumer), (&it.shop, n_shop)] {
            let mut shuffled = pool.clone();
            rng.shuffle(&mut shuffled);
            out.extend(shuffled.iter().cycle().take(n));
        }
        out
    }
}

/// The items of `split` that have images in its pairs, in index order: class `c` of
/// the proxy losses is item `classes[c]`.
pub fn classes(ds: &Dataset, split: Split) -> Vec<usize> {
    let mut used = vec![false; ds.items.len()];
    for p in ds.pairs.iter().filter(|p| p.split == split) {
        used[p.item] = true;
    }
    (0..ds.items.len()).filter(|&i| used[i]).collect()
}

/// The sampler a run trains with; batches are lists of *groups* of images loaded
/// together (a triplet is a group of three, a P×K image a group of one).
#[derive(Debug, Clone)]
pub enum BatchSampler {
    /// The original's triplets, `batch` per step.
    Triplets {
        sampler: TripletSampler,
        batch: usize,
    },
    Pk(PkSampler),
}

impl BatchSampler {
    pub fn steps_per_epoch(&self) -> usize {
        match self {
            Self::Triplets { sampler, batch } => (sampler.len() / batch).max(1),
            Self::Pk(s) => s.batches_per_epoch(),
        }
    }

    /// Units (triplets or items) per epoch, and per step: `epoch_position` counts these.
    pub fn units_per_epoch(&self) -> usize {
        match self {
            Self::Triplets { sampler, .. } => sampler.len(),
            Self::Pk(s) => s.items(),
        }
    }

    pub fn units_per_step(&self) -> usize {
        match self {
            Self::Triplets { batch, .. } => *batch,
            Self::Pk(s) => s.cfg.items,
        }
    }

    /// What one unit is called in messages.
    pub fn unit(&self) -> &'static str {
        match self {
            Self::Triplets { .. } => "triplets",
            Self::Pk(_) => "items",
        }
    }

    /// Images per step (3 per triplet, P·K).
    pub fn images_per_step(&self) -> usize {
        match self {
            Self::Triplets { batch, .. } => 3 * batch,
            Self::Pk(s) => s.cfg.items * s.cfg.images,
        }
    }

    /// Every batch of `epoch` as groups of image indices. Triplet batches are full
    /// (a short tail is dropped) unless the split holds less than one batch.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<Vec<usize>>> {
        match self {
            Self::Triplets { sampler, batch } => {
                let triplets = sampler.epoch(epoch).triplets;
                let usable = if triplets.len() < *batch {
                    triplets.len()
                } else {
                    triplets.len() / batch * batch
                };
                triplets[..usable]
                    .chunks(*batch)
                    .map(|chunk| {
                        chunk
                            .iter()
                            .map(|t| vec![t.anchor, t.positive, t.negative])
                            .collect()
                    })
                    .collect()
            }
            Self::Pk(s) => s
                .epoch(epoch)
                .into_iter()
                .map(|batch| batch.into_iter().map(|img| vec![img]).collect())
                .collect(),
        }
    }
}
