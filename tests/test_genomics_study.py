"""genomics_profile as a network analysis: site.toml [genomics], a signed manifest answered offline,
the bundle ingested at the coordinator (whose audit accepts it), and a site without inputs refusing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coordinator.store import ResultsStore
from optima_common.bundle import write_manifest
from optima_common.disclosure import check_release
from optima_common.results import SummarisedResult
from site_agent.genomics.synth import generate
from tests.conftest import REPO
from tests.federation_sites import SITES, build_network


def run(*args: str, module: str = "site_agent"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO)


pytestmark = pytest.mark.slow  # builds a synthetic OMOP site (about a minute)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("gstudy")
    n = build_network(root, SITES[:1])
    cfg = n.configs["site_north"]
    generate(cfg.parent / "genomics", 250, seed=4)
    text = cfg.read_text().replace('allowed_analyses = ["cohort_counts", "diagnostics", "sclc_study"]',
                                   'allowed_analyses = ["cohort_counts", "genomics_profile"]')
    assert "genomics_profile" in text
    cfg.write_text(text + '\n[genomics]\nmaf = ["genomics/mutations.maf"]\nlinkage = "genomics/linkage.csv"\n'
                   'expression = "genomics/expression.tsv"\nclinical = "genomics/clinical.csv"\n')
    return n


def test_manifest_with_genomics_profile_is_answered_and_ingested(net, tmp_path):
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts", "genomics_profile"))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    bundle = tmp_path / "north.bundle"
    proc = run("run-manifest", str(mfile), "--config", str(net.configs["site_north"]), "--out", str(bundle))
    assert proc.returncode == 0, proc.stderr
    store = tmp_path / "store.sqlite3"
    proc = run("ingest", str(bundle), "--store", str(store), "--trust", str(net.trust), "--manifest", str(mfile),
               "--coordinator-key", str(net.coordinator_pub), module="coordinator.cli.main")
    assert proc.returncode == 0, proc.stderr
    (b,) = ResultsStore.open(store).bundles(manifest.manifest_id)
    path = tmp_path / "r.csv"
    path.write_text(b.results_csv)
    r = SummarisedResult.from_csv(path)
    types = set(r.settings["result_type"])
    assert {"mutation_frequency", "hotspot_counts", "molecular_subtype", "summarise_cohort_count"} <= types
    assert check_release(r, 5) == []
    truth = json.loads((net.configs["site_north"].parent / "genomics" / "truth.json").read_text())
    d = r.data
    tp53 = d[(d["variable_level"] == "TP53") & (d["estimate_name"] == "count")
             & d["result_id"].isin(r.settings.loc[r.settings["result_type"] == "mutation_frequency", "result_id"])]
    assert int(tp53["estimate_value"].iat[0]) == truth["gene_patients"]["TP53"]


def test_a_site_without_genomics_inputs_refuses(net, tmp_path):
    cfg = net.configs["site_north"]
    bare = cfg.with_name("bare.toml")
    bare.write_text(cfg.read_text().split("\n[genomics]")[0])
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("genomics_profile",))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    proc = run("run-manifest", str(mfile), "--config", str(bare), "--out", str(tmp_path / "x.bundle"))
    assert proc.returncode == 8 and "[genomics]" in proc.stderr and proc.stderr.count("\n") == 1


def test_clinical_from_the_cdm_through_a_manifest(net, tmp_path):
    """Without a clinical file the site reads age/ER/PR/HER2 from its CDM by concept ids; the site
    approved the catalog (breast_cancer included), so the manifest is answered."""
    cfg = net.configs["site_north"]
    nocl = cfg.with_name("nocl.toml")
    nocl.write_text(cfg.read_text().replace('clinical = "genomics/clinical.csv"\n', ""))
    assert "clinical =" not in nocl.read_text()
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("genomics_profile",))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    proc = run("run-manifest", str(mfile), "--config", str(nocl), "--out", str(tmp_path / "n.bundle"))
    assert proc.returncode == 0, proc.stderr


def test_cdm_clinical_needs_the_breast_cancer_approval():
    import hashlib

    from optima_common.errors import PolicyRefusal
    from site_agent.nlp.cdm_run import BREAST_FILE, require_breast_approved

    class Approved:  # the one method the check reads
        def __init__(self, shas):
            self.shas = shas

        def approved_cohort_files(self):
            return {s: None for s in self.shas}

    with pytest.raises(PolicyRefusal, match="genomics_profile builds the breast_cancer cohort"):
        require_breast_approved(Approved([]), "genomics_profile")
    require_breast_approved(Approved([hashlib.sha256(BREAST_FILE.read_bytes()).hexdigest()]), "genomics_profile")
