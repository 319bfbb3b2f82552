"""Unit tests of the concept matching and of the package checks (no network, no tarball):

    .venv/bin/python -m unittest discover -s benches/crossartist -p 'test_*.py'
"""

import io
import json
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import build  # noqa: E402
from iconlib.draw import raster  # noqa: E402
from iconlib.package import Package, verify  # noqa: E402

LIBS = [lib.prefix for lib in build.LIBRARIES]


def icon(body='<path fill="currentColor" d="M4 4h16v16H4z"/>'):
    return build.Icon(body, 0, 0, 24, 24)


def library(names, aliases=None):
    return {name: icon() for name in names}, dict(aliases or {})


class ConceptNames(unittest.TestCase):
    def test_style_suffixes_are_dropped_per_library(self):
        ri, solar, lucide = build.BY_PREFIX["ri"], build.BY_PREFIX["solar"], build.BY_PREFIX["lucide"]
        self.assertEqual(build.concept_of("arrow-up-line", ri), ("arrow-up", 0))
        self.assertEqual(build.concept_of("arrow-up-fill", ri), ("arrow-up", 1))
        self.assertEqual(build.concept_of("home-bold-duotone", solar), ("home", 5))
        # lucide has no style suffixes: `-line` is part of a name there
        self.assertEqual(build.concept_of("underline", lucide)[0], "underline")
        self.assertEqual(build.concept_of("chart-line", lucide)[0], "chart-line")

    def test_the_outline_drawing_is_preferred_and_own_names_beat_aliases_and_synonyms(self):
        mdi = build.BY_PREFIX["mdi"]
        icons, aliases = library(["home", "home-outline", "account", "account-outline"],
                                 {"house": "account", "user-outline": "account-outline"})
        best = build.choose_drawings(icons, aliases, mdi)
        self.assertEqual(best["home"][1], "home-outline")  # not `house` (a synonym, an alias)
        self.assertEqual(best["user"][1], "account-outline")  # an alias, its outline style
        # its own name, even filled, before a synonym's outline drawing
        icons, aliases = library(["home", "building-outline"], {"house-outline": "building-outline"})
        self.assertEqual(build.choose_drawings(icons, aliases, mdi)["home"][1], "home")


class Items(unittest.TestCase):
    def packages(self, drawn: dict[str, list[str]]):
        """prefix -> library drawing the given names (one icon each)."""
        return {p: library(drawn.get(p, [])) for p in LIBS}

    def test_an_item_needs_the_shop_and_three_other_libraries(self):
        packages = self.packages({"tabler": ["bell", "kite", "star"], "lucide": ["bell", "kite", "star"],
                                  "mdi": ["bell", "kite", "star"], "bi": ["bell"], "ri": ["kite-line"],
                                  "ion": ["moon"], "solar": ["moon-linear"], "heroicons": ["moon"],
                                  "akar-icons": ["moon"]})
        items = build.concepts(packages, ["tabler"], lambda p, i: True)
        self.assertEqual(sorted(items), ["bell", "kite"])  # star: 2 others; moon: 4 others, no shop
        self.assertEqual(items["kite"], {"lucide": "kite", "mdi": "kite", "ri": "kite-line", "tabler": "kite"})

    def test_with_several_shop_libraries_any_of_them_makes_an_item(self):
        packages = self.packages({"tabler": ["bell"], "lucide": ["bell", "moon"], "mdi": ["bell", "moon", "kite"],
                                  "bi": ["bell", "moon", "kite"], "ri": ["bell-line", "moon-line", "kite-line"],
                                  "ion": ["kite"]})
        self.assertEqual(sorted(build.concepts(packages, ["tabler"], lambda p, i: True)), ["bell"])
        # moon: lucide draws it (a shop library), with 3 others; kite: no shop library draws it
        self.assertEqual(sorted(build.concepts(packages, ["tabler", "lucide"], lambda p, i: True)), ["bell", "moon"])

    def test_drawings_without_ink_do_not_count(self):
        packages = self.packages({p: ["bell"] for p in ("tabler", "lucide", "mdi", "bi")})
        empty = {("bi", "bell")}
        self.assertEqual(build.concepts(packages, ["tabler"], lambda p, i: (p, i) not in empty), {})
        self.assertIn("bell", build.concepts(packages, ["tabler"], lambda p, i: True))

    def test_two_items_never_share_one_drawing(self):
        packages = self.packages({p: ["bell", "bug"] for p in ("tabler", "lucide", "bi", "uil")})
        packages["mdi"] = library(["bell"], {"bug": "bell"})  # an alias: bug is bell in mdi
        items = build.concepts(packages, ["tabler"], lambda p, i: True)
        self.assertEqual(items["bell"]["mdi"], "bell")  # its own name keeps it
        self.assertNotIn("mdi", items["bug"])

    def test_synonyms_join_and_homonyms_are_left_out(self):
        packages = self.packages({"tabler": ["home", "apple"], "lucide": ["house", "apple"], "bi": ["house", "apple"],
                                  "uil": ["home", "apple"]})
        items = build.concepts(packages, ["tabler"], lambda p, i: True)
        self.assertEqual(items["home"], {"bi": "house", "lucide": "house", "tabler": "home", "uil": "home"})
        self.assertNotIn("apple", items)


