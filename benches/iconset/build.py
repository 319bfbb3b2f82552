#!/usr/bin/env python3
"""Build a real consumer-to-shop benchmark from the Phosphor icon set, in the DeepFashion layout.

vitrine's own data generator (`vitrine synth`, src/data/synth.rs) draws garments from a handful of
parametric shapes. This script gives vitrine a second, independent benchmark made from real
artwork: the 1,512 icons of the npm package @phosphor-icons/core 2.1.1, each drawn by its
authors in six styles (thin, light, regular, bold, fill, duotone). An icon is an *item*:

* its **shop** image is the `--shop-style` (regular) drawing, dark ink on a clean studio
  background, centred and upright (like a catalogue photo);
* its **consumer** images are *other* styles of the same icon (another artist's drawing of the
  same thing), recoloured, posed and photographed on clutter with the degradations of vitrine's
  synthetic `consumer_view` (colour cast, light gradient, vignette, gamma, blur, noise,
  occlusion, JPEG). The ink is chosen to stand out from what lies under the icon and gets a
  thin outline of the opposite tone, so the task is hard but the icon is never lost.

Categories follow DeepFashion's two levels: BIG = the icon's figma_category (`WEATHER_NATURE`),
Small = the icon family, the name stem before the first `-` (`cloud-rain` -> `Cloud`), so that
the hardest negatives (other Arrow icons) share a category with the query. Single-icon families
are pooled in `Other_<Big>`. Items are split 60/20/20 into train/val/test *within* each small
category; an item never crosses splits.

Output (exactly what vitrine reads, plus provenance files it ignores):
    img/<BIG>/<Small>/id_XXXXXXXX/comsumer_NN.jpg   (sic, DeepFashion's spelling)
    img/<BIG>/<Small>/id_XXXXXXXX/shop_01.jpg
    Eval/list_eval_partition.txt                    one row per (consumer, shop) pair
    Anno/list_item_consumer2shop.txt                the item ids
    Anno/icons.tsv, README.txt, build.json          provenance (not read by vitrine)
No Anno/list_bbox_consumer2shop.txt is written: vitrine would crop to it and remove the clutter.

Determinism: every image draws from its own numpy generator seeded by (seed, stream, item,
image number), so `--jobs` never changes the output, and the same package, seed, options and
pinned versions (requirements.txt) give byte-identical files. Per-pixel work avoids numpy's
CPU-dispatched transcendental functions (gamma goes through a table built with `math.pow`).

The only network step: without `--package`, `npm pack @phosphor-icons/core@2.1.1` downloads the
tarball into `--cache`; its sha512 must match the integrity hard-coded below.

Usage: python benches/iconset/build.py --out data/icons [--package phosphor-icons-core-2.1.1.tgz]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

import numpy as np
import resvg_py
from PIL import Image, ImageDraw

SCRIPT_VERSION = "1.0.0"
PACKAGE, VERSION, ICON_COUNT = "@phosphor-icons/core", "2.1.1", 1512
TARBALL = "phosphor-icons-core-2.1.1.tgz"
# `npm view @phosphor-icons/core@2.1.1 dist.integrity`
INTEGRITY = "sha512-v4ARvrip4qBCImOE5rmPUylOEK4iiED9ZyKjcvzuezqMaiRASCHKcRIuvvxL/twvLpkfnEODCOJp5dM4eZilxQ=="
STYLES = ("thin", "light", "regular", "bold", "fill", "duotone")
SPLITS = ("train", "val", "test")
# Supersampling: masks are drawn at SS x size and box-averaged, so thin strokes survive. resvg
# antialiases by itself, so 2x is within 0.05 (mean 0.0003) of 8x at a seventh of the time;
# PIL's shapes are aliased and get 4x.
SVG_SS, SHAPE_SS = 2, 4
STREAM_SPLIT, STREAM_STYLE, STREAM_IMAGE = 1, 2, 3  # keep the random streams of each use apart
SKIN = [(0xF1, 0xC9, 0xA8), (0xE0, 0xAC, 0x84), (0xC6, 0x8E, 0x64),
        (0xA2, 0x6B, 0x45), (0x7A, 0x4E, 0x32), (0x56, 0x37, 0x25)]
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


# ---------------------------------------------------------------- the package

def npm_pack(cache: Path) -> Path:
    """Downloads the tarball with npm (the only network step), or reuses a verified copy."""
    path = cache / TARBALL
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"npm pack {PACKAGE}@{VERSION} -> {cache}", file=sys.stderr)
        try:
            subprocess.run(["npm", "pack", "--quiet", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache)],
                           check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"npm pack failed ({e}); download {TARBALL} elsewhere and pass --package")
    return path


def verify(path: Path) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        sys.exit(f"{path}: integrity {digest}\n  is not that of {PACKAGE}@{VERSION} ({INTEGRITY})")


def parse_js(text: str, enums: dict[str, dict[str, str]]):
    """Reads the JS object literal `[{name: "acorn", figma_category: a.WEATHER, ...}]` of
    dist/index.mjs as JSON: keys are bare identifiers, enum members (`a.WEATHER`) are looked up."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)?|-?\d+(?:\.\d+)?(?:e\d+)?|\S', text)
    out = []
    for i, tok in enumerate(tokens):
        if tok[0] in '"[]{},:-0123456789' or tok in ("true", "false", "null"):
            out.append(tok)
        elif i + 1 < len(tokens) and tokens[i + 1] == ":":
            out.append(json.dumps(tok))  # an object key
        elif "." in tok and tok.split(".")[0] in enums:
            var, member = tok.split(".")
            out.append(json.dumps(enums[var][member]))
        else:
            raise ValueError(f"unexpected token `{tok}` in dist/index.mjs")
    return json.loads(" ".join(out))


