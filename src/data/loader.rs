//! Image pipeline: parallel decode → optional box crop → resize → ImageNet
//! normalisation → NCHW `f32` batches, prefetched on a background thread through a
//! bounded queue so the trainer never waits on JPEG decoding.
//!
//! Work is organised in *groups* (a triplet is a group of three, an embedding request
//! a group of one). A batch is laid out member-major — all first members, then all
//! second members… — so a triplet batch is `[anchors; positives; negatives]`. A group
//! with an unreadable image is dropped and counted, never fatal.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};
use image::imageops::FilterType;
use rayon::prelude::*;

use super::augment::{self, AugmentConfig};
use super::deepfashion::BBox;
use crate::rng::Rng;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read image {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("cannot start the image decoding pool: {0}")]
    Pool(String),
    #[error("the image decoding thread stopped after {done} of {expected} batches{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Incomplete {
        done: usize,
        expected: usize,
        detail: String,
    },
}

/// One image to load: its file and optional crop box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub path: PathBuf,
    pub bbox: Option<BBox>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Output side in pixels (square).
    pub size: u32,
    /// Crop to the spec's box when it has one.
    pub crop: bool,
    /// Decode threads; 0 = one per core.
    pub workers: usize,
    /// Batches decoded ahead (queue depth).
    pub prefetch: usize,
    /// Largest image accepted, in pixels; bigger files are reported unreadable
    /// instead of decoded (a 24000² PNG would take gigabytes per decode thread).
    pub max_pixels: u64,
}

/// A decoded batch: `data` is `(n, 3, size, size)` row-major.
#[derive(Debug)]
pub struct Batch {
    pub data: Vec<f32>,
    /// Images in the batch (`kept.len() * members`).
    pub n: usize,
    pub size: u32,
    /// Index, within the request, of each group that was kept.
    pub kept: Vec<usize>,
    /// Images that could not be read (their groups were dropped).
    pub failed: Vec<LoadError>,
}

impl Batch {
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        (self.n, 3, self.size as usize, self.size as usize)
    }
}

pub use crate::fsutil::open_regular;

/// An image decoder on `path` (through [`open_regular`]), its format guessed from
/// the content, else from the extension, as `image::ImageReader::open` does.
pub fn open_image(path: &Path) -> io::Result<image::ImageReader<BufReader<File>>> {
    let mut reader = image::ImageReader::new(BufReader::new(open_regular(path)?));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    reader.with_guessed_format()
}

/// Decodes, crops, resizes and normalises one image to CHW `f32`.
pub fn load_image(spec: &ImageSpec, cfg: &LoaderConfig) -> Result<Vec<f32>, LoadError> {
    load_image_with(spec, cfg, None)
}

