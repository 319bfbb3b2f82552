//! `vitrine synth` writes exactly the DeepFashion Consumer-to-shop layout, deterministically,
//! with a real domain shift between consumer and shop images.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use vitrine::data::deepfashion::{Dataset, LoadOptions};
use vitrine::data::synth::{
    BIG_CATEGORIES, CATEGORIES, MARKER_FILE, SynthError, SynthOptions, SynthReport, categories_for,
    generate,
};

const SIZE: u32 = 64;

fn opts(seed: u64) -> SynthOptions {
    SynthOptions {
        items: 24,
        size: SIZE,
        seed,
    }
}

fn make(opts: &SynthOptions, dir: &Path) -> SynthReport {
    generate(opts, dir, &|_, _| {}).expect("generate")
}

/// `(declared count, header line, rows split on spaces)` of a list file.
fn read_list(path: &Path) -> (usize, String, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).expect("read list");
    assert!(
        text.ends_with('\n'),
        "{} ends with a newline",
        path.display()
    );
    let mut lines = text.lines();
    let count = lines
        .next()
        .expect("count")
        .parse()
        .expect("count is a number");
    let header = lines.next().expect("header").to_string();
    let rows = lines
        .map(|l| {
            assert_eq!(l, l.trim(), "no stray whitespace");
            l.split(' ').map(str::to_string).collect()
        })
        .collect();
    (count, header, rows)
}

/// Every file under `root`, relative path (with `/`) to bytes.
fn all_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("prefix");
                let rel: Vec<_> = rel
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                out.insert(rel.join("/"), std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Checks `img/<BIG>/<Small>/id_XXXXXXXX/<prefix>NN.jpg` and returns (big, small, item).
fn image_parts(path: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    assert_eq!(parts.len(), 5, "{path}");
    assert_eq!(parts[0], "img");
    let id = parts[3];
    assert!(
        id.len() == 11 && id.starts_with("id_") && id[3..].bytes().all(|b| b.is_ascii_digit()),
        "{path}"
    );
    let file = parts[4];
    let nn = file
        .strip_prefix("comsumer_")
        .or_else(|| file.strip_prefix("shop_"))
        .and_then(|f| f.strip_suffix(".jpg"))
        .unwrap_or_else(|| panic!("bad file name {path}"));
    assert!(nn.len() == 2 && nn.bytes().all(|b| b.is_ascii_digit()) && nn != "00");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        id.to_string(),
        file.to_string(),
    )
}

fn pixels(path: &Path) -> Vec<f32> {
    let img = image::open(path).expect("decode").to_rgb8();
    assert_eq!(img.dimensions(), (SIZE, SIZE), "{}", path.display());
    img.as_raw().iter().map(|v| f32::from(*v) / 255.0).collect()
}