def read_package(path: Path) -> tuple[list[dict], dict[tuple[str, str], str]]:
    """The icons' metadata and every SVG, read straight from the tarball (nothing is unpacked)."""
    with tarfile.open(path, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()
                 if m.isfile() and (m.name.endswith(".svg") or m.name in
                                    ("package/package.json", "package/dist/index.mjs"))}
    meta = json.loads(files["package/package.json"])
    if (meta["name"], meta["version"]) != (PACKAGE, VERSION):
        sys.exit(f"{path} holds {meta['name']}@{meta['version']}; this script needs {PACKAGE}@{VERSION}")
    mjs = files["package/dist/index.mjs"]
    enums = {var: dict(re.findall(r'i\.(\w+) = "([^"]*)"', body))
             for body, var in re.findall(r"\(\(i\) => \((.*?), i\)\)\((\w+) \|\| \{\}\)", mjs)}
    icons = parse_js(mjs[mjs.index("const n = [") + len("const n = "):mjs.index("\n];") + 2], enums)
    svgs = {}
    for icon in icons:
        for style in STYLES:
            suffix = "" if style == "regular" else f"-{style}"
            svgs[icon["name"], style] = files[f"package/assets/{style}/{icon['name']}{suffix}.svg"]
    if len(icons) != ICON_COUNT or len({i["name"] for i in icons}) != ICON_COUNT:
        sys.exit(f"expected {ICON_COUNT} distinct icons in dist/index.mjs, found {len(icons)}")
    return icons, svgs


# ---------------------------------------------------------------- categories and splits

def rng_for(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *keys])))


