"""Coordinator operator commands: ``status``, ``sites add|remove|list``, ``serve``, ``study resend|cancel``.

:func:`add_parsers` is called from ``coordinator.cli.main.build_parser``; :func:`add_study_parsers`
from ``coordinator.cli.network`` (which owns the ``study`` group).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

from coordinator.cli.common import report_outcome, study_job
from coordinator.store import DEFAULT_STORE
from coordinator.store.ops import resolve_study
from optima_common.errors import CoordinatorError, ExitCode


def _open(path: str):
    from coordinator.store import ResultsStore

    text = str(path)
    if "://" not in text and not Path(text).is_file():
        raise CoordinatorError(f"results store {text} not found; give --store (the file `study send` wrote)")
    return ResultsStore.open(text)


def cmd_status(args) -> int:
    from coordinator.flower import operations as O

    with _open(args.store) as store:
        if args.target:
            st = O.manifest_status(store, resolve_study(store, args.target))
            print(st.model_dump_json(indent=2) if args.json else O.format_manifest_status(st))
        else:
            rows = O.studies(store)
            print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2) if args.json
                  else O.format_studies(rows))
    return 0


def cmd_sites_add(args) -> int:
    from coordinator.trust.site_registry import add_site

    e = add_site(args.trust, args.name, args.key, args.min_cell_count, supernode_key=args.supernode_key,
                 replace=args.replace)
    print(f"pinned site {e.name} (key {e.key_id[:16]}…) in {args.trust}, expected min cell count {e.min_cell_count}")
    if e.supernode_key:
        print(f"register its SuperNode: flwr supernode register {Path(args.trust) / 'supernodes' / e.supernode_key} "
              "<federation>")
    return 0


def cmd_sites_remove(args) -> int:
    from coordinator.trust.site_registry import remove_site

    a = remove_site(args.trust, args.name)
    print(f"unpinned site {a.site}; its key {a.key_id[:16]}… is archived in {Path(args.trust) / 'archive' / a.file} "
          "(bundles it signed before now still verify); unregister its SuperNode on the SuperLink too")
    return 0


def cmd_sites_list(args) -> int:
    from coordinator.trust.site_registry import list_sites, registry_json

    if args.json:
        print(registry_json(args.trust))
        return 0
    rows, archived = list_sites(args.trust)
    print(f"{'site':<22} {'key id':<18} {'min cells':<10} {'supernode key':<22} added (UTC)")
    for r in rows:
        print(f"{r['site']:<22} {r['key_id'][:16] + '…':<18} {r['min_cell_count'] or '-'!s:<10} "
              f"{r['supernode_key'] or '-':<22} {(r['added_at'] or '-')[:19]}")
    for a in archived:
        print(f"archived: {a.site} key {a.key_id[:16]}… since {a.archived_at.isoformat()[:19]} ({a.file})")
    return 0


def cmd_serve(args) -> int:
    from coordinator.flower.network import flwr_run
    from coordinator.flower.schedule import load_schedule, serve
    from optima_common.bundle import load_private_key, write_manifest

    schedule = load_schedule(args.schedule)
    key = load_private_key(args.key)
    try:
        until = dt.datetime.fromisoformat(args.until) if args.until else None
    except ValueError:
        raise CoordinatorError(f"--until {args.until!r} is not an ISO 8601 time (e.g. 2026-12-01T06:00)") from None
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=dt.UTC)

    def runner(manifest, entry, run) -> tuple[bool, str]:
        out = Path(args.out) / entry.name / f"v{run.version}"
        path = write_manifest(manifest, out / "manifest.json")
        outcome = flwr_run("study", study_job(args, path, out, entry.reply_timeout), workdir=Path(args.out) / "run",
                           env=dict(os.environ), federation=args.federation, timeout=entry.reply_timeout + 180)
        sites = (outcome.get("outcome") or {}).get("sites", [])
        return bool(outcome.get("ok")), outcome.get("error") or ", ".join(f"{s['site']} {s['status']}" for s in sites)

    def report(r) -> None:
        print(f"{r.name}: {r.study_id} version {r.version} (manifest {r.manifest_id}): {r.state}"
              + (f" - {r.detail}" if r.detail else ""), flush=True)

    with _open_or_create(args.store) as store:
        done = serve(schedule, store, key=key, runner=runner, once=args.once, until=until, poll=args.poll,
                     report=report)
    if not done:
        print("no scheduled study was due")
    return 0 if all(r.state != "failed" for r in done) else ExitCode.STUDY_INCOMPLETE


def _open_or_create(path: str):
    from coordinator.store import ResultsStore

    return ResultsStore.open(path)


def _manifest_id(store, target: str) -> str:
    return resolve_study(store, target)


def cmd_study_resend(args) -> int:
    from coordinator.flower.network import flwr_run
    from coordinator.flower.operations import resend
    from optima_common.bundle import load_private_key, write_manifest

    key = load_private_key(args.key)
    with _open(args.store) as store:
        child = resend(store, _manifest_id(store, args.manifest), args.site, key,
                       valid_for=dt.timedelta(hours=args.valid_hours) if args.valid_hours else None)
    out = Path(args.out)
    path = write_manifest(child, out / f"manifest-{child.manifest_id}.json")
    print(f"signed manifest {child.manifest_id} re-sending the study to {args.site} -> {path}")
    if args.no_send:
        return 0
    outcome = flwr_run("study", study_job(args, path, out, args.timeout, report=False), workdir=out / "run",
                       env=dict(os.environ), federation=args.federation, timeout=args.timeout + 120)
    for s in (outcome.get("outcome") or {}).get("sites", []):
        print(f"  {s['site']:<22} {s['status']:<16} {s.get('reason') or ''}")
    if not outcome.get("ok"):
        return report_outcome(outcome)
    print("the re-sent answer counts for the original study: `coordinator status` shows it")
    return 0


def cmd_study_cancel(args) -> int:
    from coordinator.flower.operations import cancel

    with _open(args.store) as store:
        mid = _manifest_id(store, args.manifest)
        changed = cancel(store, mid, args.reason)
    print(f"cancelled manifest {mid}: " + (", ".join(changed) + " marked cancelled; their later answers will not "
                                          "be stored" if changed else "every site had already answered"))
    return 0


def add_study_parsers(ssub) -> None:
    """``study resend`` and ``study cancel`` (the ``study`` group lives in coordinator.cli.network)."""
    p = ssub.add_parser("resend", help="send a study again to one site (a new signed manifest, same content)")
    p.add_argument("manifest", help="the original manifest file, manifest id or study id")
    p.add_argument("--site", required=True, help="the site to ask again")
    p.add_argument("--key", required=True, help="the coordinator's Ed25519 private key")
    p.add_argument("--valid-hours", type=float, help="validity window (default: the original's)")
    p.add_argument("--no-send", action="store_true", help="only sign and record the new manifest")
    p.add_argument("--trust", default="trust", help="folder of pinned site public keys <site>.pub")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store (file or SQLAlchemy URL)")
    p.add_argument("--out", required=True, help="folder for the new manifest and the run's files")
    p.add_argument("--federation", default="optima", help="SuperLink connection name in $FLWR_HOME/config.toml")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the site's answer")
    p.add_argument("--node-wait", type=float, default=60, help="seconds to wait for SuperNodes to connect")
    p.set_defaults(func=cmd_study_resend)

    p = ssub.add_parser("cancel", help="cancel a study: sites not done are marked cancelled, late answers dropped")
    p.add_argument("manifest", help="the manifest file, manifest id or study id")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store (file or SQLAlchemy URL)")
    p.add_argument("--reason", help="recorded with each cancelled site")
    p.set_defaults(func=cmd_study_cancel)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="each site of a study (or every study) with its status and times")
    p.add_argument("target", nargs="?", help="a manifest file, manifest id or study id (default: list the studies)")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store (file or SQLAlchemy URL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    sites = sub.add_parser("sites", help="onboard and offboard sites (pinned keys, expected min cell count)")
    ss = sites.add_subparsers(dest="sites_command", required=True)
    p = ss.add_parser("add", help="pin a site's signing key and record its expected minimum cell count")
    p.add_argument("name")
    p.add_argument("--key", required=True, help="the site's Ed25519 public key (site-agent keys: <site>.pub)")
    p.add_argument("--min-cell-count", type=int, required=True, help="bundles suppressed below this are refused")
    p.add_argument("--supernode-key", help="the site's SuperNode public key (OpenSSH ECDSA) for Flower node auth")
    p.add_argument("--replace", action="store_true", help="rotate: replace a different pinned key (archived)")
    p.add_argument("--trust", default="trust", help="the trust folder (default: ./trust)")
    p.set_defaults(func=cmd_sites_add)
    p = ss.add_parser("remove", help="unpin a site (its key is archived: old bundles stay verifiable)")
    p.add_argument("name")
    p.add_argument("--trust", default="trust")
    p.set_defaults(func=cmd_sites_remove)
    p = ss.add_parser("list", help="pinned sites and archived keys")
    p.add_argument("--trust", default="trust")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sites_list)

    p = sub.add_parser("serve", help="run the scheduled studies of a schedules.toml when they are due")
    p.add_argument("--schedule", required=True, help="schedules.toml (spec, sites, cron, min_sites per study)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="run what is due now, then exit")
    when.add_argument("--until", help="keep serving until this time (ISO 8601, UTC if no zone)")
    p.add_argument("--poll", type=float, default=60, help="seconds between checks while serving")
    p.add_argument("--key", required=True, help="the coordinator's Ed25519 private key")
    p.add_argument("--trust", default="trust", help="folder of pinned site public keys <site>.pub")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store (file or SQLAlchemy URL)")
    p.add_argument("--out", required=True, help="folder for each run's manifest, report and bundles")
    p.add_argument("--federation", default="optima", help="SuperLink connection name in $FLWR_HOME/config.toml")
    p.add_argument("--node-wait", type=float, default=60, help="seconds to wait for SuperNodes to connect")
    p.set_defaults(func=cmd_serve)
