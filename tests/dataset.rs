mod common;

use std::path::Path;

use vitrine::data::deepfashion::{
    BBox, Dataset, DatasetError, GalleryProtocol, LoadOptions, PARTITION_FILE, Split,
};

fn open(root: &Path) -> Result<Dataset, DatasetError> {
    Dataset::open(root, LoadOptions::default())
}

#[test]
fn parses_the_release_format_with_both_spellings() {
    let (_tmp, root) = common::materialize_fixture();
    let ds = open(&root).expect("open");
    let s = ds.summary(GalleryProtocol::Test);
    assert_eq!((s.pairs.train, s.pairs.val, s.pairs.test), (5, 2, 3));
    assert_eq!((s.items.train, s.items.val, s.items.test), (3, 2, 2));
    assert_eq!(
        (s.consumer.train, s.consumer.val, s.consumer.test),
        (4, 2, 3)
    );
    assert_eq!((s.shop.train, s.shop.val, s.shop.test), (4, 2, 2));
    assert_eq!(
        s.query, 3,
        "test consumer images, `consumer_` spelling included"
    );
    assert_eq!(s.gallery, 2, "test shop images, de-duplicated");
    assert_eq!(ds.summary(GalleryProtocol::ValTest).gallery, 4);
    assert_eq!(s.images, 17);
    assert_eq!(s.missing, 0);
    let cats: Vec<(&str, &str, usize)> = s
        .categories
        .iter()
        .map(|c| (c.big.as_str(), c.small.as_str(), c.items))
        .collect();
    assert_eq!(
        cats,
        vec![
            ("DRESSES", "Maxi_Dress", 2),
            ("TOPS", "Blouse", 1),
            ("TOPS", "T_Shirt", 2),
            ("TROUSERS", "Jeans", 2)
        ]
    );
    // Boxes attach to their images; a box for an unlisted image is only a warning.
    let c1 = ds
        .images
        .iter()
        .find(|e| e.path == "img/TOPS/T_Shirt/id_00000001/comsumer_01.jpg")
        .expect("image");
    assert_eq!(
        c1.bbox,
        Some(BBox {
            x1: 4,
            y1: 4,
            x2: 20,
            y2: 28
        })
    );
    assert!(ds.warnings.iter().any(|w| w.contains("1 boxes")));
    // Queries are consumer images of test; gallery images are shop images.
    for q in ds.queries(Split::Test) {
        assert_eq!(ds.items[ds.images[q].item].split, Split::Test);
        assert!(ds.images[q].path.contains("sumer_"));
    }
    let json = serde_json::to_value(&s).expect("json");
    for key in [
        "pairs",
        "items",
        "query",
        "gallery",
        "images",
        "missing",
        "categories",
    ] {
        assert!(json.get(key).is_some(), "splits JSON lacks `{key}`");
    }
    assert_eq!(json["pairs"]["train"], 5);
    assert_eq!(json["categories"][0]["big"], "DRESSES");
}

#[test]
fn missing_images_are_counted_or_an_error_when_strict() {
    let (_tmp, root) = common::materialize_fixture();
    std::fs::remove_file(root.join("img/TOPS/T_Shirt/id_00000001/shop_01.jpg")).expect("rm");
    let ds = open(&root).expect("lenient open");
    assert_eq!(ds.missing, 1);
    assert_eq!(
        ds.dropped_pairs, 2,
        "both pairs using the missing shop image"
    );
    assert_eq!(ds.pairs.len(), 8);
    let err = Dataset::open(
        &root,
        LoadOptions {
            strict: true,
            skip_file_check: false,
        },
    )
    .expect_err("strict");
    let msg = err.to_string();
    assert!(
        msg.contains("1 image files") && msg.contains("shop_01.jpg"),
        "{msg}"
    );
}

#[test]
fn a_folder_without_the_partition_file_is_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = open(tmp.path()).expect_err("not a dataset");
    let msg = err.to_string();
    assert!(
        msg.contains("list_eval_partition.txt") && msg.contains("vitrine synth"),
        "{msg}"
    );
}

/// Replaces line `line` (1-based) of `file` in a fresh fixture and returns the error.
fn error_after_edit(file: &str, line: usize, new: &str) -> String {
    let (_tmp, root) = common::materialize_fixture();
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[line - 1] = new.to_string();
    std::fs::write(&path, lines.join("\n")).expect("write");
    let err = open(&root).expect_err("malformed input must be an error");
    err.to_string()
}

