"""Synthetic data partners for the local demo network and the end-to-end tests.

Each site is set up the way a data partner would do it, through the ``site-agent`` command
line in its own process (the coordinator never imports the site agent's internals): a
synthetic OMOP CDM (``cdm synth``), the site's signing key (``keys generate``), and a site
TOML that pins the coordinator key, approves the network catalog and sets the site's own
minimum cell count. The coordinator pins each site's public key in ``trust/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from optima_common.errors import CoordinatorError


@dataclass(frozen=True)
class DemoSite:
    name: str
    profile: str
    persons: int
    seed: int
    review_mode: bool = False
    notes: bool = False  # radiology reports in ``note`` (``cdm synth --notes``) for the NLP analysis


@dataclass(frozen=True)
class PreparedSite:
    site: DemoSite
    folder: Path
    config: Path
    cdm: Path


SITE_KINDS = (  # name, synth profile, size relative to --persons, radiology reports
    ("lung_registry_north", "lung-registry", 1.0, False),
    ("primary_care_south", "primary-care", 1.0, False),
    ("lung_registry_east", "lung-registry", 1.0, False),
    ("breast_centre", "breast-centre", 0.5, True),
    ("oncology_west", "oncology", 1.5, False),
    ("primary_care_central", "primary-care", 1.5, False),
)


def default_sites(count: int, persons: int, seed: int) -> list[DemoSite]:
    """Sites that differ in kind and size, as in the seed's network: SCLC-enriched lung-cancer
    registries (they hold the stage I-II SCLC patients the study is about), a primary-care
    source, a breast cancer unit whose CDM holds radiology reports (the NLP metastasis analysis),
    a general oncology EMR and a larger primary-care source."""
    if not 1 <= count <= len(SITE_KINDS):
        raise CoordinatorError(f"--sites must be between 1 and {len(SITE_KINDS)}, got {count}")
    return [DemoSite(name, profile, max(int(persons * size), 100), seed + i, notes=notes)
            for i, (name, profile, size, notes) in enumerate(SITE_KINDS[:count])]


def agent(*args: str, cwd: Path | None = None) -> str:
    """Run the site agent's command line; its one-line error becomes ours."""
    proc = subprocess.run([sys.executable, "-m", "site_agent", *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CoordinatorError(f"site-agent {' '.join(args[:2])} failed: {last}")
    return proc.stdout


def site_toml(site: DemoSite, *, cdm: Path, catalog: Path, coordinator_pub: Path, min_cell_count: int,
              analyses: tuple[str, ...]) -> str:
    return "\n".join([
        f"site = {json.dumps(site.name)}",
        'state_dir = "state"',
        f'site_key = "keys/{site.name}.key"',
        f"coordinator_keys = [{json.dumps(str(coordinator_pub))}]",
        f"allowed_analyses = {json.dumps(list(analyses))}",
        f"min_cell_count = {int(min_cell_count)}",
        f"review_mode = {'true' if site.review_mode else 'false'}",
        "",
        "[cdm]",
        f"url = {json.dumps('duckdb:///' + str(cdm.resolve()))}",
        "",
        "[approved_cohorts]",
        f"catalogs = [{json.dumps(str(catalog))}]",
        "",
    ])


def prepare_site(root: Path, site: DemoSite, *, catalog: Path, coordinator_pub: Path, trust: Path,
                 min_cell_count: int = 5,
                 analyses: tuple[str, ...] = ("cohort_counts", "diagnostics", "sclc_study", "nlp_metastasis"),
                 echo=print) -> PreparedSite:
    """CDM, key and config of one site under ``root/<site>``; its public key pinned in ``trust``."""
    folder = root / site.name
    folder.mkdir(parents=True, exist_ok=True)
    cdm = folder / f"{site.name}.duckdb"
    if not cdm.exists():
        agent("cdm", "synth", "--out", str(cdm), "--persons", str(site.persons), "--site", site.name,
              "--profile", site.profile, "--seed", str(site.seed), *(["--notes"] if site.notes else []))
    key = folder / "keys" / f"{site.name}.key"
    if not key.exists():
        agent("keys", "generate", "--out", str(folder / "keys"), "--name", site.name)
    trust.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "keys" / f"{site.name}.pub", trust / f"{site.name}.pub")
    (folder / "state").mkdir(exist_ok=True)  # what the site's vocabulary will miss, for `review show`
    agent("vocab", "check", "--cdm", str(cdm), "--definitions", str(catalog.parent),
          "--out", str(folder / "state" / "vocab_check.json"))
    config = folder / "site.toml"
    config.write_text(site_toml(site, cdm=cdm, catalog=catalog, coordinator_pub=coordinator_pub,
                                min_cell_count=min_cell_count, analyses=analyses), encoding="utf-8")
    echo(f"  site {site.name}: {site.profile}, {site.persons} persons{', radiology reports' if site.notes else ''}, "
         "review mode "
         f"{'on' if site.review_mode else 'off'}")
    return PreparedSite(site, folder, config, cdm)
