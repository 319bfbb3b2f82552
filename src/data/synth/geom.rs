//! 2-D geometry shared by garment space and image space: points, signed-distance
//! primitives and their unions, and analytic anti-aliasing from a distance.

use std::ops::{Add, Mul, Neg, Sub};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct V2 {
    pub(super) x: f32,
    pub(super) y: f32,
}

pub(super) const fn v2(x: f32, y: f32) -> V2 {
    V2 { x, y }
}

impl Add for V2 {
    type Output = V2;
    fn add(self, o: V2) -> V2 {
        v2(self.x + o.x, self.y + o.y)
    }
}

impl Sub for V2 {
    type Output = V2;
    fn sub(self, o: V2) -> V2 {
        v2(self.x - o.x, self.y - o.y)
    }
}

impl Mul<f32> for V2 {
    type Output = V2;
    fn mul(self, k: f32) -> V2 {
        v2(self.x * k, self.y * k)
    }
}

impl Neg for V2 {
    type Output = V2;
    fn neg(self) -> V2 {
        v2(-self.x, -self.y)
    }
}

impl V2 {
    pub(super) fn dot(self, o: V2) -> f32 {
        self.x * o.x + self.y * o.y
    }

    pub(super) fn len(self) -> f32 {
        self.dot(self).sqrt()
    }

    /// Rotated by the angle whose cosine and sine are `c` and `s`.
    pub(super) fn rot(self, c: f32, s: f32) -> V2 {
        v2(c * self.x - s * self.y, s * self.x + c * self.y)
    }

    /// Mirrored about the garment's centre line `u = 0.5`.
    pub(super) fn mirror(self) -> V2 {
        v2(1.0 - self.x, self.y)
    }

    pub(super) fn min(self, o: V2) -> V2 {
        v2(self.x.min(o.x), self.y.min(o.y))
    }

    pub(super) fn max(self, o: V2) -> V2 {
        v2(self.x.max(o.x), self.y.max(o.y))
    }
}

/// A signed-distance primitive (negative inside).
#[derive(Debug, Clone)]
pub(super) enum Prim {
    Poly(Vec<V2>),
    Capsule {
        a: V2,
        b: V2,
        r: f32,
    },
    Ellipse {
        c: V2,
        rx: f32,
        ry: f32,
    },
    /// Axis-aligned box with centre, half extents and corner radius.
    Rect {
        c: V2,
        h: V2,
        r: f32,
    },
}

impl Prim {
    pub(super) fn sdf(&self, p: V2) -> f32 {
        match self {
            Prim::Poly(v) => sd_poly(v, p),
            Prim::Capsule { a, b, r } => {
                let pa = p - *a;
                let ba = *b - *a;
                let h = (pa.dot(ba) / ba.dot(ba).max(1e-12)).clamp(0.0, 1.0);
                (pa - ba * h).len() - r
            }
            Prim::Ellipse { c, rx, ry } => {
                // Inigo Quilez's cheap approximation, exact enough near the boundary.
                let q = p - *c;
                let k0 = v2(q.x / rx, q.y / ry).len();
                let k1 = v2(q.x / (rx * rx), q.y / (ry * ry)).len();
                if k1 < 1e-9 {
                    -rx.min(*ry)
                } else {
                    k0 * (k0 - 1.0) / k1
                }
            }
            Prim::Rect { c, h, r } => {
                let d = v2((p.x - c.x).abs() - h.x + r, (p.y - c.y).abs() - h.y + r);
                v2(d.x.max(0.0), d.y.max(0.0)).len() + d.x.max(d.y).min(0.0) - r
            }
        }
    }

    pub(super) fn bounds(&self) -> (V2, V2) {
        match self {
            Prim::Poly(v) => v.iter().fold(
                (v2(f32::MAX, f32::MAX), v2(f32::MIN, f32::MIN)),
                |(lo, hi), p| (lo.min(*p), hi.max(*p)),
            ),
            Prim::Capsule { a, b, r } => (a.min(*b) - v2(*r, *r), a.max(*b) + v2(*r, *r)),
            Prim::Ellipse { c, rx, ry } => (*c - v2(*rx, *ry), *c + v2(*rx, *ry)),
            Prim::Rect { c, h, .. } => (*c - *h, *c + *h),
        }
    }

    pub(super) fn mirrored(&self) -> Prim {
        match self {
            Prim::Poly(v) => Prim::Poly(v.iter().rev().map(|p| p.mirror()).collect()),
            Prim::Capsule { a, b, r } => Prim::Capsule {
                a: a.mirror(),
                b: b.mirror(),
                r: *r,
            },
            Prim::Ellipse { c, rx, ry } => Prim::Ellipse {
                c: c.mirror(),
                rx: *rx,
                ry: *ry,
            },
            Prim::Rect { c, h, r } => Prim::Rect {
                c: c.mirror(),
                h: *h,
                r: *r,
            },
        }
    }
}

