"""`site-agent audit verify` and `site-agent audit show`: the operator's view of the audit log."""

from __future__ import annotations

import json
from typing import Any

from site_agent.audit import AuditError, AuditLog
from site_agent.config import SiteConfig
from site_agent.policy import AUDIT_FILE


def audit_log(config: SiteConfig) -> AuditLog:
    return AuditLog(config.state_dir / AUDIT_FILE)


def verify(config: SiteConfig) -> str:
    """One line saying the chain is intact, or :class:`AuditError` naming the first broken entry."""
    log = audit_log(config)
    ok, seq, message = log.verify()
    if not ok:
        raise AuditError(f"{log.path}: chain broken at entry {seq}: {message}",
                         hint="entries from there on cannot be trusted; keep the file for investigation")
    if not log.path.exists():
        return f"{log.path}: no audit log yet (nothing decided at this site)"
    seq, head = log.head()
    return f"{log.path}: {message}; head entry {seq} hash {head}"


def select(config: SiteConfig, *, manifest: str | None = None, event: str | None = None,
           limit: int | None = None) -> list[dict[str, Any]]:
    """Entries matching the filters, in log order (the last ``limit`` of them)."""
    out = [e for e in audit_log(config).entries()
           if (manifest is None or e.get("manifest_id") == manifest) and (event is None or e.get("event") == event)]
    return out[-limit:] if limit else out


def _detail_text(detail: dict[str, Any]) -> str:
    parts = []
    for k, v in detail.items():
        if isinstance(v, list):
            v = ",".join(str(x)[:16] for x in v[:5]) + (",…" if len(v) > 5 else "")
        elif isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            v = v[:16] + "…"
        parts.append(f"{k}={v}")
    return " ".join(parts)


def format_entries(entries: list[dict[str, Any]], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(entries, indent=2, ensure_ascii=False)
    if not entries:
        return "no matching audit entries"
    lines = [f"{'seq':>5}  {'time (UTC)':<19}  {'event':<18} {'manifest':<36} {'study':<20} detail"]
    for e in entries:
        lines.append(f"{e.get('seq', '?'):>5}  {str(e.get('time', ''))[:19]:<19}  {e.get('event', ''):<18} "
                     f"{str(e.get('manifest_id') or '-')[:36]:<36} {str(e.get('study_id') or '-')[:20]:<20} "
                     f"{_detail_text(e.get('detail') or {})}")
    return "\n".join(lines)
