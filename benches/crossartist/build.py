#!/usr/bin/env python3
"""Build a cross-artist consumer-to-shop benchmark from 12 Iconify icon libraries, in the
DeepFashion layout.

benches/iconset matches one artist's drawings of an icon against that same artist's other
styles. Here an *item* is an icon **concept** (`bell`, `arrow-up`, `shopping-cart`) drawn by
several independent icon libraries, packaged for npm as `@iconify-json/*`:

* its **shop** image is the `--shop` library's drawing (tabler), dark ink on a clean studio
  background, centred and upright, as in benches/iconset;
* its **consumer** images are 3 *other* libraries' drawings of the same concept (really another
  artist's hand), recoloured, posed and photographed on clutter with benches/iconset's
  degradations (benches/iconlib).

Concepts are matched by name: a library's icon names lose their style suffix (`-outline`,
`-fill`, `-line`, `-linear`, `-solid`, ...; each library's own list, below), one drawing per
library and concept is kept (the outline / regular one first), aliases the libraries declare
count as names, a small table of synonyms (SYNONYMS) joins names that mean the same drawing
(`house` -> `home`, `close` -> `x`), and a few homonyms (`apple`: fruit or logo) are left out.
An item needs the shop library (with `--shop A,B,...`: one of them, the first
that draws it giving the shop image) and at least 3 others. Categories: Small = the family, the
first word of the name (`arrow-up` -> `Arrow`), families of one pooled per BIG; BIG = the
category tabler's own catalogue gives the concept's tabler drawing (`ARROWS`, `WEATHER`, ...;
from @tabler/icons 3.48.0), voted per family. Items are split 60/20/20 within each small
category (as benches/iconset).

Determinism: the packages are pinned by version and sha512; every image draws from its own
generator, so `--jobs` never changes the output and the same seed gives byte-identical files.

The only network step: without `--packages`, `npm pack` downloads each of the 13 pinned
tarballs once into `--cache`.

Usage: python benches/crossartist/build.py --out data/xartist [--packages DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benches/, for iconlib
from iconlib import dataset  # noqa: E402
from iconlib.draw import SVG_SS, Drawing, shop_image  # noqa: E402
from iconlib.package import Package, npm_pack, verify  # noqa: E402
from iconlib.scene import SHAPE_SS  # noqa: E402

SCRIPT_VERSION = "1.0.0"  # written into build.json: bump it when the output changes
MIN_CONSUMERS = 3  # other libraries an item needs besides the shop's


@dataclass(frozen=True)
class Library:
    package: Package
    licence: str
    # Style suffixes, most preferred first; "" is the bare name. A concept keeps the first
    # style the library draws it in: the outline / regular drawing before the filled ones.
    styles: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return self.package.name.split("/")[1]


def _lib(prefix: str, version: str, integrity: str, licence: str, styles: tuple[str, ...]) -> Library:
    return Library(Package(f"@iconify-json/{prefix}", version, integrity), licence, styles)


# `npm view @iconify-json/PREFIX@VERSION dist.integrity`; licences from each package's info.json.
LIBRARIES = (
    _lib("tabler", "1.2.41", "sha512-GHg+H/cnr0anaCoV383JONiOMxZQOdojWYNLgL3x0fRE07YW7c+AHiYmIhXet//oq26T830qitdP7l43ojiCXw==",
         "MIT", ("", "filled")),
    _lib("lucide", "1.2.137", "sha512-uKz1+tFbv1RFX/mJQNksdnyKJijNfRGSNnxfiyKtr+dLNfA3ERph+IgpXClKGOlV/5GsZwLv2jgJXQ/bjF/JAg==",
         "ISC", ("",)),
    _lib("mdi", "1.2.3", "sha512-O3cLwbDOK7NNDf2ihaQOH5F9JglnulNDFV7WprU2dSoZu3h3cWH//h74uQAB87brHmvFVxIOkuBX2sZSzYhScg==",
         "Apache-2.0", ("outline", "")),
    _lib("bi", "1.2.7", "sha512-IPz8WNxmLkH1I9msl+0Q4OnmjjvP4uU0Z61a4i4sqonB6vKSbMGUWuGn8/YuuszlReVj8rf+3gNv5JU8Xoljyg==",
         "MIT", ("", "fill")),
    _lib("ri", "1.2.10", "sha512-WWMhoncVVM+Xmu9T5fgu2lhYRrKTEWhKk3Com0KiM111EeEsRLiASjpsFKnC/SrB6covhUp95r2mH8tGxhgd5Q==",
         "Apache-2.0", ("line", "fill")),
    _lib("iconoir", "1.2.11", "sha512-clBrCsZPkmdksYOkufVp7aoAU1j1hFQPrLUooWWmoYIMvKskUHQ+IDnwV7agTR+tGYHbud7OP2SRfYEpnqFDNw==",
         "MIT", ("", "solid")),
    _lib("ion", "1.2.7", "sha512-ZJNG5kLCbTPr68mdP0jx6Q3lB9AMEQKO2+VvIjuJ2llGFICBLD+cvESn/qGDRIqSfk2D3PrFMf/Qg8WKIUV7cg==",
         "MIT", ("outline", "", "sharp")),
    _lib("mingcute", "1.2.8", "sha512-J8VXpRwTpx5yzOzyhx3T4IXnfXIKTWFl3rZ9okcW4c+NMMuwkLvdmM4rkjB83tnYIhg5+kkeMpmw8tvSnxd4rQ==",
         "Apache-2.0", ("line", "fill")),
    _lib("solar", "1.2.13", "sha512-/ZWb6xRib6pzxD/qTkKWYhuzSU2yu0bY+EN0spgtz1NM3d5f4eYueQZpL3PfCdsg5uVfm4Ldtt3cAyQL+YI8/Q==",
         "CC-BY-4.0", ("linear", "outline", "broken", "line-duotone", "bold", "bold-duotone")),
    _lib("uil", "1.2.3", "sha512-if91+UBhDQc6glPsIaXecGIcXnbQZfEO4Gdv89TV2xQ+V5e9GWbY5rNl2fsKZd8COsRQ5lRQAKimVQVL0CZZVg==",
         "Apache-2.0", ("",)),
    _lib("heroicons", "1.2.3", "sha512-n+vmCEgTesRsOpp5AB5ILB6srsgsYK+bieoQBNlafvoEhjVXLq8nIGN4B0v/s4DUfa0dOrjwE/cKJgIKdJXOEg==",
         "MIT", ("", "solid", "20-solid", "16-solid")),
    _lib("akar-icons", "1.2.7", "sha512-cw44dCnZgGhm6Tywxm0WALAnDB9AyGkDk7kiLMo2B/Ayt7duZu/uyrsqb55weWUN8Ge2sQAOl8MRtT6bFcLzPg==",
         "MIT", ("", "fill")),
)
BY_PREFIX = {lib.prefix: lib for lib in LIBRARIES}
# BIG categories: tabler's own catalogue (tabler.io/icons: Arrows, Devices, Weather, ...), in the
# @tabler/icons release that @iconify-json/tabler 1.2.41 packages; only its icons.json is read.
CATEGORIES = Package("@tabler/icons", "3.48.0",
                     "sha512-lQk06gVHNVBnJp0UOgtth54mcZBJM7rdYKsAxKOProj1bbSAx+/xiuOWfHlyvgdL3M+Y+I0HINrjHa3ygp8eXQ==")

# Names that mean the same drawing, to the name most libraries use: mostly pairs that a library
# itself declares one icon (an alias of the other in lucide, mdi or iconoir), plus a few
# plain ones (xmark, photo); each checked to look alike across the libraries on a sheet of
# every item's drawings. Not, for example, earth/globe (a continent map against a meridian
# grid) or edit/pencil (edit is often a pencil on a page). It adds 114 drawings and 4 items
# (529 items with 3,321 drawings, against 525 with 3,207).
SYNONYMS = {
    "house": "home",
    "person": "user",
    "add": "plus",
    "close": "x", "xmark": "x", "x-mark": "x",
    "circle-plus": "plus-circle", "add-circle": "plus-circle",
    "circle-minus": "minus-circle",
    "circle-x": "x-circle", "close-circle": "x-circle",
    "circle-check": "check-circle",
    "email": "mail", "envelope": "mail",
    "cog": "settings", "gear": "settings",
    "thumbs-up": "thumb-up", "thumbs-down": "thumb-down",
    "flame": "fire",
    "mic": "microphone",
    "photo": "image", "picture": "image",
    "shopping-cart": "cart",
    "shopping-basket": "basket",
    "plane": "airplane",
    "bulb": "lightbulb",
    "funnel": "filter",
    "stopwatch": "timer",
    "sparkles": "stars",
    "unlock": "lock-open",
    "t-shirt": "shirt",
}

# Names that mean different things in different libraries (a fruit and a brand's logo, a
# radio set and a radio button): left out. And single drawings that are something else under
# the concept's name (the X logo as `x`, a hex bolt as `bolt`, Box's logo as `box`). Both
# found on a sheet of every item's drawings.
HOMONYMS = {"apple", "line", "radio", "steam", "switch"}
MISNAMED = {"akar-icons": {"x-fill", "cross"}, "iconoir": {"x"}, "lucide": {"bolt"}, "mdi": {"box"}}


# ---------------------------------------------------------------- the packages

@dataclass(frozen=True)
class Icon:
    body: str
    left: float
    top: float
    width: float
    height: float

    def drawing(self) -> Drawing:
        """The body in an Iconify viewBox: its elements paint with `currentColor` and set their
        own strokes, so the group's colour is fixed and the halo dilates."""
        side = max(self.width, self.height) * 1.25  # room for ink that leaves the viewBox
        view = (self.left + self.width / 2 - side / 2, self.top + self.height / 2 - side / 2, side)
        return Drawing(f'<g color="#000">{self.body}</g>', view=view, stroked=True)


