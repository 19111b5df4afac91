"""Small synthetic data partners with keys and site TOMLs, for the federation tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from coordinator.demo.sites import DemoSite, site_toml
from coordinator.flower.study import manifest_from_spec
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import generate_keypair, load_private_key
from tests.conftest import REPO

CATALOG = REPO / "cohort_definitions" / "catalog.json"
SPEC = REPO / "cohort_definitions" / "studies" / "sclc_stage_i_ii.json"
SITES = (DemoSite("site_north", "oncology", 3000, 11), DemoSite("site_south", "primary-care", 2000, 12),
         DemoSite("site_east", "oncology", 1500, 13))


@dataclass
class Network:
    root: Path
    configs: dict[str, Path]
    trust: Path
    coordinator_key: Path
    coordinator_pub: Path
    rogue_key: Path
    spec: Path = SPEC

    def node_configs(self, sites=None) -> dict[int, dict]:
        names = list(sites or self.configs)
        return {i + 1: {"site-config": str(self.configs[n])} for i, n in enumerate(names)}

    def manifest(self, *, sites=None, min_sites: int = 2, analyses=("cohort_counts", "sclc_study"),
                 signer: Path | None = None, **kw):
        m = manifest_from_spec(self.spec, target_sites=list(sites or self.configs), min_sites=min_sites,
                               analyses=analyses, **kw)
        return sign_manifest(m, load_private_key(signer or self.coordinator_key))


def build_network(root: Path, sites=SITES, *, review: tuple[str, ...] = (), min_cell_count: int = 5,
                  catalog: Path = CATALOG, spec: Path = SPEC) -> Network:
    from site_agent.cdm.synth import generate_site

    keys = root / "coordinator_keys"
    ckey, cpub = generate_keypair(keys, "coordinator")
    rogue, _ = generate_keypair(keys, "rogue")
    trust = root / "trust"
    trust.mkdir(parents=True)
    configs = {}
    for s in sites:
        folder = root / s.name
        cdm = folder / f"{s.name}.duckdb"
        folder.mkdir(parents=True)
        generate_site(out=cdm, persons=s.persons, site=s.name, profile=s.profile, seed=s.seed)
        _, pub = generate_keypair(folder / "keys", s.name)
        (trust / f"{s.name}.pub").write_bytes(pub.read_bytes())
        site = DemoSite(s.name, s.profile, s.persons, s.seed, review_mode=s.name in review)
        cfg = folder / "site.toml"
        cfg.write_text(site_toml(site, cdm=cdm, catalog=catalog, coordinator_pub=cpub, min_cell_count=min_cell_count,
                                 analyses=("cohort_counts", "diagnostics", "sclc_study")))
        configs[s.name] = cfg
    return Network(root, configs, trust, ckey, cpub, rogue, spec)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
