//! Rendering a view of a garment to RGB8 pixels and its bounding box.

use crate::rng::Rng;

use super::colour::{Rgb, mix, tint};
use super::degrade::{box_blur, gauss, light, occlude};
use super::garment::Garment;
use super::geom::{V2, coverage, v2};
use super::view::View;

fn inside(q: V2, lo: V2, hi: V2, margin: f32) -> bool {
    q.x > lo.x - margin && q.x < hi.x + margin && q.y > lo.y - margin && q.y < hi.y + margin
}

/// Renders one view: RGB8 pixels and the garment's box `[x1, y1, x2, y2)` in pixels.
pub(super) fn render(g: &Garment, view: &View, size: u32, rng: &mut Rng) -> (Vec<u8>, [u32; 4]) {
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
pub(super) fn mask_box(mask: &[f32], n: usize) -> [u32; 4] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::garment::{KINDS, build_garment};
    use crate::data::synth::view::{consumer_view, shop_view};

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
}
