//! `vitrine synth`: a procedural consumer-to-shop dataset written in exactly the
//! DeepFashion Consumer-to-shop layout (`img/<BIG>/<Small>/id_XXXXXXXX/{comsumer,shop}_NN.jpg`,
//! `Eval/list_eval_partition.txt`, `Anno/list_bbox_consumer2shop.txt`,
//! `Anno/list_item_consumer2shop.txt`).
//!
//! Every garment lives in a normalised garment space `(u, v) ∈ [0, 1]²` (`v` points down)
//! as a union of signed-distance primitives minus cut-outs (neckline, armholes), with
//! seams, bands and prints layered on top; its pattern is defined in garment space so it
//! moves with the garment. An image is rendered by mapping every pixel back into garment
//! space (scale, rotation, offset), so one renderer serves the clean shop views and the
//! consumer views with their domain shift (clutter, pose, lighting, blur, noise,
//! occlusion, low JPEG quality). Edges are anti-aliased analytically from the distances.
//!
//! Every image draws from its own `Rng::derive(seed, &[item, image_no, kind])` stream, so
//! the output is byte-identical whatever the number of threads.

use std::collections::HashSet;
use std::io::Write as _;
use std::ops::{Add, Mul, Neg, Sub};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;

use crate::data::deepfashion::{
    BBOX_FILE, BBOX_HEADER, ITEM_FILE, PARTITION_FILE, PARTITION_HEADER, Split,
};
use crate::fsutil::write_atomic;
use crate::rng::Rng;

/// Fewest items `generate` accepts (every used small category needs an item per split).
pub const MIN_ITEMS: usize = 12;
/// Most items (ids have 8 digits): a million items are about 3.5 million images,
/// and the item plans of ten times more would already take gigabytes.
pub const MAX_ITEMS: usize = 1_000_000;
/// Smallest image side in pixels.
pub const MIN_SIZE: u32 = 32;
/// Largest image side in pixels.
pub const MAX_SIZE: u32 = 4096;
/// JPEG quality of the shop images.
pub const SHOP_QUALITY: u8 = 92;
/// Written first into every output folder: only a folder holding it (or an empty
/// one) is regenerated, so `--out` pointed at a real dataset cannot destroy it.
pub const MARKER_FILE: &str = ".vitrine-synth";

#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Number of items (products), at least [`MIN_ITEMS`].
    pub items: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            items: 400,
            size: 128,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthReport {
    pub items: usize,
    pub consumer_images: usize,
    pub shop_images: usize,
    pub pairs: usize,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth options: {0}")]
    InvalidOptions(String),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {} as JPEG: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{} is not empty and was not written by `vitrine synth` (it has no {MARKER_FILE} file): refusing to overwrite it; pass an empty or new folder with --out (an older vitrine's synthetic set: delete it, or create an empty {MARKER_FILE} in it)",
        path.display()
    )]
    NotOurs { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One small category of the generator and where it lives in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    /// `img/<big>/...`: one of [`BIG_CATEGORIES`].
    pub big: &'static str,
    /// `img/<big>/<small>/...`.
    pub small: &'static str,
    /// `clothes_type` of the bbox file: 1 upper body, 2 lower body, 3 full body.
    pub clothes_type: u8,
}

/// The big categories, as in the release's Consumer-to-shop benchmark.
pub const BIG_CATEGORIES: [&str; 3] = ["DRESSES", "TOPS", "TROUSERS"];

const fn cat(big: &'static str, small: &'static str, clothes_type: u8) -> Category {
    Category {
        big,
        small,
        clothes_type,
    }
}

/// Every small category, in the order they are taken into use: a dataset of `n` items
/// uses the first [`categories_for`]`(n)` of them (the first three cover all big ones).
pub const CATEGORIES: [Category; 10] = [
    cat("TOPS", "T_Shirt", 1),
    cat("TROUSERS", "Jeans", 2),
    cat("DRESSES", "Mini_Dress", 3),
    cat("TOPS", "Blouse", 1),
    cat("TROUSERS", "Shorts", 2),
    cat("DRESSES", "Maxi_Dress", 3),
    cat("TOPS", "Hoodie", 1),
    cat("TROUSERS", "Skirt", 2),
    cat("DRESSES", "Shirt_Dress", 3),
    cat("TOPS", "Tank_Top", 1),
];

/// The small categories a dataset of `items` items uses: as many of [`CATEGORIES`] as
/// give every one at least three items (one per split), at most all ten. 12 items use
/// 4 categories, 24 use 8, 30 and more use all 10. Items are spread evenly over them.
pub fn categories_for(items: usize) -> &'static [Category] {
    &CATEGORIES[..(items / 3).clamp(1, CATEGORIES.len())]
}

/// `(train, val, test)` item counts of a small category with `n ≥ 3` items:
/// about 50/25/25 as in the release, at least one item in each split.
pub fn split_counts(n: usize) -> (usize, usize, usize) {
    if n < 3 {
        return (n, 0, 0);
    }
    let train = n.div_ceil(2).clamp(1, n - 2);
    let val = ((n - train) / 2).max(1);
    (train, val, n - train - val)
}

