//! The original's triplet recipe: anchor = consumer image, positive = a shop image of
//! the same item, negative = a shop image of the **same small category, another
//! item** (a hard negative). When a small category has a single item the negative
//! falls back to the same big category, then to any other item; fallbacks are counted.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::deepfashion::{Dataset, Split};
use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum TripletError {
    #[error("the {split} split has no pairs: nothing to sample triplets from")]
    NoPairs { split: Split },
    #[error("the {split} split has a single item: a negative needs another item")]
    SingleItem { split: Split },
}

/// Image indices into `Dataset::images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

/// How many negatives had to leave the anchor's small category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallbacks {
    pub same_big: usize,
    pub any: usize,
}

#[derive(Debug, Clone)]
pub struct Epoch {
    pub triplets: Vec<Triplet>,
    pub fallbacks: Fallbacks,
}

/// Seeded sampler over one split; `epoch(e)` is a pure function of `(seed, e)`, so a
/// resumed run replays the same order and skips to its position.
#[derive(Debug, Clone)]
pub struct TripletSampler {
    seed: u64,
    /// (consumer, shop, item, small category) per pair of the split.
    pairs: Vec<(usize, usize, usize, usize)>,
    /// Shop images as (item, image), per small category and per big category.
    by_small: HashMap<usize, Vec<(usize, usize)>>,
    by_big: HashMap<String, Vec<(usize, usize)>>,
    all_shop: Vec<(usize, usize)>,
    big_of: Vec<String>,
}

impl TripletSampler {
    pub fn new(ds: &Dataset, split: Split, seed: u64) -> Result<Self, TripletError> {
        let pairs: Vec<_> = ds
            .pairs
            .iter()
            .filter(|p| p.split == split)
            .map(|p| (p.consumer, p.shop, p.item, ds.items[p.item].category))
            .collect();
        if pairs.is_empty() {
            return Err(TripletError::NoPairs { split });
        }
        let mut by_small: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        let mut by_big: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut all_shop = Vec::new();
        for shop in ds.unique_images(&[split], super::deepfashion::Source::Shop) {
            let item = ds.images[shop].item;
            let cat = ds.items[item].category;
            by_small.entry(cat).or_default().push((item, shop));
            by_big
                .entry(ds.categories[cat].big.clone())
                .or_default()
                .push((item, shop));
            all_shop.push((item, shop));
        }
        let first_item = all_shop.first().map(|x| x.0);
        if all_shop.iter().all(|x| Some(x.0) == first_item) {
            return Err(TripletError::SingleItem { split });
        }
        let big_of = ds.categories.iter().map(|c| c.big.clone()).collect();
        Ok(Self {
            seed,
            pairs,
            by_small,
            by_big,
            all_shop,
            big_of,
        })
    }

    /// Triplets per epoch: one per pair of the split.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn epoch(&self, epoch: u64) -> Epoch {
        let mut rng = Rng::derive(self.seed, &[epoch, 0x7e1]);
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        rng.shuffle(&mut order);
        let mut fallbacks = Fallbacks::default();
        let triplets = order
            .into_iter()
            .map(|i| {
                let (anchor, positive, item, cat) = self.pairs[i];
                let negative = if let Some(n) = pick_other(&mut rng, &self.by_small[&cat], item) {
                    n
                } else if let Some(n) = pick_other(&mut rng, &self.by_big[&self.big_of[cat]], item)
                {
                    fallbacks.same_big += 1;
                    n
                } else {
                    fallbacks.any += 1;
                    // `new` guarantees a second item exists.
                    pick_other(&mut rng, &self.all_shop, item).unwrap_or(positive)
                };
                Triplet {
                    anchor,
                    positive,
                    negative,
                }
            })
            .collect();
        Epoch {
            triplets,
            fallbacks,
        }
    }
}

/// A uniformly chosen image of `pool` whose item is not `item`.
fn pick_other(rng: &mut Rng, pool: &[(usize, usize)], item: usize) -> Option<usize> {
    // Rejection first: the anchor's own item is a small share of any pool.
    for _ in 0..16 {
        let (it, img) = *rng.pick(pool);
        if it != item {
            return Some(img);
        }
    }
    let others: Vec<usize> = pool
        .iter()
        .filter(|(it, _)| *it != item)
        .map(|(_, img)| *img)
        .collect();
    (!others.is_empty()).then(|| *rng.pick(&others))
}
