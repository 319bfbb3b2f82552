//! The garment's surface: its pattern, folds, denim twill and the details drawn on it.

use crate::data::synth::colour::{Rgb, mix, tint};
use crate::data::synth::geom::{V2, box_gap, coverage, v2};

use super::{Garment, Ink, Pattern};

/// Coverage of the band `[0, duty)` of a unit-period stripe at coordinate `t`, filtered
/// over a pixel `fw` periods wide (fades to the mean when stripes get too fine).
fn stripe(t: f32, duty: f32, fw: f32) -> f32 {
    let f = t - t.floor();
    let d = if f < duty {
        -(f.min(duty - f))
    } else {
        (f - duty).min(1.0 - f)
    };
    let a = coverage(d, fw);
    let blur = ((fw - 0.4) / 0.6).clamp(0.0, 1.0);
    a + (duty - a) * blur
}

fn hash2(x: i32, y: i32, seed: u32) -> u32 {
    let mut h = seed
        ^ (x as u32).wrapping_mul(0x27D4_EB2D)
        ^ (y as u32).wrapping_mul(0x1656_67B1).rotate_left(13);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^= h >> 15;
    h
}

fn hash_unit(h: u32, k: u32) -> f32 {
    (h.rotate_left(k * 11) >> 8) as f32 / 16_777_216.0
}

impl Garment {
    /// The fabric's colour at garment point `q` (pattern only).
    fn fabric(&self, q: V2, fw: f32) -> Rgb {
        if self.pattern == Pattern::Solid {
            return self.base;
        }
        let inv = 1.0 / self.period;
        let p = (q - v2(0.5, 0.5)).rot(self.pat_cos, self.pat_sin) * inv + self.phase;
        let fc = fw * inv;
        match self.pattern {
            Pattern::Solid => self.base,
            Pattern::Stripes => {
                let mut c = mix(self.base, self.second, stripe(p.y, self.duty, fc));
                if self.accent {
                    c = mix(c, self.third, stripe(p.y + 0.5 * self.duty + 0.45, 0.1, fc));
                }
                c
            }
            Pattern::Checks => {
                let a = stripe(p.x, self.duty, fc);
                let b = stripe(p.y, self.duty, fc);
                let mut c = mix(self.base, self.second, 0.5 * (a + b));
                if self.accent {
                    let a = stripe(p.x + 0.7, 0.08, fc);
                    let b = stripe(p.y + 0.7, 0.08, fc);
                    c = mix(c, self.third, a.max(b));
                }
                c
            }
            Pattern::Dots => {
                let row = p.y.floor();
                let x = p.x + if (row as i32) & 1 == 1 { 0.5 } else { 0.0 };
                let l = v2(x - x.floor() - 0.5, p.y - row - 0.5);
                let a = coverage(l.len() - self.duty, fc);
                let mean = std::f32::consts::PI * self.duty * self.duty;
                let blur = ((fc - 0.3) / 0.5).clamp(0.0, 1.0);
                mix(self.base, self.second, a + (mean - a) * blur)
            }
            Pattern::Print => {
                let (cx, cy) = (p.x.floor(), p.y.floor());
                let h = hash2(cx as i32, cy as i32, self.print_seed);
                let centre = v2(
                    cx + 0.5 + 0.24 * (hash_unit(h, 0) - 0.5),
                    cy + 0.5 + 0.24 * (hash_unit(h, 1) - 0.5),
                );
                let l = p - centre;
                let radius = 0.18 + 0.1 * hash_unit(h, 2);
                let theta = l.y.atan2(l.x) + std::f32::consts::TAU * hash_unit(h, 3);
                let petal = radius * (0.62 + 0.38 * (5.0 * theta).cos());
                let a = coverage(l.len() - petal, fc);
                let ink = if h & 1 == 0 { self.second } else { self.third };
                let blur = ((fc - 0.3) / 0.5).clamp(0.0, 1.0);
                mix(self.base, ink, a + (0.15 - a) * blur)
            }
        }
    }

    /// The lit colour of the garment's front at `q`, `d` inside its boundary.
    pub(in crate::data::synth) fn surface(&self, q: V2, d: f32, fw: f32) -> Rgb {
        let mut c = self.fabric(q, fw);
        let ao = 1.0 - 0.22 * (d.min(0.0) / 0.02).exp();
        let [fx, fy, ph, amp] = self.fold;
        let fold = 1.0 + amp * (std::f32::consts::TAU * (fx * q.x + fy * q.y) + ph).sin();
        let mut k = ao * fold;
        if self.twill > 0.0 {
            let fine = (1.0 - fw / 0.02).clamp(0.0, 1.0);
            k *= 1.0 + self.twill * fine * (std::f32::consts::TAU * (q.x + q.y) / 0.014).sin();
            let fade_x = ((q.x - 0.5).abs() - 0.1) / 0.06;
            k *= 1.0 + self.fade * (-fade_x * fade_x).exp() * (-((q.y - 0.45) / 0.2).powi(2)).exp();
        }
        for (det, lo, hi) in &self.details {
            if box_gap(q, *lo, *hi) > fw {
                continue;
            }
            let a = coverage(det.sdf(q), fw);
            if a > 0.0 {
                c = match det.ink {
                    Ink::Tone(t) => tint(c, 1.0 + (t - 1.0) * a),
                    Ink::Paint(p) => mix(c, p, a),
                };
            }
        }
        [
            (c[0] * k).clamp(0.0, 1.0),
            (c[1] * k).clamp(0.0, 1.0),
            (c[2] * k).clamp(0.0, 1.0),
        ]
    }
}
