//! P×K batches: sizes, items, consumer/shop mix, category grouping, determinism.

mod common;

use std::collections::{HashMap, HashSet};

use vitrine::data::deepfashion::{Dataset, LoadOptions, Source, Split};
use vitrine::data::sampler::{BatchSampler, PkConfig, PkSampler, classes};
use vitrine::data::triplets::TripletSampler;

fn synth() -> Dataset {
    let root = common::synth_dataset(120, 32);
    Dataset::open(&root, LoadOptions::default()).expect("open")
}

const CFG: PkConfig = PkConfig {
    items: 8,
    images: 4,
    per_category: 2,
};

#[test]
fn pk_batches_hold_p_items_of_k_images_each() {
    let ds = synth();
    let sampler = PkSampler::new(&ds, Split::Train, 5, CFG).expect("sampler");
    let train_images: HashSet<usize> = [Source::Consumer, Source::Shop]
        .iter()
        .flat_map(|&s| ds.unique_images(&[Split::Train], s))
        .collect();
    let pairs = ds.pairs.iter().filter(|p| p.split == Split::Train).count();
    assert_eq!(sampler.items(), classes(&ds, Split::Train).len());
    // Both images of every pair once on average, every item at least once.
    let want = (sampler.items() / 8).max(2 * pairs / 32);
    assert_eq!(sampler.batches_per_epoch(), want);
    let mut seen_items = HashSet::new();
    let mut same_category_pairs = 0;
    for epoch in 0..3 {
        let batches = sampler.epoch(epoch);
        assert_eq!(batches.len(), want);
        for batch in &batches {
            assert_eq!(batch.len(), 8 * 4);
            // Items come in runs of K adjacent images; P distinct items per batch.
            let items: Vec<usize> = batch
                .chunks(4)
                .map(|run| {
                    let item = ds.images[run[0]].item;
                    assert!(run.iter().all(|&i| ds.images[i].item == item));
                    item
                })
                .collect();
            assert_eq!(items.iter().collect::<HashSet<_>>().len(), 8, "{items:?}");
            for run in batch.chunks(4) {
                assert!(run.iter().all(|i| train_images.contains(i)));
                let consumer = run
                    .iter()
                    .filter(|&&i| ds.images[i].source == Source::Consumer)
                    .count();
                // Half consumer, half shop, where the item has both.
                assert_eq!(consumer, 2, "{run:?}");
            }
            // Items are dealt two at a time from one small category.
            let cat = |item: usize| ds.items[item].category;
            same_category_pairs += items
                .chunks(2)
                .filter(|pair| pair.len() == 2 && cat(pair[0]) == cat(pair[1]))
                .count();
            seen_items.extend(items);
        }
    }
    assert_eq!(seen_items.len(), sampler.items(), "every item gets drawn");
    assert!(
        same_category_pairs * 10 >= 3 * want * 4 * 8,
        "most dealt pairs share a category: {same_category_pairs}"
    );
}

#[test]
fn pk_epochs_are_seeded_and_differ() {
    let ds = synth();
    let a = PkSampler::new(&ds, Split::Train, 5, CFG).expect("a");
    let b = PkSampler::new(&ds, Split::Train, 5, CFG).expect("b");
    let c = PkSampler::new(&ds, Split::Train, 6, CFG).expect("c");
    assert_eq!(a.epoch(2), b.epoch(2));
    assert_ne!(a.epoch(2), a.epoch(3));
    assert_ne!(a.epoch(2), c.epoch(2));
}

#[test]
fn a_split_smaller_than_one_batch_gives_one_short_batch() {
    let ds = synth();
    let big = PkConfig { items: 1000, ..CFG };
    let sampler = PkSampler::new(&ds, Split::Val, 1, big).expect("sampler");
    let batches = sampler.epoch(0);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].len(), sampler.items() * 4);
    // Triplet batches too: one batch of every triplet rather than none.
    let triplets = BatchSampler::Triplets {
        sampler: TripletSampler::new(&ds, Split::Val, 1).expect("triplets"),
        batch: 10_000,
    };
    let epoch = triplets.epoch(0);
    assert_eq!(epoch.len(), 1);
    assert!(epoch[0].iter().all(|g| g.len() == 3));
}

#[test]
fn items_with_one_kind_of_image_repeat_it() {
    let (_tmp, root) = common::materialize_fixture();
    let ds = Dataset::open(&root, LoadOptions::default()).expect("open");
    let sampler = PkSampler::new(&ds, Split::Train, 1, CFG).expect("sampler");
    for batch in sampler.epoch(0) {
        let mut per_item: HashMap<usize, usize> = HashMap::new();
        for &i in &batch {
            *per_item.entry(ds.images[i].item).or_default() += 1;
        }
        assert!(per_item.values().all(|&n| n == 4), "{per_item:?}");
    }
}
