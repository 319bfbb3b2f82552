//! Item planning: the category, split and image counts of every item, and the keys of
//! the random streams that items and images draw from.

use crate::data::deepfashion::Split;
use crate::rng::Rng;

use super::{CATEGORIES, SynthOptions, categories_for, split_counts};

/// Keys of the derived random streams: `Rng::derive(seed, &[item, image_no, kind])`.
pub(super) const KIND_GARMENT: u64 = 0;
pub(super) const KIND_SHOP: u64 = 1;
pub(super) const KIND_CONSUMER: u64 = 2;
const KIND_COUNTS: u64 = 3;
const KIND_SPLIT: u64 = 4;

#[derive(Debug, Clone)]
pub(super) struct ItemPlan {
    /// 1-based item id.
    pub(super) id: usize,
    pub(super) category: usize,
    pub(super) split: Split,
    pub(super) shops: usize,
    pub(super) consumers: usize,
}

impl ItemPlan {
    pub(super) fn dir(&self) -> String {
        let c = CATEGORIES[self.category];
        format!("img/{}/{}/{}", c.big, c.small, item_name(self.id))
    }
}

pub(super) fn item_name(id: usize) -> String {
    format!("id_{id:08}")
}

/// Items in contiguous id blocks per category, splits stratified per category.
pub(super) fn plan_items(opts: &SynthOptions) -> Vec<ItemPlan> {
    let k = categories_for(opts.items).len();
    let mut plans = Vec::with_capacity(opts.items);
    for c in 0..k {
        let n = opts.items / k + usize::from(c < opts.items % k);
        let mut rank: Vec<usize> = (0..n).collect();
        Rng::derive(opts.seed, &[u64::MAX, c as u64, KIND_SPLIT]).shuffle(&mut rank);
        let (train, val, _) = split_counts(n);
        for r in rank {
            let id = plans.len() + 1;
            let split = if r < train {
                Split::Train
            } else if r < train + val {
                Split::Val
            } else {
                Split::Test
            };
            let mut rng = Rng::derive(opts.seed, &[id as u64, 0, KIND_COUNTS]);
            let shops = 1 + usize::from(rng.chance(0.5));
            let consumers = rng.range_usize(1, 3);
            plans.push(ItemPlan {
                id,
                category: c,
                split,
                shops,
                consumers,
            });
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(items: usize, seed: u64) -> SynthOptions {
        SynthOptions {
            items,
            size: 64,
            seed,
        }
    }

    #[test]
    fn plans_are_stratified_balanced_and_seeded() {
        for items in [12, 13, 24, 29, 30, 31, 101, 400] {
            let plans = plan_items(&opts(items, 9));
            assert_eq!(plans.len(), items);
            let k = categories_for(items).len();
            let mut count = vec![[0usize; 3]; k];
            for (i, p) in plans.iter().enumerate() {
                assert_eq!(p.id, i + 1);
                assert!((1..=2).contains(&p.shops) && (1..=3).contains(&p.consumers));
                let s = Split::ALL.iter().position(|s| *s == p.split).unwrap_or(9);
                count[p.category][s] += 1;
            }
            let sizes: Vec<usize> = count.iter().map(|c| c.iter().sum()).collect();
            let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                "{items}: {sizes:?}"
            );
            for (c, per) in count.iter().enumerate() {
                assert!(
                    per.iter().all(|n| *n >= 1),
                    "{items} items, category {c}: {per:?}"
                );
                assert_eq!(split_counts(sizes[c]), (per[0], per[1], per[2]));
            }
        }
        let a: Vec<Split> = plan_items(&opts(400, 1)).iter().map(|p| p.split).collect();
        let b: Vec<Split> = plan_items(&opts(400, 2)).iter().map(|p| p.split).collect();
        let same: Vec<Split> = plan_items(&opts(400, 1)).iter().map(|p| p.split).collect();
        assert_eq!(a, same);
        assert_ne!(a, b);
    }
}