def read_json(path: Path, package: Package, name: str):
    """`package/<name>` of a tarball, once its package.json says it is `package`."""
    with tarfile.open(path, "r:gz") as tar:
        def load(member: str):
            try:
                return json.load(tar.extractfile(f"package/{member}"))
            except (KeyError, ValueError) as e:
                sys.exit(f"{path}: package/{member}: {e}")
        meta = load("package.json")
        if (meta.get("name"), meta.get("version")) != (package.name, package.version):
            sys.exit(f"{path} holds {meta.get('name')}@{meta.get('version')}; this script needs {package.spec}")
        return load(name)


def read_library(path: Path, lib: Library) -> tuple[dict[str, Icon], dict[str, str]]:
    """A library's visible icons and its aliases (name -> icon name)."""
    data = read_json(path, lib.package, "icons.json")
    # Iconify's defaults: 16 x 16 at (0, 0) unless the set or the icon says otherwise.
    w, h = data.get("width", 16), data.get("height", 16)
    icons = {name: Icon(v["body"], v.get("left", 0), v.get("top", 0), v.get("width", w), v.get("height", h))
             for name, v in data["icons"].items()
             if not v.get("hidden") and not {"rotate", "hFlip", "vFlip"} & v.keys()}
    aliases = {}
    for name, alias in data.get("aliases", {}).items():
        parent, hops = alias, 0
        # An alias may name another alias; one that transforms its parent is another drawing.
        while parent.keys() == {"parent"} and parent["parent"] in data.get("aliases", {}) and hops < 8:
            parent, hops = data["aliases"][parent["parent"]], hops + 1
        if parent.keys() == {"parent"} and parent["parent"] in icons:
            aliases[name] = parent["parent"]
    return icons, aliases


