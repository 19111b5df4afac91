"""Where the network's cohort definitions are: the packaged copy (``importlib.resources``), so
that ``coordinator demo`` and the examples run from any folder, not only the repository root."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from optima_common.errors import ConfigError


def definitions_dir() -> Path:
    """The ``cohort_definitions`` folder shipped with the package (catalog.json, studies/ ...)."""
    try:
        root = Path(str(resources.files("cohort_definitions")))
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[1] / "cohort_definitions"
    if not (root / "catalog.json").is_file():
        raise ConfigError(f"the packaged cohort definitions are missing ({root / 'catalog.json'} not found)",
                          hint="reinstall optima-federated, or pass --definitions")
    return root


__all__ = ["definitions_dir"]
