"""The study's Cox model over a real local Flower deployment, 3 sites, end to end (issue 18).

    python benchmarks/bench_network_cox.py --persons 3000

Starts a SuperLink and one SuperNode per site as separate processes (TLS with the network's
own CA and SuperNode authentication, as ``tests/e2e`` and ``coordinator demo`` do), sends the
SCLC study (``sclc_study`` only) with ``flwr run`` and lets the ServerApp fit the
site-stratified Cox model over ``query.cox`` messages. The sites are SCLC-enriched
lung-cancer registries (synthetic, profile ``lung-registry``, the demo network's kind) of
``--persons`` persons each, so all three have enough events to take part.

Prints: the whole ``flwr run`` (study + Cox fit), the Cox fit alone (``cox_seconds`` in the
ServerApp's outcome: every round of messages, from the design request to convergence), the
number of evaluations and rounds (the answer at beta = 0 comes with each site's study release,
so the fit's rounds are one fewer than its evaluations) and seconds per round, and each site's own cost per answer from its audit log
(``site_ms``, wall time inside the answer): every answer reads the design matrix the study run
kept in the site's state folder. Each
message also starts a fresh ClientApp process at each site (Flower's process isolation), whose
start is not in ``site_ms``. CPU seconds are those of the whole deployment
(the processes this script started and reaped), the load-independent figure on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = ("lung_registry_north", "lung_registry_east", "lung_registry_west")


def cpu_children() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def build_sites(root: Path, persons: int) -> tuple[dict[str, Path], Path, Path, Path]:
    """CDM, key and site.toml per site; the coordinator's key; the trust folder."""
    from coordinator.demo.sites import DemoSite, site_toml
    from optima_common.bundle import generate_keypair
    from site_agent.cdm.synth import generate_site

    ckey, cpub = generate_keypair(root / "coordinator_keys", "coordinator")
    trust = root / "trust"
    trust.mkdir(parents=True)
    configs = {}
    for i, name in enumerate(SITES):
        folder = root / name
        folder.mkdir(parents=True)
        cdm = folder / f"{name}.duckdb"
        generate_site(out=cdm, persons=persons, site=name, profile="lung-registry", seed=41 + i)
        _, pub = generate_keypair(folder / "keys", name)
        shutil.copyfile(pub, trust / f"{name}.pub")
        site = DemoSite(name, "lung-registry", persons, 41 + i)
        cfg = folder / "site.toml"
        cfg.write_text(site_toml(site, cdm=cdm, catalog=REPO / "cohort_definitions" / "catalog.json",
                                 coordinator_pub=cpub, min_cell_count=5, analyses=("sclc_study",)))
        configs[name] = cfg
    return configs, ckey, cpub, trust


def site_costs(config: Path, manifest_id: str) -> list[float]:
    """Milliseconds each Cox answer cost at the site (its audit log, in order)."""
    log = config.parent / "state" / "audit.jsonl"
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if e["event"] == "cox_answered" and e["manifest_id"] == manifest_id and "site_ms" in e["detail"]:
            out.append(float(e["detail"]["site_ms"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persons", type=int, default=3000, help="persons per site (lung-registry profile)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the flwr run after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, store, audit logs)")
    args = ap.parse_args()
    if args.persons < 500:
        print("--persons must be at least 500 (smaller registries have too few events for the Cox model)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="bench-cox-mpl-"))
    from coordinator.flower.network import LocalNetwork, NodeSpec
    from coordinator.flower.study import manifest_from_spec
    from coordinator.trust.manifest import sign_manifest
    from optima_common.bundle import load_private_key, write_manifest

    root = Path(tempfile.mkdtemp(prefix="bench-net-cox-"))
    t = time.perf_counter()
    configs, ckey, _, trust = build_sites(root, args.persons)
    print(f"3 sites of {args.persons:,} persons (synth, keys, configs): {time.perf_counter() - t:.1f} s "
          f"(not part of the figure)", flush=True)
    spec = REPO / "cohort_definitions" / "studies" / "sclc_stage_i_ii.json"
    manifest = sign_manifest(manifest_from_spec(spec, target_sites=list(SITES), min_sites=3,
                                                analyses=("sclc_study",)), load_private_key(ckey))
    job = {"manifest": str(write_manifest(manifest, root / "manifest.json")), "store": str(root / "store.sqlite3"),
           "trust": str(trust), "out": str(root / "out"), "reply_timeout": args.timeout, "node_wait": 60,
           "report": False, "cox": True, "cox_timeout": args.timeout}
    cpu0 = cpu_children()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with LocalNetwork(root / "network", [NodeSpec(s, configs[s]) for s in SITES]) as network:
        t_up = time.perf_counter()
        outcome = network.run("study", job, timeout=args.timeout)
        t_run = time.perf_counter()
    cpu = cpu_children() - cpu0
    if not outcome.get("ok"):
        print(f"the study run failed: {outcome.get('error') or outcome}", file=sys.stderr)
        return 1
    sites = {s["site"]: s["status"] for s in outcome["outcome"]["sites"]}
    evaluations = int(outcome.get("cox_evaluations", 0))
    cox_s = float(outcome.get("cox_seconds", float("nan")))
    print(f"sites: {sites}")
    print("\n".join(f"  {n}" for n in outcome.get("cox_notes", [])))
    print(f"network start (SuperLink + 3 SuperNodes)   {t_up - t0:7.1f} s wall")
    print(f"flwr run: study + Cox fit, end to end       {t_run - t_up:7.1f} s wall")
    found = [re.search(r"(\d+) round\(s\) of messages", n) for n in outcome.get("cox_notes", [])]
    rounds = next((int(m.group(1)) for m in found if m), evaluations)
    print(f"  the study round (ServerApp's send to last reply judged) {float(outcome.get('study_seconds', 'nan')):7.1f} s wall")
    print(f"  of it the Cox fit (all rounds)            {cox_s:7.1f} s wall, {evaluations} evaluations in "
          f"{rounds} rounds (the first answer came with the study's release), {cox_s / max(rounds, 1):.2f} s per round")
    print(f"everything from start to stop               {t_run - t0:7.1f} s wall, {cpu:.1f} s CPU (all processes "
          f"reaped), load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    for s in SITES:
        ms = site_costs(configs[s], manifest.manifest_id)
        if ms:
            rest = ms[1:] or [float("nan")]
            print(f"site {s:<22} answers {len(ms):3d}: first {ms[0]:8.1f} ms, then median "
                  f"{statistics.median(rest):6.1f} ms, max {max(rest):6.1f} ms (the study run kept the design)")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