def big_name(figma_category: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", figma_category.upper()).strip("_")


def catalogue(icons: list[dict]) -> list[dict]:
    """One row per icon in name order: item id, BIG and Small folder names."""
    icons = sorted(icons, key=lambda i: i["name"])
    families = defaultdict(list)
    for icon in icons:
        families[icon["name"].split("-")[0]].append(icon)
    rows = []
    for stem, members in families.items():
        # vitrine keys a small category by its folder path, so a family lives under one BIG:
        # the one most of its icons have (ties: alphabetical).
        votes = Counter(big_name(m["figma_category"]) for m in members)
        big = min(votes, key=lambda b: (-votes[b], b))
        for m in members:
            if len(members) == 1:  # a lone icon has no family: pool it so negatives stay meaningful
                b = big_name(m["figma_category"])
                rows.append({"name": m["name"], "big": b, "small": "Other_" + b.title()})
            else:
                rows.append({"name": m["name"], "big": big, "small": stem[0].upper() + stem[1:]})
    rows.sort(key=lambda r: r["name"])
    for i, r in enumerate(rows, 1):
        r["index"], r["id"] = i, f"id_{i:08d}"
    return rows


def split_counts(n: int, prefer_test: bool) -> list[int]:
    """Train/val/test counts of a category of n items: 60/20/20 by largest remainder. Val and
    test always tie for a leftover seat; `prefer_test` breaks the tie. With 3 or more items,
    val and test each get at least one."""
    quota = [0.6 * n, 0.2 * n, 0.2 * n]
    counts = [int(q + 1e-9) for q in quota]
    rank = {0: 0, 1: 2 if prefer_test else 1, 2: 1 if prefer_test else 2}
    order = sorted(range(3), key=lambda s: (-round(quota[s] - counts[s], 9), rank[s]))
    for s in order[: n - sum(counts)]:
        counts[s] += 1
    for s in (1, 2):
        if n >= 3 and counts[s] == 0:
            counts[0] -= 1
            counts[s] += 1
    return counts


def assign_splits(rows: list[dict], seed: int) -> None:
    """Stratified: each small category's items are shuffled and dealt into train/val/test."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["big"], r["small"]].append(r)
    prefer_test = False
    for c, key in enumerate(sorted(groups)):
        members = groups[key]
        order = rng_for(seed, STREAM_SPLIT, c).permutation(len(members))
        counts = split_counts(len(members), prefer_test)
        if counts[1] != counts[2]:  # a tie went one way: the next goes the other (a pair: 1+1)
            prefer_test = not prefer_test
        labels = [s for s, k in zip(SPLITS, counts) for _ in range(k)]
        for j, label in zip(order, labels):
            members[j]["split"] = label


# ---------------------------------------------------------------- drawing

def layers(svg: str) -> tuple[str, str]:
    """The solid paths and the duotone's faint (opacity 0.2) paths of one Phosphor SVG."""
    paths = re.findall(r"<path [^>]*/>", svg)
    faint = [p.replace(' opacity="0.2"', "") for p in paths if 'opacity="0.2"' in p]
    return "".join(p for p in paths if "opacity=" not in p), "".join(faint)


def raster(paths: str, size: int, transform: str, stroke: float = 0.0, ss: int = SVG_SS) -> np.ndarray:
    """Coverage in [0, 1] of `paths` (optionally grown by a round stroke, in icon units) at
    `size` px: rendered by resvg at ss x size with transparency, then box-averaged."""
    grow = f' stroke="#000" stroke-width="{stroke:.4f}" stroke-linejoin="round"' if stroke else ""
    n = size * ss
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{n}" height="{n}" viewBox="0 0 {n} {n}">'
           f'<g transform="{transform}" fill="#000"{grow}>{paths}</g></svg>')
    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True)
    alpha = Image.open(io.BytesIO(bytes(png))).getchannel("A")
    return np.asarray(alpha.reduce(ss) if ss > 1 else alpha, np.float32) / 255.0


def bbox(paths: str) -> tuple[float, float, float, float]:
    """The ink's box in the 256-unit icon space, to within 2 units (rendered at 128 px)."""
    ys, xs = np.nonzero(raster(paths, 128, "scale(0.5)", ss=1) > 0)
    return 2.0 * xs.min(), 2.0 * ys.min(), 2.0 * (xs.max() + 1), 2.0 * (ys.max() + 1)


def fit(box, size: int, fill: float, degrees: float) -> tuple[float, float, float]:
    """Scale (px per icon unit) that makes the box's longest side `fill` of the image, shrunk if
    the rotated box would not fit; and the rotated box's width and height in px."""
    w, h = box[2] - box[0], box[3] - box[1]
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    k = fill * size / max(w, h)
    ext_x, ext_y = (w * c + h * s) * k, (w * s + h * c) * k
    shrink = min(1.0, 0.98 * size / max(ext_x, ext_y))
    return k * shrink, ext_x * shrink, ext_y * shrink