def read_categories(path: Path) -> dict[str, str]:
    """Tabler icon name -> its category's BIG folder name (`Version control` -> VERSION_CONTROL)."""
    return {name: dataset.big_folder(v["category"]) for name, v in read_json(path, CATEGORIES, "icons.json").items()
            if v.get("category")}


def concept_of(name: str, lib: Library) -> tuple[str, int]:
    """`name` without its style suffix, and the style's rank in the library's preference."""
    for suffix in sorted((s for s in lib.styles if s), key=len, reverse=True):
        if name.endswith("-" + suffix):
            return name[: -len(suffix) - 1], lib.styles.index(suffix)
    return name, lib.styles.index("") if "" in lib.styles else len(lib.styles)


def choose_drawings(icons: dict[str, Icon], aliases: dict[str, str], lib: Library) -> dict[str, tuple]:
    """concept -> (preference key, icon name) for one library: the first of its names, ranked
    own name before a synonym, a real icon before an alias, then by style and name."""
    best = {}
    for name, icon, is_alias in [(n, n, 0) for n in icons] + [(n, p, 1) for n, p in aliases.items()]:
        if name in MISNAMED.get(lib.prefix, ()):
            continue
        concept, style = concept_of(name, lib)
        canonical = SYNONYMS.get(concept, concept)
        key = (int(canonical != concept), is_alias, style, name)
        if canonical not in best or key < best[canonical][0]:
            best[canonical] = (key, icon)
    return best


