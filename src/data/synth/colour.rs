//! Colours as RGB triples in `[0, 1]`: mixing, jitter, and the accent and skin palettes.

use crate::rng::Rng;

pub(super) type Rgb = [f32; 3];

pub(super) const fn rgb8(r: u8, g: u8, b: u8) -> Rgb {
    [r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0]
}

pub(super) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub(super) fn tint(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

fn luma(c: Rgb) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

pub(super) fn jitter_colour(c: Rgb, rng: &mut Rng, per_channel: f32, brightness: f32) -> Rgb {
    let b = 1.0 + brightness * rng.normal();
    [
        (c[0] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
        (c[1] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
        (c[2] * b * (1.0 + per_channel * rng.normal())).clamp(0.0, 1.0),
    ]
}

/// A random muted colour (walls, furniture, clutter).
pub(super) fn clutter_colour(rng: &mut Rng) -> Rgb {
    let c = [rng.f32(), rng.f32(), rng.f32()];
    let g = luma(c);
    let grey = [g, g, g];
    let c = mix(c, grey, rng.range_f32(0.2, 0.75));
    let k = rng.range_f32(0.35, 1.15);
    [
        (c[0] * k).clamp(0.02, 0.98),
        (c[1] * k).clamp(0.02, 0.98),
        (c[2] * k).clamp(0.02, 0.98),
    ]
}

pub(super) const ACCENTS: [Rgb; 10] = [
    rgb8(0xF5, 0xF5, 0xF0),
    rgb8(0x18, 0x18, 0x1A),
    rgb8(0xEF, 0xE4, 0xC8),
    rgb8(0x26, 0x30, 0x4F),
    rgb8(0xC0, 0x30, 0x30),
    rgb8(0xE8, 0xC0, 0x40),
    rgb8(0x3F, 0x7F, 0x4F),
    rgb8(0xE8, 0x9A, 0xB0),
    rgb8(0x7F, 0xB0, 0xDA),
    rgb8(0xE0, 0x7A, 0x30),
];

pub(super) const SKIN: [Rgb; 6] = [
    rgb8(0xF1, 0xC9, 0xA8),
    rgb8(0xE0, 0xAC, 0x84),
    rgb8(0xC6, 0x8E, 0x64),
    rgb8(0xA2, 0x6B, 0x45),
    rgb8(0x7A, 0x4E, 0x32),
    rgb8(0x56, 0x37, 0x25),
];

/// An accent colour that stands out against `base`.
pub(super) fn contrasting(base: Rgb, rng: &mut Rng) -> Rgb {
    for _ in 0..8 {
        let c = *rng.pick(&ACCENTS);
        if (luma(c) - luma(base)).abs() >= 0.2 {
            return c;
        }
    }
    if luma(base) > 0.5 {
        ACCENTS[1]
    } else {
        ACCENTS[0]
    }
}
