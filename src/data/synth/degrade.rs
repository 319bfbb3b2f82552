//! Degradations applied after rendering: occlusion, lighting, blur and sensor noise.

use crate::rng::Rng;

use super::colour::{Rgb, mix, tint};
use super::geom::{Prim, coverage, v2};
use super::view::{Occluder, View};

/// Puts a rounded rectangle of clutter (or a hand) over at most a quarter of the garment.
pub(super) fn occlude(img: &mut [Rgb], mask: &[f32], n: usize, bbox: [u32; 4], occ: &Occluder) {
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
pub(super) fn light(img: &mut [Rgb], view: &View, n: usize) {
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
pub(super) fn gauss(rng: &mut Rng) -> f32 {
    (rng.f32() + rng.f32() + rng.f32() + rng.f32() - 2.0) * 1.732_050_8
}

/// Separable box blur of fractional radius `r` (edge taps weighted by the fraction).
pub(super) fn box_blur(img: &mut [Rgb], n: usize, r: f32) {
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
    use crate::data::synth::garment::{KINDS, build_garment};
    use crate::data::synth::render::mask_box;
    use crate::data::synth::view::Frame;

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