def concepts(packages: dict[str, tuple], shops: list[str], has_ink) -> dict[str, dict[str, str]]:
    """concept -> {library prefix: icon name} for every concept one of the shop libraries and at
    least MIN_CONSUMERS others draw. A drawing without ink (`has_ink(prefix, icon)` false) does not
    count. Where two such concepts got the same icon of a library (through aliases), the
    better-ranked one keeps it and the other loses that library."""
    chosen = {p: choose_drawings(icons, aliases, BY_PREFIX[p]) for p, (icons, aliases) in packages.items()}
    drawn = defaultdict(dict)
    for p, best in chosen.items():
        for concept, (key, icon) in best.items():
            drawn[concept][p] = (key, icon)
    while True:
        items = {c: libs for c, libs in drawn.items()
                 if any(s in libs for s in shops) and len(libs) > MIN_CONSUMERS and c not in HOMONYMS}
        lost = [(c, p) for c, libs in items.items() for p, (_, icon) in libs.items() if not has_ink(p, icon)]
        for p in packages:
            claims = defaultdict(list)  # icon -> [(key, concept)]
            for c, libs in items.items():
                if p in libs:
                    claims[libs[p][1]].append((libs[p][0], c))
            lost += [(c, p) for claim in claims.values() for _, c in sorted(claim)[1:]]
        if not lost:
            return {c: {p: icon for p, (_, icon) in sorted(libs.items())} for c, libs in sorted(items.items())}
        for c, p in lost:
            drawn[c].pop(p, None)


def big_of(libraries: dict[str, str], categories: dict[str, str]) -> str | None:
    """The concept's BIG: the category of its tabler drawing (a filled one: of its outline)."""
    icon = libraries.get("tabler")
    return categories.get(icon, categories.get(icon.removesuffix("-filled"))) if icon else None


# ---------------------------------------------------------------- the set

def fetch_packages(args) -> dict[str, Path]:
    """package name -> its tarball: from --packages (offline) or `npm pack` into --cache; verified."""
    paths = {}
    for package in [lib.package for lib in LIBRARIES] + [CATEGORIES]:
        if args.packages:
            path = args.packages / package.tarball
            if not path.exists():
                sys.exit(f"{path}: not found (fetch it with `npm pack {package.spec}`)")
        else:
            path = npm_pack(package, args.cache, "--packages DIR")
        verify(path, package)
        paths[package.name] = path
    return paths


def library_sheet(root: Path, rows: list[dict], packages: dict, args, path: Path) -> None:
    """One row per library: 4 of its drawings as clean studio shots at --size, the same at
    64 px (blown up), and 3 consumer photos of the set that use it (the shop library: 3 shop
    images). To check that every library renders: strokes visible, no boxes, nothing empty."""
    def tile(img: np.ndarray) -> Image.Image:
        im = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        return im.resize((args.size, args.size), Image.NEAREST)

    label_w, step = 110, args.size + 4
    sheet = Image.new("RGB", (label_w + 11 * step, len(LIBRARIES) * step), "white")
    pen = ImageDraw.Draw(sheet)
    for y, lib in enumerate(LIBRARIES):
        p = lib.prefix
        using = [r for r in rows if p == r["shop"] or p in r["consumers"]]
        picks = [using[round(i * (len(using) - 1) / 3)] for i in range(4)]
        icons = packages[p][0]
        tiles = []
        for size in (args.size, 64):
            for n, r in enumerate(picks):
                rng = dataset.rng_for(args.seed, 99, y, n)
                tiles.append(tile(shop_image(icons[r["libraries"][p]].drawing(), rng, size)))
        for r in picks[:3]:
            name = "shop_01.jpg" if p == r["shop"] else f"comsumer_{r['consumers'].index(p) + 1:02d}.jpg"
            tiles.append(Image.open(dataset.item_folder(root, r) / name))
        pen.text((4, y * step + 4), f"{p}\n{lib.package.version}\n{lib.licence}", fill="black")
        for x, im in enumerate(tiles):
            sheet.paste(im, (label_w + x * step, y * step))
    sheet.save(path)


def provenance_files(rows: list[dict], args, provenance: dict) -> dict[str, str]:
    tsv = ["item_id\tconcept\tbig\tsmall\tsplit\tshop\tconsumer_libraries\tdrawings"]
    tsv += [f"{r['id']}\t{r['name']}\t{r['big']}\t{r['small']}\t{r['split']}\t{r['shop']}:{r['libraries'][r['shop']]}"
            f"\t{','.join(r['consumers'])}\t{','.join(f'{p}:{i}' for p, i in r['libraries'].items())}" for r in rows]
    readme = {"title": "Cross-artist consumer-to-shop icon benchmark",
              "script": f"benches/crossartist/build.py {SCRIPT_VERSION}",
              "source": f"{len(LIBRARIES)} Iconify icon libraries (versions, licences and sha512 in build.json)",
              "shop": f"the {args.shop} drawing",
              "consumers": f"{args.consumer_per_item} other libraries' drawings of the concept",
              "columns": "concept, category, split and drawings"}
    return dataset.provenance_files(tsv, provenance, readme)


