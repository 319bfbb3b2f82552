//! The garment catalogue: the silhouette family, palette and pattern odds of every
//! category, and the garment built from them (shape, details, fabric parameters).
//! The silhouette builders live in the submodules, the fabric's shading in `fabric`.

mod bodice;
mod bottoms;
mod dresses;
mod fabric;
mod tops;

use crate::rng::Rng;

use super::colour::{ACCENTS, Rgb, contrasting, jitter_colour, rgb8};
use super::geom::{Prim, Sdf, Shape, V2, v2};

use bottoms::build_bottom;
use dresses::build_dress;
use tops::build_top;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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

/// The silhouette family of each entry of [`CATEGORIES`](super::CATEGORIES).
pub(super) const KINDS: [Kind; 10] = [
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
pub(super) struct Garment {
    pub(super) front: Sdf,
    /// The inside of the back, seen through the neckline.
    pub(super) back: Option<Sdf>,
    /// Details with their bounding boxes.
    details: Vec<(Detail, V2, V2)>,
    /// A wearer's skin and other clothes, shown in some consumer images.
    pub(super) skin: Sdf,
    pub(super) other: Sdf,
    pub(super) lo: V2,
    pub(super) hi: V2,
    pub(super) body_lo: V2,
    pub(super) body_hi: V2,
    pub(super) base: Rgb,
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

/// The shape and details of a garment of `kind`, from its silhouette family's builder.
fn build_form(kind: Kind, rng: &mut Rng) -> Form {
    match kind {
        Kind::TShirt | Kind::TankTop | Kind::Blouse | Kind::Hoodie => build_top(kind, rng),
        Kind::MiniDress | Kind::MaxiDress | Kind::ShirtDress => build_dress(kind, rng),
        Kind::Jeans | Kind::Shorts | Kind::Skirt => build_bottom(kind, rng),
    }
}

pub(super) fn build_garment(kind: Kind, rng: &mut Rng) -> Garment {
    let form = build_form(kind, rng);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::geom::coverage;
    use crate::data::synth::view::Frame;

    #[test]
    fn culled_distances_equal_the_plain_ones() {
        let mut rng = Rng::new(3);
        for kind in KINDS {
            for _ in 0..3 {
                let f = build_form(kind, &mut rng);
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
}
