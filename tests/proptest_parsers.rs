//! Property tests of the parsers that read files a person or another process wrote:
//! arbitrary input never panics (an error is fine), and what they accept keeps its
//! invariants (valid input round-trips, torn writes lose only the torn line).
//!
//! Covered: the DeepFashion partition, bbox and item lists, the config loader, the
//! `.npy` reader and the `metrics.jsonl` reader. Case counts stay modest so the whole
//! file runs in seconds in release mode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use vitrine::config::Config;
use vitrine::data::deepfashion::{
    BBOX_FILE, BBOX_HEADER, BBox, Dataset, GalleryProtocol, ITEM_FILE, LoadOptions, PARTITION_FILE,
    PARTITION_HEADER, Source, Split, parse_partition,
};
use vitrine::index::npy::{self, MAGIC, Matrix};
use vitrine::run::CheckpointKind;
use vitrine::train::events::{NoticeKind, StopReason, TrainEvent};
use vitrine::train::metrics_log::{MetricsFollower, MetricsWriter, read_all};

const CASES: u32 = 256;

/// `cases` per property; a failure prints its minimal input rather than writing a
/// regressions file into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, bytes that may not be UTF-8 included (read lossily).
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,200}",
        vec(any::<u8>(), 0..300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        // Line-structured noise: digits, words, separators, newlines.
        "([0-9a-z_/. \t]{0,20}(\n|\r\n)){0,12}",
    ]
}

fn newline() -> impl Strategy<Value = &'static str> {
    select(vec!["\n", "\r\n"])
}

// ---------------------------------------------------------------------------------
// DeepFashion lists
// ---------------------------------------------------------------------------------

const CATEGORIES: [(&str, &str); 4] = [
    ("UPPER_BODY", "Tees"),
    ("UPPER_BODY", "Blouses"),
    ("LOWER_BODY", "Pants"),
    ("FULL_BODY", "Dresses"),
];

fn split() -> impl Strategy<Value = Split> {
    select(Split::ALL.to_vec())
}

/// Path segments and file names near the valid ones, and some that are not.
fn image_path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        select(vec![
            "UPPER_BODY",
            "Tees",
            "Pants",
            "id_00000001",
            "id_00000002",
            ".",
            "..",
            "",
            "img",
        ])
        .prop_map(String::from),
        "[A-Za-z_0-9]{1,6}",
    ];
    let file = prop_oneof![
        select(vec![
            "comsumer_01.jpg",
            "consumer_02.jpg",
            "shop_01.jpg",
            "shop_",
            "comsumer_",
            "x.jpg",
            "",
            "..",
        ])
        .prop_map(String::from),
        "\\PC{0,8}",
    ];
    prop_oneof![
        3 => (seg.clone(), seg.clone(), seg.clone(), file)
            .prop_map(|(a, b, c, f)| format!("img/{a}/{b}/{c}/{f}")),
        1 => vec(seg, 0..7).prop_map(|v| v.join("/")),
    ]
}

fn partition_token() -> BoxedStrategy<String> {
    prop_oneof![
        4 => image_path(),
        1 => select(vec!["train", "val", "test", "TRAIN", "id_00000001", "id_00000002"])
            .prop_map(String::from),
        1 => "\\PC{0,12}",
    ]
    .boxed()
}

/// A list file's count line, column-names line and rows of tokens, each part valid
/// or not.
fn list_text(
    header: &'static str,
    token: impl Strategy<Value = String> + Clone,
    columns: usize,
) -> impl Strategy<Value = String> {
    let count = prop_oneof![
        (0usize..30).prop_map(|n| n.to_string()),
        Just(String::new()),
        "[-+]?[0-9]{1,25}",
        "\\PC{0,6}",
    ];
    let names = prop_oneof![
        4 => Just(header.to_string()),
        1 => Just(header.replace(' ', "\t")),
        1 => "\\PC{0,40}",
    ];
    let row = prop_oneof![
        6 => vec(token.clone(), columns..=columns),
        1 => vec(token, 0..columns + 3),
    ];
    let sep = select(vec![" ", "\t", "  ", " \t "]);
    (
        count,
        names,
        vec((row, sep), 0..12),
        newline(),
        any::<bool>(),
    )
        .prop_map(|(count, names, rows, nl, trailing)| {
            let mut text = format!("{count}{nl}{names}");
            for (cols, sep) in rows {
                text.push_str(nl);
                text.push_str(&cols.join(sep));
            }
            if trailing {
                text.push_str(nl);
            }
            text
        })
}

