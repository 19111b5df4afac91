"""The site operator's governance commands, added to ``site-agent`` by :func:`add_parsers`.

``review``, ``review show ID``, ``approve ID --sha256 H``, ``reject ID --reason …``,
``dry-run MANIFEST``, ``audit verify``, ``audit show``, ``keys rotate``, ``keys pin-coordinator
FILE``, ``keys revoke KEY_ID``, ``keys list``; each takes ``--config site.toml``.
"""

from __future__ import annotations

import argparse
import getpass
import json

from optima_common.errors import ConfigError, ExitCode


def _config(args):
    from site_agent.config import load_config

    return load_config(args.config)


def _audit(cfg):
    from site_agent.governance.audit_cli import audit_log

    return audit_log(cfg)


def _outbox(cfg):
    from site_agent.governance.outbox import Outbox

    return Outbox(cfg.state_dir)


# --- review ---------------------------------------------------------------------------------

def cmd_review(args) -> int:
    if getattr(args, "review_command", None) == "show":
        return cmd_review_show(args)
    if not args.config:
        raise ConfigError("--config is required: site-agent review --config site.toml")
    cfg = _config(args)
    box = _outbox(cfg)
    items = box.items() if args.all else box.pending()
    if not items:
        print("no bundles waiting for review" if not args.all else "the outbox is empty")
        return 0
    print(f"{'review id':<12}  {'status':<9} {'created (UTC)':<19}  {'study':<22} {'manifest':<36} sha256")
    for i in items:
        print(f"{i.id:<12}  {i.status:<9} {i.created_at.isoformat()[:19]:<19}  {str(i.study_id or '-')[:22]:<22} "
              f"{i.manifest_id[:36]:<36} {i.sha256[:16]}…")
    if not args.all:
        print(f"\n{len(items)} pending; `site-agent review show ID --config {args.config}` shows what would leave")
    return 0


def _signature_line(cfg, bundle) -> str:
    from optima_common import bundle as bundles
    from optima_common.keys import key_id
    from site_agent.governance.keyring import Keyring

    current = cfg.site_private_key().public_key()
    trust = {**Keyring(cfg.state_dir).site_trust(), key_id(current): ("current site key", current)}
    try:
        bundles.verify(bundle, trust)
    except bundles.BundleError as exc:
        return f"signature: NOT VALID: {exc}"
    return f"signature: valid, site key {bundle.signature.key_id}"


def _secondary_frame(cfg, manifest_id: str):
    import pandas as pd

    from site_agent.study_exec import secondary_path

    path = secondary_path(cfg.state_dir, manifest_id)
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None


def _reasons(cfg, view):
    """Every released cell of the reviewed bundle with the reason for each suppressed one."""
    from optima_common.results import SummarisedResult
    from site_agent.diagnostics.html import reasons

    b = view.bundle
    result = SummarisedResult.from_csv_text(b.results_csv, source=f"review item {view.item.id}")
    return reasons(result, b.suppression.min_cell_count, _secondary_frame(cfg, view.item.manifest_id))


def _write_review_html(cfg, view, target: str) -> None:
    """The bundle's every released cell, with the reason for each suppressed one, as one offline page."""
    from pathlib import Path

    from optima_common.results import SummarisedResult
    from site_agent.diagnostics.html import write_html

    out = Path(target)
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}", hint="--html must be a file path in an existing folder")
    b = view.bundle
    result = SummarisedResult.from_csv_text(b.results_csv, source=f"review item {view.item.id}")
    write_html(result, out, title=f"Review {view.item.id}: what site {b.site} would release",
               min_cell_count=b.suppression.min_cell_count, secondary=_secondary_frame(cfg, view.item.manifest_id))
    print(f"wrote {out} (every released cell, with the reason for each suppressed one)")