def placement(box, k: float, degrees: float, cx: float, cy: float) -> str:
    """SVG transform putting the box's centre at (cx, cy) px, rotated and scaled, at SVG_SS x size."""
    return (f"translate({cx * SVG_SS:.4f} {cy * SVG_SS:.4f}) rotate({degrees:.4f}) scale({k * SVG_SS:.6f}) "
            f"translate({-(box[0] + box[2]) / 2:.4f} {-(box[1] + box[3]) / 2:.4f})")


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


def shop_image(svg: str, rng, size: int) -> np.ndarray:
    """Catalogue shot: near-black ink, near-white vertical gradient, 80-88% fill, upright."""
    solid, faint = layers(svg)
    grey = rng.uniform(0.9, 0.97)
    tint = grey + rng.uniform(-0.01, 0.01, 3)
    v = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None].repeat(size, 1)
    img = mix(np.broadcast_to((tint + 0.02).clip(0, 1).astype(np.float32), (size, size, 3)), tint - 0.02, v)
    ink = rng.uniform(0.06, 0.14) + rng.uniform(-0.015, 0.015, 3)
    box, degrees = bbox(solid + faint), rng.uniform(-1.5, 1.5)
    k, _, _ = fit(box, size, rng.uniform(0.8, 0.88), degrees)
    cx, cy = size * (0.5 + rng.uniform(-0.01, 0.01, 2))
    transform = placement(box, k, degrees, cx, cy)
    img = mix(img, ink, 0.2 * raster(faint, size, transform)) if faint else img
    img = mix(img, ink, raster(solid, size, transform))
    return np.clip(img * rng.uniform(0.98, 1.02, 3).astype(np.float32), 0, 1)


