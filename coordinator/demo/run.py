"""``coordinator demo``: the lung study end to end over a local Flower network.

1. Synthetic sites (different profiles and sizes), each with its own DuckDB CDM, signing key
   and site TOML (:mod:`coordinator.demo.sites`); their public keys pinned in ``OUT/trust``.
2. The coordinator key, and a manifest for the lung study (the lung cohorts' diagnostics and
   the stage I-II SCLC treatment-sequence study) signed with it: ``OUT/manifest.json``. Where a
   site holds radiology reports (the breast cancer unit) and the nlp extra is installed, the
   manifest also asks for ``nlp_metastasis``; sites without reports answer it with zero reports.
3. A SuperLink and one SuperNode per site as local processes, with TLS and SuperNode
   authentication (:class:`coordinator.flower.network.LocalNetwork`); ``flwr run`` starts the
   ServerApp, which sends the manifest, verifies and stores each bundle, and writes the report.
4. Everything is shut down; ``OUT`` holds ``report.html``, ``results.csv``,
   ``bundles/<site>.bundle``, ``trust/``, ``store.sqlite3`` and the network's logs.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from coordinator.cli.common import outcome_error
from coordinator.demo.sites import DemoSite, default_sites, prepare_site
from coordinator.flower.jobs import StudyJob
from coordinator.flower.network import LocalNetwork, NodeSpec
from coordinator.flower.study import manifest_from_spec
from coordinator.store import DEFAULT_STORE
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import generate_keypair, load_private_key, write_manifest
from optima_common.cli import progress
from optima_common.errors import CoordinatorError

LUNG_DIAGNOSTIC_COHORTS = ("lung_cancer_broad", "lung_cancer_narrow", "nsclc", "sclc", "sclc_stage_i_ii")
STUDY_SPEC = Path("studies") / "sclc_stage_i_ii.json"
TRAIN_ROUNDS = 2
# a short federated run on 2 CPU cores: small synthetic archives, capped steps per epoch
SYNTH_ARGS = {"pathology": ["--slides", "6", "--width", "1536", "--height", "1280"],
              "mammography": ["--patients", "40"]}
TRAIN_RUN_CONFIG = {"pathology": {"max_steps_per_epoch": 15}, "mammography": {}}


def prepare_images(out: Path, sites: list[DemoSite], task: str, echo) -> dict[str, dict[str, str]]:
    """A synthetic image archive per site (``site-agent images synth TASK``); node configs naming it."""
    from coordinator.demo.sites import agent

    extra = {}
    for s in sites:
        folder = out / "sites" / s.name / task
        if not folder.exists():
            agent("images", "synth", task, "--out", str(folder), "--site", s.name, "--seed", str(s.seed),
                  *SYNTH_ARGS.get(task, []))
        extra[s.name] = {f"image-root-{task}": str(folder)}
    echo(f"  synthetic {task} archives written for {len(sites)} sites")
    return extra


def with_nlp(analyses: tuple[str, ...], sites: list[DemoSite], echo) -> tuple[str, ...]:
    """``nlp_metastasis`` added when a site holds radiology reports and medspaCy is importable here
    (the demo's sites run in this environment); without the extra the lung study runs alone."""
    import importlib.util

    if "nlp_metastasis" in analyses or not any(s.notes for s in sites):
        return analyses
    if importlib.util.find_spec("medspacy") is None:
        echo("  the nlp extra is not installed: the demo runs without nlp_metastasis (pip install -e '.[nlp]')")
        return analyses
    return (*analyses, "nlp_metastasis")


def coordinator_key(out: Path) -> tuple[Path, Path]:
    keys = out / "coordinator_keys"
    private, public = keys / "coordinator.key", keys / "coordinator.pub"
    if not private.exists():
        generate_keypair(keys, "coordinator")
    return private, public


def run_demo(out: Path, sites: list[DemoSite], definitions: Path, *, min_cell_count: int = 5,
             min_sites: int | None = None, reply_timeout: float = 600.0, analyses=("diagnostics", "sclc_study"),
             train: str | None = None, train_epochs: int = 1, echo=print, network_hook=None) -> dict:
    """Run the lung study over a fresh local network; returns the ServerApp's outcome."""
    catalog = definitions / "catalog.json"
    spec = definitions / STUDY_SPEC
    for f in (catalog, spec):
        if not f.is_file():
            raise CoordinatorError(f"{f} not found (run from the repository root or pass --definitions)")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    private, public = coordinator_key(out)
    t0 = time.perf_counter()
    echo(f"preparing {len(sites)} synthetic sites in {out / 'sites'}")
    prepared = []
    for s in sites:
        with progress(f"  site {s.name}: synthetic CDM ({s.profile}, {s.persons:,} persons), key, site.toml"):
            prepared.append(prepare_site(out / "sites", s, catalog=catalog.resolve(), coordinator_pub=public,
                                         trust=out / "trust", min_cell_count=min_cell_count, echo=echo))
    analyses = with_nlp(tuple(analyses), sites, echo)
    manifest = manifest_from_spec(spec, target_sites=[s.name for s in sites],
                                  min_sites=min_sites or max(1, len(sites) - 1), analyses=analyses,
                                  extra_cohorts=LUNG_DIAGNOSTIC_COHORTS, min_cell_count=min_cell_count,
                                  valid_for=dt.timedelta(hours=6))
    manifest_path = write_manifest(sign_manifest(manifest, load_private_key(private)), out / "manifest.json")
    t1 = time.perf_counter()
    echo(f"sites ready in {t1 - t0:.1f}s; signed manifest {manifest.manifest_id} -> {manifest_path}")
    extra = prepare_images(out, sites, train, echo) if train else {}
    job = StudyJob(manifest=manifest_path, store=str(out / DEFAULT_STORE), trust=out / "trust", out=out,
                   reply_timeout=reply_timeout, node_wait=60.0).document()
    nodes = [NodeSpec(p.site.name, p.config, extra.get(p.site.name, {})) for p in prepared]
    logs = out / "network" / "logs"
    with LocalNetwork(out / "network", nodes) as network:
        echo(f"SuperLink on 127.0.0.1:{network.port} (TLS, SuperNode authentication), {len(nodes)} SuperNodes")
        echo(f"logs: {logs}/ (superlink.log, supernode-<site>.log, run-study.log); follow with: tail -f {logs}/*.log")
        if network_hook is not None:
            network_hook(network)
        nlp = ", the radiology-report NLP" if "nlp_metastasis" in analyses else ""
        with progress(f"network study: the sites build cohorts, run diagnostics{nlp} and the SCLC study, then Cox"):
            outcome = network.run("study", job, timeout=reply_timeout + 180)
        training = None
        if train and outcome.get("ok"):
            t_train = time.perf_counter()
            request = {"task": train, "rounds": TRAIN_ROUNDS, "min_replies": max(1, len(sites) - 1),
                       "round_timeout": reply_timeout, "out": str(out / "training" / train),
                       "run_config": {**TRAIN_RUN_CONFIG.get(train, {}), "epochs": train_epochs}}
            training = network.run("train", request, timeout=reply_timeout * (TRAIN_ROUNDS + 1) + 120)
            echo(f"federated {train} training: {TRAIN_ROUNDS} rounds in {time.perf_counter() - t_train:.1f}s")
    t2 = time.perf_counter()
    echo(f"network study finished in {t2 - t1:.1f}s; every process stopped")
    for s in (outcome.get("outcome") or {}).get("sites", []):
        echo(f"  {s['site']:<22} {s['status']:<16} {s.get('reason') or ''}")
    if not outcome.get("ok"):
        raise outcome_error(outcome)
    if training is not None:
        if not training.get("ok"):
            raise CoordinatorError(f"federated {train} training failed: {training.get('error')}")
        last = training["summary"]["rounds"][-1]
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(last["eval_metrics"].items()))
        echo(f"federated {train} model after round {last['round']}: {metrics}; checkpoints in "
             f"{out / 'training' / train}")
        outcome["training"] = training
    echo(f"report: {outcome.get('report')}\nnetwork results: {outcome.get('results')}\n"
         f"bundles: {out / 'bundles'}  pinned site keys: {out / 'trust'}  store: {out / 'store.sqlite3'}\n"
         f"logs: {logs}/\nbrowse: coordinator view --store {out / 'store.sqlite3'}")
    return outcome


__all__ = ["DemoSite", "default_sites", "run_demo"]
