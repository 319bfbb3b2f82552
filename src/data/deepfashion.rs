//! The DeepFashion Consumer-to-shop layout, exactly as released:
//! `img/<BIG>/<Small>/id_XXXXXXXX/{comsumer,shop}_NN.jpg`, `Eval/list_eval_partition.txt`
//! and the optional `Anno/list_bbox_consumer2shop.txt` / `Anno/list_item_consumer2shop.txt`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub const PARTITION_FILE: &str = "Eval/list_eval_partition.txt";
pub const BBOX_FILE: &str = "Anno/list_bbox_consumer2shop.txt";
pub const ITEM_FILE: &str = "Anno/list_item_consumer2shop.txt";
pub const PARTITION_HEADER: &str = "image_pair_name_1 image_pair_name_2 item_id evaluation_status";
pub const BBOX_HEADER: &str = "image_name clothes_type source_type x_1 y_1 x_2 y_2";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{root} is not a DeepFashion Consumer-to-shop folder: {} is missing (make a synthetic one with `vitrine synth --out {root}`)", root.join(PARTITION_FILE).display())]
    NotADataset { root: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{count} image files listed in {} are missing under {} (first: {first}); set data.strict = false to skip their pairs", partition.display(), root.display())]
    Missing {
        root: PathBuf,
        partition: PathBuf,
        count: usize,
        first: String,
    },
    #[error("{}: no pairs listed", path.display())]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "train" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Consumer,
    Shop,
}

/// Which shop images form the gallery when evaluating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GalleryProtocol {
    /// DeepFashion's standard protocol: test consumer queries vs test shop images.
    #[default]
    #[serde(rename = "test")]
    Test,
    /// Test consumer queries vs the shop images of val and test together.
    #[serde(rename = "val+test")]
    ValTest,
}

impl GalleryProtocol {
    pub fn splits(self) -> &'static [Split] {
        match self {
            GalleryProtocol::Test => &[Split::Test],
            GalleryProtocol::ValTest => &[Split::Val, Split::Test],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GalleryProtocol::Test => "test",
            GalleryProtocol::ValTest => "val+test",
        }
    }
}

impl FromStr for GalleryProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "test" => Ok(Self::Test),
            "val+test" => Ok(Self::ValTest),
            _ => Err(format!(
                "unknown gallery `{s}`: expected `test` or `val+test`"
            )),
        }
    }
}

