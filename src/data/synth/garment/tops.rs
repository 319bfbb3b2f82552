//! Tops: T-shirt, tank top, blouse and hoodie.

use crate::data::synth::colour::ACCENTS;
use crate::data::synth::geom::{Prim, Shape, v2};
use crate::rng::Rng;

use super::bodice::{Neck, Sleeve, TopSpec, neck_choice, neck_cut, placket, sleeve_poly, top_form};
use super::{Detail, Form, Ink, Kind, legs_below};

pub(super) fn build_top(kind: Kind, rng: &mut Rng) -> Form {
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
