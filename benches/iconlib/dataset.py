"""Items, categories and splits, and the DeepFashion Consumer-to-shop layout they are written in:

    img/<BIG>/<Small>/id_XXXXXXXX/comsumer_NN.jpg   (sic, DeepFashion's spelling)
    img/<BIG>/<Small>/id_XXXXXXXX/shop_01.jpg
    Eval/list_eval_partition.txt                    one row per (consumer, shop) pair
    Anno/list_item_consumer2shop.txt                the item ids
plus provenance files vitrine ignores. The set is built in OUT.tmp and renamed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from .draw import consumer_image, shop_image
from .scene import to_jpeg

SPLITS = ("train", "val", "test")
UNSORTED = "MISC"  # the BIG of items whose family has no category
STREAM_SPLIT, STREAM_STYLE, STREAM_IMAGE = 1, 2, 3  # keep the random streams of each use apart


def rng_for(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """The generator of one use (split, style choice, image) of one item: independent of the
    order in which items are processed, hence of --jobs."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *keys])))


def parser(doc: str, readme: str, example: str) -> argparse.ArgumentParser:
    """A builder's command line, starting with its --out (`example`: a typical value)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"See {readme}.")
    ap.add_argument("--out", type=Path, required=True, help=f"dataset root to create (e.g. {example})")
    return ap


def add_common_arguments(ap: argparse.ArgumentParser, cache: str, max_consumers: int, differ: str,
                         sheet: str) -> None:
    """The options every builder has (the set's shape, reproducibility, the build itself).
    `differ`: how an item's consumer images differ; `sheet`: what the contact sheet shows."""
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / cache, help="where `npm pack` puts tarballs (default: %(default)s)")
    ap.add_argument("--size", type=int, default=128, help="image side in px (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=7,
                    help="seed of splits, consumer choices and images (default: %(default)s)")
    ap.add_argument("--consumer-per-item", type=int, default=3, help=f"consumer images per item, {differ} "
                    f"(1-{max_consumers}, default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes; output does not depend on it")
    ap.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    ap.add_argument("--contact", type=Path, metavar="PNG", help=f"also save a contact sheet: {sheet}")


def check_common_arguments(ap: argparse.ArgumentParser, args, max_consumers: int) -> None:
    if not 1 <= args.consumer_per_item <= max_consumers:
        ap.error(f"--consumer-per-item must be between 1 and {max_consumers}")
    if args.size < 16 or args.seed < 0 or args.jobs < 1:
        ap.error("--size must be at least 16, --seed non-negative and --jobs at least 1")


# ---------------------------------------------------------------- categories and splits

def big_folder(label: str) -> str:
    """A category label as a BIG folder name: `Weather & nature` -> `WEATHER_NATURE`."""
    return re.sub(r"[^A-Z0-9]+", "_", label.upper()).strip("_")


def catalogue(icons: list[tuple[str, str | None]]) -> list[dict]:
    """One row per (name, BIG) in name order: item id, BIG and Small folder names. Small is the
    family, the name's stem before the first `-` (`cloud-rain` -> `Cloud`), so that the hardest
    negatives share a category with the query. A BIG of None has no say in its family's BIG
    and becomes UNSORTED when the family has none."""
    icons = sorted(icons, key=lambda i: i[0])
    families = defaultdict(list)
    for name, big in icons:
        families[name.split("-")[0]].append((name, big))
    rows = []
    for stem, members in families.items():
        # vitrine keys a small category by its folder path, so a family lives under one BIG:
        # the one most of its icons have (ties: alphabetical).
        votes = Counter(b for _, b in members if b is not None)
        big = min(votes, key=lambda b: (-votes[b], b)) if votes else UNSORTED
        for name, own_big in members:
            own_big = own_big or UNSORTED
            if len(members) == 1:  # a lone icon has no family: pool it so negatives stay meaningful
                rows.append({"name": name, "big": own_big, "small": "Other_" + own_big.title()})
            else:
                rows.append({"name": name, "big": big, "small": stem[0].upper() + stem[1:]})
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


def choose(seed: int, index: int, options: list, k: int) -> list:
    """`k` of `options` without replacement, the item's own draw (stream STREAM_STYLE)."""
    pick = rng_for(seed, STREAM_STYLE, index).permutation(len(options))[:k]
    return [options[i] for i in pick]


# ---------------------------------------------------------------- rendering

def item_folder(root: Path, r: dict) -> Path:
    return root / "img" / r["big"] / r["small"] / r["id"]


