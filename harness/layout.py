"""Where things live: the repository's configs, the cache, and the per-arch output directories."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def cache_root() -> Path:
    env = os.environ.get("NEONVM_KERNEL_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neonvm-kernel"
    base.mkdir(parents=True, exist_ok=True)
    return base


def out_root() -> Path:
    env = os.environ.get("NEONVM_KERNEL_OUT")
    return Path(env) if env else REPO / "out"


def default_out_dir(arch: str, variant: str) -> Path:
    """out/<arch> for the production kernel, out/<variant>-<arch> for other variants."""
    name = arch if variant == "production" else f"{variant}-{arch}"
    return out_root() / name
