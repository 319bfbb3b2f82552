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

mod colour;
mod degrade;
mod files;
mod garment;
mod geom;
mod plan;
mod render;
mod view;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use files::{ItemImages, write_item, write_lists};
use plan::plan_items;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
