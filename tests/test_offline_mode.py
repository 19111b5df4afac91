"""Offline mode: a manifest file answered at the site without Flower, the bundle file ingested."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.store import ResultsStore
from optima_common.bundle import write_manifest
from tests.conftest import REPO
from tests.federation_sites import SITES, build_network


def run(*args: str, module: str = "site_agent"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return build_network(tmp_path_factory.mktemp("offline"), SITES[:1])


def test_run_manifest_then_ingest(net, tmp_path):
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    bundle = tmp_path / "site_north.bundle"
    proc = run("run-manifest", str(mfile), "--config", str(net.configs["site_north"]), "--out", str(bundle))
    assert proc.returncode == 0 and bundle.is_file(), proc.stderr
    store = tmp_path / "store.sqlite3"
    proc = run("ingest", str(bundle), "--store", str(store), "--trust", str(net.trust), "--manifest", str(mfile),
               "--coordinator-key", str(net.coordinator_pub), module="coordinator.cli.main")
    assert proc.returncode == 0, proc.stderr
    assert [b.site for b in ResultsStore.open(store).bundles(manifest.manifest_id)] == ["site_north"]
    # the same manifest again is a replay: refused in one line, exit 8, no file written
    again = run("run-manifest", str(mfile), "--config", str(net.configs["site_north"]), "--out",
                str(tmp_path / "again.bundle"))
    assert again.returncode == 8 and "replay" in again.stderr and again.stderr.count("\n") == 1
    assert not (tmp_path / "again.bundle").exists()
    # the released bundle can be written again (a lost file), byte for byte
    proc = run("release", manifest.manifest_id, "--config", str(net.configs["site_north"]), "--out",
               str(tmp_path / "copy.bundle"))
    assert proc.returncode == 0 and (tmp_path / "copy.bundle").read_bytes() == bundle.read_bytes()


def test_tampered_manifest_file_is_refused(net, tmp_path):
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    mfile.write_text(mfile.read_text().replace('"min_cell_count": 5', '"min_cell_count": 1'))
    proc = run("run-manifest", str(mfile), "--config", str(net.configs["site_north"]), "--out",
               str(tmp_path / "x.bundle"))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and not (tmp_path / "x.bundle").exists()


def test_wrong_cdm_setting_is_one_line_and_keeps_the_nonce(net, tmp_path):
    """A site.toml whose CDM cannot be opened: one line, non-zero exit, no bundle, and the manifest
    is not used up - once the setting is fixed, the same manifest runs."""
    import shutil

    good = net.configs["site_north"]
    bad = good.with_name("site_bad_cdm.toml")
    text = good.read_text()
    import re

    url = re.search(r'^url\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    assert url, text
    bad.write_text(text.replace(url.group(1), "duckdb:///" + str(tmp_path / "no_such_folder" / "cdm.duckdb")))
    manifest = net.manifest(sites=["site_north"], min_sites=1, analyses=("cohort_counts",))
    mfile = write_manifest(manifest, tmp_path / "manifest.json")
    proc = run("run-manifest", str(mfile), "--config", str(bad), "--out", str(tmp_path / "x.bundle"))
    assert proc.returncode == 3, proc.stderr  # CDM connection
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.bundle").exists()
    proc = run("run-manifest", str(mfile), "--config", str(good), "--out", str(tmp_path / "ok.bundle"))
    assert proc.returncode == 0 and (tmp_path / "ok.bundle").is_file(), proc.stderr
    shutil.os.remove(bad)