/// Checks what holds of any dataset the parser accepts.
fn check_dataset(ds: &Dataset) -> Result<(), TestCaseError> {
    prop_assert!(!ds.pairs.is_empty());
    for p in &ds.pairs {
        prop_assert!(p.consumer < ds.images.len() && p.shop < ds.images.len());
        prop_assert!(p.item < ds.items.len());
        prop_assert_eq!(ds.images[p.consumer].source, Source::Consumer);
        prop_assert_eq!(ds.images[p.shop].source, Source::Shop);
        prop_assert_eq!(ds.images[p.consumer].item, p.item);
        prop_assert_eq!(ds.images[p.shop].item, p.item);
        prop_assert_eq!(ds.items[p.item].split, p.split);
    }
    for item in &ds.items {
        prop_assert!(item.category < ds.categories.len());
    }
    for e in &ds.images {
        if let Some(b) = e.bbox {
            prop_assert!(b.x1 < b.x2 && b.y1 < b.y2, "empty box accepted: {b:?}");
        }
    }
    // The summaries index by these ids too.
    let _ = ds.summary(GalleryProtocol::Test);
    let _ = ds.summary(GalleryProtocol::ValTest);
    Ok(())
}

/// One row of a valid partition file.
#[derive(Debug, Clone)]
struct PairRow {
    consumer: String,
    shop: String,
    item_id: String,
    split: Split,
    category: (&'static str, &'static str),
}

/// A valid partition: items (category, split) and pairs of their images.
fn valid_rows() -> impl Strategy<Value = Vec<PairRow>> {
    vec((0..CATEGORIES.len(), split()), 1..8).prop_flat_map(|items| {
        let n = items.len();
        vec((0..n, 1u8..5, any::<bool>(), 1u8..5), 1..24).prop_map(move |pairs| {
            pairs
                .into_iter()
                .map(|(item, c, release_spelling, s)| {
                    let (cat, split) = items[item];
                    let (big, small) = CATEGORIES[cat];
                    let id = format!("id_{:08}", item + 1);
                    let spelling = if release_spelling {
                        "comsumer"
                    } else {
                        "consumer"
                    };
                    PairRow {
                        consumer: format!("img/{big}/{small}/{id}/{spelling}_{c:02}.jpg"),
                        shop: format!("img/{big}/{small}/{id}/shop_{s:02}.jpg"),
                        item_id: id,
                        split,
                        category: (big, small),
                    }
                })
                .collect()
        })
    })
}

fn partition_text(rows: &[PairRow], declared: usize, nl: &str, blank_lines: bool) -> String {
    let mut text = format!("{declared}{nl}{PARTITION_HEADER}{nl}");
    for r in rows {
        write!(
            text,
            "{} {}\t{} {}{nl}",
            r.consumer,
            r.shop,
            r.item_id,
            r.split.name()
        )
        .expect("write to a String");
        if blank_lines {
            text.push_str("  ");
            text.push_str(nl);
        }
    }
    text
}

/// Two items, four images: the dataset the bbox and item lists are checked against.
const BASE_IMAGES: [&str; 4] = [
    "img/UPPER_BODY/Tees/id_00000001/comsumer_01.jpg",
    "img/UPPER_BODY/Tees/id_00000001/shop_01.jpg",
    "img/LOWER_BODY/Pants/id_00000002/comsumer_01.jpg",
    "img/LOWER_BODY/Pants/id_00000002/shop_01.jpg",
];

fn base_dataset(extra_file: &str, text: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let partition = format!(
        "2\n{PARTITION_HEADER}\n{} {} id_00000001 train\n{} {} id_00000002 test\n",
        BASE_IMAGES[0], BASE_IMAGES[1], BASE_IMAGES[2], BASE_IMAGES[3]
    );
    for (name, bytes) in [(PARTITION_FILE, partition.as_bytes()), (extra_file, text)] {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
    }
    (tmp, root)
}

fn open_lists(root: &Path) -> Result<Dataset, vitrine::data::deepfashion::DatasetError> {
    Dataset::open(
        root,
        LoadOptions {
            strict: false,
            skip_file_check: true,
        },
    )
}