def consumer_image(svg: str, rng, size: int) -> tuple[np.ndarray, int]:
    """Another artist's drawing, photographed: recoloured, posed on clutter, lit, blurred, noisy."""
    solid, faint = layers(svg)
    box, degrees = bbox(solid + faint), rng.uniform(-25, 25)
    k, ext_x, ext_y = fit(box, size, rng.uniform(0.55, 0.95), degrees)
    cx = size / 2 + rng.uniform(-0.9, 0.9) * (size - ext_x) / 2  # anywhere within the slack
    cy = size / 2 + rng.uniform(-0.9, 0.9) * (size - ext_y) / 2
    transform = placement(box, k, degrees, cx, cy)
    img = clutter(rng, size)
    ink_mask = raster(solid, size, transform)
    faint_mask = raster(faint, size, transform) if faint else None
    halo_px = rng.uniform(0.6, 1.4) * size / 128
    halo = raster(solid + faint, size, transform, stroke=2 * halo_px / k)
    # Ink that stands out from everything under the icon, clutter shapes included: darker than
    # its darker parts or lighter than its lighter parts, whichever leaves more room.
    bg_luma = img[..., 0] * LUMA[0] + img[..., 1] * LUMA[1] + img[..., 2] * LUMA[2]  # not img @ LUMA
    under = np.sort(bg_luma[halo > 0.5] if (halo > 0.5).any() else bg_luma.ravel())
    lo, mid, hi = (float(under[len(under) * q // 10]) for q in (1, 5, 9))
    dark = lo - 0.03 >= 0.95 - hi
    delta = rng.uniform(0.3, 0.55)
    ink_l = max(0.03, lo - delta) if dark else min(0.95, hi + delta)
    ink = with_luma(hue_colour(rng), ink_l)
    # A thin outline in the opposite tone (a print's edge, a sticker's margin), stronger where
    # the background is about as light as the ink, so no stroke is lost in the clutter.
    halo_colour = with_luma(clutter_colour(rng), rng.uniform(0.8, 0.97) if dark else rng.uniform(0.02, 0.15))
    close = np.clip(1 - np.abs(bg_luma - np.float32(ink_l)) / np.float32(0.35), 0, 1)
    base = np.float32(rng.uniform(0.25, 0.6))
    img = mix(img, halo_colour, halo * (base + (1 - base) * close))
    if faint_mask is not None:  # duotone: its fill layer in the ink at 0.2, or a second colour
        if rng.uniform() < 0.5:
            img = mix(img, ink, 0.2 * faint_mask)
        else:
            img = mix(img, with_luma(hue_colour(rng), (ink_l + mid) / 2), rng.uniform(0.35, 0.7) * faint_mask)
    img = mix(img, ink, ink_mask)
    if rng.uniform() < 0.3:
        img = occlude(img, np.maximum(ink_mask, faint_mask if faint_mask is not None else 0), rng, size)
    img = light(img, rng, size)
    sigma = rng.uniform(0, 1.5) * size / 128
    if sigma > 0.05:
        img = gaussian(img, sigma)
    img = img + np.float32(rng.uniform(0.005, 0.035)) * rng.standard_normal(img.shape, np.float32)
    return img, int(rng.integers(45, 81))


# ---------------------------------------------------------------- the set

def render_item(task: dict) -> None:
    """Writes one item's shop and consumer images (a worker's unit of work)."""
    folder = Path(task["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    seed, index, size = task["seed"], task["index"], task["size"]
    to_jpeg(shop_image(task["shop_svg"], rng_for(seed, STREAM_IMAGE, index, 0), size), folder / "shop_01.jpg", 92)
    for n, svg in enumerate(task["consumer_svgs"], 1):
        img, quality = consumer_image(svg, rng_for(seed, STREAM_IMAGE, index, n), size)
        to_jpeg(img, folder / f"comsumer_{n:02d}.jpg", quality)


def write_lists(root: Path, rows: list[dict], per_item: int, provenance: dict) -> None:
    (root / "Eval").mkdir()
    (root / "Anno").mkdir()
    pairs = []
    for r in rows:
        base = f"img/{r['big']}/{r['small']}/{r['id']}"
        pairs += [f"{base}/comsumer_{n:02d}.jpg {base}/shop_01.jpg {r['id']} {r['split']}"
                  for n in range(1, per_item + 1)]
    header = "image_pair_name_1 image_pair_name_2 item_id evaluation_status"
    (root / "Eval/list_eval_partition.txt").write_text("\n".join([str(len(pairs)), header, *pairs]) + "\n")
    (root / "Anno/list_item_consumer2shop.txt").write_text(
        "\n".join([str(len(rows)), "item_id", *(r["id"] for r in rows)]) + "\n")
    tsv = ["item_id\ticon_name\tbig\tsmall\tsplit\tconsumer_styles"]
    tsv += [f"{r['id']}\t{r['name']}\t{r['big']}\t{r['small']}\t{r['split']}\t{','.join(r['styles'])}" for r in rows]
    (root / "Anno/icons.tsv").write_text("\n".join(tsv) + "\n")
    (root / "build.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (root / "README.txt").write_text(
        f"Consumer-to-shop icon benchmark, DeepFashion layout, built by vitrine's "
        f"benches/iconset/build.py {SCRIPT_VERSION}\nfrom {PACKAGE}@{VERSION} (MIT licence, "
        f"https://phosphoricons.com), integrity {INTEGRITY}.\nShop image: the {provenance['shop_style']} "
        f"style; consumer images: {per_item} other styles, recoloured and photographed on clutter.\n"
        f"Options and versions: build.json. Per-item icon, category, split and styles: Anno/icons.tsv.\n")


def contact_sheet(root: Path, rows: list[dict], per_item: int, path: Path, count: int = 12) -> None:
    """Shop | consumers | the consumers at 64 px (blown up), for `count` items spread over the set."""
    picks = [rows[round(i * (len(rows) - 1) / max(count - 1, 1))] for i in range(count)]
    tile = Image.open(root / f"img/{picks[0]['big']}/{picks[0]['small']}/{picks[0]['id']}/shop_01.jpg").size[0]
    sheet = Image.new("RGB", ((1 + 2 * per_item) * (tile + 4), count * (tile + 4)), "white")
    for y, r in enumerate(picks):
        folder = root / f"img/{r['big']}/{r['small']}/{r['id']}"
        files = ["shop_01.jpg"] + [f"comsumer_{n:02d}.jpg" for n in range(1, per_item + 1)]
        images = [Image.open(folder / f) for f in files]
        images += [im.resize((64, 64), Image.BILINEAR).resize((tile, tile), Image.NEAREST) for im in images[1:]]
        for x, im in enumerate(images):
            sheet.paste(im, (x * (tile + 4), y * (tile + 4)))
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See benches/iconset/README.md.")
    ap.add_argument("--out", type=Path, required=True, help="dataset root to create (e.g. data/icons)")
    ap.add_argument("--package", type=Path, help=f"{TARBALL} (default: `npm pack` it into --cache)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "vitrine-iconset", help="where `npm pack` puts the tarball (default: %(default)s)")
    ap.add_argument("--size", type=int, default=128, help="image side in px (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="seed of splits, styles and images (default: %(default)s)")
    ap.add_argument("--consumer-per-item", type=int, default=3, help="consumer images per item, each "
                    "in a different style (1-5, default: %(default)s)")
    ap.add_argument("--shop-style", choices=STYLES, default="regular", help="style of the shop image")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes; output does not depend on it")
    ap.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    ap.add_argument("--contact", type=Path, help="also save a contact sheet PNG of 12 items")
    args = ap.parse_args()
    if not 1 <= args.consumer_per_item <= len(STYLES) - 1:
        ap.error("--consumer-per-item must be between 1 and 5")
    if args.size < 16 or args.seed < 0 or args.jobs < 1:
        ap.error("--size must be at least 16, --seed non-negative and --jobs at least 1")
    start = time.monotonic()
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()) and not args.force:
        sys.exit(f"{out} exists and is not empty (use --force to replace it)")
    package = args.package or npm_pack(args.cache)
    verify(package)
    icons, svgs = read_package(package)
    rows = catalogue(icons)
    assign_splits(rows, args.seed)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by an interrupted build; only ever remove one of ours
        if not (tmp / ".building").exists():
            sys.exit(f"{tmp} exists and was not made by this script; remove it")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / ".building").touch()

    others = [s for s in STYLES if s != args.shop_style]
    tasks = []
    for r in rows:
        pick = rng_for(args.seed, STREAM_STYLE, r["index"]).permutation(len(others))[: args.consumer_per_item]
        r["styles"] = [others[i] for i in pick]
        tasks.append({"dir": str(tmp / "img" / r["big"] / r["small"] / r["id"]), "seed": args.seed,
                      "index": r["index"], "size": args.size, "shop_svg": svgs[r["name"], args.shop_style],
                      "consumer_svgs": [svgs[r["name"], s] for s in r["styles"]]})

    # Items are independent (own generators, own folders), so workers may finish in any order.
    with multiprocessing.Pool(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap_unordered(render_item, tasks, chunksize=8) if pool else map(render_item, tasks)
        for done, _ in enumerate(results, 1):
            if done % 100 == 0 or done == len(tasks):
                print(f"\r{done}/{len(tasks)} items, {time.monotonic() - start:.0f} s",
                      end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    versions = {p: metadata.version(p) for p in ("numpy", "pillow", "resvg-py")}
    provenance = {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "script_version": SCRIPT_VERSION,
                  "seed": args.seed, "size": args.size, "consumer_per_item": args.consumer_per_item,
                  "shop_style": args.shop_style, "supersampling": [SVG_SS, SHAPE_SS], "python": sys.version.split()[0].rsplit(".", 1)[0],
                  "libraries": versions, "items": len(rows)}
    write_lists(tmp, rows, args.consumer_per_item, provenance)
    (tmp / ".building").unlink()
    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)

    k = args.consumer_per_item
    print(f"{out}: {len(rows)} items, {len({r['big'] for r in rows})} big and "
          f"{len({(r['big'], r['small']) for r in rows})} small categories")
    print(f"{'split':<6} {'pairs':>6} {'items':>6} {'consumer':>9} {'shop':>6}")
    for split in (*SPLITS, "total"):
        n = sum(1 for r in rows if split in (r["split"], "total"))
        print(f"{split:<6} {n * k:>6} {n:>6} {n * k:>9} {n:>6}")
    if args.contact:
        contact_sheet(out, rows, k, args.contact)
        print(f"contact sheet: {args.contact}")
    print(f"built in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