/// [`load_image`], augmented with draws from `rng` when `augment` is given.
pub fn load_image_with(
    spec: &ImageSpec,
    cfg: &LoaderConfig,
    augment: Option<(&AugmentConfig, &mut Rng)>,
) -> Result<Vec<f32>, LoadError> {
    let unreadable = |message: String| LoadError::Unreadable {
        path: spec.path.clone(),
        message,
    };
    fault_injection(&spec.path);
    let mut reader = open_image(&spec.path).map_err(|e| unreadable(e.to_string()))?;
    // The decoder refuses to allocate more than the largest accepted image could need
    // (16-bit RGBA: 8 bytes a pixel), before reading any pixel data.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(cfg.max_pixels.saturating_mul(8));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| unreadable(e.to_string()))?;
    let pixels = u64::from(img.width()) * u64::from(img.height());
    if pixels > cfg.max_pixels {
        return Err(unreadable(format!(
            "{}×{} pixels is more than data.max_image_pixels ({})",
            img.width(),
            img.height(),
            cfg.max_pixels
        )));
    }
    let img = img.into_rgb8();
    let img = match spec.bbox.filter(|_| cfg.crop) {
        Some(b) => {
            let x1 = b.x1.min(img.width().saturating_sub(1));
            let y1 = b.y1.min(img.height().saturating_sub(1));
            let w = b.x2.min(img.width()).saturating_sub(x1).max(1);
            let h = b.y2.min(img.height()).saturating_sub(y1).max(1);
            image::imageops::crop_imm(&img, x1, y1, w, h).to_image()
        }
        None => img,
    };
    let Some((aug, rng)) = augment.filter(|(a, _)| a.enabled) else {
        let img = if img.width() == cfg.size && img.height() == cfg.size {
            img
        } else {
            image::imageops::resize(&img, cfg.size, cfg.size, FilterType::Triangle)
        };
        return Ok(normalize(&img));
    };
    let img = augment::resized_crop(&img, cfg.size, aug, rng);
    let plane = (cfg.size as usize).pow(2);
    let mut chw = augment::planes(&img);
    augment::photometric(&mut chw, cfg.size as usize, aug, rng);
    for (c, p) in chw.chunks_exact_mut(plane).enumerate() {
        for v in p {
            *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(chw)
}

/// HWC `u8` RGB → CHW `f32` with ImageNet mean/std.
pub fn normalize(img: &image::RgbImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// Loads one batch of equally sized groups in parallel on the current rayon pool.
pub fn load_batch(groups: &[Vec<ImageSpec>], cfg: &LoaderConfig) -> Batch {
    load_batch_with(groups, cfg, None)
}

/// [`load_batch`], each image augmented from its own stream
/// `Rng::derive(seed, [group, member])` when `augment` is given, so the result does
/// not depend on the number of decode threads.
pub fn load_batch_with(
    groups: &[Vec<ImageSpec>],
    cfg: &LoaderConfig,
    augment: Option<(AugmentConfig, u64)>,
) -> Batch {
    let members = groups.first().map_or(0, Vec::len);
    let decoded: Vec<Result<Vec<Vec<f32>>, LoadError>> = groups
        .par_iter()
        .enumerate()
        .map(|(g, group)| {
            group
                .iter()
                .enumerate()
                .map(|(m, s)| {
                    // A decoder that panics on a hostile file makes that file
                    // unreadable; it must not take the batch or the thread with it.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &augment {
                        Some((aug, seed)) => {
                            let mut rng = Rng::derive(*seed, &[g as u64, m as u64]);
                            load_image_with(s, cfg, Some((aug, &mut rng)))
                        }
                        None => load_image(s, cfg),
                    }))
                    .unwrap_or_else(|payload| {
                        Err(LoadError::Unreadable {
                            path: s.path.clone(),
                            message: format!("the decoder crashed: {}", panic_text(&*payload)),
                        })
                    })
                })
                .collect()
        })
        .collect();
    let mut kept = Vec::new();
    let mut failed = Vec::new();
    let mut ok = Vec::new();
    for (i, r) in decoded.into_iter().enumerate() {
        match r {
            Ok(imgs) if imgs.len() == members => {
                kept.push(i);
                ok.push(imgs);
            }
            Ok(_) => {}
            Err(e) => failed.push(e),
        }
    }
    let plane = 3 * (cfg.size as usize).pow(2);
    let mut data = Vec::with_capacity(ok.len() * members * plane);
    for m in 0..members {
        for imgs in &ok {
            data.extend_from_slice(&imgs[m]);
        }
    }
    Batch {
        data,
        n: ok.len() * members,
        size: cfg.size,
        kept,
        failed,
    }
}

/// Fault injection for the tests: a decoder that panics on files whose path
/// contains the value of this variable (unset in normal use).
pub const FAULT_PANIC_ENV: &str = "VITRINE_FAULT_DECODE_PANIC";