impl fmt::Display for GalleryProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A crop box in pixels, inclusive-exclusive as in the release (`x_1 y_1 x_2 y_2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageEntry {
    /// Path relative to the dataset root, as listed (`img/...`).
    pub path: String,
    pub item: usize,
    pub source: Source,
    pub bbox: Option<BBox>,
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub category: usize,
    pub split: Split,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Category {
    pub big: String,
    pub small: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub consumer: usize,
    pub shop: usize,
    pub item: usize,
    pub split: Split,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Missing image files are an error rather than counted and skipped.
    pub strict: bool,
    /// Skip the existence check of every image file (fast, for tests and tools
    /// that only read the lists).
    pub skip_file_check: bool,
}

/// A parsed dataset: every listed image once, its item, category and split.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub images: Vec<ImageEntry>,
    pub items: Vec<Item>,
    pub categories: Vec<Category>,
    /// Pairs whose both images exist.
    pub pairs: Vec<Pair>,
    /// Unique listed image files not found on disk.
    pub missing: usize,
    /// Pairs dropped because an image was missing.
    pub dropped_pairs: usize,
    /// Non-fatal oddities (count line mismatch, bbox rows for unknown images…).
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Reads the dataset at `root`.
    pub fn open(root: &Path, opts: LoadOptions) -> Result<Self, DatasetError> {
        let partition = root.join(PARTITION_FILE);
        if !partition.is_file() {
            return Err(DatasetError::NotADataset {
                root: root.to_path_buf(),
            });
        }
        let text = read(&partition)?;
        let mut ds = parse_partition(&text, &partition, root)?;
        let bbox = root.join(BBOX_FILE);
        if bbox.is_file() {
            let text = read(&bbox)?;
            ds.apply_bboxes(&text, &bbox)?;
        }
        let items_file = root.join(ITEM_FILE);
        if items_file.is_file() {
            let text = read(&items_file)?;
            ds.check_item_list(&text, &items_file)?;
        }
        if !opts.skip_file_check {
            ds.check_files(&partition, opts.strict)?;
        }
        Ok(ds)
    }

    pub fn image_path(&self, image: usize) -> PathBuf {
        self.root.join(&self.images[image].path)
    }

    pub fn category_of_image(&self, image: usize) -> &Category {
        &self.categories[self.items[self.images[image].item].category]
    }

    /// Unique consumer images of `split` (the queries), in listing order.
    pub fn queries(&self, split: Split) -> Vec<usize> {
        self.unique_images(&[split], Source::Consumer)
    }

    /// De-duplicated shop images of the protocol's splits (the gallery).
    pub fn gallery(&self, protocol: GalleryProtocol) -> Vec<usize> {
        self.unique_images(protocol.splits(), Source::Shop)
    }

    /// Unique images of `source` in pairs of the given splits, in listing order.
    pub fn unique_images(&self, splits: &[Split], source: Source) -> Vec<usize> {
        let mut seen = vec![false; self.images.len()];
        let mut out = Vec::new();
        for p in self.pairs.iter().filter(|p| splits.contains(&p.split)) {
            let img = match source {
                Source::Consumer => p.consumer,
                Source::Shop => p.shop,
            };
            if !seen[img] {
                seen[img] = true;
                out.push(img);
            }
        }
        out
    }

    /// Per-split counts and categories, for `vitrine splits` and the dashboard.
    pub fn summary(&self, protocol: GalleryProtocol) -> SplitSummary {
        let mut pairs = SplitCounts::default();
        for p in &self.pairs {
            *pairs.get_mut(p.split) += 1;
        }
        let mut items = SplitCounts::default();
        let mut consumer = SplitCounts::default();
        let mut shop = SplitCounts::default();
        let mut item_used = vec![false; self.items.len()];
        for p in &self.pairs {
            item_used[p.item] = true;
        }
        for s in Split::ALL {
            *consumer.get_mut(s) = self.unique_images(&[s], Source::Consumer).len();
            *shop.get_mut(s) = self.unique_images(&[s], Source::Shop).len();
        }
        let mut per_cat: BTreeMap<&Category, SplitCounts> = BTreeMap::new();
        for (item, _) in self.items.iter().zip(&item_used).filter(|(_, used)| **used) {
            *items.get_mut(item.split) += 1;
            *per_cat
                .entry(&self.categories[item.category])
                .or_default()
                .get_mut(item.split) += 1;
        }
        let categories = per_cat
            .into_iter()
            .map(|(c, counts)| CategorySummary {
                big: c.big.clone(),
                small: c.small.clone(),
                items: counts.train + counts.val + counts.test,
                per_split: counts,
            })
            .collect();
        SplitSummary {
            protocol: protocol.name().to_string(),
            pairs,
            items,
            consumer,
            shop,
            query: self.queries(Split::Test).len(),
            gallery: self.gallery(protocol).len(),
            images: self.images.len(),
            missing: self.missing,
            dropped_pairs: self.dropped_pairs,
            categories,
        }
    }

    fn apply_bboxes(&mut self, text: &str, path: &Path) -> Result<(), DatasetError> {
        let index: HashMap<&str, usize> = self
            .images
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.as_str(), i))
            .collect();
        let mut boxes = Vec::new();
        let mut unknown = 0usize;
        for (line, cols) in data_rows(text, path, BBOX_HEADER)? {
            let bad = |message: String| DatasetError::Malformed {
                path: path.to_path_buf(),
                line,
                message,
            };
            if cols.len() != 7 {
                return Err(bad(format!(
                    "expected 7 columns ({BBOX_HEADER}), found {}",
                    cols.len()
                )));
            }
            let num = |i: usize, name: &str| {
                cols[i].parse::<u32>().map_err(|_| {
                    bad(format!(
                        "{name} `{}` is not a non-negative integer",
                        cols[i]
                    ))
                })
            };
            let clothes = num(1, "clothes_type")?;
            if !(1..=3).contains(&clothes) {
                return Err(bad(format!("clothes_type {clothes} is not 1, 2 or 3")));
            }
            let source = num(2, "source_type")?;
            if !(1..=2).contains(&source) {
                return Err(bad(format!(
                    "source_type {source} is not 1 (shop) or 2 (consumer)"
                )));
            }
            let b = BBox {
                x1: num(3, "x_1")?,
                y1: num(4, "y_1")?,
                x2: num(5, "x_2")?,
                y2: num(6, "y_2")?,
            };
            if b.x2 <= b.x1 || b.y2 <= b.y1 {
                return Err(bad(format!(
                    "empty box ({}, {}, {}, {})",
                    b.x1, b.y1, b.x2, b.y2
                )));
            }
            match index.get(cols[0]) {
                Some(&i) => boxes.push((i, b)),
                None => unknown += 1,
            }
        }
        for (i, b) in boxes {
            self.images[i].bbox = Some(b);
        }
        if unknown > 0 {
            self.warnings.push(format!(
                "{}: {unknown} boxes name images not in {PARTITION_FILE}",
                path.display()
            ));
        }
        Ok(())
    }

    fn check_item_list(&mut self, text: &str, path: &Path) -> Result<(), DatasetError> {
        let mut listed = 0usize;
        for (line, cols) in data_rows(text, path, "item_id")? {
            if cols.len() != 1 {
                return Err(DatasetError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    message: format!("expected 1 column (item_id), found {}", cols.len()),
                });
            }
            listed += 1;
        }
        if listed < self.items.len() {
            self.warnings.push(format!(
                "{} lists {listed} items but the partition uses {}",
                path.display(),
                self.items.len()
            ));
        }
        Ok(())
    }

    fn check_files(&mut self, partition: &Path, strict: bool) -> Result<(), DatasetError> {
        let root = self.root.clone();
        let present: Vec<bool> = self
            .images
            .par_iter()
            .map(|e| root.join(&e.path).is_file())
            .collect();
        for (e, p) in self.images.iter_mut().zip(&present) {
            e.present = *p;
        }
        self.missing = present.iter().filter(|p| !**p).count();
        if self.missing == 0 {
            return Ok(());
        }
        if strict {
            let first = self
                .images
                .iter()
                .find(|e| !e.present)
                .map(|e| e.path.clone())
                .unwrap_or_default();
            return Err(DatasetError::Missing {
                root: self.root.clone(),
                partition: partition.to_path_buf(),
                count: self.missing,
                first,
            });
        }
        let before = self.pairs.len();
        let images = &self.images;
        self.pairs
            .retain(|p| images[p.consumer].present && images[p.shop].present);
        self.dropped_pairs = before - self.pairs.len();
        self.warnings.push(format!(
            "{} image files are missing; {} pairs that use them were skipped",
            self.missing, self.dropped_pairs
        ));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl SplitCounts {
    pub fn get(&self, s: Split) -> usize {
        match s {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }

    fn get_mut(&mut self, s: Split) -> &mut usize {
        match s {
            Split::Train => &mut self.train,
            Split::Val => &mut self.val,
            Split::Test => &mut self.test,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    pub big: String,
    pub small: String,
    pub items: usize,
    pub per_split: SplitCounts,
}

/// The figures `vitrine splits --json` prints (`query`/`gallery` follow `protocol`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub protocol: String,
    pub pairs: SplitCounts,
    pub items: SplitCounts,
    pub consumer: SplitCounts,
    pub shop: SplitCounts,
    pub query: usize,
    pub gallery: usize,
    pub images: usize,
    pub missing: usize,
    pub dropped_pairs: usize,
    pub categories: Vec<CategorySummary>,
}

fn read(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The rows after the count line and the column-names line, as
/// `(1-based line number, whitespace-separated columns)`; blank lines are skipped.
fn data_rows<'a>(
    text: &'a str,
    path: &Path,
    header: &str,
) -> Result<Vec<(usize, Vec<&'a str>)>, DatasetError> {
    let bad = |line: usize, message: String| DatasetError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    let first = lines.next().map_or("", |(_, l)| l.trim());
    let declared: usize = first.parse().map_err(|_| {
        bad(
            1,
            format!("line 1 must be the number of rows, found `{first}`"),
        )
    })?;
    let second = lines.next().map_or("", |(_, l)| l.trim());
    let names: Vec<&str> = second.split_whitespace().collect();
    if names != header.split_whitespace().collect::<Vec<_>>() {
        return Err(bad(
            2,
            format!("line 2 must name the columns `{header}`, found `{second}`"),
        ));
    }
    let rows: Vec<(usize, Vec<&str>)> = lines
        .map(|(i, l)| (i + 1, l.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, cols)| !cols.is_empty())
        .collect();
    if rows.len() != declared {
        tracing::warn!(
            "{}: line 1 declares {declared} rows but {} follow",
            path.display(),
            rows.len()
        );
    }
    Ok(rows)
}

/// `img/<BIG>/<Small>/<id folder>/<file>` split into its parts, or why not.
fn image_parts(path: &str) -> Result<[&str; 5], String> {
    let parts: Vec<&str> = path.split('/').collect();
    let ok = parts.len() == 5
        && parts[0] == "img"
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if !ok {
        return Err(format!(
            "image path `{path}` is not of the form img/<CATEGORY>/<Sub_category>/<id>/<file>"
        ));
    }
    Ok([parts[0], parts[1], parts[2], parts[3], parts[4]])
}

fn is_consumer_file(name: &str) -> bool {
    name.starts_with("comsumer_") || name.starts_with("consumer_")
}

/// Parses `Eval/list_eval_partition.txt`; `path` names it in errors.
pub fn parse_partition(text: &str, path: &Path, root: &Path) -> Result<Dataset, DatasetError> {
    let mut images: Vec<ImageEntry> = Vec::new();
    let mut image_index: HashMap<String, usize> = HashMap::new();
    let mut items: Vec<Item> = Vec::new();
    let mut item_index: HashMap<String, (usize, usize)> = HashMap::new(); // id -> (item, first line)
    let mut categories: Vec<Category> = Vec::new();
    let mut category_index: HashMap<(String, String), usize> = HashMap::new();
    let mut pairs = Vec::new();

    for (line, cols) in data_rows(text, path, PARTITION_HEADER)? {
        let bad = |message: String| DatasetError::Malformed {
            path: path.to_path_buf(),
            line,
            message,
        };
        if cols.len() != 4 {
            return Err(bad(format!(
                "expected 4 columns ({PARTITION_HEADER}), found {}",
                cols.len()
            )));
        }
        let (consumer_path, shop_path, item_id, split_name) = (cols[0], cols[1], cols[2], cols[3]);
        let split = Split::parse(split_name).ok_or_else(|| {
            bad(format!(
                "unknown evaluation_status `{split_name}` (expected train, val or test)"
            ))
        })?;
        let cparts = image_parts(consumer_path).map_err(&bad)?;
        let sparts = image_parts(shop_path).map_err(&bad)?;
        if !is_consumer_file(cparts[4]) {
            return Err(bad(format!(
                "first image `{consumer_path}` is not a consumer image (comsumer_NN / consumer_NN)"
            )));
        }
        if !sparts[4].starts_with("shop_") {
            return Err(bad(format!(
                "second image `{shop_path}` is not a shop image (shop_NN)"
            )));
        }
        if cparts[1..3] != sparts[1..3] {
            return Err(bad(format!(
                "consumer and shop images are in different categories ({}/{} vs {}/{})",
                cparts[1], cparts[2], sparts[1], sparts[2]
            )));
        }
        if cparts[3] != item_id || sparts[3] != item_id {
            return Err(bad(format!(
                "item_id `{item_id}` does not match the image folders ({}, {})",
                cparts[3], sparts[3]
            )));
        }
        let key = (cparts[1].to_string(), cparts[2].to_string());
        let category = *category_index.entry(key).or_insert_with(|| {
            categories.push(Category {
                big: cparts[1].to_string(),
                small: cparts[2].to_string(),
            });
            categories.len() - 1
        });
        let item = if let Some(&(i, first_line)) = item_index.get(item_id) {
            if items[i].split != split {
                return Err(bad(format!(
                    "item {item_id} is in `{split}` here but in `{}` at line {first_line}: items never cross splits",
                    items[i].split
                )));
            }
            i
        } else {
            items.push(Item {
                id: item_id.to_string(),
                category,
                split,
            });
            item_index.insert(item_id.to_string(), (items.len() - 1, line));
            items.len() - 1
        };
        // The path embeds the item folder (checked above), so one path is one item.
        let mut image = |p: &str, source: Source| -> usize {
            *image_index.entry(p.to_string()).or_insert_with(|| {
                images.push(ImageEntry {
                    path: p.to_string(),
                    item,
                    source,
                    bbox: None,
                    present: true,
                });
                images.len() - 1
            })
        };
        let consumer = image(consumer_path, Source::Consumer);
        let shop = image(shop_path, Source::Shop);
        pairs.push(Pair {
            consumer,
            shop,
            item,
            split,
        });
    }
    if pairs.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        images,
        items,
        categories,
        pairs,
        missing: 0,
        dropped_pairs: 0,
        warnings: Vec::new(),
    })
}
