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

Output: the DeepFashion layout vitrine reads (see benches/iconlib/dataset.py) plus provenance
files it ignores: Anno/icons.tsv, README.txt, build.json. No Anno/list_bbox_consumer2shop.txt
is written: vitrine would crop to it and remove the clutter.

Determinism: every image draws from its own numpy generator seeded by (seed, stream, item,
image number), so `--jobs` never changes the output, and the same package, seed, options and
pinned versions (benches/iconlib/requirements.txt) give byte-identical files.

The drawing, the clutter and the layout are shared with benches/crossartist (benches/iconlib);
this script only reads Phosphor's package. The only network step: without `--package`,
`npm pack @phosphor-icons/core@2.1.1` downloads the tarball into `--cache`; its sha512 must
match the integrity hard-coded below.

Usage: python benches/iconset/build.py --out data/icons [--package phosphor-icons-core-2.1.1.tgz]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benches/, for iconlib
from iconlib import dataset  # noqa: E402
from iconlib.draw import SVG_SS, Drawing  # noqa: E402
from iconlib.package import Package, npm_pack, verify  # noqa: E402
from iconlib.scene import SHAPE_SS  # noqa: E402

SCRIPT_VERSION = "1.0.0"  # written into build.json: bump it when the output changes
PACKAGE = Package("@phosphor-icons/core", "2.1.1",
                  "sha512-v4ARvrip4qBCImOE5rmPUylOEK4iiED9ZyKjcvzuezqMaiRASCHKcRIuvvxL/twvLpkfnEODCOJp5dM4eZilxQ==")
ICON_COUNT = 1512
STYLES = ("thin", "light", "regular", "bold", "fill", "duotone")


# ---------------------------------------------------------------- the package

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
    if (meta["name"], meta["version"]) != (PACKAGE.name, PACKAGE.version):
        sys.exit(f"{path} holds {meta['name']}@{meta['version']}; this script needs {PACKAGE.spec}")
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


def drawing(svg: str) -> Drawing:
    """One Phosphor SVG (256 units, filled outlines): its solid paths and the duotone's faint
    (opacity 0.2) paths."""
    paths = re.findall(r"<path [^>]*/>", svg)
    faint = [p.replace(' opacity="0.2"', "") for p in paths if 'opacity="0.2"' in p]
    return Drawing("".join(p for p in paths if "opacity=" not in p), "".join(faint))


# ---------------------------------------------------------------- the set

def provenance_files(rows: list[dict], per_item: int, provenance: dict) -> dict[str, str]:
    tsv = ["item_id\ticon_name\tbig\tsmall\tsplit\tconsumer_styles"]
    tsv += [f"{r['id']}\t{r['name']}\t{r['big']}\t{r['small']}\t{r['split']}\t{','.join(r['styles'])}" for r in rows]
    readme = {"title": "Consumer-to-shop icon benchmark", "script": f"benches/iconset/build.py {SCRIPT_VERSION}",
              "source": f"{PACKAGE.spec} (MIT licence, https://phosphoricons.com), integrity {PACKAGE.integrity}",
              "shop": f"the {provenance['shop_style']} style", "consumers": f"{per_item} other styles",
              "columns": "icon, category, split and styles"}
    return dataset.provenance_files(tsv, provenance, readme)


def main() -> None:
    ap = dataset.parser(__doc__, "benches/iconset/README.md", "data/icons")
    ap.add_argument("--package", type=Path, help=f"{PACKAGE.tarball} (default: `npm pack` it into --cache)")
    ap.add_argument("--shop-style", choices=STYLES, default="regular", help="style of the shop image")
    dataset.add_common_arguments(ap, "vitrine-iconset", len(STYLES) - 1, "each in a different style",
                                 "12 items, shop | consumers | consumers at 64 px")
    args = ap.parse_args()
    dataset.check_common_arguments(ap, args, len(STYLES) - 1)
    start = time.monotonic()
    out = args.out.resolve()
    dataset.check_out(out, args.force)
    package = args.package or npm_pack(PACKAGE, args.cache, "--package")
    verify(package, PACKAGE)
    icons, svgs = read_package(package)
    rows = dataset.catalogue([(i["name"], dataset.big_folder(i["figma_category"])) for i in icons])
    dataset.assign_splits(rows, args.seed)
    tmp = dataset.staging(out)

    others = [s for s in STYLES if s != args.shop_style]
    tasks = []
    for r in rows:
        r["styles"] = dataset.choose(args.seed, r["index"], others, args.consumer_per_item)
        tasks.append({"dir": str(dataset.item_folder(tmp, r)), "seed": args.seed, "index": r["index"],
                      "size": args.size, "shop": drawing(svgs[r["name"], args.shop_style]),
                      "consumers": [drawing(svgs[r["name"], s]) for s in r["styles"]]})
    dataset.render_all(tasks, args.jobs, start)

    versions = {p: metadata.version(p) for p in ("numpy", "pillow", "resvg-py")}
    provenance = {"package": PACKAGE.name, "version": PACKAGE.version, "integrity": PACKAGE.integrity,
                  "script_version": SCRIPT_VERSION, "seed": args.seed, "size": args.size,
                  "consumer_per_item": args.consumer_per_item, "shop_style": args.shop_style,
                  "supersampling": [SVG_SS, SHAPE_SS], "python": sys.version.split()[0].rsplit(".", 1)[0],
                  "libraries": versions, "items": len(rows)}
    dataset.write_lists(tmp, rows, args.consumer_per_item, provenance_files(rows, args.consumer_per_item, provenance))
    dataset.publish(tmp, out)

    dataset.print_summary(out, rows, args.consumer_per_item)
    if args.contact:
        dataset.contact_sheet(out, rows, args.consumer_per_item, args.contact)
        print(f"contact sheet: {args.contact}")
    print(f"built in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
