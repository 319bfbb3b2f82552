//! The upper part shared by tops and dresses: shoulders, sleeves or straps, neckline,
//! the wearer above the waist, and the belts and plackets both use.

use crate::rng::Rng;

use crate::data::synth::colour::{ACCENTS, Rgb};
use crate::data::synth::geom::{Prim, Shape, V2, v2};

use super::{Detail, Form, Ink, pick_weighted};

#[derive(Debug, Clone, Copy)]
pub(super) enum Neck {
    Round,
    V,
    Square,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Sleeve {
    /// Degrees below horizontal.
    pub(super) angle: f32,
    pub(super) len: f32,
    /// Cuff width relative to the armhole width.
    pub(super) cuff: f32,
}

/// The upper part shared by tops and dresses.
#[derive(Debug, Clone, Copy)]
pub(super) struct TopSpec {
    /// Shoulder line at the neck.
    pub(super) sy: f32,
    /// Half width at the shoulder tips (or the outer edge of the straps).
    pub(super) sw: f32,
    /// Armpit height and half width of the chest.
    pub(super) ay: f32,
    pub(super) cw: f32,
    pub(super) waist: Option<(f32, f32)>,
    pub(super) hy: f32,
    pub(super) hw: f32,
    /// Sleeveless with straps and armhole cut-outs.
    pub(super) straps: bool,
    pub(super) sleeve: Option<Sleeve>,
    pub(super) neck: Neck,
    pub(super) nw: f32,
    pub(super) nd: f32,
    pub(super) rib: bool,
}

impl TopSpec {
    fn slope(&self) -> f32 {
        if self.straps { 0.0 } else { 0.03 }
    }

    pub(super) fn shoulder_tip(&self) -> V2 {
        v2(0.5 + self.sw, self.sy + self.slope())
    }

    pub(super) fn armpit(&self) -> V2 {
        v2(0.5 + self.cw, self.ay)
    }

    /// Width of the (straight or flared) garment at height `y` below the waist.
    pub(super) fn half_width_at(&self, y: f32) -> f32 {
        let (wy, ww) = self.waist.unwrap_or((self.ay, self.cw));
        let t = ((y - wy) / (self.hy - wy).max(1e-3)).clamp(0.0, 1.0);
        ww + (self.hw - ww) * t
    }
}

/// The sleeve polygon from the shoulder tip `t` and armpit `a`, and its cuff edge.
pub(super) fn sleeve_poly(t: V2, a: V2, s: Sleeve) -> (Prim, V2, V2, V2) {
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

pub(super) fn neck_cut(neck: Neck, sy: f32, nw: f32, nd: f32) -> Prim {
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

pub(super) fn top_form(s: &TopSpec, rng: &mut Rng) -> Form {
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

/// A waist belt across the garment at height `y`: a grey `tone` or an accent colour
/// (the draw order of `rng` is part of the seeded output).
pub(super) fn belt(rng: &mut Rng, c: f32, y: f32, tone: f32, half_height: f32) -> Detail {
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

/// Draws the front placket with `n` buttons from `y0` to `y1`.
pub(super) fn placket(details: &mut Vec<Detail>, y0: f32, y1: f32, n: usize, button: Rgb) {
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

pub(super) fn neck_choice(rng: &mut Rng, weights: [f32; 3]) -> Neck {
    [Neck::Round, Neck::V, Neck::Square][pick_weighted(rng, &weights)]
}