def _print_secondary(cfg, manifest_id: str) -> None:
    """The secondary suppressions of the bundle and the relation behind each (site-internal record)."""
    import pandas as pd

    from site_agent.study_exec import secondary_path

    path = secondary_path(cfg.state_dir, manifest_id)
    if not path.is_file():
        print("\nsecondary suppressions: no record for this bundle")
        return
    sec = pd.read_csv(path, dtype=str)
    print(f"\n== secondary suppressions: {len(sec)} count(s) withheld because a relation would reveal a small one ==")
    for rel, n in sec["relation"].value_counts().items():
        print(f"   {n:>5}  {rel}")
    if len(sec):
        with pd.option_context("display.max_rows", 200, "display.width", 250, "display.max_colwidth", 60):
            print(sec.to_string(index=False, max_rows=200))


def cmd_review_show(args) -> int:
    import pandas as pd

    cfg = _config(args)
    view = _outbox(cfg).show(args.id)
    item, b = view.item, view.bundle
    if args.html:
        _write_review_html(cfg, view, args.html)
    if args.json:
        print(json.dumps({"item": item.model_dump(mode="json"), "file_sha256": view.file_sha256,
                          "bundle": json.loads(b.model_dump_json()),
                          "tables": [{"result_id": t.result_id, "result_type": t.result_type, "settings": t.settings,
                                      "suppressed": t.suppressed, "rows": t.rows.to_dict(orient="records")}
                                     for t in view.tables]}, indent=2))
        return 0
    p = b.provenance
    print(f"review {item.id} ({item.status}): manifest {item.manifest_id}, study {item.study_id or '-'}, "
          f"site {b.site}, created {b.created_at.isoformat()}")
    print(f"provenance: cdm {p.cdm_name}, release {p.cdm_release_date or '-'}, vocabulary "
          f"{p.vocabulary_version or '-'}, package {p.package_version}")
    print(f"suppression: min cell count {b.suppression.min_cell_count} (site floor {b.suppression.site_floor}), "
          f"{b.suppression.method}")
    print(_signature_line(cfg, b))
    from site_agent.cdm.vocab_check import saved_summary

    print(saved_summary(cfg.state_dir) or "vocabulary check: none saved (site-agent vocab check --out STATE_DIR/vocab_check.json)")
    why = _reasons(cfg, view)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 60):
        for t in view.tables:
            r = why.loc[why["result_id"] == t.result_id, "reason"].to_numpy()
            if t.suppressed and len(r) == len(t.rows):  # why each suppressed cell is withheld
                t.rows["reason"] = r
            shown = {k: v for k, v in t.settings.items() if k != "result_type"}
            print(f"\n== result {t.result_id}: {t.result_type} ({len(t.rows)} rows, {t.suppressed} suppressed) ==")
            print("   settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
            rows = t.rows.loc[:, t.rows.nunique(dropna=False) > 1] if len(t.rows) > 1 else t.rows
            constant = {c: t.rows[c].iloc[0] for c in t.rows.columns if c not in rows.columns and len(t.rows)}
            if constant:
                print("   same in every row: " + ", ".join(f"{k}={v}" for k, v in constant.items()))
            print(rows.to_string(index=False) if len(rows.columns) else "   (no rows)")
    _print_secondary(cfg, item.manifest_id)
    print(f"\nsha256 of the bundle file: {view.file_sha256}")
    if not view.unchanged:
        print(f"WARNING: the file changed after it was queued (queued as {item.sha256}); it cannot be approved")
    elif item.status == "pending":
        print(f"approve exactly this: site-agent approve {item.id} --sha256 {view.file_sha256} --config {args.config}")
    return 0


def cmd_approve(args) -> int:
    cfg = _config(args)
    item = _outbox(cfg).approve(args.id, reviewer=args.reviewer, audit=_audit(cfg), expected_sha256=args.sha256)
    print(f"approved {item.id} (manifest {item.manifest_id}, sha256 {item.sha256}); the coordinator collects it "
          "on its next attempt")
    return 0


def cmd_reject(args) -> int:
    cfg = _config(args)
    item = _outbox(cfg).reject(args.id, reason=args.reason, reviewer=args.reviewer, audit=_audit(cfg))
    print(f"rejected {item.id} (manifest {item.manifest_id}); the coordinator will be told: {item.reason}")
    return 0


# --- dry run and audit ----------------------------------------------------------------------

def cmd_dry_run(args) -> int:
    from site_agent.governance.dry_run import dry_run, format_report

    report = dry_run(_config(args), args.manifest)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report, sql=args.sql))
    return 0 if report.accepted else ExitCode.POLICY_REFUSAL


