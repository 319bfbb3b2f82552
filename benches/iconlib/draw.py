"""An icon's artwork rasterised with resvg, placed in the frame, and composed into a catalogue
shot (shop) or a posed, recoloured photograph on clutter (consumer)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import resvg_py
from PIL import Image

from .scene import LUMA, clutter, clutter_colour, gaussian, hue_colour, light, mix, occlude, with_luma

# Supersampling: masks are drawn at SS x size and box-averaged, so thin strokes survive. resvg
# antialiases by itself, so 2x is within 0.05 (mean 0.0003) of 8x at a seventh of the time.
SVG_SS = 2


def coverage(paths: str, size: int, transform: str, grow: str = "", ss: int = SVG_SS) -> Image.Image:
    """Alpha of `paths` rendered by resvg at ss x size px, transparent elsewhere."""
    n = size * ss
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{n}" height="{n}" viewBox="0 0 {n} {n}">'
           f'<g transform="{transform}" fill="#000"{grow}>{paths}</g></svg>')
    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True)
    return Image.open(io.BytesIO(bytes(png))).getchannel("A")


def raster(paths: str, size: int, transform: str, stroke: float = 0.0, ss: int = SVG_SS) -> np.ndarray:
    """Coverage in [0, 1] of `paths` (optionally grown by a round stroke, in icon units) at
    `size` px: rendered at ss x size, then box-averaged."""
    grow = f' stroke="#000" stroke-width="{stroke:.4f}" stroke-linejoin="round"' if stroke else ""
    alpha = coverage(paths, size, transform, grow, ss)
    return np.asarray(alpha.reduce(ss) if ss > 1 else alpha, np.float32) / 255.0


def dilated(paths: str, size: int, transform: str, radius: float) -> np.ndarray:
    """Coverage of `paths` grown by `radius` px: the supersampled raster's maximum over a disc.
    For artwork whose elements set their own stroke widths, which a stroke on the group cannot
    widen. Only maxima of shifted copies, so it is reproducible."""
    hi = np.asarray(coverage(paths, size, transform), np.float32) / 255.0
    r = radius * SVG_SS
    reach = math.ceil(r)
    padded = np.pad(hi, reach)
    out = hi.copy()
    n = hi.shape[0]
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if (dx or dy) and dx * dx + dy * dy <= r * r:
                np.maximum(out, padded[reach + dy:reach + dy + n, reach + dx:reach + dx + n], out=out)
    img = Image.fromarray((out * 255 + 0.5).astype(np.uint8), "L")
    return np.asarray(img.reduce(SVG_SS), np.float32) / 255.0


def bbox(paths: str, view: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """The ink's box, in icon units, within the square `view` = (x, y, side) rendered at
    128 px (so to within side / 128 units). Raises ValueError on an empty drawing."""
    x0, y0, side = view
    scale = 128 / side
    transform = f"scale({scale})" if x0 == y0 == 0 else f"scale({scale:.6f}) translate({-x0:.4f} {-y0:.4f})"
    ys, xs = np.nonzero(raster(paths, 128, transform, ss=1) > 0)
    if len(xs) == 0:
        raise ValueError("the drawing has no ink")
    return (x0 + xs.min() / scale, y0 + ys.min() / scale, x0 + (xs.max() + 1) / scale, y0 + (ys.max() + 1) / scale)


@dataclass(frozen=True)
class Drawing:
    """One icon's artwork as SVG elements in its own units. `faint` is a duotone's fill layer
    (drawn at 0.2 opacity or in a second colour); `view` = (x, y, side) is the square searched
    for ink; `stroked`: the elements set their own stroke widths (Iconify bodies), so the
    outline around the icon is a dilation rather than a wider stroke."""

    solid: str
    faint: str = ""
    view: tuple[float, float, float] = (0.0, 0.0, 256.0)
    stroked: bool = False

    def box(self) -> tuple[float, float, float, float]:
        return bbox(self.solid + self.faint, self.view)

    def halo(self, size: int, transform: str, px: float, k: float) -> np.ndarray:
        """Coverage of the ink grown by `px` px (k: px per icon unit)."""
        if self.stroked:
            return dilated(self.solid + self.faint, size, transform, px)
        return raster(self.solid + self.faint, size, transform, stroke=2 * px / k)


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


def shop_image(drawing: Drawing, rng, size: int) -> np.ndarray:
    """Catalogue shot: near-black ink, near-white vertical gradient, 80-88% fill, upright."""
    solid, faint = drawing.solid, drawing.faint
    grey = rng.uniform(0.9, 0.97)
    tint = grey + rng.uniform(-0.01, 0.01, 3)
    v = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None].repeat(size, 1)
    img = mix(np.broadcast_to((tint + 0.02).clip(0, 1).astype(np.float32), (size, size, 3)), tint - 0.02, v)
    ink = rng.uniform(0.06, 0.14) + rng.uniform(-0.015, 0.015, 3)
    box, degrees = drawing.box(), rng.uniform(-1.5, 1.5)
    k, _, _ = fit(box, size, rng.uniform(0.8, 0.88), degrees)
    cx, cy = size * (0.5 + rng.uniform(-0.01, 0.01, 2))
    transform = placement(box, k, degrees, cx, cy)
    img = mix(img, ink, 0.2 * raster(faint, size, transform)) if faint else img
    img = mix(img, ink, raster(solid, size, transform))
    return np.clip(img * rng.uniform(0.98, 1.02, 3).astype(np.float32), 0, 1)


def consumer_image(drawing: Drawing, rng, size: int) -> tuple[np.ndarray, int]:
    """Another artist's drawing, photographed: recoloured, posed on clutter, lit, blurred, noisy.
    Returns the image and its JPEG quality."""
    solid, faint = drawing.solid, drawing.faint
    box, degrees = drawing.box(), rng.uniform(-25, 25)
    k, ext_x, ext_y = fit(box, size, rng.uniform(0.55, 0.95), degrees)
    cx = size / 2 + rng.uniform(-0.9, 0.9) * (size - ext_x) / 2  # anywhere within the slack
    cy = size / 2 + rng.uniform(-0.9, 0.9) * (size - ext_y) / 2
    transform = placement(box, k, degrees, cx, cy)
    img = clutter(rng, size)
    ink_mask = raster(solid, size, transform)
    faint_mask = raster(faint, size, transform) if faint else None
    halo = drawing.halo(size, transform, rng.uniform(0.6, 1.4) * size / 128, k)
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