fn bbox_token() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(vec![
            "0", "1", "2", "3", "4", "-1", "+5", "007", "1.5", "4294967295", "4294967296",
            "18446744073709551616",
        ])
        .prop_map(String::from),
        2 => any::<u32>().prop_map(|v| v.to_string()),
        1 => select(BASE_IMAGES.to_vec()).prop_map(String::from),
        1 => image_path(),
        1 => "\\PC{0,6}",
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn partition_parser_never_panics_on_any_text(text in any_text()) {
        if let Ok(ds) = parse_partition(&text, Path::new(PARTITION_FILE), Path::new("/data")) {
            check_dataset(&ds)?;
        }
    }

    #[test]
    fn partition_parser_never_panics_on_partition_shaped_text(
        text in list_text(PARTITION_HEADER, partition_token(), 4)
    ) {
        if let Ok(ds) = parse_partition(&text, Path::new(PARTITION_FILE), Path::new("/data")) {
            check_dataset(&ds)?;
        }
    }

    /// A valid partition written out parses back row for row, whatever its count
    /// line says, its line endings, or blank lines between rows.
    #[test]
    fn valid_partition_round_trips(
        rows in valid_rows(),
        declared in prop_oneof![Just(None), (0usize..50).prop_map(Some)],
        nl in newline(),
        blank_lines in any::<bool>(),
    ) {
        let text = partition_text(&rows, declared.unwrap_or(rows.len()), nl, blank_lines);
        let ds = parse_partition(&text, Path::new(PARTITION_FILE), Path::new("/data"))
            .map_err(|e| TestCaseError::fail(format!("valid partition rejected: {e}\n{text}")))?;
        check_dataset(&ds)?;
        prop_assert_eq!(ds.pairs.len(), rows.len());
        for (p, r) in ds.pairs.iter().zip(&rows) {
            prop_assert_eq!(&ds.images[p.consumer].path, &r.consumer);
            prop_assert_eq!(&ds.images[p.shop].path, &r.shop);
            prop_assert_eq!(&ds.items[p.item].id, &r.item_id);
            prop_assert_eq!(p.split, r.split);
            let cat = &ds.categories[ds.items[p.item].category];
            prop_assert_eq!((cat.big.as_str(), cat.small.as_str()), r.category);
        }
        let paths: BTreeSet<&str> = rows
            .iter()
            .flat_map(|r| [r.consumer.as_str(), r.shop.as_str()])
            .collect();
        prop_assert_eq!(ds.images.len(), paths.len(), "each image listed once");
        let items: BTreeSet<&str> = rows.iter().map(|r| r.item_id.as_str()).collect();
        prop_assert_eq!(ds.items.len(), items.len());
    }

    #[test]
    fn bbox_list_never_panics_on_any_bytes(bytes in vec(any::<u8>(), 0..300)) {
        let (_tmp, root) = base_dataset(BBOX_FILE, &bytes);
        if let Ok(ds) = open_lists(&root) {
            check_dataset(&ds)?;
        }
    }

    #[test]
    fn bbox_list_never_panics_on_bbox_shaped_text(
        text in list_text(BBOX_HEADER, bbox_token(), 7)
    ) {
        let (_tmp, root) = base_dataset(BBOX_FILE, text.as_bytes());
        if let Ok(ds) = open_lists(&root) {
            check_dataset(&ds)?;
        }
    }

    /// Valid boxes land on their images (the last row for an image wins); boxes of
    /// images the partition does not list are warned about, not fatal.
    #[test]
    fn valid_boxes_are_applied(
        boxes in vec(
            (0..BASE_IMAGES.len() + 1, 1u32..=3, 1u32..=2, 0..u32::MAX, 0..u32::MAX, 1..=u32::MAX, 1..=u32::MAX),
            0..10,
        ),
        nl in newline(),
    ) {
        let mut text = format!("{}{nl}{BBOX_HEADER}{nl}", boxes.len());
        let mut expected: HashMap<&str, BBox> = HashMap::new();
        let mut unknown = false;
        for &(image, clothes, source, x1, y1, w, h) in &boxes {
            let b = BBox { x1, y1, x2: x1.saturating_add(w), y2: y1.saturating_add(h) };
            let name = BASE_IMAGES.get(image).copied().unwrap_or("img/A/B/id_9/shop_01.jpg");
            write!(
                text,
                "{name} {clothes} {source} {} {} {} {}{nl}",
                b.x1, b.y1, b.x2, b.y2
            )
            .expect("write to a String");
            if image < BASE_IMAGES.len() {
                expected.insert(name, b);
            } else {
                unknown = true;
            }
        }
        let (_tmp, root) = base_dataset(BBOX_FILE, text.as_bytes());
        let ds = open_lists(&root)
            .map_err(|e| TestCaseError::fail(format!("valid boxes rejected: {e}\n{text}")))?;
        check_dataset(&ds)?;
        for e in &ds.images {
            prop_assert_eq!(e.bbox, expected.get(e.path.as_str()).copied(), "{}", e.path);
        }
        prop_assert_eq!(unknown, !ds.warnings.is_empty());
    }

    #[test]
    fn item_list_never_panics(
        text in prop_oneof![any_text(), list_text("item_id", "id_0000000[0-9]|\\PC{0,6}", 1)]
    ) {
        let (_tmp, root) = base_dataset(ITEM_FILE, text.as_bytes());
        if let Ok(ds) = open_lists(&root) {
            check_dataset(&ds)?;
        }
    }
}

// ---------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------

/// Every `(section, key)` of the config, with its default value.
fn known_keys() -> Vec<(String, String, toml::Value)> {
    let table = toml::Table::try_from(Config::default()).expect("serialize defaults");
    let mut out = Vec::new();
    for (section, value) in table {
        let inner = value.as_table().expect("sections are tables");
        for (key, v) in inner {
            out.push((section.clone(), key.clone(), v.clone()));
        }
    }
    out
}