#[test]
fn every_malformed_partition_row_names_file_and_line() {
    let row = |c: &str, s: &str, id: &str, split: &str| format!("{c} {s} {id} {split}");
    let cases = [
        (4, "img/TOPS/T_Shirt/id_00000001/comsumer_02.jpg img/TOPS/T_Shirt/id_00000001/shop_01.jpg id_00000001".to_string(), "expected 4 columns"),
        (5, row("img/TOPS/T_Shirt/id_00000002/comsumer_01.jpg", "img/TOPS/T_Shirt/id_00000002/shop_01.jpg", "id_00000002", "training"), "unknown evaluation_status `training`"),
        (5, row("../etc/passwd/x/comsumer_01.jpg", "img/TOPS/T_Shirt/id_00000002/shop_01.jpg", "id_00000002", "train"), "is not of the form img/"),
        (5, row("photos/TOPS/T_Shirt/id_00000002/comsumer_01.jpg", "img/TOPS/T_Shirt/id_00000002/shop_01.jpg", "id_00000002", "train"), "is not of the form img/"),
        (4, row("img/TOPS/T_Shirt/id_00000001/comsumer_02.jpg", "img/TOPS/T_Shirt/id_00000001/shop_01.jpg", "id_00000001", "test"), "items never cross splits"),
        (5, row("img/TOPS/T_Shirt/id_00000002/shop_01.jpg", "img/TOPS/T_Shirt/id_00000002/comsumer_01.jpg", "id_00000002", "train"), "is not a consumer image"),
        (5, row("img/TOPS/T_Shirt/id_00000002/comsumer_01.jpg", "img/TOPS/Blouse/id_00000002/shop_01.jpg", "id_00000002", "train"), "different categories"),
        (5, row("img/TOPS/T_Shirt/id_00000002/comsumer_01.jpg", "img/TOPS/T_Shirt/id_00000002/shop_01.jpg", "id_00000001", "train"), "does not match the image folders"),
    ];
    for (line, text, expect) in cases {
        let msg = error_after_edit(PARTITION_FILE, line, &text);
        assert!(
            msg.contains(&format!("list_eval_partition.txt:{line}:")) && msg.contains(expect),
            "line {line}: expected `{expect}`, got: {msg}"
        );
    }
    let msg = error_after_edit(PARTITION_FILE, 1, "ten");
    assert!(
        msg.contains("list_eval_partition.txt:1:") && msg.contains("number of rows"),
        "{msg}"
    );
    let msg = error_after_edit(PARTITION_FILE, 2, "a b c d");
    assert!(
        msg.contains("list_eval_partition.txt:2:") && msg.contains("name the columns"),
        "{msg}"
    );
}

#[test]
fn malformed_bbox_and_item_lists_name_file_and_line() {
    let bbox = "Anno/list_bbox_consumer2shop.txt";
    let cases = [
        (
            3,
            "img/TOPS/T_Shirt/id_00000001/comsumer_01.jpg 1 2 4 4 20",
            "expected 7 columns",
        ),
        (
            3,
            "img/TOPS/T_Shirt/id_00000001/comsumer_01.jpg 1 2 4 four 20 28",
            "y_1 `four`",
        ),
        (
            4,
            "img/TOPS/T_Shirt/id_00000001/shop_01.jpg 7 1 0 0 32 32",
            "clothes_type 7",
        ),
        (
            4,
            "img/TOPS/T_Shirt/id_00000001/shop_01.jpg 1 3 0 0 32 32",
            "source_type 3",
        ),
        (
            4,
            "img/TOPS/T_Shirt/id_00000001/shop_01.jpg 1 1 20 0 10 32",
            "empty box",
        ),
    ];
    for (line, text, expect) in cases {
        let msg = error_after_edit(bbox, line, text);
        assert!(
            msg.contains(&format!("list_bbox_consumer2shop.txt:{line}:")) && msg.contains(expect),
            "expected `{expect}`, got: {msg}"
        );
    }
    let msg = error_after_edit("Anno/list_item_consumer2shop.txt", 5, "id_00000003 extra");
    assert!(msg.contains("list_item_consumer2shop.txt:5:"), "{msg}");
}
