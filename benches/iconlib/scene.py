"""The photograph around an icon, as vitrine's synthetic `consumer_view` (src/data/synth.rs):
colours, clutter, occlusion, light, blur, JPEG.

Per-pixel arithmetic avoids numpy's CPU-dispatched kernels (BLAS for `@`/`np.dot`, SIMD
`pow`/`exp`) so that the same generator gives the same bytes on any x86-64 machine: gamma goes
through a table built with `math.pow`, the blur is plain multiply-adds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# PIL's shapes are aliased: they are drawn at 4x and box-averaged.
SHAPE_SS = 4
SKIN = [(0xF1, 0xC9, 0xA8), (0xE0, 0xAC, 0x84), (0xC6, 0x8E, 0x64),
        (0xA2, 0x6B, 0x45), (0x7A, 0x4E, 0x32), (0x56, 0x37, 0x25)]
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


# ---------------------------------------------------------------- colours

def mix(img: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(colour, np.float32) * a


def luma(c) -> float:
    return float(0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2])  # no np.dot: BLAS varies by CPU


def clutter_colour(rng, saturated: bool = False):
    """As synth.rs: a random colour pulled towards grey (muted) or barely (saturated), scaled."""
    c = rng.uniform(0, 1, 3)
    c = c + (luma(c) - c) * (rng.uniform(0, 0.2) if saturated else rng.uniform(0.2, 0.75))
    return np.clip(c * rng.uniform(0.35, 1.15), 0.02, 0.98)


def hue_colour(rng):
    """A saturated colour of random hue (HSV with S in [0.6, 1], V = 1)."""
    h, s = rng.uniform(0, 6), rng.uniform(0.6, 1.0)
    f = h - math.floor(h)
    p, q, t = 1 - s, 1 - s * f, 1 - s * (1 - f)
    return np.array([(1, t, p), (q, 1, p), (p, 1, t), (p, q, 1), (t, p, 1), (1, p, q)][int(h) % 6])


def with_luma(c, target: float):
    """`c` darkened, or mixed with white, until its luma is `target` (keeps its hue)."""
    l = luma(c)
    if l >= target:
        return c * (target / max(l, 1e-6))
    return c + (1 - c) * ((target - l) / (1 - l))


# ---------------------------------------------------------------- shapes and clutter

def gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur, edge-clamped; only multiply-adds, so it is reproducible."""
    r = max(1, math.ceil(3 * sigma))
    weights = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
    weights = [w / sum(weights) for w in weights]
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(img.ndim)]
        p, n = np.pad(img, pad, mode="edge"), img.shape[axis]
        img = sum(np.float32(w) * np.take(p, range(i, i + n), axis=axis) for i, w in enumerate(weights))
    return img


def shape_mask(size: int, draw) -> np.ndarray:
    """Coverage of a PIL-drawn shape, drawn at SHAPE_SS x size (coordinates in [0, 1]) and box-averaged."""
    im = Image.new("L", (size * SHAPE_SS, size * SHAPE_SS), 0)
    draw(ImageDraw.Draw(im), size * SHAPE_SS)
    return np.asarray(im.reduce(SHAPE_SS), np.float32) / 255.0


def primitive(rng, size):
    """A random clutter shape, as synth.rs: rectangle, ellipse or rotated quad."""
    cx, cy = rng.uniform(-0.1, 1.1, 2)
    w, h = rng.uniform(0.05, 0.3, 2)
    kind, r, turn = int(rng.integers(3)), rng.uniform(0, 0.03), rng.uniform(0, math.pi)
    if kind == 0:
        return shape_mask(size, lambda d, n: d.rounded_rectangle(
            [(cx - w) * n, (cy - h) * n, (cx + w) * n, (cy + h) * n], radius=r * n, fill=255))
    if kind == 1:
        return shape_mask(size, lambda d, n: d.ellipse(
            [(cx - w) * n, (cy - h) * n, (cx + w) * n, (cy + h) * n], fill=255))
    co, si = math.cos(turn), math.sin(turn)
    quad = [(cx + x * co - y * si, cy + x * si + y * co) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]
    return shape_mask(size, lambda d, n: d.polygon([(x * n, y * n) for x, y in quad], fill=255))