/// Strings a config value may plausibly hold: enum names, durations (some too long
/// for a `Duration`), devices, numbers, and noise.
fn config_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "", "auto", "cpu", "cuda:0", "cuda:99999999999999999999", "default", "light",
            "triplet", "offline", "batch_hard", "pk", "triplets", "cosine", "constant",
            "resnet18", "resnet50", "test", "val+test", "halfblocks", "off", "braille",
            "ascii", "runs/demo", "0", "10m", "1h30m", "90s", "600", "1.5m", "-3", "inf",
            "NaN", "1e20", "1e300", "18446744073709551616", "99999999999999999999h",
            "1e308s", "1e19s", "5000000000000000000h",
        ])
        .prop_map(String::from),
        1 => "[0-9.eE+-]{1,24}[hms]?",
        1 => "\\PC{0,16}",
    ]
}

fn toml_datetime() -> impl Strategy<Value = toml::Value> {
    select(vec!["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"])
        .prop_map(|s| toml::Value::Datetime(s.parse::<toml::value::Datetime>().expect("datetime")))
}

/// A TOML value of a random type.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-3i64..2000).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        (-1.5f64..2.5).prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        config_string().prop_map(toml::Value::String),
        toml_datetime(),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
            vec(("[a-z_]{1,8}", inner), 0..3)
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// A value of the same TOML type as `default` (ranges near the valid ones and the
/// whole type), or now and then of any type.
fn value_like(default: &toml::Value) -> BoxedStrategy<toml::Value> {
    let same = match default {
        toml::Value::Integer(_) => prop_oneof![
            any::<i64>(),
            -3i64..2000,
            select(vec![
                0i64, 1, 2, 6, 7, 12, 31, 32, 64, 65, 128, 129, 1024, 1025
            ]),
        ]
        .prop_map(toml::Value::Integer)
        .boxed(),
        toml::Value::Float(_) => prop_oneof![
            any::<f64>(),
            -1.5f64..2.5,
            select(vec![
                0.0,
                -0.0,
                0.5,
                1.0,
                1e-300,
                f64::MIN_POSITIVE,
                1e300,
                f64::MAX
            ]),
        ]
        .prop_map(toml::Value::Float)
        .boxed(),
        toml::Value::Boolean(_) => any::<bool>().prop_map(toml::Value::Boolean).boxed(),
        toml::Value::String(_) => config_string().prop_map(toml::Value::String).boxed(),
        _ => toml_value().boxed(),
    };
    prop_oneof![4 => same, 1 => toml_value()].boxed()
}

/// One documented key set to a random value, every other key left to its default:
/// each value reaches `validate` on its own.
fn one_key() -> impl Strategy<Value = (String, String, toml::Value)> {
    select(known_keys())
        .prop_flat_map(|(section, key, default)| (Just(section), Just(key), value_like(&default)))
}

/// Durations as a person might write them, some too long for a `Duration`.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,25}",
        "[0-9]{1,22}(\\.[0-9]{1,3})?[hms]",
        "([0-9]{1,20}[hms]){1,4}",
        "[1-9]\\.[0-9]e[0-9]{1,3}[hms]?",
        " ?[0-9.eE+-]{0,12}[hms]? ?",
        config_string(),
    ]
}

/// A table with known sections and keys (plus legacy and unknown ones) holding
/// values of random types.
fn config_table() -> impl Strategy<Value = toml::Table> {
    let keys = known_keys();
    let mut sections: Vec<String> = keys.iter().map(|(s, _, _)| s.clone()).collect();
    sections.dedup();
    let key = prop_oneof![
        8 => select(keys).prop_map(|(s, k, _)| (s, k)),
        1 => select(vec!["margin", "mining", "bogus"])
            .prop_map(|k| ("train".to_string(), k.to_string())),
        1 => (select(sections), "[a-z_]{1,10}"),
        1 => ("[a-z]{1,6}", "[a-z_]{1,6}"),
    ];
    let section_value = prop_oneof![
        8 => Just(None),
        1 => toml_value().prop_map(Some),
    ];
    vec((key, toml_value(), section_value), 0..8).prop_map(|entries| {
        let mut table = toml::Table::new();
        for ((section, key), value, replace_section) in entries {
            if let Some(v) = replace_section {
                // A section that is not a table (`train = 3`).
                table.insert(section, v);
                continue;
            }
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(t) = entry.as_table_mut() {
                t.insert(key, value);
            }
        }
        table
    })
}

