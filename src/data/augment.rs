//! Training-time augmentation, drawn per image from a seeded stream so a resumed run
//! sees the same images: random resized crop, rotation, shrink and a smooth local warp,
//! thicker or thinner strokes, outlines and fills, an erased rectangle, horizontal
//! flip, colour jitter (brightness, contrast, saturation, hue), inversion, random
//! greyscale and Gaussian blur.
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
    /// Largest rotation, in degrees either way (0 = none).
    pub rotate: f32,
    /// Largest shrink of the picture about its centre, as a share of its side (0 = none);
    /// the border is filled from the picture's edge.
    pub shrink: f32,
    /// Largest displacement of a smooth random warp, as a share of the side (0 = none):
    /// a 4×4 lattice of control points each moved by up to this much either way, the
    /// moves interpolated bilinearly in between, so parts of a drawing grow, shrink and
    /// bend against each other as another hand draws the same thing.
    pub warp: f32,
    /// Probability of a 3×3 minimum or maximum filter (either, equally likely): dark
    /// strokes on a light ground get thicker or thinner, as another hand draws them.
    pub morph: f32,
    /// Probability of inverting the colours (light ink on a dark ground).
    pub invert: f32,
    /// Probability of redrawing the picture as its outlines: each plane becomes
    /// `1 − (max − min)` over 3×3 (a morphological gradient), so a filled glyph turns
    /// into its contour and a stroke into a double line, dark on light.
    pub outline: f32,
    /// Probability of redrawing an outline drawing filled: on a picture with a plain
    /// border, the ground the border's colour does not reach from the edge takes the
    /// ink's colour and the ink inside it the ground's (cut-outs), as a filled icon
    /// style draws it. Pictures on clutter are left alone.
    pub fill: f32,
    /// Probability of erasing a random rectangle (2–12% of the picture, aspect
    /// 1:3..3:1) to the border's median colour: a detail another artist left out, or
    /// something in front of the item.
    pub erase: f32,
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
            rotate: 25.0,
            shrink: 0.3,
            warp: 0.0,
            morph: 0.0,
            invert: 0.3,
            outline: 0.0,
            fill: 0.0,
            erase: 0.0,
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
        unit("morph", self.morph, 0.0)?;
        unit("invert", self.invert, 0.0)?;
        unit("outline", self.outline, 0.0)?;
        unit("fill", self.fill, 0.0)?;
        unit("erase", self.erase, 0.0)?;
        if !(0.0..=0.9).contains(&self.shrink) {
            return Err(("augment.shrink".into(), "must be between 0 and 0.9".into()));
        }
        if !(0.0..=0.25).contains(&self.warp) {
            return Err(("augment.warp".into(), "must be between 0 and 0.25".into()));
        }
        if !(0.0..=180.0).contains(&self.rotate) {
            return Err((
                "augment.rotate".into(),
                "must be between 0 and 180 (degrees)".into(),
            ));
        }
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

/// `img` as the `[0, 1]` CHW planes [`photometric`] works on.
pub fn planes(img: &RgbImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(px[c]) / 255.0;
        }
    }
    chw
}