/// Writes the synthetic dataset under `out` (created if needed; files of an earlier
/// synth run are overwritten). `out` must be absent, empty, or hold [`MARKER_FILE`]:
/// anything else is [`SynthError::NotOurs`]. `progress(done, total)` is called from
/// worker threads as items finish. The annotation files are written last, atomically,
/// so they never list an image that is not there.
pub fn generate(
    opts: &SynthOptions,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SynthReport, SynthError> {
    validate(opts)?;
    claim_out(opts, out)?;
    let start = Instant::now();
    let plans = plan_items(opts);
    let total = plans.len();
    progress(0, total);
    let done = AtomicUsize::new(0);
    let written: Vec<ItemImages> = plans
        .par_iter()
        .map(|plan| {
            let r = write_item(opts, plan, out)?;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(n, total);
            Ok(r)
        })
        .collect::<Result<_, SynthError>>()?;

    let consumer_images: usize = written.iter().map(|w| w.consumer.len()).sum();
    let shop_images: usize = written.iter().map(|w| w.shop.len()).sum();
    let pairs: usize = written
        .iter()
        .map(|w| w.consumer.len() * w.shop.len())
        .sum();
    write_lists(out, &plans, &written, pairs, consumer_images + shop_images)?;

    let seconds = start.elapsed().as_secs_f64();
    let images = consumer_images + shop_images;
    tracing::debug!(
        items = total,
        images,
        pairs,
        seconds,
        "synthetic dataset written to {} ({:.0} images/s)",
        out.display(),
        images as f64 / seconds.max(1e-9)
    );
    Ok(SynthReport {
        items: total,
        consumer_images,
        shop_images,
        pairs,
        seconds,
    })
}

fn validate(opts: &SynthOptions) -> Result<(), SynthError> {
    if !(MIN_ITEMS..=MAX_ITEMS).contains(&opts.items) {
        return Err(SynthError::InvalidOptions(format!(
            "items must be between {MIN_ITEMS} and {MAX_ITEMS}, got {}",
            opts.items
        )));
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&opts.size) {
        return Err(SynthError::InvalidOptions(format!(
            "size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {}",
            opts.size
        )));
    }
    Ok(())
}

/// Refuses an `out` that holds files synth did not write, then marks it as ours. The
/// marker goes in before any image, so an interrupted run can still be regenerated.
fn claim_out(opts: &SynthOptions, out: &Path) -> Result<(), SynthError> {
    let marker = out.join(MARKER_FILE);
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if !marker.is_file() && entries.next().is_some() {
                return Err(SynthError::NotOurs {
                    path: out.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(out)(e)),
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // Options only (no time stamp): the same options give byte-identical folders.
    let text = format!(
        "# Written by `vitrine synth`: it may regenerate this folder.\nitems = {}\nsize = {}\nseed = {}\n",
        opts.items, opts.size, opts.seed
    );
    std::fs::write(&marker, text).map_err(io_err(&marker))
}

// ---------------------------------------------------------------------------------------
// Planning and files

/// Keys of the derived random streams: `Rng::derive(seed, &[item, image_no, kind])`.
const KIND_GARMENT: u64 = 0;
const KIND_SHOP: u64 = 1;
const KIND_CONSUMER: u64 = 2;
const KIND_COUNTS: u64 = 3;
const KIND_SPLIT: u64 = 4;

#[derive(Debug, Clone)]
struct ItemPlan {
    /// 1-based item id.
    id: usize,
    category: usize,
    split: Split,
    shops: usize,
    consumers: usize,
}

impl ItemPlan {
    fn dir(&self) -> String {
        let c = CATEGORIES[self.category];
        format!("img/{}/{}/{}", c.big, c.small, item_name(self.id))
    }
}

fn item_name(id: usize) -> String {
    format!("id_{id:08}")
}

/// Items in contiguous id blocks per category, splits stratified per category.
fn plan_items(opts: &SynthOptions) -> Vec<ItemPlan> {
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

/// The images written for one item: relative path and bbox `[x1, y1, x2, y2)`.
struct ItemImages {
    consumer: Vec<(String, [u32; 4])>,
    shop: Vec<(String, [u32; 4])>,
}

fn write_item(opts: &SynthOptions, plan: &ItemPlan, out: &Path) -> Result<ItemImages, SynthError> {
    let kind = KINDS[plan.category];
    let id = plan.id as u64;
    let garment = build_garment(kind, &mut Rng::derive(opts.seed, &[id, 0, KIND_GARMENT]));
    let rel_dir = plan.dir();
    let dir = out.join(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut names = HashSet::new();
    let mut emit = |file: String, rng: &mut Rng, consumer: bool| {
        let view = if consumer {
            consumer_view(&garment, rng)
        } else {
            shop_view(&garment, rng)
        };
        let path = dir.join(&file);
        let (pixels, bbox) = render(&garment, &view, opts.size, rng);
        let mut bytes = Vec::with_capacity(pixels.len() / 6);
        JpegEncoder::new_with_quality(&mut bytes, view.quality)
            .encode(&pixels, opts.size, opts.size, ExtendedColorType::Rgb8)
            .map_err(|source| SynthError::Encode {
                path: path.clone(),
                source,
            })?;
        std::fs::write(&path, &bytes).map_err(io_err(&path))?;
        let rel = format!("{rel_dir}/{file}");
        names.insert(file);
        Ok::<_, SynthError>((rel, bbox))
    };
    let mut consumer = Vec::with_capacity(plan.consumers);
    for n in 1..=plan.consumers {
        let mut rng = Rng::derive(opts.seed, &[id, n as u64, KIND_CONSUMER]);
        consumer.push(emit(format!("comsumer_{n:02}.jpg"), &mut rng, true)?);
    }
    let mut shop = Vec::with_capacity(plan.shops);
    for n in 1..=plan.shops {
        let mut rng = Rng::derive(opts.seed, &[id, n as u64, KIND_SHOP]);
        shop.push(emit(format!("shop_{n:02}.jpg"), &mut rng, false)?);
    }
    remove_stale(&dir, &names)?;
    Ok(ItemImages { consumer, shop })
}

/// Removes images of an earlier, different run from an item folder we just wrote,
/// so the folder holds exactly the listed images (only `comsumer_*.jpg`/`shop_*.jpg`).
fn remove_stale(dir: &Path, keep: &HashSet<String>) -> Result<(), SynthError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_image_name(name) && !keep.contains(name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// `comsumer_NN.jpg` or `shop_NN.jpg`, the names this generator writes.
fn is_image_name(name: &str) -> bool {
    let rest = name
        .strip_prefix("comsumer_")
        .or_else(|| name.strip_prefix("shop_"))
        .map(str::as_bytes);
    matches!(rest, Some([a, b, b'.', b'j', b'p', b'g']) if a.is_ascii_digit() && b.is_ascii_digit())
}

fn write_lists(
    out: &Path,
    plans: &[ItemPlan],
    written: &[ItemImages],
    pairs: usize,
    images: usize,
) -> Result<(), SynthError> {
    let path = out.join(PARTITION_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{pairs}")?;
        writeln!(w, "{PARTITION_HEADER}")?;
        for (plan, imgs) in plans.iter().zip(written) {
            let item = item_name(plan.id);
            for (c, _) in &imgs.consumer {
                for (s, _) in &imgs.shop {
                    writeln!(w, "{c} {s} {item} {}", plan.split.name())?;
                }
            }
        }
        Ok(())
    })
    .map_err(io_err(&path))?;

    let path = out.join(BBOX_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{images}")?;
        writeln!(w, "{BBOX_HEADER}")?;
        for (plan, imgs) in plans.iter().zip(written) {
            let clothes = CATEGORIES[plan.category].clothes_type;
            let rows = imgs
                .consumer
                .iter()
                .map(|r| (r, 2))
                .chain(imgs.shop.iter().map(|r| (r, 1)));
            for ((p, b), source) in rows {
                writeln!(
                    w,
                    "{p} {clothes} {source} {} {} {} {}",
                    b[0], b[1], b[2], b[3]
                )?;
            }
        }
        Ok(())
    })
    .map_err(io_err(&path))?;

    let path = out.join(ITEM_FILE);
    write_atomic(&path, |w| {
        writeln!(w, "{}", plans.len())?;
        writeln!(w, "item_id")?;
        for plan in plans {
            writeln!(w, "{}", item_name(plan.id))?;
        }
        Ok(())
    })
    .map_err(io_err(&path))
}

// ---------------------------------------------------------------------------------------
// Geometry

#[derive(Debug, Clone, Copy, PartialEq)]
struct V2 {
    x: f32,
    y: f32,
}

const fn v2(x: f32, y: f32) -> V2 {
    V2 { x, y }
}

impl Add for V2 {
    type Output = V2;
    fn add(self, o: V2) -> V2 {
        v2(self.x + o.x, self.y + o.y)
    }
}

impl Sub for V2 {
    type Output = V2;
    fn sub(self, o: V2) -> V2 {
        v2(self.x - o.x, self.y - o.y)
    }
}

impl Mul<f32> for V2 {
    type Output = V2;
    fn mul(self, k: f32) -> V2 {
        v2(self.x * k, self.y * k)
    }
}

impl Neg for V2 {
    type Output = V2;
    fn neg(self) -> V2 {
        v2(-self.x, -self.y)
    }
}

impl V2 {
    fn dot(self, o: V2) -> f32 {
        self.x * o.x + self.y * o.y
    }

    fn len(self) -> f32 {
        self.dot(self).sqrt()
    }

    /// Rotated by the angle whose cosine and sine are `c` and `s`.
    fn rot(self, c: f32, s: f32) -> V2 {
        v2(c * self.x - s * self.y, s * self.x + c * self.y)
    }

    /// Mirrored about the garment's centre line `u = 0.5`.
    fn mirror(self) -> V2 {
        v2(1.0 - self.x, self.y)
    }

    fn min(self, o: V2) -> V2 {
        v2(self.x.min(o.x), self.y.min(o.y))
    }

    fn max(self, o: V2) -> V2 {
        v2(self.x.max(o.x), self.y.max(o.y))
    }
}

/// A signed-distance primitive (negative inside).
#[derive(Debug, Clone)]
enum Prim {
    Poly(Vec<V2>),
    Capsule {
        a: V2,
        b: V2,
        r: f32,
    },
    Ellipse {
        c: V2,
        rx: f32,
        ry: f32,
    },
    /// Axis-aligned box with centre, half extents and corner radius.
    Rect {
        c: V2,
        h: V2,
        r: f32,
    },
}

impl Prim {
    fn sdf(&self, p: V2) -> f32 {
        match self {
            Prim::Poly(v) => sd_poly(v, p),
            Prim::Capsule { a, b, r } => {
                let pa = p - *a;
                let ba = *b - *a;
                let h = (pa.dot(ba) / ba.dot(ba).max(1e-12)).clamp(0.0, 1.0);
                (pa - ba * h).len() - r
            }
            Prim::Ellipse { c, rx, ry } => {
                // Inigo Quilez's cheap approximation, exact enough near the boundary.
                let q = p - *c;
                let k0 = v2(q.x / rx, q.y / ry).len();
                let k1 = v2(q.x / (rx * rx), q.y / (ry * ry)).len();
                if k1 < 1e-9 {
                    -rx.min(*ry)
                } else {
                    k0 * (k0 - 1.0) / k1
                }
            }
            Prim::Rect { c, h, r } => {
                let d = v2((p.x - c.x).abs() - h.x + r, (p.y - c.y).abs() - h.y + r);
                v2(d.x.max(0.0), d.y.max(0.0)).len() + d.x.max(d.y).min(0.0) - r
            }
        }
    }

    fn bounds(&self) -> (V2, V2) {
        match self {
            Prim::Poly(v) => v.iter().fold(
                (v2(f32::MAX, f32::MAX), v2(f32::MIN, f32::MIN)),
                |(lo, hi), p| (lo.min(*p), hi.max(*p)),
            ),
            Prim::Capsule { a, b, r } => (a.min(*b) - v2(*r, *r), a.max(*b) + v2(*r, *r)),
            Prim::Ellipse { c, rx, ry } => (*c - v2(*rx, *ry), *c + v2(*rx, *ry)),
            Prim::Rect { c, h, .. } => (*c - *h, *c + *h),
        }
    }

    fn mirrored(&self) -> Prim {
        match self {
            Prim::Poly(v) => Prim::Poly(v.iter().rev().map(|p| p.mirror()).collect()),
            Prim::Capsule { a, b, r } => Prim::Capsule {
                a: a.mirror(),
                b: b.mirror(),
                r: *r,
            },
            Prim::Ellipse { c, rx, ry } => Prim::Ellipse {
                c: c.mirror(),
                rx: *rx,
                ry: *ry,
            },
            Prim::Rect { c, h, r } => Prim::Rect {
                c: c.mirror(),
                h: *h,
                r: *r,
            },
        }
    }
}

/// Exact signed distance to a simple polygon (Inigo Quilez).
fn sd_poly(v: &[V2], p: V2) -> f32 {
    let Some(&last) = v.last() else {
        return f32::MAX;
    };
    let mut d = (p - v[0]).dot(p - v[0]);
    let mut s = 1.0f32;
    let mut vj = last;
    for &vi in v {
        let e = vj - vi;
        let w = p - vi;
        let b = w - e * (w.dot(e) / e.dot(e).max(1e-12)).clamp(0.0, 1.0);
        d = d.min(b.dot(b));
        let c1 = p.y >= vi.y;
        let c2 = p.y < vj.y;
        let c3 = e.x * w.y > e.y * w.x;
        if (c1 && c2 && c3) || (!c1 && !c2 && !c3) {
            s = -s;
        }
        vj = vi;
    }
    s * d.sqrt()
}

/// Union of `add` minus the union of `sub`.
#[derive(Debug, Clone, Default)]
struct Shape {
    add: Vec<Prim>,
    sub: Vec<Prim>,
}

impl Shape {
    #[cfg(test)]
    fn sdf(&self, p: V2) -> f32 {
        let mut d = f32::MAX;
        for a in &self.add {
            d = d.min(a.sdf(p));
        }
        for s in &self.sub {
            d = d.max(-s.sdf(p));
        }
        d
    }

    fn push_pair(&mut self, p: Prim) {
        self.add.push(p.mirrored());
        self.add.push(p);
    }

    fn compile(self) -> Sdf {
        let bound = |p: Prim| {
            let (lo, hi) = p.bounds();
            (p, lo, hi)
        };
        Sdf {
            add: self.add.into_iter().map(bound).collect(),
            sub: self.sub.into_iter().map(bound).collect(),
        }
    }
}

/// A [`Shape`] with the bounding box of every primitive, to skip the ones that cannot
/// change the distance (same result as [`Shape::sdf`], several times faster).
#[derive(Debug, Clone, Default)]
struct Sdf {
    add: Vec<(Prim, V2, V2)>,
    sub: Vec<(Prim, V2, V2)>,
}

/// A lower bound of the distance from `p` to anything inside the box (0 inside it).
fn box_gap(p: V2, lo: V2, hi: V2) -> f32 {
    (lo.x - p.x)
        .max(p.x - hi.x)
        .max(lo.y - p.y)
        .max(p.y - hi.y)
        .max(0.0)
}

impl Sdf {
    fn sdf(&self, p: V2) -> f32 {
        let mut d = f32::MAX;
        for (prim, lo, hi) in &self.add {
            let gap = box_gap(p, *lo, *hi);
            if gap == 0.0 || gap < d {
                d = d.min(prim.sdf(p));
            }
        }
        for (prim, lo, hi) in &self.sub {
            let gap = box_gap(p, *lo, *hi);
            if gap == 0.0 || gap < -d {
                d = d.max(-prim.sdf(p));
            }
        }
        d
    }

    fn bounds(&self) -> (V2, V2) {
        self.add.iter().fold(
            (v2(f32::MAX, f32::MAX), v2(f32::MIN, f32::MIN)),
            |(lo, hi), (_, a, b)| (lo.min(*a), hi.max(*b)),
        )
    }
}

/// Anti-aliased coverage of a shape at distance `d` for a pixel `fw` wide.
fn coverage(d: f32, fw: f32) -> f32 {
    (0.5 - d / fw).clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------
// Colour

type Rgb = [f32; 3];

const fn rgb8(r: u8, g: u8, b: u8) -> Rgb {
    [r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0]
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn tint(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

fn luma(c: Rgb) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn jitter_colour(c: Rgb, rng: &mut Rng, per_channel: f32, brightness: f32) -> Rgb {
    let b = 1.0 + brightness * rng.normal();
    [
        (c[0] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
        (c[1] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
        (c[2] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
    ]
}

/// A random muted colour (walls, furniture, clutter).
fn clutter_colour(rng: &mut Rng) -> Rgb {
    let c = [rng.f32(), rng.f32(), rng.f32()];
    let g = luma(c);
    let grey = [g, g, g];
    let c = mix(c, grey, rng.range_f32(0.2, 0.75));
    let k = rng.range_f32(0.35, 1.15);
    [
        (c[0] * k).clamp(0.02, 0.98),
        (c[1] * k).clamp(0.02, 0.98),
        (c[2] * k).clamp(0.02, 0.98),
    ]
}

const ACCENTS: [Rgb; 10] = [
    rgb8(0xF5, 0xF5, 0xF0),
    rgb8(0x18, 0x18, 0x1A),
    rgb8(0xEF, 0xE4, 0xC8),
    rgb8(0x26, 0x30, 0x4F),
    rgb8(0xC0, 0x30, 0x30),
    rgb8(0xE8, 0xC0, 0x40),
    rgb8(0x3F, 0x7F, 0x4F),
    rgb8(0xE8, 0x9A, 0xB0),
    rgb8(0x7F, 0xB0, 0xDA),
    rgb8(0xE0, 0x7A, 0x30),
];

const SKIN: [Rgb; 6] = [
    rgb8(0xF1, 0xC9, 0xA8),
    rgb8(0xE0, 0xAC, 0x84),
    rgb8(0xC6, 0x8E, 0x64),
    rgb8(0xA2, 0x6B, 0x45),
    rgb8(0x7A, 0x4E, 0x32),
    rgb8(0x56, 0x37, 0x25),
];

/// An accent colour that stands out against `base`.
fn contrasting(base: Rgb, rng: &mut Rng) -> Rgb {
    for _ in 0..8 {
        let c = *rng.pick(&ACCENTS);
        if (luma(c) - luma(base)).abs() >= 0.2 {
            return c;
        }
    }
    if luma(base) > 0.5 {
        ACCENTS[1]
    } else {
        ACCENTS[0]
    }
}

// ---------------------------------------------------------------------------------------
// Garments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TShirt,
    Jeans,
    MiniDress,
    Blouse,
    Shorts,
    MaxiDress,
    Hoodie,
    Skirt,
    ShirtDress,
    TankTop,
}

/// The silhouette family of each entry of [`CATEGORIES`].
const KINDS: [Kind; 10] = [
    Kind::TShirt,
    Kind::Jeans,
    Kind::MiniDress,
    Kind::Blouse,
    Kind::Shorts,
    Kind::MaxiDress,
    Kind::Hoodie,
    Kind::Skirt,
    Kind::ShirtDress,
    Kind::TankTop,
];

impl Kind {
    /// Base colours: items of one category share a palette (hard negatives).
    fn palette(self) -> &'static [Rgb] {
        const T_SHIRT: [Rgb; 7] = [
            rgb8(0xF2, 0xF2, 0xEE),
            rgb8(0x1E, 0x1E, 0x22),
            rgb8(0x9A, 0x9C, 0xA0),
            rgb8(0x23, 0x30, 0x5A),
            rgb8(0xB8, 0x28, 0x2E),
            rgb8(0xD9, 0xA5, 0x3A),
            rgb8(0x5F, 0x7F, 0x5A),
        ];
        const TANK: [Rgb; 6] = [
            rgb8(0xF4, 0xF4, 0xF0),
            rgb8(0x20, 0x20, 0x24),
            rgb8(0xF2, 0xA3, 0xB5),
            rgb8(0x8F, 0xC1, 0xE3),
            rgb8(0xA8, 0xDC, 0xC3),
            rgb8(0xF0, 0x8A, 0x6C),
        ];
        const BLOUSE: [Rgb; 6] = [
            rgb8(0xF3, 0xEC, 0xD9),
            rgb8(0xE8, 0xBF, 0xB6),
            rgb8(0xB9, 0xCF, 0xE6),
            rgb8(0xB7, 0xC6, 0xA5),
            rgb8(0xC9, 0xB6, 0xDD),
            rgb8(0x2A, 0x2A, 0x30),
        ];
        const HOODIE: [Rgb; 6] = [
            rgb8(0x8E, 0x90, 0x94),
            rgb8(0x1F, 0x20, 0x24),
            rgb8(0x1F, 0x2A, 0x48),
            rgb8(0x6A, 0x1F, 0x2B),
            rgb8(0x5B, 0x5E, 0x3A),
            rgb8(0xD4, 0xA5, 0xA5),
        ];
        const MINI: [Rgb; 6] = [
            rgb8(0xC1, 0x27, 0x2D),
            rgb8(0x15, 0x15, 0x18),
            rgb8(0x2F, 0x4F, 0xB0),
            rgb8(0x1E, 0x7A, 0x55),
            rgb8(0xE0, 0x46, 0x8C),
            rgb8(0xF0, 0xC5, 0x3A),
        ];
        const MAXI: [Rgb; 6] = [
            rgb8(0x27, 0x36, 0x5E),
            rgb8(0xC0, 0x64, 0x3F),
            rgb8(0x93, 0xA8, 0x86),
            rgb8(0xEF, 0xE6, 0xD2),
            rgb8(0x6E, 0x1E, 0x34),
            rgb8(0x1F, 0x6E, 0x6E),
        ];
        const SHIRT_DRESS: [Rgb; 6] = [
            rgb8(0x8F, 0xAA, 0xC9),
            rgb8(0xB8, 0xA4, 0x7A),
            rgb8(0xF1, 0xF0, 0xEA),
            rgb8(0x6B, 0x70, 0x48),
            rgb8(0x2C, 0x3D, 0x63),
            rgb8(0xD8, 0xC3, 0xA5),
        ];
        const JEANS: [Rgb; 5] = [
            rgb8(0x24, 0x34, 0x5A),
            rgb8(0x4A, 0x63, 0x89),
            rgb8(0x82, 0x99, 0xBA),
            rgb8(0x1C, 0x1C, 0x20),
            rgb8(0x5E, 0x61, 0x66),
        ];
        const SHORTS: [Rgb; 6] = [
            rgb8(0x3F, 0x5C, 0x86),
            rgb8(0x8A, 0xA3, 0xC4),
            rgb8(0xC2, 0xB2, 0x83),
            rgb8(0xEE, 0xED, 0xE6),
            rgb8(0x2A, 0x35, 0x50),
            rgb8(0x6F, 0x73, 0x50),
        ];
        const SKIRT: [Rgb; 6] = [
            rgb8(0x18, 0x18, 0x1C),
            rgb8(0xB9, 0x8A, 0x5A),
            rgb8(0x6B, 0x1E, 0x2E),
            rgb8(0x3E, 0x5A, 0x84),
            rgb8(0xE5, 0xA9, 0xB8),
            rgb8(0x7A, 0x8C, 0x6E),
        ];
        match self {
            Kind::TShirt => &T_SHIRT,
            Kind::TankTop => &TANK,
            Kind::Blouse => &BLOUSE,
            Kind::Hoodie => &HOODIE,
            Kind::MiniDress => &MINI,
            Kind::MaxiDress => &MAXI,
            Kind::ShirtDress => &SHIRT_DRESS,
            Kind::Jeans => &JEANS,
            Kind::Shorts => &SHORTS,
            Kind::Skirt => &SKIRT,
        }
    }

    /// Weights of solid, stripes, checks, dots, print.
    fn pattern_weights(self) -> [f32; 5] {
        match self {
            Kind::TShirt => [4.0, 3.0, 0.5, 1.0, 2.0],
            Kind::TankTop => [4.0, 2.0, 0.5, 1.0, 1.5],
            Kind::Blouse => [2.0, 2.0, 1.0, 2.0, 3.0],
            Kind::Hoodie => [6.0, 1.0, 0.5, 0.3, 1.0],
            Kind::MiniDress => [3.0, 1.5, 1.0, 2.0, 2.0],
            Kind::MaxiDress => [1.5, 1.5, 0.5, 1.5, 4.0],
            Kind::ShirtDress => [2.0, 3.0, 3.0, 1.0, 1.0],
            Kind::Jeans => [1.0, 0.0, 0.0, 0.0, 0.0],
            Kind::Shorts => [3.0, 1.0, 1.0, 0.5, 1.0],
            Kind::Skirt => [3.0, 1.0, 2.5, 1.0, 1.5],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Solid,
    Stripes,
    Checks,
    Dots,
    Print,
}

const PATTERNS: [Pattern; 5] = [
    Pattern::Solid,
    Pattern::Stripes,
    Pattern::Checks,
    Pattern::Dots,
    Pattern::Print,
];

fn pick_weighted(rng: &mut Rng, weights: &[f32]) -> usize {
    let total: f32 = weights.iter().sum();
    let mut x = rng.f32() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
enum Ink {
    /// Multiplies the surface colour (seams darker, highlights lighter).
    Tone(f32),
    /// Paints a colour (graphics, drawstrings, buttons).
    Paint(Rgb),
}

/// A detail drawn on the garment's front: filled, or as a ring `ring` wide just outside
/// the primitive's boundary.
#[derive(Debug, Clone)]
struct Detail {
    prim: Prim,
    ring: f32,
    ink: Ink,
}

impl Detail {
    fn fill(prim: Prim, ink: Ink) -> Self {
        Self {
            prim,
            ring: 0.0,
            ink,
        }
    }

    fn line(a: V2, b: V2, width: f32, ink: Ink) -> Self {
        Self::fill(Prim::Capsule { a, b, r: width }, ink)
    }

    fn sdf(&self, p: V2) -> f32 {
        let d = self.prim.sdf(p);
        if self.ring > 0.0 {
            (d - 0.5 * self.ring).abs() - 0.5 * self.ring
        } else {
            d
        }
    }
}

/// A garment: its shape in garment space and its surface.
#[derive(Debug, Clone)]
struct Garment {
    front: Sdf,
    /// The inside of the back, seen through the neckline.
    back: Option<Sdf>,
    /// Details with their bounding boxes.
    details: Vec<(Detail, V2, V2)>,
    /// A wearer's skin and other clothes, shown in some consumer images.
    skin: Sdf,
    other: Sdf,
    lo: V2,
    hi: V2,
    body_lo: V2,
    body_hi: V2,
    base: Rgb,
    second: Rgb,
    third: Rgb,
    pattern: Pattern,
    /// Pattern period in garment units, rotation, phase (in periods), stripe duty.
    period: f32,
    pat_cos: f32,
    pat_sin: f32,
    phase: V2,
    duty: f32,
    /// Pinstripe / tartan line of the third colour.
    accent: bool,
    print_seed: u32,
    /// Fine diagonal twill (denim) amplitude, light fade of worn denim.
    twill: f32,
    fade: f32,
    /// Soft folds: frequency vector, phase, amplitude.
    fold: [f32; 4],
}

/// The parts a garment builder produces.
#[derive(Default)]
struct Form {
    front: Shape,
    back: Option<Shape>,
    details: Vec<Detail>,
    skin: Shape,
    other: Shape,
}

#[derive(Debug, Clone, Copy)]
enum Neck {
    Round,
    V,
    Square,
}

#[derive(Debug, Clone, Copy)]
struct Sleeve {
    /// Degrees below horizontal.
    angle: f32,
    len: f32,
    /// Cuff width relative to the armhole width.
    cuff: f32,
}

/// The upper part shared by tops and dresses.
#[derive(Debug, Clone, Copy)]
struct TopSpec {
    /// Shoulder line at the neck.
    sy: f32,
    /// Half width at the shoulder tips (or the outer edge of the straps).
    sw: f32,
    /// Armpit height and half width of the chest.
    ay: f32,
    cw: f32,
    waist: Option<(f32, f32)>,
    hy: f32,
    hw: f32,
    /// Sleeveless with straps and armhole cut-outs.
    straps: bool,
    sleeve: Option<Sleeve>,
    neck: Neck,
    nw: f32,
    nd: f32,
    rib: bool,
}

impl TopSpec {
    fn slope(&self) -> f32 {
        if self.straps { 0.0 } else { 0.03 }
    }

    fn shoulder_tip(&self) -> V2 {
        v2(0.5 + self.sw, self.sy + self.slope())
    }

    fn armpit(&self) -> V2 {
        v2(0.5 + self.cw, self.ay)
    }

    /// Width of the (straight or flared) garment at height `y` below the waist.
    fn half_width_at(&self, y: f32) -> f32 {
        let (wy, ww) = self.waist.unwrap_or((self.ay, self.cw));
        let t = ((y - wy) / (self.hy - wy).max(1e-3)).clamp(0.0, 1.0);
        ww + (self.hw - ww) * t
    }
}

/// The sleeve polygon from the shoulder tip `t` and armpit `a`, and its cuff edge.
fn sleeve_poly(t: V2, a: V2, s: Sleeve) -> (Prim, V2, V2, V2) {
    let (sin, cos) = s.angle.to_radians().sin_cos();
    let dir = v2(cos, sin);
    let n = v2(-sin, cos);
    let m = (t + a) * 0.5;
    let wc = (t - a).len() * 0.5 * s.cuff;
    let mc = m + dir * s.len;
    let c1 = mc - n * wc;
    let c2 = mc + n * wc;
    (Prim::Poly(vec![t, c1, c2, a]), c1, c2, dir)
}

fn neck_cut(neck: Neck, sy: f32, nw: f32, nd: f32) -> Prim {
    match neck {
        Neck::Round => Prim::Ellipse {
            c: v2(0.5, sy - 0.005),
            rx: nw,
            ry: nd + 0.005,
        },
        Neck::V => {
            let w = nw * (1.0 + 0.06 / nd);
            Prim::Poly(vec![
                v2(0.5 - w, sy - 0.06),
                v2(0.5 + w, sy - 0.06),
                v2(0.5, sy + nd),
            ])
        }
        Neck::Square => Prim::Rect {
            c: v2(0.5, sy + 0.5 * (nd - 0.06)),
            h: v2(nw, 0.5 * (nd + 0.06)),
            r: 0.008,
        },
    }
}

fn top_form(s: &TopSpec, rng: &mut Rng) -> Form {
    let c = 0.5;
    let tip = s.shoulder_tip();
    let pit = s.armpit();
    let nk = (s.nw + 0.012).min(s.sw - 0.01);
    let mut right = vec![tip, pit];
    if let Some((wy, ww)) = s.waist {
        right.push(v2(c + ww, wy));
    }
    right.push(v2(c + s.hw, s.hy));
    let mut pts = vec![v2(c - nk, s.sy), v2(c + nk, s.sy)];
    pts.extend(right.iter().copied());
    pts.extend(right.iter().rev().map(|p| p.mirror()));
    let mut f = Form::default();
    f.front.add.push(Prim::Poly(pts));
    if let Some(sl) = s.sleeve {
        let (poly, ..) = sleeve_poly(tip, pit, sl);
        f.front.push_pair(poly);
    }
    if s.straps {
        let arm = Prim::Ellipse {
            c: v2(c + s.cw + 0.03, s.sy),
            rx: s.cw + 0.03 - s.sw,
            ry: s.ay - s.sy,
        };
        f.front.sub.push(arm.mirrored());
        f.front.sub.push(arm);
    }
    let cut = neck_cut(s.neck, s.sy, s.nw, s.nd);
    f.front.sub.push(cut.clone());
    f.back = Some(Shape {
        add: vec![cut.clone()],
        sub: vec![Prim::Rect {
            c: v2(0.5, s.sy + 0.012 - 0.5),
            h: v2(0.6, 0.5),
            r: 0.0,
        }],
    });
    if s.rib {
        f.details.push(Detail {
            prim: cut,
            ring: 0.014,
            ink: Ink::Tone(0.88),
        });
    }
    // Hem stitching.
    let hy = s.hy - 0.022;
    let hw = s.half_width_at(hy) - 0.012;
    f.details.push(Detail::line(
        v2(c - hw, hy),
        v2(c + hw, hy),
        0.0025,
        Ink::Tone(0.82),
    ));

    // A wearer: head, neck, chest (seen through the neckline), arms.
    f.skin.add.push(Prim::Ellipse {
        c: v2(c, s.sy - 0.1),
        rx: 0.065,
        ry: 0.085,
    });
    f.skin.add.push(Prim::Capsule {
        a: v2(c, s.sy - 0.06),
        b: v2(c, s.sy + 0.03),
        r: 0.035,
    });
    f.skin.add.push(Prim::Ellipse {
        c: v2(c, s.sy + 0.03),
        rx: s.nw + 0.03,
        ry: s.nd + 0.03,
    });
    let arm_angle = rng.range_f32(72.0, 82.0).to_radians();
    let shoulder = (tip + pit) * 0.5 - v2(0.02, 0.0);
    f.skin.push_pair(Prim::Capsule {
        a: shoulder,
        b: shoulder + v2(arm_angle.cos(), arm_angle.sin()) * 0.5,
        r: 0.03,
    });
    f
}

/// Draws the front placket with `n` buttons from `y0` to `y1`.
/// A waist belt across the garment at height `y`: a grey `tone` or an accent colour
/// (the draw order of `rng` is part of the seeded output).
fn belt(rng: &mut Rng, c: f32, y: f32, tone: f32, half_height: f32) -> Detail {
    let ink = if rng.chance(0.5) {
        Ink::Tone(tone)
    } else {
        Ink::Paint(*rng.pick(&ACCENTS))
    };
    Detail::fill(
        Prim::Rect {
            c: v2(c, y),
            h: v2(0.5, half_height),
            r: 0.0,
        },
        ink,
    )
}

fn placket(details: &mut Vec<Detail>, y0: f32, y1: f32, n: usize, button: Rgb) {
    details.push(Detail::line(
        v2(0.5, y0),
        v2(0.5, y1),
        0.003,
        Ink::Tone(0.8),
    ));
    for i in 0..n {
        let y = y0 + 0.03 + (y1 - y0 - 0.06) * i as f32 / (n.max(2) - 1) as f32;
        details.push(Detail::fill(
            Prim::Ellipse {
                c: v2(0.508, y),
                rx: 0.008,
                ry: 0.008,
            },
            Ink::Paint(button),
        ));
    }
}

/// Legs below a dress or skirt hem (skin), or trousers below a top (other clothes).
fn legs_below(f: &mut Form, hy: f32, half: f32, trousers: bool) {
    if trousers {
        f.other.add.push(Prim::Poly(vec![
            v2(0.5 - half, hy - 0.06),
            v2(0.5 + half, hy - 0.06),
            v2(0.5 + half * 1.05, 1.35),
            v2(0.5 - half * 1.05, 1.35),
        ]));
    } else {
        f.skin.push_pair(Prim::Capsule {
            a: v2(0.56, hy - 0.05),
            b: v2(0.575, 1.3),
            r: 0.04,
        });
    }
}

fn neck_choice(rng: &mut Rng, weights: [f32; 3]) -> Neck {
    [Neck::Round, Neck::V, Neck::Square][pick_weighted(rng, &weights)]
}

fn build_top(kind: Kind, rng: &mut Rng) -> Form {
    let c = 0.5;
    match kind {
        Kind::TShirt => {
            let sy = rng.range_f32(0.15, 0.17);
            let sw = rng.range_f32(0.16, 0.19);
            let cw = sw + rng.range_f32(-0.01, 0.01);
            let neck = neck_choice(rng, [0.7, 0.3, 0.0]);
            let nd = match neck {
                Neck::V => rng.range_f32(0.08, 0.12),
                _ => rng.range_f32(0.035, 0.06),
            };
            let s = TopSpec {
                sy,
                sw,
                ay: sy + rng.range_f32(0.12, 0.14),
                cw,
                waist: None,
                hy: rng.range_f32(0.78, 0.86),
                hw: cw + rng.range_f32(-0.005, 0.02),
                straps: false,
                sleeve: Some(Sleeve {
                    angle: rng.range_f32(32.0, 45.0),
                    len: rng.range_f32(0.10, 0.16),
                    cuff: rng.range_f32(0.8, 0.95),
                }),
                neck,
                nw: rng.range_f32(0.055, 0.07),
                nd,
                rib: true,
            };
            let mut f = top_form(&s, rng);
            // Sleeve hems.
            if let Some(sl) = s.sleeve {
                let (_, c1, c2, dir) = sleeve_poly(s.shoulder_tip(), s.armpit(), sl);
                let back = dir * -0.02;
                let d = Detail::line(c1 + back, c2 + back, 0.0025, Ink::Tone(0.82));
                f.details.push(Detail {
                    prim: d.prim.mirrored(),
                    ..d.clone()
                });
                f.details.push(d);
            }
            if rng.chance(0.35) {
                chest_graphic(&mut f, sy + rng.range_f32(0.14, 0.2), rng);
            }
            legs_below(&mut f, s.hy, s.hw * 0.9, true);
            f
        }
        Kind::TankTop => {
            let sy = rng.range_f32(0.12, 0.15);
            let nw = rng.range_f32(0.06, 0.075);
            let strap = rng.range_f32(0.03, 0.05);
            let cw = rng.range_f32(0.15, 0.17);
            let neck = neck_choice(rng, [0.6, 0.25, 0.15]);
            let s = TopSpec {
                sy,
                sw: nw + strap + 0.012,
                ay: sy + rng.range_f32(0.15, 0.18),
                cw,
                waist: None,
                hy: rng.range_f32(0.74, 0.84),
                hw: cw + rng.range_f32(0.0, 0.02),
                straps: true,
                sleeve: None,
                neck,
                nw,
                nd: rng.range_f32(0.09, 0.15),
                rib: true,
            };
            let mut f = top_form(&s, rng);
            // Bound armholes.
            let arm = Prim::Ellipse {
                c: v2(c + s.cw + 0.03, s.sy),
                rx: s.cw + 0.03 - s.sw,
                ry: s.ay - s.sy,
            };
            for prim in [arm.mirrored(), arm] {
                f.details.push(Detail {
                    prim,
                    ring: 0.012,
                    ink: Ink::Tone(0.88),
                });
            }
            legs_below(&mut f, s.hy, s.hw * 0.9, true);
            f
        }
        Kind::Blouse => {
            let sy = rng.range_f32(0.14, 0.16);
            let sw = rng.range_f32(0.15, 0.175);
            let cw = sw + rng.range_f32(0.0, 0.01);
            let ay = sy + 0.13;
            let neck = neck_choice(rng, [0.25, 0.5, 0.25]);
            let nd = match neck {
                Neck::V => rng.range_f32(0.09, 0.14),
                _ => rng.range_f32(0.04, 0.07),
            };
            let s = TopSpec {
                sy,
                sw,
                ay,
                cw,
                waist: Some((
                    ay + rng.range_f32(0.18, 0.22),
                    cw - rng.range_f32(0.01, 0.025),
                )),
                hy: rng.range_f32(0.76, 0.84),
                hw: cw + rng.range_f32(0.03, 0.07),
                straps: false,
                sleeve: Some(Sleeve {
                    angle: rng.range_f32(72.0, 80.0),
                    len: rng.range_f32(0.40, 0.48),
                    cuff: rng.range_f32(0.9, 1.25),
                }),
                neck,
                nw: rng.range_f32(0.05, 0.07),
                nd,
                rib: false,
            };
            let mut f = top_form(&s, rng);
            if rng.chance(0.5) {
                let button = *rng.pick(&ACCENTS);
                placket(&mut f.details, sy + nd, s.hy - 0.01, 5, button);
            }
            legs_below(&mut f, s.hy, s.hw * 0.85, true);
            f
        }
        _ => {
            // Hoodie.
            let sy = rng.range_f32(0.17, 0.19);
            let sw = rng.range_f32(0.17, 0.2);
            let cw = sw + rng.range_f32(0.0, 0.015);
            let s = TopSpec {
                sy,
                sw,
                ay: sy + 0.14,
                cw,
                waist: None,
                hy: rng.range_f32(0.8, 0.88),
                hw: cw - rng.range_f32(0.0, 0.02),
                straps: false,
                sleeve: Some(Sleeve {
                    angle: rng.range_f32(55.0, 65.0),
                    len: rng.range_f32(0.4, 0.46),
                    cuff: rng.range_f32(0.7, 0.85),
                }),
                neck: Neck::Round,
                nw: rng.range_f32(0.055, 0.065),
                nd: rng.range_f32(0.045, 0.06),
                rib: false,
            };
            let mut f = top_form(&s, rng);
            f.front.add.push(Prim::Ellipse {
                c: v2(c, sy - 0.015),
                rx: rng.range_f32(0.11, 0.13),
                ry: rng.range_f32(0.09, 0.11),
            });
            // Ribbed hem and cuffs, kangaroo pocket, drawstrings.
            f.details.push(Detail::fill(
                Prim::Rect {
                    c: v2(c, s.hy - 0.025),
                    h: v2(0.5, 0.025),
                    r: 0.0,
                },
                Ink::Tone(0.86),
            ));
            if let Some(sl) = s.sleeve {
                let (_, c1, c2, dir) = sleeve_poly(s.shoulder_tip(), s.armpit(), sl);
                let back = dir * -0.05;
                let cuff = Prim::Poly(vec![c1 + back, c1, c2, c2 + back]);
                f.details
                    .push(Detail::fill(cuff.mirrored(), Ink::Tone(0.86)));
                f.details.push(Detail::fill(cuff, Ink::Tone(0.86)));
            }
            // The hood's opening shows its inside.
            f.back = Some(Shape {
                add: vec![neck_cut(Neck::Round, sy, s.nw, s.nd)],
                sub: Vec::new(),
            });
            let top = s.hy - rng.range_f32(0.2, 0.24);
            f.details.push(Detail {
                prim: Prim::Poly(vec![
                    v2(c - 0.09, top),
                    v2(c + 0.09, top),
                    v2(c + 0.14, s.hy - 0.05),
                    v2(c - 0.14, s.hy - 0.05),
                ]),
                ring: 0.006,
                ink: Ink::Tone(0.78),
            });
            let string = if rng.chance(0.5) {
                ACCENTS[0]
            } else {
                *rng.pick(&ACCENTS)
            };
            for x in [-0.028, 0.028] {
                f.details.push(Detail::line(
                    v2(c + x, sy + 0.05),
                    v2(c + x * 1.2, sy + 0.19),
                    0.005,
                    Ink::Paint(string),
                ));
            }
            if rng.chance(0.3) {
                chest_graphic(&mut f, sy + 0.17, rng);
            }
            legs_below(&mut f, s.hy, s.hw * 0.9, true);
            f
        }
    }
}

fn chest_graphic(f: &mut Form, y: f32, rng: &mut Rng) {
    let colour = *rng.pick(&ACCENTS);
    let w = rng.range_f32(0.05, 0.1);
    let h = rng.range_f32(0.03, 0.07);
    let prim = if rng.chance(0.5) {
        Prim::Rect {
            c: v2(0.5, y),
            h: v2(w, h),
            r: 0.01,
        }
    } else {
        Prim::Ellipse {
            c: v2(0.5, y),
            rx: w,
            ry: h,
        }
    };
    f.details.push(Detail::fill(prim, Ink::Paint(colour)));
}

fn build_dress(kind: Kind, rng: &mut Rng) -> Form {
    let c = 0.5;
    match kind {
        Kind::MiniDress | Kind::MaxiDress => {
            let maxi = kind == Kind::MaxiDress;
            let sy = if maxi {
                rng.range_f32(0.07, 0.09)
            } else {
                rng.range_f32(0.1, 0.13)
            };
            let nw = rng.range_f32(0.05, 0.07);
            let strap = if maxi || rng.chance(0.5) {
                rng.range_f32(0.01, 0.02)
            } else {
                rng.range_f32(0.03, 0.045)
            };
            let cw = if maxi {
                rng.range_f32(0.13, 0.15)
            } else {
                rng.range_f32(0.14, 0.16)
            };
            let ay = sy + rng.range_f32(0.14, 0.17);
            let wy = if maxi {
                rng.range_f32(0.33, 0.37)
            } else {
                rng.range_f32(0.4, 0.44)
            };
            let ww = cw - rng.range_f32(0.02, 0.035);
            let neck = if maxi {
                neck_choice(rng, [0.4, 0.6, 0.0])
            } else {
                neck_choice(rng, [0.4, 0.35, 0.25])
            };
            let s = TopSpec {
                sy,
                sw: nw + strap + 0.012,
                ay,
                cw,
                waist: Some((wy, ww)),
                hy: if maxi {
                    rng.range_f32(0.94, 0.98)
                } else {
                    rng.range_f32(0.68, 0.76)
                },
                hw: if maxi {
                    rng.range_f32(0.3, 0.4)
                } else {
                    rng.range_f32(0.25, 0.32)
                },
                straps: true,
                sleeve: None,
                neck,
                nw,
                nd: if maxi {
                    rng.range_f32(0.08, 0.14)
                } else {
                    rng.range_f32(0.06, 0.12)
                },
                rib: false,
            };
            let mut f = top_form(&s, rng);
            if rng.chance(0.4) {
                f.details.push(belt(rng, c, wy, 0.7, 0.014));
            } else {
                f.details.push(Detail::line(
                    v2(c - ww, wy),
                    v2(c + ww, wy),
                    0.003,
                    Ink::Tone(0.78),
                ));
            }
            if maxi && rng.chance(0.4) {
                for t in [0.4f32, 0.7] {
                    let y = wy + (s.hy - wy) * t;
                    let w = s.half_width_at(y);
                    f.details.push(Detail::line(
                        v2(c - w, y),
                        v2(c + w, y),
                        0.003,
                        Ink::Tone(0.8),
                    ));
                }
            }
            if !maxi {
                legs_below(&mut f, s.hy, 0.0, false);
            }
            f
        }
        _ => {
            // Shirt dress.
            let sy = rng.range_f32(0.13, 0.15);
            let sw = rng.range_f32(0.15, 0.17);
            let cw = sw + rng.range_f32(-0.005, 0.01);
            let ay = sy + 0.13;
            let wy = rng.range_f32(0.42, 0.46);
            let nw = rng.range_f32(0.035, 0.05);
            let nd = rng.range_f32(0.06, 0.08);
            let s = TopSpec {
                sy,
                sw,
                ay,
                cw,
                waist: Some((wy, cw - rng.range_f32(0.0, 0.02))),
                hy: rng.range_f32(0.84, 0.92),
                hw: cw + rng.range_f32(0.04, 0.08),
                straps: false,
                sleeve: Some(Sleeve {
                    angle: rng.range_f32(45.0, 60.0),
                    len: rng.range_f32(0.12, 0.24),
                    cuff: rng.range_f32(0.85, 0.95),
                }),
                neck: Neck::V,
                nw,
                nd,
                rib: false,
            };
            let mut f = top_form(&s, rng);
            let collar = Prim::Poly(vec![
                v2(c + 0.004, sy + nd),
                v2(c + nw + 0.035, sy - 0.01),
                v2(c + nw + 0.055, sy + 0.055),
            ]);
            for prim in [collar.mirrored(), collar] {
                f.details.push(Detail::fill(prim.clone(), Ink::Tone(1.1)));
                f.details.push(Detail {
                    prim,
                    ring: 0.004,
                    ink: Ink::Tone(0.75),
                });
            }
            let button = *rng.pick(&ACCENTS);
            placket(&mut f.details, sy + nd, s.hy - 0.02, 6, button);
            if rng.chance(0.6) {
                f.details.push(belt(rng, c, wy, 0.72, 0.016));
            }
            legs_below(&mut f, s.hy, 0.0, false);
            f
        }
    }
}

/// Waistband, fly and pockets of jeans and shorts.
fn trouser_details(f: &mut Form, wy: f32, ww: f32, hipy: f32, hp: f32, cy: f32, rng: &mut Rng) {
    let c = 0.5;
    f.details.push(Detail::fill(
        Prim::Rect {
            c: v2(c, wy + 0.018),
            h: v2(0.5, 0.018),
            r: 0.0,
        },
        Ink::Tone(0.86),
    ));
    f.details.push(Detail::line(
        v2(c + 0.014, wy + 0.04),
        v2(c + 0.014, cy - 0.07),
        0.0025,
        Ink::Tone(0.78),
    ));
    f.details.push(Detail::line(
        v2(c + 0.014, cy - 0.07),
        v2(c, cy - 0.035),
        0.0025,
        Ink::Tone(0.78),
    ));
    let pocket = Detail::line(
        v2(c + ww - 0.06, wy + 0.036),
        v2(c + hp - 0.004, hipy - rng.range_f32(0.01, 0.04)),
        0.003,
        Ink::Tone(0.76),
    );
    f.details.push(Detail {
        prim: pocket.prim.mirrored(),
        ..pocket.clone()
    });
    f.details.push(pocket);
    for x in [-(ww - 0.03), ww - 0.03, 0.0] {
        let prim = Prim::Rect {
            c: v2(c + x, wy + 0.018),
            h: v2(0.006, 0.02),
            r: 0.002,
        };
        f.details.push(Detail::fill(prim, Ink::Tone(0.78)));
    }
    f.details.push(Detail::fill(
        Prim::Ellipse {
            c: v2(c, wy + 0.018),
            rx: 0.009,
            ry: 0.009,
        },
        Ink::Paint(rgb8(0xB4, 0xA8, 0x88)),
    ));
    // The wearer: a top above the waist with arms beside it.
    f.other.add.push(Prim::Rect {
        c: v2(c, wy - 0.2),
        h: v2(ww + 0.04, 0.23),
        r: 0.04,
    });
    f.skin.push_pair(Prim::Capsule {
        a: v2(c + ww + 0.06, wy - 0.35),
        b: v2(c + ww + 0.085, wy + 0.2),
        r: 0.03,
    });
}

fn build_bottom(kind: Kind, rng: &mut Rng) -> Form {
    let c = 0.5;
    let mut f = Form::default();
    match kind {
        Kind::Jeans | Kind::Shorts => {
            let shorts = kind == Kind::Shorts;
            let wy = if shorts {
                rng.range_f32(0.09, 0.11)
            } else {
                rng.range_f32(0.05, 0.07)
            };
            let ww = if shorts {
                rng.range_f32(0.16, 0.19)
            } else {
                rng.range_f32(0.15, 0.175)
            };
            let hipy = wy + if shorts { 0.14 } else { 0.16 };
            let hp = ww
                + if shorts {
                    rng.range_f32(0.025, 0.04)
                } else {
                    rng.range_f32(0.02, 0.035)
                };
            let cy = if shorts {
                rng.range_f32(0.38, 0.42)
            } else {
                rng.range_f32(0.36, 0.4)
            };
            let hy = if shorts {
                rng.range_f32(0.54, 0.64)
            } else {
                rng.range_f32(0.94, 0.99)
            };
            let lw = if shorts {
                rng.range_f32(0.08, 0.105)
            } else {
                rng.range_f32(0.04, 0.075)
            };
            let oh = if shorts {
                hp + rng.range_f32(0.01, 0.035)
            } else {
                hp - rng.range_f32(0.0, 0.03) + (lw - 0.055) * 0.8
            };
            let ih = (oh - 2.0 * lw).max(0.015);
            let right = [v2(c + hp, hipy), v2(c + oh, hy), v2(c + ih, hy)];
            let mut pts = vec![v2(c - ww, wy), v2(c + ww, wy)];
            pts.extend(right);
            pts.push(v2(c, cy));
            pts.extend(right.iter().rev().map(|p| p.mirror()));
            f.front.add.push(Prim::Poly(pts));
            trouser_details(&mut f, wy, ww, hipy, hp, cy, rng);
            if shorts {
                if rng.chance(0.5) {
                    f.details.push(Detail::fill(
                        Prim::Rect {
                            c: v2(c, hy - 0.02),
                            h: v2(0.5, 0.02),
                            r: 0.0,
                        },
                        Ink::Tone(0.85),
                    ));
                }
                let mid = (oh + ih) * 0.5;
                f.skin.push_pair(Prim::Capsule {
                    a: v2(c + mid, hy - 0.05),
                    b: v2(c + mid + 0.01, 1.3),
                    r: 0.045,
                });
            } else {
                // Shoes.
                let mid = (oh + ih) * 0.5;
                f.other.push_pair(Prim::Ellipse {
                    c: v2(c + mid + 0.02, hy + 0.02),
                    rx: lw + 0.03,
                    ry: 0.03,
                });
            }
            // Inseam stitching down each leg.
            let seam = Detail::line(
                v2(c + hp - 0.01, hipy + 0.02),
                v2(c + oh - 0.012, hy - 0.01),
                0.0025,
                Ink::Tone(0.85),
            );
            f.details.push(Detail {
                prim: seam.prim.mirrored(),
                ..seam.clone()
            });
            f.details.push(seam);
        }
        _ => {
            // Skirt.
            let wy = rng.range_f32(0.09, 0.11);
            let ww = rng.range_f32(0.14, 0.165);
            let hy = rng.range_f32(0.58, 0.82);
            let hw = rng.range_f32(0.24, 0.36);
            f.front.add.push(Prim::Poly(vec![
                v2(c - ww, wy),
                v2(c + ww, wy),
                v2(c + hw, hy),
                v2(c + hw * 0.5, hy + 0.015),
                v2(c - hw * 0.5, hy + 0.015),
                v2(c - hw, hy),
            ]));
            f.details.push(Detail::fill(
                Prim::Rect {
                    c: v2(c, wy + 0.02),
                    h: v2(0.5, 0.02),
                    r: 0.0,
                },
                Ink::Tone(0.85),
            ));
            if rng.chance(0.45) {
                let n = rng.range_usize(3, 5);
                for i in 1..n {
                    let t = i as f32 / n as f32 * 2.0 - 1.0;
                    f.details.push(Detail::line(
                        v2(c + ww * t * 0.9, wy + 0.04),
                        v2(c + hw * t * 0.9, hy),
                        0.0025,
                        Ink::Tone(0.78),
                    ));
                }
            }
            f.other.add.push(Prim::Rect {
                c: v2(c, wy - 0.2),
                h: v2(ww + 0.04, 0.23),
                r: 0.04,
            });
            f.skin.push_pair(Prim::Capsule {
                a: v2(c + ww + 0.06, wy - 0.35),
                b: v2(c + ww + 0.085, wy + 0.2),
                r: 0.03,
            });
            legs_below(&mut f, hy, 0.0, false);
        }
    }
    f
}

fn build_garment(kind: Kind, rng: &mut Rng) -> Garment {
    let form = match kind {
        Kind::TShirt | Kind::TankTop | Kind::Blouse | Kind::Hoodie => build_top(kind, rng),
        Kind::MiniDress | Kind::MaxiDress | Kind::ShirtDress => build_dress(kind, rng),
        Kind::Jeans | Kind::Shorts | Kind::Skirt => build_bottom(kind, rng),
    };
    let palette = kind.palette();
    let base_index = rng.below(palette.len());
    let base = jitter_colour(palette[base_index], rng, 0.04, 0.05);
    let second = jitter_colour(contrasting(base, rng), rng, 0.03, 0.04);
    let third = jitter_colour(*rng.pick(&ACCENTS), rng, 0.03, 0.04);
    let pattern = PATTERNS[pick_weighted(rng, &kind.pattern_weights())];
    let (period, angle, duty) = match pattern {
        Pattern::Solid => (0.05, 0.0, 0.5),
        Pattern::Stripes => (
            rng.range_f32(0.025, 0.08),
            *rng.pick(&[0.0f32, 0.0, 90.0, 45.0]) + rng.range_f32(-4.0, 4.0),
            rng.range_f32(0.3, 0.55),
        ),
        Pattern::Checks => (
            rng.range_f32(0.04, 0.1),
            *rng.pick(&[0.0f32, 0.0, 45.0]) + rng.range_f32(-3.0, 3.0),
            rng.range_f32(0.35, 0.5),
        ),
        Pattern::Dots => (
            rng.range_f32(0.035, 0.08),
            rng.range_f32(-20.0, 20.0),
            rng.range_f32(0.18, 0.32),
        ),
        Pattern::Print => (rng.range_f32(0.06, 0.14), rng.range_f32(0.0, 360.0), 0.5),
    };
    let (pat_sin, pat_cos) = angle.to_radians().sin_cos();
    let denim = match kind {
        Kind::Jeans => true,
        Kind::Shorts => base_index < 2,
        Kind::Skirt => base_index == 3,
        _ => false,
    };
    let front = form.front.compile();
    let skin = form.skin.compile();
    let other = form.other.compile();
    let (lo, hi) = front.bounds();
    let (slo, shi) = skin.bounds();
    let (olo, ohi) = other.bounds();
    let details = form
        .details
        .into_iter()
        .map(|d| {
            let (a, b) = d.prim.bounds();
            let m = v2(d.ring, d.ring);
            (d, a - m, b + m)
        })
        .collect();
    Garment {
        lo,
        hi,
        body_lo: slo.min(olo),
        body_hi: shi.max(ohi),
        front,
        back: form.back.map(Shape::compile),
        details,
        skin,
        other,
        base,
        second,
        third,
        pattern,
        period,
        pat_cos,
        pat_sin,
        phase: v2(rng.f32(), rng.f32()),
        duty,
        accent: rng.chance(0.35),
        print_seed: rng.next_u64() as u32,
        twill: if denim {
            rng.range_f32(0.05, 0.09)
        } else {
            0.0
        },
        fade: if denim { rng.range_f32(0.0, 0.15) } else { 0.0 },
        fold: [
            rng.range_f32(1.0, 4.0),
            rng.range_f32(2.0, 6.0),
            rng.range_f32(0.0, std::f32::consts::TAU),
            rng.range_f32(0.02, 0.05),
        ],
    }
}

/// Coverage of the band `[0, duty)` of a unit-period stripe at coordinate `t`, filtered
/// over a pixel `fw` periods wide (fades to the mean when stripes get too fine).
fn stripe(t: f32, duty: f32, fw: f32) -> f32 {
    let f = t - t.floor();
    let d = if f < duty {
        -(f.min(duty - f))
    } else {
        (f - duty).min(1.0 - f)
    };
    let a = coverage(d, fw);
    let blur = ((fw - 0.4) / 0.6).clamp(0.0, 1.0);
    a + (duty - a) * blur
}

fn hash2(x: i32, y: i32, seed: u32) -> u32 {
    let mut h = seed
        ^ (x as u32).wrapping_mul(0x27D4_EB2D)
        ^ (y as u32).wrapping_mul(0x1656_67B1).rotate_left(13);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^= h >> 15;
    h
}

fn hash_unit(h: u32, k: u32) -> f32 {
    (h.rotate_left(k * 11) >> 8) as f32 / 16_777_216.0
}

impl Garment {
    /// The fabric's colour at garment point `q` (pattern only).
    fn fabric(&self, q: V2, fw: f32) -> Rgb {
        if self.pattern == Pattern::Solid {
            return self.base;
        }
        let inv = 1.0 / self.period;
        let p = (q - v2(0.5, 0.5)).rot(self.pat_cos, self.pat_sin) * inv + self.phase;
        let fc = fw * inv;
        match self.pattern {
            Pattern::Solid => self.base,
            Pattern::Stripes => {
                let mut c = mix(self.base, self.second, stripe(p.y, self.duty, fc));
                if self.accent {
                    c = mix(c, self.third, stripe(p.y + 0.5 * self.duty + 0.45, 0.1, fc));
                }
                c
            }
            Pattern::Checks => {
                let a = stripe(p.x, self.duty, fc);
                let b = stripe(p.y, self.duty, fc);
                let mut c = mix(self.base, self.second, 0.5 * (a + b));
                if self.accent {
                    let a = stripe(p.x + 0.7, 0.08, fc);
                    let b = stripe(p.y + 0.7, 0.08, fc);
                    c = mix(c, self.third, a.max(b));
                }
                c
            }
            Pattern::Dots => {
                let row = p.y.floor();
                let x = p.x + if (row as i32) & 1 == 1 { 0.5 } else { 0.0 };
                let l = v2(x - x.floor() - 0.5, p.y - row - 0.5);
                let a = coverage(l.len() - self.duty, fc);
                let mean = std::f32::consts::PI * self.duty * self.duty;
                let blur = ((fc - 0.3) / 0.5).clamp(0.0, 1.0);
                mix(self.base, self.second, a + (mean - a) * blur)
            }
            Pattern::Print => {
                let (cx, cy) = (p.x.floor(), p.y.floor());
                let h = hash2(cx as i32, cy as i32, self.print_seed);
                let centre = v2(
                    cx + 0.5 + 0.24 * (hash_unit(h, 0) - 0.5),
                    cy + 0.5 + 0.24 * (hash_unit(h, 1) - 0.5),
                );
                let l = p - centre;
                let radius = 0.18 + 0.1 * hash_unit(h, 2);
                let theta = l.y.atan2(l.x) + std::f32::consts::TAU * hash_unit(h, 3);
                let petal = radius * (0.62 + 0.38 * (5.0 * theta).cos());
                let a = coverage(l.len() - petal, fc);
                let ink = if h & 1 == 0 { self.second } else { self.third };
                let blur = ((fc - 0.3) / 0.5).clamp(0.0, 1.0);
                mix(self.base, ink, a + (0.15 - a) * blur)
            }
        }
    }

    /// The lit colour of the garment's front at `q`, `d` inside its boundary.
    fn surface(&self, q: V2, d: f32, fw: f32) -> Rgb {
        let mut c = self.fabric(q, fw);
        let ao = 1.0 - 0.22 * (d.min(0.0) / 0.02).exp();
        let [fx, fy, ph, amp] = self.fold;
        let fold = 1.0 + amp * (std::f32::consts::TAU * (fx * q.x + fy * q.y) + ph).sin();
        let mut k = ao * fold;
        if self.twill > 0.0 {
            let fine = (1.0 - fw / 0.02).clamp(0.0, 1.0);
            k *= 1.0 + self.twill * fine * (std::f32::consts::TAU * (q.x + q.y) / 0.014).sin();
            let fade_x = ((q.x - 0.5).abs() - 0.1) / 0.06;
            k *= 1.0 + self.fade * (-fade_x * fade_x).exp() * (-((q.y - 0.45) / 0.2).powi(2)).exp();
        }
        for (det, lo, hi) in &self.details {
            if box_gap(q, *lo, *hi) > fw {
                continue;
            }
            let a = coverage(det.sdf(q), fw);
            if a > 0.0 {
                c = match det.ink {
                    Ink::Tone(t) => tint(c, 1.0 + (t - 1.0) * a),
                    Ink::Paint(p) => mix(c, p, a),
                };
            }
        }
        [
            (c[0] * k).clamp(0.0, 1.0),
            (c[1] * k).clamp(0.0, 1.0),
            (c[2] * k).clamp(0.0, 1.0),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Views and rendering

/// Maps normalised image points to garment space: `x = c_img + R(θ)(g − c_g)·k`.
#[derive(Debug, Clone, Copy)]
struct Frame {
    c_img: V2,
    c_g: V2,
    k: f32,
    cos: f32,
    sin: f32,
}

impl Frame {
    /// `fill` is the longest side of the garment's box as a fraction of the image.
    fn new(g: &Garment, fill: f32, offset: V2, degrees: f32) -> Self {
        let side = (g.hi.x - g.lo.x).max(g.hi.y - g.lo.y).max(1e-3);
        let (sin, cos) = degrees.to_radians().sin_cos();
        Self {
            c_img: v2(0.5, 0.5) + offset,
            c_g: (g.lo + g.hi) * 0.5,
            k: fill / side,
            cos,
            sin,
        }
    }

    fn garment_point(&self, p: V2) -> V2 {
        self.c_g + ((p - self.c_img) * (1.0 / self.k)).rot(self.cos, -self.sin)
    }
}

#[derive(Debug, Clone)]
enum Background {
    Studio {
        top: Rgb,
        bottom: Rgb,
    },
    Clutter {
        a: Rgb,
        b: Rgb,
        dir: V2,
        floor: Option<(f32, Rgb)>,
        /// Shape, colour, edge softness, bounding box.
        shapes: Vec<(Prim, Rgb, f32, V2, V2)>,
    },
}

impl Background {
    fn at(&self, p: V2, fw: f32) -> Rgb {
        match self {
            Background::Studio { top, bottom } => mix(*top, *bottom, p.y),
            Background::Clutter {
                a,
                b,
                dir,
                floor,
                shapes,
            } => {
                let t = ((p - v2(0.5, 0.5)).dot(*dir) + 0.5).clamp(0.0, 1.0);
                let mut c = mix(*a, *b, t);
                if let Some((y, colour)) = floor {
                    c = mix(c, *colour, coverage(y - p.y, fw));
                }
                for (prim, colour, soft, lo, hi) in shapes {
                    if box_gap(p, *lo, *hi) > *soft + fw {
                        continue;
                    }
                    let d = prim.sdf(p);
                    if d < *soft + fw {
                        c = mix(c, *colour, coverage(d, fw.max(*soft)));
                    }
                }
                c
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Occluder {
    /// Size as fractions of the garment's box, which side it enters from, where.
    w: f32,
    h: f32,
    side: usize,
    t: f32,
    colour: Rgb,
    skin: bool,
}

#[derive(Debug, Clone)]
struct View {
    frame: Frame,
    background: Background,
    shadow: bool,
    /// Skin and other-clothes colours when worn.
    worn: Option<(Rgb, Rgb)>,
    gain: Rgb,
    light_dir: V2,
    vignette: f32,
    gamma: f32,
    blur: f32,
    noise: f32,
    occluder: Option<Occluder>,
    quality: u8,
}

fn shop_view(g: &Garment, rng: &mut Rng) -> View {
    let grey = rng.range_f32(0.9, 0.97);
    let tint = [
        grey + rng.range_f32(-0.01, 0.01),
        grey + rng.range_f32(-0.01, 0.01),
        grey + rng.range_f32(-0.01, 0.01),
    ];
    let fill = rng.range_f32(0.82, 0.9);
    let offset = v2(rng.range_f32(-0.012, 0.012), rng.range_f32(-0.012, 0.012));
    View {
        frame: Frame::new(g, fill, offset, rng.range_f32(-1.5, 1.5)),
        background: Background::Studio {
            top: tint.map(|c| (c + 0.02).min(1.0)),
            bottom: tint.map(|c| c - 0.02),
        },
        shadow: true,
        worn: None,
        gain: [1.0; 3].map(|_| rng.range_f32(0.98, 1.02)),
        light_dir: v2(0.0, 0.0),
        vignette: 0.0,
        gamma: 1.0,
        blur: 0.0,
        noise: 0.0,
        occluder: None,
        quality: SHOP_QUALITY,
    }
}

fn consumer_view(g: &Garment, rng: &mut Rng) -> View {
    let fill = rng.range_f32(0.55, 0.95);
    let slack = (1.0 - fill) * 0.5;
    let offset = v2(
        rng.range_f32(-slack, slack) * 0.9,
        rng.range_f32(-slack, slack) * 0.9,
    );
    let frame = Frame::new(g, fill, offset, rng.range_f32(-25.0, 25.0));

    let angle = rng.range_f32(0.0, std::f32::consts::TAU);
    let mut shapes = Vec::new();
    for _ in 0..rng.range_usize(4, 9) {
        let c = v2(rng.range_f32(-0.1, 1.1), rng.range_f32(-0.1, 1.1));
        let w = rng.range_f32(0.05, 0.3);
        let h = rng.range_f32(0.05, 0.3);
        let prim = match rng.below(3) {
            0 => Prim::Rect {
                c,
                h: v2(w, h),
                r: rng.range_f32(0.0, 0.03),
            },
            1 => Prim::Ellipse { c, rx: w, ry: h },
            _ => {
                let (s, co) = rng.range_f32(0.0, std::f32::consts::PI).sin_cos();
                let corners = [v2(-w, -h), v2(w, -h), v2(w, h), v2(-w, h)];
                Prim::Poly(corners.iter().map(|p| c + p.rot(co, s)).collect())
            }
        };
        let soft = if rng.chance(0.3) {
            rng.range_f32(0.01, 0.06)
        } else {
            0.0
        };
        let (lo, hi) = prim.bounds();
        shapes.push((prim, clutter_colour(rng), soft, lo, hi));
    }
    let background = Background::Clutter {
        a: clutter_colour(rng),
        b: clutter_colour(rng),
        dir: v2(angle.cos(), angle.sin()),
        floor: if rng.chance(0.5) {
            Some((rng.range_f32(0.55, 0.9), clutter_colour(rng)))
        } else {
            None
        },
        shapes,
    };
    let worn = if rng.chance(0.6) {
        Some((
            jitter_colour(*rng.pick(&SKIN), rng, 0.03, 0.05),
            clutter_colour(rng),
        ))
    } else {
        None
    };
    let cast = match rng.below(4) {
        0 => [1.08, 1.0, 0.84],
        1 => [0.9, 0.98, 1.1],
        2 => [1.0, 1.0, 1.0],
        _ => [
            1.0 + 0.08 * rng.normal(),
            1.0 + 0.08 * rng.normal(),
            1.0 + 0.08 * rng.normal(),
        ],
    };
    let brightness = rng.range_f32(0.72, 1.2);
    let light = rng.range_f32(0.0, std::f32::consts::TAU);
    let strength = rng.range_f32(0.0, 0.4);
    let occluder = if rng.chance(0.3) {
        let skin = rng.chance(0.3);
        Some(Occluder {
            w: rng.range_f32(0.25, 0.6),
            h: rng.range_f32(0.2, 0.5),
            side: rng.below(4),
            t: rng.f32(),
            colour: if skin {
                *rng.pick(&SKIN)
            } else {
                clutter_colour(rng)
            },
            skin,
        })
    } else {
        None
    };
    View {
        frame,
        background,
        shadow: false,
        worn,
        gain: cast.map(|c: f32| (c * brightness).max(0.2)),
        light_dir: v2(light.cos(), light.sin()) * strength,
        vignette: rng.range_f32(0.0, 0.35),
        gamma: rng.range_f32(0.75, 1.35),
        blur: rng.range_f32(0.0, 1.5),
        noise: rng.range_f32(0.005, 0.035),
        occluder,
        quality: rng.range_usize(45, 80) as u8,
    }
}

fn inside(q: V2, lo: V2, hi: V2, margin: f32) -> bool {
    q.x > lo.x - margin && q.x < hi.x + margin && q.y > lo.y - margin && q.y < hi.y + margin
}

/// Renders one view: RGB8 pixels and the garment's box `[x1, y1, x2, y2)` in pixels.
fn render(g: &Garment, view: &View, size: u32, rng: &mut Rng) -> (Vec<u8>, [u32; 4]) {
    let n = size as usize;
    let px = 1.0 / size as f32;
    let frame = &view.frame;
    let fw = px / frame.k;
    let shadow_offset = v2(0.012, 0.018);
    let mut img: Vec<Rgb> = vec![[0.0; 3]; n * n];
    let mut mask = vec![0.0f32; n * n];
    let inner = tint(g.base, 0.55);
    for y in 0..n {
        for x in 0..n {
            let i = y * n + x;
            let p = v2((x as f32 + 0.5) * px, (y as f32 + 0.5) * px);
            let mut c = view.background.at(p, px);
            let q = frame.garment_point(p);
            if view.shadow && inside(q - shadow_offset, g.lo, g.hi, 0.05) {
                let d = g.front.sdf(q - shadow_offset);
                let s = (1.0 - (d + 0.01) / 0.045).clamp(0.0, 1.0);
                c = tint(c, 1.0 - 0.14 * s * s);
            }
            let near = inside(q, g.lo, g.hi, 2.0 * fw);
            let mut cover = 0.0f32;
            if near && let Some(back) = &g.back {
                let a = coverage(back.sdf(q), fw);
                if a > 0.0 {
                    c = mix(c, inner, a);
                    cover = a;
                }
            }
            if let Some((skin, other)) = view.worn
                && inside(q, g.body_lo, g.body_hi, 2.0 * fw)
            {
                let a = coverage(g.other.sdf(q), fw);
                if a > 0.0 {
                    c = mix(c, other, a);
                }
                let a = coverage(g.skin.sdf(q), fw);
                if a > 0.0 {
                    c = mix(c, skin, a);
                }
            }
            if near {
                let d = g.front.sdf(q);
                let a = coverage(d, fw);
                if a > 0.0 {
                    c = mix(c, g.surface(q, d, fw), a);
                    cover = cover.max(a);
                }
            }
            img[i] = c;
            mask[i] = cover;
        }
    }
    let bbox = mask_box(&mask, n);
    if let Some(occ) = &view.occluder {
        occlude(&mut img, &mask, n, bbox, occ);
    }
    light(&mut img, view, n);
    if view.blur > 0.05 {
        box_blur(&mut img, n, view.blur);
    }
    let mut out = Vec::with_capacity(n * n * 3);
    for c in &img {
        for v in c {
            let noisy = if view.noise > 0.0 {
                v + view.noise * gauss(rng)
            } else {
                *v
            };
            out.push((noisy.clamp(0.0, 1.0) * 255.0 + 0.5) as u8);
        }
    }
    (out, bbox)
}

/// The box `[x1, y1, x2, y2)` of pixels at least half covered (the whole image if none).
fn mask_box(mask: &[f32], n: usize) -> [u32; 4] {
    let (mut x1, mut y1, mut x2, mut y2) = (n, n, 0, 0);
    for (i, m) in mask.iter().enumerate() {
        if *m >= 0.5 {
            let (x, y) = (i % n, i / n);
            x1 = x1.min(x);
            y1 = y1.min(y);
            x2 = x2.max(x + 1);
            y2 = y2.max(y + 1);
        }
    }
    if x2 <= x1 || y2 <= y1 {
        return [0, 0, n as u32, n as u32];
    }
    [x1 as u32, y1 as u32, x2 as u32, y2 as u32]
}

/// Puts a rounded rectangle of clutter (or a hand) over at most a quarter of the garment.
fn occlude(img: &mut [Rgb], mask: &[f32], n: usize, bbox: [u32; 4], occ: &Occluder) {
    let s = n as f32;
    let px = 1.0 / s;
    let [x1, y1, x2, y2] = bbox.map(|v| v as f32 * px);
    let (bw, bh) = (x2 - x1, y2 - y1);
    let total: f32 = mask.iter().sum();
    if total <= 0.0 {
        return;
    }
    let (mut w, mut h) = (bw * occ.w, bh * occ.h);
    let centre = |w: f32, h: f32| match occ.side {
        0 => v2(x1 + w * 0.2, y1 + bh * occ.t),
        1 => v2(x2 - w * 0.2, y1 + bh * occ.t),
        2 => v2(x1 + bw * occ.t, y2 - h * 0.2),
        _ => v2(x1 + bw * occ.t, y1 + bh * (0.3 + 0.4 * occ.t)),
    };
    let mut prim = None;
    for _ in 0..16 {
        let candidate = Prim::Rect {
            c: centre(w, h),
            h: v2(w * 0.5, h * 0.5),
            r: w.min(h) * if occ.skin { 0.45 } else { 0.15 },
        };
        let (xr, yr) = pixel_span(&candidate, n);
        let mut covered = 0.0;
        for y in yr {
            for x in xr.clone() {
                let m = mask[y * n + x];
                if m > 0.0 {
                    let p = v2((x as f32 + 0.5) * px, (y as f32 + 0.5) * px);
                    covered += m * coverage(candidate.sdf(p), px);
                }
            }
        }
        if covered <= 0.25 * total {
            prim = Some(candidate);
            break;
        }
        w *= 0.85;
        h *= 0.85;
    }
    let Some(prim) = prim else { return };
    let (lo, hi) = prim.bounds();
    let (xr, yr) = pixel_span(&prim, n);
    for y in yr {
        for x in xr.clone() {
            let p = v2((x as f32 + 0.5) * px, (y as f32 + 0.5) * px);
            let a = coverage(prim.sdf(p), px);
            if a > 0.0 {
                let shade = 1.0 - 0.25 * ((p.y - lo.y) / (hi.y - lo.y).max(1e-3));
                let i = y * n + x;
                img[i] = mix(img[i], tint(occ.colour, shade), a);
            }
        }
    }
}

/// The pixel columns and rows a primitive in normalised image space can touch.
fn pixel_span(prim: &Prim, n: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let s = n as f32;
    let (lo, hi) = prim.bounds();
    let span = |a: f32, b: f32| {
        let a = ((a * s).floor() - 1.0).clamp(0.0, s) as usize;
        let b = ((b * s).ceil() + 1.0).clamp(0.0, s) as usize;
        a..b.max(a)
    };
    (span(lo.x, hi.x), span(lo.y, hi.y))
}

/// Colour cast, directional light, vignette and gamma.
fn light(img: &mut [Rgb], view: &View, n: usize) {
    const STEPS: usize = 1024;
    let identity = view.gain == [1.0; 3]
        && view.light_dir == v2(0.0, 0.0)
        && view.vignette == 0.0
        && view.gamma == 1.0;
    if identity {
        return;
    }
    // Gamma through a table (linear in between): exact enough for 8-bit output.
    let px = 1.0 / n as f32;
    let curve: Vec<f32> = (0..=STEPS)
        .map(|i| (i as f32 / STEPS as f32).powf(view.gamma))
        .collect();
    for (i, c) in img.iter_mut().enumerate() {
        let p = v2(((i % n) as f32 + 0.5) * px, ((i / n) as f32 + 0.5) * px) - v2(0.5, 0.5);
        let k = (1.0 + p.dot(view.light_dir)) * (1.0 - view.vignette * 2.0 * p.dot(p));
        for (v, gain) in c.iter_mut().zip(view.gain) {
            let x = (*v * gain * k).clamp(0.0, 1.0) * STEPS as f32;
            let j = (x as usize).min(STEPS - 1);
            let t = x - j as f32;
            *v = curve[j] + (curve[j + 1] - curve[j]) * t;
        }
    }
}

/// Approximately standard normal noise (Irwin–Hall), cheaper than Box–Muller.
fn gauss(rng: &mut Rng) -> f32 {
    (rng.f32() + rng.f32() + rng.f32() + rng.f32() - 2.0) * 1.732_050_8
}

/// Separable box blur of fractional radius `r` (edge taps weighted by the fraction).
fn box_blur(img: &mut [Rgb], n: usize, r: f32) {
    let whole = r.floor() as usize;
    let frac = r - whole as f32;
    let mut taps: Vec<(isize, f32)> = (0..=2 * whole)
        .map(|i| (i as isize - whole as isize, 1.0))
        .collect();
    if frac > 0.0 {
        taps.push((-(whole as isize) - 1, frac));
        taps.push((whole as isize + 1, frac));
    }
    let norm = 1.0 / taps.iter().map(|t| t.1).sum::<f32>();
    let last = n as isize - 1;
    let mut tmp = vec![[0.0f32; 3]; n * n];
    blur_pass(img, &mut tmp, n, &taps, norm, last, true);
    blur_pass(&tmp, img, n, &taps, norm, last, false);
}

fn blur_pass(
    src: &[Rgb],
    dst: &mut [Rgb],
    n: usize,
    taps: &[(isize, f32)],
    norm: f32,
    last: isize,
    horizontal: bool,
) {
    for y in 0..n {
        for x in 0..n {
            let mut acc = [0.0f32; 3];
            for &(o, w) in taps {
                let j = if horizontal {
                    y * n + (x as isize + o).clamp(0, last) as usize
                } else {
                    (y as isize + o).clamp(0, last) as usize * n + x
                };
                let s = src[j];
                acc[0] += s[0] * w;
                acc[1] += s[1] * w;
                acc[2] += s[2] * w;
            }
            dst[y * n + x] = tint(acc, norm);
        }
    }
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

    fn form(kind: Kind, rng: &mut Rng) -> Form {
        match kind {
            Kind::TShirt | Kind::TankTop | Kind::Blouse | Kind::Hoodie => build_top(kind, rng),
            Kind::MiniDress | Kind::MaxiDress | Kind::ShirtDress => build_dress(kind, rng),
            Kind::Jeans | Kind::Shorts | Kind::Skirt => build_bottom(kind, rng),
        }
    }

    #[test]
    fn split_counts_follow_the_release() {
        assert_eq!(split_counts(3), (1, 1, 1));
        assert_eq!(split_counts(4), (2, 1, 1));
        assert_eq!(split_counts(40), (20, 10, 10));
        for n in 3..300 {
            let (a, b, c) = split_counts(n);
            assert!(a >= 1 && b >= 1 && c >= 1, "{n}");
            assert_eq!(a + b + c, n);
            assert!(a.abs_diff(n / 2) <= 1, "{n}: {a}");
            assert!(b.abs_diff(c) <= 1, "{n}: {b} {c}");
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

    #[test]
    fn primitives_measure_signed_distance() {
        let square = Prim::Poly(vec![v2(0.0, 0.0), v2(1.0, 0.0), v2(1.0, 1.0), v2(0.0, 1.0)]);
        assert!((square.sdf(v2(0.5, 0.5)) + 0.5).abs() < 1e-6);
        assert!((square.sdf(v2(2.0, 0.5)) - 1.0).abs() < 1e-6);
        assert!((square.mirrored().sdf(v2(0.5, 0.25)) + 0.25).abs() < 1e-6);
        let rect = Prim::Rect {
            c: v2(0.5, 0.5),
            h: v2(0.5, 0.5),
            r: 0.0,
        };
        for p in [v2(0.2, 0.3), v2(1.5, 0.5), v2(-0.3, 2.0)] {
            assert!((rect.sdf(p) - square.sdf(p)).abs() < 1e-5, "{p:?}");
        }
        let cap = Prim::Capsule {
            a: v2(0.0, 0.0),
            b: v2(1.0, 0.0),
            r: 0.1,
        };
        assert!((cap.sdf(v2(0.5, 0.3)) - 0.2).abs() < 1e-6);
        let e = Prim::Ellipse {
            c: v2(0.5, 0.5),
            rx: 0.2,
            ry: 0.1,
        };
        assert!(e.sdf(v2(0.5, 0.5)) < 0.0);
        assert!(e.sdf(v2(0.69, 0.5)) < 0.0 && e.sdf(v2(0.71, 0.5)) > 0.0);
        assert!((e.sdf(v2(0.5, 0.7)) - 0.1).abs() < 0.02);
    }

    #[test]
    fn culled_distances_equal_the_plain_ones() {
        let mut rng = Rng::new(3);
        for kind in KINDS {
            for _ in 0..3 {
                let f = form(kind, &mut rng);
                let fast = f.front.clone().compile();
                for y in 0..40 {
                    for x in 0..40 {
                        let p = v2(x as f32 / 32.0 - 0.1, y as f32 / 32.0 - 0.1);
                        assert_eq!(f.front.sdf(p), fast.sdf(p), "{kind:?} at {p:?}");
                    }
                }
            }
        }
    }

    /// The silhouette as the shop framing shows it, `n`×`n`.
    fn silhouette(g: &Garment, n: usize) -> Vec<f32> {
        let frame = Frame::new(g, 0.9, v2(0.0, 0.0), 0.0);
        let px = 1.0 / n as f32;
        let fw = px / frame.k;
        (0..n * n)
            .map(|i| {
                let p = v2(((i % n) as f32 + 0.5) * px, ((i / n) as f32 + 0.5) * px);
                coverage(g.front.sdf(frame.garment_point(p)), fw)
            })
            .collect()
    }

    fn soft_iou(a: &[f32], b: &[f32]) -> f32 {
        let inter: f32 = a.iter().zip(b).map(|(x, y)| x.min(*y)).sum();
        let union: f32 = a.iter().zip(b).map(|(x, y)| x.max(*y)).sum();
        inter / union.max(1e-6)
    }

    #[test]
    fn same_category_shapes_are_closer_than_other_categories() {
        const PER: usize = 8;
        let masks: Vec<Vec<Vec<f32>>> = KINDS
            .iter()
            .enumerate()
            .map(|(k, kind)| {
                (0..PER)
                    .map(|i| {
                        let mut rng = Rng::derive(5, &[k as u64, i as u64]);
                        silhouette(&build_garment(*kind, &mut rng), 32)
                    })
                    .collect()
            })
            .collect();
        let mean_iou = |a: usize, b: usize| {
            let mut sum = 0.0;
            let mut n = 0.0;
            for (i, x) in masks[a].iter().enumerate() {
                for (j, y) in masks[b].iter().enumerate() {
                    if a != b || i < j {
                        sum += soft_iou(x, y);
                        n += 1.0;
                    }
                }
            }
            sum / n
        };
        for (a, kind) in KINDS.iter().enumerate() {
            let own = mean_iou(a, a);
            assert!(own > 0.75, "{kind:?} items alike: {own}");
            for (b, other_kind) in KINDS.iter().enumerate().filter(|(b, _)| *b != a) {
                let other = mean_iou(a, b);
                assert!(
                    own > other + 0.04,
                    "{kind:?} within {own} vs {other_kind:?} {other}"
                );
            }
        }
        // Nearest mean silhouette (leaving the item out) finds the category.
        let mut right = 0;
        for (a, items) in masks.iter().enumerate() {
            for (i, m) in items.iter().enumerate() {
                let dist = |b: usize| {
                    let others: Vec<&Vec<f32>> = masks[b]
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| b != a || *j != i)
                        .map(|(_, x)| x)
                        .collect();
                    let k = others.len() as f32;
                    (0..m.len())
                        .map(|p| (m[p] - others.iter().map(|o| o[p]).sum::<f32>() / k).abs())
                        .sum::<f32>()
                };
                let best = (0..KINDS.len())
                    .min_by(|x, y| dist(*x).total_cmp(&dist(*y)))
                    .unwrap_or(usize::MAX);
                right += usize::from(best == a);
            }
        }
        let total = KINDS.len() * PER;
        assert!(
            right * 100 >= total * 95,
            "{right} of {total} nearest to their own mean"
        );
    }

    #[test]
    fn renders_are_deterministic_and_boxed() {
        for (k, kind) in KINDS.iter().enumerate() {
            let g = build_garment(*kind, &mut Rng::derive(1, &[k as u64]));
            for consumer in [false, true] {
                let draw = || {
                    let mut rng = Rng::derive(2, &[k as u64, u64::from(consumer)]);
                    let view = if consumer {
                        consumer_view(&g, &mut rng)
                    } else {
                        shop_view(&g, &mut rng)
                    };
                    render(&g, &view, 64, &mut rng)
                };
                let (a, box_a) = draw();
                let (b, box_b) = draw();
                assert!(a == b && box_a == box_b);
                assert_eq!(a.len(), 64 * 64 * 3);
                let [x1, y1, x2, y2] = box_a;
                assert!(x1 < x2 && y1 < y2 && x2 <= 64 && y2 <= 64, "{box_a:?}");
                if !consumer {
                    // Centred, and the longest side fills 82–90% of the frame.
                    let cx = (x1 + x2) as f32 / 2.0;
                    let cy = (y1 + y2) as f32 / 2.0;
                    assert!(
                        (cx - 32.0).abs() < 3.0 && (cy - 32.0).abs() < 3.0,
                        "{box_a:?}"
                    );
                    let side = (x2 - x1).max(y2 - y1);
                    assert!((50..=60).contains(&side), "{kind:?} {box_a:?}");
                }
            }
        }
    }

    #[test]
    fn occluders_hide_at_most_a_quarter_of_the_garment() {
        let n = 64;
        let mut hidden_any = false;
        for (k, kind) in KINDS.iter().enumerate() {
            let g = build_garment(*kind, &mut Rng::new(k as u64));
            let frame = Frame::new(&g, 0.8, v2(0.0, 0.0), 10.0);
            let px = 1.0 / n as f32;
            let mask: Vec<f32> = (0..n * n)
                .map(|i| {
                    let p = v2(((i % n) as f32 + 0.5) * px, ((i / n) as f32 + 0.5) * px);
                    coverage(g.front.sdf(frame.garment_point(p)), px / frame.k)
                })
                .collect();
            let bbox = mask_box(&mask, n);
            for side in 0..4 {
                let occ = Occluder {
                    w: 1.0,
                    h: 1.0,
                    side,
                    t: 0.5,
                    colour: [1.0; 3],
                    skin: side == 2,
                };
                let mut img = vec![[0.0f32; 3]; n * n];
                occlude(&mut img, &mask, n, bbox, &occ);
                let total: f32 = mask.iter().sum();
                // Painted value is coverage × shade, shade in [0.75, 1].
                let hidden: f32 = mask.iter().zip(&img).map(|(m, c)| m * c[0]).sum::<f32>();
                assert!(
                    hidden <= 0.25 * total + 1e-3,
                    "{kind:?} side {side}: {hidden} of {total}"
                );
                hidden_any |= hidden > 0.05 * total;
            }
        }
        assert!(hidden_any);
    }

    #[test]
    fn blur_keeps_flat_images_and_spreads_edges() {
        let n = 8;
        let mut flat = vec![[0.3f32, 0.5, 0.7]; n * n];
        box_blur(&mut flat, n, 1.3);
        assert!(
            flat.iter()
                .all(|c| (c[0] - 0.3).abs() < 1e-5 && (c[2] - 0.7).abs() < 1e-5)
        );
        let mut edge: Vec<Rgb> = (0..n * n)
            .map(|i| if i % n < n / 2 { [0.0; 3] } else { [1.0; 3] })
            .collect();
        box_blur(&mut edge, n, 1.0);
        let v = edge[n / 2 - 1][0];
        assert!((v - 1.0 / 3.0).abs() < 1e-5, "{v}");
    }
}