def render_item(task: dict) -> None:
    """Writes one item's shop and consumer images (a worker's unit of work). A task is a dict
    of dir, seed, index, size, shop (a Drawing) and consumers (Drawings)."""
    folder = Path(task["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    seed, index, size = task["seed"], task["index"], task["size"]
    to_jpeg(shop_image(task["shop"], rng_for(seed, STREAM_IMAGE, index, 0), size), folder / "shop_01.jpg", 92)
    for n, drawing in enumerate(task["consumers"], 1):
        img, quality = consumer_image(drawing, rng_for(seed, STREAM_IMAGE, index, n), size)
        to_jpeg(img, folder / f"comsumer_{n:02d}.jpg", quality)


def render_all(tasks: list[dict], jobs: int, start: float) -> None:
    # Items are independent (own generators, own folders), so workers may finish in any order.
    with multiprocessing.Pool(jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        results = pool.imap_unordered(render_item, tasks, chunksize=8) if pool else map(render_item, tasks)
        for done, _ in enumerate(results, 1):
            if done % 100 == 0 or done == len(tasks):
                print(f"\r{done}/{len(tasks)} items, {time.monotonic() - start:.0f} s",
                      end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


# ---------------------------------------------------------------- the build folder

def check_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        sys.exit(f"{out} exists and is not empty (use --force to replace it)")


def staging(out: Path) -> Path:
    """A fresh OUT.tmp, marked as ours so that a later run may remove it if this one dies."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # left by an interrupted build; only ever remove one of ours
        if not (tmp / ".building").exists():
            sys.exit(f"{tmp} exists and was not made by this script; remove it")
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / ".building").touch()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """OUT.tmp becomes OUT; an old OUT is moved aside first and removed only after the swap."""
    (tmp / ".building").unlink()
    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def write_lists(root: Path, rows: list[dict], per_item: int, extra: dict[str, str]) -> None:
    """The two lists vitrine reads, and `extra` provenance files (relative path -> text)."""
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
    for name, text in extra.items():
        (root / name).write_text(text)


def provenance_files(tsv: list[str], build: dict, readme: dict[str, str]) -> dict[str, str]:
    """The files vitrine ignores: Anno/icons.tsv (one row per item), build.json (options and
    versions) and README.txt, whose `readme` parts are: title, script (path and version),
    source (the packages), shop, consumers (what the images are) and columns (of icons.tsv)."""
    text = (f"{readme['title']}, DeepFashion layout, built by vitrine's {readme['script']}\n"
            f"from {readme['source']}.\nShop image: {readme['shop']}; consumer images: {readme['consumers']}, "
            f"recoloured and photographed on clutter.\nOptions and versions: build.json. "
            f"Per-item {readme['columns']}: Anno/icons.tsv.\n")
    return {"Anno/icons.tsv": "\n".join(tsv) + "\n", "build.json": json.dumps(build, indent=2) + "\n",
            "README.txt": text}


def print_summary(out: Path, rows: list[dict], per_item: int) -> None:
    print(f"{out}: {len(rows)} items, {len({r['big'] for r in rows})} big and "
          f"{len({(r['big'], r['small']) for r in rows})} small categories")
    print(f"{'split':<6} {'pairs':>6} {'items':>6} {'consumer':>9} {'shop':>6}")
    for split in (*SPLITS, "total"):
        n = sum(1 for r in rows if split in (r["split"], "total"))
        print(f"{split:<6} {n * per_item:>6} {n:>6} {n * per_item:>9} {n:>6}")


def contact_sheet(root: Path, rows: list[dict], per_item: int, path: Path, count: int = 12) -> None:
    """Shop | consumers | the consumers at 64 px (blown up), for `count` items spread over the set."""
    picks = [rows[round(i * (len(rows) - 1) / max(count - 1, 1))] for i in range(count)]
    tile = Image.open(item_folder(root, picks[0]) / "shop_01.jpg").size[0]
    sheet = Image.new("RGB", ((1 + 2 * per_item) * (tile + 4), count * (tile + 4)), "white")
    for y, r in enumerate(picks):
        files = ["shop_01.jpg"] + [f"comsumer_{n:02d}.jpg" for n in range(1, per_item + 1)]
        images = [Image.open(item_folder(root, r) / f) for f in files]
        images += [im.resize((64, 64), Image.BILINEAR).resize((tile, tile), Image.NEAREST) for im in images[1:]]
        for x, im in enumerate(images):
            sheet.paste(im, (x * (tile + 4), y * (tile + 4)))
    sheet.save(path)