fn mad(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn writes_the_deepfashion_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ds");
    let calls = Mutex::new(Vec::new());
    let report = generate(&opts(5), &root, &|done, total| {
        calls.lock().expect("lock").push((done, total));
    })
    .expect("generate");
    let calls = calls.into_inner().expect("lock");
    assert_eq!(calls.len(), 25, "one call up front and one per item");
    assert!(calls.iter().all(|&(d, t)| t == 24 && d <= 24));
    assert_eq!(calls.iter().map(|c| c.0).max(), Some(24));
    assert_eq!(report.items, 24);

    // Eval/list_eval_partition.txt
    let (count, header, rows) = read_list(&root.join("Eval/list_eval_partition.txt"));
    assert_eq!(
        header,
        "image_pair_name_1 image_pair_name_2 item_id evaluation_status"
    );
    assert_eq!(count, rows.len());
    assert_eq!(count, report.pairs);
    let mut item_split: HashMap<String, String> = HashMap::new();
    let mut item_cat: HashMap<String, (String, String)> = HashMap::new();
    let mut item_pairs: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r.len(), 4, "{r:?}");
        let (cb, cs, cid, cfile) = image_parts(&r[0]);
        let (sb, ss, sid, sfile) = image_parts(&r[1]);
        assert!(cfile.starts_with("comsumer_") && sfile.starts_with("shop_"));
        assert_eq!((&cb, &cs, &cid), (&sb, &ss, &sid));
        assert_eq!(cid, r[2]);
        assert!(["train", "val", "test"].contains(&r[3].as_str()), "{r:?}");
        let prev = item_split.insert(r[2].clone(), r[3].clone());
        assert!(
            prev.is_none_or(|p| p == r[3]),
            "item {} crosses splits",
            r[2]
        );
        item_cat.insert(r[2].clone(), (cb, cs));
        item_pairs
            .entry(r[2].clone())
            .or_default()
            .insert((r[0].clone(), r[1].clone()));
    }
    // One row per (consumer, shop) combination of an item, each once.
    for (item, pairs) in &item_pairs {
        let cons: BTreeSet<_> = pairs.iter().map(|p| p.0.clone()).collect();
        let shops: BTreeSet<_> = pairs.iter().map(|p| p.1.clone()).collect();
        assert!(
            (1..=3).contains(&cons.len()),
            "{item}: {} consumer",
            cons.len()
        );
        assert!(
            (1..=2).contains(&shops.len()),
            "{item}: {} shop",
            shops.len()
        );
        assert_eq!(pairs.len(), cons.len() * shops.len(), "{item}");
    }
    assert_eq!(
        rows.len(),
        item_pairs.values().map(BTreeSet::len).sum::<usize>()
    );

    // Items: ids 1..=24, spread over the used categories, stratified splits.
    let ids: Vec<String> = (1..=24).map(|i| format!("id_{i:08}")).collect();
    assert_eq!(item_pairs.keys().cloned().collect::<Vec<_>>(), ids);
    let used = categories_for(24);
    assert_eq!(used.len(), 8);
    let mut per_cat: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    for (item, split) in &item_split {
        *per_cat
            .entry(item_cat[item].clone())
            .or_default()
            .entry(split.clone())
            .or_default() += 1;
    }
    assert_eq!(per_cat.len(), used.len());
    for c in used {
        let splits = &per_cat[&(c.big.to_string(), c.small.to_string())];
        assert_eq!(splits.len(), 3, "{} is in every split: {splits:?}", c.small);
        assert_eq!(splits.values().sum::<usize>(), 3);
    }
    let mut split_items: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (item, split) in &item_split {
        assert!(split_items.entry(split).or_default().insert(item));
    }
    let total: usize = split_items.values().map(BTreeSet::len).sum();
    assert_eq!(total, 24, "every item in exactly one split");

    // Anno/list_bbox_consumer2shop.txt
    let (count, header, boxes) = read_list(&root.join("Anno/list_bbox_consumer2shop.txt"));
    assert_eq!(
        header,
        "image_name clothes_type source_type x_1 y_1 x_2 y_2"
    );
    assert_eq!(count, boxes.len());
    assert_eq!(count, report.consumer_images + report.shop_images);
    let listed: BTreeSet<String> = item_pairs
        .values()
        .flat_map(|ps| ps.iter().flat_map(|(c, s)| [c.clone(), s.clone()]))
        .collect();
    let boxed: BTreeSet<String> = boxes.iter().map(|b| b[0].clone()).collect();
    assert_eq!(boxed.len(), boxes.len(), "one box per image");
    assert_eq!(boxed, listed);
    let mut consumer = 0;
    for b in &boxes {
        assert_eq!(b.len(), 7, "{b:?}");
        let (big, _, _, file) = image_parts(&b[0]);
        let want_type = match big.as_str() {
            "TOPS" => "1",
            "TROUSERS" => "2",
            "DRESSES" => "3",
            other => panic!("unknown big category {other}"),
        };
        assert_eq!(b[1], want_type, "{b:?}");
        let is_consumer = file.starts_with("comsumer_");
        consumer += usize::from(is_consumer);
        assert_eq!(b[2], if is_consumer { "2" } else { "1" }, "{b:?}");
        let v: Vec<u32> = b[3..].iter().map(|x| x.parse().expect("int")).collect();
        assert!(v[0] < v[2] && v[1] < v[3], "{b:?}");
        assert!(v[2] <= SIZE && v[3] <= SIZE, "{b:?}");
        if !is_consumer {
            // Shop images are centred with a margin and fill most of the frame.
            assert!(v[0] > 0 && v[1] > 0 && v[2] < SIZE && v[3] < SIZE, "{b:?}");
            assert!((v[2] - v[0]).max(v[3] - v[1]) >= SIZE * 3 / 4, "{b:?}");
        }
        let px = pixels(&root.join(&b[0]));
        assert_eq!(px.len(), (SIZE * SIZE * 3) as usize);
    }
    assert_eq!(consumer, report.consumer_images);

    // Anno/list_item_consumer2shop.txt
    let (count, header, items) = read_list(&root.join("Anno/list_item_consumer2shop.txt"));
    assert_eq!(header, "item_id");
    assert_eq!(count, 24);
    assert_eq!(items.iter().map(|r| r.join(" ")).collect::<Vec<_>>(), ids);

    // Nothing else on disk: exactly the listed images, the three lists and the marker.
    let files: BTreeSet<String> = all_files(&root).into_keys().collect();
    let mut want = listed.clone();
    for f in [
        MARKER_FILE,
        "Eval/list_eval_partition.txt",
        "Anno/list_bbox_consumer2shop.txt",
        "Anno/list_item_consumer2shop.txt",
    ] {
        want.insert(f.to_string());
    }
    assert_eq!(files, want);

    // The crate's own parser reads it without complaint.
    let ds = Dataset::open(
        &root,
        LoadOptions {
            strict: true,
            skip_file_check: false,
        },
    )
    .expect("parse");
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    assert_eq!(ds.pairs.len(), report.pairs);
    assert_eq!(ds.items.len(), 24);
    assert_eq!(ds.images.len(), boxes.len());
    assert!(ds.images.iter().all(|e| e.bbox.is_some()));
}