/// Exact signed distance to a simple polygon (Inigo Quilez).
fn sd_poly(v: &[V2], p: V2) -> f32 {
    let Some(&last) = v.last() else {
        return f32::MAX;
    };
    let mut d = (p - v[0]).dot(p - v[0]);
    let mut s = 1.0f32;
    let mut vj = last;
    for &vi in v {
        let e = vj - vi;
        let w = p - vi;
        let b = w - e * (w.dot(e) / e.dot(e).max(1e-12)).clamp(0.0, 1.0);
        d = d.min(b.dot(b));
        let c1 = p.y >= vi.y;
        let c2 = p.y < vj.y;
        let c3 = e.x * w.y > e.y * w.x;
        if (c1 && c2 && c3) || (!c1 && !c2 && !c3) {
            s = -s;
        }
        vj = vi;
    }
    s * d.sqrt()
}

/// Union of `add` minus the union of `sub`.
#[derive(Debug, Clone, Default)]
pub(super) struct Shape {
    pub(super) add: Vec<Prim>,
    pub(super) sub: Vec<Prim>,
}

impl Shape {
    #[cfg(test)]
    pub(super) fn sdf(&self, p: V2) -> f32 {
        let mut d = f32::MAX;
        for a in &self.add {
            d = d.min(a.sdf(p));
        }
        for s in &self.sub {
            d = d.max(-s.sdf(p));
        }
        d
    }

    pub(super) fn push_pair(&mut self, p: Prim) {
        self.add.push(p.mirrored());
        self.add.push(p);
    }

    pub(super) fn compile(self) -> Sdf {
        let bound = |p: Prim| {
            let (lo, hi) = p.bounds();
            (p, lo, hi)
        };
        Sdf {
            add: self.add.into_iter().map(bound).collect(),
            sub: self.sub.into_iter().map(bound).collect(),
        }
    }
}

/// A [`Shape`] with the bounding box of every primitive, to skip the ones that cannot
/// change the distance (same result as [`Shape::sdf`], several times faster).
#[derive(Debug, Clone, Default)]
pub(super) struct Sdf {
    pub(super) add: Vec<(Prim, V2, V2)>,
    pub(super) sub: Vec<(Prim, V2, V2)>,
}

/// A lower bound of the distance from `p` to anything inside the box (0 inside it).
pub(super) fn box_gap(p: V2, lo: V2, hi: V2) -> f32 {
    (lo.x - p.x)
        .max(p.x - hi.x)
        .max(lo.y - p.y)
        .max(p.y - hi.y)
        .max(0.0)
}

impl Sdf {
    pub(super) fn sdf(&self, p: V2) -> f32 {
        let mut d = f32::MAX;
        for (prim, lo, hi) in &self.add {
            let gap = box_gap(p, *lo, *hi);
            if gap == 0.0 || gap < d {
                d = d.min(prim.sdf(p));
            }
        }
        for (prim, lo, hi) in &self.sub {
            let gap = box_gap(p, *lo, *hi);
            if gap == 0.0 || gap < -d {
                d = d.max(-prim.sdf(p));
            }
        }
        d
    }

    pub(super) fn bounds(&self) -> (V2, V2) {
        self.add.iter().fold(
            (v2(f32::MAX, f32::MAX), v2(f32::MIN, f32::MIN)),
            |(lo, hi), (_, a, b)| (lo.min(*a), hi.max(*b)),
        )
    }
}

/// Anti-aliased coverage of a shape at distance `d` for a pixel `fw` wide.
pub(super) fn coverage(d: f32, fw: f32) -> f32 {
    (0.5 - d / fw).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_measure_signed_distance() {
        let square = Prim::Poly(vec![v2(0.0, 0.0), v2(1.0, 0.0), v2(1.0, 1.0), v2(0.0, 1.0)]);
        assert!((square.sdf(v2(0.5, 0.5)) + 0.5).abs() < 1e-6);
        assert!((square.sdf(v2(2.0, 0.5)) - 1.0).abs() < 1e-6);
        assert!((square.mirrored().sdf(v2(0.5, 0.25)) + 0.25).abs() < 1e-6);
        let rect = Prim::Rect {
            c: v2(0.5, 0.5),
            h: v2(0.5, 0.5),
            r: 0.0,
        };
        for p in [v2(0.2, 0.3), v2(1.5, 0.5), v2(-0.3, 2.0)] {
            assert!((rect.sdf(p) - square.sdf(p)).abs() < 1e-5, "{p:?}");
        }
        let cap = Prim::Capsule {
            a: v2(0.0, 0.0),
            b: v2(1.0, 0.0),
            r: 0.1,
        };
        assert!((cap.sdf(v2(0.5, 0.3)) - 0.2).abs() < 1e-6);
        let e = Prim::Ellipse {
            c: v2(0.5, 0.5),
            rx: 0.2,
            ry: 0.1,
        };
        assert!(e.sdf(v2(0.5, 0.5)) < 0.0);
        assert!(e.sdf(v2(0.69, 0.5)) < 0.0 && e.sdf(v2(0.71, 0.5)) > 0.0);
        assert!((e.sdf(v2(0.5, 0.7)) - 0.1).abs() < 0.02);
    }
}