/// Checks what holds of any config the loader accepts: it is valid, and written
/// back out it loads as itself.
fn check_config(config: &Config) -> Result<(), TestCaseError> {
    prop_assert!(config.validate().is_ok());
    let _ = config.time_limit();
    let _ = config.sampler();
    let text = toml::to_string(config)
        .map_err(|e| TestCaseError::fail(format!("cannot write back: {e}")))?;
    let again = Config::from_toml_str(&text, "written back")
        .map_err(|e| TestCaseError::fail(format!("written-back config rejected: {e}\n{text}")))?;
    prop_assert_eq!(&again, config);
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn config_never_panics_on_any_text(text in any_text()) {
        if let Ok(config) = Config::from_toml_str(&text, "prop.toml") {
            check_config(&config)?;
        }
    }

    /// The file loaders, on raw bytes (not UTF-8 included).
    #[test]
    fn config_files_never_panic_on_any_bytes(bytes in vec(any::<u8>(), 0..200)) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("config.toml");
        std::fs::write(&path, &bytes).expect("write");
        if let Ok(config) = Config::load(Some(&path)) {
            check_config(&config)?;
        }
        if let Ok(config) = Config::load_run(&path) {
            prop_assert!(config.validate().is_ok());
        }
    }

    #[test]
    fn config_never_panics_on_toml_shaped_input(table in config_table()) {
        let text = toml::to_string(&table).expect("a table serializes");
        match Config::from_toml_str(&text, "prop.toml") {
            Ok(config) => check_config(&config)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn config_never_panics_on_one_key_of_any_value((section, key, value) in one_key()) {
        let mut inner = toml::Table::new();
        inner.insert(key, value.clone());
        let mut table = toml::Table::new();
        table.insert(section.clone(), toml::Value::Table(inner));
        let text = toml::to_string(&table).expect("a table serializes");
        if let Ok(config) = Config::from_toml_str(&text, "prop.toml") {
            check_config(&config)?;
        }
    }

    /// `train.time_limit`: any duration text is read or refused, never a panic.
    #[test]
    fn config_never_panics_on_any_time_limit(limit in duration_text()) {
        let text = format!("[train]\ntime_limit = {}\n", toml::Value::String(limit.clone()));
        if let Ok(config) = Config::from_toml_str(&text, "prop.toml") {
            check_config(&config)?;
            prop_assert_eq!(config.time_limit().is_some(), !matches!(limit.trim(), "" | "0"));
        }
        let _ = vitrine::config::parse_duration(&limit);
    }

    /// Any subset of the documented keys, set to their defaults, is the default.
    #[test]
    fn default_valued_keys_load_as_the_defaults(
        picked in proptest::sample::subsequence(known_keys(), 0..=known_keys().len())
    ) {
        let mut table = toml::Table::new();
        for (section, key, value) in picked {
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("section")
                .insert(key, value);
        }
        let text = toml::to_string(&table).expect("serialize");
        let config = Config::from_toml_str(&text, "prop.toml")
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(config, Config::default());
    }
}

// ---------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------

/// Checks what holds of any matrix the reader accepts.
fn check_matrix(m: &Matrix, file_len: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        Some(m.data.len()),
        m.rows.checked_mul(m.cols),
        "a {}×{} matrix holds {} values",
        m.rows,
        m.cols,
        m.data.len()
    );
    prop_assert!(4 * m.data.len() <= file_len);
    prop_assert_eq!(m.iter_rows().count(), if m.cols == 0 { 0 } else { m.rows });
    if m.rows > 0 {
        prop_assert_eq!(m.row(m.rows - 1).len(), m.cols);
    }
    Ok(())
}

fn dim() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0usize..6).prop_map(|d| d.to_string()),
        1 => select(vec![
            usize::MAX,
            usize::MAX / 2,
            usize::MAX / 4 + 1,
            1 << 62,
            1 << 32,
            (1 << 32) + 1,
            u32::MAX as usize,
        ])
        .prop_map(|d| d.to_string()),
        1 => any::<usize>().prop_map(|d| d.to_string()),
        1 => select(vec!["", "-1", "1L", " 2 ", "18446744073709551616", "x"]).prop_map(String::from),
    ]
}

/// A dimension: small, near a power of two that overflows `4 · rows · cols`, or any.
fn dim_value() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..8,
        2 => select(vec![
            usize::MAX,
            usize::MAX / 2,
            usize::MAX / 4,
            usize::MAX / 4 + 1,
            1 << 62,
            1 << 63,
            1 << 61,
            1 << 32,
            u32::MAX as usize,
        ]),
        1 => any::<usize>(),
    ]
}

