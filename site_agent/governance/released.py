"""Where a site keeps the manifests it accepted and the bundles it released (its state folder).

A released bundle is kept so a lost reply can be collected again; an accepted manifest is
kept so later Cox requests can be checked against it. Neither holds person-level data.
"""

from __future__ import annotations

from pathlib import Path

RELEASED_DIR = "released"
ACCEPTED_DIR = "accepted"


def _safe(manifest_id: str) -> str:
    return "".join(ch for ch in manifest_id if ch.isalnum() or ch in "-_")[:80] or "manifest"


def released_path(state_dir: Path, manifest_id: str) -> Path:
    return Path(state_dir) / RELEASED_DIR / f"{_safe(manifest_id)}.bundle"


def accepted_path(state_dir: Path, manifest_id: str) -> Path:
    return Path(state_dir) / ACCEPTED_DIR / f"{_safe(manifest_id)}.json"
