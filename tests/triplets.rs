mod common;

use std::collections::HashSet;

use vitrine::data::deepfashion::{Dataset, LoadOptions, Split};
use vitrine::data::triplets::{TripletError, TripletSampler};

#[test]
fn negatives_are_hard_and_fallbacks_counted() {
    let (_tmp, root) = common::materialize_fixture();
    let ds = Dataset::open(&root, LoadOptions::default()).expect("open");
    let sampler = TripletSampler::new(&ds, Split::Train, 3).expect("sampler");
    assert_eq!(sampler.len(), 5);
    for e in 0..20 {
        let epoch = sampler.epoch(e);
        assert_eq!(epoch.triplets.len(), 5);
        // One pass over the training pairs: a permutation of them.
        let got: HashSet<(usize, usize)> = epoch
            .triplets
            .iter()
            .map(|t| (t.anchor, t.positive))
            .collect();
        let want: HashSet<(usize, usize)> = ds
            .pairs
            .iter()
            .filter(|p| p.split == Split::Train)
            .map(|p| (p.consumer, p.shop))
            .collect();
        assert_eq!(got, want);
        for t in &epoch.triplets {
            let a = &ds.images[t.anchor];
            let n = &ds.images[t.negative];
            assert_ne!(a.item, n.item, "negative must be another item");
            assert_eq!(ds.items[n.item].split, Split::Train);
            assert!(n.path.contains("/shop_"), "negatives are shop images");
            let (ca, cn) = (
                ds.category_of_image(t.anchor),
                ds.category_of_image(t.negative),
            );
            if ca.small == "T_Shirt" {
                assert_eq!(cn.small, "T_Shirt", "a same-small-category item exists");
            } else {
                // Blouse has a single item: falls back to the same big category.
                assert_eq!(cn.big, ca.big);
            }
        }
        assert_eq!(epoch.fallbacks.same_big, 2);
        assert_eq!(epoch.fallbacks.any, 0);
    }
    assert_eq!(
        sampler.epoch(4).triplets,
        sampler.epoch(4).triplets,
        "seeded"
    );
    let orders: HashSet<Vec<usize>> = (0..10)
        .map(|e| sampler.epoch(e).triplets.iter().map(|t| t.anchor).collect())
        .collect();
    assert!(orders.len() > 1, "epochs are shuffled differently");
}

#[test]
fn a_split_with_one_item_cannot_give_negatives() {
    let (_tmp, root) = common::materialize_fixture();
    let mut ds = Dataset::open(&root, LoadOptions::default()).expect("open");
    ds.pairs
        .retain(|p| p.split != Split::Test || ds.items[p.item].id == "id_00000005");
    assert!(matches!(
        TripletSampler::new(&ds, Split::Test, 0),
        Err(TripletError::SingleItem { .. })
    ));
}

#[test]
fn on_the_synthetic_set_every_negative_is_a_same_small_category_shop_image() {
    let root = common::synth_dataset(60, 64);
    let ds = Dataset::open(&root, LoadOptions::default()).expect("open");
    let sampler = TripletSampler::new(&ds, Split::Train, 9).expect("sampler");
    for e in 0..3 {
        let epoch = sampler.epoch(e);
        assert_eq!(epoch.fallbacks.same_big + epoch.fallbacks.any, 0);
        for t in &epoch.triplets {
            let (a, p, n) = (
                &ds.images[t.anchor],
                &ds.images[t.positive],
                &ds.images[t.negative],
            );
            assert_eq!(a.item, p.item);
            assert_ne!(a.item, n.item);
            assert_eq!(
                ds.category_of_image(t.anchor),
                ds.category_of_image(t.negative)
            );
            assert_eq!(n.source, vitrine::data::deepfashion::Source::Shop);
            assert_eq!(a.source, vitrine::data::deepfashion::Source::Consumer);
        }
    }
}