def clutter(rng, size):
    """A 2-colour gradient in a random direction, an optional floor, 4-8 soft or hard shapes."""
    a, b = clutter_colour(rng), clutter_colour(rng)
    angle = rng.uniform(0, 2 * math.pi)
    u = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    t = np.clip(u[None, :] * np.float32(math.cos(angle)) + u[:, None] * np.float32(math.sin(angle)) + 0.5, 0, 1)
    img = mix(np.broadcast_to(np.asarray(a, np.float32), (size, size, 3)), b, t)
    if rng.uniform() < 0.5:
        y, colour = rng.uniform(0.55, 0.9), clutter_colour(rng)
        img = mix(img, colour, np.clip((u[:, None] + 0.5 - y) * size + 0.5, 0, 1).repeat(size, 1))
    for _ in range(int(rng.integers(4, 9))):
        mask = primitive(rng, size)
        soft = rng.uniform(0.01, 0.06) if rng.uniform() < 0.3 else 0.0
        colour = clutter_colour(rng, saturated=rng.uniform() < 0.35)
        img = mix(img, colour, gaussian(mask, soft * size) if soft else mask)
    return img


def occlude(img, icon, rng, size):
    """As synth.rs: a rounded rectangle of clutter or skin, 25-60% x 20-50% of the icon's box,
    entering from a random side, shrunk until it hides at most a quarter of the icon."""
    ys, xs = np.nonzero(icon >= 0.5)
    if len(xs) == 0:
        return img
    x1, y1, x2, y2 = xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size
    bw, bh = x2 - x1, y2 - y1
    w, h = bw * rng.uniform(0.25, 0.6), bh * rng.uniform(0.2, 0.5)
    side, t, skin = int(rng.integers(4)), rng.uniform(), rng.uniform() < 0.3
    colour = (np.array(SKIN[int(rng.integers(6))]) / 255 * rng.uniform(0.93, 1.05, 3) if skin
              else clutter_colour(rng, saturated=rng.uniform() < 0.35))
    total = float(icon.sum(dtype=np.float64))
    for _ in range(16):
        cx, cy = [(x1 + w * 0.2, y1 + bh * t), (x2 - w * 0.2, y1 + bh * t),
                  (x1 + bw * t, y2 - h * 0.2), (x1 + bw * t, y1 + h * 0.2)][side]
        box = [(cx - w / 2), (cy - h / 2), (cx + w / 2), (cy + h / 2)]
        mask = shape_mask(size, lambda d, n: d.rounded_rectangle(
            [v * n for v in box], radius=min(w, h) * (0.45 if skin else 0.15) * n, fill=255))
        if float((mask * icon).sum(dtype=np.float64)) <= 0.25 * total:
            shade = 1 - 0.25 * np.clip(((np.arange(size) + 0.5) / size - box[1]) / h, 0, 1)
            return img * (1 - mask[..., None]) + (colour[None, None, :] * shade[:, None, None]) * mask[..., None]
        w, h = w * 0.85, h * 0.85
    return img


# ---------------------------------------------------------------- the camera

def light(img, rng, size):
    """As synth.rs `light`: colour cast x brightness, directional light, vignette, gamma."""
    cast = [np.array([1.08, 1.0, 0.84]), np.array([0.9, 0.98, 1.1]), np.ones(3),
            1 + 0.08 * rng.standard_normal(3)][int(rng.integers(4))]
    gain = np.maximum(cast * rng.uniform(0.72, 1.2), 0.2).astype(np.float32)
    theta, strength = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.4)
    vignette, gamma = rng.uniform(0, 0.35), rng.uniform(0.75, 1.35)
    u = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    px, py = u[None, :], u[:, None]
    k = (1 + px * np.float32(math.cos(theta) * strength) + py * np.float32(math.sin(theta) * strength)) \
        * (1 - np.float32(vignette * 2) * (px * px + py * py))
    x = np.clip(img * gain * k[..., None], 0, 1) * 1024
    curve = np.array([math.pow(i / 1024, gamma) for i in range(1025)], np.float32)
    j = np.minimum(x.astype(np.int32), 1023)
    return curve[j] + (curve[j + 1] - curve[j]) * (x - j)


def to_jpeg(img: np.ndarray, path: Path, quality: int) -> None:
    pixels = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=quality)
