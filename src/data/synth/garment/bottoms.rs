//! Bottoms: jeans, shorts and skirt.

use crate::data::synth::colour::rgb8;
use crate::data::synth::geom::{Prim, v2};
use crate::rng::Rng;

use super::{Detail, Form, Ink, Kind, legs_below};

/// Waistband, fly and pockets of jeans and shorts.
fn trouser_details(f: &mut Form, wy: f32, ww: f32, hipy: f32, hp: f32, cy: f32, rng: &mut Rng) {
    let c = 0.5;
    f.details.push(Detail::fill(
        Prim::Rect {
            c: v2(c, wy + 0.018),
            h: v2(0.5, 0.018),
            r: 0.0,
        },
        Ink::Tone(0.86),
    ));
    f.details.push(Detail::line(
        v2(c + 0.014, wy + 0.04),
        v2(c + 0.014, cy - 0.07),
        0.0025,
        Ink::Tone(0.78),
    ));
    f.details.push(Detail::line(
        v2(c + 0.014, cy - 0.07),
        v2(c, cy - 0.035),
        0.0025,
        Ink::Tone(0.78),
    ));
    let pocket = Detail::line(
        v2(c + ww - 0.06, wy + 0.036),
        v2(c + hp - 0.004, hipy - rng.range_f32(0.01, 0.04)),
        0.003,
        Ink::Tone(0.76),
    );
    f.details.push(Detail {
        prim: pocket.prim.mirrored(),
        ..pocket.clone()
    });
    f.details.push(pocket);
    for x in [-(ww - 0.03), ww - 0.03, 0.0] {
        let prim = Prim::Rect {
            c: v2(c + x, wy + 0.018),
            h: v2(0.006, 0.02),
            r: 0.002,
        };
        f.details.push(Detail::fill(prim, Ink::Tone(0.78)));
    }
    f.details.push(Detail::fill(
        Prim::Ellipse {
            c: v2(c, wy + 0.018),
            rx: 0.009,
            ry: 0.009,
        },
        Ink::Paint(rgb8(0xB4, 0xA8, 0x88)),
    ));
    // The wearer: a top above the waist with arms beside it.
    f.other.add.push(Prim::Rect {
        c: v2(c, wy - 0.2),
        h: v2(ww + 0.04, 0.23),
        r: 0.04,
    });
    f.skin.push_pair(Prim::Capsule {
        a: v2(c + ww + 0.06, wy - 0.35),
        b: v2(c + ww + 0.085, wy + 0.2),
        r: 0.03,
    });
}

pub(super) fn build_bottom(kind: Kind, rng: &mut Rng) -> Form {
    let c = 0.5;
    let mut f = Form::default();
    match kind {
        Kind::Jeans | Kind::Shorts => {
            let shorts = kind == Kind::Shorts;
            let wy = if shorts {
                rng.range_f32(0.09, 0.11)
            } else {
                rng.range_f32(0.05, 0.07)
            };
            let ww = if shorts {
                rng.range_f32(0.16, 0.19)
            } else {
                rng.range_f32(0.15, 0.175)
            };
            let hipy = wy + if shorts { 0.14 } else { 0.16 };
            let hp = ww
                + if shorts {
                    rng.range_f32(0.025, 0.04)
                } else {
                    rng.range_f32(0.02, 0.035)
                };
            let cy = if shorts {
                rng.range_f32(0.38, 0.42)
            } else {
                rng.range_f32(0.36, 0.4)
            };
            let hy = if shorts {
                rng.range_f32(0.54, 0.64)
            } else {
                rng.range_f32(0.94, 0.99)
            };
            let lw = if shorts {
                rng.range_f32(0.08, 0.105)
            } else {
                rng.range_f32(0.04, 0.075)
            };
            let oh = if shorts {
                hp + rng.range_f32(0.01, 0.035)
            } else {
                hp - rng.range_f32(0.0, 0.03) + (lw - 0.055) * 0.8
            };
            let ih = (oh - 2.0 * lw).max(0.015);
            let right = [v2(c + hp, hipy), v2(c + oh, hy), v2(c + ih, hy)];
            let mut pts = vec![v2(c - ww, wy), v2(c + ww, wy)];
            pts.extend(right);
            pts.push(v2(c, cy));
            pts.extend(right.iter().rev().map(|p| p.mirror()));
            f.front.add.push(Prim::Poly(pts));
            trouser_details(&mut f, wy, ww, hipy, hp, cy, rng);
            if shorts {
                if rng.chance(0.5) {
                    f.details.push(Detail::fill(
                        Prim::Rect {
                            c: v2(c, hy - 0.02),
                            h: v2(0.5, 0.02),
                            r: 0.0,
                        },
                        Ink::Tone(0.85),
                    ));
                }
                let mid = (oh + ih) * 0.5;
                f.skin.push_pair(Prim::Capsule {
                    a: v2(c + mid, hy - 0.05),
                    b: v2(c + mid + 0.01, 1.3),
                    r: 0.045,
                });
            } else {
                // Shoes.
                let mid = (oh + ih) * 0.5;
                f.other.push_pair(Prim::Ellipse {
                    c: v2(c + mid + 0.02, hy + 0.02),
                    rx: lw + 0.03,
                    ry: 0.03,
                });
            }
            // Inseam stitching down each leg.
            let seam = Detail::line(
                v2(c + hp - 0.01, hipy + 0.02),
                v2(c + oh - 0.012, hy - 0.01),
                0.0025,
                Ink::Tone(0.85),
            );
            f.details.push(Detail {
                prim: seam.prim.mirrored(),
                ..seam.clone()
            });
            f.details.push(seam);
        }
        _ => {
            // Skirt.
            let wy = rng.range_f32(0.09, 0.11);
            let ww = rng.range_f32(0.14, 0.165);
            let hy = rng.range_f32(0.58, 0.82);
            let hw = rng.range_f32(0.24, 0.36);
            f.front.add.push(Prim::Poly(vec![
                v2(c - ww, wy),
                v2(c + ww, wy),
                v2(c + hw, hy),
                v2(c + hw * 0.5, hy + 0.015),
                v2(c - hw * 0.5, hy + 0.015),
                v2(c - hw, hy),
            ]));
            f.details.push(Detail::fill(
                Prim::Rect {
                    c: v2(c, wy + 0.02),
                    h: v2(0.5, 0.02),
                    r: 0.0,
                },
                Ink::Tone(0.85),
            ));
            if rng.chance(0.45) {
                let n = rng.range_usize(3, 5);
                for i in 1..n {
                    let t = i as f32 / n as f32 * 2.0 - 1.0;
                    f.details.push(Detail::line(
                        v2(c + ww * t * 0.9, wy + 0.04),
                        v2(c + hw * t * 0.9, hy),
                        0.0025,
                        Ink::Tone(0.78),
                    ));
                }
            }
            f.other.add.push(Prim::Rect {
                c: v2(c, wy - 0.2),
                h: v2(ww + 0.04, 0.23),
                r: 0.04,
            });
            f.skin.push_pair(Prim::Capsule {
                a: v2(c + ww + 0.06, wy - 0.35),
                b: v2(c + ww + 0.085, wy + 0.2),
                r: 0.03,
            });
            legs_below(&mut f, hy, 0.0, false);
        }
    }
    f
}