def cmd_audit_verify(args) -> int:
    from site_agent.governance.audit_cli import verify

    print(verify(_config(args)))
    return 0


def cmd_audit_show(args) -> int:
    from site_agent.governance.audit_cli import format_entries, select

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be 1 or more")
    print(format_entries(select(_config(args), manifest=args.manifest, event=args.event, limit=args.limit),
                         as_json=args.json))
    return 0


# --- keys -----------------------------------------------------------------------------------

def cmd_keys_rotate(args) -> int:
    from site_agent.governance.keyring import Keyring, rotate_site_key

    cfg = _config(args)
    old, new, pub = rotate_site_key(cfg.site_key, Keyring(cfg.state_dir))
    _audit(cfg).append("key_rotated", detail={"old_key_id": old, "new_key_id": new})
    print(f"site key rotated: new key id {new}; old key {old} archived in {Keyring(cfg.state_dir).site_dir}. "
          f"Give {pub} to the coordinator to pin (it keeps the old key for bundles already sent)")
    return 0


def cmd_keys_pin(args) -> int:
    from site_agent.governance.keyring import Keyring

    cfg = _config(args)
    kid, stored = Keyring(cfg.state_dir).pin_coordinator(args.file)
    if stored is None:
        print(f"coordinator key {kid} is already pinned")
        return 0
    _audit(cfg).append("key_pinned", detail={"key_id": kid, "file": stored.name})
    print(f"pinned coordinator key {kid} ({stored}); manifests signed by it are now accepted")
    return 0


def cmd_keys_revoke(args) -> int:
    from optima_common.keys import key_id
    from site_agent.governance.keyring import Keyring, resolve_key_id

    cfg = _config(args)
    ring = Keyring(cfg.state_dir)
    known = {**cfg.trusted_keys(), **ring.pinned_coordinator_keys(), **ring.site_trust()}
    kid = resolve_key_id(args.key_id, known)
    if kid == key_id(cfg.site_private_key().public_key()):
        raise ConfigError("that is this site's own signing key; use `site-agent keys rotate` to replace it")
    rev = ring.revoke(kid, args.reason or "")
    _audit(cfg).append("key_revoked", detail={"key_id": kid, "reason": rev.reason})
    left = len(cfg.trusted_keys())
    print(f"revoked key {kid}; manifests signed by it are refused from now on"
          + ("" if left else ". WARNING: no coordinator key is pinned any more; pin one with "
                             "`site-agent keys pin-coordinator FILE`"))
    return 0


def cmd_keys_list(args) -> int:
    from optima_common.keys import key_id
    from site_agent.governance.keyring import Keyring

    cfg = _config(args)
    ring = Keyring(cfg.state_dir)
    print("pinned coordinator keys:")
    for kid, (name, _) in cfg.trusted_keys().items():
        print(f"  {kid}  {name}")
    print("revoked keys:")
    for r in ring.revocations():
        print(f"  {r.key_id}  revoked {r.revoked_at.isoformat()[:19]}  {r.reason}")
    print(f"site signing key: {key_id(cfg.site_private_key().public_key())}")
    for use in ring.site_history():
        print(f"  archived {use.key_id}  from {use.active_from.isoformat()[:19] if use.active_from else '-'}  "
              f"retired {use.retired_at.isoformat()[:19] if use.retired_at else '-'}")
    return 0


