//! Training-time augmentation, drawn per image from a seeded stream so a resumed run
//! sees the same images: random resized crop, horizontal flip, colour jitter
//! (brightness, contrast, saturation, hue), random greyscale and Gaussian blur.
//! Validation, indexing and search never augment.
//!
//! The crop is taken before the resize (no extra pixels are decoded); everything else
//! works on the resized `[0, 1]` CHW planes, so its cost does not grow with the source
//! image.

use image::RgbImage;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// `[augment]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Master switch.
    pub enabled: bool,
    /// Random resized crop: smallest share of the area kept (1 = no crop); the aspect
    /// ratio varies within 3:4..4:3.
    pub crop_scale: f32,
    /// Probability of a horizontal flip.
    pub flip: f32,
    /// Brightness, contrast and saturation factors drawn from `1 ± jitter`.
    pub jitter: f32,
    /// Hue rotation, as a fraction of the colour wheel (`± hue`).
    pub hue: f32,
    /// Probability of turning the image grey.
    pub grayscale: f32,
    /// Probability of a Gaussian blur (σ up to 1.2 px at 64 px, scaled with size).
    pub blur: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            crop_scale: 0.5,
            flip: 0.0,
            jitter: 0.3,
            hue: 0.1,
            grayscale: 0.1,
            blur: 0.2,
        }
    }
}

impl AugmentConfig {
    /// Range checks; the dotted key at fault and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let unit = |key: &str, v: f32, lo: f32| {
            if (lo..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((
                    format!("augment.{key}"),
                    format!("must be between {lo} and 1"),
                ))
            }
        };
        if !(self.crop_scale > 0.0 && self.crop_scale <= 1.0) {
            return Err((
                "augment.crop_scale".into(),
                "must be above 0 and at most 1".into(),
            ));
        }
        unit("flip", self.flip, 0.0)?;
        unit("jitter", self.jitter, 0.0)?;
        unit("grayscale", self.grayscale, 0.0)?;
        unit("blur", self.blur, 0.0)?;
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(("augment.hue".into(), "must be between 0 and 0.5".into()));
        }
        Ok(())
    }
}

/// Crops a random region (area share `crop_scale..1`, ratio 3:4..4:3) and resizes it to
/// `size`², as torchvision's `RandomResizedCrop`; falls back to the whole image.
pub fn resized_crop(img: &RgbImage, size: u32, cfg: &AugmentConfig, rng: &mut Rng) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    if cfg.crop_scale < 1.0 {
        let (log_lo, log_hi) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
        for _ in 0..10 {
            let area = w * h * rng.range_f32(cfg.crop_scale, 1.0);
            let ratio = rng.range_f32(log_lo, log_hi).exp();
            let cw = (area * ratio).sqrt().round();
            let ch = (area / ratio).sqrt().round();
            if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
                let x = rng.range_f32(0.0, w - cw + 1.0).floor().min(w - cw);
                let y = rng.range_f32(0.0, h - ch + 1.0).floor().min(h - ch);
                let view = image::imageops::crop_imm(img, x as u32, y as u32, cw as u32, ch as u32);
                return image::imageops::resize(&*view, size, size, FilterType::Triangle);
            }
        }
    }
    image::imageops::resize(img, size, size, FilterType::Triangle)
}