/// A header dict built from NumPy's keys with valid and invalid values.
fn npy_dict() -> impl Strategy<Value = String> {
    let descr = select(vec![
        "'<f4'", "'=f4'", "'f4'", "\"<f4\"", "'<f8'", "'>f4'", "'<i4'", "", "'",
    ]);
    let fortran = select(vec!["False", "True", "0", "", "False)"]);
    let shape = prop_oneof![
        vec(dim(), 0..4).prop_map(|d| format!("({})", d.join(", "))),
        vec(dim(), 1..3).prop_map(|d| format!("({},)", d.join(","))),
        "\\PC{0,10}",
    ];
    (descr, fortran, shape, any::<bool>(), any::<u8>()).prop_map(
        |(descr, fortran, shape, quote_keys, order)| {
            let q = if quote_keys { '\'' } else { '"' };
            let mut parts = [
                format!("{q}descr{q}: {descr}"),
                format!("{q}fortran_order{q}: {fortran}"),
                format!("{q}shape{q}: {shape}"),
            ];
            parts.rotate_left(usize::from(order % 3));
            if order & 0x80 != 0 {
                parts.swap(0, 1);
            }
            format!("{{{}, }}", parts.join(", "))
        },
    )
}

/// Magic, a version, a header length (right or not), a header and some data.
fn npy_shaped() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![4 => 1u8..=3, 1 => any::<u8>()];
    let header = prop_oneof![4 => npy_dict(), 1 => "\\PC{0,60}"];
    let length_delta =
        prop_oneof![4 => Just(0i64), 1 => -4i64..8, 1 => any::<u32>().prop_map(i64::from)];
    (
        version,
        header,
        0usize..40,
        length_delta,
        vec(any::<u8>(), 0..64),
        0usize..4,
    )
        .prop_map(|(version, header, pad, delta, data, cut)| {
            let mut dict = header.into_bytes();
            dict.resize(dict.len() + pad, b' ');
            dict.push(b'\n');
            let len = (dict.len() as i64 + delta).max(0) as u64;
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&[version, 0]);
            if version == 1 {
                out.extend_from_slice(&(len as u16).to_le_bytes());
            } else {
                out.extend_from_slice(&(len as u32).to_le_bytes());
            }
            out.extend_from_slice(&dict);
            out.extend_from_slice(&data);
            out.truncate(out.len().saturating_sub(cut));
            out
        })
}

/// A small matrix of any bits. At least one column: the reader refuses `(N, 0)`.
fn matrix() -> impl Strategy<Value = Matrix> {
    (0usize..7, 1usize..7).prop_flat_map(|(rows, cols)| {
        vec(any::<u32>(), rows * cols).prop_map(move |bits| {
            Matrix::new(rows, cols, bits.into_iter().map(f32::from_bits).collect())
                .expect("rows × cols values")
        })
    })
}

fn same_bits(a: &Matrix, b: &Matrix) -> bool {
    a.rows == b.rows
        && a.cols == b.cols
        && a.data.len() == b.data.len()
        && a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn npy_never_panics_on_any_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..128),
            vec(any::<u8>(), 0..128).prop_map(|tail| [MAGIC.as_slice(), &tail].concat()),
        ]
    ) {
        if let Ok(m) = npy::parse(&bytes) {
            check_matrix(&m, bytes.len())?;
        }
    }

    #[test]
    fn npy_never_panics_on_npy_shaped_bytes(bytes in npy_shaped()) {
        if let Ok(m) = npy::parse(&bytes) {
            check_matrix(&m, bytes.len())?;
        }
    }

    /// The writer's own header with any shape, followed by as many data bytes as
    /// `4 · rows · cols` comes to when it wraps around (or a few): a shape too large
    /// for memory is refused, never read as a matrix it does not describe.
    #[test]
    fn npy_never_accepts_a_shape_it_does_not_hold(
        rows in dim_value(),
        cols in dim_value(),
        extra in 0usize..3,
    ) {
        let wrapped = rows.wrapping_mul(cols).wrapping_mul(4);
        let data_len = if wrapped <= 256 { wrapped } else { extra * 4 };
        let mut bytes = npy::header(rows, cols);
        bytes.resize(bytes.len() + data_len, 0);
        if let Ok(m) = npy::parse(&bytes) {
            check_matrix(&m, bytes.len())?;
            prop_assert_eq!((m.rows, m.cols), (rows, cols));
        }
    }

    /// `load` reads the file in steps (header first, checked against the file's
    /// length); on any bytes it agrees with `parse` of the whole file.
    #[test]
    fn npy_load_agrees_with_parse(
        bytes in prop_oneof![npy_shaped(), vec(any::<u8>(), 0..64)]
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("m.npy");
        std::fs::write(&path, &bytes).expect("write");
        match (npy::load(&path), npy::parse(&bytes)) {
            (Ok(a), Ok(b)) => {
                check_matrix(&a, bytes.len())?;
                prop_assert!(same_bits(&a, &b), "{a:?} != {b:?}");
            }
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "load {a:?} but parse {b:?}"),
        }
    }

    /// Bytes written by `to_bytes` parse back bit for bit (NaNs included), and every
    /// strict prefix is refused.
    #[test]
    fn npy_bytes_round_trip(m in matrix(), cut in any::<prop::sample::Index>()) {
        let bytes = npy::to_bytes(&m);
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        prop_assert_eq!((10 + header_len) % 64, 0);
        let back = npy::parse(&bytes).map_err(TestCaseError::fail)?;
        prop_assert!(same_bits(&back, &m), "{back:?} != {m:?}");
        let prefix = &bytes[..cut.index(bytes.len())];
        prop_assert!(npy::parse(prefix).is_err(), "a {}-byte prefix parsed", prefix.len());
    }
}