def main() -> None:
    ap = dataset.parser(__doc__, "benches/crossartist/README.md", "data/xartist")
    ap.add_argument("--packages", type=Path, metavar="DIR", help="folder holding the 13 pinned tarballs (offline; "
                    "default: `npm pack` them into --cache)")
    ap.add_argument("--shop", default="tabler", metavar="LIB[,LIB...]", help="library of the shop image; with "
                    "several, an item's shop is the first of them that draws it (default: %(default)s)")
    dataset.add_common_arguments(ap, "vitrine-crossartist", MIN_CONSUMERS, "each by a different library",
                                 "per library, 4 drawings at --size and at 64 px, 3 consumer photos")
    args = ap.parse_args()
    dataset.check_common_arguments(ap, args, MIN_CONSUMERS)
    start = time.monotonic()
    out = args.out.resolve()
    shops = args.shop.split(",")
    if unknown := [s for s in shops if s not in BY_PREFIX]:
        ap.error(f"--shop {args.shop}: no library {', '.join(unknown)} (libraries: {', '.join(sorted(BY_PREFIX))})")
    if len(set(shops)) != len(shops):
        ap.error(f"--shop {args.shop}: names a library twice")
    dataset.check_out(out, args.force)
    tarballs = fetch_packages(args)
    packages = {lib.prefix: read_library(tarballs[lib.package.name], lib) for lib in LIBRARIES}
    categories = read_categories(tarballs[CATEGORIES.name])

    ink = {}

    def has_ink(p: str, icon: str) -> bool:
        if (p, icon) not in ink:
            try:
                packages[p][0][icon].drawing().box()
                ink[p, icon] = True
            except ValueError:
                ink[p, icon] = False
        return ink[p, icon]

    items = concepts(packages, shops, has_ink)
    rows = dataset.catalogue([(c, big_of(libs, categories)) for c, libs in items.items()])
    dataset.assign_splits(rows, args.seed)
    tmp = dataset.staging(out)

    tasks = []
    for r in rows:
        r["libraries"] = items[r["name"]]
        r["shop"] = next(s for s in shops if s in r["libraries"])
        others = [p for p in r["libraries"] if p != r["shop"]]
        r["consumers"] = dataset.choose(args.seed, r["index"], others, args.consumer_per_item)
        icon = {p: packages[p][0][name] for p, name in r["libraries"].items()}
        tasks.append({"dir": str(dataset.item_folder(tmp, r)), "seed": args.seed, "index": r["index"],
                      "size": args.size, "shop": icon[r["shop"]].drawing(),
                      "consumers": [icon[p].drawing() for p in r["consumers"]]})
    dataset.render_all(tasks, args.jobs, start)

    versions = {p: metadata.version(p) for p in ("numpy", "pillow", "resvg-py")}
    provenance = {"packages": {lib.package.name: {"version": lib.package.version, "integrity": lib.package.integrity,
                                                  "licence": lib.licence} for lib in LIBRARIES},
                  "script_version": SCRIPT_VERSION, "seed": args.seed, "size": args.size,
                  "consumer_per_item": args.consumer_per_item, "shop": args.shop,
                  "categories": {"package": CATEGORIES.name, "version": CATEGORIES.version,
                                 "integrity": CATEGORIES.integrity},
                  "synonyms": SYNONYMS, "homonyms": sorted(HOMONYMS),
                  "misnamed": {p: sorted(names) for p, names in MISNAMED.items()},
                  "supersampling": [SVG_SS, SHAPE_SS], "python": sys.version.split()[0].rsplit(".", 1)[0],
                  "python_libraries": versions, "items": len(rows)}
    dataset.write_lists(tmp, rows, args.consumer_per_item, provenance_files(rows, args, provenance))
    dataset.publish(tmp, out)

    dataset.print_summary(out, rows, args.consumer_per_item)
    if args.contact:
        library_sheet(out, rows, packages, args, args.contact)
        print(f"contact sheet: {args.contact}")
    print(f"built in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