#[test]
fn same_seed_same_bytes_and_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    make(&opts(3), &a);
    make(&opts(3), &b);
    let fa = all_files(&a);
    assert!(!fa.is_empty());
    assert!(fa == all_files(&b), "same seed, same bytes");

    make(&opts(4), &c);
    let fc = all_files(&c);
    assert_ne!(
        fa["Eval/list_eval_partition.txt"],
        fc["Eval/list_eval_partition.txt"]
    );
    let common: Vec<&String> = fa.keys().filter(|k| fc.contains_key(*k)).collect();
    let differ = common.iter().filter(|k| fa[**k] != fc[**k]).count();
    assert!(
        differ * 10 >= common.len() * 9,
        "{differ} of {}",
        common.len()
    );

    // Regenerating over another run's files gives the same bytes (and no leftovers).
    make(&opts(4), &a);
    make(&opts(3), &a);
    assert!(fa == all_files(&a), "overwrite reproduces the run");
}

#[test]
fn consumer_images_are_shifted_from_shop_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    make(&opts(11), root);
    let (_, _, rows) = read_list(&root.join("Eval/list_eval_partition.txt"));
    let mut shops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut consumers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows {
        consumers
            .entry(r[2].clone())
            .or_default()
            .insert(r[0].clone());
        shops.entry(r[2].clone()).or_default().insert(r[1].clone());
    }
    let (mut shop_shop, mut cons_shop) = (Vec::new(), Vec::new());
    for (item, s) in &shops {
        let s: Vec<Vec<f32>> = s.iter().map(|p| pixels(&root.join(p))).collect();
        if s.len() == 2 {
            shop_shop.push(mad(&s[0], &s[1]));
        }
        for c in &consumers[item] {
            cons_shop.push(mad(&pixels(&root.join(c)), &s[0]));
        }
    }
    assert!(!shop_shop.is_empty());
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (ss, cs) = (mean(&shop_shop), mean(&cons_shop));
    assert!(cs > 0.12, "consumer vs shop differ by {cs}");
    assert!(cs > 3.0 * ss, "consumer vs shop {cs}, shop vs shop {ss}");
    assert!(ss > 0.0, "two shop images are not identical");
    // Every consumer image differs clearly from its shop image.
    let least = cons_shop.iter().copied().fold(f32::MAX, f32::min);
    assert!(
        least > 0.04,
        "closest consumer/shop pair differs by {least}"
    );
}

#[test]
fn rejects_invalid_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("never");
    for bad in [
        SynthOptions {
            items: 11,
            ..opts(1)
        },
        SynthOptions {
            size: 31,
            ..opts(1)
        },
        SynthOptions {
            items: 0,
            ..opts(1)
        },
    ] {
        let err = generate(&bad, &out, &|_, _| {}).expect_err("invalid");
        assert!(matches!(err, SynthError::InvalidOptions(_)), "{err}");
    }
    assert!(!out.exists());
    let d = SynthOptions::default();
    assert_eq!((d.items, d.size, d.seed), (400, 128, 7));
}