proptest! {
    // Each case syncs a file to disk.
    #![proptest_config(config(CASES / 4))]

    #[test]
    fn npy_save_then_load_is_identity(m in matrix()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sub").join("m.npy");
        npy::save(&path, &m).expect("save");
        let back = npy::load(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(same_bits(&back, &m), "{back:?} != {m:?}");
    }
}

// ---------------------------------------------------------------------------------
// metrics.jsonl
// ---------------------------------------------------------------------------------

/// Finite floats: NaN is written as `null` and reads back as NaN, which `==` cannot
/// compare.
fn finite32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>().prop_filter("finite", |v| v.is_finite()),
        -10.0f32..10.0,
        Just(0.0f32),
    ]
}

fn finite64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        -10.0f64..10.0,
        Just(0.0f64),
    ]
}

fn event() -> impl Strategy<Value = TrainEvent> {
    let step = 0usize..100_000;
    prop_oneof![
        (
            step.clone(),
            0usize..50,
            (finite32(), finite32(), finite32(), finite32()),
            (finite64(), finite32(), proptest::option::of(finite32())),
            (finite32(), proptest::option::of(finite32()), finite64()),
        )
            .prop_map(
                |(
                    step,
                    epoch,
                    (loss, active, d_ap, d_an),
                    (lr, grad_norm, spread),
                    (tps, ips, elapsed),
                )| {
                    TrainEvent::Step {
                        step,
                        epoch,
                        loss,
                        active,
                        d_ap,
                        d_an,
                        lr,
                        grad_norm,
                        spread,
                        triplets_per_s: tps,
                        images_per_s: ips,
                        elapsed_s: elapsed,
                    }
                }
            ),
        (
            step.clone(),
            "\\PC{0,30}",
            proptest::option::of(select(vec![
                NoticeKind::Collapse,
                NoticeKind::CollapseCleared
            ]))
        )
            .prop_map(|(step, message, kind)| TrainEvent::Notice {
                step,
                message,
                kind
            }),
        (step.clone(), 0usize..50, any::<bool>(), "\\PC{0,20}").prop_map(
            |(step, epoch, best, path)| TrainEvent::Checkpoint {
                step,
                epoch,
                kind: if best {
                    CheckpointKind::Best
                } else {
                    CheckpointKind::Last
                },
                path,
            }
        ),
        (
            step.clone(),
            0usize..50,
            select(vec![
                StopReason::Finished,
                StopReason::MaxSteps,
                StopReason::Interrupted,
                StopReason::TimeLimit,
            ]),
            finite64(),
            finite64(),
        )
            .prop_map(
                |(step, epoch, reason, best_val_top20, seconds)| TrainEvent::Done {
                    step,
                    epoch,
                    reason,
                    best_val_top20,
                    seconds,
                }
            ),
        (step, 0usize..50, "\\PC{0,30}").prop_map(|(step, epoch, message)| TrainEvent::Failed {
            step,
            epoch,
            message
        }),
    ]
}

fn event_line(e: &TrainEvent) -> String {
    serde_json::to_string(e).expect("serialize event")
}

/// A line of a metrics file: an event, or something that is not one.
#[derive(Debug, Clone)]
enum Line {
    Event(Box<TrainEvent>),
    /// Any bytes but a newline.
    Junk(Vec<u8>),
}