fn fault_injection(path: &Path) {
    if let Ok(pattern) = std::env::var(FAULT_PANIC_ENV)
        && !pattern.is_empty()
        && path.to_string_lossy().contains(&pattern)
    {
        panic!("fault injection: decoding {}", path.display());
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Decodes a list of batches on a background thread, `prefetch` batches ahead.
/// Dropping it stops the thread after its current batch. Iteration ends early only
/// if that thread dies; [`Prefetcher::finish`] then says so, so a consumer never
/// mistakes a short read for the whole list.
pub struct Prefetcher {
    rx: Option<Receiver<Batch>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    expected: usize,
    delivered: usize,
}

impl Prefetcher {
    pub fn spawn(batches: Vec<Vec<Vec<ImageSpec>>>, cfg: LoaderConfig) -> Result<Self, LoadError> {
        let plain = batches.into_iter().map(|b| (b, None)).collect();
        Self::spawn_augmented(plain, cfg, AugmentConfig::default())
    }

    /// Batches with an augmentation seed each (`None`: not augmented).
    pub fn spawn_augmented(
        batches: Vec<(Vec<Vec<ImageSpec>>, Option<u64>)>,
        cfg: LoaderConfig,
        augment: AugmentConfig,
    ) -> Result<Self, LoadError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("vitrine-decode-{i}"))
            .build()
            .map_err(|e| LoadError::Pool(e.to_string()))?;
        let expected = batches.len();
        let (tx, rx) = bounded(cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("vitrine-prefetch".into())
            .spawn(move || {
                for (groups, seed) in batches {
                    if stop_thread.load(Ordering::Relaxed) {
                        break;
                    }
                    let augment = seed.map(|s| (augment, s));
                    let batch = pool.install(|| load_batch_with(&groups, &cfg, augment));
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| LoadError::Pool(e.to_string()))?;
        Ok(Self {
            rx: Some(rx),
            stop,
            handle: Some(handle),
            expected,
            delivered: 0,
        })
    }

    /// After iterating to the end: an error when fewer batches came than were asked
    /// for (the decoding thread died), with its panic message.
    pub fn finish(mut self) -> Result<(), LoadError> {
        if self.delivered == self.expected {
            return Ok(());
        }
        self.rx.take();
        let detail = match self.handle.take().map(JoinHandle::join) {
            Some(Err(payload)) => panic_text(&*payload),
            _ => String::new(),
        };
        Err(LoadError::Incomplete {
            done: self.delivered,
            expected: self.expected,
            detail,
        })
    }
}

impl Iterator for Prefetcher {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let batch = self.rx.as_ref()?.recv().ok()?;
        self.delivered += 1;
        Some(batch)
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the receiver unblocks a sender waiting on a full queue.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl super::deepfashion::Dataset {
    /// What the loader needs to read dataset image `image`.
    pub fn spec(&self, image: usize) -> ImageSpec {
        ImageSpec {
            path: self.image_path(image),
            bbox: self.images[image].bbox,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("a.jpg");
        std::fs::write(&file, b"x").expect("write");
        assert!(open_regular(&file).is_ok());
        let e = open_regular(tmp.path()).expect_err("a folder");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let pipe = tmp.path().join("pipe.jpg");
        match std::process::Command::new("mkfifo").arg(&pipe).status() {
            Ok(s) if s.success() => {
                // No writer: a blocking open would never return.
                let Err(e) = open_image(&pipe) else {
                    panic!("a named pipe was opened");
                };
                assert!(e.to_string().contains("not a regular file"), "{e}");
                let spec = ImageSpec {
                    path: pipe.clone(),
                    bbox: None,
                };
                let cfg = LoaderConfig {
                    size: 32,
                    crop: false,
                    workers: 1,
                    prefetch: 1,
                    max_pixels: 1 << 20,
                };
                let e = load_image(&spec, &cfg).expect_err("unreadable").to_string();
                assert!(
                    e.contains("pipe.jpg") && e.contains("not a regular file"),
                    "{e}"
                );
            }
            other => println!("skipping the named-pipe check: mkfifo failed ({other:?})"),
        }
    }
}