#[test]
fn category_table_covers_the_big_categories() {
    assert_eq!(BIG_CATEGORIES, ["DRESSES", "TOPS", "TROUSERS"]);
    let mut smalls = BTreeSet::new();
    for c in CATEGORIES {
        assert!(BIG_CATEGORIES.contains(&c.big));
        assert!(smalls.insert(c.small), "{} twice", c.small);
        let want = match c.big {
            "TOPS" => 1,
            "TROUSERS" => 2,
            _ => 3,
        };
        assert_eq!(c.clothes_type, want);
    }
    for n in [12, 13, 24, 29, 30, 400] {
        let used = categories_for(n);
        assert!(used.len() * 3 <= n);
        let bigs: BTreeSet<_> = used.iter().map(|c| c.big).collect();
        assert_eq!(bigs.len(), 3, "{n} items use every big category");
    }
    assert_eq!(categories_for(30).len(), CATEGORIES.len());
}

#[test]
fn io_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let err = generate(&opts(1), &blocker, &|_, _| {}).expect_err("out is a file");
    assert!(matches!(err, SynthError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&*blocker.to_string_lossy()),
        "{err}"
    );
}

/// A folder that is not empty and holds no marker: a real dataset, say.
fn foreign_dataset(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let img = root.join("img/TOPS/Blouse/id_00000001");
    std::fs::create_dir_all(&img).expect("mkdir");
    std::fs::create_dir_all(root.join("Eval")).expect("mkdir");
    std::fs::write(img.join("shop_01.jpg"), b"real photo").expect("write");
    std::fs::write(img.join("shop_07.jpg"), b"another").expect("write");
    std::fs::write(
        root.join("Eval/list_eval_partition.txt"),
        "1\nimage_pair_name_1 image_pair_name_2 item_id evaluation_status\n\
         img/TOPS/Blouse/id_00000001/comsumer_01.jpg img/TOPS/Blouse/id_00000001/shop_01.jpg id_00000001 train\n",
    )
    .expect("write");
    all_files(root)
}

#[test]
fn refuses_a_folder_it_did_not_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    let before = foreign_dataset(&real);
    let err = generate(&opts(1), &real, &|_, _| {}).expect_err("foreign folder");
    assert!(matches!(err, SynthError::NotOurs { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&*real.to_string_lossy()) && msg.contains("--out"),
        "{msg}"
    );
    assert!(before == all_files(&real), "nothing touched");
    // A lone stray file is enough to refuse.
    let stray = dir.path().join("stray");
    std::fs::create_dir_all(&stray).expect("mkdir");
    std::fs::write(stray.join("notes.txt"), b"mine").expect("write");
    let err = generate(&opts(1), &stray, &|_, _| {}).expect_err("stray file");
    assert!(matches!(err, SynthError::NotOurs { .. }), "{err}");
    // An empty folder is taken, and marked; regenerating into it is allowed.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    make(&opts(1), &empty);
    let marker = std::fs::read_to_string(empty.join(MARKER_FILE)).expect("marker");
    assert!(
        marker.contains("seed = 1") && marker.contains("items = 24"),
        "{marker}"
    );
    make(&opts(2), &empty);
}

#[test]
fn cli_synth_refuses_a_real_dataset_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    let before = foreign_dataset(&real);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["synth", "--items", "12", "--size", "32", "--out"])
        .arg(&real)
        .output()
        .expect("run vitrine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&*real.to_string_lossy()) && stderr.contains(MARKER_FILE),
        "{stderr}"
    );
    assert!(before == all_files(&real), "nothing touched");
    // Its own output is regenerated in place.
    let ours = dir.path().join("ours");
    for seed in ["1", "2"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args([
                "synth", "--items", "12", "--size", "32", "--seed", seed, "--out",
            ])
            .arg(&ours)
            .output()
            .expect("run vitrine");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `cargo test --release --test synth -- --ignored --nocapture speed`
#[test]
#[ignore = "timing: run by hand"]
fn speed_of_the_default_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = make(&SynthOptions::default(), dir.path());
    let images = report.consumer_images + report.shop_images;
    println!(
        "{} items, {images} images ({} consumer, {} shop), {} pairs in {:.2} s: {:.0} images/s",
        report.items,
        report.consumer_images,
        report.shop_images,
        report.pairs,
        report.seconds,
        images as f64 / report.seconds
    );
}