fn metrics_line() -> impl Strategy<Value = Line> {
    prop_oneof![
        3 => event().prop_map(|e| Line::Event(Box::new(e))),
        1 => "[^\n]{0,40}".prop_map(|s| Line::Junk(s.into_bytes())),
        1 => vec(any::<u8>().prop_filter("no newline", |&b| b != b'\n'), 0..40).prop_map(Line::Junk),
        1 => (event(), any::<prop::sample::Index>()).prop_map(|(e, cut)| {
            // An event cut short anywhere (mid-character too), then the next write
            // on the same line.
            let mut bytes = event_line(&e).into_bytes();
            bytes.truncate(cut.index(bytes.len()));
            Line::Junk(bytes)
        }),
        1 => Just(Line::Junk(br#"{"event":"step"}"#.to_vec())),
    ]
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write metrics");
}

fn append_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

/// The events and the count of skipped lines a reader should report for `lines`.
fn expected_events(lines: &[Line]) -> (Vec<TrainEvent>, usize) {
    let mut events = Vec::new();
    let mut skipped = 0;
    for line in lines {
        match line {
            Line::Event(e) => events.push((**e).clone()),
            Line::Junk(bytes) => {
                let t = bytes.trim_ascii();
                if t.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<TrainEvent>(t) {
                    Ok(e) => events.push(e),
                    Err(_) => skipped += 1,
                }
            }
        }
    }
    (events, skipped)
}

fn render(lines: &[Line]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        match line {
            Line::Event(e) => out.extend_from_slice(event_line(e).as_bytes()),
            Line::Junk(bytes) => out.extend_from_slice(bytes),
        }
        out.push(b'\n');
    }
    out
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Arbitrary bytes: reading, following and reopening for append never panic;
    /// after an append the complete lines read before are still there, followed by
    /// the new event.
    #[test]
    fn metrics_never_panic_on_any_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..300),
            "([^\n]{0,30}\n?){0,8}".prop_map(String::into_bytes),
        ],
        next in event(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("metrics.jsonl");
        write_file(&path, &bytes);
        let before = read_all(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut follower = MetricsFollower::new(&path);
        prop_assert_eq!(
            &follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?,
            &before
        );
        let complete_lines = bytes.split(|&b| b == b'\n').count() - 1;
        prop_assert!(follower.skipped() <= complete_lines);
        let mut w = MetricsWriter::append(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        w.write(&next).map_err(|e| TestCaseError::fail(e.to_string()))?;
        drop(w);
        let after = read_all(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(after.last(), Some(&next));
        prop_assert_eq!(&after[..after.len() - 1], &before[..]);
        // The follower picks up exactly the new event.
        prop_assert_eq!(follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?, vec![next]);
    }

    /// A torn last line (an interrupted append) hides none of the complete events
    /// before it, and the next writer cuts it off.
    #[test]
    fn torn_last_line_keeps_every_complete_event(
        events in vec(event(), 0..8),
        torn in event(),
        cut in any::<prop::sample::Index>(),
        next in event(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("metrics.jsonl");
        {
            let mut w = MetricsWriter::append(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for e in &events {
                w.write(e).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        let line = event_line(&torn);
        // 1..len bytes of the line, cut anywhere (inside a UTF-8 character too).
        let keep = 1 + cut.index(line.len() - 1);
        append_file(&path, &line.as_bytes()[..keep]);
        prop_assert_eq!(&read_all(&path).map_err(|e| TestCaseError::fail(e.to_string()))?, &events);
        let mut w = MetricsWriter::append(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        w.write(&next).map_err(|e| TestCaseError::fail(e.to_string()))?;
        drop(w);
        let mut expected = events.clone();
        expected.push(next);
        let mut follower = MetricsFollower::new(&path);
        prop_assert_eq!(follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?, expected);
        prop_assert_eq!(follower.skipped(), 0);
    }

    /// Lines that are not events are skipped and counted; the events around them
    /// replay in order.
    #[test]
    fn junk_lines_are_skipped_not_fatal(lines in vec(metrics_line(), 0..12)) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("metrics.jsonl");
        write_file(&path, &render(&lines));
        let (events, skipped) = expected_events(&lines);
        let mut follower = MetricsFollower::new(&path);
        prop_assert_eq!(follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?, events);
        prop_assert_eq!(follower.skipped(), skipped);
    }

    /// A follower polling while the file grows in arbitrary pieces (lines torn
    /// anywhere, mid-character included) sees what one read of the whole file sees.
    #[test]
    fn following_in_pieces_equals_reading_once(
        lines in vec(metrics_line(), 0..10),
        cuts in vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("metrics.jsonl");
        let bytes = render(&lines);
        let mut points: BTreeSet<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.insert(bytes.len());
        let mut follower = MetricsFollower::new(&path);
        let mut seen = follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(seen.is_empty(), "no file yet");
        let mut start = 0;
        for end in points {
            append_file(&path, &bytes[start..end]);
            start = end;
            seen.extend(follower.poll().map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        let (events, skipped) = expected_events(&lines);
        prop_assert_eq!(&seen, &events);
        prop_assert_eq!(follower.skipped(), skipped);
        let mut once = MetricsFollower::new(&path);
        prop_assert_eq!(once.poll().map_err(|e| TestCaseError::fail(e.to_string()))?, seen);
    }
}

/// Guards the generators: the keys `config_table` draws from are the documented ones.
#[test]
fn known_keys_cover_every_section() {
    let sections: BTreeMap<String, usize> =
        known_keys()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (s, _, _)| {
                *m.entry(s).or_default() += 1;
                m
            });
    for s in [
        "data", "synth", "model", "train", "loss", "augment", "index", "ui",
    ] {
        assert!(
            sections.get(s).copied().unwrap_or(0) > 0,
            "no keys for [{s}]"
        );
    }
}
