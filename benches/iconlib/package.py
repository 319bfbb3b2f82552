"""An npm tarball, fetched once with `npm pack` and checked against its pinned sha512."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    name: str  # @scope/name
    version: str
    integrity: str  # `npm view NAME@VERSION dist.integrity`

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name `npm pack` gives it: @scope/name 1.2.3 -> scope-name-1.2.3.tgz."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


def npm_pack(package: Package, cache: Path, offline_hint: str) -> Path:
    """Downloads the tarball with npm (the only network step), or reuses the copy in `cache`.
    `offline_hint` names the option that takes a tarball fetched elsewhere."""
    path = cache / package.tarball
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"npm pack {package.spec} -> {cache}", file=sys.stderr)
        try:
            subprocess.run(["npm", "pack", "--quiet", package.spec, "--pack-destination", str(cache)],
                           check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"npm pack failed ({e}); download {package.tarball} elsewhere and pass {offline_hint}")
    return path


def verify(path: Path, package: Package) -> None:
    """Refuses any file but the pinned version's tarball (a different version, a corrupt copy)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        sys.exit(f"{path}: {e.strerror}")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != package.integrity:
        sys.exit(f"{path}: integrity {digest}\n  is not that of {package.spec} ({package.integrity})")
