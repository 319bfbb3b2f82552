mod common;

use vitrine::data::deepfashion::BBox;
use vitrine::data::loader::{
    IMAGENET_MEAN, IMAGENET_STD, ImageSpec, LoaderConfig, Prefetcher, load_batch, load_image,
};

fn cfg(size: u32) -> LoaderConfig {
    LoaderConfig {
        size,
        crop: true,
        workers: 2,
        prefetch: 2,
        max_pixels: 1_000_000,
    }
}

fn two_tone(path: &std::path::Path) {
    // Left half red, right half blue (PNG: lossless).
    let img = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    img.save(path).expect("save");
}

#[test]
fn output_is_chw_and_imagenet_normalised() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("a.png");
    two_tone(&p);
    let spec = ImageSpec {
        path: p.clone(),
        bbox: Some(BBox {
            x1: 20,
            y1: 0,
            x2: 40,
            y2: 20,
        }),
    };
    let v = load_image(&spec, &cfg(8)).expect("load");
    assert_eq!(v.len(), 3 * 8 * 8);
    let blue = [0.0f32, 0.0, 1.0];
    for c in 0..3 {
        let want = (blue[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        for x in &v[c * 64..(c + 1) * 64] {
            assert!((x - want).abs() < 1e-3, "channel {c}: {x} vs {want}");
        }
    }
    // Without cropping the left half is red.
    let mut no_crop = cfg(8);
    no_crop.crop = false;
    let v = load_image(&spec, &no_crop).expect("load");
    let red0 = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
    assert!((v[0] - red0).abs() < 1e-3);
    assert!((v[7] - (0.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]).abs() < 1e-3);
}

#[test]
fn batches_are_member_major_and_drop_unreadable_groups() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut specs = Vec::new();
    for i in 0..9u8 {
        let p = tmp.path().join(format!("{i}.jpg"));
        common::write_jpeg(&p, 16, 16, image::Rgb([i * 25, 100, 200 - i * 20]));
        specs.push(ImageSpec {
            path: p,
            bbox: None,
        });
    }
    let bad = tmp.path().join("corrupt.jpg");
    std::fs::write(&bad, b"definitely not a jpeg").expect("write");
    let groups = vec![
        specs[0..3].to_vec(),
        vec![
            specs[3].clone(),
            ImageSpec {
                path: bad,
                bbox: None,
            },
            specs[4].clone(),
        ],
        specs[6..9].to_vec(),
    ];
    let batch = load_batch(&groups, &cfg(16));
    assert_eq!(batch.kept, vec![0, 2]);
    assert_eq!(batch.failed.len(), 1);
    assert!(batch.failed[0].to_string().contains("corrupt.jpg"));
    assert_eq!(batch.n, 6);
    assert_eq!(batch.dims(), (6, 3, 16, 16));
    let plane = 3 * 16 * 16;
    let single = |s: &ImageSpec| load_image(s, &cfg(16)).expect("load");
    // [anchors (groups 0, 2); positives; negatives]
    assert_eq!(&batch.data[0..plane], single(&specs[0]).as_slice());
    assert_eq!(&batch.data[plane..2 * plane], single(&specs[6]).as_slice());
    assert_eq!(
        &batch.data[2 * plane..3 * plane],
        single(&specs[1]).as_slice()
    );
    assert_eq!(
        &batch.data[5 * plane..6 * plane],
        single(&specs[8]).as_slice()
    );

    let batches = vec![groups.clone(), groups[..1].to_vec(), groups[2..].to_vec()];
    let sizes: Vec<usize> = Prefetcher::spawn(batches, cfg(16))
        .expect("spawn")
        .map(|b| b.n)
        .collect();
    assert_eq!(sizes, vec![6, 3, 3]);
}

