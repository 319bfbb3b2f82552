//! Dresses: mini, maxi and shirt dress.

use crate::data::synth::colour::ACCENTS;
use crate::data::synth::geom::{Prim, v2};
use crate::rng::Rng;

use super::bodice::{Neck, Sleeve, TopSpec, belt, neck_choice, placket, top_form};
use super::{Detail, Form, Ink, Kind, legs_below};

pub(super) fn build_dress(kind: Kind, rng: &mut Rng) -> Form {
    let c = 0.5;
    match kind {
        Kind::MiniDress | Kind::MaxiDress => {
            let maxi = kind == Kind::MaxiDress;
            let sy = if maxi {
                rng.range_f32(0.07, 0.09)
            } else {
                rng.range_f32(0.1, 0.13)
            };
            let nw = rng.range_f32(0.05, 0.07);
            let strap = if maxi || rng.chance(0.5) {
                rng.range_f32(0.01, 0.02)
            } else {
                rng.range_f32(0.03, 0.045)
            };
            let cw = if maxi {
                rng.range_f32(0.13, 0.15)
            } else {
                rng.range_f32(0.14, 0.16)
            };
            let ay = sy + rng.range_f32(0.14, 0.17);
            let wy = if maxi {
                rng.range_f32(0.33, 0.37)
            } else {
                rng.range_f32(0.4, 0.44)
            };
            let ww = cw - rng.range_f32(0.02, 0.035);
            let neck = if maxi {
                neck_choice(rng, [0.4, 0.6, 0.0])
            } else {
                neck_choice(rng, [0.4, 0.35, 0.25])
            };
            let s = TopSpec {
                sy,
                sw: nw + strap + 0.012,
                ay,
                cw,
                waist: Some((wy, ww)),
                hy: if maxi {
                    rng.range_f32(0.94, 0.98)
                } else {
                    rng.range_f32(0.68, 0.76)
                },
                hw: if maxi {
                    rng.range_f32(0.3, 0.4)
                } else {
                    rng.range_f32(0.25, 0.32)
                },
                straps: true,
                sleeve: None,
                neck,
                nw,
                nd: if maxi {
                    rng.range_f32(0.08, 0.14)
                } else {
                    rng.range_f32(0.06, 0.12)
                },
                rib: false,
            };
            let mut f = top_form(&s, rng);
            if rng.chance(0.4) {
                f.details.push(belt(rng, c, wy, 0.7, 0.014));
            } else {
                f.details.push(Detail::line(
                    v2(c - ww, wy),
                    v2(c + ww, wy),
                    0.003,
                    Ink::Tone(0.78),
                ));
            }
            if maxi && rng.chance(0.4) {
                for t in [0.4f32, 0.7] {
                    let y = wy + (s.hy - wy) * t;
                    let w = s.half_width_at(y);
                    f.details.push(Detail::line(
                        v2(c - w, y),
                        v2(c + w, y),
                        0.003,
                        Ink::Tone(0.8),
                    ));
                }
            }
            if !maxi {
                legs_below(&mut f, s.hy, 0.0, false);
            }
            f
        }
        _ => {
            // Shirt dress.
            let sy = rng.range_f32(0.13, 0.15);
            let sw = rng.range_f32(0.15, 0.17);
            let cw = sw + rng.range_f32(-0.005, 0.01);
            let ay = sy + 0.13;
            let wy = rng.range_f32(0.42, 0.46);
            let nw = rng.range_f32(0.035, 0.05);
            let nd = rng.range_f32(0.06, 0.08);
            let s = TopSpec {
                sy,
                sw,
                ay,
                cw,
                waist: Some((wy, cw - rng.range_f32(0.0, 0.02))),
                hy: rng.range_f32(0.84, 0.92),
                hw: cw + rng.range_f32(0.04, 0.08),
                straps: false,
                sleeve: Some(Sleeve {
                    angle: rng.range_f32(45.0, 60.0),
                    len: rng.range_f32(0.12, 0.24),
                    cuff: rng.range_f32(0.85, 0.95),
                }),
                neck: Neck::V,
                nw,
                nd,
                rib: false,
            };
            let mut f = top_form(&s, rng);
            let collar = Prim::Poly(vec![
                v2(c + 0.004, sy + nd),
                v2(c + nw + 0.035, sy - 0.01),
                v2(c + nw + 0.055, sy + 0.055),
            ]);
            for prim in [collar.mirrored(), collar] {
                f.details.push(Detail::fill(prim.clone(), Ink::Tone(1.1)));
                f.details.push(Detail {
                    prim,
                    ring: 0.004,
                    ink: Ink::Tone(0.75),
                });
            }
            let button = *rng.pick(&ACCENTS);
            placket(&mut f.details, sy + nd, s.hy - 0.02, 6, button);
            if rng.chance(0.6) {
                f.details.push(belt(rng, c, wy, 0.72, 0.016));
            }
            legs_below(&mut f, s.hy, 0.0, false);
            f
        }
    }
}
