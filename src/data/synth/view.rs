//! Views: how a garment is framed, lit and degraded, for the clean shop images and the
//! consumer images with their domain shift.

use crate::rng::Rng;

use super::SHOP_QUALITY;
use super::colour::{Rgb, SKIN, clutter_colour, jitter_colour, mix};
use super::garment::Garment;
use super::geom::{Prim, V2, box_gap, coverage, v2};

/// Maps normalised image points to garment space: `x = c_img + R(θ)(g − c_g)·k`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    c_img: V2,
    c_g: V2,
    pub(super) k: f32,
    cos: f32,
    sin: f32,
}

impl Frame {
    /// `fill` is the longest side of the garment's box as a fraction of the image.
    pub(super) fn new(g: &Garment, fill: f32, offset: V2, degrees: f32) -> Self {
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

    pub(super) fn garment_point(&self, p: V2) -> V2 {
        self.c_g + ((p - self.c_img) * (1.0 / self.k)).rot(self.cos, -self.sin)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Background {
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
    pub(super) fn at(&self, p: V2, fw: f32) -> Rgb {
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
pub(super) struct Occluder {
    /// Size as fractions of the garment's box, which side it enters from, where.
    pub(super) w: f32,
    pub(super) h: f32,
    pub(super) side: usize,
    pub(super) t: f32,
    pub(super) colour: Rgb,
    pub(super) skin: bool,
}

#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) frame: Frame,
    pub(super) background: Background,
    pub(super) shadow: bool,
    /// Skin and other-clothes colours when worn.
    pub(super) worn: Option<(Rgb, Rgb)>,
    pub(super) gain: Rgb,
    pub(super) light_dir: V2,
    pub(super) vignette: f32,
    pub(super) gamma: f32,
    pub(super) blur: f32,
    pub(super) noise: f32,
    pub(super) occluder: Option<Occluder>,
    pub(super) quality: u8,
}

pub(super) fn shop_view(g: &Garment, rng: &mut Rng) -> View {
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

pub(super) fn consumer_view(g: &Garment, rng: &mut Rng) -> View {
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