class Drawings(unittest.TestCase):
    def test_stroked_bodies_render_and_their_halo_grows_them(self):
        stroke = '<path fill="none" stroke="currentColor" stroke-width="2" d="M4 12h16"/>'
        drawing = build.Icon(stroke, 0, 0, 24, 24).drawing()
        box = drawing.box()
        self.assertAlmostEqual(box[0], 4, delta=0.5)
        self.assertAlmostEqual(box[1], 11, delta=0.5)
        transform = "scale(2)"  # 24 units on 48 px at SVG_SS = 2: 1 px per unit
        ink = raster(drawing.solid, 24, transform)
        halo = drawing.halo(24, transform, 2.0, 1.0)
        self.assertGreater(ink.sum(), 20)  # the stroke is there, not a fill of its outline
        self.assertGreater(halo.sum(), ink.sum() + 50)  # 2 px on each side of a 16 px line
        self.assertTrue((halo >= ink - 1e-6).all())

    def test_a_drawing_without_ink_is_refused(self):
        with self.assertRaises(ValueError):
            build.Icon('<path fill="none" d="M4 12h16"/>', 0, 0, 24, 24).drawing().box()


class Packages(unittest.TestCase):
    def tarball(self, folder: Path, name: str, version: str) -> Path:
        path = folder / "p.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for member, data in (("package/package.json", {"name": name, "version": version}),
                                 ("package/icons.json", {"prefix": "x", "icons": {}})):
                raw = json.dumps(data).encode()
                info = tarfile.TarInfo(member)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return path

    def test_another_tarball_than_the_pinned_one_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = self.tarball(Path(tmp), "@iconify-json/tabler", "1.2.41")
            with self.assertRaises(SystemExit) as e:
                verify(path, build.LIBRARIES[0].package)
            self.assertIn("is not that of @iconify-json/tabler@1.2.41", str(e.exception))

    def test_a_tarball_of_another_version_is_refused_even_with_its_own_checksum(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = self.tarball(Path(tmp), "@iconify-json/tabler", "1.2.40")
            with self.assertRaises(SystemExit) as e:
                build.read_library(path, build.LIBRARIES[0])
            self.assertIn("holds @iconify-json/tabler@1.2.40; this script needs @iconify-json/tabler@1.2.41",
                          str(e.exception))

    def test_tarball_names_are_those_npm_pack_writes(self):
        self.assertEqual(Package("@iconify-json/akar-icons", "1.2.7", "").tarball, "iconify-json-akar-icons-1.2.7.tgz")
        self.assertEqual(build.CATEGORIES.tarball, "tabler-icons-3.48.0.tgz")


if __name__ == "__main__":
    unittest.main()