#[test]
fn augmentation_is_seeded_and_absent_without_a_seed() {
    use vitrine::data::augment::AugmentConfig;
    use vitrine::data::loader::load_batch_with;
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("a.png");
    // A picture with structure in every direction and colour.
    image::RgbImage::from_fn(48, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 251) as u8])
    })
    .save(&p)
    .expect("save");
    let groups = vec![
        vec![ImageSpec {
            path: p.clone(),
            bbox: None,
        }];
        4
    ];
    let aug = AugmentConfig {
        flip: 0.5,
        ..AugmentConfig::default()
    };
    let plain = load_batch(&groups, &cfg(16));
    let a = load_batch_with(&groups, &cfg(16), Some((aug, 7)));
    let b = load_batch_with(&groups, &cfg(16), Some((aug, 7)));
    let c = load_batch_with(&groups, &cfg(16), Some((aug, 8)));
    assert_eq!(a.data, b.data, "same seed, same images");
    assert_ne!(a.data, c.data, "another seed, other images");
    assert_ne!(a.data, plain.data);
    // The four copies of one file differ from each other (one stream per image)…
    let one = 3 * 16 * 16;
    assert_ne!(a.data[..one], a.data[one..2 * one]);
    // …and without a seed every copy is the plain image, exactly as load_image gives.
    let single = load_image(&groups[0][0], &cfg(16)).expect("load");
    for copy in plain.data.chunks(one) {
        assert_eq!(copy, single.as_slice());
    }
    // The decode threads do not change the result.
    let one_thread = LoaderConfig {
        workers: 1,
        ..cfg(16)
    };
    let batches: Vec<_> =
        Prefetcher::spawn_augmented(vec![(groups.clone(), Some(7))], one_thread, aug)
            .expect("prefetch")
            .collect();
    assert_eq!(batches[0].data, a.data);
    // Disabled augmentation is the plain image even with a seed.
    let off = AugmentConfig {
        enabled: false,
        ..aug
    };
    assert_eq!(
        load_batch_with(&groups, &cfg(16), Some((off, 7))).data,
        plain.data
    );
}

#[test]
fn images_over_the_pixel_limit_are_unreadable_not_decoded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 3000 × 3000 grey: 9 MP, a few kB as PNG, 27 MB once RGB.
    let big = tmp.path().join("big.png");
    image::GrayImage::new(3000, 3000).save(&big).expect("save");
    let small = tmp.path().join("small.png");
    two_tone(&small);
    let spec = |p: &std::path::Path| ImageSpec {
        path: p.to_path_buf(),
        bbox: None,
    };
    let err = load_image(&spec(&big), &cfg(8)).expect_err("over the limit");
    let msg = err.to_string();
    assert!(msg.contains("big.png"), "{msg}");
    assert!(load_image(&spec(&small), &cfg(8)).is_ok());
    // In a batch it is one failed group, the rest is kept.
    let batch = load_batch(&[vec![spec(&small)], vec![spec(&big)]], &cfg(8));
    assert_eq!(batch.kept, vec![0]);
    assert_eq!(batch.failed.len(), 1);
    // A limit that admits it decodes it.
    let roomy = LoaderConfig {
        max_pixels: 10_000_000,
        ..cfg(8)
    };
    assert!(load_image(&spec(&big), &roomy).is_ok());
}

#[test]
#[allow(unsafe_code)]
fn a_decoder_that_panics_makes_one_image_unreadable_not_a_short_batch() {
    use vitrine::data::loader::FAULT_PANIC_ENV;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ok = tmp.path().join("fine.png");
    let bad = tmp.path().join("crash-me-4242.png");
    two_tone(&ok);
    two_tone(&bad);
    // SAFETY: only this test reads or writes the variable, and no other test's
    // paths contain its value.
    unsafe { std::env::set_var(FAULT_PANIC_ENV, "crash-me-4242") };
    let spec = |p: &std::path::Path| {
        vec![ImageSpec {
            path: p.to_path_buf(),
            bbox: None,
        }]
    };
    let groups = vec![spec(&ok), spec(&bad), spec(&ok)];
    let batch = load_batch(&groups, &cfg(8));
    assert_eq!(batch.kept, vec![0, 2]);
    assert_eq!(batch.failed.len(), 1);
    let msg = batch.failed[0].to_string();
    assert!(
        msg.contains("crash-me-4242") && msg.contains("crashed"),
        "{msg}"
    );
    // Through the prefetch thread: every batch arrives and the run is complete.
    let mut p = Prefetcher::spawn(vec![groups.clone(), groups], cfg(8)).expect("spawn");
    let got: Vec<_> = p.by_ref().collect();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|b| b.kept == vec![0, 2]));
    p.finish().expect("complete");
    unsafe { std::env::remove_var(FAULT_PANIC_ENV) };
}