/// Rotation and shrink, stroke filters, flip, colour jitter, inversion, greyscale and
/// blur on `[0, 1]` CHW planes of `size`². Each kind draws from `rng` only when it is
/// on, so turning one on leaves the others' draws of a run as they were.
pub fn photometric(chw: &mut [f32], size: usize, cfg: &AugmentConfig, rng: &mut Rng) {
    let plane = size * size;
    debug_assert_eq!(chw.len(), 3 * plane);
    if cfg.rotate > 0.0 || cfg.shrink > 0.0 || cfg.warp > 0.0 {
        let degrees = if cfg.rotate > 0.0 {
            rng.range_f32(-cfg.rotate, cfg.rotate)
        } else {
            0.0
        };
        let scale = if cfg.shrink > 0.0 {
            rng.range_f32(1.0 - cfg.shrink, 1.0)
        } else {
            1.0
        };
        // Drawn last, so a run without a warp keeps the draws it had before.
        let field = (cfg.warp > 0.0).then(|| Warp::random(cfg.warp * size as f32, rng));
        let mut tmp = vec![0f32; plane];
        for p in chw.chunks_exact_mut(plane) {
            resample(p, &mut tmp, size, degrees, scale, field.as_ref());
            p.copy_from_slice(&tmp);
        }
    }
    if cfg.morph > 0.0 && rng.chance(cfg.morph) {
        let thicker_dark = rng.chance(0.5);
        let mut tmp = vec![0f32; plane];
        for p in chw.chunks_exact_mut(plane) {
            extremum_3x3(p, &mut tmp, size, thicker_dark);
        }
    }
    if cfg.outline > 0.0 && rng.chance(cfg.outline) {
        let (mut lo, mut tmp) = (vec![0f32; plane], vec![0f32; plane]);
        for p in chw.chunks_exact_mut(plane) {
            lo.copy_from_slice(p);
            extremum_3x3(&mut lo, &mut tmp, size, true);
            extremum_3x3(p, &mut tmp, size, false);
            for (v, l) in p.iter_mut().zip(&lo) {
                *v = 1.0 - (*v - l);
            }
        }
    }
    if cfg.fill > 0.0 && rng.chance(cfg.fill) {
        fill_enclosed(chw, size);
    }
    if cfg.erase > 0.0 && rng.chance(cfg.erase) {
        erase_rectangle(chw, size, rng);
    }
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
    if cfg.invert > 0.0 && rng.chance(cfg.invert) {
        for v in chw.iter_mut() {
            *v = 1.0 - *v;
        }
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

/// Largest per-channel difference from the ground colour of a pixel that counts as
/// ground.
const GROUND_TOLERANCE: f32 = 0.2;

/// Smallest share of border pixels of the ground colour for a picture to count as a
/// drawing on a plain ground.
const PLAIN_BORDER: f32 = 0.9;

/// [`AugmentConfig::fill`] on a CHW picture in `[0, 1]`. The ground colour is the
/// border's per-channel median, and the outside is the ground a walk from the border
/// reaches; the rim is the ink that touches the outside. Ground the walk cannot reach
/// (the inside of an outline) takes the ink's mean colour, and ink inside that is not
/// part of the rim (a die's pips, a coin's `$`) takes the ground's: the cut-outs a
/// filled icon style draws. Nothing happens where the border is not plain (clutter)
/// or there is no ink.
fn fill_enclosed(chw: &mut [f32], size: usize) {
    let plane = size * size;
    if size < 3 {
        return;
    }
    let border = border_pixels(size);
    let ground: Vec<f32> = chw
        .chunks_exact(plane)
        .map(|p| border_median(p, size))
        .collect();
    let is_ground: Vec<bool> = (0..plane)
        .map(|i| (0..3).all(|c| (chw[c * plane + i] - ground[c]).abs() < GROUND_TOLERANCE))
        .collect();
    let plain = border.iter().filter(|&&i| is_ground[i]).count();
    if (plain as f32) < PLAIN_BORDER * border.len() as f32 || is_ground.iter().all(|&g| g) {
        return;
    }
    let outside = reach(size, border.iter().copied(), |i| is_ground[i]);
    let touches_outside = |i: usize| {
        neighbours(i, size)
            .into_iter()
            .flatten()
            .any(|j| outside[j])
    };
    let rim = reach(
        size,
        (0..plane).filter(|&i| !is_ground[i] && touches_outside(i)),
        |i| !is_ground[i],
    );
    let ink_pixels = is_ground.iter().filter(|&&g| !g).count() as f32;
    let ink: Vec<f32> = (0..3)
        .map(|c| {
            let values = chw[c * plane..(c + 1) * plane].iter().zip(&is_ground);
            values.filter(|(_, g)| !**g).map(|(v, _)| v).sum::<f32>() / ink_pixels
        })
        .collect();
    for i in (0..plane).filter(|&i| !outside[i] && !rim[i]) {
        let colour = if is_ground[i] { &ink } else { &ground };
        for (c, &v) in colour.iter().enumerate() {
            chw[c * plane + i] = v;
        }
    }
}

/// The pixels a 4-connected walk over pixels where `open` holds reaches from `seeds`.
fn reach(
    size: usize,
    seeds: impl Iterator<Item = usize>,
    open: impl Fn(usize) -> bool,
) -> Vec<bool> {
    let mut seen = vec![false; size * size];
    let mut stack: Vec<usize> = seeds.collect();
    while let Some(i) = stack.pop() {
        if seen[i] || !open(i) {
            continue;
        }
        seen[i] = true;
        stack.extend(neighbours(i, size).into_iter().flatten());
    }
    seen
}

/// The 4-connected neighbours of pixel `i` in a `size`² picture.
fn neighbours(i: usize, size: usize) -> [Option<usize>; 4] {
    let (y, x) = (i / size, i % size);
    [
        (x > 0).then(|| i - 1),
        (x + 1 < size).then(|| i + 1),
        (y > 0).then(|| i - size),
        (y + 1 < size).then(|| i + size),
    ]
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

/// Indices of a `size`² plane's border pixels (corners repeated).
fn border_pixels(size: usize) -> Vec<usize> {
    (0..size)
        .flat_map(|i| [i, (size - 1) * size + i, i * size, i * size + size - 1])
        .collect()
}

/// The median of one plane's border pixels: its ground colour on a plain ground.
fn border_median(plane: &[f32], size: usize) -> f32 {
    let mut v: Vec<f32> = border_pixels(size).iter().map(|&i| plane[i]).collect();
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// [`AugmentConfig::erase`]: one rectangle of 2–12% of the picture's area, aspect
/// 1:3..3:1, anywhere inside it, set to the border's per-channel median colour.
fn erase_rectangle(chw: &mut [f32], size: usize, rng: &mut Rng) {
    let area = rng.range_f32(0.02, 0.12) * (size * size) as f32;
    let ratio = rng.range_f32(3f32.recip().ln(), 3f32.ln()).exp();
    let w = ((area * ratio).sqrt().round() as usize).clamp(1, size);
    let h = ((area / ratio).sqrt().round() as usize).clamp(1, size);
    let (x0, y0) = (rng.below(size - w + 1), rng.below(size - h + 1));
    for p in chw.chunks_exact_mut(size * size) {
        let ground = border_median(p, size);
        for row in p.chunks_exact_mut(size).skip(y0).take(h) {
            row[x0..x0 + w].fill(ground);
        }
    }
}

/// Control points per side of [`AugmentConfig::warp`]'s lattice (3×3 cells).
const WARP_POINTS: usize = 4;

/// Values at the points of [`AugmentConfig::warp`]'s lattice, `[row][column]`.
type Lattice = [[f32; WARP_POINTS]; WARP_POINTS];

/// A smooth displacement field: each lattice point's move in pixels.
struct Warp {
    dx: Lattice,
    dy: Lattice,
}

impl Warp {
    /// Every point moved by up to `most` pixels along each axis.
    fn random(most: f32, rng: &mut Rng) -> Self {
        let mut warp = Self {
            dx: [[0.0; WARP_POINTS]; WARP_POINTS],
            dy: [[0.0; WARP_POINTS]; WARP_POINTS],
        };
        for j in 0..WARP_POINTS {
            for i in 0..WARP_POINTS {
                warp.dx[j][i] = rng.range_f32(-most, most);
                warp.dy[j][i] = rng.range_f32(-most, most);
            }
        }
        warp
    }

    /// The move at `(x, y)` of a `size`² picture, bilinear between the lattice points
    /// (which span the picture corner to corner).
    fn at(&self, x: f32, y: f32, size: usize) -> (f32, f32) {
        let last = (WARP_POINTS - 1) as f32;
        let cell = size as f32 / last;
        let (gx, gy) = ((x / cell).clamp(0.0, last), (y / cell).clamp(0.0, last));
        let (i, j) = (
            (gx as usize).min(WARP_POINTS - 2),
            (gy as usize).min(WARP_POINTS - 2),
        );
        let (fx, fy) = (gx - i as f32, gy - j as f32);
        let bilinear = |v: &Lattice| {
            let top = v[j][i] + (v[j][i + 1] - v[j][i]) * fx;
            let bottom = v[j + 1][i] + (v[j + 1][i + 1] - v[j + 1][i]) * fx;
            top + (bottom - top) * fy
        };
        (bilinear(&self.dx), bilinear(&self.dy))
    }
}

/// `dst` = `src` rotated by `degrees` and scaled by `scale` about the centre, then
/// moved by `warp` (each output pixel reads from where the field points), sampled
/// bilinearly with the edges replicated outside the picture.
fn resample(
    src: &[f32],
    dst: &mut [f32],
    size: usize,
    degrees: f32,
    scale: f32,
    warp: Option<&Warp>,
) {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let c = size as f32 / 2.0;
    let last = size as f32 - 1.0;
    let at = |x: usize, y: usize| src[y * size + x];
    for y in 0..size {
        for x in 0..size {
            // Inverse map: which source point lands on this output pixel's centre.
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = warp.map_or((0.0, 0.0), |w| w.at(px, py, size));
            let (u, v) = (px + dx - c, py + dy - c);
            let sx = ((cos * u + sin * v) / scale + c - 0.5).clamp(0.0, last);
            let sy = ((-sin * u + cos * v) / scale + c - 0.5).clamp(0.0, last);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
            let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
            dst[y * size + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
}

/// A 3×3 minimum (`min = true`: dark strokes grow) or maximum filter of one plane, in
/// place, as two separable passes through `tmp`.
fn extremum_3x3(p: &mut [f32], tmp: &mut [f32], size: usize, min: bool) {
    let pick = |a: f32, b: f32| if min { a.min(b) } else { a.max(b) };
    for pass in 0..2 {
        let (src, dst): (&[f32], &mut [f32]) = if pass == 0 {
            (&*p, &mut *tmp)
        } else {
            (&*tmp, &mut *p)
        };
        // Rows first, then columns; neighbours past the edge are the edge itself.
        let (along, across) = if pass == 0 { (1, size) } else { (size, 1) };
        for line in 0..size {
            for i in 0..size {
                let at = |j: usize| src[line * across + j * along];
                let mut v = at(i);
                if i > 0 {
                    v = pick(v, at(i - 1));
                }
                if i + 1 < size {
                    v = pick(v, at(i + 1));
                }
                dst[line * across + i * along] = v;
            }
        }
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

    #[test]
    fn rotation_by_a_quarter_turn_moves_pixels_exactly_and_none_is_identity() {
        let size = 6;
        let src: Vec<f32> = (0..size * size).map(|i| i as f32).collect();
        let mut same = vec![0f32; size * size];
        resample(&src, &mut same, size, 0.0, 1.0, None);
        assert_eq!(same, src);
        let mut turned = vec![0f32; size * size];
        resample(&src, &mut turned, size, 90.0, 1.0, None);
        for y in 0..size {
            for x in 0..size {
                let want = src[(size - 1 - x) * size + y];
                assert!((turned[y * size + x] - want).abs() < 1e-3, "({x},{y})");
            }
        }
        // Shrunk by half: the centre keeps its value, the corner takes the edge's.
        let mut small = vec![0f32; size * size];
        resample(&src, &mut small, size, 0.0, 0.5, None);
        assert!(small[0] >= src[0] && small[0] <= src[size + 1]);
    }

    #[test]
    fn a_uniform_warp_translates_and_a_random_one_moves_each_pixel_smoothly_and_boundedly() {
        let size = 32;
        // A ramp: a pixel's value is the source column it was read from.
        let ramp: Vec<f32> = (0..size * size).map(|i| (i % size) as f32).collect();
        let mut out = vec![0f32; size * size];
        let shift = Warp {
            dx: [[3.0; WARP_POINTS]; WARP_POINTS],
            dy: [[0.0; WARP_POINTS]; WARP_POINTS],
        };
        resample(&ramp, &mut out, size, 0.0, 1.0, Some(&shift));
        for y in 0..size {
            for x in 0..size {
                let want = (x + 3).min(size - 1) as f32;
                assert!((out[y * size + x] - want).abs() < 1e-4, "({x},{y})");
            }
        }
        let most = 0.08 * size as f32;
        for seed in 0..20 {
            let warp = Warp::random(most, &mut Rng::new(seed));
            assert!(warp.dx.iter().flatten().any(|m| m.abs() > 0.1));
            resample(&ramp, &mut out, size, 0.0, 1.0, Some(&warp));
            // A lattice cell is size/3 wide, so neighbours' moves differ by at most
            // 2·most over a cell: 3·2·most/size per pixel.
            let slope = 3.0 * 2.0 * most / size as f32;
            for y in 0..size {
                for x in 1..size - 1 {
                    let moved = out[y * size + x] - x as f32;
                    let inside = (most..size as f32 - 1.0 - most).contains(&(x as f32));
                    assert!(
                        !inside || moved.abs() <= most + 1e-3,
                        "{seed}: ({x},{y}) {moved}"
                    );
                    let step = out[y * size + x + 1] - out[y * size + x];
                    assert!(
                        (step - 1.0).abs() <= slope + 1e-3 || !inside,
                        "{seed}: {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_warp_is_seeded_and_off_it_draws_nothing() {
        let size = 24;
        let img = gradient_image(size as u32, size as u32);
        let augmented = |cfg: &AugmentConfig, seed: u64| {
            let mut chw = planes(&img);
            let mut rng = Rng::new(seed);
            photometric(&mut chw, size, cfg, &mut rng);
            (chw, rng.next_u64())
        };
        let warped = AugmentConfig {
            warp: 0.1,
            ..every_change_off()
        };
        let rotated = AugmentConfig {
            rotate: 10.0,
            ..every_change_off()
        };
        assert_eq!(augmented(&warped, 5), augmented(&warped, 5));
        assert_ne!(augmented(&warped, 5).0, augmented(&warped, 6).0);
        assert_ne!(augmented(&warped, 5).0, planes(&img));
        // Off, the stream is the one a build without warps drew: the rotation's angle,
        // then the flip, greyscale and blur coins.
        let mut rng = Rng::new(5);
        rng.range_f32(-10.0, 10.0);
        (0..3).for_each(|_| _ = rng.chance(0.0));
        assert_eq!(augmented(&rotated, 5).1, rng.next_u64());
    }

    #[test]
    fn erasing_paints_one_rectangle_of_the_ground_colour_over_the_ink() {
        let size = 32;
        // Dark ink everywhere but a light one-pixel frame: the ground.
        let mut plane = vec![0.1f32; size * size];
        for i in border_pixels(size) {
            plane[i] = 0.9;
        }
        let cfg = AugmentConfig {
            erase: 1.0,
            ..every_change_off()
        };
        let mut sizes = Vec::new();
        for seed in 0..30 {
            let mut chw = plane.repeat(3);
            photometric(&mut chw, size, &cfg, &mut Rng::new(seed));
            let painted: Vec<usize> = (0..size * size).filter(|&i| chw[i] != plane[i]).collect();
            assert!(painted.iter().all(|&i| chw[i] == 0.9), "{seed}");
            assert_eq!(chw[..size * size], chw[2 * size * size..], "{seed}");
            // One rectangle: as many pixels as its bounding box, 2–12% of the area
            // (the frame it may cover is already ground).
            let (xs, ys): (Vec<_>, Vec<_>) = painted.iter().map(|i| (i % size, i / size)).unzip();
            let extent = |v: &[usize]| match (v.iter().min(), v.iter().max()) {
                (Some(lo), Some(hi)) => hi - lo + 1,
                _ => panic!("{seed}: nothing erased"),
            };
            let (w, h) = (extent(&xs), extent(&ys));
            assert_eq!(painted.len(), w * h, "{seed}");
            assert!(painted.len() <= size * size * 13 / 100, "{seed}");
            sizes.push(painted.len());
        }
        assert!(sizes.iter().any(|&n| n != sizes[0]));
        let off = every_change_off();
        let mut chw = plane.repeat(3);
        photometric(&mut chw, size, &off, &mut Rng::new(1));
        assert_eq!(chw, plane.repeat(3));
    }

    #[test]
    fn stroke_filters_grow_and_shrink_a_dark_dot() {
        let size = 7;
        let mut dot = vec![1f32; size * size];
        dot[3 * size + 3] = 0.0;
        let mut tmp = vec![0f32; size * size];
        let mut thick = dot.clone();
        extremum_3x3(&mut thick, &mut tmp, size, true);
        assert_eq!(thick.iter().filter(|v| **v == 0.0).count(), 9);
        assert_eq!(thick[2 * size + 2], 0.0);
        let mut thin = dot.clone();
        extremum_3x3(&mut thin, &mut tmp, size, false);
        assert!(thin.iter().all(|v| *v == 1.0));
    }

    /// The defaults with every random change that alters pixel values turned off.
    fn every_change_off() -> AugmentConfig {
        AugmentConfig {
            invert: 0.0,
            rotate: 0.0,
            shrink: 0.0,
            jitter: 0.0,
            hue: 0.0,
            grayscale: 0.0,
            blur: 0.0,
            morph: 0.0,
            outline: 0.0,
            fill: 0.0,
            warp: 0.0,
            erase: 0.0,
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn outline_alone_turns_a_filled_square_into_its_contour() {
        let size = 12;
        let mut plane = vec![1f32; size * size];
        for y in 3..9 {
            for x in 3..9 {
                plane[y * size + x] = 0.0;
            }
        }
        let base: Vec<f32> = plane.iter().chain(&plane).chain(&plane).copied().collect();
        let cfg = AugmentConfig {
            outline: 1.0,
            ..every_change_off()
        };
        let mut out = base.clone();
        photometric(&mut out, size, &cfg, &mut Rng::new(3));
        let at = |x: usize, y: usize| out[y * size + x];
        // Far from the square and deep inside it: flat, so light.
        assert_eq!(at(0, 0), 1.0);
        assert_eq!(at(5, 5), 1.0);
        // Both sides of its edge: dark.
        assert_eq!(at(2, 5), 0.0);
        assert_eq!(at(3, 5), 0.0);
        assert_eq!(out[..size * size], out[2 * size * size..]);
    }

    #[test]
    fn inversion_alone_turns_ink_light() {
        let base: Vec<f32> = (0..3 * 64).map(|i| (i % 13) as f32 / 12.0).collect();
        let cfg = AugmentConfig {
            invert: 1.0,
            ..every_change_off()
        };
        let mut out = base.clone();
        photometric(&mut out, 8, &cfg, &mut Rng::new(9));
        for (x, y) in base.iter().zip(&out) {
            assert!((x + y - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn fill_turns_an_outlined_square_into_a_filled_one_with_cut_outs_and_leaves_clutter_alone() {
        let size = 16;
        // A dark square outline (rows/columns 4 and 11) on a light ground.
        let mut plane = vec![0.9f32; size * size];
        for k in 4..12 {
            for (y, x) in [(4, k), (11, k), (k, 4), (k, 11)] {
                plane[y * size + x] = 0.1;
            }
        }
        // A dot inside it: a cut-out once the square is filled.
        plane[7 * size + 7] = 0.1;
        let base: Vec<f32> = plane.iter().chain(&plane).chain(&plane).copied().collect();
        let cfg = AugmentConfig {
            fill: 1.0,
            ..every_change_off()
        };
        let mut out = base.clone();
        photometric(&mut out, size, &cfg, &mut Rng::new(5));
        let at = |o: &[f32], x: usize, y: usize| o[y * size + x];
        // Inside the outline: now ink, but for the dot, now ground; the outline stays
        // ink and the outside ground.
        assert!((at(&out, 6, 6) - 0.1).abs() < 1e-6);
        assert!((at(&out, 9, 8) - 0.1).abs() < 1e-6);
        assert_eq!(at(&out, 7, 7), 0.9);
        assert_eq!(at(&out, 4, 7), 0.1);
        assert_eq!(at(&out, 1, 1), 0.9);
        assert_eq!(at(&out, 13, 7), 0.9);
        // A border of clutter: untouched.
        let mut cluttered = base.clone();
        for (i, v) in cluttered.iter_mut().enumerate() {
            let (y, x) = ((i / size) % size, i % size);
            if y == 0 || x == 0 || y == size - 1 || x == size - 1 {
                *v = (i % 7) as f32 / 6.0;
            }
        }
        let mut out = cluttered.clone();
        photometric(&mut out, size, &cfg, &mut Rng::new(5));
        assert_eq!(out, cluttered);
        // Off (the default): the stream of draws and the picture are unchanged.
        let mut out = base.clone();
        photometric(&mut out, size, &every_change_off(), &mut Rng::new(5));
        assert_eq!(out, base);
    }
}