/// Flip, colour jitter, greyscale and blur on `[0, 1]` CHW planes of `size`².
pub fn photometric(chw: &mut [f32], size: usize, cfg: &AugmentConfig, rng: &mut Rng) {
    let plane = size * size;
    debug_assert_eq!(chw.len(), 3 * plane);
    if rng.chance(cfg.flip) {
        for row in chw.chunks_exact_mut(size) {
            row.reverse();
        }
    }
    if cfg.jitter > 0.0 || cfg.hue > 0.0 {
        let j = cfg.jitter;
        let brightness = rng.range_f32(1.0 - j, 1.0 + j);
        let contrast = rng.range_f32(1.0 - j, 1.0 + j);
        let saturation = rng.range_f32(1.0 - j, 1.0 + j);
        let hue = rng.range_f32(-cfg.hue, cfg.hue);
        jitter(chw, plane, brightness, contrast, saturation, hue);
    }
    if rng.chance(cfg.grayscale) {
        let (r, rest) = chw.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
            let y = luma(*r, *g, *b);
            (*r, *g, *b) = (y, y, y);
        }
    }
    if rng.chance(cfg.blur) {
        let sigma = rng.range_f32(0.2, 1.2) * size as f32 / 64.0;
        for p in chw.chunks_exact_mut(plane) {
            gaussian_blur(p, size, sigma);
        }
    }
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Brightness, contrast (around the mean grey), saturation (around each pixel's grey)
/// and a hue rotation (in YIQ's chroma plane), then a clamp to `[0, 1]`.
fn jitter(chw: &mut [f32], plane: usize, brightness: f32, contrast: f32, sat: f32, hue: f32) {
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let mean = r
        .iter()
        .zip(g.iter())
        .zip(b.iter())
        .map(|((r, g), b)| luma(*r, *g, *b))
        .sum::<f32>()
        / plane.max(1) as f32
        * brightness;
    let (sin, cos) = (hue * std::f32::consts::TAU).sin_cos();
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let mut px = [*r * brightness, *g * brightness, *b * brightness];
        for c in &mut px {
            *c = (*c - mean) * contrast + mean;
        }
        let y = luma(px[0], px[1], px[2]);
        for c in &mut px {
            *c = (*c - y) * sat + y;
        }
        if hue != 0.0 {
            let i = 0.596 * px[0] - 0.274 * px[1] - 0.322 * px[2];
            let q = 0.211 * px[0] - 0.523 * px[1] + 0.312 * px[2];
            let (i, q) = (i * cos - q * sin, i * sin + q * cos);
            px = [
                y + 0.956 * i + 0.621 * q,
                y - 0.272 * i - 0.647 * q,
                y - 1.106 * i + 1.703 * q,
            ];
        }
        (*r, *g, *b) = (
            px[0].clamp(0.0, 1.0),
            px[1].clamp(0.0, 1.0),
            px[2].clamp(0.0, 1.0),
        );
    }
}

/// Separable Gaussian blur of one `size`² plane, edges clamped.
fn gaussian_blur(p: &mut [f32], size: usize, sigma: f32) {
    let radius = (2.0 * sigma).ceil() as isize;
    let weights: Vec<f32> = (-radius..=radius)
        .map(|x| (-((x * x) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let mut tmp = vec![0f32; p.len()];
    blur_pass(p, &mut tmp, size, &weights, (1, size));
    blur_pass(&tmp, p, size, &weights, (size, 1));
}

/// One 1-D pass along rows (`step = (1, size)`: neighbours 1 apart, lines `size`
/// apart) or along columns (`(size, 1)`).
fn blur_pass(src: &[f32], dst: &mut [f32], size: usize, weights: &[f32], step: (usize, usize)) {
    let radius = (weights.len() / 2) as isize;
    let last = size as isize - 1;
    for line in 0..size {
        for i in 0..size {
            dst[line * step.1 + i * step.0] = weights
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let j = (i as isize + k as isize - radius).clamp(0, last) as usize;
                    w * src[line * step.1 + j * step.0]
                })
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        })
    }

    #[test]
    fn crop_is_seeded_and_sized() {
        let img = gradient_image(40, 30);
        let cfg = AugmentConfig::default();
        let a = resized_crop(&img, 16, &cfg, &mut Rng::new(3));
        let b = resized_crop(&img, 16, &cfg, &mut Rng::new(3));
        let c = resized_crop(&img, 16, &cfg, &mut Rng::new(4));
        assert_eq!(a.dimensions(), (16, 16));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn photometric_stays_in_range_and_blur_keeps_the_mean() {
        let mut chw: Vec<f32> = (0..3 * 64).map(|i| (i % 17) as f32 / 16.0).collect();
        let cfg = AugmentConfig {
            jitter: 0.8,
            hue: 0.5,
            ..AugmentConfig::default()
        };
        photometric(&mut chw, 8, &cfg, &mut Rng::new(1));
        assert!(chw.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut flat = vec![0.25f32; 64];
        flat[27] = 1.0;
        let before: f32 = flat.iter().sum();
        gaussian_blur(&mut flat, 8, 1.0);
        let after: f32 = flat.iter().sum();
        assert!((before - after).abs() < 0.05, "{before} {after}");
        assert!(flat[27] < 1.0 && flat[27] > 0.25);
    }
}
