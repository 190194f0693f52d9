"""Where medlab's own files are: the package, the repository root, the configs and the shipped assets.

The lowest layer (no medlab imports), so every module can find the configs and assets without importing the
``medlab`` package root (which reaches the commands).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_DIR = PACKAGE_DIR.parent
CONF_DIR = ROOT_DIR / "conf"
ASSETS_DIR = PACKAGE_DIR / "assets"