# --- wiring ---------------------------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _cfg_opt(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, help="the site's TOML settings (site.toml)")
    return p


def _reviewer_opt(p: argparse.ArgumentParser) -> None:
    try:
        default = getpass.getuser()
    except (KeyError, OSError):
        default = None
    p.add_argument("--reviewer", default=default, required=default is None,
                   help="who decides (default: the login name); written to the audit log")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the governance commands to ``site-agent`` (``sub`` is build_parser's sub-commands)."""
    p = sub.add_parser("review", help="bundles waiting for review (review mode)")
    p.add_argument("--config", help="the site's TOML settings (site.toml)")  # required: checked in cmd_review
    p.add_argument("--all", action="store_true", help="also list decided and sent items")
    p.set_defaults(func=cmd_review)
    show = p.add_subparsers(dest="review_command").add_parser("show", help="everything that would leave, and its sha256")
    _cfg_opt(show).add_argument("id", help="review id (from `site-agent review`)")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.add_argument("--html", metavar="PATH", help="also write every released cell, with the reason for each "
                      "suppressed one, as an offline page (default: none)")
    show.set_defaults(func=cmd_review_show)

    p = _cfg_opt(sub.add_parser("approve", help="release a reviewed bundle"))
    p.add_argument("id", help="review id")
    p.add_argument("--sha256", required=True, help="the sha256 `review show` printed: only those bytes are approved")
    _reviewer_opt(p)
    p.set_defaults(func=cmd_approve)

    p = _cfg_opt(sub.add_parser("reject", help="refuse to release a bundle"))
    p.add_argument("id", help="review id")
    p.add_argument("--reason", required=True, help="told to the coordinator (no patient data)")
    _reviewer_opt(p)
    p.set_defaults(func=cmd_reject)

    p = _cfg_opt(sub.add_parser("dry-run", help="what a manifest would run here and whether policy accepts it"))
    p.add_argument("manifest", help="study manifest file")
    p.add_argument("--sql", action="store_true", help="print every SQL statement of each cohort")
    p.add_argument("--json", action="store_true", help="print the report as JSON (SQL included)")
    p.set_defaults(func=cmd_dry_run)

    audit = sub.add_parser("audit", help="the site's audit log").add_subparsers(dest="audit_command", required=True)
    p = _cfg_opt(audit.add_parser("verify", help="check the hash chain; non-zero exit at the first broken entry"))
    p.set_defaults(func=cmd_audit_verify)
    p = _cfg_opt(audit.add_parser("show", help="list decisions"))
    p.add_argument("--manifest", help="only entries of this manifest id")
    p.add_argument("--event", help="only this event (accepted, refused, queued_for_review, released, …)")
    p.add_argument("--limit", type=int, help="only the last N entries")
    p.add_argument("--json", action="store_true", help="print entries as JSON")
    p.set_defaults(func=cmd_audit_show)

    keys = _subparsers(sub.choices["keys"]) if "keys" in sub.choices else \
        sub.add_parser("keys", help="keys").add_subparsers(dest="keys_command", required=True)
    p = _cfg_opt(keys.add_parser("rotate", help="new site key; the old public key is archived"))
    p.set_defaults(func=cmd_keys_rotate)
    p = _cfg_opt(keys.add_parser("pin-coordinator", help="trust a (new) coordinator public key"))
    p.add_argument("file", help="the coordinator's .pub file")
    p.set_defaults(func=cmd_keys_pin)
    p = _cfg_opt(keys.add_parser("revoke", help="never trust this key again"))
    p.add_argument("key_id", help="key id (64 hex) or a unique prefix of 8+ characters")
    p.add_argument("--reason", help="why (kept in the keyring and the audit log)")
    p.set_defaults(func=cmd_keys_revoke)
    p = _cfg_opt(keys.add_parser("list", help="pinned, revoked and archived keys"))
    p.set_defaults(func=cmd_keys_list)
